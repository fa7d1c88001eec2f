"""RedisRateLimiter against real Redis servers: scripts, leases, outages, many processes.

Unit-level script tests run on the session's Redis (``redis_url``) with short periods, or with the
scripts' time pinned to a VirtualClock (``pin``) so they can be compared decision by decision
with the local RateLimiter. Where a test needs who decided (``source``) or the details of a
refusal, it asks the limiter's decision flow directly (``detailed``): the public answers are a
``RateLimitResult`` and a ``Grant``. Outage tests start their own ``redis-server`` on a free port
and kill, restart or pause (SIGSTOP) it. The distributed and restart tests run real OS processes
(``tests/_redis_worker.py``) for a few seconds of real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import heapq
import itertools
import json
import logging
import math
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flashkit._flow import run_sync
from flashkit.clock import SystemClock, VirtualClock
from flashkit.errors import RateLimitError, ValidationError
from flashkit.ratelimit import Algorithm, Grant, RateLimiter, RedisRateLimiter
from flashkit.ratelimit._redis_protocol import Decision, Eval, Sleep, constants

WORKER = Path(__file__).with_name("_redis_worker.py")
REPO = Path(__file__).resolve().parent.parent
TOL = 2e-3  # seconds: server TIME has microseconds; the same host's time.time() brackets it
WAKE_SLACK = 0.05  # seconds: how much later than its due time a lone waiter may confirm
LATE = 2e-3  # seconds: a waiter woken later than this confirms (the limiter's tolerance here)


# --- helpers --------------------------------------------------------------------------------
def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body with asyncio.run (the repository's convention: no async plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def max_in_window(events: list[tuple[float, float]], period: float) -> float:
    """Most units in any half-open window [t, t + period) (the maximum starts at an event)."""
    events = sorted(events)
    best = total = 0.0
    j = 0
    for i, (start, _) in enumerate(events):
        while j < len(events) and events[j][0] < start + period:
            total += events[j][1]
            j += 1
        best = max(best, total)
        total -= events[i][1]
    return best


def assert_counts_from_wake(grant: Grant, due: float) -> None:
    """A waiter's units count from its due time, or, when it confirmed on waking (provisional,
    late or an epoch check), from the server time it did so: a little later, never earlier."""
    assert due <= grant.admitted_at <= due + WAKE_SLACK, (grant.admitted_at - due, due)


def detailed(
    limiter: RedisRateLimiter, key: str = "default", count: float = 1, *, wait: bool = False
) -> Decision:
    """``try_acquire`` (or with ``wait``, ``acquire_sync``) with where and when it was decided:
    the decision flow both run, for its ``source`` (redis, lease, fallback) and ``server_time``."""
    return limiter._decide_sync(key, float(count), None, wait)


async def adetailed(
    limiter: RedisRateLimiter, key: str = "default", count: float = 1, *, timeout: float = 0.0
) -> Decision:
    """``acquire`` with where and when it was decided (``timeout``: as acquire's)."""
    return await limiter._decide_async(key, float(count), timeout, True)


def pin(limiter: RedisRateLimiter, clock: VirtualClock) -> None:
    """Run the limiter's scripts at ``clock``'s time (a stand-in for the server's TIME)."""
    limiter._session.server_clock = clock.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


def log_members(url: str, prefix: str, key: str = "default", name: str = "redis") -> list[str]:
    client = plain_client(url)
    try:
        members = client.zrange(f"{{{prefix}:{name}}}:{key}:log", 0, -1)
        return [m.decode() for m in members]
    finally:
        client.close()


def state(url: str, prefix: str, key: str = "default", name: str = "redis") -> dict[str, str]:
    client = plain_client(url)
    try:
        raw = client.hgetall(f"{{{prefix}:{name}}}:{key}:st")
        return {k.decode(): v.decode() for k, v in raw.items()}
    finally:
        client.close()


def meta(url: str, prefix: str, name: str = "redis") -> dict[str, str]:
    client = plain_client(url)
    try:
        raw = client.hgetall(f"{{{prefix}:{name}}}:meta")
        return {k.decode(): v.decode() for k, v in raw.items()}
    finally:
        client.close()


def poll(condition: Any, timeout: float, what: str, interval: float = 0.005) -> Any:
    """Poll ``condition()`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def apoll(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"flashkit:test:rl:{uuid.uuid4().hex}"
    yield name
    client = plain_client(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{{{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class OwnRedis:
    """A redis-server of the test's own (no persistence), to kill, restart or pause."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start it and return time.time() once it answers PING."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = plain_client(self.url)
        try:

            def answers() -> bool:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            poll(answers, 10.0, f"redis-server on port {self.port}", interval=0.01)
        finally:
            client.close()
        return time.time()

    def kill(self) -> float:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        return time.time()

    def pause(self) -> None:
        """SIGSTOP: connections hang (clients time out); the data survives."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def refuse_clients(self) -> redis.Redis:
        """Cut every client off and refuse new ones at once (maxclients 1: the slot of the
        returned admin connection); the data survives. Undo with accept_clients(admin)."""
        admin = plain_client(self.url)
        admin.config_set("maxclients", 1)
        admin.client_kill_filter(_type="normal", skipme=True)
        return admin

    def accept_clients(self, admin: redis.Redis) -> float:
        admin.config_set("maxclients", 10000)
        admin.close()
        return time.time()

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH; the outage tests start their own server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    server = OwnRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Workers:
    """OS processes running tests/_redis_worker.py, driven through stdin/stdout."""

    def __init__(self, count: int, config: dict[str, Any], tmp_path: Path) -> None:
        self.events: queue.Queue[tuple[int, str, float]] = queue.Queue()
        self.seen: dict[str, dict[int, float]] = {}
        self.outs: list[Path] = []
        self.errs: list[Path] = []
        self.procs: list[subprocess.Popen[str]] = []
        for i in range(count):
            out, err = tmp_path / f"worker{i}.json", tmp_path / f"worker{i}.err"
            self.outs.append(out)
            self.errs.append(err)
            with err.open("w") as stderr:
                proc = subprocess.Popen(
                    [sys.executable, str(WORKER), json.dumps({**config, "out": str(out)})],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    cwd=REPO,
                )
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.put((index, line.strip(), time.time()))

    def wait_for(self, word: str, timeout: float) -> float:
        """Wait until every worker has said ``word``; the time the last one said it."""
        deadline = time.monotonic() + timeout
        while len(self.seen.get(word, {})) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"workers did not all say {word!r} within {timeout} s: {self.seen}")
            try:
                index, said, at = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.setdefault(said, {})[index] = at
        return max(self.seen[word].values())

    def go(self) -> float:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return time.time()

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        results = []
        for proc, out, err in zip(self.procs, self.outs, self.errs, strict=True):
            code = proc.wait(timeout=timeout)
            assert code == 0, f"worker failed ({code}):\n{err.read_text()}"
            results.append(json.loads(out.read_text()))
        return results

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def check_admissions(
    results: list[dict[str, Any]], rate: float, period: float
) -> list[tuple[float, str]]:
    """Every admission decided on the server has a real time (inside its call's bracket; a lease
    or fallback time is an estimate, see :func:`check_server_time`) and the union never holds
    more than ``rate`` in any window. Returns (server time, source) sorted."""
    admissions = [a for result in results for a in result["admissions"]]
    for send, server_time, use, source, _ in admissions:
        if source == "redis":
            assert send - TOL <= server_time <= use + TOL, (send, server_time, use)
        else:
            assert math.isfinite(server_time)
    most = max_in_window([(a[1], 1.0) for a in admissions], period)
    assert most <= rate, f"{most} admissions in one {period} s window (rate {rate})"
    return sorted((a[1], a[3]) for a in admissions)


# --- configuration and validation -----------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate"),
        ({"period": -1.0}, "period"),
        ({"algorithm": "leaky"}, "unknown algorithm"),
        ({"burst": 3}, "burst"),
        ({"algorithm": "gcra", "burst": 0.5}, "at least one unit"),
        ({"on_unavailable": "ignore"}, "on_unavailable"),
        ({"expected_processes": 0}, "expected_processes"),
        ({"lease": 5, "algorithm": "gcra"}, "sliding_window"),
        ({"lease": 500}, "lease"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"redis_url": "http://user:hunter2secret@example.com"}, "redis://"),
    ],
)
def test_invalid_settings_raise_validation_errors(kwargs: dict[str, Any], match: str) -> None:
    args = {"redis_url": "redis://127.0.0.1:1/0", "rate": 10, "period": 1.0, **kwargs}
    with pytest.raises(ValidationError, match=match) as info:
        RedisRateLimiter(**args)
    assert info.value.code == "invalid_config"
    assert "hunter2secret" not in str(info.value)


@run_async
async def test_count_too_large_is_a_validation_error_before_any_round_trip() -> None:
    """Like the local limiter: a count the limit can never grant is not retryable."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    sliding = RedisRateLimiter(closed, 5, 1.0)
    bucket = RedisRateLimiter(closed, 5, 1.0, algorithm="token_bucket", burst=2)
    for call in (
        lambda: sliding.try_acquire(count=6),
        lambda: sliding.acquire_sync(count=5.5),
        lambda: bucket.try_acquire(count=3),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.code == "request_too_large"
        assert not info.value.retryable
    with pytest.raises(ValidationError, match="never be admitted"):
        await sliding.acquire(count=6)
    for bad in (0, -1, math.nan, "2", True):
        with pytest.raises(ValidationError) as info:
            sliding.try_acquire(count=bad)  # type: ignore[arg-type]
        assert info.value.code == "invalid_count"
    assert sliding.round_trips == bucket.round_trips == 0
    await sliding.aclose()
    bucket.close()


@run_async
async def test_the_limiter_protocol(redis_url: str, prefix: str) -> None:
    """What every Limiter offers: ``acquire`` returns a Grant (this limiter's, with the wait and
    the server time its units count at); ``acquire(timeout=0)`` is the async attempt that never
    waits; ``adjust`` settles a Grant (not another limiter's) or a key with its estimate;
    ``remaining`` is what this process holds without a round trip; ``observe_limits`` is
    ignored. ``algorithm`` and ``burst`` are keyword-only."""
    limiter = RedisRateLimiter(redis_url, 2, 1.0, key_prefix=prefix)
    other = RedisRateLimiter(redis_url, 2, 1.0, key_prefix=prefix, name="other")
    try:
        send = time.time()
        grant = await limiter.acquire("k", 2)
        assert (grant.key, grant.count, grant.waited, grant.limiter) == ("k", 2.0, 0.0, limiter)
        assert send - TOL <= grant.admitted_at <= time.time() + TOL
        trips = limiter.round_trips
        assert limiter.remaining("k") == 0.0  # no lease: what is left is only known on Redis
        limiter.observe_limits(None, status=429, retry_after=5.0)
        assert limiter.round_trips == trips
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await limiter.acquire("k", timeout=0)
        assert time.monotonic() - started < 0.5  # refused at once
        assert info.value.code == "timeout"
        assert info.value.retry_after is not None
        assert 0.5 < info.value.retry_after <= 1.0
        with pytest.raises(ValidationError) as wrong:
            await other.adjust(grant, 0)
        assert wrong.value.code == "invalid_grant"
        with pytest.raises(ValidationError, match="estimated_count"):
            await limiter.adjust("k", 0)
        assert await limiter.adjust(grant, 1) == -1.0
        again = await limiter.acquire("k", timeout=0)  # the refunded unit, at once
        assert again.waited == 0.0
        stats = limiter.stats
        assert (stats.admitted, stats.admitted_units, stats.rejected) == (2, 3.0, 1)
        assert stats.refunded_units == 1.0
    finally:
        await limiter.aclose()
        await other.aclose()
    with pytest.raises(TypeError):
        RedisRateLimiter(redis_url, 2, 1.0, "gcra")  # type: ignore[misc]


def test_async_client_follows_the_event_loop(redis_url: str, prefix: str) -> None:
    """One limiter used from successive asyncio.run calls (as in notebooks or tests): each loop
    gets its own connection, closed when that loop shuts down (no unclosed-socket warnings)."""
    limiter = RedisRateLimiter(redis_url, 100, 1.0, key_prefix=prefix)

    async def use() -> None:
        await asyncio.gather(*(limiter.acquire() for _ in range(5)))

    asyncio.run(use())
    asyncio.run(use())
    gc.collect()  # an unclosed socket would warn here (warnings are errors in this suite)
    assert limiter.stats.admitted == 10
    limiter.close()


def test_wrong_credentials_are_a_configuration_error_not_an_outage(own_redis: OwnRedis) -> None:
    admin = plain_client(own_redis.url)
    try:
        admin.acl_setuser(
            "flashkit", enabled=True, passwords=["+rightpass"], keys="*", commands=["+@all"]
        )
    finally:
        admin.close()
    url = own_redis.url.replace("redis://", "redis://flashkit:hunter2secret@")
    for mode in ("fail_closed", "local_fallback"):
        limiter = RedisRateLimiter(url, 5, 1.0, on_unavailable=mode)  # type: ignore[arg-type]
        with pytest.raises(RateLimitError) as info:
            limiter.try_acquire()
        assert info.value.code == "limiter_error"
        assert not info.value.retryable
        assert "credentials" in info.value.message
        assert "hunter2secret" not in str(info.value)
        assert limiter.available  # not an outage: no fallback
        limiter.close()


def test_a_foreign_value_under_the_limiters_keys_is_a_clear_error(
    redis_url: str, prefix: str
) -> None:
    client = plain_client(redis_url)
    try:
        client.rpush(f"{{{prefix}:redis}}:default:log", "not a sorted set")
    finally:
        client.close()
    limiter = RedisRateLimiter(redis_url, 5, 1.0, key_prefix=prefix)
    with limiter, pytest.raises(RateLimitError) as info:
        limiter.try_acquire()
    assert info.value.code == "limiter_error"
    assert "WRONGTYPE" in info.value.message
    assert prefix in info.value.message


# --- script semantics at pinned times -------------------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "burst"),
    [("sliding_window", None), ("token_bucket", None), ("token_bucket", 3), ("gcra", 3)],
)
def test_scripts_decide_exactly_like_the_local_limiter(
    redis_url: str, prefix: str, algorithm: Any, burst: float | None
) -> None:
    """Same operations at the same times: the Lua scripts and RateLimiter agree on every
    decision, wait and reservation time (server time pinned to a VirtualClock)."""
    rng = random.Random(f"{algorithm}{burst}")
    local_clock, remote_clock = VirtualClock(5000.0), VirtualClock(5000.0)
    local = RateLimiter(5, 1.0, algorithm=algorithm, burst=burst, clock=local_clock)
    remote = RedisRateLimiter(
        redis_url, 5, 1.0, algorithm=algorithm, burst=burst, key_prefix=prefix, clock=remote_clock
    )
    pin(remote, remote_clock)
    largest = int(local.max_count)
    outcomes = {"admitted": 0, "refused": 0, "waited": 0}
    try:
        for i in range(250):
            step = rng.choice([0, 1, 2, 4, 8, 16, 32]) / 64  # a binary grid: no rounding
            local_clock.advance(step)
            remote_clock.advance(step)
            key = rng.choice(["a", "a", "b"])
            n = rng.randint(1, largest)
            if rng.random() < 0.6:
                want = local.try_acquire(key, n)
                # the public answer, and every other time the decision behind it
                got = remote.try_acquire(key, n) if i % 2 else detailed(remote, key, n)
                assert got.allowed == want.allowed
                assert got.retry_after == pytest.approx(want.retry_after, abs=1e-9)
                assert got.remaining == pytest.approx(want.remaining, abs=1e-9)
                assert got.reset_at == pytest.approx(want.reset_at, abs=1e-9)
                if isinstance(got, Decision) and got.allowed:
                    assert got.server_time == remote_clock.now()
                outcomes["admitted" if got.allowed else "refused"] += 1
            else:
                timeout = rng.choice([None, 0.0, 0.25, 1.0])
                expected: RateLimitError | None = None
                try:
                    waited = local.acquire_sync(key, n, timeout=timeout).waited
                except RateLimitError as error:
                    expected = error
                if expected is not None:
                    with pytest.raises(RateLimitError) as info:
                        remote.acquire_sync(key, n, timeout=timeout)
                    assert info.value.code == expected.code == "timeout"
                    assert info.value.retry_after == pytest.approx(expected.retry_after, abs=1e-9)
                    outcomes["refused"] += 1
                else:
                    grant = remote.acquire_sync(key, n, timeout=timeout)
                    assert (grant.key, grant.count, grant.limiter) == (key, n, remote)
                    assert grant.waited == pytest.approx(waited, abs=1e-9)
                    assert grant.admitted_at == pytest.approx(local_clock.now(), abs=1e-9)
                    outcomes["waited" if waited else "admitted"] += 1
            # Waits computed in Lua and in Python may differ by an ulp: line the clocks up again
            # (y - x is exact for close floats, so x + (y - x) == y).
            assert remote_clock.now() == pytest.approx(local_clock.now(), abs=1e-9)
            remote_clock.advance(max(0.0, local_clock.now() - remote_clock.now()))
            local_clock.advance(max(0.0, remote_clock.now() - local_clock.now()))
            assert remote_clock.now() == local_clock.now()
    finally:
        remote.close()
    assert min(outcomes.values()) >= 10, outcomes  # every kind of decision was exercised
    assert remote.stats.admitted == local.stats.admitted
    assert remote.stats.rejected == local.stats.rejected


def test_gcra_and_token_bucket_decide_alike(redis_url: str, prefix: str) -> None:
    rng = random.Random(11)
    clock = VirtualClock(100.0)
    gcra = RedisRateLimiter(
        redis_url, 4, 1.0, algorithm="gcra", burst=3, key_prefix=prefix, name="g", clock=clock
    )
    bucket = RedisRateLimiter(
        redis_url,
        4,
        1.0,
        algorithm="token_bucket",
        burst=3,
        key_prefix=prefix,
        name="b",
        clock=clock,
    )
    pin(gcra, clock)
    pin(bucket, clock)
    allowed = 0
    try:
        for _ in range(200):
            clock.advance(rng.choice([0, 1, 3, 8, 20]) / 32)
            n = rng.randint(1, 3)
            a, b = gcra.try_acquire(count=n), bucket.try_acquire(count=n)
            assert a.allowed == b.allowed
            assert a.retry_after == pytest.approx(b.retry_after, abs=1e-9)
            assert a.remaining == pytest.approx(b.remaining, abs=1e-9)
            allowed += a.allowed
    finally:
        gcra.close()
        bucket.close()
    assert 20 < allowed < 180


@pytest.mark.parametrize("algorithm", ["sliding_window", "gcra", "token_bucket"])
def test_state_keys_expire_but_outlive_what_they_hold(
    redis_url: str, prefix: str, algorithm: Algorithm
) -> None:
    """Expiries are pushed out lazily (not on every decision), yet a key never expires while
    its state still matters: the log until its last entry leaves the window, a bucket until it
    is full again (GCRA: its theoretical arrival time)."""
    rng = random.Random(5)
    clock = VirtualClock(1000.0)
    burst = None if algorithm == "sliding_window" else 5
    limiter = RedisRateLimiter(
        redis_url, 10, 1.0, algorithm=algorithm, burst=burst, key_prefix=prefix, clock=clock
    )
    pin(limiter, clock)
    tag = f"{{{prefix}:redis}}:default"
    keys = [f"{tag}:log", f"{tag}:st"] if algorithm == "sliding_window" else [f"{tag}:st"]
    client = plain_client(redis_url)
    pushes = 0
    try:
        previous = None
        for _ in range(120):
            clock.advance(rng.choice([0.0, 0.01, 0.05, 0.2]))
            limiter.try_acquire(count=rng.choice([1, 1, 2]))
            raw = client.hmget(f"{tag}:st", "tat", "level", "stamp")
            st = dict(zip(("tat", "level", "stamp"), (float(v or 0) for v in raw), strict=True))
            now = clock.now()
            if algorithm == "sliding_window":
                scores = [score for _, score in client.zrange(f"{tag}:log", 0, -1, withscores=True)]
                needed = max(scores) + 1.0 - now  # until the last entry leaves the window
            elif algorithm == "gcra":
                needed = st["tat"] - now
            else:
                needed = st["stamp"] + (5 - st["level"]) / 10 - now  # until full again
            for key in keys:
                ttl = client.pttl(key) / 1000
                # (PTTL runs on the real clock: a few ms may have passed since the decision)
                assert needed - 0.05 <= ttl <= 2 * max(needed, 0.0) + 4.0, (key, ttl, needed)
            expires = client.hget(f"{tag}:st", "exp")
            pushes += expires != previous
            previous = expires
    finally:
        client.close()
        limiter.close()
    assert pushes < 60  # most decisions left the expiry alone


def pinned(redis_url: str, prefix: str, *args: Any, **kwargs: Any) -> RedisRateLimiter:
    """A limiter whose scripts run at a VirtualClock's time (its ``clock``)."""
    clock = VirtualClock(100.0)
    limiter = RedisRateLimiter(redis_url, *args, key_prefix=prefix, clock=clock, **kwargs)
    pin(limiter, clock)
    return limiter


def test_adjust_refunds_the_callers_own_grant_when_told_when(redis_url: str, prefix: str) -> None:
    """As RateLimiter.adjust: 6 units at 100 s, an estimate of 4 at 100.5 s reconciled to 1.
    Given the Grant, or the key and when it was admitted, the refund comes from that grant (at
    101.05 s, once the 6 left, 9 fit); with the key alone, from the oldest units (the 6, which
    leave anyway: 9 do not fit)."""
    outcomes = {}
    for how in ("grant", "grant rebuilt", "key"):
        limiter = pinned(redis_url, f"{prefix}:{how}", 10, 1.0)
        clock = limiter.clock
        assert isinstance(clock, VirtualClock)
        try:
            assert limiter.try_acquire(count=6).allowed
            clock.advance(0.5)
            grant = limiter.acquire_sync(count=4, timeout=0)
            assert (grant.admitted_at, grant.waited) == (100.5, 0.0)
            clock.advance(0.1)
            if how == "grant":
                assert limiter.adjust_sync(grant, 1) == -3
            elif how == "grant rebuilt":  # key, estimate and server time: all it carries
                rebuilt = Grant(("default", 4, 0.0, grant.admitted_at, limiter))
                assert limiter.adjust_sync(rebuilt, 1) == -3
            else:
                assert limiter.adjust_sync("default", 1, estimated_count=4) == -3
            clock.advance(0.45)
            outcomes[how] = limiter.try_acquire(count=9).allowed
        finally:
            limiter.close()
        assert limiter.stats.refunded_units == 3.0
    assert outcomes == {"grant": True, "grant rebuilt": True, "key": False}


def test_adjust_never_takes_from_later_grants_leases_or_reservations(
    redis_url: str, prefix: str
) -> None:
    limiter = pinned(redis_url, prefix, 10, 1.0)
    clock = limiter.clock
    assert isinstance(clock, VirtualClock)
    try:
        grant = limiter.acquire_sync(count=4, timeout=0)  # the caller's, at 100 s
        clock.advance(0.5)
        assert limiter.try_acquire(count=5).allowed  # someone else's, later
        assert limiter.adjust_sync(grant, 0) == -4
        assert [float(m.split(":")[1]) for m in log_members(redis_url, prefix)] == [5.0]
        # only later units in reach: nothing to take, forfeited
        limiter.adjust_sync(Grant(("default", 2, 0.0, 100.2, limiter)), 0)
        assert limiter.stats.forfeited_units == 2.0
        # a charge: a new entry now (the async twin, on its own event loop)
        assert asyncio.run(limiter.adjust("default", 3, estimated_count=1)) == 2
        assert not limiter.try_acquire(count=4).allowed  # 5 + 2 in the window: 3 left
        assert limiter.try_acquire(count=3).allowed
        with pytest.raises(ValidationError, match="estimated_count"):
            limiter.adjust_sync("default", 0)
    finally:
        limiter.close()

    leased = pinned(redis_url, f"{prefix}:lease", 100, 1.0, lease=10)
    try:
        grant = leased.acquire_sync()  # a lease of 10 ('^'): used before its score
        assert leased.adjust_sync(grant, 0) == -1
        assert leased.stats.forfeited_units == 1.0  # the lease's units are not refundable
    finally:
        leased.close()


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_bucket_adjust_charges_but_forfeits_refunds(
    redis_url: str, prefix: str, algorithm: Algorithm
) -> None:
    limiter = pinned(redis_url, prefix, 10, 1.0, algorithm=algorithm, burst=5)
    trips = limiter.round_trips
    try:
        grant = limiter.acquire_sync(count=2, timeout=0)
        assert limiter.adjust_sync(grant, 1) == -1
        assert limiter.stats.forfeited_units == 1.0
        assert limiter.round_trips == trips + 1  # a refund costs no round trip
        assert limiter.adjust_sync("default", 4, estimated_count=1) == 3  # 2 + 3 = 5: empty
        assert not limiter.try_acquire().allowed
    finally:
        limiter.close()


# --- real server time -----------------------------------------------------------------------
@run_async
async def test_random_patterns_never_exceed_the_rate_in_any_window(
    redis_url: str, prefix: str
) -> None:
    """Two limiters (as two processes) and mixed calls and counts: the admissions, stamped with
    the server times the script returned, never exceed ``rate`` units in any window."""
    rate, period = 6, 0.25
    limiters = [RedisRateLimiter(redis_url, rate, period, key_prefix=prefix) for _ in range(2)]
    admitted: list[tuple[float, float]] = []
    kinds = {"at once": 0, "refused": 0, "waited": 0}
    refusals: list[RateLimitError] = []

    async def task(seed: int) -> None:
        rng = random.Random(seed)
        limiter = limiters[seed % 2]
        end = time.time() + 1.2
        while time.time() < end:
            n = rng.randint(1, 3)
            send = time.time()
            # tasks 0-3 try (the async way: timeout=0), the others wait up to a timeout
            timeout = 0.0 if seed < 4 else rng.choice([0.0, 0.1, 0.3])
            try:
                grant = await limiter.acquire(count=n, timeout=timeout)
            except RateLimitError as error:
                refusals.append(error)
                kinds["refused"] += 1
            else:
                receive = time.time()
                assert send - TOL <= grant.admitted_at <= receive + TOL
                admitted.append((grant.admitted_at, n))
                kinds["waited" if grant.waited else "at once"] += 1
            await asyncio.sleep(rng.random() * (0.02 if seed < 4 else 0.15))

    try:
        await asyncio.gather(*(task(seed) for seed in range(8)))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert max_in_window(admitted, period) <= rate
    assert min(kinds.values()) > 0, kinds
    for error in refusals:  # refused at once, with the wait it would have needed
        assert error.code == "timeout"
        assert error.retry_after is not None
        assert error.retry_after > 0.0
    total = sum(units for _, units in admitted)
    assert total >= 0.8 * rate * 1.2 / period  # and the limit is used, not starved


def test_sync_admits_rate_then_refuses_with_retry_after(redis_url: str, prefix: str) -> None:
    with RedisRateLimiter(redis_url, 3, 0.4, key_prefix=prefix) as limiter:
        first = limiter.try_acquire()
        assert first.allowed
        assert first.remaining == 2.0
        assert limiter.try_acquire(count=2).allowed
        refused = limiter.try_acquire()
        assert not refused.allowed
        assert 0.0 < refused.retry_after <= 0.4
        assert math.isnan(detailed(limiter).server_time)  # refused: it counts at no time
        assert limiter.try_acquire("other key").allowed  # keys are independent
        waited = limiter.acquire_sync().waited
        assert 0.0 < waited <= 0.4
        stats = limiter.stats
    assert (stats.admitted, stats.admitted_units, stats.rejected) == (4, 5.0, 2)
    assert stats.waited == 1


@run_async
async def test_fifo_waiter_gets_first_entry_plus_period_and_blocks_try_acquire(
    redis_url: str, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_url, 2, 0.4, key_prefix=prefix)
    try:
        first = await limiter.acquire(timeout=0)
        await limiter.acquire(timeout=0)
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await limiter.acquire(timeout=0.1)  # its wait is ~0.4 s: refused at once
        assert info.value.code == "timeout"
        assert info.value.retryable
        assert info.value.retry_after == pytest.approx(0.4, abs=0.05)
        assert time.monotonic() - started < 0.1
        waiter = asyncio.create_task(limiter.acquire())
        await apoll(lambda: len(log_members(redis_url, prefix)) == 3, 5, "the reservation")
        with pytest.raises(RateLimitError) as late:  # never jumps the queue, although the
            await limiter.acquire(timeout=0)  # window will have room when its turn comes
        assert late.value.code == "timeout"
        assert late.value.retry_after is not None
        assert late.value.retry_after > 0.0
        queued = await waiter
        # due at exactly first entry + period; reserved a period ahead, it is provisional: it
        # confirms on waking and counts from the server time it did (a few ms later)
        assert_counts_from_wake(queued, first.admitted_at + 0.4)
        assert queued.waited > 0.3
    finally:
        await limiter.aclose()


@run_async
async def test_cancelled_waiter_gives_its_capacity_back(redis_url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, 2, 0.5, key_prefix=prefix)
    try:
        first = await limiter.acquire(timeout=0)
        await limiter.acquire(timeout=0)
        waiter = asyncio.create_task(limiter.acquire())
        await apoll(lambda: len(log_members(redis_url, prefix)) == 3, 5, "the reservation")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(log_members(redis_url, prefix)) == 2
        assert float(state(redis_url, prefix)["total"]) == 2.0
        assert limiter.stats.refunded_units == 1.0
        taken = await limiter.acquire()  # the freed slot, not one after it
        assert_counts_from_wake(taken, first.admitted_at + 0.5)
    finally:
        await limiter.aclose()


@run_async
async def test_bucket_refunds_only_the_latest_grant(redis_url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, 4, 1.0, algorithm="gcra", key_prefix=prefix)
    try:
        await limiter.acquire(timeout=0)
        older = asyncio.create_task(limiter.acquire())
        await apoll(lambda: limiter.round_trips == 2, 5, "the first reservation")
        newer = asyncio.create_task(limiter.acquire())
        await apoll(lambda: limiter.round_trips == 3, 5, "the second reservation")
        older.cancel()  # later grants were computed with it: forfeited
        newer.cancel()  # the latest: refunded
        for task in (older, newer):
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = limiter.stats
        assert (stats.refunded_units, stats.forfeited_units) == (1.0, 1.0)
    finally:
        await limiter.aclose()


# --- leases ---------------------------------------------------------------------------------
class CountingScript:
    """Counts the calls of one of a limiter's scripts."""

    def __init__(self) -> None:
        self.calls = 0


def count_calls(limiter: RedisRateLimiter) -> list[CountingScript]:
    counters = [CountingScript() for _ in limiter._lines.scripts]
    real = limiter._lines.eval_sync

    def counting(op: Any) -> Any:
        counters[op.script].calls += 1
        return real(op)

    limiter._lines.eval_sync = counting  # type: ignore[method-assign]
    return counters


def test_lease_takes_many_units_per_round_trip(redis_url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, 1000, 1.0, key_prefix=prefix, lease=20)
    scripts = count_calls(limiter)
    try:
        sources = [detailed(limiter).source for _ in range(100)]
    finally:
        limiter.close()
    calls = sum(s.calls for s in scripts)
    assert sources.count("lease") >= 90
    assert calls <= 12  # about one per 20 units (a lease expires after 0.1 s)
    assert limiter.stats.admitted == 100


def test_unused_lease_units_are_given_back(redis_url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, 100, 1.0, key_prefix=prefix, lease=10)
    scripts = count_calls(limiter)
    assert limiter.remaining() == 0.0  # nothing this process can admit without asking
    for _ in range(3):
        assert limiter.try_acquire().allowed
    assert scripts[0].calls == 1
    assert (limiter.remaining(), limiter.remaining("other")) == (7.0, 0.0)  # the lease's rest
    [lease] = log_members(redis_url, prefix)
    assert lease.endswith(":10")  # charged as one entry of 10 units
    assert float(state(redis_url, prefix)["tail"]) == 0.0  # a lease is not a queued reservation
    held = limiter._leases.held["default"][0]
    poll(lambda: limiter.clock.now() >= held.until, 1.0, "the lease to expire")
    assert limiter.remaining() == 0.0  # expired: its units are not this process's any more
    assert limiter.try_acquire().allowed  # this round trip also returns the 7 unused units
    assert scripts[0].calls == 2
    assert limiter.remaining() == 9.0
    members = log_members(redis_url, prefix)
    assert lease.rsplit(":", 1)[0] + ":3.0" in members  # the entry now holds what was used
    assert float(state(redis_url, prefix)["total"]) == 13.0  # 3 used + the new lease of 10
    limiter.close()  # gives back the new lease's 9 unused units
    assert float(state(redis_url, prefix)["total"]) == 4.0


def check_server_time(decision: Decision, send: float, receive: float) -> None:
    """A decision's server time (Redis and this process share the machine's clock): one taken
    on the server lies between the call's send and receive. A local one (``lease``,
    ``fallback``) is this process's time plus an offset taken from the middle of an earlier
    reply's round trip, off by up to half of it, which a loaded machine makes as long as it
    likes: it is only checked to be a time at all (a full run once read 5.3 ms past receipt)."""
    if decision.source == "redis":
        assert send - 5e-3 <= decision.server_time <= receive + 5e-3
    else:
        assert math.isfinite(decision.server_time)


@run_async
async def test_leased_admissions_stay_within_the_rate(redis_url: str, prefix: str) -> None:
    """Two limiters with leases under saturation: the union of admissions (lease use times
    included) never exceeds the rate. (Under saturation most calls queue, one round trip each:
    leases save round trips when there is room, see the test above.)"""
    rate, period = 20, 0.5
    limiters = [
        RedisRateLimiter(redis_url, rate, period, key_prefix=prefix, lease=4, lease_duration=0.05)
        for _ in range(2)
    ]
    admitted: list[tuple[float, float]] = []
    sources: list[str] = []

    async def task(limiter: RedisRateLimiter) -> None:
        end = time.time() + 1.5
        while True:
            send = time.time()
            if send >= end:
                return
            try:
                decision = await adetailed(limiter, timeout=end - send)
            except RateLimitError:
                return
            check_server_time(decision, send, time.time())
            admitted.append((decision.server_time, 1.0))
            sources.append(decision.source)

    try:
        await asyncio.gather(*(task(limiters[i % 2]) for i in range(8)))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert max_in_window(admitted, period) <= rate
    # liveness, with room for a loaded machine: more than one window's worth, some from leases
    assert len(admitted) > rate
    assert "lease" in sources


# --- confirm on wake (sliding window) -------------------------------------------------------
# A waiter the event loop wakes late must not count at its due time while the next window's
# grants go out on time. These tests drive the limiter's decision flows (the generators both
# drivers run) in virtual time, so lateness is exact: scripts run on real Redis at the virtual
# time (``pin``), a sleep is a timer that fires ``late(task, k)`` seconds late, and a
# task uses its units at the virtual time its flow returns.
def virtual_limiters(
    url: str,
    prefix: str,
    clock: VirtualClock,
    count: int,
    rate: float = 5,
    confirm: bool = True,
    **options: Any,
) -> list[RedisRateLimiter]:
    """``count`` limiters ("processes") on one key, ``rate`` per 1 s, scripts at ``clock``'s
    time. ``confirm=False`` turns confirm on wake off (never late, never provisional): the
    behaviour before it."""
    limiters = []
    for _ in range(count):
        limiter = RedisRateLimiter(url, rate, 1.0, key_prefix=prefix, clock=clock, **options)
        pin(limiter, clock)
        if not confirm:  # in the flows' judgement and in the scripts' constants
            off = dataclasses.replace(limiter.settings, tolerance=1e18, margin=-1e18)
            limiter._flows.settings = off
            limiter._session.constants = constants(off)
        limiters.append(limiter)
    return limiters


def run_in_virtual_time(
    limiters: list[RedisRateLimiter],
    clock: VirtualClock,
    tasks: list[tuple[float, int]],
    late: Callable[[int, int], float],
) -> list[tuple[float, float, float]]:
    """Task ``i`` (on limiter ``i % len(limiters)``) starts ``tasks[i][0]`` s from now and acquires
    one unit ``tasks[i][1]`` times in a row; its ``k``-th sleep ends ``late(i, k)`` s late. Returns
    ``(server_time, use time, wake time or NaN)`` per admission, in order."""
    heap: list[tuple[float, int, int]] = []
    order = itertools.count()
    flows: list[Any] = [None] * len(tasks)
    replies: list[Any] = [None] * len(tasks)
    left = [count for _, count in tasks]
    sleeps = [0] * len(tasks)
    wakes = [math.nan] * len(tasks)
    admissions: list[tuple[float, float, float]] = []
    for i, (start, _) in enumerate(tasks):
        heapq.heappush(heap, (clock.now() + start, next(order), i))
    while heap:
        when, _, i = heapq.heappop(heap)
        clock.advance(max(0.0, when - clock.now()))
        limiter = limiters[i % len(limiters)]
        if flows[i] is None:
            flows[i], wakes[i] = limiter._flows.decide("default", 1.0, None, True), math.nan
        else:
            wakes[i] = clock.now()
        flow, reply = flows[i], replies[i]
        try:
            op = flow.send(reply)
            while isinstance(op, Eval):
                op = flow.send(limiter._lines.eval_sync(op))
        except StopIteration as stop:
            decision: Decision = stop.value
            assert decision.allowed
            admissions.append((decision.server_time, clock.now(), wakes[i]))
            flows[i] = None
            left[i] -= 1
            if left[i]:
                heapq.heappush(heap, (clock.now(), next(order), i))  # at once, again
            continue
        assert isinstance(op, Sleep)
        replies[i] = None
        heapq.heappush(heap, (clock.now() + op.seconds + late(i, sleeps[i]), next(order), i))
        sleeps[i] += 1
    return admissions


def seeded_lateness(seed: int, tolerance: float) -> Callable[[int, int], float]:
    """Half the wakes on time, a fifth late by less than ``tolerance``, the rest 10-300 ms late."""
    rng = random.Random(seed)
    table: dict[tuple[int, int], float] = {}

    def late(task: int, k: int) -> float:
        if (task, k) not in table:
            draw = rng.random()
            table[task, k] = (
                0.0
                if draw < 0.5
                else rng.uniform(0.0, tolerance / 2)
                if draw < 0.7
                else rng.uniform(0.01, 0.3)
            )
        return table[task, k]

    return late


@pytest.mark.parametrize("tasks", [3, 12], ids=["shallow queue", "deep queue"])
def test_late_wakeups_count_from_when_they_really_go(
    redis_url: str, prefix: str, tasks: int
) -> None:
    """Two "processes", ``tasks`` tasks acquiring in a loop, rate 5 per 1 s, wakes up to 300 ms
    late. The units count from when they are really used: each server time lies between the
    wake and the use, a use lags its server time by at most the tolerance (an on-time waiter
    goes without asking), and the use times keep the window property (up to that lag). With
    12 tasks every reservation is made more than a period ahead (provisional). The same run
    without confirm on wake puts up to 9 uses in a window: the test sees the difference."""
    clock = VirtualClock(1000.0)
    limiters = virtual_limiters(redis_url, prefix, clock, 2)
    tolerance = LATE
    assert limiters[0].settings.tolerance == tolerance  # max(2 ms, period / 1024)
    try:
        admissions = run_in_virtual_time(
            limiters, clock, [(0.0, 12)] * tasks, seeded_lateness(7, tolerance)
        )
    finally:
        for limiter in limiters:
            limiter.close()
    assert len(admissions) == 12 * tasks
    for server_time, used, woke in admissions:
        assert server_time <= used <= server_time + tolerance
        if not math.isnan(woke):
            assert server_time >= woke - tolerance  # counts from (about) when it woke
    assert max_in_window([(s, 1.0) for s, _, _ in admissions], 1.0) <= 5
    assert max_in_window([(u, 1.0) for _, u, _ in admissions], 1.0 - tolerance) <= 5
    wakes = [sum(limiter._flows.wakes[i] for limiter in limiters) for i in range(5)]
    assert wakes[2] > 0, wakes  # some moved to when they woke
    if tasks == 12:
        assert wakes[3] > 0, wakes  # and some had to wait a little more (a full window)

    other = f"{prefix}:off"
    clock = VirtualClock(1000.0)
    before = virtual_limiters(redis_url, other, clock, 2, confirm=False)
    try:
        unconfirmed = run_in_virtual_time(
            before, clock, [(0.0, 12)] * tasks, seeded_lateness(7, tolerance)
        )
    finally:
        for limiter in before:
            limiter.close()
    assert max_in_window([(s, 1.0) for s, _, _ in unconfirmed], 1.0) <= 5  # scheduled: fine
    assert max_in_window([(u, 1.0) for _, u, _ in unconfirmed], 1.0) > 5  # used: not


def test_on_time_waiters_cost_no_extra_round_trip(redis_url: str, prefix: str) -> None:
    """One round trip per acquire while waiters wake on time (and their reservations rely on
    settled room); a waiter that wakes late pays exactly one more and counts from its wake.
    (``lease_duration=1.0``: the epoch re-check, after a grace of silence, is not at play.)"""
    clock = VirtualClock(1000.0)
    [limiter] = virtual_limiters(redis_url, prefix, clock, 1, lease_duration=1.0)
    arrivals = [(0.0, 1)] * 5 + [(0.2 * i, 1) for i in range(1, 16)]  # 5 at once, then 1 / 0.2 s
    try:
        on_time = run_in_virtual_time([limiter], clock, arrivals, lambda task, k: 0.0)
        waiters = sum(not math.isnan(w) for _, _, w in on_time)
        assert waiters >= 10
        assert limiter.round_trips == len(arrivals)
        assert limiter._flows.wakes == [waiters, 0, 0, 0, 0]  # none asked again
        assert [s for s, _, _ in on_time] == [u for _, u, _ in on_time]

        trips = limiter.round_trips
        clock.advance(2.0)  # an empty window again
        start = clock.now()
        late = run_in_virtual_time(
            [limiter],
            clock,
            [(0.0, 1)] * 5 + [(0.2, 1), (0.4, 1)],
            lambda task, k: 0.25 if task == 5 else 0.0,  # the first waiter wakes 250 ms late
        )
    finally:
        limiter.close()
    assert limiter.round_trips == trips + 7 + 1
    assert limiter._flows.wakes == [waiters + 1, 0, 1, 0, 0]  # one moved to its wake; one on time
    by_wake = {round(w - start, 6): s - start for s, _, w in late if not math.isnan(w)}
    assert by_wake == {1.25: pytest.approx(1.25), 1.0: pytest.approx(1.0)}


def test_a_provisional_reservation_yields_to_a_late_waiter_ahead(
    redis_url: str, prefix: str
) -> None:
    """Rate 2 per 1 s: two admitted at 0; W1, W2 reserve 1.0; W3, W4 reserve 2.0 (relying on
    W1's and W2's room). W1 wakes at 1.5. Checking W1 against what is used up to 1.5 only, as
    RateLimiter._confirm does, lets W3 and W4 go on time at 2.0: three uses in [1.5, 2.5).
    Here W3 and W4 were reserved more than a period ahead on room that could still move:
    provisional, they check again on waking, and W4 waits for W1's use to leave its window."""
    clock = VirtualClock(1000.0)
    [limiter] = virtual_limiters(redis_url, prefix, clock, 1, rate=2, lease_duration=1.0)
    try:
        admissions = run_in_virtual_time(
            [limiter],
            clock,
            [(0.0, 1), (0.0, 1), (0.01, 1), (0.02, 1), (0.03, 1), (0.04, 1)],
            lambda task, k: 0.5 if task == 2 else 0.0,
        )
    finally:
        limiter.close()
    used = sorted(round(u - 1000.0, 6) for _, u, _ in admissions)
    assert used == [0.0, 0.0, 1.0, 1.5, 2.0, 2.5]
    assert [s for s, _, _ in admissions] == [u for _, u, _ in admissions]
    assert max_in_window([(u, 1.0) for _, u, _ in admissions], 1.0) <= 2


class LateClock(SystemClock):
    """Real time, but the first sleeps (of any task or thread) end ``lateness[k]`` s late, like a
    busy event loop; notes the wall-clock time (``time.time()``) each task's or thread's last
    sleep ended."""

    def __init__(self, lateness: list[float]) -> None:
        self.lateness = list(lateness)
        self.woke: dict[object, float] = {}

    def _extra(self) -> float:
        return self.lateness.pop(0) if self.lateness else 0.0

    def sleep_sync(self, seconds: float) -> None:
        time.sleep(seconds + self._extra())
        self.woke[threading.get_ident()] = time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds + self._extra())
        self.woke[asyncio.current_task()] = time.time()


