"""read_vocabulary: both CSV shapes, and one clear message (file, line, fix) for every problem."""

from __future__ import annotations

import csv
import hashlib
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from flashkit.errors import ValidationError
from flashkit.flashcards.vocabulary import (
    Duplicate,
    InvalidRow,
    VocabularyError,
    VocabularyItem,
    read_vocabulary,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HSK_HEADER = (
    "Position,Hangul,IPA_Pronunciation,Word_Type,TOPIK_Level,Definition,Example_Sentence,"
    "Example_Sentence_IPA,Example_Sentence_Translation,Usage_Hint,Frequency,Frequency_Number,"
    "Verified,Quality_Score,HSK_Compliance,Processed,Reasoning_Tokens,Total_Tokens,O4_Error"
)
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")


def write(tmp_path: Path, data: str | bytes, name: str = "words.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def fail(path: Path | str, **options: Any) -> VocabularyError:
    with pytest.raises(VocabularyError) as info:
        read_vocabulary(path, **options)
    return info.value


def check(
    error: VocabularyError, path: Path | str, line: int | None, text: str, column: int | None = None
) -> None:
    """The message is ``{path}[:{line}[:{column}]]: ...`` containing ``text``; details agree."""
    where = "".join(f":{n}" for n in (line, column) if n is not None)
    assert error.message.startswith(f"{path}{where}: "), error.message
    assert text in error.message, error.message
    assert error.code == "invalid_vocabulary"
    assert isinstance(error, ValidationError)
    assert error.details["file"] == str(path)
    assert error.details["line"] == line
    assert error.details.get("column") == column


# --- the two shapes ---------------------------------------------------------------------------


def test_minimal_shape(tmp_path: Path) -> None:
    data = "position,term,type\n1,사과,n\n2,먹다,V\n3,빨리,\n"
    path = write(tmp_path, data)
    vocabulary = read_vocabulary(path)
    assert vocabulary.items == (
        VocabularyItem(1, "사과", "noun"),
        VocabularyItem(2, "먹다", "verb"),
        VocabularyItem(3, "빨리", "unknown"),
    )
    assert [item.line for item in vocabulary.items] == [2, 3, 4]
    assert vocabulary.shape == "minimal"
    assert vocabulary.encoding == "utf-8"
    assert vocabulary.path == path
    assert vocabulary.sha256 == hashlib.sha256(data.encode()).hexdigest()
    assert (vocabulary.rows, vocabulary.invalid, vocabulary.duplicates) == (3, (), ())
    assert vocabulary.items[0].extra == {}


def test_minimal_header_any_case_and_spacing_without_position(tmp_path: Path) -> None:
    path = write(tmp_path, " Term , TYPE \n사과,noun\n\n먹다,verb\n")
    items = read_vocabulary(path).items
    assert [(i.position, i.term, i.type, i.line) for i in items] == [
        (1, "사과", "noun", 2),
        (2, "먹다", "verb", 4),
    ]


def test_term_only(tmp_path: Path) -> None:
    items = read_vocabulary(write(tmp_path, "term\n사과\n")).items
    assert items == (VocabularyItem(1, "사과", "unknown"),)


def test_hsk_shape(tmp_path: Path) -> None:
    rows = [
        HSK_HEADER,
        '1,내가,nɛ.ka,pronoun,1,"I,\nme",내가 밥을 먹었어.,,I ate rice.,,'
        "1,39801,True,,False,True,960,1677,",
        "2,그,kɯ,Pron,1,that,,,,,2,35563,True,,False,True,768,1482,",
    ]
    vocabulary = read_vocabulary(write(tmp_path, "\n".join(rows) + "\n"))
    assert vocabulary.shape == "hsk"
    first, second = vocabulary.items
    assert (first.position, first.term, first.type, first.line) == (1, "내가", "pronoun", 2)
    assert (second.position, second.term, second.type, second.line) == (2, "그", "pronoun", 4)
    assert first.extra["Definition"] == "I,\nme"
    assert first.extra["Example_Sentence"] == "내가 밥을 먹었어."
    assert "Example_Sentence_IPA" not in first.extra  # empty columns are left out
    assert "O4_Error" not in first.extra
    assert set(first.extra).isdisjoint({"Position", "Hangul", "Word_Type"})


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffposition,term,type\r\n1,사과,noun\r\n2,배,noun\r\n")
    vocabulary = read_vocabulary(path)
    assert [(i.term, i.line) for i in vocabulary.items] == [("사과", 2), ("배", 3)]
    assert vocabulary.encoding == "utf-8"


def test_terms_are_stripped_and_nfc(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "사과")
    assert decomposed != "사과"
    item = read_vocabulary(write(tmp_path, f"term\n  {decomposed}  \n")).items[0]
    assert item.term == "사과"
    assert unicodedata.is_normalized("NFC", item.term)


def test_duplicates_are_recorded_and_homographs_kept(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "배")
    data = f"term,type\n배,noun\n배,verb\n{nfd},n\n사과,noun\n배,noun\n"
    vocabulary = read_vocabulary(write(tmp_path, data))
    assert [(i.term, i.type) for i in vocabulary.items] == [
        ("배", "noun"),
        ("배", "verb"),
        ("사과", "noun"),
    ]
    assert vocabulary.duplicates == (Duplicate(4, "배", "noun", 2), Duplicate(6, "배", "noun", 2))
    assert vocabulary.rows == 5


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\nposition,term,type\n\n1,사과,noun\n , ,\n,,\n2,배,noun\n\n")
    vocabulary = read_vocabulary(path)
    assert [(i.term, i.line) for i in vocabulary.items] == [("사과", 5), ("배", 8)]
    assert vocabulary.rows == 2


def test_explicit_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type\n1,안녕하세요,phrase\n".encode("cp949"))
    vocabulary = read_vocabulary(path, encoding="cp949")
    assert vocabulary.items[0].term == "안녕하세요"
    assert vocabulary.encoding == "cp949"


def test_limit_keeps_the_first_items_after_dedup(tmp_path: Path) -> None:
    path = write(tmp_path, "term\n가\n가\n나\n다\n라\n")
    vocabulary = read_vocabulary(path, limit=2)
    assert [i.term for i in vocabulary.items] == ["가", "나"]
    assert vocabulary.rows == 5
    assert len(vocabulary.duplicates) == 1
    assert len(read_vocabulary(path, limit=10).items) == 4


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_limit_must_be_positive(tmp_path: Path, limit: Any) -> None:
    with pytest.raises(ValidationError, match="limit must be a whole number >= 1"):
        read_vocabulary(write(tmp_path, "term\n가\n"), limit=limit)


def test_path_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "term\n\n")
    monkeypatch.chdir(tmp_path)
    check(fail("./words.csv"), "./words.csv", 1, "has a header but no rows")


# --- unreadable, empty, binary ----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    check(fail(path), path, None, "cannot read the vocabulary file (No such file or directory)")


def test_directory(tmp_path: Path) -> None:
    check(fail(tmp_path), tmp_path, None, "cannot read the vocabulary file (Is a directory)")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "term\n가\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    error = fail(path)
    check(error, path, None, "cannot read the vocabulary file (Permission denied)")
    assert "permissions" in error.message


@pytest.mark.parametrize("data", [b"", b"  \n\r\n\t", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data)
    check(fail(path), path, None, "is empty; expected a header line such as 'position,term,type'")


def test_nul_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, b"term\n\xea\xb0\x80\nab\x00c\n")
    check(fail(path), path, 3, "contains a NUL byte", column=3)


@pytest.mark.parametrize(
    ("magic", "text"),
    [
        (b"PK\x03\x04", "looks like an Excel workbook (.xlsx); save it as 'CSV UTF-8'"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "looks like an old Excel workbook (.xls)"),
        (b"%PDF-1.7\n", "is a PDF document"),
        (b"\xff\xfet\x00e\x00", "is UTF-16 text"),
    ],
)
def test_binary_formats_by_magic(tmp_path: Path, magic: bytes, text: str) -> None:
    path = write(tmp_path, magic + b"\x00\x01rest of the file")
    check(fail(path), path, None, text)


# --- header -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("separator", "what"), [("\t", "tab"), (";", "semicolon")])
def test_tab_or_semicolon_separated(tmp_path: Path, separator: str, what: str) -> None:
    path = write(tmp_path, separator.join(["position", "term", "type"]) + "\n1;가;noun\n")
    error = fail(path)
    check(error, path, 1, f"the header looks {what}-separated")
    assert "comma-separated" in error.message


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, "\nposition,term,type\n\n , ,\n")
    check(fail(path), path, 2, "has a header but no rows")


