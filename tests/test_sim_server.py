"""flashkit.sim over real HTTP: the ASGI app under uvicorn on a loopback port.

The server runs in a background thread on the system clock; the profiles here have zero latency,
so nothing waits except for the server to come up (bounded).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import httpx2
import pytest
from _sim_http import serving

from flashkit.errors import ExternalServiceError, classify
from flashkit.sim import STAGE1_MODEL, FaultProfile, SimulatedUpstream

INSTANT = FaultProfile(latency_median=0.0, latency_p99=0.0, reject_latency=0.0)


@pytest.fixture
def upstream() -> SimulatedUpstream:
    return SimulatedUpstream(dataclasses.replace(INSTANT, rpm=3, limit_mode="fixed_window"))


@pytest.fixture
def base_url(upstream: SimulatedUpstream) -> Iterator[str]:
    with serving(upstream) as url:
        yield url


def _stage1(term: str) -> dict[str, object]:
    item = {"position": 1, "term": term, "type": "noun"}
    return {
        "model": STAGE1_MODEL,
        "messages": [{"role": "user", "content": json.dumps(item, ensure_ascii=False)}],
        "max_tokens": 2000,
    }


def test_real_http_requests_are_answered_and_counted(
    upstream: SimulatedUpstream, base_url: str
) -> None:
    sample_key = "sk-server-test-0123456789"
    with httpx2.Client(base_url=f"{base_url}/v1", timeout=10.0) as client:
        auth = {"Authorization": f"Bearer {sample_key}"}
        ok = [
            client.post("/chat/completions", json=_stage1("학교"), headers=auth) for _ in range(3)
        ]
        limited = client.post("/chat/completions", json=_stage1("학교"), headers=auth)
        unauthorized = client.post("/chat/completions", json=_stage1("학교"))
        missing = client.get("/embeddings", headers=auth)
        models = client.get("/models", headers=auth)
        stats = client.get(f"{base_url}/_sim/stats").json()

    assert [r.status_code for r in ok] == [200, 200, 200]
    content = ok[0].json()["choices"][0]["message"]["content"]
    assert "school" in content
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert unauthorized.status_code == 401
    assert missing.status_code == 404
    assert models.status_code == 200
    assert models.json()["object"] == "list"
    assert STAGE1_MODEL in [model["id"] for model in models.json()["data"]]

    counts = stats["stats"]
    assert counts["requests"] == 7
    assert counts["ok"] == 4  # the models list included
    assert counts["rate_limited"] == {"requests": 1}
    assert counts["auth_errors"] == 1
    assert counts["invalid_requests"] == 1
    assert counts["by_status"] == {"200": 4, "401": 1, "404": 1, "429": 1}
    assert sum(record["requests"] for record in stats["load"]) == 7
    assert stats["limits"] == {"rpm": 3, "tpm": None}
    assert sample_key not in json.dumps(stats)
    assert upstream.stats.ok == 4  # the same object the test holds


def test_reset_endpoint_clears_the_books(upstream: SimulatedUpstream, base_url: str) -> None:
    with httpx2.Client(base_url=base_url, timeout=10.0) as client:
        auth = {"Authorization": "Bearer sk-reset"}
        statuses = [
            client.post("/v1/chat/completions", json=_stage1("물"), headers=auth).status_code
            for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        assert client.get("/_sim/reset").status_code == 405
        assert client.post("/_sim/reset").json() == {"reset": True}
        assert client.get("/_sim/stats").json()["stats"]["requests"] == 0
        again = client.post("/v1/chat/completions", json=_stage1("물"), headers=auth)
        assert again.status_code == 200  # a fresh window after the reset


def test_outage_connection_failures_arrive_as_a_proxy_503() -> None:
    upstream = SimulatedUpstream(
        dataclasses.replace(INSTANT, outages=((0.0, 3600.0),), outage_connect_fraction=1.0)
    )
    with serving(upstream) as base_url:
        with httpx2.Client(base_url=base_url, timeout=10.0) as client:
            response = client.post(
                "/v1/chat/completions", json=_stage1("물"), headers={"Authorization": "Bearer k"}
            )
            stats = client.get("/_sim/stats").json()["stats"]
        assert response.status_code == 503
        assert b"upstream connect error" in response.content
        error = classify(response)
        assert isinstance(error, ExternalServiceError)
        assert error.retryable
        assert stats["connect_errors"] == 1
