"""The HTTP library the simulator's in-process side is written against: one import to swap.

Every simulator module takes ``httpx`` from here (``from flashkit.sim._http import httpx``), so
moving the simulated transports to httpx2 (the maintained continuation of httpx, same API:
``AsyncBaseTransport``, ``AsyncByteStream``, ``Response``, the exception classes) is this one
line: ``import httpx2 as httpx``.
"""

from __future__ import annotations

import httpx as httpx

__all__ = ["httpx"]
