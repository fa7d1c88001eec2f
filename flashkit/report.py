"""Batch reports: run the benchmark and tuning notebooks with papermill, merge them into one HTML.

``python -m flashkit.report [--smoke] [--only NAME] [--output DIR]`` (what ``make report`` runs)
reads ``benchmarks/report.toml``; :func:`run_report` does the same from Python. The manifest's
format and the output layout: ``docs/report.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import html
import json
import math
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flashkit._landing import landing_markdown

__all__ = [
    "EntryResult",
    "ManifestError",
    "ReportEntry",
    "ReportResult",
    "load_manifest",
    "main",
    "run_report",
]

DEFAULT_MANIFEST = Path("benchmarks/report.toml")
DEFAULT_OUTPUT = Path("reports")

_NAME_RE = re.compile(r"[a-z0-9_]+")
_REQUIRED_KEYS = ("name", "path", "title")
_OPTIONAL_KEYS = ("parameters", "smoke")
_RESULTS_DIR_PARAMETER = "results_dir"
# Notebooks declaring it write what they tuned into one flashkit.toml next to the results.
_SETTINGS_FILE_PARAMETER = "settings_file"
_SETTINGS_FILE = "flashkit.toml"
# Output names the report itself uses next to the per-notebook ``<name>.html`` files.
_RESERVED_NAMES = frozenset({"index"})
# Cells dropped from the HTML: papermill's parameter cells, and its error banner/anchor cells
# (they link to "In [n]" prompts that are hidden, and their fixed anchor id would repeat once
# per failed notebook; the report shows the failure itself).
_DROPPED_TAGS = frozenset({"parameters", "injected-parameters", "papermill-error-cell-tag"})
_ERROR_LINES = 20
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Status = Literal["ok", "FAILED"]
Progress = Callable[[str], None]


class ManifestError(ValueError):
    """The report manifest is missing, unreadable or invalid; ``problems`` lists each issue."""

    def __init__(self, manifest: Path, problems: Sequence[str]) -> None:
        self.manifest = manifest
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{manifest}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            message = f"{manifest}: {len(self.problems)} problems:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True)
class ReportEntry:
    """One ``[[notebook]]`` of the manifest; ``path`` is absolute (resolved against the root)."""

    name: str
    path: Path
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)

    def parameters_for(self, *, smoke: bool) -> dict[str, Any]:
        """The manifest parameters for this run: ``smoke`` merged over ``parameters`` if asked."""
        return {**self.parameters, **self.smoke} if smoke else dict(self.parameters)


@dataclass(frozen=True)
class EntryResult:
    """How one notebook ran.

    ``parameters`` are exactly what papermill injected (including ``results_dir`` when the
    notebook declares it); ``error`` is the first lines of the failure, ``None`` when ok.
    """

    entry: ReportEntry
    status: Status
    seconds: float
    parameters: dict[str, Any]
    executed: Path
    html: Path
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`run_report` produced."""

    index: Path
    summary: Path
    output_dir: Path
    entries: tuple[EntryResult, ...]
    smoke: bool
    commit: str

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.entries)

    @property
    def failed(self) -> tuple[EntryResult, ...]:
        return tuple(result for result in self.entries if not result.ok)


def _nbformat() -> Any:
    """``nbformat``, imported on use (the ``notebooks`` extra) and untyped for mypy."""
    import nbformat

    return nbformat


def _nbconvert() -> Any:
    """``nbconvert``, imported on use (the ``notebooks`` extra) and untyped for mypy."""
    import nbconvert

    return nbconvert


# --------------------------------------------------------------------------------------------
# Manifest


def load_manifest(
    path: Path | str, *, root: Path | None = None, check_files: bool = True
) -> list[ReportEntry]:
    """Read and validate a report manifest; raise :class:`ManifestError` listing every problem.

    Notebook paths are resolved against ``root`` (default: the manifest's parent's parent, i.e.
    the repository root for ``benchmarks/report.toml``) and must exist unless ``check_files`` is
    false (:func:`run_report` only requires the notebooks it runs to exist).
    """
    manifest = Path(path)
    entries = _parse_manifest(manifest, root=root)
    if check_files:
        _check_files_exist(manifest, entries)
    return entries


