"""The whole measurement: the same workload under each policy, one metrics row per policy, the
verdicts on the targets, and the data layer's cache hit rate and pool efficiency
(:func:`run_success_metrics`, returning a :class:`SuccessReport`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import pandas as pd

from flashkit.lab.datalayer import CACHE_TARGET, POOL_TARGET, DataLayerReport, run_data_layer
from flashkit.lab.success._record import PolicyRun
from flashkit.lab.success.metrics import (
    TargetVerdicts,
    at_least,
    ideal_seconds,
    metrics_row,
    target_verdicts,
    tokens_per_request,
)
from flashkit.lab.success.policies import POLICIES, AfterLimiter, Policy, run_policy
from flashkit.lab.success.workload import Workload
from flashkit.sim import FaultProfile

__all__ = ["COMPARED", "compare_policies", "run_success_metrics", "SuccessReport"]

COMPARED: tuple[str, ...] = (
    "failed",
    "error_rate",
    "p50_time_to_card",
    "p99_time_to_card",
    "p99_call",
    "breaker_trips",
    "upstream_requests",
    "amplification",
    "rate_limited_429",
    "sent_in_retry_after",
    "completion_seconds",
)
"""The metrics :func:`compare_policies` puts side by side (times in virtual seconds)."""


def compare_policies(metrics: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """``first`` against ``second`` on the :data:`COMPARED` metrics of a metrics table (one row
    per policy): one row per metric with both values and ``ratio`` = first / second (NaN when
    the second is 0 or either is infinite; lower is better for every metric here)."""
    rows = []
    for metric in COMPARED:
        a = float(cast("float", metrics.at[first, metric]))
        b = float(cast("float", metrics.at[second, metric]))
        finite = math.isfinite(a) and math.isfinite(b) and b != 0.0
        rows.append({"metric": metric, first: a, second: b, "ratio": a / b if finite else math.nan})
    return pd.DataFrame(rows).set_index("metric")


@dataclass
class SuccessReport:
    """:func:`run_success_metrics`' result: ``metrics`` (one row per policy, indexed by policy),
    ``words`` and ``load`` (long form, with a ``policy`` column), the :class:`PolicyRun` per
    policy, and ``verdicts`` (None unless both ``before`` and ``after`` ran)."""

    profile: str
    seed: int
    workload: Workload
    runs: dict[str, PolicyRun]
    metrics: pd.DataFrame
    words: pd.DataFrame
    load: pd.DataFrame
    verdicts: TargetVerdicts | None
    data_layer: DataLayerReport | None = None

    def versus(self, first: str = "after", second: str = "sdk") -> pd.DataFrame | None:
        """:func:`compare_policies` of two policies that ran (None if either did not): by
        default flashkit's ``after`` against the official openai SDK."""
        if first not in self.metrics.index or second not in self.metrics.index:
            return None
        return compare_policies(self.metrics, first, second)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe summary (metrics, verdicts, workload, upstream counters, and
        ``after_vs_sdk``: :meth:`versus`, None unless both ran)."""
        metrics = self.metrics.reset_index().replace({math.inf: None})
        versus = self.versus()
        return {
            "profile": self.profile,
            "seed": self.seed,
            "workload": asdict(self.workload),
            "metrics": json.loads(metrics.to_json(orient="records")),
            "verdicts": self.verdicts.to_dict() if self.verdicts is not None else None,
            "all_targets_met": self.verdicts.all_met if self.verdicts is not None else None,
            "upstream": {name: run.stats for name, run in self.runs.items()},
            "notes": {name: run.notes for name, run in self.runs.items()},
            "data_layer": self.data_layer.to_json() if self.data_layer is not None else None,
            "after_vs_sdk": (
                None
                if versus is None
                else json.loads(versus.reset_index().to_json(orient="records"))
            ),
        }


def run_success_metrics(
    profile: str | FaultProfile = "flaky",
    *,
    seed: int = 0,
    words: int = 200,
    concurrency: int = 50,
    arrival: float = 0.0,
    policies: Sequence[Policy] = POLICIES,
    after_limiter: AfterLimiter = "sized",
    after_changes: Mapping[str, Any] | None = None,
    vocabulary: str | None = None,
    data_layer: bool = True,
) -> SuccessReport:
    """Run the same workload under each of ``policies`` and measure the success metrics.

    Metrics per policy (virtual seconds): ``error_rate`` (words failed / words),
    ``p50_time_to_card`` and ``p99_time_to_card`` (every word, from its release to its cards; a
    failed word never got them: inf, so the p99 is inf when over 1 % failed), ``p99_call`` (per
    HTTP request, as the upstream sees it), ``p99_latency_ok`` (successful words only, from
    starting the word), ``breaker_trips`` (CLOSED → OPEN),
    ``amplification`` (upstream requests, from the upstream's own stats, per successful word),
    ``rate_limited_429`` (429s the upstream sent), ``sent_in_retry_after`` (requests sent while
    a received ``retry-after`` was running), ``completion_seconds`` vs ``ideal_seconds``
    (:func:`~flashkit.lab.success.ideal_seconds`). With ``data_layer`` (and a preset
    ``profile``), the cache hit rate and pool efficiency are measured too
    (:func:`flashkit.lab.datalayer.run_data_layer`, at most 200 words a list) and judged against
    85 % and 95 %.
    """
    name = profile if isinstance(profile, str) else "custom"
    resolved = FaultProfile.preset(profile) if isinstance(profile, str) else profile
    workload = Workload(words, concurrency, arrival, vocabulary=vocabulary)
    runs: dict[str, PolicyRun] = {}
    for policy in policies:
        runs[policy] = run_policy(
            policy,
            resolved,
            workload,
            seed=seed,
            after_limiter=after_limiter,
            after_changes=after_changes,
        )
    # One ideal for every policy, from the run that got the most answers (tokens per call).
    best = max(runs.values(), key=lambda run: run.stats["ok"])
    ideal = ideal_seconds(
        resolved, workload, tokens_per_request=tokens_per_request(best, resolved, workload)
    )
    metrics = pd.DataFrame([metrics_row(run, ideal) for run in runs.values()]).set_index("policy")
    word_frames = [run.words.assign(policy=p) for p, run in runs.items()]
    load_frames = [run.load.reset_index().assign(policy=p) for p, run in runs.items()]
    verdicts = target_verdicts(metrics) if {"before", "after"} <= set(runs) else None
    layer = None
    if data_layer and "after" in runs and isinstance(profile, str):
        layer = run_data_layer(profile, words=min(words, 200), seed=seed)
        if verdicts is not None:
            verdicts = dataclasses.replace(
                verdicts,
                cache_hit_rate=at_least(
                    "cache_hit_rate", CACHE_TARGET, layer.cache_hit_rate, "; the list again"
                ),
                pool_efficiency=at_least("pool_efficiency", POOL_TARGET, layer.pool_efficiency),
            )
    return SuccessReport(
        profile=name,
        seed=seed,
        workload=workload,
        runs=runs,
        metrics=metrics,
        words=pd.concat(word_frames, ignore_index=True),
        load=pd.concat(load_frames, ignore_index=True),
        verdicts=verdicts,
        data_layer=layer,
    )
