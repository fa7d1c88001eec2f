"""The database flashkit keeps its state in: one SQLAlchemy engine, SQLite or PostgreSQL.

>>> engine = make_engine()                                   # ./flashkit.db
>>> engine = make_engine("postgresql://user@host/db")        # psycopg 3, pre-ping

SQLite (the default, ``sqlite:///flashkit.db``) runs in WAL mode with ``synchronous=NORMAL``:
every commit survives the process being killed at any instant; only a power loss can roll back
the last commits (``?synchronous=full`` in the URL makes each commit wait for the disk). A
5-second busy timeout and foreign keys are on. PostgreSQL URLs (``postgresql://`` or
``postgresql+psycopg://``) use psycopg 3 with ``pool_pre_ping`` so a connection the server
dropped is replaced instead of failing a query.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from flashkit._pool import (
    PoolHealth,
    PoolHistogram,
    PoolHistograms,
    PoolMonitor,
    PoolStatus,
    pool_monitor,
)
from flashkit._urls import describe_url
from flashkit.errors import DatabaseError, ValidationError, redact

__all__ = [
    "DEFAULT_URL",
    "PoolHealth",
    "PoolHistogram",
    "PoolHistograms",
    "PoolMonitor",
    "PoolStatus",
    "check_connection",
    "describe_url",
    "is_sqlite",
    "make_engine",
    "pool_monitor",
]

DEFAULT_URL: Final = "sqlite:///flashkit.db"
"""The state database when none is named: ``flashkit.db`` in the working directory."""
_SQLITE_SYNC: Final = ("off", "normal", "full", "extra")
_WAL_ATTEMPTS: Final = 10


def is_sqlite(engine_or_url: Engine | str | URL) -> bool:
    """Whether an engine or URL is SQLite."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:
        raise ValidationError(
            f"database URL {describe_url(url)!r} is not a URL ({error}); use e.g. "
            "sqlite:///flashkit.db or postgresql://user@host:5432/db",
            code="invalid_config",
            details={"field": "db"},
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise ValidationError(
            f"database URL {describe_url(url)!r}: flashkit keeps its state in SQLite or "
            "PostgreSQL; use sqlite:///path.db or postgresql://user@host/db",
            code="invalid_config",
            details={"field": "db"},
        )
    return parsed


def make_engine(
    url: str | URL | None = None, *, monitor_pool: bool = True, **options: Any
) -> Engine:
    """An engine for ``url`` (default :data:`DEFAULT_URL`), set up as the module docstring says,
    with a :class:`PoolMonitor` attached (``monitor_pool``; :func:`pool_monitor` finds it).

    Pools: a SQLite file and PostgreSQL use SQLAlchemy's ``QueuePool`` (5 connections kept,
    10 more in overflow, 30 s to wait for one; pass ``pool_size=``, ``max_overflow=``,
    ``pool_timeout=`` to change them); ``sqlite:///:memory:`` one shared connection
    (``StaticPool``: one in-memory database). Extra ``options`` go to
    :func:`sqlalchemy.create_engine`. Raises :class:`~flashkit.errors.ValidationError` for a
    URL that is not SQLite or PostgreSQL; the engine connects lazily (see
    :func:`check_connection`).
    """
    parsed = _parse(url if url is not None else DEFAULT_URL)
    if parsed.get_backend_name() == "postgresql":
        options.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, **options)
        if monitor_pool:
            PoolMonitor(engine)
        return engine
    query = dict(parsed.query)
    sync = str(query.pop("synchronous", "normal")).lower()
    if sync not in _SQLITE_SYNC:
        raise ValidationError(
            f"database URL {describe_url(url or DEFAULT_URL)!r}: synchronous={sync!r}; use one "
            f"of {', '.join(_SQLITE_SYNC)}",
            code="invalid_config",
            details={"field": "db"},
        )
    parsed = parsed.set(query=query)
    memory = parsed.database in (None, "", ":memory:")
    if memory:
        options.setdefault("poolclass", StaticPool)
        options.setdefault("connect_args", {"check_same_thread": False})
    engine = sa.create_engine(parsed, **options)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=5000")
            if not memory:
                _wal(cursor)
            cursor.execute(f"PRAGMA synchronous={sync.upper()}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    if monitor_pool:
        PoolMonitor(engine)  # after the pragmas: a connection counts once it is set up
    return engine


def _wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself and SQLite
    does not wait for that: several processes opening a new file at once retry briefly."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def sqlite_path(engine: Engine) -> Path | None:
    """The file of a SQLite engine (None for PostgreSQL or an in-memory database)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def check_connection(engine: Engine) -> None:
    """Connect once; raise :class:`~flashkit.errors.DatabaseError` saying which database could
    not be reached and why (password hidden)."""
    path = sqlite_path(engine)
    if path is not None and not path.parent.exists():
        raise DatabaseError(
            f"database {describe_url(engine.url)}: the folder {str(path.parent)!r} does not "
            "exist; create it or choose another --db",
            code="database_unreachable",
        )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise DatabaseError(
            f"database {describe_url(engine.url)} cannot be reached: "
            f"{redact(reason[0] if reason else type(error).__name__)}",
            code="database_unreachable",
        ) from None
