"""flashkit.telemetry: setup, the metric scheme on real primitives, the client span schema.

Everything is read back from the in-memory exporters; time is virtual; nothing is exported over
the network (the OTLP test points at an unused loopback port and records nothing).
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import flashkit
from flashkit import telemetry as tm
from flashkit.breaker import CircuitBreaker, CircuitState
from flashkit.budget import TokenRatioBudget
from flashkit.clock import VirtualClock
from flashkit.errors import RateLimitError, RetryExhausted
from flashkit.ratelimit import MultiLimit, RateLimiter, ShardedRateLimiter
from flashkit.retry import Jitter, RetryConfig, RetryEvent, retry

ROOT = Path(__file__).resolve().parent.parent
LEAK = "sk-live-abc123"  # what an API key in an error message looks like


@pytest.fixture(autouse=True)
def _no_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def telemetry() -> Iterator[tm.Telemetry]:
    """An in-memory Telemetry that flashkit's get_tracer/get_meter follow during the test."""
    t = tm.configure_opentelemetry(in_memory=True, set_global=False)
    yield t
    t.shutdown()


def points(t: tm.Telemetry, name: str) -> list[dict[str, Any]]:
    return t.metrics().get(name, [])


def value(t: tm.Telemetry, name: str, **attributes: Any) -> float:
    """Sum of the points of ``name`` whose attributes include ``attributes`` (dots as ``__``)."""
    wanted = {key.replace("__", "."): v for key, v in attributes.items()}
    return sum(
        float(p["value"])
        for p in points(t, name)
        if all(p["attributes"].get(k) == v for k, v in wanted.items())
    )


def span_text(span: ReadableSpan) -> str:
    """Everything a span would export (attributes, events, status), as one string."""
    return str(span.to_json())


# --- setup ---------------------------------------------------------------------------------
def test_resource_has_service_version_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "staging")
    t = tm.configure_opentelemetry("pipeline", in_memory=True, set_global=False)
    try:
        attributes = t.resource.attributes
        assert attributes["service.name"] == "pipeline"
        assert attributes["service.version"] == flashkit.__version__
        assert attributes["deployment.environment"] == "staging"
        with t.tracer().start_as_current_span("x"):
            pass
        (span,) = t.finished_spans()
        assert span.resource.attributes["service.version"] == flashkit.__version__
    finally:
        t.shutdown()


def test_environment_defaults_to_development_and_argument_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = tm.configure_opentelemetry(in_memory=True, set_global=False)
    assert t.resource.attributes["deployment.environment"] == "development"
    assert t.resource.attributes["service.name"] == "flashkit"
    t.shutdown()
    monkeypatch.setenv("ENVIRONMENT", "staging")
    t = tm.configure_opentelemetry(
        in_memory=True, set_global=False, environment="ci", resource_attributes={"team": "cards"}
    )
    assert t.resource.attributes["deployment.environment"] == "ci"
    assert t.resource.attributes["team"] == "cards"
    t.shutdown()


def test_no_otlp_exporter_without_the_endpoint_variable() -> None:
    t = tm.configure_opentelemetry(in_memory=True, set_global=False)
    try:
        assert t.span_exporters == (t.span_exporter,)
        assert t.metric_readers == (t.metric_reader,)
        assert t.metric_exporters == ()
    finally:
        t.shutdown()


def test_otlp_http_exporters_attached_when_the_endpoint_variable_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with socket.socket() as probe:  # a loopback port nobody listens on; nothing is sent to it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    t = tm.configure_opentelemetry(set_global=False)
    try:
        (span_exporter,) = t.span_exporters
        assert isinstance(span_exporter, OTLPSpanExporter)
        (reader,) = t.metric_readers
        assert isinstance(reader, PeriodicExportingMetricReader)
        (metric_exporter,) = t.metric_exporters
        assert isinstance(metric_exporter, OTLPMetricExporter)
        assert t.span_exporter is None
        with pytest.raises(RuntimeError, match="in_memory=True"):
            t.finished_spans()
    finally:
        t.shutdown()  # nothing was recorded: nothing to send