def _parse_manifest(manifest: Path, *, root: Path | None) -> list[ReportEntry]:
    if not manifest.is_file():
        raise ManifestError(
            manifest, ["manifest file not found; pass --manifest PATH or create it"]
        )
    try:
        with manifest.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(manifest, [f"not valid TOML: {exc}"]) from exc

    base = (root if root is not None else manifest.resolve().parent.parent).resolve()
    problems: list[str] = []
    unknown_top = sorted(set(data) - {"notebook"})
    if unknown_top:
        problems.append(
            f"unknown top-level key(s) {', '.join(map(repr, unknown_top))}; "
            "the manifest only holds [[notebook]] tables"
        )
    raw_entries = data.get("notebook", [])
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        raise ManifestError(
            manifest,
            [
                *problems,
                "'notebook' must be an array of tables: write [[notebook]], not [notebook]",
            ],
        )
    if not raw_entries:
        raise ManifestError(manifest, [*problems, "defines no notebooks; add [[notebook]] tables"])

    entries: list[ReportEntry] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_entries, start=1):
        entry, entry_problems = _parse_entry(index, raw, base)
        problems.extend(entry_problems)
        name = raw.get("name")
        if isinstance(name, str) and name:
            if name in first_index:
                problems.append(
                    f"{_where(index, name)}: duplicate name; entry #{first_index[name]} "
                    "already uses it. Names must be unique (they name the output files)"
                )
                continue
            first_index[name] = index
        if entry is not None:
            entries.append(entry)
    if problems:
        raise ManifestError(manifest, problems)
    return entries


def _where(index: int, name: object) -> str:
    label = f"name {name!r}" if isinstance(name, str) and name else "no name"
    return f"[[notebook]] entry #{index} ({label})"


def _parse_entry(
    index: int, raw: Mapping[str, Any], base: Path
) -> tuple[ReportEntry | None, list[str]]:
    where = _where(index, raw.get("name"))
    problems: list[str] = []
    unknown = sorted(set(raw) - {*_REQUIRED_KEYS, *_OPTIONAL_KEYS})
    if unknown:
        allowed = ", ".join((*_REQUIRED_KEYS, *_OPTIONAL_KEYS))
        problems.append(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {allowed}"
        )
    for key in _REQUIRED_KEYS:
        value = raw.get(key)
        if key not in raw:
            problems.append(f'{where}: missing required key {key!r}; add {key} = "..."')
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: {key!r} must be a non-empty string, got {value!r}")

    name = raw.get("name")
    if isinstance(name, str) and name and not _NAME_RE.fullmatch(name):
        problems.append(
            f"{where}: bad name {name!r}; use only lowercase letters, digits and '_' "
            "(it names the output files)"
        )
    if isinstance(name, str) and name in _RESERVED_NAMES:
        problems.append(f"{where}: name {name!r} is reserved for the report itself; rename it")
    path = raw.get("path")
    if isinstance(path, str) and path.strip() and not path.endswith(".ipynb"):
        problems.append(f"{where}: path {path!r} must point to a .ipynb notebook")

    tables: dict[str, dict[str, Any]] = {}
    for key in _OPTIONAL_KEYS:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            problems.append(
                f"{where}: {key!r} must be a table of name = value pairs "
                f"(write [notebook.{key}] under the entry), got {type(value).__name__} {value!r}"
            )
            continue
        if _RESULTS_DIR_PARAMETER in value:
            problems.append(
                f"{where}: {key!r} sets {_RESULTS_DIR_PARAMETER!r}, which the report passes "
                "itself to notebooks that declare it; remove it from the manifest"
            )
        tables[key] = dict(value)

    if problems:
        return None, problems
    return (
        ReportEntry(
            name=str(name),
            path=(base / str(path)).resolve(),
            title=str(raw["title"]).strip(),
            parameters=tables["parameters"],
            smoke=tables["smoke"],
        ),
        [],
    )


