"""Real OS processes for the durability tests: ``flashkit sim serve`` and ``flashkit process``.

Waits are for conditions, bounded by deadlines: the server's own "running" line, a count in the
run's database. Nothing assumes how long anything takes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FLASHKIT = [sys.executable, "-m", "flashkit.cli"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def sim_server(*args: str, timeout: float = 30.0, stop_timeout: float = 10.0) -> Iterator[str]:
    """``flashkit sim serve --port P *args`` in its own process and process group, stdin from
    /dev/null; yields ``http://127.0.0.1:P`` once it logs that it is running (waiting at most
    ``timeout`` seconds), and at the end stops the whole group (SIGTERM, then SIGKILL if it has
    not gone within ``stop_timeout`` seconds). Its log is drained in a thread."""
    port = free_port()
    proc = subprocess.Popen(
        [*FLASHKIT, "sim", "serve", "--port", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,  # its own process group, stopped as a whole
    )
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    try:
        seen = b""  # read the pipe itself: a buffered reader could hide a line from select()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"Uvicorn running on" not in seen:
                left = deadline - time.monotonic()
                assert left > 0, f"sim serve did not start within {timeout:g} s: {seen!r}"
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


def server_requests(base_url: str) -> int:
    """The requests the simulator has answered (its own count)."""
    stats = httpx2.get(f"{base_url}/_sim/stats", timeout=10.0).json()["stats"]
    return int(stats["requests"])


def flashkit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``flashkit *args`` in its own process (output to files in ``cwd``)."""
    out = (cwd / "stdout.log").open("a", encoding="utf-8")
    err = (cwd / "stderr.log").open("a", encoding="utf-8")
    try:
        return subprocess.Popen(
            [*FLASHKIT, *args],
            cwd=cwd,
            stdout=out,
            stderr=err,
            text=True,
            env={**os.environ, "FLASHKIT_API_KEY": "sk-durability-test", **(env or {})},
        )
    finally:
        out.close()
        err.close()


def done_words(db: Path) -> int:
    """Words in state ``done`` in a run's SQLite database (0 before it exists)."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            row = c.execute("SELECT count(*) FROM flashkit_words WHERE state = 'done'").fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0
    return int(row[0])


def query(db: Path, sql: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        return c.execute(sql).fetchall()


def tsv_cards(path: Path) -> list[list[str]]:
    """The card rows of an exported cards.tsv (Anki's '#' header lines left out)."""
    lines = path.read_text("utf-8").splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]
