"""The instruments of each meter, made once, and the primitives their observable ones read.

Every helper that records a metric gets its instrument from :func:`instrument`. Observable
instruments read the stats of the breakers, limiters and budgets registered here when metrics
are collected (values cumulative since each primitive was built; histograms in seconds).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from flashkit.breaker import CircuitBreaker
from flashkit.budget import BudgetStats, RetryBudget
from flashkit.ratelimit import LimiterStats
from flashkit.telemetry._names import (
    _SECONDS_BUCKETS,
    BREAKER_REJECTED,
    BREAKER_STATE,
    BREAKER_STATE_VALUES,
    BUDGET_REFUSED,
    BUDGET_RETRIES,
    METRICS,
    RATELIMIT_ADMITTED,
    RATELIMIT_ADMITTED_UNITS,
    RATELIMIT_REJECTED,
    MetricSpec,
)


class HasLimiterStats(Protocol):
    """What a limiter needs to be observed: its ``stats`` and a ``name``."""

    @property
    def stats(self) -> LimiterStats: ...

    name: str


W = TypeVar("W")


class _Watched(Generic[W]):
    """Primitives by name, weakly: a later primitive with the same name replaces the earlier one
    (a notebook cell run again), and a collected one disappears."""

    def __init__(self) -> None:
        self._refs: dict[str, weakref.ref[W]] = {}

    def add(self, name: str, item: W) -> None:
        self._refs[name] = weakref.ref(item)

    def items(self) -> list[tuple[str, W]]:
        live = []
        for name, ref in list(self._refs.items()):
            item = ref()
            if item is None:
                self._refs.pop(name, None)
            else:
                live.append((name, item))
        return live

    def values(self) -> list[W]:
        return [item for _, item in self.items()]


class Instruments:
    """The instruments of one meter and the primitives its observable instruments read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}
        self.breakers: _Watched[CircuitBreaker] = _Watched()
        self.limiters: _Watched[HasLimiterStats] = _Watched()
        self.budgets: _Watched[RetryBudget] = _Watched()
        self.listening: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

    def get(self, meter: Meter, name: str) -> Any:
        with self._lock:
            instrument = self._made.get(name)
            if instrument is None:
                instrument = self._made[name] = self._create(meter, METRICS[name])
            return instrument

    def _create(self, meter: Meter, spec: MetricSpec) -> Any:
        name, kind, unit, description = spec
        if kind == "counter":
            return meter.create_counter(name, unit, description)
        if kind == "histogram":
            return meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS
            )
        if kind == "gauge":
            return meter.create_gauge(name, unit, description)
        callback = _OBSERVERS[name]

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return callback(self)

        if kind == "observable_gauge":
            return meter.create_observable_gauge(name, [observe], unit, description)
        return meter.create_observable_counter(name, [observe], unit, description)

    def _limiters(self, read: Callable[[LimiterStats], float]) -> list[Observation]:
        return [
            Observation(read(limiter.stats), {"ratelimit.name": name})
            for name, limiter in self.limiters.items()
        ]

    def _rejections(self) -> list[Observation]:
        return [
            Observation(breaker.stats.rejected, {"breaker.name": name})
            for name, breaker in self.breakers.items()
        ]

    def _states(self) -> list[Observation]:
        return [
            Observation(BREAKER_STATE_VALUES[breaker.state], {"breaker.name": name})
            for name, breaker in self.breakers.items()
        ]

    def _budgets(self, read: Callable[[BudgetStats], int]) -> list[Observation]:
        return [
            Observation(read(budget.stats), {"budget.name": name})
            for name, budget in self.budgets.items()
        ]

    def watch_breaker(self, meter: Meter, breaker: CircuitBreaker) -> None:
        self.breakers.add(breaker.name, breaker)
        self.get(meter, BREAKER_STATE)
        self.get(meter, BREAKER_REJECTED)

    def watch_limiter(self, meter: Meter, limiter: HasLimiterStats) -> None:
        self.limiters.add(limiter.name, limiter)
        for name in (RATELIMIT_ADMITTED, RATELIMIT_ADMITTED_UNITS, RATELIMIT_REJECTED):
            self.get(meter, name)

    def watch_budget(self, meter: Meter, budget: RetryBudget, name: str) -> None:
        self.budgets.add(name, budget)
        self.get(meter, BUDGET_RETRIES)
        self.get(meter, BUDGET_REFUSED)


_OBSERVERS: Final[Mapping[str, Callable[[Instruments], Iterable[Observation]]]] = {
    BREAKER_STATE: Instruments._states,
    BREAKER_REJECTED: Instruments._rejections,
    RATELIMIT_ADMITTED: lambda i: i._limiters(lambda s: s.admitted),
    RATELIMIT_ADMITTED_UNITS: lambda i: i._limiters(lambda s: s.admitted_units),
    RATELIMIT_REJECTED: lambda i: i._limiters(lambda s: s.rejected),
    BUDGET_RETRIES: lambda i: i._budgets(lambda s: s.retries),
    BUDGET_REFUSED: lambda i: i._budgets(lambda s: s.refused),
}

registry_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary[Meter, Instruments] = weakref.WeakKeyDictionary()
followed = Instruments()
"""Primitives instrumented with ``meter=None``: re-attached to every newly configured meter."""


def instruments_of(meter: Meter) -> Instruments:
    """The registry of ``meter``'s instruments (made on first use)."""
    with registry_lock:
        found = _registries.get(meter)
        if found is None:
            found = _registries[meter] = Instruments()
        return found


def instrument(meter: Meter, name: str) -> Any:
    """The instrument ``name`` (one of :data:`METRICS`) of ``meter``, made once."""
    return instruments_of(meter).get(meter, name)


def follow(meter: Meter) -> None:
    """Let ``meter`` observe every primitive instrumented with ``meter=None``."""
    registry = instruments_of(meter)
    for breaker in followed.breakers.values():
        registry.watch_breaker(meter, breaker)
    for limiter in followed.limiters.values():
        registry.watch_limiter(meter, limiter)
    for name, budget in followed.budgets.items():
        registry.watch_budget(meter, budget, name)
