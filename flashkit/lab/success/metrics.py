"""The success metrics of one run and the targets they are judged against: time to card (a
failed word never gets there), requests sent inside a received ``retry-after``, the fault-aware
ideal completion time (:func:`ideal_seconds`), and the verdicts on the three before/after
targets plus the two absolute data-layer ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import pandas as pd

from flashkit.lab.success._record import PolicyRun
from flashkit.lab.success.workload import Workload
from flashkit.sim import FaultProfile

__all__ = [
    "at_least",
    "ideal_seconds",
    "metrics_row",
    "sent_in_retry_after",
    "target_verdicts",
    "TargetVerdict",
    "TargetVerdicts",
    "time_to_card",
    "tokens_per_request",
]

_Z99: Final = 2.3263478740408408  # the standard normal's 99th percentile


def sent_in_retry_after(exchanges: pd.DataFrame) -> int:
    """Requests sent while a ``retry-after`` the same client had already received was running:
    ``answered < sent < answered + retry_after`` for some earlier 429 (columns ``sent``,
    ``answered``, ``retry_after``)."""
    if exchanges.empty:
        return 0
    windows = exchanges.dropna(subset=["retry_after"])
    if windows.empty:
        return 0
    spans = sorted(
        zip(windows["answered"], windows["answered"] + windows["retry_after"], strict=True)
    )
    count = 0
    eps = 1e-9
    for sent in exchanges["sent"]:
        for start, end in spans:
            if start > sent:
                break
            if start + eps < sent < end - eps:
                count += 1
                break
    return count


# --- the ideal --------------------------------------------------------------------------------
def _allowance(per_minute: float | None, t: float, profile: FaultProfile) -> float:
    """Units a per-minute limit has admitted by ``t`` at most (inf: no limit)."""
    if per_minute is None:
        return math.inf
    if profile.limit_mode == "fixed_window":
        return per_minute * (math.floor(t / 60.0) + 1)
    return max(1.0, per_minute * profile.bucket_fraction) + per_minute / 60.0 * t


def ideal_seconds(
    profile: FaultProfile, workload: Workload, *, tokens_per_request: float = 0.0
) -> float:
    """The expected fastest completion of ``workload`` against ``profile``: a fluid model of a
    client that never waits needlessly and keeps every one of its ``concurrency`` slots busy.

    Each call needs attempts until one succeeds (the profile's fault rates, a brownout's error
    rate, none during an outage); an attempt holds a slot for the *mean* latency (lognormal: the
    median times ``exp(sigma**2 / 2)``, slowed by the load and by a brownout; 529s take
    ``reject_latency``); attempts are admitted no faster than the request limit (and, with
    ``tokens_per_request``, the token limit) allows; words are released as the workload says;
    no slot idles while a released word waits; the last answer comes one mean call after it was
    sent. No faults and no limits: ``2 × words × mean latency / concurrency`` plus one call.
    """
    median = profile.latency_median
    sigma = math.log(profile.latency_p99 / median) / _Z99 if median > 0 else 0.0
    mean = median * math.exp(sigma * sigma / 2.0)
    needed = 2.0 * workload.words
    slow_fail = profile.error_rate + profile.malformed_rate + profile.truncated_rate
    slow_fail += profile.bad_content_rate
    spacing = workload.arrival / workload.words
    step = max(0.01, min(0.5, mean / 20.0))
    t = attempts = successes = 0.0
    while successes < needed - 1e-9:
        released = workload.words if spacing == 0 else min(workload.words, t // spacing + 1)
        # Slots in use: all of them while words wait (no slot ever idles), else the words
        # released and not done (whole words: the last one still holds a slot).
        waiting = math.ceil(released - successes / 2.0 - 1e-9)
        flight = workload.concurrency if released == workload.words else waiting
        flight = min(workload.concurrency, flight)
        t += step
        if flight <= 0 or _in_windows(profile.outages, t):
            continue
        latency = mean * (1.0 + profile.load_slowdown * max(flight - 1.0, 0.0))
        fail = slow_fail
        if _in_windows(profile.brownouts, t):
            latency *= profile.brownout_latency_factor
            fail = (
                slow_fail
                - profile.error_rate
                + max(profile.error_rate, profile.brownout_error_rate)
            )
        duration = profile.overload_rate * profile.reject_latency
        duration += (1.0 - profile.overload_rate) * latency
        wanted = flight * step / duration if duration > 0 else math.inf
        room = _allowance(profile.rpm, t, profile) - attempts
        if tokens_per_request > 0:
            tokens = _allowance(profile.tpm, t, profile) - attempts * tokens_per_request
            room = min(room, tokens / tokens_per_request)
        ok = max(0.0, 1.0 - fail - profile.overload_rate)
        made = max(0.0, min(wanted, room, (needed - successes) / max(1e-9, ok)))
        attempts += made
        successes += made * ok
    return t + mean  # the last answer arrives one call after it was sent


def _in_windows(windows: Sequence[tuple[float, float]], t: float) -> bool:
    return any(start <= t < end for start, end in windows)


def tokens_per_request(run: PolicyRun, profile: FaultProfile, workload: Workload) -> float:
    """Tokens one call costs the upstream's limit, from the run's own counters."""
    stats = run.stats
    answered = stats["ok"]
    if not answered:
        return 0.0
    if profile.limit_mode == "fixed_window":  # windows count max_tokens, never refunded
        return float(stats["prompt_tokens"] / answered + workload.max_tokens)
    return float((stats["prompt_tokens"] + stats["completion_tokens"]) / answered)


# --- one run's metrics ------------------------------------------------------------------------
def _percentile(values: pd.Series, q: float) -> float:
    return float(values.quantile(q)) if len(values) else math.nan


def time_to_card(words: pd.DataFrame) -> pd.Series:
    """Each word's seconds from its release to its cards; a failed word never got them (inf)."""
    return (words["end"] - words["release"]).where(words["ok"], math.inf)


