"""LLMClient's limit-aware hedging, latency-derived attempt timeouts and waiting for an open
breaker, in virtual time: upstreams answer after scripted virtual seconds, no test sleeps."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from flashkit import telemetry as tm
from flashkit.breaker import CircuitBreaker, CircuitState
from flashkit.budget import RetryBudget
from flashkit.client import ChatResult, FromLatency, LatencyTracker, LLMClient
from flashkit.client._hedging import take_room
from flashkit.clock import VirtualClock, run_virtual
from flashkit.config import Settings, build_client, load_settings, original_settings
from flashkit.errors import CircuitOpenError, RetryExhausted, ValidationError
from flashkit.ratelimit import RateLimiter
from flashkit.retry import RetryConfig

MESSAGES = [{"role": "user", "content": "안녕하세요"}]
ENVELOPE = {
    "id": "gen-1",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}


class Scripted:
    """An upstream whose n-th request (0-based) answers ``status(n)`` after ``latency(n)``
    virtual seconds; records when each was sent and how many were cancelled."""

    def __init__(
        self,
        latency: Callable[[int], float],
        status: Callable[[int], int] = lambda n: 200,
        *,
        clock: VirtualClock,
    ) -> None:
        self.latency, self.status, self.clock = latency, status, clock
        self.sent: list[float] = []
        self.cancelled = 0

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        n = len(self.sent)
        self.sent.append(self.clock.now())
        try:
            await asyncio.sleep(self.latency(n))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        status = self.status(n)
        return httpx2.Response(status, json=ENVELOPE if status < 400 else {"error": {}})

    def client(self, **options: Any) -> LLMClient:
        options.setdefault("api_key", "sk-test")
        options.setdefault("provider", "openai")
        return LLMClient(transport=httpx2.MockTransport(self), clock=self.clock, **options)


class Tokens(RetryBudget):
    """A budget of ``n`` retry tokens in all."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def _grant(self, timeout: bool) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@pytest.fixture
def telemetry() -> Iterator[tm.Telemetry]:
    t = tm.configure_opentelemetry(in_memory=True, set_global=False)
    yield t
    t.shutdown()


# --- the latency tracker and the bounds derived from it -----------------------------------------
def test_tracker_keeps_a_window_of_recent_samples_and_forgets_old_ones() -> None:
    clock = VirtualClock()
    tracker = LatencyTracker(5, max_age=10.0, clock=clock)
    assert tracker.quantile(0.9) is None
    for seconds in (5.0, 1.0, 4.0, 2.0, 3.0):
        tracker.observe(seconds)
    assert (tracker.quantile(0.2), tracker.quantile(0.5), tracker.quantile(1.0)) == (1.0, 3.0, 5.0)
    tracker.observe(10.0)  # the window holds 5: the oldest (5.0) leaves
    assert len(tracker) == 5
    assert (tracker.quantile(0.8), tracker.quantile(1.0)) == (4.0, 10.0)
    tracker.observe(math.nan)  # not a latency: ignored
    tracker.observe(-1.0)
    assert len(tracker) == 5
    clock.advance(6.0)
    tracker.observe(0.5)
    clock.advance(5.0)  # the first samples are 11 s old, past max_age
    assert len(tracker) == 1
    assert tracker.quantile(0.99) == 0.5
    with pytest.raises(ValidationError):
        LatencyTracker(0)
    with pytest.raises(ValidationError):
        tracker.quantile(0.0)


def test_from_latency_is_a_quantile_times_a_factor_between_floor_and_ceiling() -> None:
    clock = VirtualClock()
    tracker = LatencyTracker(10, clock=clock)
    bound = FromLatency(0.9, factor=2.0, floor=1.0, ceiling=10.0, min_samples=3)
    tracker.observe(0.1)
    tracker.observe(0.1)
    assert bound.seconds(tracker) == 10.0  # too few samples: the ceiling
    tracker.observe(0.1)
    assert bound.seconds(tracker) == 1.0  # 0.2 s is below the floor
    for _ in range(10):
        tracker.observe(3.0)
    assert bound.seconds(tracker) == 6.0
    tracker.observe(30.0)
    tracker.observe(30.0)  # two of ten: the 0.9 quantile is 30 s
    assert bound.seconds(tracker) == 10.0  # the ceiling
    assert FromLatency(0.9).seconds(LatencyTracker(clock=clock)) is None  # no hedge yet
    for bad in ({"quantile": 0.0}, {"quantile": 0.9, "factor": 0.0}, {"quantile": 0.9,
                "floor": 5.0, "ceiling": 1.0}, {"quantile": 0.9, "min_samples": 0}):  # fmt: skip
        with pytest.raises(ValidationError):
            FromLatency(**bad)


