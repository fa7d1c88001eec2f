"""The flashcard exports: Anki TSV, JSON and .apkg, each written atomically."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import sqlite3
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import genanki  # type: ignore[import-untyped]
import pytest

from flashkit.flashcards import export
from flashkit.flashcards.export import (
    FORMATS,
    anki_tags,
    neutralise,
    write_apkg,
    write_json,
    write_tsv,
)
from flashkit.flashcards.stages import TSV_COLUMNS, FlashcardRow, Stage1Result
from flashkit.flashcards.store import WordRecord

HEADER = [
    "#separator:tab",
    "#html:false",
    "#tags column:8",
    "#columns:" + "\t".join(TSV_COLUMNS),
]
ERROR = {"error": {"category": "upstream", "code": "rate_limited", "message": "429 after 5 tries"}}
Writer = Callable[[Any, Path], int]
WRITERS: dict[str, Writer] = {"tsv": write_tsv, "json": write_json, "apkg": write_apkg}
WRITER_NAMES = {writer.__name__ for writer in WRITERS.values()}


def card(position: int, term: str, tab: str, **fields: Any) -> FlashcardRow:
    values: dict[str, Any] = {
        "position": position,
        "term": term,
        "term_number": position,
        "tab_name": tab,
        "primer": "Picture the kitchen",
        "front": f"What is {term}? ({tab})",
        "back": f"{term} means something",
        "tags": f"term:{term},pos:noun,card:{tab}",
        "honorific_level": "neutral",
    }
    return FlashcardRow(**(values | fields))


def stage1(term: str, number: int) -> Stage1Result:
    return Stage1Result.from_dict(
        {
            "term_number": number,
            "term": term,
            "ipa": "[ipa]",
            "pos": "noun",
            "primary_meaning": "a meaning",
            "metaphor": "a metaphor",
            "comparison": {"vs": "여성", "nuance": "the opposite"},
            "homonyms": [{"term": "남성", "meaning": "southern castle"}],
            "korean_keywords": ["남자", "성별"],
        }
    )


def done(position: int, term: str, *cards: FlashcardRow) -> WordRecord:
    cards = cards or (card(position, term, "Scene"), card(position, term, "Example"))
    return WordRecord(
        word_id=position,
        position=position,
        term=term,
        type="noun",
        line=position + 1,
        state="done",
        stage1=stage1(term, position),
        cards=cards,
        attempts=2,
        tokens=1000,
    )


def failed(position: int, term: str) -> WordRecord:
    return WordRecord(
        position, position, term, "verb", position + 1, "failed", error=ERROR, attempts=5
    )


def pending(position: int, term: str, state: Any = "pending") -> WordRecord:
    return WordRecord(position, position, term, "adjective", position + 1, state)


@pytest.fixture
def records() -> list[WordRecord]:
    """Mixed states, not in position order (the writers keep the order given)."""
    return [
        done(3, "남성"),
        failed(1, "가다"),
        done(2, "예쁘다", card(2, "예쁘다", "Scene")),
        pending(4, "오다"),
        pending(5, "먹다", "stage1_done"),
    ]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory for the exports (so stray temporary files would show)."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def tsv_rows(path: Path) -> list[list[str]]:
    """The card lines of an export, parsed as Anki does (tab-separated, ``"`` quoting)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[:4] == HEADER
    assert lines[-1] == ""
    return list(csv.reader(io.StringIO("\n".join(lines[4:])), delimiter="\t"))


@dataclasses.dataclass
class Apkg:
    names: list[str]
    notes: list[tuple[str, list[str], list[str], int]]  # guid, fields, tags, model id
    cards: int
    models: dict[str, Any]
    decks: dict[str, Any]


def read_apkg(path: Path, scratch: Path) -> Apkg:
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        database = scratch / f"{path.name}.anki2"
        database.write_bytes(archive.read("collection.anki2"))
        assert json.loads(archive.read("media")) == {}
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT guid, flds, tags, mid FROM notes ORDER BY id").fetchall()
        (cards,) = connection.execute("SELECT count(*) FROM cards").fetchone()
        models, decks = connection.execute("SELECT models, decks FROM col").fetchone()
    notes = [(guid, flds.split("\x1f"), tags.split(), mid) for guid, flds, tags, mid in rows]
    return Apkg(names, notes, cards, json.loads(models), json.loads(decks))


# --- cells -------------------------------------------------------------------------------------
def test_formats_and_public_names() -> None:
    assert FORMATS == ("tsv", "json", "apkg")
    assert export.__all__ == sorted(export.__all__, key=str.casefold)
    assert set(export.__all__) == {"FORMATS", "anki_tags", "neutralise", *WRITER_NAMES}


@pytest.mark.parametrize("cell", ["=1+1", "+x", "-x", "@x", "\tx", "\rx", '=HYPERLINK("a")'])
def test_neutralise_prefixes_formula_starts(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["", "x", "1+1", "남성", " =1", "'=1", "a=b", "\nx"])
def test_neutralise_leaves_other_cells(cell: str) -> None:
    assert neutralise(cell) == cell


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("term:남성,pos:noun,card:Scene", "term:남성 pos:noun card:Scene"),
        (" term:남성 , pos:noun,, card:Scene ,", "term:남성 pos:noun card:Scene"),
        ("term:잘 지내다,pos:phrase", "term:잘_지내다 pos:phrase"),
        ("a  b\tc", "a b c"),
        ("", ""),
        (" , ,", ""),
    ],
)
def test_anki_tags(tags: str, expected: str) -> None:
    assert anki_tags(tags) == expected


