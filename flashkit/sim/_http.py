"""The HTTP library the simulator's in-process side is written against: one import to swap.

Every simulator module takes ``httpx`` from here (``from flashkit.sim._http import httpx``). It is
httpx2 (the maintained continuation of httpx, same API: ``AsyncBaseTransport``,
``AsyncByteStream``, ``Response``, the exception classes), which flashkit's client is built on:
the simulated transports plug into an ``httpx2.AsyncClient`` (and so into the official SDKs).
"""

from __future__ import annotations

import httpx2 as httpx

__all__ = ["httpx"]
