"""What every limiter shares: the :class:`Limiter` protocol, its results, stats and checks.

A limiter admits *units* (``count`` per call: 1 for a request, the token estimate for a token
limit) per ``key``; times are seconds on the limiter's clock (a Redis limiter: the server's).
"""

from __future__ import annotations

import asyncio
import math
import operator
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, NamedTuple, Protocol

from flashkit._headers import LimitInfo
from flashkit._mutex import Mutex
from flashkit.clock import Clock
from flashkit.errors import ValidationError

__all__ = ["Algorithm", "Grant", "Limiter", "LimiterStats", "RateLimitResult", "Refunds"]

Algorithm = Literal["sliding_window", "token_bucket", "gcra"]
ALGORITHMS: Final = ("sliding_window", "token_bucket", "gcra")
Refunds = Literal["safe", "immediate"]
EPS: Final = 1e-9
WAIT_BUCKETS: Final = (0.0, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0, math.inf)
try:  # the C accessor behind collections.namedtuple's fields
    from collections import _tuplegetter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - not CPython

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(operator.itemgetter(index), doc=doc)


class _Named:
    """``repr`` and ``_asdict`` by the ``_fields`` of a tuple with named fields."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]]

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))  # type: ignore[call-overload]

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        return f"{type(self).__name__}({values})"


# The two results below are tuples with named fields, built from one tuple as
# ``os.stat_result`` is: ``RateLimitResult((True, 4.0, 0.0, 60.0))``. Unlike a NamedTuple they
# have no Python-level ``__new__``, so the limiters' fast paths build one in a single C call
# (a NamedTuple costs a Python call or ``tuple.__new__``'s argument repacking: about 30 ns of a
# 1 µs acquire, ``benchmarks/ratelimit.py``).


class RateLimitResult(_Named, tuple[bool, float, float, float]):
    """The answer of ``try_acquire``: ``RateLimitResult((allowed, remaining, retry_after,
    reset_at))``.

    ``allowed``: whether the units were admitted. ``remaining``: units that could still be
    admitted right now. ``retry_after``: seconds until the same request could pass (0.0 when
    allowed). ``reset_at``: clock time when every unit of the limit is free again.
    """

    __slots__ = ()
    _fields = ("allowed", "remaining", "retry_after", "reset_at")

    if TYPE_CHECKING:

        @property
        def allowed(self) -> bool: ...
        @property
        def remaining(self) -> float: ...
        @property
        def retry_after(self) -> float: ...
        @property
        def reset_at(self) -> float: ...

    else:
        allowed = _tuplegetter(0, "whether the units were admitted")
        remaining = _tuplegetter(1, "units that could still be admitted right now")
        retry_after = _tuplegetter(2, "seconds until the same request could pass")
        reset_at = _tuplegetter(3, "clock time when every unit is free again")


class Grant(_Named, tuple[str, "float | tuple[float, ...]", float, float, Any]):
    """Units an ``acquire`` admitted, and what a later ``adjust`` needs to settle them:
    ``Grant((key, count, waited, admitted_at, limiter))``.

    ``key`` and ``count``: what was asked (a :class:`MultiLimit` grant: one count per limit).
    ``waited``: seconds spent waiting. ``admitted_at``: when the units count, on the limiter's
    time axis (its clock; a Redis limiter's server time; NaN when unknown). ``limiter``: the
    limiter (or shard) holding the units.
    """

    __slots__ = ()
    _fields = ("key", "count", "waited", "admitted_at", "limiter")

    if TYPE_CHECKING:

        @property
        def key(self) -> str: ...
        @property
        def count(self) -> float | tuple[float, ...]: ...  # type: ignore[override]
        @property
        def waited(self) -> float: ...
        @property
        def admitted_at(self) -> float: ...
        @property
        def limiter(self) -> Any: ...

    else:
        key = _tuplegetter(0, "the key asked for")
        count = _tuplegetter(1, "the units asked for (one count per limit for a MultiLimit)")
        waited = _tuplegetter(2, "seconds spent waiting")
        admitted_at = _tuplegetter(3, "when the units count, on the limiter's time axis")
        limiter = _tuplegetter(4, "the limiter (or shard) holding the units")


class LimiterStats(NamedTuple):
    """Counters since the limiter was built.

    ``admitted``/``admitted_units``: calls and units let through; ``rejected``: calls refused
    (``try_acquire`` denials, timeouts, ``max_wait`` refusals); ``waits``: ``(upper bound in
    seconds, count)`` histogram of how long ``acquire`` calls waited; ``refunded_units`` and
    ``forfeited_units``: units given back by cancel/adjust/expiry, or that could not be.
    """

    admitted: int
    admitted_units: float
    rejected: int
    waits: tuple[tuple[float, int], ...]
    refunded_units: float
    forfeited_units: float

    @property
    def waited(self) -> int:
        """Number of ``acquire`` calls that had to wait (> 0 s)."""
        return sum(count for bound, count in self.waits if bound > 0.0)


class Limiter(Protocol):
    """One shape for every limiter: local, multi, sharded, adaptive and Redis.

    The async operation has the plain name; its blocking twin ends in ``_sync``. ``try_acquire``
    never waits (a shared limiter makes one round trip). ``remaining`` is what this process
    knows without a round trip (a shared limiter: its local lease, else 0.0). ``observe_limits``
    feeds what a response said about the upstream's limit to a limiter that learns from it (the
    others ignore it).
    """

    name: str
    clock: Clock

    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult: ...

    async def acquire(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant: ...

    def acquire_sync(
        self, key: str = "default", count: float = 1, *, timeout: float | None = None
    ) -> Grant: ...

    async def adjust(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float: ...

    def adjust_sync(
        self, target: Grant | str, actual_count: float, *, estimated_count: float | None = None
    ) -> float: ...

    def remaining(self, key: str = "default") -> float: ...

    def observe_limits(
        self,
        info: LimitInfo | None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None: ...

    @property
    def stats(self) -> LimiterStats: ...


class Counters:
    """Mutable counters behind :class:`LimiterStats` (updated under the limiter's lock).

    ``unwaited``: ``acquire`` calls admitted at once, counted once here and reported both as
    admitted and in the zero-wait bucket (one update fewer on the hottest path).
    """

    __slots__ = (
        "admitted",
        "admitted_units",
        "forfeited",
        "refunded",
        "rejected",
        "unwaited",
        "waits",
    )

    def __init__(self) -> None:
        self.admitted = 0
        self.unwaited = 0
        self.admitted_units = 0.0
        self.rejected = 0
        self.refunded = 0.0
        self.forfeited = 0.0
        self.waits = [0] * len(WAIT_BUCKETS)

    def waited(self, seconds: float) -> None:
        for i, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                self.waits[i] += 1
                return

    def snapshot(self) -> LimiterStats:
        waits = self.waits.copy()
        waits[0] += self.unwaited
        return LimiterStats(
            self.admitted + self.unwaited,
            self.admitted_units,
            self.rejected,
            tuple(zip(WAIT_BUCKETS, waits, strict=True)),
            self.refunded,
            self.forfeited,
        )


def sum_stats(parts: list[LimiterStats]) -> LimiterStats:
    """Several limiters' counters added up (a sharded limiter's)."""
    waits = tuple(
        (bound, sum(p.waits[i][1] for p in parts)) for i, bound in enumerate(WAIT_BUCKETS)
    )
    return LimiterStats(
        sum(p.admitted for p in parts),
        sum(p.admitted_units for p in parts),
        sum(p.rejected for p in parts),
        waits,
        sum(p.refunded_units for p in parts),
        sum(p.forfeited_units for p in parts),
    )


# --- checks ---------------------------------------------------------------------------------
def check_number(value: object, what: str, hint: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``), else a ValidationError saying so."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"{what} must be a number, got {value!r}; {hint}", code="invalid_config"
        )
    number = float(value)
    ok = number >= 0 if allow_zero else number > 0
    if not (ok and math.isfinite(number)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(
            f"{what} must be finite and {bound}, got {value!r}; {hint}", code="invalid_config"
        )
    return number


def check_actual(actual_count: object, where: str) -> float:
    """An ``adjust`` call's actual units: a finite number >= 0."""
    if isinstance(actual_count, bool) or not isinstance(actual_count, int | float):
        raise ValidationError(
            f"{where}: actual_count must be a number of units, got {actual_count!r}",
            code="invalid_count",
        )
    if not (actual_count >= 0 and math.isfinite(actual_count)):
        raise ValidationError(
            f"{where}: actual_count must be >= 0, got {actual_count!r}", code="invalid_count"
        )
    return float(actual_count)


