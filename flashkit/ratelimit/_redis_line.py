"""A Redis limiter's connections, and the round trip of one script call.

One sync client and, per event loop, one ``redis.asyncio`` client. Scripts do not go through
the client's command path: each call packs ``EVALSHA`` itself and sends it on a connection the
limiter holds (made by the client's pool, one per concurrent caller) — the generic path (pool
checkout, retry wrapper, response callbacks, packing) costs ~40 us of a ~130 us decision, more
than the script. A script the server lost (a restart) is loaded again; a call is retried once,
at once, only when its connection broke, never after a timeout (the script may have run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Any

from flashkit._flow import run_async, run_sync
from flashkit.ratelimit._redis_errors import redis_errors
from flashkit.ratelimit._redis_protocol import Eval, Script

__all__ = ["Line", "Lines", "evalsha", "pack"]

# Forks seen by this process: a child must not use its parent's sockets (checked per call;
# cheaper than os.getpid()).
_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def pack(*parts: bytes) -> bytes:
    """A command in the Redis protocol. Written out here rather than by redis-py's packer,
    which costs ~9 us for a decision's 14 arguments (per-argument type dispatch), this ~3 us."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


def evalsha(sha: bytes, op: Eval) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` in the Redis protocol (arguments str, bytes or int)."""
    return pack(
        b"EVALSHA",
        sha,
        str(len(op.keys)).encode(),
        *[key.encode() for key in op.keys],
        *[arg if isinstance(arg, bytes) else str(arg).encode() for arg in op.args],
    )


def script_call(script: Script, op: Eval) -> Generator[list[bytes], Any, Any]:
    """The round trips of one script call, as packed commands (each answered with its reply or
    its error): the script loaded again if the server lost it, and one retry, at once, only when
    the connection broke (a pooled connection to a restarted server). Never after a timeout,
    when the script may have run (a repeat after a broken connection can at worst charge twice:
    conservative)."""
    errors = redis_errors()
    command = [evalsha(script.sha, op)]
    retried = loaded = False
    while True:
        try:
            return (yield command)
        except errors.any as error:
            if isinstance(error, errors.no_script) and not loaded:
                yield [pack(b"SCRIPT", b"LOAD", script.text)]
                loaded = True
            elif errors.broken(error) and not retried:
                retried = True
            else:
                raise


class Line:
    """A redis-py client and the connections this limiter's calls use.

    Connections are made by the client's pool (same settings) and kept here, not checked in and
    out of the pool per call: an idle stack (``list.pop``/``append`` are atomic, so each thread
    or task uses its own connection). Closed with the client.
    """

    __slots__ = ("client", "forks", "idle", "loop", "made")

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.client = client
        self.loop = loop
        self.forks = _forks[0]
        self.idle: list[Any] = []
        self.made: list[Any] = []

    def take(self) -> Any:
        try:
            return self.idle.pop()
        except IndexError:
            connection = self.client.connection_pool.make_connection()
            self.made.append(connection)
            return connection

    def close(self) -> None:
        try:
            for connection in self.made:
                connection.disconnect()
        finally:
            self.client.close()

    async def aclose(self) -> None:
        try:
            for connection in self.made:
                await connection.disconnect()
        finally:
            await self.client.aclose()

    def abandon(self) -> None:
        """Close an asyncio client's sockets without its (gone) event loop."""
        pool = getattr(self.client, "connection_pool", None)
        connections = list(self.made)
        for attr in ("_available_connections", "_in_use_connections"):
            connections += list(getattr(pool, attr, ()) or ())
        for connection in connections:
            try:
                connection._close()
            except Exception:  # noqa: S112 - best effort on a dead loop
                continue


class Lines:
    """A limiter's sync line and the async line of the current event loop, made on first use.

    The async client belongs to its loop: it is closed there when the loop shuts down
    (``asyncio.run`` finalizes live async generators before closing the loop), or abandoned
    when a later loop finds it.
    """

    def __init__(self, url: str, socket_timeout: float, scripts: tuple[Script, ...]) -> None:
        self._url = url  # with credentials: never shown
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        self.scripts = scripts
        self.sync: Line | None = None
        self.async_: Line | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._lock = threading.Lock()
        self.round_trips = 0  # script calls sent (about, under threads)

    def sync_line(self) -> Line:
        line = self.sync
        if line is None or line.forks != _forks[0]:
            import redis
            import redis.exceptions
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            with self._lock:
                line = self.sync
                if line is None or line.forks != _forks[0]:
                    # (after a fork the parent's sockets are left alone, as redis-py's pool does)
                    client = redis.Redis.from_url(
                        self._url,
                        retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                        **self._options,
                    )
                    line = self.sync = Line(client)
        return line

    def async_line(self) -> Line:
        loop = asyncio.get_running_loop()
        line = self.async_
        if line is None or line.loop is not loop or line.forks != _forks[0]:
            import redis.asyncio
            import redis.exceptions
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            if line is not None:
                line.abandon()  # its loop ended without shutting down async generators
            client = redis.asyncio.Redis.from_url(
                self._url,
                retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                **self._options,
            )
            line = self.async_ = Line(client, loop)
            guard = self._close_with_loop(line)
            with contextlib.suppress(StopIteration):
                guard.__anext__().send(None)  # runs to its yield at once: now a live agen
            self._guard = guard
        return line

    async def _close_with_loop(self, line: Line) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self.async_ is line:
                self.async_ = None
            await line.aclose()

    def eval_sync(self, op: Eval) -> Any:
        line = self.sync_line()
        self.round_trips += 1
        connection = line.take()

        def round_trip(command: list[bytes]) -> Any:
            connection.send_packed_command(command, check_health=False)
            return connection.read_response()

        try:
            return run_sync(script_call(self.scripts[op.script], op), round_trip)
        finally:
            line.idle.append(connection)

    async def eval_async(self, op: Eval) -> Any:
        line = self.async_line()
        self.round_trips += 1
        connection = line.take()

        async def round_trip(command: list[bytes]) -> Any:
            await connection.send_packed_command(command, check_health=False)
            return await connection.read_response()

        try:
            return await run_async(script_call(self.scripts[op.script], op), round_trip)
        finally:
            line.idle.append(connection)

    def close_sync(self) -> None:
        line, self.sync = self.sync, None
        if line is not None:
            line.close()

    def on_this_loop(self) -> bool:
        """Whether the async line belongs to the running event loop."""
        return self.async_ is not None and self.async_.loop is asyncio.get_running_loop()

    async def close_async(self) -> None:
        """Close the async line (on its loop), or abandon it (another loop's)."""
        line, self.async_ = self.async_, None
        guard, self._guard = self._guard, None
        if line is None:
            return
        if line.loop is asyncio.get_running_loop() and guard is not None:
            await guard.aclose()  # closes the line
        else:
            line.abandon()
