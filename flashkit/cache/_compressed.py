"""A cache that stores compressed entries in every store, with a zstd dictionary it trains itself.

>>> cache = CompressedCache(store, ttl=86400.0)          # zstd-3, dictionary="auto"
>>> cache = CompressedCache(store, dictionary=train_dictionary(sample_cards))  # or bring one

Each entry records its codec and zstd dictionary id (:mod:`._format`), and decoding looks both up
by id: after a change of codec or dictionary, entries written before stay readable. A dictionary
this cache does not hold is looked up in the store (see :class:`~flashkit.cache.CacheService`);
one found nowhere makes its entries misses (logged once per key).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, Literal

import zstandard

from flashkit.cache._base import Store
from flashkit.cache._flight import _Flow, _Store
from flashkit.cache._format import (
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZLIB,
    CODEC_ZSTD,
    CODECS,
    DICTIONARY_MARKER,
    MAX_DICTIONARY_BYTES,
    SERIALIZERS,
    dictionary_key,
    dumps,
    load_lz4,
)
from flashkit.cache._service import CacheService, _fraction, _invalid
from flashkit.errors import ValidationError

__all__ = ["CompressedCache", "train_dictionary"]

_DEFAULT_LEVELS: Final = {CODEC_ZLIB: 6, CODEC_ZSTD: 3}
_SAMPLE_CLIP: Final = 64 * 1024  # bytes of one value kept as a training sample, at most
_PUBLISH_AGAIN: Final = 60.0  # s (cache clock) before a failed dictionary write is retried


class _Learner:
    """The progress of ``dictionary="auto"``: the first ``wanted`` values compressed (each cut to
    64 KiB; kept while they fit in ``budget`` bytes), then the trained dictionary while it waits
    to be written to the store. Thread-safe."""

    def __init__(self, wanted: int, budget: int) -> None:
        self.wanted, self.budget = wanted, budget
        self.lock = threading.Lock()
        self.sampling = True  # read without the lock as a hint; add() checks again
        self.samples: list[bytes] = []
        self.size = 0  # bytes in samples
        self.seen = 0  # values offered
        self.ready = False  # samples complete and not yet taken
        self.pending: zstandard.ZstdCompressionDict | None = None  # trained, to write
        self.retry_at = math.inf  # when to write ``pending`` again (cache clock, s)

    def add(self, body: bytes) -> None:
        with self.lock:
            if not self.sampling:
                return
            self.seen += 1
            sample = body[:_SAMPLE_CLIP]  # the same object when shorter
            if self.size + len(sample) <= self.budget:
                self.samples.append(sample)
                self.size += len(sample)
            if self.seen >= self.wanted:
                self.sampling, self.ready = False, True

    def job(self, now: float) -> list[bytes] | zstandard.ZstdCompressionDict | None:
        """The samples to train on (once), or a dictionary whose write is due again, or None."""
        with self.lock:
            if self.ready:
                samples, self.samples, self.size, self.ready = self.samples, [], 0, False
                return samples
            if self.pending is not None and now >= self.retry_at:
                pending, self.pending = self.pending, None
                return pending
            return None

    def later(self, dictionary: zstandard.ZstdCompressionDict, when: float) -> None:
        with self.lock:
            self.pending, self.retry_at = dictionary, when


class CompressedCache(CacheService):
    """A :class:`CacheService` whose entries are compressed bytes, also in a
    :class:`~flashkit.cache.MemoryStore` (the point is the memory saved; each hit decodes).

    Args:
        codec: ``"zstd"`` (default), ``"zlib"``, ``"lz4"`` (needs ``flashkit[cache]``) or
            ``"none"``.
        threshold: values whose serialised form is under this many bytes are stored
            uncompressed (default :attr:`COMPRESSION_THRESHOLD`, 1024).
        level: compression level (default: zstd 3, zlib 6; lz4: its fast mode, or high-
            compression mode at this level).
        dictionary: ``"auto"`` (default; zstd only, no dictionary for other codecs), None (no
            dictionary), or a zstd dictionary from :func:`train_dictionary`.
        dictionaries: more zstd dictionaries to *read* entries written with (older ones).
        train_after: with ``"auto"``, how many values (of at least ``threshold`` bytes) to
            sample before training (default 1,000).
        dictionary_size: with ``"auto"``, the dictionary's size in bytes (default 16 KiB).
        min_saving: compress only when it saves at least this fraction (default 0.10).
        **options: :class:`CacheService`'s (``ttl``, ``ttl_jitter`` (0.1), ``serializer``, …).

    **dictionary="auto"**: the first ``train_after`` values are stored with plain zstd while
    kept as samples (at most :attr:`AUTO_SAMPLE_BYTES`, 4 MiB; each cut to 64 KiB). The write
    that completes them trains a dictionary on them, synchronously, in that writer (about 0.1 s
    for 1,000 values of 2–3 KB: once per cache, but it holds up that one ``set``, and an event
    loop when awaited), writes it to the store under ``"{namespace}:__flashkit_zdict__:{id}"``
    (no TTL, so in a MemoryStore its LRU may drop it), then compresses every later value with
    it. Other caches and processes read those entries with the stored dictionary, and each
    process trains its own: entries name theirs, and all coexist. A failed training is logged
    and the cache goes on without a dictionary; a failed write is retried 60 s later.

    Why that default (``python benchmarks/cache.py``: 1,000 flashcard payloads of 2–3 KB from
    the simulator, each compressed on its own, zlib-6 = 1x): plain zstd-3 has 0.93x zlib-6's
    ratio (3.2) in 0.43x its compress + decompress time; this cache, once it has trained itself
    on the first 1,000 values it wrote, has 3.32x its ratio (11.4) in 0.20–0.22x its time,
    through its own compress and decompress code (the target: >= 2.5x at <= 0.25x). The
    simulator's text is templated: expect less on real LLM output. lz4 is 4x faster than plain
    zstd-3 but stores 1.4x the bytes; zstd-9 buys 4 % for 3x the compress time.
    """

    COMPRESSION_THRESHOLD: ClassVar[int] = 1024
    AUTO_SAMPLE_BYTES: ClassVar[int] = 4 * 1024 * 1024
    """Memory the samples of ``dictionary="auto"`` may take, bytes (4 MiB)."""
    _always_encode = True

    def __init__(
        self,
        store: Store,
        *,
        codec: str = "zstd",
        threshold: int = COMPRESSION_THRESHOLD,
        level: int | None = None,
        dictionary: zstandard.ZstdCompressionDict | Literal["auto"] | None = "auto",
        dictionaries: Iterable[zstandard.ZstdCompressionDict] = (),
        train_after: int = 1000,
        dictionary_size: int = 16_384,
        min_saving: float = 0.10,
        **options: Any,
    ) -> None:
        super().__init__(store, **options)
        cls = type(self).__name__
        if codec not in CODECS:
            raise _invalid(f"{cls}(codec={codec!r}): use one of {', '.join(CODECS)}", "codec")
        _check_int(threshold, 0, math.inf, f"{cls}(threshold=...)", "threshold")
        _check_int(train_after, 1, math.inf, f"{cls}(train_after=...)", "train_after")
        size_bounds = (256, MAX_DICTIONARY_BYTES)
        _check_int(dictionary_size, *size_bounds, f"{cls}(dictionary_size=...)", "dictionary_size")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            raise _invalid(f"{cls}(level={level!r}): an int, or None for the default", "level")
        auto = isinstance(dictionary, str)
        if isinstance(dictionary, str):
            if dictionary != "auto":
                _dictionary_id(dictionary, f"{cls}(dictionary=...)")  # raises, saying what to pass
            dictionary = None
        elif dictionary is not None and codec != "zstd":
            raise _invalid(f"{cls}: a dictionary needs codec='zstd', not {codec!r}", "dictionary")
        self.codec = codec
        self.threshold = threshold
        self.train_after = train_after
        self.dictionary_size = dictionary_size
        self.min_saving = _fraction(min_saving, f"{cls}(min_saving=...)", "min_saving")
        self._codec = CODECS[codec]
        self.level = level if level is not None else _DEFAULT_LEVELS.get(self._codec)
        for known in (*dictionaries, *([dictionary] if dictionary is not None else [])):
            self._dictionaries[_dictionary_id(known, cls)] = known
        dictionary_id = 0 if dictionary is None else _dictionary_id(dictionary, cls)
        # (dictionary id, compress): read once per write, so that both always agree.
        self._squeezer = (dictionary_id, self._compressor(dictionary))
        self._learner: _Learner | None = None
        if auto and self._codec == CODEC_ZSTD:
            self._learner = _Learner(train_after, self.AUTO_SAMPLE_BYTES)
        try:
            self._squeezer[1](b"{}")
        except Exception as error:  # zlib.error, ZstdError, lz4's ValueError: a bad level
            raise _invalid(f"{cls}(codec={codec!r}, level={level!r}): {error}", "level") from error

    def __repr__(self) -> str:
        auto = ", dictionary='auto'" if self._learner is not None else ""
        return (
            f"{type(self).__name__}({self.store!r}, codec={self.codec!r}, level={self.level!r}"
            f"{auto}, dictionary_id={self._squeezer[0]}, name={self.name!r})"
        )

    def _compressor(
        self, dictionary: zstandard.ZstdCompressionDict | None
    ) -> Callable[[bytes], bytes]:
        if self._codec == CODEC_ZLIB:
            level = self.level if self.level is not None else 6
            return lambda body: zlib.compress(body, level)
        if self._codec == CODEC_LZ4:
            block = load_lz4()
            if self.level is None:
                return lambda body: bytes(block.compress(body, store_size=True))
            hc = self.level
            return lambda body: bytes(
                block.compress(body, mode="high_compression", compression=hc, store_size=True)
            )
        if self._codec == CODEC_NONE:
            return bytes
        level = self.level if self.level is not None else 3
        own = None
        if dictionary is not None:
            # A copy, precomputed for our level: a precomputed dictionary fixes the level of
            # every compressor using it, whatever level that compressor was given.
            own = zstandard.ZstdCompressionDict(dictionary.as_bytes())
            own.precompute_compress(level=level)
        local = threading.local()  # zstd contexts are not thread-safe: one per thread

        def squeeze(body: bytes) -> bytes:
            compressor = getattr(local, "zstd", None)
            if compressor is None:
                compressor = local.zstd = zstandard.ZstdCompressor(
                    level=level, dict_data=own, write_checksum=False, write_dict_id=False
                )
            packed: bytes = compressor.compress(body)
            return packed

        return squeeze

    def _compress(self, body: bytes) -> tuple[int, int, bytes]:
        if self._codec == CODEC_NONE or len(body) < self.threshold:
            return CODEC_NONE, 0, body
        learner = self._learner
        if learner is not None and learner.sampling:
            learner.add(body)
        dictionary_id, squeeze = self._squeezer
        packed = squeeze(body)
        if len(packed) > len(body) * (1.0 - self.min_saving):
            return CODEC_NONE, 0, body
        return self._codec, dictionary_id, packed

    # --- dictionary="auto" ------------------------------------------------------------------
    def _set(self, full: str, value: Any, ttl: float | None, delta: float) -> _Flow[None]:
        yield from super()._set(full, value, ttl, delta)
        learner = self._learner
        if learner is not None and (learner.ready or learner.pending is not None):
            yield from self._learn(learner)

    def _learn(self, learner: _Learner) -> _Flow[None]:
        """Train on the samples (once), write the dictionary to the store, then use it."""
        job = learner.job(self._now())
        if job is None:
            return
        dictionary = job if isinstance(job, zstandard.ZstdCompressionDict) else self._train(job)
        if dictionary is None:
            self._learner = None  # no dictionary, for good
            return
        written = yield from self._publish(dictionary)
        if written is None:
            self._learner = None
        elif not written:
            learner.later(dictionary, self._now() + _PUBLISH_AGAIN)
        else:
            dictionary_id = int(dictionary.dict_id())
            self._dictionaries[dictionary_id] = dictionary
            self._squeezer = (dictionary_id, self._compressor(dictionary))
            self._learner = None

    def _train(self, samples: list[bytes]) -> zstandard.ZstdCompressionDict | None:
        try:
            return train_dictionary(samples, self.dictionary_size, level=self.level)
        except ValidationError as error:
            self._log_once(
                self._prefix + DICTIONARY_MARKER,
                f"no zstd dictionary: {error}; values stay compressed without one",
            )
            return None

    def _publish(self, dictionary: zstandard.ZstdCompressionDict) -> _Flow[bool | None]:
        """Write ``dictionary`` to the store under its key, with no TTL: True once it is there,
        False after a store error, None when another dictionary holds its id (unusable)."""
        key = dictionary_key(self._prefix, int(dictionary.dict_id()))
        data = dictionary.as_bytes()
        try:
            there = yield _Store("get", (key,))
            if there is None:
                yield _Store("set", (key, data, None))
        except Exception as error:
            self._errors += 1
            self._log_once(
                key, f"zstd dictionary not stored ({type(error).__name__}: {error}); will retry"
            )
            return False
        if there is not None and there != data:
            self._log_once(key, "another zstd dictionary has this id; going on without one")
            return None
        return True


def _check_int(value: Any, low: float, high: float, where: str, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise _invalid(f"{where}: {value!r} is not an int {bounds}", field)


def _dictionary_id(dictionary: Any, where: str) -> int:
    if not isinstance(dictionary, zstandard.ZstdCompressionDict):
        raise _invalid(
            f"{where}: {dictionary!r:.80} is not 'auto', None or a zstandard.ZstdCompressionDict",
            "dictionary",
        )
    dictionary_id = int(dictionary.dict_id())
    if not dictionary_id:
        raise _invalid(
            f"{where}: a dictionary needs an id (raw-content dictionaries have none); "
            "make one with train_dictionary()",
            "dictionary",
        )
    return dictionary_id


def _sample(sample: Any, serializer: int) -> bytes:
    if isinstance(sample, bytes):
        return sample
    return sample.encode() if isinstance(sample, str) else dumps(sample, serializer)


def train_dictionary(
    samples: Iterable[bytes | str | Any],
    size: int = 16_384,
    *,
    serializer: str = "json",
    level: int | None = None,
) -> zstandard.ZstdCompressionDict:
    """A zstd dictionary of at most ``size`` bytes (default 16 KiB) trained on ``samples``:
    bytes as they are, str as UTF-8, anything else serialised as the cache would
    (``serializer``, default ``"json"``), tuned for zstd ``level`` (default 3). Give it hundreds
    of values like those you will cache, several times ``size`` in total; a ValidationError says
    when they are too few."""
    if serializer not in SERIALIZERS:
        raise _invalid(
            f"train_dictionary(serializer={serializer!r}): 'json' or 'msgpack'", "serializer"
        )
    serial = SERIALIZERS[serializer]
    data: list[bytes | bytearray | memoryview] = [_sample(s, serial) for s in samples]
    if isinstance(size, bool) or not isinstance(size, int) or size < 256:
        raise _invalid(f"train_dictionary(size={size!r}): bytes, an int >= 256", "size")
    try:
        return zstandard.train_dictionary(size, data, level=level or 0)
    except zstandard.ZstdError as error:
        raise _invalid(
            f"train_dictionary: zstd could not train on {len(data)} samples of "
            f"{sum(map(len, data))} bytes in all ({error}); give more, or ask for a smaller size",
            "samples",
        ) from error
