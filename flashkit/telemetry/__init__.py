"""OpenTelemetry for flashkit: one setup call, one metric naming scheme, one span schema.

>>> telemetry = configure_opentelemetry(in_memory=True)    # notebooks and tests
>>> breaker = instrument_breaker(CircuitBreaker(name="openai"))
>>> config = RetryConfig(max_attempts=5, **retry_hooks(name="chat")._asdict())
>>> telemetry.metrics()["flashkit.breaker.state"]           # [{"attributes": ..., "value": 0}]

Modules: ``_names`` (metric, span and event names; units in :data:`METRICS`), ``_sdk``
(providers, :func:`get_tracer`/:func:`get_meter`), ``_instruments`` (instruments made once per
meter), ``_primitives`` (breakers, limiters, budgets, retry hooks), ``_spans`` (the LLM
client's calls and attempts). Durations are in seconds. Design: ``docs/design/telemetry.md``.
"""

from __future__ import annotations

from flashkit.telemetry._names import _SECONDS_BUCKETS as _SECONDS_BUCKETS
from flashkit.telemetry._names import (
    ATTEMPT_EVENT,
    BREAKER_REJECTED,
    BREAKER_STATE,
    BREAKER_STATE_VALUES,
    BREAKER_TRANSITIONS,
    BUDGET_REFUSED,
    BUDGET_RETRIES,
    CLIENT_ATTEMPT_TIMEOUT,
    CLIENT_DURATION,
    CLIENT_HEDGES,
    CLIENT_REQUESTS,
    CLIENT_SPAN,
    CLIENT_TOKENS,
    METRICS,
    RATELIMIT_ADMITTED,
    RATELIMIT_ADMITTED_UNITS,
    RATELIMIT_REJECTED,
    RATELIMIT_WAIT,
    RETRY_ATTEMPTS,
    RETRY_DELAY,
    RETRY_GIVEUPS,
    MetricSpec,
)
from flashkit.telemetry._primitives import (
    RetryHooks,
    instrument_breaker,
    instrument_budget,
    instrument_limiter,
    retry_hooks,
)
from flashkit.telemetry._sdk import (
    Telemetry,
    configure_opentelemetry,
    current_telemetry,
    get_meter,
    get_tracer,
)
from flashkit.telemetry._spans import (
    AttemptFields,
    ClientCall,
    ClientInstruments,
    record_attempt,
    record_error,
)

__all__ = [
    "AttemptFields",
    "ATTEMPT_EVENT",
    "BREAKER_REJECTED",
    "BREAKER_STATE",
    "BREAKER_STATE_VALUES",
    "BREAKER_TRANSITIONS",
    "BUDGET_REFUSED",
    "BUDGET_RETRIES",
    "CLIENT_ATTEMPT_TIMEOUT",
    "CLIENT_DURATION",
    "CLIENT_HEDGES",
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
