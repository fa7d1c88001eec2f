"""LLMClient(provider="anthropic") speaking the Messages API to the simulator: in process in
virtual time (times asserted are read from the virtual clock; nothing sleeps), and over a real
``flashkit sim serve`` (nothing timed) for a plain call and a whole ``flashkit process`` run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from _sim_serve import INSTANT as INSTANT_SET
from _sim_serve import sim_serve
from typer.testing import CliRunner

from flashkit import telemetry as tm
from flashkit.cli import app
from flashkit.client import STREAM_INTERRUPTED, ChatResult, ChatStream, LLMClient, Usage
from flashkit.client._anthropic import messages_body
from flashkit.clock import VirtualClock, run_virtual
from flashkit.config import build_client, load_settings
from flashkit.errors import AuthenticationError, ErrorCategory, RetryExhausted, StructuredError
from flashkit.retry import Jitter, RetryConfig
from flashkit.sim import FaultProfile, SimulatedUpstream

T = TypeVar("T")
SECRET = "k3y-anthropic-test-0042-XYZW"  # noqa: S105 - fake, not key-shaped: only the client scrubs it
LATENCY = 2.0  # virtual seconds per answer
FIXED = FaultProfile(
    latency_median=LATENCY, latency_p99=LATENCY, reject_latency=0.0, first_token_fraction=0.25
)
HELLO = [{"role": "user", "content": "hello there, simulated friend"}]
WITH_SYSTEM = [{"role": "system", "content": "You are terse."}, *HELLO]
SEED_TWO_529 = 4  # overload_rate=0.5: this seed's first two answers are 529, the third a 200
SEED_ONE_529 = 1  # ... this one's first is a 529
KEY_VARIABLES = ("FLASHKIT_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY")


def virtual(factory: Callable[[VirtualClock], Awaitable[T]]) -> T:
    clock = VirtualClock()

    async def main() -> T:
        return await factory(clock)

    return run_virtual(main(), clock=clock)


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Recorder(httpx2.AsyncBaseTransport):
    """The simulator's transport, keeping each request (virtual time sent, path, headers,
    body) and each answer's status; ``tamper`` ("connect": refuse every request with the key in
    the message; "midbody": break every body after its first chunk, likewise) stands for a
    proxy that echoes what it was sent."""

    def __init__(self, upstream: SimulatedUpstream, tamper: str | None = None) -> None:
        self.inner = upstream.transport()
        self.clock = upstream.clock
        self.tamper = tamper
        self.sent: list[tuple[float, str, httpx2.Headers, dict[str, Any]]] = []
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(await request.aread())
        self.sent.append((self.clock.now(), request.url.path, request.headers, body))
        if self.tamper == "connect":
            raise httpx2.ConnectError(f"refused: x-api-key was {SECRET}", request=request)
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        if self.tamper == "midbody":
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=_BrokenAfterFirst(response),
                request=request,
            )
        return response


class _BrokenAfterFirst(httpx2.AsyncByteStream):
    def __init__(self, response: httpx2.Response) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes():
            yield chunk
            if b"content_block_delta" in chunk:
                raise httpx2.ReadError(f"reset by a proxy that saw {SECRET}")

    async def aclose(self) -> None:
        await self.response.aclose()


def anthropic(upstream: SimulatedUpstream, tamper: str | None = None, **options: Any) -> LLMClient:
    """An anthropic client on ``upstream`` (its :class:`Recorder` as ``client.recorder``):
    retries after 1 s exactly, no budget, no breaker."""
    recorder = Recorder(upstream, tamper)
    options.setdefault("api_key", SECRET)
    options.setdefault("retry", RetryConfig(3, 1.0, 1.0, 1.0, Jitter.NONE))
    client = LLMClient(
        provider="anthropic",
        transport=recorder,
        clock=upstream.clock,
        budget=False,
        breaker=False,
        **options,
    )
    client.recorder = recorder  # type: ignore[attr-defined]
    return client


def recorder_of(client: LLMClient) -> Recorder:
    recorder: Recorder = client.recorder  # type: ignore[attr-defined]
    return recorder


async def streamed(
    client: LLMClient, messages: list[dict[str, Any]]
) -> tuple[list[str], ChatStream]:
    async with client.stream(messages) as stream:
        deltas = [delta async for delta in stream]
    return deltas, stream


# --- the request and the answer ----------------------------------------------------------------


def test_chat_sends_a_messages_request_and_reads_its_answer() -> None:
    """POST /v1/messages with x-api-key and anthropic-version (no Authorization), the system
    message moved to the top-level ``system``; the answer's text, its usage as the client's
    Usage (input + output = total) and its stop reason in OpenAI's terms."""

    async def run(clock: VirtualClock) -> tuple[ChatResult, Recorder, dict[str, Any]]:
        client = anthropic(SimulatedUpstream(FIXED, clock=clock))
        async with client:
            result = await client.chat(WITH_SYSTEM, max_tokens=300, temperature=0.2)
        return result, recorder_of(client), result.raw

    result, recorder, raw = virtual(run)
    ((_, path, headers, body),) = recorder.sent
    assert path == "/v1/messages"
    assert headers["x-api-key"] == SECRET
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert body == {
        "model": "claude-sonnet-4-5",  # the client's default model, Anthropic's name for it
        "max_tokens": 300,
        "temperature": 0.2,
        "system": "You are terse.",
        "messages": HELLO,
    }
    assert raw["type"] == "message"  # the answer as Anthropic sent it
    assert result.content == raw["content"][0]["text"]
    assert "hello there" in result.content
    usage = raw["usage"]
    assert result.usage == Usage(
        usage["input_tokens"],
        usage["output_tokens"],
        usage["input_tokens"] + usage["output_tokens"],
    )
    assert result.finish_reason == "stop"  # end_turn
    assert result.request_id is not None
    assert result.request_id.startswith("msg_")
    assert result.latency == pytest.approx(LATENCY)


