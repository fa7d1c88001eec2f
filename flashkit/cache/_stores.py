"""The shared cache stores: :class:`SQLStore` (two tables in SQLite or PostgreSQL) and
:class:`RedisStore`. Both keep ``bytes`` values that every process on the same database or
Redis sees, with TTLs in seconds, and a short per-key lock held by a random token; both
implement the :class:`~flashkit.cache._base.Store` protocol in full.

Failures of the database or of Redis raise :class:`~flashkit.errors.CacheError`, code
``store_unavailable`` (cannot connect, timed out, busy) or ``store_error`` (anything else), with
passwords hidden; wrong arguments raise :class:`~flashkit.errors.ValidationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import secrets
import sqlite3
import threading
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from flashkit.cache._base import SyncBacked, check_ttl
from flashkit.clock import Clock, WallClock
from flashkit.db import DEFAULT_URL, describe_url, make_engine, sqlite_path
from flashkit.errors import CacheError, ValidationError, redact

__all__ = ["RedisStore", "SQLStore"]

T = TypeVar("T")

_MAX_KEY: Final = 512
_MAX_PX: Final = 2**53  # milliseconds (~285,000 years): longer TTLs are capped here
_POOL: Final = {"pool_size": 2, "max_overflow": 3, "pool_timeout": 10.0}  # waits in seconds
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")
_CREDENTIALS: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^@/\s]*@")
# Compare-and-delete: release a lock only while this token still holds it.
_UNLOCK: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _invalid(message: str, field: str, code: str = "invalid_config") -> ValidationError:
    return ValidationError(message, code=code, details={"field": field})


def _check_value(value: Any, where: str) -> None:
    if not isinstance(value, bytes):
        raise _invalid(
            f"{where}: a shared store keeps bytes only, got {type(value).__name__}; "
            "serialize the value first (the cache's serializer does)",
            "value",
            "invalid_value",
        )


def _lock_ttl(ttl: float, where: str) -> float:
    checked = check_ttl(ttl, where)
    if checked is None:
        raise _invalid(f"{where}(ttl=None): a lock must expire; give seconds > 0, e.g. 30", "ttl")
    return checked


def _scrub(text: str, secret: str | None) -> str:
    """``text`` without URL credentials, API-key look-alikes or the literal ``secret``."""
    if secret and len(secret) >= 3:
        text = text.replace(secret, "***")
    return redact(_CREDENTIALS.sub(r"\1***@", text))


# --- SQL ---------------------------------------------------------------------------------------


def _own_engine(url: str | URL | None) -> Engine:
    """An engine with a small pool and bounded waits (connect 5 s, pool checkout 10 s;
    PostgreSQL connections recycled after 600 s)."""
    target = url if url is not None else DEFAULT_URL
    options: dict[str, Any] = {}
    with contextlib.suppress(ArgumentError, ValueError):  # make_engine explains bad URLs
        parsed = make_url(target)
        if parsed.get_backend_name() == "postgresql":
            # Each operation is one statement: autocommit spares a BEGIN and a COMMIT, and
            # _run replaces a dropped connection instead of a ping per checkout.
            options = {**_POOL, "isolation_level": "AUTOCOMMIT", "pool_pre_ping": False}
            options.update(pool_recycle=600, connect_args={"connect_timeout": 5})
        elif parsed.database not in (None, "", ":memory:"):  # (memory: one static connection)
            options = dict(_POOL)
    return make_engine(target, **options)


def _wait_for_write_lock(path: Path) -> None:
    """Return once no other connection holds the SQLite file's write lock (5 s at most)."""
    with contextlib.suppress(sqlite3.Error):
        raw = sqlite3.connect(path, timeout=5.0)
        try:
            raw.execute("BEGIN IMMEDIATE")  # SQLite's own busy wait; rolled back on close
        finally:
            raw.close()