# --- latency-derived attempt timeouts -----------------------------------------------------------
def test_the_derived_timeout_follows_a_latency_shift_within_a_bounded_number_of_calls() -> None:
    """q99 x 3 of the last 20 attempts: 1-s calls give a 3-s timeout. When calls take 8 s, the
    first attempt times out at 3 s (recorded as at least 3 s), its retry then has 9 s, and from
    the next call on the timeout covers the new latency: every call succeeds. When calls are fast
    again, the timeout is back to 3 s once the slow samples have left the window (20 calls)."""
    clock = VirtualClock()
    latency = [1.0]
    upstream = Scripted(lambda n: latency[0], clock=clock)
    bound = FromLatency(0.99, factor=3.0, floor=0.5, ceiling=60.0, min_samples=5)

    async def main() -> tuple[list[float], list[int], int, int]:
        timeouts: list[float] = []
        attempts: list[int] = []
        async with upstream.client(
            attempt_timeout=bound, latency_window=20, breaker=False, budget=False
        ) as client:
            assert client.timeout_now() == 60.0  # no samples yet: the ceiling
            for _ in range(25):
                await client.chat(MESSAGES)
            assert client.timeout_now() == 3.0
            latency[0] = 8.0
            up = 0
            while client.timeout_now() is not None and client.timeout_now() < 8.0:  # type: ignore[operator]
                attempts.append((await client.chat(MESSAGES)).attempts)
                up += 1
            for _ in range(5):
                attempts.append((await client.chat(MESSAGES)).attempts)
                timeouts.append(client.timeout_now())  # type: ignore[arg-type]
            latency[0] = 1.0
            down = 0
            while client.timeout_now() != 3.0:
                await client.chat(MESSAGES)
                down += 1
        return timeouts, attempts, up, down

    timeouts, attempts, up, down = run_virtual(main(), clock=clock)
    assert up == 1  # one call (two attempts) and the timeout covers 8-s calls
    assert attempts == [2, 1, 1, 1, 1, 1]
    assert all(8.0 < t <= 60.0 for t in timeouts)
    assert down == 20  # the window: bounded, whatever the shift
    assert upstream.cancelled == 1


def test_a_stalled_attempt_is_abandoned_and_retried_long_before_the_ceiling() -> None:
    """The tuned policy's bound (q99 x 3, at least 10 s, at most 60 s): after 1-s calls a
    request that never answers is abandoned after 10 s and retried, not after 60 s."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 1000.0 if n == 30 else 1.0, clock=clock)
    bound = FromLatency(0.99, factor=3.0, floor=10.0, ceiling=60.0)

    async def main() -> ChatResult:
        async with upstream.client(attempt_timeout=bound, budget=False) as client:
            for _ in range(30):
                await client.chat(MESSAGES)
            assert client.timeout_now() == 10.0
            return await client.chat(MESSAGES)

    result = run_virtual(main(), clock=clock)
    assert result.attempts == 2
    assert upstream.cancelled == 1
    assert 11.0 <= result.latency < 12.0  # 10 s, the retry's backoff (< 0.5 s), 1 s


# --- limit-aware hedging -----------------------------------------------------------------------
def test_a_hedge_is_never_sent_while_a_first_attempt_waits_on_the_limiter() -> None:
    """Two slow calls pass a limit of 2 per minute; a third waits on it for a minute. Their
    hedges are due after 1 s but skipped: the extra requests would go ahead of the waiting
    attempt. Nothing is sent at 1 s; the third call's request goes when its turn comes."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 5.0 if n < 2 else 0.5, clock=clock)
    limiter = RateLimiter(2, 60.0, clock=clock)

    async def main() -> tuple[list[ChatResult], Any]:
        async with upstream.client(hedge_after=1.0, limiter=limiter, budget=False) as client:
            results = await asyncio.gather(*(client.chat(MESSAGES) for _ in range(3)))
            return list(results), client.hedge_stats

    results, stats = run_virtual(main(), clock=clock)
    assert upstream.sent == [0.0, 0.0, 60.0]
    assert not any(result.hedged for result in results)
    assert (stats.sent, stats.won, stats.skipped) == (0, 0, 2)
    assert stats.skipped_by["queued"] == 2
    assert limiter.stats.admitted == 3  # the skipped hedges took nothing


