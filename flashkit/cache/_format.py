"""The stored entry format: what a cache writes to a shared store (and a compressing cache to any
store), and the one decoder that reads it back.

An entry is a fixed 24-byte header followed by the payload (little-endian)::

    magic    u8    0xFC
    version  u8    1
    codec    u8    0 none, 1 zlib, 2 zstd, 3 lz4 (lz4.block with its size prefix)
    serial   u8    0 json, 1 msgpack
    dict_id  u32   zstd dictionary id (0: none)
    expires  f64   when the entry expires, seconds on the cache clock (+inf: never)
    delta    f32   seconds the value took to compute (XFetch; 0: unknown)
    length   u32   payload bytes that follow

The payload is the serialised value (UTF-8 JSON or msgpack), compressed by ``codec``. Decoding
looks the codec and dictionary up by the ids in the header, never by the reader's own settings,
so entries written before a codec or dictionary change stay readable. Anything unreadable raises
:class:`_Corrupt` with the reason; callers treat it as a miss. Nothing here unpickles, ever.

A zstd dictionary is stored as its own bytes (zstd's dictionary format, no header of ours) under
:func:`dictionary_key`, ``"{namespace}:__flashkit_zdict__:{id}"``, and read back by
:func:`load_dictionary`: data parsed by zstd, checked against the id that named it.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final, NamedTuple

import zstandard

__all__ = [
    "CODEC_LZ4",
    "CODEC_NONE",
    "CODEC_ZLIB",
    "CODEC_ZSTD",
    "CODECS",
    "DICTIONARY_MARKER",
    "HEADER_SIZE",
    "MAX_DICTIONARY_BYTES",
    "MAX_VALUE_BYTES",
    "SERIAL_JSON",
    "SERIAL_MSGPACK",
    "SERIALIZERS",
    "Decoded",
    "decode_entry",
    "dictionary_key",
    "dumps",
    "encode_entry",
    "load_dictionary",
    "load_lz4",
    "load_msgpack",
    "zstd_decompressor",
]

MAGIC: Final = 0xFC
VERSION: Final = 1
CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, CODEC_LZ4 = 0, 1, 2, 3
CODECS: Final[Mapping[str, int]] = {"none": 0, "zlib": 1, "zstd": 2, "lz4": 3}
SERIAL_JSON, SERIAL_MSGPACK = 0, 1
SERIALIZERS: Final[Mapping[str, int]] = {"json": 0, "msgpack": 1}
MAX_VALUE_BYTES: Final = 64 * 1024 * 1024
"""Largest serialised value written or decompressed (64 MiB): a bound on a forged size field."""
MAX_DICTIONARY_BYTES: Final = 1024 * 1024
"""Largest zstd dictionary trained or read from a store (1 MiB)."""
DICTIONARY_MARKER: Final = "__flashkit_zdict__"
"""Marks the store keys of zstd dictionaries; caches refuse user keys containing it."""

_HEADER: Final = struct.Struct("<BBBBIdfI")
HEADER_SIZE: Final = _HEADER.size  # 24
_F32_MAX: Final = 3.4e38

_LZ4_HINT: Final = "codec 'lz4' needs the lz4 package: pip install 'flashkit[cache]'"
_MSGPACK_HINT: Final = (
    "serializer 'msgpack' needs the msgpack package: pip install 'flashkit[cache]'"
)


class _Corrupt(Exception):
    """A stored entry that cannot be read; ``reason`` says why (the cache logs it as a miss)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UnknownDictionary(_Corrupt):
    """An entry compressed with a zstd dictionary the reader does not hold (``dictionary_id``)."""

    def __init__(self, dictionary_id: int) -> None:
        super().__init__(f"unknown zstd dictionary id {dictionary_id}")
        self.dictionary_id = dictionary_id


_new_tuple: Final = tuple.__new__


class Decoded(NamedTuple):
    """A decoded entry: the value, its expiry and compute time (s), and its sizes (bytes)."""

    value: Any
    expires: float
    delta: float
    codec: int
    dictionary_id: int
    raw_size: int  # serialised value
    stored_size: int  # payload as stored (compressed)


# --- serialisers --------------------------------------------------------------------------------
_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# The C scanner itself: JSONDecoder.decode adds two regex matches for whitespace we never write.
_json_scan: Callable[[str, int], tuple[Any, int]]
_json_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def load_msgpack() -> ModuleType:
    """The ``msgpack`` module, or an ImportError saying how to install it."""
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(_MSGPACK_HINT) from error
    module: ModuleType = msgpack
    return module