def _quantile_with_inf(values: pd.Series, q: float) -> float:
    """The ``q`` quantile (lower interpolation-free: the value at rank ceil(q·n)), which is inf
    when more than ``1 - q`` of the values are."""
    if not len(values):
        return math.nan
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])


def metrics_row(run: PolicyRun, ideal: float) -> dict[str, Any]:
    """One policy's row of the metrics table (the columns
    :func:`~flashkit.lab.success.run_success_metrics` describes), its completion against
    ``ideal`` seconds."""
    words = run.words
    ok = words[words["ok"]]
    succeeded = len(ok)
    stats = run.stats
    errors = words.loc[~words["ok"], "error"].value_counts()
    return {
        "policy": run.policy,
        "words": len(words),
        "succeeded": succeeded,
        "failed": len(words) - succeeded,
        "error_rate": (len(words) - succeeded) / len(words),
        "p50_time_to_card": _quantile_with_inf(time_to_card(words), 0.50),
        "p99_time_to_card": _quantile_with_inf(time_to_card(words), 0.99),
        "p99_call": _percentile(run.exchanges["answered"] - run.exchanges["sent"], 0.99),
        "p99_latency_ok": _percentile(ok["latency"], 0.99),
        "breaker_trips": run.breaker_trips,
        "upstream_requests": stats["requests"],
        "amplification": stats["requests"] / succeeded if succeeded else math.inf,
        "rate_limited_429": stats["rate_limited_total"],
        "sent_in_retry_after": sent_in_retry_after(run.exchanges),
        "completion_seconds": run.completion,
        "ideal_seconds": ideal,
        "completion_vs_ideal": run.completion / ideal if ideal > 0 else math.nan,
        "top_errors": "; ".join(f"{name} x{n}" for name, n in errors.head(3).items()),
    }


