"""AdaptiveRateLimiter: learns a hidden limit (AIMD + headers), in virtual time."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit import AdaptiveRateLimiter, AdaptiveStats, LimiterStats


class Bucket:
    """The hidden upstream limit: a token bucket of ``rate`` per second holding ``burst``."""

    def __init__(self, clock: VirtualClock, rate: float, burst: float) -> None:
        self.clock, self.rate, self.cap = clock, rate, burst
        self.tokens, self.t = burst, clock.now()

    def take(self) -> tuple[bool, float]:
        now = self.clock.now()
        self.tokens = min(self.cap, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True, 0.0
        return False, (1 - self.tokens) / self.rate


@dataclass
class Run:
    ok: list[float] = field(default_factory=list)
    limited: list[float] = field(default_factory=list)
    limiter: AdaptiveRateLimiter | None = None

    def window(self, start: float, end: float) -> tuple[int, int]:
        good = sum(start <= t < end for t in self.ok)
        return good, sum(start <= t < end for t in self.limited)


def simulate(
    *,
    headers: bool,
    limit: float = 10.0,
    change_at: float | None = None,
    new_limit: float = 5.0,
    until: float = 60.0,
    seed: int = 1,
) -> Run:
    """40 workers as fast as the limiter lets them, 0.2-1.0 s latency, against a bucket."""
    clock = VirtualClock()
    run = Run()

    async def main() -> None:
        upstream = Bucket(clock, limit, 5)
        limiter = run.limiter = AdaptiveRateLimiter(initial_rate=60, clock=clock)
        rng = random.Random(seed)

        async def worker() -> None:
            while clock.now() < until:
                await limiter.acquire()
                sent = clock.now()
                if change_at is not None and sent >= change_at:
                    upstream.rate = new_limit
                good, retry_after = upstream.take()
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                answer: dict[str, str] = {}
                if headers:
                    answer = {
                        "x-ratelimit-limit-requests": str(int(upstream.rate * 60)),
                        "x-ratelimit-remaining-requests": str(int(upstream.tokens)),
                        "x-ratelimit-reset-requests": f"{(5 - upstream.tokens) / upstream.rate}s",
                    }
                if good:
                    run.ok.append(sent)
                    limiter.observe(answer, 200)
                else:
                    run.limited.append(sent)
                    limiter.observe({**answer, "retry-after": f"{retry_after:.3f}"}, 429)

        await asyncio.gather(*(worker() for _ in range(40)))

    run_virtual(main(), clock=clock)
    return run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_must_show_goodput_and_429s_against_a_hidden_limit_with_headers(seed: int) -> None:
    """60 s against a 600/min limit the client is not told: >= 95 % goodput, <= 2 % 429s."""
    run = simulate(headers=True, seed=seed)
    good, limited = run.window(0.0, 60.0)
    assert good / (10.0 * 60) >= 0.95
    assert limited / (good + limited) <= 0.02


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reconverges_when_the_limit_changes_mid_run(seed: int) -> None:
    for new_limit in (5.0, 20.0):
        run = simulate(headers=True, change_at=60.0, new_limit=new_limit, until=120.0, seed=seed)
        good, limited = run.window(70.0, 120.0)
        assert good / (new_limit * 50) >= 0.95
        assert limited / (good + limited) <= 0.02
        assert run.limiter is not None
        assert run.limiter.rate == pytest.approx(new_limit * 60 * 0.98, rel=0.05)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aimd_alone_learns_from_429s_and_retry_after(seed: int) -> None:
    """No rate-limit headers at all: AIMD and retry-after only. After slow start (the first
    20 s) goodput stays >= 95 % with <= 2.5 % 429s; a halved limit is followed within seconds."""
    run = simulate(headers=False, change_at=60.0, new_limit=5.0, until=120.0, seed=seed)
    good, limited = run.window(20.0, 60.0)
    assert good / (10.0 * 40) >= 0.95
    assert limited / (good + limited) <= 0.025
    good, limited = run.window(70.0, 120.0)
    assert good / (5.0 * 50) >= 0.95
    assert run.limiter is not None
    rates = [rate for t, rate in run.limiter.history if 70.0 <= t < 115.0]
    assert max(rates) <= 5.0 * 60 * 1.25
    assert min(rates) >= 5.0 * 60 * 0.7


def test_decrease_increase_and_retry_after_block() -> None:
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=600, slow_start=False, clock=clock)

    async def main() -> None:
        first = await limiter.acquire()
        assert (first.waited, first.admitted_at, first.limiter) == (0.0, 0.0, limiter)
        limiter.on_rate_limited(retry_after=3.0)
        assert limiter.rate == pytest.approx(300)  # nothing accepted yet: at most halved
        limiter.on_rate_limited()  # within the same interval: no second cut
        assert limiter.rate == pytest.approx(300)
        grant = await limiter.acquire()
        assert clock.now() >= 3.0
        assert grant.waited >= 3.0 - 1e-9
        assert grant.admitted_at == clock.now()
        for _ in range(30):  # a busy clean interval grows the rate additively
            await limiter.acquire()
            limiter.on_success()
        await asyncio.sleep(1.0)
        await limiter.acquire()
        assert limiter.rate > 300

    run_virtual(main(), clock=clock)
    assert limiter.learning.decreases == 1
    assert limiter.learning.increases >= 1


def test_try_acquire_paces_and_acquire_times_out_at_once() -> None:
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=60, clock=clock)  # one per second
    assert limiter.try_acquire().allowed
    refused = limiter.try_acquire()
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)

    async def main() -> None:
        with pytest.raises(RateLimitError) as info:
            await limiter.acquire(timeout=0.5)
        assert info.value.retry_after == pytest.approx(1.0)

    run_virtual(main(), clock=clock)


def test_headers_jump_and_remaining_zero_blocks() -> None:
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=10, clock=clock)
    limiter.observe(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "1970-01-01T00:00:00Z",
        },
        200,
    )
    assert limiter.rate == pytest.approx(49.0)
    assert limiter.blocked_until == pytest.approx(60.0 / 50)  # one refill step


def test_adjust_shifts_the_schedule_for_token_units() -> None:
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=6000, unit="tokens", clock=clock)  # 100 / s
    assert limiter.try_acquire(count=1).allowed
    assert limiter.adjust_sync("default", 101, estimated_count=1) == 100
    assert limiter.try_acquire(count=1).retry_after == pytest.approx(1.01)
    clock.advance(1.01)
    grant = limiter.acquire_sync(count=1)
    assert (grant.waited, grant.admitted_at) == (0.0, pytest.approx(1.01))
    assert run_virtual(limiter.adjust(grant, 51)) == 50  # the Grant form: its estimate is 1
    assert limiter.try_acquire(count=1).retry_after == pytest.approx(0.51)


def test_stats_are_the_common_limiter_stats_and_learning_the_estimate() -> None:
    """``stats`` is every limiter's LimiterStats; the learning figures are in ``learning``."""
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=60, slow_start=False, clock=clock)  # one per s
    assert limiter.try_acquire().allowed
    assert not limiter.try_acquire().allowed
    grant = limiter.acquire_sync()
    assert (grant.waited, grant.admitted_at) == (pytest.approx(1.0), pytest.approx(1.0))
    limiter.observe({}, 200)
    limiter.observe({"retry-after": "2"}, 429)
    stats = limiter.stats
    assert isinstance(stats, LimiterStats)
    assert (stats.admitted, stats.admitted_units, stats.rejected, stats.waited) == (2, 2.0, 1, 1)
    learning = limiter.learning
    assert isinstance(learning, AdaptiveStats)
    assert (learning.admitted, learning.rejected) == (2, 1)
    assert (learning.successes, learning.rate_limited, learning.decreases) == (1, 1, 1)
    assert learning.rate == limiter.rate
    assert learning.blocked_until == pytest.approx(3.0)
    assert limiter.remaining() == 0.0  # blocked by the retry-after


def test_invalid_settings_are_explained() -> None:
    with pytest.raises(ValidationError, match="backoff_ratio"):
        AdaptiveRateLimiter(backoff_ratio=1.2)
    with pytest.raises(ValidationError, match="initial_rate"):
        AdaptiveRateLimiter(initial_rate=0)
    with pytest.raises(ValidationError, match="unit"):
        AdaptiveRateLimiter(unit="bytes")  # type: ignore[arg-type]


def test_a_429_at_a_low_rate_is_not_mistaken_for_a_halved_limit() -> None:
    """At 2 per second a one-second count of successes is noise: a quiet last second before a
    429 must not pass for the upstream's capacity (it halved the rate; the limit had not moved)."""
    clock = VirtualClock()
    limiter = AdaptiveRateLimiter(initial_rate=120, slow_start=False, clock=clock)
    for _ in range(18):  # 9 s at 2 per second ...
        clock.advance(0.5)
        limiter.on_success()
    clock.advance(1.5)  # ... then a quiet 1.5 s: one success in the last second
    limiter.on_success()
    clock.advance(0.4)
    limiter.on_rate_limited()
    assert limiter.rate == pytest.approx(120 * 0.9)  # the ordinary multiplicative decrease
