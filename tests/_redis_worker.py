"""One OS process sharing a RedisRateLimiter, for tests/test_redis_ratelimit.py.

``python tests/_redis_worker.py '<json config>'``. The worker builds the limiter, prints ``ready``
and waits for a line on stdin; then ``tasks`` asyncio tasks acquire in a loop for ``duration``
seconds (and ``pollers`` tasks try to acquire every 50 ms at most: they notice an outage while the
waiters sleep). Both go through the limiter's ``_decide_async``, what ``acquire`` and
``try_acquire`` run, for what a ``Grant`` does not say: who decided (``source``). Each admission is
recorded as ``[send, server_time, use, source, wake]``: ``time.time()`` before the call and right
after it returns (when the units are used), the decision's server time, and ``time.time()`` when
the call's last sleep in the limiter ended (``None`` if it did not sleep; the limiter's clock
notes it). Each error is recorded as ``[send, receive, code, message]``. While it runs it prints
``down`` / ``up`` when the limiter's view of Redis changes, ``error`` on the first error and
``fallback`` on the first local admission, so the test can drive an outage by conditions rather
than by guessing times. At the end it writes ``{"admissions", "errors", "stats", "round_trips"}``
as JSON to ``config["out"]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from flashkit.clock import SystemClock
from flashkit.errors import RateLimitError
from flashkit.ratelimit import RedisRateLimiter


def say(word: str) -> None:
    print(word, flush=True)


class WakeClock(SystemClock):
    """Real time; notes when each task's latest sleep ended (``time.time()``)."""

    def __init__(self) -> None:
        self.woke: dict[object, float] = {}

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.woke[asyncio.current_task()] = time.time()


class Run:
    """One worker's limiter, deadline and records, and the tasks that drive them."""

    def __init__(self, config: dict[str, Any], limiter: RedisRateLimiter, clock: WakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.key: str = config.get("key", "default")
        self.end = 0.0  # set when the test says go
        self.admissions: list[list[Any]] = []
        self.errors: list[list[Any]] = []
        self.said: set[str] = set()

    def once(self, word: str) -> None:
        if word not in self.said:
            self.said.add(word)
            say(word)

    def admitted(self, send: float, decision: Any, wake: float | None) -> None:
        use = time.time()
        self.admissions.append([send, decision.server_time, use, decision.source, wake])
        if decision.source == "fallback":
            self.once("fallback")

    async def monitor(self) -> None:
        up = True
        while time.time() < self.end:
            if self.limiter.available != up:
                up = self.limiter.available
                say("up" if up else "down")
            await asyncio.sleep(0.005)

    async def task(self) -> None:
        while True:
            send = time.time()
            if send >= self.end:
                return
            self.clock.woke.pop(asyncio.current_task(), None)
            try:
                decision = await self.limiter._decide_async(self.key, 1.0, self.end - send, True)
            except RateLimitError as error:
                receive = time.time()
                if error.code == "timeout":
                    return  # it could not be admitted before the end
                self.errors.append([send, receive, error.code, str(error)])
                self.once("error")
                await asyncio.sleep(error.retry_after or 0.05)
                continue
            self.admitted(send, decision, self.clock.woke.get(asyncio.current_task()))

    async def poller(self) -> None:
        """try_acquire every 50 ms at most: notices an outage at once (waiters are asleep)."""
        while True:
            send = time.time()
            if send >= self.end:
                return
            try:
                decision = await self.limiter._decide_async(self.key, 1.0, None, False)
            except RateLimitError as error:
                self.errors.append([send, time.time(), error.code, str(error)])
                self.once("error")
                await asyncio.sleep(min(error.retry_after or 0.05, 0.05))
                continue
            if decision.allowed:
                self.admitted(send, decision, None)
            else:
                await asyncio.sleep(min(decision.retry_after, 0.05))


async def main(config: dict[str, Any]) -> None:
    clock = WakeClock()
    limiter = RedisRateLimiter(
        config["url"],
        config["rate"],
        config["period"],
        key_prefix=config["prefix"],
        clock=clock,
        **config.get("options", {}),
    )
    run = Run(config, limiter, clock)
    say("ready")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    run.end = time.time() + config["duration"]
    await asyncio.gather(
        run.monitor(),
        *(run.task() for _ in range(config["tasks"])),
        *(run.poller() for _ in range(config.get("pollers", 0))),
    )
    stats = limiter.stats
    await limiter.aclose()
    result = {
        "admissions": run.admissions,
        "errors": run.errors,
        "stats": {"admitted": stats.admitted, "rejected": stats.rejected},
        "round_trips": limiter.round_trips,
    }
    Path(config["out"]).write_text(json.dumps(result), encoding="utf-8")  # noqa: ASYNC240 - at exit
    say("done")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
