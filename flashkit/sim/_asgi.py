"""The simulated upstream as a plain ASGI 3 app (no framework): the types, the app and its routes.

Routes: the APIs (``POST /v1/chat/completions``, ``POST /v1/messages``, ``GET /v1/models``, as
:meth:`SimulatedUpstream.exchange` decides), ``GET /_sim/stats`` (what the upstream saw, as
JSON) and ``POST /_sim/reset``.

The app plays each :class:`~flashkit.sim._network_faults.Reply` on the socket: the headers, each
chunk after its wait (on the event loop's time: the server runs on the system clock), then the
end. A reset needs the server's help, a :class:`ConnectionControl` (``SimAsgiApp.control``, set
by :func:`flashkit.sim.serve`): it closes the connection with a TCP RST (``SO_LINGER`` 0).
Without one (another ASGI server), a reset before the headers is answered as a proxy would
(a 502 "reset before headers"), and a reset mid-body ends the response unfinished (the server
closes the connection: the client sees ``RemoteProtocolError`` instead of ``ReadError``). A
stall is a stall either way; the app stops waiting when the client goes away.

Below :mod:`flashkit.sim._upstream`, which builds its :attr:`~SimulatedUpstream.asgi_app` from
:class:`SimAsgiApp`: the app sees the upstream only through :class:`AsgiUpstream`, so this module
never imports the upstream (and :mod:`flashkit.sim._server`, which runs it, imports both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol

from flashkit.sim._http import httpx
from flashkit.sim._network_faults import Reply
from flashkit.sim._profile import FaultProfile
from flashkit.sim._stats import LoadSeries, SimStats

__all__ = [
    "AsgiUpstream",
    "ConnectionControl",
    "Receive",
    "Scope",
    "Send",
    "SimAsgiApp",
    "handle_asgi",
    "stats_payload",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiUpstream(Protocol):
    """What the ASGI app needs of :class:`~flashkit.sim.SimulatedUpstream`."""

    @property
    def profile(self) -> FaultProfile: ...

    @property
    def seed(self) -> int: ...

    @property
    def stats(self) -> SimStats: ...

    @property
    def load(self) -> LoadSeries: ...

    @property
    def limits(self) -> tuple[float | None, float | None]: ...

    def elapsed(self) -> float: ...

    def reset(self) -> None: ...

    async def exchange(self, request: httpx.Request) -> Reply: ...


class ConnectionControl(Protocol):
    """What the ASGI server lends the app for network faults."""

    def abort(self, scope: Scope) -> bool:
        """Reset the connection that carries ``scope`` (a TCP RST) and return True, or return
        False when it cannot."""
        ...


_CONNECT_FAILURE: Final = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection failure (simulated outage)"
)
_RESET_FAILURE: Final = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection termination (simulated reset)"
)


def stats_payload(upstream: AsgiUpstream) -> dict[str, Any]:
    """What ``GET /_sim/stats`` answers: counters, the per-second series, the limits in force,
    the seconds elapsed and the profile."""
    rpm, tpm = upstream.limits
    return {
        "stats": upstream.stats.to_dict(),
        "load": upstream.load.to_records(),
        "limits": {"rpm": rpm, "tpm": tpm},
        "elapsed": upstream.elapsed(),
        "seed": upstream.seed,
        "profile": dataclasses.asdict(upstream.profile),
    }


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, data: Any) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await _send(send, status, body, headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _gone(watch: asyncio.Future[Any], seconds: float) -> bool:
    """Wait ``seconds``; True as soon as ``watch`` (the client's disconnect) is done."""
    if not watch.done():
        await asyncio.wait((watch,), timeout=seconds)
    return watch.done()


async def _abort(
    control: ConnectionControl | None, scope: Scope, watch: asyncio.Future[Any]
) -> bool:
    """Reset the connection; False when there is no :class:`ConnectionControl` to do it."""
    if control is None or not control.abort(scope):
        return False
    await asyncio.wait((watch,), timeout=5.0)  # until the server has noticed: no 500, no log
    return True


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def play(
    reply: Reply,
    scope: Scope,
    receive: Receive,
    send: Send,
    control: ConnectionControl | None = None,
) -> None:
    """Send ``reply`` over ASGI: see the module docstring."""
    if reply.before == "outage":
        # A proxy's answer when the backend refuses connections: the closest HTTP can get.
        await _send(send, 503, _CONNECT_FAILURE, [(b"content-type", b"text/plain")])
        return
    if reply.plain:
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": _raw(reply.headers)}
        )
        body = reply.chunks[0][1] if reply.chunks else b""
        await send({"type": "http.response.body", "body": body})
        return
    watch = asyncio.ensure_future(receive())  # done when the client goes away
    try:
        if reply.before is not None:  # a reset, or a refused rate (see _network_faults)
            if not await _abort(control, scope, watch):
                await _send(send, 502, _RESET_FAILURE, [(b"content-type", b"text/plain")])
            return
        start = {"type": "http.response.start", "status": reply.status}
        await send({**start, "headers": _raw(reply.headers)})
        for wait, data in reply.chunks:
            if wait > 0.0 and await _gone(watch, wait):
                return
            await send({"type": "http.response.body", "body": data, "more_body": True})
        if reply.end == "complete":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if reply.end == "stall" and await _gone(watch, reply.stall_seconds):
            return
        await _abort(control, scope, watch)  # without a control: ends unfinished
    finally:
        watch.cancel()


async def handle_asgi(
    upstream: AsgiUpstream,
    scope: Scope,
    receive: Receive,
    send: Send,
    control: ConnectionControl | None = None,
) -> None:
    """Serve one ASGI connection scope with ``upstream`` (``control``: see the module
    docstring)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    path: str = scope["path"]
    method: str = scope["method"]
    if path == "/_sim/stats":
        if method != "GET":
            await _send_json(
                send, 405, {"error": {"message": "use GET", "type": "invalid_request_error"}}
            )
            return
        await _send_json(send, 200, stats_payload(upstream))
        return
    if path == "/_sim/reset":
        if method != "POST":
            await _send_json(
                send, 405, {"error": {"message": "use POST", "type": "invalid_request_error"}}
            )
            return
        upstream.reset()
        await _send_json(send, 200, {"reset": True})
        return
    query = scope.get("query_string", b"")
    url = f"http://sim{scope.get('root_path', '')}{path}" + (f"?{query.decode()}" if query else "")
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    ]
    request = httpx.Request(method, url, headers=headers, content=b"".join(chunks))
    await play(await upstream.exchange(request), scope, receive, send, control)


class SimAsgiApp:
    """ASGI 3 callable serving ``upstream`` (:attr:`SimulatedUpstream.asgi_app`). ``control``:
    the server's :class:`ConnectionControl` for real resets (set by :func:`flashkit.sim.serve`
    and :class:`flashkit.sim._uvicorn.SimServer`; None: approximated, see the module docstring)."""

    __slots__ = ("control", "upstream")

    def __init__(self, upstream: AsgiUpstream, control: ConnectionControl | None = None) -> None:
        self.upstream = upstream
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await handle_asgi(self.upstream, scope, receive, send, self.control)