def check_count(count: object, where: str) -> float:
    """A request's units: a finite number > 0."""
    if isinstance(count, bool) or not isinstance(count, int | float):
        raise ValidationError(
            f"{where}: count must be a positive number of units, got {count!r}",
            code="invalid_count",
        )
    if not (count > 0 and math.isfinite(count)):
        raise ValidationError(
            f"{where}: count must be a positive number of units, got {count!r}",
            code="invalid_count",
        )
    return float(count)


def units_for(limiter: Any, count: object, where: str) -> float:
    """A request's units, refused at once (non-retryable) when ``limiter`` could never admit
    that many: ``limiter`` has ``name``, ``rate``, ``period``, ``algorithm`` and ``max_count``."""
    n = float(count) if type(count) is int and count > 0 else check_count(count, where)
    if n <= limiter.max_count + EPS:
        return n
    what = (
        f"the limit admits at most {limiter.rate:g} units per {limiter.period:g} s"
        if limiter.algorithm == "sliding_window"
        else f"the bucket holds {limiter.max_count:g} unit(s); pass burst >= {n:g} (not strict) "
        "or use algorithm='sliding_window'"
    )
    raise ValidationError(
        f"{limiter.name}: a request of {n:g} units can never be admitted: {what}",
        code="request_too_large",
        details={"count": n, "rate": limiter.rate, "period": limiter.period},
    )


