"""SimulatedUpstream: an OpenAI-compatible ``POST /v1/chat/completions`` with injectable faults.

Every decision is made synchronously when a request arrives (random draws from one
``random.Random(seed)``, in arrival order), then the answer waits its latency on the injected
clock. Same seed and same request sequence: same responses, status codes, headers and timing.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import time
from types import EllipsisType
from typing import Any, Final

import httpx

from flashkit.client import LLMClient
from flashkit.clock import Clock, SystemClock, default_clock
from flashkit.errors import ValidationError
from flashkit.sim._asgi import SimAsgiApp
from flashkit.sim._content import (
    broken_content,
    detect,
    estimate_tokens,
    generic_reply,
    item_fields,
    stage1_text,
    stage2_text,
)
from flashkit.sim._lexicon import lexicon
from flashkit.sim._limits import LimitBook, LimitView
from flashkit.sim._profile import FaultProfile, check_limit
from flashkit.sim._stats import OUTCOMES, LoadSeries, SimStats

__all__ = ["CHAT_PATHS", "SimTransport", "SimulatedUpstream", "format_duration"]

CHAT_PATHS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})
VIRTUAL_EPOCH: Final = 1_735_689_600.0  # 2025-01-01T00:00:00Z: wall time 0 of a virtual clock
_Z99: Final = 2.3263478740408408  # the standard normal's 99th percentile
_JSON: Final = "application/json"


def _error(message: str, kind: str, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


_NOT_FOUND: Final = _error(
    "Unknown request URL. Use POST /v1/chat/completions.", "invalid_request_error", "unknown_url"
)
_NOT_ALLOWED: Final = _error(
    "Method not allowed: use POST.", "invalid_request_error", "method_not_allowed"
)
_NO_KEY: Final = _error(
    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
    "invalid_request_error",
    "missing_api_key",
)
_BAD_KEY: Final = _error(
    "Incorrect API key provided. You can find your API key in your account settings.",
    "invalid_request_error",
    "invalid_api_key",
)
_SPEND_CAP: Final = _error(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)
_OVERLOADED: Final = _error("Overloaded", "overloaded_error", None)
_SERVER_ERRORS: Final = {
    500: _error("The server had an error while processing your request.", "server_error", None),
    502: _error("Bad gateway.", "server_error", None),
    503: _error(
        "Service unavailable: the server is temporarily unable to respond.", "server_error", None
    ),
}
_MALFORMED_HTML: Final = (
    b"<html><head><title>Gateway error</title></head><body><h1>Gateway error</h1>"
    b"<p>The upstream answered something the proxy could not read.</p></body></html>"
)


class _Plan:
    """What one request gets, decided on arrival and delivered after ``delay`` seconds."""

    __slots__ = (
        "body",
        "completion",
        "delay",
        "error",
        "generation",
        "headers",
        "key",
        "kind",
        "prompt",
        "settle",
        "stat",
        "status",
    )

    def __init__(
        self,
        status: int,
        body: bytes,
        stat: str,
        delay: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.stat = stat
        self.delay = delay
        self.headers: dict[str, str] = headers if headers is not None else {}
        self.kind: str | None = None
        self.error: Exception | None = None
        self.key = ""
        self.settle = 0.0
        self.prompt = 0
        self.completion = 0
        self.generation = 0

    def with_kind(self, kind: str) -> _Plan:
        """Mark a 429 with its kind (requests, tokens, too_large, spend_cap)."""
        self.kind = kind
        return self

    def settling(self, key: str, delta: float) -> _Plan:
        """Correct ``key``'s token charge by ``delta`` when the answer is delivered."""
        self.key = key
        self.settle = delta
        return self


