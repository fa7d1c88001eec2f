"""LLMClient against small in-test upstreams (httpx2.MockTransport), in virtual time."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
import redis

from flashkit.breaker import CircuitBreaker, CircuitState
from flashkit.budget import RetryBudget
from flashkit.client import PROVIDERS, ChatResult, LLMClient, Usage
from flashkit.clock import SystemClock, VirtualClock, run_virtual
from flashkit.errors import (
    AuthenticationError,
    CircuitOpenError,
    ExternalServiceError,
    RateLimitError,
    RetryExhausted,
    StructuredError,
    ValidationError,
)
from flashkit.ratelimit import AdaptiveRateLimiter, MultiLimit, RateLimiter, RedisRateLimiter
from flashkit.retry import RetryConfig

MESSAGES = [{"role": "user", "content": "안녕하세요"}]
SECRET = "sk-test-SECRET123"  # noqa: S105 - a fake key the tests hunt for


def envelope(content: str = "hello", *, prompt: int = 150, completion: int = 200) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


class Upstream:
    """Answers from a script of (status, body, headers, latency); records send times."""

    def __init__(
        self,
        clock: VirtualClock,
        script: list[tuple[int, Any, dict[str, str], float]] | None = None,
        *,
        default: tuple[int, Any, dict[str, str], float] = (200, None, {}, 0.1),
    ) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.default = default
        self.sent: list[float] = []
        self.requests: list[httpx2.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.cancelled = 0

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(self.clock.now())
        self.requests.append(request)
        self.bodies.append(json.loads(request.content))
        status, body, headers, latency = self.script.pop(0) if self.script else self.default
        try:
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if body is None:
            body = envelope()
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx2.Response(status, content=content, headers=headers)

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self)


def make(clock: VirtualClock, upstream: Upstream, **options: Any) -> Callable[[], LLMClient]:
    options.setdefault("api_key", SECRET)
    options.setdefault("provider", "openai")
    return lambda: LLMClient(transport=upstream.transport(), clock=clock, **options)


def run(clock: VirtualClock, coro: Any) -> Any:
    return run_virtual(coro, clock=clock)


# --- construction -----------------------------------------------------------------------------
def test_presets_and_key_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHKIT_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="OPENROUTER_API_KEY") as info:
        LLMClient()
    assert info.value.code == "missing_api_key"
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-abcdefgh12345")
    client = LLMClient()
    assert client.base_url == "https://openrouter.ai/api/v1"
    assert "abcdefgh" not in repr(client)
    assert "api_key=set" in repr(client)
    monkeypatch.setenv("FLASHKIT_API_KEY", "fk-key-first")
    assert LLMClient()._secret == "fk-key-first"  # noqa: S105 - FLASHKIT_API_KEY wins
    custom = LLMClient(provider="openai", base_url="http://localhost:8000/v1/", api_key="k")
    assert custom.base_url == "http://localhost:8000/v1"
    assert PROVIDERS["sim"].needs_key is False
    with pytest.raises(ValidationError, match="unknown provider"):
        LLMClient(provider="nope", api_key="k")
    with pytest.raises(ValidationError, match="attempt_timeout"):
        LLMClient(api_key="k", attempt_timeout=0)


# --- the happy path ---------------------------------------------------------------------------
def test_chat_returns_content_usage_attempts_and_latency() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(200, envelope("카드"), {}, 0.25))

    async def main() -> ChatResult:
        async with make(clock, upstream, model="anthropic/claude-3.5-sonnet")() as client:
            return await client.chat(MESSAGES, max_tokens=300, temperature=0.2)

    result = run(clock, main())
    assert result.content == "카드"
    assert result.usage == Usage(150, 200, 350)
    assert result.attempts == 1
    assert result.latency == pytest.approx(0.25)
    assert result.finish_reason == "stop"
    assert result.request_id == "gen-1"
    request = upstream.requests[0]
    assert request.url == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert upstream.bodies[0] == {
        "model": "anthropic/claude-3.5-sonnet",
        "messages": MESSAGES,
        "max_tokens": 300,
        "temperature": 0.2,
    }


# --- classification and retries ---------------------------------------------------------------
def test_429_retry_after_is_honoured_and_never_sent_early() -> None:
    clock = VirtualClock()
    limited = (429, {"error": {"message": "Rate limit reached"}}, {"retry-after": "7"}, 0.05)
    upstream = Upstream(clock, [limited, limited])

    async def main() -> ChatResult:
        async with make(clock, upstream)() as client:
            return await client.chat(MESSAGES)

    result = run(clock, main())
    assert result.attempts == 3
    first, second, third = upstream.sent
    assert second - (first + 0.05) >= 7.0
    assert third - (second + 0.05) >= 7.0


def test_retry_after_gates_every_call_of_the_client() -> None:
    """A 429 seen by one call holds back the others' sends too."""
    clock = VirtualClock()
    upstream = Upstream(clock, [(429, {}, {"retry-after": "5"}, 0.0)], default=(200, None, {}, 1))

    async def main() -> list[ChatResult]:
        async with make(clock, upstream)() as client:
            first = asyncio.create_task(client.chat(MESSAGES))
            await asyncio.sleep(0.5)  # the 429 has arrived; now start more calls
            later = [asyncio.create_task(client.chat(MESSAGES)) for _ in range(3)]
            return await asyncio.gather(first, *later)

    run(clock, main())
    assert len(upstream.sent) == 5
    assert all(t >= 5.0 for t in upstream.sent[1:])


