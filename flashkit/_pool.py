"""Watching a SQLAlchemy connection pool: waiters, wait and hold times, efficiency, health.

>>> monitor = PoolMonitor(engine)             # or pool_monitor(engine): the one attached
>>> monitor.status().waiting                  # callers blocked for a connection right now
>>> monitor.histograms().wait.quantile(0.95)  # seconds from asking to getting a connection
>>> monitor.health_check().ok                 # SELECT 1 on a new checkout; never raises

**Waiting** is measured, not derived (``size() - checkedout()`` counts *idle* connections).
SQLAlchemy has no "checkout started" event, so the monitor replaces ``connect`` on the engine's
pool *instance* (no class, no other pool) with a wrapper that counts the caller in (an atomic
deque append) before delegating and out when it returns or raises: exact with any number of
threads.
Every engine checkout (``engine.connect()``, sessions, ``raw_connection()``) goes through it;
``recreate`` is wrapped too, so the pool ``engine.dispose()`` builds is watched. A caller waits
while inside ``pool.connect()``: queued for a connection, or having one opened or pre-pinged.

**Times** (seconds, from ``clock``): *wait*, from calling ``pool.connect()`` to its return with a
connection (timeouts and errors are counted, not timed); *hold*, from ``checkout`` to ``checkin``;
*age* of the DBAPI connection at checkout (since its ``connect`` event; SQLAlchemy's wall-clock
start for connections older than the monitor).

**Efficiency** (a success metric, target >= 95 %: ``docs/origins.md``): the share of
timed checkouts served *at once*: waiting less than ``at_once`` (default 0.001 s) with no new
DBAPI connection opened for them (first, overflow, recycle, reconnect after a failed pre-ping).
None before the first checkout.

**Metrics** (attribute ``db.pool.name``), ``flashkit.db.pool.`` + observable gauges ``size``,
``checked_in``, ``checked_out``, ``overflow``, ``waiting``, ``utilisation``, ``efficiency``;
observable counters ``checkouts``, ``checkins``, ``connects``, ``invalidations``, ``timeouts``
(all read :meth:`PoolMonitor.status` at collection); histograms ``wait_seconds`` and
``hold_seconds``, recorded only while a meter provider is configured (else skipped after two
lookups).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import sqlalchemy as sa
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.metrics import _internal as _otel_api
from sqlalchemy.engine import Engine
from sqlalchemy.pool import AssertionPool, ConnectionPoolEntry, Pool, QueuePool, StaticPool

from flashkit._urls import describe_url
from flashkit.clock import Clock, default_clock
from flashkit.errors import redact
from flashkit.telemetry import current_telemetry

__all__ = [
    "AGE_BOUNDS",
    "pool_monitor",
    "PoolHealth",
    "PoolHistogram",
    "PoolHistograms",
    "PoolMonitor",
    "PoolStatus",
    "WAIT_BOUNDS",
]

WAIT_BOUNDS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Bucket upper bounds (seconds) of the wait and hold histograms."""
AGE_BOUNDS: Final = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)
"""Bucket upper bounds (seconds) of the connection-age histogram."""
_COUNTS: Final = (
    "checkouts", "checkins", "connects", "reconnects", "closes", "invalidations",
    "soft_invalidations", "detaches", "timeouts", "errors",
)  # fmt: skip
_Connect = Callable[[], sa.pool.PoolProxiedConnection]
_numbers = itertools.count()


@dataclass(frozen=True)
class PoolHistogram:
    """Values in fixed buckets: ``counts[i]`` holds values in ``(bounds[i-1], bounds[i]]``, the
    last those above ``bounds[-1]`` (OpenTelemetry's layout). Seconds; ``max`` is 0.0 if empty."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float
    max: float

    @property
    def mean(self) -> float | None:
        """The mean value (None when empty)."""
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """An upper estimate of the ``q`` quantile (0..1): the upper bound of its bucket, capped
        at :attr:`max` (None when empty)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile needs 0 <= q <= 1, got {q!r}")
        if not self.count:
            return None
        seen = 0
        for bound, found in zip(self.bounds, self.counts, strict=False):
            seen += found
            if seen and seen >= q * self.count:
                return min(bound, self.max)
        return self.max


@dataclass(frozen=True)
class PoolHistograms:
    """Checkout wait, hold time and connection age at checkout (seconds)."""

    wait: PoolHistogram
    hold: PoolHistogram
    age: PoolHistogram


