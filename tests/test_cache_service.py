"""flashkit.cache's service layer: CacheService, CompressedCache and the stored entry format.

Time is virtual (``VirtualClock.advance`` or ``run_virtual``). The shared-store code path runs on
``DictStore`` below, a tiny in-test store over a dict of bytes; the real SQL and Redis stores are
tested elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import pickle
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from flashkit import telemetry as tm
from flashkit.cache._base import MemoryStore, Store, SyncBacked
from flashkit.cache._compressed import CompressedCache, train_dictionary
from flashkit.cache._format import (
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZLIB,
    CODEC_ZSTD,
    HEADER_SIZE,
    _Corrupt,
    decode_entry,
    encode_entry,
)
from flashkit.cache._service import CacheService
from flashkit.cache._stores import SQLStore
from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import ValidationError
from flashkit.sim import lexicon
from flashkit.sim._content import stage1_text, stage2_text

ROOT = Path(__file__).resolve().parent.parent


class DictStore(SyncBacked):
    """A shared store (bytes only) over a dict, timed by ``clock``, with per-key locks; set
    ``fail`` to make every operation raise ConnectionError."""

    shared = True

    def __init__(self, clock: VirtualClock, name: str = "dict") -> None:
        self.clock = clock
        self.name = name
        self.data: dict[str, tuple[bytes, float]] = {}
        self.locks: dict[str, tuple[str, float]] = {}
        self.reads: dict[str, int] = {}  # gets per key
        self.fail = False
        self._tokens = 0

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("store down")

    def get_sync(self, key: str) -> Any:
        self._check()
        self.reads[key] = self.reads.get(key, 0) + 1
        found = self.data.get(key)
        return found[0] if found is not None and found[1] > self.clock.now() else None

    def set_sync(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._check()
        assert isinstance(value, bytes), type(value)
        self.data[key] = (value, math.inf if ttl is None else self.clock.now() + ttl)

    def delete_sync(self, key: str) -> bool:
        self._check()
        return self.data.pop(key, None) is not None

    def lock_sync(self, key: str, ttl: float) -> str | None:
        self._check()
        held = self.locks.get(key)
        if held is not None and held[1] > self.clock.now():
            return None
        self._tokens += 1
        self.locks[key] = (str(self._tokens), self.clock.now() + ttl)
        return str(self._tokens)

    def unlock_sync(self, key: str, token: str) -> None:
        if self.locks.get(key, ("", 0.0))[0] == token:
            del self.locks[key]

    def close(self) -> None:
        self.data.clear()


def make_store(kind: str, clock: VirtualClock) -> Any:
    return MemoryStore(clock=clock) if kind == "memory" else DictStore(clock)


def card(position: int, entry: Any) -> dict[str, Any]:
    """What the flashcard pipeline would cache for one word: both stages' outputs."""
    return {
        "stage1": json.loads(stage1_text(position, entry.term, entry.pos)),
        "cards": stage2_text(position, entry.term, position, entry.pos),
    }


@pytest.fixture(scope="module")
def cards() -> list[dict[str, Any]]:
    return [card(i, entry) for i, entry in enumerate(lexicon().entries, 1)]


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """pickle.loads/pickle.load replaced by a trap; the test fails if either was called."""
    calls: list[Any] = []

    def trap(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("pickle must never be called")

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    yield calls
    assert calls == []


def test_the_dict_store_satisfies_the_store_protocol() -> None:
    assert isinstance(DictStore(VirtualClock()), Store)


# --- get, set, delete ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_get_set_delete_sync(kind: str) -> None:
    clock = VirtualClock()
    cache = CacheService(make_store(kind, clock), clock=clock)
    assert cache.get_sync("k") is None
    cache.set_sync("k", {"word": "사람", "n": [1, 2.5, None, True]})
    assert cache.get_sync("k") == {"word": "사람", "n": [1, 2.5, None, True]}
    assert cache.delete_sync("k") is True
    assert cache.delete_sync("k") is False
    assert cache.get_sync("k") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.sets, stats.deletes) == (1, 2, 1, 2)
    assert stats.hit_rate == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_get_set_delete_async(kind: str) -> None:
    clock = VirtualClock()
    cache = CacheService(make_store(kind, clock), clock=clock)

    async def main() -> list[Any]:
        seen = [await cache.get("k")]
        await cache.set("k", ["a", 1])
        seen.append(await cache.get("k"))
        seen.append(await cache.delete("k"))
        seen.append(await cache.get("k"))
        return seen

    assert run_virtual(main(), clock=clock) == [None, ["a", 1], True, None]


@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_expired_keys_read_as_none_and_ttl_none_never_expires(kind: str) -> None:
    clock = VirtualClock()
    cache = CacheService(make_store(kind, clock), clock=clock, ttl=10.0, ttl_jitter=0.0)
    cache.set_sync("short", 1)
    cache.set_sync("long", 2, ttl=100.0)
    clock.advance(9.999)
    assert cache.get_sync("short") == 1
    clock.advance(0.001)
    assert cache.get_sync("short") is None
    assert cache.get_sync("long") == 2
    forever = CacheService(make_store(kind, clock), clock=clock)
    forever.set_sync("k", "v")
    clock.advance(1e9)
    assert forever.get_sync("k") == "v"


def test_the_cache_checks_expiry_itself_when_the_store_keeps_other_time() -> None:
    store_clock, cache_clock = VirtualClock(), VirtualClock()
    cache = CacheService(MemoryStore(clock=store_clock), clock=cache_clock, ttl=5.0, ttl_jitter=0)
    cache.set_sync("k", "v")
    cache_clock.advance(6.0)  # the store's clock has not moved: it still holds the entry
    assert cache.get_sync("k") is None


def test_memory_hits_return_the_stored_object_itself() -> None:
    cache = CacheService(MemoryStore())
    value = {"cards": ["a", "b"]}
    cache.set_sync("k", value)
    assert cache.get_sync("k") is value
    assert cache.stats().bytes_written == 0  # nothing encoded


