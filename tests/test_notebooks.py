"""The real notebooks, executed through papermill with their smoke parameters (as CI runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flashkit.report import run_report

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One smoke run of `make report` into a temporary directory."""
    out = tmp_path_factory.mktemp("report")
    return run_report(
        manifest=ROOT / "benchmarks" / "report.toml",
        output_dir=out,
        smoke=True,
        root=ROOT,
        execution_timeout=600,
    )


def test_every_notebook_runs_clean(report) -> None:  # type: ignore[no-untyped-def]
    """Every manifest notebook executes without error under its smoke parameters."""
    failures = {e.entry.name: e.error for e in report.entries if not e.ok}
    assert not failures
    assert {e.entry.name for e in report.entries} == {
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
    }


def test_report_html_shows_results_not_code(report) -> None:  # type: ignore[no-untyped-def]
    """Each notebook's page embeds its plots and tables and hides the code; index.html is
    the landing page that links to them."""
    pages = {entry.entry.name: entry.html.read_text() for entry in report.entries}
    assert sum(page.count("data:image/png;base64") for page in pages.values()) >= 4
    assert "exponential slowest by" in pages["backoff"]
    assert not any("import matplotlib.pyplot" in page for page in pages.values())
    index = report.index.read_text()
    assert all(f'href="{name}.html"' in index for name in pages)


def test_backoff_notebook_writes_its_results(report) -> None:  # type: ignore[no-untyped-def]
    """The backoff notebook records its summary, checks and wall time."""
    results = json.loads((report.output_dir / "results" / "backoff.json").read_text())
    assert results["clients"] == 20
    assert results["repetitions"] == 3
    strategies = {row["strategy"] for row in results["summary"]}
    assert strategies == {"None", "Exponential", "Full", "Equal", "Decorrelated"}
    assert set(results["checks"]) >= {"full_calls_below_half_of_exponential"}
    assert results["wall_seconds"] > 0


def test_breaker_notebook_compares_presets(report) -> None:  # type: ignore[no-untyped-def]
    """The breaker notebook's comparison has the no-breaker baseline and the presets."""
    results = json.loads((report.output_dir / "results" / "breaker.json").read_text())
    assert results["duration"] == 120.0
    comparison = results["comparison"]
    assert comparison["no breaker"]["trips"] == 0
    assert len(comparison) == 6  # no breaker, four presets, flashkit process's default
    assert any(row["trips"] >= 1 for name, row in comparison.items() if name != "no breaker")


def test_primitives_benchmark_reports_ratios(report) -> None:  # type: ignore[no-untyped-def]
    """The benchmark notebook measured flashkit and every peer in one run."""
    results = json.loads((report.output_dir / "results" / "primitives.json").read_text())
    libraries = {row["library"] for row in results["rows"]}
    assert {
        "flashkit",
        "tenacity",
        "stamina",
        "backoff",
        "pybreaker",
        "circuitbreaker",
    } <= libraries
    assert all(r["ns_per_op"] > 0 for r in results["rows"])
    assert {t["target"] for t in results["targets"]}


def test_rate_limits_notebook_shows_strict_windows(report) -> None:  # type: ignore[no-untyped-def]
    """The rate-limit notebook records the burst comparison, sharding and reconciliation."""
    results = json.loads((report.output_dir / "results" / "rate_limits.json").read_text())
    burst = {row["limiter"]: row for row in results["burst"]}
    assert burst["flashkit sliding_window"]["max_in_window"] <= 200
    assert burst["aiolimiter AsyncLimiter"]["max_in_window"] > 200
    assert results["sharding"]["max_in_window"] <= results["sharding"]["rate"]
    *windows, bucket = results["reconciliation"]
    assert len(windows) == 3
    assert all(r["peak_tokens_in_a_minute"] <= r["limit_tokens_per_minute"] for r in windows)
    assert bucket["policy"] == "a bucket like Anthropic's, settled at once"
    assert bucket["peak_tokens_in_a_minute"] <= 2 * bucket["limit_tokens_per_minute"]
    assert bucket["calls_per_minute"] > max(r["calls_per_minute"] for r in windows)


def test_ratelimit_benchmark_reports_peers_and_redis(report) -> None:  # type: ignore[no-untyped-def]
    """The rate-limit benchmark measured flashkit and the peers, the burst test and Redis."""
    results = json.loads((report.output_dir / "results" / "ratelimit_bench.json").read_text())
    libraries = {row["library"] for row in results["cost"]}
    assert {"flashkit sliding_window", "aiolimiter acquire", "limits FixedWindow"} <= libraries
    burst = {row["limiter"]: row for row in results["burst"]}
    assert burst["flashkit sliding_window (default)"]["max_in_1s_worst"] <= 200
    modes = {row["mode"] for row in results["redis"]}
    assert "floor: EVALSHA return 1 (redis-py client)" in modes


