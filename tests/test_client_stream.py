"""LLMClient.stream against the simulator's in-process transport, in virtual time.

Every answer of the ``FIXED`` profile takes exactly 2 virtual seconds: the headers and the role
chunk after 0.5 s (its time to first token), the text's pieces evenly over the rest. Network
faults come from ``network_windows`` open at t = 0 only, so the first request meets the fault
and its retry does not; where a fault cuts a stream (``u``, one of the seeded upstream's
draws), the seed is chosen for the case under test and the test asserts that case (how many
deltas came) before what follows from it. Nothing sleeps; the times asserted are read from the
virtual clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import pytest
from _sim_serve import INSTANT as INSTANT_SET
from _sim_serve import sim_serve

from flashkit import telemetry as tm
from flashkit.breaker import CircuitBreaker
from flashkit.client import STREAM_INTERRUPTED, ChatResult, ChatStream, LLMClient, breaker_handles
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import ErrorCategory, StructuredError
from flashkit.ratelimit import RateLimiter
from flashkit.retry import Jitter, RetryConfig
from flashkit.sim import FaultProfile, SimulatedUpstream

T = TypeVar("T")
LATENCY = 2.0  # virtual seconds per answer
FIRST = 0.5  # virtual seconds to the headers and the role chunk (first_token_fraction 0.25)
FIXED = FaultProfile(
    latency_median=LATENCY, latency_p99=LATENCY, reject_latency=0.0, first_token_fraction=0.25
)
HELLO = [{"role": "user", "content": "hello there, simulated friend"}]
TIMEOUT = 5.0  # the attempt timeout, virtual seconds
BACKOFF = 1.0  # the retry delay, virtual seconds (no jitter)
SEED_CUT_AFTER_ONE = 4  # reset_mid_body at t=0 cuts this seed's stream after one text delta
SEED_CUT_BEFORE_TEXT = 6  # ... this one's after the role chunk, before any text
SEED_STALL_BEFORE_TEXT = 4  # stall_after_headers at t=0: before any text
SEED_STALL_AFTER_TEXT = 0  # ... after some text


def virtual(factory: Callable[[VirtualClock], Awaitable[T]]) -> T:
    clock = VirtualClock()

    async def main() -> T:
        return await factory(clock)

    return run_virtual(main(), clock=clock)


class Probe(httpx2.AsyncBaseTransport):
    """The simulator's transport, counting the bodies opened and not yet closed (a connection
    a client leaked would stay open) and keeping each request's body."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = 0
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(await request.aread()))
        response = await self.inner.handle_async_request(request)
        self.open += 1
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Counted(self, response),
            request=request,
        )


class _Counted(httpx2.AsyncByteStream):
    def __init__(self, probe: Probe, response: httpx2.Response) -> None:
        self.probe, self.response, self.closed = probe, response, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes():
            yield chunk

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.probe.open -= 1
            await self.response.aclose()


def client_for(upstream: SimulatedUpstream, **options: Any) -> LLMClient:
    """A client on ``upstream`` (through a :class:`Probe`, as ``client.probe``): attempt
    timeout ``TIMEOUT``, retries after ``BACKOFF`` exactly, no budget."""
    probe = Probe(upstream.transport())
    options.setdefault("breaker", False)
    client = LLMClient(
        provider="sim",
        transport=probe,
        clock=upstream.clock,
        attempt_timeout=TIMEOUT,
        retry=RetryConfig(3, BACKOFF, BACKOFF, 1.0, Jitter.NONE),
        budget=False,
        **options,
    )
    client.probe = probe  # type: ignore[attr-defined]
    return client


def probe_of(client: LLMClient) -> Probe:
    probe: Probe = client.probe  # type: ignore[attr-defined]
    return probe


async def take(client: LLMClient, **options: Any) -> tuple[list[str], ChatStream]:
    """Every delta of one stream, and the stream."""
    async with client.stream(HELLO, **options) as stream:
        deltas = [delta async for delta in stream]
    return deltas, stream


async def take_into(client: LLMClient, got: list[str]) -> ChatStream:
    """One stream, its deltas appended to ``got`` as they come (kept when it fails)."""
    async with client.stream(HELLO) as stream:
        async for delta in stream:
            got.append(delta)  # noqa: PERF401 - kept one by one: the stream may break
    return stream


