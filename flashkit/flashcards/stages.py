"""The two-stage contract of the flashcard pipeline, defined once.

Stage 1 (``@preset/nuance-creator``) answers a JSON analysis of one word: the fields of
:class:`Stage1Result` (:data:`STAGE1_FIELDS`, of which :data:`STAGE1_REQUIRED` must be there),
read by :func:`parse_stage1`; stage 2 (``@preset/nuance-flashcard-generator``) answers TSV cards
with the :data:`TSV_COLUMNS`. The system prompts are package files (``prompts/*.txt``). The
simulator (:mod:`flashkit.sim`) and the lab build their replies and parsers from these names.

What the parsers fix in the original pipeline: ``pos`` keeps pronoun, determiner, numeral and any
other part of speech; ``comparison`` may be null (the key must be there); homonyms need no
``term`` key; fenced JSON and prose around the object are accepted; stage-2 rows need all 9
columns and a reply with only its header is an error (retryable in the client).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final, Protocol

from flashkit.errors import ValidationError

__all__ = [
    "STAGE1_FIELDS",
    "STAGE1_MODEL",
    "STAGE1_REQUIRED",
    "STAGE2_MODEL",
    "TSV_COLUMNS",
    "TYPE_ALIASES",
    "Comparison",
    "FlashcardRow",
    "Stage1Result",
    "Word",
    "normal_type",
    "parse_stage1",
    "parse_stage2",
    "stage_model",
    "stage_request",
    "system_prompt",
    "to_jsonable",
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
TYPE_ALIASES: Final = {
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
_FENCE: Final = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class Word(Protocol):
    """What the stages need of a vocabulary item."""

    @property
    def position(self) -> int: ...
    @property
    def term(self) -> str: ...
    @property
    def type(self) -> str: ...


def normal_type(kind: str) -> str:
    """A part of speech, lower-case, abbreviations expanded (``adj`` → ``adjective``);
    ``"unknown"`` when empty."""
    kind = kind.strip().lower()
    return TYPE_ALIASES.get(kind, kind) or "unknown"


@cache
def system_prompt(stage: int) -> str:
    """The system prompt of ``stage`` (1 or 2), read from the package's ``prompts/``."""
    if stage not in (1, 2):
        raise ValidationError(f"stage must be 1 or 2, got {stage!r}", code="invalid_request")
    text = (
        resources.files(__package__)
        .joinpath(f"prompts/stage{stage}_system.txt")
        .read_text(encoding="utf-8")
    )
    return text.strip().replace("{header}", "\t".join(TSV_COLUMNS))


def stage_model(stage: int) -> str:
    """The model a stage asks for: the original's OpenRouter presets."""
    if stage == 1:
        return STAGE1_MODEL
    if stage == 2:
        return STAGE2_MODEL
    raise ValidationError(f"stage must be 1 or 2, got {stage!r}", code="invalid_request")


# --- data --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Comparison:
    """What a word is easily confused with (``vs``) and how they differ (``nuance``)."""

    vs: str
    nuance: str


@dataclass(frozen=True, slots=True)
class Stage1Result:
    """The stage-1 analysis of a word; its fields, in order, are the stage-1 schema
    (:data:`STAGE1_FIELDS`). The original ``Stage1Response``, flaws fixed: ``pos`` keeps any
    part of speech; ``comparison`` may be None."""

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
        """As the JSON object stage 2 receives (and the store keeps)."""
        return to_jsonable(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage1Result:
        """From :meth:`to_dict`'s output (or any reply that :func:`parse_stage1` accepts)."""
        return _stage1_from(data, None)


STAGE1_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Stage1Result))
"""Every field of a stage-1 answer, in the order the model is asked for them."""
_STAGE1_OPTIONAL: Final = ("other_meanings", "usage_context", "homonyms")
STAGE1_REQUIRED: Final = tuple(name for name in STAGE1_FIELDS if name not in _STAGE1_OPTIONAL)
"""The fields a stage-1 answer must have: all but ``other_meanings``, ``usage_context`` and
``homonyms`` (as the original ``Stage1Response``); ``comparison`` must be present but may be
null."""


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

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TSV_COLUMNS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlashcardRow:
        return cls(**{name: data[name] for name in TSV_COLUMNS})


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


# --- requests ----------------------------------------------------------------------------------
def stage_request(
    item: Word, stage: int, stage1: Stage1Result | Mapping[str, Any] | None = None
) -> tuple[list[dict[str, str]], Callable[[str], Any]]:
    """The messages for ``stage`` of ``item`` and the parser of its reply."""
    if stage == 1:
        user = {"position": item.position, "term": item.term, "type": item.type}
        messages = [
            {"role": "system", "content": system_prompt(1)},
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
            {"role": "system", "content": system_prompt(2)},
            {"role": "user", "content": json.dumps(user2, ensure_ascii=False)},
        ]
        return messages, lambda text: parse_stage2(text, item=item)
    raise ValidationError(f"stage must be 1 or 2, got {stage!r}", code="invalid_request")


# --- parsing -----------------------------------------------------------------------------------
def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply: fenced, bare, or with prose around it."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        candidate = candidate.strip()
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise ValueError(f"no complete JSON object in the reply ({len(text)} characters)")


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def parse_stage1(text: str, *, item: Word | None = None) -> Stage1Result:
    """Parse a stage-1 reply. Raises ``ValueError``/``KeyError``/``TypeError`` (retryable in the
    client) when the JSON is missing or incomplete, or lacks a field of
    :data:`STAGE1_REQUIRED` (``comparison`` may be null, but must be there)."""
    data = _json_object(text)
    missing = [
        key
        for key in STAGE1_REQUIRED
        if key not in data or (data[key] is None and key != "comparison")
    ]
    if missing:
        raise KeyError(f"stage-1 reply lacks {', '.join(map(repr, missing))}")
    return _stage1_from(data, item)


def _stage1_from(data: Mapping[str, Any], item: Word | None) -> Stage1Result:
    raw = data.get("comparison")
    comparison: Comparison | None
    if raw is None or raw == {}:
        comparison = None
    elif isinstance(raw, Mapping):
        comparison = Comparison(str(raw.get("vs") or ""), str(raw.get("nuance") or ""))
    else:
        comparison = Comparison(str(raw), "")
    homonyms = data.get("homonyms") or []
    if not isinstance(homonyms, list | tuple):
        raise TypeError(f"stage-1 'homonyms' must be a list, got {type(homonyms).__name__}")
    keywords = data.get("korean_keywords") or []
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",") if k.strip()]
    fallback = item.position if item is not None else 0
    try:
        number = int(data.get("term_number") or fallback)
    except (TypeError, ValueError):
        number = fallback
    pos = normal_type(_text(data, "pos"))
    if pos == "unknown" and item is not None:
        pos = item.type
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


def parse_stage2(text: str, *, item: Word | None = None) -> tuple[FlashcardRow, ...]:
    """Parse stage-2 TSV: header lines skipped, rows need all 9 columns (extra tabs are kept in
    the ``back`` field). Raises ``ValueError`` when no row parses (e.g. only the header).
    With ``item``, every row gets the item's position."""
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
                position=item.position if item is not None else position,
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
    return tuple(rows)