def test_a_hedge_never_goes_ahead_of_another_clients_waiter() -> None:
    """The waiter may be anyone sharing the limiter: try_acquire never admits ahead of a queued
    acquire (the Limiter protocol), so the hedge is skipped for want of room."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 5.0, clock=clock)
    limiter = RateLimiter(3, 60.0, clock=clock)

    async def main() -> tuple[ChatResult, Any, float]:
        async with upstream.client(hedge_after=1.0, limiter=limiter, budget=False) as client:
            call = asyncio.ensure_future(client.chat(MESSAGES))
            await asyncio.sleep(0)
            other = asyncio.ensure_future(limiter.acquire(count=3))  # 2 left: it must wait
            result = await call
            grant = await other
            return result, client.hedge_stats, grant.admitted_at

    result, stats, admitted_at = run_virtual(main(), clock=clock)
    assert not result.hedged
    assert stats.skipped_by["limiter"] == 1
    assert upstream.sent == [0.0]
    assert admitted_at == 60.0  # the waiter's turn came as it would have without the client


def test_a_hedge_goes_out_from_spare_room_and_the_faster_answer_wins(
    telemetry: tm.Telemetry,
) -> None:
    """With room in the limiter and nobody waiting, a slow request gets its hedge; the hedge
    answers first and is used. Telemetry: hedges sent and won, the attempt's timeout and hedge
    on its event, the timeout in force as a gauge."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 30.0 if n == 0 else 0.5, clock=clock)
    limiter = RateLimiter(10, 60.0, clock=clock)

    async def main() -> tuple[ChatResult, Any]:
        async with upstream.client(
            hedge_after=1.0, attempt_timeout=60.0, limiter=limiter, name="cards"
        ) as client:
            return await client.chat(MESSAGES), client.hedge_stats

    result, stats = run_virtual(main(), clock=clock)
    assert result.hedged
    assert result.latency == pytest.approx(1.5)
    assert upstream.sent == [0.0, 1.0]
    assert upstream.cancelled == 1
    assert (stats.sent, stats.won, stats.skipped) == (1, 1, 0)
    assert limiter.stats.admitted == 2
    hedges = {
        p["attributes"]["hedge.outcome"]: p["value"] for p in telemetry.metrics()[tm.CLIENT_HEDGES]
    }
    assert hedges == {"sent": 1, "won": 1}
    (gauge,) = telemetry.metrics()[tm.CLIENT_ATTEMPT_TIMEOUT]
    assert (gauge["attributes"], gauge["value"]) == ({"client.name": "cards"}, 60.0)
    (span,) = telemetry.finished_spans()
    (event,) = [e for e in span.events if e.name == tm.ATTEMPT_EVENT]
    assert (event.attributes or {})["hedge"] == "won"
    assert (event.attributes or {})["timeout"] == 60.0


def test_hedges_stop_when_the_budget_is_empty(telemetry: tm.Telemetry) -> None:
    """A hedge is paid from the retry budget: with two tokens, two hedges go out; the next
    slow requests are not hedged (skipped: "budget") and nothing more is sent."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 3.0, clock=clock)
    budget = Tokens(2)

    async def main() -> Any:
        async with upstream.client(hedge_after=1.0, budget=budget) as client:
            for _ in range(5):
                await client.chat(MESSAGES)
            return client.hedge_stats

    stats = run_virtual(main(), clock=clock)
    assert (stats.sent, stats.won, stats.skipped) == (2, 0, 3)
    assert stats.skipped_by["budget"] == 3
    assert len(upstream.sent) == 5 + 2
    skipped = [
        p
        for p in telemetry.metrics()[tm.CLIENT_HEDGES]
        if p["attributes"]["hedge.outcome"] == "skipped"
    ]
    assert [(p["attributes"]["hedge.reason"], p["value"]) for p in skipped] == [("budget", 3)]


def test_a_hedge_delay_from_latency_waits_for_samples_and_then_follows_them() -> None:
    """hedge_after=FromLatency(0.9, floor=0.5): no hedge before 20 attempts are known; then a
    request slower than 90 % of them (here: 2 s, when they took 1 s) gets one at 1 s."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 1.0 if n < 20 else (10.0 if n == 20 else 1.0), clock=clock)

    async def main() -> tuple[ChatResult, Any]:
        async with upstream.client(hedge_after=FromLatency(0.9, floor=0.5)) as client:
            for _ in range(20):
                assert not (await client.chat(MESSAGES)).hedged
            return await client.chat(MESSAGES), client.hedge_stats

    result, stats = run_virtual(main(), clock=clock)
    assert result.hedged
    assert result.latency == pytest.approx(2.0)  # hedged after 1 s, answered 1 s later
    assert (stats.sent, stats.won) == (1, 1)


