"""A circuit breaker with Polly v8 semantics, resilience4j's slow calls, and real half-open limits.

>>> breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, sampling_duration=10.0)
>>> @breaker
... async def chat(prompt: str) -> str: ...

Times are seconds on ``clock``. How it decides (closed, open, half-open with its exact probe
limit, isolated; what counts as a failure): ``docs/design/breaker.md``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, ParamSpec, TypeVar

from flashkit._breaker_types import (
    BreakDurationContext,
    CircuitBreakerStats,
    CircuitState,
    StateChange,
    _bad,
    _break_duration,
    _count,
    _default_handled,
    _number,
)
from flashkit.clock import Clock, default_clock
from flashkit.errors import (
    CircuitOpenError,
    ValidationError,
)

__all__ = [
    "BreakDurationContext",
    "CircuitBreaker",
    "CircuitBreakerManualControl",
    "CircuitBreakerStateProvider",
    "CircuitBreakerStats",
    "CircuitState",
    "StateChange",
]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("flashkit.breaker")

# Module constants: an enum member lookup costs ~200 ns on the hot path.
_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN

_NO_OUTCOME: Final = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class CircuitBreaker:
    """A failure-ratio circuit breaker. See the module docstring for the semantics.

    Args (times in seconds):
        failure_threshold: failure ratio in (0, 1] that opens the circuit (default 0.5).
        min_throughput: calls needed in the window before the ratio counts (default 10, >= 1).
        sampling_duration: length of the rolling window (default 10.0).
        break_duration: how long to stay open (default 5.0).
        break_duration_generator: ``f(BreakDurationContext) -> seconds``; wins over
            ``break_duration`` (a warning is issued when both are given).
        state_provider: a :class:`CircuitBreakerStateProvider` to attach for monitoring.
        manual_control: True (creates ``.manual_control``) or a shared
            :class:`CircuitBreakerManualControl`.
        slow_call_duration: calls at least this long count as slow (None: off).
        slow_call_threshold: slow-call ratio in (0, 1] that opens the circuit (default 1.0).
        half_open_max_calls: probes admitted when half-open (default 1).
        handled: ``f(error) -> bool``, which exceptions count as failures.
        buckets: buckets in the window (default 10).
        name: for stats, listeners and errors.
        listeners: callables receiving a :class:`StateChange`.
        clock: a :class:`~flashkit.clock.Clock` (default: :func:`flashkit.clock.default_clock`).
    """

    def __init__(
        self,
        failure_threshold: float = 0.5,
        min_throughput: int = 10,
        sampling_duration: float = 10.0,
        break_duration: float | None = None,
        break_duration_generator: Callable[[BreakDurationContext], float] | None = None,
        state_provider: CircuitBreakerStateProvider | None = None,
        manual_control: bool | CircuitBreakerManualControl = False,
        *,
        slow_call_duration: float | None = None,
        slow_call_threshold: float = 1.0,
        half_open_max_calls: int = 1,
        handled: Callable[[BaseException], bool] | None = None,
        buckets: int = 10,
        name: str = "default",
        listeners: Iterable[Callable[[StateChange], None]] = (),
        clock: Clock | None = None,
    ) -> None:
        self.failure_threshold = _number(
            failure_threshold, "failure_threshold", low=1e-9, high=1.0, hint="0.5 means 50 %"
        )
        self.min_throughput = _count(
            min_throughput,
            "min_throughput",
            "must be an int >= 1, e.g. 10",
            "must be >= 1, e.g. 10",
        )
        self.sampling_duration = _number(
            sampling_duration, "sampling_duration", low=1e-6, hint="seconds, e.g. 10.0"
        )
        self.break_duration = _break_duration(break_duration, break_duration_generator)
        self.break_duration_generator = break_duration_generator
        if slow_call_duration is not None:
            slow_call_duration = _number(
                slow_call_duration, "slow_call_duration", low=0.0, hint="seconds, or None for off"
            )
        self.slow_call_duration = slow_call_duration
        self._timed = slow_call_duration is not None  # calls need a start time
        self.slow_call_threshold = _number(
            slow_call_threshold, "slow_call_threshold", low=1e-9, high=1.0, hint="1.0 = 100 %"
        )
        self.half_open_max_calls = _count(
            half_open_max_calls, "half_open_max_calls", "must be an int >= 1", "must be >= 1"
        )
        if handled is not None and not callable(handled):
            raise _bad("handled", handled, "must be callable(error) -> bool")
        self.handled = handled if handled is not None else _default_handled
        _count(buckets, "buckets", "must be an int >= 1, e.g. 10", "must be an int >= 1, e.g. 10")
        self.name = str(name)
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now
        self._listeners = list(listeners)
        for listener in self._listeners:
            if not callable(listener):
                raise _bad("listeners", listener, "every listener must be callable(StateChange)")

        # Reentrant: break_duration_generator runs under the lock and may read the breaker
        # (``stats``, ``state``); a plain Lock would deadlock there. Same cost as a Lock.
        self._lock = threading.RLock()
        self._nbuckets = buckets
        self._inv_width = buckets / self.sampling_duration
        self._calls = [0] * buckets
        self._fails = [0] * buckets
        self._slows = [0] * buckets
        self._sum_calls = self._sum_fails = self._sum_slows = 0
        self._cur_calls = self._cur_fails = self._cur_slows = 0
        self._bucket = math.floor(self._now() * self._inv_width)
        self._bucket_end = (self._bucket + 1) / self._inv_width

        self._state = CircuitState.CLOSED
        self._state_since = self._now()
        self._open_until = 0.0
        self._last_break = self.break_duration
        self._consecutive_opens = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._generation = 0  # bumps on every transition: stale probes are ignored
        self._trips = 0
        self._rejected = 0
        self._last_failure: str | None = None
        self._last_failure_at: float | None = None
        self._isolation_reason = ""
        self.manual_control = self._attach_controls(state_provider, manual_control)

    def _attach_controls(
        self,
        state_provider: CircuitBreakerStateProvider | None,
        manual_control: bool | CircuitBreakerManualControl,
    ) -> CircuitBreakerManualControl | None:
        """Attach to ``state_provider`` and the manual control; returns the manual control."""
        # Everything that can fail is checked before attaching to a shared control or provider:
        # a failed construction must not leave a half-built breaker inside either.
        shared = isinstance(manual_control, CircuitBreakerManualControl)
        if not shared and manual_control is not True and manual_control is not False:
            raise _bad("manual_control", manual_control, "must be a bool or a ManualControl")
        if state_provider is not None:
            if not isinstance(state_provider, CircuitBreakerStateProvider):
                raise _bad("state_provider", state_provider, "must be a StateProvider")
            state_provider._attach(self)
        if isinstance(manual_control, CircuitBreakerManualControl):
            manual_control._attach(self)
            return manual_control
        if manual_control:
            return CircuitBreakerManualControl(self)
        return None

    # --- window -----------------------------------------------------------------------------
    # The window is a ring of ``buckets`` buckets. The current bucket's counts live in
    # ``_cur_*`` (so a success in the closed state is one unlocked increment: an int attribute
    # update the GIL makes atomic); ``_sum_*`` hold the other buckets' totals.
    def _roll(self, now: float) -> None:
        """Move the current bucket to ``now``, forgetting buckets older than the window."""
        if now < self._bucket_end:
            return
        n = self._nbuckets
        index = math.floor(now * self._inv_width)
        gap = index - self._bucket
        if gap <= 0:  # float edge: ``now`` at the boundary rounds into the current bucket
            return
        slot = self._bucket % n
        self._calls[slot], self._fails[slot], self._slows[slot] = (
            self._cur_calls,
            self._cur_fails,
            self._cur_slows,
        )
        self._sum_calls += self._cur_calls
        self._sum_fails += self._cur_fails
        self._sum_slows += self._cur_slows
        self._cur_calls = self._cur_fails = self._cur_slows = 0
        if gap >= n:
            self._clear_ring()
        else:
            for k in range(1, gap + 1):
                slot = (self._bucket + k) % n
                self._sum_calls -= self._calls[slot]
                self._sum_fails -= self._fails[slot]
                self._sum_slows -= self._slows[slot]
                self._calls[slot] = self._fails[slot] = self._slows[slot] = 0
        self._bucket = index
        self._bucket_end = (index + 1) / self._inv_width

    def _clear_ring(self) -> None:
        for i in range(self._nbuckets):
            self._calls[i] = self._fails[i] = self._slows[i] = 0
        self._sum_calls = self._sum_fails = self._sum_slows = 0

    def _clear_window(self) -> None:
        self._clear_ring()
        self._cur_calls = self._cur_fails = self._cur_slows = 0

    def _window(self) -> tuple[int, int, int]:
        return (
            self._sum_calls + self._cur_calls,
            self._sum_fails + self._cur_fails,
            self._sum_slows + self._cur_slows,
        )

    # --- transitions (lock held; they return the change for listeners) ---------------------
    def _move(self, new: CircuitState, now: float, reason: str) -> StateChange:
        old = self._state
        self._state = new
        self._state_since = now
        self._generation += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        return StateChange(self.name, old, new, now, reason)

    def _open(self, now: float, failures: int, ratio: float, reason: str) -> StateChange:
        # Nothing changes before the generator's value is checked: a bad value raises and
        # leaves the breaker (trips, consecutive opens, state) as it was.
        opens = self._consecutive_opens + 1
        duration = self.break_duration
        if self.break_duration_generator is not None:
            context = BreakDurationContext(failures, ratio, opens)
            duration = self.break_duration_generator(context)
            if (
                isinstance(duration, bool)
                or not isinstance(duration, int | float)
                or not (duration >= 0 and math.isfinite(duration))
            ):
                raise ValidationError(
                    f"CircuitBreaker {self.name!r}: break_duration_generator returned "
                    f"{duration!r}; it must return seconds >= 0",
                    code="invalid_config",
                    details={"field": "break_duration_generator"},
                )
        self._consecutive_opens = opens
        if self._state is _CLOSED:
            self._trips += 1
        self._last_break = float(duration)
        self._open_until = now + float(duration)
        return self._move(CircuitState.OPEN, now, reason)

    def _check_ratios(self, now: float) -> StateChange | None:
        calls, fails, slows = self._window()
        if calls < self.min_throughput:
            return None
        if fails / calls >= self.failure_threshold:
            return self._open(now, fails, fails / calls, "failure_ratio")
        if self.slow_call_duration is not None and slows / calls >= self.slow_call_threshold:
            return self._open(now, fails, fails / calls, "slow_call_ratio")
        return None

    def _refresh(self, now: float) -> StateChange | None:
        """OPEN -> HALF_OPEN once the break is over. Lock held."""
        if self._state is CircuitState.OPEN and now >= self._open_until:
            return self._move(CircuitState.HALF_OPEN, now, "break_elapsed")
        return None

    def _notify(self, *changes: StateChange | None) -> None:
        for change in changes:
            if change is None:
                continue
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:
                    logger.exception(
                        "circuit breaker %r: state listener %r failed", self.name, listener
                    )

    # --- admission and outcomes (shared by every call form) -------------------------------
    def _reject(self, now: float) -> CircuitOpenError:
        """Count a rejection and build its error. Lock held."""
        self._rejected += 1
        state = self._state
        if state is CircuitState.ISOLATED:
            return CircuitOpenError(
                f"circuit {self.name!r} is isolated: {self._isolation_reason}",
                code="circuit_isolated",
                details={"breaker": self.name, "state": state.value},
                retryable=False,
            )
        # Half-open with every probe slot taken: about one more break if the probes fail.
        wait = max(0.0, self._open_until - now) if state is _OPEN else self._last_break
        return CircuitOpenError(
            f"circuit {self.name!r} is {state.value}; calls are rejected for {wait:.3g} s",
            details={"breaker": self.name, "state": state.value},
            retry_after=wait,
        )

    def _admit(self) -> int:
        """Admit a call or raise CircuitOpenError. Returns the probe generation (0: not a probe)."""
        now = self._now()
        with self._lock:
            change = self._refresh(now)
            state = self._state
            if state is _CLOSED:
                permit = 0
                error = None
            elif state is CircuitState.HALF_OPEN and (
                self._probes_in_flight + self._probe_successes < self.half_open_max_calls
            ):
                self._probes_in_flight += 1
                permit = self._generation
                error = None
            else:
                permit = 0
                error = self._reject(now)
        self._notify(change)
        if error is not None:
            raise error
        return permit

    def _counted(self) -> None:
        """A closed-state call without a start time succeeded: count it in the current bucket
        (the decorator's fast path)."""
        if self._now() < self._bucket_end:
            self._cur_calls += 1
        else:
            self._on_success(0.0, 0)

    def _on_success(self, start: float, permit: int) -> None:
        now = self._now()
        slow = self.slow_call_duration is not None and now - start >= self.slow_call_duration
        change = None
        with self._lock:
            if permit:
                if permit == self._generation:
                    self._probes_in_flight -= 1
                    if slow:
                        change = self._open(now, 1, 1.0, "probe_failed")
                    else:
                        self._probe_successes += 1
                        if self._probe_successes >= self.half_open_max_calls:
                            self._clear_window()
                            self._consecutive_opens = 0
                            change = self._move(CircuitState.CLOSED, now, "probes_succeeded")
            elif self._state is _CLOSED:
                self._roll(now)
                self._cur_calls += 1
                if slow:
                    self._cur_slows += 1
                    change = self._check_ratios(now)
        if change is not None:
            self._notify(change)

    def _on_failure(self, error: BaseException, start: float, permit: int) -> None:
        if isinstance(error, _NO_OUTCOME):
            self._release(permit)
            return
        if not self.handled(error):
            self._on_success(start, permit)
            return
        now = self._now()
        slow = self.slow_call_duration is not None and now - start >= self.slow_call_duration
        change = None
        with self._lock:
            self._last_failure = f"{type(error).__name__}: {error}"[:300]
            self._last_failure_at = now
            if permit:
                if permit == self._generation:
                    self._probes_in_flight -= 1
                    change = self._open(now, 1, 1.0, "probe_failed")
            elif self._state is _CLOSED:
                self._roll(now)
                self._cur_calls += 1
                self._cur_fails += 1
                if slow:
                    self._cur_slows += 1
                change = self._check_ratios(now)
        if change is not None:
            self._notify(change)

    def _release(self, permit: int) -> None:
        if permit:
            with self._lock:
                if permit == self._generation:
                    self._probes_in_flight -= 1

    # --- call forms -------------------------------------------------------------------------
    def _begin(self) -> tuple[float, int]:
        """Admit a call: (its start time, its probe permit); start -1.0 on the closed state's
        fast path (no start time needed). Raises CircuitOpenError when rejected."""
        if self._state is _CLOSED:
            return (-1.0 if not self._timed else self._now()), 0
        permit = self._admit()
        return self._now(), permit

    def _end(self, start: float, permit: int, error: BaseException | None = None) -> None:
        """Record how a call admitted by :meth:`_begin` ended."""
        if error is not None:
            self._on_failure(error, max(start, 0.0), permit)
        elif start < 0.0:
            self._counted()
        else:
            self._on_success(start, permit)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker: the blocking twin of :meth:`call`."""
        start, permit = self._begin()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._end(start, permit, error)
            raise
        self._end(start, permit)
        return result

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker (for sync code: :meth:`call_sync`)."""
        start, permit = self._begin()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._end(start, permit, error)
            raise
        self._end(start, permit)
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a sync or async function."""
        if not callable(fn):
            raise TypeError(f"CircuitBreaker decorates a callable, got {type(fn).__name__}")
        # The closed state's fast path is inlined in both wrappers: one call less per call (the
        # report's primitives benchmark shows what it saves over call / call_sync).
        now = self._now
        on_failure = self._on_failure
        on_success = self._on_success
        if inspect.iscoroutinefunction(fn):
            call = self.call

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if self._state is not _CLOSED or self._timed:
                    return await call(fn, *args, **kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    on_failure(error, 0.0, 0)
                    raise
                if now() < self._bucket_end:
                    self._cur_calls += 1
                else:
                    on_success(0.0, 0)
                return result

            async_wrapper.breaker = self  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]
        call_sync = self.call_sync

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._state is not _CLOSED or self._timed:
                return call_sync(fn, *args, **kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                on_failure(error, 0.0, 0)
                raise
            if now() < self._bucket_end:
                self._cur_calls += 1
            else:
                on_success(0.0, 0)
            return result

        wrapper.breaker = self  # type: ignore[attr-defined]
        return wrapper

    def guard(self) -> _Guard:
        """A context manager for a block: ``with breaker.guard():`` or ``async with ...``.

        Entering raises :class:`~flashkit.errors.CircuitOpenError` when the call is rejected; an
        exception leaving the block is recorded like a failed call.
        """
        return _Guard(self)

    # --- introspection and manual control ---------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state (an elapsed break is reported as ``HALF_OPEN``)."""
        now = self._now()
        with self._lock:
            change = self._refresh(now)
            state = self._state
        self._notify(change)
        return state

    @property
    def stats(self) -> CircuitBreakerStats:
        """A :class:`CircuitBreakerStats` snapshot."""
        now = self._now()
        with self._lock:
            change = self._refresh(now)
            self._roll(now)
            calls, fails, slows = self._window()
            stats = CircuitBreakerStats(
                name=self.name,
                state=self._state,
                time_in_state=now - self._state_since,
                calls=calls,
                failures=fails,
                slow_calls=slows,
                failure_ratio=fails / calls if calls else 0.0,
                slow_call_ratio=slows / calls if calls else 0.0,
                trips=self._trips,
                rejected=self._rejected,
                consecutive_opens=self._consecutive_opens,
                half_open_in_flight=self._probes_in_flight,
                last_failure=self._last_failure,
                last_failure_at=self._last_failure_at,
                break_remaining=(
                    max(0.0, self._open_until - now) if self._state is CircuitState.OPEN else 0.0
                ),
            )
        self._notify(change)
        return stats

    def add_listener(self, listener: Callable[[StateChange], None]) -> None:
        """Call ``listener(StateChange)`` after every transition (exceptions are logged)."""
        if not callable(listener):
            raise TypeError(f"listener must be callable(StateChange), got {listener!r}")
        self._listeners.append(listener)

    def _isolate(self, reason: str) -> None:
        now = self._now()
        with self._lock:
            self._isolation_reason = reason
            change = (
                None
                if self._state is CircuitState.ISOLATED
                else self._move(CircuitState.ISOLATED, now, f"isolated: {reason}")
            )
        self._notify(change)

    def _reset(self) -> None:
        now = self._now()
        with self._lock:
            self._clear_window()
            self._consecutive_opens = 0
            self._isolation_reason = ""
            change = (
                None
                if self._state is CircuitState.CLOSED
                else self._move(CircuitState.CLOSED, now, "reset")
            )
        self._notify(change)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failure_threshold={self.failure_threshold}, min_throughput={self.min_throughput}, "
            f"sampling_duration={self.sampling_duration})"
        )


