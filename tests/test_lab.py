"""The logic behind the notebooks (flashkit.lab) and its thin widget layer."""

from __future__ import annotations

import math
import random
from pathlib import Path

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
from flashkit.ratelimit import RateLimiter


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
    more tokens than a window limiter's limit, nor more than a bucket's size plus a minute of
    refill."""
    from flashkit.lab.ratelimit import token_reconciliation

    table = token_reconciliation(calls=120, seed=2).set_index("policy")
    without = table.loc["reserve max_tokens"]
    with_refund = table.loc["reserve max_tokens, refund the rest"]
    assert with_refund["calls_per_minute"] > 1.15 * without["calls_per_minute"]
    # refunds from the call's own grant wake the queued calls: far more than a reservation's
    pulled = table.loc["acquire max_tokens, refund the rest (queued calls go at once)"]
    assert pulled["calls_per_minute"] > 2 * with_refund["calls_per_minute"]
    windows = table.drop(index="a bucket like Anthropic's, settled at once")
    assert (windows["peak_tokens_in_a_minute"] <= windows["limit_tokens_per_minute"]).all()
    # a bucket like the provider's: faster again, a minute's worth at once on top of the refill
    bucket = table.loc["a bucket like Anthropic's, settled at once"]
    assert bucket["calls_per_minute"] > 1.2 * pulled["calls_per_minute"]
    assert bucket["peak_tokens_in_a_minute"] <= 2 * bucket["limit_tokens_per_minute"]


# --- choosing what to set ---------------------------------------------------------------------
def test_choose_jitter_takes_the_fastest_of_the_fewest_calls() -> None:
    from flashkit.lab.backoff import choose_jitter

    summary = summarize_contention(
        contention_experiment(clients=[30], repetitions=4, seed=0)
    )  # fmt: skip
    chosen = choose_jitter(summary, clients=30)
    at = summary.set_index("strategy")
    assert chosen.name.title() in {"Full", "Equal", "Decorrelated"}
    assert at.loc[chosen.name.title(), "calls"] <= 1.1 * at.loc[["Full", "Equal", "Decorrelated"],
                                                                "calls"].min()  # fmt: skip
    import pandas as pd

    made_up = pd.DataFrame(
        {"strategy": ["Exponential", "Full", "Equal", "Decorrelated"], "clients": 100,
         "calls": [900.0, 400.0, 420.0, 500.0], "time_ms": [9e4, 5000.0, 4000.0, 100.0]}
    )  # fmt: skip
    assert choose_jitter(made_up) is Jitter.EQUAL  # within 10 % of the fewest calls, faster
    with pytest.raises(ValueError, match="no jittered strategy"):
        choose_jitter(made_up, clients=5)


def test_choose_breaker_sheds_the_outage_and_keeps_the_most_calls() -> None:
    from flashkit.lab.breaker import choose_breaker

    baseline = simulate_breaker(SHORT, use_breaker=False, seed=1)
    runs = {
        "default": simulate_breaker(SHORT, BreakerSettings(), seed=1),
        "hair trigger": simulate_breaker(SHORT, BreakerSettings(failure_threshold=0.1), seed=1),
        "asleep": simulate_breaker(SHORT, BreakerSettings(min_throughput=10_000), seed=1),
    }
    assert choose_breaker(runs, baseline) == "default"
    with pytest.raises(ValueError, match="no breaker kept the outage"):
        choose_breaker({"asleep": runs["asleep"]}, baseline)


def test_long_sweeps_report_their_progress() -> None:
    seen: list[tuple[int, int]] = []
    contention_experiment(clients=[3, 4], repetitions=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(d, 20) for d in range(1, 21)]  # 5 strategies x 2 counts x 2 runs


# --- debouncing and progress (a fake timer: no sleeps) ----------------------------------------
class FakeTimers:
    """A timer on a clock moved by hand: what ``asyncio.call_later`` does in a kernel."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waiting: list[list[object]] = []  # [due, action, cancelled]

    def schedule(self, seconds: float, action: object) -> object:
        entry: list[object] = [self.now + seconds, action, False]
        self.waiting.append(entry)

        class Handle:
            def cancel(self) -> None:
                entry[2] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [e for e in self.waiting if e[0] <= self.now and not e[2]]  # type: ignore[operator]
        self.waiting = [e for e in self.waiting if e not in due and not e[2]]
        for entry in due:
            entry[1]()  # type: ignore[operator]


