"""The official ``openai`` and ``anthropic`` SDKs (a test extra, never a runtime dependency) as
clients of a real ``flashkit sim serve`` on a loopback port: their calls, plain and streamed,
parse; usage is there; and on the ``rate_limited`` profile their own retries (``max_retries=2``,
the documented default, honouring ``retry-after``) get every request through.

Nothing here waits but the SDKs' own retry sleeps (the server's ``retry-after``: 1 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest
from _sim_serve import INSTANT, sim_serve

from flashkit.sim import MODEL_IDS, STAGE1_MODEL

HELLO = [{"role": "user", "content": "hello from an official SDK"}]
# The rate_limited preset with 60-second windows would make a test wait a minute per window:
# the same limit as a token bucket of 2 requests refilled at 2 per second, so every 429 says
# "retry-after: 1" and two retries are always enough for six requests sent at once.
RATE_LIMITED = (*INSTANT, "rpm=120", "limit_mode=token_bucket", "bucket_fraction=0.0166667")
BURST = 6


@pytest.fixture(scope="module")
def healthy_url() -> Iterator[str]:
    with sim_serve("healthy", *INSTANT) as url:
        yield url


def test_openai_sdk_plain_and_streamed(healthy_url: str) -> None:
    with openai.OpenAI(base_url=f"{healthy_url}/v1", api_key="sk-openai-sdk") as client:
        plain = client.chat.completions.create(model="gpt-sim", messages=HELLO)
        chunks = list(
            client.chat.completions.create(
                model="gpt-sim",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        models = [model.id for model in client.models.list()]

    text = plain.choices[0].message.content
    assert text is not None
    assert "hello from an official SDK" in text
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None
    assert plain.usage.prompt_tokens > 0
    assert plain.usage.completion_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == plain.usage
    assert models == list(MODEL_IDS)


def test_anthropic_sdk_plain_and_streamed(healthy_url: str) -> None:
    with anthropic.Anthropic(base_url=healthy_url, api_key="sk-anthropic-sdk") as client:
        plain = client.messages.create(
            model="claude-sim",
            max_tokens=300,
            system="Be brief.",
            messages=HELLO,
        )
        with client.messages.stream(
            model="claude-sim",
            max_tokens=300,
            system="Be brief.",
            messages=HELLO,
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        events = [
            event.type
            for event in client.messages.create(
                model="claude-sim",
                max_tokens=300,
                messages=HELLO,
                stream=True,
            )
        ]
        models = [model.id for model in client.models.list()]

    block = plain.content[0]
    assert block.type == "text"
    assert "hello from an official SDK" in block.text
    assert plain.stop_reason == "end_turn"
    assert plain.usage.input_tokens > 0
    assert plain.usage.output_tokens > 0
    assert streamed == block.text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"
    assert events[:3] == ["message_start", "content_block_start", "content_block_delta"]  # no ping
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert models == list(MODEL_IDS)


def test_sdk_errors_are_the_sdks_own_classes(healthy_url: str) -> None:
    """The SDKs read the simulator's error bodies: a bad key is their AuthenticationError."""
    openai_client = openai.OpenAI(base_url=f"{healthy_url}/v1", api_key="invalid", max_retries=0)
    with openai_client as c, pytest.raises(openai.AuthenticationError) as oa:
        c.chat.completions.create(model="gpt-sim", messages=HELLO)
    assert oa.value.status_code == 401
    anthropic_client = anthropic.Anthropic(base_url=healthy_url, api_key="invalid", max_retries=0)
    with anthropic_client as c, pytest.raises(anthropic.AuthenticationError) as an:
        c.messages.create(model="claude-sim", max_tokens=10, messages=HELLO)
    assert an.value.status_code == 401
    assert an.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": an.value.body["request_id"],
    }


def test_sdk_retries_get_every_request_through_rate_limits() -> None:
    """Six requests at once from each SDK (its own key, its own limit) with the defaults:
    some get 429 with retry-after, every one succeeds, none needs a third retry."""

    async def openai_burst(url: str) -> list[int]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-openai-burst") as c:
            answers = await asyncio.gather(
                *(
                    c.chat.completions.create(model=STAGE1_MODEL, messages=HELLO)
                    for _ in range(BURST)
                )
            )
        return [a.usage.completion_tokens if a.usage else 0 for a in answers]

    async def anthropic_burst(url: str) -> list[int]:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-anthropic-burst") as c:
            answers = await asyncio.gather(
                *(
                    c.messages.create(model="claude-sim", max_tokens=200, messages=HELLO)
                    for _ in range(BURST)
                )
            )
        return [a.usage.output_tokens for a in answers]

    with sim_serve("rate_limited", *RATE_LIMITED) as url:
        openai_tokens = asyncio.run(openai_burst(url))
        anthropic_tokens = asyncio.run(anthropic_burst(url))
        stats = httpx2.get(f"{url}/_sim/stats", timeout=10.0).json()["stats"]

    assert len(openai_tokens) == len(anthropic_tokens) == BURST
    assert all(tokens > 0 for tokens in openai_tokens + anthropic_tokens)
    assert stats["ok"] == 2 * BURST
    assert stats["rate_limited"]["requests"] >= 2 * (BURST - 2)  # the SDKs did retry
    assert stats["by_status"]["429"] == stats["rate_limited_total"]
