"""The flashkit command, through typer's CliRunner, against the in-process simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashkit.cli import app

runner = CliRunner()


@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "words.csv"
    path.write_text("position,term,type\n1,내가,pronoun\n2,그,pronoun\n3,바보,noun\n", "utf-8")
    return path


def test_run_against_the_simulator_writes_tsv_json_and_a_summary(
    words: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "cards.tsv", tmp_path / "cards.json"
    result = runner.invoke(
        app,
        ["run", str(words), "--out", str(out), "--provider", "sim", "--profile", "flaky",
         "--concurrency", "2", "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    lines = out.read_text("utf-8").splitlines()
    assert lines[0].startswith("position\tterm\tterm_number")
    assert sum(line.startswith("position\t") for line in lines) == 1  # one header
    assert all(len(line.split("\t")) == 9 for line in lines)
    data = json.loads(report.read_text("utf-8"))
    assert data["summary"]["succeeded"] == 3
    assert [w["term"] for w in data["words"]] == ["내가", "그", "바보"]


def test_limit_and_resume_skip_words_already_done(words: Path, tmp_path: Path) -> None:
    out = tmp_path / "cards.tsv"
    first = runner.invoke(
        app, ["run", str(words), "--out", str(out), "--provider", "sim", "--profile", "healthy",
              "--limit", "1"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app, ["run", str(words), "--out", str(out), "--provider", "sim", "--profile", "healthy",
              "--resume"],
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    lines = out.read_text("utf-8").splitlines()
    assert sum(line.startswith("position\t") for line in lines) == 1
    assert sorted({line.split("\t")[0] for line in lines[1:]}) == ["1", "2", "3"]


def test_failures_are_reported_with_exit_code_1(
    words: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHKIT_API_KEY", "invalid")  # the simulator refuses this key: 401
    out = tmp_path / "c.tsv"
    result = runner.invoke(app, ["run", str(words), "--out", str(out), "--provider", "sim"])
    assert result.exit_code == 1
    assert result.output.count("unauthorized") == 3  # every word, with its error
    assert out.read_text("utf-8").splitlines()[1:] == []


def test_missing_key_and_bad_csv_are_clear_errors(
    words: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("FLASHKIT_API_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    result = runner.invoke(app, ["run", str(words), "--out", str(tmp_path / "c.tsv")])
    assert result.exit_code == 2
    assert "OPENROUTER_API_KEY" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("position,term,type\n1,내가,pronoun\nx,그,pronoun\n", "utf-8")
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "c.tsv")])
    assert result.exit_code == 2
    assert "bad.csv:3" in result.output


def test_sim_serve_calls_the_simulators_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    import flashkit.sim

    calls: list[tuple[object, dict[str, object]]] = []
    monkeypatch.setattr(flashkit.sim, "serve", lambda profile, **kw: calls.append((profile, kw)))
    result = runner.invoke(app, ["sim", "serve", "--port", "8123", "--profile", "flaky",
                                 "--seed", "5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == [("flaky", {"host": "127.0.0.1", "port": 8123, "seed": 5})]
