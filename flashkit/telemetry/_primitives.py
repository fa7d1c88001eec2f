"""Metrics of flashkit's primitives: circuit breakers, rate limiters, retry budgets, retries.

Each ``instrument_*`` helper returns the primitive it was given; :func:`retry_hooks` returns
``on_retry``/``on_giveup`` hooks for :class:`~flashkit.retry.RetryConfig`. Delays are recorded
in seconds; names and units are in :data:`flashkit.telemetry.METRICS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, overload

from opentelemetry.metrics import Meter

from flashkit.breaker import CircuitBreaker, StateChange
from flashkit.budget import RetryBudget
from flashkit.ratelimit import MultiLimit
from flashkit.retry import RetryEvent
from flashkit.telemetry._instruments import (
    HasLimiterStats,
    followed,
    instrument,
    instruments_of,
    registry_lock,
)
from flashkit.telemetry._names import (
    BREAKER_TRANSITIONS,
    RETRY_ATTEMPTS,
    RETRY_DELAY,
    RETRY_GIVEUPS,
)
from flashkit.telemetry._sdk import get_meter

L = TypeVar("L", bound=HasLimiterStats)


def _instrument(meter: Meter | None, name: str) -> Any:
    """The instrument ``name`` of ``meter`` (None: of :func:`get_meter`'s meter, now)."""
    return instrument(meter if meter is not None else get_meter(), name)


def instrument_breaker(breaker: CircuitBreaker, *, meter: Meter | None = None) -> CircuitBreaker:
    """Report ``breaker`` as ``flashkit.breaker.state`` (observable gauge), ``.transitions``
    (a state listener) and ``.rejected`` (from its stats), attribute ``breaker.name``.

    With ``meter=None`` the metrics follow :func:`get_meter`, also after a later
    :func:`configure_opentelemetry`. Instrumenting twice is harmless. Primitives are told apart
    by name: a later one with the same name replaces the earlier (a notebook cell run again),
    so give each breaker, limiter and budget its own. Returns ``breaker``.
    """
    registry = followed if meter is None else instruments_of(meter)
    with registry_lock:
        listening = breaker in registry.listening
        registry.listening.add(breaker)
        if meter is None:
            followed.breakers.add(breaker.name, breaker)
    if not listening:

        def count(change: StateChange) -> None:
            _instrument(meter, BREAKER_TRANSITIONS).add(
                1,
                {
                    "breaker.name": change.name,
                    "breaker.from": change.old.value,
                    "breaker.to": change.new.value,
                },
            )

        breaker.add_listener(count)
    target = meter if meter is not None else get_meter()
    instruments_of(target).watch_breaker(target, breaker)
    return breaker


@overload
def instrument_limiter(limiter: MultiLimit, *, meter: Meter | None = None) -> MultiLimit: ...
@overload
def instrument_limiter(limiter: L, *, meter: Meter | None = None) -> L: ...
def instrument_limiter(limiter: L | MultiLimit, *, meter: Meter | None = None) -> L | MultiLimit:
    """Report a limiter's stats as ``flashkit.ratelimit.admitted``, ``.admitted_units`` and
    ``.rejected`` (observable counters, attribute ``ratelimit.name``).

    Takes a :class:`~flashkit.ratelimit.RateLimiter`, a
    :class:`~flashkit.ratelimit.ShardedRateLimiter`, a
    :class:`~flashkit.ratelimit.RedisRateLimiter` (anything with ``stats`` and ``name``)
    or a :class:`~flashkit.ratelimit.MultiLimit` (each of its limits). Waits are recorded per
    call by :meth:`ClientInstruments.limiter_wait` (``flashkit.ratelimit.wait``). Returns
    ``limiter``.
    """
    parts: tuple[HasLimiterStats, ...] = (
        limiter.limits if isinstance(limiter, MultiLimit) else (limiter,)
    )
    target = meter if meter is not None else get_meter()
    for part in parts:
        if meter is None:
            followed.limiters.add(part.name, part)
        instruments_of(target).watch_limiter(target, part)
    return limiter


def instrument_budget(
    budget: RetryBudget, *, name: str = "default", meter: Meter | None = None
) -> RetryBudget:
    """Report a :class:`~flashkit.budget.RetryBudget`'s granted and refused retries as
    ``flashkit.budget.retries`` / ``.refused`` (observable counters, attribute ``budget.name``).
    Returns ``budget``."""
    target = meter if meter is not None else get_meter()
    if meter is None:
        followed.budgets.add(name, budget)
    instruments_of(target).watch_budget(target, budget, name)
    return budget


class RetryHooks(NamedTuple):
    """``on_retry``/``on_giveup`` for :class:`~flashkit.retry.RetryConfig`:
    ``RetryConfig(..., **retry_hooks(name="chat")._asdict())``."""

    on_retry: Callable[[RetryEvent], None]
    on_giveup: Callable[[RetryEvent], None]


def _error_type(error: BaseException | None) -> str:
    return type(error).__name__ if error is not None else "result"


def retry_hooks(
    *,
    name: str = "default",
    meter: Meter | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    on_giveup: Callable[[RetryEvent], None] | None = None,
) -> RetryHooks:
    """Retry hooks recording ``flashkit.retry.attempts`` (failed attempts, ``retry.decision``
    ``"retry"`` or ``"giveup"``), ``.delay`` (s) and ``.giveups`` (``retry.reason``), attribute
    ``retry.name``; then they call your own ``on_retry``/``on_giveup``, if given."""

    def record_retry(event: RetryEvent) -> None:
        attributes = {"retry.name": name}
        _instrument(meter, RETRY_ATTEMPTS).add(
            1, {**attributes, "retry.decision": "retry", "error.type": _error_type(event.error)}
        )
        _instrument(meter, RETRY_DELAY).record(event.delay, attributes)
        if on_retry is not None:
            on_retry(event)

    def record_giveup(event: RetryEvent) -> None:
        reason = event.reason or "unknown"
        _instrument(meter, RETRY_ATTEMPTS).add(
            1,
            {
                "retry.name": name,
                "retry.decision": "giveup",
                "error.type": _error_type(event.error),
            },
        )
        _instrument(meter, RETRY_GIVEUPS).add(1, {"retry.name": name, "retry.reason": reason})
        if on_giveup is not None:
            on_giveup(event)

    return RetryHooks(record_retry, record_giveup)
