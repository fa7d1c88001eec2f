"""flashkit._pool: PoolMonitor on real pools (SQLite files and memory, the session's PostgreSQL).

Threads are coordinated with events and queues; a state (``status().waiting == 4``) is waited for
with a bounded poll of ``status()``, never with a sleep. Times come from a VirtualClock wherever
a test checks a time, so wait, hold and efficiency are exact.
"""

from __future__ import annotations

import functools
import gc
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool, SingletonThreadPool

from flashkit import telemetry as tm
from flashkit._pool import WAIT_BOUNDS, PoolHistogram, PoolMonitor, PoolStatus, pool_monitor
from flashkit.clock import VirtualClock
from flashkit.db import make_engine

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds (a state, not a time); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        os.sched_yield()


@pytest.fixture
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., sa.Engine]]:
    """Build engines for the test's backend ("sqlite": a WAL file via make_engine); disposed
    at the end."""
    backend = getattr(request, "param", "sqlite")
    url = (
        request.getfixturevalue("database_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'pool.db'}"
    )
    engines: list[sa.Engine] = []

    def build(**options: object) -> sa.Engine:
        engine = (
            sa.create_engine(url, **options)
            if backend == "postgresql"
            else make_engine(url, **options)
        )
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.dispose()


def select_one(engine: sa.Engine, done: threading.Event | None = None) -> int:
    """Run SELECT 1 on a checkout; set ``done`` after."""
    with engine.connect() as connection:
        value = int(connection.execute(sa.text("SELECT 1")).scalar_one())
    if done is not None:
        done.set()
    return value


def waiting_is(monitor: PoolMonitor, count: int) -> bool:
    return monitor.status().waiting == count


@pytest.mark.parametrize("make", BACKENDS, indirect=True)
def test_waiting_counts_callers_blocked_right_now(make: Callable[..., sa.Engine]) -> None:
    """Pool of 2, 6 threads each holding a connection until released: 4 wait, then 3, 2, 1, 0."""
    engine = make(pool_size=2, max_overflow=0, pool_timeout=30)
    clock = VirtualClock()
    monitor = PoolMonitor(engine, clock=clock)
    holders: queue.Queue[threading.Event] = queue.Queue()
    errors: list[BaseException] = []

    def worker() -> None:
        release = threading.Event()
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
                holders.put(release)
                assert release.wait(timeout=60), "never released"
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    until(
        lambda: holders.qsize() == 2 and monitor.status().waiting == 4,
        "2 holding and 4 waiting",
    )
    status = monitor.status()
    assert (status.waiting, status.checked_out, status.checked_in) == (4, 2, 0)
    assert status.capacity == 2
    assert status.utilisation == 1.0
    clock.advance(1.0)  # the 4 waiters have now waited 1 s (virtual)
    for waiting in (3, 2, 1, 0):
        holders.get(timeout=20).set()
        until(functools.partial(waiting_is, monitor, waiting), f"{waiting} waiting")
        assert monitor.status().checked_out == 2
    for _ in range(2):
        holders.get(timeout=20).set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    status = monitor.status()
    assert (status.waiting, status.checked_out, status.checked_in) == (0, 0, 2)
    assert (status.checkouts, status.checkins, status.connects, status.timeouts) == (6, 6, 2, 0)
    assert status.efficiency == 0.0  # 2 opened a connection, 4 waited 1 s
    wait = monitor.histograms().wait
    assert wait.count == 6
    assert sum(wait.counts[WAIT_BOUNDS.index(1.0) :]) == 4
    assert wait.sum == pytest.approx(4.0)
    monitor.close()


@pytest.mark.parametrize("make", BACKENDS, indirect=True)
def test_efficiency_on_a_known_sequence(make: Callable[..., sa.Engine]) -> None:
    """2 checkouts open the pool's 2 connections (not at once), 8 reuse an idle one (at once):
    efficiency 8/10 exactly."""
    engine = make(pool_size=2, max_overflow=0)
    monitor = PoolMonitor(engine, clock=VirtualClock())
    with engine.connect(), engine.connect():
        pass
    for _ in range(8):
        select_one(engine)
    status = monitor.status()
    assert status.efficiency == 8 / 10
    assert (status.checkouts, status.checkins, status.connects, status.reconnects) == (10, 10, 2, 0)
    monitor.close()


def test_a_checkout_that_waited_is_not_efficient(make: Callable[..., sa.Engine]) -> None:
    """Pool of 1 held by one caller: the next caller waits (0.5 s virtual) and counts as not
    served at once, though it reused an idle connection."""
    engine = make(pool_size=1, max_overflow=0, pool_timeout=30)
    clock = VirtualClock()
    monitor = PoolMonitor(engine, clock=clock)
    select_one(engine)  # opens the connection: not at once
    select_one(engine)  # reuses it: at once
    done = threading.Event()
    with engine.connect():
        thread = threading.Thread(target=select_one, args=(engine, done), daemon=True)
        thread.start()
        until(lambda: monitor.status().waiting == 1, "1 waiting")
        clock.advance(0.5)
    assert done.wait(timeout=20)
    thread.join(timeout=20)
    status = monitor.status()
    assert status.checkouts == 4
    assert status.efficiency == 2 / 4  # the first (new) and the waiter are not at once
    assert monitor.histograms().wait.max == 0.5
    monitor.close()


def test_histograms_record_hold_wait_and_age(make: Callable[..., sa.Engine]) -> None:
    """Virtual time: hold 0.25 s, then 10 s idle; age at the second checkout is 10.25 s."""
    engine = make(pool_size=1, max_overflow=0)
    clock = VirtualClock(100.0)
    monitor = PoolMonitor(engine, clock=clock)
    with engine.connect():
        clock.advance(0.25)
    clock.advance(10.0)
    with engine.connect():
        pass
    hist = monitor.histograms()
    status = monitor.status()
    assert hist.wait.count == status.checkouts == 2
    assert hist.hold.count == status.checkins == 2
    assert hist.age.count == 2
    assert hist.hold.sum == pytest.approx(0.25)
    assert hist.hold.max == pytest.approx(0.25)
    assert all(value >= 0 for value in (hist.hold.sum, hist.wait.sum, hist.age.sum))
    assert hist.hold.counts[WAIT_BOUNDS.index(0.25)] == 1  # (0.1, 0.25]
    assert hist.age.max == pytest.approx(10.25)
    assert hist.wait.sum == 0.0
    assert hist.hold.quantile(1.0) == pytest.approx(0.25)
    assert hist.hold.mean == pytest.approx(0.125)
    monitor.close()


def test_histogram_quantiles() -> None:
    hist = PoolHistogram((1.0, 2.0, 4.0), (1, 2, 0, 1), 4, 12.5, 9.0)
    assert [hist.quantile(q) for q in (0.0, 0.25, 0.5, 0.75, 1.0)] == [1.0, 1.0, 2.0, 2.0, 9.0]
    assert PoolHistogram((1.0,), (0, 0), 0, 0.0, 0.0).quantile(0.5) is None
    with pytest.raises(ValueError, match="quantile"):
        hist.quantile(1.5)


@pytest.mark.services
def test_server_side_kill_is_survived_with_pre_ping(database_url: str) -> None:
    """pg_terminate_backend on both pooled connections: the next checkouts work (pre-ping),
    the dead connections are invalidated or recycled and reopened, and counted."""
    name = f"flashkit-pool-{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(
        database_url,
        pool_size=2,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={"application_name": name},
    )
    admin = sa.create_engine(database_url, poolclass=NullPool)
    monitor = PoolMonitor(engine)
    try:
        with engine.connect() as first, engine.connect() as second:
            first.execute(sa.text("SELECT 1"))
            second.execute(sa.text("SELECT 1"))
        mine = (
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name = :name"
        )
        with admin.connect() as connection:
            killed = connection.execute(
                sa.text(f"SELECT pg_terminate_backend(pid) {mine}"), {"name": name}
            ).scalars()
            assert list(killed) == [True, True]

        def backends() -> int:
            with admin.connect() as connection:
                return int(
                    connection.execute(
                        sa.text(f"SELECT count(*) {mine}"), {"name": name}
                    ).scalar_one()
                )

        until(lambda: backends() == 0, "the killed backends gone")
        assert select_one(engine) == 1
        with engine.connect() as first, engine.connect() as second:
            assert first.execute(sa.text("SELECT 1")).scalar_one() == 1
            assert second.execute(sa.text("SELECT 1")).scalar_one() == 1
        status = monitor.status()
        assert status.invalidations >= 1
        assert status.reconnects == 2
        assert status.connects == 4
        assert (status.checked_out, status.waiting, status.errors) == (0, 0, 0)
        assert backends() == 2
    finally:
        monitor.close()
        engine.dispose()
        admin.dispose()


