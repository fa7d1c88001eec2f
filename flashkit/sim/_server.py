"""The simulated upstream over real HTTP: a plain ASGI 3 app (no framework) and :func:`serve`.

Routes: the chat API (``POST /v1/chat/completions``, as :meth:`SimulatedUpstream.handle`),
``GET /_sim/stats`` (what the upstream saw, as JSON) and ``POST /_sim/reset``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final

import httpx

from flashkit.clock import SystemClock

if TYPE_CHECKING:
    from flashkit.sim._profile import FaultProfile
    from flashkit.sim._upstream import Receive, Scope, Send, SimulatedUpstream

__all__ = ["handle_asgi", "serve", "stats_payload"]

_CONNECT_FAILURE: Final = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection failure (simulated outage)"
)


def stats_payload(upstream: SimulatedUpstream) -> dict[str, Any]:
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


async def handle_asgi(
    upstream: SimulatedUpstream, scope: Scope, receive: Receive, send: Send
) -> None:
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


def serve(
    profile: str | FaultProfile = "flaky",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    seed: int = 0,
    log_level: str = "info",
) -> None:
    """Run the simulated upstream over HTTP with uvicorn on the system clock until interrupted.

    ``profile``: a preset name or a :class:`FaultProfile`; ``seed`` makes the faults
    reproducible. Point any OpenAI client at ``http://{host}:{port}/v1`` with any API key but
    ``invalid``. Needs uvicorn (the ``server`` extra: ``pip install 'flashkit[server]'``).
    """
    try:
        import uvicorn
    except ImportError as error:  # pragma: no cover - uvicorn is in the dev environment
        raise ImportError(
            "flashkit.sim.serve needs uvicorn: pip install 'flashkit[server]'"
        ) from error
    from flashkit.sim._upstream import SimulatedUpstream

    upstream = SimulatedUpstream(profile, seed=seed, clock=SystemClock())
    uvicorn.run(
        upstream.asgi_app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        interface="asgi3",
    )