def need_estimate(where: str, target: object, estimated_count: object) -> None:
    """An ``adjust`` by key must say what was acquired."""
    if estimated_count is None:
        raise ValidationError(
            f"{where}({target!r}, ...): with a key, pass estimated_count= (the units acquired), "
            "or pass the Grant that acquire returned",
            code="invalid_count",
        )
    if not isinstance(target, str):
        raise ValidationError(
            f"{where}: settle a Grant or a key (str), got {type(target).__name__}",
            code="invalid_grant",
        )


def foreign_grant(where: str, grant: Grant) -> ValidationError:
    """The error for a grant settled on a limiter that did not make it."""
    return ValidationError(
        f"{where}: the grant was made by {getattr(grant.limiter, 'name', '?')!r}, not by this "
        "limiter; adjust it there",
        code="invalid_grant",
    )


def settlement(
    owner: Any, target: object, estimated_count: float | None, where: str
) -> tuple[str, float, float | None]:
    """The key, estimate and admission time (None: unknown) an ``adjust`` settles: from a
    :class:`Grant`, or from a key with ``estimated_count=`` (required then)."""
    if isinstance(target, Grant):
        if target.limiter is not owner:
            raise foreign_grant(where, target)
        count = target.count
        if isinstance(count, tuple):
            raise ValidationError(
                f"{where}: a MultiLimit grant is settled by its MultiLimit", code="invalid_grant"
            )
        at = target.admitted_at
        return target.key, count, at if math.isfinite(at) else None
    need_estimate(where, target, estimated_count)
    return str(target), check_count(estimated_count, where), None


