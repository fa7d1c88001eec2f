"""The logic behind the notebooks (flashkit.lab) and its thin widget layer."""

from __future__ import annotations

import math
import random

import pytest

from flashkit import Jitter, RetryConfig
from flashkit.breaker import BreakDurationContext
from flashkit.lab.backoff import (
    BROOKER_BASE,
    BROOKER_CAP,
    brooker_checks,
    brooker_strategies,
    contention_experiment,
    delay_distribution,
    plot_contention,
    plot_delay_distribution,
    run_contention,
    summarize_contention,
)
from flashkit.lab.breaker import (
    BreakerSettings,
    Scenario,
    Window,
    exponential_break,
    plot_breaker_timeline,
    simulate_breaker,
)


# --- backoff ----------------------------------------------------------------------------------
def test_delay_distribution_samples_calculate_delay() -> None:
    """Each sampled sequence has max_attempts-1 waits, within each retry's jitter bounds."""
    config = RetryConfig(max_attempts=5, initial_delay=1.0, max_delay=6.0, jitter=Jitter.EQUAL)
    data = delay_distribution(config, samples=500, seed=3)
    assert len(data) == 500 * 4
    assert list(data.columns) == ["sample", "retry", "delay", "cumulative"]
    for retry, v in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0)]:
        delays = data.loc[data["retry"] == retry, "delay"]
        assert delays.min() >= v / 2
        assert delays.max() <= v
    last = data[data["retry"] == 4]
    per_sample = data.groupby("sample")["delay"].sum()
    assert last["cumulative"].to_numpy() == pytest.approx(per_sample.to_numpy())


def test_delay_distribution_is_reproducible_from_its_seed() -> None:
    """Same seed, same samples; another seed, other samples."""
    config = RetryConfig(max_attempts=4, jitter=Jitter.FULL)
    first = delay_distribution(config, samples=50, seed=1)
    assert first.equals(delay_distribution(config, samples=50, seed=1))
    assert not first.equals(delay_distribution(config, samples=50, seed=2))


def test_brooker_strategies_use_his_parameters() -> None:
    """Five strategies with base 5 ms and cap 2 s; None never waits."""
    strategies = brooker_strategies()
    assert list(strategies) == ["None", "Exponential", "Full", "Equal", "Decorrelated"]
    assert strategies["None"].calculate_delay(5) == 0.0
    expo = strategies["Exponential"]
    assert expo.calculate_delay(1) == 2 * BROOKER_BASE  # his first retry is attempt 1
    assert expo.calculate_delay(30) == BROOKER_CAP


def test_one_client_never_conflicts() -> None:
    """A lone client writes once, done after four message delays."""
    result = run_contention(brooker_strategies()["Full"], clients=1, seed=0)
    assert result.calls == 1
    assert 0.0 < result.time < 0.2


def test_without_backoff_every_client_eventually_writes_once() -> None:
    """Contention costs extra calls, but every client succeeds exactly once."""
    result = run_contention(brooker_strategies()["None"], clients=20, seed=4)
    assert result.calls > 20


def test_contention_experiment_reproduces_brookers_shape() -> None:
    """At N=100 over 20 runs: full < 0.5x exponential's calls, full ≈ equal, decorrelated > full,
    exponential slowest by > 5x (the 100-run figures are in the report)."""
    runs = contention_experiment(clients=[100], repetitions=20, seed=1)
    assert len(runs) == 5 * 20
    assert set(runs["strategy"]) == {"None", "Exponential", "Full", "Equal", "Decorrelated"}
    summary = summarize_contention(runs)
    checks = brooker_checks(summary, clients=100)
    assert checks["full_calls_below_half_of_exponential"], checks
    assert checks["full_close_to_equal_calls"], checks
    assert checks["decorrelated_more_calls_than_full"], checks
    assert checks["exponential_slowest_by_5x"], checks
    at = summary.set_index("strategy")
    assert (at["runs"] == 20).all()


def test_contention_experiment_is_deterministic() -> None:
    """The same seed gives the same runs."""
    first = contention_experiment(clients=[10], repetitions=3, seed=5)
    assert first.equals(contention_experiment(clients=[10], repetitions=3, seed=5))


def test_brooker_checks_explain_missing_strategies() -> None:
    """Checks on a summary without the needed rows say which are missing."""
    runs = contention_experiment({"Full": brooker_strategies()["Full"]}, clients=[5], repetitions=1)
    with pytest.raises(ValueError, match="Decorrelated"):
        brooker_checks(summarize_contention(runs), clients=5)


def test_contention_rejects_nonsense_sizes() -> None:
    """Zero clients or repetitions are refused with the argument named."""
    with pytest.raises(ValueError, match="clients=0"):
        run_contention(RetryConfig(), clients=0)
    with pytest.raises(ValueError, match="repetitions=0"):
        contention_experiment(repetitions=0)


