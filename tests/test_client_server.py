"""LLMClient over real HTTP: the simulator's ASGI app under uvicorn on loopback (system clock).

A basic round trip through both flashcard stages, and a soak: 50 concurrent callers through a
fixed workload (a few seconds) against a seeded faulty, rate-limited upstream with a short
outage, whose assertions are counts that hold whatever the timing. Nothing sleeps to wait for
anything; the only waits are bounded ones for the server to start and stop (``_sim_http``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import time
from collections import Counter
from typing import Any

import httpx2
import pytest
from _sim_http import serving

from flashkit.client import LLMClient
from flashkit.errors import ErrorCategory, RetryExhausted, StructuredError
from flashkit.flashcards.pipeline import generate_flashcard
from flashkit.flashcards.vocabulary import VocabularyItem
from flashkit.retry import Jitter, RetryConfig
from flashkit.sim import FaultProfile, SimulatedUpstream, lexicon

API_KEY = "sk-test-client-server-0123456789"
INSTANT = FaultProfile(latency_median=0.0, latency_p99=0.0, reject_latency=0.0)


class CountingTransport(httpx2.AsyncBaseTransport):
    """A real network transport that counts what the client sends and what comes back: status
    codes of answers (bodies read here, so a counted answer was received whole), and exceptions
    by type (a cancelled send included)."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.sends = 0
        self.in_flight = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
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
    with httpx2.Client(base_url=base_url, timeout=10.0) as http:
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


SOAK_TASKS = 50
SOAK_WORDS = 6  # per caller: 300 words, 300 stage-1 calls and a stage-2 call per stage-1 result
SOAK_SEED = 11
# flaky's faults (5 % 5xx, 2 % 529, 3 % broken bodies), fast answers, a request bucket of 30 (the
# callers' first burst overflows it: 429s with retry-after) refilled at 100/s, and a 1-s outage.
# Which of these a run meets, and how often, depends on the scheduler; nothing below asserts it.
SOAK_PROFILE = FaultProfile.preset(
    "flaky",
    rpm=6000,
    tpm=None,
    bucket_fraction=0.005,
    latency_median=0.01,
    latency_p99=0.05,
    load_slowdown=0.0,
    reject_latency=0.0,
    outages=((4.0, 5.0),),
)


@dataclasses.dataclass
class Call:
    """One ``generate_flashcard`` call: the requests the transport sent for it (with their
    statuses) and how it ended (exactly once)."""

    stage: int
    sends: int = 0
    statuses: list[int] = dataclasses.field(default_factory=list)
    ended: str | None = None  # "result" or "error"
    attempts: int | None = None  # the result's (or RetryExhausted's) attempt count
    late_sends: int = 0  # sends seen after the call had ended: a request nobody waits for


CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "CURRENT_CALL", default=None
)


class LedgerTransport(CountingTransport):
    """Also charges every request to the call in progress in the sending task."""

    def __init__(self) -> None:
        super().__init__()
        self.orphans = 0  # requests sent outside any call

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        call = CURRENT_CALL.get()
        if call is None:
            self.orphans += 1
        elif call.ended is not None:
            call.late_sends += 1
        else:
            call.sends += 1
        response = await super().handle_async_request(request)
        if call is not None:
            call.statuses.append(response.status_code)
        return response


@dataclasses.dataclass
class Tally:
    calls: list[Call] = dataclasses.field(default_factory=list)
    errors: list[StructuredError] = dataclasses.field(default_factory=list)
    unexpected: list[BaseException] = dataclasses.field(default_factory=list)

    def end(self, call: Call, how: str) -> None:
        assert call.ended is None, f"a stage-{call.stage} call ended twice ({call.ended}, {how})"
        call.ended = how

    def count(self, ended: str, stage: int | None = None) -> int:
        return sum(c.ended == ended and stage in (None, c.stage) for c in self.calls)