@pytest.mark.parametrize(
    ("status", "body", "error_type", "code"),
    [
        (401, {"error": {"message": "Incorrect API key provided: sk-test-SECRET123"}},
         AuthenticationError, "unauthorized"),
        (403, {"error": {"message": "forbidden"}}, AuthenticationError, "forbidden"),
        (400, {"error": {"message": "bad schema"}}, ValidationError, "invalid_request"),
        (413, {"error": {"message": "too long"}}, ValidationError, "context_length_exceeded"),
        (402, {"error": {"message": "Insufficient credits"}}, RateLimitError, "payment_required"),
    ],
)  # fmt: skip
def test_permanent_errors_are_not_retried(
    status: int, body: dict[str, Any], error_type: type[StructuredError], code: str
) -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, [(status, body, {}, 0.01)])

    async def main() -> None:
        async with make(clock, upstream)() as client:
            await client.chat(MESSAGES)

    with pytest.raises(error_type) as info:
        run(clock, main())
    assert info.value.code == code
    assert len(upstream.sent) == 1
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": [{"message": {"content": "trunc',  # truncated JSON
        b"<html>502 Bad Gateway</html>",  # not JSON at all
        b"[1, 2]",  # JSON, wrong shape
        b'{"choices": []}',  # no choice
        b'{"error": {"message": "upstream provider failed", "code": 502}}',  # OpenRouter style
    ],
)
def test_malformed_bodies_are_retried_then_succeed(body: bytes) -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, [(200, body, {}, 0.01)])

    async def main() -> ChatResult:
        async with make(clock, upstream)() as client:
            return await client.chat(MESSAGES)

    result = run(clock, main())
    assert result.attempts == 2
    assert result.content == "hello"


def test_malformed_bodies_forever_are_reported_not_crashed() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(200, b'{"choices": [', {}, 0.01))

    async def main() -> None:
        async with make(clock, upstream, budget=False, breaker=False)() as client:
            await client.chat(MESSAGES)

    with pytest.raises(RetryExhausted) as info:
        run(clock, main())
    assert info.value.attempts == 5
    assert isinstance(info.value.last_error, ExternalServiceError)
    assert info.value.last_error.code == "malformed_response"


def test_attempt_timeout_cancels_slow_attempts_and_retries() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, [(200, None, {}, 100.0)], default=(200, None, {}, 0.5))

    async def main() -> ChatResult:
        async with make(clock, upstream, attempt_timeout=2.0)() as client:
            return await client.chat(MESSAGES)

    result = run(clock, main())
    assert result.attempts == 2
    assert upstream.cancelled == 1
    assert upstream.sent[1] >= 2.0


def test_deadline_bounds_the_whole_call() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(503, {"error": {"message": "down"}}, {}, 0.1))

    async def main() -> None:
        policy = RetryConfig(50, 0.5, 30.0, rng=random.Random(1))
        options = {"deadline": 3.0, "breaker": False, "budget": False, "retry": policy}
        async with make(clock, upstream, **options)() as client:
            await client.chat(MESSAGES)

    with pytest.raises(RetryExhausted) as info:
        run(clock, main())
    assert info.value.reason == "deadline"
    assert clock.now() <= 3.0 + 1e-9