def test_backoff_plots_draw(close_figures: None) -> None:
    """The plotting helpers return figures with the expected axes."""
    data = delay_distribution(RetryConfig(max_attempts=4), samples=20)
    fig = plot_delay_distribution(data, title="t")
    assert fig.axes[0].get_title() == "t"
    summary = summarize_contention(contention_experiment(clients=[5, 10], repetitions=2))
    fig = plot_contention(summary)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) == 5


# --- breaker simulator ------------------------------------------------------------------------
SHORT = Scenario(
    duration=120.0,
    rate=20.0,
    windows=(Window(30.0, 60.0, 1.0), Window(80.0, 100.0, 0.4, 4.0)),
)


def test_no_breaker_sends_everything_to_the_dependency() -> None:
    """Without a breaker every call reaches the dependency; the outage fails them all."""
    run = simulate_breaker(SHORT, use_breaker=False, seed=1)
    timeline = run.timeline
    assert len(timeline) == 120
    assert (timeline["reached"] == timeline["arrived"]).all()
    assert timeline["rejected"].sum() == 0
    outage = timeline[(timeline["t"] >= 31) & (timeline["t"] < 59)]
    assert outage["succeeded"].sum() == 0
    assert run.summary["calls"] == timeline["arrived"].sum()
    assert run.summary["trips"] == 0
    assert 20 * 120 * 0.85 < run.summary["calls"] < 20 * 120 * 1.15


def test_breaker_sheds_load_during_the_outage() -> None:
    """With the default breaker the outage sees a small fraction of the load, and it trips."""
    baseline = simulate_breaker(SHORT, use_breaker=False, seed=1)
    run = simulate_breaker(SHORT, BreakerSettings(), seed=1)
    assert run.summary["trips"] >= 1
    assert run.summary["reached_during_outage"] < 0.2 * baseline.summary["reached_during_outage"]
    assert run.summary["rejected"] > 0
    totals = run.timeline[["reached", "rejected"]].sum(axis=1)
    assert (totals == run.timeline["arrived"]).all()  # every call either reached or was rejected
    first = run.transitions.iloc[0]
    assert (first["old"], first["new"], first["why"]) == ("closed", "open", "failure_ratio")
    assert 30.0 <= first["t"] < 35.0


def test_breaker_closes_again_after_the_outage() -> None:
    """Once the outage is over the probes succeed and the breaker closes for good."""
    run = simulate_breaker(SHORT, BreakerSettings(), seed=2)
    closes = run.transitions[run.transitions["new"] == "closed"]
    assert len(closes) >= 1
    assert closes["t"].iloc[0] >= 60.0
    after = run.timeline[run.timeline["t"] >= 110]
    assert (after["state"] == "closed").all()


def test_a_growing_break_probes_less_during_a_long_outage() -> None:
    """Exponential break growth reopens fewer times than a fixed 5-s break."""
    fixed = simulate_breaker(SHORT, BreakerSettings(), seed=3)
    growing = simulate_breaker(SHORT, BreakerSettings(growth=2.0), seed=3)
    assert growing.summary["reopens"] < fixed.summary["reopens"]


def test_exponential_break_generator() -> None:
    """base * factor**(opens-1), capped."""
    generator = exponential_break(base=2.0, factor=3.0, cap=30.0)
    durations = [generator(BreakDurationContext(0, 0.0, n)) for n in (1, 2, 3, 4)]
    assert durations == [2.0, 6.0, 18.0, 30.0]


def test_a_high_threshold_ignores_the_brownout() -> None:
    """A 95 % threshold trips only in the outage, never in the 40 % brownout."""
    run = simulate_breaker(SHORT, BreakerSettings(failure_threshold=0.95), seed=4)
    opened = run.transitions[run.transitions["old"] == "closed"]["t"]
    assert len(opened) >= 1
    assert all(30.0 <= t < 61.0 for t in opened)


def test_simulation_is_deterministic_and_validates_input() -> None:
    """The same seed gives the same timeline; nonsense scenarios are refused."""
    first = simulate_breaker(SHORT, seed=9)
    assert first.timeline.equals(simulate_breaker(SHORT, seed=9).timeline)
    with pytest.raises(ValueError, match="rate > 0"):
        simulate_breaker(Scenario(rate=0.0))
    with pytest.raises(ValueError, match="bucket"):
        simulate_breaker(SHORT, bucket=0.0)


def test_breaker_timeline_plot(close_figures: None) -> None:
    """The timeline figure has three panels and shades the scenario's windows."""
    run = simulate_breaker(SHORT, seed=1)
    fig = plot_breaker_timeline(run, SHORT, baseline=simulate_breaker(SHORT, use_breaker=False))
    assert len(fig.axes) == 3
    assert len(fig.axes[1].patches) == 2  # outage and brownout spans


def test_scenario_health_follows_its_windows() -> None:
    """health_at returns the window's failure rate and latency factor, else the background."""
    assert SHORT.health_at(10.0) == (0.01, 1.0)
    assert SHORT.health_at(45.0) == (1.0, 1.0)
    assert SHORT.health_at(90.0) == (0.4, 4.0)
    assert math.isclose(Scenario().rate, 20.0)


