"""Streamed chat completions: :class:`ChatStream`, what :meth:`LLMClient.stream
<flashkit.client.LLMClient.stream>` returns.

>>> async with client.stream([{"role": "user", "content": "안녕"}], max_tokens=200) as stream:
...     async for delta in stream:                  # the answer's text, piece by piece
...         print(delta, end="", flush=True)
>>> stream.result.usage                             # a ChatResult once the stream has ended

A stream is one call of the client's pipeline: each attempt passes the same gate, limiters and
breaker as :meth:`~flashkit.client.LLMClient.chat` (the same code: ``LLMClient._attempt`` with
this module's exchange in place of the plain one) and is retried by the same policy, with one
rule more: **nothing is retried once a delta has reached the caller.** Until then any failure
(a refused connection, a reset before the headers or before the first delta, a 429, a 5xx, a
timeout) is retried as for ``chat``; after it a failure ends the stream with an
:class:`~flashkit.errors.ExternalServiceError` of ``code="stream_interrupted"`` (category
``external_service``, ``retryable=False`` for the caller: a repeat would send the deltas again),
the cause chained, ``details["cause"]`` its code and ``details["deltas"]`` how many came.

Why an async context manager and not an async generator: an ``async for`` over a generator that
the caller leaves early (``break``, an exception, a cancellation) leaves the generator suspended
until the garbage collector or the event loop's shutdown finalises it, in another task: the
connection, the ``max_in_flight`` slot and a half-open breaker's probe stay taken until then.
``async with`` ends all of it when the block ends, in the caller's task. The work runs in a task
of its own that reads the stream as it comes (the deltas wait in a queue for the caller), so a
slow caller neither holds the connection longer nor eats into the attempt's timeout, and a
timeout never fires inside the caller's code; leaving the block cancels that task and waits for
it.

Times are seconds on the client's clock. ``attempt_timeout`` bounds an attempt's whole exchange,
from sending the request to the stream's last byte (a stall is cut by it); the call's
``deadline`` bounds the whole call, the stream included.

What is settled when: the token limiter's estimate with the stream's ``usage`` (asked for with
``stream_options.include_usage``; Anthropic's ``message_start``/``message_delta``) once the
stream has ended; with a rejection's status as for ``chat``; a stream cut short (by a failure or
by the caller leaving early) keeps its estimate charged: its usage never came, and the upstream
may have generated up to ``max_tokens``. The breaker counts a stream that fails mid-way as a
failure; a stream the caller leaves early counts neither way (a half-open probe is handed back).
Telemetry: the call's span and one ``flashkit.attempt`` event per attempt as for ``chat``, with
``ttft``: seconds from sending the attempt's request to its first delta.

A server that answers a stream request with plain JSON (no ``text/event-stream``) is read whole
and its text given as one delta. Streams are never hedged and never cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import httpx2

from flashkit.client._dialects import Dialect, SSEDecoder, StreamEvents
from flashkit.client._latency import LatencyTracker
from flashkit.client._types import ChatResult, malformed
from flashkit.errors import (
    ErrorCategory,
    ExternalServiceError,
    StructuredError,
    ValidationError,
    classify,
    is_retryable,
)
from flashkit.retry import RetryConfig

__all__ = ["STREAM_INTERRUPTED", "ChatStream", "interrupted", "stream_retry"]

STREAM_INTERRUPTED: Final = "stream_interrupted"
"""The ``code`` of a failure after a delta reached the caller (never retried)."""

_ACCEPT_SSE: Final = {"accept": "text/event-stream"}
_MAX_MESSAGE: Final = 400  # characters of the cause's message kept in an interruption's


class _Attempt(Protocol):
    """What the exchange reads and writes of the client's per-call state (``_Call``)."""

    content: bytes
    ttft: float | None


Exchange = Callable[[Any], Awaitable[tuple[httpx2.Response, dict[str, Any]]]]


class _Client(Protocol):
    """What a stream needs of its :class:`~flashkit.client.LLMClient`: the shared steps of an
    attempt (see ``LLMClient._exchange``) and the call pipeline."""

    name: str
    latency: LatencyTracker
    _http: httpx2.AsyncClient
    _url: httpx2.URL
    _dialect: Dialect
    _now: Callable[[], float]

    def _arm(self, call: Any) -> float | None: ...

    def _timed_out(
        self, call: Any, limit: float | None, error: BaseException
    ) -> StructuredError: ...

    async def _check(self, call: Any, response: httpx2.Response) -> None: ...

    @property
    def _chat(self) -> Callable[..., Awaitable[ChatResult]]: ...  # LLMClient._chat

    def _scrub(self, error: BaseException) -> None: ...