def test_namespace_prefixes_every_key() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cards_cache = CacheService(store, clock=clock, namespace="cards")
    other = CacheService(store, clock=clock, namespace="other")
    cards_cache.set_sync("사람", 1)
    assert list(store.data) == ["cards:사람"]
    assert other.get_sync("사람") is None
    assert cards_cache.get_sync("사람") == 1
    memory = MemoryStore()
    CacheService(memory, namespace="ns").set_sync("k", 1)
    assert memory.get_sync("ns:k") is not None


@pytest.mark.parametrize("kind", ["memory", "shared"])
@pytest.mark.parametrize("key", ["", 5, None, b"k"])
def test_keys_must_be_non_empty_str(kind: str, key: Any) -> None:
    clock = VirtualClock()
    for namespace in ("", "ns"):
        cache = CacheService(make_store(kind, clock), clock=clock, namespace=namespace)
        with pytest.raises(ValidationError, match="non-empty str"):
            cache.get_sync(key)
        with pytest.raises(ValidationError, match="non-empty str"):
            cache.set_sync(key, 1)
        with pytest.raises(ValidationError, match="non-empty str"):
            run_virtual(cache.get(key))
        with pytest.raises(ValidationError, match="non-empty str"):
            cache.get_or_compute_sync(key, lambda: 1)


@pytest.mark.parametrize("kind", ["memory", "shared"])
@pytest.mark.parametrize(
    ("value", "named"),
    [(object(), "object"), ({"a": {1, 2}}, "dict"), (float("nan"), "float"), (b"raw", "bytes")],
)
def test_values_that_are_not_json_are_refused_naming_the_type(
    kind: str, value: Any, named: str
) -> None:
    clock = VirtualClock()
    cache = CacheService(make_store(kind, clock), clock=clock)
    with pytest.raises(ValidationError, match=f"type {named}"):
        cache.set_sync("k", value)
    with pytest.raises(ValidationError, match=f"type {named}"):
        cache.get_or_compute_sync("k", lambda: value)
    assert cache.stats().sets == 0


def test_msgpack_round_trip_in_a_shared_store() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock, serializer="msgpack")
    value = {"raw": b"\x00\xff", 3: [1.5, "사람", None]}
    cache.set_sync("k", value)
    assert store.data["k"][0][3] == 1  # serializer id in the header
    assert cache.get_sync("k") == value
    json_reader = CacheService(store, clock=clock)  # the header, not the setting, decides
    assert json_reader.get_sync("k") == value


def test_missing_optional_packages_say_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("msgpack", "lz4", "lz4.block"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"msgpack.*flashkit\[cache\]"):
        CacheService(MemoryStore(), serializer="msgpack")
    with pytest.raises(ImportError, match=r"lz4.*flashkit\[cache\]"):
        CompressedCache(MemoryStore(), codec="lz4")


def test_options_are_checked() -> None:
    store = MemoryStore()
    for bad in (
        {"ttl_jitter": 1.0},
        {"ttl_jitter": -0.1},
        {"ttl": 0},
        {"serializer": "pickle"},
        {"beta": -1.0},
        {"name": ""},
    ):
        with pytest.raises(ValidationError):
            CacheService(store, **bad)
    with pytest.raises(TypeError, match="Store"):
        CacheService(object())  # type: ignore[arg-type]


# --- TTL jitter ---------------------------------------------------------------------------------
def test_ttl_jitter_stays_in_bounds_and_spreads() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock, ttl=100.0, ttl_jitter=0.1, rng=random.Random(7))
    for i in range(1000):
        cache.set_sync(f"k{i}", i)
    ttls = [expires for _, expires in store.data.values()]
    assert min(ttls) >= 90.0
    assert max(ttls) <= 110.0
    assert min(ttls) < 91.0
    assert max(ttls) > 109.0
    theoretical = 20.0 / math.sqrt(12)  # uniform on [90, 110]
    assert statistics.stdev(ttls) > 0.25 * theoretical
    assert statistics.stdev(ttls) == pytest.approx(theoretical, rel=0.1)
    # the entry's own expiry agrees with the store's
    assert decode_entry(store.data["k0"][0]).expires == pytest.approx(store.data["k0"][1])


def test_same_seed_same_ttls() -> None:
    def ttls(seed: int) -> list[float]:
        clock = VirtualClock()
        store = DictStore(clock)
        cache = CacheService(store, clock=clock, ttl=60.0, rng=random.Random(seed))
        for i in range(20):
            cache.set_sync(str(i), i)
        return [expires for _, expires in store.data.values()]

    assert ttls(3) == ttls(3) != ttls(4)


# --- unreadable entries -------------------------------------------------------------------------
GOOD = encode_entry(b'{"a":1}')
ZSTD_BODY = zstandard.ZstdCompressor(level=3).compress(b'{"text":"' + b"abc" * 200 + b'"}')


def _header_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


