"""flashkit.ratelimit: strict windows, FIFO waiting, reservations, adjust, multi-limits, shards.

Time is always a :class:`VirtualClock` passed as ``clock=`` (sync tests move it with
``clock.advance()``, async tests run under :func:`run_virtual`, where ``asyncio.sleep`` and the
limiter's own waits spend virtual seconds), except the thread-safety test, which needs real
threads on a real clock and never waits. Property tests are derandomized.

The central check is :func:`window_peak`: the most units admitted in any half-open window
``[t, t + period)`` that starts at an admission time. The contract bounds it by ``rate`` (sliding
window, and the buckets with ``burst=None``) or ``rate + burst - 1`` (buckets with a burst).
The sliding window is checked exactly; the buckets compute their due times by other float
operations than ``t + period``, so for them an admission within 1e-12 (relative) of a window's
end counts as outside it (``rel_tol``); ``test_nothing_is_admitted_a_hair_early`` checks
separately, without tolerance, that nothing passes even 1e-13 periods before it is due.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.clock import SystemClock, VirtualClock, run_virtual
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit import (
    Grant,
    LimiterStats,
    MultiLimit,
    MultiReservation,
    RateLimiter,
    RateLimitResult,
    Reservation,
    ShardedRateLimiter,
)
from flashkit.ratelimit._base import WAIT_BUCKETS

ALGORITHMS = ("sliding_window", "token_bucket", "gcra")
BUCKETS = ("token_bucket", "gcra")
PERIODS = (1.0, 2.0, 60.0, 0.25, 0.3, 7.0)
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


# --- helpers ----------------------------------------------------------------------------------
def window_peak(events: Sequence[Sequence[float]], period: float, rel_tol: float = 0.0) -> float:
    """The most units admitted in any ``[t, t + period)`` starting at an admission time; with
    ``rel_tol``, the window ends that much (relative to ``|t| + period``) earlier."""
    ordered = sorted((float(t), float(u)) for t, u in events)
    times = [t for t, _ in ordered]
    peak = 0.0
    for i, (start, _) in enumerate(ordered):
        end_time = start + period - rel_tol * (abs(start) + period)
        end = bisect.bisect_left(times, end_time)
        peak = max(peak, sum(units for _, units in ordered[i:end]))
    return peak


def tolerance(algorithm: str) -> float:
    """The checker's float tolerance: none for the sliding window, 1e-12 for the buckets."""
    return 0.0 if algorithm == "sliding_window" else 1e-12


def bound_for(rate: int, burst: int | None) -> int:
    """The contract's window bound: ``rate``, or ``rate + burst - 1`` with an explicit burst."""
    return rate if burst is None else rate + burst - 1


def gaps(period: float) -> st.SearchStrategy[float]:
    """Inter-arrival gaps: many zeros, tiny gaps, grid fractions of the period and any float."""
    return st.one_of(
        st.just(0.0),
        st.just(0.0),
        st.floats(1e-12, 1e-6),
        st.integers(1, 16).map(lambda k: k * period / 8),
        st.floats(0.0, 2 * period, allow_nan=False, allow_infinity=False),
    )


def limiter_for(
    algorithm: str, rate: int, period: float, burst: int | None, clock: VirtualClock, **kw: Any
) -> RateLimiter:
    """A limiter; ``burst`` only for the buckets."""
    return RateLimiter(
        rate,
        period,
        algorithm=algorithm,  # type: ignore[arg-type]
        burst=burst if algorithm != "sliding_window" else None,
        clock=clock,
        **kw,
    )


def waits(stats: LimiterStats) -> dict[float, int]:
    """The waits histogram as a dict."""
    return dict(stats.waits)


# --- 1. strictness, property-based ------------------------------------------------------------
STRICT_CONFIGS = [
    ("sliding_window", False),
    ("token_bucket", False),
    ("gcra", False),
    ("token_bucket", True),
    ("gcra", True),
]


@PROPERTY
@given(data=st.data())
@pytest.mark.parametrize(("algorithm", "bursty"), STRICT_CONFIGS)
def test_try_acquire_never_exceeds_the_window_bound(
    algorithm: str, bursty: bool, data: st.DataObject
) -> None:
    """try_acquire under random arrivals never admits more than the bound in any window."""
    rate = data.draw(st.integers(1, 12), label="rate")
    period = data.draw(st.sampled_from(PERIODS), label="period")
    burst = data.draw(st.integers(1, 6), label="burst") if bursty else None
    largest = rate if algorithm == "sliding_window" else (burst or 1)
    arrivals = data.draw(
        st.lists(st.tuples(gaps(period), st.integers(1, largest)), min_size=1, max_size=60),
        label="arrivals",
    )
    start = data.draw(st.sampled_from([0.0, 1234.5678]), label="start")
    clock = VirtualClock(start)
    limiter = limiter_for(algorithm, rate, period, burst, clock)
    events = []
    for gap, count in arrivals:
        clock.advance(gap)
        result = limiter.try_acquire(count=count)
        if result.allowed:
            assert result.retry_after == 0.0
            events.append((clock.now(), count))
        else:
            assert result.retry_after > 0.0
    assert events[0] == (start + arrivals[0][0], arrivals[0][1])  # an idle limiter admits
    assert window_peak(events, period, tolerance(algorithm)) <= bound_for(rate, burst)
    assert limiter.stats.admitted == len(events)
    assert limiter.stats.rejected == len(arrivals) - len(events)


@PROPERTY
@given(data=st.data())
@pytest.mark.parametrize(("algorithm", "bursty"), STRICT_CONFIGS)
def test_retry_after_is_the_earliest_time_the_request_passes(
    algorithm: str, bursty: bool, data: st.DataObject
) -> None:
    """A refused request is refused just before retry_after and admitted at it."""
    rate = data.draw(st.integers(1, 8), label="rate")
    period = data.draw(st.sampled_from([1.0, 2.0, 64.0, 0.25]), label="period")
    burst = data.draw(st.integers(1, 5), label="burst") if bursty else None
    largest = rate if algorithm == "sliding_window" else (burst or 1)
    history = data.draw(
        st.lists(st.tuples(gaps(period), st.integers(1, largest)), max_size=20), label="history"
    )
    count = data.draw(st.integers(1, largest), label="count")
    clock = VirtualClock()
    limiter = limiter_for(algorithm, rate, period, burst, clock)
    for gap, n in history:
        clock.advance(gap)
        limiter.try_acquire(count=n)
    result = limiter.try_acquire(count=count)
    if result.allowed:
        return
    wait = result.retry_after
    longest = period if algorithm == "sliding_window" else largest * period / rate
    assert 0.0 < wait <= longest * (1 + 1e-9)
    due = clock.now() + wait
    clock.advance(wait * (1 - 1e-6))
    assert not limiter.try_acquire(count=count).allowed
    clock.advance(due - clock.now() + 1e-12 * max(1.0, due))
    assert limiter.try_acquire(count=count).allowed


class SlidingModel:
    """A plain sliding log with the documented merge rule (grants closer than period/1024 share
    one entry stamped with the later time)."""

    def __init__(self, rate: int, period: float) -> None:
        self.rate, self.period = rate, period
        self.entries: list[list[float]] = []

    def try_acquire(self, now: float, n: int) -> tuple[bool, float, float]:
        self.entries = [e for e in self.entries if now < e[0] + self.period]
        total = sum(units for _, units in self.entries)
        if total + n <= self.rate:
            if self.entries and now - self.entries[-1][0] < self.period / 1024:
                self.entries[-1] = [now, self.entries[-1][1] + n]
            else:
                self.entries.append([now, n])
            return True, self.rate - total - n, 0.0
        freed = 0.0
        for when, units in self.entries:
            freed += units
            if freed >= total + n - self.rate:
                return False, self.rate - total, when + self.period - now
        raise AssertionError("unreachable")


@PROPERTY
@given(data=st.data())
def test_sliding_window_matches_a_reference_log(data: st.DataObject) -> None:
    """The sliding window (fast and slow paths) answers exactly like a plain reference log."""
    rate = data.draw(st.integers(1, 10), label="rate")
    period = data.draw(st.sampled_from(PERIODS), label="period")
    arrivals = data.draw(
        st.lists(st.tuples(gaps(period), st.integers(1, rate), st.booleans()), max_size=60),
        label="arrivals",
    )
    clock = VirtualClock()
    limiter = RateLimiter(rate, period, clock=clock)
    model = SlidingModel(rate, period)
    for gap, count, as_float in arrivals:
        clock.advance(gap)
        # A float count takes the generic path, an int the inlined one.
        result = limiter.try_acquire(count=float(count) if as_float else count)
        allowed, remaining, retry_after = model.try_acquire(clock.now(), count)
        assert result.allowed == allowed
        assert result.remaining == pytest.approx(remaining)
        assert result.retry_after == pytest.approx(retry_after, abs=1e-9)


MIXED_OPS = ("try", "acquire", "reserve_wait", "reserve_cancel", "adjust_reservation")


