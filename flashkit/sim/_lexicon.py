"""The shipped Korean lexicon (``lexicon.json``) the simulated flashcard replies are made from."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["Entry", "Lexicon", "lexicon"]

# Particles a noun often carries in a frequency list (사람이, 집에, 일을): looked through when
# the inflected form itself is not a headword.
_NOUN_PARTICLES: Final = (
    "에서",
    "한테",
    "이",
    "가",
    "은",
    "는",
    "을",
    "를",
    "도",
    "에",
    "의",
    "만",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One headword: broad IPA (no brackets), part of speech, English meaning, an example
    sentence with its translation, and hanja for Sino-Korean words (``""`` otherwise)."""

    term: str
    ipa: str
    pos: str
    meaning: str
    example: str
    translation: str
    hanja: str = ""


class Lexicon:
    """Headwords by term, in file order, with a same-part-of-speech neighbour for comparisons."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = tuple(entries)
        self._by_term = {entry.term: entry for entry in self.entries}
        by_pos: dict[str, list[Entry]] = {}
        for entry in self.entries:
            by_pos.setdefault(entry.pos, []).append(entry)
        self._by_pos = by_pos

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, term: object) -> bool:
        return term in self._by_term

    def lookup(self, term: str) -> Entry | None:
        """The entry for ``term``, or for a noun it carries a particle on, or None."""
        entry = self._by_term.get(term)
        if entry is not None:
            return entry
        for particle in _NOUN_PARTICLES:
            if term.endswith(particle) and len(term) > len(particle):
                base = self._by_term.get(term[: -len(particle)])
                if base is not None and base.pos == "noun":
                    return base
        return None

    def neighbour(self, entry: Entry) -> Entry | None:
        """Another entry with the same part of speech (the next one in file order), or None."""
        same = self._by_pos.get(entry.pos, [])
        if len(same) < 2:
            return None
        index = same.index(entry) if entry in same else -1
        return same[(index + 1) % len(same)]


@functools.cache
def lexicon() -> Lexicon:
    """The lexicon shipped with flashkit (read once)."""
    raw = resources.files("flashkit.sim").joinpath("lexicon.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    return Lexicon([Entry(**item) for item in data["entries"]])
