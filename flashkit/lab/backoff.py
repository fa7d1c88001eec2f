"""Backoff and jitter, measured: delay distributions and Brooker's contention experiment.

Brooker, "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015): ``clients`` clients start
together and each must update one row of an optimistic-concurrency (OCC) store once: read the
version, write with it; a write with a stale version fails and the client backs off, then reads
again. Every message takes ``abs(Normal(10 ms, 2 ms))``. "Calls" counts writes; "time" is when the
last client learns it succeeded. His simulator is a discrete-event queue; here every message is a
timer on flashkit's :class:`~flashkit.clock.VirtualEventLoop`, and every backoff is
:meth:`flashkit.retry.RetryConfig.calculate_delay` itself. As in his code, the first retry is
``attempt = 1`` (so plain exponential waits ``2 * base`` first) and decorrelated jitter keeps each
client's previous delay.

>>> summary = summarize_contention(contention_experiment(clients=[100], repetitions=20))
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flashkit.clock import VirtualClock, run_virtual
from flashkit.retry import Jitter, RetryConfig

__all__ = [
    "BROOKER_BASE",
    "BROOKER_CAP",
    "ContentionResult",
    "brooker_checks",
    "brooker_strategies",
    "choose_jitter",
    "contention_experiment",
    "delay_distribution",
    "plot_contention",
    "plot_delay_distribution",
    "run_contention",
    "summarize_contention",
]

BROOKER_BASE = 0.005  # seconds (5 ms)
BROOKER_CAP = 2.0  # seconds (2,000 ms)


def brooker_strategies(
    base: float = BROOKER_BASE, cap: float = BROOKER_CAP
) -> dict[str, RetryConfig]:
    """Brooker's five strategies as :class:`RetryConfig`\\ s (seconds): None, Exponential, Full,
    Equal and Decorrelated jitter, with his ``base`` (5 ms) and ``cap`` (2 s)."""
    return {
        "None": RetryConfig(initial_delay=0.0, max_delay=0.0, jitter=Jitter.NONE),
        "Exponential": RetryConfig(initial_delay=base, max_delay=cap, jitter=Jitter.NONE),
        "Full": RetryConfig(initial_delay=base, max_delay=cap, jitter=Jitter.FULL),
        "Equal": RetryConfig(initial_delay=base, max_delay=cap, jitter=Jitter.EQUAL),
        "Decorrelated": RetryConfig(initial_delay=base, max_delay=cap, jitter=Jitter.DECORRELATED),
    }


def delay_distribution(config: RetryConfig, *, samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Sample ``samples`` retry sequences of ``config`` (a call that always fails).

    Returns one row per wait: ``sample``, ``retry`` (1 = the wait before the first retry),
    ``delay`` (seconds) and ``cumulative`` (seconds waited so far in that sequence).
    """
    if samples < 1:
        raise ValueError(f"delay_distribution(samples={samples}): need at least 1 sample")
    rng = random.Random(seed)
    rows: list[tuple[int, int, float, float]] = []
    for sample in range(samples):
        total = 0.0
        for retry, delay in enumerate(config.delays(rng=rng), start=1):
            total += delay
            rows.append((sample, retry, delay, total))
    return pd.DataFrame(rows, columns=["sample", "retry", "delay", "cumulative"])


@dataclass(frozen=True, slots=True)
class ContentionResult:
    """One run: ``calls`` (writes sent) and ``time`` (seconds until the last client succeeded)."""

    calls: int
    time: float


async def _contention(
    config: RetryConfig, clients: int, rng: random.Random, net_mean: float, net_sd: float
) -> ContentionResult:
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = loop.create_future()
    version = 0
    calls = 0
    remaining = clients
    last = start

    def net() -> float:
        return abs(rng.normalvariate(net_mean, net_sd))

    class Client:
        __slots__ = ("attempt", "previous")

        def __init__(self) -> None:
            self.attempt = 0
            self.previous: float | None = None

        def read(self) -> None:  # the read arrives at the server
            seen = version
            # reply travels back, the client writes at once, the write travels to the server
            loop.call_later(net() + net(), self.write, seen)

        def write(self, seen: int) -> None:  # the write arrives at the server
            nonlocal version, calls, remaining, last
            calls += 1
            reply = net()
            if seen == version:
                version += 1
                remaining -= 1
                last = max(last, loop.time() + reply)
                if remaining == 0:
                    loop.call_later(reply, done.set_result, None)
                return
            self.attempt += 1
            delay = config.calculate_delay(self.attempt, previous=self.previous, rng=rng)
            self.previous = delay
            loop.call_later(reply + delay + net(), self.read)

    for _ in range(clients):
        loop.call_later(net(), Client().read)
    await done
    return ContentionResult(calls=calls, time=last - start)


def run_contention(
    config: RetryConfig,
    clients: int = 100,
    *,
    seed: int = 0,
    net_mean: float = 0.010,
    net_sd: float = 0.002,
) -> ContentionResult:
    """Run Brooker's OCC contention model once in virtual time (seconds)."""
    if clients < 1:
        raise ValueError(f"run_contention(clients={clients}): need at least 1 client")
    rng = random.Random(seed)
    return run_virtual(_contention(config, clients, rng, net_mean, net_sd), clock=VirtualClock())