CORRUPT = {
    "too short": (b"\xfc\x01\x00", "too short"),
    "truncated": (GOOD[:-2], "truncated"),
    "extra bytes": (GOOD + b"x", "extra bytes"),
    "bad magic": (_header_byte(GOOD, 0, 0x80), "magic"),
    "unknown version": (_header_byte(GOOD, 1, 9), "version"),
    "unknown codec": (_header_byte(GOOD, 2, 9), "codec"),
    "unknown serializer": (_header_byte(GOOD, 3, 7), "serializer"),
    "unknown dictionary": (
        encode_entry(ZSTD_BODY, codec=CODEC_ZSTD, dictionary_id=12345),
        "dictionary",
    ),
    "dictionary with zlib": (encode_entry(b"x", codec=CODEC_ZLIB, dictionary_id=5), "dictionary"),
    "zlib garbage": (encode_entry(b"not zlib at all", codec=CODEC_ZLIB), "decompression"),
    "zstd truncated": (encode_entry(ZSTD_BODY[:-3], codec=CODEC_ZSTD), "decompression"),
    "lz4 garbage": (encode_entry(b"\x10\x00\x00\x00garbage", codec=CODEC_LZ4), "decompression"),
    "zstd too large": (
        encode_entry(zstandard.ZstdCompressor().compress(b"\0" * (65 << 20)), codec=CODEC_ZSTD),
        "too large",
    ),
    "garbage payload": (encode_entry(b"\xff\xfe not json"), "JSON"),
    "json with trailing data": (encode_entry(b'{"a":1} {"b":2}'), "extra data"),
    "json nested too deep": (encode_entry(b"[" * 100_000 + b"]" * 100_000), "JSON"),
    "msgpack garbage": (encode_entry(b"\xc1", serializer=1), "msgpack"),
    "planted pickle": (pickle.dumps({"a": 1, "b": [1, 2]}), "magic"),
    "pickle in a header": (encode_entry(pickle.dumps({"a": 1})), "JSON"),
    "pickle as msgpack": (encode_entry(pickle.dumps({"a": 1}), serializer=1), "msgpack"),
    "bad expiry": (encode_entry(b"1", expires=math.nan), "expiry"),
    "not bytes": ("a str", "not bytes"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_decode_names_why_an_entry_is_corrupt(case: str, no_pickle: list[Any]) -> None:
    data, reason = CORRUPT[case]
    with pytest.raises(_Corrupt, match=reason):
        decode_entry(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_entry_is_a_miss_counted_and_logged_once(
    case: str, no_pickle: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock, name="corrupt")
    store.data["k"] = (CORRUPT[case][0], math.inf)  # type: ignore[assignment]
    store.data["other"] = (CORRUPT[case][0], math.inf)  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    assert cache.get_sync("k") is None
    assert run_virtual(cache.get("k")) is None
    assert cache.get_sync("other") is None
    stats = cache.stats()
    assert (stats.corrupt, stats.misses, stats.hits) == (3, 3, 0)
    logged = [r.getMessage() for r in caplog.records if r.name == "flashkit.cache"]
    assert len(logged) == 2  # once per key
    assert "'k'" in logged[0]
    assert CORRUPT[case][1].lower() in logged[0].lower()
    # get_or_compute recomputes over it and the new entry reads back
    assert cache.get_or_compute_sync("k", lambda: {"fresh": True}) == {"fresh": True}
    assert cache.get_sync("k") == {"fresh": True}


def test_a_foreign_object_in_a_memory_store_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    store.set_sync("k", {"not": "an entry"})
    cache = CacheService(store)
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    assert cache.get_sync("k") is None
    assert cache.stats().corrupt == 1
    assert len(caplog.records) == 1


def test_cache_modules_never_import_pickle() -> None:
    for name in ("_format.py", "_service.py", "_flight.py", "_compressed.py"):
        source = (ROOT / "flashkit" / "cache" / name).read_text()
        assert "import pickle" not in source, name
        assert "pickle." not in source, name


def test_entry_format_round_trip_and_header_size() -> None:
    data = encode_entry(b'[1,"x"]', expires=12.5, delta=0.25)
    assert len(data) == HEADER_SIZE + 7
    assert HEADER_SIZE == 24
    decoded = decode_entry(data)
    assert (decoded.value, decoded.expires, decoded.delta, decoded.codec) == (
        [1, "x"],
        12.5,
        0.25,
        0,
    )
    assert decode_entry(encode_entry(b"1")).expires == math.inf


# --- store errors -------------------------------------------------------------------------------
def test_store_errors_are_counted_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock)
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    store.fail = True
    assert cache.get_sync("k") is None
    assert cache.get_sync("k") is None
    cache.set_sync("w", 1)
    assert cache.delete_sync("w") is False
    assert cache.get_or_compute_sync("c", lambda: "computed") == "computed"
    assert run_virtual(cache.get_or_compute("d", asyncio_value("async computed"))) == (
        "async computed"
    )
    stats = cache.stats()
    assert stats.errors >= 6
    assert stats.misses == 4
    assert stats.sets == 0
    keys = [r.getMessage().split("key ")[1].split(":")[0] for r in caplog.records]
    assert sorted(keys) == ["'c'", "'d'", "'k'", "'w'"]  # once per key
    store.fail = False
    cache.set_sync("k", 2)
    assert cache.get_sync("k") == 2


def asyncio_value(value: Any, seconds: float = 0.0) -> Any:
    async def compute() -> Any:
        if seconds:
            await asyncio.sleep(seconds)
        return value

    return compute


# --- single flight ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_100_concurrent_callers_compute_once(kind: str) -> None:
    clock = VirtualClock()
    cache = CacheService(make_store(kind, clock), clock=clock)
    calls = 0

    async def compute() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)
        return {"n": calls}

    async def main() -> list[Any]:
        return await asyncio.gather(*(cache.get_or_compute("k", compute) for _ in range(100)))

    results = run_virtual(main(), clock=clock)
    assert calls == 1
    assert results == [{"n": 1}] * 100
    assert clock.now() == pytest.approx(1.0)
    stats = cache.stats()
    assert (stats.computes, stats.misses, stats.hits) == (1, 100, 0)
    assert stats.compute_seconds == pytest.approx(1.0)
    assert cache.get_sync("k") == {"n": 1}


def test_threads_computing_one_key_compute_once() -> None:
    cache = CacheService(MemoryStore())
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []
    results: list[Any] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        entered.set()
        assert release.wait(10)
        return {"v": 1}

    def worker() -> None:
        results.append(cache.get_or_compute_sync("k", compute))

    threads = [threading.Thread(target=worker) for _ in range(100)]
    threads[0].start()
    assert entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    flight = cache._flights["k"]
    deadline = time.monotonic() + 10
    while flight.waiters < 99 and time.monotonic() < deadline:
        os.sched_yield()
    assert flight.waiters == 99  # all of them wait on the one computation
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert results == [{"v": 1}] * 100
    assert cache._flights == {}


def test_a_compute_error_reaches_every_waiter_and_nothing_is_cached() -> None:
    clock = VirtualClock()
    cache = CacheService(MemoryStore(clock=clock), clock=clock)
    calls = 0

    async def compute() -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)
        raise RuntimeError("upstream down")

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(cache.get_or_compute("k", compute) for _ in range(5)), return_exceptions=True
        )

    outcomes = run_virtual(main(), clock=clock)
    assert calls == 1
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert cache.get_sync("k") is None
    assert cache.stats().sets == 0


