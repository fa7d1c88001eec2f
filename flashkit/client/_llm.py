"""An LLM chat client over httpx2 with every flashkit primitive composed in one place.

>>> async with LLMClient(provider="openrouter") as client:        # key from FLASHKIT_API_KEY
...     result = await client.chat([{"role": "user", "content": "안녕"}], max_tokens=200)
...     result.content, result.usage, result.attempts

Each call is a retry loop (:class:`~flashkit.retry.RetryConfig` with a shared
:class:`~flashkit.budget.RetryBudget` and an optional ``deadline``); each *attempt* passes, in
this order:

1. the **gate**: nothing is sent before a server's ``retry-after`` (from any earlier answer of
   this client) has expired;
2. the **limiters**: any :class:`~flashkit.ratelimit.Limiter` counting requests
   (``limiter=``) and one counting LLM tokens (``token_limiter=``): tokens are acquired as
   ``max_tokens`` plus a prompt estimate and settled with the answer's ``usage`` (``adjust``);
3. the **breaker** (:class:`~flashkit.breaker.CircuitBreaker`; 429s do not count against it);
4. the **HTTP exchange** under ``attempt_timeout`` seconds (really cancelled; fixed, or
   :class:`~flashkit.client.FromLatency`: a quantile of recent attempts times a factor, between a
   floor and a ceiling), optionally **hedged**: with ``hedge_after`` set (seconds, or
   ``FromLatency``), a second request goes out when the first is slow, only from capacity no one
   else asks for: no ``retry-after`` running, none of this client's attempts waiting for a slot
   or on the limiters, room in them now, and a retry token from the budget (else it is skipped
   and counted); the first good answer wins, the other is cancelled
   (:mod:`flashkit.client._hedging`, ``docs/design/hedging.md``).

Answers are classified by :func:`~flashkit.errors.classify`: 429 and 5xx are retried (after at
least their ``retry-after``), authentication and validation errors are raised at once, bodies that
are not the expected JSON are retryable ``malformed_response`` errors. Provider rate-limit headers
(OpenAI ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``, OpenRouter) feed the limiter.
:meth:`LLMClient.stream` runs the same attempts over a streamed answer (:mod:`._stream`).

The API key is sent in the ``Authorization`` header (Anthropic: ``x-api-key``) and nowhere else:
it is scrubbed from every error message, log record and span this client produces, and ``repr``
never shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal

import httpx2
from opentelemetry import trace

from flashkit._headers import LimitInfo, parse_rate_limit_headers
from flashkit.breaker import CircuitBreaker, CircuitState
from flashkit.budget import RetryBudget
from flashkit.client._cached import from_cache, to_cache
from flashkit.client._dialects import DIALECTS, read_answer
from flashkit.client._hedging import Hedger, HedgeStats, SkipReason, has_room, take_room
from flashkit.client._latency import FromLatency, LatencyTracker
from flashkit.client._setup import (
    api_key_for,
    check_seconds,
    check_whole,
    default_breaker,
    http_client,
    retry_policy,
    scrub_secret,
    wait_out_breaker,
)
from flashkit.client._stream import ChatStream, Exchange, stream_retry
from flashkit.client._types import (
    DEFAULT_MODEL,
    PROVIDERS,
    ChatCache,
    ChatResult,
    Usage,
    chat_cache_key,
    malformed,
)
from flashkit.clock import Clock, default_clock
from flashkit.errors import (
    ExternalServiceError,
    RateLimitError,
    StructuredError,
    ValidationError,
    classify,
    redact,
)
from flashkit.ratelimit import Grant, Limiter
from flashkit.retry import RetryConfig, RetryEvent
from flashkit.retry import retry as _retry
from flashkit.telemetry import ClientCall, ClientInstruments, current_telemetry

__all__ = ["LLMClient"]

logger = logging.getLogger("flashkit.client")

_MAX_HEADER_HOLD: Final = 60.0  # seconds: longest hold a "remaining: 0" header can cause
_RATELIMIT_PREFIXES: Final = (b"x-ratelimit", b"anthropic-ratelimit")


@dataclasses.dataclass(slots=True, eq=False)
class _Call:
    """Per-call state shared by its attempts."""

    content: bytes
    estimate: int  # LLM tokens the limiter is charged: max_tokens + the prompt estimate
    prompt_estimate: int
    start: float
    idempotent: bool
    parse: Callable[[str], Any] | None
    parsed: Any = None
    attempt: int = 0
    limiter_wait: float = 0.0
    token_grant: Grant | None = None  # the estimate's grant, until settled
    hedged: bool = False
    breaker_waited: float = 0.0  # seconds spent waiting for an open breaker (breaker_wait)
    timeout: float | None = None  # seconds: the attempt timeout in force for the latest attempt
    hedge: str | None = None  # the latest attempt's hedge: "sent", "won", "skipped"; None: not due
    ttft: float | None = None  # seconds from the latest attempt's request to its first delta
    exchange: Exchange | None = None  # a stream's exchange (None: the plain one, _exchange)
    rec: ClientCall | None = None
    delays: list[float] = dataclasses.field(default_factory=list)


_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "flashkit_client_call", default=None
)


class LLMClient:
    """A chat client (plain or streamed) with limiter, breaker, retries, timeouts and hedging.

    Keyword-only arguments (times in seconds):
        provider: ``"openrouter"`` (default), ``"openai"``, ``"anthropic"`` (the Messages API,
            :mod:`._anthropic`) or ``"sim"`` (see :data:`PROVIDERS`).
        base_url: overrides the provider's (any OpenAI-compatible or Messages ``.../v1``).
        api_key: the key; default from ``FLASHKIT_API_KEY``, then the provider's variable
            (``OPENROUTER_API_KEY`` / ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``). Required
            except for ``sim``.
        model: default model (``anthropic/claude-3.5-sonnet``; with ``anthropic``, left at
            that default: ``claude-sonnet-4-5``).
        max_tokens / temperature: defaults for :meth:`chat` (2000 / 0.7).
        transport: an httpx2 async transport (tests, the simulator); default: the network.
            ``provider="sim"`` needs one (``SimulatedUpstream.transport()`` from
            :mod:`flashkit.sim`) or the ``base_url`` of a ``flashkit sim serve``.
        limiter: a :class:`~flashkit.ratelimit.Limiter` counting requests, 1 per attempt
            (default none).
        token_limiter: a :class:`~flashkit.ratelimit.Limiter` counting LLM tokens: charged
            ``max_tokens`` + the prompt estimate per attempt, then settled with the answer's
            ``usage`` (default none).
        token_refunds: when the answer's ``usage`` comes in below the estimate, give the rest
            back (default True: providers that settle their estimate, e.g. Anthropic's token
            buckets; the refund comes from this call's own grant and wakes queued callers).
            False for providers that count ``max_tokens`` as spent (OpenAI): refunds would let
            the client run ahead of the upstream's count. Usage above the estimate is always
            charged.
        limiter_key: the key limiters count under (``"default"``).
        limiter_timeout: longest wait for the limiter per attempt (None: unbounded).
        breaker: a ``CircuitBreaker``; None builds one (50 % failures of at least 20 calls in 30 s
            open it for 5 s; 429s are not failures); False: no breaker.
        breaker_wait: seconds a call may wait in all for an open breaker before its attempts
            are rejected (default 0.0: rejected at once, failing fast). An attempt waiting for
            the breaker sent nothing, so it spends no attempt and no retry token: with a few
            minutes here a call rides out an outage the breaker has detected.
        retry: a ``RetryConfig``; default 5 attempts, full jitter from 0.5 s up to 30 s,
            ``retry-after`` honoured up to 120 s. Its clock and budget are replaced by this
            client's.
        budget: a ``RetryBudget`` shared by all calls; None builds ``RetryBudget.finagle()``;
            False: none.
        attempt_timeout: seconds per HTTP exchange (60.0; None: unbounded), or a
            :class:`~flashkit.client.FromLatency` deriving them from recent attempts (e.g.
            ``FromLatency(0.99, factor=3.0, floor=10.0, ceiling=60.0)``: its ``ceiling`` until
            enough are known). A timed-out attempt counts as a failure for the breaker and the
            budget, and is retried.
        deadline: seconds for a whole call, waits and retries included (None: unbounded).
        hedge_after: send a second request when the first has not answered after this many
            seconds, or after a :class:`~flashkit.client.FromLatency` of recent attempts (e.g.
            ``FromLatency(0.9, floor=1.0)``; a request sent before enough are known gets its
            hedge once they are and it has run longer); None: no hedging. Only for idempotent
            calls, and only when the hedge delays no one: see the module docstring;
            :attr:`hedge_stats` counts hedges sent, won and skipped.
        latency_window: how many recent attempts (successful, or timed out: at their timeout)
            the ``FromLatency`` bounds are taken from (100; none older than 300 s).
        cache: a :class:`ChatCache`: a request identical to an earlier one (host, model,
            messages, sampling parameters: :func:`chat_cache_key`) is answered from it without
            touching limiter, breaker or upstream (``ChatResult.cached``); answers are stored as
            they come. A cache that fails is skipped, never the call.
        max_in_flight: at most this many attempts past the retry-after gate at once, waiting
            for the limiters or in the HTTP exchange (None: unbounded); a call waiting out a
            retry's backoff holds none. The connection pool is sized to it (twice with hedging;
            100 when unbounded), every connection kept alive.
        headers: extra HTTP headers (e.g. OpenRouter's ``HTTP-Referer`` / ``X-Title``).
        clock: a :class:`~flashkit.clock.Clock` for every part (default: ``default_clock()``).
        rng: the ``random.Random`` the retry jitter draws from (seed it for a reproducible run;
            default: the retry config's).
        name: names the breaker and telemetry.
    """

    def __init__(
        self,
        *,
        provider: Literal["openrouter", "openai", "anthropic", "sim"] | str = "openrouter",
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 2000,
        temperature: float | None = 0.7,
        transport: httpx2.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        token_limiter: Limiter | None = None,
        token_refunds: bool = True,
        limiter_key: str = "default",
        limiter_timeout: float | None = None,
        breaker: CircuitBreaker | Literal[False] | None = None,
        breaker_wait: float = 0.0,
        retry: RetryConfig | None = None,
        budget: RetryBudget | Literal[False] | None = None,
        attempt_timeout: float | FromLatency | None = 60.0,
        deadline: float | None = None,
        hedge_after: float | FromLatency | None = None,
        latency_window: int = 100,
        max_in_flight: int | None = None,
        cache: ChatCache | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        name: str = "llm",
    ) -> None:
        preset = PROVIDERS.get(provider)
        if preset is None:
            raise ValidationError(
                f"LLMClient(provider={provider!r}): unknown provider; use one of "
                f"{sorted(PROVIDERS)} (any OpenAI-compatible server: provider='openai', "
                "base_url='https://host/v1')",
                code="invalid_config",
                details={"field": "provider"},
            )
        self.provider = preset.name
        self.base_url = (base_url or preset.base_url).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValidationError(
                f"LLMClient(base_url={self.base_url!r}): must start with http:// or https://",
                code="invalid_config",
                details={"field": "base_url"},
            )
        if transport is None and preset.name == "sim" and base_url is None:
            raise ValidationError(
                "LLMClient(provider='sim'): pass transport=upstream.transport() (an in-process "
                "flashkit.sim.SimulatedUpstream) or base_url= of a `flashkit sim serve`",
                code="invalid_config",
                details={"field": "transport"},
            )
        self._secret = api_key_for(preset, api_key)
        check_whole("max_tokens", max_tokens, "2000")
        check_whole("max_in_flight", max_in_flight, "50", optional=True)
        check_whole("latency_window", latency_window, "100")
        check_seconds(
            attempt_timeout=None if isinstance(attempt_timeout, FromLatency) else attempt_timeout,
            deadline=deadline,
            hedge_after=None if isinstance(hedge_after, FromLatency) else hedge_after,
            limiter_timeout=limiter_timeout,
            breaker_wait=breaker_wait or None,
        )
        self._dialect = dialect = DIALECTS[preset.api]
        self.model = model if model != DEFAULT_MODEL else dialect.default_model or model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.attempt_timeout = attempt_timeout
        self.hedge_after = hedge_after
        self.max_in_flight = max_in_flight
        self.breaker_wait = breaker_wait
        self.cache = cache
        self._slots: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()
        )
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now
        self.name = name
        # Recent attempts' seconds, for the FromLatency timeout and hedge delay.
        self.latency = LatencyTracker(latency_window, max_age=300.0, clock=self.clock)
        self._hedger = Hedger(hedge_after, self.latency) if hedge_after is not None else None
        self._queued = 0  # attempts waiting for a slot (max_in_flight)
        self._waiting = 0  # attempts waiting on the limiters
        self._timeout_shown: float | None = None  # the timeout telemetry last reported
        ceiling = (
            attempt_timeout.ceiling if isinstance(attempt_timeout, FromLatency) else attempt_timeout
        )
        default_headers = {"content-type": "application/json", "accept": "application/json"}
        default_headers.update(dialect.headers)
        default_headers.update(headers or {})
        default_headers.update(dialect.auth(self._secret))
        self._http = http_client(
            self.base_url,
            transport,
            default_headers,
            timeout=None if ceiling is None else ceiling + 5.0,
            in_flight=max_in_flight,
            hedging=hedge_after is not None,
        )
        # Built once: a relative URL would be parsed and merged with base_url on every request.
        self._url = httpx2.URL(str(self._http.base_url).rstrip("/") + dialect.path)

        self.limiter = limiter
        self.token_limiter = token_limiter
        self.token_refunds = token_refunds
        self.limiter_key = limiter_key
        self.limiter_timeout = limiter_timeout
        self._has_limiter = limiter is not None or token_limiter is not None

        if breaker is None:
            breaker = default_breaker(name, self.clock)
        self.breaker: CircuitBreaker | None = breaker or None
        if budget is None:
            budget = RetryBudget.finagle(clock=self.clock)
        self.budget: RetryBudget | None = budget or None
        self.retry_config: RetryConfig = retry_policy(
            retry,
            budget=self.budget,
            clock=self.clock,
            deadline=deadline,
            rng=rng,
            on_retry=self._on_retry,
            on_giveup=self._on_giveup,
        )
        self._run: Callable[[_Call], Awaitable[ChatResult]] = _retry(self.retry_config)(
            self._attempt
        )
        self._run_stream: Callable[[_Call], Awaitable[ChatResult]] = _retry(
            stream_retry(self.retry_config)
        )(self._attempt)

        # Client-wide gate: no request before this clock time (a server's retry-after).
        self._blocked_until = -1.0e300
        self._instruments = ClientInstruments(clock=self.clock)
        self._host = self._http.base_url.host

    # --- public API -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"LLMClient(provider={self.provider!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, api_key={'set' if self._secret else 'unset'})"
        )

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    @property
    def hedge_stats(self) -> HedgeStats:
        """Hedges sent, won and skipped (by reason) since the client was built (all 0 without
        ``hedge_after``)."""
        if self._hedger is None:
            return HedgeStats(0, 0, 0, {})
        return self._hedger.stats

    def timeout_now(self) -> float | None:
        """The attempt timeout in force now, in seconds (None: unbounded): ``attempt_timeout``,
        or what its :class:`~flashkit.client.FromLatency` gives on the recent attempts."""
        limit = self.attempt_timeout
        if isinstance(limit, FromLatency):
            return limit.seconds(self.latency)
        return limit

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        idempotent: bool = True,
        parse: Callable[[str], Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        stage: int | str | None = None,
    ) -> ChatResult:
        """Send one chat completion; return a :class:`ChatResult` or raise a
        :class:`~flashkit.errors.StructuredError` (``RetryExhausted`` when retries ran out).

        ``model``/``max_tokens``/``temperature`` default to the client's. ``idempotent=False``
        disables hedging for this call. ``parse(content)``, if given, runs inside the retry loop:
        when it raises ``ValueError``/``KeyError``/``TypeError`` the answer is treated as a
        retryable ``unparsable_output`` error; its result is returned as ``result.raw["parsed"]``.
        ``extra`` adds fields to the request body; ``stage`` labels the call's telemetry.
        """
        body = self._body(messages, model, max_tokens, temperature, extra)
        cache = self.cache
        if cache is None:
            return await self._chat(body, idempotent, parse, stage)
        key = chat_cache_key(self._host, body)
        hit = await from_cache(cache, key, parse, self.clock, self.name)
        if hit is not None:
            return hit
        result = await self._chat(body, idempotent, parse, stage)
        await to_cache(cache, key, result, self.name)
        return result

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: Mapping[str, Any] | None = None,
        stage: int | str | None = None,
    ) -> ChatStream:
        """:meth:`chat`, its answer streamed: ``async with client.stream(messages) as stream:
        async for delta in stream`` (a :class:`~flashkit.client.ChatStream`). Retried until the
        first delta reaches the caller, never after; never hedged or cached."""
        body = self._body(messages, model, max_tokens, temperature, extra)
        return ChatStream(self, self._dialect.stream_body(body), stage)

    def _body(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None,
        max_tokens: int | None,
        temperature: float | None,
        extra: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A request body in the chat-completions shape (``_chat`` sends the dialect's)."""
        body: dict[str, Any] = {"model": model or self.model, "messages": list(messages)}
        body["max_tokens"] = self.max_tokens if max_tokens is None else max_tokens
        temp = self.temperature if temperature is None else temperature
        if temp is not None:
            body["temperature"] = temp
        if extra:
            body.update(extra)
        return body

    async def _chat(
        self,
        body: dict[str, Any],
        idempotent: bool,
        parse: Callable[[str], Any] | None,
        stage: int | str | None,
        exchange: Exchange | None = None,
    ) -> ChatResult:
        tokens = body["max_tokens"]
        wire = self._dialect.wire
        content = json.dumps(body if wire is None else wire(body), ensure_ascii=False).encode()
        prompt_estimate = len(content) // 3 + 8
        call = _Call(
            content,
            prompt_estimate + tokens,
            prompt_estimate,
            self._now(),
            idempotent,
            parse,
        )
        run = self._run
        if exchange is not None:  # a stream (ChatStream): its exchange, its retry policy
            call.exchange, run = exchange, self._run_stream
        token = _CURRENT.set(call)
        try:
            if not self._telemetry_on():
                return await run(call)
            with self._instruments.call(
                model=body["model"],
                stage=stage,
                attributes={"client.name": self.name, "server.address": self._host},
            ) as rec:
                call.rec = rec
                try:
                    result: ChatResult = await run(call)
                except StructuredError as error:
                    self._scrub(error)  # before the span records it
                    raise
                if result.usage is not None:
                    rec.add_tokens(
                        input_tokens=result.usage.prompt_tokens,
                        output_tokens=result.usage.completion_tokens,
                    )
                return result
        except StructuredError as error:
            self._scrub(error)
            raise
        finally:
            _CURRENT.reset(token)

    # --- one attempt ---------------------------------------------------------------------------
    async def _attempt(self, call: _Call) -> ChatResult:
        call.attempt += 1
        call.timeout = call.hedge = None
        now = self._now()
        while self._blocked_until > now:  # (a later 429 may extend the gate while we sleep)
            await self._wait_gate(now)
            now = self._now()
        breaker = self.breaker
        if breaker is not None and breaker._state is not CircuitState.CLOSED and self.breaker_wait:
            call.breaker_waited = await wait_out_breaker(
                breaker, self.clock, waited=call.breaker_waited, limit=self.breaker_wait
            )
        self._queued += 1
        queued = True
        try:
            async with self._slots:  # at most max_in_flight attempts past the gate at once
                self._queued -= 1
                queued = False
                if self._has_limiter:
                    self._waiting += 1
                    try:
                        await self._admit(call)
                    finally:
                        self._waiting -= 1
                exchange = call.exchange or self._exchange
                if breaker is None:
                    response, data = await exchange(call)
                else:
                    async with breaker.guard():
                        response, data = await exchange(call)
        except StructuredError as error:
            self._record(call, error, None)
            raise
        except Exception as error:  # a bug or an unexpected transport failure: never retried
            wrapped = classify(error) or ExternalServiceError(str(error))
            self._record(call, wrapped, None)
            raise wrapped from error
        finally:
            if queued:
                self._queued -= 1
        usage = Usage.from_json(data.get("usage")) if isinstance(data, dict) else None
        if usage is not None and call.token_grant is not None:  # counted even if unusable
            await self._reconcile(call, usage.total_tokens)
        result = self._result(call, response, data, usage)
        self._record(call, None, response.status_code)
        return result

    async def _admit(self, call: _Call) -> None:
        key = self.limiter_key
        timeout = self.limiter_timeout
        limiter, token_limiter = self.limiter, self.token_limiter
        waited = 0.0
        while True:
            if limiter is not None:
                waited += (await limiter.acquire(key, 1, timeout=timeout)).waited
            if token_limiter is not None:
                grant = await token_limiter.acquire(key, call.estimate, timeout=timeout)
                call.token_grant = grant
                waited += grant.waited
            # A retry-after may have arrived while waiting: honour it, then go.
            now = self._now()
            if self._blocked_until <= now:
                break
            await self._wait_gate(now)
        call.limiter_wait += waited

    async def _reconcile(self, call: _Call, actual: int) -> None:
        """Settle the call's token estimate with what the upstream counted: charge usage above
        it; refund the rest when ``token_refunds`` (from the call's own grant)."""
        grant, limiter = call.token_grant, self.token_limiter
        if grant is None or limiter is None:
            return
        call.token_grant = None
        if actual < call.estimate and not self.token_refunds:
            return
        await limiter.adjust(grant, actual)

    async def _wait_gate(self, now: float) -> None:
        """Sleep until the client-wide retry-after has passed, or fail at once when it is longer
        than the retry policy accepts (``max_retry_after``)."""
        wait = self._blocked_until - now
        if wait > self.retry_config.max_retry_after:
            raise RateLimitError(
                f"{self.name}: the server asked every request to wait {wait:.3g} s, more than "
                f"max_retry_after={self.retry_config.max_retry_after:g} s",
                code="retry_after_too_long",
                retry_after=wait,
            )
        await self.clock.sleep(wait)

    async def _exchange(self, call: _Call) -> tuple[httpx2.Response, dict[str, Any]]:
        """Send (maybe hedged) under the attempt timeout, classify, decode. Raises
        StructuredError for every failure. A good answer's seconds, and a timed-out attempt's
        timeout, go to :attr:`latency`. Its steps ``_arm``, ``_timed_out`` and ``_check`` are
        shared with a stream's exchange (:class:`~flashkit.client.ChatStream`)."""
        limit = self._arm(call)
        sent = self._now()
        try:
            if limit is None:
                response = await self._send(call)
            else:
                async with asyncio.timeout(limit):
                    response = await self._send(call)
        except TimeoutError as error:
            raise self._timed_out(call, limit, error) from error
        except httpx2.HTTPError as error:
            raise (classify(error) or ExternalServiceError(str(error))) from error
        await self._check(call, response)
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as error:
            raise malformed(
                f"the body is not JSON ({type(error).__name__} at {len(response.content)} bytes)",
                response,
            ) from error
        if not isinstance(data, dict):
            raise malformed(f"expected a JSON object, got {type(data).__name__}", response)
        self.latency.observe(self._now() - sent)
        return response, data

    def _arm(self, call: _Call) -> float | None:
        """This attempt's timeout (s; None: none), noted on the call and the gauge."""
        limit = self.timeout_now()
        call.timeout, call.hedge = limit, None
        if limit is not None and limit != self._timeout_shown and call.rec is not None:
            self._timeout_shown = limit
            self._instruments.attempt_timeout(limit, client=self.name)
        return limit

    def _timed_out(self, call: _Call, limit: float | None, error: BaseException) -> StructuredError:
        """An attempt cut by its timeout of ``limit`` s (at least that slow: to :attr:`latency`)."""
        self.latency.observe(limit or 0.0)
        return ExternalServiceError(
            f"attempt {call.attempt} timed out after {limit:g} s",
            code="attempt_timeout",
            details={"attempt": call.attempt, "timeout": limit},
            original_exception=error,
        )

    async def _check(self, call: _Call, response: httpx2.Response) -> None:
        """Learn from the headers; raise a failed status (the tokens settled to the prompt's)."""
        status = response.status_code
        failure = classify(response) if status >= 400 else None
        self._learn(call, response, failure)
        if status >= 400 and call.token_grant is not None:
            await self._reconcile(call, call.prompt_estimate)
        if failure is not None:
            raise failure

    async def _send(self, call: _Call) -> httpx2.Response:
        hedger = self._hedger
        if hedger is None or not call.idempotent:
            return await self._http.post(self._url, content=call.content)

        def send() -> Awaitable[httpx2.Response]:
            return self._http.post(self._url, content=call.content)

        async def admit() -> SkipReason | None:
            return await self._room_for_hedge(call)

        response, hedge = await hedger.race(send, admit, hedger.delay())
        if hedge is None:
            return response
        sent = hedge == "sent" or hedge == "won"
        call.hedge = hedge if sent else "skipped"
        call.hedged = call.hedged or sent
        if call.rec is not None:  # telemetry on
            record = self._instruments.hedge
            if sent:
                record("sent", client=self.name)
                if hedge == "won":
                    record("won", client=self.name)
            else:
                record("skipped", reason=hedge, client=self.name)
        return response

    def may_send_spare(self, *, reserve: int = 0) -> bool:
        """Whether one request beyond the calls in progress (a speculative copy) may go out now
        without holding up anyone: no server ``retry-after`` pending, the breaker closed, room
        in the limiters (as each knows it without a round trip) for it and for ``reserve`` more
        calls of ``max_tokens`` that the caller still has to send, and a retry token from the
        budget, which is taken."""
        if self._blocked_until > self._now():
            return False
        if self.breaker is not None and self.breaker.state is not CircuitState.CLOSED:
            return False
        calls = 1 + max(0, reserve)
        charges = ((self.limiter, calls), (self.token_limiter, calls * (self.max_tokens + 500)))
        return has_room(charges, key=self.limiter_key, budget=self.budget)

    async def _room_for_hedge(self, call: _Call) -> SkipReason | None:
        """Take what a hedge costs (limiter units, a retry token), or say why not
        (:func:`~flashkit.client._hedging.take_room`); never while a retry-after runs."""
        if self._blocked_until > self._now():
            return "gate"
        return await take_room(
            ((self.limiter, 1), (self.token_limiter, call.estimate)),
            key=self.limiter_key,
            budget=self.budget,
            queued=self._queued + self._waiting,
        )

    def _learn(self, call: _Call, response: httpx2.Response, error: StructuredError | None) -> None:
        """Feed the rate-limit headers and a retry-after to the gate and the limiters."""
        status = response.status_code
        retry_after = error.retry_after if error is not None else None
        if retry_after is not None and retry_after > 0:
            until = self._now() + retry_after
            if until > self._blocked_until:
                self._blocked_until = until
        requests_info: LimitInfo | None = None
        tokens_info: LimitInfo | None = None
        for raw_key, _ in response.headers.raw:
            if raw_key.lower().startswith(_RATELIMIT_PREFIXES):
                parsed = parse_rate_limit_headers(response.headers)
                requests_info, tokens_info = parsed.requests, parsed.tokens
                for info in (requests_info, tokens_info):
                    if info is not None and info.remaining is not None and info.remaining < 1:
                        step = info.unit_interval
                        if step is not None and step > 0:
                            until = self._now() + min(step, _MAX_HEADER_HOLD)
                            if until > self._blocked_until:
                                self._blocked_until = until
                break
        if self.limiter is not None:
            self.limiter.observe_limits(requests_info, status=status, retry_after=retry_after)
        if self.token_limiter is not None:
            self.token_limiter.observe_limits(tokens_info, status=status, retry_after=retry_after)

    def _result(
        self, call: _Call, response: httpx2.Response, data: dict[str, Any], usage: Usage | None
    ) -> ChatResult:
        content, finish = read_answer(self._dialect, response, data, call.parse)
        return ChatResult(
            content=content,
            model=str(data.get("model") or ""),
            usage=usage,
            attempts=call.attempt,
            latency=self._now() - call.start,
            limiter_wait=call.limiter_wait,
            hedged=call.hedged,
            finish_reason=finish,
            request_id=data.get("id") or response.headers.get("x-request-id"),
            raw=data,
        )

    # --- telemetry and logs ----------------------------------------------------------------------
    def _telemetry_on(self) -> bool:
        """Spans and metrics only when someone collects them (cheap when telemetry is off)."""
        return current_telemetry() is not None or not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
        )

    def _record(self, call: _Call, error: StructuredError | None, status: int | None) -> None:
        """One ``flashkit.attempt`` event on the call's span (schema: flashkit.telemetry)."""
        rec = call.rec
        if rec is None:
            return
        if error is not None:
            self._scrub(error)
            if status is None:
                code = error.details.get("status_code")
                status = code if isinstance(code, int) else None
        rec.attempt(
            delay=call.delays[-1] if len(call.delays) >= call.attempt - 1 > 0 else 0.0,
            retry_after=error.retry_after if error is not None else None,
            breaker_state=self.breaker._state if self.breaker is not None else None,
            limiter_wait=call.limiter_wait if self._has_limiter else None,
            status_code=status,
            error=error,
            timeout=call.timeout,
            hedge=call.hedge,
            ttft=call.ttft,
            limiter=self.name,
        )

    def _on_retry(self, event: RetryEvent) -> None:
        call = _CURRENT.get()
        if call is not None:
            call.delays.append(event.delay)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s: attempt %d failed (%s); retrying in %.3f s",
                self.name,
                event.attempt,
                self._clean(str(event.error)),
                event.delay,
            )

    def _on_giveup(self, event: RetryEvent) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s: giving up after %d attempt(s) (%s): %s",
                self.name,
                event.attempt,
                event.reason,
                self._clean(str(event.error)),
            )

    def _clean(self, text: str) -> str:
        text = redact(text)
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "[REDACTED]")
        return text

    def _scrub(self, error: BaseException) -> None:
        """Remove the key from an error and everything chained to it (messages and details)."""
        if self._secret:
            scrub_secret(error, self._secret)
