"""The Korean flashcard application built on flashkit's client: a vocabulary list through two
LLM stages into study cards, its state in a database.

- :mod:`~flashkit.flashcards.vocabulary`: reading and checking the list (``read_vocabulary``);
- :mod:`~flashkit.flashcards.stages`: the two-stage contract (models, prompts, schema, parsers);
- :mod:`~flashkit.flashcards.store`: tables and state transitions (``Store``);
- :mod:`~flashkit.flashcards.pipeline`: the run (``process``, ``generate_flashcard``);
- :mod:`~flashkit.flashcards.export`: TSV (Anki), JSON and ``.apkg`` exports.
"""

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
