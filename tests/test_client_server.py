"""LLMClient over real HTTP: the simulator's ASGI app under uvicorn on loopback (system clock).

A basic round trip through both flashcard stages, and a bounded soak: 50 concurrent callers for
about 10 s against a faulty, rate-limited upstream with a short outage. Nothing sleeps to wait for
anything; the only waits are bounded ones for the server to start and stop (``_sim_http``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from _sim_http import serving

from flashkit.client import LLMClient
from flashkit.errors import StructuredError
from flashkit.flashcards.pipeline import generate_flashcard
from flashkit.flashcards.vocabulary import VocabularyItem
from flashkit.retry import Jitter, RetryConfig
from flashkit.sim import FaultProfile, SimulatedUpstream, lexicon

API_KEY = "sk-test-client-server-0123456789"
INSTANT = FaultProfile(latency_median=0.0, latency_p99=0.0, reject_latency=0.0)


class CountingTransport(httpx.AsyncBaseTransport):
    """A real network transport that counts what the client sends and what comes back: status
    codes of answers (bodies read here, so a counted answer was received whole), and exceptions
    by type (a cancelled send included)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sends = 0
        self.in_flight = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sends += 1
        self.in_flight += 1
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
        except BaseException as error:
            self.failures[type(error).__name__] += 1
            raise
        finally:
            self.in_flight -= 1
        self.statuses[response.status_code] += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def server_stats(base_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        stats: dict[str, Any] = http.get("/_sim/stats").json()["stats"]
        return stats


@pytest.mark.parametrize("provider", ["openai", "sim"])
def test_both_flashcard_stages_over_real_http(provider: str) -> None:
    upstream = SimulatedUpstream(INSTANT)
    with serving(upstream) as base_url:
        transport = CountingTransport()

        async def main() -> tuple[dict[str, Any], dict[str, Any]]:
            async with LLMClient(
                provider=provider,
                base_url=f"{base_url}/v1",
                api_key=API_KEY,
                transport=transport,
                attempt_timeout=10.0,
            ) as client:
                word = VocabularyItem(3, "학교", "noun")
                first = await generate_flashcard(client, word, 1)
                second = await generate_flashcard(client, word, 2, stage1=first["result"])
                return first, second

        first, second = asyncio.run(asyncio.wait_for(main(), 30.0))
        stats = server_stats(base_url)

    assert first["stage"] == 1
    assert first["term"] == "학교"
    assert first["position"] == 3
    assert first["result"]["pos"] == "noun"
    assert "school" in str(first["result"]).lower()
    assert first["attempts"] == 1
    assert first["usage"]["total_tokens"] > 0
    assert second["stage"] == 2
    assert len(second["result"]) >= 2
    assert all(card["position"] == 3 for card in second["result"])
    assert transport.sends == 2
    assert transport.statuses == {200: 2}
    assert stats["requests"] == 2
    assert stats["ok"] == 2
    assert stats["by_status"] == {"200": 2}
    assert stats["unknown_terms"] == 0


SOAK_SECONDS = 10.0
SOAK_TASKS = 50
# flaky's faults (5 % 5xx, 2 % 529, 3 % broken bodies), fast answers, a request limit the callers
# run into (100/s, bucket of 5 s worth: 429s with retry-after), and a 1-s outage.
SOAK_PROFILE = FaultProfile.preset(
    "flaky",
    rpm=6000,
    tpm=None,
    bucket_fraction=0.05,
    latency_median=0.01,
    latency_p99=0.05,
    load_slowdown=0.0,
    reject_latency=0.0,
    outages=((4.0, 5.0),),
)


@dataclasses.dataclass
class Tally:
    calls: int = 0
    results: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    unexpected: list[BaseException] = dataclasses.field(default_factory=list)


@pytest.mark.soak
def test_soak_50_callers_nothing_lost_and_server_counts_match_the_client() -> None:
    """~10 s of real time, 50 callers in a loop (stage 1, then stage 2 for the same word): every
    call ends in a result or a StructuredError, nothing hangs (the whole run is bounded), and the
    server's counters equal what the client sent and received."""
    upstream = SimulatedUpstream(SOAK_PROFILE, seed=11)
    terms = [entry.term for entry in lexicon().entries]
    tally = Tally()
    transport = CountingTransport()
    with serving(upstream) as base_url:

        async def caller(client: LLMClient, index: int, stop: float) -> None:
            words = itertools.cycle(terms[index::SOAK_TASKS] or terms)
            for position, term in enumerate(words, 1):
                if time.monotonic() >= stop:
                    return
                word = VocabularyItem(position, term)
                stage1: Any = None
                for stage in (1, 2):
                    tally.calls += 1
                    try:
                        done = await generate_flashcard(client, word, stage, stage1=stage1)
                    except StructuredError as error:
                        tally.errors[type(error).__name__] += 1
                        break
                    except Exception as error:  # anything else is a defect
                        tally.unexpected.append(error)
                        return
                    tally.results += 1
                    stage1 = done["result"]

        async def main() -> float:
            start = time.monotonic()
            async with LLMClient(
                provider="openai",
                base_url=f"{base_url}/v1",
                api_key=API_KEY,
                transport=transport,
                max_tokens=300,
                attempt_timeout=10.0,  # never binds: answers take milliseconds
                retry=RetryConfig(4, 0.05, 0.5, 2.0, Jitter.FULL, max_retry_after=2.0),
            ) as client:
                stop = start + SOAK_SECONDS
                await asyncio.gather(*(caller(client, i, stop) for i in range(SOAK_TASKS)))
            return time.monotonic() - start

        with httpx.Client(base_url=base_url, timeout=10.0) as http:
            assert http.post("/_sim/reset").json() == {"reset": True}  # t = 0 for the outage
        elapsed = asyncio.run(asyncio.wait_for(main(), SOAK_SECONDS + 8.0))  # no hang
        stats = server_stats(base_url)

    print(
        f"\nsoak: {tally.calls} calls in {elapsed:.1f} s, {tally.results} results, "
        f"errors {dict(tally.errors)}; client sends {transport.sends}, statuses "
        f"{dict(sorted(transport.statuses.items()))}, failures {dict(transport.failures)}; server "
        f"requests {stats['requests']}, ok {stats['ok']}, 429 {stats['rate_limited_total']}, "
        f"5xx {stats['server_errors']}, 529 {stats['overloaded']}, connect "
        f"{stats['connect_errors']}, broken bodies "
        f"{stats['malformed'] + stats['truncated'] + stats['bad_content']}"
    )
    # Nothing lost: every call ended in a result or a StructuredError. (Which faults a run
    # meets depends on how fast this machine sends: the outage is one real second. What must
    # hold whatever the scheduler does is below: counts that match.)
    assert tally.unexpected == []
    assert tally.calls == tally.results + sum(tally.errors.values())
    assert tally.calls >= SOAK_TASKS
    # The server saw exactly what the client sent, and answered what the client received.
    assert transport.in_flight == 0
    assert transport.failures == {}
    assert stats["in_flight"] == 0
    assert stats["cancelled"] == 0
    assert stats["requests"] == transport.sends
    by_status = {int(code): n for code, n in stats["by_status"].items()}
    connect_as_503 = stats["connect_errors"]  # a refused connection arrives as a proxy's 503
    assert {**by_status, 503: by_status.get(503, 0) + connect_as_503} == transport.statuses
    assert stats["rate_limited_total"] == transport.statuses[429]
    assert stats["ok"] == tally.results  # every good answer became a result, and only those
    assert stats["unknown_terms"] == 0
