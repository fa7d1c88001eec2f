"""Clocks and virtual time: flashkit.clock."""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from collections.abc import Callable

import pytest

from flashkit import CircuitBreaker, RetryConfig
from flashkit.budget import PercentBudget
from flashkit.clock import (
    Clock,
    SystemClock,
    VirtualClock,
    VirtualEventLoop,
    default_clock,
    run_virtual,
    use_clock,
)


def test_system_clock_is_a_clock_reading_monotonic_time() -> None:
    """SystemClock satisfies the Clock protocol and reads time.monotonic."""
    clock = SystemClock()
    assert isinstance(clock, Clock)
    before = time.monotonic()
    now = clock.now()
    assert before <= now <= time.monotonic()


def test_virtual_clock_moves_only_when_told() -> None:
    """A VirtualClock starts where asked and moves by advance() and sync sleep()."""
    clock = VirtualClock(start=100.0)
    assert clock.now() == 100.0
    clock.advance(2.5)
    clock.sleep_sync(0.5)
    assert clock.now() == 103.0
    assert "103.0" in repr(clock)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_virtual_clock_rejects_negative_and_nan_time(bad: float) -> None:
    """Time never runs backwards: negative or NaN steps are refused with the method named."""
    clock = VirtualClock()
    with pytest.raises(ValueError, match=r"advance\(seconds\)"):
        clock.advance(bad)
    with pytest.raises(ValueError, match=r"sleep_sync\(seconds\)"):
        clock.sleep_sync(bad)
    assert clock.now() == 0.0


def test_run_virtual_returns_the_result_and_advances_exactly() -> None:
    """asyncio.sleep in run_virtual advances the shared clock by exactly the slept time."""
    clock = VirtualClock()

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600.0)
        return clock.now(), loop.time()

    started = time.perf_counter()
    now, loop_time = run_virtual(main(), clock=clock)
    assert now == loop_time == 3600.0
    assert time.perf_counter() - started < 60.0  # an hour of sleep did not take an hour


@pytest.mark.parametrize("seconds", [4e7, 3.2e9, 1e12])
def test_sleeps_far_into_virtual_time_finish(seconds: float) -> None:
    """Past ~1e7 s, now + clock resolution rounds to now: a timer due then still fires (a
    years-away rate-limit reset must not hang the loop)."""
    clock = VirtualClock()

    async def main() -> float:
        await asyncio.sleep(seconds)
        await asyncio.sleep(seconds)
        return asyncio.get_running_loop().time()

    assert run_virtual(main(), clock=clock) == 2 * seconds


