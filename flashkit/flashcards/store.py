"""The flashcard run's state in a database: tables and state transitions.

A word moves ``pending → stage1_done → done``, or to ``failed`` with its structured error; each
step is one transaction, committed before the next stage starts, together with a row of the
call ledger (stage, outcome, attempts, tokens, latency, request hash). A run *claims* the words
it works on, so two processes on one PostgreSQL database never take the same word
(``FOR UPDATE SKIP LOCKED``); a run that dies leaves claims that the next run takes back (on
PostgreSQL a run holds an advisory lock while it lives; SQLite admits one process at a time and
says so to a second one).

Words are identified by what was read (position, term and type: :attr:`VocabularyItem.identity`),
so an unchanged row is the same word in every later run and every list, and an edited row is a
new word. Times in the tables are Unix seconds; ``latency`` is seconds on the run's clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from flashkit.db import check_connection, describe_url, make_engine, sqlite_path
from flashkit.errors import DatabaseError, ValidationError
from flashkit.flashcards.stages import FlashcardRow, Stage1Result
from flashkit.flashcards.vocabulary import VocabularyItem

if TYPE_CHECKING:
    from flashkit.flashcards.vocabulary import Vocabulary

__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "CallRecord",
    "Claim",
    "RunInfo",
    "Store",
    "StoreBusyError",
    "WordRecord",
    "WordState",
]

SCHEMA_VERSION: Final = 1
WordState = Literal["pending", "stage1_done", "done", "failed"]
STATES: Final[tuple[WordState, ...]] = ("pending", "stage1_done", "done", "failed")
_LOCK_SPACE: Final = 0x466B  # pg_advisory_lock(classid, objid): classid for flashkit runs
_CHUNK: Final = 500  # ids per IN (...) list

metadata = sa.MetaData()
meta_table = sa.Table(
    "flashkit_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
sources_table = sa.Table(
    "flashkit_sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)
runs_table = sa.Table(
    "flashkit_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("source_id", sa.ForeignKey("flashkit_sources.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("clock_seconds", sa.Float),
)
words_table = sa.Table(
    "flashkit_words",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("identity", sa.String(64), nullable=False, unique=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("term", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stage1", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_code", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("tokens", sa.Integer, nullable=False),
    sa.Column("claimed_by", sa.Integer, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)
source_words_table = sa.Table(
    "flashkit_source_words",
    metadata,
    sa.Column("source_id", sa.ForeignKey("flashkit_sources.id"), primary_key=True),
    sa.Column("word_id", sa.ForeignKey("flashkit_words.id"), primary_key=True),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Index("ix_flashkit_source_words_line", "source_id", "line"),
)
cards_table = sa.Table(
    "flashkit_cards",
    metadata,
    sa.Column("word_id", sa.ForeignKey("flashkit_words.id"), primary_key=True),
    sa.Column("ordinal", sa.Integer, primary_key=True),
    sa.Column("term", sa.Text, nullable=False),
    sa.Column("term_number", sa.Integer, nullable=False),
    sa.Column("tab_name", sa.Text, nullable=False),
    sa.Column("primer", sa.Text, nullable=False),
    sa.Column("front", sa.Text, nullable=False),
    sa.Column("back", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("honorific_level", sa.Text, nullable=False),
)
calls_table = sa.Table(
    "flashkit_calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.ForeignKey("flashkit_runs.id"), nullable=False, index=True),
    sa.Column("word_id", sa.ForeignKey("flashkit_words.id"), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency", sa.Float, nullable=False),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)


class StoreBusyError(DatabaseError):
    """Another process holds the (SQLite) state database."""

    default_code = "database_busy"


@dataclass(frozen=True, slots=True)
class WordRecord:
    """One word of a list as the store holds it: where it is in the list (``position``,
    ``line``), its ``state``, the stage-1 analysis, its cards (in order), the structured error
    that stopped it (``StructuredError.to_dict()``), HTTP ``attempts`` and ``tokens`` spent."""

    word_id: int
    position: int
    term: str
    type: str
    line: int
    state: WordState
    stage1: Stage1Result | None = None
    cards: tuple[FlashcardRow, ...] = ()
    error: Mapping[str, Any] | None = None
    attempts: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """A word a run has claimed: the item to send, and its stage-1 result when stage 1 is
    already done (then only stage 2 is left)."""

    word_id: int
    item: VocabularyItem
    stage1: Stage1Result | None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One row of the call ledger: a stage's call (its retries included) and its outcome
    (``"ok"`` or the error code)."""

    stage: int
    status: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency: float
    request_sha256: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as recorded: status ``running`` | ``done`` | ``interrupted`` | ``crashed``."""

    run_id: int
    source_path: str
    status: str
    started_at: float
    ended_at: float | None
    host: str
    pid: int
    provider: str
    model: str
    calls: int
    clock_seconds: float | None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Store:
    """The state of flashcard runs in one database (see the module docstring).

    ``Store.open(url)`` connects, creates or checks the schema and, for SQLite, takes the
    database for this process. Methods are synchronous and short (one transaction each); call
    them from the event loop's thread.
    """

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._lock_file: int | None = None
        self._run_lock: Connection | None = None
        self._has_schema = False
        self.is_postgres = engine.url.get_backend_name() == "postgresql"
        self._insert = postgresql.insert if self.is_postgres else sqlite.insert

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | Engine, *, create: bool = True) -> Store:
        """Connect to ``url`` (or use an engine), check it is reachable and its schema is this
        version (creating it when ``create``), and take a SQLite database for this process.
        Raises :class:`~flashkit.errors.DatabaseError` (unreachable, busy, other version)."""
        engine = make_engine(url) if not isinstance(url, Engine) else url
        store = cls(engine, owns_engine=not isinstance(url, Engine))
        try:
            check_connection(engine)
            store._lock_sqlite()
            store._schema(create=create)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release the connections and locks (and dispose of an engine the store made)."""
        if self._run_lock is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._run_lock.close()
        self._run_lock = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction on a connection checked out of the engine's pool for it."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()
            raise DatabaseError(
                f"database {describe_url(self.engine.url)}: {reason[0] if reason else error}",
                code="database_error",
            ) from error

    def _lock_sqlite(self) -> None:
        path = sqlite_path(self.engine)
        if path is None:
            return
        import fcntl

        with self.engine.connect() as conn:
            conn.execute(sa.text("PRAGMA user_version"))  # creates the file
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusyError(
                f"database {path} is in use by another flashkit process; wait for it to finish, "
                "or run several processes on one PostgreSQL database (--db postgresql://...)",
            ) from None
        self._lock_file = fd

    def _schema(self, *, create: bool) -> None:
        with self.engine.begin() as conn:
            if self.is_postgres:  # two processes starting at once: one creates, one waits
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:space, 0)"), {"space": _LOCK_SPACE}
                )
            if not sa.inspect(conn).has_table(meta_table.name):
                if create:
                    metadata.create_all(conn)
                    conn.execute(
                        meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                    self._has_schema = True
                return
            found = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
        version = int(found or 0)
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise DatabaseError(
                f"database {describe_url(self.engine.url)} holds flashkit schema {version}, this "
                f"flashkit reads schema {SCHEMA_VERSION}: "
                + (
                    "upgrade flashkit (pip install -U flashkit)"
                    if newer
                    else "it was written by an older flashkit; use a new --db"
                ),
                code="schema_version",
            )
        self._has_schema = True

    def has_schema(self) -> bool:
        """Whether the flashkit tables exist (a dry run never creates them)."""
        if not self._has_schema:
            with self.engine.connect() as conn:
                self._has_schema = sa.inspect(conn).has_table(meta_table.name)
        return self._has_schema

    def _insert_ignore(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        if rows:
            conn.execute(self._insert(table).on_conflict_do_nothing(), list(rows))

    # --- lists and words ----------------------------------------------------------------------
    def register(self, vocabulary: Vocabulary, items: Sequence[VocabularyItem]) -> int:
        """Record the list (by its bytes' SHA-256) and ``items`` (new words as ``pending``;
        words seen before keep their state); returns the list's id."""
        now = time.time()
        with self._tx() as conn:
            self._insert_ignore(
                conn,
                sources_table,
                [{"sha256": vocabulary.sha256, "path": str(vocabulary.path),
                  "rows": vocabulary.rows, "first_seen": now, "last_seen": now}],
            )  # fmt: skip
            conn.execute(
                sources_table.update()
                .where(sources_table.c.sha256 == vocabulary.sha256)
                .values(path=str(vocabulary.path), last_seen=now)
            )
            source_id = int(
                conn.execute(
                    sa.select(sources_table.c.id).where(sources_table.c.sha256 == vocabulary.sha256)
                ).scalar_one()
            )
            rows = [
                {"identity": item.identity, "position": item.position, "term": item.term,
                 "type": item.type, "state": "pending", "attempts": 0, "tokens": 0,
                 "updated_at": now}
                for item in items
            ]  # fmt: skip
            for start in range(0, len(rows), _CHUNK):
                self._insert_ignore(conn, words_table, rows[start : start + _CHUNK])
            ids: dict[str, int] = {}
            identities = [item.identity for item in items]
            for start in range(0, len(identities), _CHUNK):
                chunk = identities[start : start + _CHUNK]
                query = sa.select(words_table.c.identity, words_table.c.id).where(
                    words_table.c.identity.in_(chunk)
                )
                ids.update((identity, int(wid)) for identity, wid in conn.execute(query))
            links = [
                {"source_id": source_id, "word_id": ids[item.identity], "line": item.line}
                for item in items
            ]
            for start in range(0, len(links), _CHUNK):
                self._insert_ignore(conn, source_words_table, links[start : start + _CHUNK])
        return source_id

    def counts(self, source_id: int) -> dict[str, int]:
        """Words of the list per state (every state present, 0 when none)."""
        query = (
            sa.select(words_table.c.state, sa.func.count())
            .join(source_words_table, source_words_table.c.word_id == words_table.c.id)
            .where(source_words_table.c.source_id == source_id)
            .group_by(words_table.c.state)
        )
        with self._tx() as conn:
            found = {str(state): int(n) for state, n in conn.execute(query)}
        return {state: found.get(state, 0) for state in STATES}

    def failures_by_code(self, source_id: int) -> dict[str, int]:
        """Failed words of the list per error code, most frequent first."""
        query = (
            sa.select(words_table.c.error_code, sa.func.count())
            .join(source_words_table, source_words_table.c.word_id == words_table.c.id)
            .where(source_words_table.c.source_id == source_id, words_table.c.state == "failed")
            .group_by(words_table.c.error_code)
        )
        with self._tx() as conn:
            rows = [(str(code or "unknown"), int(n)) for code, n in conn.execute(query)]
        return dict(sorted(rows, key=lambda row: (-row[1], row[0])))

    def latest_source(self) -> tuple[int, str] | None:
        """(id, path) of the list seen last, or None for an empty database."""
        if not self.has_schema():
            return None
        query = sa.select(sources_table.c.id, sources_table.c.path).order_by(
            sources_table.c.last_seen.desc(), sources_table.c.id.desc()
        )
        with self._tx() as conn:
            row = conn.execute(query.limit(1)).first()
        return (int(row[0]), str(row[1])) if row is not None else None

    def source_id(self, sha256: str) -> int | None:
        """The id of the list with these bytes, or None if never registered."""
        if not self.has_schema():
            return None
        with self._tx() as conn:
            found = conn.execute(
                sa.select(sources_table.c.id).where(sources_table.c.sha256 == sha256)
            ).scalar()
        return int(found) if found is not None else None

    def states(self, identities: Sequence[str]) -> dict[str, tuple[WordState, bool]]:
        """``identity → (state, has stage 1)`` for the words already stored (a dry run asks)."""
        found: dict[str, tuple[WordState, bool]] = {}
        if not self.has_schema():
            return found
        with self._tx() as conn:
            for start in range(0, len(identities), _CHUNK):
                query = sa.select(
                    words_table.c.identity, words_table.c.state, words_table.c.stage1.is_not(None)
                ).where(words_table.c.identity.in_(identities[start : start + _CHUNK]))
                for identity, state, staged in conn.execute(query):
                    found[str(identity)] = (state, bool(staged))
        return found

    def records(self, source_id: int, *, details: bool = True) -> list[WordRecord]:
        """Every word of the list in input order, with its cards and (``details``) its stage-1
        result and error; without them the cards are cheaper to read (an export refresh)."""
        words = (
            sa.select(words_table, source_words_table.c.line)
            .join(source_words_table, source_words_table.c.word_id == words_table.c.id)
            .where(source_words_table.c.source_id == source_id)
            .order_by(source_words_table.c.line, words_table.c.position)
        )
        cards = (
            sa.select(cards_table)
            .join(source_words_table, source_words_table.c.word_id == cards_table.c.word_id)
            .join(words_table, words_table.c.id == cards_table.c.word_id)
            .where(source_words_table.c.source_id == source_id, words_table.c.state == "done")
            .order_by(cards_table.c.word_id, cards_table.c.ordinal)
        )
        with self._tx() as conn:
            word_rows = conn.execute(words).mappings().all()
            by_word: dict[int, list[Any]] = {}
            for card in conn.execute(cards).mappings():
                by_word.setdefault(int(card["word_id"]), []).append(card)
        records = []
        for row in word_rows:
            word_id, position = int(row["id"]), int(row["position"])
            records.append(
                WordRecord(
                    word_id=word_id,
                    position=position,
                    term=row["term"],
                    type=row["type"],
                    line=int(row["line"]),
                    state=row["state"],
                    stage1=Stage1Result.from_dict(json.loads(row["stage1"]))
                    if details and row["stage1"]
                    else None,
                    cards=tuple(
                        FlashcardRow(
                            position=position,
                            term=c["term"],
                            term_number=int(c["term_number"]),
                            tab_name=c["tab_name"],
                            primer=c["primer"],
                            front=c["front"],
                            back=c["back"],
                            tags=c["tags"],
                            honorific_level=c["honorific_level"],
                        )
                        for c in by_word.get(word_id, ())
                    ),
                    error=json.loads(row["error"]) if details and row["error"] else None,
                    attempts=int(row["attempts"]),
                    tokens=int(row["tokens"]),
                )
            )
        return records

    # --- runs and claims ----------------------------------------------------------------------
    def start_run(self, source_id: int, *, provider: str, model: str, settings: str) -> int:
        """Record a new run of the list and take back the claims of runs that died. On
        PostgreSQL the run holds an advisory lock (on a connection of its own) from before its
        row is visible until it finishes or its process dies."""
        row = runs_table.insert().values(
            source_id=source_id,
            status="running",
            started_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            provider=provider,
            model=model,
            settings=settings,
        )
        if self.is_postgres:
            self._run_lock = self.engine.connect()
            with self._run_lock.begin():
                run_id = int(self._run_lock.execute(row.returning(runs_table.c.id)).scalar_one())
                self._run_lock.execute(
                    sa.text("SELECT pg_advisory_lock(:space, :run)"),
                    {"space": _LOCK_SPACE, "run": run_id},
                )
        else:
            with self._tx() as conn:
                run_id = int(conn.execute(row.returning(runs_table.c.id)).scalar_one())
        self._recover(run_id)
        return run_id

    def _recover(self, current: int) -> None:
        """Mark dead runs ``crashed`` and free their claims (SQLite: every other run is dead,
        the file lock says so; PostgreSQL: a run is alive while it holds its advisory lock)."""
        with self._tx() as conn:
            running = [
                int(r)
                for r in conn.execute(
                    sa.select(runs_table.c.id).where(
                        runs_table.c.status == "running", runs_table.c.id != current
                    )
                ).scalars()
            ]
            alive = [current, *(run for run in running if self._alive(conn, run))]
            dead = [run for run in running if run not in alive]
            if dead:
                conn.execute(
                    runs_table.update()
                    .where(runs_table.c.id.in_(dead))
                    .values(status="crashed", ended_at=time.time())
                )
            conn.execute(
                words_table.update()
                .where(words_table.c.claimed_by.is_not(None))
                .where(words_table.c.claimed_by.not_in(alive))
                .values(claimed_by=None)
            )

    def _alive(self, conn: Connection, run_id: int) -> bool:
        if not self.is_postgres:
            return False
        params = {"space": _LOCK_SPACE, "run": run_id}
        taken = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:space, :run)"), params)
        return not taken.scalar()

    def claim(
        self, run_id: int, source_id: int, n: int, *, retry_failed: bool = False
    ) -> list[Claim]:
        """Claim up to ``n`` unclaimed words of the list in input order: pending or with stage 1
        done (``retry_failed``: failed words instead). No word is claimed twice, also across
        processes."""
        states = ("failed",) if retry_failed else ("pending", "stage1_done")
        candidates = (
            sa.select(
                words_table.c.id,
                words_table.c.position,
                words_table.c.term,
                words_table.c.type,
                words_table.c.stage1,
                source_words_table.c.line,
            )
            .join(source_words_table, source_words_table.c.word_id == words_table.c.id)
            .where(
                source_words_table.c.source_id == source_id,
                words_table.c.state.in_(states),
                words_table.c.claimed_by.is_(None),
            )
            .order_by(source_words_table.c.line)
            .limit(n)
            .with_for_update(skip_locked=True, of=words_table)
        )
        with self._tx() as conn:
            rows = conn.execute(candidates).all()
            if rows:
                conn.execute(
                    words_table.update()
                    .where(words_table.c.id.in_([row.id for row in rows]))
                    .values(claimed_by=run_id)
                )
        return [
            Claim(
                word_id=int(row.id),
                item=VocabularyItem(int(row.position), row.term, row.type, int(row.line)),
                stage1=Stage1Result.from_dict(json.loads(row.stage1)) if row.stage1 else None,
            )
            for row in rows
        ]

    def release(self, run_id: int) -> None:
        """Give back the words the run still holds (they stay pending or stage1_done)."""
        with self._tx() as conn:
            conn.execute(
                words_table.update()
                .where(words_table.c.claimed_by == run_id)
                .values(claimed_by=None)
            )

    def finish_run(self, run_id: int, status: str, *, clock_seconds: float | None = None) -> None:
        """Close the run with ``status`` and free its claims and its lock."""
        with self._tx() as conn:
            conn.execute(
                words_table.update()
                .where(words_table.c.claimed_by == run_id)
                .values(claimed_by=None)
            )
            conn.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id)
                .values(status=status, ended_at=time.time(), clock_seconds=clock_seconds)
            )
        if self._run_lock is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._run_lock.close()
            self._run_lock = None

    def runs(self, limit: int = 20) -> list[RunInfo]:
        """The latest runs, newest first, with the number of calls each made."""
        if not self.has_schema():
            return []
        calls = (
            sa.select(calls_table.c.run_id, sa.func.count().label("calls"))
            .group_by(calls_table.c.run_id)
            .subquery()
        )
        query = (
            sa.select(runs_table, sources_table.c.path, sa.func.coalesce(calls.c.calls, 0))
            .join(sources_table, sources_table.c.id == runs_table.c.source_id)
            .outerjoin(calls, calls.c.run_id == runs_table.c.id)
            .order_by(runs_table.c.id.desc())
            .limit(limit)
        )
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [
            RunInfo(
                run_id=int(row.id),
                source_path=str(row.path),
                status=str(row.status),
                started_at=float(row.started_at),
                ended_at=row.ended_at,
                host=str(row.host),
                pid=int(row.pid),
                provider=str(row.provider),
                model=str(row.model),
                calls=int(row[-1]),
                clock_seconds=row.clock_seconds,
            )
            for row in rows
        ]

    # --- stage results (one transaction each) ------------------------------------------------
    def _update_word(
        self,
        conn: Connection,
        statement: sa.Update,
        run_id: int,
        word_id: int,
        call: CallRecord,
        **values: Any,
    ) -> None:
        now = time.time()
        params = {
            "w_id": word_id,
            "w_run": run_id,
            "w_attempts": call.attempts,
            "w_tokens": call.prompt_tokens + call.completion_tokens,
            "w_at": now,
            **values,
        }
        if conn.execute(statement, params).rowcount != 1:
            raise DatabaseError(
                f"word {word_id} is no longer claimed by run {run_id}; another run took it over",
                code="claim_lost",
            )
        conn.execute(
            _INSERT_CALL,
            {"run_id": run_id, "word_id": word_id, "stage": call.stage, "status": call.status,
             "attempts": call.attempts, "prompt_tokens": call.prompt_tokens,
             "completion_tokens": call.completion_tokens, "latency": call.latency,
             "request_sha256": call.request_sha256, "at": now},
        )  # fmt: skip

    def save_stage1(
        self, run_id: int, word_id: int, stage1: Stage1Result, call: CallRecord
    ) -> None:
        """Stage 1 is done: keep its result (the word stays claimed for stage 2)."""
        with self._tx() as conn:
            self._update_word(
                conn, _STAGE1_DONE, run_id, word_id, call, w_stage1=_dumps(stage1.to_dict())
            )

    def save_cards(
        self, run_id: int, word_id: int, cards: Sequence[FlashcardRow], call: CallRecord
    ) -> None:
        """Stage 2 is done: keep the cards; the word is ``done`` and released."""
        with self._tx() as conn:
            self._update_word(conn, _DONE, run_id, word_id, call)
            conn.execute(
                _INSERT_CARD,
                [
                    {"word_id": word_id, "ordinal": i, "term": c.term,
                     "term_number": c.term_number, "tab_name": c.tab_name, "primer": c.primer,
                     "front": c.front, "back": c.back, "tags": c.tags,
                     "honorific_level": c.honorific_level}
                    for i, c in enumerate(cards)
                ],
            )  # fmt: skip

    def save_failure(
        self, run_id: int, word_id: int, error: Mapping[str, Any], call: CallRecord
    ) -> None:
        """The word failed with ``error`` (``StructuredError.to_dict()``); it is released."""
        with self._tx() as conn:
            self._update_word(
                conn, _FAILED, run_id, word_id, call, w_error=_dumps(error),
                w_code=call.status[:64],
            )  # fmt: skip


