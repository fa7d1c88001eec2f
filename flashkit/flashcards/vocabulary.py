"""Reading and validating a vocabulary list (CSV) into :class:`VocabularyItem` values.

:func:`read_vocabulary` accepts two shapes of comma-separated file (UTF-8, optional BOM, header
required): the minimal ``position,term,type`` (only ``term`` required) and the 19-column HSK
export (``Position,Hangul,...,O4_Error``). Every problem is one :class:`VocabularyError` whose
message reads ``{path}:{line}[:{column}]: what is wrong; how to fix it`` and whose ``details``
carry ``file``, ``line`` (``None`` for whole-file problems) and, where known, ``column``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from flashkit.errors import ValidationError
from flashkit.flashcards.stages import normal_type

__all__ = [
    "Duplicate",
    "InvalidRow",
    "read_vocabulary",
    "Vocabulary",
    "VocabularyError",
    "VocabularyItem",
]

_MAX_TERM: Final = 200
_MAX_TYPE: Final = 50
_SHOW: Final = 20  # characters of a user's value quoted in a message
_MINIMAL: Final = ("position", "term", "type")
_HSK_HEADER: Final = (
    "Position,Hangul,IPA_Pronunciation,Word_Type,TOPIK_Level,Definition,Example_Sentence,"
    "Example_Sentence_IPA,Example_Sentence_Translation,Usage_Hint,Frequency,Frequency_Number,"
    "Verified,Quality_Score,HSK_Compliance,Processed,Reasoning_Tokens,Total_Tokens,O4_Error"
)
_HSK: Final = tuple(_HSK_HEADER.split(","))
_HSK_NAMES: Final = {name.lower(): name for name in _HSK}
_ACCEPTED: Final = (
    "the accepted headers are 'position,term,type' (only term is required) or the HSK export "
    f"'{_HSK_HEADER}'"
)
_MAGIC: Final = (
    (b"PK\x03\x04", "looks like an Excel workbook (.xlsx); save it as 'CSV UTF-8'"),
    (b"\xd0\xcf\x11\xe0", "looks like an old Excel workbook (.xls); save it as 'CSV UTF-8'"),
    (b"%PDF", "is a PDF document, not a CSV file; export the list as 'CSV UTF-8'"),
    (b"\x1f\x8b", "is gzip-compressed; decompress it first"),
)
_HANGUL: Final = re.compile("[\uac00-\ud7a3]")
_READ_HINTS: Final[dict[type[Exception], str]] = {
    IsADirectoryError: "give the path of the CSV file, not of a directory",
    PermissionError: "check the file's permissions",
}
_GUESSES: Final = {"cp949": "CP949/EUC-KR (Korean Windows)", "cp1252": "Windows-1252"}
_CLOSE: Final = 'close the quote on this line (a quote inside a field is written "")'
_SAVE_UTF8: Final = "save the file as 'CSV UTF-8'"
_EMPTY: Final = "is empty; expected a header line such as 'position,term,type'"


class VocabularyError(ValidationError):
    """A vocabulary file or row is unusable; the message names the file, line and column."""

    default_code = "invalid_vocabulary"


@dataclass(frozen=True, slots=True)
class VocabularyItem:
    """One word to learn: its 1-based ``position`` in the list, the Korean ``term`` (NFC) and
    its ``type`` (part of speech, lower-case, abbreviations expanded). ``line`` is the file line
    the row starts on (0 when not read from a file); ``extra`` keeps the other columns of the
    HSK export (definition, example, ...)."""

    position: int
    term: str
    type: str = "unknown"
    line: int = field(default=0, compare=False)
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def identity(self) -> str:
        """A stable id of this row as read (SHA-256 hex of position, term and type): an edited
        row is a new word, an unchanged one is the same word in every later run."""
        text = f"{self.position}\x1f{self.term}\x1f{self.type}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """A row left out by ``skip_invalid``: its file ``line`` and the full error ``message``."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A row whose (term, type) already appeared on ``first_line``; it is not an item."""

    line: int
    term: str
    type: str
    first_line: int


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """A read vocabulary file: the valid, de-duplicated ``items`` in file order (after
    ``limit``), the rows left out (``invalid``, ``duplicates``), the number of data ``rows``
    read, the ``shape`` of its header, the ``encoding`` used and the SHA-256 of its bytes."""

    path: Path
    sha256: str
    encoding: str
    shape: Literal["minimal", "hsk"]
    items: tuple[VocabularyItem, ...]
    invalid: tuple[InvalidRow, ...]
    duplicates: tuple[Duplicate, ...]
    rows: int

    @classmethod
    def from_items(cls, items: Sequence[VocabularyItem], *, name: str = "list.csv") -> Vocabulary:
        """A list made in code, not read from a file (a script, a notebook, the lab): its
        SHA-256 is of the items' position, term and type, so the same items are the same list."""
        listed = repr([(item.position, item.term, item.type) for item in items])
        return cls(
            path=Path(name), sha256=hashlib.sha256(listed.encode()).hexdigest(),
            encoding="utf-8", shape="minimal", items=tuple(items), invalid=(), duplicates=(),
            rows=len(items),
        )  # fmt: skip