def test_a_cancelled_leader_hands_the_computation_to_a_waiter() -> None:
    clock = VirtualClock()
    cache = CacheService(MemoryStore(clock=clock), clock=clock)
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)
        return calls

    async def main() -> Any:
        leader = asyncio.create_task(cache.get_or_compute("k", compute))
        await asyncio.sleep(0.1)
        follower = asyncio.create_task(cache.get_or_compute("k", compute))
        await asyncio.sleep(0.1)
        leader.cancel()
        return await follower

    assert run_virtual(main(), clock=clock) == 2
    assert calls == 2
    assert clock.now() == pytest.approx(1.2)


def test_a_shared_store_lock_makes_another_process_wait_for_the_value() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    first = CacheService(store, clock=clock, name="first")
    second = CacheService(store, clock=clock, name="second")

    async def never() -> Any:
        raise AssertionError("the second process must not compute")

    async def main() -> tuple[Any, Any, float]:
        task = asyncio.create_task(first.get_or_compute("k", asyncio_value("first's", 1.0)))
        await asyncio.sleep(0.1)
        theirs = await second.get_or_compute("k", never)
        return await task, theirs, clock.now()

    mine, theirs, finished = run_virtual(main(), clock=clock)
    assert mine == theirs == "first's"
    assert 1.0 <= finished < 1.0 + 0.2 + 1e-9  # polling: at most one backoff step late
    assert store.locks == {}
    assert first.stats().computes == 1
    assert second.stats().computes == 0


def test_the_sync_form_waits_for_another_process_too() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock, lock_ttl=30.0)
    token = store.lock_sync("k", 5.0)  # another process computes...
    assert token is not None
    calls: list[float] = []

    def compute() -> str:
        calls.append(clock.now())
        return "mine"

    assert cache.get_or_compute_sync("k", compute) == "mine"
    assert len(calls) == 1
    assert 5.0 <= calls[0] < 5.0 + 0.2 + 1e-9


def test_a_waiter_computes_itself_after_lock_ttl(caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock, lock_ttl=2.0)
    store.lock_sync("k", 60.0)  # a holder that will never write
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    assert run_virtual(cache.get_or_compute("k", asyncio_value("v", 0.5)), clock=clock) == "v"
    assert clock.now() == pytest.approx(2.5)
    assert "lock holder" in caplog.records[0].getMessage()


# --- XFetch: one hot key ------------------------------------------------------------------------
def hot_key(*, single_flight: bool, early_refresh: bool, expiries: int = 20) -> dict[str, float]:
    """One key read 100 times per virtual second for ``expiries`` TTLs of 10 s; a recompute takes
    1 s. An episode is a stretch of time with at least one computation running."""
    clock = VirtualClock()
    cache = CacheService(
        MemoryStore(clock=clock),
        clock=clock,
        ttl=10.0,
        ttl_jitter=0.0,
        rng=random.Random(11),
        single_flight=single_flight,
        early_refresh=early_refresh,
    )
    count = {"computes": 0, "episodes": 0, "running": 0, "waited": 0}

    async def compute() -> float:
        count["episodes"] += count["running"] == 0
        count["running"] += 1
        count["computes"] += 1
        await asyncio.sleep(1.0)
        count["running"] -= 1
        return clock.now()

    async def read() -> None:
        start = clock.now()
        await cache.get_or_compute("hot", compute)
        count["waited"] += clock.now() > start

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        for _ in range(expiries * 10 * 100):
            task = asyncio.create_task(read())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)

    run_virtual(main(), clock=clock)
    return {**count, "per_episode": count["computes"] / count["episodes"]}


def test_without_protection_every_read_in_the_recompute_window_recomputes() -> None:
    result = hot_key(single_flight=False, early_refresh=False)
    assert result["episodes"] >= 17
    assert 90 <= result["per_episode"] <= 110


def test_single_flight_alone_computes_once_but_readers_wait_at_each_expiry() -> None:
    result = hot_key(single_flight=True, early_refresh=False)
    assert result["per_episode"] == 1.0
    assert result["waited"] >= 90 * result["episodes"]


def test_xfetch_with_single_flight_refreshes_once_before_expiry_and_nobody_waits() -> None:
    result = hot_key(single_flight=True, early_refresh=True)
    assert result["per_episode"] <= 1.2
    # Only the cold start's readers and the one reader per refresh that recomputes (inline, as in
    # the paper) waited; every other read got a value at once.
    assert result["waited"] <= 100 + result["episodes"]


def test_early_refresh_serves_the_cached_value_meanwhile() -> None:
    clock = VirtualClock()
    cache = CacheService(
        MemoryStore(clock=clock),
        clock=clock,
        ttl=10.0,
        ttl_jitter=0.0,
        rng=random.Random(1),
        beta=50.0,  # a refresh in the last seconds is all but certain
    )

    async def main() -> list[Any]:
        await cache.get_or_compute("k", asyncio_value("old", 2.0))  # at 2.0, expires at 12.0
        await asyncio.sleep(9.9)
        refresh = asyncio.create_task(cache.get_or_compute("k", asyncio_value("new", 2.0)))
        await asyncio.sleep(0.05)
        during = await cache.get_or_compute("k", asyncio_value("third", 2.0))
        during_at = clock.now()
        return [during, during_at, await refresh, await cache.get("k")]

    during, during_at, refreshed, after = run_virtual(main(), clock=clock)
    assert (during, during_at, refreshed, after) == ("old", pytest.approx(11.95), "new", "new")
    assert cache.stats().computes == 2