def windowed(fault: str) -> FaultProfile:
    """``FIXED`` with ``fault`` for the requests that arrive in the first virtual second."""
    return dataclasses.replace(FIXED, network_windows=((0.0, 1.0, fault),))


# --- the answer ------------------------------------------------------------------------------


def test_deltas_come_in_order_and_add_up_to_the_plain_answer() -> None:
    """The deltas, joined, are the answer chat() gets from the same seed; they come as the
    upstream sends them (entering returns at the first one, the last at 2 s); the result has
    the stream's usage and finish reason; usage was asked for; every body was closed."""

    async def run(clock: VirtualClock) -> tuple[Any, ...]:
        streaming = client_for(SimulatedUpstream(FIXED, seed=3, clock=clock))
        async with streaming:
            times: list[float] = []
            async with streaming.stream(HELLO) as stream:
                entered = clock.now()
                deltas = []
                async for delta in stream:
                    deltas.append(delta)
                    times.append(clock.now())
            ended = clock.now()
        plain = client_for(SimulatedUpstream(FIXED, seed=3, clock=clock))
        async with plain:
            answer = await plain.chat(HELLO)
        return deltas, times, entered, ended, stream, answer, probe_of(streaming)

    deltas, times, entered, ended, stream, answer, probe = virtual(run)
    assert len(deltas) > 3
    assert all(deltas)
    assert "".join(deltas) == answer.content == stream.text
    result = stream.result
    assert isinstance(result, ChatResult)
    assert result.content == answer.content
    assert result.usage == answer.usage is not None
    assert result.finish_reason == "stop"
    assert result.attempts == 1
    assert stream.error is None
    gap = (LATENCY - FIRST) / len(deltas)
    assert entered == pytest.approx(FIRST + gap)
    assert stream.time_to_first_token == pytest.approx(FIRST + gap)
    assert times == sorted(times)
    assert times[-1] == pytest.approx(LATENCY)
    assert ended == pytest.approx(LATENCY)
    assert result.latency == pytest.approx(LATENCY)
    (body,) = probe.bodies
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert probe.open == 0


def test_token_limiter_is_settled_with_the_streams_usage() -> None:
    """The token limiter is charged max_tokens plus a prompt estimate while the stream runs,
    and settled with the usage of the stream's last chunk when it ends."""
    max_tokens = 500

    async def run(clock: VirtualClock) -> tuple[float, float, ChatResult | None]:
        tokens = RateLimiter(10_000, 60.0, clock=clock, name="tokens")
        client = client_for(SimulatedUpstream(FIXED, clock=clock), token_limiter=tokens)
        async with client, client.stream(HELLO, max_tokens=max_tokens) as stream:
            during = tokens.remaining()
            async for _ in stream:
                pass
        return during, tokens.remaining(), stream.result

    during, after, result = virtual(run)
    assert result is not None
    assert result.usage is not None
    assert during <= 10_000 - max_tokens  # the estimate, charged while the stream runs
    assert after == pytest.approx(10_000 - result.usage.total_tokens)


# --- failures --------------------------------------------------------------------------------


def test_a_reset_after_the_first_delta_is_a_structured_error_and_not_retried() -> None:
    """The connection is reset after one delta reached the caller: entering succeeded, the
    iteration raises stream_interrupted (not retryable, the reset chained), the upstream saw
    one request, the breaker counted a failure, and the body was closed."""

    async def run(clock: VirtualClock) -> tuple[Any, ...]:
        upstream = SimulatedUpstream(
            windowed("reset_mid_body"), seed=SEED_CUT_AFTER_ONE, clock=clock
        )
        breaker = CircuitBreaker(min_throughput=100, handled=breaker_handles, clock=clock)
        client = client_for(upstream, breaker=breaker)
        got: list[str] = []
        async with client:
            with pytest.raises(StructuredError) as info:
                await take_into(client, got)
        return got, info.value, upstream, breaker, probe_of(client)

    got, error, upstream, breaker, probe = virtual(run)
    assert len(got) == 1  # the case under test: the cut falls after the first text delta
    assert error.code == STREAM_INTERRUPTED
    assert error.category is ErrorCategory.EXTERNAL_SERVICE
    assert error.retryable is False
    assert error.details == {"deltas": 1, "cause": "connection_error"}
    assert isinstance(error.__cause__, StructuredError)
    assert error.__cause__.code == "connection_error"
    assert upstream.stats.requests == 1
    assert upstream.stats.network_faults == {"reset_mid_body": 1}
    assert breaker.stats.failures == 1
    assert probe.open == 0