# --- widgets (headless: set .value, check the effect) -----------------------------------------
def test_backoff_explorer_recomputes_when_a_slider_moves(close_figures: None) -> None:
    """Moving the attempts slider resamples; a bad cap shows the error and keeps the last data."""
    from flashkit.lab.widgets import BackoffExplorer

    explorer = BackoffExplorer(RetryConfig(max_attempts=3), samples=50)
    assert explorer.data["retry"].max() == 2
    explorer.controls["max_attempts"].value = 7
    assert explorer.config.max_attempts == 7
    assert explorer.data["retry"].max() == 6
    explorer.controls["jitter"].value = Jitter.NONE
    assert explorer.config.jitter is Jitter.NONE
    assert explorer.data.groupby("retry")["delay"].nunique().max() == 1
    before = explorer.data
    explorer.controls["max_delay"].value = 0.01  # below the 1-s initial delay
    assert "max_delay" in explorer.message.value
    assert explorer.data is before
    explorer.controls["max_delay"].value = 100.0
    assert explorer.message.value == ""


def test_breaker_simulator_reruns_with_the_sliders(close_figures: None) -> None:
    """Each slider change rebuilds the breaker and reruns the scenario."""
    from flashkit.lab.widgets import BreakerSimulator

    simulator = BreakerSimulator(SHORT, seed=1)
    assert simulator.run is not None
    first = simulator.run
    simulator.controls["failure_threshold"].value = 0.95
    assert simulator.settings.failure_threshold == 0.95
    assert simulator.run is not first
    simulator.controls["growth"].value = 2.0
    assert simulator.run.summary["settings"]["growth"] == 2.0
    simulator.controls["half_open_max_calls"].value = 4
    assert simulator.run.summary["settings"]["half_open_max_calls"] == 4
    assert simulator.baseline.summary["rejected"] == 0


def test_random_is_not_shared_between_runs() -> None:
    """Simulations use their own seeded generators, not the global random module."""
    random.seed(0)
    state = random.getstate()
    simulate_breaker(SHORT, seed=1)
    contention_experiment(clients=[5], repetitions=1)
    assert random.getstate() == state


# --- rate limits ------------------------------------------------------------------------------
def test_max_in_window_counts_half_open_windows() -> None:
    """[t, t+period) windows: an admission exactly one period later starts a new window."""
    from flashkit.lab.ratelimit import max_in_window

    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0, after=1.0) == 2
    assert max_in_window([], 1.0) == 0


def test_burst_comparison_shows_the_first_window_overshoot() -> None:
    """Strict flashkit limiters stay at 200 per second; full-bucket limiters nearly double it."""
    from flashkit.lab.ratelimit import burst_comparison

    summary, times = burst_comparison(200, 1.0, tasks=50, total=600)
    rows = summary.set_index("limiter")
    assert rows.loc["flashkit sliding_window", "max_in_window"] == 200
    assert rows.loc["flashkit token_bucket (pacer)", "max_in_window"] <= 200
    assert rows.loc["aiolimiter AsyncLimiter", "max_in_window"] > 350
    assert rows.loc["flashkit gcra, burst=rate", "max_in_window"] > 350
    assert (rows["max_after_first"] <= 201).all()
    assert rows.loc["flashkit sliding_window", "total_time"] == pytest.approx(2.0, abs=0.01)
    assert rows.loc["flashkit token_bucket (pacer)", "total_time"] == pytest.approx(3.0, abs=0.01)
    assert len(times) == 4 * 600


def test_sharding_spreads_one_key_over_every_shard() -> None:
    """One key uses all shards and the union never exceeds the limit."""
    from flashkit.lab.ratelimit import sharding_spread

    per_shard, summary = sharding_spread(rate=1000, shards=8, requests=5000, seed=1)
    assert summary["shards_used"] == 8
    assert summary["max_in_window"] <= 1000
    assert per_shard["rate"].sum() == 1000
    assert (per_shard["admitted"] > 0).all()


def test_refunding_unused_tokens_raises_throughput_within_the_limit() -> None:
    """Giving back the unused estimate completes the same calls sooner; no minute ever holds
    more tokens than the limit."""
    from flashkit.lab.ratelimit import token_reconciliation

    table = token_reconciliation(calls=120, seed=2).set_index("policy")
    without = table.loc["reserve max_tokens"]
    with_refund = table.loc["reserve max_tokens, refund the rest"]
    assert with_refund["calls_per_minute"] > 1.15 * without["calls_per_minute"]
    # refunds from the call's own grant wake the queued calls: far more than a reservation's
    pulled = table.loc["acquire max_tokens, refund the rest (queued calls go at once)"]
    assert pulled["calls_per_minute"] > 2 * with_refund["calls_per_minute"]
    assert (table["peak_tokens_in_a_minute"] <= table["limit_tokens_per_minute"]).all()
