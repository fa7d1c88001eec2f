"""The flashcard exports: an Anki-importable TSV, a JSON record of the run, an Anki package.

Every writer is atomic: it writes a temporary file next to the target (``.<name>.<random>.tmp``,
created with the usual permissions, or the target's if it exists), flushes and fsyncs it, then
renames it over the target (:func:`os.replace`). A reader sees the old file or the new one, never
a part of one; on any error the temporary file is removed and the target is left as it was.

Only words in state ``done`` give cards (TSV, apkg), in the order given, each word's cards in
their order; the JSON has every word.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import itertools
import json
import operator
import os
import re
import sqlite3
import stat
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import genanki  # type: ignore[import-untyped]

from flashkit.flashcards.stages import TSV_COLUMNS, FlashcardRow, to_jsonable
from flashkit.flashcards.store import WordRecord

__all__ = ["anki_tags", "FORMATS", "neutralise", "write_apkg", "write_json", "write_tsv"]

FORMATS: Final = ("tsv", "json", "apkg")
"""The export formats, as file extensions."""

_T = TypeVar("_T")
_TAGS_INDEX: Final = TSV_COLUMNS.index("tags")
_TSV_HEADER: Final = (
    "#separator:tab\n"
    "#html:false\n"
    f"#tags column:{_TAGS_INDEX + 1}\n"
    "#columns:" + "\t".join(TSV_COLUMNS) + "\n"
)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_TSV_BREAKS: Final = re.compile(r"\r\n|[\t\r\n]")
_CARD_VALUES: Final = operator.attrgetter(*TSV_COLUMNS)
_LINE_BREAKS: Final = re.compile(r"\r\n|[\r\n]")

_MODEL_NAME: Final = "flashkit Korean card"
_ANKI_FIELDS: Final = ("Front", "Back", "Term", "Primer", "Card", "Honorific", "Position")
_QFMT: Final = '<div class="primer">{{Primer}}</div>\n<div class="front">{{Front}}</div>'
_AFMT: Final = (
    '{{FrontSide}}\n<hr id=answer>\n<div class="back">{{Back}}</div>\n'
    '<div class="term">{{Term}}</div>'
)
_CSS: Final = """\
.card { font-family: "Noto Sans KR", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif;
  font-size: 22px; line-height: 1.5; text-align: center; }
.primer { font-size: 14px; opacity: 0.6; margin-bottom: 0.8em; }
.back { text-align: left; }
.term { margin-top: 1em; font-size: 26px; font-weight: bold; }
"""


# --- cells -------------------------------------------------------------------------------------
def neutralise(cell: str) -> str:
    """``cell`` with a ``'`` in front if a spreadsheet would take it for a formula: it starts
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def anki_tags(tags: str) -> str:
    """Stage-2 tags (``"term:남성,pos:noun,card:Scene"``) as Anki tags: space-separated, none
    empty, none with whitespace inside. A comma-separated list keeps each item as one tag
    (whitespace inside becomes ``_``: ``"term:잘 지내다"`` → ``term:잘_지내다``); a list
    without commas is split on whitespace."""
    if "," in tags:
        parts: Iterable[str] = ("_".join(part.split()) for part in tags.split(","))
    else:
        parts = tags.split()
    return " ".join(part for part in parts if part)


def _tsv_cell(text: str) -> str:
    """A TSV field: tabs and line breaks become spaces; a field with a ``"`` is quoted (``"``
    doubled), since Anki's CSV reader takes a leading ``"`` as an opening quote."""
    if "\t" in text or "\n" in text or "\r" in text:
        text = _TSV_BREAKS.sub(" ", text)
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _tsv_line(card: FlashcardRow) -> str:
    values = list(_CARD_VALUES(card))
    values[_TAGS_INDEX] = anki_tags(values[_TAGS_INDEX])
    cells = [str(v) if isinstance(v, int) else _tsv_cell(neutralise(v)) for v in values]
    return "\t".join(cells) + "\n"


def _done_cards(records: Iterable[WordRecord]) -> Iterator[FlashcardRow]:
    for record in records:
        if record.state == "done":
            yield from record.cards