# --- TSV ---------------------------------------------------------------------------------------
def test_tsv_has_the_anki_headers_and_one_line_per_card_of_done_words(
    records: list[WordRecord], out: Path
) -> None:
    path = out / "cards.tsv"
    assert write_tsv(records, path) == 3
    text = path.read_bytes().decode("utf-8")
    assert "\r" not in text
    lines = text.split("\n")
    assert lines[:4] == HEADER
    assert sum(line.startswith("#") for line in lines) == 4
    rows = tsv_rows(path)
    assert [(row[0], row[1], row[3]) for row in rows] == [
        ("3", "남성", "Scene"),
        ("3", "남성", "Example"),
        ("2", "예쁘다", "Scene"),
    ]
    assert rows[0] == [
        "3",
        "남성",
        "3",
        "Scene",
        "Picture the kitchen",
        "What is 남성? (Scene)",
        "남성 means something",
        "term:남성 pos:noun card:Scene",
        "neutral",
    ]
    assert os.listdir(out) == ["cards.tsv"]


def test_tsv_neutralises_formulas_flattens_fields_and_quotes(out: Path) -> None:
    risky = card(
        -1,
        "=1+1",
        "+x",
        primer="-x",
        front='"가다" vs "오다"\tgo\r\nor\rcome\nhere',
        back="@x",
        tags="-pos:verb, card:Scene",
        honorific_level="\t=cmd",
    )
    path = out / "cards.tsv"
    assert write_tsv([done(1, "=1+1", risky)], path) == 1
    line = path.read_text(encoding="utf-8").split("\n")[4]
    assert line.count("\t") == 8
    assert line.startswith("-1\t'=1+1\t-1\t'+x\t'-x\t\"")  # numbers stay numbers
    assert tsv_rows(path) == [
        [
            "-1",
            "'=1+1",
            "-1",
            "'+x",
            "'-x",
            '"가다" vs "오다" go or come here',
            "'@x",
            "'-pos:verb card:Scene",
            "' =cmd",
        ]
    ]


def test_tsv_of_nothing_is_the_headers(out: Path) -> None:
    path = out / "empty.tsv"
    assert write_tsv([failed(1, "가다"), pending(2, "오다")], str(path)) == 0
    assert path.read_text(encoding="utf-8") == "\n".join(HEADER) + "\n"


