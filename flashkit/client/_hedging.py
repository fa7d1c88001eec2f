"""Hedged requests: a second copy of a slow attempt, sent only when nobody waits for it.

An attempt's request that has not answered after the hedge delay (seconds: a fixed number, or
:class:`~flashkit.client.FromLatency`, a high quantile of recent attempts) may get one copy; the
first good answer wins and the other is cancelled. The copy is an extra request, so it is sent
only from capacity nobody else is asking for (:func:`take_room`): it is skipped while a server's
``retry-after`` runs, while any of the client's own attempts waits for a slot or on the limiters
(the client is saturated: the copy would compete with them), when the limiters lack room for it,
and when the retry budget refuses. Its units are taken with ``try_acquire``, which never waits
and never jumps ahead of a queued ``acquire`` (every :class:`~flashkit.ratelimit.Limiter` serves
its waiters first, other clients' included). The argument, and the trap a fixed delay falls
into: ``docs/design/hedging.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

import httpx2

from flashkit.budget import RetryBudget
from flashkit.client._latency import FromLatency, LatencyTracker
from flashkit.ratelimit import Limiter

__all__ = ["HEDGE_SKIPS", "RECHECK", "Hedger", "HedgeStats", "SkipReason", "has_room", "take_room"]

RECHECK: Final = 1.0
"""Seconds between looks at a hedge delay not known yet (too few samples) while a request
runs: a request sent in a run's first seconds still gets its copy once it is known to be slow."""

SkipReason = Literal["gate", "queued", "limiter", "budget"]
HEDGE_SKIPS: Final[tuple[SkipReason, ...]] = ("gate", "queued", "limiter", "budget")
"""Why a hedge was not sent: ``gate`` (a server's retry-after is running), ``queued`` (one of
the client's attempts waits for a slot or on a limiter), ``limiter`` (no room for it now:
``remaining`` too low or ``try_acquire`` refused), ``budget`` (the retry budget refused)."""


class HedgeStats(NamedTuple):
    """Hedges since the client was built: ``sent``, ``won`` (the hedge's answer was used),
    ``skipped`` (due, but not sent) and ``skipped_by`` (reason -> count; see
    :data:`HEDGE_SKIPS`)."""

    sent: int
    won: int
    skipped: int
    skipped_by: dict[str, int]


def has_room(
    charges: Sequence[tuple[Limiter | None, float]], *, key: str, budget: RetryBudget | None
) -> bool:
    """Whether every limiter has ``remaining`` room for its units now (as it knows without a
    round trip) and the ``budget`` grants a retry token (taken when it does): what a speculative
    copy of a whole call needs (:meth:`LLMClient.may_send_spare`)."""
    for limiter, count in charges:
        if limiter is not None and limiter.remaining(key) < count:
            return False
    return budget is None or budget.try_acquire_retry()


async def take_room(
    charges: Sequence[tuple[Limiter | None, float]],
    *,
    key: str,
    budget: RetryBudget | None,
    queued: int = 0,
) -> SkipReason | None:
    """Take what one extra request costs, or nothing: None when taken, else why not.

    ``charges``: (limiter, units) pairs, a None limiter skipped; ``queued``: the caller's
    attempts waiting now for a slot or on these limiters (any: refused, the extra request would
    compete with them). Limiters are asked ``remaining`` first (no side effect), then the
    ``budget`` for a retry token, then ``try_acquire`` on each (never ahead of a waiter); units
    taken from one limiter are given back when a later one refuses."""
    if queued > 0:
        return "queued"
    for limiter, count in charges:
        if limiter is not None and limiter.remaining(key) < count:
            return "limiter"
    if budget is not None and not budget.try_acquire_retry():
        return "budget"
    taken: list[tuple[Limiter, float]] = []
    for limiter, count in charges:
        if limiter is None:
            continue
        if not limiter.try_acquire(key, count).allowed:
            for holder, units in taken:
                await holder.adjust(key, 0, estimated_count=units)
            return "limiter"
        taken.append((limiter, count))
    return None


@dataclass(eq=False, slots=True)
class Hedger:
    """When an attempt's request gets a hedge (``after``: seconds, or :class:`FromLatency` on
    ``tracker``), the race between the two, and the counts (:attr:`stats`)."""

    after: float | FromLatency
    tracker: LatencyTracker
    sent: int = 0
    won: int = 0
    skipped_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HEDGE_SKIPS, 0))

    def delay(self) -> float | None:
        """Seconds after which a slow request gets a hedge now (None: not yet, too few
        samples)."""
        after = self.after
        return after if isinstance(after, float | int) else after.seconds(self.tracker)

    @property
    def stats(self) -> HedgeStats:
        return HedgeStats(self.sent, self.won, sum(self.skipped_by.values()), dict(self.skipped_by))

    async def race(
        self,
        send: Callable[[], Awaitable[httpx2.Response]],
        admit: Callable[[], Awaitable[SkipReason | None]],
        delay: float | None,
    ) -> tuple[httpx2.Response, Literal["sent", "won"] | SkipReason | None]:
        """``send()`` now; if it has not answered after ``delay`` seconds, ``admit()`` a hedge
        and ``send()`` it. ``delay`` None: not known yet (too few samples); :meth:`delay` is
        asked again every :data:`RECHECK` seconds while the request runs, and the hedge is due
        once the request has run longer than the delay it returns. Returns the response used
        (the first good one; when neither is good, the first to finish) and what happened to
        the hedge: ``"sent"`` (the first request's answer was used), ``"won"`` (the hedge's),
        the reason it was skipped, or None (it was not due: the first answered before)."""
        first: asyncio.Future[httpx2.Response] = asyncio.ensure_future(send())
        tasks = [first]
        try:
            if not await self._outlasts(first, delay):
                return first.result(), None
            reason = await admit()
            if reason is not None:
                self.skipped_by[reason] += 1
                return await first, reason
            self.sent += 1
            tasks.append(asyncio.ensure_future(send()))
            fallback: asyncio.Future[httpx2.Response] | None = None
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=tasks.index):
                    if task.exception() is None and task.result().status_code < 400:
                        if task is not first:
                            self.won += 1
                            return task.result(), "won"
                        return task.result(), "sent"
                    if fallback is None:
                        fallback = task
            if fallback is None:  # pragma: no cover - asyncio.wait returns at least one
                raise RuntimeError("hedging: no request finished")
            return fallback.result(), "sent"  # neither answered well: the first to finish
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warnings

    async def _outlasts(self, first: asyncio.Future[httpx2.Response], delay: float | None) -> bool:
        """Wait until ``first`` answers (False) or its hedge is due (True): after ``delay``
        seconds, or, while the delay is unknown (None), once :meth:`delay` knows one and
        ``first`` has run longer (looking every :data:`RECHECK` seconds)."""
        waited = 0.0
        while delay is None or waited < delay:
            step = RECHECK if delay is None else delay - waited
            done, _ = await asyncio.wait((first,), timeout=step)
            if done:
                return False
            waited += step
            if delay is None:
                delay = self.delay()
        return True