async def drive_mixed(
    limiter: RateLimiter,
    clock: VirtualClock,
    plans: list[list[tuple[float, str, int, float]]],
) -> list[list[float]]:
    """Run each plan as a task; return the admissions as [time, units] (units after refunds)."""
    events: list[list[float]] = []

    async def worker(steps: list[tuple[float, str, int, float]]) -> None:
        for gap, op, count, fraction in steps:
            await asyncio.sleep(gap)
            actual = int(count * fraction)  # < count: adjust always refunds
            if op == "try":
                if limiter.try_acquire(count=count).allowed:
                    events.append([clock.now(), count])
            elif op == "acquire":
                grant = await limiter.acquire(count=count)
                assert (grant.key, grant.count, grant.limiter) == ("default", count, limiter)
                assert grant.waited >= 0.0
                # the units count from admitted_at: never after use, and before it by at most
                # the merge quantum (period / 1024) or the rounding of the due time
                assert grant.admitted_at <= clock.now() + 1e-9
                assert clock.now() - grant.admitted_at <= limiter.period / 1024 + 1e-9
                events.append([clock.now(), count])
            elif op == "reserve_cancel":
                reservation = limiter.reserve(count=count, max_wait=math.inf)
                await asyncio.sleep(fraction * limiter.period)
                assert reservation.cancel()
            elif op in ("reserve_wait", "adjust_reservation"):
                reservation = limiter.reserve(count=count, max_wait=math.inf)
                await reservation.wait()
                # never early; late only by the rounding of now + (due - now), an ulp or two
                assert reservation.execute_at <= clock.now() <= reservation.execute_at + 1e-9
                event = [clock.now(), count]
                events.append(event)
                if op == "adjust_reservation":
                    assert await limiter.adjust(reservation, actual) == actual - count
                    event[1] = actual
            else:  # adjust_key: the usual acquire-then-reconcile flow
                await limiter.acquire(count=count)
                event = [clock.now(), count]
                events.append(event)
                assert (
                    await limiter.adjust("default", actual, estimated_count=count) == actual - count
                )
                event[1] = actual

    await asyncio.gather(*(worker(steps) for steps in plans))
    return events


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(data=st.data())
@pytest.mark.parametrize(("algorithm", "bursty"), STRICT_CONFIGS)
def test_mixed_waiters_reservations_and_refunds_stay_within_the_bound(
    algorithm: str, bursty: bool, data: st.DataObject
) -> None:
    """Concurrent acquire, try_acquire, reserve+cancel and adjust refunds keep the bound."""
    rate = data.draw(st.integers(1, 8), label="rate")
    period = data.draw(st.sampled_from(PERIODS), label="period")
    burst = data.draw(st.integers(1, 5), label="burst") if bursty else None
    largest = rate if algorithm == "sliding_window" else (burst or 1)
    ops = (*MIXED_OPS, "adjust_key") if algorithm == "sliding_window" else MIXED_OPS
    step = st.tuples(
        gaps(period),
        st.sampled_from(ops),
        st.integers(1, largest),
        st.floats(0.0, 1.0, exclude_max=True),
    )
    plans = data.draw(
        st.lists(st.lists(step, min_size=1, max_size=8), min_size=1, max_size=4), label="plans"
    )
    clock = VirtualClock()
    limiter = limiter_for(algorithm, rate, period, burst, clock, reservation_ttl=1e9)
    events = run_virtual(drive_mixed(limiter, clock, plans), clock=clock)
    assert window_peak(events, period, tolerance(algorithm)) <= bound_for(rate, burst)
    stats = limiter.stats
    held = sum(units for _, units in events)
    assert stats.admitted_units - stats.refunded_units - stats.forfeited_units == pytest.approx(
        held
    )
    if algorithm == "sliding_window":
        assert stats.forfeited_units == 0.0


# --- 2. token_bucket and gcra admit the same --------------------------------------------------
@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_token_bucket_and_gcra_admit_exactly_the_same(data: st.DataObject) -> None:
    """Same inputs, same answers: allowed, retry_after, remaining, reset_at and reservations."""
    dyadic = data.draw(st.booleans(), label="dyadic")
    if dyadic:  # every time is exact: ties at the boundary must be decided the same way
        rate = data.draw(st.sampled_from([1, 2, 4, 8, 16]), label="rate")
        period = data.draw(st.sampled_from([0.5, 1.0, 2.0, 64.0]), label="period")
        gap = st.one_of(st.just(0.0), st.integers(1, 24).map(lambda k: k * period / rate / 4))
    else:
        rate = data.draw(st.integers(1, 12), label="rate")
        period = data.draw(st.sampled_from([1.0, 0.3, 7.0, 60.0]), label="period")
        gap = st.one_of(
            st.just(0.0), st.floats(1e-12, 1e-6), st.floats(0.0, 2 * period, allow_nan=False)
        )
    burst = data.draw(st.one_of(st.none(), st.integers(1, 8)), label="burst")
    steps = data.draw(
        st.lists(
            st.tuples(
                gap,
                st.integers(1, burst or 1),
                st.sampled_from(["try", "try", "reserve", "cancel"]),
            ),
            max_size=50,
        ),
        label="steps",
    )
    clock = VirtualClock()
    bucket = RateLimiter(rate, period, algorithm="token_bucket", burst=burst, clock=clock)
    cell = RateLimiter(rate, period, algorithm="gcra", burst=burst, clock=clock)
    pending: list[tuple[Reservation, Reservation]] = []
    for gap_s, count, op in steps:
        clock.advance(gap_s)
        if op == "try":
            a, b = bucket.try_acquire(count=count), cell.try_acquire(count=count)
            assert a.allowed == b.allowed
            assert a.retry_after == pytest.approx(b.retry_after, rel=1e-9, abs=1e-9)
            assert a.remaining == pytest.approx(b.remaining, rel=1e-9, abs=1e-9)
            assert a.reset_at == pytest.approx(b.reset_at, rel=1e-9, abs=1e-9)
        elif op == "reserve":
            ra = bucket.reserve(count=count, max_wait=math.inf)
            rb = cell.reserve(count=count, max_wait=math.inf)
            assert ra.execute_at == pytest.approx(rb.execute_at, rel=1e-9, abs=1e-9)
            pending.append((ra, rb))
        elif pending:
            ra, rb = pending.pop()
            assert ra.cancel() == rb.cancel()
    assert bucket.stats.refunded_units == cell.stats.refunded_units
    assert bucket.stats.forfeited_units == cell.stats.forfeited_units


# --- 3. throughput ----------------------------------------------------------------------------
def test_sliding_window_admits_the_whole_rate_at_once_then_waits_for_the_first_entry() -> None:
    """From idle, exactly `rate` units pass at once; then nothing until the oldest entry ages."""
    clock = VirtualClock()
    limiter = RateLimiter(5, 10.0, clock=clock)
    assert limiter.try_acquire(count=2) == (True, 3.0, 0.0, 10.0)
    clock.advance(3.0)
    assert limiter.try_acquire(count=3) == (True, 0.0, 0.0, 13.0)
    refused = limiter.try_acquire()
    assert refused == (False, 0.0, 7.0, 13.0)
    clock.advance(6.875)
    assert not limiter.try_acquire().allowed
    clock.advance(0.125)  # t = 10: the 2 units of t = 0 leave the window
    assert limiter.try_acquire(count=2).allowed
    assert not limiter.try_acquire().allowed
    clock.advance(3.0)  # t = 13: the 3 units of t = 3 leave
    assert limiter.try_acquire(count=3).allowed
    assert limiter.stats.admitted_units == 10.0


