"""Durable by construction: ``flashkit process`` killed for real (SIGKILL, SIGINT, SIGTERM, and
``os._exit`` between a call and its commit) loses at most its calls in flight, and a rerun of
the same command finishes every word exactly once.

The first two tests run against ``flashkit sim serve --profile healthy`` in its own process over
loopback, on the 1,000-word list when ``../shared/data`` is present (else a list of the
simulator's lexicon of the same size). Kill moments are drawn at random (seeded) from the
progress the run's own database shows; nothing depends on how long anything takes.
"""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _processes import (
    SHARED,
    done_words,
    flashkit,
    query,
    server_requests,
    sim_server,
    tsv_cards,
    wait_until,
)

pytestmark = pytest.mark.soak
BATCH = 50
RUN_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared = SHARED / "vocabulary_1000.csv"
    if shared.exists():
        return shared
    from flashkit.sim import lexicon

    path = tmp_path_factory.mktemp("words") / "words.csv"
    entries = lexicon().entries
    rows = [f"{i},{entries[i % len(entries)].term}{i // len(entries) or ''},noun"
            for i in range(1, 1001)]  # fmt: skip
    path.write_text("position,term,type\n" + "\n".join(rows) + "\n", "utf-8")
    return path


def _args(vocabulary: Path, base_url: str) -> list[str]:
    return ["process", str(vocabulary), "--provider", "openai", "--base-url", f"{base_url}/v1",
            "-b", str(BATCH), "--db", "sqlite:///state.db", "-o", "out"]  # fmt: skip


def _assert_every_word_once(tmp: Path, words: int) -> None:
    rows = tsv_cards(tmp / "out" / "cards.tsv")
    per_word = collections.Counter(int(row[0]) for row in rows)
    assert sorted(per_word) == list(range(1, words + 1))  # every word, in the TSV
    cards = collections.Counter((int(row[0]), row[3]) for row in rows)
    assert max(cards.values()) == 1  # ... each card once
    assert [int(row[0]) for row in rows] == sorted(int(row[0]) for row in rows)  # input order
    stored = query(tmp / "state.db", "SELECT count(*) FROM flashkit_cards")[0][0]
    assert stored == len(rows)


def test_sigkill_at_three_random_moments_loses_at_most_the_calls_in_flight(
    vocabulary: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261203)
    db = tmp_path / "state.db"
    words = 400  # three kills at 20-100 words apart leave a run to finish
    with sim_server("--profile", "healthy") as base_url:
        args = [*_args(vocabulary, base_url), "--limit", str(words)]
        for _ in range(3):
            before = done_words(db)
            target = before + rng.randint(20, 100)
            proc = flashkit(*args, cwd=tmp_path)
            try:
                wait_until(
                    lambda p=proc, n=target: done_words(db) >= n or p.poll() is not None,
                    RUN_TIMEOUT,
                    f"{target} words done",
                )
                assert proc.poll() is None, "the run ended before it could be killed"
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        final = flashkit(*args, cwd=tmp_path)
        assert final.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "stderr.log").read_text()
        requests = server_requests(base_url)
    _assert_every_word_once(tmp_path, words)
    assert requests <= 2 * words + 3 * BATCH, requests
    statuses = collections.Counter(row[0] for row in query(db, "SELECT status FROM flashkit_runs"))
    assert statuses == {"crashed": 3, "done": 1}


@pytest.mark.parametrize(
    ("sig", "code", "words"), [(signal.SIGINT, 130, 400), (signal.SIGTERM, 143, 200)]
)
def test_an_interrupted_run_commits_says_so_and_continues(
    sig: signal.Signals, code: int, words: int, vocabulary: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    with sim_server("--profile", "healthy") as base_url:
        args = [*_args(vocabulary, base_url), "--limit", str(words)]
        proc = flashkit(*args, cwd=tmp_path)
        try:
            wait_until(lambda: done_words(db) >= words // 10 or proc.poll() is not None,
                       RUN_TIMEOUT, f"{words // 10} words done")  # fmt: skip
            proc.send_signal(sig)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == code
        log = (tmp_path / "stderr.log").read_text("utf-8")
        done = done_words(db)
        pending = words - done
        assert f"interrupted: {done} done, {pending} pending — run the same command again to " \
               "continue" in log  # fmt: skip
        assert query(db, "SELECT count(*) FROM flashkit_words WHERE claimed_by IS NOT NULL") == [
            (0,)]  # fmt: skip
        assert len(tsv_cards(tmp_path / "out" / "cards.tsv")) == 3 * done  # exported at exit
        final = flashkit(*args, cwd=tmp_path)
        assert final.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "stderr.log").read_text()
        requests = server_requests(base_url)
    _assert_every_word_once(tmp_path, words)
    assert requests <= 2 * words + BATCH, requests


CRASH_AFTER_CALL = textwrap.dedent(
    """
    import os, sys
    from flashkit.flashcards.store import Store

    save = getattr(Store, sys.argv[1])
    calls = 0

    def crash_before_commit(self, *args, **kwargs):
        global calls
        calls += 1
        if calls == int(sys.argv[2]):
            os._exit(70)  # the answer is in hand, its commit never happens
        return save(self, *args, **kwargs)

    setattr(Store, sys.argv[1], crash_before_commit)
    from flashkit.cli import app
    app(sys.argv[3:], prog_name="flashkit")
    """
)


@pytest.mark.parametrize("step", ["save_stage1", "save_cards"])
def test_a_crash_between_the_call_and_its_commit_loses_no_word(step: str, tmp_path: Path) -> None:
    words = tmp_path / "words.csv"
    words.write_text("position,term,type\n" + "".join(
        f"{i},{term},noun\n" for i, term in enumerate(["사랑", "바보", "한국", "물", "불"], 1)
    ), "utf-8")  # fmt: skip
    args = ["process", str(words), "--provider", "sim", "--profile", "healthy", "-b", "2",
            "--db", "sqlite:///state.db", "-o", "out"]  # fmt: skip
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_CALL, step, "3", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert crashed.returncode == 70, crashed.stderr
    db = tmp_path / "state.db"
    states = dict(query(db, "SELECT term, state FROM flashkit_words"))
    assert set(states.values()) <= {"pending", "stage1_done", "done"}  # nothing lost or failed
    rerun = subprocess.run(
        [sys.executable, "-m", "flashkit.cli", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert set(dict(query(db, "SELECT term, state FROM flashkit_words")).values()) == {"done"}
    _assert_every_word_once(tmp_path, 5)
    # Each stage committed once: the crashed call was sent again, no finished stage was.
    ledger = collections.Counter(query(db, "SELECT word_id, stage FROM flashkit_calls"))
    assert set(ledger.values()) == {1}
    assert len(ledger) == 10
