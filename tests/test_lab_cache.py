"""flashkit.lab.cache: flashcard payloads, the compression table, the stampede in virtual time,
the widgets and the settings to paste."""

from __future__ import annotations

import ast
import json

import pytest

from flashkit.cache import CacheService, CompressedCache, MemoryStore, train_dictionary
from flashkit.lab.cache import (
    STRATEGIES,
    StampedeResult,
    card_payloads,
    choose_compression,
    choose_stampede,
    compression_table,
    payload_bytes,
    plot_compression,
    plot_stampede_timeline,
    settings_to_paste,
    stampede,
    stampede_comparison,
    stampede_table,
    vattani_checks,
)
from flashkit.sim._content import STAGE1_MODEL, STAGE2_MODEL, TSV_HEADER


# --- payloads -----------------------------------------------------------------------------------
def test_card_payloads_are_cached_chat_answers_stage_by_stage() -> None:
    """Stage 1 (JSON) then stage 2 (TSV) of each word, as LLMClient stores an answer."""
    payloads = card_payloads(6, seed=3)
    assert len(payloads) == 6
    assert [p["model"] for p in payloads] == [STAGE1_MODEL, STAGE2_MODEL] * 3
    for first, second in zip(payloads[::2], payloads[1::2], strict=True):
        card = json.loads(first["content"])
        assert card["term"].split()[0] in second["content"]
        assert second["content"].startswith(TSV_HEADER)
    for payload in payloads:
        assert set(payload) == {"content", "model", "usage", "finish_reason", "request_id"}
        usage = payload["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert 800 < len(payload_bytes(payload)) < 4000  # flashcard answers: 1-3 KB


def test_card_payloads_are_deterministic_from_the_seed() -> None:
    assert card_payloads(10, seed=1) == card_payloads(10, seed=1)
    assert card_payloads(10, seed=1) != card_payloads(10, seed=2)
    assert card_payloads(0) == []
    with pytest.raises(ValueError, match="count"):
        card_payloads(-1)


# --- compression --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def payloads() -> list[dict[str, object]]:
    return card_payloads(160, seed=0)


@pytest.fixture(scope="module")
def table(payloads: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    return compression_table(
        payloads,
        levels={"none": (None,), "lz4": (None,), "zlib": (6,), "zstd": (1, 3)},
        dictionary_sizes=(4096, 16384),
        thresholds=(0, 1024, 8192),
        repetitions=1,
    )


def test_compression_table_has_one_row_per_configuration_and_threshold(table) -> None:  # type: ignore[no-untyped-def]
    """none, lz4, zlib-6, and zstd-1/3 each without and with two dictionaries: 9 × 3 rows."""
    assert len(table) == 9 * 3
    assert set(table["codec"]) == {"none", "lz4", "zlib", "zstd"}
    assert {
        "label", "codec", "level", "dictionary_size", "threshold", "ratio", "compressed_share",
        "mean_stored_bytes", "compress_us", "decompress_us", "total_us",
    } <= set(table.columns)  # fmt: skip
    assert table.attrs["test_items"] == table.attrs["train_items"] == 80
    assert table.attrs["skipped"] == []
    assert "zstd-3 + 16 KiB dict" in set(table["label"])


def test_compression_table_ratios_are_sane(table) -> None:  # type: ignore[no-untyped-def]
    """Every codec compresses flashcard answers; none stores them as they are; a dictionary
    beats plain zstd; a threshold above every value stores them all as they are."""
    low = table[table["threshold"] == 1024].set_index("label")
    assert (low.loc["none", ["ratio", "compressed_share", "total_us"]] == [1.0, 0.0, 0.0]).all()
    for label in ("zlib-6", "zstd-1", "zstd-3", "lz4"):
        assert low.loc[label, "ratio"] > 1.5
        assert low.loc[label, "compressed_share"] == 1.0
        assert low.loc[label, "compress_us"] > 0
    assert low.loc["zstd-3 + 16 KiB dict", "ratio"] > 2 * low.loc["zstd-3", "ratio"]
    high = table[table["threshold"] == 8192]
    assert (high["ratio"] == 1.0).all()
    assert (high["compressed_share"] == 0.0).all()
    assert (high["compress_us"] == 0.0).all()


def test_compression_table_ratio_is_what_the_cache_reports(payloads) -> None:  # type: ignore[no-untyped-def]
    """The table's ratio equals CacheStats.compression_ratio of a CompressedCache set with the
    same test values (the same codec calls and rules)."""
    table = compression_table(
        payloads,
        codecs=("zstd", "zlib"),
        levels={"zstd": (3,), "zlib": (6,)},
        dictionary_sizes=(8192,),
        thresholds=(1024,),
        repetitions=1,
    ).set_index("label")
    train, test = payloads[:80], payloads[80:]
    dictionary = train_dictionary(train, 8192, level=3)
    for label, options in {
        "zstd-3": {"codec": "zstd", "level": 3, "dictionary": None},
        "zlib-6": {"codec": "zlib", "level": 6, "dictionary": None},
        "zstd-3 + 8 KiB dict": {"codec": "zstd", "level": 3, "dictionary": dictionary},
    }.items():
        cache = CompressedCache(MemoryStore(), ttl=60.0, **options)  # type: ignore[arg-type]
        for i, value in enumerate(test):
            cache.set_sync(f"k{i}", value)
        assert cache.stats().compression_ratio == pytest.approx(table.loc[label, "ratio"])


def test_compression_table_skips_what_it_cannot_measure() -> None:
    """A dictionary zstd cannot train on two samples is skipped and said so; bad input raises."""
    table = compression_table(
        card_payloads(4), codecs=("zstd",), levels={"zstd": (3,)}, thresholds=(0,), repetitions=1
    )
    assert list(table["label"]) == ["zstd-3"]
    assert len(table.attrs["skipped"]) == 3
    with pytest.raises(ValueError, match="unknown codec"):
        compression_table(card_payloads(4), codecs=("brotli",))
    with pytest.raises(ValueError, match="cannot split"):
        compression_table(card_payloads(1))


def test_choose_compression_keeps_the_time_target_then_the_simplest(table) -> None:  # type: ignore[no-untyped-def]
    """Within 0.25x zlib-6's time, near the best ratio, the smallest dictionary and level."""
    chosen = choose_compression(table)
    zlib6 = table[(table["label"] == "zlib-6") & (table["threshold"] == chosen["threshold"])]
    assert chosen["total_us"] <= 0.25 * zlib6["total_us"].item()
    assert chosen["codec"] == "zstd"
    assert chosen["dictionary_size"] > 0
    assert isinstance(chosen["level"], int)
    best = choose_compression(table, tolerance=0.0, max_time_vs_zlib6=None)
    assert best["ratio"] == table["ratio"].max()
    assert best["ratio"] >= chosen["ratio"]
    plain = choose_compression(table[table["dictionary_size"] == 0], threshold=1024)
    assert plain["threshold"] == 1024
    assert plain["label"] in {"zstd-1", "zstd-3", "lz4"}  # zlib-6 is over a quarter of itself


def test_plot_compression_has_titles_and_units(table, close_figures: None) -> None:  # type: ignore[no-untyped-def]
    figure = plot_compression(table, threshold=1024)
    (ax,) = figure.axes
    assert "µs" in ax.get_xlabel()
    assert ax.get_title()
    assert ax.get_legend() is not None


# --- stampede -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs() -> dict[str, StampedeResult]:
    return stampede_comparison(duration=100.0)


def test_no_protection_recomputes_about_rate_times_recompute_per_expiry(runs) -> None:  # type: ignore[no-untyped-def]
    """Vattani et al.: 100 reads/s and a 1-s recompute make about 100 recomputes per expiry."""
    for label in ("no protection", "TTL jitter ±10%"):
        result = runs[label]
        assert result.expiries >= 7  # about one per TTL + 2 s in 100 s
        assert 80 <= result.recomputes_per_expiry <= 120
        assert result.p99_latency == pytest.approx(1.0)
        assert result.stale_reads == 0


def test_single_flight_and_xfetch_recompute_once_per_expiry(runs) -> None:  # type: ignore[no-untyped-def]
    single = runs["single flight"]
    assert single.recomputes_per_expiry == 1.0
    assert single.waited_reads > 50 * single.expiries  # everyone waits out the recompute
    for beta in (0.5, 1, 2):
        xfetch = runs[f"XFetch β={beta}"]
        assert xfetch.recomputes_per_expiry <= 1.2
        assert xfetch.p99_latency == 0.0  # refreshed before expiry: readers get the old value
        assert xfetch.waited_reads <= xfetch.expiries  # only whoever refreshes waits
        assert xfetch.stale_reads > 0
    # A larger beta refreshes earlier, so more often.
    assert runs["XFetch β=0.5"].recomputes < runs["XFetch β=1"].recomputes
    assert runs["XFetch β=1"].recomputes < runs["XFetch β=2"].recomputes
    assert all(vattani_checks(runs)[k] for k in ("none_near_rate_times_recompute",
               "xfetch_at_most_1_2", "single_flight_at_most_1_2"))  # fmt: skip
    assert choose_stampede(runs) == "XFetch β=1"


def test_stampede_timeline_adds_up(runs) -> None:  # type: ignore[no-untyped-def]
    for result in runs.values():
        timeline = result.timeline
        assert len(timeline) == 100
        assert timeline["reads"].sum() == result.reads
        assert timeline["recomputes"].sum() == result.recomputes
        assert timeline["waited"].sum() == result.waited_reads
        assert timeline["stale"].sum() == result.stale_reads
        assert 9_000 < result.reads < 11_000  # 100 reads/s for 100 s
    assert runs["no protection"].timeline["in_flight"].max() >= 80
    assert runs["XFetch β=1"].timeline["in_flight"].max() == 1


def test_stampede_is_deterministic_from_the_seed() -> None:
    first = stampede("xfetch", duration=30.0, seed=4)
    again = stampede("xfetch", duration=30.0, seed=4)
    assert first.summary() == again.summary()
    assert first.timeline.equals(again.timeline)
    assert stampede("xfetch", duration=30.0, seed=5).summary() != first.summary()


def test_stampede_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="strategy"):
        stampede("lock")
    with pytest.raises(ValueError, match="> 0"):
        stampede("none", recompute=0.0)


def test_stampede_table_and_plot(runs, close_figures: None) -> None:  # type: ignore[no-untyped-def]
    table = stampede_table(runs)
    assert list(table.index) == list(runs)
    assert {"recomputes_per_expiry", "stale_reads", "waited_reads", "p99_latency"} <= set(
        table.columns
    )
    json.dumps(runs["XFetch β=1"].summary())  # JSON-ready
    figure = plot_stampede_timeline(runs, until=40)
    top, bottom = figure.axes
    assert "reads/s" in figure.get_suptitle()
    assert top.get_title() == "Recomputes running at once"
    assert "(s)" in bottom.get_xlabel()
    assert len(top.get_legend().get_texts()) == len(runs)


# --- what to set --------------------------------------------------------------------------------
NAMESPACE = {"CompressedCache": CompressedCache, "CacheService": CacheService}


@pytest.mark.parametrize("strategy", [None, *STRATEGIES])
def test_settings_to_paste_builds_the_cache_it_names(strategy: str | None) -> None:
    """The pasted call parses and builds a cache with the chosen settings."""
    chosen = {"codec": "zstd", "level": 9, "dictionary_size": 65536, "threshold": 512}
    text = settings_to_paste(compression=chosen, strategy=strategy, beta=2.0)
    ast.parse(text)
    cache = eval(text, {**NAMESPACE, "store": MemoryStore()})  # noqa: S307 - our own output
    assert isinstance(cache, CompressedCache)
    assert (cache.codec, cache.level, cache.threshold) == ("zstd", 9, 512)
    assert "dictionary='auto', dictionary_size=65536" in text
    assert cache.single_flight is (strategy in (None, "single_flight", "xfetch"))
    assert cache.early_refresh is (strategy in (None, "xfetch"))
    if strategy == "none":
        assert cache.ttl_jitter == 0.0
    if strategy == "xfetch":
        assert cache.beta == 2.0


def test_settings_to_paste_for_other_codecs_and_no_compression() -> None:
    text = settings_to_paste(compression={"codec": "lz4", "level": float("nan")}, ttl=60.0)
    assert text == "CompressedCache(store, codec='lz4', threshold=1024, dictionary=None, ttl=60.0)"
    eval(text, {**NAMESPACE, "store": MemoryStore()})  # noqa: S307 - our own output
    plain = {"codec": "zstd", "level": 3, "dictionary_size": 16384, "threshold": 1024}
    assert "dictionary='auto', ttl" in settings_to_paste(compression=plain)  # the default size
    text = settings_to_paste(strategy="xfetch", store="SQLStore('sqlite://')")
    assert text == "CacheService(SQLStore('sqlite://'), ttl=2592000.0, ttl_jitter=0.1, beta=1.0)"


# --- widgets (headless: set .value, check the effect) -----------------------------------------
def test_compression_explorer_remeasures_when_a_control_moves(close_figures: None) -> None:
    from flashkit.lab.cache import CompressionExplorer

    explorer = CompressionExplorer(items=80)
    assert explorer.controls["level"].continuous_update is False  # each change measures
    assert explorer.controls["threshold"].continuous_update is False
    assert list(explorer.table.index) == ["zstd-3 + 16 KiB dict", "zlib-6", "none"]
    assert "dictionary='auto'" in explorer.settings
    explorer.controls["dictionary_size"].value = 0
    assert explorer.table.index[0] == "zstd-3"
    assert "dictionary=None" in explorer.settings
    explorer.controls["codec"].value = "zlib"
    assert explorer.table.index[0] == "zlib-3"
    explorer.controls["level"].value = 0  # the codec's default
    assert explorer.table.index[0] == "zlib"
    explorer.controls["threshold"].value = 4096  # above every answer: nothing compressed
    assert explorer.table.loc["zlib", "compressed_share"] == 0.0
    before = explorer.table
    explorer.controls["level"].value = 15  # zlib has levels up to 9
    assert "error" in explorer.message.value
    assert explorer.table is before
    explorer.controls["level"].value = 9
    assert explorer.message.value == ""
    assert "level=9" in explorer.settings


def test_stampede_explorer_reruns_with_the_sliders(close_figures: None) -> None:
    from flashkit.lab.cache import StampedeExplorer

    explorer = StampedeExplorer(duration=30.0)
    assert all(
        explorer.controls[name].continuous_update is False
        for name in ("reads_per_second", "recompute", "beta")
    )
    assert explorer.result is not None
    assert explorer.result.strategy == "xfetch"
    assert explorer.baseline is not None
    assert explorer.baseline.strategy == "none"
    explorer.controls["strategy"].value = "single_flight"
    assert explorer.result.strategy == "single_flight"
    explorer.controls["reads_per_second"].value = 50
    assert explorer.result.reads_per_second == 50
    assert explorer.baseline.reads_per_second == 50
    explorer.controls["recompute"].value = 2.0
    assert explorer.result.recompute == 2.0
    explorer.controls["strategy"].value = "xfetch"
    explorer.controls["beta"].value = 2.0
    assert explorer.result.beta == 2.0


def test_the_sweeps_report_their_progress(payloads) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, int]] = []
    compression_table(
        payloads[:40],
        levels={"zlib": (6,), "zstd": (3,)},
        codecs=("zlib", "zstd"),
        dictionary_sizes=(4096,),
        repetitions=1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]  # zlib-6, zstd-3, zstd-3 + dictionary
    seen.clear()
    stampede_comparison(duration=5.0, betas=(1.0,), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_the_stampede_explorer_keeps_its_baseline_while_only_the_strategy_moves(
    close_figures: None,
) -> None:
    from flashkit.lab.cache import StampedeExplorer

    explorer = StampedeExplorer(duration=20.0)
    baseline = explorer.baseline
    explorer.controls["beta"].value = 2.0
    explorer.controls["strategy"].value = "ttl_jitter"
    assert explorer.baseline is baseline  # no protection's run does not depend on them
    explorer.controls["recompute"].value = 0.5
    assert explorer.baseline is not baseline
    assert explorer.values() == {
        "cache.ttl_jitter": 0.1, "cache.single_flight": False, "cache.early_refresh": False,
        "cache.beta": 2.0,
    }  # fmt: skip