@pytest.mark.parametrize("profile", ["flaky", "rate_limited", "outage", "brownout"])
def test_success_metrics_notebook_judges_the_targets(report, profile: str) -> None:  # type: ignore[no-untyped-def]
    """Each success-metrics entry measured all four policies (the openai SDK beside before, after
    and peer, with the after-vs-SDK comparison) and judged the success targets."""
    results = json.loads((report.output_dir / "results" / f"success_{profile}.json").read_text())
    assert results["profile"] == profile
    metrics = {row["policy"]: row for row in results["metrics"]}
    assert set(metrics) == {"before", "after", "peer", "sdk"}
    assert {row["metric"] for row in results["after_vs_sdk"]} >= {"failed", "upstream_requests"}
    for row in metrics.values():
        assert row["succeeded"] + row["failed"] == results["workload"]["words"]
        assert row["upstream_requests"] == results["upstream"][row["policy"]]["requests"]
    verdicts = results["verdicts"]
    assert set(verdicts) == {
        "error_rate", "p99_time_to_card", "breaker_trips", "cache_hit_rate", "pool_efficiency"
    }  # fmt: skip
    layer = results["data_layer"]
    assert layer["runs"][1]["upstream_requests"] == 0  # the list again: all from the cache
    assert layer["cache_met"]
    for verdict in verdicts.values():
        assert {"target", "before", "after", "change", "met", "verdict"} <= set(verdict)
        if verdict["before"] == 0:
            assert verdict["met"] is None
            assert verdict["verdict"] == "n/a (0 before)"
    # flashkit never sends inside a retry-after window it has received.
    assert metrics["after"]["sent_in_retry_after"] == 0
    if profile in ("flaky", "outage", "brownout"):
        # Measured (seed 1, smoke sizes): before loses most words to its never-resetting
        # breaker (flaky) or to the outage or brownout; flashkit rides them out.
        assert metrics["after"]["error_rate"] < metrics["before"]["error_rate"]
        assert verdicts["error_rate"]["met"] is True
    notes = results["notes"]["after"]
    assert {"hedges_sent", "hedges_won", "hedges_skipped", "attempt_timeout"} <= set(notes)
    if profile == "rate_limited":  # the limited presets compare hedging on and off instead
        assert metrics["after"]["failed"] == results["hedging_off"]["failed"] == 0
        assert metrics["after"]["breaker_trips"] == results["hedging_off"]["breaker_trips"] == 0
    else:  # after against the peer on both workloads (smoke: seed 1, a fifth of the words)
        versus = results["versus"]
        assert {row["workload"] for row in versus} == {"at_once", "arriving"}
        assert all(row["preset"] == profile and row["after_failed"] == 0 for row in versus)


def test_pipeline_benchmark_runs_the_command_durable_and_in_memory(report) -> None:  # type: ignore[no-untyped-def]
    """The end-to-end benchmark ran `flashkit process` on a SQLite file and in memory, every
    word done, and its virtual-time completion is within the target of the limit's ideal."""
    results = json.loads((report.output_dir / "results" / "pipeline_bench.json").read_text())
    assert {row["db"] for row in results["runs"]} == {"file", "memory"}
    assert all(row["done"] == results["words"] for row in results["runs"])
    assert results["failed"] == 0
    simulated = {row["simulated_seconds"] for row in results["runs"]}
    assert len(simulated) == 1  # virtual time: the same run whatever the database
    assert results["targets_met"]["completion_vs_ideal"]


def test_compression_notebook_chooses_a_dictionary(report) -> None:  # type: ignore[no-untyped-def]
    """Every codec measured on flashcard answers, the table checked against a real
    CompressedCache, and a zstd dictionary chosen."""
    results = json.loads((report.output_dir / "results" / "compression.json").read_text())
    assert results["items"] == 200
    table = results["table"]
    assert {row["codec"] for row in table} == {"none", "lz4", "zlib", "zstd"}
    assert all(row["ratio"] == 1.0 for row in table if row["codec"] == "none")
    compressed = [r for r in table if r["codec"] in ("zlib", "zstd") and r["threshold"] <= 1024]
    assert all(row["ratio"] > 1.5 for row in compressed)
    assert results["choice"]["codec"] == "zstd"
    assert results["choice"]["dictionary_size"] > 0
    assert results["settings"].startswith("CompressedCache(store, codec='zstd'")
    check = results["cache_check"]
    assert check["cache_ratio"] == pytest.approx(check["table_ratio"])


