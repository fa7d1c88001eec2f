"""flashkit.retry: policy validation, delay maths, decorator/block forms, hints, deadlines, budgets.

Everything runs in virtual time: sync code uses a :class:`VirtualClock` subclass that records each
sleep (and refuses zero-second sleeps, which the module promises never to make); async code runs
under :func:`run_virtual` driven by the same clock, so ``asyncio.sleep``/``asyncio.timeout`` advance
virtual seconds. Every random draw comes from a seeded ``random.Random``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashkit.budget import RetryTokenBucket
from flashkit.clock import VirtualClock, run_virtual, use_clock
from flashkit.errors import (
    AuthenticationError,
    ExternalServiceError,
    RateLimitError,
    RetryExhausted,
    ValidationError,
)
from flashkit.retry import Jitter, RetryConfig, RetryEvent, retry, retry_context

T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------------------


class ZeroSleepError(BaseException):
    """Raised by the test clocks on a sleep of <= 0 s (a BaseException: never retried)."""


class RecordingClock(VirtualClock):
    """A VirtualClock that records every sync and async sleep and refuses zero-second sleeps."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def _record(self, seconds: float) -> None:
        if not seconds > 0:
            raise ZeroSleepError(seconds)
        self.sleeps.append(seconds)

    def sleep_sync(self, seconds: float) -> None:
        self._record(seconds)
        super().sleep_sync(seconds)

    async def sleep(self, seconds: float) -> None:
        self._record(seconds)
        await super().sleep(seconds)


class Script:
    """A callable whose n-th call (1-based) raises or returns ``outcome(n)``; records call times."""

    def __init__(self, clock: VirtualClock, outcome: Callable[[int], object]) -> None:
        self.clock = clock
        self.outcome = outcome
        self.times: list[float] = []
        self.errors: list[BaseException] = []

    @property
    def calls(self) -> int:
        return len(self.times)

    def _next(self) -> object:
        self.times.append(self.clock.now())
        out = self.outcome(len(self.times))
        if isinstance(out, BaseException):
            self.errors.append(out)
            raise out
        return out

    def sync(self) -> object:
        return self._next()

    async def run_async(self) -> object:
        await asyncio.sleep(0)
        return self._next()


def fail_then(failures: int, value: object = "ok") -> Callable[[int], object]:
    """Outcome: a fresh ConnectionError for the first ``failures`` calls, then ``value``."""
    return lambda n: ConnectionError(f"failure {n}") if n <= failures else value


def always_fail(n: int) -> object:
    """Outcome: a fresh ConnectionError on every call."""
    return ConnectionError(f"failure {n}")


def make(clock: VirtualClock, *, seed: int = 0, **fields: Any) -> RetryConfig:
    """A RetryConfig on ``clock`` with a seeded rng."""
    return RetryConfig(clock=clock, rng=random.Random(seed), **fields)


def run(main: Coroutine[Any, Any, T], clock: VirtualClock) -> T:
    """Run ``main`` in virtual time driven by ``clock``."""
    return run_virtual(main, clock=clock)


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock()


def _http_error(status: int, headers: dict[str, str] | None = None) -> httpx2.HTTPStatusError:
    request = httpx2.Request("POST", "https://api.example.com/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return httpx2.HTTPStatusError(f"HTTP {status}", request=request, response=response)


# --- 1. the original plan's defaults (docs/origins.md) --------------------------------------------


def test_defaults_match_the_plan() -> None:
    """RetryConfig() has the original plan's six defaults (jitter=True normalised to EQUAL)."""
    config = RetryConfig()
    assert config.max_attempts == 3
    assert config.initial_delay == 1.0
    assert config.max_delay == 60.0
    assert config.exponential_base == 2.0
    assert config.jitter is Jitter.EQUAL
    assert config.retry_on == (Exception,)
    assert config.deadline is None
    assert config.attempt_timeout is None
    assert config.budget is None


def test_plan_fields_are_positional() -> None:
    """The original plan's six fields can be passed positionally, in its order."""
    config = RetryConfig(5, 0.5, 10.0, 3.0, False, (ConnectionError,))
    assert (config.max_attempts, config.initial_delay, config.max_delay) == (5, 0.5, 10.0)
    assert config.exponential_base == 3.0
    assert config.jitter is Jitter.NONE
    assert config.retry_on == (ConnectionError,)


def test_other_fields_are_keyword_only() -> None:
    """A seventh positional argument is refused: everything past retry_on is keyword-only."""
    with pytest.raises(TypeError, match="positional"):
        RetryConfig(3, 1.0, 60.0, 2.0, True, (Exception,), None)  # type: ignore[call-arg]


def test_single_exception_type_is_normalised_to_tuple() -> None:
    """retry_on=SomeError is accepted and stored as a one-element tuple."""
    config = RetryConfig(retry_on=ConnectionError)  # type: ignore[arg-type]
    assert config.retry_on == (ConnectionError,)


# --- 2. calculate_delay ------------------------------------------------------------------------


def test_no_jitter_is_exact_capped_exponential() -> None:
    """Jitter.NONE gives exactly min(max_delay, initial_delay * base**n)."""
    config = RetryConfig(initial_delay=0.5, max_delay=100.0, exponential_base=3.0, jitter=False)
    got = [config.calculate_delay(n) for n in range(8)]
    assert got == [min(100.0, 0.5 * 3.0**n) for n in range(8)]
    assert got[-1] == 100.0


@pytest.mark.parametrize(
    ("jitter", "low_fraction", "mean_fraction"),
    [(Jitter.FULL, 0.0, 0.5), (Jitter.EQUAL, 0.5, 0.75)],
)
def test_jitter_range_and_mean(jitter: Jitter, low_fraction: float, mean_fraction: float) -> None:
    """FULL samples lie in [0, v] with mean v/2; EQUAL in [v/2, v] with mean 3v/4 (20k draws)."""
    config = RetryConfig(jitter=jitter, rng=random.Random(1234))
    v = RetryConfig(jitter=Jitter.NONE).calculate_delay(3)
    assert v == 8.0
    samples = [config.calculate_delay(3) for _ in range(20_000)]
    assert min(samples) >= low_fraction * v
    assert max(samples) <= v
    # Standard error of the mean is ~0.016 s here; 0.1 s is > 6 standard errors.
    assert statistics.fmean(samples) == pytest.approx(mean_fraction * v, abs=0.1)
    # The spread really covers the interval, not a corner of it.
    assert min(samples) < (low_fraction + 0.01) * v
    assert max(samples) > 0.99 * v


@pytest.mark.parametrize(
    ("flag", "kind"), [(True, Jitter.EQUAL), (False, Jitter.NONE), ("full", Jitter.FULL)]
)
def test_bool_and_string_jitter_aliases(flag: Any, kind: Jitter) -> None:
    """jitter=True is EQUAL, False is NONE and "full" is FULL: same kind, same delays."""
    aliased = RetryConfig(max_attempts=8, jitter=flag, rng=random.Random(7))
    explicit = RetryConfig(max_attempts=8, jitter=kind, rng=random.Random(7))
    assert aliased.jitter is kind
    assert aliased.delays() == explicit.delays()


def test_jitter_string_is_case_insensitive() -> None:
    """jitter="Decorrelated" is accepted and normalised to the enum."""
    assert RetryConfig(jitter="Decorrelated").jitter is Jitter.DECORRELATED  # type: ignore[arg-type]


@pytest.mark.parametrize("previous", [0.1, 1.0, 2.5, 7.0, 30.0, 500.0])
def test_decorrelated_bounds(previous: float) -> None:
    """DECORRELATED draws lie in [initial, min(cap, 3*previous)] (or exactly initial if larger)."""
    config = RetryConfig(initial_delay=1.0, max_delay=20.0, jitter=Jitter.DECORRELATED)
    rng = random.Random(99)
    upper = min(20.0, max(1.0, 3 * previous))
    samples = [config.calculate_delay(4, previous=previous, rng=rng) for _ in range(2_000)]
    assert all(1.0 <= s <= upper for s in samples)
    if upper > 1.0:
        assert max(samples) > 1.0 + 0.9 * (upper - 1.0)
    else:
        assert set(samples) == {1.0}


def test_decorrelated_chain_never_exceeds_max_delay() -> None:
    """A long DECORRELATED chain (previous fed back) stays within [initial, max_delay]."""
    config = RetryConfig(
        max_attempts=200, initial_delay=0.5, max_delay=10.0, jitter=Jitter.DECORRELATED
    )
    delays = config.delays(rng=random.Random(5))
    assert len(delays) == 199
    assert all(0.5 <= d <= 10.0 for d in delays)
    assert max(delays) > 9.0  # the chain does reach the cap region
    for previous, current in itertools.pairwise(delays):
        assert current <= min(10.0, 3 * previous) + 1e-12


@pytest.mark.parametrize("jitter", list(Jitter))
def test_huge_attempt_is_capped_not_overflowing(jitter: Jitter) -> None:
    """An attempt index whose power overflows a float gives at most max_delay, never an error."""
    config = RetryConfig(jitter=jitter, rng=random.Random(3))
    delay = config.calculate_delay(10_000)
    assert 0.0 <= delay <= 60.0
    if jitter is Jitter.NONE:
        assert delay == 60.0
    assert RetryConfig(exponential_base=2, jitter=False).calculate_delay(100_000) == 60.0


def test_zero_initial_delay_stays_zero_for_huge_attempts() -> None:
    """initial_delay=0 means no backoff at all, even where base**n overflows a float."""
    config = RetryConfig(initial_delay=0.0, jitter=False)
    assert config.calculate_delay(10) == 0.0
    assert config.calculate_delay(5_000) == 0.0


def test_negative_attempt_is_refused() -> None:
    """calculate_delay(-1) raises ValueError: the index is 0-based."""
    with pytest.raises(ValueError, match="0-based"):
        RetryConfig().calculate_delay(-1)


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 7])
def test_delays_has_one_value_per_retry(max_attempts: int) -> None:
    """delays() returns max_attempts - 1 values, the same ones calculate_delay gives."""
    config = RetryConfig(max_attempts=max_attempts)
    delays = config.delays(rng=random.Random(11))
    assert len(delays) == max_attempts - 1
    rng = random.Random(11)
    assert delays == [config.calculate_delay(n, rng=rng) for n in range(max_attempts - 1)]