def test_non_structured_transport_errors_are_classified() -> None:
    clock = VirtualClock()
    calls = {"n": 0}

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx2.ConnectError("connection refused", request=request)
        return httpx2.Response(200, json=envelope())

    async def main() -> ChatResult:
        client = LLMClient(
            provider="openai", api_key=SECRET, transport=httpx2.MockTransport(handler), clock=clock
        )
        async with client:
            return await client.chat(MESSAGES)

    assert run(clock, main()).attempts == 2


# --- breaker and budget ------------------------------------------------------------------------
def test_breaker_opens_on_5xx_and_rejects_without_sending() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(500, {"error": {"message": "boom"}}, {}, 0.01))
    breaker = CircuitBreaker(min_throughput=2, break_duration=30.0, clock=clock)

    async def main() -> list[BaseException]:
        client = make(clock, upstream, breaker=breaker, retry=RetryConfig(1), budget=False)()
        out: list[BaseException] = []
        async with client:
            for _ in range(4):
                try:
                    await client.chat(MESSAGES)
                except StructuredError as error:
                    out.append(error)
        return out

    errors = run(clock, main())
    assert len(upstream.sent) == 2
    last = [e.last_error if isinstance(e, RetryExhausted) else e for e in errors]
    assert [type(e) for e in last[2:]] == [CircuitOpenError, CircuitOpenError]
    assert breaker.state is CircuitState.OPEN


def test_429s_do_not_open_the_default_breaker() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(429, {}, {"retry-after": "1"}, 0.0))

    async def main() -> LLMClient:
        client = make(clock, upstream, retry=RetryConfig(1), budget=False)()
        async with client:
            for _ in range(40):
                with pytest.raises(RetryExhausted, match="rate_limited"):
                    await client.chat(MESSAGES)
        return client

    client = run(clock, main())
    assert client.breaker is not None
    assert client.breaker.state is CircuitState.CLOSED


def test_budget_refusal_stops_retries() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(503, {"error": {"message": "down"}}, {}, 0.01))
    budget = RetryBudget.grpc(max_tokens=4, token_ratio=0.1)  # retries while tokens > 2

    async def main() -> None:
        async with make(clock, upstream, breaker=False, budget=budget)() as client:
            for _ in range(5):
                with pytest.raises(StructuredError):
                    await client.chat(MESSAGES)

    run(clock, main())
    stats = budget.stats
    assert stats.refused >= 1
    assert len(upstream.sent) < 5 * 5  # far fewer than 5 attempts per call


# --- limiters --------------------------------------------------------------------------------
def test_local_limiters_pace_requests_and_reconcile_tokens() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, default=(200, envelope(prompt=40, completion=60), {}, 0.0))
    rpm = RateLimiter(2, 1.0, clock=clock, name="requests")
    tpm = RateLimiter(100_000, 60.0, clock=clock, name="tokens")

    async def main() -> LLMClient:
        client = make(clock, upstream, limiter=rpm, token_limiter=tpm, max_tokens=500)()
        async with client:
            await asyncio.gather(*[client.chat(MESSAGES) for _ in range(6)])
        return client

    run(clock, main())
    # 2 per second, strictly: 6 requests need 3 windows.
    assert sorted(upstream.sent) == pytest.approx([0, 0, 1, 1, 2, 2])
    # Each call reserved max_tokens + a prompt estimate; what is left charged is the usage.
    assert tpm.stats.admitted_units - tpm.stats.refunded_units == pytest.approx(6 * 100)


@pytest.mark.parametrize("completion", [60, 900])
def test_token_refunds_off_keeps_estimates_charged_but_charges_overruns(completion: int) -> None:
    """token_refunds=False (providers that count max_tokens as spent): usage below the
    estimate gives nothing back; usage above it is still charged."""
    clock = VirtualClock()
    upstream = Upstream(clock, default=(200, envelope(prompt=40, completion=completion), {}, 0.0))
    tpm = RateLimiter(100_000, 60.0, clock=clock, name="tokens")

    async def main() -> None:
        client = make(clock, upstream, token_limiter=tpm, token_refunds=False, max_tokens=500)()
        async with client:
            await asyncio.gather(*[client.chat(MESSAGES) for _ in range(3)])

    run(clock, main())
    stats = tpm.stats
    assert stats.refunded_units == 0
    if completion < 500:  # the estimates (max_tokens + a prompt estimate) stay charged
        assert stats.admitted_units > 3 * 500
    else:  # each estimate, then the overrun on top: what is charged is the usage
        assert stats.admitted_units == pytest.approx(3 * (40 + completion))


