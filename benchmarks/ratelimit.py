"""flashkit's rate limiters against aiolimiter, limits and pyrate-limiter, in one process run.

Three parts (times are real here, not virtual: this measures cost and real admissions):

1. Per-call cost with capacity free (limit 10^9 per minute): sync ``try_acquire`` / ``hit`` and
   async ``acquire``, as in peer-baselines.md §3, with the harness of ``primitives.py``.
2. The burst test of peer-baselines.md §3: limit 200/s, 600 acquisitions requested as fast as
   possible by 50 asyncio tasks, started at 0.05, 0.50 and 0.95 of a wall-clock second; reports
   the most admissions in any 1-s window, the same counting only windows that open >= 1 s after
   the start, and the time to the last admission. ``limits`` has no waiting acquire: its tasks
   loop on ``hit()`` and sleep until ``get_window_stats().reset_time`` (at least 2 ms).
3. Sharding under threads: 8 threads calling ``try_acquire`` on one ``RateLimiter`` against a
   ``ShardedRateLimiter`` with 8 shards.
4. Redis decisions per second (``FLASHKIT_REDIS_URL``, default the local server), from one
   process and from 4 at once: a bare ``EVALSHA`` of ``return 1`` (the one-round-trip floor)
   through redis-py's client and on a held connection (the path ``RedisRateLimiter`` takes),
   ``limits``' Redis moving window, and ``RedisRateLimiter`` per decision (sliding window and
   gcra) and in lease mode (10 units per round trip). Each process loops ``try_acquire`` on one
   key with a limit it never reaches; the modes take turns in short rounds (medians reported).

    python benchmarks/ratelimit.py [--quick] [--json out.json] [--no-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiolimiter
import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import pyrate_limiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from primitives import async_loop, measure_rounds, round_ratio, sync_loop

from flashkit import Grant, RateLimiter, ShardedRateLimiter
from flashkit.lab.ratelimit import burst_times, max_in_window

HUGE = 10**9


# --- 1. per-call cost -------------------------------------------------------------------------
# RateLimiter.acquire inlines the admit-now path that try_acquire shares through _take_now; this
# row keeps that honest: the inlined path must save more than 5 % over the shared call.
SHARED = "flashkit acquire, shared path"


class SharedPathLimiter(RateLimiter):
    """``RateLimiter`` whose async fast path calls the shared ``_take_now`` (as try_acquire)."""

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant:
        if count.__class__ is int and 0 < count <= self._fast_max:
            now = self._now()
            self._acquire_lock()
            try:
                left = self._take_now(key, count, now)
                if left >= 0.0:
                    self._counters.unwaited += 1
            finally:
                self._release_lock()
            if left >= 0.0:
                return Grant((key, count, 0.0, now, self))  # as acquire builds it
        return await super().acquire(key, count, timeout=timeout)


def cost_cases(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, Callable[[int], None]]]:
    per_minute = limits.RateLimitItemPerMinute(HUGE)
    fixed = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    moving = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    pyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.MINUTE))
    sync = {
        "flashkit sliding_window": sync_loop(RateLimiter(HUGE, 60.0).try_acquire),
        "flashkit gcra": sync_loop(
            RateLimiter(HUGE, 60.0, algorithm="gcra", burst=HUGE).try_acquire
        ),
        "flashkit token_bucket": sync_loop(
            RateLimiter(HUGE, 60.0, algorithm="token_bucket", burst=HUGE).try_acquire
        ),
        "limits FixedWindow": sync_loop(lambda: fixed.hit(per_minute)),
        "limits MovingWindow": sync_loop(lambda: moving.hit(per_minute)),
        "pyrate-limiter": sync_loop(lambda: pyrate.try_acquire("k", blocking=False)),
    }
    afixed = limits.aio.strategies.FixedWindowRateLimiter(limits.aio.storage.MemoryStorage())
    apyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.MINUTE))
    flash = RateLimiter(HUGE, 60.0)
    aio = aiolimiter.AsyncLimiter(HUGE, 60)

    async def limits_hit() -> bool:
        return await afixed.hit(per_minute)

    async def pyrate_acquire() -> bool:
        return await apyrate.try_acquire_async("k")

    asynchronous: dict[str, Callable[[int], None]] = {
        "flashkit acquire": async_loop(loop, flash.acquire),
        SHARED: async_loop(loop, SharedPathLimiter(HUGE, 60.0).acquire),
        "aiolimiter acquire": async_loop(loop, aio.acquire),
        "limits.aio FixedWindow hit": async_loop(loop, limits_hit),
        "pyrate-limiter try_acquire_async": async_loop(loop, pyrate_acquire),
    }
    return {
        "try_acquire, capacity free (sync)": sync,
        "acquire, capacity free (async)": asynchronous,
    }


# --- 2. the burst test ------------------------------------------------------------------------
def _limits_acquire(strategy: Any, item: Any) -> Callable[[], Awaitable[None]]:
    async def acquire() -> None:
        while not await strategy.hit(item):
            stats = await strategy.get_window_stats(item)
            await asyncio.sleep(max(0.002, stats.reset_time - time.time()))

    return acquire


def burst_contenders(rate: int) -> dict[str, Callable[[], Callable[[], Awaitable[Any]]]]:
    item = limits.RateLimitItemPerSecond(rate)
    aio_strategies = limits.aio.strategies

    def limits_make(cls: Any) -> Callable[[], Callable[[], Awaitable[None]]]:
        return lambda: _limits_acquire(cls(limits.aio.storage.MemoryStorage()), item)

    def pyrate_make() -> Callable[[], Awaitable[Any]]:
        limiter = pyrate_limiter.Limiter(pyrate_limiter.Rate(rate, pyrate_limiter.Duration.SECOND))

        async def acquire() -> Any:
            return await limiter.try_acquire_async("k")

        return acquire

    return {
        "flashkit sliding_window (default)": lambda: RateLimiter(rate, 1.0).acquire,
        "flashkit token_bucket (pacer)": lambda: (
            RateLimiter(rate, 1.0, algorithm="token_bucket").acquire
        ),
        "aiolimiter": lambda: aiolimiter.AsyncLimiter(rate, 1).acquire,
        "limits FixedWindow": limits_make(aio_strategies.FixedWindowRateLimiter),
        "limits MovingWindow": limits_make(aio_strategies.MovingWindowRateLimiter),
        "limits SlidingWindowCounter": limits_make(aio_strategies.SlidingWindowCounterRateLimiter),
        "pyrate-limiter": pyrate_make,
    }


def run_burst_test(
    *, quick: bool, rate: int = 200, total: int = 600, tasks: int = 50
) -> list[dict[str, Any]]:
    phases = [0.5] if quick else [0.05, 0.50, 0.95]
    rows = []
    for name, make in burst_contenders(rate).items():
        maxima, after, totals = [], [], []
        for phase in phases:
            now = time.time()
            time.sleep((phase - (now % 1.0)) % 1.0)  # start at this fraction of a wall second
            times = asyncio.run(burst_times(make(), tasks, total))
            maxima.append(max_in_window(times, 1.0))
            after.append(max_in_window(times, 1.0, after=1.0))
            totals.append(max(times))
        rows.append(
            {
                "limiter": name,
                "max_in_1s_median": statistics.median(maxima),
                "max_in_1s_worst": max(maxima),
                "after_first_second_worst": max(after),
                "total_s_median": statistics.median(totals),
                "limit": rate,
            }
        )
    return rows


# --- 3. sharding under threads ----------------------------------------------------------------
def threaded_throughput(try_acquire: Callable[[str], Any], threads: int, per_thread: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        key = f"k{index % 4}"
        barrier.wait()
        for _ in range(per_thread):
            try_acquire(key)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    return threads * per_thread / (time.perf_counter() - start)


def run_sharding(*, quick: bool, threads: int = 8) -> list[dict[str, Any]]:
    per_thread = 20_000 if quick else 100_000
    rows = []
    for repeat in range(1 if quick else 3):
        single = RateLimiter(HUGE, 60.0)
        sharded = ShardedRateLimiter(HUGE, 60.0, shards=threads)
        rows.append(
            {
                "repeat": repeat,
                "threads": threads,
                "one RateLimiter ops/s": threaded_throughput(
                    single.try_acquire, threads, per_thread
                ),
                "ShardedRateLimiter(8) ops/s": threaded_throughput(
                    sharded.try_acquire, threads, per_thread
                ),
            }
        )
    return rows


# --- 4. Redis decisions per second ----------------------------------------------------------
REDIS_MODES = (
    "floor: EVALSHA return 1 (redis-py client)",
    "floor: EVALSHA return 1 (held connection)",
    "limits MovingWindow (Redis)",
    "flashkit per decision (sliding_window)",
    "flashkit per decision (gcra)",
    "flashkit lease mode (10 units per round trip)",
)


def _redis_decider(mode: str, url: str, prefix: str) -> Callable[[], Any]:
    import redis

    if mode == REDIS_MODES[0]:
        script = redis.Redis.from_url(url).register_script("return 1")
        return lambda: script()
    if mode == REDIS_MODES[1]:
        # What RedisRateLimiter does per call (packs EVALSHA, sends it on a connection it holds),
        # with the trivial script: its own floor.
        client = redis.Redis.from_url(url)
        sha = client.script_load("return 1")
        connection: Any = client.connection_pool.make_connection()  # (untyped in redis-py)

        def held() -> Any:
            connection.send_packed_command(
                connection.pack_command("EVALSHA", sha, 0), check_health=False
            )
            return connection.read_response()

        return held
    if mode == REDIS_MODES[2]:
        item = limits.RateLimitItemPerMinute(HUGE)
        strategy = limits.strategies.MovingWindowRateLimiter(limits.storage.RedisStorage(url))
        return lambda: strategy.hit(item, prefix)
    from flashkit import RedisRateLimiter

    if mode == REDIS_MODES[3]:
        return RedisRateLimiter(url, HUGE, 60.0, key_prefix=prefix).try_acquire
    if mode == REDIS_MODES[4]:
        return RedisRateLimiter(
            url, HUGE, 60.0, algorithm="gcra", burst=HUGE, key_prefix=prefix
        ).try_acquire
    return RedisRateLimiter(url, HUGE, 60.0, key_prefix=prefix, lease=10).try_acquire


def redis_worker(mode: str, url: str, prefix: str) -> None:
    """Connect, say "ready"; then for each "<seconds>" line on stdin count decisions that long."""
    decide = _redis_decider(mode, url, prefix)
    decide()  # connect and load the script before any clock starts
    print("ready", flush=True)
    for line in sys.stdin:
        end = time.perf_counter() + float(line)
        count = 0
        while time.perf_counter() < end:
            for _ in range(20):
                decide()
            count += 20
        print(count, flush=True)


def run_redis(*, quick: bool, url: str) -> list[dict[str, Any]]:
    """Decisions/s per mode from 1 and from 4 processes: medians of interleaved rounds (the
    modes take turns, so a noisy neighbour hits them all alike)."""
    import subprocess
    import uuid

    rounds, seconds = (2, 0.25) if quick else (9, 0.4)
    workers: dict[str, list[subprocess.Popen[str]]] = {}
    try:
        for mode in REDIS_MODES:
            prefix = f"flashkit-bench:{uuid.uuid4().hex}"
            command = [sys.executable, __file__, "--redis-worker", mode, url, prefix]
            workers[mode] = [
                subprocess.Popen(  # noqa: S603 - our own script, our own arguments
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                for _ in range(4)
            ]
        for group in workers.values():  # all connected and warm before any starts counting
            for worker in group:
                assert worker.stdout is not None
                worker.stdout.readline()
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for processes in (1, 4):
                for mode, group in workers.items():
                    for worker in group[:processes]:
                        assert worker.stdin is not None
                        worker.stdin.write(f"{seconds!r}\n")
                        worker.stdin.flush()
                    total = 0
                    for worker in group[:processes]:
                        assert worker.stdout is not None
                        total += int(worker.stdout.readline())
                    rates.setdefault((mode, processes), []).append(total / seconds)
    finally:
        for group in workers.values():
            for worker in group:
                if worker.stdin is not None:
                    worker.stdin.close()
                worker.wait(timeout=30)
    return [
        {
            "mode": mode,
            "1 process": statistics.median(rates[(mode, 1)]),
            "4 processes": statistics.median(rates[(mode, 4)]),
        }
        for mode in REDIS_MODES
    ]


# --- running and reporting --------------------------------------------------------------------
def run_all(*, quick: bool = False, redis_url: str | None = None) -> dict[str, Any]:
    target = 0.01 if quick else 0.08
    repeat = 3 if quick else 15
    loop = asyncio.new_event_loop()
    cost: list[dict[str, Any]] = []
    rounds: dict[str, dict[str, list[float]]] = {}
    try:
        for case, libraries in cost_cases(loop).items():
            # the libraries take turns in each round: the ratios (medians of per-round ratios)
            # are not at the mercy of one noisy spell, nor of the VM's drift between rounds
            rounds[case] = measure_rounds(libraries, target=target, repeat=repeat)
            cost.extend(
                {"case": case, "library": library, "ns_per_op": statistics.median(values) * 1e9}
                for library, values in rounds[case].items()
            )
    finally:
        loop.close()
    by = {(r["case"], r["library"]): r["ns_per_op"] for r in cost}
    sync_case, async_case = "try_acquire, capacity free (sync)", "acquire, capacity free (async)"
    sync_rounds, async_rounds = rounds[sync_case], rounds[async_case]
    vs_limits = round_ratio(sync_rounds, "flashkit sliding_window", "limits FixedWindow")
    vs_aiolimiter = round_ratio(async_rounds, "flashkit acquire", "aiolimiter acquire")
    vs_shared = round_ratio(async_rounds, "flashkit acquire", SHARED)
    targets = [
        {
            "target": "try_acquire <= 1 us (sync, this machine)",
            "value_ns": by[(sync_case, "flashkit sliding_window")],
            "met": by[(sync_case, "flashkit sliding_window")] <= 1000.0,
        },
        {
            "target": "try_acquire vs limits FixedWindow hit (ratio)",
            "value": vs_limits,
            "met": vs_limits < 1.0,
        },
        {
            "target": "async acquire <= aiolimiter's (ratio)",
            "value": vs_aiolimiter,
            "met": vs_aiolimiter <= 1.0,
        },
        {
            "target": "async acquire: inlined fast path saves > 5 % over the shared path (ratio)",
            "value": vs_shared,
            "met": vs_shared <= 0.95,
        },
    ]
    burst_rows = run_burst_test(quick=quick)
    default = next(r for r in burst_rows if r["limiter"].startswith("flashkit sliding_window"))
    targets.append(
        {
            "target": "burst: flashkit default admits <= 200 in every 1-s window",
            "value": default["max_in_1s_worst"],
            "met": default["max_in_1s_worst"] <= 200,
        }
    )
    redis_rows = run_redis(quick=quick, url=redis_url) if redis_url else []
    if redis_rows:
        by_mode = {row["mode"]: row["1 process"] for row in redis_rows}
        peer = by_mode["limits MovingWindow (Redis)"]
        lease = by_mode["flashkit lease mode (10 units per round trip)"]
        for algorithm in ("sliding_window", "gcra"):
            per_decision = by_mode[f"flashkit per decision ({algorithm})"]
            targets.append(
                {
                    "target": f"Redis per decision ({algorithm}) >= limits MovingWindow "
                    "(ratio, 1 process)",
                    "value": per_decision / peer,
                    "met": per_decision >= peer,
                }
            )
        targets.append(
            {
                "target": "Redis lease mode >= 1.5x limits MovingWindow (ratio, 1 process)",
                "value": lease / peer,
                "met": lease >= 1.5 * peer,
            }
        )
    return {
        "python": sys.version.split()[0],
        "quick": quick,
        "cost": cost,
        "burst": burst_rows,
        "sharding": run_sharding(quick=quick),
        "redis": redis_rows,
        "targets": targets,
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [f"rate limiters vs peers (Python {result['python']}, quick={result['quick']})", ""]
    current = None
    for row in result["cost"]:
        if row["case"] != current:
            current = row["case"]
            lines.append(current)
        lines.append(f"    {row['library']:<34} {row['ns_per_op']:>10,.0f} ns")
    lines.append("")
    lines.append("burst: 200/s, 600 acquisitions, 50 tasks (max admitted in any 1-s window)")
    lines.extend(
        f"    {r['limiter']:<34} median {r['max_in_1s_median']:>4}  worst {r['max_in_1s_worst']:>4}"
        f"  after 1st s {r['after_first_second_worst']:>4}  total {r['total_s_median']:.2f} s"
        for r in result["burst"]
    )
    lines.append("")
    lines.append("sharding under 8 threads (try_acquire ops/s)")
    lines.extend(
        f"    one limiter {r['one RateLimiter ops/s']:>12,.0f}"
        f"   sharded {r['ShardedRateLimiter(8) ops/s']:>12,.0f}"
        for r in result["sharding"]
    )
    if result["redis"]:
        lines.append("")
        lines.append("Redis decisions per second (sum over processes)")
        lines.extend(
            f"    {r['mode']:<48} 1 process {r['1 process']:>9,.0f}   4 processes "
            f"{r['4 processes']:>9,.0f}"
            for r in result["redis"]
        )
    lines.append("")
    for t in result["targets"]:
        value = t.get("value_ns", t.get("value"))
        lines.append(f"    {t['target']:<58} {value:>10.3f}  {'met' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis part")
    parser.add_argument("--redis-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.redis_worker:
        redis_worker(*args.redis_worker)
        return 0
    url = (
        None if args.no_redis else os.environ.get("FLASHKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    result = run_all(quick=args.quick, redis_url=url)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