class SQLStore(SyncBacked):
    """Cache entries in a SQLite or PostgreSQL table, shared by every process using it.

    ``engine_or_url``: an :class:`~sqlalchemy.engine.Engine` (left open by :meth:`close`) or a
    URL for :func:`flashkit.db.make_engine` (default :data:`flashkit.db.DEFAULT_URL`; the store
    then owns the engine, with a pool of 2 + 3 connections). Tables ``table`` (key, value,
    ``expires_at``) and ``table + "_locks"`` (key, token, ``expires_at``) are created on first
    use. ``expires_at`` is in seconds on ``clock`` (default :class:`~flashkit.clock.WallClock`,
    Unix time, shared by all processes); an entry whose ``expires_at <= clock.now()`` is
    missing. Keys are at most 512 characters; values are ``bytes``.

    Every operation is one short transaction. The async methods run the same code directly on
    the event loop (no thread): these are brief local queries, and a thread would let real time
    pass under a :class:`~flashkit.clock.VirtualClock`.
    """

    shared = True

    def __init__(
        self,
        engine_or_url: Engine | str | URL | None = None,
        *,
        table: str = "flashkit_cache",
        clock: Clock | None = None,
        name: str = "sql",
    ) -> None:
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise _invalid(
                f"SQLStore(table={table!r}): use a plain SQL name of letters, digits and _ "
                "(at most 57 characters), e.g. 'flashkit_cache'",
                "table",
            )
        if isinstance(engine_or_url, Engine):
            engine, self._owns = engine_or_url, False
        else:
            engine, self._owns = _own_engine(engine_or_url), True
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise _invalid(
                f"SQLStore: {describe_url(engine.url)} is {dialect}; the cache keeps its tables "
                "in SQLite or PostgreSQL",
                "engine_or_url",
            )
        self.engine = engine
        self.url = describe_url(engine.url)
        self.table = table
        self.clock: Clock = clock if clock is not None else WallClock()
        self._now = self.clock.now
        self.name = name
        self._secret = engine.url.password
        self._ready = False
        self._guard = threading.Lock()
        self._build(table, postgresql.insert if dialect == "postgresql" else sqlite.insert)

    def _build(self, table: str, insert: Any) -> None:
        """The tables and the statements (built once: each call only binds its values)."""
        meta = self._meta = sa.MetaData()
        entries = sa.Table(
            table,
            meta,
            sa.Column("key", sa.String(_MAX_KEY), primary_key=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=True),
        )
        locks = sa.Table(
            f"{table}_locks",
            meta,
            sa.Column("key", sa.String(_MAX_KEY), primary_key=True),
            sa.Column("token", sa.String(64), nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
        key: Any = sa.bindparam("k")
        now: Any = sa.bindparam("now")
        c, lc = entries.c, locks.c
        self._select = sa.select(c.value, c.expires_at).where(c.key == key)
        put = insert(entries).values(key=key, value=sa.bindparam("v"), expires_at=sa.bindparam("e"))
        self._upsert = put.on_conflict_do_update(
            index_elements=[c.key],
            set_={"value": put.excluded.value, "expires_at": put.excluded.expires_at},
        )
        self._delete = sa.delete(entries).where(c.key == key).returning(c.expires_at)
        self._drop_expired = sa.delete(entries).where(c.key == key, c.expires_at <= now)
        take = insert(locks).values(key=key, token=sa.bindparam("t"), expires_at=sa.bindparam("e"))
        # Atomic: insert, or replace only an expired holder (one statement, one transaction).
        self._take = take.on_conflict_do_update(
            index_elements=[lc.key],
            set_={"token": take.excluded.token, "expires_at": take.excluded.expires_at},
            where=lc.expires_at <= now,
        ).returning(lc.token)
        self._release = sa.delete(locks).where(lc.key == key, lc.token == sa.bindparam("t"))
        self._purges = (
            sa.delete(entries).where(c.expires_at <= now),
            sa.delete(locks).where(lc.expires_at <= now),
        )

    def __repr__(self) -> str:
        return f"SQLStore({self.url!r}, table={self.table!r}, name={self.name!r})"

    def _ensure(self) -> None:
        """Create the tables if they are missing (once per store)."""
        with self._guard:
            if self._ready:
                return
            path = sqlite_path(self.engine)
            for attempt in range(3):
                try:
                    self._create_tables()
                    break
                except OperationalError as error:
                    # Several processes opening a new SQLite file at once: switching it to WAL
                    # (make_engine, on connect) fails at once instead of waiting: wait for the
                    # other process, then connect again.
                    if path is None or "locked" not in str(error) or attempt == 2:
                        raise self._error("create the cache tables", error) from None
                    _wait_for_write_lock(path)
                except SQLAlchemyError as error:
                    raise self._error("create the cache tables", error) from None
            self._ready = True

    def _create_tables(self) -> None:
        # One creator at a time, to the end of its transaction: the SQLite write lock taken at
        # once (waiting for it, not failing on a stale read snapshot), or an advisory lock
        # (concurrent CREATE TABLE IF NOT EXISTS collide in PostgreSQL's catalog).
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execution_options(isolation_level="READ COMMITTED")
                lock_id = zlib.crc32(f"flashkit.cache:{self.table}".encode())
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))
            for table in self._meta.sorted_tables:
                connection.execute(sa.schema.CreateTable(table, if_not_exists=True))
            connection.commit()

    def _error(self, what: str, error: SQLAlchemyError, key: str | None = None) -> CacheError:
        what = what if key is None else f"{what} key {key!r}"
        original = getattr(error, "orig", None) or error
        lines = str(original).strip().splitlines()
        detail = _scrub(lines[0] if lines else "", self._secret)
        busy = isinstance(error, OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)
        return CacheError(
            f"{self.name}: could not {what} (table {self.table!r} on {self.url}): "
            f"{type(original).__name__}: {detail}",
            code="store_unavailable" if busy else "store_error",
            details={"store": self.name, "url": self.url, "table": self.table},
        )

    def _run(self, what: str, key: str | None, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction (committed at its end). A pooled connection the server
        dropped is replaced and ``work`` run once more; database errors become CacheError (no
        SQL text, parameters or password)."""
        if not self._ready:
            self._ensure()
        retried = False
        while True:
            try:
                with self.engine.begin() as connection:
                    return work(connection)
            except DBAPIError as error:
                if error.connection_invalidated and not retried:
                    retried = True
                    continue
                raise self._error(what, error, key) from None
            except SQLAlchemyError as error:
                raise self._error(what, error, key) from None

    def _check_key(self, key: str, where: str) -> None:
        if not isinstance(key, str) or len(key) > _MAX_KEY:
            raise _invalid(
                f"{where}: a key is a str of at most {_MAX_KEY} characters, got "
                f"{type(key).__name__} of length {len(key) if isinstance(key, str) else '-'}; "
                "hash longer keys",
                "key",
                "invalid_key",
            )

    # --- the core (sync; the async forms call it directly) -----------------------------------
    def get_sync(self, key: str) -> bytes | None:
        """The value, or None when missing or expired (one SELECT; an expired row is deleted)."""
        return self._run("read", key, lambda connection: self._read(connection, key))

    def _read(self, connection: Connection, key: str) -> bytes | None:
        row = connection.execute(self._select, {"k": key}).first()
        if row is None:
            return None
        value, expires = row
        now = self._now()
        if expires is None or expires > now:
            return bytes(value)
        connection.execute(self._drop_expired, {"k": key, "now": now})
        return None

    def set_sync(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: no expiry); an upsert."""
        ttl = check_ttl(ttl, "SQLStore.set")
        _check_value(value, "SQLStore.set")
        self._check_key(key, "SQLStore.set")
        values = {"k": key, "v": value, "e": None if ttl is None else self._now() + ttl}
        self._run("write", key, lambda connection: connection.execute(self._upsert, values))

    def delete_sync(self, key: str) -> bool:
        """Delete ``key``; whether it was there (an expired entry was not)."""
        gone = self._run("delete", key, lambda c: c.execute(self._delete, {"k": key}).all())
        now = self._now()
        return any(expires is None or expires > now for (expires,) in gone)

    def lock_sync(self, key: str, ttl: float) -> str | None:
        """Take ``key``'s lock for ``ttl`` seconds if it is free or expired: its token, or None.

        (If the connection drops after the lock was taken, the retry finds it held and returns
        None: the lock then lapses after ``ttl``.)"""
        ttl = _lock_ttl(ttl, "SQLStore.lock")
        self._check_key(key, "SQLStore.lock")
        token = secrets.token_hex(16)
        now = self._now()
        values = {"k": key, "t": token, "e": now + ttl, "now": now}
        taken = self._run("lock", key, lambda c: c.execute(self._take, values).first())
        return None if taken is None else token

    def unlock_sync(self, key: str, token: str) -> None:
        """Release ``key``'s lock if ``token`` still holds it (else nothing)."""
        values = {"k": key, "t": token}
        self._run("unlock", key, lambda connection: connection.execute(self._release, values))

    def purge_expired(self) -> int:
        """Delete the expired entries and locks; how many rows went."""
        now = {"now": self._now()}
        return self._run(
            "purge expired entries",
            None,
            lambda c: sum(c.execute(statement, now).rowcount for statement in self._purges),
        )

    def close(self) -> None:
        """Dispose of the engine if this store made it (one passed in is left open)."""
        if self._owns:
            self.engine.dispose()


# --- Redis -------------------------------------------------------------------------------------


def _client_url(client: Any) -> str:
    """Where a given redis-py client points (no credentials)."""
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _px(ttl: float | None) -> int | None:
    """Seconds as whole milliseconds, rounded up, at least 1 (None stays None)."""
    if ttl is None:
        return None
    ms = ttl * 1000.0
    if ms >= _MAX_PX:
        return _MAX_PX
    return max(1, math.ceil(round(ms, 6)))  # round: 1.1 s is 1100 ms, not 1101


def _require_redis(what: str) -> None:
    """Raise an ImportError naming the extra when redis-py is not installed."""
    try:
        import redis  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{what} needs redis-py: pip install 'flashkit[redis]'") from error


@functools.cache
def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError)