# --- JSON --------------------------------------------------------------------------------------
def test_json_has_every_word_raw_with_computed_summary(
    records: list[WordRecord], out: Path
) -> None:
    records[0] = done(3, "남성", card(3, "남성", "Scene", front="=1+1\tx", tags="a b"))
    path = out / "run.json"
    assert write_json(records, path) == 5
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    lines = text.splitlines()
    assert len(lines) == 2 + 5 + 2  # summary, "words", one line per word, the closing lines
    assert lines[2].startswith('  {"position": 3, "term": "남성"')
    assert "남성" in text
    assert data["summary"] == {
        "words": 5,
        "done": 2,
        "failed": 1,
        "pending": 2,
        "cards": 2,
        "attempts": 9,
        "tokens": 2000,
    }
    words = data["words"]
    assert [(w["position"], w["state"]) for w in words] == [
        (3, "done"),
        (1, "failed"),
        (2, "done"),
        (4, "pending"),
        (5, "stage1_done"),
    ]
    first = words[0]
    assert {k: first[k] for k in ("term", "type", "line", "attempts", "tokens")} == {
        "term": "남성",
        "type": "noun",
        "line": 4,
        "attempts": 2,
        "tokens": 1000,
    }
    assert first["stage1"] == records[0].stage1.to_dict()  # type: ignore[union-attr]
    assert first["stage1"]["comparison"] == {"vs": "여성", "nuance": "the opposite"}
    assert first["cards"] == [records[0].cards[0].to_dict()]
    assert first["cards"][0]["front"] == "=1+1\tx"  # raw: not neutralised, not flattened
    assert first["error"] is None
    assert words[1]["error"] == ERROR
    assert words[1]["stage1"] is None
    assert words[1]["cards"] == []


def test_json_writes_a_given_summary_as_given(records: list[WordRecord], out: Path) -> None:
    summary = {"words": 5, "elapsed_s": 12.5, "note": "résumé"}
    path = out / "run.json"
    assert write_json(iter(records), path, summary=summary) == 5
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["summary"] == summary
    assert len(data["words"]) == 5


# --- apkg --------------------------------------------------------------------------------------
def test_apkg_notes_fields_tags_and_model(
    records: list[WordRecord], out: Path, tmp_path: Path
) -> None:
    records[2] = done(
        2, "예쁘다", card(2, "예쁘다", "Scene", back='a < b & c\n"quoted"', tags="x y,z")
    )
    path = out / "deck.apkg"
    assert write_apkg(records, path, deck_name="Korean::Test") == 3
    package = read_apkg(path, tmp_path)
    assert package.names == ["collection.anki2", "media"]
    assert len(package.notes) == package.cards == 3
    guid, fields, tags, model_id = package.notes[0]
    assert fields == [
        "What is 남성? (Scene)",
        "남성 means something",
        "남성",
        "Picture the kitchen",
        "Scene",
        "neutral",
        "3",
    ]
    assert tags == ["term:남성", "pos:noun", "card:Scene"]
    assert guid == genanki.guid_for(3, "남성", "Scene")
    assert package.notes[2][1][1] == 'a &lt; b &amp; c<br>"quoted"'
    assert package.notes[2][2] == ["x_y", "z"]
    model = package.models[str(model_id)]
    assert model["name"] == "flashkit Korean card"
    assert [field["name"] for field in model["flds"]] == [
        "Front",
        "Back",
        "Term",
        "Primer",
        "Card",
        "Honorific",
        "Position",
    ]
    (template,) = model["tmpls"]
    assert template["name"] == "Card"
    assert "{{Primer}}" in template["qfmt"]
    assert "{{Front}}" in template["qfmt"]
    answer = template["afmt"]
    assert answer.startswith("{{FrontSide}}")
    assert answer.index("<hr id=answer>") < answer.index("{{Back}}") < answer.index("{{Term}}")
    assert ".primer" in model["css"]
    deck = next(d for d in package.decks.values() if d["name"] == "Korean::Test")
    assert 1 << 30 <= deck["id"] < 1 << 31
    assert 1 << 30 <= model_id < 1 << 31


