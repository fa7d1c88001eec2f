"""A circuit breaker driven through a scripted outage and brownout, in virtual time.

Calls arrive as a Poisson stream (``rate`` per second) and go through the real
:class:`~flashkit.breaker.CircuitBreaker` to a dependency whose health follows a :class:`Scenario`:
healthy, then a hard outage (every call fails), then a brownout (some calls fail and all are
slower). :func:`simulate_breaker` returns a per-second timeline (state, calls reaching the
dependency, rejected calls, success rate) and the transitions. Ten minutes take well under a second.

>>> run = simulate_breaker(Scenario(), BreakerSettings(failure_threshold=0.5))
>>> run.summary["trips"]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from flashkit.breaker import BreakDurationContext, CircuitBreaker, CircuitState, StateChange
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import CircuitOpenError, ExternalServiceError

__all__ = [
    "BreakerRun",
    "BreakerSettings",
    "Scenario",
    "Window",
    "choose_breaker",
    "exponential_break",
    "plot_breaker_timeline",
    "simulate_breaker",
]

STATE_LEVEL = {
    CircuitState.CLOSED: 0,
    CircuitState.HALF_OPEN: 1,
    CircuitState.OPEN: 2,
    CircuitState.ISOLATED: 3,
}


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of the scenario, ``start``..``end`` seconds, where calls fail with probability
    ``failure_rate`` and take ``latency_factor`` times longer."""

    start: float
    end: float
    failure_rate: float
    latency_factor: float = 1.0


@dataclass(frozen=True)
class Scenario:
    """The dependency's script (seconds). Defaults: 10 minutes at 20 calls/s, 100 ms median
    latency, 1 % background failures, a 60-s outage from t=120 s and a 2-min brownout (40 %
    failures, 4x latency) from t=300 s."""

    duration: float = 600.0
    rate: float = 20.0
    latency: float = 0.100
    failure_rate: float = 0.01
    windows: tuple[Window, ...] = (
        Window(120.0, 180.0, 1.0, 1.0),
        Window(300.0, 420.0, 0.4, 4.0),
    )

    def health_at(self, t: float) -> tuple[float, float]:
        """(failure probability, latency factor) at time ``t``."""
        for window in self.windows:
            if window.start <= t < window.end:
                return window.failure_rate, window.latency_factor
        return self.failure_rate, 1.0


def exponential_break(
    base: float = 5.0, factor: float = 2.0, cap: float = 120.0
) -> Callable[[BreakDurationContext], float]:
    """A break-duration generator: ``base * factor**(consecutive_opens - 1)``, capped (seconds)."""

    def generator(ctx: BreakDurationContext) -> float:
        return float(min(cap, base * factor ** (ctx.consecutive_opens - 1)))

    return generator


@dataclass(frozen=True)
class BreakerSettings:
    """The breaker's knobs as the simulator's sliders set them (see :class:`CircuitBreaker`).

    ``growth`` > 1 uses :func:`exponential_break` (``break_duration`` x growth per consecutive
    open, capped at ``max_break``) instead of a fixed break.
    """

    failure_threshold: float = 0.5
    min_throughput: int = 10
    sampling_duration: float = 10.0
    break_duration: float = 5.0
    growth: float = 1.0
    max_break: float = 120.0
    half_open_max_calls: int = 1
    slow_call_duration: float | None = None
    slow_call_threshold: float = 1.0

    def build(self, clock: VirtualClock, listener: Callable[[StateChange], None]) -> CircuitBreaker:
        generator = (
            exponential_break(self.break_duration, self.growth, self.max_break)
            if self.growth > 1.0
            else None
        )
        return CircuitBreaker(
            failure_threshold=self.failure_threshold,
            min_throughput=self.min_throughput,
            sampling_duration=self.sampling_duration,
            break_duration=None if generator is not None else self.break_duration,
            break_duration_generator=generator,
            half_open_max_calls=self.half_open_max_calls,
            slow_call_duration=self.slow_call_duration,
            slow_call_threshold=self.slow_call_threshold,
            name="simulated",
            listeners=[listener],
            clock=clock,
        )


