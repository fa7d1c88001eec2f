"""What the simulated model says: the two flashcard stages of the original pipeline, or a short
generic reply, made deterministically from the shipped lexicon (templated for unknown words).

Stage 1 (``@preset/nuance-creator``, user content ``{"position", "term", "type"}``) answers a
JSON object with every field of :data:`~flashkit.flashcards.stages.STAGE1_FIELDS`, in that order.
Stage 2 (``@preset/nuance-flashcard-generator``, user content ``{"position", "term",
"stage1_result"}``) answers TSV with the header :data:`TSV_HEADER` and three cards (Scene,
Usage-Comparison, and Hanja or Example). The stage contract is the application's
(:mod:`flashkit.flashcards.stages`).
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import Any, Final, NamedTuple

from flashkit.flashcards.stages import STAGE1_FIELDS, STAGE1_MODEL, STAGE2_MODEL, TSV_COLUMNS
from flashkit.sim._lexicon import Entry, lexicon

__all__ = [
    "STAGE1_FIELDS",
    "STAGE1_MODEL",
    "STAGE2_MODEL",
    "TEMPLATE_MARK",
    "TSV_COLUMNS",
    "TSV_HEADER",
    "Answer",
    "Item",
    "broken_content",
    "detect",
    "estimate_tokens",
    "generic_reply",
    "item_fields",
    "stage1_text",
    "stage2_text",
]

TSV_HEADER: Final = "\t".join(TSV_COLUMNS)
TEMPLATE_MARK: Final = "[flashkit.sim template]"
"""Marks content made for a word the lexicon does not know (in meanings, explanations, tags)."""

_PRIMER: Final = (
    "You are standing at the entrance of your memory palace. Walk slowly to the room of this "
    "word, look around, and let the scene come back to you before you turn the card."
)
_LOCATIONS: Final = (
    "the front door",
    "the kitchen table",
    "the bathroom mirror",
    "the balcony",
    "the staircase",
    "the bookshelf",
    "the garden gate",
    "the bedroom window",
    "the hallway closet",
    "the rooftop",
)
_OBJECTS: Final = (
    "brass bell",
    "paper lantern",
    "red umbrella",
    "wooden spoon",
    "glass jar",
    "silk scarf",
    "clay teapot",
    "folding fan",
    "old iron key",
    "snow globe",
)
_ACTIONS: Final = (
    "spinning",
    "glowing",
    "ringing",
    "melting",
    "whispering",
    "unfolding",
    "bouncing",
    "cracking open",
)
_SENSES: Final = (
    "the cold smell of rain",
    "a low humming sound",
    "warm light on your hands",
    "the taste of roasted barley tea",
    "a soft ticking",
    "rough wood under your fingers",
    "the scent of pine needles",
    "a sudden bright chime",
)

Item = tuple[int, str, dict[str, Any]]
"""(stage, term, user item): stage 1 or 2 for the flashcard stages, 0 for any other chat."""


class Answer(NamedTuple):
    """One reply of the simulated model, before any API's envelope: ``serial`` numbers the
    request (ids), ``created`` is Unix seconds, ``finish`` is ``"stop"`` or ``"length"``
    (``max_tokens`` reached), ``prompt`` and ``completion`` are token counts."""

    serial: int
    created: int
    model: str
    text: str
    finish: str
    prompt: int
    completion: int


def estimate_tokens(text: str) -> int:
    """A cheap deterministic token count: one token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


def _user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                return "".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
    return ""


def detect(model: str, messages: list[Any]) -> Item:
    """Which stage a chat request is, from the model name or the shape of the user JSON."""
    text = _user_text(messages)
    item: dict[str, Any] = {}
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            item = parsed
    term = item.get("term")
    term = term.strip() if isinstance(term, str) and term.strip() else ""
    if model == STAGE2_MODEL or (term and "stage1_result" in item):
        return 2, term or text.strip()[:40] or "?", item
    if model == STAGE1_MODEL or (term and ("type" in item or "position" in item)):
        return 1, term or text.strip()[:40] or "?", item
    return 0, text, item


