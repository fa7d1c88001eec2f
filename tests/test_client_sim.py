"""LLMClient against the real simulated upstream (flashkit.sim), in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from flashkit.adaptive import AdaptiveRateLimiter
from flashkit.client import ChatResult, LLMClient
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import StructuredError
from flashkit.sim import FaultProfile, SimulatedUpstream

MESSAGES = [{"role": "user", "content": "안녕하세요"}]


class Recording(httpx.AsyncBaseTransport):
    """Wraps the simulator's transport: send times, and each 429's (arrival, retry-after)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: VirtualClock) -> None:
        self.inner, self.clock = inner, clock
        self.sent: list[float] = []
        self.holds: list[tuple[float, float]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(self.clock.now())
        response = await self.inner.handle_async_request(request)
        if response.status_code == 429 and "retry-after" in response.headers:
            self.holds.append((self.clock.now(), float(response.headers["retry-after"])))
        return response


def sends_inside_holds(recording: Recording) -> list[tuple[float, float, float]]:
    """Requests sent after a 429 arrived but before its retry-after expired."""
    return [
        (arrived, hold, sent)
        for arrived, hold in recording.holds
        for sent in recording.sent
        if arrived < sent < arrived + hold - 1e-9
    ]


def test_must_show_1000_calls_through_flaky_and_a_30s_outage() -> None:
    """1,000 calls (32 at a time) against `flaky` with an outage from 20 s to 50 s: every call
    ends with a result or a StructuredError (no other exception); failures are confined to the
    outage and its recovery (the breaker and the budget make them fail fast instead of piling
    retries on a dead upstream), and retries stay bounded."""
    clock = VirtualClock()
    profile = FaultProfile.preset("flaky", outages=((20.0, 50.0),))
    ends: list[tuple[float, bool]] = []

    async def main() -> tuple[list[Any], SimulatedUpstream, LLMClient]:
        upstream = SimulatedUpstream(profile, seed=7, clock=clock)
        client = LLMClient(provider="sim", transport=upstream.transport(), clock=clock)
        semaphore = asyncio.Semaphore(32)

        async def one() -> ChatResult | StructuredError:
            async with semaphore:
                try:
                    result = await client.chat(MESSAGES, max_tokens=200)
                except StructuredError as error:
                    ends.append((clock.now(), False))
                    return error
                ends.append((clock.now(), True))
                return result

        async with client:
            outcomes = await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)
        return outcomes, upstream, client

    outcomes, upstream, client = run_virtual(main(), clock=clock)
    unexpected = [o for o in outcomes if not isinstance(o, ChatResult | StructuredError)]
    assert unexpected == []
    assert len(ends) == 1000
    failures = [t for t, ok in ends if not ok]
    assert all(20.0 <= t < 60.0 for t in failures)  # the outage and 10 s of recovery
    assert sum(ok for _, ok in ends) >= 400
    assert upstream.stats.requests < 1.5 * 1000  # bounded retry amplification
    assert client.breaker is not None
    assert client.breaker.stats.trips >= 1


def test_never_sends_before_a_retry_after_expires() -> None:
    clock = VirtualClock()

    async def main() -> Recording:
        upstream = SimulatedUpstream("rate_limited", seed=3, clock=clock)
        recording = Recording(upstream.transport(), clock)
        client = LLMClient(provider="sim", transport=recording, clock=clock)
        async with client:
            await asyncio.gather(*(client.chat(MESSAGES) for _ in range(150)))
        return recording

    recording = run_virtual(main(), clock=clock)
    assert recording.holds, "the upstream said 429 at least once"
    assert sends_inside_holds(recording) == []


def test_adaptive_limiter_learns_the_simulators_limit() -> None:
    """Anthropic-style buckets and headers (limit hidden from the client): goodput near the
    limit, almost no 429s."""
    clock = VirtualClock()
    profile = FaultProfile(
        rpm=120, limit_mode="token_bucket", header_style="anthropic", bucket_fraction=0.05,
        latency_median=0.5, latency_p99=1.5,
    )  # fmt: skip

    async def main() -> tuple[int, int, float]:
        upstream = SimulatedUpstream(profile, seed=1, clock=clock)
        limiter = AdaptiveRateLimiter(initial_rate=30, clock=clock)
        client = LLMClient(
            provider="sim", transport=upstream.transport(), clock=clock, limiter=limiter
        )
        ok = limited = 0

        async def worker() -> None:
            nonlocal ok, limited
            while clock.now() < 60.0:
                try:
                    await client.chat(MESSAGES, max_tokens=50)
                    ok += 1
                except StructuredError:
                    pass
            limited = upstream.stats.rate_limited_total

        async with client:
            await asyncio.gather(*(worker() for _ in range(20)))
        return ok, limited, limiter.rate

    ok, limited, rate = run_virtual(main(), clock=clock)
    assert ok >= 0.9 * 120  # a minute's worth (the bucket starts small)
    assert limited <= 0.02 * (ok + limited)
    assert rate == pytest.approx(120 * 0.98, rel=0.05)


def test_generate_flashcard_both_stages() -> None:
    clock = VirtualClock()

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with LLMClient(provider="sim", clock=clock) as client:
            word = {"position": 1, "term": "내가", "type": "pronoun"}
            first = await client.generate_flashcard(word, 1)
            second = await client.generate_flashcard(word, 2, stage1=first["result"])
            return first, second

    first, second = run_virtual(main(), clock=clock)
    assert first["result"]["pos"] == "pronoun"  # the original lost it to "unknown"
    assert first["term"] == "내가"
    assert len(second["result"]) >= 2
    assert {card["tab_name"] for card in second["result"]} >= {"Scene"}
