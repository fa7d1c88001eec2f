"""flashkit.cache: a compressed, stampede-proof cache over memory, SQL and Redis stores.

>>> cache = CompressedCache(SQLStore("sqlite:///flashkit.db"), ttl=3600.0)
>>> await cache.get_or_compute("key", compute)         # single flight, early refresh (XFetch)

- stores (bytes, or any object in memory, with a TTL): :class:`MemoryStore` (LRU, in process),
  :class:`SQLStore` (SQLite or PostgreSQL, shared by processes), :class:`RedisStore`;
- :class:`CacheService`: JSON (or msgpack) values, TTL jitter, single flight per key within a
  process and across processes (a short lock in shared stores), probabilistic early refresh;
  corrupt entries are misses, pickle is never used;
- :class:`CompressedCache`: the same, values compressed (zstd by default, with a dictionary it
  trains on its first 1,000 values and shares through the store; zlib, lz4; or a dictionary from
  :func:`train_dictionary`), each entry naming its codec and dictionary.
"""

from flashkit.cache._base import MemoryStore, Store
from flashkit.cache._compressed import CompressedCache, train_dictionary
from flashkit.cache._service import CacheService, CacheStats
from flashkit.cache._stores import RedisStore, SQLStore

__all__ = [
    "CacheService",
    "CacheStats",
    "CompressedCache",
    "MemoryStore",
    "RedisStore",
    "SQLStore",
    "Store",
    "train_dictionary",
]