def _check_files_exist(
    manifest: Path, entries: Sequence[ReportEntry], selected: Sequence[ReportEntry] | None = None
) -> None:
    """Every entry of ``selected`` (default: all) must name an existing notebook file."""
    problems = [
        f"{_where(index, entry.name)}: notebook file not found: {entry.path}; "
        "fix 'path' (it is relative to the repository root) or create the notebook"
        for index, entry in enumerate(entries, start=1)
        if (selected is None or entry in selected) and not entry.path.is_file()
    ]
    if problems:
        raise ManifestError(manifest, problems)


# --------------------------------------------------------------------------------------------
# Running


def run_report(
    *,
    manifest: Path = DEFAULT_MANIFEST,
    output_dir: Path = DEFAULT_OUTPUT,
    smoke: bool = False,
    only: Sequence[str] | None = None,
    kernel_name: str = "python3",
    execution_timeout: float = 1800.0,
    root: Path | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Execute the manifest's notebooks with papermill and build the HTML report.

    Relative ``manifest`` and ``output_dir`` are taken from the current directory, or from
    ``root`` when it is given. ``only`` selects entries by name; ``execution_timeout`` is the
    per-cell limit in seconds (``<= 0`` disables it). ``progress`` receives one line per step.
    Notebook failures are recorded, not raised; manifest problems raise :class:`ManifestError`.
    """
    if root is not None:
        manifest = root / manifest
        output_dir = root / output_dir
    all_entries = _parse_manifest(manifest, root=root)
    entries = all_entries if only is None else _select(manifest, all_entries, only)
    _check_files_exist(manifest, all_entries, entries)

    executed_dir = output_dir / "executed"
    results_dir = (output_dir / "results").resolve()
    executed_dir.mkdir(parents=True, exist_ok=True)
    if only is None:  # the tuned settings of this run only (an --only run adds to the last)
        (results_dir / _SETTINGS_FILE).unlink(missing_ok=True)
    timeout = math.ceil(execution_timeout) if execution_timeout > 0 else None
    report_root = (root if root is not None else manifest.resolve().parent.parent).resolve()

    outcomes: list[EntryResult] = []
    notebooks: list[Any] = []
    for number, entry in enumerate(entries, start=1):
        if progress is not None:
            progress(f"[{number}/{len(entries)}] {entry.name}: running {entry.path.name}")
        outcome, executed_nb = _run_one(
            entry,
            executed_dir=executed_dir,
            html_path=output_dir / f"{entry.name}.html",
            results_dir=results_dir,
            smoke=smoke,
            kernel_name=kernel_name,
            timeout=timeout,
        )
        outcomes.append(outcome)
        notebooks.append(executed_nb)
        if progress is not None:
            progress(
                f"[{number}/{len(entries)}] {entry.name}: {outcome.status} "
                f"in {outcome.seconds:.1f} s"
            )

    commit = _git_commit(report_root)
    generated = dt.datetime.now(dt.UTC)
    sections = [
        _section_cells(number, outcome, nb, report_root)
        for number, (outcome, nb) in enumerate(zip(outcomes, notebooks, strict=True))
    ]
    back = nbformat_cell("[← the report: success metrics, benchmark targets](index.html)")
    for outcome, cells in zip(outcomes, sections, strict=True):
        _write_html(outcome.html, outcome.entry.title, [back, *cells])
    landing = landing_markdown(
        [dataclasses.replace(o, parameters=_display_parameters(o)) for o in outcomes],
        results=results_dir,
        smoke=smoke,
        commit=commit,
        generated=generated.strftime("%Y-%m-%d %H:%M:%S"),
        command="make report" + (" REPORT_ARGS=--smoke" if smoke else ""),
    )
    index = output_dir / "index.html"
    _write_html(index, "flashkit report", [nbformat_cell(landing)])

    summary = output_dir / "summary.json"
    summary.write_text(
        json.dumps(
            [_summary_record(outcome, report_root) for outcome in outcomes],
            indent=2,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    return ReportResult(
        index=index,
        summary=summary,
        output_dir=output_dir,
        entries=tuple(outcomes),
        smoke=smoke,
        commit=commit,
    )


def _select(manifest: Path, entries: list[ReportEntry], only: Sequence[str]) -> list[ReportEntry]:
    known = [entry.name for entry in entries]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ManifestError(
            manifest,
            [
                f"unknown notebook name(s) for --only: {', '.join(map(repr, unknown))}; "
                f"known names: {', '.join(known)}"
            ],
        )
    wanted = set(only)
    return [entry for entry in entries if entry.name in wanted]


def _run_one(
    entry: ReportEntry,
    *,
    executed_dir: Path,
    html_path: Path,
    results_dir: Path,
    smoke: bool,
    kernel_name: str,
    timeout: int | None,
) -> tuple[EntryResult, Any]:
    import papermill

    nbformat = _nbformat()

    executed = executed_dir / f"{entry.name}.ipynb"
    # A stale copy from an earlier run must not stand in for this run's output.
    executed.unlink(missing_ok=True)
    parameters = entry.parameters_for(smoke=smoke)
    warnings: list[str] = []
    error: str | None = None
    started = time.perf_counter()
    try:
        declared = _declared_parameters(entry.path, kernel_name)
        if _RESULTS_DIR_PARAMETER in declared:
            results_dir.mkdir(parents=True, exist_ok=True)
            parameters[_RESULTS_DIR_PARAMETER] = str(results_dir)
        if _SETTINGS_FILE_PARAMETER in declared and _SETTINGS_FILE_PARAMETER not in parameters:
            results_dir.mkdir(parents=True, exist_ok=True)
            parameters[_SETTINGS_FILE_PARAMETER] = str(results_dir / _SETTINGS_FILE)
        undeclared = sorted(set(parameters) - declared)
        if undeclared:
            warnings.append(
                f"parameter(s) {', '.join(undeclared)} not declared in the notebook's "
                "'parameters' cell (typo, or the cell is missing its tag?)"
            )
        papermill.execute_notebook(
            str(entry.path),
            str(executed),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(entry.path.parent),
            progress_bar=False,
            execution_timeout=timeout,
            report_mode=False,
        )
    except Exception as exc:  # any failure is reported; the other notebooks still run
        error = _describe_failure(exc)
    seconds = time.perf_counter() - started
    executed_nb = None
    if executed.is_file():
        try:
            executed_nb = nbformat.read(executed, as_version=4)
        except Exception as exc:  # a half-written notebook must not sink the whole report
            error = (error + "\n" if error else "") + f"unreadable executed notebook: {exc!r}"
    result = EntryResult(
        entry=entry,
        status="ok" if error is None else "FAILED",
        seconds=seconds,
        parameters=parameters,
        executed=executed,
        html=html_path,
        error=error,
        warnings=tuple(warnings),
    )
    return result, executed_nb


def _declared_parameters(notebook: Path, kernel_name: str) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    import papermill
    from papermill.translators import papermill_translators

    nbformat = _nbformat()
    try:
        return set(papermill.inspect_notebook(str(notebook)))
    except ValueError:
        # inspect_notebook takes the kernel from the notebook's kernelspec metadata; a notebook
        # saved without one still runs with kernel_name, so ask that kernel's translator.
        nb = nbformat.read(notebook, as_version=4)
        cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
        if cell is None:
            return set()
        language = nb.metadata.get("language_info", {}).get("name", "python")
        translator = papermill_translators.find_translator(kernel_name, language)
        return {parameter.name for parameter in translator.inspect(cell)}


def _describe_failure(exc: BaseException) -> str:
    from papermill import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        head = f"{type(exc).__name__}: {exc.ename}: {exc.evalue} (at In [{exc.exec_count}])"
        body = "\n".join(exc.traceback or [])
    else:
        head = f"{type(exc).__name__}: {exc}"
        body = ""
    lines = _ANSI_RE.sub("", f"{head}\n{body}".rstrip()).splitlines()
    if len(lines) > _ERROR_LINES:
        hidden = len(lines) - _ERROR_LINES
        lines = [*lines[:_ERROR_LINES], f"... ({hidden} more lines in the executed notebook)"]
    return "\n".join(lines)


def _git_commit(root: Path) -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [git, "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and commit else "unknown"


# --------------------------------------------------------------------------------------------
# HTML


def _md(text: str) -> str:
    """Escape text for a Markdown paragraph or table cell."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def _format_parameters(parameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in parameters.items()) or "(defaults)"


def _display_parameters(result: EntryResult) -> dict[str, Any]:
    # Absolute paths on the machine that ran the report: not worth a column.
    injected = (_RESULTS_DIR_PARAMETER, _SETTINGS_FILE_PARAMETER)
    return {k: v for k, v in result.parameters.items() if k not in injected}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _anchor(result: EntryResult) -> str:
    return f"nb-{result.entry.name}"


def nbformat_cell(markdown: str) -> Any:
    """A Markdown cell for the HTML pages."""
    return _nbformat().v4.new_markdown_cell(markdown)


def _section_cells(number: int, result: EntryResult, executed_nb: Any, root: Path) -> list[Any]:
    nbformat = _nbformat()

    entry = result.entry
    status = "ok" if result.ok else "**FAILED**"
    heading = [
        f'<a id="{_anchor(result)}"></a>',
        "",
        f"## {_md(entry.title)}",
        "",
        f"{_md(_relative(entry.path, root))} · {status} · {result.seconds:.1f} s · "
        f"parameters: {_md(_format_parameters(_display_parameters(result)))}",
    ]
    heading.extend(f"\n> warning: {_md(warning)}" for warning in result.warnings)
    cells = [nbformat.v4.new_markdown_cell("\n".join(heading))]
    if result.error is not None:
        longest = max((len(run) for run in re.findall(r"`+", result.error)), default=0)
        fence = "`" * max(3, longest + 1)
        cells.append(
            nbformat.v4.new_markdown_cell(
                f"**FAILED**: {_md(entry.name)} did not run to the end.\n\n"
                f"{fence}text\n{result.error}\n{fence}"
            )
        )
    if executed_nb is not None:
        cells.extend(
            copy.deepcopy(cell)
            for cell in executed_nb.cells
            if not _DROPPED_TAGS.intersection(cell.get("metadata", {}).get("tags", []))
        )
    # Cell ids must be unique in the merged notebook; the executed notebooks' ids may collide.
    for position, cell in enumerate(cells):
        cell["id"] = f"s{number}-c{position}"
    return cells


def _write_html(path: Path, title: str, cells: Sequence[Any]) -> None:
    nbformat = _nbformat()
    html_exporter = _nbconvert().HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.metadata["title"] = title
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = list(cells)
    exporter = html_exporter(
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _resources = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")


def _summary_record(result: EntryResult, root: Path) -> dict[str, Any]:
    return {
        "name": result.entry.name,
        "title": result.entry.title,
        "path": _relative(result.entry.path, root),
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "parameters": result.parameters,
        "error": result.error,
    }


# --------------------------------------------------------------------------------------------
# CLI


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flashkit.report",
        description=(
            "Run the benchmark and tuning notebooks listed in a manifest with papermill and "
            "build one self-contained HTML report."
        ),
    )
    parser.add_argument(
        "--smoke", action="store_true", help="merge each entry's [notebook.smoke] parameters (CI)"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=DEFAULT_MANIFEST,
        metavar="PATH",
        help=f"manifest TOML (default: {DEFAULT_MANIFEST})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this notebook (repeatable)",
    )
    parser.add_argument(
        "--kernel", default="python3", metavar="NAME", help="Jupyter kernel (default: python3)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="per-cell execution timeout; 0 disables it (default: 1800)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 if every notebook ran, 1 if any failed, 2 on a bad manifest."""
    args = _build_parser().parse_args(argv)

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        result = run_report(
            manifest=args.manifest,
            output_dir=args.output,
            smoke=args.smoke,
            only=args.only,
            kernel_name=args.kernel,
            execution_timeout=args.timeout,
            progress=progress,
        )
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    width = max([len("notebook"), *(len(r.entry.name) for r in result.entries)])
    print()
    print(f"{'notebook':<{width}}  {'status':<6}  {'seconds':>8}")
    for r in result.entries:
        print(f"{r.entry.name:<{width}}  {r.status:<6}  {r.seconds:>8.1f}")
        for warning in r.warnings:
            print(f"{'':<{width}}  warning: {warning}")
        if r.error is not None:
            print(f"{'':<{width}}  {r.error.splitlines()[0]}")
    print()
    print(f"Report: {result.index.resolve()}")
    if not result.ok:
        names = ", ".join(r.entry.name for r in result.failed)
        print(f"FAILED: {names} (details in the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
