"""A circuit breaker with Polly v8 semantics, resilience4j's slow calls, and real half-open limits.

>>> breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, sampling_duration=10.0)
>>> @breaker
... async def chat(prompt: str) -> str: ...

How it decides (times in seconds, read from ``clock``):

- **Closed.** Outcomes are counted in a window of ``sampling_duration`` split into ``buckets``
  rolling buckets (old buckets are forgotten as time passes). After a handled failure (or a slow
  call), the breaker opens when, within the window, there were at least ``min_throughput`` calls
  and the failure ratio is >= ``failure_threshold`` (or the slow-call ratio is >=
  ``slow_call_threshold``, when ``slow_call_duration`` is set).
- **Open** for ``break_duration`` (default 5.0 s), or for what ``break_duration_generator(ctx)``
  returns (``ctx`` has the failure count, the failure ratio and the number of consecutive opens,
  for growing breaks). Every call is rejected at once with
  :class:`~flashkit.errors.CircuitOpenError`, whose ``retry_after`` is the time left.
- **Half-open** when the break is over: ``half_open_max_calls`` probes (default 1) are admitted;
  every other call is rejected at once. A probe that fails (or is slow) reopens the circuit; when
  all probes succeed it closes, with a fresh window.
- **Isolated** by hand (:class:`CircuitBreakerManualControl`): everything is rejected until reset.

``handled(error)`` decides which exceptions count as failures (default: all but validation and
authentication errors, which say nothing about the dependency's health); an exception it does not
handle counts as a success (the dependency answered). Cancellation counts as nothing.

Thread-safe and asyncio-safe: a lock guards the bookkeeping, never the protected call, so calls run
concurrently and half-open admits exactly ``half_open_max_calls`` under threads and tasks alike.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import math
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from flashkit.clock import Clock, default_clock
from flashkit.errors import (
    CircuitOpenError,
    ErrorCategory,
    StructuredError,
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

DEFAULT_BREAK_DURATION: Final = 5.0
_NO_OUTCOME: Final = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class CircuitState(enum.Enum):
    """Where a breaker is: ``CLOSED`` (calls flow), ``OPEN`` (rejected for a break),
    ``HALF_OPEN`` (probing), ``ISOLATED`` (held open by hand)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"


# Module constants: an enum member lookup costs ~200 ns on the hot path.
_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN


