"""What the simulated upstream reads from a chat-completions or Messages request: the checked
body (:class:`Call`) or the 400 answer to give, and the API key."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from flashkit.sim._anthropic import system_text as anthropic_system
from flashkit.sim._anthropic import validate as anthropic_invalid
from flashkit.sim._content import estimate_tokens
from flashkit.sim._errors import openai_error

__all__ = ["Call", "bearer", "parse", "prompt_tokens"]


class Call(NamedTuple):
    """A chat or Messages request body, checked: what the answer depends on."""

    dialect: str  # "openai" (chat completions) or "anthropic" (Messages)
    model: str
    messages: list[Any]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    system: str


def bearer(value: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header value; None without one."""
    if value is None:
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def parse(raw: bytes, dialect: str = "openai") -> bytes | Call:
    """The checked request from a chat or Messages body, or the bytes of a 400 answer."""
    try:
        body = json.loads(raw)
    except ValueError:
        return openai_error(
            "We could not parse the JSON body of your request.", "invalid_request_error", None
        )
    if not isinstance(body, dict):
        return openai_error("The body must be a JSON object.", "invalid_request_error", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(
            "you must provide a model parameter", "invalid_request_error", "missing_model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error(
            "'messages' must be a non-empty array of {role, content} objects",
            "invalid_request_error",
            "invalid_messages",
        )
    if dialect == "anthropic":
        problem = anthropic_invalid(body)
        if problem is not None:
            return openai_error(problem, "invalid_request_error", None)
        stream = body.get("stream") is True
        return Call(
            dialect, model, messages, body["max_tokens"], stream, False, anthropic_system(body)
        )
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return openai_error(
            f"Invalid 'max_tokens': {max_tokens!r}; expected an integer >= 1.",
            "invalid_request_error",
            "invalid_value",
        )
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return Call(dialect, model, messages, max_tokens, body.get("stream") is True, usage, "")


def prompt_tokens(call: Call) -> int:
    """The prompt's token count: 3, plus 4 and the content's tokens per message (and for the
    system prompt)."""
    tokens = 3 + sum(
        4 + estimate_tokens(str(m.get("content", "")) if isinstance(m, dict) else str(m))
        for m in call.messages
    )
    if call.system:
        tokens += 4 + estimate_tokens(call.system)
    return tokens
