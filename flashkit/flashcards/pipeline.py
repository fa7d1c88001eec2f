"""The flashcard run: every word of a list through both stages, its state kept in a store.

>>> with Store.open("sqlite:///flashkit.db") as store:
...     report = await process(vocabulary, client, store=store, batch_size=50)
>>> report.counts                    # {"pending": 0, "stage1_done": 0, "done": 998, "failed": 2}

Words are claimed from the store in input order, at most ``batch_size`` in flight. Each stage's
result is committed before the next stage starts (stage 1 before stage 2 is sent, the cards
before the word counts as done), so a crash at any instant loses at most the calls in flight, and
a rerun never repeats a finished stage. Setting ``stop`` stops taking new words; calls in flight
get ``grace`` seconds, then they are cancelled and their words stay pending for the next run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import json
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from flashkit.client import ChatResult, LLMClient
from flashkit.errors import ExternalServiceError, RetryExhausted, StructuredError, classify
from flashkit.flashcards._race import Race
from flashkit.flashcards.stages import (
    FlashcardRow,
    Stage1Result,
    Word,
    stage_model,
    stage_request,
    to_jsonable,
)
from flashkit.flashcards.store import CallRecord, Claim, Store
from flashkit.flashcards.vocabulary import Vocabulary, VocabularyItem

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_SPARES",
    "RunProgress",
    "RunReport",
    "WordOutcome",
    "failure_code",
    "generate_flashcard",
    "process",
]

DEFAULT_GRACE: Final = 5.0
"""Seconds calls in flight may finish after a stop, before they are cancelled."""
_LATENCY_SAMPLES: Final = 200  # recent call latencies that set when a spare copy is due
DEFAULT_SPARES: Final = 2
"""Spare copies an unfinished call may get at the end of a run (see :func:`process`)."""


@dataclass(frozen=True, slots=True)
class WordOutcome:
    """What became of one word in this run: ``cards`` when done, else ``error``
    (``StructuredError.to_dict()``) and its :func:`failure_code`; ``started`` and ``finished``
    on the run's clock (seconds)."""

    word_id: int
    item: VocabularyItem
    cards: tuple[FlashcardRow, ...] = ()
    error: Mapping[str, Any] | None = None
    started: float = 0.0
    finished: float = 0.0
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class RunProgress:
    """Live counters of a run, for a progress display: ``total`` words of the list to do,
    ``done`` / ``failed`` in this run, ``in_flight``, stage ``calls`` made (``cached`` of them
    answered from the cache), ``spares`` (extra copies raced at the tail), ``limiter_wait``
    seconds spent waiting for the limiters, and ``started`` on the run's clock."""

    total: int = 0
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    calls: int = 0
    cached: int = 0
    spares: int = 0
    limiter_wait: float = 0.0
    started: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.done + self.failed


@dataclass(frozen=True, slots=True)
class RunReport:
    """The end of a run: its id, the list's ``counts`` per state afterwards, ``interrupted``
    when it stopped early, ``seconds`` on its clock, and this run's :class:`RunProgress`."""

    run_id: int
    source_id: int
    counts: Mapping[str, int]
    interrupted: bool
    seconds: float
    progress: RunProgress


