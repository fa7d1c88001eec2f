"""OpenTelemetry for flashkit: one setup call, one metric naming scheme, one span schema.

>>> telemetry = configure_opentelemetry(in_memory=True)    # notebooks and tests
>>> breaker = instrument_breaker(CircuitBreaker(name="openai"))
>>> config = RetryConfig(max_attempts=5, **retry_hooks(name="chat")._asdict())
>>> telemetry.metrics()["flashkit.breaker.state"]           # [{"attributes": ..., "value": 0}]

**Setup.** :func:`configure_opentelemetry` builds a tracer and a meter provider with the resource
``service.name``, ``service.version`` (``flashkit.__version__``) and ``deployment.environment``
(``$ENVIRONMENT``, default ``"development"``). Spans and metrics go to OTLP/HTTP only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the exporters read the standard ``OTEL_EXPORTER_OTLP_*``
variables; needs the ``otlp`` extra), and to memory with ``in_memory=True``. It may be called again
(tests, notebook re-runs): each call returns a new :class:`Telemetry`, and :func:`get_tracer` /
:func:`get_meter` follow the most recent one (else OpenTelemetry's global providers, no-ops
unless someone set them). OpenTelemetry's globals can be set only once per process; the first
call sets them (``set_global=True``), later calls say so in the log and leave them.

**Metrics** (names in :data:`METRICS`; kind, unit, attributes):

- ``flashkit.retry.attempts`` counter ``{attempt}``: retry.name, retry.decision (retry|giveup),
  error.type
- ``flashkit.retry.delay`` histogram ``s``: retry.name
- ``flashkit.retry.giveups`` counter ``{call}``: retry.name, retry.reason
- ``flashkit.budget.retries`` / ``flashkit.budget.refused`` observable counters ``{retry}``:
  budget.name
- ``flashkit.breaker.state`` observable gauge ``1`` (0 closed, 1 open, 2 half-open, 3 isolated):
  breaker.name
- ``flashkit.breaker.transitions`` counter ``{transition}``: breaker.name, breaker.from, breaker.to
- ``flashkit.breaker.rejected`` observable counter ``{call}``: breaker.name
- ``flashkit.ratelimit.wait`` histogram ``s``: ratelimit.name
- ``flashkit.ratelimit.admitted`` / ``flashkit.ratelimit.rejected`` observable counters
  ``{call}``, ``flashkit.ratelimit.admitted_units`` observable counter ``{unit}``: ratelimit.name
- ``flashkit.client.requests`` counter ``{request}``: model, stage, outcome
- ``flashkit.client.duration`` histogram ``s``: model, stage, outcome
- ``flashkit.client.tokens`` counter ``{token}``: model, stage, token.type (input|output)

``flashkit.retry.attempts`` counts *failed* attempts (what the retry hooks see); successful calls
are counted by ``flashkit.client.requests``. Observable counters read the primitives' own
``stats`` (cumulative since each was built) when metrics are collected.

**Span schema** of an LLM client call (:class:`ClientInstruments`): a span
``flashkit.client.chat`` (kind CLIENT) with attributes ``model``, ``stage``, ``outcome`` (``"ok"``,
or the error's category such as ``"rate_limit"``), ``attempts`` and ``tokens`` (also
``tokens.input``/``tokens.output``), and one event ``flashkit.attempt`` per attempt with
``attempt`` (1-based), ``delay`` (s slept before it), ``retry_after`` (server hint, s),
``breaker.state`` (``"closed"``, ``"open"``, ``"half_open"``, ``"isolated"``), ``ratelimit.wait``
(s), ``http.status_code``, ``error.type`` and ``error.message`` — each only when known. A failed
call has status ERROR, ``error.type`` and an ``exception`` event. Every message placed in a span
goes through :func:`flashkit.errors.redact` (API keys and bearer tokens never leave the process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    NamedTuple,
    Protocol,
    TypeVar,
    overload,
)

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from flashkit.breaker import CircuitBreaker, CircuitState, StateChange
from flashkit.budget import BudgetStats, RetryBudget
from flashkit.clock import Clock, default_clock
from flashkit.errors import StructuredError, redact
from flashkit.ratelimit import LimiterStats, MultiLimit
from flashkit.retry import RetryEvent

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = [
    "ATTEMPT_EVENT",
    "BREAKER_REJECTED",
    "BREAKER_STATE",
    "BREAKER_STATE_VALUES",
    "BREAKER_TRANSITIONS",
    "BUDGET_REFUSED",
    "BUDGET_RETRIES",
    "CLIENT_DURATION",
    "CLIENT_REQUESTS",
    "CLIENT_SPAN",
    "CLIENT_TOKENS",
    "ClientCall",
    "ClientInstruments",
    "configure_opentelemetry",
    "current_telemetry",
    "get_meter",
    "get_tracer",
    "instrument_breaker",
    "instrument_budget",
    "instrument_limiter",
    "METRICS",
    "MetricSpec",
    "RATELIMIT_ADMITTED",
    "RATELIMIT_ADMITTED_UNITS",
    "RATELIMIT_REJECTED",
    "RATELIMIT_WAIT",
    "record_attempt",
    "record_error",
    "RETRY_ATTEMPTS",
    "RETRY_DELAY",
    "RETRY_GIVEUPS",
    "retry_hooks",
    "RetryHooks",
    "Telemetry",
]

logger = logging.getLogger("flashkit.telemetry")

T = TypeVar("T")

_SCOPE: Final = "flashkit"  # the tracer and meter name flashkit's helpers use

# --- the naming scheme ---------------------------------------------------------------------
RETRY_ATTEMPTS: Final = "flashkit.retry.attempts"
RETRY_DELAY: Final = "flashkit.retry.delay"
RETRY_GIVEUPS: Final = "flashkit.retry.giveups"
BUDGET_RETRIES: Final = "flashkit.budget.retries"
BUDGET_REFUSED: Final = "flashkit.budget.refused"
BREAKER_STATE: Final = "flashkit.breaker.state"
BREAKER_TRANSITIONS: Final = "flashkit.breaker.transitions"
BREAKER_REJECTED: Final = "flashkit.breaker.rejected"
RATELIMIT_WAIT: Final = "flashkit.ratelimit.wait"
RATELIMIT_ADMITTED: Final = "flashkit.ratelimit.admitted"
RATELIMIT_ADMITTED_UNITS: Final = "flashkit.ratelimit.admitted_units"
RATELIMIT_REJECTED: Final = "flashkit.ratelimit.rejected"
CLIENT_REQUESTS: Final = "flashkit.client.requests"
CLIENT_DURATION: Final = "flashkit.client.duration"
CLIENT_TOKENS: Final = "flashkit.client.tokens"

CLIENT_SPAN: Final = "flashkit.client.chat"
ATTEMPT_EVENT: Final = "flashkit.attempt"

BREAKER_STATE_VALUES: Final[Mapping[CircuitState, int]] = {
    CircuitState.CLOSED: 0,
    CircuitState.OPEN: 1,
    CircuitState.HALF_OPEN: 2,
    CircuitState.ISOLATED: 3,
}
"""What ``flashkit.breaker.state`` reports for each state."""

# Histogram bucket bounds in seconds (OpenTelemetry's defaults are meant for milliseconds).
_SECONDS_BUCKETS: Final = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
)  # fmt: skip
_MAX_TEXT: Final = 512  # characters of an error message kept in a span


class MetricSpec(NamedTuple):
    """One metric of the scheme: its name, instrument kind, UCUM unit and description."""

    name: str
    kind: str  # "counter", "histogram", "observable_counter" or "observable_gauge"
    unit: str
    description: str


METRICS: Final[Mapping[str, MetricSpec]] = {
    spec.name: spec
    for spec in (
        MetricSpec(RETRY_ATTEMPTS, "counter", "{attempt}", "Failed attempts seen by retry hooks"),
        MetricSpec(RETRY_DELAY, "histogram", "s", "Backoff delay chosen before a retry"),
        MetricSpec(RETRY_GIVEUPS, "counter", "{call}", "Retrying calls that gave up"),
        MetricSpec(BUDGET_RETRIES, "observable_counter", "{retry}", "Retries a budget granted"),
        MetricSpec(BUDGET_REFUSED, "observable_counter", "{retry}", "Retries a budget refused"),
        MetricSpec(
            BREAKER_STATE,
            "observable_gauge",
            "1",
            "Circuit state: 0 closed, 1 open, 2 half-open, 3 isolated",
        ),
        MetricSpec(BREAKER_TRANSITIONS, "counter", "{transition}", "Circuit state transitions"),
        MetricSpec(BREAKER_REJECTED, "observable_counter", "{call}", "Calls a breaker rejected"),
        MetricSpec(RATELIMIT_WAIT, "histogram", "s", "Time spent waiting for a rate limiter"),
        MetricSpec(RATELIMIT_ADMITTED, "observable_counter", "{call}", "Calls a limiter admitted"),
        MetricSpec(
            RATELIMIT_ADMITTED_UNITS,
            "observable_counter",
            "{unit}",
            "Units (requests or tokens) a limiter admitted",
        ),
        MetricSpec(RATELIMIT_REJECTED, "observable_counter", "{call}", "Calls a limiter refused"),
        MetricSpec(CLIENT_REQUESTS, "counter", "{request}", "LLM client calls, by outcome"),
        MetricSpec(CLIENT_DURATION, "histogram", "s", "LLM client call duration, retries included"),
        MetricSpec(CLIENT_TOKENS, "counter", "{token}", "Tokens used by LLM client calls"),
    )
}
"""Every metric flashkit records, by name."""


# --- setup -----------------------------------------------------------------------------------
_state_lock = threading.Lock()
_current: Telemetry | None = None
_global_owner: Telemetry | None = None


@dataclass(eq=False)
class Telemetry:
    """What :func:`configure_opentelemetry` built. ``span_exporter``/``metric_reader`` are set
    in memory mode; ``span_exporters``/``metric_exporters`` list every exporter attached;
    ``is_global`` says whether these providers are OpenTelemetry's global ones."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    resource: Resource
    span_exporter: InMemorySpanExporter | None = None
    metric_reader: InMemoryMetricReader | None = None
    span_exporters: tuple[SpanExporter, ...] = ()
    metric_readers: tuple[MetricReader, ...] = ()
    metric_exporters: tuple[MetricExporter, ...] = ()
    is_global: bool = False
    _closed: bool = field(default=False, init=False, repr=False)

    def tracer(self, name: str = _SCOPE) -> Tracer:
        """A tracer of this telemetry's provider."""
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str = _SCOPE) -> Meter:
        """A meter of this telemetry's provider."""
        return self.meter_provider.get_meter(name)

    def _memory(self) -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
        if self.span_exporter is None or self.metric_reader is None:
            raise RuntimeError(
                "this Telemetry keeps nothing in memory; "
                "use configure_opentelemetry(in_memory=True)"
            )
        return self.span_exporter, self.metric_reader

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        """Spans ended so far, oldest first (in-memory mode only)."""
        return self._memory()[0].get_finished_spans()

    def clear_spans(self) -> None:
        """Forget the finished spans kept in memory."""
        self._memory()[0].clear()

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        """Collect now and return the data points by metric name (in-memory mode only).

        A counter or gauge point is ``{"attributes": {...}, "value": v}``; a histogram point is
        ``{"attributes", "count", "sum", "min", "max", "bounds", "bucket_counts"}``. Values are
        cumulative since the meter provider was built.
        """
        from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

        data = self._memory()[1].get_metrics_data()
        found: dict[str, list[dict[str, Any]]] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points = found.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, HistogramDataPoint):
                            points.append(
                                {
                                    "attributes": attributes,
                                    "count": point.count,
                                    "sum": point.sum,
                                    "min": point.min,
                                    "max": point.max,
                                    "bounds": tuple(point.explicit_bounds),
                                    "bucket_counts": tuple(point.bucket_counts),
                                }
                            )
                        elif isinstance(point, NumberDataPoint):
                            points.append({"attributes": attributes, "value": point.value})
        return found

    def shutdown(self) -> None:
        """Flush and stop both providers (idempotent). :func:`get_tracer`/:func:`get_meter` stop
        following this telemetry; global providers, once set, stay set (and stopped)."""
        global _current
        with _state_lock:
            if self._closed:
                return
            self._closed = True
            if _current is self:
                _current = None
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configure_opentelemetry(
    service_name: str = "flashkit",
    *,
    in_memory: bool = False,
    environment: str | None = None,
    resource_attributes: Mapping[str, str | bool | int | float] | None = None,
    set_global: bool = True,
    export_interval: float | None = None,
) -> Telemetry:
    """Build tracer and meter providers for ``service_name`` and make flashkit use them.

    Args:
        service_name: the resource's ``service.name`` (default ``"flashkit"``).
        in_memory: keep spans and metrics in memory (for :meth:`Telemetry.finished_spans`
            and :meth:`Telemetry.metrics`; default False).
        environment: ``deployment.environment`` (default ``$ENVIRONMENT``, else
            ``"development"``).
        resource_attributes: more resource attributes (they win over ``OTEL_RESOURCE_ATTRIBUTES``).
        set_global: also install the providers as OpenTelemetry's globals, which only the first
            call in a process can do (default True).
        export_interval: seconds between OTLP metric exports (default
            ``$OTEL_METRIC_EXPORT_INTERVAL``, else 60).

    OTLP/HTTP exporters are attached only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; they read
    the endpoint (adding ``/v1/traces`` and ``/v1/metrics``), headers and timeout from the
    standard ``OTEL_EXPORTER_OTLP_*`` variables. They need ``pip install 'flashkit[otlp]'``.
    """
    global _current, _global_owner
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from flashkit import __version__

    if export_interval is not None and not export_interval > 0:
        raise ValueError(f"export_interval must be > 0 seconds, got {export_interval!r}")
    attributes: dict[str, str | bool | int | float] = {
        "service.name": service_name,
        "service.version": __version__,
        "deployment.environment": environment or os.environ.get("ENVIRONMENT") or "development",
    }
    # The current semantic-conventions name of the same attribute.
    attributes["deployment.environment.name"] = attributes["deployment.environment"]
    attributes.update(resource_attributes or {})
    resource = Resource.create(attributes)

    tracer_provider = TracerProvider(resource=resource)
    span_exporters: list[SpanExporter] = []
    readers: list[MetricReader] = []
    span_memory: InMemorySpanExporter | None = None
    metric_memory: InMemoryMetricReader | None = None
    if in_memory:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        span_memory = InMemorySpanExporter()
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_memory))
        span_exporters.append(span_memory)
        metric_memory = InMemoryMetricReader()
        readers.append(metric_memory)
    metric_exporters: list[MetricExporter] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        span_exporter, metric_reader, metric_exporter = _otlp(tracer_provider, export_interval)
        span_exporters.append(span_exporter)
        readers.append(metric_reader)
        metric_exporters.append(metric_exporter)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        resource,
        span_exporter=span_memory,
        metric_reader=metric_memory,
        span_exporters=tuple(span_exporters),
        metric_readers=tuple(readers),
        metric_exporters=tuple(metric_exporters),
    )
    with _state_lock:
        if set_global:
            telemetry.is_global = _install_globals(telemetry, _global_owner)
            if telemetry.is_global:
                _global_owner = telemetry
        _current = telemetry
    _follow(telemetry.meter())
    return telemetry


