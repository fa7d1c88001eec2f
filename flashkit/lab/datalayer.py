"""The two data-layer success metrics (``docs/origins.md``), measured on ``flashkit process``'s
own path: the cache hit rate (target >= 85 %) and the connection pool efficiency (target >= 95
%).

The flashcard pipeline with its default settings (:func:`flashkit.config.build_client`,
:func:`flashkit.config.build_cache`) runs three times against the simulator, in virtual time,
each run with a state database of its own (a SQLite file, as ``flashkit process`` keeps it) and
all three sharing one answers cache (a SQLite file: a second user on another machine with the
same cache):

1. ``first`` — list A (``words`` words): every answer is new, the cache fills;
2. ``repeat`` — list A again: every stage is answered from the cache, nothing is sent;
3. ``overlap`` — list B, whose first half is the second half of A (same rows): half of its
   words are in the cache, and at most half of its calls can be hits.

The hit rate of a run is its calls answered from the cache over its calls; the target is
judged on ``repeat`` (a list processed again), ``overlap`` shows the share a changed list keeps.
Pool efficiency is the share of checkouts served at once by an idle pooled connection
(:class:`flashkit.db.PoolMonitor`) over every engine of a run (its state database and the
cache's), judged over all runs.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pandas as pd

from flashkit.clock import VirtualClock, run_virtual
from flashkit.config import Settings, build_cache, build_client
from flashkit.db import PoolMonitor
from flashkit.flashcards.pipeline import RunReport, process
from flashkit.flashcards.stages import normal_type
from flashkit.flashcards.store import Store
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem
from flashkit.sim import FaultProfile, SimulatedUpstream

__all__ = ["CACHE_TARGET", "POOL_TARGET", "DataLayerReport", "run_data_layer"]

CACHE_TARGET: Final = 0.85
POOL_TARGET: Final = 0.95
_URL: Final = "http://sim.flashkit.invalid/v1"


@dataclasses.dataclass(frozen=True)
class DataLayerReport:
    """:func:`run_data_layer`'s result: ``runs`` (one row per run: words, calls, cached,
    hit_rate, upstream_requests, checkouts, efficient checkouts, pool_efficiency),
    ``cache_hit_rate`` (the ``repeat`` run's) and ``pool_efficiency`` (all runs)."""

    profile: str
    runs: pd.DataFrame
    cache_hit_rate: float
    pool_efficiency: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "runs": self.runs.to_dict(orient="records"),
            "cache_hit_rate": self.cache_hit_rate,
            "cache_target": CACHE_TARGET,
            "cache_met": self.cache_hit_rate >= CACHE_TARGET,
            "pool_efficiency": self.pool_efficiency,
            "pool_target": POOL_TARGET,
            "pool_met": self.pool_efficiency is not None and self.pool_efficiency >= POOL_TARGET,
        }


def _lists(words: int, terms: Sequence[tuple[str, str]]) -> tuple[Vocabulary, Vocabulary]:
    """List A (rows 1..words) and list B (rows words/2+1 .. words/2+words): half shared."""
    half = words // 2
    rows = [
        VocabularyItem(i + 1, terms[i % len(terms)][0] + ("" if i < len(terms) else f"{i}"),
                       normal_type(terms[i % len(terms)][1]), line=i + 2)
        for i in range(words + half)
    ]  # fmt: skip
    return (
        Vocabulary.from_items(rows[:words], name="list_a.csv"),
        Vocabulary.from_items(rows[half:], name="list_b.csv"),
    )


def _one_run(
    settings: Settings, vocabulary: Vocabulary, state_url: str, profile: FaultProfile, seed: int
) -> tuple[RunReport, int, list[PoolMonitor]]:
    clock = VirtualClock()
    upstream = SimulatedUpstream(profile, seed=seed, clock=clock)
    cache = build_cache(settings)
    store = Store.open(state_url)
    monitors = [PoolMonitor(store.engine, name=f"state {vocabulary.path}")]
    if cache is not None and hasattr(cache.store, "engine"):
        monitors.append(PoolMonitor(cache.store.engine, name=f"cache {vocabulary.path}"))
    client = build_client(
        settings, api_key="sk-lab", transport=upstream.transport(), clock=clock,
        rng=random.Random(seed), cache=cache,
    )  # fmt: skip

    async def main() -> RunReport:
        async with client:
            return await process(
                vocabulary, client, store=store, batch_size=settings.words_in_flight,
                spares=settings.run.spares,
            )  # fmt: skip

    try:
        report = run_virtual(main(), clock=clock)
    finally:
        store.close()
        if cache is not None:
            cache.store.close()
    return report, upstream.stats.requests, monitors


def run_data_layer(
    profile: str = "flaky", *, words: int = 200, seed: int = 0, folder: str | Path | None = None
) -> DataLayerReport:
    """Run the three runs described in the module docstring on ``profile`` (default settings,
    the profile's published limits), ``words`` words per list, files in ``folder`` (a
    temporary one by default); deterministic from ``seed``."""
    from flashkit.sim import lexicon

    resolved = FaultProfile.preset(profile)
    terms = [(entry.term, entry.pos) for entry in lexicon().entries]
    list_a, list_b = _lists(words, terms)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flashkit-datalayer-") as scratch:
        where = Path(folder) if folder is not None else Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        settings = Settings().with_provider_limits(
            **resolved.published_limits(), source=f"sim profile {profile}"
        )
        settings = settings.replace(
            {"run.provider": "sim", "run.base_url": _URL,
             "cache.url": f"sqlite:///{where / 'cache.db'}"}, "lab",
        )  # fmt: skip
        for name, vocabulary in (("first", list_a), ("repeat", list_a), ("overlap", list_b)):
            state = f"sqlite:///{where / f'state_{name}.db'}"
            report, requests, monitors = _one_run(settings, vocabulary, state, resolved, seed)
            statuses = [m.status() for m in monitors]
            checkouts = sum(s.checkouts for s in statuses)
            efficient = sum(round((s.efficiency or 0.0) * s.checkouts) for s in statuses)
            for monitor in monitors:
                monitor.close()
            progress = report.progress
            rows.append({
                "run": name, "words": len(vocabulary.items), "done": report.counts["done"],
                "calls": progress.calls, "cached": progress.cached,
                "hit_rate": progress.cached / progress.calls if progress.calls else 0.0,
                "upstream_requests": requests, "checkouts": checkouts,
                "efficient_checkouts": efficient,
                "pool_efficiency": efficient / checkouts if checkouts else None,
            })  # fmt: skip
    hit_rate = float(rows[1]["hit_rate"])  # the "repeat" run: the list processed again
    runs = pd.DataFrame(rows).set_index("run")
    total = int(runs["checkouts"].sum())
    return DataLayerReport(
        profile=profile,
        runs=runs,
        cache_hit_rate=hit_rate,
        pool_efficiency=float(runs["efficient_checkouts"].sum()) / total if total else None,
    )
