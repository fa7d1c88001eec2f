"""Retry with exponential backoff, jitter, server hints, deadlines and budgets.

One policy object, :class:`RetryConfig`, and three ways to use it, sync or async:

>>> @retry(RetryConfig(max_attempts=5, jitter=Jitter.FULL))
... async def chat(prompt: str) -> str: ...

>>> for attempt in retry_context(RetryConfig(max_attempts=3)):   # block form
...     with attempt:
...         result = do_something()

>>> async for attempt in retry_context(config):                 # async block form
...     async with attempt:                                     # applies attempt_timeout
...         result = await do_something()

Times are seconds on the config's clock; ``attempt`` numbers are 1-based, ``calculate_delay``
takes the 0-based retry index. Server hints, non-retryable errors, deadlines, budgets:
``docs/design/retry.md``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from flashkit._retry_config import Jitter, RetryConfig, RetryEvent
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
    "RetryContext",
    "RetryEvent",
    "retry",
    "retry_context",
]

P = ParamSpec("P")
T = TypeVar("T")

# Control flow, not failures: never retried, whatever retry_on says.
_NEVER_RETRIED: Final = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class _RetryState:
    """The retry decision, shared by every form (decorator, block, sync and async)."""

    __slots__ = (
        "attempt",
        "attempt_start",
        "config",
        "last_outcome",
        "last_timeout",
        "previous_delay",
        "start",
    )

    def __init__(self, config: RetryConfig, start: float) -> None:
        self.config = config
        self.start = start
        self.attempt_start = start  # when the attempt in progress began (backoff_from_start)
        self.attempt = 1
        self.previous_delay: float | None = None
        self.last_timeout = False
        # (error, result, hint) of the attempt that led to the pending retry.
        self.last_outcome: tuple[BaseException | None, Any, float | None] = (None, None, None)

    def elapsed(self) -> float:
        return self.config.clock.now() - self.start

    def begin_attempt(self) -> None:
        """A retry starts now (its predecessor's delay is over)."""
        self.attempt_start = self.config.clock.now()

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
        if config.backoff_from_start:  # the failed attempt's own time counts towards the delay
            delay = max(0.0, delay - (config.clock.now() - self.attempt_start))
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


_R = TypeVar("_R")
_Invocation = tuple[Callable[..., _R], tuple[Any, ...], dict[str, Any]]
"""A call to repeat: the function, its positional and its keyword arguments."""


async def _async_retrying(config: RetryConfig, call: _Invocation[Awaitable[Any]]) -> Any:
    """An async call with retries, every attempt under its timeout (the general path)."""
    state = _RetryState(config, config.clock.now())
    if config.budget is not None:
        config.budget.on_request()
    ok, value = await _async_attempt(state, *call)
    if ok:
        delay = state.on_result(value)
        if delay is None:
            return value
    else:
        delay = value
    return await _async_retry_loop(config, call, state, delay)


def _first_failure(
    config: RetryConfig, start: float, error: BaseException
) -> tuple[_RetryState, float]:
    """The first attempt failed with a retryable error: the state and the delay before the next."""
    state = _RetryState(config, start)
    return state, state.on_error(error)


def _first_result(
    config: RetryConfig, start: float, result: Any
) -> tuple[_RetryState, float] | None:
    """The first attempt returned: None when the result is accepted (the budget is told of the
    success), else the state and the delay before the next attempt."""
    if config.retry_if_result is None:
        if config.budget is not None:
            config.budget.on_success()
        return None
    state = _RetryState(config, start)
    delay = state.on_result(result)
    return None if delay is None else (state, delay)


def _sync_retry_loop(
    config: RetryConfig, call: _Invocation[Any], state: _RetryState, delay: float
) -> Any:
    fn, args, kwargs = call
    sleep = config.clock.sleep_sync
    retry_on = config.retry_on
    while True:
        if delay > 0:
            sleep(delay)
        state.begin_attempt()
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
    config: RetryConfig, call: _Invocation[Awaitable[Any]], state: _RetryState, delay: float
) -> Any:
    fn, args, kwargs = call
    sleep = config.clock.sleep
    while True:
        if delay > 0:
            await sleep(delay)
        state.begin_attempt()
        ok, value = await _async_attempt(state, fn, args, kwargs)
        if not ok:
            delay = value
            continue
        delay_or_none = state.on_result(value)
        if delay_or_none is None:
            return value
        delay = delay_or_none