@pytest.mark.parametrize(("first", "period"), [(1e-12, 0.25), (0.1, 0.2), (1e-9, 3.0), (0.7, 60.0)])
def test_sliding_window_frees_a_unit_exactly_when_it_says(first: float, period: float) -> None:
    """At the reset_at it reported the unit is free: never a refusal with retry_after 0.0."""
    clock = VirtualClock()
    limiter = RateLimiter(1, period, clock=clock)
    clock.advance(first)
    assert limiter.try_acquire().reset_at == first + period
    assert limiter.try_acquire().retry_after == pytest.approx(period)
    clock.advance(period)
    assert clock.now() == first + period
    assert limiter.try_acquire().allowed


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_pacer_admits_one_unit_every_period_over_rate(algorithm: str) -> None:
    """With burst=None the buckets admit one unit per period/rate, never two at once."""
    clock = VirtualClock()
    limiter = RateLimiter(4, 2.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire().allowed
    refused = limiter.try_acquire()
    assert not refused.allowed
    assert refused.retry_after == 0.5
    clock.advance(0.25)
    assert limiter.try_acquire().retry_after == 0.25
    clock.advance(0.25)
    assert limiter.try_acquire().allowed

    async def main() -> list[float]:
        done = []
        for _ in range(8):
            await limiter.acquire()
            done.append(clock.now())
        return done

    assert run_virtual(main(), clock=clock) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_long_run_rate_is_rate_over_period(algorithm: str) -> None:
    """1,000 back-to-back acquires take (1,000 - rate)/rate periods (sliding) or 999/rate."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 1.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]

    async def main() -> list[float]:
        done = []
        for _ in range(1000):
            await limiter.acquire()
            done.append(clock.now())
        return done

    done = run_virtual(main(), clock=clock)
    expected = 99.0 if algorithm == "sliding_window" else 99.9
    assert done[-1] == pytest.approx(expected, rel=1e-9)
    assert window_peak([(t, 1) for t in done], 1.0, tolerance(algorithm)) == 10


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("rate", "period", "start"),
    [
        (10, 1.0, 0.0),
        (3, 1.0, 0.0),
        (49, 1.0, 0.0),
        (7, 0.3, 12345.678),
        (6, 0.7, 0.1),
        (10, 60.0, 1e6),
    ],
)
def test_queued_waiters_never_exceed_the_rate_by_rounding(
    algorithm: str, rate: int, period: float, start: float
) -> None:
    """Back-to-back reservations never let rounding (1/49 s, 0.1 s) add a unit to a window."""
    clock = VirtualClock(start)
    limiter = RateLimiter(rate, period, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    due = [limiter.reserve(max_wait=math.inf).execute_at for _ in range(20 * rate + 1)]
    assert window_peak([(t, 1) for t in due], period, tolerance(algorithm)) <= rate
    assert all(later >= earlier for earlier, later in itertools.pairwise(due))
    slack = tolerance(algorithm) * (abs(start) + 20 * period)
    assert all(due[k + rate] >= due[k] + period - slack for k in range(len(due) - rate))
    if algorithm != "sliding_window":  # a pacer: one unit every period / rate, no drift
        assert due[-1] - due[0] == pytest.approx(20 * period, rel=1e-9)


@pytest.mark.parametrize("algorithm", BUCKETS)
@pytest.mark.parametrize("seed", range(6))
def test_a_full_burst_passes_at_once_at_any_clock_time(algorithm: str, seed: int) -> None:
    """burst units pass together at any instant (no rounding refuses the last one), then none."""
    rng = random.Random(seed)
    for _ in range(200):
        start = rng.choice([0.0, rng.random(), rng.random() * 100, rng.random() * 1e5])
        rate, burst = rng.randint(1, 50), rng.randint(2, 12)
        period = rng.choice([1.0, 0.3, 0.1, 7.0, 60.0])
        clock = VirtualClock(start)
        limiter = RateLimiter(
            rate,
            period,
            algorithm=algorithm,  # type: ignore[arg-type]
            burst=burst,
            clock=clock,
        )
        clock.advance(rng.choice([0.0, rng.random() * period]))
        assert [limiter.try_acquire().allowed for _ in range(burst + 1)] == [True] * burst + [False]
        assert limiter.remaining() == 0.0


@pytest.mark.parametrize(
    ("algorithm", "burst"), [(a, None) for a in ALGORITHMS] + [(a, 3) for a in BUCKETS]
)
@pytest.mark.parametrize("period", [1.0, 3600.0])
@pytest.mark.parametrize("hair", [1e-4, 1e-7, 1e-10, 1e-13])
def test_nothing_is_admitted_a_hair_early(
    algorithm: str, burst: int | None, period: float, hair: float
) -> None:
    """Just before the window frees a unit, the request is still refused (no tolerance)."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 2, period, burst, clock)
    while limiter.try_acquire().allowed:
        pass
    refused = limiter.try_acquire()
    clock.advance(refused.retry_after - hair * period)
    assert not limiter.try_acquire().allowed
    clock.advance(hair * period)
    assert limiter.try_acquire().allowed


# --- 4. FIFO, timeouts, cancellation ----------------------------------------------------------
def test_waiters_are_served_in_arrival_order_and_a_large_one_is_not_starved() -> None:
    """A full-rate request queued between small ones completes in its turn, not last."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 10.0, clock=clock)
    assert limiter.try_acquire(count=10).allowed
    done: list[tuple[str, float]] = []

    async def request(name: str, delay: float, count: int) -> None:
        await asyncio.sleep(delay)
        await limiter.acquire(count=count)
        done.append((name, clock.now()))

    async def main() -> None:
        await asyncio.gather(
            request("small-1", 0.1, 2),
            request("large", 0.2, 10),
            request("small-2", 0.3, 1),
            request("small-3", 0.4, 1),
        )

    run_virtual(main(), clock=clock)
    assert done == [("small-1", 10.0), ("large", 20.0), ("small-2", 30.0), ("small-3", 30.0)]


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_waiters_are_served_in_arrival_order(algorithm: str) -> None:
    """With a burst bucket, a large request is served before small ones that came after it."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 1.0, algorithm=algorithm, burst=4, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire(count=4).allowed
    done: list[tuple[str, float]] = []

    async def request(name: str, delay: float, count: int) -> None:
        await asyncio.sleep(delay)
        await limiter.acquire(count=count)
        done.append((name, clock.now()))

    async def main() -> None:
        await asyncio.gather(
            request("small-1", 0.0, 1), request("large", 0.5, 4), request("small-2", 0.75, 1)
        )

    run_virtual(main(), clock=clock)
    assert done == [("small-1", 1.0), ("large", 5.0), ("small-2", 6.0)]


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 10) for a in BUCKETS]]
)
def test_try_acquire_does_not_jump_a_pending_reservation(algorithm: str, burst: int | None) -> None:
    """While a reservation is due later, a new try_acquire is refused though units are free now."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 10, 10.0, burst, clock)
    assert limiter.try_acquire(count=8).allowed
    reservation = limiter.reserve(count=5)
    assert reservation.execute_at > 0.0
    refused = limiter.try_acquire()
    assert not refused.allowed
    assert refused.retry_after >= reservation.execute_at
    assert limiter.remaining() == 0.0


def test_try_acquire_does_not_jump_a_waiting_task() -> None:
    """A task waiting in acquire() holds its place: a try_acquire meanwhile is refused."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 10.0, clock=clock)
    assert limiter.try_acquire(count=8).allowed
    seen: list[bool] = []

    async def main() -> None:
        waiter = asyncio.create_task(limiter.acquire(count=5))
        await asyncio.sleep(1.0)
        seen.append(limiter.try_acquire().allowed)
        grant = await waiter
        assert (grant.waited, grant.admitted_at, grant.count) == (10.0, 10.0, 5)

    run_virtual(main(), clock=clock)
    assert seen == [False]


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 1) for a in BUCKETS]]
)
def test_timeout_that_cannot_be_met_fails_at_once_with_retry_after(
    algorithm: str, burst: int | None
) -> None:
    """acquire(timeout) raises RateLimitError without waiting and takes nothing."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 1, 10.0, burst, clock)
    assert limiter.try_acquire().allowed

    async def main() -> RateLimitError:
        with pytest.raises(RateLimitError) as caught:
            await limiter.acquire(timeout=5.0)
        assert clock.now() == 0.0
        grant = await limiter.acquire(timeout=10.0)  # nothing was taken by the failure
        assert (grant.waited, grant.admitted_at) == (10.0, 10.0)
        return caught.value

    error = run_virtual(main(), clock=clock)
    assert error.retry_after == 10.0
    assert error.code == "timeout"
    assert error.retryable
    with pytest.raises(RateLimitError) as sync_error:
        limiter.acquire_sync(timeout=9.0)
    assert sync_error.value.retry_after == 10.0
    assert clock.now() == 10.0
    assert limiter.stats.rejected == 2


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 1) for a in BUCKETS]]
)
def test_cancelled_waiter_gives_its_turn_to_the_next(algorithm: str, burst: int | None) -> None:
    """Cancelling a task waiting in acquire() refunds its units: a later waiter gets its slot."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 1, 10.0, burst, clock)
    assert limiter.try_acquire().allowed

    async def main() -> Grant:
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(1.0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(1.0)
        return await limiter.acquire()

    grant = run_virtual(main(), clock=clock)
    assert (grant.waited, grant.admitted_at) == (8.0, 10.0)  # due at 10.0, not 20.0
    assert clock.now() == 10.0
    assert limiter.stats.refunded_units == 1.0


def test_a_refund_pulls_queued_waiters_forward() -> None:
    """The estimate-then-reconcile flow: a grant of 10 (an estimate) is adjusted to 2 at 0.2 s;
    the waiter queued behind it for 5 goes at 0.2 s, not when the estimate leaves the window
    (1.0 s). Its units then count from 0.2 s."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 1.0, clock=clock)

    async def main() -> tuple[Grant, float]:
        await limiter.acquire(count=10)
        waiter = asyncio.create_task(limiter.acquire(count=5))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert await limiter.adjust("default", 2, estimated_count=10) == -8
        grant = await waiter
        return grant, clock.now()

    grant, woke_at = run_virtual(main(), clock=clock)
    assert (grant.waited, grant.admitted_at) == (pytest.approx(0.2), pytest.approx(0.2))
    assert woke_at == pytest.approx(0.2)
    assert not limiter.try_acquire(count=4).allowed  # 2 + 5 in the window: 3 left
    assert limiter.try_acquire(count=3).allowed


def test_pulled_forward_waiters_keep_their_order() -> None:
    """A refund too small for the first waiter moves no one behind it (first come, first
    served), and a reservation keeps its promised time; a later, larger refund moves both
    waiters, in order."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 1.0, clock=clock)
    order: list[tuple[str, float]] = []

    async def waiter(name: str, count: int) -> None:
        await limiter.acquire(count=count)
        order.append((name, clock.now()))

    async def main() -> None:
        await limiter.acquire(count=10)
        first = asyncio.create_task(waiter("first", 8))
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter("second", 1))
        await asyncio.sleep(0.2)
        await limiter.adjust("default", 7, estimated_count=10)  # 3 back: the first (8) waits
        await asyncio.sleep(0.1)
        assert order == []
        await limiter.adjust("default", 1, estimated_count=7)  # 6 more: 1 + 8 + 1 fit at 0.3 s
        await asyncio.gather(first, second)

    run_virtual(main(), clock=clock)
    assert [name for name, _ in order] == ["first", "second"]
    assert [when for _, when in order] == [pytest.approx(0.3), pytest.approx(0.3)]


def test_adjust_with_the_grant_refunds_the_callers_own_grant() -> None:
    """6 units at 0 s, then a caller's estimate of 4 at 0.5 s, reconciled to 1 at 0.6 s. Given
    the grant, the refund comes from that grant: once the 6 leave (1.0 s) the window holds 1,
    and 9 fit. By key the refund comes from the oldest units (the 6), which leave at 1.0 s
    anyway: the window then still holds the estimate's 4. Never from a later grant."""
    outcomes = {}
    for told in (True, False):
        clock = VirtualClock()
        limiter = RateLimiter(10, 1.0, clock=clock)
        assert limiter.try_acquire(count=6).allowed
        clock.advance(0.5)
        grant = limiter.acquire_sync(count=4, timeout=0)
        clock.advance(0.1)
        if told:
            limiter.adjust_sync(grant, 1)
        else:
            limiter.adjust_sync("default", 1, estimated_count=4)
        clock.advance(0.45)  # 1.05 s: the 6 have left
        outcomes[told] = (limiter.try_acquire(count=9).allowed, limiter.stats.refunded_units)
    assert outcomes == {True: (True, 3.0), False: (False, 3.0)}

    clock = VirtualClock()
    limiter = RateLimiter(10, 1.0, clock=clock)
    grant = limiter.acquire_sync(count=4)  # the caller's, at 0 s
    clock.advance(0.5)
    assert limiter.try_acquire(count=5).allowed  # someone else's, later
    limiter.adjust_sync(grant, 0)
    assert [entry[1] for entry in limiter._states["default"].entries] == [0.0, 5.0]
    with pytest.raises(ValidationError, match="settle a Grant or a key"):
        limiter.adjust_sync(4.0, 0, estimated_count=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="made by"):
        limiter.adjust_sync(RateLimiter(10, 1.0, clock=clock).acquire_sync(), 0)


