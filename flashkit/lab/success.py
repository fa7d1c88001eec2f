"""The action plan's success metrics, measured: the original pipeline's resilience policy against
flashkit's, on the same workload, against the same simulated upstream, in virtual time.

The workload is the flashcard pipeline's: ``words`` Korean words (the simulator's lexicon
headwords, or a ``position,term,type`` CSV such as ``vocabulary_1000.csv``), two LLM calls per
word (stage 1 answers JSON, stage 2 answers TSV made from stage 1's result), at most
``concurrency`` words in progress, the words released evenly over ``arrival`` seconds (0: all at
once). Each policy gets its own :class:`~flashkit.sim.SimulatedUpstream` built from the same
profile and seed, on its own :class:`~flashkit.clock.VirtualClock`:

- ``before`` — the original pipeline (``../shared/reference/original-system.md`` §2), modelled
  faithfully: tenacity ``@retry(stop_after_attempt(3), wait_exponential_jitter(initial=1,
  max=10), retry_if_exception_type((httpx.HTTPError, APIError)))`` around an attempt that waits
  for the token bucket (600 rpm = 10/s, burst 20, ``acquire_async`` polling every 100 ms), goes
  through :class:`OriginalCircuitBreaker` (5 failures / 60 s, with the original's flaws) and
  sends; every HTTP status >= 400 (429 and 401 included) is an ``APIError`` and retried,
  ``retry-after`` is ignored, a body that is not JSON is an ``APIError("Unexpected error")``;
  the content is parsed *after* the retry loop, so a broken answer fails the word at once.
  Concurrency 50, as ``ConcurrentPipelineOrchestrator``.
- ``after`` — what ``flashkit process`` runs with its default settings: the flashcard
  pipeline itself (:func:`flashkit.flashcards.pipeline.process`, on an in-memory database) with
  the client :func:`flashkit.config.build_client` makes from :class:`~flashkit.config.Settings`
  (10 attempts, full jitter 1–60 s, ``retry-after`` honoured, a Finagle retry budget, the ratio
  breaker, ``concurrency`` requests in flight and twice as many words in progress, spare copies
  at the tail) and the profile's published limits: against a continuously refilled bucket, a
  token bucket of the same rate and burst (less half a second of refill); against fixed
  windows, GCRA pacing (evenly spaced, so a burst never meets a window all at once); tokens in
  a sliding window at the tpm, refunded down to the usage against buckets, counted as
  ``max_tokens`` against windows; no limiter where the profile has no limit.
  ``after_limiter="adaptive"`` learns an unknown limit instead, ``"none"`` has no limiter;
  ``after_changes`` changes any setting, for experiments.
- ``peer`` — what a careful engineer assembles from the peers' own documentation: tenacity
  ``@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`` (the OpenAI
  cookbook's rate-limit recipe), aiolimiter ``AsyncLimiter(rpm, 60)`` at the profile's nominal
  rate (600 rpm without one), pybreaker ``CircuitBreaker(fail_max=5, reset_timeout=60)`` used as
  ``with breaker.calling():``, ``raise_for_status()``, parsing inside the retry loop.

Peers read global randomness and, for pybreaker, the wall clock: during a run tenacity's
``random`` is a seeded ``random.Random`` and pybreaker's ``datetime`` reads the virtual clock, so
every run is deterministic from ``seed``. Needs the ``bench`` extra (tenacity, aiolimiter,
pybreaker) for ``before`` and ``peer``.

>>> report = run_success_metrics("flaky", words=200, seed=1)    # doctest: +SKIP
>>> report.metrics[["error_rate", "p99_time_to_card", "breaker_trips"]]  # doctest: +SKIP
>>> report.verdicts.to_frame()                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Self
from unittest import mock

import httpx
import pandas as pd

from flashkit.clock import Clock, VirtualClock, run_virtual
from flashkit.config import Settings, build_client
from flashkit.errors import StructuredError
from flashkit.flashcards.pipeline import WordOutcome, process
from flashkit.flashcards.stages import (
    STAGE1_MODEL,
    STAGE1_REQUIRED,
    STAGE2_MODEL,
    TSV_COLUMNS,
    normal_type,
    stage_request,
)
from flashkit.flashcards.store import Store
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem
from flashkit.lab.datalayer import CACHE_TARGET, POOL_TARGET, DataLayerReport, run_data_layer
from flashkit.sim import FaultProfile, SimulatedUpstream, lexicon

if TYPE_CHECKING:
    from flashkit.client import LLMClient

__all__ = [
    "POLICIES",
    "OriginalCircuitBreaker",
    "OriginalTokenBucket",
    "PolicyRun",
    "SuccessReport",
    "TargetVerdict",
    "TargetVerdicts",
    "Word",
    "Workload",
    "ideal_seconds",
    "load_words",
    "parse_stage1",
    "parse_stage2",
    "plot_latency_cdf",
    "plot_load",
    "run_policy",
    "run_success_metrics",
    "sent_in_retry_after",
    "target_verdicts",
]

Policy = Literal["before", "after", "peer"]
AfterLimiter = Literal["sized", "adaptive", "none"]
POLICIES: Final[tuple[Policy, ...]] = ("before", "after", "peer")
ORIGINAL_RPM: Final = 600.0
"""The original pipeline's configured request rate (``REQUESTS_PER_MINUTE``)."""
BASE_URL: Final = "http://sim.flashkit.invalid/v1"
API_KEY: Final = "sk-sim-success-metrics"
VIRTUAL_EPOCH: Final = _dt.datetime(2025, 1, 1, tzinfo=_dt.UTC)

