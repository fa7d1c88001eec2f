"""Rate limiters, measured in virtual time: bursts, algorithms, sharding and token reconciliation.

- :func:`burst_comparison` runs the peer-baselines burst (600 acquisitions by 50 tasks against a
  limit of 200 per second) through each flashkit algorithm and through aiolimiter, on one virtual
  clock, and reports the most units any 1-s window admitted — aiolimiter's first-window overshoot
  made visible.
- :func:`sharding_spread` shows how a :class:`~flashkit.ratelimit.ShardedRateLimiter` spreads one
  key over every shard while the union stays within the limit.
- :func:`token_reconciliation` simulates LLM calls under a tokens-per-minute limit: reserving the
  ``max_tokens`` estimate and giving back the difference once the response reports its usage
  (:meth:`~flashkit.ratelimit.RateLimiter.adjust` with the call's
  :class:`~flashkit.ratelimit.Grant` or reservation) against never giving it back.
- :func:`limiter_run` sends requests arriving in a pattern (:func:`arrival_times`: all at once,
  steady, Poisson, waves) through one limiter with ``tasks`` concurrent callers and records when
  each arrived and was admitted; :func:`plot_limiter_run` draws it (the rate-limit explorer,
  :class:`~flashkit.lab.widgets.RateLimitExplorer`, is a thin layer over the two).

Times are seconds of virtual time; rates are units per ``period`` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import numpy as np
import pandas as pd

from flashkit.clock import VirtualClock, run_virtual
from flashkit.ratelimit import (
    Algorithm,
    Grant,
    Limiter,
    RateLimiter,
    Reservation,
    ShardedRateLimiter,
)

__all__ = [
    "ARRIVALS",
    "LimiterRun",
    "arrival_times",
    "burst_comparison",
    "burst_times",
    "limiter_run",
    "max_in_window",
    "plot_burst",
    "plot_limiter_run",
    "run_burst",
    "sharding_spread",
    "token_reconciliation",
]

ARRIVALS: Final = ("burst", "steady", "poisson", "waves")
"""Arrival patterns of :func:`arrival_times`."""
WAVE_SECONDS: Final = 5.0  # seconds between two waves of the "waves" pattern


def max_in_window(times: Sequence[float], period: float, *, after: float | None = None) -> int:
    """The most admissions in any half-open window ``[t, t + period)`` (``t`` an admission time;
    with ``after``, only windows starting at or after it)."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        if after is not None and t < after:
            continue
        best = max(best, bisect.bisect_left(ordered, t + period) - i)
    return best