# --- 3. validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_delay": -1.0}, "initial_delay"),
        ({"initial_delay": math.nan}, "initial_delay"),
        ({"initial_delay": math.inf}, "initial_delay"),
        ({"max_delay": -0.5}, "max_delay"),
        ({"max_delay": math.nan}, "max_delay"),
        ({"initial_delay": 5.0, "max_delay": 1.0}, "max_delay"),
        ({"exponential_base": 0.5}, "exponential_base"),
        ({"exponential_base": math.nan}, "exponential_base"),
        ({"exponential_base": "2"}, "exponential_base"),
        ({"jitter": "gaussian"}, "jitter"),
        ({"jitter": 1}, "jitter"),
        ({"jitter": None}, "jitter"),
        ({"retry_on": (ValueError, "x")}, "retry_on"),
        ({"retry_on": [ValueError]}, "retry_on"),
        ({"retry_on": (int,)}, "retry_on"),
        ({"retry_on": ValueError("x")}, "retry_on"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -1.0}, "deadline"),
        ({"deadline": math.nan}, "deadline"),
        ({"attempt_timeout": 0.0}, "attempt_timeout"),
        ({"attempt_timeout": -3}, "attempt_timeout"),
        ({"max_retry_after": -1.0}, "max_retry_after"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
        ({"retry_after_jitter": -0.1}, "retry_after_jitter"),
        ({"retry_if": 5}, "retry_if"),
        ({"retry_if_result": "yes"}, "retry_if_result"),
        ({"on_retry": 1}, "on_retry"),
        ({"on_giveup": object()}, "on_giveup"),
        ({"budget": object()}, "budget"),
        ({"budget": 10}, "budget"),
    ],
)
def test_bad_field_raises_validation_error_naming_it(fields: dict[str, Any], field: str) -> None:
    """Each invalid field raises ValidationError whose message names the field and a fix."""
    with pytest.raises(ValidationError) as excinfo:
        RetryConfig(**fields)
    error = excinfo.value
    assert error.details["field"] == field
    assert error.code == "invalid_config"
    assert f"RetryConfig({field}=" in error.message
    rule_and_fix = error.message.split("): ", 1)[1]
    rule, fix = rule_and_fix.split("; ", 1)
    assert rule.strip()
    assert len(fix.strip()) > 5  # a concrete hint follows the rule
    assert not error.retryable


def test_validation_error_is_a_value_error() -> None:
    """Config errors are also ValueErrors, so generic handlers still catch them."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryConfig(max_attempts=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: retry(max_attotempts=3),
        lambda: retry_context(max_attotempts=3),
        lambda: retry(RetryConfig(), max_attotempts=3),
        lambda: retry_context(RetryConfig(), max_attotempts=3),
    ],
    ids=["retry", "retry_context", "retry-override", "retry_context-override"],
)
def test_typo_in_keyword_fields_lists_the_fields(build: Callable[[], object]) -> None:
    """A misspelt keyword raises TypeError naming the typo and listing RetryConfig's fields."""
    with pytest.raises(TypeError, match="max_attotempts") as excinfo:
        build()
    message = str(excinfo.value)
    for name in ("max_attempts", "initial_delay", "jitter", "retry_on", "deadline", "budget"):
        assert repr(name) in message


def test_retry_rejects_non_config_positional() -> None:
    """retry(5) is a TypeError explaining the accepted forms."""
    with pytest.raises(TypeError, match="RetryConfig"):
        retry(5)  # type: ignore[call-overload]


# --- 4. sync decorator -------------------------------------------------------------------------


def test_sync_success_first_time(clock: RecordingClock) -> None:
    """A call that succeeds is made once and never sleeps."""
    script = Script(clock, lambda n: "ok")
    assert retry(make(clock))(script.sync)() == "ok"
    assert script.calls == 1
    assert clock.sleeps == []
    assert clock.now() == 0.0