_JSON_OBJECT: Final = re.compile(r"\{.*\}", re.DOTALL)


# --------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True, slots=True)
class Word:
    """One vocabulary item: ``position`` in the list, the Korean ``term`` and its ``type``."""

    position: int
    term: str
    type: str


@dataclass(frozen=True, slots=True)
class Workload:
    """What every policy is given: ``words`` words, at most ``concurrency`` in progress, released
    evenly over ``arrival`` seconds (0: all at once), ``max_tokens`` per call (the original's
    2000), words from ``vocabulary`` (a ``position,term,type`` CSV) or the simulator's lexicon."""

    words: int = 200
    concurrency: int = 50
    arrival: float = 0.0
    max_tokens: int = 2000
    vocabulary: str | None = None

    def __post_init__(self) -> None:
        if self.words < 1 or self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError(f"Workload needs words, concurrency, max_tokens >= 1, got {self}")
        if not (self.arrival >= 0.0 and math.isfinite(self.arrival)):
            raise ValueError(f"Workload.arrival must be seconds >= 0, got {self.arrival!r}")

    def release_times(self) -> list[float]:
        """When each word becomes available (seconds from the start)."""
        step = self.arrival / self.words
        return [i * step for i in range(self.words)]


def load_words(count: int, vocabulary: str | Path | None = None) -> list[Word]:
    """``count`` words: from a ``position,term,type`` CSV, else the simulator's lexicon headwords
    (in file order, repeated with new positions when ``count`` exceeds the lexicon)."""
    source: list[tuple[str, str]]
    if vocabulary is not None:
        with Path(vocabulary).open(encoding="utf-8", newline="") as handle:
            source = [
                (row["term"].strip(), row.get("type") or "") for row in csv.DictReader(handle)
            ]
    else:
        source = [(entry.term, entry.pos) for entry in lexicon().entries]
    if not source:
        raise ValueError(f"no words in {vocabulary or 'the lexicon'}")
    return [
        Word(i + 1, source[i % len(source)][0], source[i % len(source)][1]) for i in range(count)
    ]


def _stage1_messages(word: Word) -> list[dict[str, str]]:
    return stage_request(word, 1)[0]


def _stage2_messages(word: Word, stage1: Mapping[str, Any]) -> list[dict[str, str]]:
    return stage_request(word, 2, stage1)[0]


def parse_stage1(text: str) -> dict[str, Any]:
    """The stage-1 JSON object (fenced or not), as the original parsed it (greedy ``{.*}``);
    raises ``ValueError``/``KeyError`` when it is not JSON or a required field is missing."""
    match = _JSON_OBJECT.search(text)
    if match is None:
        raise ValueError("stage 1: no JSON object in the answer")
    data = json.loads(match.group(0))
    if not isinstance(data, dict):
        raise TypeError("stage 1: the answer is not a JSON object")
    missing = [name for name in STAGE1_REQUIRED if data.get(name) is None]  # null too
    if missing:
        raise KeyError(f"stage 1: missing {', '.join(missing)}")
    return data


