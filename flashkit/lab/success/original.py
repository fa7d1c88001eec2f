"""The original (pre-flashkit) pipeline's resilience policy, reproduced: its token bucket, its
circuit breaker with its flaws, its error classes, its stage-2 row rule, and the ``before``
policy (:func:`run_before`) that puts them together with tenacity as the original did.
Needs tenacity (the ``bench`` extra)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx2

from flashkit.clock import Clock
from flashkit.flashcards.stages import TSV_COLUMNS, parse_stage1
from flashkit.lab.success._record import Outcome, Process, RunSetup, drive
from flashkit.lab.success._waits import jittered_exponential
from flashkit.lab.success.workload import (
    API_KEY,
    BASE_URL,
    Word,
    Workload,
    reply_content,
    request_body,
)

__all__ = [
    "ORIGINAL_RPM",
    "original_stage1",
    "original_stages",
    "OriginalAPIError",
    "OriginalCircuitBreaker",
    "OriginalCircuitOpen",
    "OriginalTokenBucket",
    "parse_stage2",
    "run_before",
    "StageCall",
]

ORIGINAL_RPM: Final = 600.0
"""The original pipeline's configured request rate (``REQUESTS_PER_MINUTE``)."""


class OriginalAPIError(Exception):
    """The original's ``APIError`` (its ``RateLimitError`` and ``AuthenticationError`` are
    subclasses, so 429 and 401 are retried like anything else)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OriginalCircuitOpen(OriginalAPIError):
    """The open breaker's error; raised inside the original's request function it became an
    ``APIError`` and was retried."""


class OriginalCircuitBreaker:
    """The original's ``CircuitBreaker(failure_threshold=5, recovery_timeout=60)``, with its
    flaws:

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
    """The original's token bucket: ``rpm`` per minute refilled continuously (600 rpm = 10/s),
    ``burst`` tokens of capacity (20); ``acquire_async`` polls every 100 ms. (Its per-hour
    window, 36,000, never binds in these runs.)"""

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


def original_stage1(text: str) -> dict[str, Any]:
    """A stage-1 answer as the original accepted it, as the JSON object stage 2 is sent:
    :func:`~flashkit.flashcards.stages.parse_stage1` (the one schema), and ``comparison`` not
    null (the original's ``Stage1Response`` required it). Raises ``ValueError``, ``KeyError``
    or ``TypeError`` like the parser."""
    result = parse_stage1(text)
    if result.comparison is None:
        raise KeyError("stage 1: missing comparison")
    return result.to_dict()


def parse_stage2(text: str) -> list[dict[str, str]]:
    """The stage-2 TSV rows as the original read them (header lines skipped, at least 8
    columns, an integer position); raises ``ValueError`` when no row parses (the header-only
    answer of the real pipeline)."""
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


StageCall = Callable[[bytes, Callable[[str], Any]], Awaitable[Any]]
"""Sends one stage's request body and returns the answer's content parsed by the given parser."""


def original_stages(workload: Workload, call_stage: StageCall) -> Process:
    """A word's two stages as the original ran them, each through ``call_stage``: stage 1's
    answer parsed by :func:`original_stage1`, then stage 2's request built from it and its
    answer parsed by :func:`parse_stage2`."""

    async def process(word: Word) -> None:
        stage1 = await call_stage(request_body(word, 1, workload.max_tokens), original_stage1)
        await call_stage(request_body(word, 2, workload.max_tokens, stage1), parse_stage2)

    return process


async def run_before(run: RunSetup) -> Outcome:
    """The original's policy: tenacity ``@retry(stop_after_attempt(3),
    wait_exponential_jitter(initial=1, max=10), retry_if_exception_type((httpx.HTTPError,
    APIError)))`` around an attempt that waits for the token bucket, goes through the breaker
    and sends; every HTTP status >= 400 (429 and 401 too) is an ``APIError`` and retried,
    ``retry-after`` is ignored, a body that is not JSON is ``APIError("Unexpected error")``; the
    content is parsed *after* the retry loop, so a broken answer fails the word at once."""
    import tenacity  # the bench extra, optional: only this policy needs it

    bucket = OriginalTokenBucket(clock=run.clock)
    breaker = OriginalCircuitBreaker(5, 60.0, clock=run.clock)
    http = httpx2.AsyncClient(
        base_url=BASE_URL,
        transport=run.transport,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=jittered_exponential(run.rng(), initial=1.0, maximum=10.0),
        retry=tenacity.retry_if_exception_type((httpx2.HTTPError, OriginalAPIError)),
        reraise=True,
    )
    async def make_request(content: bytes) -> Any:
        await bucket.acquire_async()

        async def exchange() -> Any:
            try:
                async with asyncio.timeout(30.0):  # the original's 30 s client timeout
                    response = await http.post("/chat/completions", content=content)
            except TimeoutError as error:
                raise httpx2.ReadTimeout("timed out") from error
            if response.status_code >= 400:  # 429 and 401 too; retry-after ignored
                raise OriginalAPIError(f"HTTP {response.status_code}", response.status_code)
            try:
                return response.json()
            except Exception as error:  # every non-HTTP exception: APIError("Unexpected error")
                raise OriginalAPIError("Unexpected error") from error

        return await breaker.call(exchange)

    async def call_stage(content: bytes, parse: Callable[[str], Any]) -> Any:
        # parsed outside the retry loop: a broken answer fails the word
        return parse(reply_content(await make_request(content)))

    process = original_stages(run.workload, call_stage)
    try:
        records = await drive(run.workload, run.words, process)
    finally:
        await http.aclose()
    notes = {"breaker_reopens": breaker.reopens, "breaker_rejected": breaker.rejected}
    return records, breaker.trips, notes