def test_sync_retries_then_succeeds_with_seeded_delays(clock: RecordingClock) -> None:
    """Two failures then success: 3 calls, waits exactly the seeded calculate_delay sequence."""
    script = Script(clock, fail_then(2))
    assert retry(make(clock, seed=42))(script.sync)() == "ok"
    assert script.calls == 3
    expected = RetryConfig(rng=random.Random(42)).delays()
    assert len(expected) == 2
    assert clock.sleeps == expected
    assert script.times == [0.0, expected[0], expected[0] + expected[1]]
    assert 0.5 <= expected[0] <= 1.0
    assert 1.0 <= expected[1] <= 2.0


def test_sync_passes_arguments_through(clock: RecordingClock) -> None:
    """Positional and keyword arguments reach every attempt unchanged."""
    seen: list[tuple[Any, ...]] = []

    @retry(make(clock, initial_delay=0.0))
    def add(a: int, b: int = 0) -> int:
        seen.append((a, b))
        if len(seen) < 2:
            raise ConnectionError("once")
        return a + b

    assert add(2, b=3) == 5
    assert seen == [(2, 3), (2, 3)]


def test_sync_exhausted(clock: RecordingClock) -> None:
    """Always failing: RetryExhausted(attempts=3) caused by the last error, virtual elapsed."""
    script = Script(clock, always_fail)
    with pytest.raises(RetryExhausted) as excinfo:
        retry(make(clock, seed=3))(script.sync)()
    error = excinfo.value
    assert script.calls == 3
    assert error.attempts == 3
    assert error.reason == "attempts"
    assert error.__cause__ is script.errors[-1]
    assert error.last_error is script.errors[-1]
    assert error.elapsed == clock.now() == script.times[-1]
    assert clock.now() == pytest.approx(sum(clock.sleeps))
    assert len(clock.sleeps) == 2
    assert not error.retryable


def test_exception_outside_retry_on_propagates_unchanged(clock: RecordingClock) -> None:
    """An exception not in retry_on is raised as-is after one call."""
    script = Script(clock, lambda n: KeyError(n))
    with pytest.raises(KeyError) as excinfo:
        retry(make(clock, retry_on=(ConnectionError,)))(script.sync)()
    assert excinfo.value is script.errors[0]
    assert script.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("prompt too long"),
        AuthenticationError("bad key"),
        RateLimitError("quota exceeded", code="quota_exceeded", retryable=False),
        _http_error(401),
    ],
    ids=["validation", "authentication", "quota", "httpx-401"],
)
def test_non_retryable_errors_are_reraised_at_once(
    clock: RecordingClock, error: BaseException
) -> None:
    """Permanent errors (retryable=False, or classified permanent) are re-raised after 1 call."""
    giveups: list[RetryEvent] = []
    script = Script(clock, lambda n: error)
    with pytest.raises(type(error)) as excinfo:
        retry(make(clock, on_giveup=giveups.append))(script.sync)()
    assert excinfo.value is error
    assert script.calls == 1
    assert clock.sleeps == []
    assert [e.reason for e in giveups] == ["not_retryable"]


def test_retry_if_can_veto(clock: RecordingClock) -> None:
    """retry_if narrows retry_on: a vetoed error is re-raised at once, others are retried."""

    def transient(error: BaseException) -> bool:
        return "transient" in str(error)

    vetoed = Script(clock, lambda n: ConnectionError("fatal"))
    with pytest.raises(ConnectionError, match="fatal"):
        retry(make(clock, retry_if=transient))(vetoed.sync)()
    assert vetoed.calls == 1

    allowed = Script(clock, lambda n: ConnectionError("transient") if n < 3 else "ok")
    assert retry(make(clock, retry_if=transient))(allowed.sync)() == "ok"
    assert allowed.calls == 3


def test_retry_if_result_retries_then_accepts(clock: RecordingClock) -> None:
    """A result the predicate rejects is retried; the first accepted one is returned."""
    script = Script(clock, lambda n: {"status": "pending" if n < 3 else "done", "n": n})
    wrapped = retry(make(clock, retry_if_result=lambda r: r["status"] == "pending"))(script.sync)
    assert wrapped() == {"status": "done", "n": 3}
    assert script.calls == 3
    assert len(clock.sleeps) == 2


def test_retry_if_result_gives_up_with_last_result(clock: RecordingClock) -> None:
    """Never-acceptable results end in RetryExhausted(reason="result") carrying the last one."""
    script = Script(clock, lambda n: {"status": "pending", "n": n})
    wrapped = retry(make(clock, retry_if_result=lambda r: r["status"] == "pending"))(script.sync)
    with pytest.raises(RetryExhausted) as excinfo:
        wrapped()
    error = excinfo.value
    assert error.reason == "result"
    assert error.last_result == {"status": "pending", "n": 3}
    assert error.last_error is None
    assert error.attempts == 3
    assert script.calls == 3


def test_bare_decorator_uses_defaults_and_default_clock(clock: RecordingClock) -> None:
    """@retry without arguments applies RetryConfig() on the clock chosen by use_clock."""
    script = Script(clock, always_fail)
    with use_clock(clock):

        @retry
        def call() -> object:
            return script.sync()

    assert call.retry_config.max_attempts == 3  # type: ignore[attr-defined]
    assert call.retry_config.clock is clock  # type: ignore[attr-defined]
    with pytest.raises(RetryExhausted):
        call()
    assert script.calls == 3
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0
    assert 1.0 <= clock.sleeps[1] <= 2.0


def test_decorator_with_config(clock: RecordingClock) -> None:
    """@retry(config) exposes that very config as .retry_config and follows it."""
    config = make(clock, max_attempts=4, initial_delay=0.25, jitter=False)
    script = Script(clock, always_fail)
    wrapped = retry(config)(script.sync)
    assert wrapped.retry_config is config  # type: ignore[attr-defined]
    with pytest.raises(RetryExhausted):
        wrapped()
    assert script.calls == 4
    assert clock.sleeps == [0.25, 0.5, 1.0]


def test_decorator_with_keyword_fields(clock: RecordingClock) -> None:
    """@retry(max_attempts=5, ...) builds the config from keywords."""
    script = Script(clock, always_fail)
    wrapped = retry(max_attempts=5, jitter=False, clock=clock)(script.sync)
    assert wrapped.retry_config.max_attempts == 5  # type: ignore[attr-defined]
    with pytest.raises(RetryExhausted) as excinfo:
        wrapped()
    assert excinfo.value.attempts == 5
    assert script.calls == 5
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]


def test_decorator_with_config_and_overrides(clock: RecordingClock) -> None:
    """@retry(config, deadline=...) overrides fields, keeps the rest and leaves config alone."""
    rng = random.Random(0)
    config = RetryConfig(max_attempts=6, jitter=Jitter.FULL, clock=clock, rng=rng)
    wrapped = retry(config, deadline=7.0)(Script(clock, lambda n: "ok").sync)
    derived = wrapped.retry_config  # type: ignore[attr-defined]
    assert derived.deadline == 7.0
    assert config.deadline is None
    assert derived.max_attempts == 6
    assert derived.jitter is Jitter.FULL
    assert derived.clock is clock
    assert derived.rng is rng