_OUTCOME_OF: Final = {
    "ok": OUTCOMES.index("ok"),
    "rate_limited": OUTCOMES.index("rate_limited"),
    "server_errors": OUTCOMES.index("server_error"),
    "overloaded": OUTCOMES.index("overloaded"),
    "connect_errors": OUTCOMES.index("connect_error"),
    "malformed": OUTCOMES.index("malformed"),
    "truncated": OUTCOMES.index("malformed"),
    "bad_content": OUTCOMES.index("malformed"),
    "auth_errors": OUTCOMES.index("client_error"),
    "invalid_requests": OUTCOMES.index("client_error"),
    "cancelled": OUTCOMES.index("cancelled"),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``7.66s``, ``6m0s``, ``1h2m3s`` (rounded up to
    whole milliseconds)."""
    if seconds <= 0.0:
        return "0s"
    millis = math.ceil(seconds * 1000.0 - 1e-6)
    if millis < 1000:
        return f"{max(1, millis)}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") or "0"
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{secs}s"


def _rfc3339(wall: float) -> str:
    moment = _dt.datetime.fromtimestamp(math.ceil(wall - 1e-6), _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_windows(windows: tuple[tuple[float, float], ...], t: float) -> bool:
    return any(start <= t < end for start, end in windows)


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class SimulatedUpstream:
    """A simulated OpenAI-compatible LLM API with the faults of ``profile`` (a
    :class:`FaultProfile` or a preset name), deterministic from ``seed`` and timed by ``clock``
    (default: :func:`flashkit.clock.default_clock`).

    Use it in process with ``httpx.AsyncClient(transport=upstream.transport(),
    base_url="http://sim/v1")``, or over HTTP via :attr:`asgi_app` (see :func:`serve`).
    ``epoch``: Unix time of the upstream's start for ``created`` and RFC 3339 resets (default:
    the real time for a :class:`SystemClock`, else 2025-01-01T00:00:00Z). Not thread-safe: use
    it from one event loop.
    """

    def __init__(
        self,
        profile: FaultProfile | str = "healthy",
        *,
        seed: int = 0,
        clock: Clock | None = None,
        epoch: float | None = None,
    ) -> None:
        if isinstance(profile, str):
            profile = FaultProfile.preset(profile)
        if not isinstance(profile, FaultProfile):
            raise ValidationError(
                f"SimulatedUpstream(profile={profile!r}): needs a FaultProfile or a preset name",
                code="invalid_config",
                details={"field": "profile"},
            )
        self.profile = profile
        self.seed = seed
        self.clock = clock if clock is not None else default_clock()
        self._epoch_override = epoch
        median, p99 = profile.latency_median, profile.latency_p99
        self._mu = math.log(median) if median > 0.0 else -math.inf
        self._sigma = math.log(p99 / median) / _Z99 if median > 0.0 else 0.0
        self._generation = 0
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start: time origin now, the seed's first random draw, limits from the
        profile, empty rate-limit books, spend and statistics. Requests in flight finish
        without being counted."""
        profile = self.profile
        self._generation += 1
        self._rng = random.Random(self.seed)
        self._start = self.clock.now()
        if self._epoch_override is not None:
            self.epoch = float(self._epoch_override)
        elif isinstance(self.clock, SystemClock):
            self.epoch = time.time()
        else:
            self.epoch = VIRTUAL_EPOCH
        self._limits = LimitBook(
            mode=profile.limit_mode,
            rpm=profile.rpm,
            tpm=profile.tpm,
            bucket_fraction=profile.bucket_fraction,
            count_rejected=profile.counts_rejected,
        )
        self._schedule = profile.limit_schedule
        self._schedule_next = 0
        self._spent = 0
        self._serial = 0
        self._stats = SimStats()
        self._load = LoadSeries()

    @property
    def stats(self) -> SimStats:
        """Live counters since the start or the last :meth:`reset`."""
        return self._stats

    @property
    def load(self) -> LoadSeries:
        """Requests and outcomes per second (``load.to_records()``)."""
        return self._load

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """The (rpm, tpm) in force now (``None``: no limit)."""
        self._apply_schedule(self.elapsed())
        return self._limits.rpm, self._limits.tpm

    def elapsed(self) -> float:
        """Seconds since the start (construction or the last reset), on the upstream's clock."""
        return self.clock.now() - self._start

    def set_limits(
        self, *, rpm: float | EllipsisType | None = ..., tpm: float | EllipsisType | None = ...
    ) -> None:
        """Change the per-key limits from now on (``None``: no limit; omitted: unchanged).
        Live state is kept: a bucket shrinks to the new size at once, a window keeps its count."""
        new_rpm = self._limits.rpm if isinstance(rpm, EllipsisType) else rpm
        new_tpm = self._limits.tpm if isinstance(tpm, EllipsisType) else tpm
        check_limit("rpm", new_rpm)
        check_limit("tpm", new_tpm)
        self._limits.set_limits(new_rpm, new_tpm)

    def _apply_schedule(self, t: float) -> None:
        schedule = self._schedule
        while self._schedule_next < len(schedule) and schedule[self._schedule_next][0] <= t:
            _, rpm, tpm = schedule[self._schedule_next]
            self._limits.set_limits(rpm, tpm)
            self._schedule_next += 1

    def rate_limit_headers(self, key: str) -> dict[str, str]:
        """The rate-limit headers ``key`` would get now (empty without limits or headers)."""
        t = self.elapsed()
        self._apply_schedule(t)
        if not self._limits.active:
            return {}
        requests, tokens = self._limits.view(key, t)
        return self._limit_headers(requests, tokens, t)

    # -- serving -------------------------------------------------------------------------
    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport answering every request in process with :meth:`handle`."""
        return SimTransport(self)

    def client(self, **options: Any) -> LLMClient:
        """An :class:`~flashkit.client.LLMClient` talking to this upstream in process, on its
        clock (``options`` are the client's keyword arguments)."""
        options.setdefault("clock", self.clock)
        return LLMClient(provider="sim", transport=self.transport(), **options)

    @property
    def asgi_app(self) -> SimAsgiApp:
        """The upstream as a plain ASGI 3 application (for uvicorn): the chat API, plus
        ``GET /_sim/stats`` (JSON) and ``POST /_sim/reset``."""
        return SimAsgiApp(self)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request after its simulated latency; raises :class:`httpx.ConnectError`
        for connection failures during outages."""
        try:
            raw = request.content
        except httpx.RequestNotRead:
            raw = await request.aread()
        t = self.clock.now() - self._start
        stats = self._stats
        stats.requests += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        second = int(t) if t > 0.0 else 0
        self._load.arrive(second)
        self._serial += 1
        plan = self._plan(request, raw, t)
        plan.generation = self._generation
        cancelled = True
        try:
            if plan.delay > 0.0:
                await self.clock.sleep(plan.delay)
            cancelled = False
        finally:
            self._finish(plan, second, cancelled)
        if plan.error is not None:
            raise plan.error
        return httpx.Response(plan.status, headers=plan.headers, content=plan.body, request=request)

    def _finish(self, plan: _Plan, second: int, cancelled: bool) -> None:
        if plan.generation != self._generation:
            return  # a reset happened meanwhile: this request belongs to the old books
        stats = self._stats
        stats.in_flight -= 1
        if cancelled:
            stats.cancelled += 1
            self._load.finish(second, _OUTCOME_OF["cancelled"])
            return
        if plan.error is None:
            stats.by_status[plan.status] = stats.by_status.get(plan.status, 0) + 1
        if plan.kind is not None:
            stats.rate_limited[plan.kind] = stats.rate_limited.get(plan.kind, 0) + 1
        else:
            setattr(stats, plan.stat, getattr(stats, plan.stat) + 1)
        stats.prompt_tokens += plan.prompt
        stats.completion_tokens += plan.completion
        if plan.settle:
            self._limits.settle(plan.key, self.clock.now() - self._start, plan.settle)
        self._load.finish(second, _OUTCOME_OF[plan.stat])

    # -- decisions -----------------------------------------------------------------------
    def _limit_headers(
        self, requests: LimitView | None, tokens: LimitView | None, t: float
    ) -> dict[str, str]:
        style = self.profile.header_style
        headers: dict[str, str] = {}
        if style == "openai":
            for name, view in (("requests", requests), ("tokens", tokens)):
                if view is not None:
                    headers[f"x-ratelimit-limit-{name}"] = _number(view.limit)
                    headers[f"x-ratelimit-remaining-{name}"] = _number(view.remaining)
                    headers[f"x-ratelimit-reset-{name}"] = format_duration(view.reset)
        elif style == "anthropic":
            wall = self.epoch + t
            for name, view in (("requests", requests), ("tokens", tokens)):
                if view is not None:
                    headers[f"anthropic-ratelimit-{name}-limit"] = _number(view.limit)
                    headers[f"anthropic-ratelimit-{name}-remaining"] = _number(view.remaining)
                    headers[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(wall + view.reset)
        return headers

    def _reject(
        self, status: int, body: bytes, stat: str, headers: dict[str, str] | None = None
    ) -> _Plan:
        headers = headers if headers is not None else {}
        headers["content-type"] = _JSON
        headers["x-request-id"] = f"req_{self._serial:08d}"
        return _Plan(status, body, stat, self.profile.reject_latency, headers)

    def _plan(self, request: httpx.Request, raw: bytes, t: float) -> _Plan:
        gate = self._gate(request, t)
        if isinstance(gate, _Plan):
            return gate
        key = gate
        body = self._parse(raw)
        if isinstance(body, bytes):
            return self._reject(400, body, "invalid_requests")
        model, messages, max_tokens = body
        prompt = 3 + sum(
            4 + estimate_tokens(str(m.get("content", "")) if isinstance(m, dict) else str(m))
            for m in messages
        )
        reserved = prompt + (max_tokens or 0)
        profile = self.profile
        if reserved > profile.context_limit:
            return self._too_long(prompt, max_tokens)
        cap = profile.spend_cap_tokens
        if cap is not None and self._spent >= cap:
            return self._reject(429, _SPEND_CAP, "rate_limited").with_kind("spend_cap")

        headers: dict[str, str] = {}
        if self._schedule:
            self._apply_schedule(t)
        limits = self._limits
        if limits.active:
            decision = limits.admit(key, t, reserved)
            headers = self._limit_headers(decision.requests, decision.tokens, t)
            if decision.kind is not None:
                return self._rate_limited(decision.kind, decision.retry_after, reserved, headers)

        in_flight = self._stats.in_flight
        if profile.capacity is not None and in_flight > profile.capacity:
            status = profile.over_capacity_status
            body_ = _OVERLOADED if status == 529 else _SERVER_ERRORS[503]
            plan = self._reject(status, body_, "overloaded" if status == 529 else "server_errors")
            return plan.settling(key, -reserved)
        return self._draw(key, model, messages, max_tokens, prompt, headers, in_flight, t)

    def _gate(self, request: httpx.Request, t: float) -> _Plan | str:
        """The route, the method, the API key and outages: a rejection, or the key."""
        profile = self.profile
        if request.url.path not in CHAT_PATHS:
            return self._reject(404, _NOT_FOUND, "invalid_requests")
        if request.method != "POST":
            return self._reject(405, _NOT_ALLOWED, "invalid_requests", {"allow": "POST"})
        key = _bearer(request.headers.get("authorization"))
        if key is None:
            return self._reject(401, _NO_KEY, "auth_errors")
        if key in profile.invalid_keys:
            return self._reject(401, _BAD_KEY, "auth_errors")
        if profile.outages and _in_windows(profile.outages, t):
            if self._rng.random() < profile.outage_connect_fraction:
                plan = self._reject(0, b"", "connect_errors")
                plan.error = httpx.ConnectError(
                    "simulated outage: connection refused", request=request
                )
                return plan
            return self._reject(503, _SERVER_ERRORS[503], "server_errors")
        return key

    def _too_long(self, prompt: int, max_tokens: int | None) -> _Plan:
        """The 400 for a request longer than the context."""
        limit = self.profile.context_limit
        message = (
            f"This model's maximum context length is {limit} tokens. However, "
            f"you requested {prompt + (max_tokens or 0)} tokens ({prompt} in the messages, "
            f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
            "or completion."
        )
        error = _error(message, "invalid_request_error", "context_length_exceeded")
        return self._reject(400, error, "invalid_requests")

    def _draw(
        self,
        key: str,
        model: str,
        messages: list[Any],
        max_tokens: int | None,
        prompt: int,
        headers: dict[str, str],
        in_flight: int,
        t: float,
    ) -> _Plan:
        """An admitted request's fate: its random draws (always four, in this order), its
        latency, then an injected fault or the answer."""
        profile, rng = self.profile, self._rng
        reserved = prompt + (max_tokens or 0)
        fault, z, body_fault, variant = (
            rng.random(),
            rng.gauss(0.0, 1.0),
            rng.random(),
            rng.random(),
        )
        brownout = bool(profile.brownouts) and _in_windows(profile.brownouts, t)
        latency = math.exp(self._mu + self._sigma * z) if self._mu > -math.inf else 0.0
        if profile.load_slowdown and in_flight > 1:
            latency *= 1.0 + profile.load_slowdown * (in_flight - 1)
        error_rate = profile.error_rate
        if brownout:
            latency *= profile.brownout_latency_factor
            error_rate = max(error_rate, profile.brownout_error_rate)
        if fault < profile.overload_rate:
            return self._reject(529, _OVERLOADED, "overloaded", headers).settling(key, -reserved)
        if fault < profile.overload_rate + error_rate:
            status = 500 if variant < 0.5 else 502 if variant < 0.75 else 503
            plan = self._reject(status, _SERVER_ERRORS[status], "server_errors", headers)
            plan.delay = latency
            return plan.settling(key, -reserved)
        return self._answer(
            key,
            model,
            messages,
            max_tokens,
            prompt,
            reserved,
            latency,
            body_fault,
            variant,
            headers,
        )

    def _parse(self, raw: bytes) -> bytes | tuple[str, list[Any], int | None]:
        """(model, messages, max_tokens) from a chat body, or the bytes of a 400 answer."""
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(
                "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
        if not isinstance(body, dict):
            return _error("The body must be a JSON object.", "invalid_request_error", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(
                "you must provide a model parameter", "invalid_request_error", "missing_model"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(
                "'messages' must be a non-empty array of {role, content} objects",
                "invalid_request_error",
                "invalid_messages",
            )
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            return _error(
                f"Invalid 'max_tokens': {max_tokens!r}; expected an integer >= 1.",
                "invalid_request_error",
                "invalid_value",
            )
        return model, messages, max_tokens

    def _rate_limited(
        self, kind: str, retry_after: float, reserved: int, headers: dict[str, str]
    ) -> _Plan:
        limits = self._limits
        if kind == "too_large":
            message = (
                f"Request too large for tokens per min (TPM): Limit {_number(limits.tpm or 0)}, "
                f"Requested {reserved}. The input or output tokens must be reduced in order to "
                "run successfully."
            )
            body = _error(message, "tokens", "rate_limit_exceeded")
            return self._reject(429, body, "rate_limited", headers).with_kind(kind)
        wait = max(1, math.ceil(retry_after - 1e-9))
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        limit = limits.rpm if kind == "requests" else limits.tpm
        message = (
            f"Rate limit reached for {unit}: Limit {_number(limit or 0)}. "
            f"Please try again in {wait}s."
        )
        headers["retry-after"] = str(wait)
        body = _error(message, kind, "rate_limit_exceeded")
        return self._reject(429, body, "rate_limited", headers).with_kind(kind)

    def _answer(
        self,
        key: str,
        model: str,
        messages: list[Any],
        max_tokens: int | None,
        prompt: int,
        reserved: int,
        latency: float,
        body_fault: float,
        variant: float,
        headers: dict[str, str],
    ) -> _Plan:
        profile = self.profile
        stage, term, item = detect(model, messages)
        if stage == 1:
            position, kind, _ = item_fields(item)
            text = stage1_text(position, term, kind)
        elif stage == 2:
            position, kind, number = item_fields(item)
            text = stage2_text(position, term, number, kind)
        else:
            text = generic_reply(term)
        if stage and lexicon().lookup(term) is None:
            self._stats.unknown_terms += 1
        stat = "ok"
        edge = profile.malformed_rate
        if body_fault < edge:
            stat = "malformed"
        elif body_fault < (edge := edge + profile.truncated_rate):
            stat = "truncated"
        elif body_fault < edge + profile.bad_content_rate:
            stat = "bad_content"
            text = broken_content(stage, text, (body_fault - edge) / profile.bad_content_rate)
        if stage == 1 and variant < profile.fenced_rate:
            text = f"```json\n{text}\n```"
        completion = estimate_tokens(text)
        limit = max_tokens if max_tokens is not None else profile.context_limit - prompt
        finish = "stop"
        if completion > limit:
            text = text[: limit * 4]
            completion = limit
            finish = "length"
        self._spent += prompt + completion
        envelope = json.dumps(
            {
                "id": f"chatcmpl-sim{self._serial:08d}",
                "object": "chat.completion",
                "created": int(self.epoch + self.clock.now() - self._start),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            ensure_ascii=False,
        )
        if stat == "malformed":
            body = _MALFORMED_HTML if variant < 0.5 else b"data: " + envelope.encode()
        elif stat == "truncated":
            body = envelope[: max(1, int(len(envelope) * (0.2 + 0.6 * variant)))].encode()
        else:
            body = envelope.encode()
        headers["content-type"] = "text/html" if body is _MALFORMED_HTML else _JSON
        headers["x-request-id"] = f"req_{self._serial:08d}"
        plan = _Plan(200, body, stat, latency, headers)
        plan.prompt = prompt
        plan.completion = completion
        return plan.settling(key, prompt + completion - reserved)


class SimTransport(httpx.AsyncBaseTransport):
    """An httpx transport that hands every request to :meth:`SimulatedUpstream.handle`."""

    def __init__(self, upstream: SimulatedUpstream) -> None:
        self.upstream = upstream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await self.upstream.handle(request)