def test_get_tracer_and_get_meter_follow_the_latest_telemetry() -> None:
    first = tm.configure_opentelemetry(in_memory=True, set_global=False)
    second = tm.configure_opentelemetry(in_memory=True, set_global=False)
    assert tm.current_telemetry() is second
    with tm.get_tracer().start_as_current_span("latest"):
        pass
    tm.get_meter().create_counter("test.counter").add(3)
    assert [s.name for s in second.finished_spans()] == ["latest"]
    assert first.finished_spans() == ()
    assert second.metrics()["test.counter"] == [{"attributes": {}, "value": 3}]
    second.shutdown()
    second.shutdown()  # idempotent
    assert tm.current_telemetry() is None  # back to the global (no-op) providers
    with tm.get_tracer().start_as_current_span("nowhere"):
        pass
    assert first.finished_spans() == ()
    first.shutdown()


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_globals_are_set_once_and_later_calls_say_so() -> None:
    """In a fresh process (OpenTelemetry's globals cannot be reset in this one)."""
    result = _run(
        """
        import logging, sys
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")
        from opentelemetry import metrics, trace
        from flashkit.telemetry import configure_opentelemetry, get_tracer
        first = configure_opentelemetry(in_memory=True)
        second = configure_opentelemetry(in_memory=True)
        print(first.is_global, second.is_global)
        print(trace.get_tracer_provider() is first.tracer_provider,
              metrics.get_meter_provider() is first.meter_provider)
        with trace.get_tracer("x").start_as_current_span("global"):
            pass
        with get_tracer().start_as_current_span("flashkit"):
            pass
        print([s.name for s in first.finished_spans()], [s.name for s in second.finished_spans()])
        """
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "True False\nTrue True\n['global'] ['flashkit']\n" in out
    assert "LOG OpenTelemetry's global providers were set by an earlier" in out


def test_flashkit_works_without_the_otlp_exporter_package() -> None:
    result = _run(
        """
        import os, sys
        for name in ("opentelemetry.exporter", "opentelemetry.exporter.otlp"):
            sys.modules[name] = None  # as if opentelemetry-exporter-otlp-proto-http were absent
        import flashkit.telemetry as tm
        t = tm.configure_opentelemetry(in_memory=True, set_global=False)
        print("ok", len(t.span_exporters))
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
        try:
            tm.configure_opentelemetry(set_global=False)
        except ImportError as error:
            print("ImportError:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ok 1" in result.stdout
    assert "pip install 'flashkit[otlp]'" in result.stdout


# --- the naming scheme ---------------------------------------------------------------------
def test_metric_names_and_units_follow_one_scheme() -> None:
    assert set(tm.METRICS) == {
        tm.RETRY_ATTEMPTS,
        tm.RETRY_DELAY,
        tm.RETRY_GIVEUPS,
        tm.BUDGET_RETRIES,
        tm.BUDGET_REFUSED,
        tm.BREAKER_STATE,
        tm.BREAKER_TRANSITIONS,
        tm.BREAKER_REJECTED,
        tm.RATELIMIT_WAIT,
        tm.RATELIMIT_ADMITTED,
        tm.RATELIMIT_ADMITTED_UNITS,
        tm.RATELIMIT_REJECTED,
        tm.CLIENT_REQUESTS,
        tm.CLIENT_DURATION,
        tm.CLIENT_TOKENS,
        tm.CLIENT_HEDGES,
        tm.CLIENT_ATTEMPT_TIMEOUT,
    }
    for name, spec in tm.METRICS.items():
        assert spec.name == name
        assert name.startswith("flashkit.")
        assert name == name.lower()
        assert spec.unit == "s" or spec.unit == "1" or spec.unit.startswith("{"), spec
        if spec.kind == "histogram":
            assert spec.unit == "s", spec
    assert tm.METRICS[tm.CLIENT_REQUESTS].unit == "{request}"
    assert dict(tm.BREAKER_STATE_VALUES) == {
        CircuitState.CLOSED: 0,
        CircuitState.OPEN: 1,
        CircuitState.HALF_OPEN: 2,
        CircuitState.ISOLATED: 3,
    }


def test_seconds_histograms_use_second_sized_buckets(telemetry: tm.Telemetry) -> None:
    tm.ClientInstruments().limiter_wait(0.2, limiter="rpm")
    (point,) = points(telemetry, tm.RATELIMIT_WAIT)
    assert (point["count"], point["sum"]) == (1, pytest.approx(0.2))
    assert {0.1, 1.0, 60.0} <= set(point["bounds"])  # not the millisecond defaults


# --- primitives ----------------------------------------------------------------------------
def _fail() -> None:
    raise ConnectionError("upstream down")


def _trip(breaker: CircuitBreaker, failures: int = 2) -> None:
    for _ in range(failures):
        with pytest.raises(ConnectionError):
            breaker(_fail)()


def test_breaker_transitions_state_and_rejections(telemetry: tm.Telemetry) -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(min_throughput=2, break_duration=5.0, name="openai", clock=clock)
    assert tm.instrument_breaker(breaker) is breaker
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="openai") == 0
    assert tm.BREAKER_TRANSITIONS not in telemetry.metrics()

    _trip(breaker)
    for _ in range(3):
        with pytest.raises(flashkit.CircuitOpenError):
            breaker(_fail)()
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="openai") == 1
    assert points(telemetry, tm.BREAKER_TRANSITIONS) == [
        {
            "attributes": {
                "breaker.name": "openai",
                "breaker.from": "closed",
                "breaker.to": "open",
            },
            "value": 1,
        }
    ]
    assert value(telemetry, tm.BREAKER_REJECTED, breaker__name="openai") == 3

    clock.advance(5.0)  # the break is over: observed as half-open (and counted as a transition)
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="openai") == 2
    assert value(telemetry, tm.BREAKER_TRANSITIONS, breaker__to="half_open") == 1
    breaker(lambda: None)()  # the probe succeeds (the decorator: sync under any API)
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="openai") == 0
    assert value(telemetry, tm.BREAKER_TRANSITIONS, breaker__from="half_open") == 1

    assert breaker.manual_control is None
    breaker._isolate("maintenance")
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="openai") == 3


def test_instrumenting_twice_counts_once(telemetry: tm.Telemetry) -> None:
    breaker = CircuitBreaker(min_throughput=2, name="b", clock=VirtualClock())
    meter = telemetry.meter()
    tm.instrument_breaker(breaker, meter=meter)
    tm.instrument_breaker(breaker, meter=meter)
    tm.instrument_breaker(breaker)
    tm.instrument_breaker(breaker)
    _trip(breaker)
    # one listener for the explicit meter, one for "whatever get_meter() is": same meter here
    assert value(telemetry, tm.BREAKER_TRANSITIONS, breaker__name="b") == 2
    assert [
        p["value"]
        for p in points(telemetry, tm.BREAKER_STATE)
        if p["attributes"] == {"breaker.name": "b"}
    ] == [1]


def test_a_new_primitive_with_the_same_name_replaces_the_old(telemetry: tm.Telemetry) -> None:
    """A notebook cell run again builds a new breaker; the old one (open) is no longer reported."""
    old = tm.instrument_breaker(CircuitBreaker(min_throughput=2, name="rerun"))
    _trip(old)
    assert value(telemetry, tm.BREAKER_STATE, breaker__name="rerun") == 1
    new = tm.instrument_breaker(CircuitBreaker(min_throughput=2, name="rerun"))
    assert new is not old
    reported = [p for p in points(telemetry, tm.BREAKER_STATE) if "rerun" in str(p)]
    assert reported == [{"attributes": {"breaker.name": "rerun"}, "value": 0}]


def test_breakers_instrumented_before_a_reconfigure_are_still_reported() -> None:
    first = tm.configure_opentelemetry(in_memory=True, set_global=False)
    breaker = tm.instrument_breaker(
        CircuitBreaker(min_throughput=2, name="kept", clock=VirtualClock())
    )
    limiter = tm.instrument_limiter(RateLimiter(1, 60.0, name="rpm", clock=VirtualClock()))
    first.shutdown()
    second = tm.configure_opentelemetry(in_memory=True, set_global=False)
    try:
        _trip(breaker)
        limiter.try_acquire()
        assert value(second, tm.BREAKER_STATE, breaker__name="kept") == 1
        assert value(second, tm.BREAKER_TRANSITIONS, breaker__name="kept") == 1
        assert value(second, tm.RATELIMIT_ADMITTED, ratelimit__name="rpm") == 1
    finally:
        second.shutdown()


def test_limiter_stats_become_observable_counters(telemetry: tm.Telemetry) -> None:
    clock = VirtualClock()
    rpm = RateLimiter(2, 60.0, name="rpm-multi", clock=clock)
    tpm = RateLimiter(1_000, 60.0, name="tpm-multi", clock=clock)
    sharded = ShardedRateLimiter(4, 60.0, shards=2, name="sharded", clock=clock)
    assert tm.instrument_limiter(MultiLimit([rpm, tpm])).limits == (rpm, tpm)
    tm.instrument_limiter(sharded)
    for _ in range(3):
        rpm.try_acquire()
    tpm.try_acquire(count=400)
    for _ in range(5):
        sharded.try_acquire()
    assert value(telemetry, tm.RATELIMIT_ADMITTED, ratelimit__name="rpm-multi") == 2
    assert value(telemetry, tm.RATELIMIT_REJECTED, ratelimit__name="rpm-multi") == 1
    assert value(telemetry, tm.RATELIMIT_ADMITTED_UNITS, ratelimit__name="tpm-multi") == 400
    # the sharded limiter's own totals (its stats count a refusal once per shard it tried)
    stats = sharded.stats
    assert stats.admitted == 4
    assert value(telemetry, tm.RATELIMIT_ADMITTED, ratelimit__name="sharded") == stats.admitted
    assert value(telemetry, tm.RATELIMIT_REJECTED, ratelimit__name="sharded") == stats.rejected


def test_retry_hooks_record_attempts_delays_and_call_user_hooks(telemetry: tm.Telemetry) -> None:
    seen: list[RetryEvent] = []
    calls = iter([ConnectionError("a"), TimeoutError("b"), None])

    def flaky() -> str:
        error = next(calls)
        if error is not None:
            raise error
        return "done"

    config = RetryConfig(
        max_attempts=5,
        initial_delay=1.0,
        jitter=Jitter.NONE,
        clock=VirtualClock(),
        **tm.retry_hooks(name="chat", on_retry=seen.append)._asdict(),
    )
    assert retry(config)(flaky)() == "done"
    assert [e.attempt for e in seen] == [1, 2]
    attempts = points(telemetry, tm.RETRY_ATTEMPTS)
    assert sorted((p["attributes"]["error.type"], p["value"]) for p in attempts) == [
        ("ConnectionError", 1),
        ("TimeoutError", 1),
    ]
    assert all(p["attributes"]["retry.decision"] == "retry" for p in attempts)
    (delay,) = points(telemetry, tm.RETRY_DELAY)
    assert delay["attributes"] == {"retry.name": "chat"}
    assert (delay["count"], delay["sum"], delay["min"], delay["max"]) == (2, 3.0, 1.0, 2.0)
    assert tm.RETRY_GIVEUPS not in telemetry.metrics()


def test_retry_giveups_and_budget_refusals(telemetry: tm.Telemetry) -> None:
    gave_up: list[RetryEvent] = []
    hooks = tm.retry_hooks(name="chat", on_giveup=gave_up.append)
    always = retry(
        RetryConfig(max_attempts=2, jitter=Jitter.NONE, clock=VirtualClock(), **hooks._asdict())
    )(_fail)
    with pytest.raises(RetryExhausted):
        always()
    budget = tm.instrument_budget(TokenRatioBudget(max_tokens=2.0), name="shared")
    throttled = retry(
        RetryConfig(max_attempts=5, clock=VirtualClock(), budget=budget, on_giveup=hooks.on_giveup)
    )(_fail)
    with pytest.raises(ConnectionError):
        throttled()  # the first failure leaves 1 token of 2: the budget refuses the retry
    assert [e.reason for e in gave_up] == ["attempts", "budget"]
    assert value(telemetry, tm.RETRY_GIVEUPS, retry__reason="attempts") == 1
    assert value(telemetry, tm.RETRY_GIVEUPS, retry__reason="budget") == 1
    assert value(telemetry, tm.RETRY_ATTEMPTS, retry__decision="giveup") == 2
    assert value(telemetry, tm.RETRY_ATTEMPTS, retry__decision="retry") == 1
    assert value(telemetry, tm.BUDGET_REFUSED, budget__name="shared") == 1
    assert value(telemetry, tm.BUDGET_RETRIES, budget__name="shared") == 0


# --- spans ---------------------------------------------------------------------------------
def test_record_attempt_event_schema(telemetry: tm.Telemetry) -> None:
    with telemetry.tracer().start_as_current_span("call") as span:
        tm.record_attempt(span, attempt=1, delay=0.0)
        tm.record_attempt(
            span,
            attempt=2,
            delay=1.5,
            retry_after=1.2,
            breaker_state=CircuitState.HALF_OPEN,
            limiter_wait=0.25,
            status_code=429,
            error=RateLimitError("slow down", retry_after=1.2),
        )
        tm.record_attempt(span, attempt=3, delay=2.0, error="timeout", breaker_state="closed")
    (finished,) = telemetry.finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in finished.events]
    assert events[0] == (tm.ATTEMPT_EVENT, {"attempt": 1, "delay": 0.0})
    name, second = events[1]
    assert name == "flashkit.attempt"
    message = second.pop("error.message")
    assert "slow down" in str(message)
    assert second == {
        "attempt": 2,
        "delay": 1.5,
        "retry_after": 1.2,
        "breaker.state": "half_open",
        "ratelimit.wait": 0.25,
        "http.status_code": 429,
        "error.type": "RateLimitError",
    }
    assert events[2][1] == {
        "attempt": 3,
        "delay": 2.0,
        "breaker.state": "closed",
        "error.type": "timeout",
    }


def test_client_call_span_and_metrics(telemetry: tm.Telemetry) -> None:
    clock = VirtualClock()
    client = tm.ClientInstruments(clock=clock)
    with client.call(model="gpt-4o-mini", stage=1) as call:
        clock.advance(0.5)
        call.attempt(limiter_wait=0.5, status_code=429, error="rate_limit", limiter="rpm")
        clock.advance(2.0)
        call.attempt(delay=2.0, breaker_state=CircuitState.CLOSED, status_code=200)
        call.add_tokens(input_tokens=120, output_tokens=30)
    (span,) = telemetry.finished_spans()
    assert span.name == tm.CLIENT_SPAN == "flashkit.client.chat"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "model": "gpt-4o-mini",
        "stage": 1,
        "outcome": "ok",
        "attempts": 2,
        "tokens": 150,
        "tokens.input": 120,
        "tokens.output": 30,
    }
    assert [dict(e.attributes or {}) for e in span.events] == [
        {
            "attempt": 1,
            "delay": 0.0,
            "ratelimit.wait": 0.5,
            "http.status_code": 429,
            "error.type": "rate_limit",
        },
        {"attempt": 2, "delay": 2.0, "breaker.state": "closed", "http.status_code": 200},
    ]
    labels = {"model": "gpt-4o-mini", "stage": 1, "outcome": "ok"}
    assert points(telemetry, tm.CLIENT_REQUESTS) == [{"attributes": labels, "value": 1}]
    (duration,) = points(telemetry, tm.CLIENT_DURATION)
    assert duration["attributes"] == labels
    assert duration["sum"] == 2.5  # virtual seconds
    tokens = points(telemetry, tm.CLIENT_TOKENS)
    assert {p["attributes"]["token.type"]: p["value"] for p in tokens} == {
        "input": 120,
        "output": 30,
    }
    (wait,) = points(telemetry, tm.RATELIMIT_WAIT)
    assert (wait["attributes"], wait["sum"]) == ({"ratelimit.name": "rpm"}, 0.5)


def test_failed_call_is_redacted_everywhere(telemetry: tm.Telemetry) -> None:
    client = tm.ClientInstruments(clock=VirtualClock())
    leak = f"401 for key {LEAK} (Authorization: Bearer {LEAK}xyz)"

    def refused() -> None:
        with client.call(model="m", stage="extract") as call:
            call.attempt(status_code=401, error=PermissionError(leak))
            raise PermissionError(leak)

    with pytest.raises(PermissionError):
        refused()
    (span,) = telemetry.finished_spans()
    exported = span_text(span)
    assert LEAK not in exported
    assert "abc123" not in exported
    assert "[REDACTED]" in exported
    assert span.status.status_code is StatusCode.ERROR
    assert "abc123" not in (span.status.description or "")
    attributes = dict(span.attributes or {})
    assert attributes["outcome"] == "error"
    assert attributes["error.type"] == "PermissionError"
    exception = next(e for e in span.events if e.name == "exception")
    assert "Traceback" in str((exception.attributes or {})["exception.stacktrace"])
    (requests,) = points(telemetry, tm.CLIENT_REQUESTS)
    assert requests["attributes"]["outcome"] == "error"


def test_outcome_comes_from_the_error_category_or_is_set(telemetry: tm.Telemetry) -> None:
    client = tm.ClientInstruments(clock=VirtualClock())
    with pytest.raises(RateLimitError), client.call(model="m"):
        raise RateLimitError("429", retry_after=1.0)
    with pytest.raises(TimeoutError), client.call(model="m"):
        raise TimeoutError
    with client.call(model="m") as call:
        call.outcome = "cached"
    outcomes = [dict(s.attributes or {})["outcome"] for s in telemetry.finished_spans()]
    assert outcomes == ["rate_limit", "timeout", "cached"]


def test_record_error_on_any_span(telemetry: tm.Telemetry) -> None:
    with telemetry.tracer().start_as_current_span("batch") as span:
        tm.record_error(span, ValueError(f"bad header x-api-key: {LEAK}"))
    (finished,) = telemetry.finished_spans()
    assert LEAK not in span_text(finished)
    assert json.loads(span_text(finished))["status"]["status_code"] == "ERROR"


# --- the package's layout --------------------------------------------------------------------
def test_telemetry_modules_import_at_module_level_only() -> None:
    """No import inside a function dodges a cycle: only the optional OTLP exporter is deferred,
    and flashkit's version comes from flashkit._version, not from the package being imported."""
    package = ROOT / "flashkit" / "telemetry"
    deferred = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                deferred += [
                    (path.name, function.name, node.module)
                    for node in ast.walk(function)
                    if isinstance(node, ast.ImportFrom)
                ]
                assert not any(isinstance(n, ast.Import) for n in ast.walk(function)), path
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert all(n.module != "flashkit" for n in top), path
    assert deferred == [
        ("_sdk.py", "_otlp", "opentelemetry.exporter.otlp.proto.http.metric_exporter"),
        ("_sdk.py", "_otlp", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    ]


def test_every_telemetry_module_stays_small() -> None:
    for path in (ROOT / "flashkit" / "telemetry").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path.name
