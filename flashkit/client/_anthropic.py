"""Anthropic's Messages API as :class:`~flashkit.client.LLMClient` speaks it
(``provider="anthropic"``): ``POST {base_url}/messages``.

The client builds every request in the chat-completions shape (``model``, ``messages``,
``max_tokens``, ``temperature``, extra fields) and :func:`messages_body` turns it into a Messages
request: system (and developer) messages move to the top-level ``system`` (joined by a blank
line, after a ``system`` given in ``extra``), OpenAI-only ``stream_options`` is dropped, the rest
is sent as given (text content parts have the same shape in both APIs; ``temperature`` is
0..1 here, 0..2 at OpenAI). The key goes in ``x-api-key`` with ``anthropic-version: 2023-06-01``
(a version given in ``headers=`` wins).

Answers are read by :func:`answer_of` (the text of the ``text`` blocks; ``stop_reason`` in
OpenAI's terms: ``end_turn`` and ``stop_sequence`` → ``stop``, ``max_tokens`` → ``length``,
``tool_use`` → ``tool_calls``) and streams by :class:`MessageEvents` (``message_start`` …
``message_stop``). ``usage`` (``input_tokens``, ``output_tokens``) becomes the client's
:class:`~flashkit.client.Usage` as it is. Errors (``{"type": "error", "error": {"type", ...}}``)
are classified by :func:`flashkit.errors.classify` like any other: 429 ``rate_limit_error`` with
its ``retry-after``, 529 ``overloaded_error`` (retryable, ``code="overloaded"``), 5xx
``api_error``; the ``anthropic-ratelimit-*`` headers feed the limiters
(:mod:`flashkit._headers`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from flashkit.errors import ExternalServiceError, RateLimitError, StructuredError

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_ANTHROPIC_MODEL",
    "MessageEvents",
    "answer_of",
    "auth_headers",
    "event_error",
    "messages_body",
]

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_ANTHROPIC_MODEL: Final = "claude-sonnet-4-5"
"""The model ``provider="anthropic"`` asks for when the client's model is left at its default
(OpenRouter's ``anthropic/...`` names are not Anthropic's)."""

STOP_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})
_MAX_MESSAGE: Final = 300  # characters of an upstream error message kept


def auth_headers(secret: str) -> dict[str, str]:
    """The headers carrying the key (none without one)."""
    return {"x-api-key": secret} if secret else {}


def _text(content: object) -> str:
    """The text of a message's content: a string, or the ``text`` of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def messages_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages request for a chat-completions ``body`` (see the module docstring)."""
    wire = {key: value for key, value in body.items() if key not in ("messages", "system")}
    wire.pop("stream_options", None)
    system: list[str] = []
    messages = []
    for message in body["messages"]:
        if isinstance(message, Mapping) and message.get("role") in _SYSTEM_ROLES:
            system.append(_text(message.get("content")))
        else:
            messages.append(message)
    given = body.get("system")
    if isinstance(given, list):  # text blocks (cache_control ...): keep them, add ours as blocks
        wire["system"] = [*given, *({"type": "text", "text": text} for text in system)]
    elif system or given:
        wire["system"] = "\n\n".join([given, *system] if given else system)
    wire["messages"] = messages
    return wire


def answer_of(data: Mapping[str, Any]) -> tuple[str, str | None]:
    """The text and the finish reason (OpenAI's terms) of a Messages answer; raises KeyError or
    TypeError when it has no ``content`` list."""
    content = data["content"]
    if not isinstance(content, list):
        raise TypeError("content is not a list")
    text = ""
    for block in content:
        if not isinstance(block, Mapping):
            raise TypeError("a content block is not an object")
        if block.get("type") == "text":
            text += str(block.get("text", ""))
    reason = data.get("stop_reason")
    return text, STOP_REASONS.get(reason, reason) if isinstance(reason, str) else None


def event_error(error: object) -> StructuredError:
    """The error an in-stream error event reports (Anthropic's ``event: error``, an OpenAI chunk
    with an ``error``): a rate limit, an overload, or any other upstream failure, all
    retryable while nothing has reached the caller."""
    kind = code = message = ""
    if isinstance(error, Mapping):
        kind = str(error.get("type") or "")
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
    elif error is not None:
        message = str(error)
    text = f"error event in the stream: {kind or code or 'error'}: {message}"[:_MAX_MESSAGE]
    details = {"type": kind} if kind else {}
    if "rate_limit" in kind or "rate_limit" in code:
        return RateLimitError(text, code="rate_limited", details=details)
    if kind == "overloaded_error":
        return ExternalServiceError(text, code="overloaded", details=details)
    return ExternalServiceError(text, code="upstream_error", details=details, retryable=True)


class MessageEvents:
    """The events of one streamed Messages answer, as they come (:meth:`feed`), and the answer
    they add up to (:meth:`answer`, in the non-streamed shape)."""

    __slots__ = ("complete", "done", "id", "input_tokens", "model", "output_tokens", "stop", "text")

    def __init__(self) -> None:
        self.complete = False  # the answer is whole: a stop_reason or message_stop seen
        self.done = False  # message_stop seen: nothing more to read
        self.id: str | None = None
        self.model: str | None = None
        self.text = ""
        self.stop: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, name: str | None, data: str) -> str | None:
        """The text one event adds (None: none). Raises ValueError when its data is not a JSON
        object, a :class:`~flashkit.errors.StructuredError` for an ``error`` event."""
        event = json.loads(data)
        if not isinstance(event, dict):
            raise ValueError("an event's data is not an object")
        kind = event.get("type", name)
        if kind == "content_block_delta" or kind == "content_block_start":
            part = event.get("delta" if kind == "content_block_delta" else "content_block")
            text = _text_of(part, "text_delta" if kind == "content_block_delta" else "text")
            if text:
                self.text += text
            return text
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.id, self.model = message.get("id"), message.get("model")
                self._usage(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop = delta["stop_reason"]
                self.complete = True
            self._usage(event.get("usage"))
        elif kind == "message_stop":
            self.complete = self.done = True
            self.stop = self.stop or "end_turn"
        elif kind == "error":
            raise event_error(event.get("error"))
        return None  # ping, content_block_stop, and events this client does not use

    def _usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            if isinstance(usage.get("input_tokens"), int):
                self.input_tokens = usage["input_tokens"]
            if isinstance(usage.get("output_tokens"), int):  # cumulative: the last one counts
                self.output_tokens = usage["output_tokens"]

    def answer(self) -> dict[str, Any]:
        """The non-streamed Messages answer the events add up to."""
        data: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text}],
            "stop_reason": self.stop,
        }
        if self.input_tokens is not None or self.output_tokens is not None:
            data["usage"] = {
                "input_tokens": self.input_tokens or 0,
                "output_tokens": self.output_tokens or 0,
            }
        return data


def _text_of(part: object, kind: str) -> str | None:
    """The text of a content block or delta of type ``kind`` (None: not one, or empty)."""
    if isinstance(part, dict) and part.get("type") == kind:
        text = part.get("text")
        if isinstance(text, str) and text:
            return text
    return None
