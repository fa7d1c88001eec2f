"""The flashkit command through typer's CliRunner, against the in-process simulator in virtual
time: outputs, reruns, exit codes, and one clear error for every bad input (nothing paid, no
state or output written)."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import flashkit
from flashkit.cli import app
from flashkit.sim import SimulatedUpstream

runner = CliRunner()
SIM = ["--provider", "sim", "--profile", "flaky"]
HEADER = "position,term,type\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own working directory (./flashkit.db, ./output), with no settings or
    keys from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("FLASHKIT_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "FLASHKIT_POLICY",
                 "FLASHKIT_BREAKER", "FLASHKIT_ADAPTIVE_LIMIT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every request the in-process simulator answers (the calls paid for)."""
    seen: list[str] = []
    handle = SimulatedUpstream.handle

    async def counting(self: SimulatedUpstream, request):  # type: ignore[no-untyped-def]
        seen.append(request.url.path)
        return await handle(self, request)

    monkeypatch.setattr(SimulatedUpstream, "handle", counting)
    return seen


def words(tmp_path: Path, text: str = "1,내가,pronoun\n2,그,pronoun\n3,바보,noun\n") -> Path:
    path = tmp_path / "words.csv"
    path.write_text(HEADER + text, "utf-8")
    return path


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def tsv_rows(path: Path) -> list[list[str]]:
    lines = path.read_text("utf-8").splitlines()
    return [line.split("\t") for line in lines if not line.startswith("#")]


def test_process_writes_tsv_json_and_deck_and_a_summary(tmp_path: Path) -> None:
    result = run("process", str(words(tmp_path)), *SIM, "-b", "2")
    assert result.exit_code == 0, result.output
    assert "finished: 3/3 done" in result.output
    lines = (tmp_path / "output" / "cards.tsv").read_text("utf-8").splitlines()
    assert lines[:4] == ["#separator:tab", "#html:false", "#tags column:8",
                         "#columns:" + "\t".join(
                             ["position", "term", "term_number", "tab_name", "primer", "front",
                              "back", "tags", "honorific_level"])]  # fmt: skip
    rows = tsv_rows(tmp_path / "output" / "cards.tsv")
    assert all(len(row) == 9 for row in rows)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # input order
    data = json.loads((tmp_path / "output" / "cards.json").read_text("utf-8"))
    assert [w["term"] for w in data["words"]] == ["내가", "그", "바보"]
    assert data["summary"]["done"] == 3
    with zipfile.ZipFile(tmp_path / "output" / "deck.apkg") as deck:
        deck.extract("collection.anki2", tmp_path)
    notes = sqlite3.connect(tmp_path / "collection.anki2").execute("select count(*) from notes")
    assert notes.fetchone()[0] == len(rows)


def test_a_rerun_continues_and_pays_nothing_twice(tmp_path: Path, requests: list[str]) -> None:
    path = words(tmp_path)
    first = run("process", str(path), *SIM, "--limit", "1")
    assert first.exit_code == 0, first.output
    paid = len(requests)
    assert paid >= 2
    second = run("process", str(path), *SIM)
    assert second.exit_code == 0, second.output
    assert "(1 done earlier)" in second.output
    assert len(requests) - paid >= 4  # words 2 and 3 only
    third = run("process", str(path), *SIM)
    assert third.exit_code == 0
    assert len(requests) == paid + (len(requests) - paid)  # nothing new
    rows = tsv_rows(tmp_path / "output" / "cards.tsv")
    assert sorted({row[0] for row in rows}) == ["1", "2", "3"]


def test_failed_words_exit_1_grouped_by_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHKIT_API_KEY", "invalid")  # the simulator refuses this key: 401
    result = run("process", str(words(tmp_path)), *SIM)
    assert result.exit_code == 1, result.output
    assert "failed words by error: unauthorized × 3" in result.output
    assert tsv_rows(tmp_path / "output" / "cards.tsv") == []
    status = run("status")
    assert status.exit_code == 0, status.output
    assert "failed with unauthorized: 3" in status.output


