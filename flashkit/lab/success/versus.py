"""``after`` against the ``peer`` across seeds: the same workload on a fresh upstream per seed,
one row per (workload, preset, seed) with both policies' failed words, p99 time to card,
upstream requests and completion (virtual seconds), their ratios, the after client's hedges and
attempt timeout, and whether each peer target holds (:func:`versus_peer`).

The targets (:data:`P99_TARGETS`, :data:`REQUESTS_TARGET`): ``after`` fails no word, its p99
time to card is at most 0.8 of the peer's on ``flaky`` and ``brownout`` and at most the peer's
on ``outage``, it sends at most 1.15 times the peer's upstream requests, and finishes no later.
Where the peer gives words up, requests per card delivered (``requests_per_card_ratio``) are the
comparable figure.

Two workloads (:data:`WORKLOADS`), because a preset's tail is not always latency:

- ``at_once``: 300 words released together (the experiment of the hedging issue). 50 requests
  in flight bound the run: the p99 time to card is about the completion time, which the
  fault-aware ideal (:func:`~flashkit.lab.success.ideal_seconds`) bounds from below; and the run
  ends before the brownout (30 s) and the outage (60 s) begin, so those two presets are the same
  run, a healthy upstream with 1 % errors.
- ``arriving``: words released evenly, at a rate the slots sustain, so a word's time to card is
  its own latency: 300 over 120 s (``flaky``; ``brownout``, through its window) and 480 over
  240 s (``outage``, through its window; the report's entry). Where the peer gives words up,
  its p99 is infinite and its request count is that of a policy that stopped trying.

Why hedging is limit-aware and which quantile it uses: ``docs/design/hedging.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pandas as pd

from flashkit.lab.success.metrics import metrics_row
from flashkit.lab.success.policies import run_policy
from flashkit.lab.success.workload import Workload

__all__ = [
    "P99_TARGETS",
    "REQUESTS_TARGET",
    "WORKLOADS",
    "versus_peer",
    "versus_summary",
]

P99_TARGETS: Final[Mapping[str, float]] = {"flaky": 0.8, "brownout": 0.8, "outage": 1.0}
"""The after/peer ratio of p99 time to card each preset must stay at or under."""
REQUESTS_TARGET: Final = 1.15
"""The after/peer ratio of upstream requests after must stay at or under."""

WORKLOADS: Final[Mapping[str, Mapping[str, Workload]]] = {
    "at_once": {
        "flaky": Workload(300, 50, 0.0),
        "brownout": Workload(300, 50, 0.0),
        "outage": Workload(300, 50, 0.0),
    },
    "arriving": {
        "flaky": Workload(300, 50, 120.0),
        "brownout": Workload(300, 50, 120.0),
        "outage": Workload(480, 50, 240.0),
    },
}
"""The workloads per name and preset (see the module docstring)."""


def _ratio(after: float, peer: float) -> float:
    if math.isinf(peer):
        return math.nan if math.isinf(after) else 0.0
    return after / peer if peer > 0 else math.nan


def _within(ratio: float, bound: float) -> bool:
    """``ratio`` at most ``bound`` (NaN is not)."""
    return bool(ratio <= bound + 1e-12)


def _per_card(requests: int, cards: int) -> float:
    return requests / cards if cards > 0 else math.inf


def _scaled(workload: Workload, scale: float) -> Workload:
    """Fewer (or more) words over the same release span: a window is still crossed."""
    if scale == 1.0:
        return workload
    return Workload(max(10, round(workload.words * scale)), workload.concurrency, workload.arrival)


def versus_peer(
    presets: Sequence[str] = ("flaky", "brownout", "outage"),
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    workloads: Sequence[str] = ("at_once", "arriving"),
    *,
    scale: float = 1.0,
    after_changes: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run ``after`` and ``peer`` on each of ``workloads`` (names of :data:`WORKLOADS`; ``scale``
    multiplies their words, over the same release spans, for smoke runs) for each preset and
    seed.

    Columns: ``workload``, ``preset``, ``seed``, ``words``, ``arrival``; per policy ``failed``,
    ``p99`` (time to card, s; inf when over 1 % failed), ``requests`` and ``completion`` (s);
    the ratios ``p99_ratio`` (0.0 when only the peer's is infinite), ``requests_ratio``,
    ``completion_ratio``, and ``requests_per_card_ratio`` (upstream requests per card delivered:
    where the peer gave words up, its request count is that of a policy that stopped trying);
    after's ``hedges_sent``, ``hedges_won``, ``hedges_skipped`` and its final
    ``attempt_timeout`` (s); and the checks ``no_errors``, ``p99_ok``, ``requests_ok``,
    ``completion_ok``, ``all_ok`` (those four) and ``per_card_ok`` (requests per card within
    :data:`REQUESTS_TARGET`). The peer needs the ``bench`` extra."""
    rows: list[dict[str, Any]] = []
    for name in workloads:
        for preset in presets:
            workload = _scaled(WORKLOADS[name][preset], scale)
            rows.extend(_row(name, preset, seed, workload, after_changes) for seed in seeds)
    return pd.DataFrame(rows)


