"""Clocks: one source of time for every primitive, and virtual time for asyncio.

Every flashkit primitive takes ``clock=`` (a :class:`Clock`). In production that is
:class:`SystemClock` (``time.monotonic``, ``time.sleep``, ``asyncio.sleep``). In tests, notebooks
and simulations it is a :class:`VirtualClock`, whose seconds pass only when something waits:

>>> clock = VirtualClock()
>>> async def main() -> float:
...     await asyncio.sleep(3600)        # ordinary asyncio code
...     return clock.now()
>>> run_virtual(main(), clock=clock)     # returns at once
3600.0

:func:`run_virtual` runs ordinary asyncio code (``asyncio.sleep``, ``asyncio.timeout``,
``asyncio.wait_for``, ``loop.call_later``, ``loop.time()``) on a :class:`VirtualEventLoop`: when no
callback is ready, the loop jumps its clock to the next timer instead of waiting. It also works
inside a Jupyter kernel, whose own event loop is already running (the virtual loop then runs in a
helper thread while the caller waits). Why a loop of our own: ``docs/design/virtual-time.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final, Protocol, TypeVar, TypeVarTuple, Unpack, runtime_checkable

__all__ = [
    "Clock",
    "SystemClock",
    "VirtualClock",
    "VirtualEventLoop",
    "WallClock",
    "default_clock",
    "run_virtual",
    "use_clock",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@runtime_checkable
class Clock(Protocol):
    """What a primitive needs from time: monotonic seconds and a way to wait.

    ``now()`` returns monotonic seconds (float, arbitrary origin). ``await sleep(seconds)``
    suspends the calling task; ``sleep_sync(seconds)`` blocks the calling thread.
    """

    def now(self) -> float: ...

    def sleep_sync(self, seconds: float) -> None: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``."""

    __slots__ = ()

    # The builtins themselves, not wrappers: ``clock.now()`` is on every hot path.
    now = staticmethod(time.monotonic)
    sleep_sync = staticmethod(time.sleep)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class WallClock(SystemClock):
    """Real time whose ``now()`` is the Unix time (``time.time``): a time base several processes
    share, for expiries written to a shared store (a cache in Redis or a database)."""

    __slots__ = ()

    now = staticmethod(time.time)

    def __repr__(self) -> str:
        return "WallClock()"


def _check_seconds(seconds: float, what: str) -> float:
    seconds = float(seconds)
    if not seconds >= 0.0:  # also rejects NaN
        raise ValueError(f"{what} must be a number of seconds >= 0, got {seconds!r}")
    return seconds


