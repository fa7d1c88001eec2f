"""Retry with exponential backoff, jitter, server hints, deadlines and budgets.

One policy object, :class:`RetryConfig`, and three ways to use it, sync or async:

>>> @retry(RetryConfig(max_attempts=5, jitter=Jitter.FULL))
... async def chat(prompt: str) -> str: ...

>>> for attempt in retrying(RetryConfig(max_attempts=3)):   # block form
...     with attempt:
...         result = do_something()

>>> async for attempt in retrying(config):                    # async block form
...     async with attempt:                                    # applies attempt_timeout
...         result = await do_something()

What it does beyond tenacity/stamina/backoff:

- **Server hints.** An error carrying ``retry_after`` (a :class:`~flashkit.errors.RateLimitError`
  from :func:`~flashkit.errors.classify`, or any exception with a ``retry_after`` attribute in
  seconds) sets a *floor* for the next delay, with a small jitter above it (``retry_after_jitter``,
  10 %) so clients told the same instant do not return together. A hint longer than
  ``max_retry_after`` or than the time left before ``deadline`` ends the call at once with
  :class:`~flashkit.errors.RetryExhausted` carrying the hint: waiting less is known to fail.
- **Non-retryable errors are not retried**: validation, authentication and quota errors (any
  :class:`~flashkit.errors.StructuredError` whose ``retryable`` is False, and httpx errors that
  :func:`~flashkit.errors.classify` says are permanent) are re-raised at once.
- **Deadlines that cancel.** ``deadline`` bounds the whole call (attempts and sleeps);
  ``attempt_timeout`` bounds each async attempt, which is really cancelled.
- **Budgets.** ``budget`` (a :class:`~flashkit.budget.RetryBudget`, shareable) bounds retries
  across calls; when it refuses, the last error is raised at once.
- **Cheap when nothing fails**: the success path is one ``try`` and a clock read; a zero delay
  never calls sleep.

``attempt`` numbers in hooks and errors are 1-based (the first attempt is 1). ``calculate_delay``
takes the 0-based *retry* index: ``calculate_delay(0)`` is the wait before the first retry.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from flashkit.budget import RetryBudget
from flashkit.clock import Clock, default_clock
from flashkit.errors import (
    ExternalServiceError,
    RetryExhausted,
    ValidationError,
    is_retryable,
    retry_after_of,
)

__all__ = [
    "Attempt",
    "Jitter",
    "RetryConfig",
    "RetryEvent",
    "Retrying",
    "retry",
    "retrying",
]

P = ParamSpec("P")
T = TypeVar("T")

_SHARED_RNG: Final = random.Random()
# Control flow, not failures: never retried, whatever retry_on says.
_NEVER_RETRIED: Final = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class Jitter(enum.Enum):
    """How a backoff delay ``v = min(max_delay, initial_delay * exponential_base**n)`` is spread.

    - ``NONE``: ``v`` (plain exponential; synchronised clients retry together).
    - ``FULL``: ``uniform(0, v)`` (least total work in Brooker's simulation).
    - ``EQUAL``: ``v/2 + uniform(0, v/2)`` (what ``jitter=True`` means: the plan's 50–100 %).
    - ``DECORRELATED``: ``min(max_delay, uniform(initial_delay, 3 * previous_delay))``.
    """

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What a hook is told: the attempt that just ended (1-based), the delay before the next one
    (seconds, 0.0 when giving up), the error or the unacceptable result, the server hint
    (seconds or None), seconds elapsed since the first attempt, and on give-up the ``reason``
    (``"not_retryable"``, ``"attempts"``, ``"deadline"``, ``"retry_after_too_long"``,
    ``"budget"``, ``"result"``)."""

    attempt: int
    delay: float
    error: BaseException | None
    result: Any
    retry_after: float | None
    elapsed: float
    reason: str | None = None


def _bad(field_name: str, value: object, rule: str, fix: str) -> ValidationError:
    return ValidationError(
        f"RetryConfig({field_name}={value!r}): {rule}; {fix}",
        code="invalid_config",
        details={"field": field_name},
    )


@dataclass(frozen=True)
class RetryConfig:
    """A retry policy. Times are seconds.

    The plan's fields (positional): ``max_attempts=3`` (total attempts, 1 = no retries),
    ``initial_delay=1.0``, ``max_delay=60.0``, ``exponential_base=2.0``, ``jitter=True``
    (``True`` = :attr:`Jitter.EQUAL`, ``False`` = :attr:`Jitter.NONE`, or a :class:`Jitter`),
    ``retry_on=(Exception,)`` (exception types worth retrying).

    Keyword-only:

    - ``retry_if(error) -> bool``: narrows ``retry_on`` further (default: the error's own
      ``retryable`` verdict, see :func:`flashkit.errors.is_retryable`).
    - ``retry_if_result(result) -> bool``: True when a returned value should be retried.
    - ``deadline``: seconds for the whole call, attempts and sleeps included (None: unbounded).
    - ``attempt_timeout``: seconds per attempt; async attempts are cancelled (None: unbounded).
    - ``respect_retry_after=True``, ``max_retry_after=60.0``, ``retry_after_jitter=0.1``:
      server hints as floors, their ceiling, and the jitter above them (fraction of the hint).
    - ``budget``: a shared :class:`~flashkit.budget.RetryBudget`.
    - ``on_retry(event)`` / ``on_giveup(event)``: hooks receiving a :class:`RetryEvent`.
    - ``clock``: a :class:`~flashkit.clock.Clock` (default: :func:`flashkit.clock.default_clock`).
    - ``rng``: a ``random.Random`` for jitter (default: a shared one); seed it to reproduce.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: bool | Jitter = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    _: KW_ONLY
    retry_if: Callable[[BaseException], bool] | None = None
    retry_if_result: Callable[[Any], bool] | None = None
    deadline: float | None = None
    attempt_timeout: float | None = None
    respect_retry_after: bool = True
    max_retry_after: float = 60.0
    retry_after_jitter: float = 0.1
    budget: RetryBudget | None = None
    on_retry: Callable[[RetryEvent], None] | None = None
    on_giveup: Callable[[RetryEvent], None] | None = None
    clock: Clock = field(default=None, repr=False)  # type: ignore[assignment]
    rng: random.Random = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise _bad(
                "max_attempts",
                self.max_attempts,
                "must be an int >= 1",
                "it counts all attempts, so 1 means no retries and 3 means up to 2 retries",
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value >= 0 and math.isfinite(value)):
                raise _bad(name, value, "must be a finite number of seconds >= 0", "e.g. 1.0")
        if self.max_delay < self.initial_delay:
            raise _bad(
                "max_delay",
                self.max_delay,
                f"is below initial_delay={self.initial_delay!r}",
                "max_delay caps the backoff, so it must be >= initial_delay",
            )
        if not isinstance(self.exponential_base, int | float) or not self.exponential_base >= 1:
            raise _bad(
                "exponential_base",
                self.exponential_base,
                "must be a number >= 1",
                "2.0 doubles the delay after every failure; 1.0 keeps it constant",
            )
        jitter = self.jitter
        if isinstance(jitter, bool):
            object.__setattr__(self, "jitter", Jitter.EQUAL if jitter else Jitter.NONE)
        elif isinstance(jitter, str):
            try:
                object.__setattr__(self, "jitter", Jitter(jitter.lower()))
            except ValueError:
                raise _bad(
                    "jitter", jitter, "is not a jitter kind", f"use {[j.value for j in Jitter]}"
                ) from None
        elif not isinstance(jitter, Jitter):
            raise _bad("jitter", jitter, "must be a bool or a Jitter", "e.g. Jitter.FULL")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
            object.__setattr__(self, "retry_on", retry_on)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise _bad(
                "retry_on",
                retry_on,
                "must be a tuple of exception types",
                "e.g. (httpx.HTTPError, TimeoutError)",
            )
        for name in ("deadline", "attempt_timeout"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and value > 0 and math.isfinite(value)
            ):
                raise _bad(name, value, "must be seconds > 0 or None", "None means unbounded")
        if not (isinstance(self.max_retry_after, int | float) and self.max_retry_after >= 0):
            raise _bad(
                "max_retry_after",
                self.max_retry_after,
                "must be seconds >= 0",
                "hints above it end the call at once",
            )
        if not (isinstance(self.retry_after_jitter, int | float) and self.retry_after_jitter >= 0):
            raise _bad(
                "retry_after_jitter",
                self.retry_after_jitter,
                "must be a fraction >= 0",
                "0.1 waits up to 10 % longer than the server asked",
            )
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise _bad("budget", self.budget, "must be a RetryBudget", "e.g. RetryBudget.grpc()")
        for name in ("retry_if", "retry_if_result", "on_retry", "on_giveup"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise _bad(name, value, "must be callable or None", "pass a function")
        if self.clock is None:
            object.__setattr__(self, "clock", default_clock())
        if self.rng is None:
            object.__setattr__(self, "rng", _SHARED_RNG)

    def calculate_delay(
        self, attempt: int, *, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based: 0 is the first retry).

        ``previous`` is the last delay (used by :attr:`Jitter.DECORRELATED`; default
        ``initial_delay``). Never above ``max_delay``.
        """
        if attempt < 0:
            raise ValueError(f"calculate_delay(attempt={attempt}): attempt is 0-based, >= 0")
        rng = rng if rng is not None else self.rng
        jitter = self.jitter
        if jitter is Jitter.DECORRELATED:
            last = self.initial_delay if previous is None else previous
            upper = max(self.initial_delay, 3.0 * last)
            return min(self.max_delay, rng.uniform(self.initial_delay, upper))
        try:
            value = min(
                self.max_delay, self.initial_delay * float(self.exponential_base) ** attempt
            )
        except OverflowError:  # base**attempt beyond a float: capped, unless there is no backoff
            value = self.max_delay if self.initial_delay > 0 else 0.0
        if jitter is Jitter.NONE:
            return value
        if jitter is Jitter.FULL:
            return rng.uniform(0.0, value)
        half = value / 2.0
        return half + rng.uniform(0.0, half)

    def delays(self, *, rng: random.Random | None = None) -> list[float]:
        """One sample of the delays a call that always fails would wait (``max_attempts - 1``)."""
        out: list[float] = []
        previous: float | None = None
        for n in range(self.max_attempts - 1):
            previous = self.calculate_delay(n, previous=previous, rng=rng)
            out.append(previous)
        return out


class _RetryState:
    """The retry decision, shared by every form (decorator, block, sync and async)."""

    __slots__ = ("attempt", "config", "last_outcome", "last_timeout", "previous_delay", "start")

    def __init__(self, config: RetryConfig, start: float) -> None:
        self.config = config
        self.start = start
        self.attempt = 1
        self.previous_delay: float | None = None
        self.last_timeout = False
        # (error, result, hint) of the attempt that led to the pending retry.
        self.last_outcome: tuple[BaseException | None, Any, float | None] = (None, None, None)

    def elapsed(self) -> float:
        return self.config.clock.now() - self.start

    def attempt_timeout(self) -> tuple[float | None, bool]:
        """Seconds the next async attempt may take, and whether the deadline is what binds."""
        config = self.config
        limit = config.attempt_timeout
        if config.deadline is None:
            return limit, False
        remaining = config.deadline - self.elapsed()
        if limit is None or remaining <= limit:
            return max(remaining, 0.0), True
        return limit, False

    def _give_up(
        self,
        reason: str,
        error: BaseException | None,
        result: Any = None,
        hint: float | None = None,
        elapsed: float | None = None,
    ) -> None:
        config = self.config
        elapsed = self.elapsed() if elapsed is None else elapsed
        if config.on_giveup is not None:
            config.on_giveup(RetryEvent(self.attempt, 0.0, error, result, hint, elapsed, reason))
        if reason in ("not_retryable", "budget") and error is not None:
            raise error
        raise RetryExhausted(
            attempts=self.attempt,
            elapsed=elapsed,
            reason=reason,
            last_error=error,
            last_result=result,
            retry_after=hint,
        ) from error

    def on_error(self, error: BaseException, *, timed_out: bool = False) -> float:
        """Decide after a failed attempt: the delay before the next one, or raise."""
        if isinstance(error, _NEVER_RETRIED):
            raise error
        config = self.config
        if not timed_out:
            if not isinstance(error, config.retry_on):
                self._give_up("not_retryable", error)
            check = config.retry_if
            if not (check(error) if check is not None else is_retryable(error)):
                self._give_up("not_retryable", error)
        hint = retry_after_of(error) if config.respect_retry_after else None
        return self._next_delay(error, None, hint, timed_out)

    def on_result(self, result: Any) -> float | None:
        """Decide after an attempt returned: None to accept ``result``, else the delay."""
        config = self.config
        check = config.retry_if_result
        if check is None or not check(result):
            self.on_success()
            return None
        return self._next_delay(None, result, None, False)

    def on_success(self) -> None:
        budget = self.config.budget
        if budget is not None:
            budget.on_success(retried=self.attempt > 1, timeout=self.last_timeout)

    def _next_delay(
        self, error: BaseException | None, result: Any, hint: float | None, timed_out: bool
    ) -> float:
        config = self.config
        budget = config.budget
        if budget is not None and error is not None:
            budget.on_failure(timeout=timed_out)
        if self.attempt >= config.max_attempts:
            self._give_up("attempts" if error is not None else "result", error, result, hint)
        delay = config.calculate_delay(self.attempt - 1, previous=self.previous_delay)
        self.previous_delay = delay
        if hint is not None:
            if hint > config.max_retry_after:
                self._give_up("retry_after_too_long", error, result, hint)
            floor = hint + config.rng.uniform(0.0, hint * config.retry_after_jitter)
            delay = max(delay, floor)
        elapsed = self.elapsed()
        if config.deadline is not None and elapsed + delay >= config.deadline:
            self._give_up("deadline", error, result, hint, elapsed)
        if budget is not None and not budget.try_acquire_retry(timeout=timed_out):
            if error is None:
                self._give_up("result", None, result, hint, elapsed)
            self._give_up("budget", error, result, hint, elapsed)
        if config.on_retry is not None:
            config.on_retry(RetryEvent(self.attempt, delay, error, result, hint, elapsed))
        self.attempt += 1
        self.last_timeout = timed_out
        self.last_outcome = (error, result, hint)
        return delay

    def deadline_expired(self, error: BaseException) -> None:
        self._give_up("deadline", error)

    def deadline_passed_before_attempt(self) -> None:
        """The backoff sleep woke at or after the deadline (a late loop): give up with the last
        attempt's outcome, not counting the attempt that was never made."""
        if self.attempt > 1:
            self.attempt -= 1
        error, result, hint = self.last_outcome
        self._give_up("deadline", error, result, hint)


def _attempt_timeout_error(seconds: float, attempt: int) -> ExternalServiceError:
    return ExternalServiceError(
        f"attempt {attempt} timed out after {seconds:g} s",
        code="attempt_timeout",
        details={"attempt": attempt, "timeout": seconds},
    )


def _sync_retry_loop(
    config: RetryConfig,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    state: _RetryState,
    delay: float,
) -> Any:
    sleep = config.clock.sleep
    retry_on = config.retry_on
    while True:
        if delay > 0:
            sleep(delay)
        error: BaseException | None = None
        try:
            result = fn(*args, **kwargs)
        except retry_on as caught:
            error = caught
        if error is not None:
            delay = state.on_error(error)
            del error
            continue
        delay_or_none = state.on_result(result)
        if delay_or_none is None:
            return result
        delay = delay_or_none


async def _async_attempt(
    state: _RetryState, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
) -> tuple[bool, Any]:
    """Run one async attempt under its timeout: (True, result) or (False, delay)."""
    limit, deadline_binds = state.attempt_timeout()
    if limit is None:
        try:
            return True, await fn(*args, **kwargs)
        except state.config.retry_on as error:
            return False, state.on_error(error)
    if limit <= 0:
        state.deadline_passed_before_attempt()
    try:
        async with asyncio.timeout(limit) as scope:
            return True, await fn(*args, **kwargs)
    except TimeoutError as error:
        if not scope.expired():  # the callable's own TimeoutError, not our scope's
            if not isinstance(error, state.config.retry_on):
                raise
            return False, state.on_error(error)
        if deadline_binds:
            timeout_error = _attempt_timeout_error(limit, state.attempt)
            timeout_error.__cause__ = error
            state.deadline_expired(timeout_error)
        timeout_error = _attempt_timeout_error(limit, state.attempt)
        timeout_error.__cause__ = error
        return False, state.on_error(timeout_error, timed_out=True)
    except state.config.retry_on as error:
        return False, state.on_error(error)


async def _async_retry_loop(
    config: RetryConfig,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    state: _RetryState,
    delay: float,
) -> Any:
    sleep = config.clock.async_sleep
    while True:
        if delay > 0:
            await sleep(delay)
        ok, value = await _async_attempt(state, fn, args, kwargs)
        if not ok:
            delay = value
            continue
        delay_or_none = state.on_result(value)
        if delay_or_none is None:
            return value
        delay = delay_or_none


def _wrap(config: RetryConfig, fn: Callable[P, T]) -> Callable[P, T]:
    now = config.clock.now
    retry_on = config.retry_on
    budget = config.budget
    check_result = config.retry_if_result

    # The first attempt runs inline; the retry loop is entered only after a failure (or a
    # rejected result), and outside the ``except`` block so that later errors do not carry the
    # first one as their ``__context__``.
    if inspect.iscoroutinefunction(fn):
        afn: Callable[..., Awaitable[Any]] = fn
        needs_timeout = config.attempt_timeout is not None or config.deadline is not None

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            start = now()
            if budget is not None:
                budget.on_request()
            if needs_timeout:
                state = _RetryState(config, start)
                ok, value = await _async_attempt(state, afn, args, kwargs)
                if ok:
                    delay = state.on_result(value)
                    if delay is None:
                        return value
                else:
                    delay = value
                return await _async_retry_loop(config, afn, args, kwargs, state, delay)
            try:
                result = await afn(*args, **kwargs)
            except retry_on as error:
                state = _RetryState(config, start)
                delay = state.on_error(error)
            else:
                if check_result is None:
                    if budget is not None:
                        budget.on_success()
                    return result
                state = _RetryState(config, start)
                delay_or_none = state.on_result(result)
                if delay_or_none is None:
                    return result
                delay = delay_or_none
            return await _async_retry_loop(config, afn, args, kwargs, state, delay)

        async_wrapper.retry_config = config  # type: ignore[attr-defined]
        return cast("Callable[P, T]", async_wrapper)

    if config.attempt_timeout is not None:
        raise ValidationError(
            f"retry: attempt_timeout={config.attempt_timeout!r} cannot cancel a sync call "
            f"({getattr(fn, '__qualname__', fn)!r}); give the call its own timeout "
            "(e.g. httpx.Client(timeout=...)) or make it async",
            code="invalid_config",
            details={"field": "attempt_timeout"},
        )

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now()
        if budget is not None:
            budget.on_request()
        try:
            result = fn(*args, **kwargs)
        except retry_on as error:
            state = _RetryState(config, start)
            delay = state.on_error(error)
        else:
            if check_result is None:
                if budget is not None:
                    budget.on_success()
                return result
            state = _RetryState(config, start)
            delay_or_none = state.on_result(result)
            if delay_or_none is None:
                return result
            delay = delay_or_none
        return _sync_retry_loop(config, fn, args, kwargs, state, delay)

    sync_wrapper.retry_config = config  # type: ignore[attr-defined]
    return cast("Callable[P, T]", sync_wrapper)


@overload
def retry(config: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def retry(
    config: RetryConfig | None = None, /, **overrides: Any
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def retry(config: Any = None, /, **overrides: Any) -> Any:
    """Decorate a sync or async callable with a retry policy.

    ``@retry``, ``@retry(config)``, ``@retry(max_attempts=5, jitter=Jitter.FULL)`` or
    ``@retry(config, deadline=30.0)`` (keyword overrides applied to ``config``). The wrapped
    function exposes its policy as ``.retry_config``.
    """
    if callable(config) and not isinstance(config, RetryConfig):
        return _wrap(RetryConfig(), config)
    if config is None:
        config = _from_fields(overrides)
    elif not isinstance(config, RetryConfig):
        raise TypeError(
            f"retry() takes a RetryConfig or keyword fields, got {type(config).__name__}; "
            "write @retry(RetryConfig(max_attempts=5)) or @retry(max_attempts=5)"
        )
    elif overrides:
        config = _replace(config, overrides)

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        if not callable(fn):
            raise TypeError(f"@retry decorates a callable, got {type(fn).__name__}")
        return _wrap(config, fn)

    return decorate


def _replace(config: RetryConfig, overrides: dict[str, Any]) -> RetryConfig:
    import dataclasses

    try:
        return dataclasses.replace(config, **overrides)
    except TypeError as error:
        raise TypeError(f"{error}; {_known_fields()}") from None


def _from_fields(fields: dict[str, Any]) -> RetryConfig:
    """``RetryConfig(**fields)``, whose TypeError for a misspelt field lists the real ones."""
    try:
        return RetryConfig(**fields)
    except TypeError as error:
        raise TypeError(f"{error}; {_known_fields()}") from None


def _known_fields() -> str:
    import dataclasses

    known = sorted(f.name for f in dataclasses.fields(RetryConfig) if f.name != "_")
    return f"RetryConfig fields are {known}"


class Attempt:
    """One attempt in the block form; use it as ``with attempt:`` (or ``async with`` to apply
    ``attempt_timeout``). Exceptions inside are recorded and suppressed; the loop decides.
    ``set_result(value)`` lets ``retry_if_result`` judge a value."""

    __slots__ = ("_error", "_has_result", "_result", "_scope", "_timed_out", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self._error: BaseException | None = None
        self._result: Any = None
        self._has_result = False
        self._scope: asyncio.Timeout | None = None
        self._timed_out = False

    def set_result(self, value: Any) -> None:
        self._result = value
        self._has_result = True

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit):
            return False
        self._error = exc
        return True

    async def __aenter__(self) -> Attempt:
        if self._scope is not None:
            await self._scope.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            try:
                await self._scope.__aexit__(exc_type, exc, tb)
            except TimeoutError as error:
                self._timed_out = True
                self._error = error
                return True
        return self.__exit__(exc_type, exc, tb)


class Retrying:
    """The block form: iterate (sync ``for`` or ``async for``) to get :class:`Attempt`\\ s."""

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        self._state: _RetryState | None = None
        self._current: Attempt | None = None
        self._limit = 0.0
        self._deadline_binds = False

    def _begin(self) -> Attempt:
        config = self.config
        if config.budget is not None:
            config.budget.on_request()
        self._state = _RetryState(config, config.clock.now())
        self._current = Attempt(1)
        return self._current

    def _after(self) -> float | None:
        """None when the last attempt is accepted; else the delay before the next."""
        state, attempt = self._state, self._current
        if state is None or attempt is None:
            raise RuntimeError("retrying(): iterate the Retrying object to get attempts")
        error = attempt._error
        if error is None:
            return state.on_result(attempt._result if attempt._has_result else None)
        if not attempt._timed_out:
            return state.on_error(error)
        timeout_error = _attempt_timeout_error(self._limit, attempt.number)
        timeout_error.__cause__ = error
        if self._deadline_binds:
            state.deadline_expired(timeout_error)
        return state.on_error(timeout_error, timed_out=True)

    def __iter__(self) -> Iterator[Attempt]:
        if self.config.attempt_timeout is not None:
            raise ValidationError(
                "retrying(): attempt_timeout cannot cancel sync code; use `async for` with "
                "`async with attempt:` or give the call its own timeout",
                code="invalid_config",
                details={"field": "attempt_timeout"},
            )
        attempt = self._begin()
        sleep = self.config.clock.sleep
        while True:
            yield attempt
            delay = self._after()
            if delay is None:
                return
            if delay > 0:
                sleep(delay)
            attempt = self._current = Attempt(attempt.number + 1)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        attempt = self._begin()
        sleep = self.config.clock.async_sleep
        while True:
            self._arm(attempt)
            yield attempt
            delay = self._after()
            if delay is None:
                return
            if delay > 0:
                await sleep(delay)
            attempt = self._current = Attempt(attempt.number + 1)

    def _arm(self, attempt: Attempt) -> None:
        state = self._state
        if state is None:
            raise RuntimeError("retrying(): iterate the Retrying object to get attempts")
        limit, binds = state.attempt_timeout()
        if limit is None:
            return
        if limit <= 0:
            state.deadline_passed_before_attempt()
        self._limit, self._deadline_binds = limit, binds
        attempt._scope = asyncio.timeout(limit)


def retrying(config: RetryConfig | None = None, /, **overrides: Any) -> Retrying:
    """The block form of :func:`retry`: ``for attempt in retrying(config): with attempt: ...``.

    Works with ``async for`` too; there ``async with attempt:`` applies ``attempt_timeout`` and
    the deadline to the block. After the loop the block's result is whatever it assigned.
    """
    if config is None:
        config = _from_fields(overrides)
    elif overrides:
        config = _replace(config, overrides)
    return Retrying(config)
