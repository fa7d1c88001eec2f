"""The answers cache, measured: codecs on flashcard answers, and a hot key's stampede.

**Compression** (:func:`compression_table`): the values are the chat answers the pipeline caches
(:func:`card_payloads`), serialised as the cache does (compact UTF-8 JSON) and split: zstd
dictionaries (:func:`flashkit.cache.train_dictionary`) are trained on the first ``train`` share,
every figure is measured on the rest. Each value is compressed on its own by the codec calls
:class:`~flashkit.cache.CompressedCache` makes (zstd without checksum or dictionary id, its
dictionary precomputed for the level; zlib; lz4 block) and the cache's rules decide what is
stored: values under ``threshold`` bytes as they are, and so those compressed by less than
``min_saving`` (10 %). ``ratio`` is serialised / stored payload bytes over the test split (what
``CacheStats.compression_ratio`` reports for those writes); ``compress_us`` / ``decompress_us``
the mean µs per value (each value's median over ``repetitions``; 0 where the cache does not
compress, or decompress): the codec's cost per ``set`` and per ``get``.

**Stampede** (:func:`stampede`): one hot key read ``reads_per_second`` times a second by
independent readers (Poisson arrivals), each ``await cache.get_or_compute(key, compute)`` on a
:class:`~flashkit.cache.CacheService` over a :class:`~flashkit.cache.MemoryStore`, ``compute``
taking ``recompute`` seconds, in virtual time; the key is computed once before the readers start.
An *expiry* is one renewal of the value: it begins when a recompute starts while none runs (the
value expired, or XFetch refreshes it early) and takes in every recompute started before the
last of them ends. Vattani et al. (PVLDB 2015): without protection an expiry costs about
``reads_per_second × recompute`` recomputes, with XFetch about 1.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import importlib
import json
import math
import random
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import ipywidgets as w
import numpy as np
import pandas as pd
import zstandard

import flashkit
from flashkit.cache import CacheService, MemoryStore, train_dictionary
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import ValidationError
from flashkit.flashcards.stages import STAGE1_MODEL, STAGE2_MODEL
from flashkit.lab.tuning import cache_values
from flashkit.lab.widgets import _Panel, _show, _slider
from flashkit.sim import lexicon
from flashkit.sim._content import estimate_tokens, stage1_text, stage2_text

__all__ = [
    "CODECS",
    "HSK",
    "STRATEGIES",
    "CompressionExplorer",
    "StampedeExplorer",
    "StampedeResult",
    "card_payloads",
    "choose_compression",
    "choose_stampede",
    "compression_table",
    "payload_bytes",
    "plot_compression",
    "plot_compression_bars",
    "plot_dictionary_sizes",
    "plot_stampede_costs",
    "plot_stampede_timeline",
    "plot_threshold",
    "settings_to_paste",
    "stampede",
    "stampede_comparison",
    "stampede_table",
    "vattani_checks",
]

HSK: Final = Path(flashkit.__file__).resolve().parents[2] / "shared" / "data" / "hsk_10k.csv"
CODECS: Final = ("none", "lz4", "zlib", "zstd")
LEVELS: Final = {"none": (None,), "lz4": (None,), "zlib": (6,), "zstd": (1, 3, 9)}
STRATEGIES: Final = ("none", "ttl_jitter", "single_flight", "xfetch")
AUTO_DICTIONARY_SIZE: Final = 16_384  # what CompressedCache(dictionary="auto") trains
CACHE_TTL: Final = 30 * 24 * 3600.0  # flashkit.config.CacheSettings.ttl (30 days)

_Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
_Dictionaries = dict[tuple[int, int | None], zstandard.ZstdCompressionDict]


# --- payloads -----------------------------------------------------------------------------------
def _words() -> list[tuple[int, str, str]]:
    """(position, term, word type): the HSK list when present, else the simulator's lexicon."""
    if HSK.exists():
        with HSK.open(encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle)
            return [(int(r["Position"]), r["Hangul"], r["Word_Type"]) for r in rows if r["Hangul"]]
    return [(i, e.term, e.pos) for i, e in enumerate(lexicon().entries, start=1)]