def _client_options(socket_timeout: float, asynchronous: bool) -> dict[str, Any]:
    """Bounded waits; one immediate retry, only when a pooled connection broke."""
    import redis.asyncio.retry
    import redis.exceptions
    import redis.retry
    from redis.backoff import NoBackoff

    retry_class: Any = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": retry_class(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
    }


class _AsyncLine:
    """A ``redis.asyncio`` client bound to one event loop, with the unlock script on it."""

    __slots__ = ("abandoned", "client", "guard", "loop", "unlock")

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.client = client
        self.loop = loop
        self.unlock: Any = client.register_script(_UNLOCK)
        self.guard: AsyncGenerator[None, None] | None = None
        self.abandoned = False

    def abandon(self) -> None:
        """Close the sockets without the client's event loop (gone, or not the running one)."""
        self.abandoned = True
        pool = getattr(self.client, "connection_pool", None)
        for attr in ("_available_connections", "_in_use_connections"):
            for connection in list(getattr(pool, attr, ()) or ()):
                with contextlib.suppress(Exception):
                    connection._close()
        if self.guard is not None:  # finish it here: it must not run on a dead loop later
            with contextlib.suppress(StopIteration, RuntimeError):
                self.guard.aclose().send(None)


class RedisStore:
    """Cache entries in Redis under ``prefix + key``, shared by every process using it.

    ``url_or_client``: a ``redis://``, ``rediss://`` or ``unix://`` URL (the store makes a sync
    client and, per event loop, a ``redis.asyncio`` client when first needed, and closes them
    in :meth:`close` / :meth:`aclose`; an async client is also closed when its loop shuts down,
    e.g. at the end of :func:`asyncio.run`), or a ``redis.Redis`` / ``redis.asyncio.Redis``
    client (not closed by the store; only the methods of its flavour work). Redis expires the
    entries (TTL in seconds, sent as ``PX`` milliseconds rounded up) on its own clock; ``clock``
    (default :class:`~flashkit.clock.WallClock`) is only the store's ``clock`` attribute. Each
    command waits at most ``socket_timeout`` seconds (1.0). A lock is the key
    ``prefix + "lock:" + key``, so cache keys should not start with ``lock:``. The async methods
    of a store made from a URL are for one event loop at a time (a new loop gets a new client).
    """

    shared = True

    def __init__(
        self,
        url_or_client: Any,
        *,
        prefix: str = "flashkit:",
        clock: Clock | None = None,
        name: str = "redis",
        socket_timeout: float = 1.0,
    ) -> None:
        if not isinstance(prefix, str):
            raise _invalid(
                f"RedisStore(prefix={prefix!r}): must be a str, e.g. 'flashkit:'", "prefix"
            )
        if (
            isinstance(socket_timeout, bool)
            or not isinstance(socket_timeout, int | float)
            or not 0 < socket_timeout < math.inf
        ):
            raise _invalid(
                f"RedisStore(socket_timeout={socket_timeout!r}): must be seconds > 0, e.g. 1.0",
                "socket_timeout",
            )
        _require_redis("RedisStore")  # now, not on first use: a cache skips failed reads
        self.prefix = prefix
        self.name = name
        self.clock: Clock = clock if clock is not None else WallClock()
        self.socket_timeout = float(socket_timeout)
        self._url: str | None = None
        self._secret: str | None = None
        self._sync: Any = None
        self._sync_unlock: Any = None
        self._line: _AsyncLine | None = None
        self._given: str | None = None  # "sync" / "async" when a client was passed in
        self._guard = threading.Lock()
        if isinstance(url_or_client, str):
            self._take_url(url_or_client)
        else:
            self._take_client(url_or_client)

    def _take_url(self, url: str) -> None:
        self.url = describe_url(url.split("?", 1)[0])  # (a query may hold password=)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise _invalid(
                f"RedisStore({self.url!r}): use redis://host:port/db, rediss://… or unix://…, "
                "or pass a redis.Redis / redis.asyncio.Redis client",
                "url_or_client",
            )
        self._url = url
        with contextlib.suppress(ArgumentError, ValueError):
            self._secret = make_url(url).password

    def _take_client(self, client: Any) -> None:
        import redis
        import redis.asyncio

        if isinstance(client, redis.asyncio.Redis):
            self._given = "async"
        elif isinstance(client, redis.Redis):
            self._given = "sync"
        else:
            raise _invalid(
                f"RedisStore({type(client).__name__}): pass a redis:// URL, a redis.Redis or a "
                "redis.asyncio.Redis client",
                "url_or_client",
            )
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise _invalid(
                "RedisStore: the client decodes replies to str; the store needs bytes (make it "
                "with decode_responses=False, the default)",
                "url_or_client",
            )
        self.url = _client_url(client)
        if self._given == "async":
            self._line = _AsyncLine(client, None)
        else:
            self._sync = client
            self._sync_unlock = client.register_script(_UNLOCK)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r}, name={self.name!r})"

    def _wrong_flavour(self, wanted: str) -> ValidationError:
        client = "redis.Redis" if wanted == "sync" else "redis.asyncio.Redis"
        return _invalid(
            f"{self.name}: this RedisStore was given a {self._given} client, so only its "
            f"{self._given} methods work; for the {wanted} ones pass a {client} or a URL",
            "url_or_client",
        )

    def _client(self) -> Any:
        """The sync client (made on first use)."""
        client = self._sync
        if client is not None:
            return client
        if self._url is None:
            raise self._wrong_flavour("sync")
        import redis

        with self._guard:
            if self._sync is None:
                options = _client_options(self.socket_timeout, asynchronous=False)
                client = redis.Redis.from_url(self._url, **options)
                self._sync_unlock = client.register_script(_UNLOCK)
                self._sync = client
        return self._sync

    def _async_line(self) -> _AsyncLine:
        """This event loop's async client (made on first use in each loop)."""
        line = self._line
        if self._given is not None:
            if line is None:
                raise self._wrong_flavour("async")
            return line
        loop = asyncio.get_running_loop()
        if line is not None and line.loop is loop:
            return line
        if line is not None:
            line.abandon()  # its loop ended without shutting down its async generators
        import redis.asyncio

        assert self._url is not None  # noqa: S101 - a store made from a URL
        options = _client_options(self.socket_timeout, asynchronous=True)
        line = self._line = _AsyncLine(redis.asyncio.Redis.from_url(self._url, **options), loop)
        # Close the client on its loop when the loop shuts down (asyncio.run finalizes live
        # async generators before closing the loop): start the guard, now a live generator.
        line.guard = self._close_with_loop(line)
        with contextlib.suppress(StopIteration):
            line.guard.__anext__().send(None)
        return line

    async def _close_with_loop(self, line: _AsyncLine) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._line is line:
                self._line = None
            if not line.abandoned:
                line.abandoned = True
                await line.client.aclose()

    def _error(self, what: str, key: str, error: BaseException) -> CacheError:
        import redis.exceptions

        detail = _scrub(f"{type(error).__name__}: {error}", self._secret)
        down = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        return CacheError(
            f"{self.name}: could not {what} key {key!r} on Redis at {self.url}: {detail}",
            code="store_unavailable" if isinstance(error, down) else "store_error",
            details={"store": self.name, "url": self.url},
        )

    def _run(self, what: str, key: str, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``call(*args, **kw)``: one command; its Redis errors as CacheError."""
        try:
            return call(*args, **kw)
        except _redis_errors() as error:
            raise self._error(what, key, error) from None

    async def _arun(
        self, what: str, key: str, call: Callable[..., Awaitable[Any]], *args: Any, **kw: Any
    ) -> Any:
        try:
            return await call(*args, **kw)
        except _redis_errors() as error:
            raise self._error(what, key, error) from None

    # --- sync ------------------------------------------------------------------------------------
    def get_sync(self, key: str) -> bytes | None:
        """The value, or None when missing or expired (one GET)."""
        value: bytes | None = self._run("read", key, self._client().get, self.prefix + key)
        return value

    def set_sync(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """``SET prefix+key value [PX ms]``: ``ttl`` seconds (None: no expiry)."""
        px = _px(check_ttl(ttl, "RedisStore.set"))
        _check_value(value, "RedisStore.set")
        self._run("write", key, self._client().set, self.prefix + key, value, px=px)

    def delete_sync(self, key: str) -> bool:
        """Delete ``key``; whether it was there."""
        return bool(self._run("delete", key, self._client().delete, self.prefix + key))

    def lock_sync(self, key: str, ttl: float) -> str | None:
        """``SET prefix+"lock:"+key token NX PX ms``: the token, or None while another holds it."""
        px = _px(_lock_ttl(ttl, "RedisStore.lock"))
        token = secrets.token_hex(16)
        lock = f"{self.prefix}lock:{key}"
        taken = self._run("lock", key, self._client().set, lock, token, nx=True, px=px)
        return token if taken else None

    def unlock_sync(self, key: str, token: str) -> None:
        """Release ``key``'s lock if ``token`` still holds it (a Lua compare-and-delete)."""
        self._client()
        lock = f"{self.prefix}lock:{key}"
        self._run("unlock", key, self._sync_unlock, keys=[lock], args=[token])

    def close(self) -> None:
        """Close the clients this store made (an async one still open: its sockets at once)."""
        if self._given is not None:
            return
        client, self._sync = self._sync, None
        line, self._line = self._line, None
        try:
            if line is not None:
                line.abandon()
        finally:
            if client is not None:
                client.close()

    # --- async -----------------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._arun(
            "read", key, self._async_line().client.get, self.prefix + key
        )
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px = _px(check_ttl(ttl, "RedisStore.set"))
        _check_value(value, "RedisStore.set")
        client = self._async_line().client
        await self._arun("write", key, client.set, self.prefix + key, value, px=px)

    async def delete(self, key: str) -> bool:
        client = self._async_line().client
        return bool(await self._arun("delete", key, client.delete, self.prefix + key))

    async def lock(self, key: str, ttl: float) -> str | None:
        px = _px(_lock_ttl(ttl, "RedisStore.lock"))
        token = secrets.token_hex(16)
        client = self._async_line().client
        lock = f"{self.prefix}lock:{key}"
        taken = await self._arun("lock", key, client.set, lock, token, nx=True, px=px)
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        unlock = self._async_line().unlock
        await self._arun("unlock", key, unlock, keys=[f"{self.prefix}lock:{key}"], args=[token])

    async def aclose(self) -> None:
        """Close the clients this store made (the async one on its own loop)."""
        line = self._line
        if self._given is None and line is not None and line.loop is asyncio.get_running_loop():
            self._line = None
            if line.guard is not None:
                await line.guard.aclose()  # runs _close_with_loop's finally: closes the client
        self.close()