def test_apkg_ids_and_guids_are_stable_across_exports(
    records: list[WordRecord], out: Path, tmp_path: Path
) -> None:
    write_apkg(records, out / "a.apkg")
    write_apkg(list(records), out / "b.apkg")
    first, second = read_apkg(out / "a.apkg", tmp_path), read_apkg(out / "b.apkg", tmp_path)
    assert [n[0] for n in first.notes] == [n[0] for n in second.notes]
    assert [n[3] for n in first.notes] == [n[3] for n in second.notes]
    assert first.decks.keys() == second.decks.keys()
    assert len({n[0] for n in first.notes}) == 3


def test_apkg_repeated_card_keys_get_distinct_guids(out: Path, tmp_path: Path) -> None:
    twins = done(1, "남성", card(1, "남성", "Scene"), card(1, "남성", "Scene", front="again"))
    assert write_apkg([twins], out / "d.apkg") == 2
    guids = [note[0] for note in read_apkg(out / "d.apkg", tmp_path).notes]
    assert guids == [genanki.guid_for(1, "남성", "Scene"), genanki.guid_for(1, "남성", "Scene", 2)]


def test_apkg_of_nothing_is_a_valid_empty_deck(out: Path, tmp_path: Path) -> None:
    assert write_apkg([failed(1, "가다")], out / "empty.apkg") == 0
    package = read_apkg(out / "empty.apkg", tmp_path)
    assert package.notes == []
    assert any(d["name"] == "flashkit: Korean vocabulary" for d in package.decks.values())


# --- atomic files ------------------------------------------------------------------------------
def broken(fmt: str) -> WordRecord:
    """A done word whose serialisation in ``fmt`` raises."""
    if fmt == "json":
        bad_stage1 = dataclasses.replace(stage1("남성", 9), ipa=object())  # type: ignore[arg-type]
        return dataclasses.replace(done(9, "남성"), stage1=bad_stage1)
    return done(9, "남성", card(9, "남성", "Scene", tags=None, front=None))


def then_fail(records: list[WordRecord]) -> Iterator[WordRecord]:
    yield from records
    raise RuntimeError("the store went away")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("failure", ["bad record", "iterator raises"])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(
    fmt: str, failure: str, records: list[WordRecord], out: Path
) -> None:
    write = WRITERS[fmt]
    path = out / f"cards.{fmt}"
    write(records, path)
    before = path.read_bytes()
    if failure == "bad record":
        with pytest.raises((TypeError, AttributeError)):
            write([records[0], broken(fmt), records[2]], path)
    else:
        with pytest.raises(RuntimeError, match="went away"):
            write(then_fail(records[:1]), path)
    assert path.read_bytes() == before
    assert os.listdir(out) == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_writing_over_an_existing_file_replaces_it(
    fmt: str, records: list[WordRecord], out: Path
) -> None:
    write = WRITERS[fmt]
    path = out / f"cards.{fmt}"
    path.write_bytes(b"old content that is longer than nothing\n" * 100)
    assert write(records, path) == (5 if fmt == "json" else 3)
    first = path.read_bytes()
    assert write(records[:1], path) == (1 if fmt == "json" else 2)
    assert path.read_bytes() != first
    assert b"old content" not in path.read_bytes()
    assert os.listdir(out) == [path.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(
    records: list[WordRecord], out: Path
) -> None:
    umask = os.umask(0o022)
    try:
        write_tsv(records, out / "new.tsv")
        assert stat.S_IMODE((out / "new.tsv").stat().st_mode) == 0o644  # not mkstemp's 0600
        (out / "new.tsv").chmod(0o640)
        write_tsv(records, out / "new.tsv")
        assert stat.S_IMODE((out / "new.tsv").stat().st_mode) == 0o640
    finally:
        os.umask(umask)


def test_a_missing_directory_raises_and_creates_nothing(
    records: list[WordRecord], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        write_json(records, tmp_path / "missing" / "run.json")
    assert not (tmp_path / "missing").exists()
