"""The Korean flashcard application built on flashkit's client: a vocabulary list through two
LLM stages into study cards, its state in a database.

- :mod:`~flashkit.flashcards.vocabulary`: reading and checking the list (``read_vocabulary``);
- :mod:`~flashkit.flashcards.stages`: the two-stage contract (models, prompts, schema, parsers);
- :mod:`~flashkit.flashcards.store`: tables and state transitions (``Store``);
- :mod:`~flashkit.flashcards.pipeline`: the run (``process``, ``generate_flashcard``);
- :mod:`~flashkit.flashcards.export`: TSV (Anki), JSON and ``.apkg`` exports.

The names below load their module on first use, so importing :mod:`flashkit.flashcards.stages`
alone (as the simulator does, for the stage contract) does not load the store or the exporters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flashkit.flashcards.export import write_apkg, write_json, write_tsv
    from flashkit.flashcards.pipeline import (
        RunProgress,
        RunReport,
        WordOutcome,
        generate_flashcard,
        process,
    )
    from flashkit.flashcards.stages import (
        STAGE1_MODEL,
        STAGE2_MODEL,
        TSV_COLUMNS,
        FlashcardRow,
        Stage1Result,
        parse_stage1,
        parse_stage2,
    )
    from flashkit.flashcards.store import Store, WordRecord
    from flashkit.flashcards.vocabulary import (
        Vocabulary,
        VocabularyError,
        VocabularyItem,
        read_vocabulary,
    )

__all__ = [
    "FlashcardRow",
    "generate_flashcard",
    "parse_stage1",
    "parse_stage2",
    "process",
    "read_vocabulary",
    "RunProgress",
    "RunReport",
    "Stage1Result",
    "STAGE1_MODEL",
    "STAGE2_MODEL",
    "Store",
    "TSV_COLUMNS",
    "Vocabulary",
    "VocabularyError",
    "VocabularyItem",
    "WordOutcome",
    "WordRecord",
    "write_apkg",
    "write_json",
    "write_tsv",
]

_HOMES = {
    "export": ("write_apkg", "write_json", "write_tsv"),
    "pipeline": ("RunProgress", "RunReport", "WordOutcome", "generate_flashcard", "process"),
    "stages": (
        "STAGE1_MODEL",
        "STAGE2_MODEL",
        "TSV_COLUMNS",
        "FlashcardRow",
        "Stage1Result",
        "parse_stage1",
        "parse_stage2",
    ),
    "store": ("Store", "WordRecord"),
    "vocabulary": ("Vocabulary", "VocabularyError", "VocabularyItem", "read_vocabulary"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


if not TYPE_CHECKING:  # for type checkers the imports above are the names (typos are errors)

    def __getattr__(name: str) -> object:
        """A public name, imported from its module on first use (PEP 562)."""
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