def test_a_stored_compute_time_travels_with_a_shared_entry() -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CacheService(store, clock=clock)
    run_virtual(cache.get_or_compute("k", asyncio_value(1, 1.5)), clock=clock)
    assert decode_entry(store.data["k"][0]).delta == pytest.approx(1.5)


# --- CompressedCache ----------------------------------------------------------------------------
def stored_codec(store: MemoryStore, key: str) -> int:
    data = store.get_sync(key)
    assert isinstance(data, bytes)
    return data[2]


@pytest.mark.parametrize(
    ("codec", "expected"),
    [("none", CODEC_NONE), ("zlib", CODEC_ZLIB), ("zstd", CODEC_ZSTD), ("lz4", CODEC_LZ4)],
)
def test_each_codec_round_trips(codec: str, expected: int, cards: list[dict[str, Any]]) -> None:
    store = MemoryStore()
    cache = CompressedCache(store, codec=codec)
    for i, value in enumerate(cards[:20]):
        cache.set_sync(str(i), value)
    assert [cache.get_sync(str(i)) for i in range(20)] == cards[:20]
    assert stored_codec(store, "0") == expected
    ratio = cache.stats().compression_ratio
    assert ratio == 1.0 if codec == "none" else ratio > 1.2


def test_zstd_with_a_dictionary_round_trips(cards: list[dict[str, Any]]) -> None:
    dictionary = train_dictionary(cards[:200], size=8192)
    store = MemoryStore()
    plain = CompressedCache(MemoryStore())
    cache = CompressedCache(store, dictionary=dictionary)
    for i, value in enumerate(cards[200:]):
        cache.set_sync(str(i), value)
        plain.set_sync(str(i), value)
    assert [cache.get_sync(str(i)) for i in range(len(cards) - 200)] == cards[200:]
    data = store.get_sync("0")
    assert decode_entry(data, dictionaries={dictionary.dict_id(): dictionary}).dictionary_id == (
        dictionary.dict_id()
    )
    assert cache.stats().compression_ratio > 2 * plain.stats().compression_ratio


def test_small_values_and_poor_savings_are_stored_uncompressed() -> None:
    store = MemoryStore()
    cache = CompressedCache(store, serializer="msgpack")
    cache.set_sync("small", "x" * 100)
    assert stored_codec(store, "small") == CODEC_NONE
    noise = random.Random(5).randbytes(4096)  # msgpack keeps bytes as they are
    cache.set_sync("noise", noise)
    assert stored_codec(store, "noise") == CODEC_NONE
    assert cache.get_sync("noise") == noise
    cache.set_sync("text", "가나다라" * 500)
    assert stored_codec(store, "text") == CODEC_ZSTD
    # base64 of random bytes shrinks by about a quarter: enough for 10 %, not for 50 %
    text = base64.b64encode(random.Random(6).randbytes(3000)).decode()
    CompressedCache(store, min_saving=0.10).set_sync("b64", text)
    assert stored_codec(store, "b64") == CODEC_ZSTD
    CompressedCache(store, min_saving=0.50).set_sync("b64", text)
    assert stored_codec(store, "b64") == CODEC_NONE
    CompressedCache(store, threshold=100_000).set_sync("text", "가나다라" * 500)
    assert stored_codec(store, "text") == CODEC_NONE


def test_entries_written_with_zlib_are_read_after_switching_to_zstd(
    cards: list[dict[str, Any]],
) -> None:
    store = MemoryStore()
    CompressedCache(store, codec="zlib").set_sync("k", cards[0])
    assert stored_codec(store, "k") == CODEC_ZLIB
    assert CompressedCache(store, codec="zstd").get_sync("k") == cards[0]
    assert CompressedCache(store, codec="lz4").get_sync("k") == cards[0]