def test_wraps_keeps_metadata(clock: RecordingClock) -> None:
    """functools.wraps keeps __name__, __doc__ and __wrapped__ for sync and async functions."""

    @retry(make(clock))
    def fetch() -> None:
        """Fetch something."""

    @retry(make(clock))
    async def afetch() -> None:
        """Fetch asynchronously."""

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch something."
    assert afetch.__name__ == "afetch"
    assert afetch.__doc__ == "Fetch asynchronously."
    assert asyncio.iscoroutinefunction(afetch)
    assert fetch.__wrapped__.__name__ == "fetch"  # type: ignore[attr-defined]


def test_control_flow_exceptions_are_never_retried(clock: RecordingClock) -> None:
    """KeyboardInterrupt is re-raised at once even when retry_on covers BaseException."""
    script = Script(clock, lambda n: KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry(make(clock, retry_on=(BaseException,)))(script.sync)()
    assert script.calls == 1


# --- 5. zero delays never sleep ----------------------------------------------------------------


class NoSleepClock:
    """A Clock object (not a VirtualClock) that fails the test if asked to sleep at all."""

    def __init__(self, source: VirtualClock) -> None:
        self.source = source
        self.sleep_calls: list[float] = []

    def now(self) -> float:
        return self.source.now()

    def sleep_sync(self, seconds: float) -> None:
        self.sleep_calls.append(seconds)
        raise ZeroSleepError(seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleep_calls.append(seconds)
        raise ZeroSleepError(seconds)


@pytest.mark.parametrize("jitter", list(Jitter))
def test_zero_delay_never_calls_sleep_sync(jitter: Jitter) -> None:
    """With initial_delay=0 every retry happens without a single sleep call (decorator, block)."""
    no_sleep = NoSleepClock(VirtualClock())
    config = RetryConfig(max_attempts=4, initial_delay=0.0, jitter=jitter, clock=no_sleep)
    script = Script(no_sleep.source, fail_then(3))
    assert retry(config)(script.sync)() == "ok"
    assert script.calls == 4

    numbers = []
    for attempt in retry_context(config):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 4:
                raise ConnectionError("again")
    assert numbers == [1, 2, 3, 4]
    assert no_sleep.sleep_calls == []


@pytest.mark.parametrize("jitter", list(Jitter))
def test_zero_delay_never_calls_sleep_async(jitter: Jitter) -> None:
    """Async retries with zero delay never call sleep (decorator and block form)."""
    loop_clock = VirtualClock()
    no_sleep = NoSleepClock(loop_clock)
    config = RetryConfig(
        max_attempts=4, initial_delay=0.0, jitter=jitter, clock=no_sleep, deadline=100.0
    )
    script = Script(loop_clock, fail_then(3))

    async def main() -> list[int]:
        assert await retry(config)(script.run_async)() == "ok"
        numbers = []
        async for attempt in retry_context(config):
            async with attempt:
                numbers.append(attempt.number)
                if attempt.number < 4:
                    raise ConnectionError("again")
        return numbers

    assert run(main(), loop_clock) == [1, 2, 3, 4]
    assert script.calls == 4
    assert no_sleep.sleep_calls == []


# --- 6. server hints ---------------------------------------------------------------------------


def test_hint_is_a_floor_with_jitter_above(clock: RecordingClock) -> None:
    """A 10 s hint beats a 0.5 s backoff: the wait lies in [10, 11] and is spread by the rng."""
    waits = []
    for seed in range(30):
        local = RecordingClock()
        script = Script(
            local, lambda n: RateLimitError("slow down", retry_after=10) if n == 1 else 1
        )
        config = make(local, seed=seed, initial_delay=0.5, jitter=False)
        assert retry(config)(script.sync)() == 1
        assert len(local.sleeps) == 1
        waits.append(local.sleeps[0])
    assert all(10.0 <= w <= 11.0 for w in waits)
    assert len(set(waits)) == len(waits)  # jittered, not synchronised
    assert max(waits) > 10.5


def test_backoff_wins_when_larger_than_hint(clock: RecordingClock) -> None:
    """When the computed backoff exceeds the hint, the backoff is used unchanged."""
    script = Script(clock, lambda n: RateLimitError("slow", retry_after=2) if n == 1 else "ok")
    assert retry(make(clock, initial_delay=20.0, jitter=False))(script.sync)() == "ok"
    assert clock.sleeps == [20.0]


def test_no_attempt_before_the_hint_expires(clock: RecordingClock) -> None:
    """Every attempt starts no earlier than the previous one plus its error's hint."""
    hints = [3.0, 7.0, 5.0, 0.25]

    def outcome(n: int) -> object:
        if n <= len(hints):
            return RateLimitError("limited", retry_after=hints[n - 1])
        return "ok"

    script = Script(clock, outcome)
    config = make(clock, seed=8, max_attempts=5, initial_delay=0.1, jitter=Jitter.FULL)
    assert retry(config)(script.sync)() == "ok"
    assert script.calls == 5
    for i, hint in enumerate(hints):
        assert script.times[i + 1] >= script.times[i] + hint
        assert hint <= clock.sleeps[i] <= max(hint * 1.1, 0.1 * 2**i)


def test_hint_above_max_retry_after_gives_up_at_once(clock: RecordingClock) -> None:
    """A hint above max_retry_after ends the call after 1 attempt, no sleep, hint attached."""
    giveups: list[RetryEvent] = []
    script = Script(clock, lambda n: RateLimitError("come back later", retry_after=120))
    with pytest.raises(RetryExhausted) as excinfo:
        retry(make(clock, max_retry_after=60.0, on_giveup=giveups.append))(script.sync)()
    error = excinfo.value
    assert error.reason == "retry_after_too_long"
    assert error.retry_after == 120.0
    assert error.attempts == 1
    assert error.__cause__ is script.errors[0]
    assert script.calls == 1
    assert clock.sleeps == []
    assert [(e.reason, e.retry_after) for e in giveups] == [("retry_after_too_long", 120.0)]


def test_hint_beyond_remaining_deadline_fails_fast(clock: RecordingClock) -> None:
    """A hint longer than the time left before the deadline gives up at once with the hint."""

    def outcome(n: int) -> object:
        clock.advance(20.0)  # the attempt itself takes 20 s of the 30 s deadline
        return RateLimitError("limited", retry_after=15)

    script = Script(clock, outcome)
    with pytest.raises(RetryExhausted) as excinfo:
        retry(make(clock, deadline=30.0))(script.sync)()
    error = excinfo.value
    assert error.reason == "deadline"
    assert error.retry_after == 15.0
    assert error.attempts == 1
    assert error.elapsed == 20.0
    assert script.calls == 1
    assert clock.sleeps == []


def test_hint_within_deadline_is_honoured(clock: RecordingClock) -> None:
    """The same 15 s hint is waited out when the deadline leaves room for it."""
    script = Script(clock, lambda n: RateLimitError("limited", retry_after=15) if n == 1 else "ok")
    assert retry(make(clock, deadline=30.0))(script.sync)() == "ok"
    assert 15.0 <= clock.sleeps[0] <= 16.5


def test_respect_retry_after_false_ignores_hints(clock: RecordingClock) -> None:
    """respect_retry_after=False uses only the backoff, even for hints above max_retry_after."""
    script = Script(clock, lambda n: RateLimitError("limited", retry_after=120) if n < 3 else "ok")
    config = make(clock, respect_retry_after=False, jitter=False)
    assert retry(config)(script.sync)() == "ok"
    assert clock.sleeps == [1.0, 2.0]


def test_hint_read_from_httpx_429_response(clock: RecordingClock) -> None:
    """An httpx2.HTTPStatusError for a real 429 with retry-after: 4 waits at least 4 s."""
    events: list[RetryEvent] = []
    error = _http_error(429, {"retry-after": "4"})
    script = Script(clock, lambda n: error if n == 1 else "ok")
    config = make(clock, initial_delay=0.5, jitter=False, on_retry=events.append)
    assert retry(config)(script.sync)() == "ok"
    assert 4.0 <= clock.sleeps[0] <= 4.4
    assert [(e.retry_after, e.error) for e in events] == [(4.0, error)]
    assert script.times[1] >= 4.0


# --- 7. deadlines ------------------------------------------------------------------------------


def test_sync_deadline_stops_before_a_sleep_that_would_cross_it(clock: RecordingClock) -> None:
    """Attempts at 0, 1, 3, 7 s; the next 8 s wait would cross the 10 s deadline: give up at 7."""
    script = Script(clock, always_fail)
    config = make(clock, max_attempts=10, deadline=10.0, jitter=False)
    with pytest.raises(RetryExhausted) as excinfo:
        retry(config)(script.sync)()
    error = excinfo.value
    assert script.times == [0.0, 1.0, 3.0, 7.0]
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert error.reason == "deadline"
    assert error.attempts == 4
    assert error.elapsed == 7.0
    assert clock.now() < 10.0
    assert error.__cause__ is script.errors[-1]


def test_async_attempt_timeout_cancels_and_retries(clock: RecordingClock) -> None:
    """A slow attempt is cancelled at attempt_timeout (it sees CancelledError) and retried."""
    cancelled: list[float] = []
    events: list[RetryEvent] = []
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                cancelled.append(clock.now())
                raise
        return "ok"

    config = make(
        clock,
        attempt_timeout=5.0,
        retry_on=(ConnectionError,),  # TimeoutError is not listed: timeouts retry anyway
        jitter=False,
        on_retry=events.append,
    )
    assert run(retry(config)(call)(), clock) == "ok"
    assert calls == 2
    assert cancelled == [5.0]
    assert clock.now() == 6.0
    assert clock.sleeps == [1.0]
    (event,) = events
    assert isinstance(event.error, ExternalServiceError)
    assert event.error.code == "attempt_timeout"
    assert isinstance(event.error.__cause__, TimeoutError)


def test_async_attempt_timeout_exhausts(clock: RecordingClock) -> None:
    """Always-slow attempts are each cancelled; the call ends with RetryExhausted(attempts)."""
    cancelled: list[float] = []

    async def call() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(clock.now())
            raise

    config = make(clock, attempt_timeout=5.0, jitter=False)
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(config)(call)(), clock)
    error = excinfo.value
    assert cancelled == [5.0, 11.0, 18.0]
    assert error.reason == "attempts"
    assert error.attempts == 3
    assert error.elapsed == 18.0
    assert isinstance(error.last_error, ExternalServiceError)
    assert error.last_error.code == "attempt_timeout"


@pytest.mark.parametrize("max_attempts", [2, 5], ids=["last-attempt", "more-left"])
def test_async_deadline_cancels_the_in_flight_attempt(
    clock: RecordingClock, max_attempts: int
) -> None:
    """The deadline cancels a running attempt at exactly the deadline: reason "deadline", even
    when that attempt was the last one allowed."""
    cancelled: list[float] = []
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("fast failure")
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(clock.now())
            raise

    config = make(clock, deadline=10.0, jitter=False, max_attempts=max_attempts)
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(config)(call)(), clock)
    error = excinfo.value
    assert error.reason == "deadline"
    assert isinstance(error.last_error, ExternalServiceError)
    assert error.last_error.code == "attempt_timeout"
    assert error.elapsed == 10.0
    assert clock.now() == 10.0
    assert cancelled == [10.0]
    assert calls == 2
    assert error.attempts == 2


