"""LLMClient's own cost: simulated requests per wall second through the full client stack, next
to a bare ``httpx.AsyncClient`` doing the same requests, in the same virtual-time loop.

Both send the same chat completion to the in-process simulator (``healthy`` profile with zero
latency, so only code runs) over ``httpx.MockTransport(upstream.handle)``, from ``workers``
concurrent tasks, ``requests`` in all, on a :class:`~flashkit.clock.VirtualEventLoop`:

- **bare**: ``await http.post(...)``, ``json.loads`` of the body and ``choices[0]`` read;
- **client**: ``LLMClient.chat`` with a limiter (a ``RateLimiter`` it never exhausts), the
  default breaker, retry policy and retry budget, the default attempt timeout; telemetry off.

Repetitions alternate bare/client (and which goes first), and the medians are reported: the
machine is noisy. The target is client >= 0.7x bare. ``--profile`` prints cProfile's view of
the client run (per call, in µs) to find where its time goes.

    python benchmarks/client.py [--quick] [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from flashkit.client import LLMClient
from flashkit.clock import VirtualClock, run_virtual
from flashkit.ratelimit import RateLimiter
from flashkit.sim import FaultProfile, SimulatedUpstream

BASE_URL = "http://sim.flashkit.invalid/v1"
KEY = "sk-bench"
MESSAGES = [{"role": "user", "content": "안녕하세요"}]
TARGET_RATIO = 0.7


def _upstream(clock: VirtualClock) -> SimulatedUpstream:
    profile = FaultProfile.preset("healthy", latency_median=0.0, latency_p99=0.0)
    return SimulatedUpstream(profile, seed=0, clock=clock)


async def _drive(call: Callable[[], Awaitable[Any]], requests: int, workers: int) -> None:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(workers)))


def run_bare(requests: int, workers: int) -> float:
    """Wall seconds for ``requests`` bare httpx calls."""
    clock = VirtualClock()
    upstream = _upstream(clock)
    body = json.dumps(
        {"model": "m", "messages": MESSAGES, "max_tokens": 2000, "temperature": 0.7},
        ensure_ascii=False,
    ).encode()

    async def main() -> float:
        async with httpx.AsyncClient(
            base_url=BASE_URL,
            transport=httpx.MockTransport(upstream.handle),
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        ) as http:

            async def call() -> None:
                response = await http.post("/chat/completions", content=body)
                data = json.loads(response.content)
                assert data["choices"][0]["message"]["content"]

            start = time.perf_counter()
            await _drive(call, requests, workers)
            return time.perf_counter() - start

    seconds = run_virtual(main(), clock=clock)
    assert upstream.stats.ok == requests, upstream.stats
    return seconds


def run_client(requests: int, workers: int, profiler: cProfile.Profile | None = None) -> float:
    """Wall seconds for ``requests`` LLMClient.chat calls (limiter, breaker, retry, budget)."""
    clock = VirtualClock()
    upstream = _upstream(clock)

    async def main() -> float:
        client = LLMClient(
            provider="sim",
            base_url=BASE_URL,
            api_key=KEY,
            model="m",
            transport=httpx.MockTransport(upstream.handle),
            limiter=RateLimiter(1e9, 60.0, clock=clock),
            clock=clock,
        )
        async with client:

            async def call() -> None:
                result = await client.chat(MESSAGES)
                assert result.content

            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            await _drive(call, requests, workers)
            seconds = time.perf_counter() - start
            if profiler is not None:
                profiler.disable()
            return seconds

    seconds = run_virtual(main(), clock=clock)
    assert upstream.stats.ok == requests, upstream.stats
    return seconds


def measure(requests: int, workers: int, repetitions: int) -> dict[str, Any]:
    """Interleaved repetitions; medians of requests per wall second."""
    bare: list[float] = []
    client: list[float] = []
    run_bare(min(200, requests), workers)  # warm up imports and caches
    run_client(min(200, requests), workers)
    for rep in range(repetitions):
        order = ("bare", "client") if rep % 2 == 0 else ("client", "bare")
        for which in order:
            gc.collect()
            if which == "bare":
                bare.append(requests / run_bare(requests, workers))
            else:
                client.append(requests / run_client(requests, workers))
    bare_rps = statistics.median(bare)
    client_rps = statistics.median(client)
    ratio = client_rps / bare_rps
    return {
        "requests": requests,
        "workers": workers,
        "repetitions": repetitions,
        "bare_rps": bare_rps,
        "client_rps": client_rps,
        "ratio": ratio,
        "overhead_us_per_call": (1.0 / client_rps - 1.0 / bare_rps) * 1e6,
        "bare_runs": bare,
        "client_runs": client,
        "target": f">= {TARGET_RATIO}x bare",
        "target_met": ratio >= TARGET_RATIO,
    }


def profile_client(requests: int, workers: int, top: int = 25) -> list[dict[str, Any]]:
    """cProfile of one client run: the functions with the most own time, in µs per call."""
    profiler = cProfile.Profile()
    run_client(requests, workers, profiler)
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}:{name}",
                "calls_per_request": ncalls / requests,
                "own_us_per_request": tottime / requests * 1e6,
                "cumulative_us_per_request": cumtime / requests * 1e6,
            }
        )
    rows.sort(key=lambda row: row["own_us_per_request"], reverse=True)
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the client")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=None)
    args = parser.parse_args(argv)
    requests = args.requests or (500 if args.quick else 5000)
    repetitions = args.repetitions or (3 if args.quick else 9)
    result = measure(requests, args.workers, repetitions)
    if args.profile or not result["target_met"]:
        result["profile"] = profile_client(requests, args.workers)
    print(
        f"bare {result['bare_rps']:,.0f} req/s, client {result['client_rps']:,.0f} req/s, "
        f"ratio {result['ratio']:.2f} (target {result['target']}), "
        f"overhead {result['overhead_us_per_call']:.0f} µs/call"
    )
    for row in result.get("profile", [])[:15]:
        print(
            f"  {row['own_us_per_request']:7.1f} µs own  {row['cumulative_us_per_request']:8.1f} "
            f"µs cum  {row['calls_per_request']:5.1f}x  {row['function']}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