class LimiterBase:
    """What most limiters share: ``adjust`` as the async twin of ``adjust_sync`` (settling
    needs no I/O in process), ``observe_limits`` ignored (a fixed limit does not learn), and
    ``stats`` read from their counters under their lock."""

    def __init__(self) -> None:
        self._lock = Mutex()
        self._counters = Counters()

    @property
    def stats(self) -> LimiterStats:
        """A :class:`LimiterStats` snapshot."""
        with self._lock:
            return self._counters.snapshot()

    def adjust_sync(self, target: Any, actual_count: Any, *, estimated_count: Any = None) -> float:
        raise NotImplementedError

    async def adjust(self, target: Any, actual_count: Any, *, estimated_count: Any = None) -> float:
        """Settle an estimate with the actual units; see ``adjust_sync``."""
        return self.adjust_sync(target, actual_count, estimated_count=estimated_count)

    def observe_limits(
        self, info: LimitInfo | None, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        """Ignored: a fixed limit does not learn from the upstream's answers."""


# --- sleeping on a clock ----------------------------------------------------------------------
class Alarm:
    """Wakes one parked async waiter early, from any thread (its due time moved earlier)."""

    __slots__ = ("event", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def __call__(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.event.set()
        else:
            self.loop.call_soon_threadsafe(self.event.set)


async def _nap(clock: Clock, delay: float, alarm: Alarm | None) -> bool:
    """Sleep ``delay`` s on ``clock``, or less if ``alarm`` rings first (then return True)."""
    if alarm is None:
        await clock.sleep(delay)
        return False
    if not alarm.event.is_set():
        sleeper = asyncio.ensure_future(clock.sleep(delay))
        ringer = asyncio.ensure_future(alarm.event.wait())
        try:
            await asyncio.wait((sleeper, ringer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            ringer.cancel()
    rang = alarm.event.is_set()
    alarm.event.clear()
    return rang


async def sleep_until(clock: Clock, due: float, delay: float, alarm: Alarm | None = None) -> bool:
    """Sleep ``delay`` s, then on until ``due``: asyncio runs a timer up to its clock resolution
    (1 ns) early, and ``now + (due - now)`` can round below ``due``; a grant is never used early.
    (A few tries at most: a stub clock whose sleep does not move ``now`` must not hang.)
    Returns True, at once, when ``alarm`` rang (the due time moved earlier)."""
    if await _nap(clock, delay, alarm):
        return True
    for _ in range(3):
        left = due - clock.now()
        if left <= 0:
            return False
        if await _nap(clock, left, alarm):
            return True
    return False


class Nap(NamedTuple):
    """What a waiting flow asks for: sleep ``delay`` s on ``clock``, then on until ``due``
    (clock seconds). ``parked``: (the entries' parking dict, the entry) to be woken early when
    a refund moves the entry earlier (async waiters only; the answer is then True)."""

    clock: Clock
    due: float
    delay: float
    parked: tuple[dict[int, Any], object] | None = None


def nap_sync(op: Nap) -> bool:
    """Perform a :class:`Nap` in the calling thread (never woken early)."""
    sleep_until_sync(op.clock, op.due, op.delay)
    return False


async def nap_async(op: Nap) -> bool:
    """Perform a :class:`Nap` in the calling task; True when woken early (its entry moved)."""
    if op.parked is None:
        return await sleep_until(op.clock, op.due, op.delay)
    parking, entry = op.parked
    alarm = Alarm()
    parking[id(entry)] = alarm
    try:
        return await sleep_until(op.clock, op.due, op.delay, alarm)
    finally:
        parking.pop(id(entry), None)


def sleep_until_sync(clock: Clock, due: float, delay: float) -> None:
    """Sync twin of :func:`sleep_until`."""
    clock.sleep_sync(delay)
    for _ in range(3):
        left = due - clock.now()
        if left <= 0:
            return
        clock.sleep_sync(left)
