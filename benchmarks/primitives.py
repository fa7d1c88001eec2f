"""flashkit's primitives against their peers, in one process run, reported as ratios.

Method (as in the peer baselines): every case is a loop ``run(n)`` doing ``n`` operations; ``n`` is
calibrated so one repetition takes about ``target`` seconds (80 ms); then 2 untimed warm-ups and
``repeat`` (7) timed repetitions with the garbage collector off; the figure is the median per
operation. Each row includes the loop and call overhead; the ``plain call`` rows show that floor.
Machines differ and this one is noisy: compare the ratios within one run, not absolute ns.

    python benchmarks/primitives.py            # full run (about a minute)
    python benchmarks/primitives.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import backoff
import circuitbreaker
import pybreaker
import stamina
import tenacity

from flashkit import CircuitBreaker, RetryConfig, VirtualClock, retry, run_virtual
from flashkit.lab.backoff import brooker_strategies, contention_experiment

logging.getLogger("backoff").disabled = True  # backoff logs every retry by default
stamina.instrumentation.set_on_retry_hooks([])  # measure stamina itself, not its logging


@dataclass
class Row:
    case: str
    library: str
    ns_per_op: float


@dataclass
class Target:
    case: str
    peer: str
    max_ratio: float  # flashkit / peer must be <= this
    text: str


# --- the harness ------------------------------------------------------------------------------
def measure(run: Callable[[int], Any], *, target: float, repeat: int) -> float:
    """Median seconds per operation of ``run(n)``."""
    return measure_interleaved({"run": run}, target=target, repeat=repeat)["run"]


def measure_interleaved(
    runs: dict[str, Callable[[int], Any]], *, target: float, repeat: int
) -> dict[str, float]:
    """Median seconds per operation of each ``run(n)`` over :func:`measure_rounds`."""
    rounds = measure_rounds(runs, target=target, repeat=repeat)
    return {name: statistics.median(values) for name, values in rounds.items()}


def round_ratio(rounds: dict[str, list[float]], first: str, second: str) -> float:
    """The median over rounds of ``first / second``, each pair measured back to back: on a VM
    whose speed drifts by tens of percent over seconds, a ratio within a round is steadier than
    the ratio of two medians taken in different moments."""
    return statistics.median(a / b for a, b in zip(rounds[first], rounds[second], strict=True))


def measure_rounds(
    runs: dict[str, Callable[[int], Any]], *, target: float, repeat: int
) -> dict[str, list[float]]:
    """Seconds per operation of each ``run(n)`` in each of ``repeat`` rounds, the runs taking
    turns within a round (a noisy spell on a shared machine then hits them all alike). Seconds
    of this thread's CPU time (``time.thread_time``): time the scheduler gives other processes
    does not count, which on a busy 2-core machine otherwise swamps a 1 µs call."""
    sizes = {}
    for name, run in runs.items():
        n = 1
        while True:
            start = time.perf_counter()
            run(n)
            elapsed = time.perf_counter() - start
            if elapsed >= target / 4 or n >= 10_000_000:
                break
            n *= 4
        sizes[name] = n = max(1, int(n * target / max(elapsed, 1e-9)))
        for _ in range(2):
            run(n)
    times: dict[str, list[float]] = {name: [] for name in runs}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, run in runs.items():
                n = sizes[name]
                start = time.thread_time()
                run(n)
                times[name].append((time.thread_time() - start) / n)
    finally:
        if gc_was:
            gc.enable()
    return times


def sync_loop(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def async_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]]
) -> Callable[[int], None]:
    async def body(n: int) -> None:
        for _ in range(n):
            await fn()

    def run(n: int) -> None:
        loop.run_until_complete(body(n))

    return run


def fails_every_other() -> Callable[[], int]:
    """A function raising ValueError on every other call: one failure, then one success."""
    state = [False]

    def fn() -> int:
        state[0] = not state[0]
        if state[0]:
            raise ValueError("transient")
        return 1

    return fn


def async_fails_every_other() -> Callable[[], Awaitable[int]]:
    sync = fails_every_other()

    async def fn() -> int:
        return sync()

    return fn


# --- the cases --------------------------------------------------------------------------------
def retry_cases(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, Callable[[int], None]]]:
    def ok() -> int:
        return 1

    async def aok() -> int:
        return 1

    fk = RetryConfig(max_attempts=3, initial_delay=0.0, retry_on=(ValueError,))
    ten: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_none(),
        "retry": tenacity.retry_if_exception_type(ValueError),
    }
    cases: dict[str, dict[str, Callable[[int], None]]] = {}
    cases["retry: sync, succeeds first time"] = {
        "plain call": sync_loop(ok),
        "flashkit": sync_loop(retry(fk)(ok)),
        "tenacity": sync_loop(tenacity.retry(**ten)(ok)),
        "stamina": sync_loop(stamina.retry(on=ValueError, attempts=3)(ok)),
        "backoff": sync_loop(backoff.on_exception(backoff.constant, ValueError, max_tries=3)(ok)),
    }
    cases["retry: async, succeeds first time"] = {
        "plain call": async_loop(loop, aok),
        "flashkit": async_loop(loop, retry(fk)(aok)),
        # the general path every attempt takes under a deadline: what the inlined one saves
        SHARED: async_loop(loop, retry(dataclasses.replace(fk, deadline=3600.0))(aok)),
        "tenacity": async_loop(loop, tenacity.retry(**ten)(aok)),
        "stamina": async_loop(loop, stamina.retry(on=ValueError, attempts=3)(aok)),
        "backoff": async_loop(
            loop, backoff.on_exception(backoff.constant, ValueError, max_tries=3)(aok)
        ),
    }
    zero = {"wait_initial": 0.0, "wait_max": 0.0, "wait_jitter": 0.0}
    cases["retry: sync, 1 retry with zero wait"] = {
        "flashkit": sync_loop(retry(fk)(fails_every_other())),
        "tenacity": sync_loop(tenacity.retry(**ten)(fails_every_other())),
        "stamina": sync_loop(stamina.retry(on=ValueError, attempts=3, **zero)(fails_every_other())),
        "backoff": sync_loop(
            backoff.on_exception(
                backoff.constant, ValueError, max_tries=3, interval=0, jitter=None, logger=None
            )(fails_every_other())
        ),
    }
    cases["retry: async, 1 retry with zero wait"] = {
        "flashkit": async_loop(loop, retry(fk)(async_fails_every_other())),
        "tenacity": async_loop(loop, tenacity.retry(**ten)(async_fails_every_other())),
        "stamina": async_loop(
            loop, stamina.retry(on=ValueError, attempts=3, **zero)(async_fails_every_other())
        ),
        "backoff": async_loop(
            loop,
            backoff.on_exception(
                backoff.constant, ValueError, max_tries=3, interval=0, jitter=None, logger=None
            )(async_fails_every_other()),
        ),
    }
    return cases


def breaker_cases(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, Callable[[int], None]]]:
    def ok() -> int:
        return 1

    async def aok() -> int:
        return 1

    cases: dict[str, dict[str, Callable[[int], None]]] = {}
    shared = CircuitBreaker(failure_threshold=0.5, min_throughput=10)
    cases["breaker: sync, closed, succeeding call"] = {
        "plain call": sync_loop(ok),
        "flashkit": sync_loop(CircuitBreaker(failure_threshold=0.5, min_throughput=10)(ok)),
        SHARED: sync_loop(functools.partial(shared.call_sync, ok)),
        "circuitbreaker": sync_loop(
            circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(ok)
        ),
        "pybreaker": sync_loop(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(ok)),
    }
    cases["breaker: async, closed, succeeding call"] = {
        "plain call": async_loop(loop, aok),
        "flashkit": async_loop(loop, CircuitBreaker(failure_threshold=0.5, min_throughput=10)(aok)),
        SHARED: async_loop(loop, functools.partial(shared.call, aok)),
        "circuitbreaker": async_loop(
            loop, circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(aok)
        ),
    }

    def fail_then_ok(breaker_call: Callable[[Callable[[], int]], int]) -> Callable[[int], None]:
        def bad() -> int:
            raise ValueError("x")

        def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 - contextlib.suppress would add its own cost to the loop
                    breaker_call(bad)
                except ValueError:
                    pass
                breaker_call(ok)

        return run

    fk = CircuitBreaker(failure_threshold=0.9, min_throughput=10**9)
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    cases["breaker: sync, one failure + one success"] = {
        "flashkit": fail_then_ok(lambda f: fk.call_sync(f)),
        "pybreaker": fail_then_ok(lambda f: pb.call(f)),
    }
    return cases


# The decorators inline their fast path (retry: first attempt succeeds; breaker: closed state);
# these rows keep that honest: the inlined path must save more than 5 % over the shared one.
SHARED = "flashkit, shared path"
INLINED = "inlined fast path saves > 5 % over the shared path"

TARGETS = [
    Target("retry: async, succeeds first time", SHARED, 0.95, INLINED),
    Target("breaker: sync, closed, succeeding call", SHARED, 0.95, INLINED),
    Target("breaker: async, closed, succeeding call", SHARED, 0.95, INLINED),
    Target("retry: sync, succeeds first time", "tenacity", 0.1, ">= 10x faster than tenacity"),
    Target("retry: sync, succeeds first time", "backoff", 0.5, ">= 2x faster than backoff"),
    Target("retry: async, succeeds first time", "tenacity", 0.1, ">= 10x faster than tenacity"),
    Target("retry: async, succeeds first time", "backoff", 0.5, ">= 2x faster than backoff"),
    Target("retry: sync, 1 retry with zero wait", "tenacity", 0.2, ">= 5x faster than tenacity"),
    Target("retry: async, 1 retry with zero wait", "tenacity", 0.2, ">= 5x faster than tenacity"),
    Target(
        "breaker: sync, closed, succeeding call", "circuitbreaker", 0.7, "<= 0.7x circuitbreaker"
    ),
    Target("breaker: sync, closed, succeeding call", "pybreaker", 0.3, "<= 0.3x pybreaker"),
    Target(
        "breaker: async, closed, succeeding call", "circuitbreaker", 0.7, "<= 0.7x circuitbreaker"
    ),
]


def virtual_time_cases(quick: bool) -> list[dict[str, Any]]:
    """Wall seconds of the virtual-time workloads the notebooks and tests rely on."""
    out = []
    repetitions = 10 if quick else 100
    start = time.perf_counter()
    contention_experiment(brooker_strategies(), clients=[100], repetitions=repetitions)
    wall = time.perf_counter() - start
    out.append(
        {
            "case": f"Brooker contention, N=100, 5 strategies x {repetitions} runs",
            "wall_s": wall,
            "target": "< 30 s for 100 runs",
            "met": wall < 30.0 if not quick else None,
        }
    )

    async def hour(tasks: int) -> int:
        sleeps = 0

        async def worker(i: int) -> None:
            nonlocal sleeps
            t = 0.0
            step = 10.0 + i % 50  # 10..59 s between wake-ups
            while t + step <= 3600.0:
                async with asyncio.timeout(step * 2):
                    await asyncio.sleep(step)
                t += step
                sleeps += 1

        await asyncio.gather(*(worker(i) for i in range(tasks)))
        return sleeps

    start = time.perf_counter()
    sleeps = run_virtual(hour(1000), clock=VirtualClock())
    wall = time.perf_counter() - start
    out.append(
        {
            "case": f"1 simulated hour, 1,000 tasks ({sleeps:,} sleeps under timeouts)",
            "wall_s": wall,
            "target": "a few seconds",
            "met": wall < 5.0,
        }
    )
    return out


# --- running and reporting --------------------------------------------------------------------
def run_all(*, quick: bool = False) -> dict[str, Any]:
    target = 0.01 if quick else 0.08
    repeat = 3 if quick else 7
    loop = asyncio.new_event_loop()
    rows: list[Row] = []
    try:
        for cases in (retry_cases(loop), breaker_cases(loop)):
            for case, libraries in cases.items():
                for library, run in libraries.items():
                    seconds = measure(run, target=target, repeat=repeat)
                    rows.append(Row(case, library, seconds * 1e9))
    finally:
        loop.close()
    by_key = {(r.case, r.library): r.ns_per_op for r in rows}
    ratios = []
    for case in dict.fromkeys(r.case for r in rows):
        ours = by_key[(case, "flashkit")]
        for (c, library), ns in by_key.items():
            if c == case and library != "flashkit":
                ratios.append(
                    {
                        "case": case,
                        "peer": library,
                        "flashkit_ns": ours,
                        "peer_ns": ns,
                        "flashkit_over_peer": ours / ns,
                    }
                )
    verdicts = []
    for t in TARGETS:
        ratio = by_key[(t.case, "flashkit")] / by_key[(t.case, t.peer)]
        verdicts.append(
            {"case": t.case, "target": t.text, "ratio": ratio, "met": ratio <= t.max_ratio}
        )
    return {
        "python": sys.version.split()[0],
        "quick": quick,
        "rows": [asdict(r) for r in rows],
        "ratios": ratios,
        "targets": verdicts,
        "virtual_time": virtual_time_cases(quick),
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"flashkit primitives vs peers (Python {result['python']}, quick={result['quick']})",
        "",
    ]
    current = None
    for row in result["rows"]:
        if row["case"] != current:
            current = row["case"]
            lines.append(current)
        lines.append(f"    {row['library']:<16} {row['ns_per_op']:>12,.0f} ns")
    lines.append("")
    lines.append("targets (flashkit time / peer time):")
    for v in result["targets"]:
        mark = "met" if v["met"] else "NOT MET"
        lines.append(f"    {v['case']:<42} {v['target']:<30} {v['ratio']:6.3f}  {mark}")
    lines.append("")
    lines.append("virtual time (wall seconds):")
    lines.extend(
        f"    {v['case']:<62} {v['wall_s']:7.2f} s  ({v['target']})" for v in result["virtual_time"]
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = run_all(quick=args.quick)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
