"""A rate limit shared by many processes through Redis: :class:`RedisRateLimiter`, ``rate`` units
per ``period`` seconds per key, decided by one atomic Lua script per round trip on the server's
clock. The design (the protocol with the server, time, storage, leases, confirm on wake, outages
and restarts, connections) is argued in ``docs/design/redis-ratelimit.md``.
"""

from __future__ import annotations

from typing import Any

from flashkit._flow import run_async, run_sync
from flashkit.clock import Clock, default_clock
from flashkit.ratelimit._base import (
    Algorithm,
    Grant,
    LimiterBase,
    RateLimitResult,
    settlement,
    units_for,
)
from flashkit.ratelimit._redis_fallback import Outage
from flashkit.ratelimit._redis_flows import Flows
from flashkit.ratelimit._redis_leases import Leases
from flashkit.ratelimit._redis_line import Lines
from flashkit.ratelimit._redis_protocol import (
    Decision,
    Eval,
    Flow,
    Keys,
    Op,
    Session,
    Shared,
    constants,
    scripts,
)
from flashkit.ratelimit._redis_settings import OnUnavailable, Settings, parse

__all__ = ["RedisRateLimiter"]


class RedisRateLimiter(LimiterBase):
    """``rate`` units per ``period`` seconds per key, shared through Redis by every process.

    >>> rpm = RedisRateLimiter("redis://redis:6379/0", 60, 60.0)  # 60 a minute, all processes
    >>> rpm.try_acquire()                           # RateLimitResult: never waits (1 round trip)
    >>> grant = await rpm.acquire(timeout=30.0)     # waits its turn (FIFO), or raises
    >>> grant = await rpm.acquire(timeout=0)        # now, or RateLimitError with retry_after
    >>> tpm = RedisRateLimiter("redis://redis:6379/0", 30_000, 60.0, name="tokens")
    >>> grant = await tpm.acquire(count=2_000)      # a max_tokens estimate
    >>> await tpm.adjust(grant, 1_234)              # refund the rest, from this very grant

    A :class:`~flashkit.ratelimit.Limiter` with the semantics of
    :class:`~flashkit.ratelimit.RateLimiter`: ``sliding_window`` (default, strict: no window
    ``[t, t + period)`` ever holds more than ``rate`` units), ``token_bucket`` and ``gcra``;
    waiters are served first come, first served across processes (a later ``try_acquire``
    never jumps the queue); a ``count`` the limit can never grant raises a non-retryable
    :class:`~flashkit.errors.ValidationError`; cancelling a waiting ``acquire`` gives its
    capacity back. Time is the Redis server's: :attr:`Grant.admitted_at
    <flashkit.ratelimit.Grant.admitted_at>` is the server time the units count at (NaN when
    unknown); ``reset_at`` in results is on this process's ``clock``.

    There is no async ``try_acquire``: ``await acquire(key, count, timeout=0)`` is the
    non-waiting attempt that does not block the event loop (it raises
    :class:`~flashkit.errors.RateLimitError`, ``code="timeout"``, with ``retry_after`` when the
    units cannot be admitted at once). ``remaining(key)`` is what this process can admit without
    a round trip: the unused units of a live lease, else 0.0. ``observe_limits`` does nothing (a
    fixed shared limit does not learn). While Redis does not answer, decisions fail closed
    (:class:`~flashkit.errors.RateLimitError`, ``code="limiter_unavailable"``, retryable) or fall
    back to a local share of the limit. Needs Redis >= 6.2 and redis-py >= 5.

    Args:
        redis_url: ``redis://[user:password@]host:port/db``, ``rediss://…`` or ``unix://…``
            (credentials never appear in errors, logs or ``repr``).
        rate, period, algorithm, burst: as for :class:`~flashkit.ratelimit.RateLimiter`.
        key_prefix: prefix of every Redis key (``"flashkit:rl"``).
        name: the limiter's name in keys, errors and logs; processes sharing a limit use the same
            ``key_prefix``, ``name`` and settings.
        on_unavailable: ``"fail_closed"`` (raise while Redis is unreachable) or
            ``"local_fallback"`` (admit on a local limiter at ``rate / expected_processes``).
        expected_processes: how many processes share the limit (sizes the fallback share).
        fallback_hold: seconds to refuse after an outage starts before admitting locally
            (default ``period + lease_duration``).
        probe_interval: at most one attempt to reach Redis per this many seconds while it is
            unreachable (1.0).
        lease: units one round trip may take for this process (sliding window only; default
            None: one round trip per decision).
        lease_duration: seconds a lease may be used after its request was sent (0.1); also the
            grace a grant may be used after the last contact with Redis.
        socket_timeout: seconds to wait for Redis (connect and reply) before calling it
            unavailable (0.5).
        clock: the local :class:`~flashkit.clock.Clock` for sleeping, leases and the fallback.
    """

    def __init__(
        self,
        redis_url: str,
        rate: float,
        period: float,
        *,
        algorithm: Algorithm = "sliding_window",
        burst: float | None = None,
        key_prefix: str = "flashkit:rl",
        name: str = "redis",
        on_unavailable: OnUnavailable = "fail_closed",
        expected_processes: int = 1,
        fallback_hold: float | None = None,
        probe_interval: float = 1.0,
        lease: float | None = None,
        lease_duration: float = 0.1,
        socket_timeout: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        settings = parse(
            redis_url,
            rate,
            period,
            algorithm=algorithm,
            burst=burst,
            key_prefix=key_prefix,
            name=name,
            on_unavailable=on_unavailable,
            expected_processes=expected_processes,
            fallback_hold=fallback_hold,
            probe_interval=probe_interval,
            lease=lease,
            lease_duration=lease_duration,
            socket_timeout=socket_timeout,
        )
        self.settings: Settings = settings  # every setting, checked (and what follows from them)
        self.name = settings.name
        self.url = settings.url  # without credentials
        self.rate = settings.rate
        self.period = settings.period
        self.algorithm: Algorithm = settings.algorithm
        self.burst = settings.burst
        self.max_count = settings.max_count
        self.lease = settings.lease
        self.clock: Clock = clock if clock is not None else default_clock()
        self._assemble(settings, redis_url)

    def _assemble(self, settings: Settings, redis_url: str) -> None:
        """The limiter's parts, sharing one lock: what it knows of the server (session), its
        connections (lines, the only holder of the URL's credentials), the outage and fallback
        state, its leases, and the flows over them."""
        super().__init__()
        self._session = Session(constants(settings))
        self._lines = Lines(redis_url, settings.socket_timeout, scripts(settings.algorithm))
        keys = Keys(settings.key_prefix, settings.name, settings.algorithm)
        shared = Shared(settings, self.clock, self._session, keys, self._counters, self._lock)
        self._outage = Outage(shared)
        self._leases = Leases(self._lock)
        self._flows = Flows(shared, self._outage, self._leases)

    def __repr__(self) -> str:
        burst = f", burst={self.burst:g}" if self.burst is not None else ""
        lease = f", lease={self.lease:g}" if self.lease is not None else ""
        return (
            f"RedisRateLimiter({self.url!r}, {self.rate:g}, {self.period:g}, "
            f"algorithm={self.algorithm!r}{burst}{lease}, name={self.name!r}, "
            f"on_unavailable={self.settings.on_unavailable!r})"
        )

    # --- the Limiter protocol -------------------------------------------------------------------
    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Admit ``count`` units for ``key`` now if the shared limit allows; never waits (one
        round trip, none when a lease covers it). Refuses while earlier callers are queued."""
        n = self._units(count, "try_acquire")
        return self._decide_sync(key, n, None, False).result()

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Wait until ``count`` units are admitted for ``key``; the :class:`Grant` says how long
        it waited and the server time the units count at.

        Waiters are served in arrival order across processes. When the wait would exceed
        ``timeout`` seconds (``0``: any wait), raises :class:`~flashkit.errors.RateLimitError`
        (``code="timeout"``) at once, with ``retry_after``. If the waiting task is cancelled,
        its capacity is given back.
        """
        n = self._units(count, "acquire")
        decision = await self._decide_async(key, n, timeout, True)
        return Grant((key, n, decision.waited, decision.server_time, self))

    def acquire_sync(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        """Blocking twin of :meth:`acquire`."""
        n = self._units(count, "acquire_sync")
        decision = self._decide_sync(key, n, timeout, True)
        return Grant((key, n, decision.waited, decision.server_time, self))

    async def adjust(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float:
        """Reconcile an estimated cost with the actual one; returns the units charged (> 0) or
        refunded (< 0): ``actual_count`` minus the estimate.

        ``target``: the :class:`Grant` ``acquire`` returned (its count is the estimate, its
        ``admitted_at`` when it counts), or a key with ``estimated_count=``. A refund comes
        from the newest settled units admitted no later than the grant — usually the grant
        itself — or, with a key, from the key's oldest units. Refunds need
        ``sliding_window`` (a bucket's schedule was shaped by the units: they are forfeited,
        counted in ``stats.forfeited_units``); charges apply to every algorithm. Best
        effort: when Redis does not answer nothing changes (a refund is forfeited). Queued
        waiters are not pulled forward.
        """
        flow = self._settle(target, actual_count, estimated_count)
        return await run_async(flow, self._perform_async)

    def adjust_sync(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float:
        """Blocking twin of :meth:`adjust`."""
        flow = self._settle(target, actual_count, estimated_count)
        return run_sync(flow, self._perform_sync)

    def remaining(self, key: str = "default") -> float:
        """Units this process can admit for ``key`` right now without a round trip: the unused
        units of a live lease, else 0.0 (what the shared limit has left is only known there)."""
        return self._leases.unused(key, self.clock.now())

    # --- beyond the protocol --------------------------------------------------------------------
    @property
    def round_trips(self) -> int:
        """Script calls this process has sent (about, under threads)."""
        return self._lines.round_trips

    @property
    def available(self) -> bool:
        """False while this process considers Redis unreachable (failing closed or falling back)."""
        return not self._outage.down

    def close(self) -> None:
        """Give back unused lease units and close the sync connections (best effort)."""
        if self._lines.sync is not None:
            try:
                run_sync(self._flows.give_back_leases(), self._perform_sync)
            finally:
                self._lines.close_sync()

    async def aclose(self) -> None:
        """Give back unused lease units and close all connections. (The async connections are
        also closed when their event loop shuts down, e.g. at the end of ``asyncio.run``.)"""
        lines = self._lines
        if lines.async_ is not None:
            try:
                if lines.on_this_loop():
                    await run_async(self._flows.give_back_leases(), self._perform_async)
            finally:
                await lines.close_async()
        self.close()

    def __enter__(self) -> RedisRateLimiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- running the flows ----------------------------------------------------------------------
    def _units(self, count: float, where: str) -> float:
        return units_for(self, count, f"{self.name}.{where}")

    def _decide_sync(self, key: str, n: float, timeout: float | None, wait_ok: bool) -> Decision:
        """One decision for ``n`` checked units, with where and when it was made (its
        ``source``, ``server_time``): ``wait_ok`` for acquire, else try_acquire."""
        return run_sync(self._flows.decide(key, n, timeout, wait_ok), self._perform_sync)

    async def _decide_async(
        self, key: str, n: float, timeout: float | None, wait_ok: bool
    ) -> Decision:
        """Async twin of :meth:`_decide_sync`."""
        return await run_async(self._flows.decide(key, n, timeout, wait_ok), self._perform_async)

    def _settle(
        self, target: Grant | str, actual_count: float, estimated_count: float | None
    ) -> Flow[float]:
        where = f"{self.name}.adjust"
        key, estimate, at = settlement(self, target, estimated_count, where)
        return self._flows.adjust(key, actual_count, estimate, at)

    def _perform_sync(self, op: Op) -> Any:
        if isinstance(op, Eval):
            return self._lines.eval_sync(op)
        self.clock.sleep_sync(op.seconds)
        return None

    async def _perform_async(self, op: Op) -> Any:
        if isinstance(op, Eval):
            return await self._lines.eval_async(op)
        await self.clock.sleep(op.seconds)
        return None