@run_async
async def test_late_async_waiters_count_from_their_wake(redis_url: str, prefix: str) -> None:
    """Through the public API in real time: rate 4 per 0.5 s, 4 admitted at once, then 4 tasks
    acquire twice each; the first two sleeps end 150 ms late. Every waiter's server time is no
    earlier than its wake (within the tolerance and the TIME resolution) and no later than its
    use; the server times keep the window property, and the use times too, within 30 ms of
    reply delivery (against 150 ms of lateness)."""
    clock = LateClock([0.15, 0.15])
    limiter = RedisRateLimiter(redis_url, 4, 0.5, key_prefix=prefix, clock=clock)
    slack = LATE + TOL
    admitted: list[tuple[float, float]] = []  # (server time, use time)

    async def task() -> None:
        for _ in range(2):
            clock.woke.pop(asyncio.current_task(), None)
            grant = await limiter.acquire()
            used = time.time()
            woke = clock.woke.get(asyncio.current_task())
            assert woke is not None  # every one of them waited
            assert woke - slack <= grant.admitted_at <= used + TOL
            admitted.append((grant.admitted_at, used))

    try:
        for _ in range(4):
            now = await limiter.acquire(timeout=0)
            admitted.append((now.admitted_at, time.time()))
        await asyncio.gather(*(task() for _ in range(4)))
    finally:
        await limiter.aclose()
    assert not clock.lateness  # both late wakes happened
    wakes = limiter._flows.wakes
    assert wakes[2] + wakes[3] >= 2  # the late ones moved (or queued again)
    assert max_in_window([(s, 1.0) for s, _ in admitted], 0.5) <= 4
    assert max_in_window([(u, 1.0) for _, u in admitted], 0.5 - 0.03) <= 4


