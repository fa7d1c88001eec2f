"""The three admission algorithms of the local limiter: sliding log, token bucket, GCRA.

Each keeps per-key state and answers, under the limiter's lock, in seconds of its clock:
``earliest(state, now, n)`` (the first time ``n`` units may be admitted), ``commit(state, at, n,
alone)`` (record them; returns a handle), ``refund(state, handle, n)`` (take them back, or False
when unsafe) and ``level(state, now)`` (remaining units now, time the limit is fully free).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from flashkit.errors import ValidationError
from flashkit.ratelimit._base import ALGORITHMS, EPS, check_number

__all__ = ["Log", "algorithm_for"]

# --- algorithms -----------------------------------------------------------------------------
# Each keeps per-key state and answers four questions under the limiter's lock:
#   earliest(state, now, n) -> the first time n units may be admitted (>= every earlier grant);
#   commit(state, at, n, alone) -> record n units admitted at ``at`` (>= earliest); returns a
#                              handle (``alone``: never merged with another grant's entry);
#   refund(state, handle, n)-> take n of them back, or return False when that is not safe;
#   level(state, now)       -> (remaining units now, time when the limit is fully free).


class Log:
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

    new_state = Log

    def prune(self, state: Log, now: float) -> None:
        # ``when + period <= now``, the very sum earliest() returns: ``when <= now - period``
        # rounds differently and could keep an entry that earliest() says has left.
        period = self.period
        entries = state.entries
        while entries and entries[0][0] + period <= now:
            entry = entries.popleft()
            entry[2] = False
            state.total -= entry[1]

    def earliest(self, state: Log, now: float, n: float) -> float:
        self.prune(state, now)
        entries = state.entries
        start = now
        if entries and entries[-1][0] > now:
            start = entries[-1][0]  # FIFO: never before a grant already made
        excess = state.total + n - self.rate
        if excess <= EPS:
            return start
        freed = 0.0
        for when, units, _alive in entries:
            freed += units
            if freed >= excess - EPS:
                return max(start, float(when) + self.period)
        return start + self.period  # unreachable while n <= rate

    def commit(self, state: Log, at: float, n: float, alone: bool = False) -> list[Any]:
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

    def refund(self, state: Log, handle: list[Any], n: float) -> bool:
        entry = handle
        if entry[2]:  # still in the window; a pruned entry no longer counts anyway
            take = min(n, entry[1])
            entry[1] -= take
            state.total -= take
            self._drop_empty_tail(state)
        return True

    def _drop_empty_tail(self, state: Log) -> None:
        # An emptied entry at the end (a cancelled waiter or reservation, often in the future)
        # must not keep later callers queued behind a grant that no longer exists.
        entries = state.entries
        while entries and entries[-1][1] <= EPS:
            entry = entries.pop()
            entry[2] = False
            state.total -= entry[1]

    def level(self, state: Log, now: float) -> tuple[float, float]:
        self.prune(state, now)
        entries = state.entries
        if entries and entries[-1][0] > now:
            return 0.0, entries[-1][0] + self.period
        remaining = max(0.0, self.rate - state.total)
        reset = entries[-1][0] + self.period if entries else now
        return remaining, reset

    def idle(self, state: Log) -> bool:
        return not state.entries


class _Bucket:
    """Per-key token-bucket state: the level at ``stamp`` (negative while reservations are
    ahead), and the serial number and handle of the latest commit (the only one a refund can
    undo)."""

    __slots__ = ("before", "last", "latest", "level", "owed", "parked", "queue", "stamp")

    def __init__(self) -> None:
        self.level = math.nan  # NaN: never used, the bucket is full
        self.stamp = -math.inf
        self.last = 0
        self.latest: list[float] | None = None  # [serial, units, time] of the latest commit
        self.before = (math.nan, -math.inf)  # (level, stamp) before the latest commit
        # refunds="immediate": grants committed for a later time, in order; units given back
        # and not yet settled; async waiters asleep on a grant, by id(handle) (see settle()).
        self.queue: deque[list[float]] = deque()
        self.owed = 0.0
        self.parked: dict[int, Callable[[], None]] = {}


class _Paced:
    """What the two bucket algorithms share: a capacity of ``burst`` units (1 by default) and
    serial numbers for their commits."""

    def __init__(self, rate: float, period: float, burst: float | None) -> None:
        self.capacity = _capacity(burst)
        self.rate = rate
        self.period = period
        self.max_count = self.capacity
        self.refill = rate / period  # units per second
        self.interval = period / rate  # seconds per unit
        self._serial = itertools.count(1)

    def _stamp(self, state: Any, n: float, at: float) -> list[float]:
        """Number a commit of ``n`` units at ``at``: its handle ``[serial, units held, time,
        units granted]``, the only one a refund can undo."""
        state.last = next(self._serial)
        handle: list[float] = [state.last, n, at, n]
        state.latest = handle
        return handle

    @staticmethod
    def _taken_back(state: Any, handle: list[float], n: float) -> float | None:
        """Up to ``n`` units of the latest grant (``handle``) taken back from it; None when it is
        not the latest (later grants were computed with these units gone)."""
        if state.last != handle[0]:
            return None
        take = min(n, handle[1])
        handle[1] -= take
        return take


class _TokenBucket(_Paced):
    name = "token_bucket"

    new_state = _Bucket

    def __init__(
        self, rate: float, period: float, burst: float | None, immediate: bool = False
    ) -> None:
        super().__init__(rate, period, burst)
        self.immediate = immediate  # refunds="immediate": any grant's units come back at once

    def _at(self, state: _Bucket, t: float) -> tuple[float, float]:
        """The bucket's (level, time) at max(t, stamp): never before a grant already made."""
        if math.isnan(state.level):
            return self.capacity, t
        when = t if t > state.stamp else state.stamp
        level = state.level + (when - state.stamp) * self.refill
        return (level if level < self.capacity else self.capacity), when

    def earliest(self, state: _Bucket, now: float, n: float) -> float:
        if self.immediate:
            queue = state.queue
            while queue and queue[0][2] < now:  # past: no longer queued (settle() needs
                queue.popleft()  # those due now: a refund at their time is capped by them)
        level, when = self._at(state, now)
        if level >= n:  # no tolerance in units: it would admit early (by 1e-9 / refill s)
            return when
        return when + (n - level) / self.refill

    def commit(self, state: _Bucket, at: float, n: float, alone: bool = False) -> list[float]:
        state.before = (state.level, state.stamp)
        level, when = self._at(state, at)
        state.level = level - n
        state.stamp = when
        handle = self._stamp(state, n, when)
        if self.immediate:
            state.queue.append(handle)
        return handle

    def refund(self, state: _Bucket, handle: list[float], n: float) -> bool:
        if self.immediate:
            given = min(n, handle[1])
            handle[1] -= given
            self.credit(state, given)
            return True
        take = self._taken_back(state, handle, n)
        if take is None:
            return False
        state.level += take
        if handle[1] <= EPS:  # all of it: exactly as if never granted
            state.level, state.stamp = state.before
        return True

    def credit(self, state: _Bucket, n: float) -> None:
        """``refunds="immediate"``: owe ``n`` units back, whichever grant they came from (net
        accounting, as a provider settles); :meth:`settle` gives them."""
        state.owed += n

    def settle(self, state: _Bucket, now: float) -> tuple[list[Callable[[], None]], float]:
        """Give the owed units back at ``now``: (the alarms of the waiters moved earlier, the
        units forfeited).

        The units raise the level at ``now``, capped by the bucket's size as a provider settling
        now caps them (ahead of the grants due now: the provider may see them first). The
        grants queued from ``now`` on are then made again, in order, each at the earliest time
        the new level allows (never later than before): the async waiters among them are woken
        early. A queued grant nobody can be told of (a reservation, a sync waiter, a charge)
        keeps its time, and so do the grants after it; the units that could not move them are
        forfeited, which keeps the books of every queued grant exact.
        """
        owed, state.owed = state.owed, 0.0
        queue = state.queue
        while queue and queue[0][2] < now:
            queue.popleft()
        capacity = self.capacity
        if not queue:
            state.level = min(state.level + owed, capacity)  # NaN (full) stays NaN
            return [], 0.0
        refill = self.refill
        # The level at ``now`` before the queue's grants: between them it never reaches the cap
        # (each waits until the level reaches its units, no more than the bucket's size).
        level = state.level + sum(h[3] for h in queue) - (state.stamp - now) * refill
        level = min(capacity, level + owed)
        alarms: list[Callable[[], None]] = []
        t = now
        for handle in queue:
            alarm = state.parked.get(id(handle))
            if alarm is None and handle[2] > now:
                return alarms, (0.0 if alarms else owed)
            n = handle[3]
            at = t if level >= n else t + (n - level) / refill
            if at > handle[2]:  # only by rounding: the level is no lower than before
                at = handle[2]
            level += (at - t) * refill - n
            t = at
            if at < handle[2]:
                handle[2] = at
                if alarm is not None:
                    alarms.append(alarm)
        state.stamp = t
        state.level = level
        return alarms, 0.0

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


