"""One result from the first of several copies of a call to succeed (speculative copies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Race"]

T = TypeVar("T")


class Race(Generic[T]):
    """Runs ``make()`` now, and again for each :meth:`add`; :meth:`result` is the first copy's
    result to succeed (the others are cancelled). When every copy fails, the first copy's
    exception is raised: it is the call as it was asked for."""

    def __init__(self, make: Callable[[], Awaitable[T]], *, now: float) -> None:
        self._make = make
        self._tasks: list[asyncio.Future[T]] = []
        self._changed = asyncio.Event()
        self.started = self.latest = now
        self.add(now)

    @property
    def copies(self) -> int:
        """Copies started so far (1 + spares)."""
        return len(self._tasks)

    @property
    def running(self) -> int:
        """Copies still running."""
        return sum(not task.done() for task in self._tasks)

    def add(self, now: float) -> None:
        """Start one more copy (``now``: when, on the caller's clock: :attr:`latest`)."""
        self._tasks.append(asyncio.ensure_future(self._make()))
        self.latest = now
        self._changed.set()

    async def result(self) -> T:
        try:
            while True:
                for task in self._tasks:
                    if task.done() and not task.cancelled() and task.exception() is None:
                        return task.result()
                pending = [task for task in self._tasks if not task.done()]
                if not pending:
                    return self._tasks[0].result()  # every copy failed: the first's error
                self._changed.clear()
                changed: asyncio.Future[Any] = asyncio.ensure_future(self._changed.wait())
                waiting: list[asyncio.Future[Any]] = [*pending, changed]
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            late = [task for task in self._tasks if not task.done()]
            for task in late:
                task.cancel()
            if late:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*late, return_exceptions=True)
            for task in self._tasks:  # retrieved: no "exception never retrieved" warnings
                if task.done() and not task.cancelled():
                    task.exception()
