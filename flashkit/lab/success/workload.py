"""The workload every policy is given: the words, how many are in progress at once, when each is
released, and the two chat requests a word makes (stage 1, then stage 2 from stage 1's result)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flashkit.flashcards.stages import stage_model, stage_request
from flashkit.sim import lexicon

__all__ = [
    "API_KEY",
    "BASE_URL",
    "load_words",
    "reply_content",
    "request_body",
    "Word",
    "Workload",
]

BASE_URL: Final = "http://sim.flashkit.invalid/v1"
API_KEY: Final = "sk-sim-success-metrics"


@dataclass(frozen=True, slots=True)
class Word:
    """One vocabulary item: ``position`` in the list, the Korean ``term`` and its ``type``."""

    position: int
    term: str
    type: str


@dataclass(frozen=True, slots=True)
class Workload:
    """What every policy is given: ``words`` words, at most ``concurrency`` in progress, released
    evenly over ``arrival`` seconds (0: all at once), ``max_tokens`` per call (the original's
    2000), words from ``vocabulary`` (a ``position,term,type`` CSV) or the simulator's lexicon."""

    words: int = 200
    concurrency: int = 50
    arrival: float = 0.0
    max_tokens: int = 2000
    vocabulary: str | None = None

    def __post_init__(self) -> None:
        if self.words < 1 or self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError(f"Workload needs words, concurrency, max_tokens >= 1, got {self}")
        if not (self.arrival >= 0.0 and math.isfinite(self.arrival)):
            raise ValueError(f"Workload.arrival must be seconds >= 0, got {self.arrival!r}")

    def release_times(self) -> list[float]:
        """When each word becomes available (seconds from the start)."""
        step = self.arrival / self.words
        return [i * step for i in range(self.words)]


def load_words(count: int, vocabulary: str | Path | None = None) -> list[Word]:
    """``count`` words: from a ``position,term,type`` CSV, else the simulator's lexicon headwords
    (in file order, repeated with new positions when ``count`` exceeds the lexicon)."""
    source: list[tuple[str, str]]
    if vocabulary is not None:
        with Path(vocabulary).open(encoding="utf-8", newline="") as handle:
            source = [
                (row["term"].strip(), row.get("type") or "") for row in csv.DictReader(handle)
            ]
    else:
        source = [(entry.term, entry.pos) for entry in lexicon().entries]
    if not source:
        raise ValueError(f"no words in {vocabulary or 'the lexicon'}")
    return [
        Word(i + 1, source[i % len(source)][0], source[i % len(source)][1]) for i in range(count)
    ]


def request_body(
    word: Word, stage: int, max_tokens: int, stage1: Mapping[str, Any] | None = None
) -> bytes:
    """The chat request body of ``stage`` (1 or 2; stage 2 needs ``stage1``, the stage-1 answer)
    for ``word``, as the original pipeline sent it (temperature 0.7)."""
    body = {
        "model": stage_model(stage),
        "messages": stage_request(word, stage, stage1)[0],
        "temperature": 0.7,
        "max_tokens": max_tokens,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def reply_content(data: Any) -> str:
    """The assistant's text in a decoded chat-completion response."""
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    return content