def test_a_waiter_moves_only_when_the_refund_makes_room() -> None:
    """6 at 0 s, 4 at 0.5 s; a waiter for 5 is due at 1.0 s (when the 6 leave). A refund of 4
    (6 -> 2) leaves 6 in the window: no room for 5, it stays at 1.0 s (woken early it would
    only queue again: wasted wakes). One more unit back (2 -> 1) makes room: it goes then."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 1.0, clock=clock)

    async def main() -> float:
        await limiter.acquire(count=6)
        await asyncio.sleep(0.5)
        await limiter.acquire(count=4)
        waiter = asyncio.create_task(limiter.acquire(count=5))
        await asyncio.sleep(0.1)
        await limiter.adjust("default", 2, estimated_count=6)
        log = limiter._states["default"].entries
        assert log[-1][0] == 1.0  # not moved
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await limiter.adjust("default", 1, estimated_count=2)
        grant = await waiter
        assert (grant.waited, grant.admitted_at) == (pytest.approx(0.2), pytest.approx(0.7))
        return clock.now()

    assert run_virtual(main(), clock=clock) == pytest.approx(0.7)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_refunds_that_pull_waiters_forward_keep_the_window_strict(data: st.DataObject) -> None:
    """Estimate-then-reconcile under contention: tasks acquire an estimate, hold it a while,
    then adjust it down (with the Grant, by key with or without ``admitted_at``, or cancel while
    waiting), while others queue behind. Waiters pulled forward by the refunds never put more
    than ``rate`` units in any window (units as finally charged, at the times they were
    admitted)."""
    rate = data.draw(st.integers(2, 12), label="rate")
    period = data.draw(st.sampled_from(PERIODS), label="period")
    step = st.tuples(
        gaps(period),
        st.integers(1, rate),  # the estimate
        st.floats(0.0, 1.0),  # actual / estimate
        st.sampled_from([0.0, 0.0, 0.1, 0.5]),  # hold (periods) before reconciling
        st.booleans(),  # cancel instead, if still waiting after the hold
        st.sampled_from(["grant", "rebuilt", "key"]),  # how adjust is told which grant
    )
    plans = data.draw(
        st.lists(st.lists(step, min_size=1, max_size=6), min_size=2, max_size=6), label="plans"
    )
    clock = VirtualClock()
    limiter = RateLimiter(rate, period, clock=clock)
    events: list[list[float]] = []

    async def admitted(estimate: int) -> tuple[float, Grant]:
        grant = await limiter.acquire(count=estimate)
        return clock.now(), grant

    async def worker(steps: list[tuple[float, int, float, float, bool, str]]) -> None:
        for gap, estimate, fraction, hold, cancel, form in steps:
            await asyncio.sleep(gap)
            task = asyncio.ensure_future(admitted(estimate))
            await asyncio.sleep(hold * period)  # (the task may be admitted meanwhile)
            if cancel and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                continue
            now, grant = await task
            event = [now, float(estimate)]
            events.append(event)
            actual = math.floor(estimate * fraction)
            if form == "grant":
                delta = await limiter.adjust(grant, actual)
            elif form == "rebuilt":  # a grant rebuilt by hand from when it was admitted
                rebuilt = Grant(("default", estimate, 0.0, now, limiter))
                delta = await limiter.adjust(rebuilt, actual)
            else:
                delta = await limiter.adjust("default", actual, estimated_count=estimate)
            assert delta == actual - estimate
            event[1] = float(actual)

    async def main() -> None:
        await asyncio.gather(*(worker(steps) for steps in plans))

    run_virtual(main(), clock=clock)
    assert window_peak(events, period) <= rate


# --- 5. requests that can never pass ----------------------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "burst", "count", "mentions"),
    [
        ("sliding_window", None, 6, "at most 5 units per 60 s"),
        ("token_bucket", None, 2, "burst"),
        ("gcra", None, 2, "burst"),
        ("token_bucket", 3, 4, "burst >= 4"),
        ("gcra", 3, 3.5, "burst >= 3.5"),
    ],
)
def test_request_larger_than_the_limit_fails_at_once(
    algorithm: str, burst: int | None, count: float, mentions: str
) -> None:
    """A count the limit can never grant raises a non-retryable ValidationError; nothing waits."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 5, 60.0, burst, clock, name="tpm")
    calls: list[Callable[[], object]] = [
        lambda: limiter.try_acquire(count=count),
        lambda: limiter.acquire_sync(count=count),
        lambda: limiter.reserve(count=count),
        lambda: run_virtual(limiter.acquire(count=count), clock=clock),
    ]
    for call in calls:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.code == "request_too_large"
        assert not caught.value.retryable
        assert "tpm" in caught.value.message
        assert mentions in caught.value.message
    assert clock.now() == 0.0
    assert limiter.stats.admitted == 0
    assert limiter.remaining() == limiter.max_count


@pytest.mark.parametrize("count", [0, -1, 0.0, math.nan, math.inf, True, False, "1", None])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_invalid_counts_are_refused(algorithm: str, count: Any) -> None:
    """count 0, negative, NaN, inf, bool or non-numbers raise ValidationError naming the limiter."""
    clock = VirtualClock()
    limiter = RateLimiter(5, 1.0, algorithm=algorithm, clock=clock, name="rpm")  # type: ignore[arg-type]
    for call in (limiter.try_acquire, limiter.acquire_sync, limiter.reserve):
        with pytest.raises(ValidationError) as caught:
            call(count=count)
        assert caught.value.code == "invalid_count"
        assert not caught.value.retryable
        assert "rpm" in caught.value.message
        assert "count" in caught.value.message
    with pytest.raises(ValidationError):
        run_virtual(limiter.acquire(count=count), clock=clock)
    assert clock.now() == 0.0
    assert limiter.stats.admitted == 0


# --- 6. reservations --------------------------------------------------------------------------
def test_reservation_is_due_at_the_earliest_feasible_time_and_never_overlaps() -> None:
    """execute_at is when the window first has room; a second reservation queues after it."""
    clock = VirtualClock()
    limiter = RateLimiter(4, 10.0, clock=clock)
    assert limiter.try_acquire(count=3).allowed
    clock.advance(2.0)
    assert limiter.try_acquire(count=1).allowed
    clock.advance(3.0)
    first = limiter.reserve(count=2)
    assert (first.reserved_at, first.execute_at, first.expires_at) == (5.0, 10.0, 70.0)
    assert first.status == "pending"
    assert (first.key, first.count) == ("default", 2.0)
    second = limiter.reserve(count=2)
    assert second.execute_at == 12.0  # needs the unit of t = 2 to leave as well
    third = limiter.reserve(count=4)
    assert third.execute_at == 22.0
    assert first.id != second.id
    events = [(0.0, 3), (2.0, 1), (10.0, 2), (12.0, 2), (22.0, 4)]
    assert window_peak(events, 10.0) <= 4


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 2) for a in BUCKETS]]
)
def test_reservations_taking_everything_are_due_one_after_another(
    algorithm: str, burst: int | None
) -> None:
    """When the first reservation takes all capacity, the next is due strictly later."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 2, 4.0, burst, clock)
    first = limiter.reserve(count=2)
    second = limiter.reserve(count=2)
    assert first.execute_at == 0.0
    assert second.execute_at == 4.0


def test_wait_sleeps_exactly_until_execute_at_then_marks_used() -> None:
    """await wait() returns at execute_at; the reservation is then used and can't be cancelled."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 10.0, clock=clock)
    assert limiter.try_acquire().allowed
    reservation = limiter.reserve()

    async def main() -> float:
        await reservation.wait()
        return clock.now()

    assert run_virtual(main(), clock=clock) == 10.0
    assert reservation.status == "used"
    assert not reservation.cancel()
    assert not limiter.try_acquire().allowed  # a used reservation keeps its units
    sync = limiter.reserve()
    sync.wait_sync()
    assert clock.now() == sync.execute_at == 20.0
    assert sync.status == "used"
    assert waits(limiter.stats)[10.0] == 2


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 2) for a in BUCKETS]]
)
def test_cancel_before_use_refunds_and_reports_it(algorithm: str, burst: int | None) -> None:
    """cancel() of a pending reservation returns True and frees its units at once."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 2, 10.0, burst, clock)
    reservation = limiter.reserve(count=2)
    assert not limiter.try_acquire().allowed
    assert reservation.cancel()
    assert reservation.status == "cancelled"
    assert not reservation.cancel()
    assert limiter.try_acquire(count=1).allowed
    later = limiter.reserve(count=2)  # due in the future
    assert later.execute_at > 0.0
    assert later.cancel()
    assert limiter.try_acquire(count=1).allowed  # the cancelled one no longer holds the queue
    assert limiter.stats.refunded_units == 4.0
    with pytest.raises(RateLimitError) as caught:
        reservation.wait_sync()
    assert caught.value.code == "reservation_cancelled"
    assert not caught.value.retryable


def test_cancel_while_another_task_waits_on_the_reservation_makes_wait_raise() -> None:
    """A reservation cancelled during wait() must not let the waiter proceed without units."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 10.0, clock=clock)
    assert limiter.try_acquire().allowed
    reservation = limiter.reserve()

    async def main() -> None:
        waiter = asyncio.create_task(reservation.wait())
        await asyncio.sleep(1.0)
        assert reservation.cancel()
        with pytest.raises(RateLimitError) as caught:
            await waiter
        assert caught.value.code == "reservation_cancelled"

    run_virtual(main(), clock=clock)
    assert reservation.status == "cancelled"


