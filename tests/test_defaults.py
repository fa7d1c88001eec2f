"""What the success report proves is what ``flashkit process`` runs: with default settings the
1,000-word list finishes on every preset, in virtual time, within 1.15x the ideal time the
success lab computes (its fault-aware fluid bound, :func:`flashkit.lab.success.ideal_seconds`)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashkit.cli import app
from flashkit.config import Settings
from flashkit.lab.success import Workload, ideal_seconds
from flashkit.sim import FaultProfile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocabulary_1000.csv"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")


@pytest.mark.parametrize(
    ("preset", "failed_at_most"),
    [("flaky", 0), ("rate_limited", 0), ("brownout", 0), ("llm_realistic", 0), ("outage", 10)],
)
def test_default_settings_finish_the_list_near_the_ideal_time(
    preset: str, failed_at_most: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("FLASHKIT_POLICY", "FLASHKIT_BREAKER", "FLASHKIT_ADAPTIVE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(
        app, ["process", str(SHARED), "--provider", "sim", "--profile", preset, "--seed", "1"]
    )
    assert result.exit_code in (0, 1), result.output
    with contextlib.closing(sqlite3.connect(tmp_path / "flashkit.db")) as db:
        states = dict(db.execute("SELECT state, count(*) FROM flashkit_words GROUP BY state"))
        (seconds,) = db.execute("SELECT clock_seconds FROM flashkit_runs").fetchone()
        prompt, total = db.execute(
            "SELECT avg(prompt_tokens), avg(prompt_tokens + completion_tokens) "
            "FROM flashkit_calls WHERE status = 'ok'"
        ).fetchone()
    assert states.get("failed", 0) <= failed_at_most, states
    assert states["done"] + states.get("failed", 0) == 1000
    profile = FaultProfile.preset(preset)
    # Tokens one call costs the provider's limit: fixed windows count max_tokens as spent.
    per_call = prompt + Settings().run.max_tokens if profile.limit_mode == "fixed_window" else total
    ideal = ideal_seconds(
        profile, Workload(words=1000, concurrency=Settings().run.batch_size),
        tokens_per_request=per_call,
    )  # fmt: skip
    assert seconds <= 1.15 * ideal, (seconds, ideal, seconds / ideal)
