"""The simulated upstream under uvicorn, with the network faults done for real on the socket.

:class:`SimServer` is a :class:`uvicorn.Server` that lends the ASGI app a
:class:`~flashkit.sim._asgi.ConnectionControl`: a reset finds the connection of the request
(uvicorn's protocol whose peer is the scope's ``client``), sets ``SO_LINGER`` to 0 and aborts
it, so the kernel sends a TCP RST. During a ``"refused"`` window of
:attr:`FaultProfile.network_windows <flashkit.sim.FaultProfile>` it closes its listening socket
(``connect()`` is then refused by the kernel) and asks idle keep-alive connections to close (a
client's pool would otherwise reuse them and never connect); at the window's end it listens
again on the same address. Requests already on their way during a window are reset.

Imported only by :func:`flashkit.sim.serve` and tests (it needs uvicorn, the ``server`` extra).
Uses uvicorn's server state (``server_state.connections``, each with ``client`` and
``transport``) and builds its HTTP protocol as :meth:`uvicorn.Server.startup` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any, Final

import uvicorn

from flashkit.sim._asgi import Scope, SimAsgiApp
from flashkit.sim._upstream import SimulatedUpstream

__all__ = ["SimServer"]

_RECHECK: Final = 1.0  # seconds: longest wait between two looks at the refusal windows
_LOG: Final = logging.getLogger("uvicorn.error")


class SimServer(uvicorn.Server):
    """uvicorn serving ``upstream`` with real network faults (see the module docstring).

    ``config_options`` are :class:`uvicorn.Config`'s keyword arguments (``host``, ``port``,
    ``log_level`` ...); the app is ``upstream``'s."""

    def __init__(self, upstream: SimulatedUpstream, **config_options: Any) -> None:
        self.upstream = upstream
        app = SimAsgiApp(upstream, control=self)
        config_options.setdefault("lifespan", "on")
        config_options.setdefault("interface", "asgi3")
        # A stalled response must not hold a shutdown for its whole stall.
        config_options.setdefault("timeout_graceful_shutdown", 2)
        config_options.setdefault("date_header", False)  # the upstream sends its own
        super().__init__(uvicorn.Config(app, **config_options))
        self._windows = tuple(
            (start, end)
            for start, end, fault in upstream.profile.network_windows
            if fault == "refused"
        )
        self._refusals: asyncio.Task[None] | None = None
        self._listening = False
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop, once started (for :meth:`follow_windows` from a test)."""

    # -- resets ----------------------------------------------------------------------------
    def abort(self, scope: Scope) -> bool:
        """Reset the connection that carries ``scope`` with a TCP RST; False if it is gone."""
        client = scope.get("client")
        if client is None:
            return False
        peer = tuple(client)
        for connection in list(self.server_state.connections):
            if getattr(connection, "client", None) == peer:
                transport: asyncio.Transport = connection.transport
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        linger = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                transport.abort()
                return True
        return False

    # -- refusals --------------------------------------------------------------------------
    @property
    def listening(self) -> bool:
        """Whether the server accepts connections now (False in a refusal window)."""
        return self._listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        if sockets is None and self._windows and self._refusing(self.upstream.elapsed())[0]:
            # Starting inside a refusal window: never listen, so no connection slips in.
            await super().startup(sockets=[])
            config = self.config
            _LOG.info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit), refusing connections "
                "for now (a refusal window)",
                config.host,
                config.port,
            )
        else:
            await super().startup(sockets=sockets)
            self._listening = True
        if self._windows and self.started:
            self._refusals = asyncio.create_task(self._refuse_in_windows())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._refusals is not None:
            self._refusals.cancel()
        await super().shutdown(sockets=sockets)

    def _refusing(self, t: float) -> tuple[bool, float]:
        """Whether ``t`` (the upstream's elapsed seconds) is in a refusal window, and the
        seconds until the next window edge (at most ``_RECHECK``: a reset moves the origin)."""
        inside = any(start <= t < end for start, end in self._windows)
        edges = [edge - t for window in self._windows for edge in window if edge > t]
        return inside, min([_RECHECK, *edges])

    async def _refuse_in_windows(self) -> None:
        while True:
            wait = await self.follow_windows()
            await asyncio.sleep(wait)  # a timer, not a poll for an event: the windows are times

    async def follow_windows(self) -> float:
        """Stop or start listening as the refusal windows say now; return the seconds until
        the next look. Runs on the server's loop (the server calls it on its own)."""
        inside, wait = self._refusing(self.upstream.elapsed())
        if inside and self._listening:
            for server in self.servers:
                server.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()  # idle keep-alive connections close now
            self._listening = False
        elif not inside and not self._listening:
            config = self.config
            server = await asyncio.get_running_loop().create_server(
                self._protocol,
                host=config.host,
                port=config.port,
                reuse_address=True,
                backlog=config.backlog,
            )
            self.servers = [server]
            self._listening = True
        return wait

    def _protocol(self) -> asyncio.Protocol:
        """uvicorn's HTTP protocol for one connection, as :meth:`uvicorn.Server.startup`
        builds it."""
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )
