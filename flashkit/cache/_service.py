"""The cache service: JSON values under string keys over any :class:`~flashkit.cache.Store`,
with TTL jitter, single flight, early refresh (XFetch) and metrics.

>>> cache = CacheService(MemoryStore(), ttl=3600.0, namespace="cards")
>>> cards = await cache.get_or_compute(word, lambda: make_cards(word))   # one call per word

Times are seconds on the cache's clock. Values, failures, dictionaries, stampedes and metrics:
``docs/design/cache.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, NamedTuple, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from flashkit.cache._base import MemoryStore, Store, check_ttl
from flashkit.cache._flight import (
    _XFETCH_REACH,
    _Compute,
    _Entry,
    _Flight,
    _Flow,
    _SingleFlight,
    _Store,
)
from flashkit.cache._format import (
    CODEC_NONE,
    DICTIONARY_MARKER,
    MAX_VALUE_BYTES,
    SERIALIZERS,
    _Corrupt,
    _UnknownDictionary,
    decode_entry,
    dictionary_key,
    dumps,
    encode_entry,
    load_dictionary,
    load_msgpack,
)
from flashkit.clock import Clock
from flashkit.errors import ValidationError
from flashkit.telemetry import _SECONDS_BUCKETS, current_telemetry, get_meter

__all__ = [
    "CACHE_BYTES",
    "CACHE_COMPRESSION_RATIO",
    "CACHE_COMPUTE_SECONDS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CacheService",
    "CacheStats",
]

T = TypeVar("T")
logger = logging.getLogger("flashkit.cache")

CACHE_HITS: Final = "flashkit.cache.hits"
CACHE_MISSES: Final = "flashkit.cache.misses"
CACHE_BYTES: Final = "flashkit.cache.bytes"
CACHE_COMPRESSION_RATIO: Final = "flashkit.cache.compression_ratio"
CACHE_COMPUTE_SECONDS: Final = "flashkit.cache.compute_seconds"

_RATIO_BUCKETS: Final = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0)
_LOGGED_KEYS: Final = 1024  # keys remembered as already logged
_LOOKUP_AGAIN: Final = 60.0  # s (cache clock) before a missing dictionary is looked up again
_MISSING_KEPT: Final = 256  # missing dictionary ids remembered
_FETCHED_MAX: Final = 64  # dictionaries a cache loads from its store, at most


class _LookUp(Exception):
    """An entry names a zstd dictionary to look up in the store before it can be decoded."""

    def __init__(self, dictionary_id: int) -> None:
        super().__init__(dictionary_id)
        self.dictionary_id = dictionary_id


class _Put(NamedTuple):
    """A prepared store write: ``value`` an _Entry or encoded bytes; sizes 0 for an _Entry."""

    value: Any
    ttl: float | None
    raw: int  # serialised bytes
    stored: int  # payload bytes as stored


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStats:
    """Counts since the cache was built. ``bytes_written``/``bytes_read``: encoded entries (0
    for values kept as objects in memory); ``compression_ratio``: serialised bytes / stored
    payload bytes over all encoded writes (1.0 when none); ``compute_seconds``: total on the
    cache clock; ``hit_rate``: hits / (hits + misses). Exact within one thread or event loop;
    counts from racing threads may occasionally be lost."""

    hits: int
    misses: int
    sets: int
    deletes: int
    computes: int
    errors: int
    corrupt: int
    bytes_written: int
    bytes_read: int
    compression_ratio: float
    compute_seconds: float
    hit_rate: float


# --- metrics ------------------------------------------------------------------------------------
_caches: dict[str, weakref.ref[CacheService]] = {}
_meters: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
_meters_lock = threading.Lock()
try:
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _IDLE_PROVIDERS: tuple[type, ...] = (_ProxyMeterProvider, metrics.NoOpMeterProvider)
except ImportError:  # pragma: no cover - a future API without the private class
    _IDLE_PROVIDERS = (metrics.NoOpMeterProvider,)


def _observe(field: str) -> Iterable[Observation]:
    found = []
    for name, ref in list(_caches.items()):
        cache = ref()
        if cache is None:
            _caches.pop(name, None)
        else:
            found.append(Observation(getattr(cache, field), {"cache.name": name}))
    return found


_OBSERVED: Final = (  # observable counters: name, CacheService field, unit, description
    (CACHE_HITS, "_hits", "{hit}", "Cache hits"),
    (CACHE_MISSES, "_misses", "{miss}", "Cache misses, unreadable entries included"),
    (CACHE_BYTES, "_bytes_written", "By", "Encoded bytes a cache wrote"),
)


class _Instruments:
    """The cache instruments of one meter, made once (a second creation only warns)."""

    def __init__(self, meter: Meter) -> None:
        def observer(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: _observe(field)

        for name, field, unit, description in _OBSERVED:
            meter.create_observable_counter(name, [observer(field)], unit, description)
        self.compute = meter.create_histogram(
            CACHE_COMPUTE_SECONDS,
            "s",
            "Time to compute a missing value",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.ratio = meter.create_histogram(
            CACHE_COMPRESSION_RATIO,
            "1",
            "Serialised / stored size of a written entry",
            explicit_bucket_boundaries_advisory=_RATIO_BUCKETS,
        )


def _instruments() -> _Instruments | None:
    """The current meter's cache instruments, or None while telemetry is off (cheap)."""
    if current_telemetry() is None and isinstance(metrics.get_meter_provider(), _IDLE_PROVIDERS):
        return None
    meter = get_meter()
    with _meters_lock:
        found = _meters.get(meter)
        if found is None:
            found = _meters[meter] = _Instruments(meter)
        return found


