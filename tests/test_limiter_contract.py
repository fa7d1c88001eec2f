"""The :class:`~flashkit.ratelimit.Limiter` protocol, held by every limiter alike.

One parametrized fixture builds each limiter with room for ``CAPACITY`` one-unit requests at
once: a local :class:`RateLimiter` in each algorithm (buckets with ``burst=CAPACITY``), a
:class:`MultiLimit` of two local limits, a one-shard :class:`ShardedRateLimiter`, an
:class:`AdaptiveRateLimiter` (``slow_start=False``) and a :class:`RedisRateLimiter` on the real
Redis (``redis_url``: skipped with the reason when unreachable, a failure under ``CI=true``).

The local limiters run on a :class:`VirtualClock` (async code under :func:`run_virtual`): no test
sleeps. Redis decides on server time, so its tests never need time to pass, except the waiting
ones, which use a limit of ``REDIS_SHORT_PERIOD`` real seconds and wait at most that long.

Conformance is proved by mypy (``mypy tests/test_limiter_contract.py``): see
:func:`conforming_limiters`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import random
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from flashkit._headers import LimitInfo
from flashkit.clock import Clock, SystemClock, VirtualClock, run_virtual
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit import (
    AdaptiveRateLimiter,
    Grant,
    Limiter,
    LimiterStats,
    MultiLimit,
    RateLimiter,
    RateLimitResult,
    RedisRateLimiter,
    ShardedRateLimiter,
)

T = TypeVar("T")

CAPACITY = 4  # one-unit requests each limiter admits at once from idle
PERIOD = 10.0  # seconds per CAPACITY units (virtual time; Redis: real, never waited for)
REDIS_SHORT_PERIOD = 0.3  # real seconds: the Redis limit of the tests that wait
SLACK = 0.25  # real seconds a Redis waiter may take beyond its period (round trips, a busy host)
TIMEOUT = 0.01  # an acquire timeout no full limiter can meet


# --- mypy proves every limiter conforms -----------------------------------------------------
def conforming_limiters(clock: Clock, redis_url: str) -> list[Limiter]:
    """One of each limiter, each assigned to a variable typed :class:`Limiter`: mypy checks that
    every class has the protocol's members with compatible signatures. (The Redis limiter is
    built, not connected.)"""
    sliding: Limiter = RateLimiter(CAPACITY, PERIOD, clock=clock)
    bucket: Limiter = RateLimiter(
        CAPACITY, PERIOD, algorithm="token_bucket", burst=CAPACITY, clock=clock
    )
    gcra: Limiter = RateLimiter(CAPACITY, PERIOD, algorithm="gcra", burst=CAPACITY, clock=clock)
    multi: Limiter = MultiLimit(
        [RateLimiter(CAPACITY, PERIOD, clock=clock), RateLimiter(2 * CAPACITY, PERIOD, clock=clock)]
    )
    sharded: Limiter = ShardedRateLimiter(CAPACITY, PERIOD, 1, clock=clock)
    adaptive: Limiter = AdaptiveRateLimiter(
        initial_rate=CAPACITY, period=PERIOD, burst=CAPACITY, slow_start=False, clock=clock
    )
    shared: Limiter = RedisRateLimiter(
        redis_url,
        CAPACITY,
        PERIOD,
        algorithm="sliding_window",
        clock=clock,
        key_prefix=f"flashkit:test:contract:{uuid.uuid4().hex}",
        name="contract",
    )
    return [sliding, bucket, gcra, multi, sharded, adaptive, shared]


def test_every_limiter_is_a_limiter() -> None:
    """The typed assignments above hold at run time too: each has the protocol's members."""
    clock = VirtualClock()
    limiters = conforming_limiters(clock, "redis://127.0.0.1:6379/0")
    members = ("try_acquire", "acquire", "acquire_sync", "adjust", "adjust_sync", "remaining")
    for limiter in limiters:
        assert isinstance(limiter.name, str)
        assert limiter.clock is clock
        assert all(callable(getattr(limiter, member)) for member in members)
        assert callable(limiter.observe_limits)
        assert inspect.iscoroutinefunction(limiter.acquire)
        assert inspect.iscoroutinefunction(limiter.adjust)
    close = getattr(limiters[-1], "close", None)
    if close is not None:
        close()