class _Gcra(_Paced):
    name = "gcra"

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
        return self._stamp(state, n, at)

    def refund(self, state: _Cell, handle: list[float], n: float) -> bool:
        take = self._taken_back(state, handle, n)
        if take is None:
            return False
        state.units -= take
        if handle[1] <= EPS:  # all of it: exactly as if never granted
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
    capacity = check_number(burst, "RateLimiter burst", "the bucket size in units, >= 1")
    if capacity < 1.0:
        raise ValidationError(
            f"RateLimiter(burst={burst!r}): the bucket must hold at least one unit",
            code="invalid_config",
        )
    return capacity


def algorithm_for(
    name: str, rate: float, period: float, burst: float | None, refunds: str = "safe"
) -> Any:
    if refunds not in ("safe", "immediate"):
        raise ValidationError(
            f"RateLimiter(refunds={refunds!r}): use 'safe' (the default) or 'immediate'",
            code="invalid_config",
        )
    if refunds == "immediate" and name != "token_bucket":
        raise ValidationError(
            f"RateLimiter(algorithm={name!r}, refunds='immediate'): immediate refunds settle "
            "a token bucket the way a provider does; use algorithm='token_bucket' (a sliding "
            "window's refunds are exact already)",
            code="invalid_config",
        )
    if name == "sliding_window":
        return _SlidingWindow(rate, period, burst)
    if name == "token_bucket":
        return _TokenBucket(rate, period, burst, refunds == "immediate")
    if name == "gcra":
        return _Gcra(rate, period, burst)
    raise ValidationError(
        f"RateLimiter(algorithm={name!r}): unknown algorithm; use one of {list(ALGORITHMS)}",
        code="invalid_config",
    )