def test_a_debouncer_runs_once_after_the_last_of_a_run_of_calls() -> None:
    from flashkit.lab.widgets import Debouncer

    timers, calls = FakeTimers(), []
    debounced = Debouncer(lambda: calls.append(timers.now), 0.2, schedule=timers.schedule)
    for _ in range(3):  # three changes 0.1 s apart
        debounced()
        timers.advance(0.1)
    assert calls == []
    assert debounced.pending
    timers.advance(0.1)  # 0.2 s after the last one
    assert calls == [pytest.approx(0.4)]
    assert not debounced.pending
    debounced()
    debounced.flush()  # now, not later
    assert len(calls) == 2
    timers.advance(1.0)
    assert len(calls) == 2
    debounced()
    debounced.cancel()
    timers.advance(1.0)
    assert len(calls) == 2
    debounced.flush()  # nothing waiting: nothing to run
    assert len(calls) == 2


def test_a_debouncer_without_an_event_loop_runs_at_once_and_with_one_on_it() -> None:
    import asyncio

    from flashkit.lab.widgets import Debouncer

    calls: list[int] = []
    debounced = Debouncer(lambda: calls.append(1), 0.0)
    debounced()
    assert calls == [1]
    assert not debounced.pending

    async def in_a_kernel() -> None:
        ran = asyncio.Event()
        debounced.action = ran.set
        debounced()
        assert debounced.pending  # left to the loop, as a kernel's comm handler would
        await ran.wait()  # the loop runs it (after 0 s)
        assert not debounced.pending

    asyncio.run(in_a_kernel())


def test_a_panel_reruns_once_for_a_run_of_changes_and_applies_them_before_export(
    close_figures: None, tmp_path: Path
) -> None:
    from flashkit.lab.widgets import BreakerSimulator

    timers = FakeTimers()
    simulator = BreakerSimulator(SHORT, seed=1)
    simulator.debouncer.schedule = timers.schedule
    first = simulator.run
    simulator.controls["failure_threshold"].value = 0.3
    simulator.controls["min_throughput"].value = 30
    assert simulator.run is first  # not yet: the update waits for the last change
    assert "updating" in simulator.status.value
    timers.advance(0.25)
    assert simulator.run is not first
    assert simulator.run.summary["settings"]["min_throughput"] == 30
    assert simulator.status.value == ""
    simulator.controls["half_open_max_calls"].value = 5
    simulator.export(tmp_path / "tuned.toml")  # flushes the waiting change first
    assert "half_open_max_calls = 5" in (tmp_path / "tuned.toml").read_text("utf-8")


def test_a_progress_bar_counts_and_estimates_what_is_left() -> None:
    from flashkit.lab.widgets import ProgressBar

    now = [0.0]
    bar = ProgressBar("runs", enabled=False, every=0.5, clock=lambda: now[0])
    bar(0, 10)
    assert (bar.bar.value, bar.bar.max) == (0, 10)
    now[0] = 2.0
    bar(4, 10)
    assert bar.bar.value == 4
    assert bar.label.value == "4/10, 2.0 s, about 3 s left"
    now[0] = 2.1
    bar(5, 10)  # within 0.5 s of the last redraw: skipped
    assert bar.bar.value == 4
    now[0] = 2.2
    bar(10, 10)  # the end is always drawn
    assert bar.label.value == "10/10 in 2.2 s"
    assert bar.bar.bar_style == "success"


# --- one limiter, one arrival pattern ---------------------------------------------------------
def test_arrival_patterns() -> None:
    from flashkit.lab.ratelimit import arrival_times

    assert arrival_times("burst", 3) == [0.0, 0.0, 0.0]
    assert arrival_times("steady", 3, per_second=4) == [0.0, 0.25, 0.5]
    waves = arrival_times("waves", 25, per_second=2)  # 10 every 5 s
    assert waves[:11] == [0.0] * 10 + [5.0]
    assert waves[-1] == 10.0
    poisson = arrival_times("poisson", 2000, per_second=100, seed=3)
    assert poisson == sorted(poisson)
    assert poisson[-1] == pytest.approx(20.0, rel=0.1)
    assert arrival_times("poisson", 50, seed=3) == arrival_times("poisson", 50, seed=3)
    with pytest.raises(ValueError, match="use one of"):
        arrival_times("tsunami", 3)
    with pytest.raises(ValueError, match="total >= 1"):
        arrival_times("steady", 0)


