"""One limit split over independent shards, each with its own lock (power of two choices)."""

from __future__ import annotations

import random
import threading

from flashkit.clock import Clock, default_clock
from flashkit.errors import ValidationError
from flashkit.ratelimit._base import (
    EPS,
    Algorithm,
    Grant,
    LimiterBase,
    LimiterStats,
    RateLimitResult,
    check_count,
    foreign_grant,
    need_estimate,
    sum_stats,
)
from flashkit.ratelimit._local import RateLimiter, Reservation

__all__ = ["ShardedRateLimiter"]


# --- sharding -------------------------------------------------------------------------------
class ShardedRateLimiter(LimiterBase):
    """One limit split over ``shards`` independent limiters, each with its own lock.

    Shard rates sum exactly to ``rate`` and none is zero (``rate < shards`` is refused), so the
    union stays within ``rate`` per ``period`` for every key. Each request picks two shards at
    random and takes the one with more room (power of two choices), so every key spreads over
    all shards.

    When sharding pays (free-threaded builds) and when it does not (under the GIL):
    ``docs/design/ratelimit.md``.
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
            RateLimiter(
                r,
                period,
                algorithm=algorithm,
                burst=shard_burst,
                clock=self.clock,
                name=f"{name}[{i}]",
            )
            for i, r in enumerate(self.rates)
        ]
        self.rate = rate
        self.period = period
        self.algorithm = algorithm
        # The smallest share: a request must fit whichever two shards it happens to draw.
        self.max_count = min(s.max_count for s in self.shards)
        self._rng = rng if rng is not None else random.Random()
        # First-shard refusals followed by a try on the second: not calls refused.
        self._second_tries = 0
        self._tries_lock = threading.Lock()
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
        n = check_count(count, f"{self.name}.{where}")
        if n > self.max_count + EPS:
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
        with self._tries_lock:
            self._second_tries += 1
        other = second.try_acquire(key, count)
        if other.allowed:
            return other
        return result if result.retry_after <= other.retry_after else other

    def reserve(
        self, key: str = "default", count: float = 1, *, max_wait: float = 300.0
    ) -> Reservation:
        """Reserve on the roomier of two random shards."""
        self._check(count, "reserve")
        return self._ordered_pair(key)[0].reserve(key, count, max_wait=max_wait)

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Wait on the roomier of two random shards (see :meth:`RateLimiter.acquire`)."""
        self._check(count, "acquire")
        return await self._ordered_pair(key)[0].acquire(key, count, timeout=timeout)

    def acquire_sync(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Sync twin of :meth:`acquire`."""
        self._check(count, "acquire_sync")
        return self._ordered_pair(key)[0].acquire_sync(key, count, timeout=timeout)

    def adjust_sync(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float:
        """Settle an estimate on the shard that admitted it (a :class:`Grant` knows which). With
        a key, a refund goes to the fullest shard and a charge to the roomiest."""
        where = f"{self.name}.adjust"
        if isinstance(target, Grant):
            if not any(target.limiter is shard for shard in self.shards):
                raise foreign_grant(where, target)
            shard: RateLimiter = target.limiter
        else:
            need_estimate(where, target, estimated_count)
            refund = actual_count < (estimated_count or 0.0)  # (need_estimate: not None)
            rooms = sorted(self.shards, key=lambda s: s.remaining(target), reverse=not refund)
            shard = rooms[0]
        return shard.adjust_sync(target, actual_count, estimated_count=estimated_count)

    def remaining(self, key: str = "default") -> float:
        """Units the roomiest shard could admit for ``key`` right now (one request draws two)."""
        return max(shard.remaining(key) for shard in self.shards)

    @property
    def stats(self) -> LimiterStats:
        """The shards' counters added up (a call refused by one shard and tried on another counts
        once)."""
        total = sum_stats([s.stats for s in self.shards])
        with self._tries_lock:
            return total._replace(rejected=total.rejected - self._second_tries)