@pytest.mark.soak
def test_soak_50_callers_nothing_lost_and_server_counts_match_the_client() -> None:
    """50 callers over real HTTP, each through a fixed list of words (stage 1, then stage 2 for
    the same word), against a seeded faulty, rate-limited upstream with an outage: every call
    ends exactly once, in a result or a StructuredError; every request the client sent belongs
    to a call that was still waiting for it; and the server's counters equal what the client
    sent and received. Everything asserted is a count that holds however the scheduler orders
    the callers (the workload is fixed, not a duration); only a generous bound guards against
    a hang."""
    upstream = SimulatedUpstream(SOAK_PROFILE, seed=SOAK_SEED)
    terms = [entry.term for entry in lexicon().entries]
    tally = Tally()
    transport = LedgerTransport()
    with serving(upstream) as base_url:

        async def one_call(client: LLMClient, word: VocabularyItem, stage: int, stage1: Any) -> Any:
            call = Call(stage)
            tally.calls.append(call)
            CURRENT_CALL.set(call)  # this task's context: the transport charges it
            try:
                done = await generate_flashcard(client, word, stage, stage1=stage1)
            except StructuredError as error:
                tally.end(call, "error")
                tally.errors.append(error)
                if isinstance(error, RetryExhausted):
                    call.attempts = error.attempts
                return None
            except Exception as error:  # anything else is a defect
                tally.end(call, "unexpected")
                tally.unexpected.append(error)
                return None
            finally:
                CURRENT_CALL.set(None)
            tally.end(call, "result")
            call.attempts = done["attempts"]
            return done["result"]

        async def caller(client: LLMClient, index: int) -> None:
            for position in range(index * SOAK_WORDS + 1, (index + 1) * SOAK_WORDS + 1):
                word = VocabularyItem(position, terms[(position - 1) % len(terms)])
                stage1 = await one_call(client, word, 1, None)
                if stage1 is not None:
                    await one_call(client, word, 2, stage1)

        async def main() -> None:
            async with LLMClient(
                provider="openai",
                base_url=f"{base_url}/v1",
                api_key=API_KEY,
                transport=transport,
                max_tokens=300,
                attempt_timeout=30.0,  # never binds: answers take milliseconds
                retry=RetryConfig(
                    4, 0.05, 0.5, 2.0, Jitter.FULL, max_retry_after=2.0, rng=random.Random(1)
                ),
            ) as client:
                await asyncio.gather(*(caller(client, i) for i in range(SOAK_TASKS)))

        with httpx2.Client(base_url=base_url, timeout=10.0) as http:
            assert http.post("/_sim/reset").json() == {"reset": True}  # t = 0 for the outage
        started = time.monotonic()
        asyncio.run(asyncio.wait_for(main(), 300.0))  # a hang guard, far above the ~10 s it takes
        elapsed = time.monotonic() - started
        stats = server_stats(base_url)

    results, errors = tally.count("result"), tally.count("error")
    print(
        f"\nsoak: {len(tally.calls)} calls in {elapsed:.1f} s, {results} results, errors "
        f"{dict(Counter(f'{type(e).__name__}:{e.code}' for e in tally.errors))}; client sends "
        f"{transport.sends}, statuses {dict(sorted(transport.statuses.items()))}, failures "
        f"{dict(transport.failures)}; server requests {stats['requests']}, ok {stats['ok']}, "
        f"429 {stats['rate_limited_total']}, 5xx {stats['server_errors']}, 529 "
        f"{stats['overloaded']}, connect {stats['connect_errors']}, broken bodies "
        f"{stats['malformed'] + stats['truncated'] + stats['bad_content']}"
    )
    # The workload is fixed: every word got its stage-1 call, every stage-1 result its stage 2.
    words = SOAK_TASKS * SOAK_WORDS
    assert sum(c.stage == 1 for c in tally.calls) == words
    assert sum(c.stage == 2 for c in tally.calls) == tally.count("result", stage=1)
    # Nothing lost: every call ended exactly once (Tally.end), in a result or a structured error.
    assert tally.unexpected == []
    assert all(c.ended in ("result", "error") for c in tally.calls)
    assert results + errors == len(tally.calls)
    for error in tally.errors:
        assert isinstance(error.category, ErrorCategory), error
        assert error.code, error
        if isinstance(error, RetryExhausted) and error.last_error is not None:
            assert isinstance(error.last_error, StructuredError), error.last_error
    # Every request belongs to one call that was waiting for it: none sent outside a call, none
    # after its call had ended (a request no one reads), none more than its call's attempts.
    assert transport.orphans == 0
    assert sum(c.late_sends for c in tally.calls) == 0
    assert sum(c.sends for c in tally.calls) == transport.sends
    for call in tally.calls:
        assert len(call.statuses) == call.sends, call  # every send came back with an answer
        if call.ended == "result":
            assert call.attempts is not None, call
            assert 1 <= call.sends <= call.attempts, call
            assert call.statuses[-1] == 200, call  # a result comes from the last answer
        elif call.attempts is not None:
            assert call.sends <= call.attempts, call
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
    assert stats["ok"] == results  # every good answer became one result, and only those did
    assert stats["unknown_terms"] == 0