@pytest.mark.parametrize("form", ["sync", "async"])
def test_no_attempt_starts_exactly_at_the_deadline(clock: RecordingClock, form: str) -> None:
    """A wait ending exactly at the deadline is not taken: it would leave the attempt 0 s."""
    script = Script(clock, always_fail)
    config = make(clock, deadline=3.0, jitter=False, max_attempts=5)  # waits 1, then 2 (to 3.0)

    def call() -> object:
        if form == "sync":
            return retry(config)(script.sync)()
        return run(retry(config)(script.run_async)(), clock)

    with pytest.raises(RetryExhausted) as excinfo:
        call()
    assert script.times == [0.0, 1.0]
    assert excinfo.value.reason == "deadline"
    assert clock.sleeps == [1.0]


def test_async_deadline_binds_before_attempt_timeout(clock: RecordingClock) -> None:
    """With attempt_timeout 8 and deadline 10, attempt 2 is cut at 10 s by the deadline."""
    cancelled: list[float] = []

    async def call() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(clock.now())
            raise

    config = make(clock, deadline=10.0, attempt_timeout=8.0, jitter=False)
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(config)(call)(), clock)
    assert cancelled == [8.0, 10.0]
    assert excinfo.value.reason == "deadline"
    assert excinfo.value.elapsed == 10.0


class LateClock(RecordingClock):
    """A clock whose async sleeps wake 0.5 s late, like a busy real event loop."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + 0.5)


def test_async_late_wakeup_past_deadline_reports_the_real_last_error() -> None:
    """A backoff sleep that wakes after the deadline gives up with the attempts really made and
    the real last error, not a synthetic timeout for an attempt that never ran."""
    clock = LateClock()
    giveups: list[RetryEvent] = []
    script = Script(clock, always_fail)
    config = make(
        clock,
        max_attempts=5,
        initial_delay=9.8,
        jitter=False,
        deadline=10.0,
        on_giveup=giveups.append,
    )
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(config)(script.run_async)(), clock)
    error = excinfo.value
    assert script.calls == 1
    assert (error.reason, error.attempts) == ("deadline", 1)
    assert error.__cause__ is script.errors[0]
    assert error.last_error is script.errors[0]
    assert error.elapsed == pytest.approx(10.3)
    assert [(e.attempt, e.error) for e in giveups] == [(1, script.errors[0])]


def test_async_block_late_wakeup_past_deadline_reports_the_real_last_error() -> None:
    """The async block form behaves the same when its backoff sleep wakes after the deadline."""
    clock = LateClock()
    errors: list[Exception] = []

    async def main() -> None:
        config = make(clock, initial_delay=9.8, jitter=False, deadline=10.0, max_attempts=5)
        async for attempt in retry_context(config):
            async with attempt:
                errors.append(ConnectionError(attempt.number))
                raise errors[-1]

    with pytest.raises(RetryExhausted) as excinfo:
        run(main(), clock)
    assert len(errors) == 1
    assert (excinfo.value.reason, excinfo.value.attempts) == ("deadline", 1)
    assert excinfo.value.__cause__ is errors[0]


def test_attempt_timeout_on_sync_function_is_refused(clock: RecordingClock) -> None:
    """A sync function cannot be cancelled: attempt_timeout fails at decoration time."""

    def call() -> None:
        """Never called."""

    with pytest.raises(ValidationError, match="attempt_timeout") as excinfo:
        retry(make(clock, attempt_timeout=1.0))(call)
    assert excinfo.value.details["field"] == "attempt_timeout"


@pytest.mark.parametrize(
    ("attempt_timeout", "fail_fast"),
    [(None, False), (10.0, False), (None, True)],
    ids=["in-attempt", "in-attempt-with-timeout", "in-backoff-sleep"],
)
def test_caller_cancellation_propagates(
    clock: RecordingClock, attempt_timeout: float | None, fail_fast: bool
) -> None:
    """Cancelling the caller's task raises CancelledError out of the call; nothing is retried."""
    calls = 0
    cancelled_inside: list[float] = []

    async def call() -> None:
        nonlocal calls
        calls += 1
        if fail_fast:
            raise ConnectionError("fails at once, then the retry loop sleeps")
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled_inside.append(clock.now())
            raise

    config = make(
        clock,
        attempt_timeout=attempt_timeout,
        initial_delay=10.0,
        retry_on=(BaseException,),
        jitter=False,
    )
    wrapped = retry(config)(call)

    async def main() -> bool:
        task = asyncio.create_task(wrapped())
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main(), clock) is True
    assert calls == 1
    assert clock.now() == 3.0
    assert cancelled_inside == ([] if fail_fast else [3.0])