def test_a_late_sync_waiter_counts_from_its_wake(redis_url: str, prefix: str) -> None:
    clock = LateClock([0.1])
    with RedisRateLimiter(redis_url, 2, 0.3, key_prefix=prefix, clock=clock) as limiter:
        first = limiter.acquire_sync(timeout=0)
        assert limiter.try_acquire().allowed
        late = limiter.acquire_sync()
        used = time.time()
        woke = clock.woke[threading.get_ident()]
        assert first.admitted_at + 0.3 + 0.09 < woke  # woken 100 ms after its due time
        assert woke - LATE - TOL <= late.admitted_at <= used + TOL
        assert limiter._flows.wakes[2] == 1  # moved to when it woke, in one round trip


@pytest.mark.parametrize(("algorithm", "burst"), [("gcra", None), ("token_bucket", 1)])
def test_bucket_waiters_keep_their_schedule_when_late(
    redis_url: str, prefix: str, algorithm: Any, burst: float | None
) -> None:
    """token_bucket and gcra keep their schedule (as the local limiter does): a late wake does
    not move the grant, so lateness can compress the spacing of uses by as much."""
    clock = LateClock([0.1])
    with RedisRateLimiter(
        redis_url, 4, 1.0, algorithm=algorithm, burst=burst, key_prefix=prefix, clock=clock
    ) as limiter:
        first = limiter.acquire_sync(timeout=0)
        late = limiter.acquire_sync()
        woke = clock.woke[threading.get_ident()]
    assert late.admitted_at == pytest.approx(first.admitted_at + 0.25, abs=1e-6)  # its due time
    assert woke - late.admitted_at > 0.09
    assert limiter._flows.wakes == [0, 0, 0, 0, 0]