@pytest.mark.parametrize("form", ["acquire", "reservation", "multilimit"])
def test_waiters_never_wake_before_their_due_time(form: str) -> None:
    """Waits end at the due time even when asyncio fires the timer up to 1 ns early."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 1.0, clock=clock)
    assert limiter.try_acquire().allowed

    async def wait_for_unit() -> None:
        if form == "acquire":
            await limiter.acquire()
        elif form == "reservation":
            await limiter.reserve().wait()
        else:
            await MultiLimit([limiter]).acquire()

    async def main() -> float:
        waiter = asyncio.create_task(wait_for_unit())
        await asyncio.sleep(1.0 - 5e-10)  # a timer just before the unit is due
        await waiter
        return clock.now()

    assert run_virtual(main(), clock=clock) >= 1.0


def test_a_stub_clock_that_never_moves_does_not_hang_waits() -> None:
    """With a clock whose sleeps do not move now(), waits return instead of spinning forever."""

    class FrozenClock:
        def now(self) -> float:
            return 0.0

        def sleep_sync(self, seconds: float) -> None:
            pass

        async def sleep(self, seconds: float) -> None:
            await asyncio.sleep(0)

    limiter = RateLimiter(1, 10.0, clock=FrozenClock())
    assert limiter.acquire_sync()[2:4] == (0.0, 0.0)  # (waited, admitted_at)
    assert limiter.acquire_sync()[2:4] == (10.0, 10.0)
    assert asyncio.run(limiter.acquire())[2:4] == (20.0, 20.0)
    limiter.reserve(max_wait=math.inf).wait_sync()


def test_cancelling_the_task_in_wait_cancels_the_reservation() -> None:
    """task.cancel() on a task in reservation.wait() refunds the reservation."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 10.0, clock=clock)
    assert limiter.try_acquire().allowed
    reservation = limiter.reserve()

    async def main() -> None:
        waiter = asyncio.create_task(reservation.wait())
        await asyncio.sleep(1.0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    run_virtual(main(), clock=clock)
    assert reservation.status == "cancelled"
    assert limiter.reserve().execute_at == 10.0


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 1) for a in BUCKETS]]
)
def test_unused_reservation_expires_and_releases_its_units(
    algorithm: str, burst: int | None
) -> None:
    """Past expires_at an unused reservation is released; waiting on it then raises."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 1, 10.0, burst, clock, reservation_ttl=2.0)
    reservation = limiter.reserve()
    assert (reservation.execute_at, reservation.expires_at) == (0.0, 2.0)
    clock.advance(1.75)
    assert not limiter.try_acquire().allowed
    clock.advance(0.25)
    assert limiter.try_acquire().allowed  # released at expires_at, not at 10.0
    assert reservation.status == "expired"
    assert not reservation.cancel()
    with pytest.raises(RateLimitError) as caught:
        run_virtual(reservation.wait(), clock=clock)
    assert caught.value.code == "reservation_expired"
    with pytest.raises(RateLimitError):
        reservation.wait_sync()
    assert limiter.stats.refunded_units == 1.0


@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 1) for a in BUCKETS]]
)
def test_max_wait_exceeded_raises_and_takes_nothing(algorithm: str, burst: int | None) -> None:
    """reserve(max_wait) raises with retry_after when it would be due later; nothing is taken."""
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 1, 10.0, burst, clock)
    assert limiter.try_acquire().allowed
    with pytest.raises(RateLimitError) as caught:
        limiter.reserve(max_wait=5.0)
    assert caught.value.retry_after == 10.0
    assert caught.value.code == "wait_too_long"
    assert limiter.stats.rejected == 1
    assert limiter.reserve(max_wait=10.0).execute_at == 10.0


ACCOUNTING_OPS = ("reserve", "reserve", "cancel", "wait", "adjust", "advance", "try")


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_accounting_never_creates_or_loses_units(algorithm: str, data: st.DataObject) -> None:
    """admitted - refunded - forfeited always equals the units callers still hold."""
    burst = 6 if algorithm != "sliding_window" else None
    clock = VirtualClock()
    limiter = limiter_for(algorithm, 6, 5.0, burst, clock, reservation_ttl=3.0)
    steps = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(ACCOUNTING_OPS),
                st.integers(1, 6),
                st.integers(0, 8),
                st.floats(0.0, 4.0),
            ),
            max_size=40,
        )
    )
    reservations: list[Reservation] = []
    taken = 0.0
    for op, count, pick, seconds in steps:
        live = [r for r in reservations if r.status in ("pending", "used")]
        if op == "reserve":
            reservations.append(limiter.reserve(count=count, max_wait=math.inf))
        elif op == "try":
            taken += count if limiter.try_acquire(count=count).allowed else 0
        elif op == "advance":
            clock.advance(seconds)
        elif reservations:
            target = reservations[pick % len(reservations)]
            was_pending = target.status == "pending"
            if op == "cancel":
                assert target.cancel() == was_pending
            elif op == "wait" and was_pending:
                if clock.now() >= target.expires_at:  # not released yet: waiting releases it
                    with pytest.raises(RateLimitError):
                        target.wait_sync()
                    assert target.status == "expired"
                else:
                    target.wait_sync()
                    assert target.status == "used"
            elif op == "adjust" and target in live:
                limiter.adjust_sync(target, pick % (count + 2))
        stats = limiter.stats
        held = taken + sum(r.count for r in reservations if r.status in ("pending", "used"))
        accounted = stats.admitted_units - stats.refunded_units - stats.forfeited_units
        assert accounted == pytest.approx(held)
        assert min(stats.refunded_units, stats.forfeited_units) >= 0.0
        assert 0.0 <= limiter.remaining() <= limiter.max_count
    if algorithm == "sliding_window":
        assert limiter.stats.forfeited_units == 0.0
        state = limiter._states.get("default")
        if state is not None:
            assert all(entry[1] >= 0.0 for entry in state.entries)
            assert state.total == pytest.approx(sum(entry[1] for entry in state.entries))


# --- 7. adjust --------------------------------------------------------------------------------
def test_adjust_refund_gives_units_back_exactly_on_the_sliding_window() -> None:
    """A reservation that used fewer units than estimated returns the difference at once."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    reservation = limiter.reserve(count=80)
    reservation.wait_sync()
    assert limiter.adjust_sync(reservation, 30) == -50.0
    assert reservation.count == 30.0
    assert limiter.remaining() == 70.0
    assert limiter.try_acquire(count=70).allowed
    assert not limiter.try_acquire().allowed
    assert limiter.stats.refunded_units == 50.0


def test_adjust_by_key_refunds_the_difference() -> None:
    """The key form (after acquire) refunds estimated - actual."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    grant = limiter.acquire_sync(count=80)
    assert (grant.key, grant.count, grant.waited, grant.admitted_at) == ("default", 80, 0.0, 0.0)
    assert limiter.adjust_sync("default", 30, estimated_count=80) == -50.0
    assert limiter.remaining() == 70.0
    assert limiter.stats.refunded_units == 50.0


def test_adjust_with_the_grant_refunds_that_grant() -> None:
    """The Grant form (sync and async) refunds from the grant itself: its admitted_at and its
    estimate come with it, so a later grant of the key keeps its units."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    first = limiter.acquire_sync(count=30)
    clock.advance(10.0)
    second = limiter.acquire_sync(count=50)
    assert (first.admitted_at, second.admitted_at) == (0.0, 10.0)
    assert limiter.adjust_sync(second, 20) == -30.0
    assert [entry[1] for entry in limiter._states["default"].entries] == [30.0, 20.0]
    assert run_virtual(limiter.adjust(first, 40), clock=clock) == 10.0  # a charge, recorded now
    assert limiter.remaining() == 40.0  # 30 + 20 + 10 in the window
    assert (limiter.stats.refunded_units, limiter.stats.admitted_units) == (30.0, 90.0)
    other = RateLimiter(100, 60.0, clock=clock)
    with pytest.raises(ValidationError) as caught:
        other.adjust_sync(first, 0)
    assert caught.value.code == "invalid_grant"


def test_adjust_by_key_never_refunds_units_of_a_queued_reservation() -> None:
    """A key-form refund after acquire must not shrink a later reservation still waiting."""
    clock = VirtualClock()
    limiter = RateLimiter(3000, 60.0, clock=clock)
    assert limiter.try_acquire(count=2000).allowed
    queued = limiter.reserve(count=2000)
    assert queued.execute_at == 60.0
    limiter.adjust_sync("default", 1000, estimated_count=2000)
    later = limiter.reserve(count=2000)
    events = [(0.0, 1000), (queued.execute_at, 2000), (later.execute_at, 2000)]
    assert window_peak(events, 60.0) <= 3000
    assert later.execute_at == 120.0


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_key_refund_never_takes_back_a_queued_grant(algorithm: str) -> None:
    """With a reservation queued behind the caller, a key-form refund is forfeited, not taken."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 1.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire().allowed  # the caller
    queued = limiter.reserve()
    assert queued.execute_at == 1.0
    limiter.adjust_sync("default", 0, estimated_count=1)
    assert limiter.stats.forfeited_units == 1.0
    assert limiter.reserve().execute_at == 2.0  # not 1.0 next to the queued one


def test_adjust_by_key_refund_keeps_later_grants_in_their_window() -> None:
    """Refunding an older grant by key must not free units of a later grant still in the window."""
    clock = VirtualClock()
    limiter = RateLimiter(10, 10.0, clock=clock)
    assert limiter.try_acquire(count=5).allowed  # the caller, t = 0
    clock.advance(5.0)
    assert limiter.try_acquire(count=5).allowed  # someone else, t = 5
    clock.advance(1.0)
    limiter.adjust_sync("default", 0, estimated_count=5)  # the caller used nothing
    assert limiter.try_acquire(count=5).allowed  # t = 6: the caller's 5 units are free
    clock.advance(4.0)  # t = 10: [5, 15) still holds 10 units
    assert not limiter.try_acquire().allowed
    clock.advance(5.0)
    assert limiter.try_acquire(count=5).allowed


def test_adjust_charge_makes_later_callers_wait() -> None:
    """A charge (actual > estimated) is recorded: the next caller waits for it to age out."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    assert limiter.try_acquire(count=50).allowed
    assert limiter.adjust_sync("default", 80, estimated_count=50) == 30.0
    assert limiter.remaining() == 20.0
    assert limiter.stats.admitted_units == 80.0
    reservation = limiter.reserve(count=20)
    assert limiter.adjust_sync(reservation, 40) == 20.0
    assert not limiter.try_acquire().allowed
    grant = run_virtual(limiter.acquire(count=30), clock=clock)
    assert (grant.waited, grant.admitted_at) == (60.0, 60.0)


def test_adjust_by_key_needs_estimated_count() -> None:
    """Without estimated_count the key form cannot know the difference: ValidationError."""
    limiter = RateLimiter(100, 60.0, clock=VirtualClock())
    limiter.try_acquire(count=10)
    with pytest.raises(ValidationError) as caught:
        limiter.adjust_sync("default", 5)
    assert "estimated_count" in caught.value.message
    assert not caught.value.retryable
    with pytest.raises(ValidationError, match="estimated_count"):
        run_virtual(limiter.adjust("default", 5))
    for bad in (-1, math.nan, True, "5"):
        with pytest.raises(ValidationError):
            limiter.adjust_sync("default", bad, estimated_count=10)
    with pytest.raises(ValidationError):
        limiter.adjust_sync("default", 5, estimated_count=0)
    assert limiter.remaining() == 90.0