def _error(
    shown: str, line: int | None, text: str, column: int | None = None, **more: Any
) -> VocabularyError:
    """``{shown}[:{line}[:{column}]]: {text}`` with ``details`` file, line, column and ``more``."""
    where = "".join(f":{n}" for n in (line, column) if n is not None)
    details = {
        "file": shown,
        "line": line,
        **({} if column is None else {"column": column}),
        **more,
    }
    return VocabularyError(f"{shown}{where}: {text}", details=details)


def _show(value: str, limit: int = _SHOW) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters with an ellipsis."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``; lines end at ``\\n``, ``\\r\\n`` or ``\\r``
    as for :mod:`csv` over ``StringIO(text, newline="")``."""
    crlf = text.count("\r\n", 0, index)
    line = 1 + text.count("\n", 0, index) + text.count("\r", 0, index) - crlf
    start = max(text.rfind("\n", 0, index), text.rfind("\r", 0, index)) + 1
    return line, index - start + 1


class _RowProblem(Exception):
    """A row-level problem (``skip_invalid`` may skip the row); ``args[0]`` is the text."""


def _read_bytes(file: Path, shown: str) -> bytes:
    try:
        return file.read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        hint = _READ_HINTS.get(type(exc), "check the path")
        raise _error(shown, None, f"cannot read the vocabulary file ({reason}); {hint}") from exc


def _check_binary(raw: bytes, shown: str, encoding: str | None) -> None:
    for magic, text in _MAGIC:
        if raw.startswith(magic):
            raise _error(shown, None, text)
    if encoding is None and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _error(
            shown, None, f"is UTF-16 text; {_SAVE_UTF8}, or run again with --encoding utf-16"
        )


def _lookup(encoding: str, shown: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        hint = "use a Python codec name such as 'utf-8', 'cp949' (Korean Windows) or 'cp1252'"
        what = f"unknown encoding {_show(encoding, 40)}"
        raise _error(shown, None, f"{what}; {hint}", encoding=encoding[:40]) from None


def _guess_encoding(raw: bytes) -> str | None:
    """'cp949' or 'cp1252' when the whole file decodes so (cp949 only with Hangul in it)."""
    try:
        if _HANGUL.search(raw.decode("cp949")):
            return "cp949"
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return None
    return "cp1252"


def _decode_error(raw: bytes, exc: UnicodeDecodeError, shown: str, codec: str) -> VocabularyError:
    data = exc.object  # what the codec decoded: utf-8-sig leaves the BOM out
    prefix = data[: exc.start].decode(codec, errors="replace").removeprefix("\ufeff")
    line, column = _line_col(prefix, len(prefix))
    byte = f"byte 0x{data[exc.start]:02x}"
    if codec != "utf-8-sig":
        text = f"not valid {codec} ({byte}); check --encoding, or {_SAVE_UTF8}"
    elif guess := _guess_encoding(raw):
        text = (
            f"not valid UTF-8 ({byte}); it looks like {_GUESSES[guess]}: run again with "
            f"--encoding {guess}, or {_SAVE_UTF8}"
        )
    else:
        text = f"not valid UTF-8 ({byte}); {_SAVE_UTF8}, or give its encoding with --encoding"
    return _error(shown, line, text, column, encoding=codec.replace("-sig", ""))


def _decode(raw: bytes, shown: str, codec: str | None) -> str:
    name = codec or "utf-8-sig"
    try:
        text = raw.decode(name)
    except UnicodeDecodeError as exc:
        raise _decode_error(raw, exc, shown, name) from exc
    except LookupError as exc:  # a codec that is not a text encoding (base64, rot13, ...)
        raise _error(shown, None, f"{name!r} is not a text encoding; use e.g. 'utf-8'") from exc
    return text.removeprefix("\ufeff")


def _records(text: str, shown: str) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of every CSV record, blank ones included."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(shown, start, reader.line_num, exc) from exc
        yield start, reader.line_num, record


def _csv_error(shown: str, start: int, end: int, exc: csv.Error) -> VocabularyError:
    reason = str(exc)
    if "unexpected end of data" in reason:
        return _error(shown, start, f"a quoted field opens here and is never closed; {_CLOSE}")
    if "field limit" in reason:
        limit = csv.field_size_limit()
        text = f"a field is longer than {limit} characters (the CSV limit); shorten it"
        if end > start:
            text += " (if a quoted field opens here, it may never be closed: check its quotes)"
        return _error(shown, start, text)
    if end > start:
        text = f"a quoted field opens here and runs on to line {end} ({reason}); {_CLOSE}"
    else:
        text = f'malformed quoting ({reason}); write a quote inside a field as ""'
    return _error(shown, start, text)


def _is_blank(record: list[str]) -> bool:
    return all(not value or value.isspace() for value in record)


@dataclass(frozen=True, slots=True)
class _Columns:
    shape: Literal["minimal", "hsk"]
    width: int
    term: int
    term_name: str
    position: int | None
    type: int | None
    extra: tuple[tuple[int, str], ...]


def _check_names(shown: str, line: int, names: list[str]) -> None:
    """Separator, empty and repeated column names."""
    for separator, what in (("\t", "tab"), (";", "semicolon")):
        if len(names) == 1 and separator in names[0]:
            hint = f"{_show(names[0], 60)}; save the file as comma-separated ('CSV UTF-8')"
            raise _error(shown, line, f"the header looks {what}-separated (no commas): {hint}")
    if "" in names:
        what = f"column {names.index('') + 1} of the header has no name; name it or delete it"
        raise _error(shown, line, what)
    if repeated := [n for n, count in Counter(n.lower() for n in names).items() if count > 1]:
        raise _error(shown, line, f"column {_show(repeated[0], 40)} appears twice in the header")


def _unknown_columns(shown: str, line: int, names: list[str]) -> VocabularyError:
    """The header mixes the shapes or has columns of neither."""
    unknown = [n for n in names if n.lower() not in _HSK_NAMES and n.lower() not in _MINIMAL]
    if not unknown:
        minimal = ", ".join(repr(n) for n in names if n.lower() in ("term", "type"))
        hsk = ", ".join(_show(n) for n in names if n.lower() in _HSK_NAMES)
        what = f"the header mixes the minimal columns ({minimal}) with the HSK export's ({hsk})"
        return _error(shown, line, f"{what}; use one shape: {_ACCEPTED}")
    listed = ", ".join(_show(n, 30) for n in unknown[:5])
    if len(unknown) > 5:
        listed += f" and {len(unknown) - 5} more"
    if any(n.isdigit() or _HANGUL.search(n) for n in unknown):
        listed += " (is the header line missing? The first line must name the columns)"
    return _error(shown, line, f"unknown column(s) {listed}; {_ACCEPTED}")


def _header(shown: str, line: int, record: list[str]) -> _Columns:
    """The shape and column indices of a header record."""
    names = [name.strip() for name in record]
    _check_names(shown, line, names)
    lows = [name.lower() for name in names]
    if all(low in _MINIMAL for low in lows):
        shape: Literal["minimal", "hsk"] = "minimal"
        term, kind = "term", "type"
    elif all(low in _HSK_NAMES for low in lows):
        shape, term, kind = "hsk", "hangul", "word_type"
    else:
        raise _unknown_columns(shown, line, names)
    index = {low: i for i, low in enumerate(lows)}
    if term not in index:
        found = ", ".join(_show(n, 30) for n in names[:5])
        what = f"the header has no {_HSK_NAMES[term] if shape == 'hsk' else term!r} column"
        raise _error(shown, line, f"{what} (found {found}); {_ACCEPTED}")
    skip = {term, "position", kind} if shape == "hsk" else set(lows)
    extra = tuple((i, _HSK_NAMES[low]) for i, low in enumerate(lows) if low not in skip)
    at = index[term]
    return _Columns(shape, len(names), at, names[at], index.get("position"), index.get(kind), extra)


def _has_break(value: str) -> bool:
    return "\n" in value or "\r" in value


def _control(value: str) -> str | None:
    """The first control character of ``value`` as ``U+XXXX``, or None."""
    if value.isprintable():
        return None
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    return None if bad is None else f"U+{ord(bad):04X}"


def _checked(what: str, value: str, limit: int, advice: str) -> str:
    """``value``, unless it is longer than ``limit`` characters (then ``advice`` says what to do)
    or holds a control character."""
    if len(value) > limit:
        raise _RowProblem(
            f"{what} is {len(value)} characters long (the limit is {limit}): {_show(value)}; "
            + advice
        )
    if (bad := _control(value)) is not None:
        raise _RowProblem(f"{what} {_show(value)} contains the control character {bad}; remove it")
    return value


def _term(raw: str, name: str) -> str:
    term = unicodedata.normalize("NFC", raw.strip())
    if not term:
        raise _RowProblem(f"empty term in column {name!r}; fill it in or delete the row")
    return _checked("term", term, _MAX_TERM, "shorten it to one word or phrase")


def _type(raw: str) -> str:
    advice = "use a part of speech such as noun, verb or adjective"
    return _checked("type", normal_type(raw), _MAX_TYPE, advice)


def _position(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        raise _RowProblem(
            "empty position in column 'position'; fill in a whole number >= 1 (or delete the "
            "column to number the rows in file order)"
        )
    digits = raw[1:] if raw[0] in "+-" else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise _RowProblem(
            f"position {_show(raw)} is not a whole number; write 1, 2, 3, ... (at most 18 digits)"
        )
    value = int(raw)
    if value < 1:
        raise _RowProblem(f"position {value} is less than 1; positions start at 1")
    return value


class _Rows:
    """Turns data records into items, collecting invalid rows and duplicates."""

    def __init__(self, shown: str, header_line: int, columns: _Columns, skip_invalid: bool) -> None:
        self.shown = shown
        self.header_line = header_line
        self.columns = columns
        self.skip_invalid = skip_invalid
        self.items: list[VocabularyItem] = []
        self.invalid: list[InvalidRow] = []
        self.duplicates: list[Duplicate] = []
        self.first: dict[tuple[str, str], int] = {}
        self.positions: dict[int, int] = {}
        self.rows = 0

    def add(self, start: int, end: int, record: list[str]) -> None:
        """Read one non-blank data record starting on line ``start``."""
        self.rows += 1
        try:
            item = self._item(start, end, record)
            key = (item.term, item.type)
            if (first := self.first.get(key)) is not None:
                self.duplicates.append(Duplicate(start, item.term, item.type, first))
                return
            if (seen := self.positions.get(item.position)) is not None:
                raise _RowProblem(
                    f"position {item.position} repeats line {seen}; positions must be unique"
                )
        except _RowProblem as problem:
            if not self.skip_invalid:
                raise _error(self.shown, start, problem.args[0]) from None
            self.invalid.append(InvalidRow(start, f"{self.shown}:{start}: {problem.args[0]}"))
            return
        self.first[key] = start
        self.positions[item.position] = start
        self.items.append(item)

    def _swallowed(self, start: int, end: int, record: list[str]) -> None:
        """A line break in the term, type or position: a quote opened on ``start`` swallowed
        the following lines (a file-level error)."""
        c = self.columns
        for what, at in (("term", c.term), ("type", c.type), ("position", c.position)):
            if at is not None and at < len(record) and _has_break(record[at]):
                problem = f"a quoted field opens here and is only closed on line {end}"
                raise _error(self.shown, start, f"{problem} (the {what} spans lines); {_CLOSE}")

    def _item(self, start: int, end: int, record: list[str]) -> VocabularyItem:
        columns = self.columns
        if end > start:
            self._swallowed(start, end, record)
        if len(record) > columns.width:
            raise _RowProblem(
                f"{len(record)} fields but the header has {columns.width} (an unquoted comma "
                "inside a field? put the field in double quotes)"
            )
        if len(record) < columns.width:
            record = record + [""] * (columns.width - len(record))
        term = _term(record[columns.term], columns.term_name)
        kind = "unknown" if columns.type is None else _type(record[columns.type])
        at = columns.position
        position = self.rows if at is None else _position(record[at])
        extra = {name: value for i, name in columns.extra if (value := record[i].strip())}
        return VocabularyItem(position, term, kind, start, extra)


def _check_text(text: str, shown: str) -> None:
    if not text.strip():
        raise _error(shown, None, _EMPTY)
    if (nul := text.find("\x00")) >= 0:
        line, column = _line_col(text, nul)
        what = "a NUL byte: it is not a CSV text file (a binary file, or UTF-16?)"
        raise _error(shown, line, f"contains {what}; {_SAVE_UTF8}", column)


def _read_rows(text: str, shown: str, skip_invalid: bool) -> _Rows:
    """The header and every non-blank data record of ``text``."""
    records = _records(text, shown)
    for start, _end, record in records:
        if not _is_blank(record):
            rows = _Rows(shown, start, _header(shown, start, record), skip_invalid)
            break
    else:
        raise _error(shown, None, _EMPTY)
    for start, end, record in records:
        if not _is_blank(record):
            rows.add(start, end, record)
    if rows.rows == 0:
        what = "has a header but no rows; add one word per line below the header"
        raise _error(shown, rows.header_line, what)
    return rows


def read_vocabulary(
    path: str | Path,
    *,
    encoding: str | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
) -> Vocabulary:
    """Read and validate a vocabulary CSV (the minimal or the HSK shape).

    ``encoding`` None reads UTF-8 (a BOM is fine) and, when that fails, says which encoding
    the file looks like. ``limit`` keeps the first N valid items. With ``skip_invalid`` rows
    with a problem of their own are listed in ``invalid`` instead of raising; problems of the
    whole file always raise :class:`VocabularyError`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationError(
            f"limit must be a whole number >= 1 or None, got {limit!r}", code="invalid_request"
        )
    shown = os.fspath(path)
    codec = None if encoding is None else _lookup(encoding, shown)
    raw = _read_bytes(Path(path), shown)
    _check_binary(raw, shown, codec)
    text = _decode(raw, shown, codec)
    _check_text(text, shown)
    rows = _read_rows(text, shown, skip_invalid)
    if not rows.items:
        count = len(rows.invalid)
        problems = " | ".join(row.message for row in rows.invalid[:3])
        more = f" (and {count - 3} more)" if count > 3 else ""
        what = f"no valid rows ({count} invalid); fix them and run again: {problems}{more}"
        raise _error(shown, None, what, invalid=count)
    return Vocabulary(
        path=Path(path),
        sha256=hashlib.sha256(raw).hexdigest(),
        encoding=codec or "utf-8",
        shape=rows.columns.shape,
        items=tuple(rows.items[:limit]),
        invalid=tuple(rows.invalid),
        duplicates=tuple(rows.duplicates),
        rows=rows.rows,
    )