# --- 8. hooks ----------------------------------------------------------------------------------


def test_hooks_sync(clock: RecordingClock) -> None:
    """on_retry sees each retry (1-based attempt, delay, error, hint, elapsed); on_giveup once."""
    retries: list[RetryEvent] = []
    giveups: list[RetryEvent] = []

    def outcome(n: int) -> object:
        return RateLimitError("limited", retry_after=3) if n == 2 else ConnectionError(n)

    script = Script(clock, outcome)
    config = make(clock, jitter=False, on_retry=retries.append, on_giveup=giveups.append)
    with pytest.raises(RetryExhausted):
        retry(config)(script.sync)()
    assert [e.attempt for e in retries] == [1, 2]
    assert [e.error for e in retries] == script.errors[:2]
    assert [e.retry_after for e in retries] == [None, 3.0]
    assert [e.elapsed for e in retries] == [0.0, 1.0]
    assert [e.delay for e in retries] == clock.sleeps
    assert retries[0].delay == 1.0
    assert 3.0 <= retries[1].delay <= 3.3
    assert all(e.reason is None for e in retries)
    (giveup,) = giveups
    assert giveup.reason == "attempts"
    assert giveup.attempt == 3
    assert giveup.delay == 0.0
    assert giveup.error is script.errors[-1]
    assert giveup.elapsed == clock.now()


def test_hooks_async(clock: RecordingClock) -> None:
    """The async decorator calls the same hooks with the same events."""
    retries: list[RetryEvent] = []
    giveups: list[RetryEvent] = []
    script = Script(clock, always_fail)
    config = make(clock, jitter=False, on_retry=retries.append, on_giveup=giveups.append)
    with pytest.raises(RetryExhausted):
        run(retry(config)(script.run_async)(), clock)
    assert [(e.attempt, e.delay, e.elapsed) for e in retries] == [(1, 1.0, 0.0), (2, 2.0, 1.0)]
    assert [e.error for e in retries] == script.errors[:2]
    assert [(e.reason, e.attempt, e.error) for e in giveups] == [("attempts", 3, script.errors[-1])]


def test_on_retry_sees_unacceptable_results(clock: RecordingClock) -> None:
    """For result-driven retries the event carries the result and no error."""
    retries: list[RetryEvent] = []
    script = Script(clock, lambda n: n)
    config = make(clock, retry_if_result=lambda r: r < 2, on_retry=retries.append)
    assert retry(config)(script.sync)() == 2
    assert [(e.attempt, e.result, e.error) for e in retries] == [(1, 1, None)]


# --- 9. budgets --------------------------------------------------------------------------------


def test_shared_budget_refuses_the_third_retry(clock: RecordingClock) -> None:
    """Two functions share a 10-unit bucket at 5 per retry: the third retry is refused and the
    caller gets the last error itself, at once."""
    budget = RetryTokenBucket(capacity=10, retry_cost=5)
    giveups: list[RetryEvent] = []
    config = make(clock, max_attempts=2, jitter=False, budget=budget, on_giveup=giveups.append)
    first, second = Script(clock, always_fail), Script(clock, always_fail)
    f, g = retry(config)(first.sync), retry(config)(second.sync)

    with pytest.raises(RetryExhausted):
        f()
    with pytest.raises(RetryExhausted):
        g()
    assert budget.level == 0.0
    assert len(clock.sleeps) == 2

    with pytest.raises(ConnectionError) as excinfo:
        f()
    assert excinfo.value is first.errors[-1]
    assert first.calls == 3  # 2 for the first call, 1 for the refused one
    assert len(clock.sleeps) == 2  # no sleep before giving up
    assert [e.reason for e in giveups] == ["attempts", "attempts", "budget"]
    stats = budget.stats
    assert (stats.requests, stats.retries, stats.refused) == (3, 2, 1)
    assert (stats.successes, stats.failures) == (0, 5)


def test_budget_refunds_on_success(clock: RecordingClock) -> None:
    """A retried success refunds its retry's cost; a first-try success refunds 1 unit."""
    budget = RetryTokenBucket(capacity=10, retry_cost=5)
    config = make(clock, budget=budget, initial_delay=0.0)

    assert retry(config)(Script(clock, fail_then(1)).sync)() == "ok"
    assert budget.level == 10.0  # took 5 for the retry, refunded 5 on success

    with pytest.raises(RetryExhausted):
        retry(config)(Script(clock, always_fail).sync)()
    assert budget.level == 0.0

    assert retry(config)(Script(clock, lambda n: "ok").sync)() == "ok"
    assert budget.level == 1.0
    stats = budget.stats
    assert (stats.requests, stats.retries, stats.refused, stats.successes) == (3, 3, 0, 2)


def test_async_budget_refusal_raises_last_error(clock: RecordingClock) -> None:
    """The async decorator also raises the last error itself when the budget refuses."""
    budget = RetryTokenBucket(capacity=5, retry_cost=5)
    script = Script(clock, always_fail)
    config = make(clock, max_attempts=5, jitter=False, budget=budget)
    with pytest.raises(ConnectionError) as excinfo:
        run(retry(config)(script.run_async)(), clock)
    assert excinfo.value is script.errors[-1]
    assert script.calls == 2
    assert budget.stats.refused == 1


# --- 10. block form ----------------------------------------------------------------------------


def test_block_sync_retries_until_success(clock: RecordingClock) -> None:
    """The sync block form retries the block, numbering attempts from 1, with seeded delays."""
    numbers = []
    result = None
    for attempt in retry_context(make(clock, seed=21, max_attempts=4)):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise ConnectionError("again")
            result = "done"
    assert result == "done"
    assert numbers == [1, 2, 3]
    expected = RetryConfig(max_attempts=4, rng=random.Random(21)).delays()[:2]
    assert clock.sleeps == expected