def test_a_request_sent_before_the_delay_is_known_gets_its_hedge_once_it_is() -> None:
    """The first request takes 10 s. Twenty quick ones after it (0.17 s each, one at a time)
    make the delay known at 3.41 s (the floor, 0.5 s). The first request, looked at again every
    second, gets its copy at 4 s, which answers 0.17 s later: not left to its 10 s because it
    was sent in the run's first seconds."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 10.0 if n == 0 else 0.17, clock=clock)

    async def main() -> tuple[ChatResult, Any]:
        async with upstream.client(hedge_after=FromLatency(0.9, floor=0.5)) as client:
            slow = asyncio.create_task(client.chat(MESSAGES))
            await asyncio.sleep(0.01)
            for _ in range(20):
                assert not (await client.chat(MESSAGES)).hedged
            return await slow, client.hedge_stats

    result, stats = run_virtual(main(), clock=clock)
    assert upstream.sent[0] == 0.0
    assert upstream.sent[21] == pytest.approx(4.0)  # the copy, at the first look past 3.41 s
    assert result.hedged
    assert result.latency == pytest.approx(4.17)
    assert (stats.sent, stats.won) == (1, 1)
    assert upstream.cancelled == 1  # the 10-s request


def test_room_for_a_hedge_is_taken_from_every_limiter_or_from_none() -> None:
    """The request limiter has room, the token limiter is full: nothing is taken, and the
    reason is the limiter; with room in both, both are charged and the budget pays a token."""
    clock = VirtualClock()
    requests = RateLimiter(10, 60.0, clock=clock)
    tokens = RateLimiter(1000, 60.0, clock=clock)
    assert tokens.try_acquire(count=900).allowed

    async def main() -> tuple[str | None, str | None]:
        refused = await take_room(((requests, 1), (tokens, 500)), key="default", budget=None)
        budget = Tokens(1)
        taken = await take_room(((requests, 1), (tokens, 100)), key="default", budget=budget)
        assert budget.left == 0
        return refused, taken

    refused, taken = run_virtual(main(), clock=clock)
    assert refused == "limiter"
    assert taken is None
    assert requests.remaining() == 9.0
    assert tokens.remaining() == 0.0


# --- waiting for an open breaker ----------------------------------------------------------------
@pytest.mark.parametrize("breaker_wait", [0.0, 10.0, 120.0])
def test_a_call_may_wait_for_an_open_breaker_without_spending_attempts(
    breaker_wait: float,
) -> None:
    """Two failures open the breaker for 30 s. A one-attempt call made then is rejected at once
    (breaker_wait 0, as before, or 10: the break is longer), or waits for the break, probes
    and succeeds, its one attempt unspent by the wait."""
    clock = VirtualClock()
    upstream = Scripted(lambda n: 0.01, lambda n: 500 if n < 2 else 200, clock=clock)
    breaker = CircuitBreaker(min_throughput=2, break_duration=30.0, clock=clock)

    async def main() -> ChatResult | BaseException:
        async with upstream.client(
            breaker=breaker, breaker_wait=breaker_wait, retry=RetryConfig(1), budget=False
        ) as client:
            for _ in range(2):
                with pytest.raises(RetryExhausted):
                    await client.chat(MESSAGES)
            try:
                return await client.chat(MESSAGES)
            except RetryExhausted as error:
                return error

    outcome = run_virtual(main(), clock=clock)
    if breaker_wait < 30.0:
        assert isinstance(outcome, RetryExhausted)
        assert isinstance(outcome.last_error, CircuitOpenError)
        assert len(upstream.sent) == 2
        assert breaker.state is CircuitState.OPEN
    else:
        assert isinstance(outcome, ChatResult)
        assert outcome.attempts == 1
        assert outcome.latency == pytest.approx(30.0, abs=0.05)
        assert upstream.sent[2] == pytest.approx(30.02, abs=1e-6)
        assert breaker.state is CircuitState.CLOSED


# --- on by default in the tuned settings, with switches -------------------------------------
def test_tuned_settings_hedge_and_derive_timeouts_and_the_switches_turn_them_off() -> None:
    local = {"run.provider": "openai", "run.base_url": "http://127.0.0.1:9/v1"}
    client = build_client(Settings().replace(local, "test"), api_key="k")
    assert client.attempt_timeout == FromLatency(0.99, factor=3.0, floor=10.0, ceiling=60.0)
    assert client._hedger is not None
    assert client._hedger.after == FromLatency(0.9, floor=1.0)
    assert client.breaker_wait == 600.0
    assert client.retry_config.backoff_from_start  # a slow failure counts towards its backoff
    off = load_settings(
        environ={"FLASHKIT_HEDGING": "off", "FLASHKIT_ADAPTIVE_TIMEOUT": "off"},
        overrides=local,
    )
    plain = build_client(off, api_key="k")
    assert plain.attempt_timeout == 60.0
    assert plain._hedger is None
    fixed = build_client(
        off.replace({"hedging.hedge": True, "hedging.after": 2.5}, "test"), api_key="k"
    )
    assert fixed._hedger is not None
    assert fixed._hedger.after == 2.5
    original = original_settings()
    assert (original.hedging.hedge, original.hedging.adaptive_timeout) == (False, False)
    assert original.retry.breaker_wait == 0.0
    assert not build_client(
        original.replace(local, "test"), api_key="k"
    ).retry_config.backoff_from_start
