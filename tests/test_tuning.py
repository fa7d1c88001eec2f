"""What a notebook tunes reaches `flashkit process`: widget values -> flashkit.toml ->
flashkit.config -> the dry run's policy table, each value named with the file it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashkit.breaker import BreakDurationContext, CircuitBreaker
from flashkit.cache import CompressedCache, MemoryStore, SQLStore
from flashkit.cli import app
from flashkit.config import build_cache, build_limiters, load_settings
from flashkit.errors import ValidationError
from flashkit.lab.breaker import BreakerSettings, Scenario
from flashkit.lab.tuning import (
    breaker_code,
    breaker_values,
    cache_values,
    limit_values,
    retry_code,
    retry_values,
    settings_toml,
    tuned_settings,
    what_to_set,
    write_settings,
)
from flashkit.lab.widgets import BackoffExplorer, BreakerSimulator, RateLimitExplorer
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


# --- [cache]: notebooks 03 and 05 -> flashkit.toml -> build_cache ------------------------------
def built_cache(config: Path) -> CompressedCache:
    """The answers cache `flashkit process` builds from ``config`` (over a MemoryStore)."""
    cache = build_cache(load_settings(config_file=config, environ={}), store=MemoryStore())
    assert isinstance(cache, CompressedCache)
    return cache


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        ({"codec": "zstd", "level": 9, "threshold": 512, "dictionary_size": 65536},
         ("zstd", 9, 512, True, 65536)),
        ({"codec": "zstd", "level": float("nan"), "threshold": 2048, "dictionary_size": 0},
         ("zstd", 3, 2048, False, 16_384)),
        ({"codec": "zlib", "level": 1, "threshold": 0, "dictionary_size": 0},
         ("zlib", 1, 0, False, 16_384)),
        ({"codec": "lz4", "level": None, "threshold": 1536, "dictionary_size": 8192},
         ("lz4", None, 1536, False, 16_384)),
        ({"codec": "none", "level": None, "threshold": 1024, "dictionary_size": 0},
         ("none", None, 1024, False, 16_384)),
    ],
)  # fmt: skip
def test_a_compression_choice_is_the_cache_flashkit_process_builds(
    compression: dict[str, object], expected: tuple[object, ...]
) -> None:
    """cache_values -> write_settings -> load_settings -> build_cache: the built cache has the
    codec, level, threshold and dictionary chosen, and the file is named as their source."""
    config = write_settings("tuned.toml", cache_values(compression))
    cache = built_cache(config)
    codec, level, threshold, dictionary, size = expected
    assert (cache.codec, cache.level, cache.threshold) == (codec, level, threshold)
    assert ("dictionary='auto'" in repr(cache)) is dictionary
    assert cache.dictionary_size == size
    settings = load_settings(config_file=config, environ={})
    assert settings.source("cache.codec") == settings.source("cache.threshold") == str(config)
    assert settings.source("cache.single_flight") == "default"  # compression only


@pytest.mark.parametrize(
    "options",
    [
        {"ttl_jitter": 0.0, "single_flight": False, "early_refresh": False, "beta": 1.0},
        {"ttl_jitter": 0.1, "single_flight": True, "early_refresh": False, "beta": 1.0},
        {"ttl_jitter": 0.1, "single_flight": True, "early_refresh": True, "beta": 2.5},
    ],
)
def test_a_stampede_choice_is_the_cache_flashkit_process_builds(options: dict[str, object]) -> None:
    """The CacheService options notebook 05 chose (a StampedeResult's ``options``) are the
    built cache's."""
    cache = built_cache(write_settings("tuned.toml", cache_values(stampede=options, ttl=3600.0)))
    assert cache.ttl_jitter == options["ttl_jitter"]
    assert cache.single_flight is options["single_flight"]
    assert cache.early_refresh is options["early_refresh"]
    assert cache.beta == options["beta"]
    assert cache.ttl == 3600.0


def test_notebooks_03_and_05_share_the_cache_section_and_keep_each_others_values() -> None:
    config = Path("tuned.toml")
    compression = {"codec": "zstd", "level": 1, "threshold": 1024, "dictionary_size": 8192}
    write_settings(config, cache_values(compression))
    stampede = {"ttl_jitter": 0.1, "single_flight": True, "early_refresh": True, "beta": 0.5}
    write_settings(config, cache_values(stampede=stampede))
    cache = built_cache(config)
    assert (cache.codec, cache.level, cache.dictionary_size, cache.beta) == ("zstd", 1, 8192, 0.5)
    # a later choice without a level (the codec's default) removes the earlier one
    write_settings(config, cache_values({**compression, "codec": "zlib", "level": None}))
    assert (built_cache(config).codec, built_cache(config).level) == ("zlib", 6)
    assert "level" not in config.read_text("utf-8")
    with pytest.raises(ValueError, match="not stampede options"):
        cache_values(stampede={"betta": 1.0})


def test_build_cache_defaults_to_the_state_database(tmp_path: Path) -> None:
    """Without a store: an SQLStore on run.db, with the file's settings."""
    config = write_settings("tuned.toml", cache_values({"codec": "zlib", "level": 9}))
    settings = load_settings(config_file=config, environ={}, overrides={
        "run.db": f"sqlite:///{tmp_path / 'state.db'}"})  # fmt: skip
    cache = build_cache(settings)
    assert isinstance(cache, CompressedCache)
    try:
        assert isinstance(cache.store, SQLStore)
        assert (cache.codec, cache.level) == ("zlib", 9)
        cache.set_sync("answer", {"content": "x" * 3000})
        assert cache.get_sync("answer") == {"content": "x" * 3000}
        assert cache.stats().compression_ratio > 10
    finally:
        cache.store.close()
    off = load_settings(config_file=config, environ={}, overrides={"cache.enabled": False})
    assert build_cache(off) is None


def test_a_level_the_codec_does_not_take_is_refused_naming_both_sources() -> None:
    config = Path("tuned.toml")
    config.write_text('[cache]\ncodec = "zlib"\nlevel = 12\n', "utf-8")
    with pytest.raises(ValidationError, match=r"tuned.toml: cache.level = 12: zlib levels are -1 "
                       r"to 9 \(cache.codec = 'zlib' from tuned.toml\)"):  # fmt: skip
        load_settings(config_file=config, environ={})
    with pytest.raises(ValidationError, match=r"cache\.level"):
        write_settings("other.toml", {"cache.codec": "lz4", "cache.level": 16})
    assert not Path("other.toml").exists()
    # Layers apply one value at a time: only the end result is checked.
    environ = {"FLASHKIT_CACHE_LEVEL": "19", "FLASHKIT_CACHE_CODEC": "zstd"}
    settings = load_settings(config_file=config, environ=environ)
    assert (settings.cache.codec, settings.cache.level) == ("zstd", 19)


# --- [limits]: notebook 04 -> flashkit.toml -> the limiters flashkit process builds ------------
def built_limiters(config: Path) -> tuple[RateLimiter, RateLimiter | None]:
    requests, tokens = build_limiters(load_settings(config_file=config, environ={}))
    assert isinstance(requests, RateLimiter)
    assert tokens is None or isinstance(tokens, RateLimiter)
    return requests, tokens


def test_a_token_bucket_provider_is_mirrored_with_its_burst_less_the_margin() -> None:
    values = limit_values(
        RateLimiter(600, 60.0, algorithm="token_bucket", burst=50), RateLimiter(30_000, 60.0)
    )
    requests, tokens = built_limiters(write_settings("tuned.toml", values))
    assert (requests.algorithm, requests.rate, requests.period) == ("token_bucket", 600.0, 60.0)
    assert requests.burst == 50 - 600 / 60 * 0.5  # half a second of refill kept in reserve
    assert tokens is not None  # the provider's token bucket, settled as it settles
    assert (tokens.algorithm, tokens.rate, tokens.refunds) == (
        "token_bucket",
        30_000.0,
        "immediate",
    )
    assert tokens.burst == 30_000 - 30_000 / 60 * 0.5


def test_a_window_or_gcra_is_a_fixed_window_provider_evenly_spaced() -> None:
    for algorithm in ("sliding_window", "gcra"):
        values = limit_values(RateLimiter(200, 1.0, algorithm=algorithm))  # 200/s: 12,000/min
        requests, tokens = built_limiters(write_settings(f"{algorithm}.toml", values))
        assert (requests.algorithm, requests.rate, requests.period) == ("gcra", 12_000.0, 60.0)
        assert requests.burst is None
        assert tokens is None


def test_a_pacer_stays_a_pacer() -> None:
    """A token bucket without a burst admits one at a time; so does what is built from it."""
    values = limit_values(RateLimiter(120, 60.0, algorithm="token_bucket"))
    assert values["limits.burst"] == 1.0
    requests, _ = built_limiters(write_settings("tuned.toml", values))
    assert requests.max_count == 1.0


def test_the_rate_limit_explorers_knobs_reach_flashkit_process() -> None:
    explorer = RateLimitExplorer(total=100, tasks=10)
    knobs = {"algorithm": "token_bucket", "rate": 300, "period": 60.0, "burst": 40}
    for name, value in knobs.items():
        explorer.controls[name].value = value
    assert explorer.limiter.rate == 300
    explorer.path.value = "tuned.toml"
    explorer.save.click()
    assert "wrote tuned.toml" in explorer.message.value
    requests, _ = built_limiters(Path("tuned.toml"))
    assert (requests.algorithm, requests.rate) == ("token_bucket", 300.0)
    assert requests.burst == 40 - 300 / 60 * 0.5
    output = dry_run(Path("tuned.toml"))
    assert row(output, "limits.rpm")[1:] == ["300.0", "tuned.toml"]
    assert row(output, "limits.style")[1:] == ["token_bucket", "tuned.toml"]
    assert row(output, "limits.burst")[1:] == ["40.0", "tuned.toml"]


def test_the_cache_explorers_export_what_they_show(close_figures: None) -> None:
    from flashkit.lab.cache import CompressionExplorer, StampedeExplorer

    compression = CompressionExplorer(items=60)
    compression.controls["codec"].value = "zlib"
    compression.controls["level"].value = 9
    compression.controls["threshold"].value = 512
    compression.export("tuned.toml")
    stampede = StampedeExplorer(duration=20.0)
    stampede.controls["strategy"].value = "single_flight"
    stampede.export("tuned.toml")
    cache = built_cache(Path("tuned.toml"))
    assert (cache.codec, cache.level, cache.threshold) == ("zlib", 9, 512)
    assert (cache.single_flight, cache.early_refresh) == (True, False)
    output = dry_run(Path("tuned.toml"))
    assert row(output, "cache.level")[1:] == ["9", "tuned.toml"]
    assert row(output, "cache.early_refresh")[1:] == ["False", "tuned.toml"]


# --- flashkit config show --config F names F ------------------------------------------------------
def test_config_show_names_the_settings_file_for_every_tuned_section() -> None:
    values = {
        **retry_values(RetryConfig(max_attempts=6, max_delay=30.0, jitter=Jitter.FULL)),
        **breaker_values(BreakerSettings(failure_threshold=0.4, growth=2.0)),
        **limit_values(RateLimiter(500, 60.0), RateLimiter(90_000, 60.0)),
        **cache_values({"codec": "zstd", "level": 5, "threshold": 768, "dictionary_size": 0},
                       {"ttl_jitter": 0.2, "beta": 2.0}),
    }  # fmt: skip
    config = write_settings("tuned.toml", values)
    result = runner.invoke(app, ["config", "show", "--config", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for key, value in values.items():
        shown = "" if value is None else str(value)
        assert row(result.output, key)[1:] == [shown, "tuned.toml"], key
    assert row(result.output, "run.batch_size")[2] == "default"


# --- the code to paste ----------------------------------------------------------------------------
def test_the_code_to_paste_builds_what_the_settings_describe() -> None:
    config = RetryConfig(max_attempts=7, initial_delay=0.5, max_delay=20.0, jitter=Jitter.EQUAL)
    pasted = eval(retry_code(config), {"RetryConfig": RetryConfig, "Jitter": Jitter})  # noqa: S307
    assert retry_values(pasted) == retry_values(config)
    names = {"CircuitBreaker": CircuitBreaker}
    for knobs in (BreakerSettings(), BreakerSettings(growth=3.0, max_break=30.0, min_throughput=4)):
        breaker = eval(breaker_code(knobs), names)  # noqa: S307 - our own output
        assert (breaker.failure_threshold, breaker.min_throughput) == (
            knobs.failure_threshold, knobs.min_throughput)  # fmt: skip
        assert breaker.half_open_max_calls == knobs.half_open_max_calls
    generator = breaker.break_duration_generator
    assert generator is not None
    assert [generator(BreakDurationContext(1, 1.0, n)) for n in (1, 2, 3)] == [5.0, 15.0, 30.0]
    text = what_to_set(retry_code(config), retry_values(config))
    assert "RetryConfig(max_attempts=7" in text
    assert settings_toml(retry_values(config)) in text
    assert settings_toml(retry_values(config)).startswith("[retry]\nmax_attempts = 7\n")
