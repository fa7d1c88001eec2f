"""The report's landing page: the success metrics first, then every benchmark target, then one
line per notebook, and what reproduces it (commit, machine, packages, command)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["landing_markdown"]

_PACKAGES = ("flashkit", "httpx2", "sqlalchemy", "redis", "zstandard", "pandas", "papermill")
_METRICS = ("error_rate", "p99_time_to_card", "breaker_trips", "cache_hit_rate", "pool_efficiency")
_POLICIES = ("before", "after", "peer", "sdk")


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any, *, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, bool):
        return str(value)
    if percent:
        return f"{float(value):.1%}"
    return f"{float(value):.3g}" if isinstance(value, float) else str(value)


def _load(results: Path, name: str) -> Any:
    path = results / f"{name}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError:
        return None


def _success_rows(results: Path, names: Sequence[str]) -> list[str]:
    rows = [
        "| preset (seed) | metric | target | before | after | peer | openai SDK | verdict |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for name in names:
        data = _load(results, name)
        if not isinstance(data, dict) or "verdicts" not in data:
            continue
        by_policy = {row.get("policy"): row for row in data.get("metrics", [])}
        for metric in _METRICS:
            verdict = data["verdicts"].get(metric)
            if verdict is None:
                continue
            percent = metric in ("error_rate", "cache_hit_rate", "pool_efficiency")
            values = [by_policy.get(policy, {}).get(metric) for policy in _POLICIES]
            if metric in ("cache_hit_rate", "pool_efficiency"):
                values = [None, verdict.get("after"), None, None]
            mark = "✅ met" if verdict.get("met") else "❌ **not met**"
            if verdict.get("met") is None:
                mark = "n/a"
            rows.append(
                f"| {_md(data.get('profile', name))} ({data.get('seed', '?')}) | {metric} "
                f"| {_md(verdict.get('target'))} "
                + "".join(f"| {_number(v, percent=percent)} " for v in values)
                + f"| {mark}: {_md(verdict.get('verdict', ''))} |"
            )
    return rows


def _target_rows(results: Path, names: Sequence[str]) -> list[str]:
    rows = ["| benchmark | target | value | verdict |", "|---|---|---:|---|"]
    for name in names:
        data = _load(results, name)
        targets = data.get("targets") if isinstance(data, dict) else None
        if isinstance(targets, dict):  # {name: {..., "met": bool}} (other shapes: not targets)
            targets = [
                {"target": key, **value}
                for key, value in targets.items()
                if isinstance(value, dict)
            ]
        for target in targets or []:
            if not isinstance(target, dict) or "met" not in target:
                continue
            label = " · ".join(str(target[k]) for k in ("case", "target") if k in target)
            value = next(
                (target[k] for k in ("ratio", "value", "value_ns", "measured") if k in target),
                None,
            )
            mark = "✅ met" if target["met"] else "❌ **not met**"
            if target["met"] is None:
                mark = "n/a (smoke run)"
            rows.append(f"| {_md(name)} | {_md(label)} | {_number(value)} | {mark} |")
    return rows


def _machine() -> list[str]:
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return [
        f"- Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; Python {sys.version.split()[0]}",
        f"- Packages: {', '.join(versions)}",
    ]


def landing_markdown(
    outcomes: Sequence[Any],
    *,
    results: Path,
    smoke: bool,
    commit: str,
    generated: str,
    command: str,
) -> str:
    """The landing page as Markdown: ``outcomes`` are the report's entry results (``entry.name``,
    ``entry.title``, ``html``, ``ok``, ``seconds``, ``parameters``)."""
    names = [outcome.entry.name for outcome in outcomes]
    success = [name for name in names if name.startswith("success_")]
    failed = sum(not outcome.ok for outcome in outcomes)
    lines = [
        "# flashkit report",
        "",
        "## The success metrics: before / after / peer / openai SDK",
        "",
        "*before*: the original pipeline's policy; *after*: `flashkit process`'s defaults; "
        "*peer*: tenacity + aiolimiter + pybreaker; *openai SDK*: `openai.AsyncOpenAI` with its "
        "defaults (`max_retries=2`); one simulated upstream, virtual time; the verdicts judge "
        "after against before (targets: `docs/origins.md`).",
        "",
        *(_success_rows(results, success) if success else ["(no success-metrics entry ran)"]),
        "",
        "## Benchmark targets (ratios against the peers, one run)",
        "",
        *_target_rows(results, names),
        "",
        "## Notebooks",
        "",
    ]
    for outcome in outcomes:
        status = "ok" if outcome.ok else "**FAILED**"
        lines.append(
            f"- [{_md(outcome.entry.title)}]({outcome.html.name}) — {status}, "
            f"{outcome.seconds:.1f} s; parameters: "
            f"{_md(', '.join(f'{k}={v}' for k, v in outcome.parameters.items()) or 'none')}"
        )
    mode = "smoke (small CI parameters)" if smoke else "full"
    lines += [
        "",
        "## How this was made",
        "",
        f"- Generated {generated} UTC from commit {_md(commit)}; mode: {mode}; "
        f"{len(outcomes)} notebooks, {failed} failed",
        *_machine(),
        "- Seeds and parameters: each notebook's line above (`benchmarks/report.toml`)",
        f"- Reproduce: `{command}`",
    ]
    if (results / "flashkit.toml").is_file():
        lines.append(
            "- What the tuning notebooks chose: [results/flashkit.toml](results/flashkit.toml); "
            "`flashkit process WORDS.csv --config <it>` runs with it"
        )
    return "\n".join(lines)
