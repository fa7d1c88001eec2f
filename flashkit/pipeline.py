"""The Korean flashcard pipeline: vocabulary CSV → stage 1 (nuance JSON) → stage 2 (TSV cards).

>>> items = read_vocabulary("words.csv")                 # position,term,type or the HSK export
>>> async with LLMClient(provider="openrouter") as client:
...     report = await run_pipeline(items, client, concurrency=8)
>>> write_tsv(report, "cards.tsv"); write_json(report, "cards.json")
>>> report.failed                                        # every failure, with its error

What it fixes in the original (see the repository's reference study):

- both CSV shapes are read, and a bad row is a :class:`VocabularyError` naming the file and line
  (nothing is skipped silently);
- stage-1 replies are parsed robustly (```json fences, text around the object); ``pos`` keeps
  pronoun, determiner, numeral and any other part of speech; ``comparison`` may be null (the key
  must be there); homonyms need no ``term`` key;
- stage-2 TSV rows need all 9 columns; a reply with only its header is an error (retried);
- results come back in input order, every word either with its cards or with its error; the TSV
  has one header; a run can resume, skipping words already in the output.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from flashkit.errors import StructuredError, ValidationError, classify

if TYPE_CHECKING:
    from flashkit.client import LLMClient

__all__ = [
    "STAGE1_MODEL",
    "STAGE2_MODEL",
    "TSV_COLUMNS",
    "Comparison",
    "FlashcardRow",
    "PipelineReport",
    "Stage1Result",
    "VocabularyError",
    "VocabularyItem",
    "WordResult",
    "parse_stage1",
    "parse_stage2",
    "read_vocabulary",
    "run_pipeline",
    "stage_request",
    "write_json",
    "write_tsv",
]

STAGE1_MODEL: Final = "@preset/nuance-creator"
STAGE2_MODEL: Final = "@preset/nuance-flashcard-generator"
TSV_COLUMNS: Final = (
    "position",
    "term",
    "term_number",
    "tab_name",
    "primer",
    "front",
    "back",
    "tags",
    "honorific_level",
)
_TYPE_ALIASES: Final = {
    "n": "noun",
    "v": "verb",
    "adj": "adjective",
    "adv": "adverb",
    "int": "interjection",
    "phr": "phrase",
    "part": "particle",
    "pron": "pronoun",
    "det": "determiner",
    "num": "numeral",
}
_STAGE1_REQUIRED: Final = (
    "term",
    "pos",
    "primary_meaning",
    "metaphor",
    "explanation",
)
_FENCE: Final = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class VocabularyError(ValidationError):
    """A vocabulary file or row is unusable; the message names the file and line."""

    default_code = "invalid_vocabulary"


# --- data --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VocabularyItem:
    """One word to learn: its 1-based ``position``, the Korean ``term`` and its ``type`` (part
    of speech, lower-case; abbreviations like ``n``/``adj`` expanded). ``extra`` keeps the other
    columns of the HSK export (definition, example, ...)."""

    position: int
    term: str
    type: str = "unknown"
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def coerce(cls, value: object) -> VocabularyItem:
        """An item from an item, a term, or a mapping with ``position``/``term``/``type``."""
        if isinstance(value, VocabularyItem):
            return value
        if isinstance(value, str) and value.strip():
            return cls(1, value.strip())
        if isinstance(value, Mapping):
            term = str(value.get("term") or value.get("Hangul") or "").strip()
            if term:
                position = value.get("position", value.get("Position", 1))
                try:
                    number = int(position)
                except (TypeError, ValueError):
                    number = 1
                kind = str(value.get("type") or value.get("Word_Type") or "unknown")
                return cls(max(number, 1), term, _normal_type(kind))
        raise ValidationError(
            f"not a vocabulary item: {value!r}; pass a VocabularyItem, a term, or a mapping with "
            "'term' (and 'position', 'type')",
            code="invalid_vocabulary",
        )


@dataclass(frozen=True, slots=True)
class Comparison:
    """What a word is easily confused with (``vs``) and how they differ (``nuance``)."""

    vs: str
    nuance: str


@dataclass(frozen=True, slots=True)
class Stage1Result:
    """The stage-1 analysis of a word (the original ``Stage1Response``, flaws fixed:
    ``pos`` keeps any part of speech; ``comparison`` may be None)."""

    term_number: int
    term: str
    ipa: str
    pos: str
    primary_meaning: str
    other_meanings: str
    metaphor: str
    metaphor_noun: str
    metaphor_action: str
    suggested_location: str
    anchor_object: str
    anchor_sensory: str
    explanation: str
    usage_context: str
    comparison: Comparison | None
    homonyms: tuple[Mapping[str, str], ...]
    korean_keywords: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """As the JSON object stage 2 receives."""
        return to_jsonable(self)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class FlashcardRow:
    """One card: the 9 TSV columns of stage 2."""

    position: int
    term: str
    term_number: int
    tab_name: str
    primer: str
    front: str
    back: str
    tags: str
    honorific_level: str

    def to_tsv(self) -> str:
        """The row as one TSV line (tabs and line breaks inside fields become spaces)."""
        return "\t".join(_tsv_field(getattr(self, name)) for name in TSV_COLUMNS)


@dataclass(frozen=True, slots=True)
class WordResult:
    """What became of one word: its cards, or the error that stopped it (never both empty).

    ``stage1`` is the analysis (None if stage 1 failed); ``error`` is the
    :class:`~flashkit.errors.StructuredError` as data (``to_dict()``), ``attempts`` counts HTTP
    attempts over both stages, ``latency`` is seconds, ``skipped`` marks words found in the
    output of an earlier run.
    """

    item: VocabularyItem
    stage1: Stage1Result | None = None
    cards: tuple[FlashcardRow, ...] = ()
    error: dict[str, Any] | None = None
    attempts: int = 0
    latency: float = 0.0
    tokens: int = 0
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class PipelineReport:
    """Every word's :class:`WordResult`, in input order."""

    results: tuple[WordResult, ...]

    @property
    def succeeded(self) -> tuple[WordResult, ...]:
        return tuple(r for r in self.results if r.ok and not r.skipped)

    @property
    def failed(self) -> tuple[WordResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def skipped(self) -> tuple[WordResult, ...]:
        return tuple(r for r in self.results if r.skipped)

    @property
    def cards(self) -> tuple[FlashcardRow, ...]:
        return tuple(card for r in self.results for card in r.cards)

    def summary(self) -> dict[str, int]:
        """Counts: words, succeeded, failed, skipped, cards, attempts, tokens."""
        return {
            "words": len(self.results),
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "cards": len(self.cards),
            "attempts": sum(r.attempts for r in self.results),
            "tokens": sum(r.tokens for r in self.results),
        }


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and mappings as plain JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def _tsv_field(value: object) -> str:
    return " ".join(str(value).split("\t")).replace("\r\n", " ").replace("\n", " ")


def _normal_type(kind: str) -> str:
    kind = kind.strip().lower()
    return _TYPE_ALIASES.get(kind, kind) or "unknown"


# --- reading -----------------------------------------------------------------------------------
def read_vocabulary(path: str | Path, *, limit: int | None = None) -> list[VocabularyItem]:
    """Read a vocabulary CSV: ``position,term,type`` or the 19-column HSK export
    (``Position,Hangul,...,Word_Type,...``). A BOM is accepted.

    Raises :class:`VocabularyError` naming the file and line for a missing header column, an
    empty term or a position that is not a positive integer, and for duplicate positions.
    ``limit`` keeps only the first rows.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise VocabularyError(
            f"{path}: cannot read the vocabulary file ({error.strerror or error})",
            details={"file": str(path)},
        ) from error
    items: list[VocabularyItem] = []
    seen: dict[int, int] = {}
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "term" in header:
            term_col, pos_col, type_col = "term", "position", "type"
        elif "Hangul" in header:
            term_col, pos_col, type_col = "Hangul", "Position", "Word_Type"
        else:
            raise VocabularyError(
                f"{path}:1: no 'term' or 'Hangul' column in the header {header!r}; expected "
                "'position,term,type' or the HSK export ('Position,Hangul,...,Word_Type,...')",
                details={"file": str(path), "line": 1},
            )
        if pos_col not in header:
            pos_col = ""
        for index, row in enumerate(reader, start=1):
            line = reader.line_num
            if limit is not None and len(items) >= limit:
                break
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue  # a blank line
            where = f"{path}:{line}"
            term = (row.get(term_col) or "").strip()
            if not term:
                raise VocabularyError(
                    f"{where}: empty term in column {term_col!r}; fill it in or delete the row",
                    details={"file": str(path), "line": line},
                )
            raw_position = (row.get(pos_col) or "").strip() if pos_col else ""
            if raw_position:
                try:
                    position = int(raw_position)
                except ValueError:
                    position = 0
                if position < 1:
                    raise VocabularyError(
                        f"{where}: position {raw_position!r} is not a positive integer "
                        f"(term {term!r})",
                        details={"file": str(path), "line": line},
                    )
            else:
                position = index
            if position in seen:
                raise VocabularyError(
                    f"{where}: position {position} repeats line {seen[position]} "
                    f"(term {term!r}); positions must be unique",
                    details={"file": str(path), "line": line},
                )
            seen[position] = line
            kind = _normal_type(row.get(type_col) or "")
            extra = {
                k: v
                for k, v in row.items()
                if k not in (term_col, pos_col, type_col) and isinstance(k, str) and v
            }
            items.append(VocabularyItem(position, term, kind, extra))
    return items


# --- the two stages ----------------------------------------------------------------------------
_STAGE1_SYSTEM: Final = (
    "You are a Korean vocabulary coach. For the word in the user's JSON, answer with one JSON "
    "object with the keys term_number, term (Korean + [IPA]), ipa, pos, primary_meaning, "
    "other_meanings, metaphor, metaphor_noun, metaphor_action, suggested_location, "
    "anchor_object, anchor_sensory, explanation, usage_context, comparison ({vs, nuance} or "
    "null), homonyms ([{hanja, reading, meaning, differentiator}]) and korean_keywords."
)
_STAGE2_SYSTEM: Final = (
    "You write memory-palace flashcards. From the user's JSON (a word and its stage-1 "
    "analysis) answer TSV only: the header " + "\t".join(TSV_COLUMNS) + " and 2-3 rows "
    "(tab_name Scene, Usage-Comparison, Hanja or Example), no tabs or line breaks in a field."
)


def stage_model(stage: int, default: str) -> str:
    """The model a stage asks for: the original's OpenRouter presets."""
    if stage == 1:
        return STAGE1_MODEL
    if stage == 2:
        return STAGE2_MODEL
    return default


def stage_request(
    item: VocabularyItem, stage: int, stage1: Stage1Result | Mapping[str, Any] | None = None
) -> tuple[list[dict[str, str]], Callable[[str], Any]]:
    """The messages for ``stage`` of ``item`` and the parser of its reply."""
    if stage == 1:
        user = {"position": item.position, "term": item.term, "type": item.type}
        messages = [
            {"role": "system", "content": _STAGE1_SYSTEM},
            {"role": "user", "content": json.dumps(user, ensure_ascii=False)},
        ]
        return messages, lambda text: parse_stage1(text, item=item)
    if stage == 2:
        if stage1 is None:
            raise ValidationError(
                f"stage 2 of {item.term!r} needs its stage-1 result (stage1=...)",
                code="invalid_request",
            )
        analysis = stage1.to_dict() if isinstance(stage1, Stage1Result) else dict(stage1)
        user2 = {"position": item.position, "term": item.term, "stage1_result": analysis}
        messages = [
            {"role": "system", "content": _STAGE2_SYSTEM},
            {"role": "user", "content": json.dumps(user2, ensure_ascii=False)},
        ]
        return messages, lambda text: parse_stage2(text, item=item)
    raise ValidationError(f"stage must be 1 or 2, got {stage!r}", code="invalid_request")


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply: fenced, bare, or with prose around it."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(candidate, start)
            except ValueError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise ValueError(f"no complete JSON object in the reply ({len(text)} characters)")


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise KeyError(f"stage-1 reply lacks {key!r}")
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def parse_stage1(text: str, *, item: VocabularyItem | None = None) -> Stage1Result:
    """Parse a stage-1 reply. Raises ``ValueError``/``KeyError`` (retryable in the client) when
    the JSON is missing, incomplete, or lacks a required field or the ``comparison`` key."""
    data = _json_object(text)
    for key in _STAGE1_REQUIRED:
        _text(data, key, required=True)
    if "comparison" not in data:
        raise KeyError("stage-1 reply lacks 'comparison' (it may be null, but must be there)")
    raw = data["comparison"]
    comparison: Comparison | None
    if raw is None or raw == {}:
        comparison = None
    elif isinstance(raw, Mapping):
        comparison = Comparison(str(raw.get("vs") or ""), str(raw.get("nuance") or ""))
    else:
        comparison = Comparison(str(raw), "")
    homonyms = data.get("homonyms") or []
    if not isinstance(homonyms, list):
        raise TypeError(f"stage-1 'homonyms' must be a list, got {type(homonyms).__name__}")
    keywords = data.get("korean_keywords") or []
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",") if k.strip()]
    try:
        number = int(data.get("term_number") or (item.position if item else 0))
    except (TypeError, ValueError):
        number = item.position if item else 0
    pos = _normal_type(_text(data, "pos")) or (item.type if item else "unknown")
    return Stage1Result(
        term_number=number,
        term=_text(data, "term"),
        ipa=_text(data, "ipa"),
        pos=pos,
        primary_meaning=_text(data, "primary_meaning"),
        other_meanings=_text(data, "other_meanings"),
        metaphor=_text(data, "metaphor"),
        metaphor_noun=_text(data, "metaphor_noun"),
        metaphor_action=_text(data, "metaphor_action"),
        suggested_location=_text(data, "suggested_location"),
        anchor_object=_text(data, "anchor_object"),
        anchor_sensory=_text(data, "anchor_sensory"),
        explanation=_text(data, "explanation"),
        usage_context=_text(data, "usage_context"),
        comparison=comparison,
        homonyms=tuple(
            {str(k): str(v) for k, v in h.items()} for h in homonyms if isinstance(h, Mapping)
        ),
        korean_keywords=tuple(str(k) for k in keywords),
    )