@dataclass(frozen=True)
class PoolStatus:
    """One pool now; counts are cumulative since the monitor was attached.

    ``QueuePool``: ``size``, ``checked_in``, ``checked_out``, ``overflow`` are its own
    (``overflow`` < 0: connections not opened yet); ``capacity`` (connections out before a caller
    waits) is ``size + max_overflow``, None if overflow is unlimited. ``StaticPool``: size 1, its
    one connection checked out (however many callers share it) or in. Other pools: ``size`` is 1
    (``AssertionPool``, also capacity 1), the per-thread limit (``SingletonThreadPool``) or 0
    (``NullPool``); ``checked_out`` is checkouts - checkins - detaches; ``checked_in`` is the
    connections open beyond those. ``utilisation`` is ``checked_out / capacity``, without a
    capacity ``checked_out / (checked_in + checked_out)``; at most 1.0, 0.0 with none open.
    """

    name: str
    pool: str  # the pool class, e.g. "QueuePool"
    size: int
    checked_in: int
    checked_out: int
    overflow: int
    capacity: int | None
    waiting: int
    utilisation: float
    efficiency: float | None  # see the module docstring
    checkouts: int
    checkins: int
    connects: int
    reconnects: int  # connects replacing an earlier connection of the same pool entry
    closes: int  # pooled DBAPI connections closed (invalidated, recycled, overflow, disposed)
    invalidations: int
    soft_invalidations: int
    detaches: int
    timeouts: int  # checkouts that raised sqlalchemy.exc.TimeoutError
    errors: int  # checkouts that raised anything else


@dataclass(frozen=True)
class PoolHealth:
    """What :meth:`PoolMonitor.health_check` found: how long it took (real seconds) and, when
    not ``ok``, why (password hidden)."""

    ok: bool
    seconds: float
    error: str | None = None


