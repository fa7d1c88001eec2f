"""flashkit.breaker: opening rule, open/half-open/isolated states, slow calls, hooks and forms.

Time is always a :class:`VirtualClock`: sync tests move it with ``clock.advance()`` (a slow call
advances it from inside the protected function), async tests run under :func:`run_virtual` where
``asyncio.sleep`` spends virtual seconds. Times are multiples of 0.25 s and windows have
power-of-two bucket widths, so every expected number is exact in floating point.

The model test at the end drives the breaker through its internal admission and outcome hooks
(``_admit``, ``_on_success``, ``_on_failure``), the ones every call form uses, and compares each
step with a small reference model of the documented semantics.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flashkit.breaker import (
    BreakDurationContext,
    CircuitBreaker,
    CircuitBreakerManualControl,
    CircuitBreakerStateProvider,
    CircuitState,
    StateChange,
)
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import (
    AuthenticationError,
    CircuitOpenError,
    ExternalServiceError,
    ValidationError,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
ISOLATED = CircuitState.ISOLATED

WAIT = 10.0  # real-time safety net for thread synchronisation; never reached when tests pass


# --- helpers ---------------------------------------------------------------------------------


def ok() -> str:
    return "ok"


def down() -> str:
    raise ExternalServiceError("upstream down")


async def ok_async() -> str:
    return "ok"


def _raiser(factory: Callable[[], BaseException]) -> Callable[[], str]:
    def fn() -> str:
        raise factory()

    return fn


def _fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ExternalServiceError):
            breaker.call_sync(down)


def _succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.call_sync(ok) == "ok"


def _tripped(clock: VirtualClock, **kwargs: Any) -> CircuitBreaker:
    """A breaker opened at ``clock.now()`` by ``min_throughput`` (default 2) failures."""
    kwargs.setdefault("min_throughput", 2)
    breaker = CircuitBreaker(clock=clock, **kwargs)
    _fail(breaker, breaker.min_throughput)
    assert breaker.state is OPEN
    return breaker


def _half_open(clock: VirtualClock, **kwargs: Any) -> CircuitBreaker:
    breaker = _tripped(clock, **kwargs)
    clock.advance(breaker.break_duration)
    assert breaker.state is HALF_OPEN
    return breaker


# --- 1. opening rule ---------------------------------------------------------------------------


def test_below_min_throughput_never_opens_even_at_full_failure() -> None:
    """Nine failures out of nine calls stay closed when ten calls are needed."""
    clock = VirtualClock()
    breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, clock=clock)
    _fail(breaker, 9)
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.failure_ratio) == (CLOSED, 9, 9, 1.0)


def test_opens_at_exactly_min_throughput_and_ratio_equal_to_threshold() -> None:
    """Ten calls with five failures (ratio == 0.5) open the circuit: the rule is >=."""
    clock = VirtualClock()
    breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, clock=clock)
    _succeed(breaker, 5)
    _fail(breaker, 4)
    assert breaker.state is CLOSED  # 9 calls: below min_throughput
    _fail(breaker)
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.trips) == (OPEN, 10, 5, 1)


def test_ratio_just_below_threshold_does_not_open() -> None:
    """5 failures in 11 calls (0.4545 < 0.5) stay closed; the next failure (6/12) opens."""
    clock = VirtualClock()
    breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, clock=clock)
    _succeed(breaker, 6)
    _fail(breaker, 5)
    assert breaker.state is CLOSED
    assert breaker.stats.calls == 11
    _fail(breaker)
    assert breaker.state is OPEN


def test_ratio_is_checked_after_failures_only() -> None:
    """A success never opens, even when the window already meets the rule; the next failure does."""
    clock = VirtualClock()
    breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=10, clock=clock)
    _fail(breaker, 5)
    _succeed(breaker, 5)  # 10 calls, ratio 0.5, but the last outcome is a success
    assert breaker.state is CLOSED
    _fail(breaker)
    assert breaker.state is OPEN


def test_failures_that_left_the_window_do_not_count() -> None:
    """Failures older than sampling_duration are forgotten; only recent ones open the circuit."""
    clock = VirtualClock()
    breaker = CircuitBreaker(
        failure_threshold=0.5, min_throughput=4, sampling_duration=10.0, clock=clock
    )
    _fail(breaker, 3)
    clock.advance(10.0)
    assert breaker.stats.calls == 0
    _fail(breaker)  # four failures in total, but only one in the window
    assert breaker.state is CLOSED
    assert (breaker.stats.calls, breaker.stats.failures) == (1, 1)
    _fail(breaker, 3)
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    ("buckets", "kept_until", "gone_at"),
    [
        (8, 10.75, 11.0),  # 1 s buckets: the call at t=3 lives in [3, 4), dropped at t=11
        (4, 9.75, 10.0),  # 2 s buckets: [2, 4) is dropped at t=10
        (2, 7.75, 8.0),  # 4 s buckets: [0, 4) is dropped at t=8
        (1, 7.75, 8.0),  # one bucket: the whole window [0, 8) is dropped at t=8
    ],
)
def test_window_forgets_whole_buckets(buckets: int, kept_until: float, gone_at: float) -> None:
    """Outcomes leave the window a whole bucket at a time (granularity = duration / buckets)."""
    clock = VirtualClock()
    breaker = CircuitBreaker(
        min_throughput=100, sampling_duration=8.0, buckets=buckets, clock=clock
    )
    clock.advance(3.0)
    _fail(breaker, 2)
    clock.advance(kept_until - 3.0)
    assert breaker.stats.failures == 2
    clock.advance(gone_at - kept_until)
    assert breaker.stats.failures == 0


def test_window_keeps_the_newer_bucket_while_dropping_the_older() -> None:
    """With 4 s buckets, a failure at t=3.75 is gone at t=8 while those at t=4 stay until t=12."""
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=100, sampling_duration=8.0, buckets=2, clock=clock)
    clock.advance(3.75)
    _fail(breaker)
    clock.advance(0.25)
    _fail(breaker, 2)
    clock.advance(4.0)  # t = 8: bucket [0, 4) leaves the window
    assert (breaker.stats.calls, breaker.stats.failures) == (2, 2)
    clock.advance(3.75)  # t = 11.75
    assert breaker.stats.failures == 2
    clock.advance(0.25)  # t = 12
    assert breaker.stats.failures == 0


# --- 2. open -----------------------------------------------------------------------------------


def test_open_rejects_at_once_without_calling_and_reports_time_left() -> None:
    """While open, the function is not called and retry_after is exactly the time left."""
    clock = VirtualClock(100.0)
    breaker = _tripped(clock, name="llm")
    ran: list[int] = []

    def work() -> str:
        ran.append(1)
        return "ok"

    clock.advance(1.5)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call_sync(work)
    error = info.value
    assert ran == []
    assert error.retry_after == 3.5
    assert error.code == "circuit_open"
    assert error.retryable is True
    assert error.details == {"breaker": "llm", "state": "open"}
    clock.advance(3.25)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call_sync(work)
    assert info.value.retry_after == 0.25
    assert ran == []
    assert breaker.stats.rejected == 2


def test_default_break_is_five_seconds_then_half_open() -> None:
    """The break defaults to 5.0 s: still open at 4.75 s, reported HALF_OPEN at 5.0 s."""
    clock = VirtualClock()
    breaker = _tripped(clock)
    assert breaker.break_duration == 5.0
    assert breaker.stats.break_remaining == 5.0
    clock.advance(4.75)
    assert breaker.state is OPEN
    assert breaker.stats.break_remaining == 0.25
    clock.advance(0.25)
    assert breaker.state is HALF_OPEN
    assert breaker.stats.break_remaining == 0.0


def test_custom_break_duration() -> None:
    """break_duration=2.0 rejects with retry_after 2.0 and half-opens after two seconds."""
    clock = VirtualClock()
    breaker = _tripped(clock, break_duration=2.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call_sync(ok)
    assert info.value.retry_after == 2.0
    clock.advance(2.0)
    assert breaker.state is HALF_OPEN


# --- 3. half-open ------------------------------------------------------------------------------


def test_half_open_admits_exactly_max_probes_under_asyncio() -> None:
    """Six concurrent tasks in half-open: two probes run, four are rejected at once."""
    clock = VirtualClock()
    breaker = _half_open(clock, half_open_max_calls=2)
    entered: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        async def probe(i: int) -> int:
            entered.append(i)
            await release.wait()
            return i

        start = clock.now()
        tasks = [asyncio.create_task(breaker.call(probe, i)) for i in range(6)]
        await asyncio.sleep(0)  # one loop pass: every task has run up to its first wait
        assert clock.now() == start  # rejections take no time
        done = [task for task in tasks if task.done()]
        pending = [task for task in tasks if not task.done()]
        assert (len(done), len(pending), len(entered)) == (4, 2, 2)
        for task in done:
            error = task.exception()
            assert isinstance(error, CircuitOpenError)
            assert error.retry_after == 5.0  # about one more break if the probes fail
        assert breaker.stats.half_open_in_flight == 2
        assert breaker.state is HALF_OPEN
        release.set()
        assert sorted(await asyncio.gather(*pending)) == sorted(entered)

    run_virtual(main(), clock=clock)
    assert breaker.state is CLOSED
    assert breaker.stats.rejected == 4


def test_half_open_admits_exactly_max_probes_under_threads() -> None:
    """Eight threads released together in half-open: exactly three probes run."""
    clock = VirtualClock()
    breaker = _half_open(clock, half_open_max_calls=3)
    threads_n = 8
    start = threading.Barrier(threads_n)
    release = threading.Event()
    settled = threading.Semaphore(0)
    entered: list[int] = []
    rejected: list[CircuitOpenError] = []
    unexpected: list[BaseException] = []

    def probe() -> str:
        entered.append(threading.get_ident())
        settled.release()
        if not release.wait(WAIT):
            raise AssertionError("probe never released")
        return "ok"

    def worker() -> None:
        try:
            start.wait(WAIT)
            breaker.call_sync(probe)
        except CircuitOpenError as error:
            rejected.append(error)
            settled.release()
        except BaseException as error:
            unexpected.append(error)
            settled.release()

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(threads_n):
            assert settled.acquire(timeout=WAIT)
        assert unexpected == []
        assert len(entered) == 3
        assert len(rejected) == 5
        assert breaker.stats.half_open_in_flight == 3
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert unexpected == []
    assert breaker.state is CLOSED
    assert breaker.stats.half_open_in_flight == 0


def test_failing_probe_reopens_and_counts_consecutive_opens() -> None:
    """Each failed probe reopens the circuit; the generator sees consecutive_opens 1, 2, 3."""
    clock = VirtualClock()
    seen: list[int] = []

    def generator(ctx: BreakDurationContext) -> float:
        seen.append(ctx.consecutive_opens)
        return 1.0

    breaker = _tripped(clock, break_duration_generator=generator)
    for expected in (2, 3):
        clock.advance(1.0)
        _fail(breaker)  # the probe
        assert breaker.state is OPEN
        assert breaker.stats.consecutive_opens == expected
    assert seen == [1, 2, 3]
    assert breaker.stats.trips == 1


def test_all_probes_succeeding_close_with_a_fresh_window() -> None:
    """Closing forgets the failures that opened the circuit: one new failure does not reopen."""
    clock = VirtualClock()
    breaker = _half_open(clock, min_throughput=4, half_open_max_calls=2)
    _succeed(breaker)
    assert breaker.state is HALF_OPEN  # one of two probes done
    _succeed(breaker)
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.consecutive_opens) == (CLOSED, 0, 0, 0)
    _fail(breaker)  # old failures (t=0) would still be in the 10 s window if not cleared
    assert breaker.state is CLOSED
    assert breaker.stats.calls == 1


def test_two_successes_and_one_failure_reopen_with_three_probes() -> None:
    """With half_open_max_calls=3, one failed probe after two successes reopens the circuit."""
    clock = VirtualClock()
    breaker = _half_open(clock, half_open_max_calls=3)
    _succeed(breaker, 2)
    assert breaker.state is HALF_OPEN
    _fail(breaker)
    stats = breaker.stats
    assert (stats.state, stats.consecutive_opens, stats.trips) == (OPEN, 2, 1)


def test_successful_probes_use_up_their_slots() -> None:
    """A finished successful probe does not free its slot: max probes per half-open period."""
    clock = VirtualClock()
    breaker = _half_open(clock, half_open_max_calls=2)

    async def main() -> None:
        gate = asyncio.Event()

        async def slow_probe() -> str:
            await gate.wait()
            return "ok"

        held = asyncio.create_task(breaker.call(slow_probe))
        await asyncio.sleep(0)
        assert await breaker.call(ok_async) == "ok"  # second probe, succeeds
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok_async)  # 1 in flight + 1 success = 2 slots used
        gate.set()
        assert await held == "ok"

    run_virtual(main(), clock=clock)
    assert breaker.state is CLOSED


def test_cancelled_probe_releases_its_slot_without_deciding() -> None:
    """A probe cancelled in flight frees its slot; the state stays HALF_OPEN until an outcome."""
    clock = VirtualClock()
    breaker = _half_open(clock)

    async def main() -> None:
        gate = asyncio.Event()

        async def probe() -> str:
            await gate.wait()
            return "late"

        task = asyncio.create_task(breaker.call(probe))
        await asyncio.sleep(0)
        assert breaker.stats.half_open_in_flight == 1
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok_async)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = breaker.stats
        assert (stats.state, stats.half_open_in_flight, stats.consecutive_opens) == (
            HALF_OPEN,
            0,
            1,
        )
        assert await breaker.call(ok_async) == "ok"

    run_virtual(main(), clock=clock)
    assert breaker.state is CLOSED


def test_keyboard_interrupt_in_a_sync_probe_releases_its_slot() -> None:
    """KeyboardInterrupt in a probe propagates, decides nothing, and frees the slot."""
    clock = VirtualClock()
    breaker = _half_open(clock)
    with pytest.raises(KeyboardInterrupt):
        breaker.call_sync(_raiser(KeyboardInterrupt))
    assert breaker.state is HALF_OPEN
    assert breaker.stats.half_open_in_flight == 0
    _succeed(breaker)
    assert breaker.state is CLOSED


def test_unhandled_error_in_a_probe_counts_as_success() -> None:
    """A probe raising ValidationError shows the dependency answered: the circuit closes."""
    clock = VirtualClock()
    breaker = _half_open(clock)
    with pytest.raises(ValidationError):
        breaker.call_sync(_raiser(lambda: ValidationError("bad prompt")))
    assert breaker.state is CLOSED


def test_stale_probe_outcome_is_ignored_after_reset() -> None:
    """A probe admitted before a manual reset cannot reopen the circuit when it fails later."""
    clock = VirtualClock()
    breaker = _half_open(clock, manual_control=True)
    permit = breaker._admit()
    assert permit != 0
    assert breaker.manual_control is not None
    breaker.manual_control.reset_sync()
    breaker._on_failure(ExternalServiceError("late"), clock.now(), permit)
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.half_open_in_flight) == (CLOSED, 0, 0)


def test_stale_probe_from_an_earlier_half_open_period_does_not_count() -> None:
    """A probe admitted before the circuit reopened neither closes nor reopens the next period."""
    clock = VirtualClock()
    breaker = _half_open(clock, half_open_max_calls=2)
    stale = breaker._admit()
    _fail(breaker)  # the second probe fails: reopened, a new half-open period follows
    clock.advance(5.0)
    assert breaker.state is HALF_OPEN
    _succeed(breaker)  # one of two probes of the new period
    breaker._on_success(clock.now(), stale)  # would be the second success if it counted
    stats = breaker.stats
    assert (stats.state, stats.half_open_in_flight) == (HALF_OPEN, 0)
    breaker._on_failure(ExternalServiceError("late"), clock.now(), stale)
    assert breaker.state is HALF_OPEN
    _succeed(breaker)
    assert breaker.state is CLOSED


# --- 4. break_duration_generator ---------------------------------------------------------------


def test_generator_receives_counts_and_sets_the_break() -> None:
    """The generator gets (failures, ratio, consecutive_opens) and its value is the break."""
    clock = VirtualClock()
    contexts: list[BreakDurationContext] = []

    def generator(ctx: BreakDurationContext) -> float:
        contexts.append(ctx)
        return 2.5 * ctx.consecutive_opens

    breaker = CircuitBreaker(
        failure_threshold=0.5, min_throughput=5, break_duration_generator=generator, clock=clock
    )
    _succeed(breaker, 2)
    _fail(breaker, 3)
    assert contexts == [
        BreakDurationContext(failure_count=3, failure_ratio=0.6, consecutive_opens=1)
    ]
    with pytest.raises(CircuitOpenError) as info:
        breaker.call_sync(ok)
    assert info.value.retry_after == 2.5
    clock.advance(2.5)
    _fail(breaker)  # failed probe
    assert contexts[-1] == BreakDurationContext(1, 1.0, 2)
    assert breaker.stats.break_remaining == 5.0
    clock.advance(5.0)
    _fail(breaker)
    assert contexts[-1] == BreakDurationContext(1, 1.0, 3)
    assert breaker.stats.break_remaining == 7.5
    clock.advance(7.5)
    _succeed(breaker)  # closes: the count of consecutive opens starts over
    _fail(breaker, 5)
    assert contexts[-1] == BreakDurationContext(5, 1.0, 1)


def test_both_break_duration_and_generator_warn_and_generator_wins() -> None:
    """Giving both warns (pointing at the caller) and the generator decides the break."""
    clock = VirtualClock()
    with pytest.warns(UserWarning, match="takes precedence") as record:
        breaker = CircuitBreaker(
            min_throughput=1,
            break_duration=9.0,
            break_duration_generator=lambda ctx: 1.5,
            clock=clock,
        )
    assert record[0].filename == __file__
    _fail(breaker)
    assert breaker.stats.break_remaining == 1.5


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "5", None, True])
def test_generator_returning_bad_value_raises_and_changes_nothing(bad: object) -> None:
    """A generator returning a negative, NaN, infinite or non-number raises ValidationError."""
    clock = VirtualClock()
    breaker = CircuitBreaker(
        min_throughput=2, break_duration_generator=lambda ctx: bad, clock=clock
    )
    _fail(breaker)
    with pytest.raises(ValidationError, match="break_duration_generator") as info:
        breaker.call_sync(down)
    assert info.value.details == {"field": "break_duration_generator"}
    assert isinstance(info.value.__context__, ExternalServiceError)
    stats = breaker.stats
    assert (stats.state, stats.trips, stats.consecutive_opens) == (CLOSED, 0, 0)


def test_generator_may_read_the_breaker() -> None:
    """A generator that reads breaker.stats runs to completion (no self-deadlock)."""
    clock = VirtualClock()
    seen: list[int] = []

    def generator(ctx: BreakDurationContext) -> float:
        seen.append(breaker.stats.failures)
        return 1.0

    breaker = CircuitBreaker(min_throughput=2, break_duration_generator=generator, clock=clock)
    done = threading.Event()

    def run() -> None:
        _fail(breaker, 2)
        done.set()

    threading.Thread(target=run, daemon=True).start()  # a deadlock must fail, not hang
    assert done.wait(WAIT), "the generator deadlocked on the breaker's lock"
    assert seen == [2]
    assert breaker.state is OPEN


def test_generator_returning_zero_half_opens_at_once() -> None:
    """A zero break is allowed: the next call is already a probe."""
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=1, break_duration_generator=lambda ctx: 0, clock=clock)
    _fail(breaker)
    assert breaker.state is HALF_OPEN
    _succeed(breaker)
    assert breaker.state is CLOSED


# --- 5. slow calls -----------------------------------------------------------------------------


def _slow_breaker(clock: VirtualClock, **kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker(
        min_throughput=4,
        slow_call_duration=2.0,
        slow_call_threshold=0.5,
        clock=clock,
        **kwargs,
    )


def _taking(clock: VirtualClock, seconds: float) -> Callable[[], str]:
    def work() -> str:
        clock.advance(seconds)
        return "ok"

    return work


def test_slow_successes_open_the_circuit() -> None:
    """Two 2 s successes out of four calls (slow ratio 0.5) open it with reason slow_call_ratio."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = _slow_breaker(clock, listeners=[changes.append])
    _succeed(breaker, 2)
    assert breaker.call_sync(_taking(clock, 2.0)) == "ok"
    assert breaker.state is CLOSED  # 3 calls: below min_throughput
    assert breaker.call_sync(_taking(clock, 2.0)) == "ok"
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.slow_calls) == (OPEN, 4, 0, 2)
    assert stats.slow_call_ratio == 0.5
    assert [c.reason for c in changes] == ["slow_call_ratio"]
    assert changes[0].at == 4.0