def _row(
    name: str,
    preset: str,
    seed: int,
    workload: Workload,
    after_changes: Mapping[str, Any] | None,
) -> dict[str, Any]:
    after_run = run_policy("after", preset, workload, seed=seed, after_changes=after_changes)
    peer_run = run_policy("peer", preset, workload, seed=seed)
    after, peer = metrics_row(after_run, 1.0), metrics_row(peer_run, 1.0)
    row: dict[str, Any] = {
        "workload": name,
        "preset": preset,
        "seed": seed,
        "words": workload.words,
        "arrival": workload.arrival,
    }
    for label, metrics in (("after", after), ("peer", peer)):
        row[f"{label}_failed"] = int(metrics["failed"])
        row[f"{label}_p99"] = float(metrics["p99_time_to_card"])
        row[f"{label}_requests"] = int(metrics["upstream_requests"])
        row[f"{label}_completion"] = float(metrics["completion_seconds"])
    row["p99_ratio"] = _ratio(row["after_p99"], row["peer_p99"])
    row["requests_ratio"] = _ratio(row["after_requests"], row["peer_requests"])
    row["completion_ratio"] = _ratio(row["after_completion"], row["peer_completion"])
    row["requests_per_card_ratio"] = _ratio(
        _per_card(row["after_requests"], workload.words - row["after_failed"]),
        _per_card(row["peer_requests"], workload.words - row["peer_failed"]),
    )
    notes = after_run.notes
    row["hedges_sent"] = notes.get("hedges_sent", 0)
    row["hedges_won"] = notes.get("hedges_won", 0)
    row["hedges_skipped"] = notes.get("hedges_skipped", 0)
    row["attempt_timeout"] = notes.get("attempt_timeout")
    row["no_errors"] = row["after_failed"] == 0
    row["p99_ok"] = _within(row["p99_ratio"], P99_TARGETS.get(preset, 1.0))
    row["requests_ok"] = _within(row["requests_ratio"], REQUESTS_TARGET)
    row["completion_ok"] = _within(row["completion_ratio"], 1.0)
    row["per_card_ok"] = _within(row["requests_per_card_ratio"], REQUESTS_TARGET)
    row["all_ok"] = all(row[k] for k in ("no_errors", "p99_ok", "requests_ok", "completion_ok"))
    return row


def versus_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per workload and preset: the worst ratios over the seeds, after's failed words in all,
    and how many seeds met each target (of how many)."""
    grouped = frame.groupby(["workload", "preset"], sort=False)
    summary = pd.DataFrame(
        {
            "seeds": grouped["seed"].count(),
            "after_failed": grouped["after_failed"].sum(),
            "peer_failed": grouped["peer_failed"].sum(),
            "max_p99_ratio": grouped["p99_ratio"].max(),
            "max_requests_ratio": grouped["requests_ratio"].max(),
            "max_completion_ratio": grouped["completion_ratio"].max(),
            "max_requests_per_card_ratio": grouped["requests_per_card_ratio"].max(),
            "p99_ok": grouped["p99_ok"].sum(),
            "requests_ok": grouped["requests_ok"].sum(),
            "completion_ok": grouped["completion_ok"].sum(),
            "per_card_ok": grouped["per_card_ok"].sum(),
            "all_ok": grouped["all_ok"].sum(),
        }
    )
    presets = summary.index.get_level_values("preset")
    summary.insert(4, "p99_target", [P99_TARGETS.get(str(p), 1.0) for p in presets])
    return summary