def _position(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _clean(text: str) -> str:
    """A TSV field: no tabs or line breaks inside."""
    return " ".join(text.split())


def _pick(options: tuple[str, ...], term: str, salt: int) -> str:
    return options[(zlib.crc32(term.encode()) + salt * 7919) % len(options)]


def _split_meaning(meaning: str) -> tuple[str, str]:
    primary, _, other = meaning.partition(";")
    return primary.strip(), other.strip()


def _template(term: str, kind: str) -> Entry:
    return Entry(
        term=term,
        ipa="?",
        pos=kind or "unknown",
        meaning=f"{TEMPLATE_MARK} meaning of {term}",
        example=f"{term}.",
        translation=f"{TEMPLATE_MARK} (no example: {term} is not in the lexicon)",
    )


def _entry(term: str, kind: str) -> tuple[Entry, bool]:
    entry = lexicon().lookup(term)
    if entry is None:
        return _template(term, kind), False
    return entry, True


def _stage1_dict(position: int, term: str, kind: str) -> dict[str, Any]:
    entry, known = _entry(term, kind)
    primary, other = _split_meaning(entry.meaning)
    location = _pick(_LOCATIONS, term, 1)
    anchor = _pick(_OBJECTS, term, 2)
    action = _pick(_ACTIONS, term, 3)
    sense = _pick(_SENSES, term, 4)
    neighbour = lexicon().neighbour(entry) if known else None
    if neighbour is not None:
        comparison = {
            "vs": neighbour.term,
            "nuance": (
                f"{term} means '{primary}', while {neighbour.term} means "
                f"'{_split_meaning(neighbour.meaning)[0]}'; do not swap them."
            ),
        }
    else:
        comparison = {"vs": "(none)", "nuance": f"{TEMPLATE_MARK} no comparison for {term}"}
    homonyms = (
        [
            {
                "hanja": entry.hanja,
                "reading": term,
                "meaning": primary,
                "differentiator": f"written {entry.hanja}; other words read {term} differ in hanja",
            }
        ]
        if entry.hanja
        else []
    )
    keywords = [term]
    first_word = entry.example.split(" ")[0].strip(".,!?")
    if known and first_word and first_word not in keywords:
        keywords.append(first_word)
    if neighbour is not None:
        keywords.append(neighbour.term)
    explanation = (
        f"{term} is a {entry.pos} meaning '{entry.meaning}'. Picture the {anchor} {action} at "
        f"{location} and notice {sense}: that scene holds the word."
    )
    if not known:
        explanation = f"{TEMPLATE_MARK} {term} is not in the lexicon; {explanation}"
    answer = {
        "term_number": position,
        "term": f"{term} [{entry.ipa}]",
        "ipa": f"[{entry.ipa}]",
        "pos": entry.pos,
        "primary_meaning": primary,
        "other_meanings": other,
        "metaphor": f"A {anchor} {action} at {location}, carrying the idea of '{primary}'",
        "metaphor_noun": anchor,
        "metaphor_action": action,
        "suggested_location": location,
        "anchor_object": anchor,
        "anchor_sensory": sense,
        "explanation": explanation,
        "usage_context": f"{entry.example} ({entry.translation})",
        "comparison": comparison,
        "homonyms": homonyms,
        "korean_keywords": keywords,
    }
    return {name: answer[name] for name in STAGE1_FIELDS}  # the schema's fields, in its order


_STAGE1_PREFIX: Final = '{\n  "term_number": 0,'


@functools.lru_cache(maxsize=4096)
def _stage1_tail(term: str, kind: str) -> str:
    text = json.dumps(_stage1_dict(0, term, kind), ensure_ascii=False, indent=2)
    return text[len(_STAGE1_PREFIX) :]


def stage1_text(position: int, term: str, kind: str) -> str:
    """The stage-1 reply (a JSON object, pretty-printed) for one vocabulary item."""
    return f'{{\n  "term_number": {position},{_stage1_tail(term, kind)}'


def _honorific(entry: Entry) -> str:
    if entry.term.endswith("니다") or "(formal" in entry.meaning:
        return "formal"
    if entry.term.endswith("요") or "(polite" in entry.meaning or "(humble" in entry.meaning:
        return "polite"
    if "(casual" in entry.meaning:
        return "casual"
    return "neutral"


@functools.lru_cache(maxsize=4096)
def _stage2_cards(term: str, kind: str) -> tuple[str, tuple[str, ...]]:
    """(term column, the cards' columns from tab_name on, tab-joined) for one term."""
    entry, known = _entry(term, kind)
    data = _stage1_dict(0, term, kind)
    primary = data["primary_meaning"]
    vs = data["comparison"]["vs"]
    head = f"{term} [{entry.ipa}]"
    example = f"{entry.example} ({entry.translation})"
    blanked = entry.example.replace(term, "___") if term in entry.example else ""
    usage_front = (
        f"Which word fills the gap: {blanked} ({entry.translation})"
        if blanked
        else f"When do you say {term} rather than {vs}?"
    )
    cards = [
        (
            "Scene",
            f"At {data['suggested_location']}, a {data['anchor_object']} is "
            f"{data['metaphor_action']} while you notice {data['anchor_sensory']}. Which Korean "
            "word lives here, and what does it mean?",
            f"{head}: {entry.meaning}. {data['metaphor']}. Example: {example}",
        ),
        (
            "Usage-Comparison",
            usage_front,
            f"{term}. {data['comparison']['nuance']} Example: {example}",
        ),
    ]
    if entry.hanja:
        cards.append(
            (
                "Hanja",
                f"Which hanja write {term}, and how do they build the meaning '{primary}'?",
                f"{term} = {entry.hanja}. {head} means '{entry.meaning}'. Example: {example}",
            )
        )
    else:
        cards.append(
            (
                "Example",
                f"Say it in Korean: {entry.translation}",
                f"{entry.example} Here {head} means '{entry.meaning}' (a native Korean word).",
            )
        )
    source = "" if known else ",source:template"
    honorific = _honorific(entry)
    rows = []
    for tab, front, back in cards:
        tags = f"term:{term},pos:{entry.pos},card:{tab}{source}"
        rows.append(
            "\t".join(_clean(field) for field in (tab, _PRIMER, front, back, tags, honorific))
        )
    return _clean(head), tuple(rows)


def stage2_text(position: int, term: str, term_number: int, kind: str) -> str:
    """The stage-2 reply: TSV with :data:`TSV_HEADER` and three cards for one item."""
    head, cards = _stage2_cards(term, kind)
    prefix = f"{position}\t{head}\t{term_number}\t"
    return "\n".join([TSV_HEADER, *(prefix + card for card in cards)])


def generic_reply(text: str) -> str:
    """A short answer to a chat request that is neither flashcard stage."""
    snippet = " ".join(text.split())[:60]
    return f"This is a simulated reply from flashkit.sim. You asked: {snippet!r}"


def broken_content(stage: int, text: str, variant: float) -> str:
    """Content that a careful client must reject: stage-1 JSON without ``comparison`` or cut
    off; stage-2 TSV with only its header (a known failure of the real pipeline); empty text."""
    if stage == 1:
        if variant < 0.5:
            data = json.loads(text)
            del data["comparison"]
            return json.dumps(data, ensure_ascii=False, indent=2)
        return text[: len(text) // 2]
    if stage == 2:
        return TSV_HEADER
    return ""


def item_fields(item: dict[str, Any]) -> tuple[int, str, int]:
    """(position, type or pos, term_number) from a stage request's user item."""
    position = _position(item.get("position"))
    kind = item.get("type") or item.get("pos") or ""
    stage1 = item.get("stage1_result")
    term_number = position
    if isinstance(stage1, dict):
        kind = kind or stage1.get("pos") or ""
        number = _position(stage1.get("term_number"))
        term_number = number or position
    return position, str(kind), term_number