def test_a_timer_within_the_resolution_never_fires_before_its_time() -> None:
    """asyncio fires a timer due within its clock resolution (1 ns) of now at once; virtual
    time then moves to the timer's due time, so code after a sleep never sees a clock short of
    it (a retry for a sub-nanosecond remainder would otherwise fire at once, forever short)."""
    clock = VirtualClock(7.000000328122152)
    due = 7.000000328122153  # one ulp later
    fired: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: None)  # something else is ready in the same iteration
        loop.call_at(due, lambda: fired.append(clock.now()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run_virtual(main(), clock=clock)
    assert fired == [due]


def test_a_timer_rearmed_at_the_same_instant_forever_lets_time_pass() -> None:
    """aiolimiter's waker re-arms itself at ``last_check + needed / rate``; when ``needed`` is a
    rounding remainder that time sum is now itself. After 100 such turns time moves 1 us."""
    clock = VirtualClock(1e6)
    turns = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def check() -> None:
            turns.append(loop.time())
            if loop.time() > 1e6:
                done.set_result(None)
            else:
                loop.call_at(loop.time() + 1e-12, check)  # rounds to now at 1e6 s

        loop.call_at(1e6, check)
        await done

    run_virtual(main(), clock=clock)
    assert turns[-1] == 1e6 + 1e-6
    assert 100 <= len(turns) <= 102


def test_timers_fire_in_virtual_time_order_with_fifo_ties() -> None:
    """call_later callbacks run in order of their due time; equal times keep insertion order."""
    order: list[tuple[float, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        for delay, name in [(5.0, "c"), (1.0, "a"), (5.0, "d"), (3.0, "b"), (9.0, "end")]:
            loop.call_later(delay, lambda n=name: order.append((loop.time(), n)))
        loop.call_later(9.0, done.set_result, None)
        await done

    run_virtual(main())
    assert order == [(1.0, "a"), (3.0, "b"), (5.0, "c"), (5.0, "d"), (9.0, "end")]


def test_timeouts_fire_at_the_exact_virtual_deadline() -> None:
    """asyncio.timeout and wait_for expire at their virtual deadline, not before or after."""
    clock = VirtualClock()

    async def main() -> list[float]:
        hits = []
        try:
            async with asyncio.timeout(2.0):
                await asyncio.sleep(10.0)
        except TimeoutError:
            hits.append(clock.now())
        try:
            await asyncio.wait_for(asyncio.sleep(10.0), timeout=0.25)
        except TimeoutError:
            hits.append(clock.now())
        await asyncio.wait_for(asyncio.sleep(1.0), timeout=1.5)
        hits.append(clock.now())
        return hits

    assert run_virtual(main(), clock=clock) == [2.0, 2.25, 3.25]


def test_an_hour_of_sleeps_and_timeouts_across_1000_tasks() -> None:
    """1 simulated hour, 1,000 tasks sleeping under timeouts: exact times, ordered wake-ups.

    The wall-time bound only proves the hour was not waited for (it is 1/20 of real time);
    the speed itself is measured in benchmarks/primitives.py.
    """
    clock = VirtualClock()
    wakeups: list[tuple[float, float]] = []  # (clock when woken, when it should have woken)
    timeouts: list[tuple[float, float]] = []

    async def worker(i: int, rng: random.Random) -> None:
        t = 0.0
        while True:
            step = rng.uniform(1.0, 60.0)
            limit = rng.uniform(1.0, 60.0)
            if t + min(step, limit) > 3600.0:
                return
            try:
                async with asyncio.timeout(limit):
                    await asyncio.sleep(step)
                t += step
                wakeups.append((clock.now(), t))
            except TimeoutError:
                t += limit
                timeouts.append((clock.now(), t))

    async def main() -> None:
        rng = random.Random(7)
        await asyncio.gather(*(worker(i, rng) for i in range(1000)))

    started = time.perf_counter()
    run_virtual(main(), clock=clock)
    wall = time.perf_counter() - started
    assert len(wakeups) > 50_000
    assert len(timeouts) > 10_000
    seen = [now for now, _ in wakeups]
    assert seen == sorted(seen), "tasks woke out of virtual-time order"
    assert max(abs(now - due) for now, due in wakeups + timeouts) < 1e-6
    assert 3540.0 < clock.now() <= 3600.0
    assert wall < 180.0


def test_executor_work_takes_no_virtual_time() -> None:
    """asyncio.to_thread completes (waited for in real time) without advancing the clock."""
    clock = VirtualClock()

    def blocking() -> str:
        time.sleep(0.01)
        return "done"

    async def main() -> tuple[str, float]:
        result = await asyncio.to_thread(blocking)
        return result, clock.now()

    assert run_virtual(main(), clock=clock) == ("done", 0.0)


def test_executor_work_keeps_pending_timers_waiting() -> None:
    """While a thread works, a due-later timer does not fire early."""
    clock = VirtualClock()
    release = threading.Event()
    fired: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(5.0, lambda: fired.append(loop.time()))
        loop.call_soon(release.set)
        await asyncio.to_thread(release.wait)
        assert fired == []
        await asyncio.sleep(10.0)

    run_virtual(main(), clock=clock)
    assert fired == [5.0]


def test_executor_results_come_back_in_the_order_submitted() -> None:
    """Whichever thread finishes first, the callers resume in the order they submitted their
    work (so a run is a function of its seed): the first job here waits until the last has
    finished, yet the first caller resumes first. A failure and a cancelled caller keep their
    places too."""
    clock = VirtualClock()
    last_done = threading.Event()
    resumed: list[str] = []

    def first() -> str:
        last_done.wait()
        return "first"

    def broken() -> str:
        raise ValueError("second")

    def last() -> str:
        last_done.set()
        return "last"

    async def call(job: Callable[[], str]) -> None:
        try:
            resumed.append(await asyncio.to_thread(job))
        except ValueError as error:
            resumed.append(str(error))

    async def main() -> None:
        tasks = [
            asyncio.ensure_future(call(first)),
            asyncio.ensure_future(call(broken)),
            asyncio.ensure_future(asyncio.to_thread(lambda: "cancelled")),
            asyncio.ensure_future(call(last)),
        ]
        await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run_virtual(main(), clock=clock)
    assert resumed == ["first", "second", "last"]
    assert clock.now() == 0.0


def test_exceptions_propagate_out_of_run_virtual() -> None:
    """An exception in the coroutine is raised by run_virtual, after virtual time passed."""
    clock = VirtualClock()

    async def main() -> None:
        await asyncio.sleep(1.5)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_virtual(main(), clock=clock)
    assert clock.now() == 1.5


def test_run_virtual_needs_a_coroutine() -> None:
    """Passing the function instead of calling it is explained."""

    async def main() -> None:
        return None

    with pytest.raises(TypeError, match=r"run_virtual\(main\(\)\)"):
        run_virtual(main)  # type: ignore[arg-type]


def test_run_virtual_inside_a_running_loop_like_jupyter() -> None:
    """Inside a running loop (a Jupyter cell) run_virtual works, in a helper thread that keeps
    the caller's context variables."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    clock = VirtualClock()

    async def simulation() -> tuple[str, float, str]:
        await asyncio.sleep(600.0)
        return var.get(), clock.now(), threading.current_thread().name

    async def kernel_cell() -> tuple[str, float, str]:
        var.set("from the notebook")
        return run_virtual(simulation(), clock=clock)  # a sync call inside a running loop

    value, now, thread = asyncio.run(kernel_cell())
    assert value == "from the notebook"
    assert now == 600.0
    assert thread == "flashkit-virtual-loop"


def test_errors_cross_the_helper_thread() -> None:
    """An exception raised in the helper thread reaches the Jupyter-like caller."""

    async def simulation() -> None:
        await asyncio.sleep(1.0)
        raise RuntimeError("inside")

    async def kernel_cell() -> None:
        run_virtual(simulation())

    with pytest.raises(RuntimeError, match="inside"):
        asyncio.run(kernel_cell())


def test_one_clock_cannot_drive_two_live_loops() -> None:
    """Two loops sharing a clock would fight over time: refused with a clear error."""
    clock = VirtualClock()
    loop = VirtualEventLoop(clock)
    try:
        with pytest.raises(RuntimeError, match="already drives"):
            VirtualEventLoop(clock)
    finally:
        loop.close()
    VirtualEventLoop(clock).close()  # fine once the first is closed


def test_virtual_sleep_outside_its_loop_advances_and_yields() -> None:
    """VirtualClock.sleep on an ordinary loop advances the clock by hand."""
    clock = VirtualClock()

    async def main() -> float:
        await clock.sleep(4.0)
        return clock.now()

    assert asyncio.run(main()) == 4.0


def test_virtual_sleep_inside_its_loop_lets_others_run_in_order() -> None:
    """Inside its own loop, sleep is asyncio.sleep: tasks interleave by due time."""
    clock = VirtualClock()
    log: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        log.append((name, clock.now()))

    async def main() -> None:
        await asyncio.gather(sleeper("slow", 3.0), sleeper("fast", 1.0))

    run_virtual(main(), clock=clock)
    assert log == [("fast", 1.0), ("slow", 3.0)]


def test_use_clock_sets_the_default_for_primitives_built_inside() -> None:
    """use_clock makes every primitive built in the block share one virtual clock."""
    assert isinstance(default_clock(), SystemClock)
    with use_clock(VirtualClock(start=50.0)) as clock:
        assert default_clock() is clock
        breaker = CircuitBreaker()
        config = RetryConfig()
        budget = PercentBudget()
        assert breaker.clock is clock
        assert config.clock is clock
        assert budget.clock is clock
        clock.advance(7.0)
        assert breaker.stats.time_in_state == 7.0
    assert isinstance(default_clock(), SystemClock)
    assert isinstance(CircuitBreaker().clock, SystemClock)


def test_use_clock_refuses_what_is_not_a_clock() -> None:
    """A non-clock is rejected by name."""
    with pytest.raises(TypeError, match="needs a Clock"), use_clock(object()):  # type: ignore[arg-type]
        pass
