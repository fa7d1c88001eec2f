"""Figures of a :class:`~flashkit.lab.success.SuccessReport`: the upstream's load per policy
(:func:`plot_load`) and each policy's time to card as a CDF over all words
(:func:`plot_latency_cdf`). matplotlib is imported when a figure is drawn."""

from __future__ import annotations

import math
from typing import Any, Final

from flashkit.lab.success.metrics import time_to_card
from flashkit.lab.success.report import SuccessReport
from flashkit.sim import FaultProfile

__all__ = ["plot_latency_cdf", "plot_load"]

_COLORS: Final = {
    "before": "tab:red",
    "after": "tab:green",
    "peer": "tab:blue",
    "sdk": "tab:purple",
}


def plot_load(report: SuccessReport, profile: FaultProfile | None = None) -> Any:
    """Per policy, upstream requests per second (stacked: ok, 429, other failures), with the
    profile's outage and brownout windows shaded. Returns the Figure."""
    import matplotlib.pyplot as plt

    if profile is None and report.profile != "custom":
        profile = FaultProfile.preset(report.profile)
    runs = list(report.runs.items())
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(11, 2.4 * len(runs)), sharex=True, squeeze=False
    )
    for axis, (policy, run) in zip(axes[:, 0], runs, strict=True):
        load = run.load
        seconds = load.index.to_numpy()
        other = load["requests"] - load["ok"] - load["rate_limited"]
        axis.stackplot(
            seconds,
            load["ok"],
            load["rate_limited"],
            other,
            labels=["ok", "429", "other failures"],
            colors=["tab:green", "tab:orange", "tab:red"],
            alpha=0.8,
            step="post",
        )
        axis.set_ylabel("requests / s")
        axis.set_title(f"{policy}: {int(load['requests'].sum())} upstream requests", loc="left")
        axis.grid(alpha=0.3)
        if profile is not None:
            for start, end in profile.outages:
                axis.axvspan(start, end, color="red", alpha=0.1)
            for start, end in profile.brownouts:
                axis.axvspan(start, end, color="gold", alpha=0.15)
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("upstream time (s)")
    fig.tight_layout()
    return fig


def plot_latency_cdf(report: SuccessReport) -> Any:
    """Each policy's time to card (release → cards) as a CDF over *all* words — a failed word
    never gets there, so a policy that fails words tops out below 1 — with each policy's p99
    marked where it is finite. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(9, 4))
    for policy, run in report.runs.items():
        times = time_to_card(run.words)
        done = times[times != math.inf].sort_values().to_numpy()
        if not len(done):
            continue
        fraction = [(i + 1) / len(times) for i in range(len(done))]
        color = _COLORS.get(policy)
        axis.step(done, fraction, where="post", label=f"{policy} ({len(done)}/{len(times)})",
                  color=color)  # fmt: skip
        p99 = float(report.metrics["p99_time_to_card"].to_dict()[policy])
        if math.isfinite(p99):
            axis.axvline(p99, color=color, linestyle=":", alpha=0.7)
    axis.set_xscale("symlog", linthresh=1.0)
    axis.set_xlabel("time to card per word (virtual s, from its release; dotted: p99)")
    axis.set_ylabel("fraction of all words with cards")
    axis.set_title("Time to card, failed words never arrive")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    fig.tight_layout()
    return fig