def card_payloads(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` cached chat answers as :class:`~flashkit.client.LLMClient` stores them
    (``content``, ``model``, ``usage``, ``finish_reason``, ``request_id``): stage 1 (JSON) then
    stage 2 (TSV) of words drawn, shuffled by ``seed``, from ``shared/data/hsk_10k.csv`` when it
    exists, else from the simulator's lexicon (cycled)."""
    if count < 0:
        raise ValueError(f"card_payloads(count={count}): need a count >= 0")
    words = _words()
    random.Random(seed).shuffle(words)
    payloads: list[dict[str, Any]] = []
    for index in range(count):
        position, term, kind = words[(index // 2) % len(words)]
        prompt: dict[str, Any] = {"position": position, "term": term, "type": kind}
        content, model = stage1_text(position, term, kind), STAGE1_MODEL
        if index % 2:
            prompt = {"position": position, "term": term, "stage1_result": content}
            content, model = stage2_text(position, term, position, kind), STAGE2_MODEL
        sent = estimate_tokens(json.dumps(prompt, ensure_ascii=False)) + 350  # + the preset
        tokens = {"prompt_tokens": sent, "completion_tokens": estimate_tokens(content)}
        payloads.append(
            {
                "content": content,
                "model": model,
                "usage": {**tokens, "total_tokens": sum(tokens.values())},
                "finish_reason": "stop",
                "request_id": f"chatcmpl-sim{seed:03d}{index:08d}",
            }
        )
    return payloads


def payload_bytes(value: Any) -> bytes:
    """``value`` serialised as the cache does: compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# --- compression --------------------------------------------------------------------------------
def _codec(codec: str, level: int | None, dictionary: Any = None) -> _Codec | None:
    """(compress, decompress) of one value as CompressedCache calls them; None for ``"none"``."""
    if codec == "zlib":
        zlib_level = 6 if level is None else level
        return (lambda body: zlib.compress(body, zlib_level)), zlib.decompress
    if codec == "lz4":
        block: Any = importlib.import_module("lz4.block")  # flashkit[cache]
        hc = {} if level is None else {"mode": "high_compression", "compression": level}
        return (lambda body: block.compress(body, store_size=True, **hc)), block.decompress
    if codec == "zstd":
        zstd_level = 3 if level is None else level
        own = None
        if dictionary is not None:  # a copy precomputed for the level, as the cache does
            own = zstandard.ZstdCompressionDict(dictionary.as_bytes())
            own.precompute_compress(level=zstd_level)
        compressor = zstandard.ZstdCompressor(
            level=zstd_level, dict_data=own, write_checksum=False, write_dict_id=False
        )
        return compressor.compress, zstandard.ZstdDecompressor(dict_data=dictionary).decompress
    if codec == "none":
        return None
    raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")


def _dictionary(found: _Dictionaries, train: list[bytes], size: int, level: int | None) -> Any:
    """The zstd dictionary of ``size`` bytes for ``level`` (None for size 0), trained once."""
    if size and (size, level) not in found:
        found[size, level] = train_dictionary(train, size, level=level)
    return found.get((size, level)) if size else None


def _measure(codec: _Codec | None, test: list[bytes], repetitions: int) -> dict[str, np.ndarray]:
    """Per value: compressed size, and the median compress and decompress µs."""
    if codec is None:
        sizes, zeros = np.array([len(body) for body in test]), np.zeros(len(test))
        return {"sizes": sizes, "compress": zeros, "decompress": zeros}
    compress, decompress = codec
    timings = np.zeros((2, max(repetitions, 1), len(test)))
    clock = time.perf_counter
    for rep in range(timings.shape[1]):
        for i, body in enumerate(test):
            start = clock()
            packed = compress(body)
            middle = clock()
            decompress(packed)
            timings[0, rep, i], timings[1, rep, i] = middle - start, clock() - middle
    medians = np.median(timings, axis=1) * 1e6
    sizes = np.array([len(compress(body)) for body in test])
    return {"sizes": sizes, "compress": medians[0], "decompress": medians[1]}


def _rows(
    name: tuple[str, int | None, int],
    measured: Mapping[str, np.ndarray],
    raw: np.ndarray,
    thresholds: Iterable[int],
    min_saving: float,
) -> list[dict[str, Any]]:
    """One table row per threshold from one configuration's per-value measurements."""
    codec, level, size = name
    label = codec if level is None else f"{codec}-{level}"
    label += f" + {size // 1024} KiB dict" if size else ""
    rows = []
    for threshold in thresholds:
        tried = (raw >= threshold) & (codec != "none")
        packed = tried & (measured["sizes"] <= raw * (1.0 - min_saving))
        stored = np.where(packed, measured["sizes"], raw)
        compress = float((measured["compress"] * tried).mean())
        decompress = float((measured["decompress"] * packed).mean())
        rows.append(
            {"label": label, "codec": codec, "level": level, "dictionary_size": size,
             "threshold": int(threshold), "ratio": float(raw.sum() / stored.sum()),
             "compressed_share": float(packed.mean()), "mean_stored_bytes": float(stored.mean()),
             "compress_us": compress, "decompress_us": decompress,
             "total_us": compress + decompress}
        )  # fmt: skip
    return rows


def _split(payloads: Sequence[Any], train: float) -> tuple[list[bytes], list[bytes]]:
    items = [payload_bytes(value) for value in payloads]
    cut = int(len(items) * train)
    if not 0.0 < train < 1.0 or cut < 1 or cut >= len(items):
        raise ValueError(f"{len(items)} payloads, train={train!r}: cannot split train and test")
    return items[:cut], items[cut:]


def compression_table(
    payloads: Sequence[Any],
    *,
    codecs: Iterable[str] = CODECS,
    levels: Mapping[str, Sequence[int | None]] = LEVELS,
    dictionary_sizes: Iterable[int] = (8192, 16384, 65536),
    thresholds: Iterable[int] = (0, 512, 1024, 1536, 2048),
    train: float = 0.5,
    repetitions: int = 3,
    min_saving: float = 0.10,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every configuration (codec × its ``levels`` × for zstd, no dictionary or one of each size
    × threshold) measured on the test split of ``payloads`` (see the module docstring). Columns:
    ``label``, ``codec``, ``level``, ``dictionary_size`` (0: none), ``threshold``, ``ratio``,
    ``compressed_share``, ``mean_stored_bytes``, ``compress_us``, ``decompress_us``,
    ``total_us``. ``attrs``: ``raw_bytes``, ``test_items``, ``train_items``, ``skipped`` (lz4
    not installed; a dictionary size zstd cannot train on so few samples). ``progress(done,
    total)`` is told of each configuration measured (e.g. a
    :class:`~flashkit.lab.widgets.ProgressBar`)."""
    train_items, test = _split(payloads, train)
    raw = np.array([len(body) for body in test])
    thresholds, sizes = list(thresholds), list(dictionary_sizes)
    plan = [(codec, level, size) for codec in codecs for level in levels.get(codec, (None,))
            for size in ((0, *sizes) if codec == "zstd" else (0,))]  # fmt: skip
    found: _Dictionaries = {}
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for done, (codec, level, size) in enumerate(plan, start=1):
        try:
            pair = _codec(codec, level, _dictionary(found, train_items, size, level))
        except (ValidationError, ImportError) as error:
            skipped.append(f"{codec} level {level} dictionary {size}: {error}")
        else:
            measured = _measure(pair, test, repetitions)
            rows += _rows((codec, level, size), measured, raw, thresholds, min_saving)
        if progress is not None:
            progress(done, len(plan))
    table = pd.DataFrame(rows)
    table.attrs.update(raw_bytes=int(raw.sum()), test_items=len(test), skipped=skipped)
    table.attrs["train_items"] = len(train_items)
    return table


def choose_compression(
    table: pd.DataFrame,
    *,
    tolerance: float = 0.05,
    max_time_vs_zlib6: float | None = 0.25,
    threshold: int | None = None,
) -> dict[str, Any]:
    """The configuration to set. Of the rows (at ``threshold`` only, if given) costing at most
    ``max_time_vs_zlib6`` × zlib-6's compress + decompress time at their threshold (flashkit's
    target, 0.25; None: no limit), those with a ratio within ``tolerance`` (5 %) of the best;
    of these the simplest: smallest dictionary, lowest level, largest threshold, cheapest."""
    rows = table if threshold is None else table[table["threshold"] == threshold]
    if max_time_vs_zlib6 is not None:
        zlib6 = table[table["label"] == "zlib-6"].set_index("threshold")["total_us"]
        rows = rows[~(rows["total_us"] > rows["threshold"].map(zlib6) * max_time_vs_zlib6)]
    near = rows[rows["ratio"] >= rows["ratio"].max() * (1.0 - tolerance)]
    order = ["dictionary_size", "level", "threshold", "total_us"]
    chosen = near.sort_values(order, ascending=[True, True, False, True]).iloc[0]
    row = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in chosen.items()}
    return {**row, "level": None if pd.isna(row["level"]) else int(row["level"])}


def plot_compression(table: pd.DataFrame, *, threshold: int = 1024, ax: Any = None) -> Any:
    """Ratio against compress + decompress µs per value, one colour per codec, at
    ``threshold``; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5)) if ax is None else (ax.figure, ax)
    rows = table[table["threshold"] == threshold]
    for codec, group in rows.groupby("codec", sort=False):
        ax.scatter(group["total_us"], group["ratio"], label=str(codec), s=40)
        for _, row in group.iterrows():
            ax.annotate(row["label"], (row["total_us"], row["ratio"]), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("compress + decompress, µs per value")
    ax.set_ylabel("ratio (serialised / stored bytes)")
    ax.set_title(f"Flashcard answers: ratio vs cost per value (threshold {threshold} B)")
    ax.grid(alpha=0.3)
    ax.legend(title="codec")
    return fig


def plot_dictionary_sizes(table: pd.DataFrame, *, threshold: int = 1024) -> Any:
    """zstd's ratio and its compress + decompress µs per value against the dictionary's size
    (KiB; 0: none), one line per level, at ``threshold``; returns the Figure."""
    import matplotlib.pyplot as plt

    zstd = table[(table["codec"] == "zstd") & (table["threshold"] == threshold)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for level, rows in zstd.groupby("level"):
        rows = rows.sort_values("dictionary_size")
        kib = rows["dictionary_size"] / 1024
        left.plot(kib, rows["ratio"], marker="o", label=f"zstd-{level:g}")
        right.plot(kib, rows["total_us"], marker="o", label=f"zstd-{level:g}")
    left.set_title("Ratio against dictionary size")
    left.set_ylabel("ratio (serialised / stored bytes)")
    right.set_title("Cost against dictionary size")
    right.set_ylabel("compress + decompress, µs per value")
    for axis in (left, right):
        axis.set_xlabel("dictionary size (KiB; 0 = no dictionary)")
        axis.grid(alpha=0.3)
        axis.legend(title=f"threshold {threshold} B")
    fig.tight_layout()
    return fig


def plot_threshold(
    table: pd.DataFrame, sizes: Mapping[str, Sequence[float]], *, labels: Iterable[str]
) -> Any:
    """Left: the ratio and the share of values stored compressed against the threshold (bytes),
    for the configurations ``labels``; right: histograms of the answers' ``sizes`` (bytes, one
    per group name), with the thresholds tried. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    share = left.twinx()
    for label in dict.fromkeys(labels):
        rows = table[table["label"] == label].sort_values("threshold")
        (line,) = left.plot(rows["threshold"], rows["ratio"], marker="o", label=f"{label}: ratio")
        share.plot(rows["threshold"], rows["compressed_share"] * 100, ls=":", marker=".",
                   color=line.get_color(), label=f"{label}: % stored compressed")  # fmt: skip
    left.set_xlabel("threshold (bytes)")
    left.set_ylabel("ratio (serialised / stored bytes)")
    share.set_ylabel("values stored compressed (%)")
    share.set_ylim(0, 105)
    left.set_title("Threshold effect")
    left.grid(alpha=0.3)
    handles = [axis.get_legend_handles_labels() for axis in (left, share)]
    left.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], fontsize=8,
                loc="center left")  # fmt: skip
    for name, group in sizes.items():
        right.hist(list(group), bins=30, alpha=0.6, label=name)
    for threshold in sorted(table["threshold"].unique()):
        right.axvline(threshold, color="grey", ls="--", lw=0.8)
    right.set_xlabel("serialised answer (bytes); dashed: the thresholds tried")
    right.set_ylabel("answers (count)")
    right.set_title("Answer sizes")
    right.legend()
    fig.tight_layout()
    return fig


def plot_compression_bars(table: pd.DataFrame, *, threshold: int, items: int) -> Any:
    """Ratio and compress + decompress µs per value of each configuration (rows of ``table``,
    indexed by label), side by side; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (ratio, cost) = plt.subplots(1, 2, figsize=(9, 3))
    names = [str(name) for name in table.index]
    ratio.bar(names, table["ratio"])
    cost.bar(names, table["total_us"])
    ratio.set_title("Ratio")
    ratio.set_ylabel("serialised / stored bytes")
    cost.set_title("Cost")
    cost.set_ylabel("compress + decompress, µs per value")
    for axis in (ratio, cost):
        axis.set_xlabel("configuration")
        axis.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{items} flashcard answers, threshold {threshold} B")
    fig.tight_layout()
    return fig


# --- stampede -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StampedeResult:
    """One :func:`stampede` run; latencies in virtual seconds. ``stale_reads``: reads answered at
    once with the value being renewed (XFetch's price: not expired, about to be replaced);
    ``waited_reads``: reads that waited for a recompute (their own or another's). ``timeline``:
    one row per second: ``second``, ``reads``, ``waited``, ``stale``, ``recomputes`` (started),
    ``in_flight`` (the most recomputes running at once)."""

    strategy: str
    beta: float
    reads_per_second: float
    recompute: float
    ttl: float
    reads: int
    recomputes: int
    expiries: int
    recomputes_per_expiry: float
    stale_reads: int
    waited_reads: int
    mean_latency: float
    p99_latency: float
    max_latency: float
    options: dict[str, Any]
    timeline: pd.DataFrame = dataclasses.field(repr=False)

    def summary(self) -> dict[str, Any]:
        """Every field but the timeline (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:-1]}


def _options(strategy: str, beta: float, jitter: float) -> dict[str, Any]:
    """The CacheService options of a strategy: each adds one protection to the one before."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
    return {
        "ttl_jitter": 0.0 if strategy == "none" else jitter,
        "single_flight": strategy in ("single_flight", "xfetch"),
        "early_refresh": strategy == "xfetch",
        "beta": beta,
    }


class _Recorder:
    """Counts of one stampede run per second since the readers started (from ``start()``)."""

    def __init__(self, seconds: int) -> None:
        self.counts = np.zeros((5, seconds), dtype=np.int64)  # reads waited stale started peak
        self.origin = math.inf  # the warm-up is not counted
        self.running = self.expiries = 0
        self.renewing = False  # a renewal began and none of its recomputes has finished
        self.latencies: list[float] = []

    def _slot(self, now: float) -> int:
        return min(int(now - self.origin), self.counts.shape[1] - 1)

    def began(self, now: float) -> None:
        if now >= self.origin:
            self.expiries += self.running == 0
            self.renewing = self.renewing or self.running == 0
            self.running += 1
            self.counts[3, self._slot(now)] += 1
            self._peak(self._slot(now))

    def ended(self, started: float) -> None:
        if started >= self.origin:
            self.running, self.renewing = self.running - 1, False

    def _peak(self, slot: int) -> None:
        self.counts[4, slot] = max(self.counts[4, slot], self.running)

    def read(self, arrived: float, now: float) -> None:
        slot, latency = self._slot(arrived), now - arrived
        self.latencies.append(latency)
        self.counts[:3, slot] += (1, latency > 0, latency == 0 and self.renewing)
        self._peak(slot)


def stampede(
    strategy: str,
    *,
    reads_per_second: float = 100.0,
    recompute: float = 1.0,
    ttl: float = 10.0,
    duration: float = 200.0,
    beta: float = 1.0,
    jitter: float = 0.1,
    seed: int = 0,
) -> StampedeResult:
    """One hot key read ``reads_per_second`` times a second for ``duration`` s of virtual time
    (see the module docstring). ``strategy``: ``"none"`` (``CacheService(single_flight=False,
    early_refresh=False, ttl_jitter=0)``), ``"ttl_jitter"`` (``ttl_jitter=jitter``),
    ``"single_flight"`` (and single flight), ``"xfetch"`` (and early refresh with ``beta``).
    Deterministic for a given ``seed``."""
    options = _options(strategy, beta, jitter)
    if not min(reads_per_second, recompute, ttl, duration) > 0:
        raise ValueError("stampede: reads_per_second, recompute, ttl and duration must be > 0")
    clock = VirtualClock()
    rng = random.Random(f"{seed}:cache")
    cache = CacheService(MemoryStore(clock=clock), ttl=ttl, clock=clock, rng=rng, **options)
    arrivals = random.Random(f"{seed}:arrivals")
    record = _Recorder(max(math.ceil(duration), 1))

    async def compute() -> float:
        started = clock.now()
        record.began(started)
        try:
            await asyncio.sleep(recompute)
        finally:
            record.ended(started)
        return started

    async def read(arrived: float) -> None:
        await cache.get_or_compute("hot", compute)
        record.read(arrived, clock.now())

    async def main() -> None:
        await cache.get_or_compute("hot", compute)  # warm: the readers find the value
        record.origin = now = clock.now()
        tasks: set[asyncio.Task[None]] = set()
        while (now := now + arrivals.expovariate(reads_per_second)) < record.origin + duration:
            await asyncio.sleep(now - clock.now())
            tasks.add(task := asyncio.create_task(read(now)))
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)

    run_virtual(main(), clock=clock)
    latencies, counts = np.array(record.latencies or [0.0]), record.counts
    names = ("reads", "waited", "stale", "recomputes", "in_flight")
    timeline = pd.DataFrame(
        {"second": np.arange(counts.shape[1]), **dict(zip(names, counts, strict=True))}
    )
    recomputes = int(counts[3].sum())
    return StampedeResult(
        strategy, float(beta), float(reads_per_second), float(recompute), float(ttl),
        reads=len(record.latencies), recomputes=recomputes, expiries=record.expiries,
        recomputes_per_expiry=recomputes / max(record.expiries, 1),
        stale_reads=int(counts[2].sum()), waited_reads=int(counts[1].sum()),
        mean_latency=float(latencies.mean()), p99_latency=float(np.percentile(latencies, 99)),
        max_latency=float(latencies.max()), options=options, timeline=timeline,
    )  # fmt: skip


def _run_label(strategy: str, beta: float, jitter: float) -> str:
    names = {"none": "no protection", "ttl_jitter": f"TTL jitter ±{jitter:.0%}"}
    names |= {"single_flight": "single flight", "xfetch": f"XFetch β={beta:g}"}
    return names[strategy]


def stampede_comparison(
    *,
    betas: Iterable[float] = (0.5, 1.0, 2.0),
    jitter: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> dict[str, StampedeResult]:
    """No protection, TTL jitter, single flight and XFetch at each of ``betas``, on the same
    arrivals (one seed), keyed by a readable label; ``options`` go to :func:`stampede`;
    ``progress(done, total)`` is told of each run."""
    plan = [("none", 1.0), ("ttl_jitter", 1.0), ("single_flight", 1.0)]
    plan += [("xfetch", float(beta)) for beta in betas]
    results = {}
    for done, (strategy, beta) in enumerate(plan, start=1):
        label = _run_label(strategy, beta, jitter)
        results[label] = stampede(strategy, beta=beta, jitter=jitter, **options)
        if progress is not None:
            progress(done, len(plan))
    return results


def stampede_table(results: Mapping[str, StampedeResult]) -> pd.DataFrame:
    """One row per run, indexed by label: the figures of :meth:`StampedeResult.summary`."""
    table = pd.DataFrame({label: r.summary() for label, r in results.items()}).T
    return table.drop(columns=["reads_per_second", "recompute", "ttl", "options"])


def vattani_checks(results: Mapping[str, StampedeResult]) -> dict[str, Any]:
    """Vattani et al.'s shape as named checks with their figures: no protection costs at least
    half of ``reads_per_second × recompute`` recomputes per expiry; XFetch (every β) and single
    flight at most 1.2."""
    runs = list(results.values())
    none = next(r for r in runs if r.strategy == "none")
    expected = none.reads_per_second * none.recompute
    xfetch = max([r.recomputes_per_expiry for r in runs if r.strategy == "xfetch"] or [math.nan])
    single = max([r.recomputes_per_expiry for r in runs if r.strategy == "single_flight"] or [0])
    return {
        "expected_without_protection": expected,
        "none_per_expiry": none.recomputes_per_expiry,
        "none_near_rate_times_recompute": none.recomputes_per_expiry >= 0.5 * expected,
        "xfetch_worst_per_expiry": xfetch,
        "xfetch_at_most_1_2": xfetch <= 1.2,
        "single_flight_per_expiry": single,
        "single_flight_at_most_1_2": single <= 1.2,
    }


def choose_stampede(results: Mapping[str, StampedeResult]) -> str:
    """The label to set: among runs with at most 1.2 recomputes per expiry, the lowest p99
    latency, then β closest to 1 (Vattani's recommendation and flashkit's default), then the
    fewest recomputes."""
    fit = {k: r for k, r in results.items() if r.recomputes_per_expiry <= 1.2}
    if not fit:
        raise ValueError("no run kept recomputes per expiry at or below 1.2")
    return min(fit, key=lambda k: (round(fit[k].p99_latency, 6), abs(fit[k].beta - 1.0),
                                   fit[k].recomputes))  # fmt: skip


def plot_stampede_timeline(
    results: Mapping[str, StampedeResult], *, until: float | None = None
) -> Any:
    """Recomputes running at once and reads that waited, per second, one line per run (the
    first ``until`` seconds); returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for label, result in results.items():
        rows = result.timeline[result.timeline["second"] < (until or math.inf)]
        top.step(rows["second"], rows["in_flight"], where="post", label=label)
        bottom.step(rows["second"], rows["waited"], where="post", label=label)
    one = next(iter(results.values()))
    fig.suptitle(f"One hot key, {one.reads_per_second:g} reads/s, {one.recompute:g}-s "
                 f"recompute, TTL {one.ttl:g} s (virtual time)")  # fmt: skip
    top.set_title("Recomputes running at once", fontsize=10)
    top.set_ylabel("recomputes running (peak per s)")
    bottom.set_title("Reads that waited for a recompute", fontsize=10)
    bottom.set_ylabel("reads that waited (per s)")
    bottom.set_xlabel("time since the readers started (s)")
    for axis in (top, bottom):
        axis.set_yscale("symlog", linthresh=1.0)
        axis.grid(alpha=0.3)
    top.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_stampede_costs(table: pd.DataFrame) -> Any:
    """Recomputes per expiry (log), p99 read latency (ms, virtual) and stale reads per run of
    :func:`stampede_table`, as bars; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    labels = [str(label) for label in table.index]
    bars = [
        ("recomputes_per_expiry", "recomputes per expiry (log)", 1.0, "Work per expiry", "{:.3g}"),
        ("p99_latency", "p99 read latency (ms, virtual)", 1000.0, "What readers wait", "{:,.0f}"),
        ("stale_reads", "reads answered with the value being renewed", 1.0, "Staleness",
         "{:,.0f}"),
    ]  # fmt: skip
    for axis, (column, xlabel, scale, title, fmt) in zip(axes, bars, strict=True):
        drawn = axis.barh(labels, table[column].astype(float) * scale)
        axis.bar_label(drawn, fmt=fmt, fontsize=8, padding=2)
        axis.set_xlabel(xlabel)
        axis.set_title(title)
        axis.grid(alpha=0.3, axis="x")
    axes[0].set_ylabel("protection")
    axes[0].invert_yaxis()  # shared: the first run on top in all three
    axes[0].set_xscale("log")
    axes[0].set_xlim(0.5, 1000)
    fig.tight_layout()
    return fig


# --- what to set --------------------------------------------------------------------------------
def settings_to_paste(
    *,
    compression: Mapping[str, Any] | None = None,
    strategy: str | None = None,
    beta: float = 1.0,
    jitter: float = 0.1,
    ttl: float | None = CACHE_TTL,
    store: str = "store",
) -> str:
    """The constructor call to paste: ``CompressedCache(store, ...)`` for a ``compression``
    choice (a :func:`compression_table` row: codec, level, dictionary_size, threshold), else
    ``CacheService(store, ...)``, with ``ttl`` and the stampede ``strategy`` (None: the cache's
    defaults, which are XFetch's). ``store`` names your store."""
    pairs: list[tuple[str, Any]] = []
    if compression is not None:
        codec, level = str(compression["codec"]), compression.get("level")
        size = int(compression.get("dictionary_size") or 0) if codec == "zstd" else 0
        pairs.append(("codec", codec))
        if level is not None and level == level:  # not None nor NaN (a DataFrame's missing)
            pairs.append(("level", int(level)))
        pairs.append(("threshold", int(compression.get("threshold", 1024))))
        pairs.append(("dictionary", "auto" if size else None))
        if size and size != AUTO_DICTIONARY_SIZE:
            pairs.append(("dictionary_size", size))
    pairs.append(("ttl", ttl))
    if strategy is not None:
        options = _options(strategy, beta, jitter)
        pairs.append(("ttl_jitter", options["ttl_jitter"]))
        if strategy == "xfetch":
            pairs.append(("beta", float(beta)))
        else:
            pairs += [("single_flight", options["single_flight"]), ("early_refresh", False)]
    name = "CompressedCache" if compression is not None else "CacheService"
    return f"{name}({store}, {', '.join(f'{k}={v!r}' for k, v in pairs)})"


# --- widgets ------------------------------------------------------------------------------------
class CompressionExplorer(_Panel):
    """Codec, level (0: the codec's default), threshold and zstd dictionary size → the ratio and
    cost against zlib-6 and no compression (table and bars). Dictionaries are trained once per
    size and level. ``.table`` and ``.settings`` hold the latest result."""

    def __init__(
        self, payloads: Sequence[Any] | None = None, *, items: int = 400, seed: int = 0
    ) -> None:
        payloads = list(payloads) if payloads is not None else card_payloads(items, seed=seed)
        self.train, self.test = _split(payloads, 0.5)
        self.raw = np.array([len(body) for body in self.test])
        self.dictionaries: _Dictionaries = {}
        self.zlib6 = _measure(_codec("zlib", 6), self.test, 3)
        self.controls = {
            "codec": w.Dropdown(options=list(CODECS), value="zstd", description="codec"),
            "level": _slider(w.IntSlider, "level (0: default)", value=3, min=0, max=19),
            "threshold": _slider(w.IntSlider, "threshold", value=1024, min=0, max=4096, step=128),
            "dictionary_size": w.Dropdown(
                options=[("none", 0), ("8 KiB", 8192), ("16 KiB", 16384), ("64 KiB", 65536)],
                value=AUTO_DICTIONARY_SIZE,
                description="zstd dictionary",
            ),
        }
        self.table = pd.DataFrame()
        self.settings = ""
        self.chosen: dict[str, Any] = {}
        self._layout([["codec", "level"], ["threshold", "dictionary_size"]])
        self.update()

    errors = (ValidationError, ImportError, ValueError, zlib.error)

    def _describe(self, error: Exception) -> str:
        return f"{type(error).__name__}: {error}"

    def _job(self) -> Callable[[], Any]:
        codec, level, threshold, size = (control.value for control in self.controls.values())
        level, size = level or None, size if codec == "zstd" else 0

        def job() -> tuple[pd.DataFrame, dict[str, Any], int]:
            pair = _codec(codec, level, _dictionary(self.dictionaries, self.train, size, level))
            named = [((codec, level, size), _measure(pair, self.test, 3))]
            named.append((("zlib", 6, 0), self.zlib6))
            named.append((("none", None, 0), _measure(None, self.test, 0)))
            rows = [_rows(name, found, self.raw, [threshold], 0.1)[0] for name, found in named]
            return pd.DataFrame(rows).set_index("label"), rows[0], threshold

        return job

    def _draw(self, result: tuple[pd.DataFrame, dict[str, Any], int]) -> None:
        self.table, self.chosen, threshold = result
        self.settings = settings_to_paste(compression=self.chosen)
        figure = plot_compression_bars(self.table, threshold=threshold, items=len(self.test))
        columns = ["ratio", "compressed_share", "compress_us", "decompress_us", "total_us"]
        _show(self.output, figure, self.table[columns].round(2), self.settings)

    def _values(self) -> dict[str, Any]:
        """The ``[cache]`` compression settings of the configuration shown."""
        return cache_values(compression=self.chosen)


class StampedeExplorer(_Panel):
    """Strategy, reads per second, recompute time and β → the timeline against no protection
    and the numbers. ``.result`` and ``.baseline`` hold the latest :class:`StampedeResult`\\ s."""

    def __init__(self, *, duration: float = 60.0, ttl: float = 10.0, seed: int = 0) -> None:
        self.duration, self.ttl, self.seed = duration, ttl, seed
        self.controls = {
            "strategy": w.Dropdown(options=list(STRATEGIES), value="xfetch", description="how"),
            "reads_per_second": _slider(w.IntSlider, "reads/s", value=100, min=10, max=500),
            "recompute": _slider(w.FloatSlider, "recompute (s)", value=1.0, min=0.1, max=5.0),
            "beta": _slider(w.FloatSlider, "β (XFetch)", value=1.0, min=0.25, max=4.0, step=0.25),
        }
        self.result: StampedeResult | None = None
        self.baseline: StampedeResult | None = None
        self._layout([["strategy", "beta"], ["reads_per_second", "recompute"]])
        self.update()

    def _job(self) -> Callable[[], Any]:
        values = {name: control.value for name, control in self.controls.items()}
        strategy, beta = values.pop("strategy"), values.pop("beta")
        common = {**values, "ttl": self.ttl, "duration": self.duration, "seed": self.seed}
        kept = self.baseline  # no protection's run depends on neither the strategy nor β
        if kept is not None and (kept.reads_per_second, kept.recompute) != (
            float(values["reads_per_second"]),
            float(values["recompute"]),
        ):
            kept = None

        def job() -> tuple[StampedeResult, StampedeResult, str, float]:
            baseline = kept if kept is not None else stampede("none", **common)
            return stampede(strategy, beta=beta, **common), baseline, strategy, beta

        return job

    def _draw(self, result: tuple[StampedeResult, StampedeResult, str, float]) -> None:
        self.result, self.baseline, strategy, beta = result
        runs = {_run_label(strategy, beta, 0.1): self.result, "no protection": self.baseline}
        figure = plot_stampede_timeline(runs)
        settings = settings_to_paste(strategy=strategy, beta=beta)
        _show(self.output, figure, stampede_table(runs), settings)

    def _values(self) -> dict[str, Any]:
        """The ``[cache]`` stampede settings of the strategy shown."""
        return cache_values(stampede=self.result.options) if self.result is not None else {}
