"""Several limits that must all allow a request, decided atomically (requests and tokens)."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flashkit._flow import run_async, run_sync
from flashkit.clock import Clock
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit._base import (
    EPS,
    Grant,
    LimiterBase,
    LimiterStats,
    Nap,
    RateLimitResult,
    foreign_grant,
    nap_async,
    nap_sync,
    need_estimate,
    sum_stats,
)
from flashkit.ratelimit._local import RateLimiter, Reservation

__all__ = ["MultiLimit", "MultiReservation"]


# --- several limits at once -----------------------------------------------------------------
@dataclass(eq=False)
class MultiReservation:
    """One reservation per limit of a :class:`MultiLimit`, all due at ``execute_at``."""

    parts: tuple[Reservation, ...]
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
        await run_async(self._waiting(), nap_async)

    def wait_sync(self) -> None:
        """Sync twin of :meth:`wait`."""
        run_sync(self._waiting(), nap_sync)

    def _waiting(self) -> Generator[Nap, bool, None]:
        delay = self.execute_at - self._clock.now()
        try:
            while delay > 0:
                yield Nap(self._clock, self.execute_at, delay)
                delay = self._confirm()
        except BaseException:
            self.cancel()
            raise
        for part in self.parts:
            part.use()


class MultiLimit(LimiterBase):
    """Several limits that must all allow a request, decided atomically.

    ``MultiLimit([requests_per_minute, tokens_per_minute])``; ``count`` is one number for every
    limit or one per limit: ``try_acquire(count=[1, 1200])``. A refusal by one limit takes
    nothing from the others. All limits must share one clock.
    """

    def __init__(self, limits: Iterable[RateLimiter], *, name: str = "multi") -> None:
        self.name = name
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
        return RateLimitResult((allowed, remaining, 0.0 if allowed else at - now, reset))

    def reserve(
        self, key: str = "default", count: float | Sequence[float] = 1, *, max_wait: float = 300.0
    ) -> MultiReservation:
        """Reserve on every limit at the first time all of them allow (or raise, taking nothing)."""
        counts = self._counts(count, "reserve")
        now = self.clock.now()
        with self._locked():
            at, states = self._plan(key, counts, now)
            wait = at - now
            if wait > max_wait + EPS:
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
                part = Reservation(
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
        self,
        key: str = "default",
        count: float | Sequence[float] = 1,
        *,
        timeout: float | None = None,
    ) -> Grant:
        """Wait until every limit admits (see :meth:`RateLimiter.acquire`); the grant's count is
        one per limit."""
        reservation = self._reserve_for_acquire(key, count, timeout)
        await reservation.wait()
        return self._granted(key, reservation)

    def acquire_sync(
        self,
        key: str = "default",
        count: float | Sequence[float] = 1,
        *,
        timeout: float | None = None,
    ) -> Grant:
        """Sync twin of :meth:`acquire`."""
        reservation = self._reserve_for_acquire(key, count, timeout)
        reservation.wait_sync()
        return self._granted(key, reservation)

    def _granted(self, key: str, reservation: MultiReservation) -> Grant:
        counts = tuple(part.count for part in reservation.parts)
        due = reservation.execute_at
        return Grant((key, counts, due - reservation.parts[0].reserved_at, due, self))

    def adjust_sync(
        self,
        target: Grant | str,
        actual_count: float | Sequence[float],
        *,
        estimated_count: float | Sequence[float] | None = None,
    ) -> float:
        """Settle each limit's estimate with the actual units (one number for all or one per
        limit; see :meth:`RateLimiter.adjust_sync`). Returns the total units charged (> 0) or
        refunded (< 0)."""
        where = f"{self.name}.adjust"
        if isinstance(target, Grant):
            if target.limiter is not self:
                raise foreign_grant(where, target)
            key = target.key
            estimate: float | Sequence[float] = target.count
            at = target.admitted_at
        elif estimated_count is None or not isinstance(target, str):
            need_estimate(where, target, estimated_count)
        else:
            key, estimate, at = target, estimated_count, math.nan
        estimates = self._counts(estimate, "adjust")
        actuals = self._actuals(actual_count)
        return sum(
            limit.adjust_sync(Grant((key, e, 0.0, at, limit)), a)
            for limit, a, e in zip(self.limits, actuals, estimates, strict=True)
        )

    def _actuals(self, actual_count: float | Sequence[float]) -> list[float]:
        if isinstance(actual_count, int | float):
            return [actual_count] * len(self.limits)
        actuals = list(actual_count)
        if len(actuals) != len(self.limits):
            raise ValidationError(
                f"{self.name}.adjust: {len(actuals)} actual counts for {len(self.limits)} limits",
                code="invalid_count",
            )
        return actuals

    def remaining(self, key: str = "default") -> float:
        """The fewest units any of the limits could admit for ``key`` right now."""
        return min(limit.remaining(key) for limit in self.limits)

    @property
    def stats(self) -> LimiterStats:
        """Calls as the first limit saw them (every limit sees every call); units added up."""
        first = self.limits[0].stats
        total = sum_stats([limit.stats for limit in self.limits])
        return first._replace(
            admitted_units=total.admitted_units,
            refunded_units=total.refunded_units,
            forfeited_units=total.forfeited_units,
        )

    def _reserve_for_acquire(
        self, key: str, count: float | Sequence[float], timeout: float | None
    ) -> MultiReservation:
        try:
            return self.reserve(key, count, max_wait=math.inf if timeout is None else timeout)
        except RateLimitError as error:
            if error.code == "wait_too_long":
                error.code = "timeout"
            raise