def test_duplicates_are_processed_once_and_reported(
    tmp_path: Path, requests: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHKIT_RUN_SPARES", "0")  # no spare copies at the end: exact counts
    path = words(tmp_path, "1,사랑,noun\n2,바보,noun\n3,사랑,noun\n")
    result = run("process", str(path), *SIM.copy()[:2], "--profile", "healthy")
    assert result.exit_code == 0, result.output
    assert "1 duplicate rows processed once (e.g. line 4: '사랑' as on line 2)" in result.output
    assert len(requests) == 4


def test_formula_cells_are_neutralised_in_the_tsv(tmp_path: Path) -> None:
    path = words(tmp_path, '1,"=HYPERLINK(""x"")",noun\n2,@SUM,noun\n')
    result = run("process", str(path), "--provider", "sim", "--profile", "healthy")
    assert result.exit_code == 0, result.output
    terms = {row[1] for row in tsv_rows(tmp_path / "output" / "cards.tsv")}
    assert all(term.lstrip('"').startswith("'") for term in terms), terms


def test_skip_invalid_processes_the_valid_rows_and_lists_the_rest(tmp_path: Path) -> None:
    path = words(tmp_path, "1,사랑,noun\nx,바보,noun\n3,,noun\n4,물,noun\n")
    result = run("process", str(path), "--provider", "sim", "--profile", "healthy",
                 "--skip-invalid")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "words.csv:3: position 'x' is not a whole number" in result.output
    assert "words.csv:4: empty term" in result.output
    assert {row[1].split()[0] for row in tsv_rows(tmp_path / "output" / "cards.tsv")} == {
        "사랑", "물"}  # fmt: skip


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, requests: list[str]) -> None:
    result = run("process", str(words(tmp_path)), *SIM, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "3 words to process" in result.output
    assert "6 calls" in result.output
    assert "at the provider's limit (600.0 requests/min" in result.output
    assert requests == []
    assert not (tmp_path / "flashkit.db").exists()
    assert not (tmp_path / "output").exists()


def test_export_status_and_config_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("process", str(words(tmp_path)), *SIM).exit_code == 0
    exported = run("export", "-o", "again", "--format", "tsv")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "again" / "cards.tsv").read_text("utf-8") == (
        tmp_path / "output" / "cards.tsv"
    ).read_text("utf-8")
    status = run("status")
    assert status.exit_code == 0, status.output
    assert "done 3" in status.output
    (tmp_path / "flashkit.toml").write_text("[retry]\nmax_attempts = 7\n", "utf-8")
    monkeypatch.setenv("FLASHKIT_BREAKER", "off")
    shown = run("config", "show")
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "retry.max_attempts" in x)
    assert "7" in line
    assert "flashkit.toml" in line
    line = next(x for x in shown.output.splitlines() if "breaker.enabled" in x)
    assert "False" in line
    assert "env FLASHKIT_BREAKER" in line
    (tmp_path / "flashkit.toml").unlink()
    monkeypatch.setenv("FLASHKIT_POLICY", "original")
    original = run("config", "show", "--toml")
    assert "max_attempts = 3" in original.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"flashkit {flashkit.__version__}"


# --- bad input: one clear line, exit 2, nothing paid, nothing written ---------------------------
def _assert_refused(result: Result, message: str, tmp_path: Path, requests: list[str]) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert requests == []
    assert not (tmp_path / "flashkit.db").exists()
    assert not (tmp_path / "output").exists()