def parse_stage2(text: str) -> list[dict[str, str]]:
    """The stage-2 TSV rows (header lines skipped, at least 8 columns, an integer position);
    raises ``ValueError`` when no row parses (the header-only answer of the real pipeline)."""
    rows = []
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) < 8 or cells[0] == TSV_COLUMNS[0]:
            continue
        try:
            int(cells[0])
        except ValueError:
            continue
        rows.append(dict(zip(TSV_COLUMNS, cells, strict=False)))
    if not rows:
        raise ValueError("stage 2: no valid data rows")
    return rows


def _content(data: Any) -> str:
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    return content


def _body(model: str, messages: list[dict[str, str]], max_tokens: int) -> bytes:
    body = {"model": model, "messages": messages, "temperature": 0.7, "max_tokens": max_tokens}
    return json.dumps(body, ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------
# Instrumentation: every HTTP exchange, as the client saw it


@dataclass(frozen=True, slots=True)
class _Exchange:
    sent: float
    answered: float
    status: int  # 0: connection error; -1: cancelled (timeout)
    retry_after: float | None


class _RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps the simulator's transport; logs send time, answer time, status and retry-after."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.log: list[_Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = self.clock.now()
        status = -1
        retry_after: float | None = None
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.HTTPError:
            status = 0
            raise
        else:
            status = response.status_code
            hint = response.headers.get("retry-after")
            if hint is not None:
                with contextlib.suppress(ValueError):
                    retry_after = float(hint)
            return response
        finally:
            self.log.append(_Exchange(sent, self.clock.now(), status, retry_after))


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


# --------------------------------------------------------------------------------------------
# The original pipeline's primitives, modelled


class OriginalAPIError(Exception):
    """``fp``'s ``APIError`` (``RateLimitError`` and ``AuthenticationError`` are subclasses, so
    429 and 401 are retried like anything else)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OriginalCircuitOpen(OriginalAPIError):
    """The open breaker's error; raised inside ``_make_request`` it became an ``APIError`` and
    was retried."""


class OriginalCircuitBreaker:
    """``fp/circuit_breaker.py``'s ``CircuitBreaker(failure_threshold=5, recovery_timeout=60)``,
    modelled with its flaws (original-system.md §2.2):

    - every exception counts as a failure (429, 401 and bad bodies included);
    - the failure count never resets while CLOSED (4 failures, 100 successes, 1 failure: open);
    - OPEN becomes HALF_OPEN once ``recovery_timeout`` has passed since the *last failure*;
    - HALF_OPEN admits any number of concurrent trial calls; one success closes (count to 0),
      one failure reopens.

    ``trips`` counts CLOSED → OPEN; ``reopens`` HALF_OPEN → OPEN.
    """

    def __init__(
        self, failure_threshold: int = 5, recovery_timeout: float = 60.0, *, clock: Clock
    ) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.clock = clock
        self.state = "closed"
        self.failure_count = 0
        self.last_failure_time: float | None = None
        self.trips = 0
        self.reopens = 0
        self.rejected = 0

    def _before_call(self) -> None:
        if self.state == "open":
            last = self.last_failure_time if self.last_failure_time is not None else 0.0
            if self.clock.now() - last >= self.recovery_timeout:
                self.state = "half_open"
            else:
                self.rejected += 1
                raise OriginalCircuitOpen("Circuit breaker is OPEN")

    def _on_success(self) -> None:
        if self.state == "half_open":
            self.state = "closed"
            self.failure_count = 0
        # CLOSED: the count is left as it is (the flaw).

    def _on_failure(self) -> None:
        self.failure_count += 1
        self.last_failure_time = self.clock.now()
        if self.state == "half_open":
            self.state = "open"
            self.reopens += 1
        elif self.state == "closed" and self.failure_count >= self.failure_threshold:
            self.state = "open"
            self.trips += 1

    async def call(self, func: Callable[[], Awaitable[Any]]) -> Any:
        self._before_call()
        try:
            result = await func()
        except Exception:
            self._on_failure()
            raise
        self._on_success()
        return result


class OriginalTokenBucket:
    """``fp/rate_limiter.py``'s token bucket: ``rpm`` per minute refilled continuously
    (600 rpm = 10/s), ``burst`` tokens of capacity (20); ``acquire_async`` polls every 100 ms.
    (Its per-hour window, 36,000, never binds in these runs.)"""

    def __init__(
        self, rpm: float = ORIGINAL_RPM, burst: float = 20.0, *, clock: Clock, poll: float = 0.1
    ) -> None:
        self.rate = rpm / 60.0
        self.capacity = burst
        self.tokens = burst
        self.clock = clock
        self.poll = poll
        self.last = clock.now()

    def try_acquire(self) -> bool:
        now = self.clock.now()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    async def acquire_async(self) -> None:
        while not self.try_acquire():  # noqa: ASYNC110 - the original polls; modelled as such
            await asyncio.sleep(self.poll)


# --------------------------------------------------------------------------------------------
# Determinism for the peers: seeded randomness for tenacity, the virtual clock for pybreaker


@contextlib.contextmanager
def _deterministic_peers(seed: int, clock: VirtualClock) -> Iterator[None]:
    import pybreaker
    import tenacity.wait

    class _VirtualDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> Self:
            moment = VIRTUAL_EPOCH + _dt.timedelta(seconds=clock.now())
            return cls.fromtimestamp(moment.timestamp(), tz)

    with (
        mock.patch.object(tenacity.wait, "random", random.Random(seed)),
        mock.patch.object(pybreaker, "datetime", _VirtualDatetime),
    ):
        yield


# --------------------------------------------------------------------------------------------
# One policy


@dataclass
class PolicyRun:
    """One policy's run: ``words`` (one row per word: position, term, ok, error, release,
    start, end, latency), ``exchanges`` (one row per HTTP request: sent, answered, status,
    retry_after), ``load`` (the upstream's per-second series), ``stats`` (the upstream's
    counters, :meth:`~flashkit.sim.SimStats.to_dict`), ``breaker_trips`` (CLOSED → OPEN),
    ``completion`` (virtual seconds until the last word finished)."""

    policy: str
    words: pd.DataFrame
    exchanges: pd.DataFrame
    load: pd.DataFrame
    stats: dict[str, Any]
    breaker_trips: int
    completion: float
    notes: dict[str, Any] = field(default_factory=dict)


Process = Callable[[Word], Awaitable[None]]


async def _drive(
    workload: Workload, words: Sequence[Word], process: Process
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    origin = loop.time()
    gate = asyncio.Semaphore(workload.concurrency)
    records: list[dict[str, Any]] = []

    async def one(word: Word, release: float) -> None:
        delay = origin + release - loop.time()
        if delay > 0.0:
            await asyncio.sleep(delay)
        async with gate:
            start = loop.time() - origin
            error: str | None = None
            try:
                await process(word)
            except Exception as exc:
                error = _describe(exc)
            end = loop.time() - origin
        records.append(
            {
                "position": word.position,
                "term": word.term,
                "ok": error is None,
                "error": error,
                "release": release,
                "start": start,
                "end": end,
                "latency": end - start,
            }
        )

    await asyncio.gather(*(one(w, t) for w, t in zip(words, workload.release_times(), strict=True)))
    records.sort(key=lambda r: r["position"])
    return records


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, StructuredError):
        last = exc.details.get("last_error") if exc.details else None
        code = exc.code or ""
        if name == "RetryExhausted" and exc.__cause__ is not None:
            return f"RetryExhausted({_describe(exc.__cause__)})"
        return f"{name}({code})" if code else (f"{name}({last})" if last else name)
    status = getattr(exc, "status", None)
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    return f"{name}({status})" if status else name


def _limits_for(profile: FaultProfile) -> tuple[float, float | None]:
    """(requests per minute, tokens per minute) a client configured for ``profile`` uses."""
    return (profile.rpm if profile.rpm is not None else ORIGINAL_RPM), profile.tpm


async def _run_before(
    upstream: SimulatedUpstream,
    transport: _RecordingTransport,
    clock: VirtualClock,
    workload: Workload,
    words: Sequence[Word],
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    import tenacity

    bucket = OriginalTokenBucket(clock=clock)
    breaker = OriginalCircuitBreaker(5, 60.0, clock=clock)
    http = httpx.AsyncClient(
        base_url=BASE_URL,
        transport=transport,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(initial=1, max=10),
        retry=tenacity.retry_if_exception_type((httpx.HTTPError, OriginalAPIError)),
        reraise=True,
    )
    async def make_request(content: bytes) -> Any:
        await bucket.acquire_async()

        async def exchange() -> Any:
            try:
                async with asyncio.timeout(30.0):  # the original's 30 s client timeout
                    response = await http.post("/chat/completions", content=content)
            except TimeoutError as error:
                raise httpx.ReadTimeout("timed out") from error
            if response.status_code >= 400:  # 429 and 401 too; retry-after ignored
                raise OriginalAPIError(f"HTTP {response.status_code}", response.status_code)
            try:
                return response.json()
            except Exception as error:  # every non-HTTP exception: APIError("Unexpected error")
                raise OriginalAPIError("Unexpected error") from error

        return await breaker.call(exchange)

    async def process(word: Word) -> None:
        data = await make_request(_body(STAGE1_MODEL, _stage1_messages(word), workload.max_tokens))
        stage1 = parse_stage1(_content(data))  # outside the retry loop: a bad answer fails
        data = await make_request(
            _body(STAGE2_MODEL, _stage2_messages(word, stage1), workload.max_tokens)
        )
        parse_stage2(_content(data))

    try:
        records = await _drive(workload, words, process)
    finally:
        await http.aclose()
    notes = {"breaker_reopens": breaker.reopens, "breaker_rejected": breaker.rejected}
    return records, breaker.trips, notes


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
    transport: _RecordingTransport,
    clock: VirtualClock,
    profile: FaultProfile,
    workload: Workload,
    seed: int,
    after_limiter: AfterLimiter,
    after_changes: Mapping[str, Any] | None = None,
) -> tuple[LLMClient, Settings]:
    settings = after_settings(profile, workload)
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
        transport=transport,
        clock=clock,
        rng=random.Random(seed),
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


async def _run_after(
    upstream: SimulatedUpstream,
    transport: _RecordingTransport,
    clock: VirtualClock,
    workload: Workload,
    words: Sequence[Word],
    seed: int,
    after_limiter: AfterLimiter,
    after_changes: Mapping[str, Any] | None,
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """The flashcard pipeline itself (``flashkit.flashcards.pipeline.process``, what
    ``flashkit process`` runs) on an in-memory database, with the default settings."""
    client, settings = _after_client(
        transport, clock, upstream.profile, workload, seed, after_limiter, after_changes
    )
    release = workload.release_times()
    origin = clock.now()
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
                    _lab_vocabulary(words),
                    client,
                    store=store,
                    batch_size=settings.words_in_flight,
                    spares=settings.run.spares,
                    release=release if workload.arrival > 0 else None,
                    on_word=record,
                )
    finally:
        quiet.setLevel(level)
    records.sort(key=lambda r: r["position"])
    breaker = client.breaker
    trips = breaker.stats.trips if breaker is not None else 0
    notes: dict[str, Any] = {
        "breaker_rejected": breaker.stats.rejected if breaker else 0,
        "spares": report.progress.spares,
    }
    return records, trips, notes


async def _run_peer(
    upstream: SimulatedUpstream,
    transport: _RecordingTransport,
    clock: VirtualClock,
    workload: Workload,
    words: Sequence[Word],
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    import aiolimiter
    import pybreaker
    import tenacity

    rpm, _ = _limits_for(upstream.profile)
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
    http = httpx.AsyncClient(
        base_url=BASE_URL,
        transport=transport,
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60.0,
    )

    @tenacity.retry(
        wait=tenacity.wait_random_exponential(min=1, max=60),
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
        return parse(_content(data))

    async def process(word: Word) -> None:
        stage1 = await call_stage(
            _body(STAGE1_MODEL, _stage1_messages(word), workload.max_tokens), parse_stage1
        )
        await call_stage(
            _body(STAGE2_MODEL, _stage2_messages(word, stage1), workload.max_tokens),
            parse_stage2,
        )

    try:
        records = await _drive(workload, words, process)
    finally:
        await http.aclose()
    return records, counts["trips"], {"breaker_reopens": counts["reopens"]}


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
    transport = _RecordingTransport(upstream.transport(), clock)

    async def main() -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        if policy == "before":
            return await _run_before(upstream, transport, clock, workload, words)
        if policy == "after":
            return await _run_after(
                upstream, transport, clock, workload, words, seed, after_limiter, after_changes
            )
        if policy == "peer":
            return await _run_peer(upstream, transport, clock, workload, words)
        raise ValueError(f"policy={policy!r}: use one of {POLICIES}")

    if policy in ("before", "peer"):
        with _deterministic_peers(seed, clock):
            records, trips, notes = run_virtual(main(), clock=clock)
    else:
        records, trips, notes = run_virtual(main(), clock=clock)
    words_frame = pd.DataFrame(records)
    exchanges = pd.DataFrame(
        [asdict(x) for x in transport.log], columns=["sent", "answered", "status", "retry_after"]
    )
    load = upstream.load.to_frame()
    return PolicyRun(
        policy=policy,
        words=words_frame,
        exchanges=exchanges,
        load=load,
        stats=upstream.stats.to_dict(),
        breaker_trips=trips,
        completion=float(words_frame["end"].max()) if not words_frame.empty else 0.0,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Metrics and verdicts


_Z99: Final = 2.3263478740408408  # the standard normal's 99th percentile


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


def _tokens_per_request(run: PolicyRun, profile: FaultProfile, workload: Workload) -> float:
    """Tokens one call costs the upstream's limit, from the run's own counters."""
    stats = run.stats
    answered = stats["ok"]
    if not answered:
        return 0.0
    if profile.limit_mode == "fixed_window":  # windows count max_tokens, never refunded
        return float(stats["prompt_tokens"] / answered + workload.max_tokens)
    return float((stats["prompt_tokens"] + stats["completion_tokens"]) / answered)


def _metrics_row(
    run: PolicyRun, profile: FaultProfile, workload: Workload, ideal: float
) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class TargetVerdict:
    """One plan target: ``metric`` must fall by ``reduction`` (0.5 = −50 %) from ``before`` to
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
    """The action plan's targets: three after vs before, and the two data-layer ones (after
    against an absolute target; None when not measured)."""

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
    """The plan's targets (−50 % error rate, −30 % p99 latency, −80 % breaker trips) judged on
    the ``before`` and ``after`` rows of ``metrics`` (indexed by policy). The p99 target is
    judged on ``p99_time_to_card``: every word's time to its cards, a failed word counted as
    never done, so a policy cannot look fast by failing its slow words."""
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

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe summary (metrics, verdicts, workload, upstream counters)."""
        metrics = self.metrics.reset_index().replace({math.inf: None})
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
    """Run the same workload under each of ``policies`` and measure the plan's success metrics.

    Metrics per policy (virtual seconds): ``error_rate`` (words failed / words),
    ``p50_time_to_card`` and ``p99_time_to_card`` (every word, from its release to its cards; a
    failed word never got them: inf, so the p99 is inf when over 1 % failed), ``p99_call`` (per
    HTTP request, as the upstream sees it), ``p99_latency_ok`` (successful words only, from
    starting the word), ``breaker_trips`` (CLOSED → OPEN),
    ``amplification`` (upstream requests, from the upstream's own stats, per successful word),
    ``rate_limited_429`` (429s the upstream sent), ``sent_in_retry_after`` (requests sent while
    a received ``retry-after`` was running), ``completion_seconds`` vs ``ideal_seconds``
    (:func:`ideal_seconds`). With ``data_layer`` (and a preset ``profile``), the plan's cache
    hit rate and pool efficiency are measured too (:func:`flashkit.lab.datalayer.run_data_layer`,
    at most 200 words a list) and judged against 85 % and 95 %.
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
        resolved, workload, tokens_per_request=_tokens_per_request(best, resolved, workload)
    )
    metrics = pd.DataFrame(
        [_metrics_row(run, resolved, workload, ideal) for run in runs.values()]
    ).set_index("policy")
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


# --------------------------------------------------------------------------------------------
# Plots

_COLORS: Final = {"before": "tab:red", "after": "tab:green", "peer": "tab:blue"}


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
