"""The Anthropic Messages API of the simulated upstream: ``POST /v1/messages``.

Request: ``model``, ``max_tokens`` (required), ``messages`` (``content`` a string or text
blocks), optional ``system`` (a string or text blocks) and ``stream``. The API key comes in
``x-api-key`` (as the official SDK sends it) or as ``Authorization: Bearer``.

Answer: ``{"id", "type": "message", "role": "assistant", "content": [{"type": "text", "text"}],
"model", "stop_reason": "end_turn" | "max_tokens", "stop_sequence": null, "usage":
{"input_tokens", "output_tokens"}}``; streamed, the events ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``) per piece of text,
``content_block_stop``, ``message_delta`` (``stop_reason``, ``usage.output_tokens``) and
``message_stop``, each as ``event: NAME`` and ``data: {...}``.

Errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the type of the
status (429 ``rate_limit_error``, 529 ``overloaded_error``, 5xx ``api_error`` ...). Rate-limit
headers are ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` on this route
whatever the profile's ``header_style`` (unless ``"none"``).
"""

from __future__ import annotations

import json
from typing import Any, Final

from flashkit.sim._content import Answer
from flashkit.sim._sse import Events, event, pieces

__all__ = [
    "MESSAGES_PATHS",
    "api_key",
    "error_body",
    "message",
    "message_events",
    "system_text",
    "validate",
]

MESSAGES_PATHS: Final = frozenset({"/v1/messages", "/messages"})
_STOP: Final = {"stop": "end_turn", "length": "max_tokens"}
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def api_key(headers: Any) -> str | None:
    """The key of ``x-api-key``, else of ``Authorization: Bearer``; None without one."""
    key = headers.get("x-api-key")
    if isinstance(key, str) and key.strip():
        return str(key.strip())
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, bearer = str(value).strip().partition(" ")
    bearer = bearer.strip()
    return bearer if scheme.lower() == "bearer" and bearer else None


def _blocks_text(value: object) -> str | None:
    """The text of a string or of a list of text blocks; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(block, dict) for block in value):
        return "".join(str(block.get("text", "")) for block in value)
    return None


def system_text(body: dict[str, Any]) -> str:
    """The system prompt as text ("" without one)."""
    return _blocks_text(body.get("system")) or ""


def validate(body: dict[str, Any]) -> str | None:
    """Why a Messages request body is invalid (Anthropic's wording), or None when it is fine.
    ``model`` and ``messages`` are checked by the caller, as for chat completions."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return f"max_tokens: Input should be a valid integer >= 1, got {max_tokens!r}"
    if "system" in body and _blocks_text(body["system"]) is None:
        return "system: Input should be a valid string or a list of text blocks"
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return "stream: Input should be a valid boolean"
    return None


def _id(answer: Answer) -> str:
    return f"msg_sim{answer.serial:08d}"


def message(answer: Answer) -> str:
    """The non-streamed Messages answer, as JSON text."""
    return json.dumps(
        {
            "id": _id(answer),
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [{"type": "text", "text": answer.text}],
            "stop_reason": _STOP.get(answer.finish, "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt, "output_tokens": answer.completion},
        },
        ensure_ascii=False,
    )


def message_events(answer: Answer) -> Events:
    """The streamed Messages answer, ``message_start`` to ``message_stop``."""
    start = {
        "type": "message_start",
        "message": {
            "id": _id(answer),
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt, "output_tokens": 1},
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    head = [
        event(start, "message_start"),
        event(block, "content_block_start"),
        event({"type": "ping"}, "ping"),
    ]
    body = [
        event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
            "content_block_delta",
        )
        for p in pieces(answer.text)
    ]
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _STOP.get(answer.finish, "end_turn"), "stop_sequence": None},
        "usage": {"output_tokens": answer.completion},
    }
    tail = [
        event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        event(delta, "message_delta"),
        event({"type": "message_stop"}, "message_stop"),
    ]
    return Events(head, body, tail)


def error_body(status: int, openai_body: bytes, request_id: str) -> bytes:
    """An OpenAI-shaped error body (``{"error": {"message", ...}}``) in Anthropic's shape."""
    try:
        text = str(json.loads(openai_body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = openai_body.decode("utf-8", "replace")
    kind = _ERROR_TYPES.get(status, "api_error")
    return json.dumps(
        {"type": "error", "error": {"type": kind, "message": text}, "request_id": request_id}
    ).encode()