# --- outages --------------------------------------------------------------------------------
def test_fail_closed_names_the_url_but_never_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://alice:hunter2secret@127.0.0.1:{port}/0"
    limiter = RedisRateLimiter(url, 5, 1.0, probe_interval=0.5, socket_timeout=0.2)
    caplog.set_level(logging.WARNING, logger="flashkit.ratelimit")
    with pytest.raises(RateLimitError) as info:
        limiter.try_acquire()
    error = info.value
    assert (error.code, error.retryable, error.retry_after) == ("limiter_unavailable", True, 0.5)
    assert f"127.0.0.1:{port}" in error.message
    assert "local_fallback" in error.message
    everything = [str(error), repr(error), json.dumps(error.to_dict()), repr(limiter)]
    everything += [record.getMessage() for record in caplog.records]
    assert not [text for text in everything if "hunter2secret" in text or "alice" in text]
    trips = limiter.round_trips
    started = time.monotonic()
    with pytest.raises(RateLimitError) as again:
        limiter.acquire_sync(timeout=5.0)  # within probe_interval: fails at once, no network
    assert time.monotonic() - started < 0.05
    assert limiter.round_trips == trips
    assert again.value.code == "limiter_unavailable"
    assert again.value.retry_after is not None
    assert 0.0 < again.value.retry_after <= 0.5
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once
    assert not limiter.available
    limiter.close()

    query = RedisRateLimiter(f"redis://127.0.0.1:{port}/0?password=hunter2secret", 5, 1.0)

    async def attempt() -> RateLimitError:
        with pytest.raises(RateLimitError) as info:
            await query.acquire()
        await query.aclose()
        return info.value

    error = asyncio.run(attempt())
    assert error.code == "limiter_unavailable"
    assert "hunter2secret" not in str(error) + repr(query)


