"""Two ``flashkit process`` runs on one list, one PostgreSQL database and one Redis: they split
the words (claims never taken twice), every word is done exactly once, and together they never
exceed the provider's limit, which they share through Redis."""

from __future__ import annotations

import collections
import json
import uuid
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from _processes import flashkit, sim_server

pytestmark = [pytest.mark.services, pytest.mark.soak]
WORDS = 200
RPM, BURST = 1200, 60  # the server's bucket: 20 requests/s, 60 at once


def _schema_url(database_url: str, schema: str) -> str:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{database_url}?options=-csearch_path%3D{schema}"


def _drop_schema(database_url: str, schema: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_two_processes_split_one_list_and_share_one_limit(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    from flashkit.sim import lexicon

    terms = [entry.term for entry in lexicon().entries][:WORDS]
    terms += [f"{t}{i}" for i, t in enumerate(terms)][: WORDS - len(terms)]
    words = tmp_path / "words.csv"
    words.write_text("position,term,type\n" + "".join(
        f"{i},{term},noun\n" for i, term in enumerate(terms, 1)), "utf-8")  # fmt: skip
    schema = f"fk_shared_{uuid.uuid4().hex[:8]}"
    db = _schema_url(database_url, schema)
    try:
        with sim_server("--profile", "healthy", "--set", f"rpm={RPM}",
                        "--set", f"bucket_fraction={BURST / RPM}") as base_url:  # fmt: skip
            runs = []
            for name in ("one", "two"):
                cwd = tmp_path / name
                cwd.mkdir()
                runs.append(flashkit(
                    "process", str(words), "--provider", "sim", "--base-url", f"{base_url}/v1",
                    "--db", db, "--redis", redis_url, "-b", "20", "-o", "out", cwd=cwd,
                ))  # fmt: skip
            for proc, name in zip(runs, ("one", "two"), strict=True):
                assert proc.wait(timeout=240) == 0, (tmp_path / name / "stderr.log").read_text()
            stats = httpx2.get(f"{base_url}/_sim/stats", timeout=10).json()
        engine = sa.create_engine(db)
        with engine.connect() as connection:
            states = connection.execute(
                sa.text("SELECT state, count(*) FROM flashkit_words GROUP BY state")
            ).all()
            ledger = connection.execute(
                sa.text("SELECT word_id, stage, run_id FROM flashkit_calls WHERE status = 'ok'")
            ).all()
            runs_done = connection.execute(sa.text("SELECT status FROM flashkit_runs")).all()
        engine.dispose()
    finally:
        _drop_schema(database_url, schema)

    assert dict(states) == {"done": WORDS}
    per_stage = collections.Counter((word, stage) for word, stage, _ in ledger)
    assert len(per_stage) == 2 * WORDS
    assert set(per_stage.values()) == {1}  # each stage once
    by_run = collections.Counter(run for _, _, run in ledger)
    assert len(by_run) == 2  # the words were split ...
    assert min(by_run.values()) > 0
    assert [status for (status,) in runs_done] == ["done", "done"]
    assert stats["stats"]["requests"] == 2 * WORDS, stats["stats"]  # nothing paid twice
    assert stats["stats"]["rate_limited_total"] == 0  # the shared limit was never exceeded
    # ... also by the server's own per-second count: no span of seconds over the bucket's rule.
    load = [row["requests"] for row in stats["load"]]
    for start in range(len(load)):
        total = 0
        for end in range(start, len(load)):
            total += load[end]
            assert total <= BURST + RPM / 60 * (end - start + 1), (start, end, json.dumps(load))