def test_block_sync_exhausted(clock: RecordingClock) -> None:
    """An always-failing block ends in RetryExhausted caused by the last error."""
    errors: list[Exception] = []
    with pytest.raises(RetryExhausted) as excinfo:  # noqa: PT012 - the loop is the subject
        for attempt in retry_context(make(clock)):
            with attempt:
                errors.append(ConnectionError(attempt.number))
                raise errors[-1]
    assert len(errors) == 3
    assert excinfo.value.attempts == 3
    assert excinfo.value.__cause__ is errors[-1]


def test_block_sync_non_retryable_error_escapes_at_once(clock: RecordingClock) -> None:
    """A non-retryable error in the block is re-raised after one attempt."""
    numbers = []
    with pytest.raises(ValidationError, match="bad prompt"):  # noqa: PT012
        for attempt in retry_context(make(clock)):
            with attempt:
                numbers.append(attempt.number)
                raise ValidationError("bad prompt")
    assert numbers == [1]
    assert clock.sleeps == []


def test_block_sync_result_predicate(clock: RecordingClock) -> None:
    """attempt.set_result feeds retry_if_result: retried until acceptable, else RetryExhausted."""
    values = []
    for attempt in retry_context(make(clock, retry_if_result=lambda r: r < 3), max_attempts=5):
        with attempt:
            values.append(attempt.number)
            attempt.set_result(attempt.number)
    assert values == [1, 2, 3]

    with pytest.raises(RetryExhausted) as excinfo:  # noqa: PT012
        for attempt in retry_context(make(clock, retry_if_result=lambda r: True)):
            with attempt:
                attempt.set_result(attempt.number * 10)
    assert excinfo.value.reason == "result"
    assert excinfo.value.last_result == 30


def test_block_sync_with_attempt_timeout_is_refused(clock: RecordingClock) -> None:
    """A sync for-loop cannot enforce attempt_timeout: ValidationError before any attempt."""
    numbers: list[int] = []
    with pytest.raises(ValidationError, match="attempt_timeout"):
        numbers.extend(
            attempt.number for attempt in retry_context(make(clock, attempt_timeout=1.0))
        )
    assert numbers == []


def test_block_async_attempt_timeout_cancels_the_block(clock: RecordingClock) -> None:
    """`async with attempt` cancels a slow block at attempt_timeout, then retries it."""
    cancelled: list[float] = []

    async def main() -> tuple[list[int], str | None]:
        numbers = []
        result = None
        async for attempt in retry_context(make(clock, attempt_timeout=5.0, jitter=False)):
            async with attempt:
                numbers.append(attempt.number)
                if attempt.number == 1:
                    try:
                        await asyncio.sleep(100)
                    except asyncio.CancelledError:
                        cancelled.append(clock.now())
                        raise
                result = "done"
        return numbers, result

    assert run(main(), clock) == ([1, 2], "done")
    assert cancelled == [5.0]
    assert clock.now() == 6.0


def test_block_async_deadline_cancels_the_block(clock: RecordingClock) -> None:
    """The deadline cuts an in-flight async block: RetryExhausted(reason="deadline") at 10 s."""
    cancelled: list[float] = []

    async def main() -> None:
        async for attempt in retry_context(
            make(clock, deadline=10.0, jitter=False, max_attempts=9)
        ):
            async with attempt:
                if attempt.number == 1:
                    raise ConnectionError("fast")
                try:
                    await asyncio.sleep(100)
                except asyncio.CancelledError:
                    cancelled.append(clock.now())
                    raise

    with pytest.raises(RetryExhausted) as excinfo:
        run(main(), clock)
    assert excinfo.value.reason == "deadline"
    assert excinfo.value.elapsed == 10.0
    assert cancelled == [10.0]


def test_block_async_exhausted(clock: RecordingClock) -> None:
    """The async block form gives up after max_attempts with the last error as cause."""
    errors: list[Exception] = []

    async def main() -> None:
        async for attempt in retry_context(make(clock, jitter=False)):
            async with attempt:
                errors.append(ConnectionError(attempt.number))
                raise errors[-1]

    with pytest.raises(RetryExhausted) as excinfo:
        run(main(), clock)
    assert excinfo.value.__cause__ is errors[-1]
    assert clock.sleeps == [1.0, 2.0]


def test_block_async_non_retryable_error_escapes_at_once(clock: RecordingClock) -> None:
    """A non-retryable error in an async block is re-raised after one attempt."""
    numbers: list[int] = []

    async def main() -> None:
        async for attempt in retry_context(make(clock, attempt_timeout=5.0)):
            async with attempt:
                numbers.append(attempt.number)
                raise AuthenticationError("bad key")

    with pytest.raises(AuthenticationError, match="bad key"):
        run(main(), clock)
    assert numbers == [1]
    assert clock.sleeps == []


def test_block_async_caller_cancellation_propagates(clock: RecordingClock) -> None:
    """Cancelling the task running an async block loop propagates; the block is not retried."""
    numbers: list[int] = []
    config = make(clock, attempt_timeout=10.0, retry_on=(BaseException,))

    async def loop() -> None:
        async for attempt in retry_context(config):
            async with attempt:
                numbers.append(attempt.number)
                await asyncio.sleep(100)

    async def main() -> bool:
        task = asyncio.create_task(loop())
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main(), clock) is True
    assert numbers == [1]
    assert clock.now() == 3.0


# --- 11. async decorator parity ----------------------------------------------------------------


@pytest.mark.parametrize("deadline", [None, 1000.0], ids=["plain", "with-deadline"])
def test_async_success_first_time(clock: RecordingClock, deadline: float | None) -> None:
    """An async call that succeeds is awaited once and never sleeps."""
    script = Script(clock, lambda n: "ok")
    assert run(retry(make(clock, deadline=deadline))(script.run_async)(), clock) == "ok"
    assert script.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("deadline", [None, 1000.0], ids=["plain", "with-deadline"])
def test_async_retries_then_succeeds(clock: RecordingClock, deadline: float | None) -> None:
    """Two failures then success: 3 awaits, waits exactly the seeded delay sequence."""
    script = Script(clock, fail_then(2))
    config = make(clock, seed=42, deadline=deadline)
    assert run(retry(config)(script.run_async)(), clock) == "ok"
    assert script.calls == 3
    assert clock.sleeps == RetryConfig(rng=random.Random(42)).delays()


@pytest.mark.parametrize("deadline", [None, 1000.0], ids=["plain", "with-deadline"])
def test_async_exhausted(clock: RecordingClock, deadline: float | None) -> None:
    """Always failing async: RetryExhausted(attempts=3) caused by the last error."""
    script = Script(clock, always_fail)
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(make(clock, seed=3, deadline=deadline))(script.run_async)(), clock)
    error = excinfo.value
    assert script.calls == 3
    assert (error.attempts, error.reason) == (3, "attempts")
    assert error.__cause__ is script.errors[-1]
    assert error.elapsed == clock.now()


