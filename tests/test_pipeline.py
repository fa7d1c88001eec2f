"""The flashcard pipeline: CSV reading, stage parsing, running against the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flashkit.client import LLMClient
from flashkit.clock import VirtualClock, run_virtual
from flashkit.pipeline import (
    PipelineReport,
    VocabularyError,
    VocabularyItem,
    parse_stage1,
    parse_stage2,
    read_vocabulary,
    run_pipeline,
    write_json,
    write_tsv,
)
from flashkit.sim import FaultProfile, SimulatedUpstream

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HSK_HEADER = (
    "Position,Hangul,IPA_Pronunciation,Word_Type,TOPIK_Level,Definition,Example_Sentence,"
    "Example_Sentence_IPA,Example_Sentence_Translation,Usage_Hint,Frequency,Frequency_Number,"
    "Verified,Quality_Score,HSK_Compliance,Processed,Reasoning_Tokens,Total_Tokens,O4_Error"
)
HSK_ROW = (
    "5,안,an,adverb,1,not,저는 커피를 안 마셔요.,tɕʌ.nɯn kʰʌ.pʰi.ɾɯl an ma.sjʌ.jo,"
    "I don't drink coffee.,Used before verbs to negate actions in casual or polite speech,5,"
    "32915,True,Very common negation adverb in spoken and written Korean,False,True,576,1287,"
)
STAGE1 = {
    "term_number": 1, "term": "내가 [nɛ.ga]", "ipa": "[nɛ.ga]", "pos": "pronoun",
    "primary_meaning": "I", "metaphor": "m", "metaphor_noun": "n", "metaphor_action": "a",
    "suggested_location": "l", "anchor_object": "o", "anchor_sensory": "s",
    "explanation": "e", "comparison": None, "homonyms": [{"hanja": "x", "reading": "r"}],
    "korean_keywords": ["내가"],
}  # fmt: skip


def test_reads_both_csv_shapes(tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    small.write_text("\ufeffposition,term,type\n1,내가,pronoun\n2,가다,v\n\n3,이,det\n", "utf-8")
    items = read_vocabulary(small)
    assert [(i.position, i.term, i.type) for i in items] == [
        (1, "내가", "pronoun"), (2, "가다", "verb"), (3, "이", "determiner"),
    ]  # fmt: skip
    hsk = tmp_path / "hsk.csv"
    hsk.write_text(f"{HSK_HEADER}\n{HSK_ROW}\n", "utf-8")
    (item,) = read_vocabulary(hsk)
    assert (item.position, item.term, item.type) == (5, "안", "adverb")
    assert item.extra["Definition"] == "not"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")
def test_reads_the_shared_data_files() -> None:
    assert len(read_vocabulary(SHARED / "vocabulary_1000.csv")) == 1000
    assert len(read_vocabulary(SHARED / "hsk_10k.csv", limit=100)) == 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("position,term,type\n1,,noun\n", "bad.csv:2: empty term"),
        ("position,term,type\n1,a,noun\nzero,b,noun\n", "bad.csv:3: position 'zero'"),
        ("position,term,type\n1,a,noun\n1,b,noun\n", "bad.csv:3: position 1 repeats line 2"),
        ("word,meaning\n안녕,hello\n", "bad.csv:1: no 'term' or 'Hangul' column"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(text, "utf-8")
    with pytest.raises(VocabularyError, match=message.replace("(", r"\(")):
        read_vocabulary(bad)


def test_stage1_parsing_fixes_the_originals_flaws() -> None:
    fenced = "Here you go:\n```json\n" + json.dumps(STAGE1, ensure_ascii=False) + "\n```\n"
    result = parse_stage1(fenced)
    assert result.pos == "pronoun"  # not "unknown"
    assert result.comparison is None  # null allowed
    assert result.homonyms == ({"hanja": "x", "reading": "r"},)  # no 'term' key needed
    missing = {k: v for k, v in STAGE1.items() if k != "comparison"}
    with pytest.raises(KeyError, match="comparison"):
        parse_stage1(json.dumps(missing))
    with pytest.raises(ValueError, match="no complete JSON object"):
        parse_stage1(json.dumps(STAGE1)[:80])


def test_stage2_parsing_needs_nine_columns_and_at_least_one_row() -> None:
    header = "position\tterm\tterm_number\ttab_name\tprimer\tfront\tback\ttags\thonorific_level"
    row = "1\t내가\t1\tScene\tp\tf\tb\tterm:내가\tneutral"
    rows = parse_stage2(f"{header}\n{row}\n1\tshort\trow\n", item=VocabularyItem(7, "내가"))
    assert len(rows) == 1
    assert rows[0].position == 7
    assert rows[0].to_tsv().count("\t") == 8
    with pytest.raises(ValueError, match="no card rows"):
        parse_stage2(header)


def test_pipeline_keeps_order_reports_failures_and_resumes(tmp_path: Path) -> None:
    clock = VirtualClock()
    items = [VocabularyItem(i, term, "noun") for i, term in enumerate(["사랑", "바보", "한국"], 1)]
    profile = FaultProfile.preset("flaky", invalid_keys=())

    async def main(skip: Path | None) -> PipelineReport:
        upstream = SimulatedUpstream(profile, seed=2, clock=clock)
        async with LLMClient(provider="sim", transport=upstream.transport(), clock=clock) as c:
            return await run_pipeline(items, c, concurrency=2, resume_from=skip)

    report = run_virtual(main(None), clock=clock)
    assert [r.item.position for r in report.results] == [1, 2, 3]
    assert report.summary()["succeeded"] == 3
    out = tmp_path / "cards.tsv"
    assert write_tsv(report, out) == len(report.cards)
    write_json(report, tmp_path / "cards.json")
    again = run_virtual(main(out), clock=clock)
    assert len(again.skipped) == 3


def test_a_failing_word_is_reported_not_dropped() -> None:
    clock = VirtualClock()
    profile = FaultProfile.preset("healthy", bad_content_rate=1.0)  # every reply broken

    async def main() -> PipelineReport:
        upstream = SimulatedUpstream(profile, seed=1, clock=clock)
        client = LLMClient(
            provider="sim", transport=upstream.transport(), clock=clock, budget=False
        )
        async with client:
            return await run_pipeline([VocabularyItem(1, "사랑", "noun")], client)

    report = run_virtual(main(), clock=clock)
    (failed,) = report.failed
    assert failed.error is not None
    assert failed.error["error"]["code"] == "retry_exhausted"
    assert "unparsable_output" in failed.error["error"]["message"]
    assert failed.attempts == 5
