"""flashkit.sim speaking what the official SDKs speak, in process on virtual time: streamed chat
completions (server-sent events), Anthropic's Messages API (plain and streamed, its errors and
headers) and ``GET /v1/models``.

Every test runs on a :class:`VirtualClock` under :func:`run_virtual`; the times asserted are
virtual seconds read from the clock (exact, since the profiles here have a fixed latency).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import pytest

from flashkit.clock import VirtualClock, run_virtual
from flashkit.sim import MODEL_IDS, STAGE1_MODEL, FaultProfile, SimulatedUpstream

T = TypeVar("T")
KEY = "sk-stream-test"
# A fixed latency (p99 = median): every answer takes exactly 2 s, its first token 0.5 s.
FIXED = FaultProfile(
    latency_median=2.0, latency_p99=2.0, reject_latency=0.0, first_token_fraction=0.25
)
INSTANT = FaultProfile(latency_median=0.0, latency_p99=0.0, reject_latency=0.0)
HELLO = [{"role": "user", "content": "hello there, simulated friend"}]


def virtual(factory: Callable[[VirtualClock], Awaitable[T]]) -> T:
    """Run ``factory(clock)`` on a fresh virtual clock."""
    clock = VirtualClock()

    async def main() -> T:
        return await factory(clock)

    return run_virtual(main(), clock=clock)


def client(upstream: SimulatedUpstream, **headers: str) -> httpx2.AsyncClient:
    auth = headers or {"Authorization": f"Bearer {KEY}"}
    return httpx2.AsyncClient(
        transport=upstream.transport(), base_url="http://sim/v1", headers=auth
    )


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event; comment lines skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        events.append((name, data))
    return events


def chat_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-sim", "messages": HELLO, "stream": stream, **extra}


def messages_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sim", "max_tokens": 200, "messages": HELLO, "stream": stream, **extra}


# --- OpenAI chat completions, streamed ----------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_stream_has_the_api_chunks_and_the_plain_answer(include_usage: bool) -> None:
    """The stream: a role chunk, content deltas that join to the plain answer, a chunk with an
    empty delta and the finish_reason, the usage chunk only with include_usage, then [DONE]."""

    async def run(clock: VirtualClock) -> tuple[httpx2.Response, httpx2.Response]:
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        async with client(SimulatedUpstream(INSTANT, seed=3, clock=clock)) as c:
            streamed = await c.post("/chat/completions", json=chat_body(True, **options))
        async with client(SimulatedUpstream(INSTANT, seed=3, clock=clock)) as c:
            plain = await c.post("/chat/completions", json=chat_body(False))
        return streamed, plain

    streamed, plain = virtual(run)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse(streamed.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    choices = [chunk for chunk in chunks if chunk["choices"]]
    assert choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [chunk["choices"][0]["delta"].get("content", "") for chunk in choices]
    answer = plain.json()
    assert "".join(deltas) == answer["choices"][0]["message"]["content"]
    assert len(choices) > 3  # the text comes in pieces
    assert [c["choices"][0]["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + [
        "stop"
    ]
    assert choices[-1]["choices"][0]["delta"] == {}
    if include_usage:
        assert all(chunk["usage"] is None for chunk in choices)
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == answer["usage"]
    else:
        assert all("usage" not in chunk for chunk in chunks)


def test_stream_chunks_arrive_as_virtual_time_passes() -> None:
    """Headers and the role chunk after the time to first token (0.25 x 2 s), the text's pieces
    evenly over the rest, the last one when the plain answer would have arrived (2 s)."""

    async def run(clock: VirtualClock) -> tuple[float, list[float], str]:
        async with client(SimulatedUpstream(FIXED, clock=clock)) as c:
            start = clock.now()
            request = c.build_request("POST", "/chat/completions", json=chat_body(True))
            response = await c.send(request, stream=True)
            headers_at = clock.now() - start
            times, body = [], b""
            async for data in response.aiter_raw():
                times.append(clock.now() - start)
                body += data
            await response.aclose()
        return headers_at, times, body.decode()

    headers_at, times, body = virtual(run)
    assert headers_at == pytest.approx(0.5)
    assert times[0] == pytest.approx(0.5)
    assert times[-1] == pytest.approx(2.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps
    assert all(gap == pytest.approx(gaps[0]) for gap in gaps)
    assert sse(body)[-1] == (None, "[DONE]")


def test_plain_answer_takes_the_whole_latency() -> None:
    """Without "stream", the whole answer comes after the latency (2 s), as before."""

    async def run(clock: VirtualClock) -> float:
        async with client(SimulatedUpstream(FIXED, clock=clock)) as c:
            response = await c.post("/chat/completions", json=chat_body(False))
            assert response.status_code == 200
        return clock.now()

    assert virtual(run) == pytest.approx(2.0)


def test_streams_are_deterministic_from_the_seed() -> None:
    async def run(clock: VirtualClock) -> list[str]:
        texts = []
        for _ in range(2):
            upstream = SimulatedUpstream("flaky", seed=11, clock=clock)
            async with client(upstream) as c:
                for term in ("사람", "학교", "물"):
                    item = {"position": 1, "term": term, "type": "noun"}
                    body = {
                        "model": STAGE1_MODEL,
                        "messages": [{"role": "user", "content": json.dumps(item)}],
                        "stream": True,
                    }
                    texts.append((await c.post("/chat/completions", json=body)).text)
        return texts

    texts = virtual(run)
    assert texts[:3] == texts[3:]


def test_stream_body_faults_are_a_broken_event_or_an_early_end() -> None:
    """malformed: one event whose data is not JSON; truncated: the stream ends cleanly before
    its end (no [DONE]); a 429 to a stream request is a plain JSON error."""

    async def run(clock: VirtualClock) -> tuple[str, str, httpx2.Response]:
        malformed = SimulatedUpstream(dataclasses.replace(INSTANT, malformed_rate=1.0))
        truncated = SimulatedUpstream(dataclasses.replace(INSTANT, truncated_rate=1.0))
        limited = SimulatedUpstream(dataclasses.replace(INSTANT, rpm=1, limit_mode="fixed_window"))
        async with client(malformed) as c:
            broken = (await c.post("/chat/completions", json=chat_body(True))).text
        async with client(truncated) as c:
            short = (await c.post("/chat/completions", json=chat_body(True))).text
        async with client(limited) as c:
            await c.post("/chat/completions", json=chat_body(True))
            rejected = await c.post("/chat/completions", json=chat_body(True))
        return broken, short, rejected

    broken, short, rejected = virtual(run)
    bad = [data for _, data in sse(broken) if data != "[DONE]" and not data.startswith("{")]
    assert len(bad) == 1
    assert sse(short)
    assert (None, "[DONE]") not in sse(short)
    assert all(json.loads(data) for _, data in sse(short))
    assert rejected.status_code == 429
    assert rejected.headers["content-type"] == "application/json"
    assert rejected.json()["error"]["code"] == "rate_limit_exceeded"


# --- Anthropic Messages -------------------------------------------------------------------


def anthropic_client(upstream: SimulatedUpstream, key: str = KEY) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=upstream.transport(),
        base_url="http://sim/v1",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )


def test_messages_answer_has_anthropics_shape_and_usage() -> None:
    async def run(clock: VirtualClock) -> list[httpx2.Response]:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        async with anthropic_client(upstream) as c:
            plain = await c.post("/messages", json=messages_body(False))
            with_system = await c.post(
                "/messages", json=messages_body(False, system=[{"type": "text", "text": "x" * 80}])
            )
            cut = await c.post("/messages", json=messages_body(False, max_tokens=3))
        return [plain, with_system, cut]

    plain, with_system, cut = virtual(run)
    answer = plain.json()
    assert plain.status_code == 200
    assert set(answer) == {
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    }
    assert answer["type"] == "message"
    assert answer["role"] == "assistant"
    assert answer["model"] == "claude-sim"
    assert answer["id"].startswith("msg_")
    assert answer["content"][0]["type"] == "text"
    assert "hello there" in answer["content"][0]["text"]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["input_tokens"] > 0
    assert answer["usage"]["output_tokens"] > 0
    assert with_system.json()["usage"]["input_tokens"] == answer["usage"]["input_tokens"] + 24
    assert cut.json()["stop_reason"] == "max_tokens"
    assert cut.json()["usage"]["output_tokens"] == 3
    assert plain.headers["request-id"].startswith("req_")


def test_messages_stream_has_anthropics_events() -> None:
    async def run(clock: VirtualClock) -> tuple[httpx2.Response, httpx2.Response]:
        async with anthropic_client(SimulatedUpstream(FIXED, seed=2, clock=clock)) as c:
            streamed = await c.post("/messages", json=messages_body(True))
        async with anthropic_client(SimulatedUpstream(FIXED, seed=2, clock=clock)) as c:
            plain = await c.post("/messages", json=messages_body(False))
        return streamed, plain

    streamed, plain = virtual(run)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse(streamed.text)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas > 3
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(payload) for _, payload in events]
    assert [item["type"] for item in data] == names  # the data's type repeats the event name
    answer = plain.json()
    start = data[0]["message"]
    assert start["content"] == []
    assert start["usage"]["input_tokens"] == answer["usage"]["input_tokens"]
    text = "".join(item["delta"]["text"] for item in data if item["type"] == "content_block_delta")
    assert {item["delta"]["type"] for item in data if item["type"] == "content_block_delta"} == {
        "text_delta"
    }
    assert text == answer["content"][0]["text"]
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    assert data[-2]["usage"]["output_tokens"] == answer["usage"]["output_tokens"]


def test_messages_errors_have_anthropics_shape_and_headers() -> None:
    """401 authentication_error, 400 invalid_request_error (max_tokens is required), 429
    rate_limit_error with retry-after and anthropic-ratelimit-* headers (on this route even
    when the profile's header_style is openai), 529 overloaded_error, 5xx api_error."""

    async def run(clock: VirtualClock) -> dict[str, httpx2.Response]:
        limited = SimulatedUpstream(
            dataclasses.replace(INSTANT, rpm=1, tpm=10_000, header_style="openai"), clock=clock
        )
        overloaded = SimulatedUpstream(dataclasses.replace(INSTANT, overload_rate=1.0))
        failing = SimulatedUpstream(dataclasses.replace(INSTANT, error_rate=1.0))
        out: dict[str, httpx2.Response] = {}
        async with anthropic_client(limited, key="invalid") as c:
            out["bad_key"] = await c.post("/messages", json=messages_body(False))
        async with httpx2.AsyncClient(transport=limited.transport(), base_url="http://sim") as c:
            out["no_key"] = await c.post("/v1/messages", json=messages_body(False))
        async with anthropic_client(limited) as c:
            body = messages_body(False)
            del body["max_tokens"]
            out["no_max_tokens"] = await c.post("/messages", json=body)
            out["ok"] = await c.post("/messages", json=messages_body(False))
            out["limited"] = await c.post("/messages", json=messages_body(False))
        async with anthropic_client(overloaded) as c:
            out["overloaded"] = await c.post("/messages", json=messages_body(False))
        async with anthropic_client(failing) as c:
            out["failing"] = await c.post("/messages", json=messages_body(False))
        return out

    out = virtual(run)
    kinds = {
        "bad_key": (401, "authentication_error"),
        "no_key": (401, "authentication_error"),
        "no_max_tokens": (400, "invalid_request_error"),
        "limited": (429, "rate_limit_error"),
        "overloaded": (529, "overloaded_error"),
        "failing": (None, "api_error"),
    }
    for name, (status, kind) in kinds.items():
        response = out[name]
        body = response.json()
        assert body["type"] == "error", name
        assert body["error"]["type"] == kind, name
        assert body["error"]["message"], name
        assert status is None or response.status_code == status, name
    assert out["failing"].status_code in {500, 502, 503}
    assert "max_tokens" in out["no_max_tokens"].json()["error"]["message"]
    ok, limited = out["ok"], out["limited"]
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "10000"
    assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in ok.headers
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["anthropic-ratelimit-requests-remaining"] == "0"


# --- GET /v1/models -----------------------------------------------------------------------


def test_models_list_in_the_callers_shape() -> None:
    async def run(clock: VirtualClock) -> list[httpx2.Response]:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        async with client(upstream) as c:
            openai_list = await c.get("/models")
            wrong_method = await c.post("/models", json={})
        async with anthropic_client(upstream) as c:
            anthropic_list = await c.get("/models")
        async with httpx2.AsyncClient(transport=upstream.transport(), base_url="http://sim") as c:
            anonymous = await c.get("/v1/models")
        return [openai_list, wrong_method, anthropic_list, anonymous]

    openai_list, wrong_method, anthropic_list, anonymous = virtual(run)
    assert openai_list.status_code == 200
    listing = openai_list.json()
    assert listing["object"] == "list"
    assert [model["id"] for model in listing["data"]] == list(MODEL_IDS)
    assert {model["object"] for model in listing["data"]} == {"model"}
    page = anthropic_list.json()
    assert [model["id"] for model in page["data"]] == list(MODEL_IDS)
    assert {model["type"] for model in page["data"]} == {"model"}
    assert page["has_more"] is False
    assert wrong_method.status_code == 405
    assert anonymous.status_code == 401
