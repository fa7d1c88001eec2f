"""What a policy runs on (:class:`RunSetup`) and what its run records: every HTTP exchange as the
client saw it (:class:`RecordingTransport`), one row per word (:func:`drive`, for the policies
that bring their own per-word coroutine), and the whole run (:class:`PolicyRun`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pandas as pd

from flashkit.clock import Clock, VirtualClock
from flashkit.errors import StructuredError
from flashkit.lab.success.workload import Word, Workload
from flashkit.sim import SimulatedUpstream

__all__ = [
    "describe",
    "drive",
    "Exchange",
    "Outcome",
    "PolicyRun",
    "Process",
    "RecordingTransport",
    "RunSetup",
]


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request: when it was ``sent`` and ``answered``, its ``status`` (0: connection
    error; -1: cancelled, e.g. a timeout) and the ``retry_after`` it carried."""

    sent: float
    answered: float
    status: int
    retry_after: float | None


class RecordingTransport(httpx2.AsyncBaseTransport):
    """Wraps the simulator's transport; logs send time, answer time, status and retry-after."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.log: list[Exchange] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        sent = self.clock.now()
        status = -1
        retry_after: float | None = None
        try:
            response = await self.inner.handle_async_request(request)
        except httpx2.HTTPError:
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
            self.log.append(Exchange(sent, self.clock.now(), status, retry_after))


@dataclass(frozen=True, slots=True)
class RunSetup:
    """What every policy runs on: the fresh simulated ``upstream``, the ``transport`` to it that
    records the exchanges, the run's virtual ``clock``, the ``workload`` and its ``words``, and
    the ``seed`` of the run."""

    upstream: SimulatedUpstream
    transport: RecordingTransport
    clock: VirtualClock
    workload: Workload
    words: Sequence[Word]
    seed: int

    def rng(self) -> random.Random:
        """A fresh ``random.Random(seed)`` for the policy's own draws."""
        return random.Random(self.seed)


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
"""A policy's work on one word (both stages); raises when the word fails."""
Outcome = tuple[list[dict[str, Any]], int, dict[str, Any]]
"""What a policy's run returns: one record per word (:func:`drive`'s), breaker trips
(CLOSED → OPEN), notes."""


async def drive(
    workload: Workload, words: Sequence[Word], process: Process
) -> list[dict[str, Any]]:
    """Run ``process`` on every word, each released at its time, at most ``concurrency`` at
    once; one record per word (the rows of :attr:`PolicyRun.words`), in position order."""
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
                error = describe(exc)
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


def describe(exc: BaseException) -> str:
    """A failed word's error, short: the exception's name with its code or HTTP status."""
    name = type(exc).__name__
    if isinstance(exc, StructuredError):
        last = exc.details.get("last_error") if exc.details else None
        code = exc.code or ""
        if name == "RetryExhausted" and exc.__cause__ is not None:
            return f"RetryExhausted({describe(exc.__cause__)})"
        return f"{name}({code})" if code else (f"{name}({last})" if last else name)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)  # openai's
    if isinstance(exc, httpx2.HTTPStatusError):
        status = exc.response.status_code
    return f"{name}({status})" if status else name
