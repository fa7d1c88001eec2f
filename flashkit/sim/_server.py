"""The simulated upstream over real HTTP: :func:`serve` runs its ASGI app with uvicorn.

The app and its routes live in :mod:`flashkit.sim._asgi` (:attr:`SimulatedUpstream.asgi_app`);
the server that does the network faults on the socket in :mod:`flashkit.sim._uvicorn`.
"""

from __future__ import annotations

from flashkit.clock import SystemClock
from flashkit.sim._profile import FaultProfile
from flashkit.sim._upstream import SimulatedUpstream

__all__ = ["serve"]


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
    reproducible. Point any OpenAI client at ``http://{host}:{port}/v1`` (an Anthropic client at
    ``http://{host}:{port}``) with any API key but ``invalid``. The profile's network faults
    happen on the socket (resets are TCP RSTs, refusal windows close the listener): see
    :mod:`flashkit.sim._network_faults`. Needs uvicorn (the ``server`` extra:
    ``pip install 'flashkit[server]'``).
    """
    try:
        from flashkit.sim._uvicorn import SimServer
    except ModuleNotFoundError as error:  # pragma: no cover - uvicorn is in the dev environment
        if error.name != "uvicorn":
            raise
        raise ImportError(
            "flashkit.sim.serve needs uvicorn: pip install 'flashkit[server]'"
        ) from error

    upstream = SimulatedUpstream(profile, seed=seed, clock=SystemClock())
    SimServer(upstream, host=host, port=port, log_level=log_level).run()
