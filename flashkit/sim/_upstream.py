"""SimulatedUpstream: an OpenAI-compatible ``POST /v1/chat/completions`` (plain or streamed),
Anthropic's ``POST /v1/messages`` and ``GET /v1/models``, with injectable faults.

Every decision is made synchronously when a request arrives (random draws from one
``random.Random(seed)``, in arrival order), then the answer waits its latency on the injected
clock. Same seed and same request sequence: same responses, status codes, headers and timing.
The answer is a :class:`~flashkit.sim._network_faults.Reply` (status, headers, timed chunks, how
it ends), played in process by :class:`SimTransport` and over HTTP by :attr:`asgi_app`.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from types import EllipsisType
from typing import Any, Final

from flashkit.client import LLMClient
from flashkit.clock import Clock, SystemClock, default_clock
from flashkit.errors import ValidationError
from flashkit.sim._anthropic import MESSAGES_PATHS, api_key, error_body, message, message_events
from flashkit.sim._asgi import SimAsgiApp
from flashkit.sim._content import (
    Answer,
    broken_content,
    detect,
    estimate_tokens,
    generic_reply,
    item_fields,
    stage1_text,
    stage2_text,
)
from flashkit.sim._errors import (
    BAD_KEY,
    BAD_X_API_KEY,
    MALFORMED_HTML,
    NO_KEY,
    NO_X_API_KEY,
    NOT_ALLOWED,
    NOT_ALLOWED_GET,
    NOT_FOUND,
    OVERLOADED,
    SERVER_ERRORS,
    SPEND_CAP,
    openai_error,
)
from flashkit.sim._http import httpx
from flashkit.sim._lexicon import lexicon
from flashkit.sim._limits import LimitBook, LimitView
from flashkit.sim._models import MODELS_PATHS, models_body
from flashkit.sim._network_faults import (
    NETWORK_FAULTS,
    Before,
    End,
    NetworkFault,
    Reply,
    apply_fault,
    merge,
    to_response,
    truncate,
)
from flashkit.sim._profile import FaultProfile, check_limit
from flashkit.sim._ratelimit_headers import limit_headers, number
from flashkit.sim._request import Call, bearer, parse, prompt_tokens
from flashkit.sim._sse import EVENT_STREAM, chat_chunks, chat_completion, malformed_event
from flashkit.sim._stats import OUTCOMES, LoadSeries, SimStats

__all__ = ["CHAT_PATHS", "SimTransport", "SimulatedUpstream"]

CHAT_PATHS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})
VIRTUAL_EPOCH: Final = 1_735_689_600.0  # 2025-01-01T00:00:00Z: wall time 0 of a virtual clock
_Z99: Final = 2.3263478740408408  # the standard normal's 99th percentile
_JSON: Final = "application/json"


class _Plan:
    """What one request gets, decided on arrival; its headers go out after ``delay`` seconds.
    ``chunks`` (None: ``body`` at once), ``end`` and ``before`` are as in :class:`Reply`."""

    __slots__ = (
        "before",
        "body",
        "chunks",
        "completion",
        "delay",
        "dialect",
        "end",
        "generation",
        "headers",
        "key",
        "kind",
        "network",
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
        self.before: Before | None = None
        self.chunks: list[tuple[float, bytes]] | None = None
        self.end: End = "complete"
        self.network: NetworkFault | None = None
        self.dialect = "openai"
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
    "refused": OUTCOMES.index("connect_error"),
    "network": OUTCOMES.index("network_error"),
}


def _in_windows(windows: tuple[tuple[float, float], ...], t: float) -> bool:
    return any(start <= t < end for start, end in windows)


class SimulatedUpstream:
    """A simulated LLM API (OpenAI's chat completions, plain or streamed; Anthropic's Messages;
    the models list) with the faults of ``profile`` (a :class:`FaultProfile` or a preset name),
    deterministic from ``seed`` and timed by ``clock`` (default:
    :func:`flashkit.clock.default_clock`).

    Use it in process with ``httpx2.AsyncClient(transport=upstream.transport(),
    base_url="http://sim/v1")`` (a stream: ``client.stream("POST", "/chat/completions",
    json={..., "stream": True})``, whose body arrives as the clock advances), or over HTTP via
    :attr:`asgi_app` (see :func:`serve`).
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
            raise ValidationError.config(
                f"SimulatedUpstream(profile={profile!r}): needs a FaultProfile or a preset name",
                field="profile",
            )
        self.profile = profile
        self.seed = seed
        self.clock = clock if clock is not None else default_clock()
        self._epoch_override = epoch
        median, p99 = profile.latency_median, profile.latency_p99
        self._mu = math.log(median) if median > 0.0 else -math.inf
        self._sigma = math.log(p99 / median) / _Z99 if median > 0.0 else 0.0
        self._answer_faults = profile.answer_fault_rate
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
        """The upstream as a plain ASGI 3 application (for uvicorn): the APIs, plus
        ``GET /_sim/stats`` (JSON) and ``POST /_sim/reset``. Resets are only approximated
        unless the server lends the app a connection control (its ``control``), as
        :func:`serve` does."""
        return SimAsgiApp(self)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request after its simulated latency (a stream: its time to first token),
        as the httpx response a real client would get: a body that is streamed or broken by a
        network fault is played on the upstream's clock as it is read. Raises what a real client
        would see before the headers: :class:`httpx.ConnectError` (a refused connection, an
        outage), :class:`httpx.ReadError` (a reset)."""
        return to_response(await self.exchange(request), request, self.clock)

    async def exchange(self, request: httpx.Request) -> Reply:
        """Decide on ``request``, wait until its headers are due (the latency; a stream: the
        time to first token) and return the reply as it goes over the wire. :meth:`handle` and
        the ASGI app play it."""
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
        return self._reply(plan)

    def _reply(self, plan: _Plan) -> Reply:
        if plan.before is not None:
            return Reply(0, {}, before=plan.before)
        headers = plan.headers
        # As every provider does: the server's time, whole seconds (virtual: from the epoch).
        headers["date"] = email.utils.formatdate(self.epoch + self.elapsed(), usegmt=True)
        if plan.chunks is None:
            body = plan.body
            if plan.dialect == "anthropic" and plan.status >= 400:
                request_id = headers.get("x-request-id", "")
                headers["request-id"] = request_id
                body = error_body(plan.status, body, request_id)
            headers["content-length"] = str(len(body))
            return Reply(plan.status, headers, ((0.0, body),))
        return Reply(
            plan.status,
            headers,
            merge(plan.chunks),
            end=plan.end,
            stall_seconds=self.profile.stall_seconds,
        )

    def _finish(self, plan: _Plan, second: int, cancelled: bool) -> None:
        if plan.generation != self._generation:
            return  # a reset happened meanwhile: this request belongs to the old books
        stats = self._stats
        stats.in_flight -= 1
        if cancelled:
            stats.cancelled += 1
            self._load.finish(second, _OUTCOME_OF["cancelled"])
            return
        if plan.before is None:
            stats.by_status[plan.status] = stats.by_status.get(plan.status, 0) + 1
        if plan.kind is not None:
            stats.rate_limited[plan.kind] = stats.rate_limited.get(plan.kind, 0) + 1
        elif plan.network is not None:
            stats.network_faults[plan.network] = stats.network_faults.get(plan.network, 0) + 1
        else:
            setattr(stats, plan.stat, getattr(stats, plan.stat) + 1)
        stats.prompt_tokens += plan.prompt
        stats.completion_tokens += plan.completion
        if plan.settle:
            self._limits.settle(plan.key, self.clock.now() - self._start, plan.settle)
        self._load.finish(second, _OUTCOME_OF[plan.stat])

    # -- decisions -----------------------------------------------------------------------
    def _limit_headers(
        self,
        requests: LimitView | None,
        tokens: LimitView | None,
        t: float,
        dialect: str = "openai",
    ) -> dict[str, str]:
        style = self.profile.header_style
        if dialect == "anthropic" and style != "none":
            style = "anthropic"  # the Messages route speaks Anthropic's headers
        return limit_headers(style, requests, tokens, self.epoch + t)

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
        key, dialect = gate
        plan = self._plan_call(key, dialect, raw, t)
        plan.dialect = dialect
        return plan

    def _plan_call(self, key: str, dialect: str, raw: bytes, t: float) -> _Plan:
        call = parse(raw, dialect)
        if isinstance(call, bytes):
            return self._reject(400, call, "invalid_requests")
        prompt = prompt_tokens(call)
        max_tokens = call.max_tokens
        reserved = prompt + (max_tokens or 0)
        profile = self.profile
        if reserved > profile.context_limit:
            return self._too_long(prompt, max_tokens)
        cap = profile.spend_cap_tokens
        if cap is not None and self._spent >= cap:
            return self._reject(429, SPEND_CAP, "rate_limited").with_kind("spend_cap")

        headers: dict[str, str] = {}
        if self._schedule:
            self._apply_schedule(t)
        limits = self._limits
        if limits.active:
            decision = limits.admit(key, t, reserved)
            headers = self._limit_headers(decision.requests, decision.tokens, t, dialect)
            if decision.kind is not None:
                return self._rate_limited(decision.kind, decision.retry_after, reserved, headers)

        in_flight = self._stats.in_flight
        if profile.capacity is not None and in_flight > profile.capacity:
            status = profile.over_capacity_status
            body_ = OVERLOADED if status == 529 else SERVER_ERRORS[503]
            plan = self._reject(status, body_, "overloaded" if status == 529 else "server_errors")
            return plan.settling(key, -reserved)
        return self._draw(key, call, prompt, headers, in_flight, t)

    def _network_window(self, t: float) -> NetworkFault | None:
        """The network fault of a ``network_windows`` window open at ``t``, if any."""
        for start, end, fault in self.profile.network_windows:
            if start <= t < end:
                return fault  # type: ignore[return-value]  # checked by FaultProfile
        return None

    def _gate(self, request: httpx.Request, t: float) -> _Plan | tuple[str, str]:
        """A refused connection, the route, the method, the API key and outages: a rejection
        (or the models list), else the key and the dialect (``"openai"`` or ``"anthropic"``)."""
        profile = self.profile
        refused = profile.network_windows and self._network_window(t) == "refused"
        if refused or (profile.refused_rate and self._rng.random() < profile.refused_rate):
            return self._refused()
        path = request.url.path
        if path in CHAT_PATHS:
            dialect = "openai"
        elif path in MESSAGES_PATHS:
            dialect = "anthropic"
        elif path in MODELS_PATHS:
            return self._models(request)
        else:
            return self._reject(404, NOT_FOUND, "invalid_requests")
        anthropic = dialect == "anthropic"
        plan: _Plan | None = None
        key = (
            api_key(request.headers) if anthropic else bearer(request.headers.get("authorization"))
        )
        if request.method != "POST":
            plan = self._reject(405, NOT_ALLOWED, "invalid_requests", {"allow": "POST"})
        elif key is None:
            plan = self._reject(401, NO_X_API_KEY if anthropic else NO_KEY, "auth_errors")
        elif key in profile.invalid_keys:
            plan = self._reject(401, BAD_X_API_KEY if anthropic else BAD_KEY, "auth_errors")
        elif profile.outages and _in_windows(profile.outages, t):
            if self._rng.random() < profile.outage_connect_fraction:
                plan = self._reject(0, b"", "connect_errors")
                plan.before = "outage"
            else:
                plan = self._reject(503, SERVER_ERRORS[503], "server_errors")
        if plan is not None:
            plan.dialect = dialect
            return plan
        return key or "", dialect  # a missing key was rejected above

    def _refused(self) -> _Plan:
        """A refused connection: at once, before anything reaches the model or the books."""
        plan = self._reject(0, b"", "refused")
        plan.network = "refused"
        plan.before = "refused"
        plan.delay = 0.0
        return plan

    def _models(self, request: httpx.Request) -> _Plan:
        """``GET /v1/models``: the list, in Anthropic's shape for the Anthropic SDK."""
        anthropic = "anthropic-version" in request.headers
        if request.method != "GET":
            plan = self._reject(405, NOT_ALLOWED_GET, "invalid_requests", {"allow": "GET"})
            plan.dialect = "anthropic" if anthropic else "openai"
            return plan
        headers = request.headers
        key = api_key(headers) if anthropic else bearer(headers.get("authorization"))
        if key is None or key in self.profile.invalid_keys:
            plan = self._reject(401, NO_KEY if key is None else BAD_KEY, "auth_errors")
        else:
            body = models_body(anthropic=anthropic, created=int(self.epoch))
            plan = self._reject(200, body, "ok")
        plan.dialect = "anthropic" if anthropic else "openai"
        return plan

    def _too_long(self, prompt: int, max_tokens: int | None) -> _Plan:
        """The 400 for a request longer than the context."""
        limit = self.profile.context_limit
        message = (
            f"This model's maximum context length is {limit} tokens. However, "
            f"you requested {prompt + (max_tokens or 0)} tokens ({prompt} in the messages, "
            f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
            "or completion."
        )
        error = openai_error(message, "invalid_request_error", "context_length_exceeded")
        return self._reject(400, error, "invalid_requests")

    def _draw(
        self,
        key: str,
        call: Call,
        prompt: int,
        headers: dict[str, str],
        in_flight: int,
        t: float,
    ) -> _Plan:
        """An admitted request's fate: its random draws (four, in this order, and a fifth when
        the profile has network faults for answers), its latency, then an injected fault or the
        answer."""
        profile, rng = self.profile, self._rng
        reserved = prompt + (call.max_tokens or 0)
        fault, z, body_fault, variant = (
            rng.random(),
            rng.gauss(0.0, 1.0),
            rng.random(),
            rng.random(),
        )
        network = None
        if self._answer_faults or profile.network_windows:
            draw = rng.random() if self._answer_faults else 1.0
            network = self._network_fault(draw, variant, t)
        brownout = bool(profile.brownouts) and _in_windows(profile.brownouts, t)
        latency = math.exp(self._mu + self._sigma * z) if self._mu > -math.inf else 0.0
        if profile.load_slowdown and in_flight > 1:
            latency *= 1.0 + profile.load_slowdown * (in_flight - 1)
        error_rate = profile.error_rate
        if brownout:
            latency *= profile.brownout_latency_factor
            error_rate = max(error_rate, profile.brownout_error_rate)
        if fault < profile.overload_rate:
            return self._reject(529, OVERLOADED, "overloaded", headers).settling(key, -reserved)
        if fault < profile.overload_rate + error_rate:
            status = 500 if variant < 0.5 else 502 if variant < 0.75 else 503
            plan = self._reject(status, SERVER_ERRORS[status], "server_errors", headers)
            plan.delay = latency
            return plan.settling(key, -reserved)
        plan = self._answer(key, call, prompt, reserved, latency, body_fault, variant, headers)
        if network is not None:
            self._break(plan, call.stream, *network)
        return plan

    def _network_fault(self, draw: float, variant: float, t: float) -> tuple[str, float] | None:
        """The network fault of an answer (a window's, else drawn) and where in [0, 1) it
        cuts; None for a clean answer."""
        profile = self.profile
        if profile.network_windows:
            fault = self._network_window(t)
            if fault is not None and fault != "refused":
                return fault, variant
        edge = 0.0
        for kind in NETWORK_FAULTS[1:]:
            rate: float = getattr(profile, f"{kind}_rate")
            if draw < edge + rate:
                return kind, (draw - edge) / rate
            edge += rate
        return None

    def _break(self, plan: _Plan, stream: bool, fault: str, u: float) -> None:
        """Apply the network ``fault`` to an answer's plan."""
        plan.network = fault  # type: ignore[assignment]  # one of NETWORK_FAULTS
        plan.stat = "network"
        if fault == "reset_before_headers":
            plan.before = "reset"
            return
        profile = self.profile
        chunks = plan.chunks if plan.chunks is not None else [(0.0, plan.body)]
        plan.chunks, plan.end = apply_fault(
            plan.network,  # type: ignore[arg-type]
            chunks,
            stream=stream,
            u=u,
            dribble_rate=profile.dribble_bytes_per_second,
            oversized_bytes=profile.oversized_bytes,
        )
        if not stream:  # what the server promised: the whole (maybe padded) body
            size = sum(len(data) for _, data in plan.chunks) if fault == "oversized" else None
            plan.headers["content-length"] = str(size if size is not None else len(plan.body))

    def _rate_limited(
        self, kind: str, retry_after: float, reserved: int, headers: dict[str, str]
    ) -> _Plan:
        limits = self._limits
        if kind == "too_large":
            message = (
                f"Request too large for tokens per min (TPM): Limit {number(limits.tpm or 0)}, "
                f"Requested {reserved}. The input or output tokens must be reduced in order to "
                "run successfully."
            )
            body = openai_error(message, "tokens", "rate_limit_exceeded")
            return self._reject(429, body, "rate_limited", headers).with_kind(kind)
        wait = max(1, math.ceil(retry_after - 1e-9))
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        limit = limits.rpm if kind == "requests" else limits.tpm
        message = (
            f"Rate limit reached for {unit}: Limit {number(limit or 0)}. "
            f"Please try again in {wait}s."
        )
        headers["retry-after"] = str(wait)
        body = openai_error(message, kind, "rate_limit_exceeded")
        return self._reject(429, body, "rate_limited", headers).with_kind(kind)

    def _answer(
        self,
        key: str,
        call: Call,
        prompt: int,
        reserved: int,
        latency: float,
        body_fault: float,
        variant: float,
        headers: dict[str, str],
    ) -> _Plan:
        profile = self.profile
        stage, term, item = detect(call.model, call.messages)
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
        max_tokens = call.max_tokens
        limit = max_tokens if max_tokens is not None else profile.context_limit - prompt
        finish = "stop"
        if completion > limit:
            text = text[: limit * 4]
            completion = limit
            finish = "length"
        self._spent += prompt + completion
        created = int(self.epoch + self.clock.now() - self._start)
        answer = Answer(self._serial, created, call.model, text, finish, prompt, completion)
        headers["x-request-id"] = f"req_{self._serial:08d}"
        if call.dialect == "anthropic":
            headers["request-id"] = headers["x-request-id"]
        if call.stream:
            plan = self._stream(answer, call, stat, latency, variant, headers)
        else:
            envelope = message(answer) if call.dialect == "anthropic" else chat_completion(answer)
            if stat == "malformed":
                body = MALFORMED_HTML if variant < 0.5 else b"data: " + envelope.encode()
            elif stat == "truncated":
                body = envelope[: max(1, int(len(envelope) * (0.2 + 0.6 * variant)))].encode()
            else:
                body = envelope.encode()
            headers["content-type"] = "text/html" if body is MALFORMED_HTML else _JSON
            plan = _Plan(200, body, stat, latency, headers)
        plan.prompt = prompt
        plan.completion = completion
        return plan.settling(key, prompt + completion - reserved)

    def _stream(
        self,
        answer: Answer,
        call: Call,
        stat: str,
        latency: float,
        variant: float,
        headers: dict[str, str],
    ) -> _Plan:
        """A streamed answer: headers and the first events after the time to first token, the
        text's pieces evenly over the rest of ``latency``. A malformed stream has a non-JSON
        event; a truncated one ends cleanly before its end."""
        anthropic = call.dialect == "anthropic"
        events = (
            message_events(answer)
            if anthropic
            else chat_chunks(answer, include_usage=call.include_usage)
        )
        first = latency * self.profile.first_token_fraction
        gap = (latency - first) / len(events.body)
        chunks = [(0.0, data) for data in events.head]
        chunks += [(gap, data) for data in events.body]
        chunks += [(0.0, data) for data in events.tail]
        if stat == "malformed":
            at = len(events.head)
            chunks[at] = (gap, malformed_event("content_block_delta" if anthropic else None))
        elif stat == "truncated":
            chunks = truncate(chunks, variant)
        headers["content-type"] = EVENT_STREAM
        headers["cache-control"] = "no-cache"
        plan = _Plan(200, b"", stat, first, headers)
        plan.chunks = chunks
        return plan


class SimTransport(httpx.AsyncBaseTransport):
    """An httpx transport that hands every request to :meth:`SimulatedUpstream.handle`: the
    response's headers after the latency on the upstream's clock, its body (streams, network
    faults) as the clock advances, and the exceptions a real connection would raise (see
    :mod:`flashkit.sim._network_faults`)."""

    def __init__(self, upstream: SimulatedUpstream) -> None:
        self.upstream = upstream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await self.upstream.handle(request)