def test_adjust_rejects_foreign_and_dead_reservations() -> None:
    """A reservation of another limiter, or one cancelled, cannot be adjusted."""
    clock = VirtualClock()
    limiter, other = RateLimiter(10, 1.0, clock=clock), RateLimiter(10, 1.0, clock=clock)
    foreign = other.reserve()
    with pytest.raises(ValidationError):
        limiter.adjust_sync(foreign, 0)
    cancelled = limiter.reserve()
    cancelled.cancel()
    with pytest.raises(RateLimitError) as caught:
        limiter.adjust_sync(cancelled, 0)
    assert caught.value.code == "reservation_cancelled"


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_refunds_only_the_latest_grant_and_forfeits_older_ones(algorithm: str) -> None:
    """token_bucket/gcra take back the latest grant; an older one's units are forfeited."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, algorithm=algorithm, burst=100, clock=clock)  # type: ignore[arg-type]
    older = limiter.reserve(count=40)
    latest = limiter.reserve(count=40)
    assert limiter.remaining() == pytest.approx(20.0)
    limiter.adjust_sync(older, 10)
    assert limiter.remaining() == pytest.approx(20.0)
    assert limiter.stats.forfeited_units == 30.0
    limiter.adjust_sync(latest, 10)
    assert limiter.remaining() == pytest.approx(50.0)
    assert limiter.stats.refunded_units == 30.0
    assert latest.cancel()  # the rest of the latest grant: as if never granted
    assert limiter.remaining() == pytest.approx(60.0)


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_grant_refund_never_takes_back_a_later_grant(algorithm: str) -> None:
    """adjust(grant, ...) of an older grant on a bucket forfeits (docs/design/ratelimit.md): it
    must not give back the units of a later grant that is in use. A pacer of 1 per second: A at
    0 s, B at 1 s; A is settled at 0 units at 1 s. Were B's unit given back, C would pass at 1 s
    too: two units in [1, 2), over the bound of 1."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 1.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    first = limiter.acquire_sync()
    later = limiter.acquire_sync()
    assert (first.admitted_at, later.admitted_at, clock.now()) == (0.0, 1.0, 1.0)
    assert limiter.adjust_sync(first, 0) == -1.0
    events = [(first.admitted_at, 0), (later.admitted_at, 1)]
    if limiter.try_acquire().allowed:
        events.append((clock.now(), 1))
    assert window_peak(events, 1.0) <= 1
    stats = limiter.stats
    assert (stats.refunded_units, stats.forfeited_units) == (0.0, 1.0)


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_key_refund_gives_back_only_the_difference(algorithm: str) -> None:
    """A partial key-form refund returns estimated - actual, not the whole grant."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, algorithm=algorithm, burst=100, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire(count=100).allowed
    limiter.adjust_sync("default", 90, estimated_count=100)
    assert limiter.remaining() == pytest.approx(10.0)
    assert not limiter.try_acquire(count=11).allowed
    assert limiter.stats.refunded_units == 10.0


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_bucket_key_refund_is_capped_by_the_latest_grant(algorithm: str) -> None:
    """A key-form refund beyond the latest grant returns that grant; the rest is forfeited."""
    clock = VirtualClock()
    limiter = RateLimiter(100, 60.0, algorithm=algorithm, burst=100, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire(count=30).allowed
    assert limiter.try_acquire(count=20).allowed
    limiter.adjust_sync("default", 0, estimated_count=30)
    assert limiter.remaining() == pytest.approx(70.0)
    stats = limiter.stats
    assert (stats.refunded_units, stats.forfeited_units) == (20.0, 10.0)


def test_immediate_refunds_give_back_an_older_grant_at_once() -> None:
    """refunds="immediate": an older grant's unused units return to the bucket (a provider
    settling at completion), and so do the latest's, on top. (At the very instant of a grant a
    refund counts as if it came first, as a provider may see it: ahead of a full bucket it would
    be lost to the cap.)"""
    clock = VirtualClock()
    limiter = RateLimiter(
        60, 60.0, algorithm="token_bucket", burst=100, refunds="immediate", clock=clock
    )
    older = limiter.reserve(count=40)
    latest = limiter.reserve(count=40)
    clock.advance(1.0)
    assert limiter.remaining() == pytest.approx(21.0)
    assert limiter.adjust_sync(older, 10) == -30.0
    assert limiter.remaining() == pytest.approx(51.0)
    assert latest.cancel()
    assert limiter.remaining() == pytest.approx(91.0)
    stats = limiter.stats
    assert (stats.refunded_units, stats.forfeited_units) == (70.0, 0.0)
    assert "refunds='immediate'" in repr(limiter)


def test_immediate_refunds_never_pass_a_queued_reservation() -> None:
    """A reservation keeps its time (its holder was told it), so a refund while reservations
    are queued cannot move the queue: it is forfeited, and a newcomer still waits behind them
    (FIFO). Once none is queued, refunds count again."""
    clock = VirtualClock()
    limiter = RateLimiter(
        1, 1.0, algorithm="token_bucket", burst=2, refunds="immediate", clock=clock
    )
    first = limiter.acquire_sync(count=2)
    queued = [limiter.reserve() for _ in range(3)]
    assert [r.execute_at for r in queued] == [1.0, 2.0, 3.0]
    clock.advance(0.5)
    limiter.adjust_sync(first, 0)
    assert not limiter.try_acquire().allowed
    assert limiter.reserve().execute_at == 4.0
    assert (limiter.stats.refunded_units, limiter.stats.forfeited_units) == (0.0, 2.0)
    clock.advance(4.0)  # 4.5 s: the bucket holds half a unit
    later = limiter.acquire_sync(count=0.5)
    limiter.adjust_sync(later, 0)
    assert limiter.remaining() == pytest.approx(0.5)


@pytest.mark.parametrize("algorithm", ["sliding_window", "gcra"])
def test_immediate_refunds_need_a_token_bucket(algorithm: str) -> None:
    """refunds="immediate" is a token bucket's setting; elsewhere, or misspelled, it is refused."""
    with pytest.raises(ValidationError, match="token_bucket"):
        RateLimiter(10, 1.0, algorithm=algorithm, refunds="immediate")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="'safe'"):
        RateLimiter(10, 1.0, algorithm="token_bucket", refunds="later")  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_immediate_refunds_bound_net_use_and_keep_fifo(data: st.DataObject) -> None:
    """Grants minus refunds in any span [s, t] stay within capacity + (t - s) * refill, each
    refund counted at the time its units come back (now, or the last queued grant's time), and
    no grant is made before an earlier one. (A full refund of the latest grant undoes it, as if
    never made: ``test_immediate_refunds_give_back_an_older_grant_at_once``.)"""
    rate = data.draw(st.integers(1, 10), label="rate")
    period = data.draw(st.sampled_from([1.0, 0.3, 60.0]), label="period")
    burst = data.draw(st.integers(1, 12), label="burst")
    clock = VirtualClock()
    limiter = RateLimiter(
        rate,
        period,
        algorithm="token_bucket",
        burst=burst,
        refunds="immediate",
        reservation_ttl=1e9,  # an expiry is a refund this ledger would not see
        clock=clock,
    )
    held: list[Reservation] = []
    moves: list[tuple[float, float]] = []  # (time, +units granted or -units given back)
    last = -math.inf
    latest: Reservation | None = None
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        clock.advance(data.draw(st.sampled_from([0.0, 0.0, 0.1 * period, period]), label="gap"))
        op = data.draw(st.sampled_from(["reserve", "reserve", "try", "settle", "cancel"]))
        count = data.draw(st.integers(1, burst), label="count")
        if op == "reserve":
            reservation = limiter.reserve(count=count, max_wait=math.inf)
            assert reservation.execute_at >= last
            last = reservation.execute_at
            moves.append((last, count))
            held.append(reservation)
            latest = reservation
        elif op == "try":
            if limiter.try_acquire(count=count).allowed:
                assert clock.now() >= last
                last = clock.now()
                moves.append((last, count))
                latest = None
        elif held:
            reservation = held.pop(data.draw(st.integers(0, len(held) - 1), label="which"))
            before = reservation.count
            least = 1 if reservation is latest else 0  # never all of the latest (see above)
            if op == "cancel" and not least:
                reservation.cancel()
                back = before
            else:
                actual = data.draw(st.integers(least, int(before)), label="actual")
                limiter.adjust_sync(reservation, actual)
                back = before - actual
            moves.append((max(clock.now(), last), -back))
    refill = rate / period
    times = sorted({t for t, _ in moves})
    for i, start in enumerate(times):
        for end in times[i:]:
            net = sum(u for t, u in moves if start <= t <= end)
            assert net <= burst + (end - start) * refill + 1e-6


def test_immediate_refunds_pull_queued_async_waiters_forward() -> None:
    """A refund moves the async waiters queued behind it earlier, in order, by what it gives
    back: 10 units per second, a bucket of 10; three waiters of 10 queued at 1, 2 and 3 s; the
    first grant, settled at 0 units at 0.5 s, lets them go at 0.5, 1.5 and 2.5 s."""
    clock = VirtualClock()
    limiter = RateLimiter(
        10, 1.0, algorithm="token_bucket", burst=10, refunds="immediate", clock=clock
    )

    async def main() -> list[float]:
        first = await limiter.acquire(count=10)
        waiters = [asyncio.ensure_future(limiter.acquire(count=10)) for _ in range(3)]
        await asyncio.sleep(0.5)
        await limiter.adjust(first, 0)
        return [(await w).admitted_at for w in waiters]

    assert run_virtual(main(), clock=clock) == pytest.approx([0.5, 1.5, 2.5])
    assert limiter.stats.refunded_units == 10.0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_immediate_refunds_never_overrun_a_provider_settling_the_same_way(
    data: st.DataObject,
) -> None:
    """Async waiters (pulled forward by refunds) and reservations (kept in place) on a settling
    bucket: replayed against a provider's bucket of the same size that sees each grant at its
    admission time and each refund when the client settles it (at one instant, in the order
    they happened: a refund may arrive before a grant due then), every grant finds its units
    there (no 429), and grants come in the order they were asked for."""
    rate = data.draw(st.integers(1, 10), label="rate")
    period = data.draw(st.sampled_from([1.0, 0.3, 60.0]), label="period")
    burst = data.draw(st.integers(1, 12), label="burst")
    plans = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]),  # start, in periods
                st.integers(1, burst),  # units asked
                st.sampled_from([0.0, 0.05, 0.3, 2.0]),  # held, in periods
                st.floats(0.0, 1.0),  # fraction used
                st.booleans(),  # a reservation rather than an async waiter
            ),
            min_size=1,
            max_size=12,
        ),
        label="plans",
    )
    clock = VirtualClock()
    limiter = RateLimiter(
        rate, period, algorithm="token_bucket", burst=burst, refunds="immediate", clock=clock
    )
    events: list[tuple[float, int, str, float]] = []  # (time, order, kind, units)
    asked: list[int] = []
    admitted: dict[int, float] = {}

    async def one(i: int, start: float, units: int, held: float, used: float, book: bool) -> None:
        await asyncio.sleep(start * period)
        asked.append(i)
        target: Grant | Reservation
        if book:
            target = limiter.reserve(count=units, max_wait=1e9)
            await target.wait()
            admitted[i] = target.execute_at
        else:
            target = await limiter.acquire(count=units)
            admitted[i] = target.admitted_at
        events.append((admitted[i], len(events), "grant", units))
        await asyncio.sleep(held * period)
        actual = math.floor(units * used)
        await limiter.adjust(target, actual)
        events.append((clock.now(), len(events), "settle", units - actual))

    async def main() -> None:
        await asyncio.gather(*(one(i, *plan) for i, plan in enumerate(plans)))

    run_virtual(main(), clock=clock)
    refill, level, last = rate / period, float(burst), 0.0
    for t, _, kind, units in sorted(events):
        level = min(float(burst), level + (t - last) * refill)
        last = t
        if kind == "grant":
            assert level >= units - 1e-6 * burst, (t, units, level)
            level -= units
        else:
            level = min(float(burst), level + units)
    times = [admitted[i] for i in asked]
    assert times == sorted(times)


