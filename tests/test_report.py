"""flashkit.report: manifest validation, papermill execution and the merged HTML report.

The kernel-executing tests share one report run (three notebooks: ok, ok with ``results_dir``,
failing) built once per module, plus one ``main`` run; everything else is kernel-free.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flashkit.report import (
    ManifestError,
    ReportEntry,
    ReportResult,
    _describe_failure,
    load_manifest,
    main,
    run_report,
)

# A 1x1 PNG: displayed by a notebook, it must come out embedded (base64) in the HTML.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
ENV_MARKER = "env-value-that-must-not-leak-into-the-report"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


# nbformat and papermill are imported inside the helpers: importing them takes seconds, which
# the manifest tests (kernel-free, run by ``-m "not notebooks"``) should not pay.


def _write_notebook(path: Path, cells: list[Any], *, kernelspec: bool = True) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["language_info"] = {"name": "python"}
    if kernelspec:
        nb.metadata["kernelspec"] = KERNELSPEC
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _code(source: str) -> Any:
    import nbformat

    return nbformat.v4.new_code_cell(source)


def _markdown(source: str) -> Any:
    import nbformat

    return nbformat.v4.new_markdown_cell(source)


def _parameters_cell(source: str) -> Any:
    cell = _code(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def _plain_notebook(path: Path) -> Path:
    return _write_notebook(
        path,
        [
            _markdown("Prose from the plain notebook."),
            _parameters_cell('greeting = "hello"\nrepeat = 1\nunused_in_code = 0'),
            _code(
                "import pandas as pd\n"
                "SOURCE_ONLY_MARKER = 'never shown'\n"
                "frame = pd.DataFrame({'word': [greeting] * repeat, 'n': range(repeat)})\n"
                "frame"
            ),
            _code("from pathlib import Path\nprint('cwd=' + Path.cwd().name)"),
            _code(
                "import base64\n"
                "from IPython.display import Image, display\n"
                f"display(Image(data=base64.b64decode('{PNG_B64}')))"
            ),
        ],
    )


def _results_notebook(path: Path) -> Path:
    return _write_notebook(
        path,
        [
            _parameters_cell('size = 10\nresults_dir = "unset"'),
            _code(
                "import json\n"
                "from pathlib import Path\n"
                "Path(results_dir, 'sized.json').write_text(json.dumps({'size': size}))\n"
                "print(f'wrote size={size}')"
            ),
        ],
    )


def _broken_notebook(path: Path) -> Path:
    # No kernelspec metadata: papermill.inspect_notebook cannot read it, so the report falls
    # back to the kernel's translator to see that results_dir is declared.
    return _write_notebook(
        path,
        [
            _parameters_cell('x = 1\nresults_dir = "unset"'),
            _code("raise RuntimeError(f'boom from broken notebook, x={x}')"),
            _code("print('after the failure')"),
        ],
        kernelspec=False,
    )


MANIFEST = """\
[[notebook]]
name = "plain"
path = "nbs/plain.ipynb"
title = "Plain notebook title"
[notebook.parameters]
greeting = "bonjour-from-params"
repeat = 5
unused = 7
[notebook.smoke]
repeat = 2

[[notebook]]
name = "broken"
path = "nbs/broken.ipynb"
title = "Broken notebook title"
[notebook.parameters]
x = 41

