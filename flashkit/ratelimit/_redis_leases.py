"""Leases (``lease=k``, sliding window): units one round trip took for this process, handed out
locally until ``lease_duration`` seconds after the request was sent (local clock). Unused units
of an expired lease are given back on the next round trip for that key, or at ``close()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flashkit._mutex import Mutex
from flashkit.ratelimit._base import EPS

__all__ = ["Lease", "Leases"]


@dataclass(slots=True, eq=False)
class Lease:
    """``units`` taken as the log entry ``member``; ``left`` of them unused; usable until
    ``until`` (local clock). ``offset``: server time - local clock when it was granted."""

    member: bytes
    units: float
    left: float
    until: float
    offset: float
    reset_at: float


Returns = list[tuple[bytes, float]]  # (member, units kept: those used)


class Leases:
    """The leases this process holds, per limit key, and the unused units to give back."""

    __slots__ = ("_inflight", "_lock", "held", "returns")

    def __init__(self, lock: Mutex) -> None:
        self._lock = lock
        self.held: dict[str, list[Lease]] = {}
        self.returns: dict[str, Returns] = {}
        self._inflight: set[str] = set()  # keys with a lease request in flight

    def take(self, key: str, n: float, now: float) -> Lease | None:
        """Take ``n`` units of a live lease for ``key`` (the lease, or None); expired leases
        are dropped, their unused units kept to give back (lock held by the caller)."""
        leases = self.held.get(key)
        if not leases:
            return None
        hit = None
        for lease in list(leases):
            if now >= lease.until:
                leases.remove(lease)
                if lease.left > EPS:
                    self.returns.setdefault(key, []).append(
                        (lease.member, lease.units - lease.left)
                    )
            elif hit is None and lease.left >= n - EPS:
                lease.left -= n
                hit = lease
        if not leases:
            del self.held[key]
        return hit

    def claim(self, key: str) -> bool:
        """Whether this call may ask for a lease for ``key`` (one request in flight per key)."""
        if key in self._inflight:
            return False
        self._inflight.add(key)
        return True

    def release(self, key: str) -> None:
        self._inflight.discard(key)

    def keep(self, key: str, lease: Lease) -> None:
        with self._lock:
            self.held.setdefault(key, []).append(lease)

    def pop_returns(self, key: str) -> Returns | None:
        return self.returns.pop(key, None) if self.returns else None

    def unused(self, key: str, now: float) -> float:
        """Units of live leases for ``key`` not handed out yet."""
        with self._lock:
            return sum(lease.left for lease in self.held.get(key, ()) if now < lease.until)

    def drain(self) -> dict[str, Returns]:
        """Every lease's unused units, to give back now (at close); no lease is held after."""
        with self._lock:
            for key, leases in self.held.items():
                for lease in leases:
                    if lease.left > EPS:
                        self.returns.setdefault(key, []).append(
                            (lease.member, lease.units - lease.left)
                        )
            self.held.clear()
            returns, self.returns = self.returns, {}
        return returns