def test_unknown_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "term,meaning,notes\n가,go,\n")
    error = fail(path)
    check(error, path, 1, "unknown column(s) 'meaning', 'notes'")
    assert "'position,term,type'" in error.message
    assert HSK_HEADER in error.message


def test_header_without_term(tmp_path: Path) -> None:
    path = write(tmp_path, "position,type\n1,noun\n")
    check(fail(path), path, 1, "the header has no 'term' column (found 'position', 'type')")
    path = write(tmp_path, "Position,Word_Type\n1,noun\n", "hsk.csv")
    check(fail(path), path, 1, "the header has no 'Hangul' column")


def test_header_mixing_shapes(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,Hangul\n1,가,가\n")
    check(fail(path), path, 1, "the header mixes the minimal columns ('term') with the HSK")


def test_missing_header_line(tmp_path: Path) -> None:
    path = write(tmp_path, "1,사과,noun\n2,배,noun\n")
    check(fail(path), path, 1, "(is the header line missing?")


def test_header_with_empty_or_repeated_names(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type,\n1,가,noun,\n")
    check(fail(path), path, 1, "column 4 of the header has no name")
    path = write(tmp_path, "term,Term\n가,가\n", "twice.csv")
    check(fail(path), path, 1, "column 'term' appears twice in the header")


# --- encodings --------------------------------------------------------------------------------


def test_cp949_file(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type\n1,안녕하세요,phrase\n".encode("cp949"))
    error = fail(path)
    check(error, path, 2, "not valid UTF-8 (byte 0xbe)", column=3)
    assert "looks like CP949/EUC-KR (Korean Windows)" in error.message
    assert "--encoding cp949" in error.message


def test_cp1252_file(tmp_path: Path) -> None:
    path = write(tmp_path, "term,type\ncafé,noun\n".encode("cp1252"))
    error = fail(path)
    check(error, path, 2, "not valid UTF-8 (byte 0xe9)", column=4)
    assert "looks like Windows-1252" in error.message
    assert "--encoding cp1252" in error.message


def test_invalid_utf8_of_no_known_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "term\n가나\n".encode() + b"\xff\x81\x8d\x90\n")
    error = fail(path)
    check(error, path, 3, "not valid UTF-8 (byte 0xff)", column=1)
    assert "cp949" not in error.message
    assert "cp1252" not in error.message


def test_invalid_utf8_column_counts_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffterm\n가나다\xe9\n".encode().replace(b"\xc3\xa9", b"\xe9"))
    check(fail(path), path, 2, "not valid UTF-8 (byte 0xe9)", column=4)


def test_unknown_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "term\n가\n")
    check(fail(path, encoding="klingon-8"), path, None, "unknown encoding 'klingon-8'")


def test_decode_error_with_given_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "term\nab가\n")
    check(fail(path, encoding="ascii"), path, 2, "not valid ascii (byte 0xea)", column=3)


