"""The in-process limiter: ``rate`` units per ``period`` seconds per key, and reservations.

>>> rpm = RateLimiter(60, 60.0)                      # 60 requests per minute, strictly
>>> rpm.try_acquire().allowed                        # never waits
>>> grant = await rpm.acquire(timeout=30.0)          # waits its turn (FIFO), or raises
>>> tpm = RateLimiter(90_000, 60.0)                  # tokens per minute
>>> grant = await tpm.acquire(count=2_000)           # a max_tokens estimate
>>> await tpm.adjust(grant, 1_234)                   # the response reported 1,234

Algorithms: ``"sliding_window"`` (default, strict), ``"token_bucket"``, ``"gcra"``. The semantics
(windows, FIFO waiters, refunds) are argued in ``docs/design/ratelimit.md``.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flashkit._flow import run_async, run_sync
from flashkit.clock import Clock, default_clock
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit._algorithms import Log, algorithm_for
from flashkit.ratelimit._base import (
    EPS,
    Algorithm,
    Grant,
    LimiterBase,
    Nap,
    RateLimitResult,
    Refunds,
    check_actual,
    check_number,
    nap_async,
    nap_sync,
    settlement,
    units_for,
)

__all__ = ["RateLimiter", "Reservation"]


# --- reservations ---------------------------------------------------------------------------
@dataclass(eq=False)
class Reservation:
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
        await run_async(self._waiting(), nap_async)

    def wait_sync(self) -> None:
        """Sync twin of :meth:`wait`: block until ``execute_at``, then mark it used."""
        run_sync(self._waiting(), nap_sync)

    def _waiting(self) -> Generator[Nap, bool, None]:
        limiter = self._limiter
        delay = limiter._before_wait(self)
        try:
            while delay > 0:
                yield Nap(limiter.clock, self.execute_at, delay)
                delay = limiter._confirm_reservation(self)
        except BaseException:
            self.cancel()
            raise
        limiter._mark_used(self)

    def use(self) -> None:
        """Mark the reservation used without waiting (the caller waited on its own)."""
        self._limiter._before_wait(self)
        self._limiter._mark_used(self)


# --- the limiter ----------------------------------------------------------------------------
class RateLimiter(LimiterBase):
    """``rate`` units per ``period`` seconds, per key: a :class:`~flashkit.ratelimit.Limiter`.

    Args:
        rate: units allowed per period (> 0).
        period: the window length in seconds (> 0).
        algorithm: ``"sliding_window"`` (default, strict), ``"token_bucket"`` or ``"gcra"``.
        burst: bucket size for ``token_bucket``/``gcra`` (default 1 unit: a strict pacer).
        clock: a :class:`~flashkit.clock.Clock` (default :func:`flashkit.clock.default_clock`).
        reservation_ttl: seconds an unused reservation is held after ``execute_at`` (60.0).
        refunds: ``"safe"`` (default): a refund never lets actual use exceed the bound (a bucket
            takes back only its latest grant; an older one's units are forfeited).
            ``"immediate"`` (``token_bucket`` only): any grant's refunded units return to the
            bucket at once, as a provider that settles estimates at completion does
            (Anthropic's token limit); the bound then holds for units net of refunds.
        name: used in errors and stats.
    """

    def __init__(
        self,
        rate: float,
        period: float,
        *,
        algorithm: Algorithm = "sliding_window",
        burst: float | None = None,
        clock: Clock | None = None,
        reservation_ttl: float = 60.0,
        refunds: Refunds = "safe",
        name: str = "ratelimit",
    ) -> None:
        self.rate = check_number(rate, "RateLimiter rate", "units per period, e.g. 60")
        self.period = check_number(period, "RateLimiter period", "seconds, e.g. 60.0")
        self.algorithm: Algorithm = algorithm
        self.burst = burst
        self.refunds: Refunds = refunds
        self._algo = algorithm_for(algorithm, self.rate, self.period, burst, refunds)
        self.max_count: float = self._algo.max_count
        self.reservation_ttl = check_number(
            reservation_ttl, "RateLimiter reservation_ttl", "seconds, e.g. 60.0", allow_zero=True
        )
        self.name = name
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now
        super().__init__()
        self._acquire_lock = self._lock.acquire
        self._release_lock = self._lock.release
        self._states: dict[str, Any] = {}
        self._pending: dict[str, Reservation] = {}
        self._ops = 0
        self._sliding = algorithm == "sliding_window"
        self._settles = refunds == "immediate"  # a bucket that settles refunds (see _settle)
        # the largest whole count the sliding window's fast paths take (0: no fast path)
        self._fast_max = self.max_count if self._sliding else 0
        self._quantum = self.period / 1024
        self._admit_now = self._admit_sliding if self._sliding else self._admit_generic

    def __repr__(self) -> str:
        burst = f", burst={self.burst}" if self.burst is not None else ""
        refunds = ", refunds='immediate'" if self.refunds == "immediate" else ""
        return (
            f"RateLimiter({self.rate:g}, {self.period:g}, algorithm={self.algorithm!r}{burst}"
            f"{refunds}, name={self.name!r})"
        )

    # --- shared core (lock held) -----------------------------------------------------------
    def _units(self, count: float, where: str) -> float:
        return units_for(self, count, where)

    def _state_for(self, key: str) -> Any:
        state = self._states.get(key)
        if state is None:
            self._ops += 1
            if self._ops >= 4096 and len(self._states) >= 4096:
                self._sweep()
            state = self._states[key] = self._algo.new_state()
        return state

    def _live_state(self, key: str, now: float) -> Any:
        """The key's state, overdue reservations expired first (lock held)."""
        if self._pending:
            self._expire(now)
        state = self._states.get(key)
        return state if state is not None else self._state_for(key)

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
            elif self._settles:
                self._settle(state)
        else:
            self._counters.forfeited += n

    def _settle(self, state: Any) -> None:
        """refunds="immediate" (lock held): give the owed units back now, waking the async
        waiters whose grants that moves earlier (``_TokenBucket.settle``)."""
        alarms, lost = self._algo.settle(state, self._now())
        if lost > 0.0:
            self._counters.refunded -= lost
            self._counters.forfeited += lost
        for alarm in alarms:
            alarm()

    def _pull_forward(self, state: Log) -> None:
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
            if alarm is not None and entry[1] > EPS:
                at = previous
                excess = ahead + entry[1] - rate
                if excess > EPS:
                    at = entry[0]
                    freed = 0.0
                    for when, units, _alive in itertools.islice(entries, k):
                        freed += units
                        if freed >= excess - EPS:
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
        if max_wait is not None and wait > max_wait + EPS:
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
    def _admit_sliding(self, state: Log, now: float, n: float) -> float | None:
        """The sliding log's common case: admit ``n`` now and return None, or return the
        earliest time they fit (nothing committed)."""
        entries = state.entries
        if entries:
            if entries[0][0] + self.period <= now:
                self._algo.prune(state, now)
            if entries and entries[-1][0] > now:
                return float(self._algo.earliest(state, now, n))
        if state.total + n <= self.rate + EPS:
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

    def _take_now(self, key: str, count: int, now: float) -> float:
        """The common case (lock held; sliding window, whole units, nothing reserved, room in
        the window, nothing queued): admit and return the units left; else -1.0, nothing done."""
        state = self._states.get(key)
        if state is None or self._pending:
            return -1.0
        entries = state.entries
        if not entries:
            return -1.0
        last = entries[-1]
        if last[0] > now or entries[0][0] + self.period <= now or state.total + count > self.rate:
            return -1.0
        if now - last[0] < self._quantum:
            last[0] = now
            last[1] += count
        else:
            entries.append([now, count, True])
        total = state.total = state.total + count
        counters = self._counters
        counters.admitted += 1
        counters.admitted_units += count
        left: float = self.rate - total  # floats both: no float() call on the hot path
        return left

    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Admit ``count`` units for ``key`` now if the limit allows; never waits.

        Also refuses while earlier callers are waiting their turn (first come, first served).
        """
        fast = count.__class__ is int and 0 < count <= self._fast_max
        if fast:
            now = self._now()
            # lock.acquire()/release() rather than ``with``: half the cost on this hot path.
            self._acquire_lock()
            try:
                left = self._take_now(key, count, now)  # type: ignore[arg-type]
            finally:
                self._release_lock()
            if left >= 0.0:
                return RateLimitResult((True, left, 0.0, now + self.period))
        n = count if fast else self._units(count, f"{self.name}.try_acquire")
        now = self._now()
        self._acquire_lock()
        try:
            state = self._live_state(key, now)
            at = self._admit_now(state, now, n)
            counters = self._counters
            if at is None:
                counters.admitted += 1
                counters.admitted_units += n
                if self._sliding:
                    return RateLimitResult((True, self.rate - state.total, 0.0, now + self.period))
                remaining, reset = self._algo.level(state, now)
                return RateLimitResult((True, remaining, 0.0, reset))
            counters.rejected += 1
            remaining, reset = self._algo.level(state, now)
            return RateLimitResult((False, remaining, at - now, reset))
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
            state = self._live_state(key, now)
            if self._admit_now(state, now, n) is None:
                counters = self._counters
                counters.unwaited += 1
                counters.admitted_units += n
                return 0.0, None, None, n, now
            wait, state, handle, at = self._grant(key, n, now, timeout, "timeout")
            self._counters.waited(wait)
            return wait, state, handle, n, at
        finally:
            self._release_lock()

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Wait until ``count`` units are admitted for ``key``; the :class:`Grant` says how long
        that took and when they count.

        Waiters are served in arrival order. When the wait would exceed ``timeout`` seconds,
        raises :class:`~flashkit.errors.RateLimitError` at once, with ``retry_after``. If the
        waiting task is cancelled, its capacity is given back.
        """
        # _take_now inlined: the async path is the hot one (benchmarks/ratelimit.py measures
        # the saving against the shared call, "flashkit acquire, shared path").
        if count.__class__ is int and 0 < count <= self._fast_max:
            now = self._now()
            self._acquire_lock()
            try:
                state = self._states.get(key)
                if state is not None and not self._pending and (entries := state.entries):
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
                        counters.unwaited += 1
                        counters.admitted_units += count
                        return Grant((key, count, 0.0, now, self))
            finally:
                self._release_lock()
        wait, state, handle, n, at = self._begin(key, count, timeout, "acquire")
        if wait > 0:
            return await run_async(self._waiting(key, state, handle, n, at, wait, True), nap_async)
        return Grant((key, n, wait, at, self))

    def acquire_sync(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Sync twin of :meth:`acquire` (blocks the calling thread)."""
        wait, state, handle, n, at = self._begin(key, count, timeout, "acquire_sync")
        if wait > 0:
            return run_sync(self._waiting(key, state, handle, n, at, wait, False), nap_sync)
        return Grant((key, n, wait, at, self))

    def _waiting(
        self, key: str, state: Any, handle: Any, n: float, at: float, wait: float, park: bool
    ) -> Generator[Nap, bool, Grant]:
        """A queued grant's wait, until its units are confirmed (see :meth:`_confirm`); on any
        error (a cancelled task) its units go back. ``park``: async waiters of a sliding window
        or a settling bucket are parked on their grant, so a refund can pull them forward
        (:meth:`_pull_forward`, :meth:`_settle`)."""
        start = at - wait
        delay = wait
        parked = park and (self._sliding or self._settles)
        slot = 0 if self._sliding else 2  # where the handle keeps its time
        try:
            while delay > 0:
                moved = yield Nap(self.clock, at, delay, (state.parked, handle) if parked else None)
                if moved:
                    at = handle[slot]
                    delay = at - self._now()
                    if delay > 0:
                        continue
                delay, handle, at = self._confirm(state, handle, n, at)
        except BaseException:
            with self._lock:
                self._give_back(state, handle, n)
            raise
        return Grant((key, n, at - start, at, self))

    def reserve(
        self, key: str = "default", count: float = 1, *, max_wait: float = 300.0
    ) -> Reservation:
        """Take ``count`` units for ``key`` now, due at the earliest time they fit.

        Raises :class:`~flashkit.errors.RateLimitError` (with ``retry_after``) when that is more
        than ``max_wait`` seconds away, taking nothing.
        """
        n = self._units(count, f"{self.name}.reserve")
        now = self._now()
        with self._lock:
            _, state, handle, at = self._grant(key, n, now, max_wait, "max_wait")
            reservation = Reservation(
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

    def adjust_sync(
        self,
        target: Grant | Reservation | str,
        actual_count: float,
        *,
        estimated_count: float | None = None,
    ) -> float:
        """Reconcile an estimated cost with the actual one; returns the units charged (> 0) or
        refunded (< 0).

        ``target``: the :class:`Grant` ``acquire`` returned (exact: the refund comes from that
        grant), a :class:`Reservation` (its ``count`` is the estimate), or a key with
        ``estimated_count=`` (what was acquired). A charge records the extra units now
        (later callers wait longer). A key-form refund comes from the key's oldest units in
        the window (buckets: the latest grant), never from a grant still waiting. Queued
        waiters that now fit are woken early, in order (``docs/design/ratelimit.md``).
        """
        actual = check_actual(actual_count, f"{self.name}.adjust")
        now = self._now()
        if isinstance(target, Reservation):
            return self._adjust_reservation(target, actual)
        key, estimate, at = settlement(self, target, estimated_count, f"{self.name}.adjust")
        delta = actual - estimate
        with self._lock:
            state = self._state_for(key)
            if delta < 0:
                self._refund_latest(state, -delta, now, at)
            elif delta > 0:
                self._charge(state, now, delta)
        return delta

    def _adjust_reservation(self, target: Reservation, actual: float) -> float:
        now = self._now()
        with self._lock:
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
            delta = actual - target.count
            target.count = actual
            if delta < 0:
                self._give_back(target._state, target._handle, -delta)
            elif delta > 0:
                self._charge(target._state, now, delta)
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
        more than the log says). Buckets: from the latest grant, at most its units; with
        ``refunds="immediate"`` all of them, at once.
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
                if left <= EPS:
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
        elif self._settles:  # net accounting: whichever grant it was
            algo.credit(state, n)
            self._counters.refunded += n
            self._settle(state)
        else:
            latest = state.latest
            take = 0.0
            # Only the latest grant can be taken back, and only by its own caller or an older
            # one's: never the units of a grant made after ``admitted_at``.
            newest = now if admitted_at is None else min(now, admitted_at)
            if latest is not None and latest[2] <= newest:
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
            # Late by any amount (a loop can wake it a nanosecond late): it counts from now.
            on_time = bool(entry[2]) and now <= entry[0]
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
            if used + n <= self.rate + EPS:
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

    def _confirm_reservation(self, reservation: Reservation) -> float:
        """:meth:`_confirm` for a reservation still pending (else raises, like ``wait``)."""
        with self._lock:
            self._check_alive(reservation)
        delay, reservation._handle, due = self._confirm(
            reservation._state, reservation._handle, reservation.count, reservation.execute_at
        )
        reservation.execute_at = due
        return delay

    def _cancel(self, reservation: Reservation) -> bool:
        with self._lock:
            if reservation.status != "pending":
                return False
            self._pending.pop(reservation.id, None)
            reservation.status = "cancelled"
            self._give_back(reservation._state, reservation._handle, reservation.count)
            return True

    def _before_wait(self, reservation: Reservation) -> float:
        now = self._now()
        with self._lock:
            if self._pending:
                self._expire(now)
            self._check_alive(reservation)
        return reservation.execute_at - now

    def _check_alive(self, reservation: Reservation) -> None:
        if reservation.status in ("cancelled", "expired"):
            raise RateLimitError(
                f"{self.name}: reservation {reservation.id} is {reservation.status}",
                code=f"reservation_{reservation.status}",
                retryable=False,
            )

    def _mark_used(self, reservation: Reservation) -> None:
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