# --- atomic files ------------------------------------------------------------------------------
def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], _T]) -> _T:
    """Run ``write(handle)`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``; returns what ``write`` returns. On any error the temporary file is removed and
    ``path`` is untouched."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    # Not mkstemp: its 0600 would become the export's mode; 0o666 here is narrowed by the umask.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as handle:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_directory(target.parent)
    return result


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); nothing where a directory cannot be
    opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- TSV ---------------------------------------------------------------------------------------
def write_tsv(records: Iterable[WordRecord], path: str | Path) -> int:
    """Write the cards of the ``done`` words as Anki-importable TSV (UTF-8, ``\\n``): the
    ``#separator``/``#html``/``#tags column``/``#columns`` headers, then one line of the 9
    :data:`TSV_COLUMNS` per card, text neutralised (:func:`neutralise`), tags as
    :func:`anki_tags`. Returns the number of cards written."""

    def write(handle: IO[bytes]) -> int:
        handle.write(_TSV_HEADER.encode("utf-8"))
        count = 0
        for card in _done_cards(records):
            handle.write(_tsv_line(card).encode("utf-8"))
            count += 1
        return count

    return _atomic_write(path, write)


# --- JSON --------------------------------------------------------------------------------------
def _summary(records: list[WordRecord]) -> dict[str, int]:
    states = Counter(record.state for record in records)
    return {
        "words": len(records),
        "done": states["done"],
        "failed": states["failed"],
        "pending": len(records) - states["done"] - states["failed"],
        "cards": sum(len(record.cards) for record in records if record.state == "done"),
        "attempts": sum(record.attempts for record in records),
        "tokens": sum(record.tokens for record in records),
    }


def _word_json(record: WordRecord) -> dict[str, Any]:
    return {
        "position": record.position,
        "term": record.term,
        "type": record.type,
        "line": record.line,
        "state": record.state,
        "attempts": record.attempts,
        "tokens": record.tokens,
        "stage1": None if record.stage1 is None else to_jsonable(record.stage1),
        "cards": [card.to_dict() for card in record.cards],
        "error": None if record.error is None else to_jsonable(record.error),
    }


def write_json(
    records: Iterable[WordRecord], path: str | Path, *, summary: Mapping[str, Any] | None = None
) -> int:
    """Write every word (any state) as UTF-8 JSON: ``{"summary": ..., "words": [...]}`` with each
    word's position, term, type, line, state, attempts, tokens, stage1, cards (raw) and error,
    one word per line (streamed: a 10,000-word list never sits in memory as one string).
    ``summary`` is written as given; by default the counts of words, done, failed, pending
    (neither done nor failed), cards (of done words), attempts and tokens. Returns the number of
    words written."""

    def write(handle: IO[bytes]) -> int:
        items = list(records)
        head = _summary(items) if summary is None else to_jsonable(summary)
        handle.write(b'{"summary": ' + _compact(head) + b',\n "words": [')
        for index, record in enumerate(items):
            handle.write(b"\n  " if index == 0 else b",\n  ")
            handle.write(_compact(_word_json(record)))
        handle.write(b"\n ]\n}\n" if items else b"]\n}\n")
        return len(items)

    return _atomic_write(path, write)


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


# --- Anki package ------------------------------------------------------------------------------
def _stable_id(key: str) -> int:
    """A genanki model or deck id in ``[2**30, 2**31)``, the same for the same ``key``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return (1 << 30) + int.from_bytes(digest[:8], "big") % (1 << 30)


_MODEL_ID: Final = _stable_id(f"flashkit model: {_MODEL_NAME} v1")


def _model() -> Any:
    """The note type (new each time: genanki fills in its template dicts when writing)."""
    return genanki.Model(
        _MODEL_ID,
        _MODEL_NAME,
        fields=[{"name": name} for name in _ANKI_FIELDS],
        templates=[{"name": "Card", "qfmt": _QFMT, "afmt": _AFMT}],
        css=_CSS,
    )


def _html(text: str) -> str:
    """Plain text as an Anki field (HTML): escaped, line breaks as ``<br>``."""
    text = html.escape(text, quote=False)
    return _LINE_BREAKS.sub("<br>", text) if "\n" in text or "\r" in text else text


def _note(model: Any, card: FlashcardRow, seen: Counter[tuple[int, str, str]]) -> Any:
    """``card`` as a note; its guid is stable on re-export (a repeated position, term and
    tab_name gets its occurrence number in the guid, so it does not overwrite the first)."""
    key = (card.position, card.term, card.tab_name)
    seen[key] += 1
    guid = genanki.guid_for(*key) if seen[key] == 1 else genanki.guid_for(*key, seen[key])
    fields = [
        _html(card.front),
        _html(card.back),
        _html(card.term),
        _html(card.primer),
        _html(card.tab_name),
        _html(card.honorific_level),
        str(card.position),
    ]
    return genanki.Note(model=model, fields=fields, guid=guid, tags=anki_tags(card.tags).split())


def _write_package(deck: Any, handle: IO[bytes]) -> None:
    """``deck`` as an .apkg (a zip of ``collection.anki2`` and ``media``) into ``handle``.
    Not ``Package.write_to_file``: it leaves its SQLite file behind in the system temp dir."""
    timestamp = time.time()
    with tempfile.TemporaryDirectory(prefix="flashkit-apkg-") as scratch:
        database = os.path.join(scratch, "collection.anki2")
        with contextlib.closing(sqlite3.connect(database)) as connection:
            ids = itertools.count(int(timestamp * 1000))
            genanki.Package(deck).write_to_db(connection.cursor(), timestamp, ids)
            connection.commit()
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(database, "collection.anki2")
            archive.writestr("media", "{}")


def write_apkg(
    records: Iterable[WordRecord],
    path: str | Path,
    *,
    deck_name: str = "flashkit: Korean vocabulary",
) -> int:
    """Write the cards of the ``done`` words as an Anki package: one note per card of the note
    type "flashkit Korean card" (fields Front, Back, Term, Primer, Card, Honorific, Position) in
    the deck ``deck_name``; model and deck ids and note guids are stable, so re-importing updates
    the notes. Returns the number of notes written."""

    def write(handle: IO[bytes]) -> int:
        model = _model()
        deck = genanki.Deck(_stable_id(f"flashkit deck: {deck_name}"), deck_name)
        deck.add_model(model)
        seen: Counter[tuple[int, str, str]] = Counter()
        for card in _done_cards(records):
            deck.add_note(_note(model, card, seen))
        _write_package(deck, handle)
        return len(deck.notes)

    return _atomic_write(path, write)