# --- quoting and the CSV limit ----------------------------------------------------------------


def test_unclosed_quote_until_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, 'term,type\n가,noun\n"나,noun\n다,noun\n라,noun\n')
    check(fail(path), path, 3, "a quoted field opens here and is never closed")
    check(fail(path, skip_invalid=True), path, 3, "is never closed")


def test_unclosed_quote_swallowing_lines_into_the_type(tmp_path: Path) -> None:
    path = write(tmp_path, 'term,type\n가,"noun\n나,noun\n다,verb",x\n라,noun\n')
    error = fail(path, skip_invalid=True)
    check(error, path, 2, "a quoted field opens here and is only closed on line 4")
    assert "the type spans lines" in error.message


def test_unclosed_quote_breaking_on_a_later_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'term,type\n가,noun\n"나,noun\n다,noun\n"라",noun\n')
    check(fail(path), path, 3, "a quoted field opens here and runs on to line 5")


def test_stray_quote(tmp_path: Path) -> None:
    path = write(tmp_path, 'term\n"가"나\n')
    check(fail(path), path, 2, "malformed quoting")


def test_field_over_the_csv_limit(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    path = write(tmp_path, "term\n가\n" + "a" * (limit + 1) + "\n")
    error = fail(path, skip_invalid=True)
    check(error, path, 3, f"a field is longer than {limit} characters (the CSV limit)")
    assert len(error.message) < 300


# --- rows -------------------------------------------------------------------------------------


def test_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type\n1,가,noun\n2,나,noun,x,y\n")
    check(
        fail(path),
        path,
        3,
        "5 fields but the header has 3 (an unquoted comma inside a field? put the field in "
        "double quotes)",
    )


def test_too_few_fields_leave_the_term_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type\n1,가,noun\n2\n")
    check(fail(path), path, 3, "empty term in column 'term'; fill it in or delete the row")


def test_empty_term(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term,type\n1,  ,noun\n")
    check(fail(path), path, 2, "empty term in column 'term'; fill it in or delete the row")
    path = write(tmp_path, HSK_HEADER + "\n1,,,noun" + "," * 15 + "\n", "hsk.csv")
    check(fail(path), path, 2, "empty term in column 'Hangul'")


def test_long_term_is_never_printed_in_full(tmp_path: Path) -> None:
    path = write(tmp_path, "term\n" + "안녕" * 50_000 + "\n")
    error = fail(path)
    check(error, path, 2, "term is 100000 characters long (the limit is 200): '안녕안녕")
    assert "…'" in error.message
    assert len(error.message) < 250


def test_long_type(tmp_path: Path) -> None:
    path = write(tmp_path, "term,type\n가," + "x" * 60 + "\n")
    check(fail(path), path, 2, "type is 60 characters long (the limit is 50)")


def test_control_character_in_term(tmp_path: Path) -> None:
    path = write(tmp_path, "term\n가\x07나\n")
    check(fail(path), path, 2, "contains the control character U+0007")


def test_line_break_in_term(tmp_path: Path) -> None:
    path = write(tmp_path, 'term,type\n"가\n나",noun\n다,noun\n')
    check(fail(path), path, 2, "a quoted field opens here and is only closed on line 3")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", "empty position in column 'position'"),
        ("x", "position 'x' is not a whole number"),
        ("1.5", "position '1.5' is not a whole number"),
        ("0", "position 0 is less than 1"),
        ("-2", "position -2 is less than 1"),
        ("9" * 30, "is not a whole number"),
    ],
)
def test_bad_position(tmp_path: Path, value: str, text: str) -> None:
    path = write(tmp_path, f"position,term\n1,가\n{value},나\n")
    check(fail(path), path, 3, text)