def test_messages_body_keeps_system_blocks_and_drops_openai_only_fields() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}],
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            *HELLO,
        ],
    }
    assert messages_body(body) == {
        "model": "m",
        "max_tokens": 5,
        "system": [
            {"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "be brief"},
        ],
        "messages": HELLO,
    }


def test_stream_reads_the_messages_events() -> None:
    """The stream's deltas add up to the plain answer (same seed), in order as they come; its
    usage (message_start's input, message_delta's output) settles the result; ttft is the
    time to the first text delta; stream: true went out, stream_options did not."""

    async def run(clock: VirtualClock) -> tuple[list[str], ChatStream, ChatResult, Recorder]:
        client = anthropic(SimulatedUpstream(FIXED, seed=5, clock=clock))
        async with client:
            deltas, stream = await streamed(client, WITH_SYSTEM)
        plain = anthropic(SimulatedUpstream(FIXED, seed=5, clock=clock))
        async with plain:
            answer = await plain.chat(WITH_SYSTEM)
        return deltas, stream, answer, recorder_of(client)

    deltas, stream, answer, recorder = virtual(run)
    assert len(deltas) > 3
    assert "".join(deltas) == answer.content
    assert stream.result is not None
    assert stream.result.usage == answer.usage is not None
    assert stream.result.finish_reason == "stop"
    ((_, path, headers, body),) = recorder.sent
    assert path == "/v1/messages"
    assert headers["accept"] == "text/event-stream"
    assert body["stream"] is True
    assert "stream_options" not in body
    assert body["system"] == "You are terse."
    first = LATENCY * 0.25
    assert stream.time_to_first_token == pytest.approx(first + (LATENCY - first) / len(deltas))


# --- overloads and rate limits -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_529_overloaded_is_retried(stream: bool) -> None:
    async def run(clock: VirtualClock) -> tuple[ChatResult | None, list[int]]:
        profile = dataclasses.replace(FIXED, overload_rate=0.5)
        client = anthropic(SimulatedUpstream(profile, seed=SEED_TWO_529, clock=clock))
        async with client:
            if stream:
                _, chat_stream = await streamed(client, HELLO)
                result = chat_stream.result
            else:
                result = await client.chat(HELLO)
        return result, recorder_of(client).statuses

    result, statuses = virtual(run)
    assert statuses == [529, 529, 200]
    assert result is not None
    assert result.attempts == 3


def test_529_is_a_retryable_overloaded_error() -> None:
    async def run(clock: VirtualClock) -> StructuredError:
        profile = dataclasses.replace(FIXED, overload_rate=0.5)
        client = anthropic(
            SimulatedUpstream(profile, seed=SEED_ONE_529, clock=clock), retry=RetryConfig(1)
        )
        async with client:
            with pytest.raises(StructuredError) as info:
                await client.chat(HELLO)
        return info.value

    exhausted = virtual(run)
    assert isinstance(exhausted, RetryExhausted)  # one attempt allowed: the 529 was retryable
    error = exhausted.last_error
    assert isinstance(error, StructuredError)
    assert error.category is ErrorCategory.EXTERNAL_SERVICE
    assert error.code == "overloaded"
    assert error.retryable is True
    assert error.details["status_code"] == 529
    assert error.details["type"] == "overloaded_error"


@pytest.mark.parametrize("stream", [False, True])
def test_429_retry_after_is_honoured(stream: bool) -> None:
    """One request a minute (fixed windows). Another client took this minute's request: ours
    gets a 429 rate_limit_error with retry-after, sends nothing before it has passed, and then
    gets through."""

    async def run(clock: VirtualClock) -> tuple[Recorder, ChatResult | None]:
        profile = dataclasses.replace(FIXED, rpm=1, limit_mode="fixed_window")
        upstream = SimulatedUpstream(profile, clock=clock)
        async with anthropic(upstream) as other:
            await other.chat(HELLO)
        client = anthropic(upstream)
        async with client:
            if stream:
                _, chat_stream = await streamed(client, HELLO)
                result = chat_stream.result
            else:
                result = await client.chat(HELLO)
        return recorder_of(client), result

    recorder, result = virtual(run)
    assert recorder.statuses == [429, 200]
    assert result is not None
    assert result.attempts == 2
    (limited_at, *_), (retried_at, *_) = recorder.sent
    # the 429 came at once (reject_latency 0) with the window's remaining seconds
    assert limited_at == pytest.approx(LATENCY)
    assert retried_at >= 60.0  # not before the minute's window reset (what retry-after said)
    assert retried_at - limited_at >= 58.0 - 1e-9


def test_an_exhausted_limit_holds_the_next_request_in_virtual_time() -> None:
    """Two requests a minute (Anthropic's continuous bucket), no client limiter: the answer that
    leaves none says, in RFC 3339, when the limit is full again; the simulator's ``Date`` is in
    virtual time, so the client reads that instant against it and holds the next request for a
    refill step (~29 s) instead of sending it into a 429."""

    async def run(clock: VirtualClock) -> Recorder:
        profile = dataclasses.replace(FIXED, rpm=2, limit_mode="token_bucket")
        client = anthropic(SimulatedUpstream(profile, clock=clock))
        async with client:
            for _ in range(3):
                await client.chat(HELLO)
        return recorder_of(client)

    recorder = virtual(run)
    assert recorder.statuses == [200, 200, 200]
    (_, *_), (second, *_), (third, *_) = recorder.sent
    assert third - (second + LATENCY) >= 28.0


# --- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["rejected", "connect", "midbody"])
def test_api_key_never_appears_in_errors_logs_reprs_or_spans(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The key, refused by the upstream (401), or echoed by a proxy in a connection error or
    a mid-stream reset, is in no error of the chain, no log record, no span, no repr."""
    telemetry = tm.configure_opentelemetry(in_memory=True, set_global=False)
    caplog.set_level(logging.DEBUG)

    async def run(clock: VirtualClock) -> tuple[StructuredError, list[str]]:
        profile = dataclasses.replace(
            FIXED, invalid_keys=(SECRET,) if failure == "rejected" else ()
        )
        tamper = None if failure == "rejected" else failure
        client = anthropic(SimulatedUpstream(profile, clock=clock), tamper)
        reprs = [repr(client)]

        async def call() -> None:
            if failure == "midbody":
                async with client.stream(HELLO) as stream:
                    reprs.append(repr(stream))
                    async for _ in stream:
                        pass
            else:
                await client.chat(HELLO)

        async with client:
            with pytest.raises(StructuredError) as info:
                await call()
        return info.value, reprs

    try:
        error, reprs = virtual(run)
        spans = telemetry.finished_spans()
    finally:
        telemetry.shutdown()
    expected = {
        "rejected": "unauthorized",
        "connect": "retry_exhausted",
        "midbody": STREAM_INTERRUPTED,
    }
    assert error.code == expected[failure]
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = [text for e in chain for text in (str(e), repr(e), *map(str, e.args))]
    texts += [json.dumps(e.to_dict()) for e in chain if isinstance(e, StructuredError)]
    assert len(chain) >= 2
    assert all(SECRET not in text for text in texts)
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    assert all(SECRET not in text for text in reprs)
    assert spans
    assert all(SECRET not in span.to_json() for span in spans)


def test_the_key_comes_from_anthropic_api_key_and_its_absence_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AuthenticationError) as info:
        LLMClient(provider="anthropic")
    assert "ANTHROPIC_API_KEY" in str(info.value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)

    async def run(clock: VirtualClock) -> Recorder:
        client = anthropic(SimulatedUpstream(FIXED, clock=clock), api_key=None)
        async with client:
            assert SECRET not in repr(client)
            await client.chat(HELLO)
        return recorder_of(client)

    ((_, _, headers, _),) = virtual(run).sent
    assert headers["x-api-key"] == SECRET


def test_settings_accept_the_anthropic_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.provider = "anthropic"``: a Messages client with the key from FLASHKIT_API_KEY,
    and the provider's token-bucket limits mirrored as such."""
    monkeypatch.setenv("FLASHKIT_API_KEY", SECRET)
    settings = load_settings(
        overrides={"run.provider": "anthropic", "limits.rpm": 50, "limits.tpm": 40_000}
    )
    client = build_client(settings)
    try:
        assert client.provider == "anthropic"
        assert client.base_url == "https://api.anthropic.com/v1"
        assert str(client._url) == "https://api.anthropic.com/v1/messages"
        assert client.token_refunds is True  # Anthropic's buckets settle their estimate
    finally:
        asyncio.run(client.aclose())


# --- over a real socket ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """One ``flashkit sim serve`` (healthy, answering at once) for this module's server tests."""
    with sim_serve("healthy", *INSTANT_SET) as base_url:
        yield base_url


def test_chat_and_stream_over_flashkit_sim_serve(served: str) -> None:
    async def main() -> tuple[ChatResult, list[str], ChatStream]:
        async with LLMClient(provider="anthropic", base_url=f"{served}/v1", api_key=SECRET) as c:
            answer = await c.chat(WITH_SYSTEM)
            deltas, stream = await streamed(c, WITH_SYSTEM)
        return answer, deltas, stream

    answer, deltas, stream = asyncio.run(main())
    assert "hello there" in answer.content
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert answer.finish_reason == "stop"
    assert "".join(deltas) == answer.content
    assert stream.result is not None
    assert stream.result.usage == answer.usage


def test_flashkit_process_with_the_anthropic_provider(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flashkit process --provider anthropic`` against the server, the key from
    ANTHROPIC_API_KEY: every word done, the key nowhere in the output."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    words = tmp_path / "words.csv"
    words.write_text("position,term,type\n1,내가,pronoun\n2,바보,noun\n", "utf-8")
    result = CliRunner().invoke(
        app,
        ["process", str(words), "--provider", "anthropic", "--base-url", f"{served}/v1"],
    )
    assert result.exit_code == 0, result.output
    assert "finished: 2/2 done" in result.output
    assert SECRET not in result.output
    data = json.loads((tmp_path / "output" / "cards.json").read_text("utf-8"))
    assert [word["term"] for word in data["words"]] == ["내가", "바보"]


def test_flashkit_process_without_a_key_names_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    words = tmp_path / "words.csv"
    words.write_text("position,term,type\n1,내가,pronoun\n", "utf-8")
    result = CliRunner().invoke(app, ["process", str(words), "--provider", "anthropic"])
    assert result.exit_code == 2, result.output
    assert "ANTHROPIC_API_KEY" in result.output
    assert not (tmp_path / "output").exists()