class _Buckets:
    __slots__ = ("bounds", "count", "counts", "max", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = self.max = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def snapshot(self) -> PoolHistogram:
        return PoolHistogram(self.bounds, tuple(self.counts), self.count, self.sum, self.max)


class _Request:
    """One call to ``pool.connect()`` in progress, seen by the events it fires (same thread)."""

    __slots__ = ("age", "checked_out", "new", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.new = self.checked_out = False
        self.age: float | None = None


class _Local(threading.local):
    request: _Request | None = None  # the innermost pool.connect() call of this thread


class PoolMonitor:
    """Watch ``engine``'s connection pool (see the module docstring) until :meth:`close`.

    Args:
        engine: a SQLAlchemy engine, any pool class.
        clock: where times come from (default :func:`~flashkit.clock.default_clock`).
        name: the ``db.pool.name`` metric attribute (default: the URL, password hidden); a
            later monitor with the same name replaces the earlier one in the metrics.
        at_once: the longest wait (seconds) that still counts as served at once (default 1 ms).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        at_once: float = 0.001,
    ) -> None:
        if not at_once >= 0.0:
            raise ValueError(f"at_once must be >= 0 seconds, got {at_once!r}")
        self.engine = engine
        self.name = name or unquote(engine.url.render_as_string(hide_password=True))
        self._now = (clock if clock is not None else default_clock()).now
        self._at_once = at_once
        self._attributes: Final = {"db.pool.name": self.name}
        self._lock = threading.Lock()
        self._local = _Local()
        self._waiters: deque[None] = deque()  # one item per caller inside pool.connect()
        number = next(_numbers)  # this monitor's slots in the pool entries' info dicts
        self._key: Final = ("flashkit.pool", number)
        self._seen_key: Final = ("flashkit.pool.seen", number)
        self._wait, self._hold = _Buckets(WAIT_BOUNDS), _Buckets(WAIT_BOUNDS)
        self._age = _Buckets(AGE_BOUNDS)
        self._efficient = 0
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._closed = False
        self._wrapped: weakref.WeakKeyDictionary[Pool, dict[str, tuple[Any, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._listeners: tuple[tuple[str, Callable[..., None]], ...] = (
            ("connect", self._on_connect),
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("detach", self._counter("detaches")),  # its hold ends unmeasured
            ("close", self._counter("closes")),
            ("invalidate", self._counter("invalidations")),
            ("soft_invalidate", self._counter("soft_invalidations")),
        )
        for event, listener in self._listeners:
            sa.event.listen(engine, event, listener)
        self._wrap(engine.pool)
        _register(self)

    # --- the wrapped pool methods ---------------------------------------------------------
    def _wrap(self, pool: Pool) -> None:
        connect: _Connect = pool.connect
        recreate: Callable[[], Pool] = pool.recreate

        def monitored_connect() -> sa.pool.PoolProxiedConnection:
            return connect() if self._closed else self._request(connect)

        def monitored_recreate() -> Pool:
            new_pool = recreate()
            if not self._closed:
                self._wrap(new_pool)
            return new_pool

        own = vars(pool)
        ours = {"connect": monitored_connect, "recreate": monitored_recreate}
        # All weakly: they refer to the pool, which must stay collectable after a dispose (an
        # earlier monitor's wrapper, replaced here, lives on in ours).
        self._wrapped[pool] = {name: (_weak(own.get(name)), _weak(f)) for name, f in ours.items()}
        own.update(ours)

    def _unwrap(self, pool: Pool) -> None:
        own = vars(pool)
        for name, (before, mine) in self._wrapped.pop(pool, {}).items():
            if mine is None or own.get(name) is not mine():
                continue  # someone wrapped over ours: left in place (ours passes through)
            previous = before() if before is not None else None
            if previous is not None:
                own[name] = previous
            elif before is None:
                del own[name]

    def _request(self, connect: _Connect) -> sa.pool.PoolProxiedConnection:
        local, waiters = self._local, self._waiters
        outer = local.request
        request = local.request = _Request(self._now())
        waiters.append(None)  # deque appends and pops are atomic: no lock for waiting
        try:
            connection = connect()
        except BaseException as error:
            local.request = outer
            waiters.pop()
            failure = "timeouts" if isinstance(error, sa.exc.TimeoutError) else "errors"
            with self._lock:
                self._counts["checkouts"] += request.checked_out  # then a listener failed
                self._counts[failure] += 1
            raise
        local.request = outer
        waiters.pop()
        if request.checked_out:
            wait = self._now() - request.start
            with self._lock:
                self._counts["checkouts"] += 1
                self._wait.add(wait)
                self._efficient += not request.new and wait < self._at_once
                if request.age is not None:
                    self._age.add(request.age)
            instruments = _instruments()
            if instruments is not None:
                instruments[0].record(wait, self._attributes)
        return connection

    # --- pool events ----------------------------------------------------------------------
    def _on_connect(self, _dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info[self._key] = self._now()
        entry = record.record_info
        reconnect = entry is not None and self._seen_key in entry
        if entry is not None:
            entry[self._seen_key] = True
        request = self._local.request
        if request is not None:
            request.new = True
        with self._lock:
            self._counts["connects"] += 1
            self._counts["reconnects"] += reconnect

    def _on_checkout(self, _dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        now = self._now()
        entry = record.record_info
        if entry is not None:
            entry[self._key] = now
        connected: float | None = record.info.get(self._key)
        if connected is not None:
            age: float | None = now - connected
        else:  # opened before this monitor: SQLAlchemy's wall-clock start time
            started = getattr(record, "starttime", 0) or None
            age = None if started is None else max(time.time() - started, 0.0)
        request = self._local.request
        if request is not None:
            request.checked_out = True
            request.age = age
            return
        with self._lock:  # a checkout that did not go through the wrapper
            self._counts["checkouts"] += 1
            if age is not None:
                self._age.add(age)

    def _on_checkin(self, _dbapi: Any, record: ConnectionPoolEntry | None) -> None:
        entry = record.record_info if record is not None else None
        start: float | None = entry.pop(self._key, None) if entry is not None else None
        hold = None if start is None else self._now() - start
        with self._lock:
            self._counts["checkins"] += 1
            if hold is not None:
                self._hold.add(hold)
        if hold is not None:
            instruments = _instruments()
            if instruments is not None:
                instruments[1].record(hold, self._attributes)

    def _counter(self, field: str) -> Callable[..., None]:
        def count(*_event: Any) -> None:
            with self._lock:
                self._counts[field] += 1

        return count

    # --- reading --------------------------------------------------------------------------
    def status(self) -> PoolStatus:
        """The pool now (see :class:`PoolStatus` for what each field means per pool class)."""
        pool = self.engine.pool
        with self._lock:
            waiting, efficient, timed = len(self._waiters), self._efficient, self._wait.count
            counts = dict(self._counts)
        gone = counts["detaches"]
        occupancy = _occupancy(
            pool,
            counts["checkouts"] - counts["checkins"] - gone,
            counts["connects"] - counts["closes"] - gone,
        )
        _, checked_in, checked_out, _, capacity = occupancy
        share_of = capacity if capacity is not None else checked_in + checked_out
        utilisation = min(checked_out / share_of, 1.0) if share_of > 0 else 0.0
        efficiency = efficient / timed if timed else None
        pool_class = type(pool).__name__
        return PoolStatus(
            self.name, pool_class, *occupancy, waiting, utilisation, efficiency, **counts
        )

    def histograms(self) -> PoolHistograms:
        """Snapshots of the wait, hold and age histograms (seconds)."""
        with self._lock:
            return PoolHistograms(
                self._wait.snapshot(), self._hold.snapshot(), self._age.snapshot()
            )

    def health_check(self, timeout: float = 5.0) -> PoolHealth:
        """Check out a connection and run ``SELECT 1``, giving up after ``timeout`` seconds.

        The probe runs in a helper thread, so no pool, driver or network wait holds the caller
        longer than ``timeout``; a probe given up on finishes in the background. Never raises
        for a database that is down; the message hides the password.
        """
        if not timeout > 0.0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        failure: list[BaseException] = []
        done = threading.Event()

        def probe() -> None:
            try:
                with self.engine.connect() as connection:
                    connection.execute(sa.text("SELECT 1"))
            except Exception as error:  # reported, not raised
                failure.append(error)
            finally:
                done.set()

        started = time.perf_counter()
        threading.Thread(target=probe, name="flashkit-pool-health", daemon=True).start()
        answered = done.wait(timeout)
        seconds = time.perf_counter() - started
        where = f"database {describe_url(self.engine.url)}"
        if not answered:
            return PoolHealth(
                False, seconds, f"{where}: no connection and answer to SELECT 1 in {timeout:g} s"
            )
        if failure:
            return PoolHealth(False, seconds, f"{where}: {self._reason(failure[0])}")
        return PoolHealth(True, seconds)

    def _reason(self, error: BaseException) -> str:
        lines = str(getattr(error, "orig", None) or error).strip().splitlines()
        text = redact(lines[0] if lines else type(error).__name__)
        password = self.engine.url.password
        return text.replace(str(password), "***") if password else text

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the listeners and wrappers (idempotent); the counts stop changing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for event, listener in self._listeners:
            if sa.event.contains(self.engine, event, listener):
                sa.event.remove(self.engine, event, listener)
        for pool in list(self._wrapped.keys()):
            self._unwrap(pool)
        _unregister(self)

    def __enter__(self) -> PoolMonitor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"waiting={len(self._waiters)}"
        return f"PoolMonitor(name={self.name!r}, {state})"


def _weak(target: object) -> Callable[[], Any] | None:
    """A weak reference to ``target`` (None for None; a strong one if it cannot be weak)."""
    if target is None:
        return None
    try:
        return weakref.ref(target)
    except TypeError:
        return lambda: target


def _occupancy(pool: Pool, out: int, open_: int) -> tuple[int, int, int, int, int | None]:
    """size, checked_in, checked_out, overflow, capacity (see :class:`PoolStatus`); ``out`` and
    ``open_`` are the monitor's own counts of checked-out and open connections."""
    if isinstance(pool, QueuePool):
        limit: int = getattr(pool, "_max_overflow", -1)
        capacity = pool.size() + limit if limit >= 0 else None
        return pool.size(), pool.checkedin(), pool.checkedout(), pool.overflow(), capacity
    if isinstance(pool, StaticPool):  # one shared connection: its record knows its state
        record: ConnectionPoolEntry | None = vars(pool).get("connection")
        opened = record is not None and record.dbapi_connection is not None
        busy = opened and record is not None and record.in_use
        return 1, int(opened and not busy), int(busy), 0, None
    out = max(out, 0)
    assertion = isinstance(pool, AssertionPool)
    size = getattr(pool, "size", None)  # SingletonThreadPool: connections kept, one per thread
    size = size if isinstance(size, int) else int(assertion)
    return size, max(open_ - out, 0), out, 0, 1 if assertion else None


# --- OpenTelemetry ---------------------------------------------------------------------------
_OBSERVED: Final = (  # (field of PoolStatus, observable gauge?, unit, description)
    ("size", True, "{connection}", "Connections the pool keeps"),
    ("checked_in", True, "{connection}", "Idle connections in the pool"),
    ("checked_out", True, "{connection}", "Connections checked out"),
    ("overflow", True, "{connection}", "Connections beyond the pool size (<0: not opened)"),
    ("waiting", True, "{caller}", "Callers waiting for a connection now"),
    ("utilisation", True, "1", "Checked-out share of the pool's capacity"),
    ("efficiency", True, "1", "Share of checkouts served at once by an idle connection"),
    ("checkouts", False, "{checkout}", "Connections checked out"),
    ("checkins", False, "{checkin}", "Connections checked in"),
    ("connects", False, "{connection}", "DBAPI connections opened"),
    ("invalidations", False, "{connection}", "Connections invalidated"),
    ("timeouts", False, "{checkout}", "Checkouts that timed out waiting for a connection"),
)
_monitors_lock = threading.Lock()
_monitors: weakref.WeakValueDictionary[str, PoolMonitor] = weakref.WeakValueDictionary()
_by_engine: weakref.WeakKeyDictionary[Engine, list[weakref.ref[PoolMonitor]]] = (
    weakref.WeakKeyDictionary()
)
_otel_lock = threading.Lock()  # never held with _monitors_lock (collection takes that one)
_made: weakref.WeakKeyDictionary[Any, tuple[Histogram, Histogram]] = weakref.WeakKeyDictionary()
_current: tuple[object, tuple[Histogram, Histogram] | None] = (None, None)
_NO_OP: Final = ("_ProxyMeterProvider", "NoOpMeterProvider")  # no provider configured


def pool_monitor(engine: Engine) -> PoolMonitor | None:
    """The open :class:`PoolMonitor` attached to ``engine`` last (None if there is none)."""
    with _monitors_lock:
        attached = [ref() for ref in _by_engine.get(engine, ())]
    return next((m for m in reversed(attached) if m is not None and not m._closed), None)


def _register(monitor: PoolMonitor) -> None:
    with _monitors_lock:
        _monitors[monitor.name] = monitor
        # Weakly: the pool's listeners keep a monitor alive as long as its engine.
        _by_engine.setdefault(monitor.engine, []).append(weakref.ref(monitor))
    metrics.get_meter_provider()  # loads one named by $OTEL_PYTHON_METER_PROVIDER, if any
    _instruments()  # the observable instruments exist before the first checkout


def _unregister(monitor: PoolMonitor) -> None:
    with _monitors_lock:
        if _monitors.get(monitor.name) is monitor:
            del _monitors[monitor.name]
        attached = _by_engine.get(monitor.engine, [])
        attached[:] = [ref for ref in attached if ref() not in (monitor, None)]


def _observe(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        with _monitors_lock:
            live = list(_monitors.values())
        values = ((monitor.name, getattr(monitor.status(), field)) for monitor in live)
        return [Observation(v, {"db.pool.name": n}) for n, v in values if v is not None]

    return observe


def _instruments() -> tuple[Histogram, Histogram] | None:
    """The wait and hold histograms of the meter provider flashkit follows now (None when no
    provider is configured). Two lookups, unless the provider changed."""
    telemetry = current_telemetry()
    # The global provider, read where OpenTelemetry keeps it: get_meter_provider() looks up an
    # environment variable on every call while none is set (~1 us). None: not set.
    provider = telemetry.meter_provider if telemetry is not None else _otel_api._METER_PROVIDER
    seen, instruments = _current
    return instruments if seen is provider else _switch(provider)


def _switch(provider: MeterProvider | None) -> tuple[Histogram, Histogram] | None:
    """Follow ``provider``, making its instruments the first time."""
    global _current
    with _otel_lock:
        off = provider is None or type(provider).__name__ in _NO_OP
        made = None if off else _made.get(provider)
        if made is None and provider is not None and not off:
            made = _made[provider] = _make(provider.get_meter("flashkit"))
        _current = (provider, made)
        return made


def _make(meter: Meter) -> tuple[Histogram, Histogram]:
    for field, gauge, unit, description in _OBSERVED:
        make = meter.create_observable_gauge if gauge else meter.create_observable_counter
        make(f"flashkit.db.pool.{field}", [_observe(field)], unit, description)
    wait, hold = (
        meter.create_histogram(
            f"flashkit.db.pool.{name}", "s", text, explicit_bucket_boundaries_advisory=WAIT_BOUNDS
        )
        for name, text in (
            ("wait_seconds", "Time from asking the pool for a connection to getting it"),
            ("hold_seconds", "Time a connection stayed checked out"),
        )
    )
    return wait, hold