def load_lz4() -> ModuleType:
    """The ``lz4.block`` module, or an ImportError saying how to install it."""
    try:
        import lz4.block  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(_LZ4_HINT) from error
    module: ModuleType = lz4.block
    return module


def dumps(value: Any, serializer: int = SERIAL_JSON) -> bytes:
    """``value`` as compact UTF-8 JSON (strict: no NaN or infinity) or msgpack bytes.

    Raises TypeError, ValueError or OverflowError for a value the serialiser cannot write.
    """
    if serializer == SERIAL_JSON:
        return _json_encode(value).encode()
    return bytes(load_msgpack().packb(value, use_bin_type=True))


def _loads(raw: bytes, serializer: int) -> Any:
    if serializer == SERIAL_JSON:
        try:
            text = raw.decode()
            value, end = _json_scan(text, 0)
        except (StopIteration, ValueError, RecursionError) as error:  # and UnicodeDecodeError
            raise _Corrupt(f"payload is not valid JSON ({type(error).__name__})") from None
        if end != len(text):
            raise _Corrupt("payload is not valid JSON (extra data)")
        return value
    try:
        msgpack = load_msgpack()
    except ImportError:
        raise _Corrupt(_MSGPACK_HINT) from None
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise _Corrupt(f"payload is not valid msgpack ({type(error).__name__})") from None


# --- codecs -------------------------------------------------------------------------------------
# zstd (de)compression contexts are not thread-safe and cost ~10 µs to make: one per thread.
_local = threading.local()


def zstd_decompressor(dictionary: zstandard.ZstdCompressionDict | None, key: int = -1) -> Any:
    """This thread's decompressor for ``dictionary`` (None: no dictionary), made once. ``key``:
    the dictionary's id when the caller knows it (saves asking zstd, ~0.2 µs)."""
    made: dict[int, tuple[Any, Any]] | None = getattr(_local, "decompressors", None)
    if made is None:
        made = _local.decompressors = {}
    if key < 0:
        key = 0 if dictionary is None else dictionary.dict_id()
    found = made.get(key)
    if found is not None and found[0] is dictionary:
        return found[1]
    if dictionary is None:
        decompressor = zstandard.ZstdDecompressor()
    else:
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary)
    made[key] = (dictionary, decompressor)
    return decompressor


