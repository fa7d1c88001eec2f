"""Run by tests/test_no_extras.py in a fresh interpreter: flashkit as installed without extras.

``python tests/_no_extras_probe.py '<json list of module names>'``. Before anything of flashkit
is imported, a ``sys.meta_path`` finder makes every import of those modules (and of their
submodules) raise ``ModuleNotFoundError``, as on a machine where the optional extras are not
installed. Then the probe imports ``flashkit`` and uses the primitives, and tries the features
that need an extra. It prints one JSON object: ``preloaded`` (blocked modules already imported
before the finder was in place: should be none), ``checks`` (name -> "ok", or the error for a
primitive that failed) and ``extras`` (feature -> ``[error type, message]`` of what using it
raised, or ``None`` if it did not raise).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class BlockExtras(importlib.abc.MetaPathFinder):
    """Refuses the blocked modules and their submodules, as if they were not installed."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def blocks(self, fullname: str) -> bool:
        return any(fullname == name or fullname.startswith(f"{name}.") for name in self.names)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if self.blocks(fullname):
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (an optional extra: blocked by the test)",
                name=fullname,
            )
        return None  # not ours to decide: the next finder looks


# Each primitive used the way the README shows, without extras; a wrong answer fails an assert.
# flashkit is imported inside each check: only once the finder is in place.


def check_retry() -> None:
    from flashkit.budget import RetryBudget
    from flashkit.errors import ExternalServiceError
    from flashkit.retry import RetryConfig, retry

    calls: list[int] = []

    @retry(RetryConfig(max_attempts=3, initial_delay=0.0, budget=RetryBudget.grpc()))
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ExternalServiceError("upstream down")
        return "ok"

    assert flaky() == "ok"
    assert len(calls) == 3


def check_retry_async() -> None:
    from flashkit.errors import ExternalServiceError
    from flashkit.retry import retry

    calls: list[int] = []

    @retry(max_attempts=2, initial_delay=0.0)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ExternalServiceError("upstream down")
        return "ok"

    assert asyncio.run(flaky()) == "ok"
    assert len(calls) == 2


def check_retry_context() -> None:
    from flashkit.errors import ExternalServiceError
    from flashkit.retry import retry_context

    numbers = []
    for attempt in retry_context(max_attempts=3, initial_delay=0.0):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 2:
                raise ExternalServiceError("upstream down")
    assert numbers == [1, 2]


def check_breaker() -> None:
    from flashkit.breaker import CircuitBreaker, CircuitState
    from flashkit.clock import VirtualClock
    from flashkit.errors import CircuitOpenError, ExternalServiceError

    breaker = CircuitBreaker(failure_threshold=0.5, min_throughput=2, clock=VirtualClock())

    def down() -> None:
        raise ExternalServiceError("upstream down")

    for _ in range(2):
        with contextlib.suppress(ExternalServiceError):
            breaker.call_sync(down)
    assert breaker.state is CircuitState.OPEN
    rejected: list[CircuitOpenError] = []
    try:
        breaker.call_sync(lambda: "ok")
    except CircuitOpenError as error:
        rejected.append(error)
    assert len(rejected) == 1
    assert rejected[0].retry_after is not None


def check_limiter() -> None:
    from flashkit.clock import VirtualClock
    from flashkit.ratelimit import RateLimiter

    limiter = RateLimiter(2, 1.0, clock=VirtualClock())
    assert [limiter.try_acquire("k").allowed for _ in range(3)] == [True, True, False]


def check_compressed_cache() -> None:
    from flashkit.cache import CompressedCache, MemoryStore

    cache = CompressedCache(MemoryStore(), threshold=16)
    value = {"text": "flashkit " * 200}
    cache.set_sync("k", value)
    assert cache.get_sync("k") == value


def check_cache_service() -> None:
    from flashkit.cache import CacheService, MemoryStore

    cache = CacheService(MemoryStore())
    cache.set_sync("k", [1, 2, 3])
    assert cache.get_sync("k") == [1, 2, 3]


def check_classify() -> None:
    import httpx2

    from flashkit.errors import classify

    error = classify(httpx2.Response(429, headers={"retry-after": "2"}))
    assert error is not None
    assert error.retry_after == 2.0


PRIMITIVES: dict[str, Callable[[], None]] = {
    "retry": check_retry,
    "retry_async": check_retry_async,
    "retry_context": check_retry_context,
    "CircuitBreaker": check_breaker,
    "RateLimiter.try_acquire": check_limiter,
    "CompressedCache+MemoryStore": check_compressed_cache,
    "CacheService": check_cache_service,
    "classify": check_classify,
}


# Features that need an extra, used as a user would (each imports what it needs itself).
_URL = "redis://127.0.0.1:6379/0"  # never reached: the error comes first


def use_redis_limiter() -> object:
    from flashkit.ratelimit import RedisRateLimiter

    limiter = RedisRateLimiter(_URL, 10, 1.0, key_prefix="no-extras")
    return limiter.try_acquire("k")


def use_redis_store() -> object:
    from flashkit.cache import CacheService, RedisStore

    return CacheService(RedisStore(_URL, prefix="no-extras:")).get_sync("k")


def use_lz4_codec() -> object:
    from flashkit.cache import CompressedCache, MemoryStore

    return CompressedCache(MemoryStore(), codec="lz4")


def use_msgpack_serializer() -> object:
    from flashkit.cache import CacheService, MemoryStore

    cache = CacheService(MemoryStore(), serializer="msgpack")
    cache.set_sync("k", {"a": 1})
    return cache.get_sync("k")


def use_sim_serve() -> object:
    from flashkit.sim import serve

    serve("healthy", port=1)  # uvicorn is missing: raises before binding anything
    return None


EXTRAS: dict[str, Callable[[], object]] = {
    "redis:RedisRateLimiter": use_redis_limiter,
    "redis:RedisStore": use_redis_store,
    "cache:lz4": use_lz4_codec,
    "cache:msgpack": use_msgpack_serializer,
    "server:sim.serve": use_sim_serve,
}


def main(blocked: Sequence[str]) -> dict[str, Any]:
    finder = BlockExtras(blocked)
    preloaded = sorted(name for name in sys.modules if finder.blocks(name))
    sys.meta_path.insert(0, finder)
    report: dict[str, Any] = {"preloaded": preloaded, "checks": {}, "extras": {}}
    try:
        import flashkit  # noqa: F401 - the package root and every primitive it re-exports
    except BaseException:
        report["import"] = traceback.format_exc()
        return report
    report["import"] = "ok"
    for name, check in PRIMITIVES.items():
        try:
            check()
        except BaseException:
            report["checks"][name] = traceback.format_exc()
        else:
            report["checks"][name] = "ok"
    for name, use in EXTRAS.items():
        try:
            use()
        except Exception as error:
            report["extras"][name] = [type(error).__name__, str(error)]
        else:
            report["extras"][name] = None
    report["loaded"] = sorted(name for name in sys.modules if finder.blocks(name))
    return report


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