@pytest.mark.services
def test_a_shared_redis_token_limit_is_reconciled_from_each_calls_own_grant(
    redis_url: str,
) -> None:
    """A RedisRateLimiter as token limiter (real Redis, real time): each call is charged its
    estimate, then refunded down to its usage from its own grant (admitted_at = the decision's
    server time): the shared log ends holding exactly the usage."""
    clock = SystemClock()
    upstream = Upstream(clock, default=(200, envelope(prompt=40, completion=60), {}, 0.0))  # type: ignore[arg-type]
    prefix = f"flashkit:test:client:{uuid.uuid4().hex}"
    tpm = RedisRateLimiter(redis_url, 100_000, 60.0, key_prefix=prefix, name="tokens")

    async def main() -> None:
        client = make(clock, upstream, token_limiter=tpm, max_tokens=500)()  # type: ignore[arg-type]
        async with client:
            await asyncio.gather(*[client.chat(MESSAGES) for _ in range(4)])
        await tpm.aclose()

    asyncio.run(main())
    plain = redis.Redis.from_url(redis_url)
    try:
        log = f"{{{prefix}:tokens}}:default:log"
        units = [float(m.decode().rsplit(":", 1)[1]) for m in plain.zrange(log, 0, -1)]
        plain.delete(*plain.keys(f"{{{prefix}:tokens}}*"))
    finally:
        plain.close()
    assert units == [100.0] * 4  # each grant holds its own usage
    stats = tpm.stats
    assert stats.forfeited_units == 0
    assert stats.admitted_units - stats.refunded_units == pytest.approx(4 * 100)


def test_what_a_limit_counts_is_the_argument_it_is_passed_as() -> None:
    """``limiter=`` counts requests and ``token_limiter=`` LLM tokens, whatever the limits are
    named: a MultiLimit of per-minute and per-day token limits (one named "requests" to prove
    names do not matter) is charged tokens and settled to the usage on both."""
    clock = VirtualClock()
    upstream = Upstream(clock, default=(200, envelope(prompt=10, completion=10), {}, 0.0))
    requests = MultiLimit(
        [
            RateLimiter(100, 60.0, clock=clock, name="tokens"),
            RateLimiter(5000, 86400.0, clock=clock),
        ]
    )
    tokens = MultiLimit(
        [
            RateLimiter(1000, 60.0, clock=clock, name="requests"),
            RateLimiter(50_000, 86400.0, clock=clock),
        ]
    )

    async def main() -> None:
        client = make(clock, upstream, limiter=requests, token_limiter=tokens, max_tokens=400)()
        async with client:
            for _ in range(4):
                await client.chat(MESSAGES)

    run(clock, main())
    for limit in requests.limits:
        assert limit.stats.admitted_units == 4
    for limit in tokens.limits:
        assert limit.stats.admitted_units - limit.stats.refunded_units == pytest.approx(4 * 20)


def test_rate_limit_headers_feed_the_adaptive_limiter() -> None:
    clock = VirtualClock()
    headers = {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "119",
        "x-ratelimit-reset-requests": "500ms",
    }
    upstream = Upstream(clock, default=(200, None, headers, 0.0))
    adaptive = AdaptiveRateLimiter(initial_rate=10, clock=clock)

    async def main() -> None:
        async with make(clock, upstream, limiter=adaptive)() as client:
            await client.chat(MESSAGES)

    run(clock, main())
    assert adaptive.rate == pytest.approx(120 * 0.98)
    assert adaptive.learning.successes == 1


def test_remaining_zero_holds_back_the_next_request() -> None:
    clock = VirtualClock()
    exhausted = {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
    }
    upstream = Upstream(
        clock,
        [(200, None, {**exhausted, "anthropic-ratelimit-requests-remaining": "0"}, 0.0)],
        default=(200, None, {}, 0.0),
    )

    async def main() -> None:
        async with make(clock, upstream)() as client:
            await client.chat(MESSAGES)
            await client.chat(MESSAGES)

    run(clock, main())
    assert upstream.sent[1] >= 1.0  # one refill step of 60 per minute