# --- the service --------------------------------------------------------------------------------
class CacheService(_SingleFlight):
    """A cache over ``store`` (a :class:`~flashkit.cache.Store`).

    Args:
        ttl: default seconds to live (None: no expiry), jittered uniformly within
            ``ttl·(1 ± ttl_jitter)`` (default 0.1; in [0, 1)) so keys set together do not
            expire together.
        serializer: ``"json"`` (default) or ``"msgpack"`` (needs ``flashkit[cache]``).
        namespace: prefixes keys as ``namespace:key`` (default none).
        clock: the time base of expiries (default: the store's; a shared store needs one that
            processes share, such as :class:`~flashkit.clock.WallClock`).
        rng: a :class:`random.Random` for jitter and early refresh (seed it for repeatable runs).
        beta: XFetch's eagerness (default 1.0; larger refreshes earlier; 0 never early).
        lock_ttl: seconds a fleet-wide compute lock lasts and others wait for it (default 10.0).
        name: the ``cache.name`` of its metrics and log lines (default ``"cache"``).
        single_flight, early_refresh: stampede protections (both on by default; off only for
            experiments).
    """

    _always_encode = False  # CompressedCache: encoded bytes in every store

    def __init__(
        self,
        store: Store,
        *,
        ttl: float | None = None,
        ttl_jitter: float = 0.1,
        serializer: str = "json",
        namespace: str = "",
        clock: Clock | None = None,
        rng: random.Random | None = None,
        beta: float = 1.0,
        lock_ttl: float = 10.0,
        name: str = "cache",
        single_flight: bool = True,
        early_refresh: bool = True,
    ) -> None:
        cls = type(self).__name__
        if not isinstance(store, Store):
            raise TypeError(f"{cls}(store={store!r}): not a flashkit.cache.Store")
        self.ttl = check_ttl(ttl, cls)
        self.ttl_jitter = _fraction(ttl_jitter, f"{cls}(ttl_jitter=...)", "ttl_jitter")
        if serializer not in SERIALIZERS:
            raise _invalid(
                f"{cls}(serializer={serializer!r}): use 'json' or 'msgpack'", "serializer"
            )
        if serializer == "msgpack":
            load_msgpack()
        if not isinstance(namespace, str) or not isinstance(name, str) or not name:
            raise _invalid(f"{cls}: namespace and name must be str (name non-empty)", "name")
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < math.inf:
            raise _invalid(f"{cls}(beta={beta!r}): must be a number >= 0, e.g. 1.0", "beta")
        self.lock_ttl = check_ttl(lock_ttl, f"{cls}(lock_ttl=...)") or 10.0
        self.store = store
        self.serializer = serializer
        self.namespace = namespace
        self.clock: Clock = clock if clock is not None else store.clock
        self.beta = float(beta)
        self.name = name
        self.single_flight = bool(single_flight)
        self.early_refresh = bool(early_refresh) and self.beta > 0
        self._rng = rng if rng is not None else random.Random()
        self._serial = SERIALIZERS[serializer]
        self._prefix = f"{namespace}:" if namespace else ""
        self._now = self.clock.now
        self._reach = self.beta * _XFETCH_REACH
        self._shared = bool(store.shared)
        self._direct = not self._shared and not self._always_encode  # values kept as _Entry
        self._get_sync = store.get_sync  # the hit path reads through the sync twin, and so
        self._sync_reads = type(store) is MemoryStore  # does `get` over a store that never waits
        # The MemoryStore drops entries at their expiry on the same clock: no second check.
        self._store_expires = type(store) is MemoryStore and self.clock is store.clock
        self._dictionaries: dict[int, Any] = {}  # zstd dictionaries by id
        self._missing: dict[int, float] = {}  # dictionary id -> when to look it up again
        self._fetched = 0  # dictionaries loaded from the store
        self._guard = threading.Lock()
        self._flights: dict[Any, _Flight] = {}
        self._logged: dict[str, None] = {}
        self._hits = self._misses = self._sets = self._deletes = self._computes = 0
        self._errors = self._corrupt = self._bytes_written = self._bytes_read = 0
        self._raw_written = self._stored_written = 0
        self._compute_seconds = 0.0
        _caches[name] = weakref.ref(self)
        _instruments()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r}, name={self.name!r}, ttl={self.ttl!r})"

    # --- the API ------------------------------------------------------------------------------
    def get_sync(self, key: str) -> Any:
        """The value under ``key``, or None (missing, expired or unreadable). From an in-process
        store, the stored object itself: do not mutate it."""
        # The hit path of an in-process store: no decode, no logging, no metrics. Anything
        # else (bytes, None, a bad key) takes the slow path below.
        try:
            found = self._get_sync(self._prefix + key)
        except Exception as error:  # also the TypeError of a key that is not a str
            found = self._read_failed(self._key(key), error)
        if found.__class__ is _Entry and (self._store_expires or self._now() < found.expires):
            self._hits += 1
            return found.value
        full = self._key(key)
        try:
            entry = self._accept(full, found)
        except _LookUp as look_up:
            self._run_sync(self._fetch_dictionary(look_up.dictionary_id))
            entry = self._accept(full, found)
        return None if entry is None else entry.value

    async def get(self, key: str) -> Any:
        """The value under ``key``, or None (missing, expired or unreadable); see
        :meth:`get_sync`."""
        if self._sync_reads:
            return self.get_sync(key)
        return await self._run_async(self._get(self._key(key)))

    def set_sync(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's), jittered.
        A store error is logged and counted, not raised."""
        self._run_sync(self._set(self._key(key), value, ttl, 0.0))

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's), jittered.
        A store error is logged and counted, not raised."""
        await self._run_async(self._set(self._key(key), value, ttl, 0.0))

    def delete_sync(self, key: str) -> bool:
        """Remove ``key``; whether it was there (False also when the store failed)."""
        return self._run_sync(self._delete(self._key(key)))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there (False also when the store failed)."""
        return await self._run_async(self._delete(self._key(key)))

    def get_or_compute_sync(
        self, key: str, compute: Callable[[], T], ttl: float | None = None
    ) -> T:
        """:meth:`get_or_compute`'s blocking twin: the value under ``key``, else ``compute()``'s;
        threads computing one key wait for one computation."""
        result: T = self._run_sync(self._get_or_compute(self._key(key), compute, ttl))
        return result

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[T]], ttl: float | None = None
    ) -> T:
        """The value under ``key``, else ``await compute()``'s, stored for ``ttl`` seconds
        (default: the cache's). One computation per key at a time; a hit may refresh early
        (XFetch). ``compute``'s errors propagate and nothing is cached for them."""
        result: T = await self._run_async(self._get_or_compute(self._key(key), compute, ttl))
        return result

    # --- reads and writes ---------------------------------------------------------------------
    def _get(self, full: str) -> _Flow[Any]:
        entry = yield from self._lookup(full)
        return None if entry is None else entry.value

    def _lookup(self, full: str, *, count: bool = True) -> _Flow[_Entry | None]:
        """The live entry under ``full``, or None; counts the hit or miss if ``count``."""
        try:
            found = yield _Store("get", (full,))
        except Exception as error:
            found = self._read_failed(full, error)
        try:
            return self._accept(full, found, count=count)
        except _LookUp as look_up:
            yield from self._fetch_dictionary(look_up.dictionary_id)
        return self._accept(full, found, count=count)

    def _accept(self, full: str, found: Any, *, count: bool = True) -> _Entry | None:
        """The live entry in what the store returned, or None; :class:`_LookUp` (counting
        nothing) when it needs a zstd dictionary to look up in the store first."""
        if found is None:
            entry = None
        elif found.__class__ is _Entry:
            entry = found
        else:
            entry = self._decode(full, found)
        if entry is not None and not self._now() < entry.expires:
            entry = None
        if count:
            if entry is None:
                self._misses += 1
            else:
                self._hits += 1
        return entry

    def _decode(self, full: str, data: Any) -> _Entry | None:
        try:
            decoded = decode_entry(data, dictionaries=self._dictionaries)
        except _Corrupt as corrupt:
            if isinstance(corrupt, _UnknownDictionary) and self._may_look_up(corrupt.dictionary_id):
                raise _LookUp(corrupt.dictionary_id) from None
            self._corrupt += 1
            self._log_once(full, f"unreadable entry ({corrupt.reason}); a miss")
            return None
        self._bytes_read += len(data)
        return _Entry(decoded.value, decoded.expires, decoded.delta)

    def _may_look_up(self, dictionary_id: int) -> bool:
        """Whether to look zstd dictionary ``dictionary_id`` up in the store now."""
        again = self._missing.get(dictionary_id)
        return again is None or again <= self._now()

    def _fetch_dictionary(self, dictionary_id: int) -> _Flow[None]:
        """Load zstd dictionary ``dictionary_id`` from the store (data, never code: zstd parses
        it and its id must match). Missing or unusable (logged once): its entries stay misses,
        and it is looked up again after 60 s. Counted in no stats but ``errors``."""
        key = dictionary_key(self._prefix, dictionary_id)
        with self._guard:
            self._missing[dictionary_id] = self._now() + _LOOKUP_AGAIN  # until found
            if len(self._missing) > _MISSING_KEPT:
                del self._missing[next(iter(self._missing))]
        try:
            data = yield _Store("get", (key,))
        except Exception as error:
            self._errors += 1
            self._log_once(key, f"store read failed ({type(error).__name__}: {error})")
            return
        if data is None:
            return  # not (yet) there: the entry's own miss is logged
        if self._fetched >= _FETCHED_MAX:
            self._log_once(key, f"not loaded: this cache has loaded {_FETCHED_MAX} already")
            return
        try:
            dictionary = load_dictionary(data, dictionary_id)
        except _Corrupt as corrupt:
            self._log_once(key, f"unusable zstd dictionary ({corrupt.reason})")
            return
        with self._guard:
            self._fetched += 1
            self._dictionaries[dictionary_id] = dictionary
            self._missing.pop(dictionary_id, None)

    def _read_failed(self, full: str, error: Exception) -> Any:
        """Count and log a store error on read; what was found: nothing (None)."""
        self._errors += 1
        self._log_once(full, f"store read failed ({type(error).__name__}: {error}); a miss")
        return None

    def _set(self, full: str, value: Any, ttl: float | None, delta: float) -> _Flow[None]:
        put = self._prepare(full, value, ttl, delta)
        try:
            yield _Store("set", (full, put.value, put.ttl))
        except Exception as error:
            self._write_failed(full, error)
            return
        self._sets += 1
        if put.raw:
            self._bytes_written += len(put.value)
            self._raw_written += put.raw
            self._stored_written += put.stored
            instruments = _instruments()
            if instruments is not None:
                instruments.ratio.record(put.raw / max(put.stored, 1), {"cache.name": self.name})

    def _delete(self, full: str) -> _Flow[bool]:
        try:
            removed = yield _Store("delete", (full,))
        except Exception as error:
            self._write_failed(full, error)
            return False
        self._deletes += 1
        return bool(removed)

    def _write_failed(self, full: str, error: Exception) -> None:
        self._errors += 1
        self._log_once(full, f"store write failed ({type(error).__name__}: {error}); skipped")

    def _prepare(self, full: str, value: Any, ttl: float | None, delta: float) -> _Put:
        """The store write for ``value``: validated, expiry jittered, encoded unless direct."""
        seconds = self._ttl(ttl)
        expires = self._now() + seconds if seconds is not None else math.inf
        store_ttl = seconds if seconds is not None and seconds < math.inf else None
        body = self._dumps(full, value)
        if self._direct:
            return _Put(_Entry(value, expires, delta), store_ttl, 0, 0)
        codec, dictionary_id, payload = self._compress(body)
        data = encode_entry(
            payload,
            expires=expires,
            delta=delta,
            codec=codec,
            serializer=self._serial,
            dictionary_id=dictionary_id,
        )
        return _Put(data, store_ttl, len(body), len(payload))

    def _dumps(self, full: str, value: Any) -> bytes:
        try:
            body = dumps(value, self._serial)
        except (TypeError, ValueError, OverflowError, RecursionError) as error:
            raise _invalid(
                f"{type(self).__name__}.set({full!r}): a value of type {type(value).__name__} "
                f"cannot be stored as {self.serializer} ({error})",
                "value",
            ) from error
        if len(body) > MAX_VALUE_BYTES:
            raise _invalid(f"{type(self).__name__}.set({full!r}): over 64 MiB serialised", "value")
        return body

    def _compress(self, body: bytes) -> tuple[int, int, bytes]:
        """(codec id, dictionary id, payload) for a serialised value: CompressedCache's job."""
        return CODEC_NONE, 0, body

    def _ttl(self, ttl: float | None) -> float | None:
        seconds = self.ttl if ttl is None else check_ttl(ttl, f"{type(self).__name__}.set")
        if seconds is None or not self.ttl_jitter or seconds == math.inf:
            return seconds
        jitter = self.ttl_jitter
        return seconds * (1.0 - jitter + 2.0 * jitter * self._rng.random())

    def _compute_store(
        self, full: str, compute: Callable[[], Any], ttl: float | None
    ) -> _Flow[Any]:
        start = self._now()
        value = yield _Compute(compute)
        delta = max(0.0, self._now() - start)
        self._computes += 1
        self._compute_seconds += delta
        instruments = _instruments()
        if instruments is not None:
            instruments.compute.record(delta, {"cache.name": self.name})
        yield from self._set(full, value, ttl, delta)
        return value

    # --- bookkeeping --------------------------------------------------------------------------
    def _key(self, key: Any) -> str:
        if not isinstance(key, str) or not key:
            raise _invalid(f"{type(self).__name__}: keys are non-empty str, got {key!r:.80}", "key")
        if DICTIONARY_MARKER in key:
            raise _invalid(
                f"{type(self).__name__}: keys containing {DICTIONARY_MARKER!r} are reserved for "
                f"zstd dictionaries, got {key!r:.80}",
                "key",
            )
        return self._prefix + key

    def _log_once(self, full: str, message: str) -> None:
        with self._guard:
            if full in self._logged:
                return
            self._logged[full] = None
            if len(self._logged) > _LOGGED_KEYS:
                del self._logged[next(iter(self._logged))]
        logger.warning("cache %r, key %r: %s", self.name, full, message)

    def stats(self) -> CacheStats:
        """Counts since the cache was built (see :class:`CacheStats`)."""
        looked = self._hits + self._misses
        stored = self._stored_written
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            deletes=self._deletes,
            computes=self._computes,
            errors=self._errors,
            corrupt=self._corrupt,
            bytes_written=self._bytes_written,
            bytes_read=self._bytes_read,
            compression_ratio=self._raw_written / stored if stored else 1.0,
            compute_seconds=self._compute_seconds,
            hit_rate=self._hits / looked if looked else 0.0,
        )


def _invalid(message: str, field: str) -> ValidationError:
    return ValidationError(message, code="invalid_config", details={"field": field})


def _fraction(value: float, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise _invalid(f"{where}: must be a fraction in [0, 1), e.g. 0.1", field)
    return float(value)
