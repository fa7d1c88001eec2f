"""The two APIs :class:`~flashkit.client.LLMClient` speaks, as :class:`Dialect` s: OpenAI's chat
completions (``openrouter``, ``openai``, ``sim``) and Anthropic's Messages (``anthropic``,
:mod:`flashkit.client._anthropic`); and the server-sent events their streams come in
(:class:`SSEDecoder`).

A dialect says where requests go (``path``), which headers carry the key, how a
chat-completions body becomes the wire's, how a body asks for a stream, how the text and finish
reason are read from an answer, and how a stream's events add up to that answer
(:class:`StreamEvents`).

The OpenAI stream (:class:`ChatChunks`): ``data: {chat.completion.chunk}`` events whose
``choices[0].delta.content`` are the text's pieces, one with the ``finish_reason``, with
``stream_options.include_usage`` (always asked for) a last chunk carrying ``usage``, then
``data: [DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx2

from flashkit.client._anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_ANTHROPIC_MODEL,
    MessageEvents,
    answer_of,
    auth_headers,
    event_error,
    messages_body,
)
from flashkit.client._types import malformed
from flashkit.errors import ExternalServiceError

__all__ = [
    "ANTHROPIC",
    "DIALECTS",
    "OPENAI",
    "ChatChunks",
    "Dialect",
    "SSEDecoder",
    "StreamEvents",
    "read_answer",
]


class StreamEvents(Protocol):
    """One streamed answer being read: :meth:`feed` each event, then :meth:`answer`.

    ``complete``: the answer is whole (its end or its finish reason came); ``done``: the stream's
    last event came, nothing more to read."""

    complete: bool
    done: bool

    def feed(self, name: str | None, data: str) -> str | None:
        """The text event ``name`` with ``data`` adds (None: none). Raises ValueError for data
        that is not the JSON expected, a StructuredError for an error event."""
        ...

    def answer(self) -> dict[str, Any]:
        """The non-streamed answer (the dialect's shape) the events so far add up to."""
        ...


class SSEDecoder:
    """Server-sent events from the lines of a body (``response.aiter_lines()``): ``(event name or
    None, data)`` once an event's blank line comes; comment lines (``:``) and other fields are
    skipped; several ``data:`` lines are joined by newlines."""

    __slots__ = ("_data", "_name")

    def __init__(self) -> None:
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        """The event that ``line`` ends, if it ends one."""
        if not line:
            return self.end()
        if line[0] == ":":
            return None
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None

    def end(self) -> tuple[str | None, str] | None:
        """The event in progress (a body may end without its blank line); None if there is none."""
        name, data = self._name, self._data
        self._name, self._data = None, []
        return (name, "\n".join(data)) if data else None


def chat_answer_of(data: Mapping[str, Any]) -> tuple[str, str | None]:
    """The text and finish reason of a ``chat.completion``; raises KeyError, IndexError or
    TypeError when it has no ``choices[0].message.content``."""
    choice = data["choices"][0]
    return choice["message"]["content"], choice.get("finish_reason")


class ChatChunks:
    """The ``chat.completion.chunk`` events of one streamed answer (see the module docstring)."""

    __slots__ = ("complete", "done", "finish", "id", "model", "text", "usage")

    def __init__(self) -> None:
        self.complete = False  # a finish_reason or [DONE] seen
        self.done = False  # [DONE] seen
        self.id: str | None = None
        self.model: str | None = None
        self.text = ""
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, name: str | None, data: str) -> str | None:
        if data == "[DONE]":
            self.complete = self.done = True
            return None
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise ValueError("a chunk is not an object")
        if "error" in chunk:
            raise event_error(chunk["error"])
        if self.id is None:
            self.id, self.model = chunk.get("id"), chunk.get("model")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return None
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return None
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self.finish = finish
            self.complete = True
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            self.text += text
            return text
        return None

    def answer(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish,
                }
            ],
        }
        if self.usage is not None:
            data["usage"] = self.usage
        return data


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"} if secret else {}


def _chat_stream(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    options = {**options, "include_usage": True} if isinstance(options, dict) else None
    return {**body, "stream": True, "stream_options": options or {"include_usage": True}}


def _messages_stream(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True}


@dataclass(frozen=True, slots=True)
class Dialect:
    """One API (see the module docstring). ``wire``: the chat-completions body to the wire's
    (None: sent as it is); ``headers``: sent with every request (before the user's, which win);
    ``auth``: the key's headers; ``stream_body``: a body asking for a stream (usage included);
    ``answer``: (text, finish reason) of a decoded answer; ``events``: a new
    :class:`StreamEvents`; ``default_model``: the model asked for when the client's is left at
    :data:`~flashkit.client.DEFAULT_MODEL` (None: that one)."""

    name: str
    path: str
    headers: Mapping[str, str]
    auth: Callable[[str], dict[str, str]]
    wire: Callable[[Mapping[str, Any]], dict[str, Any]] | None
    stream_body: Callable[[dict[str, Any]], dict[str, Any]]
    answer: Callable[[Mapping[str, Any]], tuple[str, str | None]]
    events: Callable[[], StreamEvents]
    default_model: str | None = None


OPENAI: Final = Dialect(
    "openai", "/chat/completions", {}, _bearer, None, _chat_stream, chat_answer_of, ChatChunks
)
ANTHROPIC: Final = Dialect(
    "anthropic",
    "/messages",
    {"anthropic-version": ANTHROPIC_VERSION},
    auth_headers,
    messages_body,
    _messages_stream,
    answer_of,
    MessageEvents,
    DEFAULT_ANTHROPIC_MODEL,
)
DIALECTS: Final[Mapping[str, Dialect]] = {"openai": OPENAI, "anthropic": ANTHROPIC}


def read_answer(
    dialect: Dialect,
    response: httpx2.Response,
    data: dict[str, Any],
    parse: Callable[[str], Any] | None,
) -> tuple[str, str | None]:
    """The text and finish reason of a decoded answer, and ``parse(text)`` in ``data["parsed"]``
    when a parser is given. Raises retryable errors: ``upstream_error`` for an error inside a 200
    answer (OpenRouter), ``malformed_response`` for an answer without text, ``unparsable_output``
    when ``parse`` raises ValueError, KeyError or TypeError."""
    try:
        content, finish = dialect.answer(data)
    except (KeyError, IndexError, TypeError):
        error_body = data.get("error")
        if isinstance(error_body, dict):  # OpenRouter: 200 with an upstream error inside
            raise ExternalServiceError(
                f"upstream error in a 200 answer: {str(error_body.get('message', ''))[:300]}",
                code="upstream_error",
                details={"status_code": response.status_code},
                retryable=True,
            ) from None
        what = "content[].text" if dialect.wire else "choices[0].message.content"
        raise malformed(f"no {what}", response) from None
    if not isinstance(content, str):
        raise malformed("message content is not text", response)
    if parse is not None:
        try:
            data["parsed"] = parse(content)
        except (ValueError, KeyError, TypeError) as error:
            raise ExternalServiceError(
                f"unparsable model output: {type(error).__name__}: {str(error)[:300]}",
                code="unparsable_output",
                details={"finish_reason": finish},
                retryable=True,
            ) from error
    return content, finish