# --- verdicts ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TargetVerdict:
    """One target: ``metric`` must fall by ``reduction`` (0.5 = −50 %) from ``before`` to
    ``after``. ``change`` is (after − before) / before (None without a baseline); ``met`` is None
    when it cannot be judged (zero or missing baseline), and ``verdict`` says so in words."""

    metric: str
    target: str
    reduction: float
    before: float
    after: float
    change: float | None
    met: bool | None
    verdict: str


@dataclass(frozen=True, slots=True)
class TargetVerdicts:
    """The targets: three after vs before, and the two data-layer ones (after against an
    absolute target; None when not measured)."""

    error_rate: TargetVerdict
    p99_latency: TargetVerdict
    breaker_trips: TargetVerdict
    cache_hit_rate: TargetVerdict | None = None
    pool_efficiency: TargetVerdict | None = None

    def items(self) -> tuple[TargetVerdict, ...]:
        every = (self.error_rate, self.p99_latency, self.breaker_trips, self.cache_hit_rate,
                 self.pool_efficiency)  # fmt: skip
        return tuple(v for v in every if v is not None)

    @property
    def all_met(self) -> bool:
        """Every target that could be judged was met (and at least one could)."""
        judged = [v.met for v in self.items() if v.met is not None]
        return bool(judged) and all(judged)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {v.metric: asdict(v) for v in self.items()}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(v) for v in self.items()]).set_index("metric")


def at_least(metric: str, target: float, value: float | None, note: str = "") -> TargetVerdict:
    """An absolute target (``value >= target``; the original pipeline had nothing to compare:
    its cache never imported and it kept no database)."""
    shown = f">= {target:.0%}"
    if value is None or math.isnan(value):
        return TargetVerdict(metric, shown, 0.0, math.nan, math.nan, None, None, "n/a (no data)")
    met = value >= target
    text = f"{'met' if met else 'not met'} ({value:.1%}{note})"
    return TargetVerdict(metric, shown, 0.0, math.nan, value, None, met, text)


def _verdict(
    metric: str, reduction: float, before: float, after: float, note: str = ""
) -> TargetVerdict:
    target = f"-{reduction:.0%}"
    if math.isnan(before) or math.isnan(after):
        return TargetVerdict(metric, target, reduction, before, after, None, None, "n/a (no data)")
    if math.isinf(before):
        if math.isinf(after):
            text = "n/a (both leave over 1 % of the words without cards)"
            return TargetVerdict(metric, target, reduction, before, after, None, None, text)
        text = f"met (before leaves over 1 % of the words without cards{note})"
        return TargetVerdict(metric, target, reduction, before, after, -1.0, True, text)
    if before == 0:
        return TargetVerdict(metric, target, reduction, before, after, None, None, "n/a (0 before)")
    change = (after - before) / before
    met = change <= -reduction + 1e-12
    text = f"{'met' if met else 'not met'} ({change:+.0%}{note})"
    return TargetVerdict(metric, target, reduction, before, after, change, met, text)


def target_verdicts(metrics: pd.DataFrame) -> TargetVerdicts:
    """The targets (−50 % error rate, −30 % p99 latency, −80 % breaker trips) judged on the
    ``before`` and ``after`` rows of ``metrics`` (indexed by policy). The p99 target is judged
    on ``p99_time_to_card``: every word's time to its cards, a failed word counted as never
    done, so a policy cannot look fast by failing its slow words."""
    before = {str(k): v for k, v in metrics.loc["before"].to_dict().items()}
    after = {str(k): v for k, v in metrics.loc["after"].to_dict().items()}
    return TargetVerdicts(
        error_rate=_verdict(
            "error_rate", 0.5, float(before["error_rate"]), float(after["error_rate"])
        ),
        p99_latency=_verdict(
            "p99_time_to_card",
            0.3,
            float(before["p99_time_to_card"]),
            float(after["p99_time_to_card"]),
        ),
        breaker_trips=_verdict(
            "breaker_trips", 0.8, float(before["breaker_trips"]), float(after["breaker_trips"])
        ),
    )