# The first attempt runs inline in both wrappers; the retry loop is entered only after a failure
# (or a rejected result), and outside the ``except`` block so that later errors do not carry the
# first one as their ``__context__``.
def _wrap(config: RetryConfig, fn: Callable[P, T]) -> Callable[P, T]:
    if inspect.iscoroutinefunction(fn):
        return _wrap_async(config, fn)
    return _wrap_sync(config, fn)


def _wrap_async(config: RetryConfig, afn: Callable[..., Awaitable[Any]]) -> Callable[P, T]:
    now = config.clock.now
    retry_on = config.retry_on
    budget = config.budget
    needs_timeout = config.attempt_timeout is not None or config.deadline is not None

    @functools.wraps(afn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        if needs_timeout:  # the shared path: every attempt under its timeout
            return await _async_retrying(config, (afn, args, kwargs))
        # The fast path, inlined (the report's primitives benchmark shows what it saves):
        start = now()
        if budget is not None:
            budget.on_request()
        try:
            result = await afn(*args, **kwargs)
        except retry_on as error:
            first: tuple[_RetryState, float] | None = _first_failure(config, start, error)
        else:
            first = _first_result(config, start, result)
        if first is None:
            return result
        return await _async_retry_loop(config, (afn, args, kwargs), *first)

    async_wrapper.retry_config = config  # type: ignore[attr-defined]
    return cast("Callable[P, T]", async_wrapper)


def _wrap_sync(config: RetryConfig, fn: Callable[P, T]) -> Callable[P, T]:
    if config.attempt_timeout is not None:
        raise ValidationError(
            f"retry: attempt_timeout={config.attempt_timeout!r} cannot cancel a sync call "
            f"({getattr(fn, '__qualname__', fn)!r}); give the call its own timeout "
            "(e.g. httpx.Client(timeout=...)) or make it async",
            code="invalid_config",
            details={"field": "attempt_timeout"},
        )
    now = config.clock.now
    retry_on = config.retry_on
    budget = config.budget

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now()
        if budget is not None:
            budget.on_request()
        try:
            result = fn(*args, **kwargs)
        except retry_on as error:
            first: tuple[_RetryState, float] | None = _first_failure(config, start, error)
        else:
            first = _first_result(config, start, result)
        if first is None:
            return result
        return _sync_retry_loop(config, (fn, args, kwargs), *first)

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

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
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


class RetryContext:
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
            raise RuntimeError("retry_context(): iterate the RetryContext to get attempts")
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
                "retry_context(): attempt_timeout cannot cancel sync code; use `async for` with "
                "`async with attempt:` or give the call its own timeout",
                code="invalid_config",
                details={"field": "attempt_timeout"},
            )
        attempt = self._begin()
        sleep = self.config.clock.sleep_sync
        while True:
            yield attempt
            delay = self._after()
            if delay is None:
                return
            if delay > 0:
                sleep(delay)
            attempt = self._next(attempt)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        attempt = self._begin()
        sleep = self.config.clock.sleep
        while True:
            self._arm(attempt)
            yield attempt
            delay = self._after()
            if delay is None:
                return
            if delay > 0:
                await sleep(delay)
            attempt = self._next(attempt)

    def _next(self, attempt: Attempt) -> Attempt:
        """The attempt after ``attempt``, starting now."""
        if self._state is not None:
            self._state.begin_attempt()
        self._current = Attempt(attempt.number + 1)
        return self._current

    def _arm(self, attempt: Attempt) -> None:
        state = self._state
        if state is None:
            raise RuntimeError("retry_context(): iterate the RetryContext to get attempts")
        limit, binds = state.attempt_timeout()
        if limit is None:
            return
        if limit <= 0:
            state.deadline_passed_before_attempt()
        self._limit, self._deadline_binds = limit, binds
        attempt._scope = asyncio.timeout(limit)


def retry_context(config: RetryConfig | None = None, /, **overrides: Any) -> RetryContext:
    """The block form of :func:`retry`: ``for attempt in retry_context(config): with attempt: ...``.

    Works with ``async for`` too; there ``async with attempt:`` applies ``attempt_timeout`` and
    the deadline to the block. After the loop the block's result is whatever it assigned.
    """
    if config is None:
        config = _from_fields(overrides)
    elif overrides:
        config = _replace(config, overrides)
    return RetryContext(config)