def _otlp(
    tracer_provider: TracerProvider, export_interval: float | None
) -> tuple[SpanExporter, MetricReader, MetricExporter]:
    """Attach OTLP/HTTP exporters (imported here: flashkit works without them)."""
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as error:
        raise ImportError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP/HTTP exporter is not installed; "
            "pip install 'flashkit[otlp]' (or unset the variable)"
        ) from error
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        logger.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%r: flashkit exports with http/protobuf", protocol
        )
    # No endpoint argument: given one, the exporters would post to it verbatim; from the
    # variable they add the signal path (/v1/traces, /v1/metrics) as the OTLP spec says.
    span_exporter = OTLPSpanExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    metric_exporter = OTLPMetricExporter()
    interval = None if export_interval is None else export_interval * 1000.0
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval)
    return span_exporter, reader, metric_exporter


def _install_globals(telemetry: Telemetry, owner: Telemetry | None) -> bool:
    """Make ``telemetry``'s providers OpenTelemetry's globals if nobody has; log why not."""
    if owner is not None:
        logger.info(
            "OpenTelemetry's global providers were set by an earlier configure_opentelemetry() "
            "and cannot be replaced; flashkit.get_tracer()/get_meter() use the new providers, "
            "opentelemetry.trace.get_tracer() keeps the first ones"
        )
        return False
    if not (_global_tracer_unset() and _global_meter_unset()):
        logger.warning(
            "OpenTelemetry's global providers were already set by another library; flashkit "
            "leaves them, and flashkit.get_tracer()/get_meter() use the providers it built"
        )
        return False
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    return (
        trace.get_tracer_provider() is telemetry.tracer_provider
        and metrics.get_meter_provider() is telemetry.meter_provider
    )


