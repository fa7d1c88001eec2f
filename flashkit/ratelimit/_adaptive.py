"""A limiter that learns the upstream's real limit: AIMD plus what rate-limit headers say.

>>> limiter = AdaptiveRateLimiter(initial_rate=60, period=60.0)   # a first guess: 60 per minute
>>> grant = await limiter.acquire()                               # paced at the current estimate
>>> limiter.observe(response)        # 2xx: success; 429: back off; headers: jump to the limit

Rates are units per ``period``, times seconds on ``clock``; ``key`` is accepted and ignored (one
upstream, one learned limit). How and why it learns: ``docs/design/adaptive-ratelimit.md``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import httpx2

from flashkit._flow import run_async, run_sync
from flashkit._headers import LimitInfo, parse_rate_limit_headers, retry_after_seconds
from flashkit.clock import Clock, default_clock
from flashkit.errors import RateLimitError, ValidationError, _is_http_headers, _is_http_response
from flashkit.ratelimit._base import (
    Grant,
    LimiterBase,
    Nap,
    RateLimitResult,
    check_actual,
    check_count,
    nap_async,
    nap_sync,
    settlement,
)

if TYPE_CHECKING:  # annotations only: httpx (0.x) need not be installed
    import httpx

__all__ = ["AdaptiveRateLimiter", "AdaptiveStats"]

_EPS: Final = 1e-9
_MAX_ACCELERATION: Final = 8
_ACCEPTED_SAMPLES: Final = 20  # successes wanted in the window that measures acceptance
_ACCEPTED_INTERVALS: Final = 10  # ... but it spans at most this many intervals


@dataclass(frozen=True, slots=True)
class AdaptiveStats:
    """Counters since the limiter was built, and the current estimate.

    ``rate``: current rate (units per ``period``); ``admitted``: grants; ``successes`` and
    ``rate_limited``: feedback received; ``increases``/``decreases``/``header_updates``: how
    often the rate changed and why; ``blocked_until``: clock time before which nothing is granted.
    """

    rate: float
    admitted: int
    admitted_units: float
    rejected: int
    successes: int
    rate_limited: int
    increases: int
    decreases: int
    header_updates: int
    blocked_until: float


def _positive(value: object, what: str, hint: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"AdaptiveRateLimiter({what}={value!r}): must be a number; {hint}",
            code="invalid_config",
            details={"field": what},
        )
    number = float(value)
    if not number > 0 or (math.isinf(number) and not allow_inf) or math.isnan(number):
        raise ValidationError(
            f"AdaptiveRateLimiter({what}={value!r}): must be > 0"
            f"{'' if allow_inf else ' and finite'}; {hint}",
            code="invalid_config",
            details={"field": what},
        )
    return number


class AdaptiveRateLimiter(LimiterBase):
    """A pacer whose rate (units per ``period`` seconds) is learned from upstream feedback.

    Args (keyword-only; times in seconds, rates in units per ``period``):
        initial_rate: the first estimate (60.0).
        period: the unit of rates (60.0: per minute).
        min_rate / max_rate: bounds of the estimate (1.0 / unbounded).
        backoff_ratio: multiplicative decrease on 429, in [0.5, 1) (0.9).
        increase: additive step per clean interval, as a fraction of the rate at the last
            decrease (0.02).
        interval: seconds per feedback interval (1.0).
        slow_start: double the rate per clean interval until the first 429 (True).
        burst: units that may pass at once (1.0: strict pacing).
        headroom: fraction of a header-reported limit to use (0.98).
        header_period: the window header limits refer to (60.0: per minute).
        unit: which header limits to learn from: ``"requests"`` (default) or ``"tokens"``.
        clock: a :class:`~flashkit.clock.Clock` (default :func:`flashkit.clock.default_clock`).
        name: used in errors and stats.
    """

    def __init__(
        self,
        *,
        initial_rate: float = 60.0,
        period: float = 60.0,
        min_rate: float = 1.0,
        max_rate: float = math.inf,
        backoff_ratio: float = 0.9,
        increase: float = 0.02,
        interval: float = 1.0,
        slow_start: bool = True,
        burst: float = 1.0,
        headroom: float = 0.98,
        header_period: float = 60.0,
        unit: Literal["requests", "tokens"] = "requests",
        clock: Clock | None = None,
        name: str = "adaptive",
    ) -> None:
        self.period = _positive(period, "period", "seconds, e.g. 60.0 for per-minute rates")
        self.min_rate = _positive(min_rate, "min_rate", "units per period, e.g. 1.0")
        self.max_rate = _positive(max_rate, "max_rate", "units per period", allow_inf=True)
        if self.max_rate < self.min_rate:
            raise ValidationError(
                f"AdaptiveRateLimiter(max_rate={max_rate!r}): below min_rate={min_rate!r}",
                code="invalid_config",
                details={"field": "max_rate"},
            )
        rate = _positive(initial_rate, "initial_rate", "units per period, e.g. 60.0")
        if not 0.5 <= backoff_ratio < 1.0:
            raise ValidationError(
                f"AdaptiveRateLimiter(backoff_ratio={backoff_ratio!r}): must be in [0.5, 1); "
                "0.9 cuts the rate by 10 % per 429",
                code="invalid_config",
                details={"field": "backoff_ratio"},
            )
        self.backoff_ratio = float(backoff_ratio)
        self.increase = _positive(increase, "increase", "a fraction of the rate, e.g. 0.02")
        self.interval = _positive(interval, "interval", "seconds, e.g. 1.0")
        self.burst = _positive(burst, "burst", "units that may pass at once, e.g. 1.0")
        if not 0.0 < headroom <= 1.0:
            raise ValidationError(
                f"AdaptiveRateLimiter(headroom={headroom!r}): must be in (0, 1], e.g. 0.98",
                code="invalid_config",
                details={"field": "headroom"},
            )
        self.headroom = float(headroom)
        self.header_period = _positive(header_period, "header_period", "seconds, e.g. 60.0")
        if unit not in ("requests", "tokens"):
            raise ValidationError(
                f"AdaptiveRateLimiter(unit={unit!r}): use 'requests' or 'tokens'",
                code="invalid_config",
                details={"field": "unit"},
            )
        self.unit: Literal["requests", "tokens"] = unit
        self.slow_start = bool(slow_start)
        self.name = name
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now

        super().__init__()
        self._rps = self._clamp(rate) / self.period  # units per second
        self._ceiling = math.inf  # units per second, from headers
        self._anchor = self._rps  # the rate at the last decrease (scales the additive step)
        self._in_slow_start = self.slow_start
        self._tat = -math.inf  # GCRA theoretical arrival time
        self._blocked_until = -math.inf
        now = self._now()
        self._interval_end = now + self.interval
        self._interval_start = now
        self._created = now
        self._iv_grants = 0.0
        self._iv_successes = 0
        self._iv_limited = 0
        self._recent: deque[float] = deque()  # times of recent successes
        self._w_max = math.inf  # the rate that last met a 429 (units per second)
        self._clean_streak = 0
        self._hold_until = -math.inf
        self._waiters = 0
        self._async_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._successes = 0
        self._limited = 0
        self._increases = 0
        self._decreases = 0
        self._header_updates = 0
        self.history: deque[tuple[float, float]] = deque([(now, self.rate)], maxlen=10_000)
        """(clock time, rate) after every change; bounded to the last 10,000 changes."""

    # --- the estimate -----------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """The current estimate, in units per ``period``."""
        return self._rps * self.period

    @property
    def blocked_until(self) -> float:
        """Clock time before which nothing is granted (a server's retry-after)."""
        return self._blocked_until

    def _clamp(self, rate: float) -> float:
        return min(self.max_rate, max(self.min_rate, rate))

    def _set_rps(self, rps: float, now: float) -> None:
        rps = self._clamp(rps * self.period) / self.period
        if rps != self._rps:
            self._rps = rps
            self.history.append((now, rps * self.period))

    def _roll(self, now: float) -> None:
        """Close the feedback interval(s) that ended by ``now``. Lock held."""
        if now < self._interval_end:
            return
        busy = self._iv_grants >= 0.5 * self._rps * self.interval
        if self._iv_limited == 0 and self._iv_successes > 0 and busy:
            if self._in_slow_start:
                new = self._rps * 2.0
            elif self._rps < self._w_max:
                # Below the rate that last met a 429: approach it in constant steps.
                new = min(self._w_max, self._rps + self.increase * self._anchor)
            else:
                # Above it, nothing is known: probe, faster with every clean interval.
                self._clean_streak += 1
                step = self.increase * self._anchor * min(self._clean_streak, _MAX_ACCELERATION)
                new = self._rps + step
            new = min(new, self._ceiling)
            if new > self._rps:
                self._increases += 1
                self._set_rps(new, now)
        elif self._iv_limited:
            self._clean_streak = 0
        self._iv_grants = 0.0
        self._iv_successes = 0
        self._iv_limited = 0
        self._interval_start = now
        self._interval_end = now + self.interval

    # --- feedback -----------------------------------------------------------------------------
    def on_success(self, count: int = 1) -> None:
        """``count`` calls succeeded (not rate limited)."""
        now = self._now()
        with self._lock:
            self._roll(now)
            self._iv_successes += count
            self._successes += count
            recent = self._recent
            for _ in range(count):
                recent.append(now)
            if len(recent) > 4096:
                recent.popleft()

    def on_rate_limited(self, retry_after: float | None = None) -> None:
        """A call was answered 429; ``retry_after`` (seconds) is the server's hint, if any."""
        now = self._now()
        with self._lock:
            self._roll(now)
            self._limited += 1
            self._iv_limited += 1
            self._clean_streak = 0
            if retry_after is not None and retry_after > 0 and math.isfinite(retry_after):
                self._block(now + retry_after)
            if now < self._hold_until:
                return
            self._in_slow_start = False
            accepted = self._accepted(now)
            # Decrease multiplicatively, and straight to what the upstream accepted when that is
            # lower (a sharp drop of the real limit), but never below half in one step.
            new = max(min(self._rps * self.backoff_ratio, accepted), self._rps * 0.5)
            self._w_max = self._rps
            self._anchor = max(new, self.min_rate / self.period)
            self._decreases += 1
            self._hold_until = now + self.interval
            self._set_rps(new, now)

    def _accepted(self, now: float) -> float:
        """Successes per second the upstream accepted lately. Lock held.

        Counted over the last ``interval``, or longer when the current rate would put fewer than
        ``_ACCEPTED_SAMPLES`` successes in it (at most ``_ACCEPTED_INTERVALS`` intervals, and not
        before the limiter was built): a one-second count of a few events is mostly noise, and
        taken as the upstream's capacity it cut the rate to half at random.
        """
        span = min(
            max(self.interval, _ACCEPTED_SAMPLES / self._rps),
            _ACCEPTED_INTERVALS * self.interval,
        )
        recent = self._recent
        while recent and recent[0] <= now - span:
            recent.popleft()
        return len(recent) / max(min(span, now - self._created), self.interval)

    def _block(self, until: float) -> None:
        if until > self._blocked_until:
            self._blocked_until = until
        # Pace from the end of the block: no burst of queued grants when it lifts.
        if self._tat < until:
            self._tat = until

    def observe(
        self,
        response_or_headers: httpx2.Response
        | httpx2.Headers
        | httpx.Response
        | httpx.Headers
        | Mapping[str, str],
        status: int | None = None,
    ) -> None:
        """Learn from an upstream answer: its rate-limit headers and its status.

        ``status`` defaults to the response's; 429 counts as rate limited (with its
        ``retry-after``), 2xx/3xx as success, other statuses only contribute their headers.
        """
        headers: httpx2.Headers | httpx.Headers
        if _is_http_response(response_or_headers):  # httpx2's or httpx's
            response = cast("httpx2.Response", response_or_headers)
            headers = response.headers
            if status is None:
                status = response.status_code
        elif _is_http_headers(response_or_headers):
            headers = cast("httpx2.Headers", response_or_headers)
        else:
            headers = httpx2.Headers(cast("Mapping[str, str]", response_or_headers))
        self.observe_limits(
            getattr(parse_rate_limit_headers(headers), self.unit),
            status=status,
            retry_after=retry_after_seconds(headers) if status == 429 else None,
        )

    def observe_limits(
        self, info: LimitInfo | None, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        """:meth:`observe` with headers already parsed (what the client calls)."""
        if status == 429:
            self.on_rate_limited(retry_after)
        elif status is not None and status < 400:
            self.on_success()
        if info is None:
            return
        now = self._now()
        with self._lock:
            if info.limit is not None and info.limit > 0:
                target = info.limit / self.header_period * self.headroom
                self._ceiling = target
                self._in_slow_start = False
                moves = self._rps > target or now >= self._hold_until
                if moves and abs(target - self._rps) > _EPS:
                    self._header_updates += 1
                    self._anchor = target
                    self._set_rps(target, now)
            if info.remaining is not None and info.remaining < 1:
                step = info.unit_interval
                if (step is None or step <= 0) and info.limit:
                    step = self.header_period / info.limit
                if step is not None and step > 0:
                    self._block(now + min(step, self.header_period))

    # --- admission ------------------------------------------------------------------------------
    def _earliest(self, now: float, count: float) -> float:
        tolerance = (self.burst - count) / self._rps if self.burst > count else 0.0
        return max(now, self._blocked_until, self._tat - tolerance)

    def _commit(self, at: float, count: float) -> None:
        self._tat = max(self._tat, at) + count / self._rps
        self._counters.admitted += 1
        self._counters.admitted_units += count
        self._iv_grants += count

    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Admit ``count`` units now if the current estimate allows; never waits."""
        n = check_count(count, f"{self.name}.try_acquire")
        now = self._now()
        with self._lock:
            self._roll(now)
            at = self._earliest(now, n)
            if at <= now + _EPS and not self._waiters:
                self._commit(now, n)
                return RateLimitResult((True, self._remaining(now), 0.0, self._tat))
            self._counters.rejected += 1
            return RateLimitResult((False, 0.0, max(0.0, at - now), self._tat))

    def _remaining(self, now: float) -> float:
        slack = now - (self._tat - self.burst / self._rps)
        return max(0.0, min(self.burst, slack * self._rps))

    def remaining(self, key: str = "default") -> float:
        """Units that could be admitted right now (0.0 while others wait or a block holds)."""
        now = self._now()
        with self._lock:
            if self._waiters or self._blocked_until > now:
                return 0.0
            return self._remaining(now)

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        pair = self._async_lock
        if pair is None or pair[0] is not loop:
            pair = self._async_lock = (loop, asyncio.Lock())
        return pair[1]

    def _enter(
        self, key: str, count: float, timeout: float | None, where: str
    ) -> Grant | tuple[float, float]:
        """Admit at once (a Grant) or join the queue (units, since when); raises when the
        expected wait exceeds ``timeout``."""
        n = check_count(count, f"{self.name}.{where}")
        now = self._now()
        with self._lock:
            self._roll(now)
            if not self._waiters and self._earliest(now, n) <= now + _EPS:
                self._commit(now, n)
                self._counters.waits[0] += 1
                return Grant((key, n, 0.0, now, self))
            expected = self._earliest(now, n) - now + self._waiters * n / self._rps
            if timeout is not None and expected > timeout + _EPS:
                self._counters.rejected += 1
                raise RateLimitError(
                    f"{self.name}: {n:g} units would wait about {expected:.3g} s, more than "
                    f"timeout={timeout:g} s",
                    code="timeout",
                    details={"count": n, "wait": expected},
                    retry_after=expected,
                )
            self._waiters += 1
            return n, now

    def _waiting(self, key: str, queued: tuple[float, float]) -> Generator[Nap, bool, Grant]:
        """A queued caller at the head: sleeps until the rate then current admits it."""
        n, start = queued
        while True:
            now = self._now()
            with self._lock:
                self._roll(now)
                at = self._earliest(now, n)
                if at <= now + _EPS:
                    self._commit(now, n)
                    self._counters.waited(now - start)
                    return Grant((key, n, now - start, now, self))
            yield Nap(self.clock, at, at - now)

    def _leave(self) -> None:
        with self._lock:
            self._waiters -= 1

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Wait until ``count`` units are admitted; the :class:`Grant` says how long it took.

        Waiters are served in arrival order, each at the rate current when its turn comes. When
        the expected wait exceeds ``timeout`` seconds, raises
        :class:`~flashkit.errors.RateLimitError` at once (``retry_after`` = the expected wait).
        """
        queued = self._enter(key, count, timeout, "acquire")
        if isinstance(queued, Grant):
            return queued
        try:
            async with self._loop_lock():
                return await run_async(self._waiting(key, queued), nap_async)
        finally:
            self._leave()

    def acquire_sync(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Sync twin of :meth:`acquire` (blocks the calling thread; threads are not queued in
        order among themselves)."""
        queued = self._enter(key, count, timeout, "acquire_sync")
        if isinstance(queued, Grant):
            return queued
        try:
            return run_sync(self._waiting(key, queued), nap_sync)
        finally:
            self._leave()

    def adjust_sync(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float:
        """Reconcile an estimated cost with the actual one: shifts the pacing schedule by the
        difference. Returns units charged (> 0) or refunded (< 0). ``target`` is the
        :class:`Grant` or a key with ``estimated_count=`` (a pacer has one schedule: when the
        grant was admitted does not matter)."""
        actual = check_actual(actual_count, f"{self.name}.adjust")
        _, estimate, _ = settlement(self, target, estimated_count, f"{self.name}.adjust")
        delta = actual - estimate
        now = self._now()
        with self._lock:
            shifted = self._tat + delta / self._rps
            # A refund never moves the schedule into the past beyond one burst.
            self._tat = max(shifted, now - self.burst / self._rps) if delta < 0 else shifted
            if delta < 0:
                self._counters.refunded -= delta
            else:
                self._counters.admitted_units += delta
        return delta

    @property
    def learning(self) -> AdaptiveStats:
        """An :class:`AdaptiveStats` snapshot: the estimate and the feedback behind it."""
        with self._lock:
            counters = self._counters
            return AdaptiveStats(
                rate=self.rate,
                admitted=counters.admitted,
                admitted_units=counters.admitted_units,
                rejected=counters.rejected,
                successes=self._successes,
                rate_limited=self._limited,
                increases=self._increases,
                decreases=self._decreases,
                header_updates=self._header_updates,
                blocked_until=self._blocked_until,
            )

    def __repr__(self) -> str:
        return (
            f"AdaptiveRateLimiter(rate={self.rate:.4g}, period={self.period:g}, "
            f"unit={self.unit!r}, name={self.name!r})"
        )
