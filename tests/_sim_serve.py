"""A real ``flashkit sim serve`` for tests: its own process (and process group) on a free loopback
port, stdin from /dev/null.

``with sim_serve("healthy", "--set", "latency_median=0") as base_url:`` yields
``http://127.0.0.1:{port}`` once the server has logged that it is running, and at the end stops
the whole process group (SIGTERM, then SIGKILL if it has not gone within ``stop_timeout``
seconds). The only wait is for that log line, bounded by ``start_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANT = ("latency_median=0", "latency_p99=0", "reject_latency=0")
"""``--set`` values for a profile that answers at once."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings(*pairs: str) -> list[str]:
    """``--set`` options for FIELD=VALUE pairs."""
    return [part for pair in pairs for part in ("--set", pair)]


@contextlib.contextmanager
def sim_serve(
    profile: str,
    *pairs: str,
    seed: int = 0,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[str]:
    """``flashkit sim serve --profile PROFILE --set PAIR ...`` on a free port (see the module
    docstring)."""
    port = free_port()
    command = [sys.executable, "-m", "flashkit.cli", "sim", "serve", "--port", str(port)]
    command += ["--profile", profile, "--seed", str(seed), *settings(*pairs)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,  # its own process group, stopped as a whole
    )
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    try:
        seen = b""
        deadline = time.monotonic() + start_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"Uvicorn running on" not in seen:
                left = deadline - time.monotonic()
                assert left > 0, f"sim serve did not start within {start_timeout:g} s: {seen!r}"
                assert proc.poll() is None, f"sim serve exited: {seen!r}"
                if selector.select(timeout=left):
                    chunk = os.read(fd, 65536)
                    assert chunk or proc.poll() is None, f"sim serve closed stderr: {seen!r}"
                    seen += chunk
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=stop_timeout)
        proc.stderr.close()