def _request_sha256(model: str, messages: Sequence[Mapping[str, Any]]) -> str:
    body = json.dumps({"model": model, "messages": list(messages)}, ensure_ascii=False,
                      sort_keys=True, separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()


def _call_record(stage: int, sha: str, result: ChatResult) -> CallRecord:
    """The ledger row of a stage's call: ``ok`` with its attempts and tokens, or ``cached``
    (answered from the cache: nothing sent, nothing spent)."""
    usage = result.usage if not result.cached else None
    return CallRecord(
        stage=stage,
        status="cached" if result.cached else "ok",
        attempts=result.attempts,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency=result.latency,
        request_sha256=sha,
    )


class _Failed(Exception):
    """A stage's call failed for good (retries exhausted or not retryable)."""

    def __init__(self, error: StructuredError, stage: int, sha: str) -> None:
        super().__init__(str(error))
        self.error, self.stage, self.sha = error, stage, sha


def failure_code(error: StructuredError) -> str:
    """The code a failure is grouped by: the last attempt's error code when retries ran out
    (``rate_limited``, ``server_error_503``, ...), else the error's own."""
    cause = error.__cause__
    if isinstance(error, RetryExhausted) and isinstance(cause, StructuredError):
        return cause.code
    return error.code


def _structured(error: BaseException) -> StructuredError:
    if isinstance(error, StructuredError):
        return error
    return classify(error) or ExternalServiceError(str(error), original_exception=error)


async def generate_flashcard(
    client: LLMClient,
    word: Word,
    stage: int,
    *,
    stage1: Stage1Result | Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """One call of the pipeline: stage 1 (the nuance analysis) or stage 2 (the cards) of one word,
    parsed and validated inside the retry loop (unparsable answers are retried). Stage 2 needs
    ``stage1=``. Returns ``{"stage", "position", "term", "result", "attempts", "usage",
    "latency"}``; ``result`` is the stage-1 dict or the list of card dicts."""
    messages, parse = stage_request(word, stage, stage1)
    chat = await client.chat(
        messages,
        model=stage_model(stage),
        max_tokens=max_tokens,
        temperature=temperature,
        parse=parse,
        stage=stage,
    )
    return {
        "stage": stage,
        "position": word.position,
        "term": word.term,
        "result": to_jsonable(chat.raw.get("parsed")),
        "attempts": chat.attempts,
        "usage": dataclasses.asdict(chat.usage) if chat.usage is not None else None,
        "latency": chat.latency,
    }


@dataclass(eq=False)
class _Run:
    """One run's loop: claims, per-word tasks, commits, and spare copies at the tail."""

    store: Store
    client: LLMClient
    run_id: int
    source_id: int
    progress: RunProgress
    on_word: Callable[[WordOutcome], None] | None
    spares: int
    races: dict[int, Race[ChatResult]] = field(default_factory=dict)
    stages: dict[int, int] = field(default_factory=dict)  # word id -> its race's stage
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))

    async def _stage(
        self, claim: Claim, stage: int, stage1: Stage1Result | None
    ) -> tuple[ChatResult, str]:
        messages, parse = stage_request(claim.item, stage, stage1)
        model = stage_model(stage)
        sha = _request_sha256(model, messages)
        self.progress.calls += 1
        race = Race(
            lambda: self.client.chat(messages, model=model, parse=parse, stage=stage),
            now=self.client.clock.now(),
        )
        self.races[claim.word_id], self.stages[claim.word_id] = race, stage
        try:
            result = await race.result()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise _Failed(_structured(error), stage, sha) from error
        finally:
            del self.races[claim.word_id], self.stages[claim.word_id]
        self.progress.limiter_wait += result.limiter_wait
        if result.cached:
            self.progress.cached += 1
        else:
            self.latencies.append(result.latency)
        return result, sha

    async def word(self, claim: Claim) -> None:
        """Both stages of one claimed word (stage 2 only when stage 1 is stored), each
        committed as soon as it answers; a failed call is committed with its error. Errors of
        the store propagate (they end the run)."""
        started = self.client.clock.now()
        stage1 = claim.stage1
        try:
            if stage1 is None:
                result, sha = await self._stage(claim, 1, None)
                stage1 = result.raw["parsed"]
                self.store.save_stage1(
                    self.run_id, claim.word_id, stage1, _call_record(1, sha, result)
                )
            result, sha = await self._stage(claim, 2, stage1)
        except _Failed as failed:
            self._failed(claim, failed, started)
            return
        cards: tuple[FlashcardRow, ...] = result.raw["parsed"]
        self.store.save_cards(self.run_id, claim.word_id, cards, _call_record(2, sha, result))
        self.progress.done += 1
        if self.on_word is not None:
            now = self.client.clock.now()
            self.on_word(WordOutcome(claim.word_id, claim.item, cards, None, started, now))

    def _failed(self, claim: Claim, failed: _Failed, started: float) -> None:
        error = failed.error
        code = failure_code(error)
        data = error.to_dict()
        attempts = getattr(error, "attempts", None)
        call = CallRecord(
            stage=failed.stage,
            status=code,
            attempts=attempts if isinstance(attempts, int) else 1,
            prompt_tokens=0,
            completion_tokens=0,
            latency=0.0,
            request_sha256=failed.sha,
        )
        self.store.save_failure(self.run_id, claim.word_id, data, call)
        self.progress.failed += 1
        self.progress.errors[code] = self.progress.errors.get(code, 0) + 1
        if self.on_word is not None:
            now = self.client.clock.now()
            self.on_word(WordOutcome(claim.word_id, claim.item, (), data, started, now, code))

    def _spare_delay(self) -> float:
        """How long a call runs before it may get a spare copy: the median of the run's recent
        call latencies (seconds; 1 s before any answer)."""
        if not self.latencies:
            return 1.0
        return statistics.median(self.latencies)

    def _send_spares(self, free: int) -> float | None:
        """The list is all claimed and slots are idle: race the unfinished calls that have run
        longer than :meth:`_spare_delay` since their latest copy with a spare (at most
        ``spares`` each), oldest first, while the client may send them without holding anyone
        up (:meth:`LLMClient.may_send_spare`). Returns the seconds until the next call becomes
        due for one (None: none will)."""
        now, delay = self.client.clock.now(), self._spare_delay()
        free -= sum(race.running - 1 for race in self.races.values())
        to_come = sum(stage == 1 for stage in self.stages.values())  # each needs a stage 2
        wake: float | None = None
        for race in sorted(self.races.values(), key=lambda r: r.started):
            if race.copies > self.spares:
                continue
            due = race.latest + delay - now
            if due > 0 or free <= 0:
                wake = due if wake is None else min(wake, due)
                continue
            if not self.client.may_send_spare(reserve=to_come):
                return delay
            race.add(now)
            self.progress.spares += 1
            free -= 1
        return None if wake is None else max(wake, 1e-3)

    async def loop(
        self,
        batch_size: int,
        retry_failed: bool,
        stop: asyncio.Event,
        grace: float,
        release: Sequence[float] | None,
    ) -> bool:
        """Run until every word is claimed and finished, or ``stop`` is set (returns True then).
        ``release``: when each word of the list may start (seconds from now, in list order)."""
        tasks: set[asyncio.Task[None]] = set()
        stopping = asyncio.ensure_future(stop.wait())
        refill = max(1, batch_size // 10)  # claim in small batches: fewer transactions
        exhausted = False
        clock = self.client.clock
        origin, claimed = clock.now(), 0
        try:
            while not stop.is_set():
                free = batch_size - len(tasks)
                wanted, wake = free, None
                if release is not None and claimed < len(release):
                    due = bisect.bisect_right(release, clock.now() - origin)
                    wanted = min(free, due - claimed)
                    if due < len(release):
                        wake = max(0.0, origin + release[due] - clock.now())
                if not exhausted and wanted > 0 and (wanted >= refill or not tasks or release):
                    claims = self.store.claim(
                        self.run_id, self.source_id, wanted, retry_failed=retry_failed
                    )
                    claimed += len(claims)
                    exhausted = len(claims) < wanted
                    tasks.update(asyncio.ensure_future(self.word(c)) for c in claims)
                if exhausted and self.spares:
                    spare_wake = self._send_spares(batch_size - len(tasks))
                    if spare_wake is not None:
                        wake = spare_wake if wake is None else min(wake, spare_wake)
                self.progress.in_flight = len(tasks)
                if not tasks and wake is None:
                    return False
                done, _ = await asyncio.wait(
                    {*tasks, stopping}, timeout=wake, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {stopping}:
                    tasks.discard(task)
                    task.result()  # a bug in word() (e.g. the store failed) ends the run
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
            return True
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.progress.in_flight = 0


async def process(
    vocabulary: Vocabulary,
    client: LLMClient,
    *,
    store: Store,
    items: Sequence[VocabularyItem] | None = None,
    batch_size: int = 50,
    retry_failed: bool = False,
    stop: asyncio.Event | None = None,
    grace: float = DEFAULT_GRACE,
    on_word: Callable[[WordOutcome], None] | None = None,
    progress: RunProgress | None = None,
    settings_json: str = "{}",
    spares: int = DEFAULT_SPARES,
    release: Sequence[float] | None = None,
) -> RunReport:
    """Process the list's words (``items``, default all of ``vocabulary.items``) with
    ``client``, state in ``store``: register the list, start a run, claim and process words
    (at most ``batch_size`` in flight) until none is left or ``stop`` is set, then close the
    run. ``retry_failed`` takes only the words that failed before. ``on_word(outcome)`` is
    called as each word finishes; ``progress`` is updated live. Failures of single words never
    stop the run; an error of the store does (after the run is closed).

    ``spares``: once every word is claimed and slots sit idle, each unfinished call may be raced
    by up to this many spare copies (the first answer wins), paid from the retry budget and
    sent only when the limiters have room: a run's end is not left to its unluckiest words.
    ``release``: seconds from the start at which each word may begin (sorted; a workload whose
    words arrive over time)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"process(batch_size={batch_size!r}): must be an int >= 1, e.g. 50")
    items = vocabulary.items if items is None else items
    stop = stop if stop is not None else asyncio.Event()
    progress = progress if progress is not None else RunProgress()
    clock = client.clock
    source_id = store.register(vocabulary, items)
    before = store.counts(source_id)
    progress.total = before["failed"] if retry_failed else before["pending"] + before["stage1_done"]
    progress.started = clock.now()
    run_id = store.start_run(
        source_id, provider=client.provider, model=client.model, settings=settings_json
    )
    run = _Run(store, client, run_id, source_id, progress, on_word, spares)
    status = "crashed"
    interrupted = False
    try:
        interrupted = await run.loop(batch_size, retry_failed, stop, grace, release)
        status = "interrupted" if interrupted else "done"
    finally:
        with contextlib.suppress(StructuredError):
            store.finish_run(run_id, status, clock_seconds=clock.now() - progress.started)
    return RunReport(
        run_id=run_id,
        source_id=source_id,
        counts=store.counts(source_id),
        interrupted=interrupted,
        seconds=clock.now() - progress.started,
        progress=progress,
    )