def test_timeouts_are_counted(make: Callable[..., sa.Engine]) -> None:
    engine = make(pool_size=1, max_overflow=0, pool_timeout=0.05)
    monitor = PoolMonitor(engine)
    with engine.connect(), pytest.raises(sa.exc.TimeoutError):
        engine.connect()
    status = monitor.status()
    assert (status.timeouts, status.errors, status.waiting, status.checkouts) == (1, 0, 0, 1)
    assert monitor.histograms().wait.count == 1  # a timeout is counted, not timed
    monitor.close()


def test_invalidation_and_reconnect_are_counted(make: Callable[..., sa.Engine]) -> None:
    engine = make(pool_size=1, max_overflow=0)
    monitor = PoolMonitor(engine, clock=VirtualClock())
    with engine.connect() as connection:
        connection.invalidate()
    select_one(engine)
    status = monitor.status()
    assert (status.invalidations, status.closes, status.connects, status.reconnects) == (1, 1, 2, 1)
    assert status.efficiency == 0.0  # both checkouts opened a connection
    monitor.close()


def test_sqlite_file_engine_status(tmp_path: Path) -> None:
    """The default file engine (QueuePool) before and after use, through make_engine."""
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        monitor = PoolMonitor(engine)
        status = monitor.status()
        assert isinstance(status, PoolStatus)
        assert status.pool == "QueuePool"
        assert (status.checked_out, status.waiting, status.utilisation) == (0, 0, 0.0)
        assert status.efficiency is None
        assert status.capacity == status.size + 10  # SQLAlchemy's default max_overflow
        assert select_one(engine) == 1
        status = monitor.status()
        assert (status.checked_in, status.checked_out, status.checkouts) == (1, 0, 1)
        assert monitor.name == str(engine.url)
        monitor.close()
    finally:
        engine.dispose()