BAD_FILES = {
    "missing": (None, "nothere.csv: cannot read the vocabulary file (No such file"),
    "empty": (b"", "is empty; expected a header line"),
    "header only": (HEADER.encode(), "has a header but no rows"),
    "unknown columns": ("word,meaning\n안녕,hi\n".encode(), "unknown column(s) 'word'"),
    "excel": (b"PK\x03\x04rest-of-a-zip", "looks like an Excel workbook (.xlsx)"),
    "cp949": ((HEADER + "1,사랑,noun\n").encode("cp949"), "run again with --encoding cp949"),
    "cp1252": ((HEADER + "1,café,noun\n").encode("cp1252"), "--encoding cp1252"),
    "unclosed quote": (
        (HEADER + '1,사랑,noun\n2,"바보,noun\n3,물,noun\n4,불,noun\n').encode(),
        "words.csv:3: a quoted field opens here and is never closed",
    ),
    "long term": ((HEADER + "1," + "안" * 100_000 + ",noun\n").encode(),
                  "term is 100000 characters long (the limit is 200)"),
    "field limit": ((HEADER + '1,"' + "x" * 140_000 + '",noun\n').encode(),
                    "longer than 131072 characters"),
    "bad position": ((HEADER + "0,사랑,noun\n").encode(), "words.csv:2: position 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_vocabulary_file_is_one_clear_error(
    case: str, tmp_path: Path, requests: list[str]
) -> None:
    content, message = BAD_FILES[case]
    name = "nothere.csv" if content is None else "words.csv"
    if content is not None:
        (tmp_path / name).write_bytes(content)
    result = run("process", name, *SIM)
    _assert_refused(result, message, tmp_path, requests)
    assert len(result.output) < 600  # one line; never the 100,000 characters


def test_the_encoding_option_reads_a_cp949_file(tmp_path: Path) -> None:
    (tmp_path / "words.csv").write_bytes((HEADER + "1,사랑,noun\n").encode("cp949"))
    result = run("process", "words.csv", *SIM, "--encoding", "cp949")
    assert result.exit_code == 0, result.output
    assert tsv_rows(tmp_path / "output" / "cards.tsv")[0][1].startswith("사랑")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "words.csv"], "'words.csv' is a file, not a folder"),
        (["--json", "words.csv"], "--json 'words.csv' is the vocabulary file"),
        (["--tsv", "x.out", "--json", "x.out"], "--json 'x.out' is --tsv"),
        (["--db", "sqlite:///words.csv"], "--db 'words.csv' is the vocabulary file"),
        (["--tsv", "state.db", "--db", "sqlite:///state.db"], "--tsv 'state.db' is --db"),
        (["-o", "/proc/flashkit-out"], "'/proc/flashkit-out' is not writable"),
        (
            ["--provider", "nope"],
            "run.provider = 'nope': must be one of openrouter, openai, anthropic, sim",
        ),
        (["--profile", "nope"], "FaultProfile.preset('nope'): unknown preset"),
        (["-b", "0"], "Invalid value for '-b' / '--batch-size'"),
        (["--db", "mysql://x@y/z"], "flashkit keeps its state in SQLite or PostgreSQL"),
        (["--db", "postgresql+psycopg://nobody@127.0.0.1:1/x"], "cannot be reached"),
    ],
)
def test_bad_options_are_one_clear_error(
    args: list[str], message: str, tmp_path: Path, requests: list[str]
) -> None:
    result = run("process", str(words(tmp_path)), *SIM, *args)
    _assert_refused(result, message, tmp_path, requests)


def test_a_missing_api_key_is_named_before_anything_is_paid(
    tmp_path: Path, requests: list[str]
) -> None:
    result = run("process", str(words(tmp_path)))
    _assert_refused(result, "OPENROUTER_API_KEY", tmp_path, requests)


def test_markup_in_paths_and_messages_is_printed_as_text(tmp_path: Path) -> None:
    result = run("process", "[/x] [bold]words.csv", *SIM)
    assert result.exit_code == 2
    assert "[/x] [bold]words.csv: cannot read the vocabulary file" in result.output
    (tmp_path / "flashkit.toml").write_text("[retyr]\n", "utf-8")  # codespell:ignore retyr
    result = run("config", "show")
    assert result.exit_code == 2
    assert "unknown section [retyr]; did you mean [retry]?" in result.output  # codespell:ignore


def test_a_bad_setting_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHKIT_RETRY_MAX_ATTEMPT", "3")
    result = run("config", "show")
    assert result.exit_code == 2
    assert "FLASHKIT_RETRY_MAX_ATTEMPT: not a flashkit setting; did you mean" in result.output
    monkeypatch.delenv("FLASHKIT_RETRY_MAX_ATTEMPT")
    (tmp_path / "flashkit.toml").write_text("[retry]\nmax_attempts = 0\n", "utf-8")
    result = run("process", str(words(tmp_path)), *SIM)
    assert result.exit_code == 2
    assert "flashkit.toml: retry.max_attempts = 0: must be between 1 and 100" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "Invalid value for '--port'"),
        (["--profile", "nope"], "unknown preset"),
        (["--set", "rpm=0"], "FaultProfile.rpm=0"),
        (["--set", "nope=1"], "--set 'nope=1': use FIELD=VALUE"),
    ],
)
def test_sim_serve_refuses_bad_options_clearly(args: list[str], message: str) -> None:
    result = run("sim", "serve", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_sim_serve_passes_the_profile_and_refuses_a_taken_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    import flashkit.sim

    calls: list[tuple[object, dict[str, object]]] = []
    monkeypatch.setattr(flashkit.sim, "serve", lambda profile, **kw: calls.append((profile, kw)))
    result = run("sim", "serve", "--port", "8123", "--profile", "flaky", "--seed", "5",
                 "--set", "rpm=1200")  # fmt: skip
    assert result.exit_code == 0, result.output
    ((profile, options),) = calls
    assert profile == flashkit.sim.FaultProfile.preset("flaky", rpm=1200)
    assert options == {"host": "127.0.0.1", "port": 8123, "seed": 5}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("sim", "serve", "--port", str(port))
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
