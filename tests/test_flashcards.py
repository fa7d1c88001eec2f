"""The flashcard application: the stage contract, the store's state transitions and the run,
against the in-process simulator in virtual time with a real SQLite (and PostgreSQL) database."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import DatabaseError
from flashkit.flashcards.pipeline import RunReport, WordOutcome, process
from flashkit.flashcards.stages import (
    STAGE1_FIELDS,
    STAGE1_REQUIRED,
    TSV_COLUMNS,
    parse_stage1,
    parse_stage2,
    system_prompt,
)
from flashkit.flashcards.store import SCHEMA_VERSION, CallRecord, Store, StoreBusyError
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem, read_vocabulary
from flashkit.sim import FaultProfile, SimulatedUpstream

STAGE1 = {
    "term_number": 1, "term": "내가 [nɛ.ga]", "ipa": "[nɛ.ga]", "pos": "pronoun",
    "primary_meaning": "I", "metaphor": "m", "metaphor_noun": "n", "metaphor_action": "a",
    "suggested_location": "l", "anchor_object": "o", "anchor_sensory": "s",
    "explanation": "e", "comparison": None, "homonyms": [{"hanja": "x", "reading": "r"}],
    "korean_keywords": ["내가"],
}  # fmt: skip
HEADER = "\t".join(TSV_COLUMNS)


# --- the stage contract ------------------------------------------------------------------------
def test_one_stage1_schema_for_app_and_simulator() -> None:
    from flashkit.sim import _content

    assert _content.STAGE1_FIELDS is STAGE1_FIELDS
    assert set(STAGE1_REQUIRED) == set(STAGE1_FIELDS) - {"other_meanings", "usage_context",
                                                           "homonyms"}  # fmt: skip
    asked = [re.search(rf"\b{name}\b", system_prompt(1)) for name in STAGE1_FIELDS]
    where = [match.start() if match else -1 for match in asked]
    assert -1 not in where
    assert where == sorted(where)  # the prompt asks for them in the schema's order
    assert HEADER in system_prompt(2)  # the prompt file's {header} is the TSV columns
    # The simulator answers exactly the schema's fields, in order, and the one parser reads them.
    for term in ("학교", "뷁뷁"):
        text = _content.stage1_text(3, term, "noun")
        assert tuple(json.loads(text)) == STAGE1_FIELDS
        assert parse_stage1(text).to_dict() == json.loads(text)


def test_the_simulator_imports_the_stage_contract_alone() -> None:
    """flashkit.sim needs flashkit.flashcards.stages only, not the store, pipeline or exports."""
    code = "import sys, flashkit.sim; print(*sorted(m for m in sys.modules if 'flashcards' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["flashkit.flashcards", "flashkit.flashcards.stages"]


def test_stage1_parsing_fixes_the_originals_flaws() -> None:
    fenced = "Here you go:\n```json\n" + json.dumps(STAGE1, ensure_ascii=False) + "\n```\n"
    result = parse_stage1(fenced)
    assert result.pos == "pronoun"  # not "unknown"
    assert result.comparison is None  # null allowed
    assert result.homonyms == ({"hanja": "x", "reading": "r"},)  # no 'term' key needed
    missing = {k: v for k, v in STAGE1.items() if k != "comparison"}
    with pytest.raises(KeyError, match="comparison"):
        parse_stage1(json.dumps(missing))
    with pytest.raises(KeyError, match="metaphor_noun"):
        parse_stage1(json.dumps({**STAGE1, "metaphor_noun": None}))
    with pytest.raises(ValueError, match="no complete JSON object"):
        parse_stage1(json.dumps(STAGE1)[:80])
    assert type(result).from_dict(result.to_dict()) == result


def test_stage2_parsing_needs_nine_columns_and_at_least_one_row() -> None:
    row = "1\t내가\t1\tScene\tp\tf\tb\tterm:내가\tneutral"
    rows = parse_stage2(f"{HEADER}\n{row}\n1\tshort\trow\n", item=VocabularyItem(7, "내가"))
    assert len(rows) == 1
    assert rows[0].position == 7
    assert rows[0].to_tsv().count("\t") == 8
    with pytest.raises(ValueError, match="no card rows"):
        parse_stage2(HEADER)


# --- the run -----------------------------------------------------------------------------------
def _vocabulary(tmp_path: Path, terms: list[str]) -> Vocabulary:
    path = tmp_path / "words.csv"
    rows = "".join(f"{i},{term},noun\n" for i, term in enumerate(terms, 1))
    path.write_text("position,term,type\n" + rows, "utf-8")
    return read_vocabulary(path)


def _run(
    vocabulary: Vocabulary,
    store: Store,
    profile: FaultProfile,
    *,
    seed: int = 1,
    retry_failed: bool = False,
    outcomes: list[WordOutcome] | None = None,
    batch_size: int = 2,
    spares: int = 0,
    **client: Any,
) -> tuple[RunReport, SimulatedUpstream]:
    clock = VirtualClock()
    upstream = SimulatedUpstream(profile, seed=seed, clock=clock)
    client.setdefault("rng", random.Random(seed))

    async def main() -> RunReport:
        async with upstream.client(**client) as c:
            return await process(
                vocabulary, c, store=store, batch_size=batch_size, retry_failed=retry_failed,
                on_word=outcomes.append if outcomes is not None else None, spares=spares,
            )  # fmt: skip

    return run_virtual(main(), clock=clock), upstream


def test_a_run_commits_every_word_in_order_and_a_rerun_pays_nothing(tmp_path: Path) -> None:
    vocabulary = _vocabulary(tmp_path, ["사랑", "바보", "한국"])
    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        outcomes: list[WordOutcome] = []
        report, upstream = _run(vocabulary, store, FaultProfile.preset("flaky"), outcomes=outcomes)
        assert report.counts == {"pending": 0, "stage1_done": 0, "done": 3, "failed": 0}
        assert sorted(o.item.position for o in outcomes) == [1, 2, 3]
        records = store.records(report.source_id)
        assert [r.term for r in records] == ["사랑", "바보", "한국"]
        assert all(r.state == "done" and r.cards and r.stage1 for r in records)
        with store.engine.connect() as conn:
            ledger = conn.execute(sa.text("SELECT stage, status FROM flashkit_calls")).all()
        assert sorted(ledger) == [(1, "ok")] * 3 + [(2, "ok")] * 3
        assert upstream.stats.requests >= 6
        again, upstream2 = _run(vocabulary, store, FaultProfile.preset("flaky"))
        assert again.counts["done"] == 3
        assert upstream2.stats.requests == 0  # nothing left: nothing paid
        assert again.progress.total == 0


def test_a_word_with_stage1_done_only_pays_stage2(tmp_path: Path) -> None:
    vocabulary = _vocabulary(tmp_path, ["사랑", "바보"])
    with Store.open("sqlite:///:memory:") as store:
        source = store.register(vocabulary, vocabulary.items)
        run = store.start_run(source, provider="sim", model="m", settings="{}")
        (claim,) = store.claim(run, source, 1)
        stage1 = parse_stage1(json.dumps(STAGE1, ensure_ascii=False))
        store.save_stage1(run, claim.word_id, stage1, CallRecord(1, "ok", 1, 10, 20, 0.5, "x"))
        store.finish_run(run, "crashed")
        report, upstream = _run(vocabulary, store, FaultProfile.preset("healthy"))
        assert report.counts["done"] == 2
        assert upstream.stats.requests == 3  # word 1: stage 2 only; word 2: both stages
        first = store.records(source)[0]
        assert first.stage1 == stage1  # the stored analysis was used, not a new one
        assert first.attempts == 2
        assert first.tokens >= 30


def test_a_failing_word_is_recorded_with_its_error_and_retried_on_request(tmp_path: Path) -> None:
    vocabulary = _vocabulary(tmp_path, ["사랑"])
    broken = FaultProfile.preset("healthy", bad_content_rate=1.0)  # every reply unusable
    with Store.open("sqlite:///:memory:") as store:
        report, _ = _run(vocabulary, store, broken, budget=False)
        assert report.counts["failed"] == 1
        (record,) = store.records(report.source_id)
        assert record.error is not None
        assert record.error["error"]["code"] == "retry_exhausted"
        assert "unparsable_output" in record.error["error"]["message"]
        assert record.attempts == 5
        assert store.failures_by_code(report.source_id) == {"unparsable_output": 1}
        _skipped, upstream = _run(vocabulary, store, FaultProfile.preset("healthy"))
        assert upstream.stats.requests == 0  # failed words wait for --retry-failed
        retried, _ = _run(vocabulary, store, FaultProfile.preset("healthy"), retry_failed=True)
        assert retried.counts == {"pending": 0, "stage1_done": 0, "done": 1, "failed": 0}


def test_an_edited_row_is_a_new_word_and_an_unchanged_one_is_not(tmp_path: Path) -> None:
    first = _vocabulary(tmp_path, ["사랑", "바보"])
    with Store.open("sqlite:///:memory:") as store:
        _run(first, store, FaultProfile.preset("healthy"))
        edited = _vocabulary(tmp_path, ["사랑", "한국", "물"])  # row 2 edited, row 3 new
        report, upstream = _run(edited, store, FaultProfile.preset("healthy"))
        assert upstream.stats.requests == 4  # 한국 and 물, both stages; 사랑 is done
        assert [r.term for r in store.records(report.source_id)] == ["사랑", "한국", "물"]


def test_spare_copies_cut_the_tail_and_the_first_answer_wins(tmp_path: Path) -> None:
    """With every word claimed and slots idle, unfinished calls are raced by spare copies: the
    run ends sooner, each stage is committed once, and the spares are bounded."""
    vocabulary = _vocabulary(tmp_path, ["사랑", "바보", "한국", "물", "불", "산"])
    slow = FaultProfile.preset("healthy", latency_median=1.0, latency_p99=30.0, error_rate=0.2)
    ends = {}
    for spares in (0, 2):
        with Store.open("sqlite:///:memory:") as store:
            report, upstream = _run(vocabulary, store, slow, seed=3, batch_size=6,
                                    spares=spares)  # fmt: skip
            assert report.counts["done"] == 6
            with store.engine.connect() as conn:
                ledger = conn.execute(sa.text("SELECT word_id, stage FROM flashkit_calls")).all()
            assert len(set(ledger)) == 12  # one committed call per stage, whichever copy won
            ends[spares] = (report.seconds, report.progress.spares, upstream.stats.requests)
    (plain, none_sent, plain_requests), (raced, sent, raced_requests) = ends[0], ends[2]
    assert none_sent == 0
    assert 0 < sent <= 2 * 12
    assert raced < plain
    assert raced_requests <= 2 * plain_requests  # spares are bounded, their retries budgeted


def test_no_spare_copy_goes_while_the_limiter_has_no_room(tmp_path: Path) -> None:
    from flashkit.ratelimit import RateLimiter

    vocabulary = _vocabulary(tmp_path, ["사랑", "바보", "한국"])
    profile = FaultProfile.preset("healthy", latency_median=1.0, latency_p99=10.0)
    clock = VirtualClock()
    upstream = SimulatedUpstream(profile, seed=2, clock=clock)
    limiter = RateLimiter(6, 60.0, clock=clock)  # exactly the six calls the list needs

    async def main() -> RunReport:
        with Store.open("sqlite:///:memory:") as store:
            async with upstream.client(limiter=limiter) as client:
                return await process(vocabulary, client, store=store, batch_size=3, spares=2)

    report = run_virtual(main(), clock=clock)
    assert report.counts["done"] == 3
    assert report.progress.spares == 0
    assert upstream.stats.requests == 6


def test_words_released_over_time_start_no_earlier(tmp_path: Path) -> None:
    vocabulary = _vocabulary(tmp_path, ["사랑", "바보", "한국"])
    outcomes: list[WordOutcome] = []
    clock = VirtualClock()
    upstream = SimulatedUpstream(FaultProfile.preset("healthy"), seed=1, clock=clock)

    async def main() -> RunReport:
        with Store.open("sqlite:///:memory:") as store:
            async with upstream.client() as client:
                return await process(vocabulary, client, store=store, release=[0.0, 30.0, 60.0],
                                     on_word=outcomes.append)  # fmt: skip

    run_virtual(main(), clock=clock)
    starts = {o.item.position: o.started for o in outcomes}
    assert starts[1] < 30.0 <= starts[2] < 60.0 <= starts[3]
    assert all(o.finished > o.started for o in outcomes)


def test_claims_are_never_given_twice_and_a_dead_runs_claims_come_back(tmp_path: Path) -> None:
    vocabulary = _vocabulary(tmp_path, ["가", "나", "다", "라"])
    with Store.open("sqlite:///:memory:") as store:
        source = store.register(vocabulary, vocabulary.items)
        one = store.start_run(source, provider="sim", model="m", settings="{}")
        two = store.start_run(source, provider="sim", model="m", settings="{}")
        a = store.claim(one, source, 3)
        b = store.claim(two, source, 3)
        assert {c.word_id for c in a}.isdisjoint(c.word_id for c in b)
        assert len(a) + len(b) == 4
        with pytest.raises(DatabaseError, match="no longer claimed"):
            store.save_stage1(two, a[0].word_id, parse_stage1(json.dumps(STAGE1)),
                              CallRecord(1, "ok", 1, 1, 1, 0.1, "x"))  # fmt: skip
        # A new run on SQLite: every other "running" run is dead (the file lock says so).
        three = store.start_run(source, provider="sim", model="m", settings="{}")
        assert len(store.claim(three, source, 10)) == 4
        assert {r.status for r in store.runs()} == {"crashed", "running"}


def test_sqlite_admits_one_process_and_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Store.open(url), pytest.raises(StoreBusyError, match="in use by another flashkit"):
        Store.open(url)


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Store.open(url) as store, store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE flashkit_meta SET value = '99'"))
    with pytest.raises(
        DatabaseError, match=f"schema 99, this flashkit reads schema {SCHEMA_VERSION}"
    ):
        Store.open(url)


@pytest.mark.services
def test_the_store_works_on_postgresql(database_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:  # a fresh schema for this test
        connection.execute(sa.text("DROP SCHEMA IF EXISTS flashkit_store_test CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA flashkit_store_test"))
    engine.dispose()
    url = f"{database_url}?options=-csearch_path%3Dflashkit_store_test"
    vocabulary = _vocabulary(tmp_path, ["사랑", "바보", "한국"])
    with Store.open(url) as store:
        report, _ = _run(vocabulary, store, FaultProfile.preset("flaky"))
        assert report.counts["done"] == 3
        assert [r.term for r in store.records(report.source_id)] == ["사랑", "바보", "한국"]
