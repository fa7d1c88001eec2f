"""One OS process sharing a RedisRateLimiter, for tests/test_redis_ratelimit.py.

``python tests/_redis_worker.py '<json config>'``. The worker builds the limiter, prints ``ready``
and waits for a line on stdin; then ``tasks`` asyncio tasks call ``acquire_detailed`` in a loop
for ``duration`` seconds (and ``pollers`` tasks call ``try_acquire_detailed`` every 50 ms at
most: they notice an outage while the waiters sleep). Each admission is recorded as ``[send,
server_time, use, source, wake]``: ``time.time()`` before the call and right after it returns
(when the units are used), the decision's server time, and ``time.time()`` when the call's last
sleep in the limiter ended (``None`` if it did not sleep; the limiter's clock notes it). Each
error is recorded as ``[send, receive, code, message]``. While it runs it prints ``down`` /
``up`` when the limiter's view of Redis changes, ``error`` on the first error and ``fallback``
on the first local admission, so the test can drive an outage by conditions rather than by
guessing times. At the end it writes ``{"admissions", "errors", "stats", "round_trips"}`` as
JSON to ``config["out"]``.
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
from flashkit.redis_ratelimit import RedisRateLimiter


def say(word: str) -> None:
    print(word, flush=True)


class WakeClock(SystemClock):
    """Real time; notes when each task's latest sleep ended (``time.time()``)."""

    def __init__(self) -> None:
        self.woke: dict[object, float] = {}

    async def async_sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.woke[asyncio.current_task()] = time.time()


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
    key = config.get("key", "default")
    admissions: list[list[Any]] = []
    errors: list[list[Any]] = []
    said: set[str] = set()

    def once(word: str) -> None:
        if word not in said:
            said.add(word)
            say(word)

    say("ready")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    end = time.time() + config["duration"]

    async def monitor() -> None:
        up = True
        while time.time() < end:
            if limiter.available != up:
                up = limiter.available
                say("up" if up else "down")
            await asyncio.sleep(0.005)

    async def task() -> None:
        while True:
            send = time.time()
            if send >= end:
                return
            clock.woke.pop(asyncio.current_task(), None)
            try:
                decision = await limiter.acquire_detailed(key, timeout=end - send)
            except RateLimitError as error:
                receive = time.time()
                if error.code == "timeout":
                    return  # it could not be admitted before the end
                errors.append([send, receive, error.code, str(error)])
                once("error")
                await asyncio.sleep(error.retry_after or 0.05)
                continue
            use = time.time()
            wake = clock.woke.get(asyncio.current_task())
            admissions.append([send, decision.server_time, use, decision.source, wake])
            if decision.source == "fallback":
                once("fallback")

    async def poller() -> None:
        """try_acquire every 50 ms at most: notices an outage at once (waiters are asleep)."""
        while True:
            send = time.time()
            if send >= end:
                return
            try:
                decision = await limiter.try_acquire_detailed_async(key)
            except RateLimitError as error:
                errors.append([send, time.time(), error.code, str(error)])
                once("error")
                await asyncio.sleep(min(error.retry_after or 0.05, 0.05))
                continue
            use = time.time()
            if decision.allowed:
                admissions.append([send, decision.server_time, use, decision.source, None])
                if decision.source == "fallback":
                    once("fallback")
            else:
                await asyncio.sleep(min(decision.retry_after, 0.05))

    await asyncio.gather(
        monitor(),
        *(task() for _ in range(config["tasks"])),
        *(poller() for _ in range(config.get("pollers", 0))),
    )
    stats = limiter.stats
    await limiter.aclose()
    result = {
        "admissions": admissions,
        "errors": errors,
        "stats": {"admitted": stats.admitted, "rejected": stats.rejected},
        "round_trips": limiter.round_trips,
    }
    Path(config["out"]).write_text(json.dumps(result), encoding="utf-8")  # noqa: ASYNC240 - at exit
    say("done")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