@dataclass
class BreakerRun:
    """What :func:`simulate_breaker` returns.

    ``timeline``: one row per ``bucket`` seconds with ``t``, ``state`` (at the end of the bucket),
    ``state_level`` (0 closed, 1 half-open, 2 open, 3 isolated), ``arrived``, ``reached`` (calls
    the dependency saw), ``rejected``, ``succeeded``, ``failed``, ``success_rate`` (succeeded /
    arrived). ``transitions``: one row per state change. ``summary``: totals.
    """

    timeline: pd.DataFrame
    transitions: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def simulate_breaker(
    scenario: Scenario | None = None,
    settings: BreakerSettings | None = None,
    *,
    use_breaker: bool = True,
    seed: int = 0,
    bucket: float = 1.0,
) -> BreakerRun:
    """Drive a real :class:`CircuitBreaker` (or none, with ``use_breaker=False``) through the
    scenario in virtual time and return the :class:`BreakerRun`."""
    scenario = scenario if scenario is not None else Scenario()
    settings = settings if settings is not None else BreakerSettings()
    _check(scenario, bucket)
    clock = VirtualClock()
    rng = random.Random(seed)
    nbuckets = math.ceil(scenario.duration / bucket)
    counts = {
        name: [0] * nbuckets for name in ("arrived", "reached", "rejected", "succeeded", "failed")
    }
    states: list[str] = [CircuitState.CLOSED.value] * nbuckets
    transitions: list[dict[str, Any]] = []

    def on_change(change: StateChange) -> None:
        transitions.append(
            {"t": change.at, "old": change.old.value, "new": change.new.value, "why": change.reason}
        )

    breaker = settings.build(clock, on_change) if use_breaker else None
    sigma = 0.5  # lognormal spread of latency around its median

    async def dependency(fail_p: float, latency: float) -> str:
        await asyncio.sleep(latency)
        if rng.random() < fail_p:
            raise ExternalServiceError("simulated dependency failure")
        return "ok"

    async def one_call(index: int) -> None:
        t = clock.now()
        fail_p, factor = scenario.health_at(t)
        latency = scenario.latency * factor * math.exp(rng.gauss(0.0, sigma))
        counts["arrived"][index] += 1
        try:
            if breaker is None:
                counts["reached"][index] += 1
                await dependency(fail_p, latency)
            else:
                await breaker.call(_count_then_call, index, fail_p, latency)
        except CircuitOpenError:
            counts["rejected"][index] += 1
        except ExternalServiceError:
            counts["failed"][index] += 1
        else:
            counts["succeeded"][index] += 1

    async def _count_then_call(index: int, fail_p: float, latency: float) -> str:
        counts["reached"][index] += 1
        return await dependency(fail_p, latency)

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        t = rng.expovariate(scenario.rate)
        next_mark = bucket
        mark = 0
        while t < scenario.duration:
            await asyncio.sleep(t - clock.now())
            while clock.now() >= next_mark and mark < nbuckets:
                states[mark] = breaker.state.value if breaker is not None else "closed"
                mark += 1
                next_mark += bucket
            index = min(int(t / bucket), nbuckets - 1)
            task = asyncio.create_task(one_call(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            t += rng.expovariate(scenario.rate)
        if tasks:
            await asyncio.gather(*tasks)
        while mark < nbuckets:
            states[mark] = breaker.state.value if breaker is not None else "closed"
            mark += 1

    run_virtual(main(), clock=clock)
    timeline = pd.DataFrame({"t": [i * bucket for i in range(nbuckets)], "state": states, **counts})
    timeline["state_level"] = timeline["state"].map({s.value: v for s, v in STATE_LEVEL.items()})
    arrived = timeline["arrived"].where(timeline["arrived"] > 0)
    timeline["success_rate"] = (timeline["succeeded"] / arrived).fillna(1.0)
    transitions_df = pd.DataFrame(transitions, columns=["t", "old", "new", "why"])
    summary = _summary(timeline, transitions_df, scenario)
    summary["settings"] = asdict(settings) if use_breaker else None
    return BreakerRun(timeline=timeline, transitions=transitions_df, summary=summary)


def _check(scenario: Scenario, bucket: float) -> None:
    if scenario.rate <= 0 or scenario.duration <= 0:
        raise ValueError(
            f"Scenario needs rate > 0 and duration > 0, got rate={scenario.rate}, "
            f"duration={scenario.duration}"
        )
    if bucket <= 0:
        raise ValueError(f"simulate_breaker(bucket={bucket}): bucket must be seconds > 0")


def _moves(transitions: pd.DataFrame, old: str, new: str) -> int:
    """How many transitions went from ``old`` to ``new``."""
    if not len(transitions):
        return 0
    return int(((transitions["old"] == old) & (transitions["new"] == new)).sum())


def _summary(
    timeline: pd.DataFrame, transitions: pd.DataFrame, scenario: Scenario
) -> dict[str, Any]:
    """The run's totals (all but ``settings``)."""
    total = int(timeline["arrived"].sum())
    outage = [w for w in scenario.windows if w.failure_rate >= 1.0]
    in_outage = (
        timeline["t"].apply(lambda t: any(w.start <= t < w.end for w in outage))
        if outage
        else pd.Series(False, index=timeline.index)
    )
    return {
        "calls": total,
        "reached_dependency": int(timeline["reached"].sum()),
        "rejected": int(timeline["rejected"].sum()),
        "succeeded": int(timeline["succeeded"].sum()),
        "failed": int(timeline["failed"].sum()),
        "success_rate": float(timeline["succeeded"].sum() / total) if total else 1.0,
        "trips": _moves(transitions, "closed", "open"),
        "reopens": _moves(transitions, "half_open", "open"),
        "reached_during_outage": int(timeline.loc[in_outage, "reached"].sum()),
    }


def choose_breaker(
    runs: Mapping[str, BreakerRun], baseline: BreakerRun, *, max_outage_share: float = 0.5
) -> str:
    """The name of the breaker to set among ``runs`` (each against ``baseline``, the same
    traffic without a breaker): of those letting through at most ``max_outage_share`` (half) of
    the calls the outage got without a breaker, the highest success rate (it shed the fewest
    calls the dependency could serve), then the fewest trips."""
    reference = max(baseline.summary["reached_during_outage"], 1)
    shedding = {
        name: run.summary
        for name, run in runs.items()
        if run.summary["reached_during_outage"] <= max_outage_share * reference
    }
    if not shedding:
        raise ValueError(
            f"choose_breaker: no breaker kept the outage's calls to {max_outage_share:.0%} of "
            "no breaker's; try a lower threshold or a shorter window"
        )
    return min(shedding, key=lambda name: (-shedding[name]["success_rate"],
                                           shedding[name]["trips"]))  # fmt: skip


def plot_breaker_timeline(
    run: BreakerRun,
    scenario: Scenario | None = None,
    *,
    title: str = "",
    baseline: BreakerRun | None = None,
) -> Any:
    """Three stacked panels over time: breaker state, calls per second (reaching the dependency
    vs rejected), and success rate. Outage/brownout windows are shaded. Returns the Figure."""
    import matplotlib.pyplot as plt

    data = run.timeline
    fig, (state_ax, calls_ax, rate_ax) = plt.subplots(
        3, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 2, 1.5]}
    )

    def plot_baseline(axis: Any, column: str, label: str) -> None:
        """``baseline``'s ``column``, faint grey behind this run's (nothing without one)."""
        if baseline is not None:
            timeline = baseline.timeline
            axis.plot(
                timeline["t"], timeline[column], label=label, color="grey", alpha=0.5, linewidth=0.8
            )

    # The state as a step function of the exact transition times (a sampled state would hide
    # half-open periods shorter than a bucket).
    levels = {s.value: v for s, v in STATE_LEVEL.items()}
    times = [0.0, *run.transitions["t"].tolist(), float(data["t"].iloc[-1]) + 1.0]
    steps = [0, *[levels[s] for s in run.transitions["new"]]]
    steps.append(steps[-1])
    state_ax.step(times, steps, where="post", color="tab:red")
    state_ax.set_yticks([0, 1, 2, 3], ["closed", "half-open", "open", "isolated"])
    state_ax.set_ylim(-0.3, 2.3 if max(steps) < 3 else 3.3)
    fig.suptitle(title or "Circuit breaker timeline")
    state_ax.set_title("Breaker state", fontsize=10)
    state_ax.set_ylabel("state")
    calls_ax.plot(data["t"], data["reached"], label="reached dependency", color="tab:blue")
    calls_ax.plot(data["t"], data["rejected"], label="rejected by breaker", color="tab:orange")
    plot_baseline(calls_ax, "reached", "reached, no breaker")
    calls_ax.set_title("Calls per second", fontsize=10)
    calls_ax.set_ylabel("calls / s")
    calls_ax.legend(loc="upper right")
    rate_ax.plot(data["t"], data["success_rate"], color="tab:green", label="with breaker")
    plot_baseline(rate_ax, "success_rate", "no breaker")
    rate_ax.set_title("Success rate per second", fontsize=10)
    rate_ax.set_ylabel("success rate (share of calls)")
    rate_ax.set_ylim(-0.05, 1.05)
    rate_ax.set_xlabel("time (s)")
    rate_ax.legend(loc="lower right")
    windows: Sequence[Window] = scenario.windows if scenario is not None else ()
    for axis in (state_ax, calls_ax, rate_ax):
        axis.grid(alpha=0.3)
        for window in windows:
            color = "red" if window.failure_rate >= 1.0 else "gold"
            axis.axvspan(window.start, window.end, color=color, alpha=0.12)
    fig.tight_layout()
    return fig