def interrupted(error: StructuredError, deltas: int) -> ExternalServiceError:
    """The error a stream ends with when ``error`` came after ``deltas`` deltas reached the
    caller: ``stream_interrupted``, not retryable, ``error`` chained."""
    details: dict[str, Any] = {"deltas": deltas, "cause": error.code}
    status = error.details.get("status_code")
    if isinstance(status, int):
        details["status_code"] = status
    return ExternalServiceError(
        f"the stream broke after {deltas} delta(s) had reached the caller "
        f"({error.category.value}/{error.code}): {error.message[:_MAX_MESSAGE]}",
        code=STREAM_INTERRUPTED,
        details=details,
        original_exception=error,
        retryable=False,
    )


def stream_retry(config: RetryConfig) -> RetryConfig:
    """``config`` for streams: a ``stream_interrupted`` failure is never retried, whatever its
    ``retry_if`` says, and there is no ``retry_if_result`` (a streamed answer has been seen by
    the caller: it cannot be asked for again)."""
    check = config.retry_if

    def retry_if(error: BaseException) -> bool:
        if isinstance(error, StructuredError) and error.code == STREAM_INTERRUPTED:
            return False
        return check(error) if check is not None else is_retryable(error)

    return dataclasses.replace(config, retry_if=retry_if, retry_if_result=None)