class VirtualClock:
    """Time that passes only when someone waits. Starts at ``start`` seconds (default 0.0).

    - ``sleep_sync(s)`` advances the clock by ``s`` at once: a blocking wait in virtual time.
    - ``advance(s)`` moves it forward by hand (tests).
    - ``await sleep(s)`` inside :func:`run_virtual` driven by this clock is ``asyncio.sleep(s)``:
      other tasks run in between, in timer order. Outside such a loop it advances the clock by
      ``s`` and yields once.
    """

    __slots__ = ("_loop", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._loop: VirtualEventLoop | None = None

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        self._now += _check_seconds(seconds, "VirtualClock.advance(seconds)")

    def sleep_sync(self, seconds: float) -> None:
        self._now += _check_seconds(seconds, "VirtualClock.sleep_sync(seconds)")

    async def sleep(self, seconds: float) -> None:
        seconds = _check_seconds(seconds, "VirtualClock.sleep(seconds)")
        if asyncio.get_running_loop() is self._loop:
            await asyncio.sleep(seconds)
        else:
            self._now += seconds
            await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"


_STALL_LIMIT: Final = 100  # iterations at one instant with only due timers before time moves
_MIN_STEP: Final = 1e-6  # seconds: how far time then moves


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose ``time()`` is a :class:`VirtualClock`.

    When no callback is ready it advances the clock to the next timer instead of sleeping, so
    timers fire in exact virtual-time order and an hour of sleeps takes milliseconds. Work in
    executor threads (``run_in_executor``, ``asyncio.to_thread``) is waited for in real time and
    takes no virtual time; its results are handed over one at a time, in the order the work was
    submitted, once nothing else can run at that instant: which thread finishes first does not
    change the run. Real network I/O does not mix with virtual time: a socket that answers
    in 5 real ms answers after the next timer, however far that is. Use it for in-process
    simulations (flashkit's simulated upstream, mock transports).

    Use it as a loop factory: ``asyncio.Runner(loop_factory=lambda: VirtualEventLoop(clock))``,
    or simply :func:`run_virtual`.
    """

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        # (the thread's future, the one its caller awaits), in the order submitted
        self._executor_work: collections.deque[tuple[asyncio.Future[Any], asyncio.Future[Any]]]
        self._executor_work = collections.deque()
        self._stall_at = -math.inf
        self._stalls = 0
        # Timers live in a heap of (when, seq, handle) tuples: tuple comparison runs in C, where
        # asyncio's own heap compares TimerHandles through a Python __lt__.
        self._timer_seq = itertools.count()
        super().__init__()
        bound = self.clock._loop
        if bound is not None and not bound.is_closed():
            self.close()
            raise RuntimeError(
                "this VirtualClock already drives a live VirtualEventLoop; "
                "give each concurrent loop its own VirtualClock"
            )
        self.clock._loop = self

    def time(self) -> float:
        return self.clock._now

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        work = super().run_in_executor(executor, func, *args)
        handed: asyncio.Future[T] = self.create_future()
        handed.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
        self._executor_work.append((work, handed))
        return handed

    def _hand_over(self) -> bool:
        """Hand the oldest finished executor work to its caller; False while it runs on."""
        work, handed = self._executor_work[0]
        if not work.done():
            return False
        self._executor_work.popleft()
        if handed.done():  # its caller was cancelled meanwhile
            return True
        if work.cancelled():
            handed.cancel()
        elif (error := work.exception()) is not None:
            handed.set_exception(error)
        else:
            handed.set_result(work.result())
        return True

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._scheduled, (when, next(self._timer_seq), timer))
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _drop_cancelled_timers(self) -> list[tuple[float, int, asyncio.TimerHandle]]:
        """The timer heap without cancelled timers at its head (rebuilt when most are)."""
        scheduled: list[tuple[float, int, asyncio.TimerHandle]] = self._scheduled  # type: ignore[has-type]
        count = len(scheduled)
        if count > 100 and self._timer_cancelled_count / count > 0.5:  # type: ignore[has-type]
            kept = []
            for item in scheduled:
                if item[2]._cancelled:
                    item[2]._scheduled = False  # type: ignore[attr-defined]
                else:
                    kept.append(item)
            heapq.heapify(kept)
            self._scheduled = scheduled = kept
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0][2]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)[2]._scheduled = False  # type: ignore[attr-defined]
        return scheduled

    def _run_once(self) -> None:
        """One loop iteration, as in ``asyncio.BaseEventLoop``, with waiting replaced by a jump."""
        scheduled = self._drop_cancelled_timers()
        ready = self._ready  # type: ignore[attr-defined]
        selector = self._selector  # type: ignore[attr-defined]
        clock = self.clock
        if ready or self._stopping:  # type: ignore[attr-defined]
            events = selector.select(0)
        elif scheduled and scheduled[0][0] <= clock._now:
            events = selector.select(0)
            # Only timers due at this very instant, again and again: a callback keeps re-arming
            # one for a remainder that rounds to nothing. Real time would pass; let some pass.
            if clock._now == self._stall_at:
                self._stalls += 1
                if self._stalls >= _STALL_LIMIT:
                    clock._now += _MIN_STEP
                    self._stalls = 0
            else:
                self._stall_at = clock._now
                self._stalls = 0
        elif self._executor_work:
            # Executor work takes no virtual time: hand over the oldest, or wait for it for real.
            events = selector.select(0 if self._hand_over() else None)
        elif not scheduled:
            # Nothing scheduled: only another thread or real I/O can wake us.
            events = selector.select(None)
        else:
            # Idle until the next timer: poll real I/O (if any is registered besides the loop's
            # own self-pipe), then jump to the timer instead of waiting for it.
            events = selector.select(0) if len(selector.get_map()) > 1 else []
            if not events:
                clock._now = max(clock._now, scheduled[0][0])
        self._process_events(events)  # type: ignore[attr-defined]
        events = None

        # `<=`, not asyncio's `<`: past ~1e7 s, now + resolution rounds to now itself, and a timer
        # due exactly now would never be taken while the loop spins on it.
        # A timer within the resolution of now fires now (as in asyncio), but virtual time then
        # moves to its due time: a sleep never ends early (asyncio lets it end up to 1 ns early,
        # and a retry for a remainder below the resolution would fire at once, again and again).
        end_time = clock._now + self._clock_resolution  # type: ignore[attr-defined]
        while scheduled and scheduled[0][0] <= end_time:
            when, _, handle = heapq.heappop(scheduled)
            if when > clock._now:
                clock._now = when
            handle._scheduled = False  # type: ignore[attr-defined]
            ready.append(handle)

        # Run only what is ready now; callbacks scheduled by these run next time (after a poll).
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            handle._run()
        handle = None  # type: ignore[assignment]  # break reference cycles on exceptions


def _run_on_virtual_loop(
    main: Coroutine[Any, Any, T],
    clock: VirtualClock,
    on_start: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] | None = None,
) -> T:
    async def wrapper() -> T:
        if on_start is not None:
            task = asyncio.current_task()
            if task is not None:
                on_start(asyncio.get_running_loop(), task)
        return await main

    with asyncio.Runner(loop_factory=lambda: VirtualEventLoop(clock)) as runner:
        return runner.run(wrapper())


def run_virtual(main: Coroutine[Any, Any, T], *, clock: VirtualClock | None = None) -> T:
    """Run the coroutine ``main`` to completion in virtual time and return its result.

    ``clock`` is the :class:`VirtualClock` the loop drives (a new one starting at 0.0 by
    default); pass the same clock to the primitives you build so they share the loop's time.
    Like :func:`asyncio.run`, remaining tasks are cancelled at the end. When called where an event
    loop is already running (a Jupyter cell), the virtual loop runs in a helper thread that
    inherits the caller's context variables, and this call blocks until it is done; interrupting
    the kernel cancels the simulation.
    """
    if not asyncio.iscoroutine(main):
        raise TypeError(
            f"run_virtual() needs a coroutine object, got {type(main).__name__}; "
            "call your async function: run_virtual(main()), not run_virtual(main)"
        )
    clock = clock if clock is not None else VirtualClock()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_virtual_loop(main, clock)
    return _run_in_helper_thread(main, clock)


def _run_in_helper_thread(main: Coroutine[Any, Any, T], clock: VirtualClock) -> T:
    started = threading.Event()
    handles: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    outcome: list[T] = []
    failure: list[BaseException] = []

    def on_start(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        handles.append((loop, task))
        started.set()

    def target() -> None:
        try:
            outcome.append(_run_on_virtual_loop(main, clock, on_start))
        except BaseException as exc:  # handed to the calling thread below
            failure.append(exc)
        finally:
            started.set()

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name="flashkit-virtual-loop")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.05)
    except KeyboardInterrupt:
        started.wait()
        if handles:
            loop, task = handles[0]
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise
    if failure:
        raise failure[0]
    return outcome[0]


_SYSTEM_CLOCK = SystemClock()
_default_clock: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "flashkit_default_clock", default=None
)


def default_clock() -> Clock:
    """The clock primitives use when built without ``clock=`` (a :class:`SystemClock`, unless
    :func:`use_clock` says otherwise)."""
    clock = _default_clock.get()
    return clock if clock is not None else _SYSTEM_CLOCK


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the default for primitives built inside the ``with`` block.

    The switch that makes a whole test or notebook deterministic::

        with use_clock(VirtualClock()) as clock:
            breaker = CircuitBreaker()        # uses clock
            policy = RetryConfig()            # uses clock
    """
    if not isinstance(clock, Clock):
        raise TypeError(
            f"use_clock() needs a Clock (now, sleep, sleep_sync), got {type(clock).__name__}"
        )
    token = _default_clock.set(clock)
    try:
        yield clock
    finally:
        _default_clock.reset(token)