@pytest.mark.parametrize("deadline", [None, 1000.0], ids=["plain", "with-deadline"])
def test_async_non_retryable_and_foreign_errors(
    clock: RecordingClock, deadline: float | None
) -> None:
    """Async: non-retryable errors and errors outside retry_on are re-raised after one call."""
    quota = RateLimitError("quota", code="quota_exceeded", retryable=False)
    script = Script(clock, lambda n: quota)
    with pytest.raises(RateLimitError) as excinfo:
        run(retry(make(clock, deadline=deadline))(script.run_async)(), clock)
    assert excinfo.value is quota
    assert script.calls == 1

    foreign = Script(clock, lambda n: KeyError("k"))
    config = make(clock, deadline=deadline, retry_on=(ConnectionError,))
    with pytest.raises(KeyError):
        run(retry(config)(foreign.run_async)(), clock)
    assert foreign.calls == 1
    assert clock.sleeps == []


def test_async_retry_if_result(clock: RecordingClock) -> None:
    """Async results rejected by retry_if_result are retried; RetryExhausted carries the last."""
    script = Script(clock, lambda n: n)
    config = make(clock, retry_if_result=lambda r: r < 10)
    with pytest.raises(RetryExhausted) as excinfo:
        run(retry(config)(script.run_async)(), clock)
    assert excinfo.value.reason == "result"
    assert excinfo.value.last_result == 3


# --- 12. properties ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    max_attempts=st.integers(1, 8),
    initial=st.floats(0.0, 5.0),
    extra=st.floats(0.0, 100.0),
    base=st.floats(1.0, 4.0),
    jitter=st.sampled_from([True, False, *Jitter]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_delays_bounded_and_attempts_exact(
    max_attempts: int, initial: float, extra: float, base: float, jitter: Any, seed: int
) -> None:
    """For any valid policy, every delay is in [0, max_delay] and a failing call makes exactly
    max_attempts attempts."""
    cap = initial + extra
    clock = RecordingClock()
    config = RetryConfig(
        max_attempts, initial, cap, base, jitter, clock=clock, rng=random.Random(seed)
    )
    rng = random.Random(seed)
    for n in [*range(max_attempts + 2), 50, 5_000]:
        assert 0.0 <= config.calculate_delay(n, rng=rng) <= cap
    assert all(0.0 <= d <= cap for d in config.delays(rng=rng))

    script = Script(clock, always_fail)
    with pytest.raises(RetryExhausted) as excinfo:
        retry(config)(script.sync)()
    assert script.calls == max_attempts
    assert excinfo.value.attempts == max_attempts
    assert all(0.0 < d <= cap for d in clock.sleeps)


def test_a_later_error_does_not_carry_the_first_as_its_context() -> None:
    """Errors raised after a retry are not chained to the first failure ('During handling...')."""
    clock = VirtualClock()
    errors = iter([ValueError("transient"), ValidationError("bad request")])

    @retry(RetryConfig(max_attempts=3, initial_delay=0.0, clock=clock))
    def call() -> None:
        raise next(errors)

    with pytest.raises(ValidationError) as caught:
        call()
    assert caught.value.__context__ is None


def test_async_result_predicate_on_the_fast_path() -> None:
    """An async call without timeouts still honours retry_if_result and the budget."""
    clock = VirtualClock()
    budget = RetryTokenBucket(capacity=100.0)
    results = iter([None, None, "ok"])

    @retry(
        RetryConfig(
            max_attempts=5,
            initial_delay=1.0,
            jitter=False,
            retry_if_result=lambda r: r is None,
            budget=budget,
            clock=clock,
        )
    )
    async def call() -> str | None:
        return next(results)

    assert run_virtual(call(), clock=clock) == "ok"
    assert clock.now() == 3.0  # waited 1 s then 2 s
    assert budget.stats.requests == 1
    assert budget.stats.retries == 2


# --- 13. backoff counted from the attempt's start ----------------------------------------------


def _slow_failures(clock: VirtualClock, seconds: float, failures: int) -> Callable[[int], object]:
    """Outcome: each of the first ``failures`` calls fails after ``seconds`` virtual seconds."""

    def outcome(n: int) -> object:
        if n <= failures:
            VirtualClock.sleep_sync(clock, seconds)  # the attempt's own time, not a backoff
            return ConnectionError(f"slow failure {n}")
        return "ok"

    return outcome


@pytest.mark.parametrize(("from_start", "starts"), [(False, [0, 5, 12, 23]), (True, [0, 3, 7, 15])])
def test_backoff_from_start_spaces_attempt_starts_not_failures(
    clock: RecordingClock, from_start: bool, starts: list[float]
) -> None:
    """Attempts failing after 3 s with delays 2, 4, 8: counted from each failure they start at
    0, 5, 12, 23; counted from each start at 0, 3 (2 s had passed: at once), 7 and 15, every
    start its predecessor's plus its delay."""
    script = Script(clock, _slow_failures(clock, 3.0, 3))
    config = make(clock, max_attempts=4, initial_delay=2.0, jitter=False)
    assert retry(config, backoff_from_start=from_start)(script.sync)() == "ok"
    assert script.times == starts


def test_backoff_from_start_in_every_form() -> None:
    """The async decorator (with and without a deadline) and both block forms count from the
    start too: attempts that take 3 s to fail, delays 2, 4, 8, start at 0, 3, 7 and 15."""
    expected = [0.0, 3.0, 7.0, 15.0]

    async def slow(times: list[float], clock: VirtualClock) -> str:
        times.append(clock.now())
        if len(times) <= 3:
            await asyncio.sleep(3.0)
            raise ConnectionError("slow failure")
        return "ok"

    for deadline in (None, 1000.0):
        clock, times = VirtualClock(), []
        config = make(clock, max_attempts=4, initial_delay=2.0, jitter=False, deadline=deadline)
        wrapped = retry(config, backoff_from_start=True)(slow)
        assert run(wrapped(times, clock), clock) == "ok"
        assert times == expected

    clock, times = VirtualClock(), []
    config = make(clock, max_attempts=4, initial_delay=2.0, jitter=False, backoff_from_start=True)
    script = Script(clock, _slow_failures(clock, 3.0, 3))
    for attempt in retry_context(config):
        with attempt:
            script.sync()
    assert script.times == expected

    clock, times = VirtualClock(), []
    config = make(clock, max_attempts=4, initial_delay=2.0, jitter=False, backoff_from_start=True)

    async def block() -> None:
        async for attempt in retry_context(config):
            async with attempt:
                await slow(times, clock)

    run(block(), clock)
    assert times == expected


def test_backoff_from_start_still_counts_a_hint_from_the_answer(clock: RecordingClock) -> None:
    """A 429 after a 10-s attempt asking for 5 s: the 1-s backoff is long spent, the hint is
    not; the next attempt waits 5 s (and its jitter) after the answer."""

    def outcome(n: int) -> object:
        if n == 1:
            VirtualClock.sleep_sync(clock, 10.0)
            return RateLimitError("slow down", retry_after=5)
        return "ok"

    script = Script(clock, outcome)
    config = make(clock, initial_delay=1.0, jitter=False, backoff_from_start=True)
    assert retry(config)(script.sync)() == "ok"
    assert 15.0 <= script.times[1] <= 15.5
    assert len(clock.sleeps) == 1
    assert 5.0 <= clock.sleeps[0] <= 5.5
