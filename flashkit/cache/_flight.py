"""Single flight for :class:`~flashkit.cache.CacheService`: ``get_or_compute``'s miss logic,
written once as generators (flows) that yield what they need done, and the sync and async drivers
that perform it (as the Redis rate limiter does).

Per process, concurrent callers of one key join one :class:`_Flight` (tasks await its future,
threads its event); over a shared store the leader also holds ``store.lock(key)`` while other
processes poll the store on the cache clock. A hit near expiry may refresh early (XFetch).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections.abc import Callable, Generator
from typing import Any, Final, NamedTuple, TypeVar

from flashkit._flow import run_async, run_sync
from flashkit.cache._base import Store
from flashkit.clock import Clock

__all__: list[str] = []

T = TypeVar("T")

# -ln(U) for U = 1 - random() in (0, 1] is at most 53·ln 2: no XFetch draw can fire earlier than
# delta·beta·_XFETCH_REACH before expiry, so hits before that skip the draw (exactly, not roughly).
_XFETCH_REACH: Final = 53 * math.log(2) + 1e-9
_POLL_FIRST: Final = 0.01  # s: first pause while another process holds the key's lock
_POLL_MAX: Final = 0.2  # s: the pause doubles up to this


class _Entry:
    """What an in-process store keeps: the value itself, its expiry and compute time (s)."""

    __slots__ = ("delta", "expires", "value")

    def __init__(self, value: Any, expires: float, delta: float) -> None:
        self.value = value
        self.expires = expires
        self.delta = delta


# --- what a flow asks its driver to do ----------------------------------------------------------
class _Store(NamedTuple):
    method: str  # of the store: "get", "set", "lock", "unlock" (the driver adds "_sync")
    args: tuple[Any, ...]


class _Sleep(NamedTuple):
    seconds: float


class _Compute(NamedTuple):
    compute: Callable[[], Any]


class _Join(NamedTuple):
    """Join the key's flight in this process: (True, flight) to lead it, (False, outcome) after
    waiting for it, (False, None) when ``wait`` is False and someone leads."""

    key: str
    wait: bool


_Op = _Store | _Sleep | _Compute | _Join
_Flow = Generator[_Op, Any, T]
_OK, _FAILED = "ok", "failed"
_ABANDONED: Final = ("abandoned", None)  # the leader was cancelled: followers try again
_NO_LOCK: Final = ""  # the store could not lock: compute without the fleet-wide lock


class _Flight:
    """One computation of a key in this process, which concurrent callers wait for: tasks on
    ``future`` (shielded), threads on ``done``."""

    __slots__ = ("done", "flights", "future", "key", "outcome", "waiters")

    def __init__(self, flights: dict[Any, _Flight], key: Any, future: asyncio.Future[Any] | None):
        self.flights, self.key, self.future = flights, key, future
        self.done = threading.Event()
        self.outcome: tuple[str, Any] = _ABANDONED
        self.waiters = 0

    def land(self, outcome: tuple[str, Any]) -> None:
        if self.flights.get(self.key) is self:
            del self.flights[self.key]
        self.outcome = outcome
        self.done.set()
        if self.future is not None and not self.future.done():
            self.future.set_result(outcome)


# --- the miss flows and their drivers -----------------------------------------------------------
class _SingleFlight:
    """``get_or_compute``'s flows and the drivers that run any flow; mixed into
    :class:`~flashkit.cache.CacheService`, which provides the attributes and methods below."""

    store: Store
    clock: Clock
    beta: float
    lock_ttl: float
    single_flight: bool
    early_refresh: bool
    _rng: random.Random
    _reach: float
    _shared: bool
    _guard: threading.Lock
    _flights: dict[Any, _Flight]
    _errors: int
    _now: Callable[[], float]

    # CacheService's own:
    def _lookup(self, full: str, *, count: bool = True) -> _Flow[_Entry | None]:
        raise NotImplementedError

    def _compute_store(
        self, full: str, compute: Callable[[], Any], ttl: float | None
    ) -> _Flow[Any]:
        raise NotImplementedError

    def _write_failed(self, full: str, error: Exception) -> None:
        raise NotImplementedError

    def _log_once(self, full: str, message: str) -> None:
        raise NotImplementedError

    # --- drivers: perform what a flow asks, send back the answer or throw the error in ---------
    def _run_sync(self, flow: _Flow[T]) -> T:
        return run_sync(flow, self._perform_sync)

    async def _run_async(self, flow: _Flow[T]) -> T:
        return await run_async(flow, self._perform_async)

    def _perform_sync(self, op: Any) -> Any:
        if isinstance(op, _Store):
            return getattr(self.store, op.method + "_sync")(*op.args)
        if isinstance(op, _Compute):
            return op.compute()
        if isinstance(op, _Sleep):
            return self.clock.sleep_sync(op.seconds)
        return self._join_sync(op)

    async def _perform_async(self, op: Any) -> Any:
        if isinstance(op, _Store):
            return await getattr(self.store, op.method)(*op.args)
        if isinstance(op, _Compute):
            return await op.compute()
        if isinstance(op, _Sleep):
            return await self.clock.sleep(op.seconds)
        return await self._join_async(op)

    # --- get_or_compute -----------------------------------------------------------------------
    def _get_or_compute(
        self, full: str, compute: Callable[[], Any], ttl: float | None
    ) -> _Flow[Any]:
        entry = yield from self._lookup(full)
        if entry is not None and not self._refresh_due(entry):
            return entry.value
        return (yield from self._miss(full, compute, ttl, entry))

    def _refresh_due(self, entry: _Entry) -> bool:
        """XFetch: ``now - delta·beta·ln(U) >= expires``, U uniform in (0, 1]."""
        if not self.early_refresh:
            return False
        now = self._now()
        if now < entry.expires - entry.delta * self._reach:
            return False  # too early for any draw to fire
        return now - entry.delta * self.beta * math.log(1.0 - self._rng.random()) >= entry.expires

    def _miss(
        self, full: str, compute: Callable[[], Any], ttl: float | None, stale: _Entry | None
    ) -> _Flow[Any]:
        """A miss (``stale`` None) or an early refresh of ``stale``, single-flighted if on."""
        if not self.single_flight:
            return (yield from self._compute_store(full, compute, ttl))
        while True:
            lead, got = yield _Join(full, wait=stale is None)
            if not lead:
                if got is None and stale is not None:  # refreshing already: serve the old value
                    return stale.value
                status, payload = got
                if status == _OK:
                    return payload
                if status == _FAILED:
                    raise payload
                continue  # the leader was cancelled: try again
            outcome: tuple[str, Any] = _ABANDONED
            try:
                value = yield from self._fleet(full, compute, ttl, stale)
                outcome = (_OK, value)
                return value
            except Exception as error:
                outcome = (_FAILED, error)
                raise
            finally:
                got.land(outcome)

    def _fleet(
        self, full: str, compute: Callable[[], Any], ttl: float | None, stale: _Entry | None
    ) -> _Flow[Any]:
        """Lead this process's flight; over a shared store, hold the fleet-wide lock too."""
        if not self._shared:
            return (yield from self._compute_store(full, compute, ttl))
        token = yield from self._try_lock(full)
        if token is None:
            if stale is not None:  # another process refreshes: serve the old value
                return stale.value
            waited = yield from self._await_holder(full)
            if isinstance(waited, _Entry):
                return waited.value
            token = waited if waited is not None else _NO_LOCK
        try:
            if token and stale is None:  # it may have been written just before we locked
                entry = yield from self._lookup(full, count=False)
                if entry is not None:
                    return entry.value
            return (yield from self._compute_store(full, compute, ttl))
        finally:
            if token:
                try:
                    yield _Store("unlock", (full, token))
                except Exception as error:
                    self._write_failed(full, error)

    def _await_holder(self, full: str) -> _Flow[_Entry | str | None]:
        """Poll for the value another process computes: the entry, or the lock if it is freed
        first (a token), or None after ``lock_ttl`` seconds."""
        deadline = self._now() + self.lock_ttl
        pause = _POLL_FIRST
        while (left := deadline - self._now()) > 0:
            yield _Sleep(min(pause, left))
            pause = min(pause * 2.0, _POLL_MAX)
            entry = yield from self._lookup(full, count=False)
            if entry is not None:
                return entry
            token = yield from self._try_lock(full)
            if token is not None:
                return token
        self._log_once(full, f"no value from the lock holder after {self.lock_ttl:g} s")
        return None

    def _try_lock(self, full: str) -> _Flow[str | None]:
        try:
            token: str | None = yield _Store("lock", (full, self.lock_ttl))
        except Exception as error:
            self._errors += 1
            self._log_once(full, f"store lock failed ({type(error).__name__}: {error})")
            return _NO_LOCK
        return token

    def _join(self, key: Any, wait: bool, loop: Any) -> tuple[bool, _Flight | None]:
        with self._guard:
            flight = self._flights.get(key)
            if flight is None:
                future = loop.create_future() if loop is not None else None
                flight = self._flights[key] = _Flight(self._flights, key, future)
                return True, flight
            if wait:
                flight.waiters += 1
                return False, flight
            return False, None

    async def _join_async(self, op: _Join) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        lead, flight = self._join((loop, op.key), op.wait, loop)
        if lead or flight is None or flight.future is None:
            return lead, flight
        return False, await asyncio.shield(flight.future)

    def _join_sync(self, op: _Join) -> tuple[bool, Any]:
        lead, flight = self._join(op.key, op.wait, None)
        if lead or flight is None:
            return lead, flight
        flight.done.wait()
        return False, flight.outcome
