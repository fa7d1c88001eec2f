"""Every figure the lab draws (and so every figure of the tuning notebooks and their widgets) can
be read on its own: each Axes has a title, axis labels (with units), and a legend naming its
series when it has more than one.

The rules, as a reader meets them: a panel stacked under another on the same time axis may leave
the shared axis label to the panel that shows its tick labels; a twin Axes (``twinx``) shares its
host's title; a series may be named by any legend of its figure (two panels of the same runs share
one legend).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _twins(ax: Axes) -> list[Axes]:
    """The other Axes drawn in the same place (twinx / twiny)."""
    box = ax.get_position().bounds
    return [o for o in ax.figure.axes if o is not ax and o.get_position().bounds == box]


def _shares(ax: Axes, axis: str) -> list[Axes]:
    group = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return [o for o in group.get_siblings(ax) if o is not ax]


def _title(ax: Axes) -> str:
    return " ".join(ax.get_title(loc=loc) for loc in ("left", "center", "right")).strip()


def _labelled(ax: Axes) -> list[str]:
    """The names of the series drawn in ``ax`` (what a legend would list)."""
    return [label for label in ax.get_legend_handles_labels()[1] if not label.startswith("_")]


def problems(figure: Figure) -> list[str]:
    """What a reader of ``figure`` would miss."""
    named: set[str] = set()
    for ax in figure.axes:
        if (legend := ax.get_legend()) is not None:
            named |= {text.get_text() for text in legend.get_texts()}
    for legend in figure.legends:
        named |= {text.get_text() for text in legend.get_texts()}
    found = []
    for index, ax in enumerate(figure.axes):
        where = f"axes[{index}] ({_title(ax) or 'untitled'})"
        if not _title(ax) and not any(_title(twin) for twin in _twins(ax)):
            found.append(f"{where}: no title")
        for axis in ("x", "y"):
            label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
            shared = [
                o.get_xlabel() if axis == "x" else o.get_ylabel() for o in _shares(ax, axis)
            ]  # fmt: skip
            if not label.strip() and not any(s.strip() for s in shared):
                found.append(f"{where}: no {axis} label")
        series = _labelled(ax)
        if len(series) > 1 and not set(series) <= named:
            found.append(f"{where}: {len(series)} series, not all in a legend: {series}")
    return found


# --- the lab's figures, drawn from small runs -------------------------------------------------
def _backoff() -> Iterator[tuple[str, Figure]]:
    from flashkit.lab.backoff import (
        contention_experiment,
        delay_distribution,
        plot_contention,
        plot_delay_distribution,
        summarize_contention,
    )
    from flashkit.retry import RetryConfig

    yield (
        "delay distribution",
        plot_delay_distribution(delay_distribution(RetryConfig(max_attempts=4), samples=20)),
    )
    summary = summarize_contention(contention_experiment(clients=[3, 5], repetitions=2))
    yield "contention", plot_contention(summary)


def _breaker() -> Iterator[tuple[str, Figure]]:
    from flashkit.lab.breaker import Scenario, Window, plot_breaker_timeline, simulate_breaker

    scenario = Scenario(duration=60.0, windows=(Window(10.0, 20.0, 1.0),))
    run = simulate_breaker(scenario, seed=1)
    baseline = simulate_breaker(scenario, use_breaker=False, seed=1)
    yield "breaker timeline", plot_breaker_timeline(run, scenario, baseline=baseline)
    yield "breaker timeline alone", plot_breaker_timeline(run)


def _ratelimit() -> Iterator[tuple[str, Figure]]:
    from flashkit.lab.ratelimit import burst_comparison, limiter_run, plot_burst, plot_limiter_run

    _, times = burst_comparison(20, 1.0, tasks=5, total=60)
    yield "burst", plot_burst(times, 20, 1.0)
    run = limiter_run(rate=20, total=60, tasks=5)
    yield "limiter run", plot_limiter_run(run)
    built = limiter_run(rate=20, algorithm="gcra", total=60, tasks=5)
    yield "limiter run and flashkit process", plot_limiter_run(run, built=built)


def _cache() -> Iterator[tuple[str, Figure]]:
    from flashkit.lab.cache import (
        card_payloads,
        compression_table,
        payload_bytes,
        plot_compression,
        plot_compression_bars,
        plot_dictionary_sizes,
        plot_stampede_costs,
        plot_stampede_timeline,
        plot_threshold,
        stampede_comparison,
        stampede_table,
    )

    payloads = card_payloads(80)
    table = compression_table(
        payloads,
        levels={"none": (None,), "zlib": (6,), "zstd": (1, 3)},
        codecs=("none", "zlib", "zstd"),
        dictionary_sizes=(2048,),
        thresholds=(0, 1024),
        repetitions=1,
    )
    yield "compression", plot_compression(table)
    yield "dictionary sizes", plot_dictionary_sizes(table)
    sizes = {"stage 1": [len(payload_bytes(p)) for p in payloads[::2]],
             "stage 2": [len(payload_bytes(p)) for p in payloads[1::2]]}  # fmt: skip
    yield "threshold", plot_threshold(table, sizes, labels=["zstd-3", "zlib-6"])
    at = table[table["threshold"] == 1024].set_index("label")
    yield "compression bars", plot_compression_bars(at, threshold=1024, items=40)
    runs = stampede_comparison(duration=12.0, betas=(1.0,))
    yield "stampede timeline", plot_stampede_timeline(runs)
    yield "stampede costs", plot_stampede_costs(stampede_table(runs))


FIGURES: dict[str, Callable[[], Iterator[tuple[str, Figure]]]] = {
    "backoff": _backoff,
    "breaker": _breaker,
    "ratelimit": _ratelimit,
    "cache": _cache,
}


@pytest.mark.parametrize("module", list(FIGURES))
def test_every_lab_figure_has_titles_labels_and_legends(module: str, close_figures: None) -> None:
    found = {name: problems(figure) for name, figure in FIGURES[module]()}
    assert not {name: issues for name, issues in found.items() if issues}


def test_every_widget_figure_has_titles_labels_and_legends(
    close_figures: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each widget displays, caught on its way to the notebook, before and after a change."""
    import flashkit.lab.cache
    import flashkit.lab.widgets
    from flashkit.lab.breaker import Scenario
    from flashkit.lab.cache import CompressionExplorer, StampedeExplorer
    from flashkit.lab.widgets import BackoffExplorer, BreakerSimulator, RateLimitExplorer

    shown: list[Figure] = []

    def catch(output: Any, *items: Any) -> None:
        shown.extend(item for item in items if isinstance(item, Figure))

    for module in (flashkit.lab.widgets, flashkit.lab.cache):
        monkeypatch.setattr(module, "_show", catch)
    panels = {
        "backoff": (BackoffExplorer(samples=20), "max_attempts", 4),
        "breaker": (BreakerSimulator(Scenario(duration=30.0)), "growth", 2.0),
        "rate limit": (RateLimitExplorer(total=40, tasks=4), "algorithm", "gcra"),
        "compression": (CompressionExplorer(items=40), "dictionary_size", 0),
        "stampede": (StampedeExplorer(duration=10.0), "strategy", "none"),
    }
    for panel, control, value in panels.values():
        panel.controls[control].value = value
    assert len(shown) == 2 * len(panels)
    found = {index: problems(figure) for index, figure in enumerate(shown)}
    assert not {index: issues for index, issues in found.items() if issues}


def test_the_audit_catches_what_a_reader_would_miss(close_figures: None) -> None:
    figure, (left, right) = plt.subplots(1, 2)
    left.plot([0, 1], label="a")
    left.plot([1, 0], label="b")
    right.set_title("named")
    right.set_xlabel("x (s)")
    found = problems(figure)
    assert "axes[0] (untitled): no title" in found
    assert "axes[0] (untitled): no x label" in found
    assert "axes[1] (named): no y label" in found
    assert any("2 series, not all in a legend" in p for p in found)