def test_limiter_run_records_what_the_limiter_admits() -> None:
    from flashkit.lab.ratelimit import limiter_run

    strict = limiter_run(rate=200, period=1.0, total=600, tasks=50)
    assert strict.summary["max_in_window"] == 200
    assert strict.summary["within_limit"]
    assert strict.summary["first_window"] == 200
    assert strict.summary["last_admission"] == pytest.approx(2.0, abs=0.01)
    bucket = limiter_run(rate=200, period=1.0, algorithm="token_bucket", burst=200, total=600)
    assert bucket.summary["max_in_window"] > 350  # a full bucket and a second's refill
    assert not bucket.summary["within_limit"]
    requests = bucket.requests
    assert list(requests.columns) == ["arrived", "admitted", "wait"]
    assert (requests["wait"] >= 0).all()
    assert requests["admitted"].is_monotonic_increasing
    # Under the limit nothing waits; one task makes requests queue for it.
    calm = limiter_run(rate=200, period=1.0, arrivals="steady", per_second=50, total=100)
    assert calm.summary["max_wait"] == pytest.approx(0.0, abs=1e-9)
    paced = limiter_run(
        lambda clock: RateLimiter(10, 1.0, algorithm="gcra", clock=clock),
        arrivals=[0.0] * 20,
        tasks=1,
    )
    assert paced.summary["last_admission"] == pytest.approx(1.9)
    assert paced.summary["max_in_window"] == 10  # evenly spaced: no float overshoot
    with pytest.raises(ValueError, match="at least 1 task"):
        limiter_run(tasks=0)


def test_the_rate_limit_explorer_reruns_and_compares_with_flashkit_process(
    close_figures: None,
) -> None:
    from flashkit.lab.widgets import RateLimitExplorer

    explorer = RateLimitExplorer(total=300, tasks=20)
    assert all(
        explorer.controls[name].continuous_update is False
        for name in ("rate", "burst", "per_second", "total", "tasks")
    )
    assert explorer.run is not None
    assert explorer.built is not None
    assert explorer.run.summary["max_in_window"] == 200
    assert "gcra" in explorer.built.summary["limiter"]  # a window: evenly spaced in process
    explorer.controls["algorithm"].value = "token_bucket"
    explorer.controls["burst"].value = 100
    assert explorer.run.summary["max_in_window"] == 299
    explorer.controls["arrivals"].value = "steady"
    explorer.controls["per_second"].value = 50
    assert explorer.run.summary["max_wait"] == pytest.approx(0.0, abs=1e-9)
    before = explorer.run
    explorer.controls["algorithm"].value = "sliding_window"  # with a burst: refused
    assert "sliding" in explorer.message.value
    assert explorer.run is before
    explorer.controls["burst"].value = 0
    assert explorer.message.value == ""
    assert explorer.values() == {
        "limits.rpm": 12_000.0, "limits.style": "fixed_window", "limits.adaptive": False,
    }  # fmt: skip


def test_in_a_kernel_a_panel_computes_off_the_event_loop_and_draws_only_the_latest() -> None:
    """With a running event loop (as in a kernel) the experiment runs on the panel's worker
    thread: the loop keeps turning while it runs, a superseded run is dropped (or skipped
    before it starts), a bad combination or a failed run is shown as the message, and flush()
    waits for the run in progress."""
    import asyncio
    import threading

    import ipywidgets as w

    from flashkit.errors import ValidationError
    from flashkit.lab.widgets import _Panel

    class Slow(_Panel):
        def __init__(self) -> None:
            self.controls = {"n": w.IntSlider(value=0, min=-5, max=100)}
            self.gate = threading.Event()
            self.ran: list[int] = []
            self.drawn: list[int] = []
            self._layout([["n"]])
            self.debouncer.schedule = lambda seconds, action: action()  # no debounce wait

        def _job(self):  # type: ignore[no-untyped-def]
            n = self.controls["n"].value
            if n < 0:
                raise ValidationError("n must be >= 0", code="invalid_config")

            def job() -> int:
                self.gate.wait()
                if n == 99:
                    raise RuntimeError("the experiment broke")
                self.ran.append(n)
                return n

            return job

        def _draw(self, result: int) -> None:
            self.drawn.append(result)

    async def main(panel: Slow) -> None:
        panel.controls["n"].value = 1  # runs, held at the gate
        panel.controls["n"].value = 2  # waits behind it
        panel.controls["n"].value = 3  # supersedes 2 before it starts
        for _ in range(5):
            await asyncio.sleep(0)  # the loop turns while the run is held
        assert panel.drawn == []
        assert "updating" in panel.status.value
        running = panel._running
        assert running is not None
        panel.gate.set()
        await asyncio.wrap_future(running[1])
        assert panel.ran == [1, 3]  # 2 was skipped: superseded before it started
        assert panel.drawn == [3]  # 1 finished but was superseded: not drawn
        assert panel.status.value == ""
        panel.controls["n"].value = 4
        panel.flush()  # waits for the run and draws it now
        assert panel.drawn == [3, 4]
        for _ in range(5):
            await asyncio.sleep(0)
        assert panel.drawn == [3, 4]  # not drawn twice
        panel.controls["n"].value = -1
        assert "n must be &gt;= 0" in panel.message.value
        panel.controls["n"].value = 99
        panel.flush()
        assert "RuntimeError: the experiment broke" in panel.message.value

    panel = Slow()
    try:
        asyncio.run(main(panel))
    finally:
        panel.gate.set()
        if panel._executor is not None:
            panel._executor.shutdown()