async def burst_times(acquire: Callable[[], Awaitable[Any]], tasks: int, total: int) -> list[float]:
    """``tasks`` tasks take ``total`` acquisitions between them; each admission's time since the
    start, in seconds on the running loop's clock (virtual under run_virtual, real otherwise)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await acquire()
            times.append(loop.time() - start)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return times


def run_burst(
    make: Callable[[VirtualClock], Callable[[], Awaitable[Any]]],
    *,
    tasks: int = 50,
    total: int = 600,
) -> list[float]:
    """Admission times (seconds from start) of ``total`` acquisitions by ``tasks`` tasks, in
    virtual time. ``make(clock)`` builds the limiter on that clock and returns its acquire."""
    clock = VirtualClock()

    async def main() -> list[float]:
        return await burst_times(make(clock), tasks, total)

    return run_virtual(main(), clock=clock)


def _flashkit(algorithm: Algorithm, rate: int, period: float, burst: int | None) -> Any:
    def make(clock: VirtualClock) -> Callable[[], Awaitable[Any]]:
        limiter = RateLimiter(rate, period, algorithm=algorithm, burst=burst, clock=clock)
        return limiter.acquire

    return make


def _aiolimiter(rate: int, period: float) -> Any:
    def make(clock: VirtualClock) -> Callable[[], Awaitable[Any]]:
        import aiolimiter  # uses the running loop's time(): virtual here

        limiter = aiolimiter.AsyncLimiter(rate, period)
        return limiter.acquire

    return make


def burst_comparison(
    rate: int = 200, period: float = 1.0, *, tasks: int = 50, total: int = 600
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The burst test for each limiter: (summary, admission times).

    Summary columns: ``limiter``, ``max_in_window`` (most units in any window of ``period``),
    ``max_after_first`` (only windows starting after the first period), ``total_time`` (seconds
    to the last admission). Times: one row per admission (``limiter``, ``t``).
    """
    contenders: dict[str, Any] = {
        "flashkit sliding_window": _flashkit("sliding_window", rate, period, None),
        "flashkit token_bucket (pacer)": _flashkit("token_bucket", rate, period, None),
        "flashkit gcra, burst=rate": _flashkit("gcra", rate, period, rate),
    }
    try:
        import aiolimiter  # noqa: F401
    except ImportError:  # pragma: no cover - the bench extra is not installed
        pass
    else:
        contenders["aiolimiter AsyncLimiter"] = _aiolimiter(rate, period)
    rows: list[dict[str, Any]] = []
    times: list[dict[str, Any]] = []
    for name, make in contenders.items():
        admitted = run_burst(make, tasks=tasks, total=total)
        rows.append(
            {
                "limiter": name,
                "max_in_window": max_in_window(admitted, period),
                "max_after_first": max_in_window(admitted, period, after=period),
                "total_time": max(admitted),
                "limit": rate,
            }
        )
        times.extend({"limiter": name, "t": t} for t in admitted)
    return pd.DataFrame(rows), pd.DataFrame(times)