def test_stampede_notebook_reproduces_vattani(report) -> None:  # type: ignore[no-untyped-def]
    """One hot key at 100 reads/s, 1-s recompute: ~100 recomputes per expiry without
    protection, at most 1.2 with XFetch at every beta."""
    results = json.loads((report.output_dir / "results" / "stampede.json").read_text())
    assert results["parameters"]["duration"] == 60.0
    runs = results["runs"]
    assert set(runs) == {
        "no protection", "TTL jitter ±10%", "single flight",
        "XFetch β=0.5", "XFetch β=1", "XFetch β=2",
    }  # fmt: skip
    assert 80 <= runs["no protection"]["recomputes_per_expiry"] <= 120
    xfetch = [r for r in runs.values() if r["strategy"] == "xfetch"]
    assert all(r["recomputes_per_expiry"] <= 1.2 for r in xfetch)
    assert runs["XFetch β=1"]["p99_latency"] == 0.0
    checks = results["checks"]
    assert checks["none_near_rate_times_recompute"]
    assert checks["xfetch_at_most_1_2"]
    assert checks["single_flight_at_most_1_2"]
    assert results["choice"] == "XFetch β=1"
    assert results["settings"].startswith("CacheService(store, ")


def test_cache_benchmark_reports_ratios_and_targets(report) -> None:  # type: ignore[no-untyped-def]
    """The hit cost against cachetools and cashews, the codecs, and every target judged."""
    results = json.loads((report.output_dir / "results" / "cache_bench.json").read_text())
    assert results["hits"]["sync_ratio_vs_ttlcache_getitem"] > 0
    assert results["hits"]["async_ratio_vs_cashews"] > 0
    codecs = results["compression"]["codecs"]
    assert {"zlib-6", "zstd-3", "default (zstd-3, dictionary='auto')"} <= set(codecs)
    assert all(row["ratio"] >= 1.0 for row in codecs.values())
    assert len(results["targets"]) == 5
    assert all(isinstance(t["met"], bool) for t in results["targets"])


TUNING = {"backoff": "retry", "breaker": "breaker", "rate_limits": "limits",
          "compression": "cache", "stampede": "cache"}  # fmt: skip


def test_the_tuning_notebooks_end_with_what_to_set_in_one_flashkit_toml(report) -> None:  # type: ignore[no-untyped-def]
    """Each tuning notebook opens with what it answers, ends with what to set, and (given
    ``settings_file``, as the report gives it) writes its choice into one flashkit.toml that
    flashkit.config loads and `flashkit process` runs with, naming the file for every value."""
    from typer.testing import CliRunner

    from flashkit.cli import app
    from flashkit.config import load_settings

    config = (report.output_dir / "results" / "flashkit.toml").resolve()
    settings = load_settings(config_file=config, environ={})
    words = report.output_dir / "words.csv"
    words.write_text("position,term,type\n1,내가,pronoun\n", "utf-8")
    shown = CliRunner().invoke(
        app, ["process", str(words), "--provider", "sim", "--dry-run", "--config", str(config),
              "--db", f"sqlite:///{report.output_dir / 'state.db'}"],
        env={"COLUMNS": "400"},  # the table names the file in full
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    for entry in report.entries:
        if entry.entry.name not in TUNING:
            continue
        assert entry.parameters["settings_file"] == str(config)
        notebook = json.loads(entry.entry.path.read_text("utf-8"))
        cells = ["".join(cell["source"]) for cell in notebook["cells"]]
        assert cells[1].startswith("## What this notebook answers"), entry.entry.name
        assert any(cell.startswith("## What to set") for cell in cells), entry.entry.name
        page = entry.html.read_text("utf-8")
        assert "What to set" in page
        assert "In code:" in page
        results = json.loads(
            (report.output_dir / "results" / f"{entry.entry.name}.json").read_text()
        )
        values = results["values"]
        assert values
        assert {key.split(".")[0] for key in values} == {TUNING[entry.entry.name]}
        for key, value in values.items():  # compression and stampede write apart in [cache]
            assert settings.get(key) == value, key
            if value is not None:  # None (a codec's default level) is not written
                assert settings.source(key) == str(config), key
                line = next(x for x in shown.output.splitlines() if f" {key} " in x)
                assert str(config) in line, line
    assert settings.source("run.batch_size") == "default"  # nothing else was written
    assert 'href="results/flashkit.toml"' in report.index.read_text("utf-8")


def test_client_benchmark_compares_the_clients_over_a_real_socket(report) -> None:  # type: ignore[no-untyped-def]
    """The client benchmark measured LLMClient in virtual time against bare httpx2, and over a
    real loopback socket beside bare httpx, bare httpx2 and the openai SDK, with its three
    targets in the shape the landing page reads (the socket ones n/a in a smoke run)."""
    results = json.loads((report.output_dir / "results" / "client_bench.json").read_text())
    clients = results["socket"]["clients"]
    assert set(clients) == {"bare httpx", "bare httpx2", "openai SDK", "LLMClient"}
    assert all(row["rps"] > 0 and row["cpu_us_per_request"] > 0 for row in clients.values())
    targets = {target["target"]: target for target in results["targets"]}
    assert set(targets) == {
        "LLMClient >= 0.9x bare httpx2",
        "LLMClient >= 1.5x openai SDK",
        "LLMClient >= 0.8x bare httpx2",
    }
    assert targets["LLMClient >= 1.5x openai SDK"]["met"] is None  # smoke: not judged
    assert targets["LLMClient >= 1.5x openai SDK"]["ratio"] > 0
