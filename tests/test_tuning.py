"""What a notebook tunes reaches `flashkit process`: widget values -> flashkit.toml ->
flashkit.config -> the dry run's policy table, each value named with the file it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashkit.cli import app
from flashkit.config import load_settings
from flashkit.errors import ValidationError
from flashkit.lab.breaker import Scenario
from flashkit.lab.tuning import limit_values, retry_values, tuned_settings, write_settings
from flashkit.lab.widgets import BackoffExplorer, BreakerSimulator
from flashkit.ratelimit import RateLimiter
from flashkit.retry import Jitter, RetryConfig

runner = CliRunner()
WORDS = "position,term,type\n1,내가,pronoun\n2,그,pronoun\n"


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no flashkit.toml of the repository's is read
    for name in [n for n in os.environ if n.startswith("FLASHKIT_")]:
        monkeypatch.delenv(name)


def dry_run(config: Path) -> str:
    words = Path("words.csv")
    words.write_text(WORDS, "utf-8")
    result = runner.invoke(
        app,
        ["process", str(words), "--provider", "sim", "--dry-run", "--config", str(config)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, key: str) -> list[str]:
    """The cells of the dry run's policy-table row for ``key``."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│") if c.strip()]
        if cells and cells[0] == key:
            return cells
    raise AssertionError(f"{key} not in the dry run's policy table:\n{output}")


def test_the_breaker_simulators_knobs_reach_flashkit_process() -> None:
    simulator = BreakerSimulator(Scenario(duration=60.0))
    knobs = {
        "failure_threshold": 0.3,
        "min_throughput": 40,
        "sampling_duration": 20.0,
        "break_duration": 2.5,
        "growth": 3.0,
        "half_open_max_calls": 3,
    }
    for name, value in knobs.items():
        simulator.controls[name].value = value  # as a person moving the sliders
    assert simulator.run is not None
    assert simulator.run.summary["settings"]["failure_threshold"] == 0.3
    simulator.path.value = "tuned.toml"  # relative to the notebook's directory (here tmp_path)
    simulator.save.click()  # the notebook's button
    assert "wrote tuned.toml" in simulator.message.value
    config = Path("tuned.toml")

    settings = load_settings(config_file=config, environ={})
    for name, value in knobs.items():
        key = f"breaker.{name}"
        assert settings.get(key) == value
        assert settings.source(key) == str(config)
    assert settings.source("retry.max_attempts") == "default"  # nothing else was written

    output = dry_run(config)
    assert row(output, "breaker.failure_threshold")[1:] == ["0.3", str(config)]
    assert row(output, "breaker.half_open_max_calls")[1:] == ["3", str(config)]
    assert row(output, "breaker.growth")[1:] == ["3.0", str(config)]
    assert row(output, "retry.max_attempts")[1:] == ["10", "default"]


def test_two_notebooks_write_one_file_and_keep_each_others_values() -> None:
    config = Path("tuned.toml")
    explorer = BackoffExplorer(RetryConfig(), samples=50)
    explorer.controls["max_attempts"].value = 7
    explorer.controls["jitter"].value = Jitter.DECORRELATED
    explorer.export(config)
    simulator = BreakerSimulator(Scenario(duration=30.0))
    simulator.controls["failure_threshold"].value = 0.7
    simulator.export(config)

    settings = load_settings(config_file=config, environ={})
    assert (settings.retry.max_attempts, settings.retry.jitter) == (7, "decorrelated")
    assert settings.breaker.failure_threshold == 0.7
    assert row(dry_run(config), "retry.jitter")[1:] == ["decorrelated", str(config)]


def test_limits_and_retry_map_to_their_sections() -> None:
    values = {
        **retry_values(RetryConfig(max_attempts=4, initial_delay=0.5, max_delay=8.0)),
        **limit_values(
            RateLimiter(500, 60.0, algorithm="token_bucket", burst=50),
            RateLimiter(30_000, 60.0),
        ),
    }
    settings = tuned_settings(values)
    assert (settings.retry.max_attempts, settings.retry.max_delay) == (4, 8.0)
    assert (settings.limits.rpm, settings.limits.tpm) == (500.0, 30_000.0)
    assert (settings.limits.style, settings.limits.burst) == ("token_bucket", 50.0)
    assert settings.source("limits.rpm") == "notebook"


def test_a_value_the_settings_refuse_is_named_and_the_file_is_untouched(tmp_path: Path) -> None:
    config = tmp_path / "flashkit.toml"
    write_settings(config, {"breaker.failure_threshold": 0.4})
    before = config.read_text("utf-8")
    with pytest.raises(ValidationError, match=r"breaker\.growth"):
        write_settings(config, {"breaker.growth": 0.5})
    assert config.read_text("utf-8") == before