# --- 8. MultiLimit ----------------------------------------------------------------------------
def rpm_tpm(clock: VirtualClock) -> tuple[RateLimiter, RateLimiter, MultiLimit]:
    """3 requests and 1,000 tokens per minute, as one MultiLimit."""
    rpm = RateLimiter(3, 60.0, clock=clock, name="rpm")
    tpm = RateLimiter(1000, 60.0, clock=clock, name="tpm")
    return rpm, tpm, MultiLimit([rpm, tpm])


def test_multilimit_refusal_by_tpm_leaves_rpm_untouched() -> None:
    """A request refused for tokens takes no request slot, and vice versa."""
    clock = VirtualClock()
    rpm, tpm, both = rpm_tpm(clock)
    assert both.try_acquire(count=[1, 400]).allowed
    assert both.try_acquire(count=[1, 400]).allowed
    refused = both.try_acquire(count=[1, 400])
    assert not refused.allowed
    assert refused.retry_after == 60.0
    assert refused.remaining == 1.0
    assert (rpm.remaining(), tpm.remaining()) == (1.0, 200.0)
    assert both.try_acquire(count=[1, 100]).allowed
    assert not both.try_acquire(count=[1, 50]).allowed  # refused for requests
    assert (rpm.remaining(), tpm.remaining()) == (0.0, 100.0)
    assert (rpm.stats.admitted, tpm.stats.admitted) == (3, 3)
    assert (rpm.stats.rejected, tpm.stats.rejected) == (2, 2)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    calls=st.lists(
        st.tuples(st.floats(0.0, 30.0), st.integers(1, 3), st.integers(1, 1000)), max_size=40
    )
)
def test_multilimit_is_all_or_nothing(calls: list[tuple[float, int, int]]) -> None:
    """Every limit admits exactly when the MultiLimit does; a refusal changes no limit."""
    clock = VirtualClock()
    rpm, tpm, both = rpm_tpm(clock)
    rpm_events, tpm_events = [], []
    for gap, requests, tokens in calls:
        clock.advance(gap)
        before = (rpm.remaining(), tpm.remaining())
        if both.try_acquire(count=[requests, tokens]).allowed:
            rpm_events.append((clock.now(), requests))
            tpm_events.append((clock.now(), tokens))
        else:
            assert (rpm.remaining(), tpm.remaining()) == before
    assert rpm.stats.admitted == tpm.stats.admitted == len(rpm_events)
    assert window_peak(rpm_events, 60.0) <= 3
    assert window_peak(tpm_events, 60.0) <= 1000


def test_multilimit_counts_single_and_wrong() -> None:
    """One count applies to every limit; a wrong number of counts is a ValidationError."""
    clock = VirtualClock()
    a, b = RateLimiter(10, 1.0, clock=clock), RateLimiter(20, 1.0, clock=clock)
    both = MultiLimit([a, b])
    assert both.try_acquire(count=4).allowed
    assert (a.remaining(), b.remaining()) == (6.0, 16.0)
    for wrong in ([1], [1, 2, 3], []):
        with pytest.raises(ValidationError) as caught:
            both.try_acquire(count=wrong)
        assert "2 limits" in caught.value.message
    with pytest.raises(ValidationError) as too_large:
        both.try_acquire(count=[11, 1])
    assert too_large.value.code == "request_too_large"
    assert (a.remaining(), b.remaining()) == (6.0, 16.0)


def test_multilimit_refuses_bad_configurations() -> None:
    """Limits on different clocks, no limits, or non-limiters are refused."""
    with pytest.raises(ValidationError) as caught:
        MultiLimit(
            [RateLimiter(1, 1.0, clock=VirtualClock()), RateLimiter(1, 1.0, clock=VirtualClock())]
        )
    assert "clock" in caught.value.message
    with pytest.raises(ValidationError):
        MultiLimit([])
    with pytest.raises(ValidationError):
        MultiLimit([object()])  # type: ignore[list-item]


def test_multilimit_reserve_puts_every_part_at_the_same_time_and_cancel_refunds_all() -> None:
    """reserve() on a MultiLimit is due when the slowest limit allows; cancel refunds every part."""
    clock = VirtualClock()
    rpm, tpm, both = rpm_tpm(clock)
    assert tpm.try_acquire(count=900).allowed
    reservation = both.reserve(count=[1, 500])
    assert isinstance(reservation, MultiReservation)
    assert reservation.execute_at == 60.0
    assert [part.execute_at for part in reservation.parts] == [60.0, 60.0]
    assert [part.count for part in reservation.parts] == [1.0, 500.0]
    assert rpm.remaining() == 0.0  # the request slot is held too, FIFO
    assert reservation.cancel()
    assert not reservation.cancel()
    assert [part.status for part in reservation.parts] == ["cancelled", "cancelled"]
    assert (rpm.remaining(), tpm.remaining()) == (3.0, 100.0)
    with pytest.raises(RateLimitError) as caught:
        both.reserve(count=[1, 500], max_wait=30.0)
    assert caught.value.retry_after == 60.0
    assert (rpm.remaining(), tpm.remaining()) == (3.0, 100.0)


def test_multilimit_acquire_waits_for_the_slowest_limit() -> None:
    """acquire/acquire_sync on a MultiLimit wait for the limit that frees last."""
    clock = VirtualClock()
    rpm, tpm, both = rpm_tpm(clock)
    assert tpm.try_acquire(count=990).allowed

    async def main() -> Grant:
        return await both.acquire(count=[1, 20])

    grant = run_virtual(main(), clock=clock)
    assert grant == Grant(("default", (1.0, 20.0), 60.0, 60.0, both))
    assert clock.now() == 60.0
    assert both.acquire_sync(count=[1, 10]) == Grant(("default", (1.0, 10.0), 0.0, 60.0, both))
    assert both.acquire_sync(count=[1, 990]) == Grant(("default", (1.0, 990.0), 60.0, 120.0, both))
    assert clock.now() == 120.0
    with pytest.raises(RateLimitError) as caught:
        both.acquire_sync(count=[1, 100], timeout=1.0)
    assert caught.value.code == "timeout"
    assert clock.now() == 120.0
    assert rpm.stats.admitted == 3


# --- 9. ShardedRateLimiter --------------------------------------------------------------------
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(rate=st.integers(1, 100_000), shards=st.integers(1, 64))
def test_shard_rates_sum_to_rate_and_none_is_zero(rate: int, shards: int) -> None:
    """Shard rates add up to rate exactly, differ by at most one, and none is zero."""
    if rate < shards:
        with pytest.raises(ValidationError) as caught:
            ShardedRateLimiter(rate, 1.0, shards=shards, clock=VirtualClock())
        assert "shards" in caught.value.message
        return
    sharded = ShardedRateLimiter(rate, 1.0, shards=shards, clock=VirtualClock())
    assert sum(sharded.rates) == rate
    assert min(sharded.rates) >= 1
    assert max(sharded.rates) - min(sharded.rates) <= 1
    assert [s.rate for s in sharded.shards] == sharded.rates


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0}, {"rate": 2.5}, {"rate": True}, {"shards": 0}, {"shards": 1.0}]
)
def test_sharded_refuses_bad_rates_and_shards(kwargs: dict[str, Any]) -> None:
    """Non-integer or too small rate/shards raise ValidationError naming the parameter."""
    args: dict[str, Any] = {"rate": 10, "shards": 2, **kwargs}
    with pytest.raises(ValidationError) as caught:
        ShardedRateLimiter(args["rate"], 1.0, shards=args["shards"], clock=VirtualClock())
    assert next(iter(kwargs)) in caught.value.message


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", range(4))
def test_sharded_union_never_exceeds_rate_for_one_key(algorithm: str, seed: int) -> None:
    """Random traffic on one key: all shards together stay within rate per period."""
    rng = random.Random(seed)
    clock = VirtualClock()
    sharded = ShardedRateLimiter(
        20,
        10.0,
        shards=4,
        algorithm=algorithm,
        clock=clock,
        rng=random.Random(seed),  # type: ignore[arg-type]
    )
    largest = int(sharded.max_count)
    events, denied = [], 0
    for _ in range(400):
        clock.advance(rng.choice([0.0, 0.0, rng.random(), rng.random() * 5]))
        count = rng.randint(1, largest)
        if sharded.try_acquire(count=count).allowed:
            events.append((clock.now(), count))
        else:
            denied += 1
    assert window_peak(events, 10.0) <= 20
    stats = sharded.stats
    assert stats.admitted == len(events)
    assert stats.admitted_units == sum(units for _, units in events)
    assert stats.rejected == denied  # calls refused, not shard refusals
    assert stats.admitted == sum(s.stats.admitted for s in sharded.shards)


def test_one_key_spreads_over_every_shard() -> None:
    """With power-of-two choices per request, a single key uses all shards, not just two."""
    clock = VirtualClock()
    sharded = ShardedRateLimiter(800, 60.0, shards=8, clock=clock, rng=random.Random(7))
    for _ in range(200):
        assert sharded.try_acquire().allowed
    used = [s.stats.admitted for s in sharded.shards]
    assert all(n > 0 for n in used)
    assert sum(used) == 200
    assert min(used) >= 200 // 8 // 2  # the roomier of two keeps them roughly level