[[notebook]]
name = "sized"
path = "other/sized.ipynb"
title = "Sized notebook title"
[notebook.parameters]
size = 100
[notebook.smoke]
size = 3
"""


def _write_manifest(root: Path, text: str, name: str = "report.toml") -> Path:
    manifest = root / "benchmarks" / name
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(textwrap.dedent(text), encoding="utf-8")
    return manifest


@pytest.fixture
def stub_project(tmp_path: Path) -> Path:
    """The same manifest with empty notebook files, for tests that run no kernel."""
    for relative in ("nbs/plain.ipynb", "nbs/broken.ipynb", "other/sized.ipynb"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("{}")
    _write_manifest(tmp_path, MANIFEST)
    return tmp_path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    _plain_notebook(root / "nbs" / "plain.ipynb")
    _broken_notebook(root / "nbs" / "broken.ipynb")
    _results_notebook(root / "other" / "sized.ipynb")
    _write_manifest(root, MANIFEST)
    return root


@pytest.fixture(scope="module")
def report(project: Path) -> Iterator[ReportResult]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHKIT_TEST_ENV_MARKER", ENV_MARKER)
        yield run_report(root=project, smoke=True, kernel_name="python3", execution_timeout=120)


@pytest.fixture(scope="module")
def index_html(report: ReportResult) -> str:
    return report.index.read_text(encoding="utf-8")


def _by_name(report: ReportResult) -> dict[str, Any]:
    return {result.entry.name: result for result in report.entries}


def _read(path: Path) -> Any:
    import nbformat

    return nbformat.read(path, as_version=4)


def _executed_parameters(path: Path) -> dict[str, Any]:
    nb = _read(path)
    return dict(nb.metadata.papermill.parameters)


# --------------------------------------------------------------------------------------------
# Running notebooks


@pytest.mark.notebooks
def test_runs_every_notebook_in_manifest_order_and_keeps_going_after_a_failure(
    report: ReportResult,
) -> None:
    assert [r.entry.name for r in report.entries] == ["plain", "broken", "sized"]
    assert [r.status for r in report.entries] == ["ok", "FAILED", "ok"]
    assert not report.ok
    assert [r.entry.name for r in report.failed] == ["broken"]
    assert all(r.seconds > 0 for r in report.entries)
    assert report.smoke is True


@pytest.mark.notebooks
def test_executed_notebooks_carry_injected_parameters_with_smoke_overrides(
    report: ReportResult,
) -> None:
    results = _by_name(report)
    for name in ("plain", "broken", "sized"):
        assert results[name].executed == report.output_dir / "executed" / f"{name}.ipynb"
        assert results[name].executed.is_file()
    plain = _executed_parameters(results["plain"].executed)
    # smoke's repeat=2 wins over parameters' repeat=5; the rest of parameters stays.
    assert plain == {"greeting": "bonjour-from-params", "repeat": 2, "unused": 7}
    sized = _executed_parameters(results["sized"].executed)
    assert sized["size"] == 3


@pytest.mark.notebooks
def test_results_dir_is_passed_only_to_notebooks_that_declare_it(report: ReportResult) -> None:
    results = _by_name(report)
    expected = str((report.output_dir / "results").resolve())
    assert "results_dir" not in _executed_parameters(results["plain"].executed)
    assert _executed_parameters(results["sized"].executed)["results_dir"] == expected
    # Declared in a notebook without kernelspec metadata: found through the fallback.
    assert _executed_parameters(results["broken"].executed)["results_dir"] == expected
    written = json.loads((report.output_dir / "results" / "sized.json").read_text())
    assert written == {"size": 3}


@pytest.mark.notebooks
def test_notebooks_run_in_their_own_directory(report: ReportResult) -> None:
    nb = _read(_by_name(report)["plain"].executed)
    printed = "".join(
        output.get("text", "") for cell in nb.cells for output in cell.get("outputs", [])
    )
    assert "cwd=nbs" in printed


@pytest.mark.notebooks
def test_undeclared_parameters_are_warned_about(report: ReportResult) -> None:
    results = _by_name(report)
    assert any("unused" in warning for warning in results["plain"].warnings)
    assert results["sized"].warnings == ()


@pytest.mark.notebooks
def test_failure_is_recorded_with_its_error_text(report: ReportResult) -> None:
    broken = _by_name(report)["broken"]
    assert broken.error is not None
    first = broken.error.splitlines()[0]
    assert first.startswith("PapermillExecutionError: RuntimeError: boom from broken notebook")
    assert "x=41" in first
    assert "\x1b[" not in broken.error  # ANSI colours stripped
    assert _by_name(report)["plain"].error is None


# --------------------------------------------------------------------------------------------
# The HTML report and summary.json


@pytest.mark.notebooks
def test_each_notebook_page_shows_outputs_and_markdown_but_not_code(report: ReportResult) -> None:
    results = _by_name(report)
    page = results["plain"].html.read_text() + results["sized"].html.read_text()
    assert "<td>bonjour-from-params</td>" in page  # the DataFrame output
    assert "cwd=nbs" in page  # printed output
    assert "wrote size=3" in page
    assert "Prose from the plain notebook." in page
    # Code cell sources, including the injected parameters cell, are hidden.
    assert "SOURCE_ONLY_MARKER" not in page
    assert "pd.DataFrame(" not in page
    assert "display(Image" not in page
    assert "# Parameters" not in page
    assert f"data:image/png;base64,{PNG_B64}" in page  # self-contained


@pytest.mark.notebooks
def test_each_notebook_page_links_back_to_the_landing_page(report: ReportResult) -> None:
    for result in report.entries:
        assert 'href="index.html"' in result.html.read_text()


@pytest.mark.notebooks
def test_index_is_a_landing_page_not_a_concatenation(report: ReportResult, index_html: str) -> None:
    assert report.index == report.output_dir / "index.html"
    assert "flashkit report" in index_html
    assert "Prose from the plain notebook." not in index_html  # the notebook has its own page
    for result in report.entries:
        assert f'href="{result.html.name}"' in index_html
    for title in ("Plain notebook title", "Broken notebook title", "Sized notebook title"):
        assert title in index_html
    positions = [index_html.index(t) for t in ("Plain notebook", "Broken notebook", "Sized note")]
    assert positions == sorted(positions)  # manifest order
    assert " UTC from commit " + report.commit in index_html
    assert "mode: smoke" in index_html
    assert "3 notebooks, 1 failed" in index_html
    assert "cores" in index_html  # the machine
    assert "Python " in index_html
    assert "make report REPORT_ARGS=--smoke" in index_html  # how to reproduce it
    headings = [index_html.index(h) for h in ("success metrics", "Benchmark targets", "Notebooks")]
    assert headings == sorted(headings)


@pytest.mark.notebooks
def test_a_failed_notebook_is_marked_and_its_page_shows_the_error(
    report: ReportResult, index_html: str
) -> None:
    assert "FAILED" in index_html
    page = _by_name(report)["broken"].html.read_text()
    assert "boom from broken notebook" in page
    assert "RuntimeError" in page


@pytest.mark.notebooks
def test_report_contains_no_environment_values(report: ReportResult, index_html: str) -> None:
    assert ENV_MARKER not in index_html
    assert ENV_MARKER not in report.summary.read_text()
    for result in report.entries:
        assert ENV_MARKER not in result.html.read_text()


@pytest.mark.notebooks
def test_one_html_per_notebook(report: ReportResult) -> None:
    plain = (report.output_dir / "plain.html").read_text()
    broken = (report.output_dir / "broken.html").read_text()
    assert "<td>bonjour-from-params</td>" in plain
    assert "boom from broken notebook" not in plain
    assert "boom from broken notebook" in broken
    assert "SOURCE_ONLY_MARKER" not in plain
    assert (report.output_dir / "sized.html").is_file()


@pytest.mark.notebooks
def test_summary_json(report: ReportResult) -> None:
    summary = json.loads(report.summary.read_text())
    assert report.summary == report.output_dir / "summary.json"
    assert [s["name"] for s in summary] == ["plain", "broken", "sized"]
    assert [s["status"] for s in summary] == ["ok", "FAILED", "ok"]
    plain, broken, sized = summary
    assert set(plain) == {"name", "title", "path", "status", "seconds", "parameters", "error"}
    assert plain["path"] == "nbs/plain.ipynb"
    assert plain["title"] == "Plain notebook title"
    assert plain["parameters"] == {"greeting": "bonjour-from-params", "repeat": 2, "unused": 7}
    assert plain["error"] is None
    assert plain["seconds"] > 0
    assert "boom from broken notebook" in broken["error"]
    assert sized["parameters"]["size"] == 3


@pytest.mark.notebooks
def test_main_only_runs_the_selected_notebook_and_exits_1_on_failure(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "ghost" has no notebook file: only the selected entries need to exist.
    manifest = _write_manifest(
        project,
        MANIFEST + '\n[[notebook]]\nname = "ghost"\npath = "nbs/ghost.ipynb"\ntitle = "Ghost"\n',
        name="with_ghost.toml",
    )
    output = tmp_path / "out"
    code = main(["--manifest", str(manifest), "--output", str(output), "--only", "broken"])
    assert code == 1
    summary = json.loads((output / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["broken"]
    # Full (non-smoke) parameters.
    assert summary[0]["parameters"]["x"] == 41
    assert not (output / "executed" / "plain.ipynb").exists()
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert str((output / "index.html").resolve()) in captured.out
    assert "broken" in captured.err


# --------------------------------------------------------------------------------------------
# Manifest validation (no kernels)


def test_load_manifest_resolves_paths_against_repo_root(stub_project: Path) -> None:
    project = stub_project
    entries = load_manifest(project / "benchmarks" / "report.toml")
    assert [e.name for e in entries] == ["plain", "broken", "sized"]
    plain = entries[0]
    assert plain == ReportEntry(
        name="plain",
        path=(project / "nbs" / "plain.ipynb").resolve(),
        title="Plain notebook title",
        parameters={"greeting": "bonjour-from-params", "repeat": 5, "unused": 7},
        smoke={"repeat": 2},
    )
    assert entries[1].smoke == {}
    assert plain.parameters_for(smoke=False)["repeat"] == 5
    assert plain.parameters_for(smoke=True) == {
        "greeting": "bonjour-from-params",
        "repeat": 2,
        "unused": 7,
    }


def test_load_manifest_with_explicit_root(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.ipynb").write_text("{}")
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[notebook]]\nname = "a"\npath = "a.ipynb"\ntitle = "A"\n')
    entries = load_manifest(manifest, root=tmp_path / "elsewhere")
    assert entries[0].path == (tmp_path / "elsewhere" / "a.ipynb").resolve()


def _entry(name: str = "good", path: str = "nbs/good.ipynb", extra: str = "") -> str:
    return f'[[notebook]]\nname = "{name}"\npath = "{path}"\ntitle = "T {name}"\n{extra}\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            _entry("good") + _entry("good"),
            ["entry #2 (name 'good')", "duplicate name", "entry #1 already uses it"],
            id="duplicate-name",
        ),
        pytest.param(
            _entry("good") + '[[notebook]]\nname = "nopath"\ntitle = "No path"\n',
            ["entry #2 (name 'nopath')", "missing required key 'path'"],
            id="missing-path",
        ),
        pytest.param(
            _entry("good") + _entry("ghost", "nbs/ghost.ipynb"),
            ["entry #2 (name 'ghost')", "notebook file not found", "ghost.ipynb", "fix 'path'"],
            id="missing-file",
        ),
        pytest.param(
            _entry("good", extra="paramaters = {}"),  # codespell:ignore paramaters
            [
                "entry #1 (name 'good')",
                "unknown key(s) 'paramaters'",  # codespell:ignore paramaters
                "allowed keys",
            ],
            id="unknown-key",
        ),
        pytest.param(
            _entry("Bad-Name"),
            ["entry #1 (name 'Bad-Name')", "bad name", "lowercase letters, digits and '_'"],
            id="bad-name",
        ),
        pytest.param(
            _entry("good", extra="parameters = 3"),
            ["entry #1 (name 'good')", "'parameters' must be a table", "[notebook.parameters]"],
            id="non-table-parameters",
        ),
        pytest.param(
            _entry("good", extra="[notebook.smoke]\nresults_dir = 'x'"),
            ["entry #1 (name 'good')", "'smoke' sets 'results_dir'"],
            id="results-dir-in-manifest",
        ),
        pytest.param(
            _entry("good", path="nbs/good.py"),
            ["entry #1", "must point to a .ipynb notebook"],
            id="not-a-notebook",
        ),
        pytest.param(
            _entry("index"),
            ["entry #1 (name 'index')", "reserved"],
            id="reserved-name",
        ),
        pytest.param(
            '[[notebook]]\npath = "nbs/good.ipynb"\ntitle = "x"\n',
            ["entry #1 (no name)", "missing required key 'name'"],
            id="missing-name",
        ),
        pytest.param("", ["defines no notebooks", "[[notebook]]"], id="empty"),
        pytest.param(
            '[notebook]\nname = "good"\npath = "nbs/good.ipynb"\ntitle = "t"\n',
            ["write [[notebook]], not [notebook]"],
            id="single-table",
        ),
        pytest.param("[[notebook]\n", ["not valid TOML"], id="bad-toml"),
        pytest.param(
            "title = 'x'\n" + _entry("good"),
            ["unknown top-level key(s) 'title'"],
            id="unknown-top-level-key",
        ),
    ],
)
def test_manifest_errors_name_the_file_entry_and_problem(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "good.ipynb").write_text("{}")  # only has to exist
    manifest = _write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(manifest)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert str(manifest) in message
    for fragment in expected:
        assert fragment in message


def test_manifest_error_lists_every_problem(tmp_path: Path) -> None:
    manifest = _write_manifest(
        tmp_path, _entry("a", extra="colour = 1") + '[[notebook]]\nname = "b"\npath = "b.ipynb"\n'
    )
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(manifest)
    problems = excinfo.value.problems
    assert len(problems) == 2
    assert "entry #1 (name 'a'): unknown key(s) 'colour'" in problems[0]
    assert "entry #2 (name 'b'): missing required key 'title'" in problems[1]
    assert "2 problems" in str(excinfo.value)


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.toml")


def test_unknown_only_name_lists_known_names(stub_project: Path) -> None:
    with pytest.raises(ManifestError) as excinfo:
        run_report(root=stub_project, only=["plain", "nope"], output_dir=Path("out"))
    message = str(excinfo.value)
    assert "unknown notebook name(s) for --only: 'nope'" in message
    assert "known names: plain, broken, sized" in message
    assert not (stub_project / "out").exists()


def test_only_checks_files_of_selected_entries_and_keeps_manifest_numbering(
    stub_project: Path,
) -> None:
    (stub_project / "nbs" / "broken.ipynb").unlink()
    with pytest.raises(ManifestError) as excinfo:
        run_report(root=stub_project, only=["broken"], output_dir=Path("out"))
    assert excinfo.value.problems == (
        f"[[notebook]] entry #2 (name 'broken'): notebook file not found: "
        f"{(stub_project / 'nbs' / 'broken.ipynb').resolve()}; fix 'path' (it is relative to "
        "the repository root) or create the notebook",
    )


def test_main_reports_manifest_errors_with_exit_code_2(
    stub_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = stub_project / "benchmarks" / "report.toml"
    output = stub_project / "out"
    code = main(["--manifest", str(manifest), "--output", str(output), "--only", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "known names: plain, broken, sized" in err


def test_failure_description_is_truncated_and_uncoloured() -> None:
    from papermill import PapermillExecutionError

    traceback = ["\x1b[0;31mTraceback line\x1b[0m"] + [f"frame {i}" for i in range(50)]
    exc = PapermillExecutionError(3, 4, "raise X", "ValueError", "bad value", traceback)
    text = _describe_failure(exc)
    lines = text.splitlines()
    assert lines[0] == ("PapermillExecutionError: ValueError: bad value (at In [4])")
    assert lines[1] == "Traceback line"
    assert len(lines) == 21
    assert lines[-1].startswith("... (32 more lines")
    assert _describe_failure(OSError("disk full")) == "OSError: disk full"


def test_repo_manifest_is_valid() -> None:
    manifest = Path(__file__).resolve().parent.parent / "benchmarks" / "report.toml"
    entries = load_manifest(manifest, check_files=False)
    assert [e.name for e in entries] == [
        "backoff",
        "breaker",
        "rate_limits",
        "primitives",
        "ratelimit_bench",
        "success_flaky",
        "success_rate_limited",
        "success_outage",
        "success_brownout",
        "success_llm_realistic",
        "client_bench",
        "pipeline_bench",
        "compression",
        "stampede",
        "cache_bench",
    ]
    for entry in entries:
        assert entry.path.suffix == ".ipynb"
        assert set(entry.smoke) <= set(entry.parameters)
