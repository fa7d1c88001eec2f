"""The policies measured side by side, and :func:`run_policy`, which runs one of them on a fresh
simulated upstream in virtual time:

- ``before``: the original pipeline's policy (:mod:`flashkit.lab.success.original`);
- ``after``: the flashcard pipeline itself, as ``flashkit process`` runs it by default
  (:func:`run_after`);
- ``peer``: tenacity + aiolimiter + pybreaker as their own documentation assembles them
  (:func:`run_peer`; needs the ``bench`` extra);
- ``sdk``: the official openai SDK with its defaults under a semaphore
  (:func:`flashkit.lab.success.sdk.run_sdk`; needs the ``bench`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final, Literal, Self
from unittest import mock

import httpx2
import pandas as pd

from flashkit.client import LLMClient
from flashkit.clock import VirtualClock, run_virtual
from flashkit.config import Settings, build_client
from flashkit.flashcards.pipeline import WordOutcome, process
from flashkit.flashcards.stages import normal_type
from flashkit.flashcards.store import Store
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem
from flashkit.lab.success._record import (
    Outcome,
    PolicyRun,
    RecordingTransport,
    RunSetup,
    drive,
)
from flashkit.lab.success._waits import random_exponential
from flashkit.lab.success.original import ORIGINAL_RPM, original_stages, run_before
from flashkit.lab.success.workload import (
    API_KEY,
    BASE_URL,
    Word,
    Workload,
    load_words,
    reply_content,
)
from flashkit.sim import FaultProfile, SimulatedUpstream

__all__ = [
    "after_settings",
    "AfterLimiter",
    "POLICIES",
    "Policy",
    "run_after",
    "run_peer",
    "run_policy",
    "VIRTUAL_EPOCH",
]

Policy = Literal["before", "after", "peer", "sdk"]
AfterLimiter = Literal["sized", "adaptive", "none"]
POLICIES: Final[tuple[Policy, ...]] = ("before", "after", "peer", "sdk")
VIRTUAL_EPOCH: Final = _dt.datetime(2025, 1, 1, tzinfo=_dt.UTC)
"""The wall-clock moment of virtual time 0, for pybreaker (see :func:`_pybreaker_on`)."""


# --- after: the flashcard pipeline ------------------------------------------------------------
def after_settings(profile: FaultProfile, workload: Workload, *, name: str = "custom") -> Settings:
    """The ``after`` policy: flashkit's default :class:`~flashkit.config.Settings` (what
    ``flashkit process`` runs), with the profile's published limits and the workload's
    ``concurrency`` and ``max_tokens``."""
    settings = Settings().replace(
        {"run.batch_size": workload.concurrency, "run.max_tokens": workload.max_tokens},
        "workload",
    )
    return settings.with_provider_limits(**profile.published_limits(), source=f"sim profile {name}")


def _after_client(
    run: RunSetup, after_limiter: AfterLimiter, after_changes: Mapping[str, Any] | None = None
) -> tuple[LLMClient, Settings]:
    settings = after_settings(run.upstream.profile, run.workload)
    if after_changes:
        settings = settings.replace(after_changes, "after_changes")
    if after_limiter == "adaptive":
        settings = settings.replace(
            {"limits.rpm": None, "limits.tpm": None, "limits.adaptive": True}, "after_limiter"
        )
    elif after_limiter == "none":
        settings = settings.replace(
            {"limits.rpm": None, "limits.tpm": None, "limits.adaptive": False}, "after_limiter"
        )
    elif after_limiter != "sized":
        raise ValueError(f"after_limiter={after_limiter!r}: use 'sized', 'adaptive' or 'none'")
    settings = settings.replace({"run.provider": "sim", "run.base_url": BASE_URL}, "lab")
    client = build_client(
        settings,
        api_key=API_KEY,
        transport=run.transport,
        clock=run.clock,
        rng=run.rng(),
        name="after",
    )
    return client, settings


def _lab_vocabulary(words: Sequence[Word]) -> Vocabulary:
    """The workload's words as a list the pipeline reads (each row its own word)."""
    items = [
        VocabularyItem(w.position, w.term, normal_type(w.type), line=i + 2)
        for i, w in enumerate(words)
    ]
    return Vocabulary.from_items(items, name="workload.csv")


async def run_after(
    run: RunSetup, after_limiter: AfterLimiter, after_changes: Mapping[str, Any] | None
) -> Outcome:
    """The flashcard pipeline itself (``flashkit.flashcards.pipeline.process``, what
    ``flashkit process`` runs) on an in-memory database, with the default settings: the client
    :func:`flashkit.config.build_client` makes, sized to the profile's published limits.
    ``after_limiter="adaptive"`` learns an unknown limit instead, ``"none"`` has no limiter."""
    client, settings = _after_client(run, after_limiter, after_changes)
    release = run.workload.release_times()
    origin = run.clock.now()
    records: list[dict[str, Any]] = []

    def record(outcome: WordOutcome) -> None:
        records.append(
            {
                "position": outcome.item.position,
                "term": outcome.item.term,
                "ok": outcome.ok,
                "error": None if outcome.ok else outcome.code,
                "release": release[outcome.item.line - 2],
                "start": outcome.started - origin,
                "end": outcome.finished - origin,
                "latency": outcome.finished - outcome.started,
            }
        )

    quiet = logging.getLogger("flashkit.client")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # one give-up warning per failed call; the words frame has them
    try:
        with Store.open("sqlite:///:memory:") as store:
            async with client:
                report = await process(
                    _lab_vocabulary(run.words),
                    client,
                    store=store,
                    batch_size=settings.words_in_flight,
                    spares=settings.run.spares,
                    release=release if run.workload.arrival > 0 else None,
                    on_word=record,
                )
    finally:
        quiet.setLevel(level)
    records.sort(key=lambda r: r["position"])
    breaker = client.breaker
    trips = breaker.stats.trips if breaker is not None else 0
    hedges = client.hedge_stats
    notes: dict[str, Any] = {
        "breaker_rejected": breaker.stats.rejected if breaker else 0,
        "spares": report.progress.spares,
        "hedges_sent": hedges.sent,
        "hedges_won": hedges.won,
        "hedges_skipped": hedges.skipped,
        "hedges_skipped_by": {k: v for k, v in hedges.skipped_by.items() if v},
        "attempt_timeout": client.timeout_now(),
    }
    return records, trips, notes


