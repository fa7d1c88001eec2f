"""Where ``flashkit process`` and ``flashkit export`` write, checked before anything is paid,
and the exports refreshed from the database as words finish."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flashkit.db import make_engine, sqlite_path
from flashkit.errors import ValidationError
from flashkit.flashcards.export import write_apkg, write_json, write_tsv
from flashkit.flashcards.store import Store

__all__ = ["Exporter", "Outputs", "plan_outputs"]

MIN_REFRESH: Final = 2.0  # wall seconds between refreshes of the exports during a run
COST_FACTOR: Final = 10.0  # ... and at least this many times what the last refresh took


@dataclass(frozen=True, slots=True)
class Outputs:
    """The export files: ``tsv`` (Anki-importable), ``json`` (every word) and ``apkg``."""

    directory: Path
    tsv: Path
    json: Path
    apkg: Path

    def paths(self, formats: Iterable[str] = ("tsv", "json", "apkg")) -> dict[str, Path]:
        return {name: getattr(self, name) for name in formats}


def _invalid_output(message: str, path: Path) -> ValidationError:
    """The error for an output ``path`` that cannot be written: ``message`` says why."""
    return ValidationError(message, code="invalid_output", details={"path": str(path)})


def _writable(directory: Path, what: str) -> None:
    """Raise unless ``directory`` exists as a writable folder or can be made (nothing is left
    behind by the check)."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise _invalid_output(
            f"{what} {str(directory)!r}: {str(probe)!r} is a file, not a folder; choose a folder "
            "with -o DIR",
            directory,
        )
    try:
        made = tempfile.mkdtemp(prefix=".flashkit-check-", dir=probe)
    except OSError as error:
        raise _invalid_output(
            f"{what} {str(directory)!r} is not writable ({error.strerror or error}); choose "
            "another folder with -o DIR",
            directory,
        ) from None
    os.rmdir(made)


def plan_outputs(
    directory: Path,
    *,
    tsv: Path | None = None,
    json: Path | None = None,
    apkg: Path | None = None,
    inputs: Mapping[str, Path] | None = None,
    db: str | None = None,
) -> Outputs:
    """The export paths (default ``cards.tsv``, ``cards.json``, ``deck.apkg`` in
    ``directory``), checked: folders writable, every output distinct from the ``inputs``
    (``{"the vocabulary file": path}``), from the database file and from each other."""
    outputs = Outputs(
        directory=directory,
        tsv=tsv if tsv is not None else directory / "cards.tsv",
        json=json if json is not None else directory / "cards.json",
        apkg=apkg if apkg is not None else directory / "deck.apkg",
    )
    taken: dict[Path, str] = {}
    for label, path in (inputs or {}).items():
        taken[path.resolve()] = label
    named: dict[str, Path] = {}
    if db is not None:
        db_file = sqlite_path(make_engine(db))
        if db_file is not None:
            named["--db"] = db_file
    named.update({"--tsv": outputs.tsv, "--json": outputs.json, "--apkg": outputs.apkg})
    for label, path in named.items():
        resolved = path.resolve()
        if resolved in taken:
            raise _invalid_output(
                f"{label} {str(path)!r} is {taken[resolved]}: writing it would destroy it; "
                "choose another path (or another -o DIR)",
                path,
            )
        if resolved.is_dir():
            raise _invalid_output(f"{label} {str(path)!r} is a folder; give a file path", path)
        taken[resolved] = label
    for folder in {outputs.tsv.parent, outputs.json.parent, outputs.apkg.parent}:
        _writable(folder, "output folder")
    return outputs


class Exporter:
    """Writes the exports of one list from the database: ``refresh()`` as words finish (the TSV,
    at most every few seconds and never more than a tenth of the time), ``final()`` at the end
    and on an interrupt (every format). Each file is replaced atomically; after a kill,
    ``flashkit export`` writes them all from the database."""

    def __init__(
        self,
        store: Store,
        source_id: int,
        outputs: Outputs,
        *,
        formats: Iterable[str] = ("tsv", "json", "apkg"),
    ) -> None:
        self.store = store
        self.source_id = source_id
        self.outputs = outputs
        self.formats = tuple(formats)
        self._last = time.monotonic()
        self._cost = 0.0

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last < max(MIN_REFRESH, COST_FACTOR * self._cost):
            return
        self._write(tuple(f for f in self.formats if f == "tsv"), None)
        self._cost = time.monotonic() - now
        self._last = time.monotonic()

    def final(self, summary: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Write every format now; returns what each wrote (cards, words or notes)."""
        return self._write(self.formats, summary)

    def _write(self, formats: tuple[str, ...], summary: Mapping[str, Any] | None) -> dict[str, int]:
        if not formats:
            return {}
        records = self.store.records(self.source_id, details=formats != ("tsv",))
        self.outputs.directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, int] = {}
        for name in formats:
            path = getattr(self.outputs, name)
            with contextlib.suppress(FileExistsError):
                path.parent.mkdir(parents=True, exist_ok=True)
            if name == "tsv":
                written[name] = write_tsv(records, path)
            elif name == "json":
                written[name] = write_json(records, path, summary=summary)
            elif name == "apkg":
                written[name] = write_apkg(records, path)
        return written
