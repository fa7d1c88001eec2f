"""The protocol between a Redis limiter and the server: its Lua scripts (package data, in
``lua/``), what a flow asks for (a script call, a sleep), a decision script's reply, the keys a
limit uses, and what this process knows of the server (its epoch token, its clock's offset).
Times are seconds: server times are Unix time on the server's clock.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, Literal, NamedTuple, TypeVar

from flashkit._mutex import Mutex
from flashkit.clock import Clock
from flashkit.ratelimit._base import Counters, RateLimitResult
from flashkit.ratelimit._redis_settings import Settings

__all__ = [
    "ADJUST",
    "CONFIRM",
    "DECIDE",
    "REFUND",
    "RESUME",
    "WAKE",
    "Decision",
    "Eval",
    "Flow",
    "Keys",
    "Reply",
    "Script",
    "Session",
    "Sleep",
    "constants",
    "scripts",
]

T = TypeVar("T")
Source = Literal["redis", "lease", "fallback"]

SCAN: Final = 4096  # entries (and candidate times) a script's search reads at most
NO_LIMIT: Final = "1e18"  # "no max_wait" in a script argument (Lua's tonumber has no inf)
_DRIFT: Final = 1e-4  # how fast two clocks may drift apart (s/s), ageing offset bounds

# --- scripts --------------------------------------------------------------------------------
DECIDE, REFUND, RESUME, CONFIRM, ADJUST, WAKE = range(6)

# Each script is its parts (lua/<part>.lua) concatenated: the prelude (constants, server time,
# epoch check, reply format), the algorithm's state and operations, then the script's own body.
_SW: Final = ("prelude", "sliding_window")
_TB: Final = ("prelude", "bucket", "token_bucket")
_GCRA: Final = ("prelude", "bucket", "gcra")
_PARTS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "sliding_window": (
        (*_SW, "sw_decide"),
        ("sw_refund",),
        (*_SW, "sw_resume"),
        ("prelude", "confirm"),
        (*_SW, "sw_adjust"),
        (*_SW, "sw_wake"),
    ),
    "token_bucket": (
        (*_TB, "tb_decide"),
        ("bucket_refund",),
        (*_TB, "tb_resume"),
        ("prelude", "confirm"),
        (*_TB, "tb_charge"),
    ),
    "gcra": (
        (*_GCRA, "gcra_decide"),
        ("bucket_refund",),
        (*_GCRA, "gcra_resume"),
        ("prelude", "confirm"),
        (*_GCRA, "gcra_charge"),
    ),
}


class Script(NamedTuple):
    name: str
    text: bytes
    sha: bytes  # SHA1 of text, in hex (what EVALSHA names it by)


@functools.cache
def scripts(algorithm: str) -> tuple[Script, ...]:
    """An algorithm's scripts, indexed by DECIDE, REFUND, ... (the same text for every limiter:
    a limiter's constants are arguments, see :func:`constants`)."""
    folder = files("flashkit.ratelimit") / "lua"
    loaded = []
    for parts in _PARTS[algorithm]:
        text = "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)
        data = text.encode()
        sha = hashlib.sha1(data, usedforsecurity=False).hexdigest().encode()
        loaded.append(Script(parts[-1], data, sha))
    return tuple(loaded)


def constants(settings: Settings) -> list[bytes]:
    """ARGV[4..12] of every script with the prelude (see lua/prelude.lua): the limiter's
    constants, as Lua reads them back (``repr`` of a float round-trips through ``tonumber``)."""
    if settings.algorithm == "sliding_window":
        p1, p2 = settings.rate, settings.period
    elif settings.algorithm == "gcra":
        p1, p2 = settings.period / settings.rate, settings.max_count
    else:
        p1, p2 = settings.rate / settings.period, settings.max_count
    values = (
        settings.grace,
        p1,
        p2,
        settings.fallback_units,
        settings.lease_duration,
        settings.tolerance,
        settings.margin,
        settings.period - settings.margin,
        SCAN,
    )
    return [repr(float(value)).encode() for value in values]


# --- what a flow asks for -------------------------------------------------------------------
# The decision logic is written once, as generators that yield what they need done and are
# sent the answer (or thrown the error); flashkit._flow drives them, blocking or on asyncio.
class Eval(NamedTuple):
    """Call script ``script`` (DECIDE, ...) with ``keys`` and ``args``; answered with its reply."""

    script: int
    keys: list[str]
    args: list[Any]


class Sleep(NamedTuple):
    seconds: float


Op = Eval | Sleep
Flow = Generator[Op, Any, T]


class Reply(NamedTuple):
    """A decision script's reply (``reply()`` in lua/prelude.lua), times in server seconds."""

    allowed: bool
    remaining: float
    retry_after: float
    reset_in: float  # seconds from server_now
    server_now: float
    at: float  # when the admitted units count
    epoch: bytes
    member: bytes
    granted: float  # units leased (0: no lease)

    @classmethod
    def decode(cls, raw: bytes) -> Reply:
        f = raw.split(b" ")
        now = float(f[4]) + float(f[5]) / 1e6  # as the script computes it
        at = now if f[6] == b"=" else float(f[6])
        return cls(
            f[0] == b"1", float(f[1]), float(f[2]), float(f[3]), now, at, f[7], f[8], float(f[9])
        )