def test_calls_shorter_than_slow_duration_do_not_count() -> None:
    """Calls of 1.75 s with slow_call_duration=2.0 are not slow."""
    clock = VirtualClock()
    breaker = _slow_breaker(clock)
    for _ in range(6):
        breaker.call_sync(_taking(clock, 1.75))
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.slow_calls) == (CLOSED, 6, 0)


def test_slow_calls_open_under_asyncio() -> None:
    """Async calls spending 2 s in asyncio.sleep count as slow."""
    clock = VirtualClock()
    breaker = _slow_breaker(clock)

    async def slow() -> str:
        await asyncio.sleep(2.0)
        return "ok"

    async def main() -> None:
        for _ in range(2):
            await breaker.call(ok_async)
        for _ in range(2):
            await breaker.call(slow)

    run_virtual(main(), clock=clock)
    stats = breaker.stats
    assert (stats.state, stats.slow_calls, stats.time_in_state) == (OPEN, 2, 0.0)
    assert clock.now() == 4.0


def test_slow_probe_reopens() -> None:
    """A probe that succeeds but takes slow_call_duration counts as a failed probe."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = _slow_breaker(clock, listeners=[changes.append])
    _fail(breaker, 4)
    clock.advance(5.0)
    assert breaker.call_sync(_taking(clock, 2.0)) == "ok"
    assert breaker.state is OPEN
    assert [(c.new, c.reason) for c in changes][-1] == (OPEN, "probe_failed")
    assert breaker.stats.consecutive_opens == 2


# --- 6. handled --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [lambda: ValidationError("bad prompt"), lambda: AuthenticationError("bad key")],
    ids=["validation", "authentication"],
)
def test_validation_and_auth_errors_count_as_successes(
    factory: Callable[[], BaseException],
) -> None:
    """By default ValidationError and AuthenticationError say nothing about the dependency."""
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=2, clock=clock)
    expected = type(factory())
    for _ in range(4):
        with pytest.raises(expected):
            breaker.call_sync(_raiser(factory))
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.last_failure) == (CLOSED, 4, 0, None)
    _fail(breaker)  # 1 failure in 5 calls: still below 0.5
    assert breaker.state is CLOSED


def test_custom_handled_predicate() -> None:
    """handled=... decides: here only TimeoutError counts, ExternalServiceError is a success."""
    clock = VirtualClock()
    breaker = CircuitBreaker(
        min_throughput=2, handled=lambda error: isinstance(error, TimeoutError), clock=clock
    )
    _fail(breaker, 3)
    assert (breaker.stats.calls, breaker.stats.failures) == (3, 0)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            breaker.call_sync(_raiser(TimeoutError))
    assert breaker.state is OPEN
    assert breaker.stats.last_failure == "TimeoutError: "


@pytest.mark.parametrize(
    "kind", [KeyboardInterrupt, asyncio.CancelledError, SystemExit, GeneratorExit]
)
def test_interrupts_and_cancellation_count_as_nothing(kind: type[BaseException]) -> None:
    """KeyboardInterrupt, CancelledError, SystemExit and GeneratorExit are neither outcome."""
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=1, clock=clock)
    with pytest.raises(kind):
        breaker.call_sync(_raiser(kind))
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.last_failure) == (CLOSED, 0, 0, None)


def test_non_exception_base_errors_count_as_success_by_default() -> None:
    """A BaseException that is not an Exception (nor an interrupt) is not handled by default."""

    class Custom(BaseException):
        pass

    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=1, clock=clock)
    with pytest.raises(Custom):
        breaker.call_sync(_raiser(Custom))
    assert (breaker.state, breaker.stats.calls, breaker.stats.failures) == (CLOSED, 1, 0)


# --- 7. listeners ------------------------------------------------------------------------------


def test_listeners_see_every_transition_in_order() -> None:
    """Listeners get StateChange(name, old, new, at, reason) for each transition, in order."""
    clock = VirtualClock(10.0)
    seen: list[StateChange] = []
    late: list[StateChange] = []
    breaker = CircuitBreaker(
        min_throughput=2,
        break_duration=2.0,
        manual_control=True,
        name="llm",
        listeners=[seen.append],
        clock=clock,
    )
    _fail(breaker, 2)
    clock.advance(2.0)
    _fail(breaker)
    breaker.add_listener(late.append)
    clock.advance(2.0)
    _succeed(breaker)
    clock.advance(1.0)
    assert breaker.manual_control is not None
    breaker.manual_control.isolate_sync("maintenance")
    clock.advance(1.0)
    breaker.manual_control.reset_sync()
    assert seen == [
        StateChange("llm", CLOSED, OPEN, 10.0, "failure_ratio"),
        StateChange("llm", OPEN, HALF_OPEN, 12.0, "break_elapsed"),
        StateChange("llm", HALF_OPEN, OPEN, 12.0, "probe_failed"),
        StateChange("llm", OPEN, HALF_OPEN, 14.0, "break_elapsed"),
        StateChange("llm", HALF_OPEN, CLOSED, 14.0, "probes_succeeded"),
        StateChange("llm", CLOSED, ISOLATED, 15.0, "isolated: maintenance"),
        StateChange("llm", ISOLATED, CLOSED, 16.0, "reset"),
    ]
    assert late == seen[3:]


def test_failing_listener_is_logged_and_does_not_break_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener that raises is logged; the call still raises its own error, others still run."""
    clock = VirtualClock()
    good: list[StateChange] = []

    def bad(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(
        min_throughput=1, name="llm", listeners=[bad, good.append], clock=clock
    )
    with caplog.at_level(logging.ERROR, logger="flashkit.breaker"):
        with pytest.raises(ExternalServiceError):
            breaker.call_sync(down)
        clock.advance(5.0)
        assert breaker.call_sync(ok) == "ok"  # two transitions, both logged, call unaffected
    assert breaker.state is CLOSED
    assert [c.new for c in good] == [OPEN, HALF_OPEN, CLOSED]
    errors = [r for r in caplog.records if r.name == "flashkit.breaker"]
    assert len(errors) == 3
    assert all("listener" in r.getMessage() and "'llm'" in r.getMessage() for r in errors)
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in errors)


