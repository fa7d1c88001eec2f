"""A real ``flashkit sim serve`` for tests: its own process (and process group) on a free loopback
port, stdin from /dev/null.

``with sim_serve("healthy", "--set", "latency_median=0") as base_url:`` yields
``http://127.0.0.1:{port}`` once the server has logged that it is running, and at the end stops
the whole process group (SIGTERM, then SIGKILL if it has not gone within ``stop_timeout``
seconds). The only wait is for that log line, bounded by ``start_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from _processes import sim_server

INSTANT = ("latency_median=0", "latency_p99=0", "reject_latency=0")
"""``--set`` values for a profile that answers at once."""


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
    docstring; :func:`_processes.sim_server` starts and stops it)."""
    args = ["--profile", profile, "--seed", str(seed), *settings(*pairs)]
    with sim_server(*args, timeout=start_timeout, stop_timeout=stop_timeout) as base_url:
        yield base_url