class ChatStream:
    """One streamed chat completion: an async context manager and, inside it, an async iterator
    of the answer's text deltas (``str``, in order, never empty). See the module docstring.

    Entering sends the request and returns once the first delta has come (or the answer ended
    without text); a failure before that, after the client's retries, raises from ``async
    with``: nothing reached the caller. After it, a failure raises from the iteration as a
    ``stream_interrupted`` error. Leaving the block closes the connection and ends the call.

    Attributes: ``text`` (the deltas the caller has taken so far, joined), ``result`` (a
    :class:`~flashkit.client.ChatResult` once the stream ended well: content, usage, attempts,
    latency, finish reason; None before or after a failure), ``error`` (the failure, or None),
    ``time_to_first_token`` (seconds from entering to the first delta, waits and retries
    included; None before it).
    """

    __slots__ = (
        "_body",
        "_client",
        "_delivered",
        "_exited",
        "_opened",
        "_parts",
        "_queue",
        "_stage",
        "_start",
        "_task",
        "error",
        "result",
        "time_to_first_token",
    )

    def __init__(self, client: _Client, body: dict[str, Any], stage: int | str | None) -> None:
        self._client = client
        self._body = body
        self._stage = stage
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._opened = asyncio.Event()
        self._delivered = 0
        self._parts: list[str] = []
        self._exited = False
        self._start = 0.0
        self.result: ChatResult | None = None
        self.error: StructuredError | None = None
        self.time_to_first_token: float | None = None

    def __repr__(self) -> str:
        if self.error is not None:
            state = "failed"
        elif self.result is not None:
            state = "done"
        elif self._exited:
            state = "closed"
        else:
            state = "new" if self._task is None else "open"
        return f"<ChatStream {state}, {len(self._parts)} delta(s) taken>"

    @property
    def text(self) -> str:
        """The deltas the caller has taken so far, joined."""
        return "".join(self._parts)

    # --- the caller's side -------------------------------------------------------------------
    async def __aenter__(self) -> ChatStream:
        if self._task is not None:
            raise ValidationError(
                "a ChatStream is entered once; call client.stream(...) again for another",
                code="invalid_usage",
            )
        self._start = self._client._now()
        self._task = asyncio.create_task(self._produce(), name=f"{self._client.name}.stream")
        try:
            await self._opened.wait()
        except BaseException:  # cancelled while waiting: end the call before leaving
            await self._stop()
            raise
        if self._delivered == 0 and self.error is not None:
            await self._stop()
            raise self.error
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        if self._task is None or self._exited:
            raise ValidationError(
                "iterate a ChatStream inside its block: "
                "`async with client.stream(...) as stream: async for delta in stream`",
                code="invalid_usage",
            )
        item = await self._queue.get()
        if item is not None:
            self._parts.append(item)
            return item
        self._queue.put_nowait(None)  # every later call ends the same way
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    async def _stop(self) -> None:
        """Cancel the call's task unless it has ended, and wait until it has."""
        self._exited = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))

    # --- the call's task ---------------------------------------------------------------------
    async def _produce(self) -> None:
        client = self._client
        try:
            self.result = await client._chat(self._body, False, None, self._stage, self._exchange)
        except StructuredError as error:  # scrubbed of the key by _chat
            if self._delivered and error.code != STREAM_INTERRUPTED:
                error = interrupted(error, self._delivered)
            self.error = error
        except Exception as error:  # a bug: reported to the caller, not lost in this task
            wrapped = StructuredError(
                ErrorCategory.INTERNAL,
                "unexpected_error",
                f"{type(error).__name__}: {error}",
                original_exception=error,
            )
            client._scrub(wrapped)
            self.error = wrapped
        finally:
            self._queue.put_nowait(None)
            self._opened.set()

    def _deliver(self, call: _Attempt, sent: float, text: str) -> None:
        """Hand ``text`` to the caller; the first time, note the time to first token."""
        if call.ttft is None:
            now = self._client._now()
            call.ttft = now - sent
            if self.time_to_first_token is None:
                self.time_to_first_token = now - self._start
        self._delivered += 1
        self._queue.put_nowait(text)
        self._opened.set()

    async def _exchange(self, call: _Attempt) -> tuple[httpx2.Response, dict[str, Any]]:
        """One attempt's exchange (in place of ``LLMClient._exchange``): send, check the status,
        read the stream to its end under the attempt timeout, handing each delta over as it
        comes. Raises a StructuredError for every failure: ``stream_interrupted`` once a delta
        went out. Returns the response and the answer the stream adds up to."""
        client = self._client
        limit = client._arm(call)
        call.ttft = None
        http = client._http
        request = http.build_request("POST", client._url, content=call.content, headers=_ACCEPT_SSE)
        sent = client._now()
        try:
            async with asyncio.timeout(limit):
                response = await http.send(request, stream=True)
                try:
                    data = await self._read(call, response, sent)
                finally:
                    await response.aclose()
        except TimeoutError as error:
            failure = client._timed_out(call, limit, error)
        except httpx2.HTTPError as error:
            failure = classify(error) or ExternalServiceError(str(error), original_exception=error)
        except StructuredError as error:
            failure = error
        else:
            client.latency.observe(client._now() - sent)
            return response, data
        raise self._cut(failure)  # each chained to its cause (original_exception)

    def _cut(self, error: StructuredError) -> StructuredError:
        """``error`` as the attempt fails with it: interrupted once a delta went out."""
        if self._delivered and error.code != STREAM_INTERRUPTED:
            return interrupted(error, self._delivered)
        return error

    async def _read(self, call: _Attempt, response: httpx2.Response, sent: float) -> dict[str, Any]:
        client = self._client
        if response.status_code >= 400:
            await response.aread()  # the error's body, for classify
        await client._check(call, response)  # raises a rejection, learns the limits
        dialect = client._dialect
        if "text/event-stream" not in response.headers.get("content-type", ""):
            return await self._whole(call, response, sent, dialect)
        events: StreamEvents = dialect.events()
        decoder = SSEDecoder()
        async for line in response.aiter_lines():
            event = decoder.feed(line)
            if event is not None:
                self._feed(call, sent, events, event, response)
                if events.done:
                    break
        else:
            event = decoder.end()
            if event is not None:
                self._feed(call, sent, events, event, response)
        if not events.complete:
            raise malformed("the stream ended before the answer did", response)
        return events.answer()

    def _feed(
        self,
        call: _Attempt,
        sent: float,
        events: StreamEvents,
        event: tuple[str | None, str],
        response: httpx2.Response,
    ) -> None:
        try:
            text = events.feed(*event)
        except ValueError as error:
            raise malformed(f"an event is not JSON ({type(error).__name__})", response) from error
        if text:
            self._deliver(call, sent, text)

    async def _whole(
        self, call: _Attempt, response: httpx2.Response, sent: float, dialect: Dialect
    ) -> dict[str, Any]:
        """A plain JSON answer to a stream request: its text as one delta."""
        body = await response.aread()
        try:
            data = json.loads(body)
            text, _ = dialect.answer(data)
        except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError) as error:
            raise malformed(
                f"neither an event stream nor an answer ({type(error).__name__})", response
            ) from error
        if not isinstance(text, str):
            raise malformed("message content is not text", response)
        if text:
            self._deliver(call, sent, text)
        return dict(data)
