"""The error bodies of the simulated upstream, in OpenAI's shape: ``{"error": {"message", "type",
"code"}}``. The Messages route turns them into Anthropic's shape on the way out
(:func:`flashkit.sim._anthropic.error_body`)."""

from __future__ import annotations

import json
from typing import Final

__all__ = [
    "BAD_KEY",
    "BAD_X_API_KEY",
    "MALFORMED_HTML",
    "NO_KEY",
    "NO_X_API_KEY",
    "NOT_ALLOWED",
    "NOT_ALLOWED_GET",
    "NOT_FOUND",
    "OVERLOADED",
    "SERVER_ERRORS",
    "SPEND_CAP",
    "openai_error",
]


def openai_error(message: str, kind: str, code: str | None) -> bytes:
    """One error body as JSON bytes."""
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


NOT_FOUND: Final = openai_error(
    "Unknown request URL. Use POST /v1/chat/completions, POST /v1/messages or GET /v1/models.",
    "invalid_request_error",
    "unknown_url",
)
NOT_ALLOWED: Final = openai_error(
    "Method not allowed: use POST.", "invalid_request_error", "method_not_allowed"
)
NOT_ALLOWED_GET: Final = openai_error(
    "Method not allowed: use GET.", "invalid_request_error", "method_not_allowed"
)
NO_X_API_KEY: Final = openai_error("x-api-key header is required", "authentication_error", None)
BAD_X_API_KEY: Final = openai_error("invalid x-api-key", "authentication_error", None)
NO_KEY: Final = openai_error(
    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
    "invalid_request_error",
    "missing_api_key",
)
BAD_KEY: Final = openai_error(
    "Incorrect API key provided. You can find your API key in your account settings.",
    "invalid_request_error",
    "invalid_api_key",
)
SPEND_CAP: Final = openai_error(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)
OVERLOADED: Final = openai_error("Overloaded", "overloaded_error", None)
SERVER_ERRORS: Final = {
    500: openai_error(
        "The server had an error while processing your request.", "server_error", None
    ),
    502: openai_error("Bad gateway.", "server_error", None),
    503: openai_error(
        "Service unavailable: the server is temporarily unable to respond.", "server_error", None
    ),
}
MALFORMED_HTML: Final = (
    b"<html><head><title>Gateway error</title></head><body><h1>Gateway error</h1>"
    b"<p>The upstream answered something the proxy could not read.</p></body></html>"
)
