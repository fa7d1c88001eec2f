"""Server-sent events, and the OpenAI chat-completions answer in both of its forms: one JSON
``chat.completion``, or a stream of ``chat.completion.chunk`` events ending in ``data: [DONE]``.

A stream is returned in three parts (:class:`Events`) so the upstream can time it: ``head``
goes out with the headers (after the time to first token), each ``body`` event after its share
of the rest of the latency, ``tail`` right after the last one.

The OpenAI stream, as the API sends it: the first chunk's delta is ``{"role": "assistant",
"content": ""}``, then one chunk per piece of text (``{"content": ...}``), then a chunk with an
empty delta and the ``finish_reason``; with ``stream_options.include_usage`` every chunk carries
``"usage": null`` and a last chunk with no choices carries the usage; then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NamedTuple

from flashkit.sim._content import Answer

__all__ = [
    "EVENT_STREAM",
    "Events",
    "chat_chunks",
    "chat_completion",
    "event",
    "malformed_event",
    "pieces",
]

EVENT_STREAM: Final = "text/event-stream; charset=utf-8"
_PIECE: Final = re.compile(r"\S+\s*|\s+")
_DONE: Final = b"data: [DONE]\n\n"
_MALFORMED: Final = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


class Events(NamedTuple):
    """A stream's events (each one complete SSE event, as bytes): see the module docstring."""

    head: list[bytes]
    body: list[bytes]
    tail: list[bytes]


def event(data: Any, name: str | None = None) -> bytes:
    """One SSE event: ``event: name`` (if any) and ``data:`` with ``data`` as compact JSON."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {name}\n" if name is not None else ""
    return f"{prefix}data: {payload}\n\n".encode()


def malformed_event(name: str | None = None) -> bytes:
    """An event whose data is not JSON (a proxy's error page in the middle of a stream)."""
    prefix = f"event: {name}\n".encode() if name is not None else b""
    return prefix + b"data: " + _MALFORMED + b"\n\n"


def pieces(text: str) -> list[str]:
    """``text`` cut into the pieces a stream sends: each word with the white space after it."""
    return _PIECE.findall(text) or [""]


def chat_completion(answer: Answer) -> str:
    """The non-streamed ``chat.completion`` object, as JSON text."""
    return json.dumps(
        {
            "id": f"chatcmpl-sim{answer.serial:08d}",
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.finish,
                }
            ],
            "usage": _usage(answer),
        },
        ensure_ascii=False,
    )


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt,
        "completion_tokens": answer.completion,
        "total_tokens": answer.prompt + answer.completion,
    }


def chat_chunks(answer: Answer, *, include_usage: bool) -> Events:
    """The streamed answer: ``chat.completion.chunk`` events and ``[DONE]``."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-sim{answer.serial:08d}",
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return event(data)

    head = [chunk({"role": "assistant", "content": ""})]
    body = [chunk({"content": piece}) for piece in pieces(answer.text)]
    tail = [chunk({}, answer.finish)]
    if include_usage:
        tail.append(event({**base, "choices": [], "usage": _usage(answer)}))
    tail.append(_DONE)
    return Events(head, body, tail)