def parse_stage2(text: str, *, item: VocabularyItem | None = None) -> tuple[FlashcardRow, ...]:
    """Parse stage-2 TSV: header lines skipped, rows need all 9 columns (extra tabs are kept in
    the ``back`` field). Raises ``ValueError`` when no row parses (e.g. only the header)."""
    match = _FENCE.search(text)
    if match:
        text = match.group(1)
    rows: list[FlashcardRow] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if parts[0].strip().lower() == "position":
            continue  # a header
        if len(parts) > 9:  # a tab inside a field: keep it in 'back', the long one
            parts = [*parts[:6], " ".join(parts[6 : len(parts) - 2]), *parts[-2:]]
        if len(parts) != 9:
            bad += 1
            continue
        try:
            position = int(parts[0].strip())
            number = int(parts[2].strip() or position)
        except ValueError:
            bad += 1
            continue
        rows.append(
            FlashcardRow(
                position=position,
                term=parts[1].strip(),
                term_number=number,
                tab_name=parts[3].strip(),
                primer=parts[4].strip(),
                front=parts[5].strip(),
                back=parts[6].strip(),
                tags=parts[7].strip(),
                honorific_level=parts[8].strip(),
            )
        )
    if not rows:
        what = f"{bad} malformed line(s)" if bad else "only a header or nothing"
        raise ValueError(f"stage-2 reply has no card rows ({what})")
    if item is not None:
        rows = [dataclasses.replace(r, position=item.position) for r in rows]
    return tuple(rows)


