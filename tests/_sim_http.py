"""The simulated upstream over real HTTP for tests: its ASGI app under uvicorn (as
:class:`~flashkit.sim._uvicorn.SimServer`, which does network faults on the socket) on a free
loopback port, in a background thread on the system clock.

``with serving(upstream) as base_url:`` yields ``http://127.0.0.1:{port}`` once the server
accepts connections and stops it on exit; ``serving_server`` also yields the server. The only
waits are bounded: up to ``start_timeout`` seconds for the server to come up and
``stop_timeout`` seconds for it to shut down.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flashkit.sim import SimulatedUpstream
from flashkit.sim._uvicorn import SimServer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(
    upstream: SimulatedUpstream, *, start_timeout: float = 10.0, stop_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``upstream.asgi_app`` on loopback; yield the base URL (without ``/v1``)."""
    timeouts = {"start_timeout": start_timeout, "stop_timeout": stop_timeout}
    with serving_server(upstream, **timeouts) as (url, _):
        yield url


@contextmanager
def serving_server(
    upstream: SimulatedUpstream, *, start_timeout: float = 10.0, stop_timeout: float = 10.0
) -> Iterator[tuple[str, SimServer]]:
    """As :func:`serving`, yielding the base URL and the server."""
    port = free_port()
    server = SimServer(
        upstream,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="none",
        access_log=False,
        # Longer than any pause in a test's traffic: the server never closes an idle keep-alive
        # connection while the client is about to reuse it (that race loses a request).
        timeout_keep_alive=60,
    )
    thread = threading.Thread(target=server.run, name="sim-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:  # the only wait: for the server to come up
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, f"uvicorn did not start within {start_timeout:g} s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout)
        assert not thread.is_alive(), "uvicorn did not shut down"