def test_an_old_dictionary_is_read_when_known_and_a_logged_miss_when_not(
    cards: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    old = train_dictionary(cards[:150], size=4096)
    new = train_dictionary(cards[100:250], size=4096)
    assert old.dict_id() != new.dict_id()
    store = MemoryStore()
    CompressedCache(store, dictionary=old).set_sync("k", cards[260])
    both = CompressedCache(store, dictionary=new, dictionaries=[old])
    assert both.get_sync("k") == cards[260]
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    only_new = CompressedCache(store, dictionary=new)
    assert only_new.get_sync("k") is None
    assert only_new.get_sync("k") is None
    assert only_new.stats().corrupt == 2
    assert len(caplog.records) == 1
    assert f"unknown zstd dictionary id {old.dict_id()}" in caplog.records[0].getMessage()
    both.set_sync("k", cards[260])  # rewritten with the new dictionary: everyone reads it
    assert only_new.get_sync("k") == cards[260]


def test_a_shared_precomputed_dictionary_does_not_change_another_cache_level(
    cards: list[dict[str, Any]],
) -> None:
    dictionary = train_dictionary(cards[:200], size=8192)
    fast = CompressedCache(MemoryStore(), dictionary=dictionary, level=1)
    tight = CompressedCache(MemoryStore(), dictionary=dictionary, level=19)
    for i, value in enumerate(cards[200:]):
        fast.set_sync(str(i), value)  # were the dictionary shared, both would use level 19
        tight.set_sync(str(i), value)
    assert tight.stats().bytes_written < fast.stats().bytes_written


def test_compressed_cache_options_are_checked() -> None:
    store = MemoryStore()
    dictionary = train_dictionary(
        [f'{{"n": {i}, "text": "word {i} 사람"}}' for i in range(500)], 1024
    )
    for bad in (
        {"codec": "brotli"},
        {"threshold": -1},
        {"min_saving": 1.0},
        {"level": 99},
        {"codec": "zlib", "dictionary": dictionary},
        {"dictionary": zstandard.ZstdCompressionDict(b"raw content, no id")},
        {"dictionary": "automatic"},
        {"dictionary": b"bytes"},
        {"train_after": 0},
        {"train_after": True},
        {"dictionary_size": 100},
        {"dictionary_size": 2 << 20},
    ):
        with pytest.raises(ValidationError):
            CompressedCache(store, **bad)
    with pytest.raises(ValidationError, match="samples"):
        train_dictionary(["a", "b"], size=16_384)


def test_get_or_compute_works_through_a_compressed_shared_store(
    cards: list[dict[str, Any]],
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CompressedCache(store, clock=clock, ttl=60.0)

    async def main() -> list[Any]:
        compute = asyncio_value(cards[1], 1.0)
        return await asyncio.gather(*(cache.get_or_compute("w", compute) for _ in range(10)))

    assert run_virtual(main(), clock=clock) == [cards[1]] * 10
    assert store.data["w"][0][2] == CODEC_ZSTD
    stats = cache.stats()
    assert stats.computes == 1
    assert stats.compression_ratio > 1.0
    assert stats.bytes_written == len(store.data["w"][0])


# --- metrics ------------------------------------------------------------------------------------
@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[tm.Telemetry]:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    t = tm.configure_opentelemetry(in_memory=True, set_global=False)
    yield t
    t.shutdown()


def metric(t: tm.Telemetry, name: str, cache_name: str) -> dict[str, Any]:
    found = [p for p in t.metrics().get(name, []) if p["attributes"] == {"cache.name": cache_name}]
    assert len(found) == 1, (name, t.metrics().get(name))
    return found[0]


def test_metrics_follow_the_naming_scheme(
    telemetry: tm.Telemetry, cards: list[dict[str, Any]]
) -> None:
    clock = VirtualClock()
    cache = CompressedCache(MemoryStore(clock=clock), clock=clock, name="cards-metrics")
    run_virtual(cache.get_or_compute("w", asyncio_value(cards[2], 2.0)), clock=clock)
    cache.get_sync("w")
    cache.get_sync("missing")
    assert metric(telemetry, "flashkit.cache.hits", "cards-metrics")["value"] == 1
    assert metric(telemetry, "flashkit.cache.misses", "cards-metrics")["value"] == 2
    written = metric(telemetry, "flashkit.cache.bytes", "cards-metrics")["value"]
    assert written == cache.stats().bytes_written > 0
    compute = metric(telemetry, "flashkit.cache.compute_seconds", "cards-metrics")
    assert (compute["count"], compute["sum"]) == (1, pytest.approx(2.0))
    ratio = metric(telemetry, "flashkit.cache.compression_ratio", "cards-metrics")
    assert ratio["count"] == 1
    assert ratio["sum"] > 1.0


# --- dictionary="auto" --------------------------------------------------------------------------
ZDICT = "__flashkit_zdict__"


def header_dictionary(data: bytes) -> int:
    """The zstd dictionary id an entry's header names (0: none)."""
    return int.from_bytes(data[4:8], "little")


def payload_ratio(store: Any, keys: list[str], dictionary: Any) -> float:
    """Serialised / stored payload bytes of the entries under ``keys``."""
    decoded = [decode_entry(store.get_sync(k), dictionaries=dictionary) for k in keys]
    return sum(d.raw_size for d in decoded) / sum(d.stored_size for d in decoded)


def test_auto_trains_on_the_first_values_stores_the_dictionary_and_uses_it(
    cards: list[dict[str, Any]],
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CompressedCache(store, clock=clock, namespace="cards", train_after=200)
    assert "dictionary='auto'" in repr(cache)
    for i, value in enumerate(cards[:200]):
        cache.set_sync(str(i), value)
    before = cache.stats()
    for i, value in enumerate(cards[200:], 200):
        cache.set_sync(str(i), value)
    after = cache.stats()
    ids = [header_dictionary(store.data[f"cards:{i}"][0]) for i in range(len(cards))]
    assert set(ids[:200]) == {0}  # the first train_after values: plain zstd
    trained = ids[200]
    assert trained
    assert set(ids[200:]) == {trained}
    assert f"dictionary_id={trained}" in repr(cache)
    key = f"cards:{ZDICT}:{trained}"
    assert [k for k in store.data if ZDICT in k] == [key]
    blob, expires = store.data[key]
    assert expires == math.inf  # no TTL
    dictionary = zstandard.ZstdCompressionDict(blob)
    assert dictionary.dict_id() == trained
    # the dictionary's write is in no stats
    assert (after.sets, after.hits, after.misses, after.errors) == (len(cards), 0, 0, 0)
    assert after.bytes_written == sum(len(store.data[f"cards:{i}"][0]) for i in range(len(cards)))
    assert [cache.get_sync(str(i)) for i in range(len(cards))] == cards
    # much better than plain zstd, and than zlib, on values like those it trained on
    known = {trained: dictionary}
    plain = payload_ratio(store, [f"cards:{i}" for i in range(200)], known)
    with_dictionary = payload_ratio(store, [f"cards:{i}" for i in range(200, len(cards))], known)
    zlib_cache = CompressedCache(MemoryStore(), codec="zlib")
    for i, value in enumerate(cards[200:]):
        zlib_cache.set_sync(str(i), value)
    assert before.compression_ratio == pytest.approx(plain)
    assert with_dictionary > 2 * zlib_cache.stats().compression_ratio
    assert with_dictionary > 2 * plain
    # the same from the stats: serialised and stored bytes (bytes written less the headers)
    stored = [s.bytes_written - HEADER_SIZE * s.sets for s in (before, after)]
    raw = [s.compression_ratio * size for s, size in zip((before, after), stored, strict=True)]
    assert (raw[1] - raw[0]) / (stored[1] - stored[0]) == pytest.approx(with_dictionary)


def test_auto_needs_zstd_and_the_threshold(cards: list[dict[str, Any]]) -> None:
    for options in ({"codec": "zlib"}, {"codec": "lz4"}, {"dictionary": None}):
        store = MemoryStore()
        cache = CompressedCache(store, train_after=20, **options)  # type: ignore[arg-type]
        for i, value in enumerate(cards[:40]):
            cache.set_sync(str(i), value)
        assert not [k for k in store._data if ZDICT in k], options
        assert {header_dictionary(store.get_sync(str(i))) for i in range(40)} == {0}
    small = CompressedCache(MemoryStore(), train_after=5)
    for i in range(50):
        small.set_sync(str(i), {"n": i})  # under the threshold: stored as is, not sampled
    assert small._learner is not None
    assert small._learner.seen == 0


@pytest.mark.parametrize("kind", ["memory", "shared", "sqlite"])
def test_a_fresh_cache_reads_entries_written_with_another_caches_dictionary(
    kind: str, cards: list[dict[str, Any]], tmp_path: Path, no_pickle: list[Any]
) -> None:
    clock = VirtualClock()
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    store = SQLStore(url, clock=clock) if kind == "sqlite" else make_store(kind, clock)
    writer = CompressedCache(store, clock=clock, namespace="ns", train_after=200)

    async def write() -> None:  # the async flow trains and stores the dictionary too
        for i, value in enumerate(cards):
            await writer.set(str(i), value)

    run_virtual(write(), clock=clock)
    trained = writer._squeezer[0]
    assert trained
    # another process: its own store object over the same data, a cache that never trains
    key = f"ns:{ZDICT}:{trained}"
    reads = store.reads.get(key, 0) if kind == "shared" else 0
    other = SQLStore(url, clock=clock) if kind == "sqlite" else store
    reader = CompressedCache(other, clock=clock, namespace="ns", train_after=10**9)
    assert reader._dictionaries == {}
    assert [reader.get_sync(str(i)) for i in range(0, len(cards), 2)] == cards[::2]

    async def read() -> list[Any]:
        return [await reader.get(str(i)) for i in range(1, len(cards), 2)]

    assert run_virtual(read(), clock=clock) == cards[1::2]
    assert list(reader._dictionaries) == [trained]
    stats = reader.stats()
    assert (stats.hits, stats.misses, stats.corrupt, stats.errors) == (len(cards), 0, 0, 0)
    assert stats.sets == 0
    if kind == "shared":
        assert store.reads[key] == reads + 1  # looked up once
        assert CacheService(store, clock=clock, namespace="ns").get_sync("250") == cards[250]
    if kind == "sqlite":
        store.close()
        other.close()


def test_a_cache_that_trained_its_own_dictionary_reads_entries_with_older_ones(
    cards: list[dict[str, Any]],
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    first = CompressedCache(store, clock=clock, train_after=150)
    second = CompressedCache(store, clock=clock, train_after=150)
    for i, value in enumerate(cards[:150]):
        first.set_sync(f"a{i}", value)
    for i, value in enumerate(cards[100:]):
        second.set_sync(f"b{i}", value)
    for i, value in enumerate(cards[150:]):
        first.set_sync(f"a{i + 150}", value)
    one, two = first._squeezer[0], second._squeezer[0]
    assert one
    assert two
    assert one != two
    assert header_dictionary(store.data["a200"][0]) == one
    assert header_dictionary(store.data["b160"][0]) == two
    assert sorted(k for k in store.data if ZDICT in k) == sorted(
        [f"{ZDICT}:{one}", f"{ZDICT}:{two}"]
    )
    for cache in (first, second, CompressedCache(store, clock=clock)):  # all coexist
        assert cache.get_sync("a200") == cards[200]
        assert cache.get_sync("b160") == cards[260]
        assert cache.stats().corrupt == 0
    first.set_sync("a0", cards[0])  # rewritten with its own dictionary, not the other's
    assert header_dictionary(store.data["a0"][0]) == one


def bad_dictionary(case: str, good: bytes, other: bytes) -> bytes | None:
    if case == "garbage":
        return b"not a dictionary at all" * 10
    if case == "another id":
        return other
    if case == "truncated":  # header and tables whole: zstd loads it, then cannot decompress
        return good[: len(good) // 3]
    if case == "tables broken":  # the magic and id kept, the entropy tables overwritten
        return good[:8] + b"\xff" * 64 + good[72:]
    return None  # missing


@pytest.mark.parametrize("case", ["missing", "garbage", "another id", "truncated", "tables broken"])
def test_a_missing_or_corrupt_dictionary_makes_its_entries_misses_logged_once(
    case: str, cards: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, no_pickle: list[Any]
) -> None:
    clock = VirtualClock()
    store = DictStore(clock)
    writer = CompressedCache(store, clock=clock, train_after=150)
    for i, value in enumerate(cards):
        writer.set_sync(str(i), value)
    trained = writer._squeezer[0]
    key = f"{ZDICT}:{trained}"
    good = store.data[key][0]
    other = train_dictionary(cards[100:250], size=8192).as_bytes()
    bad = bad_dictionary(case, good, other)
    if bad is None:
        del store.data[key]
    else:
        store.data[key] = (bad, math.inf)
    reader = CompressedCache(store, clock=clock, name="reader")
    reads = store.reads[key]
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    for _ in range(3):
        assert reader.get_sync("200") is None
        assert run_virtual(reader.get("201"), clock=clock) is None
    assert reader.get_sync("0") == cards[0]  # written before training: no dictionary
    stats = reader.stats()
    assert (stats.misses, stats.corrupt, stats.hits, stats.errors) == (6, 6, 1, 0)
    logged = [r.getMessage() for r in caplog.records if r.name == "flashkit.cache"]
    keys = [m.split("key ")[1].split(":")[0] for m in logged]
    assert len(keys) == len(set(keys))  # once per key
    rejected = case not in ("missing", "truncated")  # the dictionary's own log line
    assert sorted(keys) == sorted(["'200'", "'201'"] + ([f"'{ZDICT}"] if rejected else []))
    reason = "decompression failed" if case == "truncated" else f"dictionary id {trained}"
    assert all(reason in m for m in logged if "key '20" in m)
    assert store.reads[key] == reads + 1  # looked up once, the answer kept
    if case == "truncated":
        return
    # a bounded retry: 60 s later (cache clock) it is looked up again, and now found
    store.data[key] = (good, math.inf)
    clock.advance(59.0)
    assert reader.get_sync("200") is None
    clock.advance(1.0)
    assert reader.get_sync("200") == cards[200]
    assert run_virtual(reader.get("201"), clock=clock) == cards[201]
    assert store.reads[key] == reads + 2
    # get_or_compute over an unreadable entry recomputes, and the new entry reads back
    store.data[key] = (b"garbage" * 10, math.inf)
    fresh = CompressedCache(store, clock=clock, train_after=10**9)
    assert fresh.get_or_compute_sync("202", lambda: {"new": 1}) == {"new": 1}
    assert fresh.get_sync("202") == {"new": 1}


@pytest.mark.parametrize("kind", ["memory", "shared"])
@pytest.mark.parametrize("key", [f"{ZDICT}:123", f"x{ZDICT}", ZDICT])
def test_keys_with_the_dictionary_marker_are_refused(kind: str, key: str) -> None:
    clock = VirtualClock()
    store = make_store(kind, clock)
    for cache in (
        CacheService(store, clock=clock),
        CompressedCache(store, clock=clock, namespace="ns"),
    ):
        store.set_sync(cache._prefix + key, b"a dictionary")
        with pytest.raises(ValidationError, match="reserved"):
            cache.get_sync(key)
        with pytest.raises(ValidationError, match="reserved"):
            run_virtual(cache.get(key), clock=clock)
        with pytest.raises(ValidationError, match="reserved"):
            cache.set_sync(key, 1)
        with pytest.raises(ValidationError, match="reserved"):
            cache.delete_sync(key)
        with pytest.raises(ValidationError, match="reserved"):
            cache.get_or_compute_sync(key, lambda: 1)
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.sets, stats.deletes, stats.corrupt) == (0,) * 5
        assert store.get_sync(cache._prefix + key) == b"a dictionary"


def test_the_sample_buffer_stays_within_its_memory_bound() -> None:
    cache = CompressedCache(MemoryStore(), train_after=10**9)
    assert CompressedCache.AUTO_SAMPLE_BYTES == 4 * 1024 * 1024
    rng = random.Random(3)
    words = [f"word{i}" for i in range(500)]
    for i in range(100):  # 100 values of ~100 KB: 10 MB offered, 64 KiB of each kept
        cache.set_sync(str(i), " ".join(rng.choices(words, k=14_000)))
    learner = cache._learner
    assert learner is not None
    assert learner.seen == 100
    assert learner.size == sum(map(len, learner.samples)) <= CompressedCache.AUTO_SAMPLE_BYTES
    assert max(map(len, learner.samples)) == 64 * 1024
    assert len(learner.samples) == 64


def test_a_training_that_fails_is_logged_once_and_the_cache_goes_on_without(
    cards: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    class Tight(CompressedCache):
        AUTO_SAMPLE_BYTES = 10_000  # room for 4 cards: too few to train on

    store = MemoryStore()
    cache = Tight(store, train_after=50)
    caplog.set_level(logging.WARNING, logger="flashkit.cache")
    for i, value in enumerate(cards[:100]):
        cache.set_sync(str(i), value)
        learner = cache._learner
        assert learner is None or learner.size <= 10_000
    assert cache._learner is None
    assert {header_dictionary(store.get_sync(str(i))) for i in range(100)} == {0}
    assert [cache.get_sync(str(i)) for i in range(100)] == cards[:100]
    assert len(caplog.records) == 1
    assert "no zstd dictionary" in caplog.records[0].getMessage()


def test_training_runs_once_and_a_failed_dictionary_write_is_retried_later(
    cards: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flashkit.cache._compressed as compressed

    trainings: list[int] = []

    def counting(samples: Any, size: int = 16_384, **options: Any) -> Any:
        trainings.append(len(samples))
        return train_dictionary(samples, size, **options)

    monkeypatch.setattr(compressed, "train_dictionary", counting)
    clock = VirtualClock()
    store = DictStore(clock)
    cache = CompressedCache(store, clock=clock, train_after=100)
    for i, value in enumerate(cards[:99]):
        cache.set_sync(str(i), value)
    store.fail = True
    cache.set_sync("99", cards[99])  # the 100th: trains, but neither it nor the dictionary lands
    store.fail = False
    assert trainings == [100]
    assert not [k for k in store.data if ZDICT in k]
    cache.set_sync("100", cards[100])
    clock.advance(59.0)
    cache.set_sync("101", cards[101])
    assert not [k for k in store.data if ZDICT in k]  # not retried before 60 s
    clock.advance(1.0)
    cache.set_sync("102", cards[102])  # written again after this value
    cache.set_sync("103", cards[103])
    trained = cache._squeezer[0]
    assert [k for k in store.data if ZDICT in k] == [f"{ZDICT}:{trained}"]
    ids = [header_dictionary(store.data[str(i)][0]) for i in range(100, 104)]
    assert ids == [0, 0, 0, trained]
    for i, value in enumerate(cards[104:200], 104):
        cache.set_sync(str(i), value)
    assert trainings == [100]  # once
    assert cache.stats().errors == 2  # the entry and the dictionary's lookup
