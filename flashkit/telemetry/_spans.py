"""Spans and metrics of LLM client calls (what :class:`flashkit.client.LLMClient` records).

A call is a ``flashkit.client.chat`` span (kind CLIENT) with attributes ``model``, ``stage``,
``outcome`` (``"ok"`` or the error's category, e.g. ``"rate_limit"``), ``attempts``, ``tokens``,
``tokens.input``, ``tokens.output``, and one ``flashkit.attempt`` event per attempt with
``attempt`` (1-based), ``delay`` (s slept before it), ``retry_after`` (server hint, s),
``breaker.state``, ``ratelimit.wait`` (s), ``http.status_code``, ``timeout`` (s, the attempt
timeout in force), ``hedge`` (``"sent"``, ``"won"`` or ``"skipped"``), ``ttft`` (s, a stream's
time to first token: from sending the attempt's request to its first text delta),
``error.type`` and ``error.message``, each only when known. Hedges are also counted in
``flashkit.client.hedges`` and the timeout in force is the gauge
``flashkit.client.attempt_timeout``. A failed call has status ERROR, ``error.type`` and an
``exception`` event. Every message placed in a span goes through :func:`flashkit.errors.redact`.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Final, TypedDict, Unpack

from opentelemetry.metrics import Meter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from flashkit.breaker import CircuitState
from flashkit.clock import Clock, default_clock
from flashkit.errors import StructuredError, redact
from flashkit.telemetry._instruments import instrument
from flashkit.telemetry._names import (
    ATTEMPT_EVENT,
    CLIENT_ATTEMPT_TIMEOUT,
    CLIENT_DURATION,
    CLIENT_HEDGES,
    CLIENT_REQUESTS,
    CLIENT_SPAN,
    CLIENT_TOKENS,
    RATELIMIT_WAIT,
)
from flashkit.telemetry._sdk import get_meter, get_tracer

_MAX_TEXT: Final = 512  # characters of an error message kept in a span


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


class AttemptFields(TypedDict, total=False):
    """What an attempt's event records: ``delay``, ``retry_after``, ``limiter_wait``,
    ``timeout`` (the attempt timeout in force) and ``ttft`` (a stream's time to first token) in
    seconds, the breaker's state, the HTTP status, what happened to a hedge (``"sent"``,
    ``"won"``, ``"skipped"``), the error (an exception or a short code). None (or absent):
    unknown, left out."""

    delay: float
    retry_after: float | None
    breaker_state: CircuitState | str | None
    limiter_wait: float | None
    status_code: int | None
    timeout: float | None
    hedge: str | None
    ttft: float | None
    error: BaseException | str | None


def record_attempt(span: Span, *, attempt: int, **fields: Unpack[AttemptFields]) -> None:
    """Add a ``flashkit.attempt`` event to ``span`` (schema in this module's docstring).

    ``attempt`` is 1-based; ``delay``, ``retry_after`` and ``limiter_wait`` are seconds;
    ``error`` (an exception or a short code) gives ``error.type`` and a redacted
    ``error.message``. Unknown values (None) are left out.
    """
    attributes: dict[str, str | int | float] = {
        "attempt": int(attempt),
        "delay": float(fields.get("delay", 0.0)),
    }
    retry_after = fields.get("retry_after")
    breaker_state = fields.get("breaker_state")
    limiter_wait = fields.get("limiter_wait")
    status_code = fields.get("status_code")
    timeout = fields.get("timeout")
    hedge = fields.get("hedge")
    ttft = fields.get("ttft")
    error = fields.get("error")
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
    if timeout is not None:
        attributes["timeout"] = float(timeout)
    if hedge is not None:
        attributes["hedge"] = _safe_text(hedge)
    if ttft is not None:
        attributes["ttft"] = float(ttft)
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

    def attempt(self, *, limiter: str = "default", **fields: Unpack[AttemptFields]) -> None:
        """Record the attempt that just ended (numbered for you, from 1) as a
        ``flashkit.attempt`` event; ``limiter_wait`` (s) also goes to ``flashkit.ratelimit.wait``
        with ``ratelimit.name=limiter``."""
        self.attempts += 1
        record_attempt(self.span, attempt=self.attempts, **fields)
        limiter_wait = fields.get("limiter_wait")
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
        return instrument(self._meter if self._meter is not None else get_meter(), name)

    def limiter_wait(self, seconds: float, *, limiter: str = "default") -> None:
        """Record a rate-limiter wait (s) in ``flashkit.ratelimit.wait``."""
        self._get(RATELIMIT_WAIT).record(float(seconds), {"ratelimit.name": limiter})

    def hedge(self, outcome: str, *, reason: str | None = None, client: str = "llm") -> None:
        """Count a hedge in ``flashkit.client.hedges``: ``outcome`` ``"sent"`` (every hedge
        sent), ``"won"`` (those of them whose answer was used: counted again) or ``"skipped"``
        (due but not sent, with ``reason``, e.g. ``"limiter"``, ``"budget"``)."""
        attributes = {"client.name": client, "hedge.outcome": outcome}
        if reason is not None:
            attributes["hedge.reason"] = reason
        self._get(CLIENT_HEDGES).add(1, attributes)

    def attempt_timeout(self, seconds: float, *, client: str = "llm") -> None:
        """Set the gauge ``flashkit.client.attempt_timeout`` (s): the timeout in force now."""
        self._get(CLIENT_ATTEMPT_TIMEOUT).set(float(seconds), {"client.name": client})

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
