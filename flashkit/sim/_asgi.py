"""The simulated upstream as a plain ASGI 3 app (no framework): the types, the app and its routes.

Routes: the chat API (``POST /v1/chat/completions``, as :meth:`SimulatedUpstream.handle`),
``GET /_sim/stats`` (what the upstream saw, as JSON) and ``POST /_sim/reset``.

Below :mod:`flashkit.sim._upstream`, which builds its :attr:`~SimulatedUpstream.asgi_app` from
:class:`SimAsgiApp`: the app sees the upstream only through :class:`AsgiUpstream`, so this module
never imports the upstream (and :mod:`flashkit.sim._server`, which runs it, imports both).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol

import httpx

from flashkit.sim._profile import FaultProfile
from flashkit.sim._stats import LoadSeries, SimStats

__all__ = ["AsgiUpstream", "Receive", "Scope", "Send", "SimAsgiApp", "handle_asgi", "stats_payload"]

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

    async def handle(self, request: httpx.Request) -> httpx.Response: ...


_CONNECT_FAILURE: Final = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection failure (simulated outage)"
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


async def handle_asgi(upstream: AsgiUpstream, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ASGI connection scope with ``upstream``."""
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
    try:
        response = await upstream.handle(request)
    except httpx.ConnectError:
        # A proxy's answer when the backend refuses connections: the closest HTTP can get.
        await _send(send, 503, _CONNECT_FAILURE, [(b"content-type", b"text/plain")])
        return
    await _send(send, response.status_code, response.content, list(response.headers.raw))


class SimAsgiApp:
    """ASGI 3 callable serving ``upstream`` (:attr:`SimulatedUpstream.asgi_app`)."""

    __slots__ = ("upstream",)

    def __init__(self, upstream: AsgiUpstream) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await handle_asgi(self.upstream, scope, receive, send)
