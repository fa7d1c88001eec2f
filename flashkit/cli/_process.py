"""``flashkit process``: check everything, then run the flashcard pipeline on a database."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from rich.console import Console
from rich.table import Table

from flashkit.cache import CacheService
from flashkit.cli._display import Display, format_seconds
from flashkit.cli._outputs import Exporter, Outputs
from flashkit.client import LLMClient
from flashkit.clock import Clock, SystemClock, VirtualClock, run_virtual
from flashkit.config import Settings, build_cache, build_client
from flashkit.errors import ValidationError
from flashkit.flashcards.pipeline import RunProgress, RunReport, WordOutcome, process
from flashkit.flashcards.stages import stage_request
from flashkit.flashcards.store import Store
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem

__all__ = ["Job", "check_client", "dry_run", "prepare_sim", "run_job", "summary"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_SIGNAL: Final = {signal.SIGINT: 130, signal.SIGTERM: 143}
_STAGE2_PROMPT_CHARS: Final = 1800  # a stage-1 analysis, as stage 2's prompt carries it


@dataclass
class Job:
    """Everything checked and ready: the list, the words to send, where state and output go."""

    vocabulary: Vocabulary
    items: tuple[VocabularyItem, ...]
    settings: Settings
    outputs: Outputs
    retry_failed: bool
    virtual: bool
    upstream: Any = None  # the in-process simulator, for --provider sim


def prepare_sim(settings: Settings, *, real_time: bool) -> tuple[Settings, Any, bool]:
    """For ``--provider sim``: the provider's limits taken from the simulator (its profile in
    process, its ``/_sim/stats`` over HTTP) unless set elsewhere; returns the settings, the
    in-process profile (None over HTTP) and whether time is virtual."""
    # Imported here: the test bench loads only for --provider sim, not for every command.
    from flashkit.sim import FaultProfile

    run = settings.run
    if run.base_url is None:
        profile = FaultProfile.preset(run.profile)
        settings = settings.with_provider_limits(
            **profile.published_limits(), source=f"sim profile {run.profile}"
        )
        return settings, profile, not real_time
    limits = _fetch_sim_limits(run.base_url)
    return settings.with_provider_limits(**limits, source=f"sim at {run.base_url}"), None, False


def _fetch_sim_limits(base_url: str) -> dict[str, Any]:
    url = httpx2.URL(base_url)
    stats_url = url.copy_with(path="/_sim/stats", query=None)
    try:
        data = httpx2.get(stats_url, timeout=5.0).json()
    except (httpx2.HTTPError, ValueError) as error:
        raise ValidationError(
            f"--provider sim --base-url {base_url}: no simulator answers at {stats_url} "
            f"({type(error).__name__}); start one with `flashkit sim serve` or check the URL",
            code="invalid_config",
        ) from None
    limits = data.get("limits") or {}
    profile = data.get("profile") or {}
    rpm, style = limits.get("rpm"), profile.get("limit_mode")
    burst = None
    if rpm is not None and style == "token_bucket":
        burst = max(1.0, float(rpm) * float(profile.get("bucket_fraction") or 1.0))
    return {"rpm": rpm, "tpm": limits.get("tpm"), "style": style, "burst": burst}


def _estimate_tokens(item: VocabularyItem, stage: int) -> int:
    """The client's own estimate: a third of the request body's bytes, plus max_tokens later."""
    if stage == 1:
        messages, _ = stage_request(item, 1)
        body = json.dumps({"messages": messages}, ensure_ascii=False).encode()
        return len(body) // 3 + 8
    messages, _ = stage_request(item, 2, {"term": item.term})
    body = json.dumps({"messages": messages}, ensure_ascii=False).encode()
    return (len(body) + _STAGE2_PROMPT_CHARS) // 3 + 8


_POLICY_SECTIONS: Final = ("retry", "breaker", "limits", "hedging", "cache")


def _policy_table(settings: Settings) -> Table:
    """The resilience settings the run would use, and where each came from."""
    table = Table(title=f"policy in force ({settings.policy})", show_header=True)
    for column in ("setting", "value", "from"):
        table.add_column(column)
    for key, value, source in settings.items():
        if key.split(".", 1)[0] in _POLICY_SECTIONS:
            table.add_row(key, "" if value is None else str(value), source)
    return table


def dry_run(console: Console, job: Job, store: Store | None) -> int:
    """Print what the run would send, and how long that takes at the provider's limit."""
    known = store.states([item.identity for item in job.items]) if store is not None else {}
    todo: list[tuple[VocabularyItem, int]] = []  # (item, first stage to send)
    for item in job.items:
        state, staged = known.get(item.identity, ("pending", False))
        wanted = ("failed",) if job.retry_failed else ("pending", "stage1_done")
        if state in wanted:
            todo.append((item, 2 if staged else 1))
    max_tokens = job.settings.run.max_tokens
    calls = sum(3 - stage for _, stage in todo)
    tokens = sum(
        _estimate_tokens(item, s) + max_tokens for item, first in todo for s in range(first, 3)
    )
    table = Table(title="dry run: nothing is sent", show_header=True)
    for column in ("position", "term", "type", "stages"):
        table.add_column(column)
    for item, first in todo[:20]:
        table.add_row(str(item.position), item.term, item.type, "2" if first == 2 else "1, 2")
    console.print(table)
    if len(todo) > 20:
        console.print(f"... and {len(todo) - 20} more words", markup=False)
    console.print(_policy_table(job.settings))
    limits = job.settings.limits
    bounds = []
    if limits.rpm:
        bounds.append(calls / limits.rpm * 60.0)
    if limits.tpm:
        bounds.append(tokens / limits.tpm * 60.0)
    at_limit = (
        f"about {format_seconds(max(bounds))} at the provider's limit "
        f"({limits.rpm or 'unknown'} requests/min, {limits.tpm or 'unknown'} tokens/min)"
        if bounds
        else "the provider's limit is unknown (set limits.rpm and limits.tpm to estimate the time)"
    )
    console.print(
        f"{len(todo)} words to process ({len(job.items) - len(todo)} already done or skipped): "
        f"{calls} calls, about {tokens:,} tokens (max_tokens {max_tokens} per call); {at_limit}",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


class _Signals:
    """SIGINT / SIGTERM → stop taking words (a second one cancels at once)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.received: signal.Signals | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sig in EXIT_SIGNAL:
                loop.add_signal_handler(sig, self._on, sig)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
            return
        self._loop = loop

    def _on(self, sig: signal.Signals) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.received = sig
        self.stop.set()

    def remove(self) -> None:
        if self._loop is not None:
            for sig in EXIT_SIGNAL:
                self._loop.remove_signal_handler(sig)
            self._loop = None


def _client_for(
    job: Job, clock: Clock, display: Display, cache: CacheService | None = None
) -> LLMClient:
    settings = job.settings
    transport = None
    if job.upstream is not None:
        from flashkit.sim import SimulatedUpstream  # only for --provider sim (see prepare_sim)

        upstream = SimulatedUpstream(job.upstream, seed=settings.run.seed, clock=clock)
        transport = upstream.transport()
    return build_client(
        settings,
        transport=transport,
        clock=clock,
        rng=random.Random(settings.run.seed),
        on_retry=display.on_retry,
        cache=cache,
    )


def check_client(job: Job) -> None:
    """Build the client once (no request): a missing API key or a bad setting fails here,
    before anything is paid."""
    clock: Clock = VirtualClock() if job.virtual else SystemClock()
    display = Display(Console(quiet=True), RunProgress(), clock, virtual=job.virtual)
    client = _client_for(job, clock, display)
    if isinstance(clock, VirtualClock):
        run_virtual(client.aclose(), clock=clock)
    else:
        asyncio.run(client.aclose())


def run_job(console: Console, job: Job, store: Store) -> tuple[RunReport | None, int]:
    """Run the job; returns the report and the exit code (0 all done, 1 some failed, 130 / 143
    interrupted)."""
    clock: Clock = VirtualClock() if job.virtual else SystemClock()
    progress = RunProgress()
    display = Display(console, progress, clock, virtual=job.virtual)
    stop = asyncio.Event()
    signals = _Signals(stop)
    exporter: Exporter | None = None

    def on_word(_: WordOutcome) -> None:
        display.update()
        if exporter is not None:
            exporter.refresh()

    cache = build_cache(job.settings)

    async def main() -> RunReport:
        nonlocal exporter
        signals.install()
        client = _client_for(job, clock, display, cache)
        display.client = client
        source_id = store.register(job.vocabulary, job.items)
        exporter = Exporter(store, source_id, job.outputs)
        counts = store.counts(source_id)
        todo = counts["failed"] if job.retry_failed else counts["pending"] + counts["stage1_done"]
        what = "failed words to retry" if job.retry_failed else "words to process"
        display.start(
            f"{job.vocabulary.path}: {todo} {what} of {len(job.items)} "
            f"({counts['done']} done earlier), {job.settings.run.batch_size} requests at once, "
            f"provider {client.provider} {client.base_url}"
            + (" (simulated, virtual time)" if job.virtual else "")
        )

        async def tick() -> None:
            while True:
                await asyncio.sleep(1.0)
                display.update()

        ticker = asyncio.ensure_future(tick())
        try:
            async with client:
                return await process(
                    job.vocabulary,
                    client,
                    store=store,
                    items=job.items,
                    batch_size=job.settings.words_in_flight,
                    spares=job.settings.run.spares,
                    retry_failed=job.retry_failed,
                    stop=stop,
                    on_word=on_word,
                    progress=progress,
                    settings_json=json.dumps(
                        {k: v for k, v, _ in job.settings.items()}, default=str
                    ),
                )
        finally:
            ticker.cancel()
            signals.remove()

    report: RunReport | None = None
    try:
        report = run_virtual(main(), clock=clock) if isinstance(clock, VirtualClock) else (
            asyncio.run(main())
        )  # fmt: skip
    except KeyboardInterrupt:
        signals.received = signals.received or signal.SIGINT
    finally:
        display.stop()
        if cache is not None:
            cache.store.close()
    source_id = report.source_id if report is not None else None
    if exporter is not None:
        counts = store.counts(exporter.source_id)
        summary: dict[str, Any] = {"words": sum(counts.values()), **counts}
        if report is not None:
            summary.update(
                seconds=report.seconds,
                clock="virtual" if job.virtual else "wall",
                calls=report.progress.calls,
                spares=report.progress.spares,
            )
        exporter.final(summary)
        source_id = exporter.source_id
    if signals.received is not None or (report is not None and report.interrupted):
        counts = store.counts(source_id) if source_id is not None else {}
        left = counts.get("pending", 0) + counts.get("stage1_done", 0)
        console.print(
            f"interrupted: {counts.get('done', 0)} done, {left} pending — run the same command "
            "again to continue",
            markup=False,
            highlight=False,
        )
        return report, EXIT_SIGNAL[signals.received or signal.SIGINT]
    if report is None:  # pragma: no cover - main() returns a report or raises
        raise RuntimeError("the run ended without a report")
    return report, EXIT_FAILED if report.counts["failed"] else EXIT_OK


def summary(
    console: Console, job: Job, store: Store, report: RunReport, written: Mapping[str, Any]
) -> None:
    """The table printed at the end, and failures grouped by error code."""
    counts = report.counts
    table = Table(title="flashkit process", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("done", "failed", "pending", "stage1_done"):
        table.add_row(key, str(counts[key]))
    table.add_row("calls this run", str(report.progress.calls))
    table.add_row("answered from the cache", str(report.progress.cached))
    table.add_row("simulated time" if job.virtual else "elapsed", format_seconds(report.seconds))
    for name, path in job.outputs.paths().items():
        table.add_row(name, str(path))
    console.print(table)
    if job.vocabulary.duplicates:
        first = job.vocabulary.duplicates[0]
        console.print(
            f"{len(job.vocabulary.duplicates)} duplicate rows processed once (e.g. line "
            f"{first.line}: {first.term!r} as on line {first.first_line})",
            markup=False,
            highlight=False,
        )
    failures = store.failures_by_code(report.source_id)
    if failures:
        console.print(
            "failed words by error: "
            + ", ".join(f"{code} × {n}" for code, n in list(failures.items())[:8])
            + " (details in cards.json; `flashkit process ... --retry-failed` tries them again)",
            markup=False,
            highlight=False,
        )
