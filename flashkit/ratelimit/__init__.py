"""Rate limiters, one :class:`Limiter` protocol for all of them.

- :class:`RateLimiter`: exact in-process limits (sliding window, token bucket, GCRA), with
  :class:`Reservation` s and refunds;
- :class:`MultiLimit`: several limits decided atomically (requests and tokens);
- :class:`ShardedRateLimiter`: one limit over shards with their own locks;
- :class:`AdaptiveRateLimiter`: a pacer that learns the upstream's limit;
- :class:`RedisRateLimiter`: one limit shared by many processes (needs the ``redis`` extra).

Every limiter: ``try_acquire`` (never waits), ``await acquire`` / ``acquire_sync`` (a
:class:`Grant`), ``await adjust`` / ``adjust_sync`` (settle an estimate with the actual units),
``remaining``, ``observe_limits`` and ``stats``. Times are seconds on the limiter's clock.
"""

from flashkit.ratelimit._adaptive import AdaptiveRateLimiter, AdaptiveStats
from flashkit.ratelimit._base import Algorithm, Grant, Limiter, LimiterStats, RateLimitResult
from flashkit.ratelimit._local import RateLimiter, Reservation
from flashkit.ratelimit._multi import MultiLimit, MultiReservation
from flashkit.ratelimit._redis import RedisRateLimiter
from flashkit.ratelimit._sharded import ShardedRateLimiter

__all__ = [
    "AdaptiveRateLimiter",
    "AdaptiveStats",
    "Algorithm",
    "Grant",
    "Limiter",
    "LimiterStats",
    "MultiLimit",
    "MultiReservation",
    "RateLimiter",
    "RateLimitResult",
    "RedisRateLimiter",
    "Reservation",
    "ShardedRateLimiter",
]