# --- the key never leaks -------------------------------------------------------------------------
def _chain_texts(error: BaseException) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        if isinstance(current, StructuredError):
            texts.append(json.dumps(current.to_dict(), default=str))
        current = current.__cause__ or current.__context__
    return texts


@pytest.mark.parametrize("failure", ["401", "503", "connect"])
def test_api_key_never_appears_in_errors_logs_or_spans(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flashkit.telemetry import configure_opentelemetry

    telemetry = configure_opentelemetry(in_memory=True, set_global=False)
    clock = VirtualClock()
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}; key={SECRET}"}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if failure == "connect":
            raise httpx2.ConnectError(f"refused for {SECRET}", request=request)
        return httpx2.Response(int(failure), json=echo, headers={"x-echo": SECRET})

    async def main() -> None:
        client = LLMClient(
            provider="openai",
            api_key=SECRET,
            transport=httpx2.MockTransport(handler),
            clock=clock,
            budget=False,
        )
        async with client:
            assert SECRET not in repr(client)
            await client.chat(MESSAGES)

    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(StructuredError) as info:
            run(clock, main())
        spans = telemetry.finished_spans()
    finally:
        telemetry.shutdown()
    assert all(SECRET not in text for text in _chain_texts(info.value))
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    assert spans, "the call made a span"
    for span in spans:
        dumped = span.to_json()
        assert SECRET not in dumped
        assert span.name == "flashkit.client.chat"
    assert any(e.name == "flashkit.attempt" for s in spans for e in s.events)


def test_span_has_one_event_per_attempt() -> None:
    from flashkit.telemetry import configure_opentelemetry

    telemetry = configure_opentelemetry(in_memory=True, set_global=False)
    clock = VirtualClock()
    limited = (429, {}, {"retry-after": "2"}, 0.0)
    upstream = Upstream(clock, [limited, (500, {}, {}, 0.0)])

    async def main() -> ChatResult:
        async with make(clock, upstream)() as client:
            return await client.chat(MESSAGES, stage=1)

    try:
        result = run(clock, main())
        (span,) = telemetry.finished_spans()
    finally:
        telemetry.shutdown()
    assert result.attempts == 3
    events = [e for e in span.events if e.name == "flashkit.attempt"]
    assert [e.attributes["attempt"] for e in events] == [1, 2, 3]  # type: ignore[index]
    assert events[0].attributes["http.status_code"] == 429  # type: ignore[index]
    assert events[0].attributes["retry_after"] == 2.0  # type: ignore[index]
    assert events[1].attributes["delay"] >= 2.0  # type: ignore[index,operator]
    assert span.attributes["outcome"] == "ok"  # type: ignore[index]
    assert span.attributes["tokens"] == 350  # type: ignore[index]


# --- hedging -------------------------------------------------------------------------------------
def test_hedge_wins_when_the_first_request_is_slow() -> None:
    clock = VirtualClock()
    upstream = Upstream(clock, [(200, envelope("slow"), {}, 30.0)], default=(200, None, {}, 0.5))

    async def main() -> ChatResult:
        async with make(clock, upstream, hedge_after=1.0, attempt_timeout=None)() as client:
            return await client.chat(MESSAGES)

    result = run(clock, main())
    assert result.content == "hello"
    assert result.hedged
    assert result.latency == pytest.approx(1.5)
    assert upstream.sent == [0.0, 1.0]
    assert upstream.cancelled == 1  # the loser


def test_no_hedge_when_the_budget_refuses_or_the_call_is_not_idempotent() -> None:
    clock = VirtualClock()

    class Refusing(RetryBudget):
        def _grant(self, timeout: bool) -> bool:
            return False

    budget = Refusing()
    upstream = Upstream(clock, default=(200, None, {}, 3.0))

    async def main() -> list[ChatResult]:
        async with make(clock, upstream, hedge_after=1.0, budget=budget)() as client:
            first = await client.chat(MESSAGES)
            second = await client.chat(MESSAGES, idempotent=False)
            return [first, second]

    results = run(clock, main())
    assert not any(r.hedged for r in results)
    assert len(upstream.sent) == 2
    assert budget.stats.refused == 1