def _transition(**values: Any) -> sa.Update:
    """A word's state change, built once (SQLAlchemy caches its compiled form): only while the
    run holds the word's claim; attempts and tokens add up."""
    return (
        words_table.update()
        .where(
            words_table.c.id == sa.bindparam("w_id"),
            words_table.c.claimed_by == sa.bindparam("w_run"),
        )
        .values(
            attempts=words_table.c.attempts + sa.bindparam("w_attempts"),
            tokens=words_table.c.tokens + sa.bindparam("w_tokens"),
            updated_at=sa.bindparam("w_at"),
            **values,
        )
    )


_STAGE1_DONE: Final = _transition(state="stage1_done", stage1=sa.bindparam("w_stage1"))
_DONE: Final = _transition(state="done", error=None, error_code=None, claimed_by=None)
_FAILED: Final = _transition(
    state="failed", error=sa.bindparam("w_error"), error_code=sa.bindparam("w_code"),
    claimed_by=None,
)  # fmt: skip
_INSERT_CALL: Final = calls_table.insert()
_INSERT_CARD: Final = cards_table.insert()


def validate_url(url: str) -> None:
    """Raise :class:`~flashkit.errors.ValidationError` unless ``url`` is a database URL flashkit
    can use (nothing is connected)."""
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("--db: empty database URL", code="invalid_config")
    make_engine(url).dispose()