class Decision(NamedTuple):
    """What a decision flow returns.

    ``allowed``, ``remaining``, ``retry_after``, ``reset_at`` as in
    :class:`~flashkit.ratelimit.RateLimitResult` (``reset_at`` on this process's clock).
    ``server_time``: the server time the admitted units count at (the decision's ``TIME``, a
    waiter's due time, or when it confirmed on waking); estimated from this process's clock for
    a ``"lease"`` or ``"fallback"`` decision; NaN when refused or unknown. ``waited``: seconds
    slept. ``source``: who decided: ``"redis"`` (a script), ``"lease"`` (units of a lease this
    process holds) or ``"fallback"`` (the local limiter during an outage).
    """

    allowed: bool
    remaining: float
    retry_after: float
    reset_at: float
    server_time: float
    waited: float
    source: Source

    def result(self) -> RateLimitResult:
        return RateLimitResult((self.allowed, self.remaining, self.retry_after, self.reset_at))


# --- keys -----------------------------------------------------------------------------------
class Keys:
    """The Redis keys of a limiter. All share the hash tag ``{key_prefix:name}`` (one Redis
    Cluster slot): ``{…}:meta`` (the epoch), and per limit key ``{…}:<key>:log`` (sliding window)
    and ``{…}:<key>:st``. Called with a limit key: a script's KEYS."""

    __slots__ = ("_cache", "_sliding", "meta", "tag")

    def __init__(self, key_prefix: str, name: str, algorithm: str) -> None:
        self.tag = "{" + f"{key_prefix}:{name}" + "}"
        self.meta = f"{self.tag}:meta"
        self._sliding = algorithm == "sliding_window"
        self._cache: dict[str, list[str]] = {}

    def __call__(self, key: str) -> list[str]:
        """Cached (a decision needs them every time); do not modify."""
        keys = self._cache.get(key)
        if keys is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            tag = self.tag
            keys = self._cache[key] = (
                [self.meta, f"{tag}:{key}:log", f"{tag}:{key}:st"]
                if self._sliding
                else [self.meta, f"{tag}:{key}:st"]
            )
        return keys


# --- what this process knows of the server --------------------------------------------------
class Session:
    """The epoch token this process knows (it detects restarts) and the offset of the server's
    clock from the local one (it judges lateness), updated by every reply; the arguments every
    script with the prelude starts with; entry ids unique across processes.
    """

    __slots__ = (
        "_ids",
        "bounds",
        "candidate",
        "client_id",
        "constants",
        "epoch",
        "epoch_seen_at",
        "last_ok_sent",
        "offset",
        "server_clock",
    )

    def __init__(self, constants: list[bytes]) -> None:
        self.constants = constants
        self.epoch = b""
        self.candidate = uuid.uuid4().hex  # written by the first caller when there is none
        self.epoch_seen_at = -math.inf  # local send time of the latest call that saw epoch
        self.last_ok_sent = -math.inf  # local send time of the latest call that succeeded
        self.offset = math.nan  # server time - local clock, from the latest reply
        self.bounds = (-math.inf, math.inf, 0.0)  # its tightest bounds, and when (local clock)
        self.client_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        # Tests only: a stand-in for the server's TIME (scripts then run at its time).
        self.server_clock: Callable[[], float] | None = None

    def prelude(self) -> list[Any]:
        """ARGV[1..12] (see lua/prelude.lua)."""
        override = "" if self.server_clock is None else repr(float(self.server_clock()))
        return [override, self.epoch, self.candidate, *self.constants]

    def entry_id(self) -> str:
        return f"{self.client_id}{next(self._ids)}"

    def saw(self, epoch: bytes, sent: float, server_now: float, received: float) -> None:
        """Bookkeeping after every successful script call (local times ``sent``, ``received``)."""
        if epoch != self.epoch:
            self.epoch = epoch
            if epoch == self.candidate.encode():
                self.candidate = uuid.uuid4().hex
        if sent > self.epoch_seen_at:
            self.epoch_seen_at = sent
        if sent > self.last_ok_sent:
            self.last_ok_sent = sent
        self.offset = server_now - (sent + received) / 2
        # The server - local offset is in [server_now - received, server_now - sent]. Keep the
        # tightest such interval (widened as it ages, for the clocks' drift), unless a new one
        # contradicts it (the server's clock was set): lateness is judged from its middle.
        low, high = server_now - received, server_now - sent
        best_low, best_high, best_at = self.bounds
        slack = (received - best_at) * _DRIFT
        best_low -= slack
        best_high += slack
        if high - low <= best_high - best_low or high < best_low or low > best_high:
            self.bounds = (low, high, received)

    def server_offset(self) -> float:
        """Server time - local clock, as well as this process knows it (see :meth:`saw`)."""
        low, high, _ = self.bounds
        return (low + high) / 2


@dataclass(frozen=True, slots=True, eq=False)
class Shared:
    """What the Redis limiter's parts (outage handling, flows) share: its settings, clock,
    session with the server, key names, counters and the lock over them."""

    settings: Settings
    clock: Clock
    session: Session
    keys: Keys
    counters: Counters
    lock: Mutex
