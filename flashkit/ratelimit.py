"""Rate limiters: exact local limits, reservations with refunds, multi-limits and sharding.

>>> rpm = RateLimiter(60, 60.0)                      # 60 requests per minute, strictly
>>> result = rpm.try_acquire()                       # never waits
>>> await rpm.acquire(timeout=30.0)                  # waits its turn (FIFO), or raises
>>> tpm = RateLimiter(90_000, 60.0)                  # tokens per minute
>>> both = MultiLimit([rpm, tpm])
>>> await both.acquire(count=[1, 2_000])             # one request, ~2,000 tokens, atomically
>>> tpm.adjust("default", 1_234, estimated_count=2_000)   # the response reported 1,234

Semantics (times in seconds, from ``clock``). A limiter admits *units* (``count`` per call: 1 for
a request, the token estimate for a token limit) per ``key``. Windows are half-open intervals
``[t, t + period)``. Three algorithms:

- ``"sliding_window"`` (default) — a sliding log: **no window of length ``period`` ever holds
  more than ``rate`` units**, for any mix of counts. Up to ``rate`` units may pass at once; then
  the log must age. Grants closer together than ``period / 1024`` share one log entry stamped
  with the later time, which bounds memory and may delay a grant by that much (never admit one
  early). The right choice for per-minute request and token limits.
- ``"token_bucket"`` — a bucket of ``burst`` units refilled continuously at ``rate / period`` per
  second (Anthropic's model). With ``burst=None`` the bucket holds one unit: a strict pacer, one
  unit every ``period / rate`` seconds ("60 RPM enforced as 1 per second"), and no request larger
  than one unit. With ``burst=b`` up to ``b`` units pass at once and a window may hold up to
  ``rate + b - 1`` units: bursts are an explicit opt-out of strictness.
- ``"gcra"`` — the generic cell rate algorithm: the same admissions as ``token_bucket`` with the
  same ``burst``, kept as the theoretical arrival time per key (a start time and the units
  granted since, so that bursts are exact and queues never drift early by rounding).

Waiters are served first come, first served: :meth:`RateLimiter.acquire` takes its capacity at
once as a reservation and sleeps until it is due, so a large request is never starved by small
ones, a ``timeout`` it cannot meet fails at once (with ``retry_after``), and a later
``try_acquire`` never jumps the queue. A ``count`` larger than the limit can ever grant raises a
non-retryable :class:`~flashkit.errors.ValidationError` instead of waiting forever.

:meth:`RateLimiter.reserve` returns a :class:`TokenReservation` holding capacity until
``execute_at``; ``cancel()`` refunds it and an unused one is released at ``expires_at``.
:meth:`RateLimiter.adjust` reconciles an estimated cost with the actual usage a response reports.
Refunds are exact for ``sliding_window``; ``token_bucket`` and ``gcra`` can only take back the most
recent admission (an older one has already shaped the schedule after it: its units are forfeited
and counted in ``stats.forfeited_units``). A sliding-window refund (``adjust``, ``cancel``, an
expiry, a cancelled waiter) also pulls queued ``acquire`` waiters forward: each moves, in order,
to the earliest time it now fits and is woken then (sync waiters and reservations keep their
time). With ``max_tokens`` estimates this is what lets a token limit run at the usage rate
rather than the estimate rate: pass ``admitted_at`` (when ``acquire`` returned) so the refund
comes from the call's own grant.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from flashkit.clock import Clock, default_clock
from flashkit.errors import RateLimitError, ValidationError

__all__ = [
    "Algorithm",
    "LimiterStats",
    "MultiLimit",
    "MultiReservation",
    "RateLimitResult",
    "RateLimiter",
    "ShardedRateLimiter",
    "TokenReservation",
]

Algorithm = Literal["sliding_window", "token_bucket", "gcra"]
_ALGORITHMS: Final = ("sliding_window", "token_bucket", "gcra")
_EPS: Final = 1e-9
WAIT_BUCKETS: Final = (0.0, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0, math.inf)
_new_result: Final = tuple.__new__  # a NamedTuple without its Python-level __new__ (hot path)


class RateLimitResult(NamedTuple):
    """The answer of :meth:`RateLimiter.try_acquire`.

    ``allowed``: whether the units were admitted. ``remaining``: units that could still be
    admitted right now. ``retry_after``: seconds until the same request could pass (0.0 when
    allowed). ``reset_at``: clock time when every unit of the limit is free again.
    """

    allowed: bool
    remaining: float
    retry_after: float
    reset_at: float


class LimiterStats(NamedTuple):
    """Counters since the limiter was built.

    ``admitted``/``admitted_units``: calls and units let through; ``rejected``: calls refused
    (``try_acquire`` denials, timeouts, ``max_wait`` refusals); ``waits``: ``(upper bound in
    seconds, count)`` histogram of how long ``acquire`` calls waited; ``refunded_units`` and
    ``forfeited_units``: units given back by cancel/adjust/expiry, or that could not be.
    """

    admitted: int
    admitted_units: float
    rejected: int
    waits: tuple[tuple[float, int], ...]
    refunded_units: float
    forfeited_units: float

    @property
    def waited(self) -> int:
        """Number of ``acquire`` calls that had to wait (> 0 s)."""
        return sum(count for bound, count in self.waits if bound > 0.0)


class _Counters:
    """Mutable counters behind :class:`LimiterStats` (updated under the limiter's lock)."""

    __slots__ = ("admitted", "admitted_units", "forfeited", "refunded", "rejected", "waits")

    def __init__(self) -> None:
        self.admitted = 0
        self.admitted_units = 0.0
        self.rejected = 0
        self.refunded = 0.0
        self.forfeited = 0.0
        self.waits = [0] * len(WAIT_BUCKETS)

    def waited(self, seconds: float) -> None:
        for i, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                self.waits[i] += 1
                return

    def snapshot(self) -> LimiterStats:
        return LimiterStats(
            self.admitted,
            self.admitted_units,
            self.rejected,
            tuple(zip(WAIT_BUCKETS, self.waits, strict=True)),
            self.refunded,
            self.forfeited,
        )


def _check_number(value: object, what: str, hint: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"{what} must be a number, got {value!r}; {hint}", code="invalid_config"
        )
    number = float(value)
    ok = number >= 0 if allow_zero else number > 0
    if not (ok and math.isfinite(number)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(
            f"{what} must be finite and {bound}, got {value!r}; {hint}", code="invalid_config"
        )
    return number


def _check_actual(actual_count: object, where: str) -> float:
    """An ``adjust`` call's actual units: a finite number >= 0."""
    if isinstance(actual_count, bool) or not isinstance(actual_count, int | float):
        raise ValidationError(
            f"{where}: actual_count must be a number of units, got {actual_count!r}",
            code="invalid_count",
        )
    if not (actual_count >= 0 and math.isfinite(actual_count)):
        raise ValidationError(
            f"{where}: actual_count must be >= 0, got {actual_count!r}", code="invalid_count"
        )
    return float(actual_count)


def _check_count(count: object, where: str) -> float:
    if isinstance(count, bool) or not isinstance(count, int | float):
        raise ValidationError(
            f"{where}: count must be a positive number of units, got {count!r}",
            code="invalid_count",
        )
    if not (count > 0 and math.isfinite(count)):
        raise ValidationError(
            f"{where}: count must be a positive number of units, got {count!r}",
            code="invalid_count",
        )
    return float(count)


# --- algorithms -----------------------------------------------------------------------------
# Each keeps per-key state and answers four questions under the limiter's lock:
#   earliest(state, now, n) -> the first time n units may be admitted (>= every earlier grant);
#   commit(state, at, n, alone) -> record n units admitted at ``at`` (>= earliest); returns a
#                              handle (``alone``: never merged with another grant's entry);
#   refund(state, handle, n)-> take n of them back, or return False when that is not safe;
#   level(state, now)       -> (remaining units now, time when the limit is fully free).


class _Log:
    """Per-key sliding log: entries ``[time, units, alive]`` in time order, and their total."""

    __slots__ = ("entries", "parked", "total")

    def __init__(self) -> None:
        self.entries: deque[list[Any]] = deque()
        self.total = 0.0
        # Async waiters asleep on an entry of their own, by id(entry): a refund may move their
        # entry earlier and wake them (see RateLimiter._pull_forward).
        self.parked: dict[int, Callable[[], None]] = {}


class _SlidingWindow:
    name = "sliding_window"

    def __init__(self, rate: float, period: float, burst: float | None) -> None:
        if burst is not None:
            raise ValidationError(
                "RateLimiter(algorithm='sliding_window', burst=...): a sliding window admits up to "
                "`rate` units at once already; `burst` applies to 'token_bucket' and 'gcra'",
                code="invalid_config",
            )
        self.rate = rate
        self.period = period
        self.max_count = rate
        self.quantum = period / 1024  # see commit()

    new_state = _Log

    def prune(self, state: _Log, now: float) -> None:
        # ``when + period <= now``, the very sum earliest() returns: ``when <= now - period``
        # rounds differently and could keep an entry that earliest() says has left.
        period = self.period
        entries = state.entries
        while entries and entries[0][0] + period <= now:
            entry = entries.popleft()
            entry[2] = False
            state.total -= entry[1]

    def earliest(self, state: _Log, now: float, n: float) -> float:
        self.prune(state, now)
        entries = state.entries
        start = now
        if entries and entries[-1][0] > now:
            start = entries[-1][0]  # FIFO: never before a grant already made
        excess = state.total + n - self.rate
        if excess <= _EPS:
            return start
        freed = 0.0
        for when, units, _alive in entries:
            freed += units
            if freed >= excess - _EPS:
                return max(start, float(when) + self.period)
        return start + self.period  # unreachable while n <= rate

    def commit(self, state: _Log, at: float, n: float, alone: bool = False) -> list[Any]:
        entries = state.entries
        if entries and not alone:
            entry = entries[-1]
            if at - entry[0] < self.quantum:
                # Grants closer than period/1024 share one entry, stamped with the later time:
                # they then leave the window together, late by at most a quantum (never early).
                entry[0] = at
                entry[1] += n
                state.total += n
                return entry
        entry = [at, n, True]
        entries.append(entry)
        state.total += n
        return entry

    def refund(self, state: _Log, handle: list[Any], n: float) -> bool:
        entry = handle
        if entry[2]:  # still in the window; a pruned entry no longer counts anyway
            take = min(n, entry[1])
            entry[1] -= take
            state.total -= take
            self._drop_empty_tail(state)
        return True

    def _drop_empty_tail(self, state: _Log) -> None:
        # An emptied entry at the end (a cancelled waiter or reservation, often in the future)
        # must not keep later callers queued behind a grant that no longer exists.
        entries = state.entries
        while entries and entries[-1][1] <= _EPS:
            entry = entries.pop()
            entry[2] = False
            state.total -= entry[1]

    def level(self, state: _Log, now: float) -> tuple[float, float]:
        self.prune(state, now)
        entries = state.entries
        if entries and entries[-1][0] > now:
            return 0.0, entries[-1][0] + self.period
        remaining = max(0.0, self.rate - state.total)
        reset = entries[-1][0] + self.period if entries else now
        return remaining, reset

    def idle(self, state: _Log) -> bool:
        return not state.entries


class _Bucket:
    """Per-key token-bucket state: the level at ``stamp`` (negative while reservations are
    ahead), and the serial number and handle of the latest commit (the only one a refund can
    undo)."""

    __slots__ = ("before", "last", "latest", "level", "stamp")

    def __init__(self) -> None:
        self.level = math.nan  # NaN: never used, the bucket is full
        self.stamp = -math.inf
        self.last = 0
        self.latest: list[float] | None = None  # [serial, units, time] of the latest commit
        self.before = (math.nan, -math.inf)  # (level, stamp) before the latest commit


class _TokenBucket:
    name = "token_bucket"

    def __init__(self, rate: float, period: float, burst: float | None) -> None:
        self.capacity = _capacity(burst)
        self.refill = rate / period  # units per second
        self.rate = rate
        self.period = period
        self.max_count = self.capacity
        self._serial = itertools.count(1)

    new_state = _Bucket

    def _at(self, state: _Bucket, t: float) -> tuple[float, float]:
        """The bucket's (level, time) at max(t, stamp): never before a grant already made."""
        if math.isnan(state.level):
            return self.capacity, t
        when = t if t > state.stamp else state.stamp
        level = state.level + (when - state.stamp) * self.refill
        return (level if level < self.capacity else self.capacity), when

    def earliest(self, state: _Bucket, now: float, n: float) -> float:
        level, when = self._at(state, now)
        if level >= n:  # no tolerance in units: it would admit early (by 1e-9 / refill s)
            return when
        return when + (n - level) / self.refill

    def commit(self, state: _Bucket, at: float, n: float, alone: bool = False) -> list[float]:
        state.before = (state.level, state.stamp)
        level, when = self._at(state, at)
        state.level = level - n
        state.stamp = when
        state.last = next(self._serial)
        handle = state.latest = [state.last, n, when]
        return handle

    def refund(self, state: _Bucket, handle: list[float], n: float) -> bool:
        if state.last != handle[0]:
            return False  # later grants were computed with these units gone
        take = min(n, handle[1])
        handle[1] -= take
        state.level += take
        if handle[1] <= _EPS:  # all of it: exactly as if never granted
            state.level, state.stamp = state.before
        return True

    def level(self, state: _Bucket, now: float) -> tuple[float, float]:
        level, when = self._at(state, now)
        full_at = when + (self.capacity - level) / self.refill
        return (0.0 if when > now else max(0.0, level)), full_at

    def idle(self, state: _Bucket) -> bool:
        return math.isnan(state.level)


class _Cell:
    """Per-key GCRA state: the theoretical arrival time as ``anchor + units * interval`` (the
    start of the current busy stretch and the units granted since), and the latest commit's
    serial number and handle with the state before it (what a refund of it restores).

    Counting units rather than adding seconds keeps a burst exact (``burst`` units at one instant
    all pass, as with the token bucket) and keeps a queue of waiters from drifting early by
    rounding (10 x 0.1 s summed is less than 1 s)."""

    __slots__ = ("anchor", "anchor_before", "last", "latest", "units", "units_before")

    def __init__(self) -> None:
        self.anchor = -math.inf
        self.units = 0.0
        self.last = 0
        self.latest: list[float] | None = None  # [serial, units, time] of the latest commit
        self.anchor_before = -math.inf  # (anchor, units) before the latest commit
        self.units_before = 0.0


class _Gcra:
    name = "gcra"

    def __init__(self, rate: float, period: float, burst: float | None) -> None:
        self.capacity = _capacity(burst)
        self.interval = period / rate  # seconds per unit
        self.rate = rate
        self.period = period
        self.max_count = self.capacity
        self._serial = itertools.count(1)

    new_state = _Cell

    def earliest(self, state: _Cell, now: float, n: float) -> float:
        # TAT - (capacity - n) * interval, with the units summed before the one multiplication.
        due = state.anchor + (state.units + n - self.capacity) * self.interval
        return due if due > now else now

    def commit(self, state: _Cell, at: float, n: float, alone: bool = False) -> list[float]:
        anchor = state.anchor_before = state.anchor
        units = state.units_before = state.units
        if at > anchor + units * self.interval:  # TAT passed: a fresh start
            state.anchor = at
            state.units = n
        else:
            state.units = units + n
        state.last = next(self._serial)
        handle = state.latest = [state.last, n, at]
        return handle

    def refund(self, state: _Cell, handle: list[float], n: float) -> bool:
        if state.last != handle[0]:
            return False  # later grants were computed with these units gone
        take = min(n, handle[1])
        handle[1] -= take
        state.units -= take
        if handle[1] <= _EPS:  # all of it: exactly as if never granted
            state.anchor, state.units = state.anchor_before, state.units_before
        return True

    def level(self, state: _Cell, now: float) -> tuple[float, float]:
        fill = max(0.0, state.units - (now - state.anchor) / self.interval)
        remaining = max(0.0, self.capacity - fill)
        return remaining, max(now, state.anchor + state.units * self.interval)

    def idle(self, state: _Cell) -> bool:
        return state.anchor == -math.inf


def _capacity(burst: float | None) -> float:
    if burst is None:
        return 1.0
    capacity = _check_number(burst, "RateLimiter burst", "the bucket size in units, >= 1")
    if capacity < 1.0:
        raise ValidationError(
            f"RateLimiter(burst={burst!r}): the bucket must hold at least one unit",
            code="invalid_config",
        )
    return capacity


def _algorithm(name: str, rate: float, period: float, burst: float | None) -> Any:
    if name == "sliding_window":
        return _SlidingWindow(rate, period, burst)
    if name == "token_bucket":
        return _TokenBucket(rate, period, burst)
    if name == "gcra":
        return _Gcra(rate, period, burst)
    raise ValidationError(
        f"RateLimiter(algorithm={name!r}): unknown algorithm; use one of {list(_ALGORITHMS)}",
        code="invalid_config",
    )


class _Alarm:
    """Wakes one parked async waiter early, from any thread (its due time moved earlier)."""

    __slots__ = ("event", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def __call__(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.event.set()
        else:
            self.loop.call_soon_threadsafe(self.event.set)


async def _nap(clock: Clock, delay: float, alarm: _Alarm | None) -> bool:
    """Sleep ``delay`` s on ``clock``, or less if ``alarm`` rings first (then return True)."""
    if alarm is None:
        await clock.async_sleep(delay)
        return False
    if not alarm.event.is_set():
        sleeper = asyncio.ensure_future(clock.async_sleep(delay))
        ringer = asyncio.ensure_future(alarm.event.wait())
        try:
            await asyncio.wait((sleeper, ringer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            ringer.cancel()
    rang = alarm.event.is_set()
    alarm.event.clear()
    return rang


async def _sleep_until(clock: Clock, due: float, delay: float, alarm: _Alarm | None = None) -> bool:
    """Sleep ``delay`` s, then on until ``due``: asyncio runs a timer up to its clock resolution
    (1 ns) early, and ``now + (due - now)`` can round below ``due``; a grant is never used early.
    (A few tries at most: a stub clock whose sleep does not move ``now`` must not hang.)
    Returns True, at once, when ``alarm`` rang (the due time moved earlier)."""
    if await _nap(clock, delay, alarm):
        return True
    for _ in range(3):
        left = due - clock.now()
        if left <= 0:
            return False
        if await _nap(clock, left, alarm):
            return True
    return False


def _sleep_until_sync(clock: Clock, due: float, delay: float) -> None:
    """Sync twin of :func:`_sleep_until`."""
    clock.sleep(delay)
    for _ in range(3):
        left = due - clock.now()
        if left <= 0:
            return
        clock.sleep(left)


# --- reservations ---------------------------------------------------------------------------
@dataclass(eq=False)
class TokenReservation:
    """Capacity taken now for use at ``execute_at`` (clock seconds).

    ``await reservation.wait()`` (or ``wait_sync()``) sleeps until ``execute_at`` and marks the
    reservation used. ``cancel()`` gives the capacity back while it is unused. A reservation not
    used by ``expires_at`` is released. ``count`` is what it currently holds (see
    :meth:`RateLimiter.adjust`).
    """

    id: str
    key: str
    count: float
    reserved_at: float
    execute_at: float
    expires_at: float
    _limiter: RateLimiter = field(repr=False)
    _state: Any = field(repr=False)
    _handle: Any = field(repr=False)
    status: Literal["pending", "used", "cancelled", "expired"] = "pending"

    def cancel(self) -> bool:
        """Refund the capacity if the reservation is still unused; True when it was pending."""
        return self._limiter._cancel(self)

    async def wait(self) -> None:
        """Sleep until ``execute_at``, then mark the reservation used.

        Raises :class:`~flashkit.errors.RateLimitError` if it was cancelled or has expired. If the
        waiting task is cancelled, the reservation is cancelled (refunded) too.
        """
        delay = self._limiter._before_wait(self)
        try:
            while delay > 0:
                await _sleep_until(self._limiter.clock, self.execute_at, delay)
                delay = self._limiter._confirm_reservation(self)
        except BaseException:
            self.cancel()
            raise
        self._limiter._mark_used(self)

    def wait_sync(self) -> None:
        """Sync twin of :meth:`wait`: block until ``execute_at``, then mark it used."""
        delay = self._limiter._before_wait(self)
        try:
            while delay > 0:
                _sleep_until_sync(self._limiter.clock, self.execute_at, delay)
                delay = self._limiter._confirm_reservation(self)
        except BaseException:
            self.cancel()
            raise
        self._limiter._mark_used(self)

    def use(self) -> None:
        """Mark the reservation used without waiting (the caller waited on its own)."""
        self._limiter._before_wait(self)
        self._limiter._mark_used(self)


# --- the limiter ----------------------------------------------------------------------------
class RateLimiter:
    """``rate`` units per ``period`` seconds, per key. See the module docstring for semantics.

    Args:
        rate: units allowed per period (> 0).
        period: the window length in seconds (> 0).
        algorithm: ``"sliding_window"`` (default, strict), ``"token_bucket"`` or ``"gcra"``.
        burst: bucket size for ``token_bucket``/``gcra`` (default 1 unit: a strict pacer).
        clock: a :class:`~flashkit.clock.Clock` (default :func:`flashkit.clock.default_clock`).
        reservation_ttl: seconds an unused reservation is held after ``execute_at`` (60.0).
        name: used in errors and stats.
    """

    def __init__(
        self,
        rate: float,
        period: float,
        algorithm: Algorithm = "sliding_window",
        burst: float | None = None,
        *,
        clock: Clock | None = None,
        reservation_ttl: float = 60.0,
        name: str = "ratelimit",
    ) -> None:
        self.rate = _check_number(rate, "RateLimiter rate", "units per period, e.g. 60")
        self.period = _check_number(period, "RateLimiter period", "seconds, e.g. 60.0")
        self.algorithm: Algorithm = algorithm
        self.burst = burst
        self._algo = _algorithm(algorithm, self.rate, self.period, burst)
        self.max_count: float = self._algo.max_count
        self.reservation_ttl = _check_number(
            reservation_ttl, "RateLimiter reservation_ttl", "seconds, e.g. 60.0", allow_zero=True
        )
        self.name = name
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now
        self._lock = threading.Lock()
        self._acquire_lock = self._lock.acquire
        self._release_lock = self._lock.release
        self._states: dict[str, Any] = {}
        self._counters = _Counters()
        self._pending: dict[str, TokenReservation] = {}
        self._ops = 0
        self._sliding = algorithm == "sliding_window"
        self._quantum = self.period / 1024
        self._admit_now = self._admit_sliding if self._sliding else self._admit_generic

    def __repr__(self) -> str:
        burst = f", burst={self.burst}" if self.burst is not None else ""
        return (
            f"RateLimiter({self.rate:g}, {self.period:g}, algorithm={self.algorithm!r}{burst}, "
            f"name={self.name!r})"
        )

    # --- shared core (lock held) -----------------------------------------------------------
    def _too_large(self, n: float) -> ValidationError:
        what = (
            f"the limit admits at most {self.rate:g} units per {self.period:g} s"
            if self.algorithm == "sliding_window"
            else f"the bucket holds {self.max_count:g} unit(s); pass burst >= {n:g} (not strict) "
            "or use algorithm='sliding_window'"
        )
        return ValidationError(
            f"{self.name}: a request of {n:g} units can never be admitted: {what}",
            code="request_too_large",
            details={"count": n, "rate": self.rate, "period": self.period},
        )

    def _units(self, count: float, where: str) -> float:
        n = float(count) if type(count) is int and count > 0 else _check_count(count, where)
        if n > self.max_count + _EPS:
            raise self._too_large(n)
        return n

    def _state_for(self, key: str) -> Any:
        state = self._states.get(key)
        if state is None:
            self._ops += 1
            if self._ops >= 4096 and len(self._states) >= 4096:
                self._sweep()
            state = self._states[key] = self._algo.new_state()
        return state

    def _sweep(self) -> None:
        """Forget keys whose state is as good as new (bounded memory under many keys)."""
        self._ops = 0
        now = self._now()
        algo = self._algo
        held = {r.key for r in self._pending.values()}
        for key in [k for k in self._states if k not in held]:
            state = self._states[key]
            if algo.name == "sliding_window":
                algo.prune(state, now)
            _, reset = algo.level(state, now)
            if algo.idle(state) or reset <= now:
                del self._states[key]

    def _expire(self, now: float) -> None:
        for reservation in [r for r in self._pending.values() if r.expires_at <= now]:
            del self._pending[reservation.id]
            reservation.status = "expired"
            self._give_back(reservation._state, reservation._handle, reservation.count)

    def _give_back(self, state: Any, handle: Any, n: float) -> None:
        if self._algo.refund(state, handle, n):
            self._counters.refunded += n
            if self._sliding and state.parked:
                self._pull_forward(state)
        else:
            self._counters.forfeited += n

    def _pull_forward(self, state: _Log) -> None:
        """After a refund (lock held): move the entries of parked async waiters to the earliest
        time each now fits, in FIFO order (never before the entry ahead of it), and wake them.

        Moving a waiter's entry from ``y`` to ``x < y`` is safe when the units in ``(x - period,
        x]`` of the entries ahead of it, plus its own, fit the rate: a window holding ``x`` but
        not ``y`` ends before ``y``, so it holds only entries ahead (at most at ``x``); every
        window holding ``y`` and ``x`` is unchanged; the others lose units. Reservations and
        sync waiters are not moved (their callers hold a due time); they stay where they are.
        """
        now = self._now()
        algo = self._algo
        algo.prune(state, now)
        entries = list(state.entries)
        first = len(entries)
        while first and entries[first - 1][0] > now:
            first -= 1
        parked = state.parked
        rate, period = self.rate, self.period
        ahead = sum(entry[1] for entry in entries[:first])
        previous = now
        alarms = []
        for k in range(first, min(len(entries), first + 1024)):
            entry = entries[k]
            alarm = parked.get(id(entry))
            if alarm is not None and entry[1] > _EPS:
                at = previous
                excess = ahead + entry[1] - rate
                if excess > _EPS:
                    at = entry[0]
                    freed = 0.0
                    for when, units, _alive in itertools.islice(entries, k):
                        freed += units
                        if freed >= excess - _EPS:
                            at = max(previous, when + period)
                            break
                if at < entry[0]:
                    entry[0] = at
                    alarms.append(alarm)
            previous = entry[0]
            ahead += entry[1]
        for alarm in alarms:
            alarm()

    def _grant(
        self, key: str, n: float, now: float, max_wait: float | None, why: str
    ) -> tuple[float, Any, Any, float]:
        """Admit ``n`` units at the earliest time: (wait seconds, state, handle, that time).
        Raises when the wait would exceed ``max_wait``."""
        if self._pending:
            self._expire(now)
        state = self._state_for(key)
        algo = self._algo
        at = algo.earliest(state, now, n)
        wait = at - now if at > now else 0.0
        if max_wait is not None and wait > max_wait + _EPS:
            self._counters.rejected += 1
            raise RateLimitError(
                f"{self.name}: {n:g} units for key {key!r} would wait {wait:.3g} s, more than "
                f"{why}={max_wait:g} s",
                code="wait_too_long" if why == "max_wait" else "timeout",
                details={"key": key, "count": n, "wait": wait},
                retry_after=wait,
            )
        at = at if at > now else now
        handle = algo.commit(state, at, n, at > now)
        counters = self._counters
        counters.admitted += 1
        counters.admitted_units += n
        return wait, state, handle, at

    # --- public API ---------------------------------------------------------------------------
    def _admit_sliding(self, state: _Log, now: float, n: float) -> float | None:
        """The sliding log's common case: admit ``n`` now and return None, or return the
        earliest time they fit (nothing committed)."""
        entries = state.entries
        if entries:
            if entries[0][0] + self.period <= now:
                self._algo.prune(state, now)
            if entries and entries[-1][0] > now:
                return float(self._algo.earliest(state, now, n))
        if state.total + n <= self.rate + _EPS:
            self._algo.commit(state, now, n)
            return None
        return float(self._algo.earliest(state, now, n))

    def _admit_generic(self, state: Any, now: float, n: float) -> float | None:
        algo = self._algo
        at = algo.earliest(state, now, n)
        if at <= now:
            algo.commit(state, now, n)
            return None
        return float(at)

    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Admit ``count`` units for ``key`` now if the limit allows; never waits.

        Also refuses while earlier callers are waiting their turn (first come, first served).
        """
        if self._sliding and count.__class__ is int and 0 < count <= self.max_count:
            # The common case inlined, as in acquire(): no extra frames.
            now = self._now()
            self._acquire_lock()
            try:
                state = self._states.get(key)
                if state is not None and not self._pending:
                    entries = state.entries
                    if entries:
                        last = entries[-1]
                        if (
                            last[0] <= now
                            and entries[0][0] + self.period > now
                            and state.total + count <= self.rate
                        ):
                            if now - last[0] < self._quantum:
                                last[0] = now
                                last[1] += count
                            else:
                                entries.append([now, count, True])
                            total = state.total = state.total + count
                            counters = self._counters
                            counters.admitted += 1
                            counters.admitted_units += count
                            return _new_result(
                                RateLimitResult, (True, self.rate - total, 0.0, now + self.period)
                            )
            finally:
                self._release_lock()
        n = (
            count
            if count.__class__ is int and 0 < count <= self.max_count
            else self._units(count, f"{self.name}.try_acquire")
        )
        now = self._now()
        # lock.acquire()/release() rather than ``with``: half the cost on this hot path.
        self._acquire_lock()
        try:
            if self._pending:
                self._expire(now)
            state = self._states.get(key)
            if state is None:
                state = self._state_for(key)
            at = self._admit_now(state, now, n)
            counters = self._counters
            if at is None:
                counters.admitted += 1
                counters.admitted_units += n
                if self._sliding:
                    return _new_result(
                        RateLimitResult, (True, self.rate - state.total, 0.0, now + self.period)
                    )
                remaining, reset = self._algo.level(state, now)
                return _new_result(RateLimitResult, (True, remaining, 0.0, reset))
            counters.rejected += 1
            remaining, reset = self._algo.level(state, now)
            return _new_result(RateLimitResult, (False, remaining, at - now, reset))
        finally:
            self._release_lock()

    def _begin(
        self, key: str, count: float, timeout: float | None, where: str
    ) -> tuple[float, Any, Any, float, float]:
        """Admit now (wait 0.0) or reserve for later: (wait, state, handle, units, due time)."""
        n = (
            count
            if count.__class__ is int and 0 < count <= self.max_count
            else self._units(count, f"{self.name}.{where}")
        )
        now = self._now()
        self._acquire_lock()
        try:
            if self._pending:
                self._expire(now)
            state = self._states.get(key)
            if state is None:
                state = self._state_for(key)
            if self._admit_now(state, now, n) is None:
                counters = self._counters
                counters.admitted += 1
                counters.admitted_units += n
                counters.waits[0] += 1
                return 0.0, None, None, n, now
            wait, state, handle, at = self._grant(key, n, now, timeout, "timeout")
            self._counters.waited(wait)
            return wait, state, handle, n, at
        finally:
            self._release_lock()

    async def acquire(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Wait until ``count`` units are admitted for ``key``; return the seconds waited.

        Waiters are served in arrival order. When the wait would exceed ``timeout`` seconds,
        raises :class:`~flashkit.errors.RateLimitError` at once, with ``retry_after``. If the
        waiting task is cancelled, its capacity is given back.
        """
        if self._sliding and count.__class__ is int and 0 < count <= self.max_count:
            # The common case inlined (nothing waiting, room in the window): no extra frames.
            now = self._now()
            self._acquire_lock()
            try:
                state = self._states.get(key)
                if state is not None and not self._pending:
                    entries = state.entries
                    if entries:
                        last = entries[-1]
                        if (
                            last[0] <= now
                            and entries[0][0] + self.period > now
                            and state.total + count <= self.rate
                        ):
                            if now - last[0] < self._quantum:
                                last[0] = now
                                last[1] += count
                            else:
                                entries.append([now, count, True])
                            state.total += count
                            counters = self._counters
                            counters.admitted += 1
                            counters.admitted_units += count
                            counters.waits[0] += 1
                            return 0.0
            finally:
                self._release_lock()
        wait, state, handle, n, at = self._begin(key, count, timeout, "acquire")
        if wait > 0:
            start = at - wait
            delay = wait
            # Sliding window: parked on its entry, so a refund can pull it forward (_pull_forward).
            alarm = _Alarm() if self._sliding else None
            try:
                while delay > 0:
                    if alarm is not None:
                        parked = state.parked
                        parked[id(handle)] = alarm
                        try:
                            moved = await _sleep_until(self.clock, at, delay, alarm)
                        finally:
                            parked.pop(id(handle), None)
                        if moved:
                            at = handle[0]
                            delay = at - self._now()
                            if delay > 0:
                                continue
                    else:
                        await _sleep_until(self.clock, at, delay)
                    delay, handle, at = self._confirm(state, handle, n, at)
            except BaseException:
                with self._lock:
                    self._give_back(state, handle, n)
                raise
            return at - start
        return wait

    def acquire_sync(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Sync twin of :meth:`acquire` (blocks the calling thread)."""
        wait, state, handle, n, at = self._begin(key, count, timeout, "acquire_sync")
        if wait > 0:
            start = at - wait
            delay = wait
            try:
                while delay > 0:
                    _sleep_until_sync(self.clock, at, delay)
                    delay, handle, at = self._confirm(state, handle, n, at)
            except BaseException:
                with self._lock:
                    self._give_back(state, handle, n)
                raise
            return at - start
        return wait

    def reserve(
        self, key: str = "default", count: float = 1, max_wait: float = 300.0
    ) -> TokenReservation:
        """Take ``count`` units for ``key`` now, due at the earliest time they fit.

        Raises :class:`~flashkit.errors.RateLimitError` (with ``retry_after``) when that is more
        than ``max_wait`` seconds away, taking nothing.
        """
        n = self._units(count, f"{self.name}.reserve")
        now = self._now()
        with self._lock:
            _, state, handle, at = self._grant(key, n, now, max_wait, "max_wait")
            reservation = TokenReservation(
                id=uuid.uuid4().hex,
                key=key,
                count=n,
                reserved_at=now,
                execute_at=at,  # the committed time itself: now + wait may round below it
                expires_at=at + self.reservation_ttl,
                _limiter=self,
                _state=state,
                _handle=handle,
            )
            self._pending[reservation.id] = reservation
        return reservation

    def adjust(
        self,
        target: TokenReservation | str,
        actual_count: float,
        *,
        estimated_count: float | None = None,
        admitted_at: float | None = None,
    ) -> float:
        """Reconcile an estimated cost with the actual one; returns the units charged (> 0) or
        refunded (< 0).

        ``target`` is a :class:`TokenReservation` (its ``count`` is the estimate) or a key (then
        ``estimated_count`` is required: what was acquired). A refund gives units back; a charge
        records the extra units now — the limiter cannot undo what the upstream already counted,
        so later callers wait longer instead. With a key the limiter cannot tell which grant was
        yours: it refunds from the key's oldest units still in the window (buckets: the latest
        grant) and never from a grant still waiting; a reservation's refund is exact.
        ``admitted_at`` (key form, sliding window; clock seconds, e.g. ``clock.now()`` when
        ``acquire`` returned): refund from the newest units admitted no later than it — usually
        the grant itself — so the room is back for the rest of the window, not only until the
        key's oldest units leave it (an estimate of ``max_tokens`` then holds the window for the
        call's duration, not for a whole period). Queued ``acquire`` waiters that now fit are
        woken early, in order.
        """
        _check_actual(actual_count, f"{self.name}.adjust")
        if admitted_at is not None:
            admitted_at = _check_number(
                admitted_at, f"{self.name}.adjust admitted_at", "clock seconds", allow_zero=True
            )
        now = self._now()
        with self._lock:
            if isinstance(target, TokenReservation):
                if target._limiter is not self:
                    raise ValidationError(
                        f"{self.name}.adjust: the reservation belongs to another limiter",
                        code="invalid_reservation",
                    )
                if target.status in ("cancelled", "expired"):
                    raise RateLimitError(
                        f"{self.name}.adjust: reservation {target.id} is {target.status}",
                        code=f"reservation_{target.status}",
                        retryable=False,
                    )
                delta = float(actual_count) - target.count
                state, handle = target._state, target._handle
                target.count = float(actual_count)
            else:
                if estimated_count is None:
                    raise ValidationError(
                        f"{self.name}.adjust({target!r}, ...): with a key, pass estimated_count= "
                        "(the units acquired), or pass the TokenReservation itself",
                        code="invalid_count",
                    )
                delta = float(actual_count) - _check_count(estimated_count, f"{self.name}.adjust")
                state = self._state_for(target)
                handle = None
            if delta < 0:
                if handle is None:
                    self._refund_latest(state, -delta, now, admitted_at)
                else:
                    self._give_back(state, handle, -delta)
            elif delta > 0:
                self._charge(state, now, delta)
        return delta

    def _refund_latest(
        self, state: Any, n: float, now: float, admitted_at: float | None = None
    ) -> None:
        """Give back ``n`` units of a grant made earlier for the key (the key form of adjust).

        Never from a grant not yet due (a waiter's or a reservation's: it still needs them).
        Sliding window: from the oldest entries still in the window, or with ``admitted_at`` from
        the newest admitted no later than it (the caller's own grant). Units are not fungible
        across time: taking them from an entry no later than the caller's own grant is safe (it
        leaves the window no later), from a later one it is not (that entry's window would hold
        more than the log says). Buckets: from the latest grant, at most its units.
        """
        algo = self._algo
        if algo.name == "sliding_window":
            algo.prune(state, now)
            left = n
            if admitted_at is None:
                source: Iterable[list[Any]] = state.entries
                latest = now
            else:  # newest first, from the caller's grant back
                source = reversed(state.entries)
                latest = min(now, admitted_at)
            for entry in source:
                if left <= _EPS:
                    break
                if entry[0] > latest:
                    if admitted_at is None:
                        break
                    continue
                take = min(left, entry[1])
                entry[1] -= take
                state.total -= take
                left -= take
            self._counters.refunded += n - left
            self._counters.forfeited += left
            if state.parked and left < n:
                self._pull_forward(state)
        else:
            latest = state.latest
            take = 0.0
            if latest is not None and latest[2] <= now:
                take = min(n, latest[1])
            if take > 0.0:
                self._give_back(state, latest, take)
            self._counters.forfeited += n - take

    def _charge(self, state: Any, now: float, n: float) -> None:
        algo = self._algo
        if algo.name == "sliding_window":
            entries = state.entries
            at = entries[-1][0] if entries and entries[-1][0] > now else now
            algo.commit(state, at, n, at > now)
        else:
            algo.commit(state, now, n)
        self._counters.admitted_units += n

    def _confirm(self, state: Any, handle: Any, n: float, due: float) -> tuple[float, Any, float]:
        """A waiter woke: make its grant count from *now*, the time its units are really used.

        A loop that wakes a waiter late (busy, or many waiters due together) would otherwise let
        units granted for ``e`` go out at ``e + lateness`` while the next window's grants go out
        on time: an upstream would see more than ``rate`` in a window. For the sliding window
        every waking grant is checked against what was used in ``(now - period, now]`` and, when
        late, moves to ``now``; if that window cannot hold it (others were late), it queues again.
        Every real use is so checked against all real uses before it: the window guarantee holds
        for actual use times, not only for scheduled ones. Returns ``(delay, handle, due)``;
        delay 0.0 = go.
        (Bucket algorithms keep their schedule: lateness can compress their spacing by as much.)
        """
        now = self._now()
        if not self._sliding:
            return 0.0, handle, due
        with self._lock:
            entry = handle
            algo = self._algo
            on_time = bool(entry[2]) and now - entry[0] <= self._quantum
            if entry[2]:
                take = min(n, entry[1])
                entry[1] -= take
                state.total -= take
            algo.prune(state, now)
            # What is used up to now (others' grants due by now included). Later grants do not
            # count here: each checks again when *it* wakes, so an earlier waiter keeps priority
            # and a grant that was scheduled against an entry that has since moved later (its
            # waiter woke late) is caught, even when it wakes on time itself.
            # An on-time waiter is checked at its own slot (a stub clock may wake it early).
            at = max(now, entry[0]) if on_time else now
            used = 0.0
            for when, units, _alive in state.entries:
                if when > at:
                    break
                if when > at - self.period:
                    used += units
            if used + n <= self.rate + _EPS:
                if on_time:  # put the units back where they were
                    entry[1] += n
                    state.total += n
                    return 0.0, entry, due
                moved = [now, n, True]
                entries = state.entries
                index = len(entries)
                while index and entries[index - 1][0] > now:
                    index -= 1
                entries.insert(index, moved)
                state.total += n
                algo._drop_empty_tail(state)
                return 0.0, moved, now
            algo._drop_empty_tail(state)
            at = algo.earliest(state, now, n)
            return at - now, algo.commit(state, at, n, at > now), at

    def _confirm_reservation(self, reservation: TokenReservation) -> float:
        """:meth:`_confirm` for a reservation still pending (else raises, like ``wait``)."""
        with self._lock:
            self._check_alive(reservation)
        delay, reservation._handle, due = self._confirm(
            reservation._state, reservation._handle, reservation.count, reservation.execute_at
        )
        reservation.execute_at = due
        return delay

    def _cancel(self, reservation: TokenReservation) -> bool:
        with self._lock:
            if reservation.status != "pending":
                return False
            self._pending.pop(reservation.id, None)
            reservation.status = "cancelled"
            self._give_back(reservation._state, reservation._handle, reservation.count)
            return True

    def _before_wait(self, reservation: TokenReservation) -> float:
        now = self._now()
        with self._lock:
            if self._pending:
                self._expire(now)
            self._check_alive(reservation)
        return reservation.execute_at - now

    def _check_alive(self, reservation: TokenReservation) -> None:
        if reservation.status in ("cancelled", "expired"):
            raise RateLimitError(
                f"{self.name}: reservation {reservation.id} is {reservation.status}",
                code=f"reservation_{reservation.status}",
                retryable=False,
            )

    def _mark_used(self, reservation: TokenReservation) -> None:
        with self._lock:
            if reservation.status == "pending":
                reservation.status = "used"
                self._pending.pop(reservation.id, None)
                self._counters.waited(max(0.0, reservation.execute_at - reservation.reserved_at))
            else:  # cancelled or expired while its holder slept: the units are gone
                self._check_alive(reservation)

    def remaining(self, key: str = "default") -> float:
        """Units ``key`` could be admitted right now."""
        now = self._now()
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return float(self.max_count if self.algorithm != "sliding_window" else self.rate)
            return float(self._algo.level(state, now)[0])

    def _room_hint(self, key: str, now: float) -> float:
        """About the room ``key`` has, read without the lock (a sharded limiter's choice of
        shard: taking the lock twice more per request would cost more than contention saves).
        The sliding window's figure counts units that may have left the window meanwhile."""
        state = self._states.get(key)
        if state is None:
            return math.inf
        if self._sliding:
            return float(self.rate - state.total)
        return float(self._algo.level(state, now)[0])

    @property
    def stats(self) -> LimiterStats:
        """A :class:`LimiterStats` snapshot."""
        with self._lock:
            return self._counters.snapshot()


# --- several limits at once -----------------------------------------------------------------
@dataclass(eq=False)
class MultiReservation:
    """One reservation per limit of a :class:`MultiLimit`, all due at ``execute_at``."""

    parts: tuple[TokenReservation, ...]
    execute_at: float
    _clock: Clock = field(repr=False)

    def cancel(self) -> bool:
        """Refund every part still pending; True when any was."""
        return any([part.cancel() for part in self.parts])  # noqa: C419 - cancel every part

    def _confirm(self) -> float:
        """Move every part to now (see RateLimiter._confirm); the longest re-wait, or 0.0."""
        delay = 0.0
        for part in self.parts:
            delay = max(delay, part._limiter._confirm_reservation(part))
        if delay > 0:
            self.execute_at = self._clock.now() + delay
        return delay

    async def wait(self) -> None:
        """Sleep until every part is due and confirmed, then mark them used."""
        delay = self.execute_at - self._clock.now()
        try:
            while delay > 0:
                await _sleep_until(self._clock, self.execute_at, delay)
                delay = self._confirm()
        except BaseException:
            self.cancel()
            raise
        for part in self.parts:
            part.use()

    def wait_sync(self) -> None:
        """Sync twin of :meth:`wait`."""
        delay = self.execute_at - self._clock.now()
        try:
            while delay > 0:
                _sleep_until_sync(self._clock, self.execute_at, delay)
                delay = self._confirm()
        except BaseException:
            self.cancel()
            raise
        for part in self.parts:
            part.use()


class MultiLimit:
    """Several limits that must all allow a request, decided atomically.

    ``MultiLimit([requests_per_minute, tokens_per_minute])``; ``count`` is one number for every
    limit or one per limit: ``try_acquire(count=[1, 1200])``. A refusal by one limit takes
    nothing from the others. All limits must share one clock.
    """

    def __init__(self, limits: Iterable[RateLimiter]) -> None:
        self.limits = tuple(limits)
        if not self.limits:
            raise ValidationError(
                "MultiLimit needs at least one RateLimiter", code="invalid_config"
            )
        for limit in self.limits:
            if not isinstance(limit, RateLimiter):
                raise ValidationError(
                    f"MultiLimit takes RateLimiters, got {type(limit).__name__}",
                    code="invalid_config",
                )
            if limit.clock is not self.limits[0].clock:
                raise ValidationError(
                    f"MultiLimit: {limit.name!r} uses another clock than {self.limits[0].name!r}; "
                    "build every limit with the same clock=",
                    code="invalid_config",
                )
        self.clock = self.limits[0].clock
        # One lock order for every caller: no deadlock between overlapping MultiLimits.
        self._ordered = sorted(set(self.limits), key=id)

    def _counts(self, count: float | Sequence[float], where: str) -> list[float]:
        if isinstance(count, int | float):
            counts: list[float] = [count] * len(self.limits)
        else:
            counts = list(count)
            if len(counts) != len(self.limits):
                raise ValidationError(
                    f"MultiLimit.{where}: {len(counts)} counts for {len(self.limits)} limits; give "
                    "one number for all or one per limit, in order",
                    code="invalid_count",
                )
        return [
            limit._units(c, f"{limit.name}.{where}")
            for limit, c in zip(self.limits, counts, strict=True)
        ]

    def _locked(self) -> Any:
        import contextlib

        stack = contextlib.ExitStack()
        for limit in self._ordered:
            stack.enter_context(limit._lock)
        return stack

    def _plan(self, key: str, counts: list[float], now: float) -> tuple[float, list[Any]]:
        states = []
        latest = now
        for limit, n in zip(self.limits, counts, strict=True):
            if limit._pending:
                limit._expire(now)
            state = limit._state_for(key)
            latest = max(latest, limit._algo.earliest(state, now, n))
            states.append(state)
        return latest, states

    def try_acquire(
        self, key: str = "default", count: float | Sequence[float] = 1
    ) -> RateLimitResult:
        """Admit on every limit now, or on none. ``remaining`` is the smallest of the limits'."""
        counts = self._counts(count, "try_acquire")
        now = self.clock.now()
        with self._locked():
            at, states = self._plan(key, counts, now)
            allowed = at <= now
            remaining, reset = math.inf, now
            for limit, state, n in zip(self.limits, states, counts, strict=True):
                if allowed:
                    limit._algo.commit(state, now, n)
                    limit._counters.admitted += 1
                    limit._counters.admitted_units += n
                else:
                    limit._counters.rejected += 1
                left, full = limit._algo.level(state, now)
                remaining, reset = min(remaining, left), max(reset, full)
        return RateLimitResult(allowed, remaining, 0.0 if allowed else at - now, reset)

    def reserve(
        self, key: str = "default", count: float | Sequence[float] = 1, max_wait: float = 300.0
    ) -> MultiReservation:
        """Reserve on every limit at the first time all of them allow (or raise, taking nothing)."""
        counts = self._counts(count, "reserve")
        now = self.clock.now()
        with self._locked():
            at, states = self._plan(key, counts, now)
            wait = at - now
            if wait > max_wait + _EPS:
                for limit in self.limits:
                    limit._counters.rejected += 1
                raise RateLimitError(
                    f"MultiLimit: key {key!r} would wait {wait:.3g} s, more than max_wait="
                    f"{max_wait:g} s",
                    code="wait_too_long",
                    retry_after=wait,
                )
            parts = []
            for limit, state, n in zip(self.limits, states, counts, strict=True):
                handle = limit._algo.commit(state, at, n, at > now)
                limit._counters.admitted += 1
                limit._counters.admitted_units += n
                part = TokenReservation(
                    id=uuid.uuid4().hex,
                    key=key,
                    count=n,
                    reserved_at=now,
                    execute_at=at,
                    expires_at=at + limit.reservation_ttl,
                    _limiter=limit,
                    _state=state,
                    _handle=handle,
                )
                limit._pending[part.id] = part
                parts.append(part)
        return MultiReservation(tuple(parts), at, self.clock)

    async def acquire(
        self, key: str = "default", count: float | Sequence[float] = 1, timeout: float | None = None
    ) -> float:
        """Wait until every limit admits; returns the seconds waited (see RateLimiter.acquire)."""
        reservation = self._reserve_for_acquire(key, count, timeout)
        await reservation.wait()
        return reservation.execute_at - reservation.parts[0].reserved_at

    def acquire_sync(
        self, key: str = "default", count: float | Sequence[float] = 1, timeout: float | None = None
    ) -> float:
        """Sync twin of :meth:`acquire`."""
        reservation = self._reserve_for_acquire(key, count, timeout)
        reservation.wait_sync()
        return reservation.execute_at - reservation.parts[0].reserved_at

    def _reserve_for_acquire(
        self, key: str, count: float | Sequence[float], timeout: float | None
    ) -> MultiReservation:
        try:
            return self.reserve(key, count, math.inf if timeout is None else timeout)
        except RateLimitError as error:
            if error.code == "wait_too_long":
                error.code = "timeout"
            raise


# --- sharding -------------------------------------------------------------------------------
class ShardedRateLimiter:
    """One limit split over ``shards`` independent limiters, each with its own lock.

    Shard rates sum exactly to ``rate`` and none is zero (``rate < shards`` is refused), so the
    union stays within ``rate`` per ``period`` for every key. Each request picks two shards at
    random and takes the one with more room (power of two choices), so every key spreads over
    all shards.

    When it helps: when many threads really contend for one limiter's lock — on a free-threaded
    build (python3.13t and later), where threads run at once and queue on the lock; shards divide
    that queue. When it does not: under CPython's GIL (3.11 here) a decision (~1 us) is far
    shorter than the GIL's switch interval (5 ms), so a thread is almost never descheduled while
    holding the lock and there is little contention to remove; the extra shard choice then costs
    more than it saves (``benchmarks/ratelimit.py`` measures both under 8 threads: on this
    machine the sharded limiter makes about 0.4x the plain one's decisions per second). With one
    thread or with asyncio, use a plain :class:`RateLimiter`. The price of sharding: a request
    can be refused while another shard still has room (it looks at two), and no request may be
    larger than one shard's share.
    """

    def __init__(
        self,
        rate: int,
        period: float,
        shards: int = 1,
        algorithm: Algorithm = "sliding_window",
        burst: float | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        name: str = "sharded",
    ) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValidationError(
                f"ShardedRateLimiter(shards={shards!r}): shards must be an int >= 1",
                code="invalid_config",
            )
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ValidationError(
                f"ShardedRateLimiter(rate={rate!r}): rate must be a whole number of units >= 1 "
                "(it is split exactly between shards)",
                code="invalid_config",
            )
        if rate < shards:
            raise ValidationError(
                f"ShardedRateLimiter(rate={rate}, shards={shards}): every shard needs at least one "
                f"unit per period; use shards <= {rate}",
                code="invalid_config",
            )
        base, extra = divmod(rate, shards)
        self.rates = [base + (1 if i < extra else 0) for i in range(shards)]
        shard_burst = None if burst is None else max(1.0, float(burst) / shards)
        self.clock = clock if clock is not None else default_clock()
        self.shards = [
            RateLimiter(r, period, algorithm, shard_burst, clock=self.clock, name=f"{name}[{i}]")
            for i, r in enumerate(self.rates)
        ]
        self.rate = rate
        self.period = period
        self.algorithm = algorithm
        # The smallest share: a request must fit whichever two shards it happens to draw.
        self.max_count = min(s.max_count for s in self.shards)
        self._rng = rng if rng is not None else random.Random()
        self.name = name

    def _pair(self) -> tuple[RateLimiter, RateLimiter]:
        n = len(self.shards)
        if n == 1:
            return self.shards[0], self.shards[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        j = j + 1 if j >= i else j
        return self.shards[i], self.shards[j]

    def _ordered_pair(self, key: str) -> tuple[RateLimiter, RateLimiter]:
        first, second = self._pair()
        if first is not second:
            now = first._now()
            if second._room_hint(key, now) > first._room_hint(key, now):
                return second, first
        return first, second

    def _check(self, count: float, where: str) -> None:
        n = _check_count(count, f"{self.name}.{where}")
        if n > self.max_count + _EPS:
            raise ValidationError(
                f"{self.name}: a request of {n:g} units can never be admitted: each of the "
                f"{len(self.shards)} shards admits at most {self.max_count:g}; use fewer shards",
                code="request_too_large",
            )

    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Try the roomier of two random shards, then the other; never waits."""
        self._check(count, "try_acquire")
        first, second = self._ordered_pair(key)
        result = first.try_acquire(key, count)
        if result.allowed or second is first:
            return result
        other = second.try_acquire(key, count)
        if other.allowed:
            return other
        return result if result.retry_after <= other.retry_after else other

    def reserve(
        self, key: str = "default", count: float = 1, max_wait: float = 300.0
    ) -> TokenReservation:
        """Reserve on the roomier of two random shards."""
        self._check(count, "reserve")
        return self._ordered_pair(key)[0].reserve(key, count, max_wait)

    async def acquire(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Wait on the roomier of two random shards (see :meth:`RateLimiter.acquire`)."""
        self._check(count, "acquire")
        return await self._ordered_pair(key)[0].acquire(key, count, timeout)

    def acquire_sync(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Sync twin of :meth:`acquire`."""
        self._check(count, "acquire_sync")
        return self._ordered_pair(key)[0].acquire_sync(key, count, timeout)

    @property
    def stats(self) -> LimiterStats:
        """The shards' counters added up."""
        parts = [s.stats for s in self.shards]
        waits = tuple(
            (bound, sum(p.waits[i][1] for p in parts)) for i, bound in enumerate(WAIT_BUCKETS)
        )
        return LimiterStats(
            sum(p.admitted for p in parts),
            sum(p.admitted_units for p in parts),
            sum(p.rejected for p in parts),
            waits,
            sum(p.refunded_units for p in parts),
            sum(p.forfeited_units for p in parts),
        )