def _inflate_zlib(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    raw = inflater.decompress(body, MAX_VALUE_BYTES)
    if inflater.unconsumed_tail:
        raise _Corrupt(f"zlib payload inflates beyond {MAX_VALUE_BYTES} bytes")
    if not inflater.eof:
        raise _Corrupt("zlib payload is truncated")
    return raw


def _inflate_zstd(
    body: bytes, dictionary_id: int, dictionaries: Mapping[int, zstandard.ZstdCompressionDict]
) -> bytes:
    dictionary = None
    if dictionary_id:
        dictionary = dictionaries.get(dictionary_id)
        if dictionary is None:
            raise _UnknownDictionary(dictionary_id)
    size = zstandard.frame_content_size(body)
    if not 0 <= size <= MAX_VALUE_BYTES:
        raise _Corrupt(f"zstd frame declares {size} bytes (unknown or too large)")
    raw: bytes = zstd_decompressor(dictionary, dictionary_id).decompress(body)
    return raw


def _inflate_lz4(body: bytes) -> bytes:
    try:
        block = load_lz4()
    except ImportError:
        raise _Corrupt(_LZ4_HINT) from None
    if not 0 <= int.from_bytes(body[:4], "little", signed=True) <= MAX_VALUE_BYTES:
        raise _Corrupt("lz4 payload declares a size that is negative or too large")
    raw: bytes = block.decompress(body)
    return raw


def _decompress(
    codec: int,
    dictionary_id: int,
    body: bytes,
    dictionaries: Mapping[int, zstandard.ZstdCompressionDict],
) -> bytes:
    if codec == CODEC_NONE:
        return body
    if dictionary_id and codec != CODEC_ZSTD:
        raise _Corrupt(f"dictionary id {dictionary_id} with codec {codec}, which takes none")
    try:
        if codec == CODEC_ZSTD:
            return _inflate_zstd(body, dictionary_id, dictionaries)
        if codec == CODEC_ZLIB:
            return _inflate_zlib(body)
        return _inflate_lz4(body)
    except _Corrupt:
        raise
    except Exception as error:  # zlib.error, ZstdError, LZ4BlockError, MemoryError, ...
        raise _Corrupt(f"decompression failed ({type(error).__name__}: {error})") from None


# --- dictionaries -------------------------------------------------------------------------------
# A frame made without a dictionary: decompressing it with one makes zstd load the dictionary.
_PROBE: Final = zstandard.ZstdCompressor(write_checksum=False).compress(b"{}")


def dictionary_key(prefix: str, dictionary_id: int) -> str:
    """The store key of zstd dictionary ``dictionary_id`` for a cache whose keys start with
    ``prefix`` (``"namespace:"`` or ``""``)."""
    return f"{prefix}{DICTIONARY_MARKER}:{dictionary_id}"


def load_dictionary(data: Any, dictionary_id: int) -> zstandard.ZstdCompressionDict:
    """The zstd dictionary stored as ``data``; :class:`_Corrupt` unless it is bytes (at most
    :data:`MAX_DICTIONARY_BYTES`) that zstd loads as a dictionary with id ``dictionary_id``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _Corrupt(f"stored dictionary is a {type(data).__name__}, not bytes")
    if not 8 <= len(data) <= MAX_DICTIONARY_BYTES:
        raise _Corrupt(f"stored dictionary is {len(data)} bytes (8 to {MAX_DICTIONARY_BYTES})")
    try:
        dictionary = zstandard.ZstdCompressionDict(
            bytes(data), dict_type=zstandard.DICT_TYPE_FULLDICT
        )
        found = int(dictionary.dict_id())
        if found == dictionary_id:
            zstandard.ZstdDecompressor(dict_data=dictionary).decompress(_PROBE)  # loads it
    except zstandard.ZstdError as error:
        raise _Corrupt(f"stored dictionary does not load ({error})") from None
    if found != dictionary_id:
        raise _Corrupt(f"stored dictionary has id {found}, not {dictionary_id}")
    return dictionary


# --- entries ------------------------------------------------------------------------------------
def encode_entry(
    body: bytes,
    *,
    expires: float = math.inf,
    delta: float = 0.0,
    codec: int = CODEC_NONE,
    serializer: int = SERIAL_JSON,
    dictionary_id: int = 0,
) -> bytes:
    """The header followed by ``body`` (the value already serialised and, unless ``codec`` is
    none, compressed). ``expires``: seconds on the cache clock; ``delta``: compute seconds."""
    delta = min(max(float(delta), 0.0), _F32_MAX)
    return (
        _HEADER.pack(
            MAGIC, VERSION, codec, serializer, dictionary_id, float(expires), delta, len(body)
        )
        + body
    )


def _check_header(data: bytes) -> tuple[int, int, int, float, float, int]:
    if not isinstance(data, (bytes, bytearray, memoryview)):  # a tuple: faster than a union
        raise _Corrupt(f"stored value is a {type(data).__name__}, not bytes")
    if len(data) < HEADER_SIZE:
        raise _Corrupt(f"too short ({len(data)} bytes; the header alone is {HEADER_SIZE})")
    magic, version, codec, serializer, dictionary_id, expires, delta, length = _HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        raise _Corrupt(f"wrong magic byte 0x{magic:02x}")
    if version != VERSION:
        raise _Corrupt(f"unknown format version {version}")
    if codec > CODEC_LZ4:
        raise _Corrupt(f"unknown codec id {codec}")
    if serializer > SERIAL_MSGPACK:
        raise _Corrupt(f"unknown serializer id {serializer}")
    if math.isnan(expires) or not 0.0 <= delta < math.inf:
        raise _Corrupt(f"bad expiry or compute time ({expires!r}, {delta!r})")
    if len(data) - HEADER_SIZE != length:
        state = "truncated" if len(data) - HEADER_SIZE < length else "followed by extra bytes"
        raise _Corrupt(f"payload {state} ({len(data) - HEADER_SIZE} of {length} bytes)")
    return codec, serializer, dictionary_id, expires, delta, length


def decode_entry(
    data: bytes, *, dictionaries: Mapping[int, zstandard.ZstdCompressionDict] | None = None
) -> Decoded:
    """Read an entry written by :func:`encode_entry`; :class:`_Corrupt` if it cannot be.

    ``dictionaries``: the zstd dictionaries this reader knows, by id (an entry naming another
    is corrupt for this reader).
    """
    codec, serializer, dictionary_id, expires, delta, length = _check_header(data)
    body = bytes(data[HEADER_SIZE:])
    raw = _decompress(codec, dictionary_id, body, dictionaries or {})
    if len(raw) > MAX_VALUE_BYTES:
        raise _Corrupt(f"payload larger than {MAX_VALUE_BYTES} bytes")
    value = _loads(raw, serializer)
    # tuple.__new__: a NamedTuple's own __new__ is a Python function, ~10x slower.
    return _new_tuple(Decoded, (value, expires, delta, codec, dictionary_id, len(raw), length))