def test_add_listener_rejects_non_callables() -> None:
    """add_listener(non-callable) raises TypeError."""
    breaker = CircuitBreaker(clock=VirtualClock())
    with pytest.raises(TypeError, match="callable"):
        breaker.add_listener("nope")  # type: ignore[arg-type]


# --- 8. state provider -------------------------------------------------------------------------


def test_state_provider_reports_state_time_and_stats() -> None:
    """An attached provider reports circuit_state, exact time_in_state and the stats dict."""
    clock = VirtualClock()
    provider = CircuitBreakerStateProvider()
    breaker = CircuitBreaker(min_throughput=3, state_provider=provider, name="llm", clock=clock)
    assert provider.breaker is breaker
    clock.advance(1.5)
    assert provider.circuit_state is CLOSED
    assert provider.time_in_state == 1.5
    _succeed(breaker)
    _fail(breaker, 2)
    clock.advance(1.25)
    assert provider.circuit_state is OPEN
    assert provider.time_in_state == 1.25
    stats = provider.stats
    assert json.loads(json.dumps(stats)) == stats
    assert stats["name"] == "llm"
    assert stats["state"] == "open"
    assert (stats["calls"], stats["failures"], stats["trips"]) == (3, 2, 1)
    assert stats["failure_ratio"] == pytest.approx(2 / 3)
    assert (
        stats["last_failure"]
        == "ExternalServiceError: [external_service/upstream_error] upstream down"
    )
    assert stats["last_failure_at"] == 1.5
    assert stats["break_remaining"] == 3.75
    assert stats["time_in_state"] == 1.25