def plot_burst(times: pd.DataFrame, rate: int, period: float = 1.0) -> Any:
    """Cumulative admissions over time per limiter, with the strict bound ``rate`` per window."""
    import matplotlib.pyplot as plt

    fig, (cumulative, per_window) = plt.subplots(1, 2, figsize=(12, 4))
    for name, rows in times.groupby("limiter", sort=False):
        t = sorted(rows["t"])
        cumulative.step(t, range(1, len(t) + 1), where="post", label=str(name))
        edges = [i * period / 10 for i in range(int(max(t) * 10 / period) + 2)]
        counts = [max_in_window([x for x in t if e <= x < e + period], period) for e in edges]
        per_window.plot(edges, counts, label=str(name))
    per_window.axhline(rate, color="black", linestyle="--", linewidth=1, label=f"limit {rate}")
    cumulative.set_xlabel("time (s)")
    cumulative.set_ylabel("admitted so far")
    cumulative.set_title("Admissions over time")
    per_window.set_xlabel("window start (s)")
    per_window.set_ylabel(f"admitted in [t, t + {period:g} s)")
    per_window.set_title("Units per window: above the line breaks the limit")
    for axis in (cumulative, per_window):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sharding_spread(
    rate: int = 1000, shards: int = 8, *, period: float = 1.0, requests: int = 5000, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One key hammered through a :class:`ShardedRateLimiter` (virtual clock, 4 tries per
    millisecond): per-shard admissions, and the union's worst window against ``rate``."""
    clock = VirtualClock()
    limiter = ShardedRateLimiter(
        rate, period, shards, clock=clock, rng=random.Random(seed), name="demo"
    )
    times: list[float] = []
    for _ in range(requests):
        clock.advance(0.00025)
        if limiter.try_acquire("one-key").allowed:
            times.append(clock.now())
    per_shard = pd.DataFrame(
        {
            "shard": range(shards),
            "rate": limiter.rates,
            "admitted": [s.stats.admitted for s in limiter.shards],
        }
    )
    summary = {
        "rate": rate,
        "shards": shards,
        "admitted": len(times),
        "max_in_window": max_in_window(times, period),
        "shards_used": int((per_shard["admitted"] > 0).sum()),
    }
    return per_shard, summary


def _peak(events: Sequence[tuple[float, int]], period: float) -> int:
    """The most units in any window [t, t + period) of (time, units) events."""
    ordered = sorted(events)
    times = [t for t, _ in ordered]
    best = 0
    for i, (t, _) in enumerate(ordered):
        j = bisect.bisect_left(times, t + period)
        best = max(best, sum(u for _, u in ordered[i:j]))
    return best


def _run_calls(
    tokens_per_minute: int,
    max_tokens: int,
    usage: Sequence[int],
    latency: Sequence[float],
    concurrency: int,
    *,
    policy: str,
) -> tuple[float, list[tuple[float, int]]]:
    """Simulated minutes to finish every call, and (start time, tokens used) per call.
    ``policy``: "keep" (reserve, no refund), "reservation" (reserve, refund on it), "acquire"
    (acquire, refund with the call's own :class:`~flashkit.ratelimit.Grant`: queued calls are
    pulled forward) or "settle" (the same on a token bucket of a minute's worth with
    ``refunds="immediate"``, as Anthropic's limit)."""
    clock = VirtualClock()
    if policy == "settle":  # the provider's own bucket: a minute's worth, refunds at once
        limiter = RateLimiter(
            tokens_per_minute,
            60.0,
            algorithm="token_bucket",
            burst=tokens_per_minute,
            refunds="immediate",
            clock=clock,
            name="tpm",
        )
    else:
        limiter = RateLimiter(tokens_per_minute, 60.0, clock=clock, name="tpm")
    used: list[tuple[float, int]] = []
    queue = list(range(len(usage)))

    async def worker() -> None:
        while queue:
            i = queue.pop(0)
            target: Grant | Reservation
            if policy in ("acquire", "settle"):
                target = await limiter.acquire(count=max_tokens)
            else:
                target = limiter.reserve(count=max_tokens, max_wait=math.inf)
                await target.wait()
            started = clock.now()
            await asyncio.sleep(latency[i])
            used.append((started, usage[i]))  # the upstream counts the tokens at the request
            if policy != "keep":
                # the Grant carries its admitted_at: the refund comes from the call's own grant
                await limiter.adjust(target, usage[i])

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    run_virtual(main(), clock=clock)
    return clock.now() / 60.0, used


def token_reconciliation(
    *,
    tokens_per_minute: int = 90_000,
    max_tokens: int = 4_000,
    calls: int = 300,
    concurrency: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """LLM calls under a tokens-per-minute limit, each charged its ``max_tokens`` estimate up
    front, with and without giving back the unused part when the response reports its usage.

    Four policies: reserve ``max_tokens`` (:meth:`~flashkit.ratelimit.RateLimiter.reserve`) and
    keep it; reserve and give back the unused part (:meth:`~flashkit.ratelimit.RateLimiter.adjust`
    on the reservation) once the response arrives; ``acquire`` and give it back from the call's
    own grant (``await limiter.adjust(grant, used)``), which also wakes the calls queued behind
    it; the same on a bucket like Anthropic's (a minute's worth, ``refunds="immediate"``).
    Returns one row per policy: calls completed,
    simulated minutes, calls per minute, tokens used per minute, and the most tokens actually used
    in any one-minute window (within the limit for the sliding windows; for the bucket, within
    its size plus a minute of refill, what such a provider admits).
    """
    rows = []
    names = {
        "keep": "reserve max_tokens",
        "reservation": "reserve max_tokens, refund the rest",
        "acquire": "acquire max_tokens, refund the rest (queued calls go at once)",
        "settle": "a bucket like Anthropic's, settled at once",
    }
    for policy, name in names.items():
        rng = random.Random(seed)
        usage = [rng.randint(max_tokens // 8, max_tokens // 2) for _ in range(calls)]
        latency = [rng.uniform(1.0, 6.0) for _ in range(calls)]
        minutes, used = _run_calls(
            tokens_per_minute, max_tokens, usage, latency, concurrency, policy=policy
        )
        rows.append(
            {
                "policy": name,
                "calls": calls,
                "minutes": minutes,
                "calls_per_minute": calls / minutes,
                "tokens_used_per_minute": sum(u for _, u in used) / minutes,
                "peak_tokens_in_a_minute": _peak(used, 60.0),
                "limit_tokens_per_minute": tokens_per_minute,
            }
        )
    return pd.DataFrame(rows)


# --- one limiter, one arrival pattern (the explorer) ---------------------------------------------
def arrival_times(
    pattern: str, total: int, *, per_second: float = 100.0, seed: int = 0
) -> list[float]:
    """When ``total`` requests arrive, seconds from the start, in order. ``pattern``: ``burst``
    (all at 0: the burst test), ``steady`` (evenly, ``per_second`` a second), ``poisson``
    (random, ``per_second`` a second on average; ``seed``), ``waves`` (``per_second`` ×
    5 at once every 5 s: the same mean rate, lumpier)."""
    if pattern not in ARRIVALS:
        raise ValueError(f"arrival_times(pattern={pattern!r}): use one of {', '.join(ARRIVALS)}")
    if total < 1 or not per_second > 0:
        raise ValueError(f"arrival_times: need total >= 1 and per_second > 0, got {total}, "
                         f"{per_second}")  # fmt: skip
    if pattern == "burst":
        return [0.0] * total
    if pattern == "steady":
        return [i / per_second for i in range(total)]
    if pattern == "waves":
        size = max(1, round(per_second * WAVE_SECONDS))
        return [(i // size) * WAVE_SECONDS for i in range(total)]
    rng = random.Random(f"{seed}:arrivals")
    times, t = [], 0.0
    for _ in range(total):
        times.append(t)
        t += rng.expovariate(per_second)
    return times


@dataclasses.dataclass(frozen=True)
class LimiterRun:
    """One :func:`limiter_run`. ``requests``: one row per request, ``arrived`` and ``admitted``
    (seconds), ``wait`` (admitted − arrived, s: the limiter's wait plus the wait for a free
    task). ``summary``: ``limiter`` (its repr), ``rate`` and ``period`` (s), ``requests``,
    ``max_in_window`` (most admitted in any ``[t, t + period)``, less 1 ns), ``within_limit``,
    ``first_window`` (admitted in ``[0, period)``), ``last_admission`` (s), ``mean_wait``,
    ``p99_wait``, ``max_wait`` (s)."""

    requests: pd.DataFrame
    summary: dict[str, Any]


def limiter_run(
    make: Callable[[VirtualClock], Limiter] | None = None,
    *,
    rate: float = 200,
    period: float = 1.0,
    algorithm: Algorithm = "sliding_window",
    burst: float | None = None,
    arrivals: str | Sequence[float] = "burst",
    total: int = 600,
    per_second: float = 100.0,
    tasks: int = 50,
    seed: int = 0,
) -> LimiterRun:
    """Requests arriving by ``arrivals`` (a pattern of :func:`arrival_times` with ``total``,
    ``per_second`` and ``seed``, or the times themselves) taken by ``tasks`` concurrent callers,
    each ``await limiter.acquire()`` in arrival order, on a virtual clock. The limiter is
    ``make(clock)``, else ``RateLimiter(rate, period, algorithm=algorithm, burst=burst)``."""
    if tasks < 1:
        raise ValueError(f"limiter_run(tasks={tasks}): need at least 1 task")
    times = (
        arrival_times(arrivals, total, per_second=per_second, seed=seed)
        if isinstance(arrivals, str)
        else sorted(float(t) for t in arrivals)
    )
    clock = VirtualClock()
    limiter: Any = (
        make(clock)
        if make is not None
        else RateLimiter(rate, period, algorithm=algorithm, burst=burst, clock=clock)
    )
    queue = collections.deque(times)
    done: list[tuple[float, float]] = []

    async def caller() -> None:
        while queue:
            arrived = queue.popleft()
            if arrived > clock.now():
                await asyncio.sleep(arrived - clock.now())
            await limiter.acquire()
            done.append((arrived, clock.now()))

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(min(tasks, len(times)))))

    run_virtual(main(), clock=clock)
    done.sort(key=lambda row: row[1])
    requests = pd.DataFrame(done, columns=["arrived", "admitted"])
    requests["wait"] = requests["admitted"] - requests["arrived"]
    rate, period = float(getattr(limiter, "rate", rate)), float(getattr(limiter, "period", period))
    admitted = requests["admitted"].tolist()
    waits = requests["wait"].to_numpy()
    # Windows a nanosecond short: evenly spaced admissions summed in floating point put the
    # (rate + 1)-th a hair before t + period, which is rounding, not an overshoot.
    peak = max_in_window(admitted, period * (1.0 - 1e-9))
    summary = {
        "limiter": repr(limiter),
        "rate": rate,
        "period": period,
        "requests": len(requests),
        "max_in_window": peak,
        "within_limit": peak <= rate,
        "first_window": int((requests["admitted"] < period).sum()),
        "last_admission": float(max(admitted, default=0.0)),
        "mean_wait": float(waits.mean()) if len(waits) else 0.0,
        "p99_wait": float(np.percentile(waits, 99)) if len(waits) else 0.0,
        "max_wait": float(waits.max()) if len(waits) else 0.0,
    }
    return LimiterRun(requests=requests, summary=summary)


def _per_window(times: np.ndarray, period: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Window starts every period/10 s over [0, end], and the admissions in [t, t + period)."""
    starts = np.arange(0.0, end + period / 10, period / 10)
    counts = np.searchsorted(times, starts + period, "left") - np.searchsorted(times, starts)
    return starts, counts


def plot_limiter_run(run: LimiterRun, *, built: LimiterRun | None = None, title: str = "") -> Any:
    """Left: requests arrived and admitted so far against time (s); right: admissions in each
    window ``[t, t + period)`` against the limit. ``built``: the same arrivals through another
    limiter (what ``flashkit process`` builds from the exported settings), dashed. Returns the
    Figure."""
    import matplotlib.pyplot as plt

    fig, (cumulative, windows) = plt.subplots(1, 2, figsize=(12, 4))
    period, rate = run.summary["period"], run.summary["rate"]
    rows = run.requests
    arrived = np.sort(rows["arrived"].to_numpy())
    end = max(float(rows["admitted"].max()) if len(rows) else 0.0, period)
    runs = [("admitted", run, "-")] + ([("flashkit process", built, "--")] if built else [])
    cumulative.step(arrived, np.arange(1, len(arrived) + 1), where="post", color="grey",
                    label="arrived")  # fmt: skip
    for name, one, style in runs:
        admitted = one.requests["admitted"].to_numpy()
        cumulative.step(admitted, np.arange(1, len(admitted) + 1), where="post", linestyle=style,
                        label=name)  # fmt: skip
        starts, counts = _per_window(admitted, one.summary["period"], end)
        windows.step(starts, counts, where="post", linestyle=style,
                     label=f"{name} (peak {int(counts.max(initial=0))})")  # fmt: skip
    windows.axhline(rate, color="black", linestyle=":", linewidth=1, label=f"limit {rate:g}")
    cumulative.set_title("Requests arrived and admitted")
    cumulative.set_xlabel("time (s, virtual)")
    cumulative.set_ylabel("requests so far")
    windows.set_title(f"Admitted per {period:g}-s window: above the line breaks the limit")
    windows.set_xlabel("window start t (s)")
    windows.set_ylabel(f"requests in [t, t + {period:g} s)")
    for axis in (cumulative, windows):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title or run.summary["limiter"], fontsize=10)
    fig.tight_layout()
    return fig
