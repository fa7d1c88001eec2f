"""The names flashkit's telemetry records under: metrics, the client span and its event.

:data:`METRICS` gives each metric's instrument kind, UCUM unit and description. Durations are
in seconds (unit ``s``, histogram buckets :data:`_SECONDS_BUCKETS`); counts use curly-brace
units such as ``{call}``; ``flashkit.breaker.state`` is a code (unit ``1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from flashkit.breaker import CircuitState

SCOPE: Final = "flashkit"  # the tracer and meter name flashkit's helpers use

# Metric names, with the attributes each data point carries.
# retry.name, retry.decision ("retry" | "giveup"), error.type
RETRY_ATTEMPTS: Final = "flashkit.retry.attempts"
# retry.name
RETRY_DELAY: Final = "flashkit.retry.delay"
# retry.name, retry.reason
RETRY_GIVEUPS: Final = "flashkit.retry.giveups"
# budget.name
BUDGET_RETRIES: Final = "flashkit.budget.retries"
BUDGET_REFUSED: Final = "flashkit.budget.refused"
# breaker.name (transitions also breaker.from, breaker.to)
BREAKER_STATE: Final = "flashkit.breaker.state"
BREAKER_TRANSITIONS: Final = "flashkit.breaker.transitions"
BREAKER_REJECTED: Final = "flashkit.breaker.rejected"
# ratelimit.name
RATELIMIT_WAIT: Final = "flashkit.ratelimit.wait"
RATELIMIT_ADMITTED: Final = "flashkit.ratelimit.admitted"
RATELIMIT_ADMITTED_UNITS: Final = "flashkit.ratelimit.admitted_units"
RATELIMIT_REJECTED: Final = "flashkit.ratelimit.rejected"
# model, stage, outcome (tokens: token.type "input" | "output" instead of outcome)
CLIENT_REQUESTS: Final = "flashkit.client.requests"
CLIENT_DURATION: Final = "flashkit.client.duration"
CLIENT_TOKENS: Final = "flashkit.client.tokens"
# client.name, hedge.outcome ("sent": every hedge sent | "won": those whose answer was used |
# "skipped": due but not sent), hedge.reason (skipped only)
CLIENT_HEDGES: Final = "flashkit.client.hedges"
# client.name
CLIENT_ATTEMPT_TIMEOUT: Final = "flashkit.client.attempt_timeout"

# The LLM client's span and its per-attempt event (attributes in flashkit.telemetry._spans).
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
# Private-looking name: flashkit.cache imports it from flashkit.telemetry under this name.
_SECONDS_BUCKETS: Final = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
)  # fmt: skip


class MetricSpec(NamedTuple):
    """One metric of the scheme: its name, instrument kind, UCUM unit and description."""

    name: str
    kind: str  # "counter", "histogram", "gauge", "observable_counter" or "observable_gauge"
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
        MetricSpec(
            CLIENT_HEDGES,
            "counter",
            "{request}",
            "Hedge requests of slow attempts: sent, won (answer used) or skipped (by reason)",
        ),
        MetricSpec(
            CLIENT_ATTEMPT_TIMEOUT, "gauge", "s", "The attempt timeout an LLM client applies now"
        ),
    )
}
"""Every metric flashkit records, by name."""