def test_sqlite_memory_static_pool_status() -> None:
    engine = make_engine("sqlite:///:memory:")
    monitor = PoolMonitor(engine, clock=VirtualClock())
    assert monitor.status().pool == "StaticPool"
    assert (monitor.status().checked_in, monitor.status().checked_out) == (0, 0)
    with engine.connect():
        status = monitor.status()
        assert (status.size, status.checked_in, status.checked_out, status.overflow) == (1, 0, 1, 0)
        assert (status.capacity, status.utilisation) == (None, 1.0)
    select_one(engine)
    status = monitor.status()
    assert (status.checked_in, status.checked_out, status.waiting) == (1, 0, 0)
    assert (status.checkouts, status.checkins, status.connects) == (2, 2, 1)
    assert status.efficiency == 0.5
    assert monitor.name == "sqlite:///:memory:"
    assert monitor.health_check().ok
    monitor.close()
    engine.dispose()


@pytest.mark.parametrize("poolclass", [NullPool, SingletonThreadPool])
def test_other_pools_report_sane_values(poolclass: type[sa.Pool], tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}", poolclass=poolclass)
    monitor = PoolMonitor(engine)
    with engine.connect():
        status = monitor.status()
        assert (status.checked_out, status.checked_in, status.waiting) == (1, 0, 0)
        assert status.utilisation == 1.0
    status = monitor.status()
    assert status.checked_out == 0
    assert status.checked_in == (0 if poolclass is NullPool else 1)
    assert status.size == (0 if poolclass is NullPool else 5)
    assert status.capacity is None
    monitor.close()
    engine.dispose()