@pytest.mark.parametrize(
    ("fault", "seed"),
    [("reset_before_headers", 0), ("reset_mid_body", SEED_CUT_BEFORE_TEXT)],
)
def test_a_reset_before_the_first_delta_is_retried(fault: str, seed: int) -> None:
    """A reset before any text reached the caller (before the headers; after the headers and
    the role chunk) is retried: two requests, the whole answer once, nothing of the failed
    attempt delivered."""

    async def run(clock: VirtualClock) -> tuple[list[str], ChatStream, SimulatedUpstream, str]:
        upstream = SimulatedUpstream(windowed(fault), seed=seed, clock=clock)
        client = client_for(upstream)
        async with client:
            deltas, stream = await take(client)
        clean = client_for(SimulatedUpstream(FIXED, seed=seed, clock=clock))
        async with clean:
            answer = await clean.chat(HELLO)
        return deltas, stream, upstream, answer.content

    deltas, stream, upstream, plain = virtual(run)
    assert upstream.stats.requests == 2
    assert upstream.stats.network_faults == {fault: 1}
    assert stream.result is not None
    assert stream.result.attempts == 2
    assert "".join(deltas) == stream.result.content
    assert len(stream.result.content) == len(plain)  # the whole answer, nothing twice
    # The first attempt failed when its headers were due (FIRST), then BACKOFF, then the
    # second attempt's time to first token.
    gap = (LATENCY - FIRST) / len(deltas)
    assert stream.time_to_first_token == pytest.approx(FIRST + BACKOFF + FIRST + gap)


def test_a_stall_before_the_first_delta_is_cut_by_the_attempt_timeout_and_retried() -> None:
    async def run(clock: VirtualClock) -> tuple[list[str], ChatStream, SimulatedUpstream]:
        upstream = SimulatedUpstream(
            windowed("stall_after_headers"), seed=SEED_STALL_BEFORE_TEXT, clock=clock
        )
        async with client_for(upstream) as client:
            deltas, stream = await take(client)
        return deltas, stream, upstream

    _deltas, stream, upstream = virtual(run)
    assert upstream.stats.requests == 2
    assert stream.result is not None
    assert stream.result.attempts == 2
    # cut at TIMEOUT (not after the 300 s stall), BACKOFF, then a whole answer
    assert stream.result.latency == pytest.approx(TIMEOUT + BACKOFF + LATENCY)


def test_a_stall_after_the_first_delta_ends_the_stream_at_the_attempt_timeout() -> None:
    async def run(clock: VirtualClock) -> tuple[list[str], StructuredError, float, int]:
        upstream = SimulatedUpstream(
            windowed("stall_after_headers"), seed=SEED_STALL_AFTER_TEXT, clock=clock
        )
        got: list[str] = []
        async with client_for(upstream) as client:
            with pytest.raises(StructuredError) as info:
                await take_into(client, got)
        return got, info.value, clock.now(), upstream.stats.requests

    got, error, ended, requests = virtual(run)
    assert got  # the case under test: the stall falls after some text
    assert error.code == STREAM_INTERRUPTED
    assert error.retryable is False
    assert error.details["cause"] == "attempt_timeout"
    assert ended == pytest.approx(TIMEOUT)  # not the stall's 300 s
    assert requests == 1


def test_rejections_before_the_stream_are_raised_on_entering_after_the_retries() -> None:
    """Nothing reached the caller: the failure (here a 503 every time, retries exhausted)
    raises from ``async with``, never from the iteration."""

    async def run(clock: VirtualClock) -> tuple[StructuredError, SimulatedUpstream, list[str]]:
        upstream = SimulatedUpstream(dataclasses.replace(FIXED, error_rate=1.0), clock=clock)
        inside: list[str] = []

        async def enter(client: LLMClient) -> None:
            async with client.stream(HELLO):
                inside.append("entered")

        async with client_for(upstream) as client:
            with pytest.raises(StructuredError) as info:
                await enter(client)
        return info.value, upstream, inside

    error, upstream, inside = virtual(run)
    assert inside == []
    assert error.code == "retry_exhausted"
    assert upstream.stats.requests == 3


# --- leaving early ---------------------------------------------------------------------------


