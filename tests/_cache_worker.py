"""One OS process using a shared cache store, for tests/test_cache_stores.py.

``python tests/_cache_worker.py sql URL`` (an SQLStore) or ``... redis URL PREFIX`` (a
RedisStore). The worker prints ``ready``, then answers each line read on stdin with one line:

- ``set KEY VALUE`` -> ``ok`` (VALUE stored as UTF-8 bytes, no expiry)
- ``get KEY`` -> the value (UTF-8) or ``None``
- ``lock KEY TTL`` -> the token or ``None`` (TTL in seconds)
- ``unlock KEY TOKEN`` -> ``ok``
- ``quit`` (or the end of stdin) -> exits.
"""

from __future__ import annotations

import sys

from flashkit.cache._stores import RedisStore, SQLStore


def answer(store: SQLStore | RedisStore, command: str, args: list[str]) -> str:
    if command == "set":
        store.set_sync(args[0], args[1].encode())
        return "ok"
    if command == "get":
        value = store.get_sync(args[0])
        return "None" if value is None else value.decode()
    if command == "lock":
        return str(store.lock_sync(args[0], float(args[1])))
    if command == "unlock":
        store.unlock_sync(args[0], args[1])
        return "ok"
    raise ValueError(f"unknown command {command!r}")


def main(argv: list[str]) -> None:
    kind, url = argv[1], argv[2]
    store = SQLStore(url) if kind == "sql" else RedisStore(url, prefix=argv[3])
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "quit":
                break
            print(answer(store, command, args), flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv)