@pytest.mark.services
def test_health_check_ok_on_postgres(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    monitor = PoolMonitor(engine)
    try:
        health = monitor.health_check(timeout=10.0)
        assert health.ok, health.error
        assert health.error is None
        assert 0.0 < health.seconds < 10.0
    finally:
        monitor.close()
        engine.dispose()


def test_health_check_unreachable_hides_the_password() -> None:
    engine = sa.create_engine("postgresql+psycopg://nobody:s3cret@127.0.0.1:1/x")
    monitor = PoolMonitor(engine)
    health = monitor.health_check(timeout=10.0)
    assert not health.ok
    assert health.error is not None
    assert "s3cret" not in health.error
    assert "s3cret" not in monitor.name
    assert "127.0.0.1:1" in health.error
    assert monitor.status().errors == 1
    monitor.close()
    engine.dispose()


def test_health_check_gives_up_after_timeout(make: Callable[..., sa.Engine]) -> None:
    """Pool exhausted: the check returns after its timeout instead of the pool's 30 s."""
    engine = make(pool_size=1, max_overflow=0, pool_timeout=30)
    monitor = PoolMonitor(engine)
    with engine.connect():
        health = monitor.health_check(timeout=0.2)
        assert not health.ok
        assert health.error is not None
        assert "0.2 s" in health.error
        assert 0.2 <= health.seconds < 10.0
    until(lambda: monitor.status().checkins == 2, "the background probe done")
    with pytest.raises(ValueError, match="timeout"):
        monitor.health_check(timeout=0)
    monitor.close()


def test_close_removes_listeners_and_wrappers(make: Callable[..., sa.Engine]) -> None:
    """close() puts back what the pool had (make_engine may have attached a monitor first)."""
    engine = make(pool_size=2)
    pool = engine.pool
    before = {name: vars(pool).get(name) for name in ("connect", "recreate")}
    with PoolMonitor(engine) as monitor:
        assert vars(pool)["connect"] is not before["connect"]
        select_one(engine)
    assert {name: vars(pool).get(name) for name in ("connect", "recreate")} == before
    assert not sa.event.contains(engine, "checkout", monitor._on_checkout)
    before = monitor.status()
    for _ in range(3):
        select_one(engine)
    with engine.connect() as connection:
        connection.invalidate()
    after = monitor.status()
    assert (after.checkouts, after.checkins, after.invalidations) == (1, 1, 0)
    assert after.checkouts == before.checkouts
    monitor.close()  # idempotent


def test_dispose_keeps_the_new_pool_watched(make: Callable[..., sa.Engine]) -> None:
    engine = make(pool_size=1, max_overflow=0, pool_timeout=30)
    clock = VirtualClock()
    monitor = PoolMonitor(engine, clock=clock)
    select_one(engine)
    old = engine.pool
    engine.dispose()
    assert engine.pool is not old
    assert "connect" in vars(engine.pool)
    done = threading.Event()
    with engine.connect():
        thread = threading.Thread(target=select_one, args=(engine, done), daemon=True)
        thread.start()
        until(lambda: monitor.status().waiting == 1, "1 waiting on the new pool")
        clock.advance(2.0)
    assert done.wait(timeout=20)
    thread.join(timeout=20)
    assert monitor.histograms().wait.max == 2.0
    assert monitor.status().checkouts == 3
    monitor.close()
    select_one(engine)
    assert monitor.status().checkouts == 3


def test_opentelemetry_metrics(make: Callable[..., sa.Engine]) -> None:
    telemetry = tm.configure_opentelemetry(in_memory=True, set_global=False)
    try:
        engine = make(pool_size=2, max_overflow=0)
        monitor = PoolMonitor(engine, name="otel-test", clock=VirtualClock())
        for _ in range(3):
            select_one(engine)
        found = telemetry.metrics()

        def point(metric: str) -> dict[str, object]:
            points = [p for p in found[metric] if p["attributes"] == {"db.pool.name": "otel-test"}]
            assert len(points) == 1, (metric, found.get(metric))
            return points[0]

        assert point("flashkit.db.pool.checkouts")["value"] == 3
        assert point("flashkit.db.pool.connects")["value"] == 1
        assert point("flashkit.db.pool.waiting")["value"] == 0
        assert point("flashkit.db.pool.size")["value"] == 2
        assert point("flashkit.db.pool.checked_out")["value"] == 0
        assert point("flashkit.db.pool.efficiency")["value"] == pytest.approx(2 / 3)
        assert point("flashkit.db.pool.wait_seconds")["count"] == 3
        assert point("flashkit.db.pool.hold_seconds")["count"] == 3
        monitor.close()
        assert not any(
            p["attributes"] == {"db.pool.name": "otel-test"}
            for p in telemetry.metrics().get("flashkit.db.pool.waiting", [])
        )
    finally:
        telemetry.shutdown()


def test_rejects_bad_arguments(make: Callable[..., sa.Engine]) -> None:
    with pytest.raises(ValueError, match="at_once"):
        PoolMonitor(make(), at_once=-1.0)


def test_pool_monitor_finds_the_attached_monitor(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'find.db'}")
    assert pool_monitor(engine) is None
    first = PoolMonitor(engine, name="first")
    second = PoolMonitor(engine, name="second")
    assert pool_monitor(engine) is second
    second.close()
    assert pool_monitor(engine) is first
    select_one(engine)  # two monitors stacked, then one: each counts its own
    assert (first.status().checkouts, second.status().checkouts) == (1, 0)
    first.close()
    assert pool_monitor(engine) is None
    assert "connect" not in vars(engine.pool)
    engine.dispose()


def test_engines_pools_and_monitors_stay_collectable(tmp_path: Path) -> None:
    """No registry keeps an engine alive, nor a pool an engine.dispose() replaced, also with
    two monitors stacked on one pool."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gc.db'}")
    PoolMonitor(engine, name="under")
    monitor = PoolMonitor(engine, name="over")
    select_one(engine)
    old_pool = weakref.ref(engine.pool)
    engine.dispose()
    gc.collect()
    assert old_pool() is None
    engine_ref, monitor_ref = weakref.ref(engine), weakref.ref(monitor)
    engine.dispose()
    del engine, monitor
    gc.collect()
    assert engine_ref() is None
    assert monitor_ref() is None