def test_repeated_position(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term\n1,가\n3,나\n3,다\n")
    check(fail(path), path, 4, "position 3 repeats line 3; positions must be unique")


def test_exact_duplicate_row_is_a_duplicate_not_a_position_error(tmp_path: Path) -> None:
    vocabulary = read_vocabulary(write(tmp_path, "position,term\n1,가\n1,가\n"))
    assert vocabulary.duplicates == (Duplicate(3, "가", "unknown", 2),)


# --- skip_invalid -----------------------------------------------------------------------------


def test_skip_invalid_collects_row_problems(tmp_path: Path) -> None:
    data = "position,term,type\n1,가,noun\n2,,noun\nx,나,noun\n3,다,noun,extra\n1,라,noun\n4,마,n\n"
    path = write(tmp_path, data)
    vocabulary = read_vocabulary(path, skip_invalid=True)
    assert [(i.position, i.term) for i in vocabulary.items] == [(1, "가"), (4, "마")]
    assert [row.line for row in vocabulary.invalid] == [3, 4, 5, 6]
    assert all(isinstance(row, InvalidRow) for row in vocabulary.invalid)
    assert vocabulary.invalid[0].message == f"{path}:3: " + (
        "empty term in column 'term'; fill it in or delete the row"
    )
    assert "position 1 repeats line 2" in vocabulary.invalid[3].message
    assert vocabulary.rows == 6


def test_skip_invalid_with_no_valid_row(tmp_path: Path) -> None:
    path = write(tmp_path, "position,term\n0,가\n,나\nx,다\n2,\n")
    error = fail(path, skip_invalid=True)
    check(error, path, None, "no valid rows (4 invalid)")
    assert f"{path}:2: position 0 is less than 1" in error.message
    assert "(and 1 more)" in error.message
    assert error.details["invalid"] == 4


# --- the shared data --------------------------------------------------------------------------


@needs_data
def test_vocabulary_1000() -> None:
    vocabulary = read_vocabulary(DATA / "vocabulary_1000.csv")
    assert vocabulary.shape == "minimal"
    assert len(vocabulary.items) == 1000
    assert vocabulary.items[0] == VocabularyItem(1, "내가", "pronoun")


@needs_data
def test_hsk_10k() -> None:
    path = DATA / "hsk_10k.csv"
    vocabulary = read_vocabulary(path)
    assert vocabulary.shape == "hsk"
    assert len(vocabulary.items) == 10_000
    assert vocabulary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first = vocabulary.items[0]
    assert (first.position, first.term, first.type, first.line) == (1, "내가", "pronoun", 2)
    assert first.extra["Definition"] == "I"
