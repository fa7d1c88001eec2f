"""The cache on the product path: LLMClient(cache=...) answers repeated requests without the
upstream, flashkit process shares answers between state databases, and a shared store never
unpickles what another process planted."""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashkit.cache import CacheService, MemoryStore, RedisStore
from flashkit.cli import app
from flashkit.client import chat_cache_key
from flashkit.clock import VirtualClock, run_virtual
from flashkit.ratelimit import RateLimiter
from flashkit.sim import FaultProfile, SimulatedUpstream

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocabulary_1000.csv"
MESSAGES = [{"role": "user", "content": "안녕하세요"}]


def test_the_cache_key_is_the_same_everywhere() -> None:
    """SHA-256 of canonical JSON: pinned, so every process and Python version agrees."""
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 10, "temperature": 0.7}
    assert chat_cache_key("api.example", body) == (
        "1ae1c41cd1cb3e5658c3697602cecc43b2b04f102caf1436920e5c3a5d3989ae"
    )
    reordered = {"temperature": 0.7, "max_tokens": 10, "messages": MESSAGES, "model": "m"}
    assert chat_cache_key("api.example", reordered) == chat_cache_key("api.example", body)
    assert chat_cache_key("other.example", body) != chat_cache_key("api.example", body)
    changed = {**body, "temperature": 0.2}
    assert chat_cache_key("api.example", changed) != chat_cache_key("api.example", body)


def test_a_repeated_request_is_answered_from_the_cache_without_the_upstream() -> None:
    clock = VirtualClock()
    upstream = SimulatedUpstream(FaultProfile.preset("healthy"), seed=1, clock=clock)
    limiter = RateLimiter(600, 60.0, clock=clock)
    cache = CacheService(MemoryStore(clock=clock))

    async def main() -> list[object]:
        async with upstream.client(cache=cache, limiter=limiter) as client:
            first = await client.chat(MESSAGES, max_tokens=50)
            admitted = limiter.stats.admitted
            second = await client.chat(MESSAGES, max_tokens=50)
            assert limiter.stats.admitted == admitted  # the limiter was not asked
            other = await client.chat(MESSAGES, max_tokens=50, temperature=0.1)
            return [first, second, other]

    first, second, other = run_virtual(main(), clock=clock)
    assert not first.cached  # type: ignore[attr-defined]
    assert second.cached  # type: ignore[attr-defined]
    assert not other.cached  # type: ignore[attr-defined]
    assert second.content == first.content  # type: ignore[attr-defined]
    assert second.attempts == 0  # type: ignore[attr-defined]
    assert upstream.stats.requests == 2  # the first and the one with another temperature
    assert cache.stats().hits == 1


def test_a_broken_cache_never_breaks_the_call() -> None:
    class Broken:
        async def get(self, key: str) -> object:
            raise RuntimeError("store down")

        async def set(self, key: str, value: object, ttl: float | None = None) -> None:
            raise RuntimeError("store down")

    clock = VirtualClock()
    upstream = SimulatedUpstream(FaultProfile.preset("healthy"), seed=1, clock=clock)

    async def main() -> object:
        async with upstream.client(cache=Broken()) as client:
            return await client.chat(MESSAGES, max_tokens=20)

    result = run_virtual(main(), clock=clock)
    assert not result.cached  # type: ignore[attr-defined]
    assert upstream.stats.requests == 1


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")
def test_a_second_state_database_with_the_same_cache_pays_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 1,000-word list twice, each time with a fresh state database, one shared cache:
    the second run sends no request upstream."""
    monkeypatch.chdir(tmp_path)
    sent: list[int] = []
    handle = SimulatedUpstream.handle

    async def counting(self: SimulatedUpstream, request):  # type: ignore[no-untyped-def]
        sent.append(1)
        return await handle(self, request)

    monkeypatch.setattr(SimulatedUpstream, "handle", counting)
    runner = CliRunner()
    common = ["process", str(SHARED), "--provider", "sim", "--profile", "flaky",
              "--cache", "sqlite:///cache.db"]  # fmt: skip
    first = runner.invoke(app, [*common, "--db", "sqlite:///one.db", "-o", "one"])
    assert first.exit_code == 0, first.output
    paid = len(sent)
    assert paid >= 2000
    second = runner.invoke(app, [*common, "--db", "sqlite:///two.db", "-o", "two"])
    assert second.exit_code == 0, second.output
    assert len(sent) == paid  # nothing sent: every stage answered from the cache
    with contextlib.closing(sqlite3.connect(tmp_path / "two.db")) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM flashkit_calls GROUP BY status"))
    assert statuses == {"cached": 2000}
    assert (tmp_path / "two" / "cards.tsv").read_text("utf-8") == (
        tmp_path / "one" / "cards.tsv"
    ).read_text("utf-8")


@pytest.mark.services
def test_a_pickle_planted_in_redis_is_a_miss_and_never_unpickled(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    prefix = f"flashkit-test-{uuid.uuid4().hex[:8]}:"
    cache = CacheService(RedisStore(redis_url, prefix=prefix))
    raw = redis.Redis.from_url(redis_url)
    calls: list[object] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))
    try:
        raw.set(prefix + "answer", pickle.dumps({"content": "pwned"}))
        assert cache.get_sync("answer") is None
        assert calls == []
        assert cache.stats().corrupt == 1
        assert any("answer" in record.getMessage() for record in caplog.records)
        cache.set_sync("answer", {"content": "fine"})
        assert cache.get_sync("answer") == {"content": "fine"}
    finally:
        for key in raw.scan_iter(prefix + "*"):
            raw.delete(key)
        raw.close()
        cache.store.close()