@pytest.mark.parametrize("seed", range(25))
def test_sharded_count_limit_is_consistent(seed: int) -> None:
    """Whether a count is too large does not depend on which shards the request happens to pick."""
    sharded = ShardedRateLimiter(10, 1.0, shards=3, clock=VirtualClock(), rng=random.Random(seed))
    assert sharded.rates == [4, 3, 3]
    for count in range(1, 7):
        if count <= sharded.max_count:
            assert sharded.try_acquire(key=f"k{count}", count=count).allowed
        else:
            with pytest.raises(ValidationError) as caught:
                sharded.try_acquire(key=f"k{count}", count=count)
            assert caught.value.code == "request_too_large"
    with pytest.raises(ValidationError):
        sharded.try_acquire(count=5)  # larger than the biggest shard's share


def test_sharded_acquire_reserve_and_stats() -> None:
    """acquire, acquire_sync and reserve work through shards; stats are the shards' sums."""
    clock = VirtualClock()
    sharded = ShardedRateLimiter(4, 10.0, shards=2, clock=clock, rng=random.Random(3))
    first = sharded.acquire_sync()
    second = run_virtual(sharded.acquire(), clock=clock)
    assert [(g.waited, g.admitted_at) for g in (first, second)] == [(0.0, 0.0), (0.0, 0.0)]
    assert {id(first.limiter), id(second.limiter)} == {id(s) for s in sharded.shards}
    assert [s.remaining() for s in sharded.shards] == [1.0, 1.0]  # the roomier one was taken
    reservation = sharded.reserve()
    assert reservation.execute_at == 0.0
    reservation.wait_sync()
    assert sharded.try_acquire().allowed
    assert not sharded.try_acquire().allowed
    assert sharded.acquire_sync()[2:4] == (10.0, 10.0)  # (waited, admitted_at)
    assert clock.now() == 10.0
    stats = sharded.stats
    assert (stats.admitted, stats.admitted_units) == (5, 5.0)
    assert waits(stats)[0.0] == 3
    assert waits(stats)[10.0] == 1


# --- 10. keys and memory ----------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_are_independent(algorithm: str) -> None:
    """Exhausting one key leaves every other key untouched."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 10.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    assert limiter.try_acquire("a").allowed
    assert not limiter.try_acquire("a").allowed
    assert limiter.try_acquire("b").allowed
    assert limiter.remaining("a") == limiter.remaining("b") == 0.0
    assert limiter.remaining("c") == 1.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_idle_keys_are_forgotten(algorithm: str) -> None:
    """After the period, idle keys' states are swept: memory stays bounded under many keys."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 10.0, algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    held = limiter.reserve("held", max_wait=math.inf)  # pending until 60.0: kept by sweeps
    assert not limiter.try_acquire("held").allowed
    for i in range(5000):
        assert limiter.try_acquire(f"old-{i}").allowed
    assert len(limiter._states) == 5001
    clock.advance(20.0)
    for i in range(4096):
        assert limiter.try_acquire(f"new-{i}").allowed
    assert len(limiter._states) <= 4097
    assert "old-0" not in limiter._states
    assert "held" in limiter._states
    assert held.status == "pending"
    assert limiter.try_acquire("old-0").allowed  # a forgotten key starts fresh


# --- 11. threads ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "burst"), [("sliding_window", None), *[(a, 1000) for a in BUCKETS]]
)
def test_threads_hammering_one_limiter_admit_exactly_the_rate(
    algorithm: str, burst: int | None
) -> None:
    """8 threads racing try_acquire on a real clock admit exactly rate units, no more, no less."""
    limiter = RateLimiter(
        1000,
        1e9,
        algorithm=algorithm,  # type: ignore[arg-type]
        burst=burst,
        clock=SystemClock(),
    )
    barrier = threading.Barrier(8)
    admitted = [0] * 8

    def hammer(index: int) -> None:
        barrier.wait()
        for _ in range(1000):
            if limiter.try_acquire().allowed:
                admitted[index] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 1000
    assert limiter.stats.admitted == 1000
    assert limiter.stats.rejected == 7000


# --- 12. stats --------------------------------------------------------------------------------
def test_stats_count_admissions_rejections_and_waits() -> None:
    """admitted/rejected count calls; waits puts a 0-s acquire in 0.0 and a 5-s one in 10.0."""
    clock = VirtualClock()
    limiter = RateLimiter(1, 5.0, clock=clock)

    async def main() -> list[Grant]:
        return [await limiter.acquire(), await limiter.acquire()]

    grants = run_virtual(main(), clock=clock)
    assert [(g.waited, g.admitted_at) for g in grants] == [(0.0, 0.0), (5.0, 5.0)]
    assert not limiter.try_acquire().allowed
    stats = limiter.stats
    assert isinstance(stats, LimiterStats)
    assert (stats.admitted, stats.admitted_units, stats.rejected) == (2, 2.0, 1)
    assert [bound for bound, _ in stats.waits] == list(WAIT_BUCKETS)
    assert waits(stats) == {b: (1 if b in (0.0, 10.0) else 0) for b in WAIT_BUCKETS}
    assert stats.waited == 1
    assert (stats.refunded_units, stats.forfeited_units) == (0.0, 0.0)
    limiter.reserve(max_wait=math.inf).cancel()
    assert limiter.stats.waited == 1  # a cancelled reservation never waited
    assert limiter.stats.refunded_units == 1.0


def test_results_are_named_tuples_with_remaining_and_reset() -> None:
    """try_acquire returns RateLimitResult((allowed, remaining, retry_after, reset_at)) and
    acquire a Grant((key, count, waited, admitted_at, limiter)): tuples, fields read-only."""
    clock = VirtualClock(100.0)
    limiter = RateLimiter(3, 30.0, clock=clock)
    result = limiter.try_acquire(count=2)
    assert isinstance(result, RateLimitResult)
    assert result._asdict() == {
        "allowed": True,
        "remaining": 1.0,
        "retry_after": 0.0,
        "reset_at": 130.0,
    }
    assert result == RateLimitResult((True, 1.0, 0.0, 130.0)) == (True, 1.0, 0.0, 130.0)
    assert (result.allowed, result.remaining, result.retry_after, result.reset_at) == result
    assert repr(result) == (
        "RateLimitResult(allowed=True, remaining=1.0, retry_after=0.0, reset_at=130.0)"
    )
    assert "RateLimiter(3, 30" in repr(limiter)
    grant = limiter.acquire_sync()
    assert isinstance(grant, Grant)
    assert (grant.key, grant.count, grant.waited, grant.admitted_at, grant.limiter) == grant
    assert grant == ("default", 1, 0.0, 100.0, limiter)
    assert repr(grant).startswith("Grant(key='default', count=1, waited=0.0, admitted_at=100.0")
    with pytest.raises(AttributeError):
        grant.waited = 1.0  # type: ignore[misc]


# --- 13. constructor validation ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -5}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": "60"}, "rate"),
        ({"period": 0}, "period"),
        ({"period": -1.0}, "period"),
        ({"period": math.nan}, "period"),
        ({"algorithm": "leaky_bucket"}, "algorithm"),
        ({"burst": 5}, "burst"),
        ({"algorithm": "token_bucket", "burst": 0.5}, "burst"),
        ({"algorithm": "gcra", "burst": 0}, "burst"),
        ({"algorithm": "gcra", "burst": math.nan}, "burst"),
        ({"reservation_ttl": -1.0}, "reservation_ttl"),
    ],
)
def test_constructor_validation_names_the_parameter(kwargs: dict[str, Any], mentions: str) -> None:
    """Bad constructor arguments raise a non-retryable ValidationError naming the parameter."""
    args: dict[str, Any] = {"rate": 10, "period": 1.0, "algorithm": "sliding_window", **kwargs}
    with pytest.raises(ValidationError) as caught:
        RateLimiter(clock=VirtualClock(), **args)
    assert caught.value.code == "invalid_config"
    assert not caught.value.retryable
    assert mentions in caught.value.message


class _LateClock(VirtualClock):
    """A virtual clock whose async sleeps wake up to ``lateness`` seconds late (a busy loop)."""

    def __init__(self, lateness: float, seed: int) -> None:
        super().__init__()
        self.lateness = lateness
        self.rng = random.Random(seed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds + self.rng.uniform(0.0, self.lateness))


@pytest.mark.parametrize("lateness", [0.0, 0.05, 0.3])
def test_late_wakeups_never_break_the_window_for_actual_use_times(lateness: float) -> None:
    """Waiters that wake late are checked again at the time they really go: the units actually
    used in any window stay within the rate (the burst test of the peer baselines)."""
    clock = _LateClock(lateness, seed=3)
    limiter = RateLimiter(200, 1.0, clock=clock)
    used: list[float] = []

    async def worker(left: list[int]) -> None:
        while left[0] > 0:
            left[0] -= 1
            await limiter.acquire()
            used.append(clock.now())

    async def main() -> None:
        left = [600]
        await asyncio.gather(*(worker(left) for _ in range(50)))

    run_virtual(main(), clock=clock)
    used.sort()
    assert len(used) == 600
    worst = max(bisect.bisect_left(used, t + 1.0) - i for i, t in enumerate(used))
    assert worst <= 200
    if lateness == 0.0:
        assert used[-1] == pytest.approx(2.0, abs=0.01)


def test_an_on_time_waiter_rechecks_against_a_late_one() -> None:
    """A grant scheduled against an entry whose waiter then woke late checks again, even on time.

    rate 2 per second: two immediate grants at 0; W1, W2 due at 1.0, W3, W4 due at 2.0. W1 wakes
    0.5 s late and goes at 1.5; W3 and W4, on time at 2.0, must not both go (1.5, 2.0, 2.0 would
    be three uses in [1.5, 2.5))."""

    class OneLateClock(VirtualClock):
        async def sleep(self, seconds: float) -> None:
            task = asyncio.current_task()
            late = 0.5 if task is not None and task.get_name() == "W1" else 0.0
            await asyncio.sleep(seconds + late)

    clock = OneLateClock()
    limiter = RateLimiter(2, 1.0, clock=clock)
    uses: list[float] = []

    async def waiter() -> None:
        await limiter.acquire()
        uses.append(clock.now())

    async def main() -> None:
        assert limiter.try_acquire().allowed
        assert limiter.try_acquire().allowed
        tasks = []
        for i in range(1, 5):
            await asyncio.sleep(0.01)
            tasks.append(asyncio.create_task(waiter(), name=f"W{i}"))
        await asyncio.gather(*tasks)

    run_virtual(main(), clock=clock)
    uses.sort()
    assert len(uses) == 4
    worst = max(bisect.bisect_left(uses, t + 1.0) - i for i, t in enumerate(uses))
    assert worst <= 2