def test_trips_count_openings_from_closed_only() -> None:
    """A failed probe reopening the circuit is not a new trip; closing then opening again is."""
    clock = VirtualClock()
    breaker = _tripped(clock)
    clock.advance(5.0)
    _fail(breaker)
    assert (breaker.stats.trips, breaker.stats.consecutive_opens) == (1, 2)
    clock.advance(5.0)
    _succeed(breaker)
    _fail(breaker, 2)
    assert (breaker.stats.trips, breaker.stats.consecutive_opens) == (2, 1)


def test_state_provider_attaches_to_one_breaker_only() -> None:
    """Attaching a provider to a second breaker raises ValidationError."""
    provider = CircuitBreakerStateProvider()
    first = CircuitBreaker(state_provider=provider, name="first", clock=VirtualClock())
    with pytest.raises(ValidationError, match="first"):
        CircuitBreaker(state_provider=provider, name="second", clock=VirtualClock())
    assert provider.breaker is first


def test_failed_construction_does_not_attach_to_a_shared_control() -> None:
    """A breaker whose construction fails is not left inside a shared manual control."""
    provider = CircuitBreakerStateProvider()
    control = CircuitBreakerManualControl()
    CircuitBreaker(state_provider=provider, manual_control=control, clock=VirtualClock())
    with pytest.raises(ValidationError):
        CircuitBreaker(state_provider=provider, manual_control=control, clock=VirtualClock())
    assert len(control.breakers) == 1


def test_unattached_state_provider_raises_a_clear_error() -> None:
    """Reading an unattached provider raises RuntimeError saying how to attach it."""
    provider = CircuitBreakerStateProvider()
    for read in (
        lambda: provider.circuit_state,
        lambda: provider.time_in_state,
        lambda: provider.stats,
    ):
        with pytest.raises(RuntimeError, match=r"not attached.*state_provider="):
            read()


# --- 9. manual control -------------------------------------------------------------------------


