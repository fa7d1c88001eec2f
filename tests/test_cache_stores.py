"""The cache stores' contract: the same tests against MemoryStore, SQLStore (a SQLite file and
the real PostgreSQL, in a schema of its own) and RedisStore (the real Redis, under a prefix of
its own); then several OS processes sharing an SQLStore or a RedisStore, and a Redis or a
database that is down.

Expiry is driven by a VirtualClock for the memory and SQL stores; Redis keeps its own time, so
its TTLs are checked with PTTL and MONITOR instead of waiting. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flashkit.cache._base import MemoryStore, Store
from flashkit.cache._stores import RedisStore, SQLStore
from flashkit.clock import VirtualClock, WallClock
from flashkit.db import make_engine
from flashkit.errors import CacheError, ValidationError

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_cache_worker.py"
WAIT = 60.0  # seconds: the bound of every wait for another process

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.services, id="postgres"),
    pytest.param("redis", marks=pytest.mark.services, id="redis"),
]
SHARED_KINDS = KINDS[1:]


# --- fixtures ----------------------------------------------------------------------------------


def plain_redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@pytest.fixture
def pg_url(database_url: str) -> Iterator[str]:
    """``database_url`` in a fresh schema ``fk_cache_<random>``, dropped afterwards."""
    schema = f"fk_cache_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in database_url else "?"
    try:
        yield f"{database_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"flashkit:test:cache:{uuid.uuid4().hex}:"
    yield prefix
    client = plain_redis(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Case:
    """A store under test. ``clock``: the VirtualClock timing its TTLs (None for Redis, which
    keeps its own time; then ``raw`` is a plain client on the same Redis)."""

    kind: str
    store: Any
    clock: VirtualClock | None
    raw: Any = None
    prefix: str = ""

    def pttl(self, key: str) -> int:
        return int(self.raw.pttl(self.prefix + key))


def shared_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'cache.db'}"
    if kind == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    url = request.getfixturevalue("redis_url")
    return url


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    kind: str = request.param
    clock = VirtualClock(1_000.0)
    if kind == "memory":
        made = Case(kind, MemoryStore(clock=clock), clock)
    elif kind in ("sqlite", "postgres"):
        made = Case(kind, SQLStore(shared_url(request, kind, tmp_path), clock=clock), clock)
    else:
        url = shared_url(request, kind, tmp_path)
        prefix = request.getfixturevalue("redis_prefix")
        made = Case(kind, RedisStore(url, prefix=prefix), None, plain_redis(url), prefix)
    try:
        yield made
    finally:
        made.store.close()
        if made.raw is not None:
            made.raw.close()


# --- the contract, once for every store --------------------------------------------------------


def test_missing_key_is_none(case: Case) -> None:
    assert isinstance(case.store, Store)
    assert case.store.get_sync("missing") is None
    assert asyncio.run(case.store.get("missing")) is None


@pytest.mark.parametrize(
    "value", [b"v", b"", bytes(range(256)) * 4096], ids=["small", "empty", "1MiB"]
)
def test_set_get_round_trip(case: Case, value: bytes) -> None:
    case.store.set_sync("k", value)
    got = case.store.get_sync("k")
    assert type(got) is bytes
    assert got == value


def test_overwrite(case: Case) -> None:
    case.store.set_sync("k", b"one", ttl=60)
    case.store.set_sync("k", b"two")
    assert case.store.get_sync("k") == b"two"


def test_delete_says_whether_the_key_was_there(case: Case) -> None:
    case.store.set_sync("k", b"v")
    assert case.store.delete_sync("k") is True
    assert case.store.delete_sync("k") is False
    assert case.store.get_sync("k") is None


def test_an_entry_with_a_ttl_expires(case: Case) -> None:
    store = case.store
    store.set_sync("k", b"v", ttl=5)
    store.set_sync("forever", b"f")
    if case.clock is not None:
        case.clock.advance(4)
        assert store.get_sync("k") == b"v"
        case.clock.advance(1)  # expires_at <= now: gone
        assert store.get_sync("k") is None
        assert asyncio.run(store.get("k")) is None
    else:
        assert 0 < case.pttl("k") <= 5000
        assert case.pttl("forever") == -1
        with case.raw.monitor() as monitor:
            store.set_sync("tiny", b"v", ttl=0.001)
            command = ""
            for _ in range(10_000):  # other clients' commands may come first
                command = monitor.next_command()["command"]
                if f"{case.prefix}tiny" in command:
                    break
        assert command == f"SET {case.prefix}tiny v PX 1"
    assert store.get_sync("forever") == b"f"


def test_a_second_lock_waits_for_unlock_with_the_right_token(case: Case) -> None:
    store = case.store
    token = store.lock_sync("L", 30)
    assert isinstance(token, str)
    assert token
    assert store.lock_sync("L", 30) is None
    store.unlock_sync("L", "not-the-token")
    assert store.lock_sync("L", 30) is None
    assert store.lock_sync("other", 30) is not None  # locks are per key
    store.set_sync("L", b"value")  # a lock is not an entry
    assert store.get_sync("L") == b"value"
    store.unlock_sync("L", token)
    again = store.lock_sync("L", 30)
    assert again is not None
    assert again != token


def test_an_expired_lock_can_be_taken_again(case: Case) -> None:
    store = case.store
    first = store.lock_sync("L", 10)
    assert first is not None
    if case.clock is not None:
        case.clock.advance(9)
        assert store.lock_sync("L", 10) is None
        case.clock.advance(1)
    else:
        assert 0 < case.pttl("lock:L") <= 10_000
        case.raw.pexpireat(f"{case.prefix}lock:L", 1)  # its expiry, now on Redis's clock
    second = store.lock_sync("L", 10)
    assert second is not None
    store.unlock_sync("L", first)  # the old token no longer holds it
    assert store.lock_sync("L", 10) is None


def test_sync_and_async_twins_agree(case: Case) -> None:
    store = case.store

    def sync_steps(key: str) -> list[Any]:
        seen: list[Any] = [store.get_sync(key)]
        store.set_sync(key, b"1")
        seen.append(store.get_sync(key))
        store.set_sync(key, b"2", ttl=60)
        seen += [store.get_sync(key), store.delete_sync(key), store.delete_sync(key)]
        token = store.lock_sync(key, 60)
        seen += [token is not None, store.lock_sync(key, 60)]
        store.unlock_sync(key, "wrong")
        seen.append(store.lock_sync(key, 60))
        assert token is not None
        store.unlock_sync(key, token)
        seen.append(store.lock_sync(key, 60) is not None)
        return seen

    async def async_steps(key: str) -> list[Any]:
        seen: list[Any] = [await store.get(key)]
        await store.set(key, b"1")
        seen.append(await store.get(key))
        await store.set(key, b"2", ttl=60)
        seen += [await store.get(key), await store.delete(key), await store.delete(key)]
        token = await store.lock(key, 60)
        seen += [token is not None, await store.lock(key, 60)]
        await store.unlock(key, "wrong")
        seen.append(await store.lock(key, 60))
        assert token is not None
        await store.unlock(key, token)
        seen.append(await store.lock(key, 60) is not None)
        return seen

    expected = [None, b"1", b"2", True, False, True, None, None, True]
    assert sync_steps("s") == expected
    assert asyncio.run(async_steps("a")) == expected
    # What one form writes the other reads, across event loops (one asyncio.run each).
    store.set_sync("x", b"from sync")
    assert asyncio.run(store.get("x")) == b"from sync"
    asyncio.run(store.set("y", b"from async"))
    assert store.get_sync("y") == b"from async"

    async def read_then_close() -> Any:
        value = await store.get("y")
        await store.aclose()  # (Redis: closes this loop's client on this loop)
        return value

    assert asyncio.run(read_then_close()) == b"from async"
    store.close()  # closing twice is fine


@pytest.mark.parametrize("ttl", [0, -1, "x", True], ids=["zero", "negative", "str", "bool"])
def test_an_invalid_ttl_is_a_validation_error(case: Case, ttl: Any) -> None:
    store = case.store
    with pytest.raises(ValidationError, match="ttl"):
        store.set_sync("k", b"v", ttl)
    with pytest.raises(ValidationError, match="ttl"):
        asyncio.run(store.set("k", b"v", ttl))
    assert store.get_sync("k") is None
    if store.shared:  # (MemoryStore.lock does not check its ttl)
        with pytest.raises(ValidationError, match="ttl"):
            store.lock_sync("k", ttl)
        with pytest.raises(ValidationError, match="ttl"):
            asyncio.run(store.lock("k", ttl))
        with pytest.raises(ValidationError, match="ttl"):
            store.lock_sync("k", None)


@pytest.mark.parametrize("value", ["text", bytearray(b"x"), 1, None, {"a": 1}])
def test_shared_stores_keep_bytes_only(case: Case, value: Any) -> None:
    store = case.store
    if not store.shared:  # the in-process store keeps any object, as it is
        store.set_sync("k", value)
        assert store.get_sync("k") is value
        return
    with pytest.raises(ValidationError, match="bytes only") as info:
        store.set_sync("k", value)
    assert info.value.code == "invalid_value"
    with pytest.raises(ValidationError, match="bytes only"):
        asyncio.run(store.set("k", value))
    assert store.get_sync("k") is None


# --- SQLStore ----------------------------------------------------------------------------------


@pytest.fixture(params=SHARED_KINDS[:2])
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    clock = VirtualClock(1_000.0)
    store = SQLStore(shared_url(request, request.param, tmp_path), clock=clock)
    try:
        yield Case(request.param, store, clock)
    finally:
        store.close()


def test_sql_purge_expired_deletes_expired_entries_and_locks(sql: Case) -> None:
    store, clock = sql.store, sql.clock
    assert clock is not None
    store.set_sync("short", b"1", ttl=1)
    store.set_sync("long", b"2", ttl=100)
    store.set_sync("forever", b"3")
    store.lock_sync("L", 1)
    assert store.purge_expired() == 0
    clock.advance(1)
    assert store.purge_expired() == 2  # "short" and the lock
    assert store.purge_expired() == 0
    assert [store.get_sync(k) for k in ("short", "long", "forever")] == [None, b"2", b"3"]


def test_sql_an_expired_entry_is_not_there_to_delete(sql: Case) -> None:
    assert sql.clock is not None
    sql.store.set_sync("k", b"v", ttl=1)
    sql.clock.advance(2)
    assert sql.store.delete_sync("k") is False


def test_sql_keys_longer_than_512_characters_are_refused(sql: Case) -> None:
    sql.store.set_sync("k" * 512, b"v")
    assert sql.store.get_sync("k" * 512) == b"v"
    with pytest.raises(ValidationError, match="512") as info:
        sql.store.set_sync("k" * 513, b"v")
    assert info.value.code == "invalid_key"


def test_sql_store_leaves_an_engine_it_was_given_open(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'given.db'}")
    try:
        store = SQLStore(engine, table="my_cache", name="given")
        store.set_sync("k", b"v")
        store.close()
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT key, value FROM my_cache")).all()
        assert [tuple(row) for row in rows] == [("k", b"v")]
        assert sa.inspect(engine).has_table("my_cache_locks")
        assert isinstance(store.clock, WallClock)
        assert store.shared is True
    finally:
        engine.dispose()


@pytest.mark.parametrize("table", ["", "bad name", "x; DROP TABLE y", "a" * 58, 3])
def test_sql_store_refuses_a_bad_table_name(table: Any) -> None:
    with pytest.raises(ValidationError, match="table"):
        SQLStore("sqlite:///:memory:", table=table)


def test_sql_store_defaults_to_the_pipeline_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLStore()
    try:
        store.set_sync("k", b"v")
        assert store.get_sync("k") == b"v"
        assert (tmp_path / "flashkit.db").exists()
    finally:
        store.close()


@pytest.mark.services
def test_sql_store_replaces_a_connection_the_server_dropped(pg_url: str, database_url: str) -> None:
    table = f"fk_dropped_{uuid.uuid4().hex[:12]}"
    store = SQLStore(pg_url, table=table)
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        store.set_sync("k", b"v")
        assert store.get_sync("k") == b"v"  # its connection now idles in the pool
        with admin.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) "
                    "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE :q"
                ),
                {"q": f"%{table}%"},
            ).scalar()
        assert killed
        assert store.get_sync("k") == b"v"
    finally:
        store.close()
        admin.dispose()


def test_sql_database_down_is_a_cache_error_without_the_password() -> None:
    store = SQLStore("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test")
    try:
        started = time.monotonic()
        with pytest.raises(CacheError) as info:
            store.get_sync("k")
        assert time.monotonic() - started < 10
        assert_no_secret(info.value, "127.0.0.1:1")
        assert info.value.code == "store_unavailable"
        with pytest.raises(CacheError) as again:
            asyncio.run(store.set("k", b"v"))
        assert_no_secret(again.value, "127.0.0.1:1")
    finally:
        store.close()


# --- RedisStore --------------------------------------------------------------------------------


def assert_no_secret(error: CacheError, where: str) -> None:
    text = "".join(
        [str(error), repr(error), json.dumps(error.to_dict()), *traceback.format_exception(error)]
    )
    assert "s3cret" not in text
    assert where in str(error)


def test_redis_down_is_a_cache_error_quickly_without_credentials() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0", prefix="fk:")
    try:
        assert "s3cret" not in repr(store)
        started = time.monotonic()
        with pytest.raises(CacheError) as info:
            store.get_sync("k")
        assert time.monotonic() - started < 5
        assert info.value.code == "store_unavailable"
        assert info.value.retryable
        assert_no_secret(info.value, "127.0.0.1:1")
        with pytest.raises(CacheError) as again:
            asyncio.run(store.lock("k", 1))
        assert_no_secret(again.value, "127.0.0.1:1")
    finally:
        store.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", ""])
def test_redis_store_refuses_a_url_that_is_not_redis(url: str) -> None:
    with pytest.raises(ValidationError, match="redis://"):
        RedisStore(url)


def test_redis_store_refuses_other_objects_and_decoding_clients() -> None:
    import redis

    with pytest.raises(ValidationError, match="client"):
        RedisStore(object())
    decoding = redis.Redis(decode_responses=True)
    try:
        with pytest.raises(ValidationError, match="bytes"):
            RedisStore(decoding)
    finally:
        decoding.close()


@pytest.mark.services
def test_redis_store_on_a_given_sync_client(redis_url: str, redis_prefix: str) -> None:
    client = plain_redis(redis_url)
    try:
        store = RedisStore(client, prefix=redis_prefix)
        store.set_sync("k", b"v", ttl=60)
        assert store.get_sync("k") == b"v"
        with pytest.raises(ValidationError, match="sync client"):
            asyncio.run(store.get("k"))
        store.close()
        assert client.get(f"{redis_prefix}k") == b"v"  # the client is still the caller's
    finally:
        client.close()


@pytest.mark.services
def test_redis_store_on_a_given_async_client(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
        try:
            store = RedisStore(client, prefix=redis_prefix)
            await store.set("k", b"v")
            assert await store.get("k") == b"v"
            token = await store.lock("k", 30)
            assert token is not None
            await store.unlock("k", token)
            assert await store.delete("k") is True
            with pytest.raises(ValidationError, match="async client"):
                store.get_sync("k")
            await store.aclose()
            assert await client.ping()  # still the caller's
        finally:
            await client.aclose()

    asyncio.run(main())


# --- several OS processes ----------------------------------------------------------------------


@pytest.fixture(params=SHARED_KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], Any]]:
    """(the worker's arguments, a store of this process on the same data)."""
    url = shared_url(request, request.param, tmp_path)
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        args, store = ["redis", url, prefix], RedisStore(url, prefix=prefix)
    else:
        args, store = ["sql", url], SQLStore(url)
    try:
        yield args, store
    finally:
        store.close()


class Worker:
    """``tests/_cache_worker.py`` in its own process; one line out per line in, bounded waits."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("a", encoding="utf-8") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                encoding="utf-8",
                cwd=ROOT,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no answer from the worker within {WAIT:g} s")
        if line is None:
            pytest.fail(f"the worker exited: {self.log.read_text('utf-8')[-2000:]}")
        return line

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("quit")
            assert self.proc.wait(timeout=WAIT) == 0, self.log.read_text("utf-8")[-2000:]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=WAIT)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()


def run_worker(args: list[str], commands: str) -> str:
    done = subprocess.run(
        [sys.executable, str(WORKER), *args],
        input=commands,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_value_one_process_writes_another_reads(target: tuple[list[str], Any]) -> None:
    args, store = target
    assert run_worker(args, "set greeting héllo\nquit\n").splitlines() == ["ready", "ok"]
    assert run_worker(args, "get greeting\nquit\n").splitlines() == ["ready", "héllo"]
    assert store.get_sync("greeting") == "héllo".encode()


def test_a_lock_held_by_another_process(target: tuple[list[str], Any], tmp_path: Path) -> None:
    args, store = target
    child = Worker(args, tmp_path / "worker.log")
    try:
        assert child.read() == "ready"
        held = child.ask("lock job 60")
        assert held != "None"
        assert store.lock_sync("job", 60) is None
        assert child.ask("unlock job wrong-token") == "ok"
        assert store.lock_sync("job", 60) is None
        assert child.ask(f"unlock job {held}") == "ok"
        mine = store.lock_sync("job", 60)
        assert mine is not None
        assert child.ask("lock job 60") == "None"
        store.unlock_sync("job", mine)
        assert child.ask("lock job 60") != "None"
    finally:
        child.close()


def test_processes_racing_for_a_lock_one_wins(
    target: tuple[list[str], Any], tmp_path: Path
) -> None:
    """Four processes ask for the same lock at once: first with no tables yet (SQL: they race
    to create them too), then over a holder whose lock expired long ago."""
    args, store = target
    workers = [Worker(args, tmp_path / f"worker{i}.log") for i in range(4)]

    def race(key: str) -> None:
        for worker in workers:  # all at once: each answers when its lock call returns
            worker.send(f"lock {key} 60")
        answers = [worker.read() for worker in workers]
        assert sum(answer != "None" for answer in answers) == 1, (key, answers)
        assert store.lock_sync(key, 60) is None

    try:
        assert [w.read() for w in workers] == ["ready"] * 4
        race("fresh")
        if args[0] == "sql":  # a holder whose lock expired at Unix time 1 s
            past = SQLStore(args[1], clock=VirtualClock(0.0))
            assert past.lock_sync("stale", 1) is not None
            past.close()
        race("stale")
    finally:
        for worker in workers:
            worker.close()