def test_leaving_early_closes_the_connection_and_frees_the_slot() -> None:
    """A caller that breaks out after the first delta: the body is closed at once, the
    max_in_flight slot is free for the next call (which would wait forever otherwise), the
    breaker counts nothing, the token estimate stays charged (the usage never came) and the
    span says the call was cancelled."""
    max_tokens = 500
    telemetry = tm.configure_opentelemetry(in_memory=True, set_global=False)

    async def run(clock: VirtualClock) -> tuple[Any, ...]:
        tokens = RateLimiter(10_000, 60.0, clock=clock, name="tokens")
        breaker = CircuitBreaker(min_throughput=100, handled=breaker_handles, clock=clock)
        upstream = SimulatedUpstream(FIXED, clock=clock)
        client = client_for(upstream, token_limiter=tokens, max_in_flight=1, breaker=breaker)
        async with client:
            async with client.stream(HELLO, max_tokens=max_tokens) as stream:
                async for _ in stream:
                    break
            left_at, open_after, remaining = clock.now(), probe_of(client).open, tokens.remaining()
            async with asyncio.timeout(60.0):  # virtual: a slot still taken would hang here
                answer = await client.chat(HELLO, max_tokens=max_tokens)
        return left_at, open_after, remaining, answer, breaker, stream

    try:
        left_at, open_after, remaining, answer, breaker, stream = virtual(run)
        spans = telemetry.finished_spans()
    finally:
        telemetry.shutdown()
    assert left_at == pytest.approx(stream.time_to_first_token)  # nothing waited for the rest
    assert open_after == 0
    assert remaining <= 10_000 - max_tokens
    assert answer.content
    assert breaker.stats.failures == 0
    assert stream.result is None
    assert stream.error is None
    assert [span.attributes["outcome"] for span in spans] == ["cancelled", "ok"]  # type: ignore[index]


def test_iterating_outside_the_block_is_refused() -> None:
    async def run(clock: VirtualClock) -> StructuredError:
        async with client_for(SimulatedUpstream(FIXED, clock=clock)) as client:
            stream = client.stream(HELLO)
            with pytest.raises(StructuredError) as info:
                await stream.__anext__()
        return info.value

    assert virtual(run).code == "invalid_usage"


# --- telemetry -------------------------------------------------------------------------------


def test_time_to_first_token_is_on_the_attempt_span() -> None:
    """Each attempt's ``flashkit.attempt`` event: the failed one (reset before the headers)
    has no ``ttft``, the good one has its time to first token, seconds from its own request."""
    telemetry = tm.configure_opentelemetry(in_memory=True, set_global=False)

    async def run(clock: VirtualClock) -> tuple[list[str], ChatStream]:
        upstream = SimulatedUpstream(windowed("reset_before_headers"), clock=clock)
        async with client_for(upstream) as client:
            return await take(client, stage="demo")

    try:
        deltas, stream = virtual(run)
        (span,) = telemetry.finished_spans()
    finally:
        telemetry.shutdown()
    events = [event.attributes or {} for event in span.events if event.name == "flashkit.attempt"]
    assert [event["attempt"] for event in events] == [1, 2]
    assert "ttft" not in events[0]
    assert events[0]["error.type"] == "ExternalServiceError"
    assert events[1]["ttft"] == pytest.approx(FIRST + (LATENCY - FIRST) / len(deltas))
    assert events[1]["http.status_code"] == 200
    attributes = span.attributes or {}
    assert attributes["outcome"] == "ok"
    assert stream.result is not None
    assert stream.result.usage is not None
    assert attributes["tokens"] == stream.result.usage.total_tokens


# --- over a real socket ----------------------------------------------------------------------


def test_stream_over_flashkit_sim_serve() -> None:
    """The same stream over HTTP from a real ``flashkit sim serve`` (system clock; nothing
    timed): deltas that add up to the plain answer, usage, a time to first token."""

    async def main(base_url: str) -> tuple[list[str], ChatStream, ChatResult]:
        async with LLMClient(provider="sim", base_url=f"{base_url}/v1") as client:
            deltas, stream = await take(client)
            plain = await client.chat(HELLO)
        return deltas, stream, plain

    with sim_serve("healthy", *INSTANT_SET) as base_url:
        deltas, stream, plain = asyncio.run(main(base_url))
    assert len(deltas) > 3
    assert "".join(deltas) == plain.content
    assert stream.result is not None
    assert stream.result.usage == plain.usage is not None
    assert stream.time_to_first_token is not None
    assert stream.time_to_first_token >= 0.0