def test_isolate_and_reset_with_async_methods() -> None:
    """isolate() rejects everything (non-retryable, no break end); reset() closes, window empty."""
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=4, manual_control=True, name="llm", clock=clock)
    control = breaker.manual_control
    assert isinstance(control, CircuitBreakerManualControl)
    assert control.breakers == (breaker,)
    ran: list[int] = []

    def work() -> str:
        ran.append(1)
        return "ok"

    async def main() -> None:
        _fail(breaker, 3)
        await control.isolate("maintenance")
        assert breaker.state is ISOLATED
        await asyncio.sleep(3600.0)  # no break ever ends an isolation
        with pytest.raises(CircuitOpenError) as info:
            breaker.call_sync(work)
        error = info.value
        assert (error.code, error.retryable, error.retry_after) == ("circuit_isolated", False, None)
        assert "maintenance" in error.message
        assert error.details == {"breaker": "llm", "state": "isolated"}
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok_async)
        await control.reset()

    run_virtual(main(), clock=clock)
    assert ran == []
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.rejected) == (CLOSED, 0, 0, 2)
    _fail(breaker)  # fresh window: the three earlier failures are gone
    assert breaker.state is CLOSED


def test_isolate_and_reset_sync_twins_from_open() -> None:
    """isolate_sync() holds an open breaker past its break; reset_sync() closes it."""
    clock = VirtualClock()
    breaker = _tripped(clock, manual_control=True)
    control = breaker.manual_control
    assert control is not None
    control.isolate_sync("drill")
    clock.advance(10.0)
    assert breaker.state is ISOLATED
    assert breaker.stats.break_remaining == 0.0
    control.reset_sync()
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.consecutive_opens, stats.trips) == (CLOSED, 0, 0, 1)
    _succeed(breaker)


def test_reset_while_closed_clears_the_window_without_a_transition() -> None:
    """reset() on a closed breaker forgets the window and tells listeners nothing."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = CircuitBreaker(
        min_throughput=3, manual_control=True, listeners=[changes.append], clock=clock
    )
    _fail(breaker, 2)
    assert breaker.manual_control is not None
    breaker.manual_control.reset_sync()
    assert (breaker.stats.calls, changes) == (0, [])
    _fail(breaker)
    assert breaker.state is CLOSED


def test_isolating_twice_keeps_one_transition_and_the_latest_reason() -> None:
    """A second isolate() while isolated emits nothing and updates the reason."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = CircuitBreaker(manual_control=True, listeners=[changes.append], clock=clock)
    assert breaker.manual_control is not None
    breaker.manual_control.isolate_sync("first")
    breaker.manual_control.isolate_sync("second")
    assert len(changes) == 1
    with pytest.raises(CircuitOpenError, match="second"):
        breaker.call_sync(ok)


def test_one_control_shared_by_two_breakers() -> None:
    """A shared control isolates and resets every breaker it is attached to."""
    clock = VirtualClock()
    control = CircuitBreakerManualControl()
    first = CircuitBreaker(manual_control=control, name="a", clock=clock)
    second = CircuitBreaker(manual_control=control, name="b", clock=clock)
    assert first.manual_control is control
    assert second.manual_control is control
    assert control.breakers == (first, second)
    run_virtual(control.isolate("deploy"), clock=clock)
    assert (first.state, second.state) == (ISOLATED, ISOLATED)
    for breaker in (first, second):
        with pytest.raises(CircuitOpenError):
            breaker.call_sync(ok)
    run_virtual(control.reset(), clock=clock)
    assert (first.state, second.state) == (CLOSED, CLOSED)


def test_manual_control_off_by_default() -> None:
    """manual_control=False (the default) leaves breaker.manual_control as None."""
    assert CircuitBreaker(clock=VirtualClock()).manual_control is None
    assert CircuitBreaker(manual_control=False, clock=VirtualClock()).manual_control is None


# --- 10. call forms ----------------------------------------------------------------------------

Attempt = Callable[[bool], Any]


def _sync_work(ran: list[bool], succeed: bool) -> str:
    ran.append(succeed)
    if not succeed:
        raise ExternalServiceError("upstream down")
    return "ok"


async def _async_work(ran: list[bool], succeed: bool) -> str:
    await asyncio.sleep(0)
    return _sync_work(ran, succeed)


