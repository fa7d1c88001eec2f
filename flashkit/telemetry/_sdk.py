"""OpenTelemetry SDK setup: the providers flashkit records to, and access to them.

:func:`configure_opentelemetry` builds a tracer and a meter provider and returns them as a
:class:`Telemetry` (in-memory readers for notebooks and tests; OTLP/HTTP exporters when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, metrics exported every ``export_interval`` seconds).
:func:`get_tracer` and :func:`get_meter` follow the most recently configured one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from flashkit._version import __version__
from flashkit.telemetry._instruments import follow
from flashkit.telemetry._names import SCOPE

try:  # a private class of the OpenTelemetry API: the global meter provider before it is set
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # pragma: no cover - a future API without the private class
    _UNSET_METER_PROVIDERS: tuple[type, ...] = ()
else:
    _UNSET_METER_PROVIDERS = (_ProxyMeterProvider,)

logger = logging.getLogger("flashkit.telemetry")

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

    def tracer(self, name: str = SCOPE) -> Tracer:
        """A tracer of this telemetry's provider."""
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str = SCOPE) -> Meter:
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

    The resource also carries ``service.version`` (flashkit's version). OTLP/HTTP exporters are
    attached only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; they read the endpoint (adding
    ``/v1/traces`` and ``/v1/metrics``), headers and timeout from the standard
    ``OTEL_EXPORTER_OTLP_*`` variables. They need ``pip install 'flashkit[otlp]'``.
    """
    global _current, _global_owner
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
    follow(telemetry.meter())
    return telemetry


def _otlp(
    tracer_provider: TracerProvider, export_interval: float | None
) -> tuple[SpanExporter, MetricReader, MetricExporter]:
    """Attach OTLP/HTTP exporters (an optional dependency: imported only when asked for)."""
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
    # No endpoint argument: the exporters then add the signal path to the variable's endpoint.
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
    if not _UNSET_METER_PROVIDERS:  # pragma: no cover - see the import above
        return True
    return isinstance(metrics.get_meter_provider(), _UNSET_METER_PROVIDERS)


def current_telemetry() -> Telemetry | None:
    """The telemetry :func:`get_tracer`/:func:`get_meter` follow (None: the globals)."""
    return _current


def get_tracer(name: str = SCOPE) -> Tracer:
    """A tracer of the most recently configured :class:`Telemetry`, else of the global provider
    (a no-op until someone sets one). Cheap: call it where you trace, not once at import."""
    current = _current
    return current.tracer(name) if current is not None else trace.get_tracer(name)


def get_meter(name: str = SCOPE) -> Meter:
    """A meter of the most recently configured :class:`Telemetry`, else of the global provider
    (a no-op until someone sets one)."""
    current = _current
    return current.meter(name) if current is not None else metrics.get_meter(name)
