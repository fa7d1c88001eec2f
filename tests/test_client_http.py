"""LLMClient's HTTP layer: httpx2, a connection pool sized to the concurrency, the request URL
built once, the answer's JSON decoded once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import httpx2._urls as httpx2_urls
import pytest

from flashkit.client import LLMClient

BASE = "http://upstream.invalid/v1"
MESSAGES = [{"role": "user", "content": "안녕"}]
ENVELOPE = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def pool_of(client: LLMClient) -> tuple[int | None, int | None]:
    """(max connections, max keep-alive connections) of the client's httpx2 pool."""
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    return pool._max_connections, pool._max_keepalive_connections


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_in_flight": 7}, (7, 7)),
        ({"max_in_flight": 7, "hedge_after": 2.0}, (14, 14)),  # an attempt and its copy
        ({}, (100, 100)),  # unbounded: httpx2's 100, every one kept alive
    ],
    ids=["in_flight", "hedged", "unbounded"],
)
def test_the_pool_is_sized_to_the_concurrency(
    options: dict[str, Any], expected: tuple[int, int]
) -> None:
    """Every connection the concurrency needs is pooled and kept alive between requests
    (httpx2's default keeps 20: past that each request would open a new connection)."""
    client = LLMClient(provider="sim", base_url=BASE, **options)
    assert isinstance(client._http, httpx2.AsyncClient)
    assert pool_of(client) == expected
    asyncio.run(client.aclose())


def test_one_url_and_one_json_decode_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request goes to the URL built once (an absolute httpx2.URL: httpx2 parses no string
    and merges nothing with ``base_url``), and the answer is decoded by a single
    ``json.loads``."""
    seen: list[httpx2.URL] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url)
        return httpx2.Response(200, json=ENVELOPE)

    client = LLMClient(
        provider="sim", base_url=BASE, transport=httpx2.MockTransport(answer), model="m"
    )
    parsed: list[str] = []
    parse = httpx2_urls.urlparse

    def spy(url: str = "", **kwargs: Any) -> Any:
        parsed.append(url)
        return parse(url, **kwargs)

    decoded: list[object] = []
    loads = json.loads

    def counting_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(text)
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(httpx2_urls, "urlparse", spy)
    monkeypatch.setattr(json, "loads", counting_loads)

    async def main() -> None:
        async with client:
            for _ in range(3):
                assert (await client.chat(MESSAGES)).content == "hi"

    asyncio.run(main())
    assert [str(url) for url in seen] == [f"{BASE}/chat/completions"] * 3
    assert parsed == []  # no URL was parsed (nor merged with base_url) for any request
    assert len(decoded) == 3  # one decode per answer