def test_local_fallback_holds_admits_its_share_then_replays(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops answering (SIGSTOP: the data survives): refuse for the hold, admit the local
    share, log once; when it answers again, replay the local admissions into the log."""
    caplog.set_level(logging.INFO, logger="flashkit.ratelimit")
    prefix = "fb"
    limiter = RedisRateLimiter(
        own_redis.url,
        10,
        0.5,
        key_prefix=prefix,
        on_unavailable="local_fallback",
        expected_processes=2,
        probe_interval=0.1,
        socket_timeout=0.1,
        lease_duration=0.05,
    )
    try:
        assert all(limiter.try_acquire().allowed for _ in range(3))
        own_redis.pause()
        try:
            held = detailed(limiter)
            hold_ends = time.monotonic() + held.retry_after
            assert (held.allowed, held.source) == (False, "fallback")
            assert 0.4 < held.retry_after <= 0.55  # hold = period + grace
            assert not limiter.available
            local = detailed(limiter, wait=True)  # waits out the hold, probing meanwhile
            assert (local.allowed, local.source) == (True, "fallback")
            assert time.monotonic() >= hold_ends
            assert local.waited > 0.0
            more = [detailed(limiter) for _ in range(6)]
            assert [d.allowed for d in more] == [True] * 4 + [False] * 2  # floor(10 / 2) = 5
            assert {d.source for d in more} == {"fallback"}
        finally:
            own_redis.resume()
        back = poll(
            lambda: (d := detailed(limiter)).source == "redis" and d,
            5.0,
            "Redis decisions again",
            interval=0.02,
        )
        assert limiter.available
        members = log_members(own_redis.url, prefix)
        assert len([m for m in members if m.startswith("~rp")]) == 5  # the 5 local admissions
        assert "~fb:5.0" in members  # room kept for the other process's local share
        assert "fb_until" in meta(own_redis.url, prefix)
        assert not back.allowed  # 5 replayed + 5 for the other process: the window is full
    finally:
        limiter.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage
    assert f"127.0.0.1:{own_redis.port}" in warnings[0].getMessage()
    assert any("replayed 5" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_a_bucket_replays_its_local_admissions_when_the_server_answers_again(
    redis_url: str, prefix: str, algorithm: Algorithm
) -> None:
    """The resume scripts of the buckets: the units a process admitted on its local share
    during an outage are spent in the shared bucket too once it is back (server time pinned:
    the replay lands exactly where the local admissions were)."""
    limiter = pinned(
        redis_url, prefix, 10, 1.0, algorithm=algorithm, burst=5, on_unavailable="local_fallback"
    )
    try:
        first = limiter.try_acquire()  # the epoch is known: what follows is a later outage
        assert first.remaining == pytest.approx(4.0)
        outage = limiter._outage
        outage.down = True  # as if the server had not answered meanwhile
        now = limiter.clock.now()
        outage.replays.extend([(now, "default", 2.0), (now, "default", 1.0)])
        run_sync(outage.resume("default"), limiter._perform_sync)
        assert limiter.available
        assert not outage.replays
        last = limiter.try_acquire()  # 5 - 1 - 3 replayed: one unit left
        assert last.allowed
        assert last.remaining == pytest.approx(0.0, abs=1e-9)
        assert not limiter.try_acquire().allowed
    finally:
        limiter.close()


def test_recovered_process_leaves_room_for_one_still_on_its_local_share(
    own_redis: OwnRedis,
) -> None:
    """Two processes (two limiters here) fall back while every client is cut off (data kept).
    A comes back first while B, still cut off in its own view, may keep admitting locally until
    its next probe: A's log holds its replayed admissions plus a phantom for B's share, so the
    union stays within the rate. (A period of 2 s: the six local takes of each process must fall
    in one window even on a loaded machine.)"""
    rate, period = 10, 2.0

    def process() -> RedisRateLimiter:
        return RedisRateLimiter(
            own_redis.url,
            rate,
            period,
            key_prefix="room",
            on_unavailable="local_fallback",
            expected_processes=2,
            probe_interval=0.05,
            socket_timeout=0.2,
            lease_duration=0.05,
        )

    a, b = process(), process()
    admitted: list[tuple[float, float]] = []

    def take(limiter: RedisRateLimiter, wait: bool = False) -> Decision:
        send = time.time()
        decision = detailed(limiter, wait=wait)
        if decision.allowed:
            check_server_time(decision, send, time.time())
            admitted.append((decision.server_time, 1.0))
        return decision

    try:
        assert take(a).allowed
        assert take(b).allowed
        admin = own_redis.refuse_clients()
        assert take(a).source == take(b).source == "fallback"  # holding
        for limiter in (a, b):
            assert take(limiter, wait=True).source == "fallback"  # after the hold
            assert [take(limiter).allowed for _ in range(5)] == [True] * 4 + [False]
        own_redis.accept_clients(admin)
        back = poll(lambda: (d := take(a)).source == "redis" and d, 5.0, "A on Redis again")
        assert not b.available  # B has not probed yet: it could still admit locally
        assert not back.allowed  # A's 5 replayed + 5 for B's share: the window is full
        assert "~fb:5.0" in log_members(own_redis.url, "room")
        # B's next probe replays its 5 and decides on Redis (its local window is full anyway)
        poll(lambda: take(b).source == "redis", 5.0, "B on Redis again")
        assert take(a, wait=True).allowed  # as soon as the window allows
    finally:
        a.close()
        b.close()
    assert max_in_window(admitted, period) <= rate
    assert len(admitted) == 13


def test_restart_warms_up_for_a_period_unless_brand_new(own_redis: OwnRedis) -> None:
    def limiter() -> RedisRateLimiter:
        return RedisRateLimiter(
            own_redis.url, 4, 0.4, key_prefix="w", lease_duration=0.05, probe_interval=0.05
        )

    old = limiter()
    try:
        assert old.try_acquire().allowed
        own_redis.kill()
        own_redis.start()
        refused = old.try_acquire()  # the epoch is gone: this server knows nothing
        restart_at = float(meta(own_redis.url, "w")["restart_at"])
        assert not refused.allowed
        assert refused.retry_after == pytest.approx(0.45, abs=0.02)  # period + grace
        queued = old.acquire_sync()
        assert_counts_from_wake(queued, restart_at + 0.05 + 0.4)
        assert old.try_acquire().allowed  # warmed up

        own_redis.kill()
        own_redis.start()
        with limiter() as fresh:
            assert fresh.try_acquire().allowed  # a brand-new deployment starts empty
        assert "restart_at" not in meta(own_redis.url, "w")
        late = old.try_acquire()  # ... but a process that knew the old epoch warns
        assert not late.allowed
        assert 0.3 < late.retry_after <= 0.45
        assert "restart_at" in meta(own_redis.url, "w")
    finally:
        old.close()


@run_async
async def test_reservation_lost_in_a_restart_queues_again(own_redis: OwnRedis) -> None:
    limiter = RedisRateLimiter(
        own_redis.url, 2, 0.5, key_prefix="lost", lease_duration=0.05, probe_interval=0.05
    )
    try:
        await limiter.acquire(count=2, timeout=0)
        waiter = asyncio.create_task(limiter.acquire())
        await apoll(lambda: limiter.round_trips == 2, 5, "the reservation")
        own_redis.kill()
        own_redis.start()
        decision = await waiter  # wakes, finds its epoch gone, queues behind the warm-up
        restart_at = float(meta(own_redis.url, "lost")["restart_at"])
        assert_counts_from_wake(decision, restart_at + 0.05 + 0.5)
        # try_acquire, reserve; wake: lost, queued again behind the warm-up in the same round
        # trip; wake: confirm (before, losing it cost a confirm and a new reservation)
        wakes = limiter._flows.wakes
        assert limiter.round_trips == 4, wakes
        # queued again once; then it stood (woken within the tolerance) or moved to now
        on_time, stood, moved, queued, refused = wakes
        assert (on_time, stood + moved, queued, refused) == (0, 1, 1, 0), wakes
    finally:
        await limiter.aclose()


# --- many processes -------------------------------------------------------------------------
def test_four_processes_share_one_limit(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """4 OS processes x 20 asyncio tasks, rate 50 per 1 s, for 5 s, on 2 shared CPUs.

    Asserted is what must hold whatever the scheduler does (how late the event loops wake the
    80 waiters, how long replies take to arrive), not throughput:

    - every admission counts at a real time: its server time lies between its call's start
      and the moment the caller used it (a grant is never used before it counts);
    - the union of the four processes never holds more than 50 units in any window
      ``[t, t + 1 s)`` of server time: they share one limit;
    - and they did contend for it: 80 tasks asking at once fill the busiest window exactly,
      calls had to wait their turn, every process was admitted, and each process's
      ``stats`` counted exactly the admissions it made (no error, no fallback: Redis decided
      every one; a slow reply on a loaded machine is not an outage, ``socket_timeout=5``).

    (Confirm on wake runs here too — waiters sharing 2 CPUs wake late — but what it promises
    about use times depends on lateness and reply delivery: it is asserted where lateness is
    controlled, in the virtual-time and ``LateClock`` tests above.)"""
    rate, period = 50, 1.0
    config = {
        "url": redis_url,
        "prefix": prefix,
        "rate": rate,
        "period": period,
        "tasks": 20,
        "duration": 5.0,
        "options": {"socket_timeout": 5.0},
    }
    workers = Workers(4, config, tmp_path)
    try:
        workers.wait_for("ready", 30)
        workers.go()
        results = workers.finish(60)
    finally:
        workers.kill()
    admitted = check_admissions(results, rate, period)  # bracketed; never more than 50 a window
    assert {source for _, source in admitted} == {"redis"}
    assert all(result["errors"] == [] for result in results)
    assert max_in_window([(t, 1.0) for t, _ in admitted], period) == rate  # the limit binds
    assert any(a[4] is not None for result in results for a in result["admissions"])  # queued
    for result in results:  # all took part, and their own books agree with what they used
        assert result["stats"]["admitted"] == len(result["admissions"]) > 0


@pytest.mark.parametrize(
    ("mode", "outage"),
    [("fail_closed", "restart"), ("local_fallback", "restart"), ("local_fallback", "cut off")],
)
def test_redis_restart_mid_run_keeps_the_limit_and_recovers(
    own_redis: OwnRedis, tmp_path: Path, mode: str, outage: str
) -> None:
    """2 processes x 10 tasks (+ 2 pollers) on a server that is killed and restarted, or that
    cuts every client off (data kept), mid-run: the window property holds across the outage
    and admissions resume. With the data kept nothing warms up: the processes come back one by
    one, and the room for those still on their local share is the phantom entry's."""
    rate, period, grace = 20, 1.0, 0.05
    config = {
        "url": own_redis.url,
        "prefix": f"restart:{mode}",
        "rate": rate,
        "period": period,
        "tasks": 10,
        "pollers": 2,
        "duration": 4.0 if mode == "fail_closed" else 5.5,
        "options": {
            "on_unavailable": mode,
            "expected_processes": 2,
            "probe_interval": 0.1,
            "socket_timeout": 0.25,
            "lease_duration": grace,
        },
    }
    workers = Workers(2, config, tmp_path)
    try:
        workers.wait_for("ready", 30)
        started = workers.go()
        time.sleep(max(0.0, started + 1.2 - time.time()))  # scenario: 1.2 s of normal running
        if outage == "restart":
            killed = own_redis.kill()
        else:
            admin = own_redis.refuse_clients()
            killed = time.time()
        workers.wait_for("down", 5)
        if mode == "fail_closed":
            workers.wait_for("error", 5)
        else:
            workers.wait_for("fallback", 5)  # after the hold, each admits its local share
        back = own_redis.start() if outage == "restart" else own_redis.accept_clients(admin)
        workers.wait_for("up", 5)
        results = workers.finish(30)
    finally:
        workers.kill()
    admitted = check_admissions(results, rate, period)
    after = [t for t, source in admitted if t > back and source == "redis"]
    assert len(after) >= rate  # recovered: a full window's worth after the restart
    before = [t for t, _ in admitted if t < killed]
    assert len(before) >= rate
    if mode == "fail_closed":
        errors = [e for result in results for e in result["errors"]]
        assert errors
        for send, receive, code, message in errors:
            assert code == "limiter_unavailable"
            assert f"127.0.0.1:{own_redis.port}" in message
            if send > killed:  # (a waiter queued before the kill fails when it wakes)
                assert receive - send < 0.1  # calls made while it is down fail fast
        # nothing admitted while down (grants confirmed just before the kill may still run)
        assert not [t for t, _ in admitted if killed + grace + TOL < t < back]
    else:
        assert all(result["errors"] == [] for result in results)
        local = [t for t, source in admitted if source == "fallback"]
        assert local
        assert min(local) >= killed + period  # the hold: nothing local for a period
        assert max(local) < back + 0.5  # the probe ends the fallback