def contention_experiment(
    strategies: Mapping[str, RetryConfig] | None = None,
    *,
    clients: Iterable[int] = (10, 50, 100),
    repetitions: int = 100,
    seed: int = 0,
    net_mean: float = 0.010,
    net_sd: float = 0.002,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run every strategy at every client count ``repetitions`` times, in one virtual loop.

    Returns one row per run: ``strategy``, ``clients``, ``repetition``, ``calls``, ``time_ms``.
    Deterministic for a given ``seed``. ``progress(done, total)`` is told of every run (e.g. a
    :class:`~flashkit.lab.widgets.ProgressBar`).
    """
    if repetitions < 1:
        raise ValueError(f"contention_experiment(repetitions={repetitions}): need >= 1")
    strategies = dict(strategies) if strategies is not None else brooker_strategies()
    counts = list(clients)
    total = len(strategies) * len(counts) * repetitions

    async def main() -> list[tuple[str, int, int, int, float]]:
        rows: list[tuple[str, int, int, int, float]] = []
        for s_index, (name, config) in enumerate(strategies.items()):
            for n in counts:
                for rep in range(repetitions):
                    rng = random.Random(f"{seed}:{s_index}:{n}:{rep}")
                    result = await _contention(config, n, rng, net_mean, net_sd)
                    rows.append((name, n, rep, result.calls, result.time * 1000.0))
                    if progress is not None:
                        progress(len(rows), total)
        return rows

    rows = run_virtual(main(), clock=VirtualClock())
    return pd.DataFrame(rows, columns=["strategy", "clients", "repetition", "calls", "time_ms"])


def summarize_contention(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of calls and time per (strategy, clients)."""
    grouped = runs.groupby(["strategy", "clients"], sort=False)
    summary = grouped.agg(
        calls=("calls", "mean"),
        calls_sd=("calls", "std"),
        time_ms=("time_ms", "mean"),
        time_ms_sd=("time_ms", "std"),
        runs=("calls", "size"),
    )
    return summary.reset_index()


def brooker_checks(summary: pd.DataFrame, clients: int = 100) -> dict[str, Any]:
    """Brooker's published shape at ``clients``, as named pass/fail checks with their figures.

    - full-jitter calls < 0.5 x plain exponential's ("reduced our call count by more than half");
    - full ≈ equal calls (within 10 %);
    - decorrelated calls > full's;
    - plain exponential the slowest, by more than 5x every other strategy's time.
    """
    at = summary[summary["clients"] == clients].set_index("strategy")
    missing = {"Exponential", "Full", "Equal", "Decorrelated"} - set(at.index)
    if missing:
        raise ValueError(
            f"brooker_checks: no rows for {sorted(missing)} at clients={clients}; "
            "run contention_experiment with brooker_strategies() and that client count"
        )
    calls, time = at["calls"], at["time_ms"]
    others = time.drop("Exponential")
    full_vs_expo = float(calls["Full"] / calls["Exponential"])
    full_vs_equal = float(abs(calls["Full"] - calls["Equal"]) / calls["Equal"])
    expo_slowdown = float(time["Exponential"] / others.max())
    return {
        "full_calls_below_half_of_exponential": full_vs_expo < 0.5,
        "full_vs_exponential_calls": full_vs_expo,
        "full_close_to_equal_calls": full_vs_equal <= 0.10,
        "full_vs_equal_calls_difference": full_vs_equal,
        "decorrelated_more_calls_than_full": bool(calls["Decorrelated"] > calls["Full"]),
        "exponential_slowest_by_5x": expo_slowdown > 5.0,
        "exponential_slowdown": expo_slowdown,
    }


def choose_jitter(summary: pd.DataFrame, clients: int = 100, *, tolerance: float = 0.10) -> Jitter:
    """The jitter to retry with, from :func:`summarize_contention` at ``clients``: of the
    jittered strategies (Full, Equal, Decorrelated) within ``tolerance`` (10 %) of the fewest
    calls, the fastest (lowest mean completion time). Brooker's answer: full jitter."""
    at = summary[summary["clients"] == clients].set_index("strategy")
    jittered = at.loc[at.index.intersection(["Full", "Equal", "Decorrelated"])]
    if jittered.empty:
        raise ValueError(f"choose_jitter: no jittered strategy measured at clients={clients}")
    near = jittered[jittered["calls"] <= jittered["calls"].min() * (1.0 + tolerance)]
    return Jitter(str(near["time_ms"].idxmin()).lower())


def plot_delay_distribution(data: pd.DataFrame, ax: Any = None, *, title: str = "") -> Any:
    """Box plot of delay (seconds) per retry number; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    retries = sorted(data["retry"].unique())
    groups: Sequence[Any] = [data.loc[data["retry"] == r, "delay"].to_numpy() for r in retries]
    if groups:
        ax.boxplot(groups, tick_labels=[str(r) for r in retries], showfliers=False)
    ax.set_xlabel("retry number (1 = the first retry)")
    ax.set_ylabel("delay before it (s)")
    ax.set_title(title or "Backoff delay distribution")
    ax.grid(alpha=0.3)
    return fig


def plot_contention(summary: pd.DataFrame) -> Any:
    """Calls and completion time against clients, one line per strategy (Brooker's figures)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in summary.groupby("strategy", sort=False):
        left.plot(rows["clients"], rows["calls"], marker="o", label=str(name))
        right.plot(rows["clients"], rows["time_ms"], marker="o", label=str(name))
    left.set_title("Work: writes sent (mean per run)")
    left.set_xlabel("contending clients")
    left.set_ylabel("calls (writes per run)")
    right.set_title("Completion time of the last client")
    right.set_xlabel("contending clients")
    right.set_ylabel("time (ms, virtual; log scale)")
    right.set_yscale("log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    return fig