# --- the cases ------------------------------------------------------------------------------
@dataclass
class Case:
    """A limiter under test and what the contract expects of it."""

    id: str
    make: Callable[[float], Limiter]  # a fresh limiter of CAPACITY units per that many seconds
    clock: Clock
    virtual: bool  # True: a VirtualClock (time moves only when something waits)
    unit_wait: float  # virtual cases: seconds until one more unit, after CAPACITY at one instant
    too_large: float | None  # a count the limiter can never admit (None: there is none)
    exact_remaining: bool  # remaining() is the room itself (False: a lower bound, Redis)
    older_refund_frees: bool  # refunding an older grant (not the latest) makes room
    server_time: Callable[[], float] | None = None  # Redis: the server's clock
    short_period: float = PERIOD  # the period of the tests that wait
    limiter: Limiter = field(init=False)
    made: list[Limiter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limiter = self.build(PERIOD)

    def build(self, period: float) -> Limiter:
        limiter = self.make(period)
        self.made.append(limiter)
        return limiter

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run async code: in virtual time on the case's clock, or (Redis) for real."""
        if isinstance(self.clock, VirtualClock):
            return run_virtual(coroutine, clock=self.clock)
        return asyncio.run(coroutine)

    def count(self, n: float, limiter: Limiter) -> float | tuple[float, ...]:
        """What a Grant's ``count`` is for ``n`` units (a MultiLimit's: one per limit)."""
        if isinstance(limiter, MultiLimit):
            return tuple(float(n) for _ in limiter.limits)
        return float(n)

    def holders(self, limiter: Limiter) -> list[Any]:
        """Who may hold a grant of ``limiter``: itself, or one of its shards."""
        if isinstance(limiter, ShardedRateLimiter):
            return list(limiter.shards)
        return [limiter]

    def now(self) -> float:
        """The time a grant's ``admitted_at`` is on: the clock's, or the Redis server's."""
        return self.server_time() if self.server_time is not None else self.clock.now()


def delta(actual: float, grant: Grant) -> float:
    """What adjust returns for a grant settled at ``actual`` units (summed over a MultiLimit's
    limits, one actual for all)."""
    if isinstance(grant.count, tuple):
        return sum(actual - c for c in grant.count)
    return actual - grant.count


def units(n: float, limiter: Limiter) -> float:
    """Units ``n`` one-unit-per-limit requests add to ``stats`` (a MultiLimit's add up)."""
    return n * (len(limiter.limits) if isinstance(limiter, MultiLimit) else 1)


CASES = ["sliding_window", "token_bucket", "gcra", "multi", "sharded", "adaptive", "redis"]


def _local(case_id: str, clock: VirtualClock) -> Case:
    buckets = case_id in ("token_bucket", "gcra")
    if case_id in ("sliding_window", "token_bucket", "gcra"):

        def make(period: float) -> Limiter:
            return RateLimiter(
                CAPACITY,
                period,
                algorithm=case_id,  # type: ignore[arg-type]
                burst=CAPACITY if buckets else None,
                clock=clock,
                name=case_id,
            )

    elif case_id == "multi":

        def make(period: float) -> Limiter:
            return MultiLimit(
                [
                    RateLimiter(CAPACITY, period, clock=clock, name="requests"),
                    RateLimiter(2 * CAPACITY, period, clock=clock, name="tokens"),
                ]
            )

    elif case_id == "sharded":

        def make(period: float) -> Limiter:
            return ShardedRateLimiter(CAPACITY, period, 1, clock=clock, rng=random.Random(0))

    else:

        def make(period: float) -> Limiter:
            return AdaptiveRateLimiter(
                initial_rate=CAPACITY, period=period, burst=CAPACITY, slow_start=False, clock=clock
            )

    refill = PERIOD / CAPACITY  # buckets and the pacer: one unit per period / rate
    return Case(
        id=case_id,
        make=make,
        clock=clock,
        virtual=True,
        unit_wait=refill if buckets or case_id == "adaptive" else PERIOD,
        # the adaptive pacer admits any count once its schedule is clear (then pays the debt)
        too_large=None if case_id == "adaptive" else CAPACITY + 1,
        exact_remaining=True,
        # docs/design/ratelimit.md: buckets take back only the latest admission
        older_refund_frees=not buckets,
    )


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Each limiter, fresh, with room for CAPACITY one-unit requests."""
    if request.param != "redis":
        yield _local(request.param, VirtualClock())
        return
    import redis

    url: str = request.getfixturevalue("redis_url")  # skips (or fails under CI) when down
    prefix = f"flashkit:test:contract:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)

    def server_time() -> float:
        seconds, micros = client.time()
        return float(seconds) + micros / 1e6

    names = itertools.count()

    def make(period: float) -> Limiter:
        return RedisRateLimiter(
            url,
            CAPACITY,
            period,
            algorithm="sliding_window",
            clock=SystemClock(),
            key_prefix=prefix,
            name=f"contract-{next(names)}",  # each limiter built has keys of its own
        )

    case = Case(
        id="redis",
        make=make,
        clock=SystemClock(),
        virtual=False,
        unit_wait=REDIS_SHORT_PERIOD,
        too_large=CAPACITY + 1,
        exact_remaining=False,  # only this process's lease: 0.0 without one
        older_refund_frees=True,  # sliding window: from the grant at its admitted_at back
        server_time=server_time,
        short_period=REDIS_SHORT_PERIOD,
    )
    try:
        yield case
    finally:
        try:
            for limiter in case.made:
                close = getattr(limiter, "close", None)
                if close is not None:
                    close()
        finally:
            keys = list(client.scan_iter(match=f"{{{prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()


def fill(limiter: Limiter, n: int = CAPACITY) -> None:
    """Take ``n`` one-unit requests with try_acquire (each must pass)."""
    for _ in range(n):
        assert limiter.try_acquire().allowed


# --- try_acquire ----------------------------------------------------------------------------
def test_try_acquire_admits_up_to_the_limit_then_refuses_with_retry_after(case: Case) -> None:
    """CAPACITY one-unit requests pass (retry_after 0.0), the next is refused with retry_after
    > 0; in virtual time it passes once that much time has gone by."""
    limiter = case.limiter
    for _ in range(CAPACITY):
        result = limiter.try_acquire()
        assert isinstance(result, RateLimitResult)
        assert result.allowed
        assert result.retry_after == 0.0
        assert result.remaining >= 0.0
        assert math.isfinite(result.reset_at)
    refused = limiter.try_acquire()
    assert not refused.allowed
    assert refused.retry_after > 0.0
    if case.virtual:
        assert refused.retry_after == pytest.approx(case.unit_wait)
        assert isinstance(case.clock, VirtualClock)
        case.clock.advance(refused.retry_after)
        assert limiter.try_acquire().allowed


def test_remaining_is_never_negative_and_agrees_with_try_acquire(case: Case) -> None:
    """remaining() >= 0; never more than try_acquire would admit (exactly that, for the
    in-process limiters), and it agrees with the remaining of try_acquire's result."""
    limiter = case.limiter
    idle = limiter.remaining()
    assert 0.0 <= idle <= CAPACITY
    if case.exact_remaining:
        assert idle == pytest.approx(CAPACITY)
        assert limiter.remaining("another-key") == pytest.approx(CAPACITY)
    for taken in range(1, CAPACITY + 1):
        result = limiter.try_acquire()
        assert result.allowed
        left = limiter.remaining()
        assert 0.0 <= left <= CAPACITY - taken + 1e-9
        if case.exact_remaining:
            assert left == pytest.approx(CAPACITY - taken, abs=1e-9)
            assert result.remaining == pytest.approx(left, abs=1e-9)
    assert limiter.remaining() == pytest.approx(0.0, abs=1e-9)
    assert not limiter.try_acquire().allowed
    if case.virtual:  # once a unit is free, remaining says so and try_acquire agrees
        assert isinstance(case.clock, VirtualClock)
        case.clock.advance(case.unit_wait)
        assert limiter.remaining() >= 1.0 - 1e-9
        assert limiter.try_acquire(count=math.floor(limiter.remaining() + 1e-9)).allowed


def test_a_large_count_takes_its_units(case: Case) -> None:
    """count=n takes n units: one call of CAPACITY fills the limit."""
    assert case.limiter.try_acquire(count=CAPACITY).allowed
    assert not case.limiter.try_acquire().allowed


def test_try_acquire_never_goes_ahead_of_a_queued_acquire(case: Case) -> None:
    """One unit is left and an acquire of two waits for more: a try_acquire of the one unit is
    refused (and remaining says 0) while the waiter is queued. What the client's
    hedges rely on (flashkit.client._hedging): a request that must not delay anyone takes its
    units with try_acquire, and no limiter lets it jump the queue, whoever the waiter is.
    (Redis: its waiter queues on the server after a round trip, which this test cannot see
    without timing; test_redis_ratelimit.py shows its FIFO holds against acquire(timeout=0).)"""
    if not case.virtual:
        pytest.skip("Redis: see test_fifo_waiter_gets_first_entry_plus_period_... in its tests")
    assert isinstance(case.clock, VirtualClock)
    clock = case.clock
    limiter = case.limiter
    fill(limiter, CAPACITY - 1)

    async def scenario() -> tuple[bool, float, float]:
        waiter = asyncio.ensure_future(limiter.acquire(count=2))
        await asyncio.sleep(0)  # the waiter has queued
        assert not waiter.done()
        refused = limiter.try_acquire()
        left = limiter.remaining()
        grant = await waiter
        return refused.allowed, left, grant.admitted_at

    start = clock.now()
    jumped, left, admitted_at = run_virtual(scenario(), clock=clock)
    assert not jumped
    assert left == 0.0
    assert admitted_at > start  # the waiter's turn came, the unit still its own


# --- acquire --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_acquire_returns_a_grant(case: Case, mode: str) -> None:
    """A Grant: the key and count asked, waited >= 0, admitted_at (the clock's time, or the
    Redis server's) and the limiter (or shard) holding the units."""
    limiter = case.limiter
    before = case.now()
    grant = case.run(limiter.acquire("k", 2)) if mode == "async" else limiter.acquire_sync("k", 2)
    after = case.now()
    assert isinstance(grant, Grant)
    assert grant.key == "k"
    assert grant.count == case.count(2, limiter)
    assert grant.waited == 0.0  # there was room
    assert math.isfinite(grant.admitted_at)
    assert before <= grant.admitted_at <= after
    assert any(grant.limiter is holder for holder in case.holders(limiter))
    default = limiter.acquire_sync()
    assert (default.key, default.count) == ("default", case.count(1, limiter))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_acquire_waits_for_room(case: Case, mode: str) -> None:
    """With the limit full, acquire waits its turn: waited is the time until a unit frees (in
    virtual time exactly; Redis: at most its short period), and admitted_at is then."""
    limiter = case.build(case.short_period)
    fill(limiter)
    start = case.now()
    grant = case.run(limiter.acquire()) if mode == "async" else limiter.acquire_sync()
    assert grant.waited >= 0.0
    if case.virtual:
        assert grant.waited == pytest.approx(case.unit_wait, abs=1e-9)
        assert grant.admitted_at == pytest.approx(start + case.unit_wait, abs=1e-9)
        assert case.clock.now() >= grant.admitted_at
    else:
        assert grant.waited <= case.short_period + SLACK  # the schedule's, not a wall clock's
        assert start <= grant.admitted_at <= case.now()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_acquire_that_cannot_be_met_in_time_fails_at_once_and_takes_nothing(
    case: Case, mode: str
) -> None:
    """acquire(timeout=small) on a full limit raises a retryable RateLimitError (code "timeout",
    retry_after > timeout) without waiting, and takes nothing: the room that was left is still
    there for a try_acquire (no queued waiter holds it)."""
    limiter = case.limiter
    fill(limiter, CAPACITY - 1)  # one unit left: a request for two must wait

    def attempt() -> Grant:
        if mode == "async":
            return case.run(limiter.acquire(count=2, timeout=TIMEOUT))
        return limiter.acquire_sync(count=2, timeout=TIMEOUT)

    start = case.clock.now()
    with pytest.raises(RateLimitError) as caught:
        attempt()
    error = caught.value
    assert error.retryable
    assert error.code == "timeout"
    assert error.retry_after is not None
    assert error.retry_after > TIMEOUT
    assert case.clock.now() - start < (TIMEOUT if case.virtual else 1.0)  # did not wait
    assert limiter.try_acquire().allowed  # the unit left was not taken
    assert not limiter.try_acquire().allowed


# --- adjust ---------------------------------------------------------------------------------
async def _adjust(limiter: Limiter, target: Grant | str, actual: float, **kw: Any) -> float:
    return await limiter.adjust(target, actual, **kw)


def settle(case: Case, mode: str, target: Grant | str, actual: float, **kw: Any) -> float:
    """adjust (async, run on the case's loop) or adjust_sync."""
    if mode == "async":
        return case.run(_adjust(case.limiter, target, actual, **kw))
    return case.limiter.adjust_sync(target, actual, **kw)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_adjust_with_the_latest_grant_refunds_and_charges(case: Case, mode: str) -> None:
    """adjust(grant, actual) returns actual - estimate; refunding the latest grant makes room
    again (every algorithm can take back its latest admission), a charge is recorded; the
    accounting admitted_units - refunded_units - forfeited_units stays the units held."""
    limiter = case.limiter
    grants = [limiter.acquire_sync() for _ in range(CAPACITY)]
    assert not limiter.try_acquire().allowed
    assert settle(case, mode, grants[-1], 0) == delta(0, grants[-1])
    stats = limiter.stats
    assert stats.refunded_units == units(1, limiter)
    assert limiter.try_acquire().allowed  # the refund made room
    assert not limiter.try_acquire().allowed
    held = units(CAPACITY, limiter)  # 3 grants + the try_acquire
    stats = limiter.stats
    assert stats.admitted_units - stats.refunded_units - stats.forfeited_units == held
    charged = settle(case, mode, grants[-1], 2)  # now it used 2 (charge 2 over its 0)
    assert charged == delta(2, grants[-1])
    stats = limiter.stats
    assert stats.admitted_units - stats.refunded_units - stats.forfeited_units == pytest.approx(
        held + charged
    )


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_adjust_of_an_older_grant(case: Case, mode: str) -> None:
    """Refunding an older grant (others admitted after it): the sliding window, the pacer and
    the limiters built on sliding windows take its units back (room again); token_bucket and
    gcra forfeit them (docs/design/ratelimit.md: "an older one has already shaped the schedule
    after it: its units are forfeited and counted in stats.forfeited_units")."""
    limiter = case.limiter
    grants = [limiter.acquire_sync() for _ in range(CAPACITY - 1)]
    if not case.older_refund_frees and isinstance(case.clock, VirtualClock):
        case.clock.advance(0.001)  # the latest grant comes later: the older one is not it
    grants.append(limiter.acquire_sync())
    assert settle(case, mode, grants[0], 0) == delta(0, grants[0])
    stats = limiter.stats
    if case.older_refund_frees:
        assert (stats.refunded_units, stats.forfeited_units) == (units(1, limiter), 0.0)
        assert limiter.try_acquire().allowed
    else:
        assert (stats.refunded_units, stats.forfeited_units) == (0.0, 1.0)
        assert not limiter.try_acquire().allowed  # a later grant's units were not taken
    assert not limiter.try_acquire().allowed


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_adjust_by_key(case: Case, mode: str) -> None:
    """The key form needs estimated_count= (else a non-retryable ValidationError, nothing
    changed) and returns actual - estimate."""
    limiter = case.limiter
    grant = limiter.acquire_sync()
    with pytest.raises(ValidationError) as caught:
        settle(case, mode, "default", 0)
    assert not caught.value.retryable
    assert "estimated_count" in caught.value.message
    assert limiter.stats.refunded_units == 0.0
    assert settle(case, mode, "default", 0, estimated_count=1) == delta(0, grant)
    assert limiter.stats.refunded_units == units(1, limiter)


# --- requests that can never pass -----------------------------------------------------------
def test_a_count_that_can_never_be_admitted_fails_at_once(case: Case) -> None:
    """More than the limit can ever hold: a non-retryable ValidationError from try_acquire,
    acquire and acquire_sync, nothing admitted, nothing waited."""
    if case.too_large is None:
        pytest.skip(
            "AdaptiveRateLimiter has no such count: a pacer admits any finite count once its "
            "schedule is clear, and later requests pay for it"
        )
    limiter = case.limiter
    too_large = case.too_large
    start = case.clock.now()
    calls: list[Callable[[], object]] = [
        lambda: limiter.try_acquire(count=too_large),
        lambda: limiter.acquire_sync(count=too_large),
        lambda: case.run(limiter.acquire(count=too_large)),
    ]
    for call in calls:
        with pytest.raises(ValidationError) as caught:
            call()
        assert not caught.value.retryable
        assert caught.value.code == "request_too_large"
    if case.virtual:
        assert case.clock.now() == start
    assert limiter.stats.admitted == 0
    fill(limiter)  # nothing was taken


@pytest.mark.parametrize("count", [0, -1, math.nan, math.inf])
def test_an_invalid_count_is_a_validation_error(case: Case, count: float) -> None:
    """count 0, negative, NaN or infinite: a non-retryable ValidationError, nothing admitted."""
    limiter = case.limiter
    for call in (limiter.try_acquire, limiter.acquire_sync):
        with pytest.raises(ValidationError) as caught:
            call(count=count)
        assert not caught.value.retryable
    with pytest.raises(ValidationError):
        case.run(limiter.acquire(count=count))
    assert limiter.stats.admitted == 0


# --- observe_limits and stats ---------------------------------------------------------------
def test_observe_limits_never_raises(case: Case) -> None:
    """Every limiter takes what a response said; the fixed ones ignore it."""
    limiter = case.limiter
    limiter.observe_limits(None, status=200)
    limiter.observe_limits(None)
    limiter.observe_limits(LimitInfo(), status=200)
    limiter.observe_limits(LimitInfo(limit=6000.0, remaining=5000.0, reset=1.0), status=200)
    assert limiter.try_acquire().allowed


def test_stats_count_what_happened(case: Case) -> None:
    """stats is a LimiterStats: calls admitted and refused (try_acquire denials and acquire
    timeouts), units, and one wait per successful acquire."""
    limiter = case.limiter
    assert limiter.stats == LimiterStats(
        0, 0.0, 0, tuple((bound, 0) for bound, _ in limiter.stats.waits), 0.0, 0.0
    )
    case.run(limiter.acquire())
    fill(limiter, CAPACITY - 1)
    assert not limiter.try_acquire().allowed
    with pytest.raises(RateLimitError):
        case.run(limiter.acquire(timeout=TIMEOUT))
    with pytest.raises(RateLimitError):
        limiter.acquire_sync(timeout=TIMEOUT)
    stats = limiter.stats
    assert isinstance(stats, LimiterStats)
    assert stats.admitted == CAPACITY
    assert stats.admitted_units == units(CAPACITY, limiter)
    assert stats.rejected == 3
    assert sum(count for _, count in stats.waits) == 1  # the one acquire, which did not wait
    assert stats.waited == 0
    assert (stats.refunded_units, stats.forfeited_units) == (0.0, 0.0)


# --- beyond the fixture: a sharded limiter with several shards ------------------------------
def test_sharded_stats_count_calls_not_shard_refusals() -> None:
    """LimiterStats.rejected counts *calls* refused. A ShardedRateLimiter with two shards tries
    both before refusing a try_acquire: that is one refused call, not two."""
    clock = VirtualClock()
    sharded = ShardedRateLimiter(CAPACITY, PERIOD, 2, clock=clock, rng=random.Random(0))
    fill(sharded)  # power of two choices: two shards, both looked at, all four units found
    assert not sharded.try_acquire().allowed
    assert sharded.stats.admitted == CAPACITY
    assert sharded.stats.rejected == 1


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_sharded_grant_settles_on_the_shard_that_admitted_it(mode: str) -> None:
    """With several shards a Grant names its shard: a refund goes back there and makes room."""
    clock = VirtualClock()
    sharded = ShardedRateLimiter(CAPACITY, PERIOD, 2, clock=clock, rng=random.Random(1))
    grants = [sharded.acquire_sync() for _ in range(CAPACITY)]
    assert {id(grant.limiter) for grant in grants} == {id(shard) for shard in sharded.shards}
    assert not sharded.try_acquire().allowed
    grant = grants[0]
    if mode == "async":
        assert run_virtual(sharded.adjust(grant, 0), clock=clock) == -1.0
    else:
        assert sharded.adjust_sync(grant, 0) == -1.0
    assert grant.limiter.remaining() == 1.0
    assert sharded.remaining() == 1.0
    assert sharded.try_acquire().allowed
    assert sharded.stats.refunded_units == 1.0