class _Guard:
    """One guarded block (see :meth:`CircuitBreaker.guard`)."""

    __slots__ = ("_breaker", "_permit", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit = 0
        self._start = 0.0

    def __enter__(self) -> _Guard:
        self._start, self._permit = self._breaker._begin()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._breaker._end(self._start, self._permit, exc)

    async def __aenter__(self) -> _Guard:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


class CircuitBreakerStateProvider:
    """Read-only view of a breaker for monitoring (Polly's ``CircuitBreakerStateProvider``).

    Pass it as ``CircuitBreaker(state_provider=provider)``; then read ``circuit_state``,
    ``time_in_state`` (seconds) and ``stats``.
    """

    def __init__(self) -> None:
        self._breaker: CircuitBreaker | None = None

    def _attach(self, breaker: CircuitBreaker) -> None:
        if self._breaker is not None and self._breaker is not breaker:
            raise ValidationError(
                f"this CircuitBreakerStateProvider already watches breaker "
                f"{self._breaker.name!r}; create one provider per breaker",
                code="invalid_config",
            )
        self._breaker = breaker

    @property
    def breaker(self) -> CircuitBreaker:
        if self._breaker is None:
            raise RuntimeError(
                "CircuitBreakerStateProvider is not attached: pass it to "
                "CircuitBreaker(state_provider=...) first"
            )
        return self._breaker

    @property
    def circuit_state(self) -> CircuitState:
        return self.breaker.state

    @property
    def time_in_state(self) -> float:
        """Seconds since the last transition."""
        return self.breaker.stats.time_in_state

    @property
    def stats(self) -> dict[str, Any]:
        """The original plan's stats dict (``docs/origins.md``): state, time in state, counts,
        last failure, trips and more."""
        return self.breaker.stats.as_dict()


class CircuitBreakerManualControl:
    """Hold one or more breakers open (``isolate``) or close them (``reset``) by hand.

    ``isolate(reason)`` and ``reset()`` are coroutines as in the original plan (and Polly);
    ``isolate_sync`` and ``reset_sync`` do the same from sync code. One control may be shared by
    several breakers (``CircuitBreaker(manual_control=control)``).
    """

    def __init__(self, breaker: CircuitBreaker | None = None) -> None:
        self._breakers: list[CircuitBreaker] = []
        if breaker is not None:
            self._attach(breaker)

    def _attach(self, breaker: CircuitBreaker) -> None:
        if breaker not in self._breakers:
            self._breakers.append(breaker)

    @property
    def breakers(self) -> tuple[CircuitBreaker, ...]:
        return tuple(self._breakers)

    def isolate_sync(self, reason: str = "Manual isolation") -> None:
        """Open every attached breaker until :meth:`reset_sync`; calls are rejected."""
        for breaker in self._breakers:
            breaker._isolate(reason)

    def reset_sync(self) -> None:
        """Close every attached breaker and forget its window."""
        for breaker in self._breakers:
            breaker._reset()

    async def isolate(self, reason: str = "Manual isolation") -> None:
        """Async twin of :meth:`isolate_sync`."""
        self.isolate_sync(reason)

    async def reset(self) -> None:
        """Async twin of :meth:`reset_sync`."""
        self.reset_sync()