def _global_tracer_unset() -> bool:
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _global_meter_unset() -> bool:
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - a future API without the private class
        return True
    return isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)


def current_telemetry() -> Telemetry | None:
    """The telemetry :func:`get_tracer`/:func:`get_meter` follow (None: the globals)."""
    return _current


def get_tracer(name: str = _SCOPE) -> Tracer:
    """A tracer of the most recently configured :class:`Telemetry`, else of the global provider
    (a no-op until someone sets one). Cheap: call it where you trace, not once at import."""
    current = _current
    return current.tracer(name) if current is not None else trace.get_tracer(name)


def get_meter(name: str = _SCOPE) -> Meter:
    """A meter of the most recently configured :class:`Telemetry`, else of the global provider
    (a no-op until someone sets one)."""
    current = _current
    return current.meter(name) if current is not None else metrics.get_meter(name)


# --- instruments, created once per meter ------------------------------------------------------
class _HasLimiterStats(Protocol):
    @property
    def stats(self) -> LimiterStats: ...

    name: str


L = TypeVar("L", bound=_HasLimiterStats)
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


class _Instruments:
    """The instruments of one meter and the primitives its observable instruments read.

    Creating an instrument twice on one meter only logs a warning and drops the second's
    callbacks, so every helper goes through here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}
        self.breakers: _Watched[CircuitBreaker] = _Watched()
        self.limiters: _Watched[_HasLimiterStats] = _Watched()
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

    def watch_limiter(self, meter: Meter, limiter: _HasLimiterStats) -> None:
        self.limiters.add(limiter.name, limiter)
        for name in (RATELIMIT_ADMITTED, RATELIMIT_ADMITTED_UNITS, RATELIMIT_REJECTED):
            self.get(meter, name)

    def watch_budget(self, meter: Meter, budget: RetryBudget, name: str) -> None:
        self.budgets.add(name, budget)
        self.get(meter, BUDGET_RETRIES)
        self.get(meter, BUDGET_REFUSED)


_OBSERVERS: Final[Mapping[str, Callable[[_Instruments], Iterable[Observation]]]] = {
    BREAKER_STATE: _Instruments._states,
    BREAKER_REJECTED: _Instruments._rejections,
    RATELIMIT_ADMITTED: lambda i: i._limiters(lambda s: s.admitted),
    RATELIMIT_ADMITTED_UNITS: lambda i: i._limiters(lambda s: s.admitted_units),
    RATELIMIT_REJECTED: lambda i: i._limiters(lambda s: s.rejected),
    BUDGET_RETRIES: lambda i: i._budgets(lambda s: s.retries),
    BUDGET_REFUSED: lambda i: i._budgets(lambda s: s.refused),
}

_registry_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
# Primitives instrumented with meter=None: re-attached to every newly configured Telemetry.
_followed = _Instruments()


def _instruments(meter: Meter) -> _Instruments:
    with _registry_lock:
        found = _registries.get(meter)
        if found is None:
            found = _registries[meter] = _Instruments()
        return found


def _instrument(meter: Meter | None, name: str) -> Any:
    """The instrument ``name`` of ``meter`` (None: of :func:`get_meter`'s meter, now)."""
    meter = meter if meter is not None else get_meter()
    return _instruments(meter).get(meter, name)


def _follow(meter: Meter) -> None:
    """Let ``meter`` observe every primitive instrumented with ``meter=None``."""
    registry = _instruments(meter)
    for breaker in _followed.breakers.values():
        registry.watch_breaker(meter, breaker)
    for limiter in _followed.limiters.values():
        registry.watch_limiter(meter, limiter)
    for name, budget in _followed.budgets.items():
        registry.watch_budget(meter, budget, name)


# --- primitives ------------------------------------------------------------------------------
def instrument_breaker(breaker: CircuitBreaker, *, meter: Meter | None = None) -> CircuitBreaker:
    """Report ``breaker`` as ``flashkit.breaker.state`` (observable gauge), ``.transitions``
    (a state listener) and ``.rejected`` (from its stats), attribute ``breaker.name``.

    With ``meter=None`` the metrics follow :func:`get_meter`, also after a later
    :func:`configure_opentelemetry`. Instrumenting twice is harmless. Primitives are told apart
    by name: a later one with the same name replaces the earlier (a notebook cell run again),
    so give each breaker, limiter and budget its own. Returns ``breaker``.
    """
    registry = _followed if meter is None else _instruments(meter)
    with _registry_lock:
        listening = breaker in registry.listening
        registry.listening.add(breaker)
        if meter is None:
            _followed.breakers.add(breaker.name, breaker)
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
    _instruments(target).watch_breaker(target, breaker)
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
    :class:`~flashkit.redis_ratelimit.RedisRateLimiter` (anything with ``stats`` and ``name``)
    or a :class:`~flashkit.ratelimit.MultiLimit` (each of its limits). Waits are recorded per
    call by :meth:`ClientInstruments.limiter_wait` (``flashkit.ratelimit.wait``). Returns
    ``limiter``.
    """
    parts: tuple[_HasLimiterStats, ...] = (
        limiter.limits if isinstance(limiter, MultiLimit) else (limiter,)
    )
    target = meter if meter is not None else get_meter()
    for part in parts:
        if meter is None:
            _followed.limiters.add(part.name, part)
        _instruments(target).watch_limiter(target, part)
    return limiter


def instrument_budget(
    budget: RetryBudget, *, name: str = "default", meter: Meter | None = None
) -> RetryBudget:
    """Report a :class:`~flashkit.budget.RetryBudget`'s granted and refused retries as
    ``flashkit.budget.retries`` / ``.refused`` (observable counters, attribute ``budget.name``).
    Returns ``budget``."""
    target = meter if meter is not None else get_meter()
    if meter is None:
        _followed.budgets.add(name, budget)
    _instruments(target).watch_budget(target, budget, name)
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


# --- spans -----------------------------------------------------------------------------------
def _safe_text(text: str) -> str:
    text = redact(text)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _error_message(error: BaseException | str) -> str:
    if isinstance(error, str):
        return _safe_text(error)
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not break the caller
        message = f"<{type(error).__name__}: unprintable>"
    return _safe_text(message)


def record_attempt(
    span: Span,
    *,
    attempt: int,
    delay: float = 0.0,
    retry_after: float | None = None,
    breaker_state: CircuitState | str | None = None,
    limiter_wait: float | None = None,
    status_code: int | None = None,
    error: BaseException | str | None = None,
) -> None:
    """Add a ``flashkit.attempt`` event to ``span`` (schema in the module docstring).

    ``attempt`` is 1-based; ``delay``, ``retry_after`` and ``limiter_wait`` are seconds;
    ``error`` (an exception or a short code) gives ``error.type`` and a redacted
    ``error.message``. Unknown values (None) are left out.
    """
    attributes: dict[str, str | int | float] = {"attempt": int(attempt), "delay": float(delay)}
    if retry_after is not None:
        attributes["retry_after"] = float(retry_after)
    if breaker_state is not None:
        attributes["breaker.state"] = (
            breaker_state.value
            if isinstance(breaker_state, CircuitState)
            else _safe_text(breaker_state)
        )
    if limiter_wait is not None:
        attributes["ratelimit.wait"] = float(limiter_wait)
    if status_code is not None:
        attributes["http.status_code"] = int(status_code)
    if error is not None:
        attributes["error.type"] = (
            _safe_text(error) if isinstance(error, str) else type(error).__name__
        )
        if not isinstance(error, str):
            attributes["error.message"] = _error_message(error)
    span.add_event(ATTEMPT_EVENT, attributes)


def record_error(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed: status ERROR with the redacted message, ``error.type``, and an
    ``exception`` event whose message and stack trace are redacted (unlike
    ``Span.record_exception``, which copies them verbatim)."""
    message = _error_message(error)
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("error.type", type(error).__name__)
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    span.add_event(
        "exception",
        {
            "exception.type": f"{type(error).__module__}.{type(error).__qualname__}",
            "exception.message": message,
            "exception.stacktrace": redact(stack),
        },
    )


def _outcome_of(error: BaseException) -> str:
    if isinstance(error, StructuredError):
        return error.category.value
    if isinstance(error, TimeoutError):
        return "timeout"
    if not isinstance(error, Exception):
        return "cancelled"
    return "error"


class ClientCall:
    """One LLM call being recorded (from :meth:`ClientInstruments.call`).

    ``span`` is the call's span; set ``outcome`` to override the default (``"ok"`` on success,
    else the error's category, e.g. ``"rate_limit"``, ``"timeout"``, ``"cancelled"``).
    """

    def __init__(
        self, instruments: ClientInstruments, span: Span, attributes: dict[str, str | int]
    ) -> None:
        self.span = span
        self.outcome: str | None = None
        self.attempts = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._instruments = instruments
        self._attributes = attributes

    def attempt(
        self,
        *,
        delay: float = 0.0,
        retry_after: float | None = None,
        breaker_state: CircuitState | str | None = None,
        limiter_wait: float | None = None,
        status_code: int | None = None,
        error: BaseException | str | None = None,
        limiter: str = "default",
    ) -> None:
        """Record the attempt that just ended (numbered for you, from 1) as a
        ``flashkit.attempt`` event; ``limiter_wait`` (s) also goes to ``flashkit.ratelimit.wait``
        with ``ratelimit.name=limiter``."""
        self.attempts += 1
        record_attempt(
            self.span,
            attempt=self.attempts,
            delay=delay,
            retry_after=retry_after,
            breaker_state=breaker_state,
            limiter_wait=limiter_wait,
            status_code=status_code,
            error=error,
        )
        if limiter_wait is not None:
            self._instruments.limiter_wait(limiter_wait, limiter=limiter)

    def add_tokens(self, *, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Count tokens a response reported (``flashkit.client.tokens``, ``token.type``)."""
        counter = self._instruments._get(CLIENT_TOKENS)
        if input_tokens:
            self.input_tokens += input_tokens
            counter.add(input_tokens, {**self._attributes, "token.type": "input"})
        if output_tokens:
            self.output_tokens += output_tokens
            counter.add(output_tokens, {**self._attributes, "token.type": "output"})


class ClientInstruments:
    """Spans and metrics of an LLM client: one ``flashkit.client.chat`` span per call with a
    ``flashkit.attempt`` event per attempt, and ``flashkit.client.requests``/``.duration``/
    ``.tokens`` and ``flashkit.ratelimit.wait``.

    Args:
        tracer, meter: where to record (None: :func:`get_tracer`/:func:`get_meter` at each call,
            so a later :func:`configure_opentelemetry` is followed).
        clock: measures ``flashkit.client.duration`` (default: :func:`flashkit.clock.default_clock`
            when built), so simulated runs report virtual seconds.
    """

    def __init__(
        self,
        *,
        tracer: Tracer | None = None,
        meter: Meter | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._tracer = tracer
        self._meter = meter
        self.clock = clock if clock is not None else default_clock()

    def _get(self, name: str) -> Any:
        return _instrument(self._meter, name)

    def limiter_wait(self, seconds: float, *, limiter: str = "default") -> None:
        """Record a rate-limiter wait (s) in ``flashkit.ratelimit.wait``."""
        self._get(RATELIMIT_WAIT).record(float(seconds), {"ratelimit.name": limiter})

    @contextlib.contextmanager
    def call(
        self,
        *,
        model: str,
        stage: str | int | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[ClientCall]:
        """Record one client call: a current span around the block, metrics when it ends.

        An exception leaving the block marks the span failed (:func:`record_error`) and is
        re-raised. ``attributes`` are extra span attributes (strings are redacted).
        """
        metric_attributes: dict[str, str | int] = {"model": _safe_text(model)}
        if stage is not None:
            metric_attributes["stage"] = stage if isinstance(stage, int) else _safe_text(stage)
        span_attributes: dict[str, str | int | float | bool] = dict(metric_attributes)
        for key, value in (attributes or {}).items():
            span_attributes[key] = _safe_text(value) if isinstance(value, str) else value
        tracer = self._tracer if self._tracer is not None else get_tracer()
        start = self.clock.now()
        with tracer.start_as_current_span(
            CLIENT_SPAN,
            kind=SpanKind.CLIENT,
            attributes=span_attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            call = ClientCall(self, span, metric_attributes)
            try:
                yield call
            except BaseException as error:
                record_error(span, error)
                if call.outcome is None:
                    call.outcome = _outcome_of(error)
                raise
            else:
                if call.outcome is None:
                    call.outcome = "ok"
            finally:
                outcome = call.outcome or "error"
                span.set_attributes(
                    {
                        "outcome": outcome,
                        "attempts": call.attempts,
                        "tokens": call.input_tokens + call.output_tokens,
                        "tokens.input": call.input_tokens,
                        "tokens.output": call.output_tokens,
                    }
                )
                labels = {**metric_attributes, "outcome": outcome}
                self._get(CLIENT_REQUESTS).add(1, labels)
                self._get(CLIENT_DURATION).record(max(0.0, self.clock.now() - start), labels)