def _form_call_sync(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    return lambda succeed: breaker.call_sync(_sync_work, ran, succeed)


def _form_call(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    return lambda succeed: breaker.call(_async_work, ran, succeed)


def _form_decorator(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    @breaker
    def work(succeed: bool) -> str:
        return _sync_work(ran, succeed)

    return work


def _form_async_decorator(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    @breaker
    async def work(succeed: bool) -> str:
        return await _async_work(ran, succeed)

    return work


def _form_guard(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    def attempt(succeed: bool) -> str:
        with breaker.guard():
            return _sync_work(ran, succeed)

    return attempt


def _form_async_guard(breaker: CircuitBreaker, ran: list[bool]) -> Attempt:
    async def attempt(succeed: bool) -> str:
        async with breaker.guard():
            return await _async_work(ran, succeed)

    return attempt


def test_call_forms_follow_the_sync_naming_rule() -> None:
    """The async operation has the plain name, its blocking twin ends in _sync; guard() and the
    decorator serve both kinds through one name."""
    assert inspect.iscoroutinefunction(CircuitBreaker.call)
    assert not inspect.iscoroutinefunction(CircuitBreaker.call_sync)
    assert not hasattr(CircuitBreaker, "call_async")
    control = CircuitBreakerManualControl
    assert inspect.iscoroutinefunction(control.isolate)
    assert inspect.iscoroutinefunction(control.reset)
    assert not inspect.iscoroutinefunction(control.isolate_sync)
    assert not inspect.iscoroutinefunction(control.reset_sync)


FORMS = {
    "call_sync": (_form_call_sync, False),
    "call": (_form_call, True),
    "decorator": (_form_decorator, False),
    "async_decorator": (_form_async_decorator, True),
    "guard": (_form_guard, False),
    "async_guard": (_form_async_guard, True),
}


def _run_form(
    name: str, breaker: CircuitBreaker, clock: VirtualClock, plan: list[bool]
) -> tuple[list[str], list[bool]]:
    """Run one attempt per entry of ``plan`` (True: succeed) through a call form."""
    factory, is_async = FORMS[name]
    ran: list[bool] = []
    attempt = factory(breaker, ran)
    results: list[str] = []

    def record(error: BaseException | None) -> None:
        if error is None:
            results.append("ok")
        elif isinstance(error, CircuitOpenError):
            results.append("rejected")
        elif isinstance(error, ExternalServiceError):
            results.append("failed")
        else:
            raise error

    if is_async:

        async def main() -> None:
            for succeed in plan:
                try:
                    assert await attempt(succeed) == "ok"
                except Exception as error:
                    record(error)
                else:
                    record(None)

        run_virtual(main(), clock=clock)
    else:
        for succeed in plan:
            try:
                assert attempt(succeed) == "ok"
            except Exception as error:
                record(error)
            else:
                record(None)
    return results, ran


@pytest.mark.parametrize("timed", [False, True], ids=["fast_path", "timed_path"])
@pytest.mark.parametrize("form", list(FORMS))
def test_every_call_form_opens_probes_and_closes_alike(form: str, timed: bool) -> None:
    """Each call form counts, opens, rejects without calling, probes and closes the same way."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = CircuitBreaker(
        failure_threshold=0.5,
        min_throughput=10,
        slow_call_duration=100.0 if timed else None,  # timed: never slow, but the timed path
        listeners=[changes.append],
        clock=clock,
    )
    plan = [True] * 4 + [False] * 6 + [True] * 3
    results, ran = _run_form(form, breaker, clock, plan)
    assert results == ["ok"] * 4 + ["failed"] * 6 + ["rejected"] * 3
    assert ran == plan[:10]
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures, stats.rejected) == (OPEN, 10, 6, 3)
    clock.advance(5.0)
    results, ran = _run_form(form, breaker, clock, [True, False])
    assert results == ["ok", "failed"]  # the probe closes; the failure counts in a fresh window
    assert ran == [True, False]
    stats = breaker.stats
    assert (stats.state, stats.calls, stats.failures) == (CLOSED, 1, 1)
    assert [(c.old, c.new, c.reason) for c in changes] == [
        (CLOSED, OPEN, "failure_ratio"),
        (OPEN, HALF_OPEN, "break_elapsed"),
        (HALF_OPEN, CLOSED, "probes_succeeded"),
    ]


@pytest.mark.parametrize("timed", [False, True], ids=["fast_path", "timed_path"])
@pytest.mark.parametrize("form", list(FORMS))
def test_every_call_form_rolls_the_window(form: str, timed: bool) -> None:
    """Outcomes recorded through each form leave the window once sampling_duration has passed."""
    clock = VirtualClock()
    breaker = CircuitBreaker(
        min_throughput=100,
        sampling_duration=10.0,
        slow_call_duration=100.0 if timed else None,
        clock=clock,
    )
    _run_form(form, breaker, clock, [True, True, True, False])
    clock.advance(10.0)
    _run_form(form, breaker, clock, [True, True])  # no stats read in between: no roll from it
    assert (breaker.stats.calls, breaker.stats.failures) == (2, 0)


def test_decorated_functions_keep_metadata_and_expose_the_breaker() -> None:
    """@breaker keeps __name__/__doc__, stays sync or async, and exposes .breaker."""
    breaker = CircuitBreaker(clock=VirtualClock())

    @breaker
    def fetch(x: int) -> int:
        """Fetch x."""
        return x + 1

    @breaker
    async def fetch_async(x: int) -> int:
        """Fetch x, async."""
        return x + 2

    assert (fetch.__name__, fetch.__doc__) == ("fetch", "Fetch x.")
    assert (fetch_async.__name__, fetch_async.__doc__) == ("fetch_async", "Fetch x, async.")
    assert fetch.breaker is breaker  # type: ignore[attr-defined]
    assert fetch_async.breaker is breaker  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(fetch)
    assert inspect.iscoroutinefunction(fetch_async)
    assert fetch(1) == 2
    assert run_virtual(fetch_async(1)) == 3
    with pytest.raises(TypeError, match="callable"):
        breaker(42)  # type: ignore[arg-type]


def test_guard_rejects_on_entry_and_skips_the_block() -> None:
    """Entering a guard of an open breaker raises; the block does not run."""
    clock = VirtualClock()
    breaker = _tripped(clock)
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as info, breaker.guard():
        ran.append(1)
    assert ran == []
    assert info.value.retry_after == 5.0


# --- 11. validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": 1.5}, "failure_threshold"),
        ({"failure_threshold": math.nan}, "failure_threshold"),
        ({"failure_threshold": "x"}, "failure_threshold"),
        ({"min_throughput": 0}, "min_throughput"),
        ({"min_throughput": 1.5}, "min_throughput"),
        ({"min_throughput": True}, "min_throughput"),
        ({"sampling_duration": 0}, "sampling_duration"),
        ({"sampling_duration": -1.0}, "sampling_duration"),
        ({"break_duration": 0}, "break_duration"),
        ({"break_duration": -5.0}, "break_duration"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"half_open_max_calls": 1.0}, "half_open_max_calls"),
        ({"buckets": 0}, "buckets"),
        ({"buckets": True}, "buckets"),
        ({"slow_call_duration": -1.0}, "slow_call_duration"),
        ({"slow_call_threshold": 0}, "slow_call_threshold"),
        ({"handled": "not callable"}, "handled"),
        ({"listeners": [print, "not callable"]}, "listeners"),
        ({"break_duration_generator": 42}, "break_duration_generator"),
        ({"manual_control": "yes"}, "manual_control"),
        ({"state_provider": object()}, "state_provider"),
    ],
)
def test_invalid_configuration_names_the_parameter(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise ValidationError whose message and details name the parameter."""
    with pytest.raises(ValidationError) as info:
        CircuitBreaker(clock=VirtualClock(), **kwargs)
    error = info.value
    assert f"{field}=" in error.message
    assert error.details == {"field": field}
    assert error.code == "invalid_config"


# --- 12. threads ---------------------------------------------------------------------------------


def test_threads_hammering_keep_the_bookkeeping_consistent() -> None:
    """Eight threads with a fixed mix of outcomes leave consistent stats and no leaked probes."""
    clock = VirtualClock()
    changes: list[StateChange] = []
    breaker = CircuitBreaker(
        failure_threshold=0.3,
        min_throughput=5,
        sampling_duration=4.0,
        buckets=4,
        break_duration=1.0,
        half_open_max_calls=2,
        listeners=[changes.append],
        clock=clock,
    )
    threads_n, per_thread = 8, 500
    barrier = threading.Barrier(threads_n)
    ran = [0] * threads_n
    outcomes = [{"ok": 0, "failed": 0, "rejected": 0} for _ in range(threads_n)]
    unexpected: list[BaseException] = []
    in_flight_seen: list[int] = []

    def work(k: int, fail: bool) -> str:
        ran[k] += 1
        if fail:
            raise ExternalServiceError("down")
        return "ok"

    def worker(k: int) -> None:
        try:
            barrier.wait(WAIT)
            for i in range(per_thread):
                if k == 0 and i % 25 == 24:
                    clock.advance(0.5)  # only thread 0 moves time: it stays monotonic
                    in_flight_seen.append(breaker.stats.half_open_in_flight)
                try:
                    breaker.call_sync(work, k, (i * 7 + k) % 3 == 0)
                except ExternalServiceError:
                    outcomes[k]["failed"] += 1
                except CircuitOpenError:
                    outcomes[k]["rejected"] += 1
                else:
                    outcomes[k]["ok"] += 1
        except BaseException as error:
            unexpected.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
    finally:
        sys.setswitchinterval(interval)
    assert unexpected == []
    for k in range(threads_n):
        assert sum(outcomes[k].values()) == per_thread
        assert ran[k] == outcomes[k]["ok"] + outcomes[k]["failed"]
    stats = breaker.stats
    assert stats.state in {CLOSED, OPEN, HALF_OPEN}  # nobody isolated it
    assert stats.rejected == sum(o["rejected"] for o in outcomes)
    assert stats.half_open_in_flight == 0  # every admitted probe finished: no leaked slot
    assert all(0 <= n <= 2 for n in in_flight_seen)
    assert 0 <= stats.failures <= stats.calls
    assert stats.trips >= 1
    assert stats.trips == sum(1 for c in changes if (c.old, c.new) == (CLOSED, OPEN))
    for change in changes:
        assert _legal(change), change


# --- 13. property-based model of the state machine ---------------------------------------------

_AUTOMATIC = {
    (CLOSED, OPEN): {"failure_ratio", "slow_call_ratio"},
    (OPEN, HALF_OPEN): {"break_elapsed"},
    (HALF_OPEN, OPEN): {"probe_failed"},
    (HALF_OPEN, CLOSED): {"probes_succeeded"},
}


def _legal(change: StateChange) -> bool:
    """Whether a transition is one the module docstring allows."""
    if change.new is ISOLATED:
        return change.old is not ISOLATED and change.reason.startswith("isolated: ")
    if change.reason == "reset":
        return change.new is CLOSED and change.old is not CLOSED
    return change.reason in _AUTOMATIC.get((change.old, change.new), set())


@given(
    events=st.lists(
        st.tuples(st.integers(0, 12), st.booleans()),  # (quarter seconds to wait, failed)
        max_size=60,
    ),
    buckets=st.sampled_from([1, 2, 4, 8]),
    sampling_duration=st.sampled_from([2.0, 4.0, 8.0]),
)
@settings(max_examples=100, deadline=None, database=None, derandomize=True)
def test_window_counts_match_the_bucket_model(
    events: list[tuple[int, bool]], buckets: int, sampling_duration: float
) -> None:
    """Window counts equal the outcomes whose bucket is among the last ``buckets`` buckets."""
    clock = VirtualClock(3.0)
    breaker = CircuitBreaker(
        min_throughput=10**6, sampling_duration=sampling_duration, buckets=buckets, clock=clock
    )
    recorded: list[tuple[float, bool]] = []
    for quarters, failed in events:
        clock.advance(quarters * 0.25)
        if failed:
            _fail(breaker)
        else:
            _succeed(breaker)
        recorded.append((clock.now(), failed))
        current = math.floor(clock.now() * buckets / sampling_duration)
        live = [
            f
            for t, f in recorded
            if current - math.floor(t * buckets / sampling_duration) < buckets
        ]
        stats = breaker.stats
        assert (stats.calls, stats.failures) == (len(live), sum(live))


class BreakerModel(RuleBasedStateMachine):
    """Drives a breaker and a reference model of its documented semantics side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(100.0)
        self.breaker: CircuitBreaker | None = None
        self.changes: list[StateChange] = []
        self.contexts: list[BreakDurationContext] = []
        self.flights: list[tuple[int, int, float]] = []  # (breaker permit, model generation, start)
        # the reference model
        self.expected_changes: list[StateChange] = []
        self.expected_contexts: list[BreakDurationContext] = []
        self.state = CLOSED
        self.records: list[tuple[float, bool, bool]] = []  # closed-state outcomes (t, failed, slow)
        self.open_until = 0.0
        self.last_break = 0.0
        self.generation = 0
        self.in_flight = 0
        self.successes = 0
        self.consecutive = 0
        self.trips = 0
        self.rejected = 0

    # --- setup ---------------------------------------------------------------------------------
    @initialize(
        buckets=st.sampled_from([1, 2, 4, 8]),
        sampling_duration=st.sampled_from([2.0, 4.0, 8.0]),
        min_throughput=st.integers(1, 4),
        failure_threshold=st.sampled_from([0.25, 0.5, 1.0]),
        slow_call_duration=st.sampled_from([None, 1.0]),
        slow_call_threshold=st.sampled_from([0.5, 1.0]),
        half_open_max_calls=st.integers(1, 3),
        break_duration=st.sampled_from([None, 0.5, 3.0]),
    )
    def build(
        self,
        buckets: int,
        sampling_duration: float,
        min_throughput: int,
        failure_threshold: float,
        slow_call_duration: float | None,
        slow_call_threshold: float,
        half_open_max_calls: int,
        break_duration: float | None,
    ) -> None:
        self.fixed_break = break_duration
        self.breaker = CircuitBreaker(
            failure_threshold=failure_threshold,
            min_throughput=min_throughput,
            sampling_duration=sampling_duration,
            break_duration=break_duration,
            break_duration_generator=None if break_duration else self._generator,
            manual_control=True,
            slow_call_duration=slow_call_duration,
            slow_call_threshold=slow_call_threshold,
            half_open_max_calls=half_open_max_calls,
            buckets=buckets,
            name="model",
            listeners=[self.changes.append],
            clock=self.clock,
        )

    def _generator(self, ctx: BreakDurationContext) -> float:
        self.contexts.append(ctx)
        return min(0.5 * ctx.consecutive_opens, 2.0)

    @property
    def b(self) -> CircuitBreaker:
        assert self.breaker is not None
        return self.breaker

    # --- the reference model -------------------------------------------------------------------
    def _move(self, new: CircuitState, reason: str) -> None:
        now = self.clock.now()
        self.expected_changes.append(StateChange("model", self.state, new, now, reason))
        self.state = new
        self.generation += 1
        self.in_flight = 0
        self.successes = 0

    def _window(self) -> tuple[int, int, int]:
        b, duration = self.b._nbuckets, self.b.sampling_duration
        current = math.floor(self.clock.now() * b / duration)
        live = [r for r in self.records if current - math.floor(r[0] * b / duration) < b]
        return len(live), sum(r[1] for r in live), sum(r[2] for r in live)

    def _open(self, failures: int, ratio: float, reason: str) -> None:
        self.consecutive += 1
        if self.state is CLOSED:
            self.trips += 1
        if self.fixed_break is not None:
            duration = self.fixed_break
        else:
            self.expected_contexts.append(BreakDurationContext(failures, ratio, self.consecutive))
            duration = min(0.5 * self.consecutive, 2.0)
        self.last_break = duration
        self.open_until = self.clock.now() + duration
        self._move(OPEN, reason)

    def _refresh(self) -> None:
        if self.state is OPEN and self.clock.now() >= self.open_until:
            self._move(HALF_OPEN, "break_elapsed")

    def _admit(self) -> tuple[str, int]:
        """('closed' | 'probe' | 'rejected', model generation of a probe)."""
        self._refresh()
        if self.state is CLOSED:
            return "closed", 0
        if self.state is HALF_OPEN and self.in_flight + self.successes < self.b.half_open_max_calls:
            self.in_flight += 1
            return "probe", self.generation
        self.rejected += 1
        return "rejected", 0

    def _finish(self, generation: int, start: float, outcome: str) -> None:
        """Apply an outcome ('ok', 'fail', 'unhandled', 'cancel') of a call admitted earlier."""
        if outcome == "cancel":
            if generation and generation == self.generation:
                self.in_flight -= 1
            return
        failed = outcome == "fail"
        duration = self.b.slow_call_duration
        slow = duration is not None and self.clock.now() - start >= duration
        if generation:
            if generation == self.generation:
                self.in_flight -= 1
                if failed or slow:
                    self._open(1, 1.0, "probe_failed")
                else:
                    self.successes += 1
                    if self.successes >= self.b.half_open_max_calls:
                        self.records.clear()
                        self.consecutive = 0
                        self._move(CLOSED, "probes_succeeded")
        elif self.state is CLOSED:
            self.records.append((self.clock.now(), failed, slow))
            if failed or slow:
                self._check_ratios()

    def _check_ratios(self) -> None:
        calls, failures, slows = self._window()
        if calls < self.b.min_throughput:
            return
        if failures / calls >= self.b.failure_threshold:
            self._open(failures, failures / calls, "failure_ratio")
        elif self.b.slow_call_duration is not None and slows / calls >= self.b.slow_call_threshold:
            self._open(failures, failures / calls, "slow_call_ratio")

    def _check_openings(self, before: int) -> None:
        """Every new CLOSED -> OPEN transition happened with the model's window over a threshold."""
        for change in self.changes[before:]:
            if (change.old, change.new) != (CLOSED, OPEN):
                continue
            calls, failures, slows = self._window()
            assert calls >= self.b.min_throughput
            assert failures / calls >= self.b.failure_threshold or (
                self.b.slow_call_duration is not None
                and slows / calls >= self.b.slow_call_threshold
            )

    # --- rules -----------------------------------------------------------------------------------
    @rule(quarters=st.integers(0, 24))
    def advance(self, quarters: int) -> None:
        """Let 0 to 6 s pass."""
        self.clock.advance(quarters * 0.25)

    def _call(self, outcome: str, seconds: float) -> None:
        before = len(self.changes)
        kind, generation = self._admit()
        start = self.clock.now()
        ran: list[int] = []

        def work() -> str:
            ran.append(1)
            self.clock.advance(seconds)
            if outcome == "fail":
                raise ExternalServiceError("down")
            if outcome == "unhandled":
                raise ValidationError("bad request")
            return "ok"

        raised: BaseException | None = None
        try:
            self.b.call_sync(work)
        except (CircuitOpenError, ExternalServiceError, ValidationError) as error:
            raised = error
        if kind == "rejected":
            assert isinstance(raised, CircuitOpenError)
            assert ran == []
            if self.state is ISOLATED:
                assert (raised.code, raised.retry_after) == ("circuit_isolated", None)
            elif self.state is OPEN:
                assert raised.retry_after == self.open_until - self.clock.now()
            else:
                assert raised.retry_after == self.last_break
            return
        expected = {"ok": None, "fail": ExternalServiceError, "unhandled": ValidationError}
        assert type(raised) is not CircuitOpenError
        assert (None if raised is None else type(raised)) is expected[outcome]
        assert kind != "rejected"
        assert ran == [1]
        self._finish(generation, start, outcome)
        self._check_openings(before)

    @rule(seconds=st.sampled_from([0.0, 0.5]))
    def succeeding_call(self, seconds: float) -> None:
        """A call that succeeds quickly (below any slow_call_duration)."""
        self._call("ok", seconds)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0]), handled=st.booleans())
    def failing_call(self, seconds: float, handled: bool) -> None:
        """A call raising a handled error (a failure) or a ValidationError (not one)."""
        self._call("fail" if handled else "unhandled", seconds)

    @rule(seconds=st.sampled_from([1.0, 1.5]))
    def slow_call(self, seconds: float) -> None:
        """A call that succeeds but takes at least slow_call_duration (when one is set)."""
        self._call("ok", seconds)

    @rule(times=st.integers(2, 5))
    def failure_burst(self, times: int) -> None:
        """Several failures in a row: reaches the open state far more often than single steps."""
        for _ in range(times):
            self._call("fail", 0.0)

    @precondition(lambda self: self.breaker is not None and self.state is OPEN)
    @rule(extra=st.integers(0, 2))
    def wait_out_break(self, extra: int) -> None:
        """Advance to the end of the break (plus 0 to 0.5 s): the next admission is a probe."""
        self.clock.advance(max(0.0, self.open_until - self.clock.now()) + extra * 0.25)

    def _start(self) -> None:
        kind, generation = self._admit()
        try:
            permit = self.b._admit()
        except CircuitOpenError:
            assert kind == "rejected"
            return
        assert kind != "rejected"
        assert (permit != 0) == (kind == "probe")
        assert permit == generation
        self.flights.append((permit, generation, self.clock.now()))

    def _probe_slot_free(self) -> bool:
        """Whether the model says a probe would be admitted now (without moving the model)."""
        if self.breaker is None:
            return False
        if self.state is OPEN:
            return self.clock.now() >= self.open_until
        return self.state is HALF_OPEN and self.in_flight + self.successes < (
            self.b.half_open_max_calls
        )

    @precondition(lambda self: sum(1 for f in self.flights if not f[0]) < 3)
    @rule()
    def start_in_flight(self) -> None:
        """Admit a call and keep it running: a closed-state call, a probe, or a rejection."""
        self._start()

    @precondition(lambda self: self._probe_slot_free())
    @rule()
    def start_probe(self) -> None:
        """Admit a probe and keep it in flight (targets half-open, where probes are rare)."""
        self._start()
        assert self.flights[-1][0] != 0

    OUTCOMES = st.sampled_from(["ok", "fail", "unhandled", "cancel"])

    @precondition(lambda self: self.flights)
    @rule(index=st.integers(0, 5), outcome=OUTCOMES)
    def finish_in_flight(self, index: int, outcome: str) -> None:
        """Finish any call kept in flight (closed-state call or probe, current or stale)."""
        self._finish_flight(index % len(self.flights), outcome)

    @precondition(lambda self: any(flight[0] for flight in self.flights))
    @rule(outcome=OUTCOMES)
    def finish_oldest_probe(self, outcome: str) -> None:
        """Finish the oldest probe in flight (often stale: admitted before a later transition)."""
        self._finish_flight(next(i for i, f in enumerate(self.flights) if f[0]), outcome)

    def _finish_flight(self, index: int, outcome: str) -> None:
        before = len(self.changes)
        permit, generation, start = self.flights.pop(index)
        errors: dict[str, BaseException] = {
            "fail": ExternalServiceError("down"),
            "unhandled": ValidationError("bad request"),
            "cancel": asyncio.CancelledError(),
        }
        if outcome == "ok":
            self.b._on_success(start, permit)
        else:
            self.b._on_failure(errors[outcome], start, permit)
        self._finish(generation, start, outcome)
        self._check_openings(before)

    # Isolation holds until reset, so it is only entered at interesting moments (calls in
    # flight, or not closed); otherwise most of a run would be spent rejecting.
    @precondition(
        lambda self: self.state is not ISOLATED and (self.flights or self.state is not CLOSED)
    )
    @rule()
    def isolate(self) -> None:
        """Isolate through the manual control."""
        assert self.b.manual_control is not None
        self.b.manual_control.isolate_sync("drill")
        if self.state is not ISOLATED:
            self._move(ISOLATED, "isolated: drill")

    @rule()
    def reset(self) -> None:
        """Reset through the manual control: closed, window and consecutive opens forgotten."""
        assert self.b.manual_control is not None
        self.b.manual_control.reset_sync()
        self.records.clear()
        self.consecutive = 0
        if self.state is not CLOSED:
            self._move(CLOSED, "reset")

    # --- invariants ------------------------------------------------------------------------------
    @invariant()
    def matches_the_model(self) -> None:
        """State, transitions, generator contexts, window counts and counters equal the model's."""
        if self.breaker is None:
            return
        self._refresh()
        stats = self.b.stats  # also moves an elapsed break to HALF_OPEN
        assert self.changes == self.expected_changes
        assert self.contexts == self.expected_contexts
        assert stats.state is self.state
        assert (stats.calls, stats.failures, stats.slow_calls) == self._window()
        assert (stats.trips, stats.consecutive_opens, stats.rejected) == (
            self.trips,
            self.consecutive,
            self.rejected,
        )
        assert stats.half_open_in_flight == self.in_flight
        expected_remaining = self.open_until - self.clock.now() if self.state is OPEN else 0.0
        assert stats.break_remaining == expected_remaining

    @invariant()
    def transitions_are_legal(self) -> None:
        """Every transition is allowed and starts where the previous one ended."""
        previous = CLOSED
        for change in self.changes:
            assert _legal(change), change
            assert change.old is previous, change
            previous = change.new

    @invariant()
    def probes_never_exceed_the_limit(self) -> None:
        """Probes in flight plus finished successes never exceed half_open_max_calls."""
        if self.breaker is None:
            return
        in_flight, successes = self.b._probes_in_flight, self.b._probe_successes
        assert in_flight >= 0
        assert in_flight + successes <= self.b.half_open_max_calls
        if self.b._state is not HALF_OPEN:
            assert in_flight == 0


def test_state_machine_matches_the_reference_model() -> None:
    """Random walks of calls, probes, time, isolate and reset agree with the reference model."""
    run_state_machine_as_test(
        BreakerModel,
        settings=settings(
            max_examples=250,
            stateful_step_count=50,
            deadline=None,
            database=None,
            derandomize=True,
            report_multiple_bugs=False,
        ),
    )