# --- peer: tenacity + aiolimiter + pybreaker ---------------------------------------------------
@contextlib.contextmanager
def _pybreaker_on(clock: VirtualClock) -> Iterator[None]:
    """pybreaker reading ``clock`` instead of the wall clock.

    A patch, because pybreaker has no clock to inject: it calls ``datetime.now(UTC)`` from its
    module when it opens and when an open breaker checks its reset timeout, and its extension
    points (listeners, ``exclude``, ``state_storage``) never see that check.
    """
    import pybreaker  # the bench extra, optional: only the peer needs it

    class _VirtualDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> Self:
            moment = VIRTUAL_EPOCH + _dt.timedelta(seconds=clock.now())
            return cls.fromtimestamp(moment.timestamp(), tz)

    with mock.patch.object(pybreaker, "datetime", _VirtualDatetime):
        yield


async def run_peer(run: RunSetup) -> Outcome:
    """What a careful engineer assembles from the peers' own documentation: tenacity
    ``@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`` (the
    OpenAI cookbook's rate-limit recipe), aiolimiter ``AsyncLimiter(rpm, 60)`` at the profile's
    nominal rate (600 rpm without one), pybreaker ``CircuitBreaker(fail_max=5,
    reset_timeout=60)`` used as ``with breaker.calling():``, ``raise_for_status()``, parsing
    inside the retry loop (the original's parsers)."""
    import aiolimiter  # the bench extra, optional: only the peer needs these
    import pybreaker
    import tenacity

    profile = run.upstream.profile
    rpm = profile.rpm if profile.rpm is not None else ORIGINAL_RPM
    limiter = aiolimiter.AsyncLimiter(rpm, 60.0)
    counts = {"trips": 0, "reopens": 0}

    class _Count(pybreaker.CircuitBreakerListener):
        def state_change(
            self,
            cb: pybreaker.CircuitBreaker,
            old_state: pybreaker.CircuitBreakerState | None,
            new_state: pybreaker.CircuitBreakerState,
        ) -> None:
            if new_state.name == pybreaker.STATE_OPEN:
                if old_state is not None and old_state.name == pybreaker.STATE_HALF_OPEN:
                    counts["reopens"] += 1
                else:
                    counts["trips"] += 1

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, listeners=[_Count()])
    http = httpx2.AsyncClient(
        base_url=BASE_URL,
        transport=run.transport,
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60.0,
    )

    @tenacity.retry(
        wait=random_exponential(run.rng(), minimum=1.0, maximum=60.0),
        stop=tenacity.stop_after_attempt(6),
        reraise=True,
    )
    async def call_stage(content: bytes, parse: Callable[[str], Any]) -> Any:
        async with limiter:
            with breaker.calling():
                async with asyncio.timeout(60.0):
                    response = await http.post("/chat/completions", content=content)
                response.raise_for_status()
                data = response.json()
        return parse(reply_content(data))

    process = original_stages(run.workload, call_stage)
    try:
        with _pybreaker_on(run.clock):
            records = await drive(run.workload, run.words, process)
    finally:
        await http.aclose()
    return records, counts["trips"], {"breaker_reopens": counts["reopens"]}


# --- one run -----------------------------------------------------------------------------------
def run_policy(
    policy: Policy,
    profile: FaultProfile | str,
    workload: Workload | None = None,
    *,
    seed: int = 0,
    after_limiter: AfterLimiter = "sized",
    after_changes: Mapping[str, Any] | None = None,
) -> PolicyRun:
    """Run ``workload`` under ``policy`` against a fresh ``SimulatedUpstream(profile, seed=seed)``
    in virtual time; deterministic from ``seed``. ``after_changes`` (``{"section.field": value}``)
    changes the ``after`` policy's settings, for experiments."""
    if isinstance(profile, str):
        profile = FaultProfile.preset(profile)
    workload = workload if workload is not None else Workload()
    words = load_words(workload.words, workload.vocabulary)
    clock = VirtualClock()
    upstream = SimulatedUpstream(profile, seed=seed, clock=clock)
    transport = RecordingTransport(upstream.transport(), clock)
    run = RunSetup(upstream, transport, clock, workload, words, seed)

    async def main() -> Outcome:
        if policy == "before":
            return await run_before(run)
        if policy == "after":
            return await run_after(run, after_limiter, after_changes)
        if policy == "peer":
            return await run_peer(run)
        if policy == "sdk":
            from flashkit.lab.success.sdk import run_sdk  # the bench extra's openai

            return await run_sdk(run)
        raise ValueError(f"policy={policy!r}: use one of {POLICIES}")

    records, trips, notes = run_virtual(main(), clock=clock)
    words_frame = pd.DataFrame(records)
    exchanges = pd.DataFrame(
        [asdict(x) for x in transport.log], columns=["sent", "answered", "status", "retry_after"]
    )
    return PolicyRun(
        policy=policy,
        words=words_frame,
        exchanges=exchanges,
        load=upstream.load.to_frame(),
        stats=upstream.stats.to_dict(),
        breaker_trips=trips,
        completion=float(words_frame["end"].max()) if not words_frame.empty else 0.0,
        notes=notes,
    )