# --- running -----------------------------------------------------------------------------------
def _error_data(error: BaseException) -> dict[str, Any]:
    structured = classify(error) if not isinstance(error, StructuredError) else error
    if structured is None:  # pragma: no cover - classify returns an error for exceptions
        return {"error": {"message": str(error)}}
    return structured.to_dict()


def _done_positions(paths: Iterable[Path]) -> set[int]:
    """Positions that already have cards in an earlier TSV output."""
    done: set[int] = set()
    for path in paths:
        if not path.exists():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            for line in handle:
                head = line.split("\t", 1)[0].strip()
                if head.isdigit():
                    done.add(int(head))
    return done


async def run_pipeline(
    items: Sequence[VocabularyItem],
    client: LLMClient,
    *,
    concurrency: int = 8,
    resume_from: str | Path | None = None,
    on_result: Callable[[WordResult], Awaitable[None] | None] | None = None,
) -> PipelineReport:
    """Run both stages for every item, at most ``concurrency`` words at once.

    Returns a :class:`PipelineReport` in input order: each word has its cards, or its error
    (a failure of one word never stops the others). ``resume_from``: a TSV written by an earlier
    run; words whose position has cards there are skipped. ``on_result(result)`` is called as
    each word finishes (e.g. for a progress bar).
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError(
            f"run_pipeline(concurrency={concurrency!r}): must be an int >= 1, e.g. 8",
            code="invalid_config",
        )
    done = _done_positions([Path(resume_from)]) if resume_from is not None else set()
    semaphore = asyncio.Semaphore(concurrency)
    clock = client.clock

    async def one(item: VocabularyItem) -> WordResult:
        if item.position in done:
            result = WordResult(item, skipped=True)
        else:
            async with semaphore:
                result = await _word(item, client, clock.now())
        if on_result is not None:
            maybe = on_result(result)
            if maybe is not None:
                await maybe
        return result

    results = await asyncio.gather(*(one(item) for item in items))
    return PipelineReport(tuple(results))


async def _word(item: VocabularyItem, client: LLMClient, start: float) -> WordResult:
    attempts = tokens = 0
    stage1: Stage1Result | None = None
    try:
        messages, parse = stage_request(item, 1)
        first = await client.chat(messages, model=STAGE1_MODEL, parse=parse, stage=1)
        attempts += first.attempts
        tokens += first.usage.total_tokens if first.usage else 0
        stage1 = first.raw["parsed"]
        messages, parse = stage_request(item, 2, stage1)
        second = await client.chat(messages, model=STAGE2_MODEL, parse=parse, stage=2)
        attempts += second.attempts
        tokens += second.usage.total_tokens if second.usage else 0
        cards: tuple[FlashcardRow, ...] = second.raw["parsed"]
    except Exception as error:  # reported with the word, never dropped
        attempts += int(getattr(error, "attempts", 1) or 1)
        return WordResult(
            item,
            stage1=stage1,
            error=_error_data(error),
            attempts=attempts,
            latency=client.clock.now() - start,
            tokens=tokens,
        )
    return WordResult(
        item,
        stage1=stage1,
        cards=cards,
        attempts=attempts,
        latency=client.clock.now() - start,
        tokens=tokens,
    )


# --- writing -----------------------------------------------------------------------------------
def write_tsv(report: PipelineReport, path: str | Path, *, append: bool = False) -> int:
    """Write every card as TSV with one header line; returns the number of cards written.

    ``append=True`` adds to an existing file (resume) without repeating its header.
    """
    path = Path(path)
    has_header = append and path.exists() and path.stat().st_size > 0
    cards = report.cards
    with path.open("a" if append else "w", encoding="utf-8", newline="") as handle:
        if not has_header:
            handle.write("\t".join(TSV_COLUMNS) + "\n")
        for card in cards:
            handle.write(card.to_tsv() + "\n")
    return len(cards)


def write_json(report: PipelineReport, path: str | Path) -> None:
    """Write the whole report as JSON: summary, then every word with its stage-1 analysis,
    cards and error."""
    words = [
        {
            "position": result.item.position,
            "term": result.item.term,
            "type": result.item.type,
            "ok": result.ok,
            "skipped": result.skipped,
            "attempts": result.attempts,
            "latency": result.latency,
            "tokens": result.tokens,
            "stage1": to_jsonable(result.stage1),
            "cards": to_jsonable(result.cards),
            "error": result.error,
        }
        for result in report.results
    ]
    payload = {"summary": report.summary(), "words": words}
    Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