@dataclass(frozen=True, slots=True)
class BreakDurationContext:
    """What ``break_duration_generator`` is given when the circuit opens: handled failures and
    failure ratio in the window (for a failed probe: the probe failure, ratio 1.0), and how many
    times in a row it has opened (1 for the first open after a close)."""

    failure_count: int
    failure_ratio: float
    consecutive_opens: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition, as told to listeners: breaker name, old and new state, clock time (seconds)
    and why (``"failure_ratio"``, ``"slow_call_ratio"``, ``"probe_failed"``, ``"break_elapsed"``,
    ``"probes_succeeded"``, ``"isolated: <reason>"``, ``"reset"``)."""

    name: str
    old: CircuitState
    new: CircuitState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitBreakerStats:
    """A snapshot. Window counts cover the last ``sampling_duration`` seconds; ``trips`` counts
    openings from the closed state since creation (a failed probe reopening the circuit is not a
    new trip; see ``consecutive_opens``); ``rejected`` counts calls refused; ``last_failure_at``
    is clock seconds and ``last_failure`` a short description of the error."""

    name: str
    state: CircuitState
    time_in_state: float
    calls: int
    failures: int
    slow_calls: int
    failure_ratio: float
    slow_call_ratio: float
    trips: int
    rejected: int
    consecutive_opens: int
    half_open_in_flight: int
    last_failure: str | None
    last_failure_at: float | None
    break_remaining: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (state as its string value)."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["state"] = self.state.value
        return data


def _default_handled(error: BaseException) -> bool:
    if isinstance(error, StructuredError):
        return error.category not in (ErrorCategory.VALIDATION, ErrorCategory.AUTHENTICATION)
    return isinstance(error, Exception)


def _bad(field_name: str, value: object, rule: str) -> ValidationError:
    return ValidationError(
        f"CircuitBreaker({field_name}={value!r}): {rule}",
        code="invalid_config",
        details={"field": field_name},
    )


def _number(value: object, name: str, *, low: float, high: float = math.inf, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, value, f"must be a number; {hint}")
    number = float(value)
    if not (low <= number <= high) or math.isnan(number):
        raise _bad(name, value, f"must be in [{low:g}, {high:g}]; {hint}")
    return number


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
        if isinstance(min_throughput, bool) or not isinstance(min_throughput, int):
            raise _bad("min_throughput", min_throughput, "must be an int >= 1, e.g. 10")
        if min_throughput < 1:
            raise _bad("min_throughput", min_throughput, "must be >= 1, e.g. 10")
        self.min_throughput = min_throughput
        self.sampling_duration = _number(
            sampling_duration, "sampling_duration", low=1e-6, hint="seconds, e.g. 10.0"
        )
        if break_duration is not None:
            break_duration = _number(
                break_duration, "break_duration", low=1e-6, hint="seconds, e.g. 5.0"
            )
        if break_duration_generator is not None:
            if not callable(break_duration_generator):
                raise _bad(
                    "break_duration_generator",
                    break_duration_generator,
                    "must be callable(ctx) -> seconds",
                )
            if break_duration is not None:
                warnings.warn(
                    "CircuitBreaker: both break_duration and break_duration_generator given; "
                    "the generator takes precedence",
                    UserWarning,
                    stacklevel=2,
                )
        self.break_duration = (
            break_duration if break_duration is not None else DEFAULT_BREAK_DURATION
        )
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
        if isinstance(half_open_max_calls, bool) or not isinstance(half_open_max_calls, int):
            raise _bad("half_open_max_calls", half_open_max_calls, "must be an int >= 1")
        if half_open_max_calls < 1:
            raise _bad("half_open_max_calls", half_open_max_calls, "must be >= 1")
        self.half_open_max_calls = half_open_max_calls
        if handled is not None and not callable(handled):
            raise _bad("handled", handled, "must be callable(error) -> bool")
        self.handled = handled if handled is not None else _default_handled
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise _bad("buckets", buckets, "must be an int >= 1, e.g. 10")
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

        # Everything that can fail is checked before attaching to a shared control or provider:
        # a failed construction must not leave a half-built breaker inside either.
        shared = isinstance(manual_control, CircuitBreakerManualControl)
        if not shared and manual_control is not True and manual_control is not False:
            raise _bad("manual_control", manual_control, "must be a bool or a ManualControl")
        if state_provider is not None:
            if not isinstance(state_provider, CircuitBreakerStateProvider):
                raise _bad("state_provider", state_provider, "must be a StateProvider")
            state_provider._attach(self)
        self.manual_control: CircuitBreakerManualControl | None
        if isinstance(manual_control, CircuitBreakerManualControl):
            self.manual_control = manual_control
            manual_control._attach(self)
        elif manual_control:
            self.manual_control = CircuitBreakerManualControl(self)
        else:
            self.manual_control = None

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
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker (sync)."""
        if self._state is not _CLOSED or self._timed:
            return self._call_slow(fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._on_failure(error, 0.0, 0)
            raise
        if self._now() < self._bucket_end:
            self._cur_calls += 1
        else:
            self._on_success(0.0, 0)
        return result

    def _call_slow(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        permit = 0 if self._state is _CLOSED else self._admit()
        start = self._now()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._on_failure(error, start, permit)
            raise
        self._on_success(start, permit)
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        if self._state is not _CLOSED or self._timed:
            permit = 0 if self._state is _CLOSED else self._admit()
            start = self._now()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as error:
                self._on_failure(error, start, permit)
                raise
            self._on_success(start, permit)
            return result
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._on_failure(error, 0.0, 0)
            raise
        if self._now() < self._bucket_end:
            self._cur_calls += 1
        else:
            self._on_success(0.0, 0)
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a sync or async function."""
        if not callable(fn):
            raise TypeError(f"CircuitBreaker decorates a callable, got {type(fn).__name__}")
        now = self._now
        on_failure = self._on_failure
        on_success = self._on_success
        if inspect.iscoroutinefunction(fn):
            call_async = self.call_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if self._state is not _CLOSED or self._timed:
                    return await call_async(fn, *args, **kwargs)
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
        call_slow = self._call_slow

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # The closed-state fast path of ``call``, inlined: one frame less per call.
            if self._state is not _CLOSED or self._timed:
                return call_slow(fn, args, kwargs)
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
        breaker = self._breaker
        self._permit = 0 if breaker._state is _CLOSED else breaker._admit()
        self._start = breaker._now()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._breaker._on_success(self._start, self._permit)
        else:
            self._breaker._on_failure(exc, self._start, self._permit)

    async def __aenter__(self) -> _Guard:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        """The plan's stats dict: state, time in state, counts, last failure, trips and more."""
        return self.breaker.stats.as_dict()


class CircuitBreakerManualControl:
    """Hold one or more breakers open (``isolate``) or close them (``reset``) by hand.

    ``isolate(reason)`` and ``reset()`` are coroutines as in the plan (and Polly);
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
