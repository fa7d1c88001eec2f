"""flashkit.sim: the simulated OpenAI-compatible upstream, in process and in virtual time.

Every test drives :meth:`SimulatedUpstream.handle` (or the httpx transport) on a
:class:`VirtualClock` under :func:`run_virtual`: latencies and windows are virtual seconds, read
back from the clock, never measured in real time. Statistical checks use fixed seeds and bounds
several standard deviations wide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import json
import math
import re
import statistics
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import pytest

from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import (
    AuthenticationError,
    ExternalServiceError,
    RateLimitError,
    ValidationError,
    _parse_duration,
    classify,
)
from flashkit.sim import (
    OUTCOMES,
    PRESETS,
    STAGE1_MODEL,
    STAGE2_MODEL,
    TEMPLATE_MARK,
    TSV_COLUMNS,
    FaultProfile,
    LimitMode,
    SimulatedUpstream,
    format_duration,
    lexicon,
    stats_payload,
)
from flashkit.sim._content import STAGE1_FIELDS

T = TypeVar("T")
KEY = "sk-test-0123456789abcdef"
INSTANT = FaultProfile(latency_median=0.0, latency_p99=0.0, reject_latency=0.0)
URL = "http://sim/v1/chat/completions"


def body_for(
    term: str = "사람", stage: int = 1, *, max_tokens: int | None = 2000
) -> dict[str, Any]:
    if stage == 1:
        item: dict[str, Any] = {"position": 7, "term": term, "type": "noun"}
        model = STAGE1_MODEL
    elif stage == 2:
        item = {"position": 7, "term": term, "stage1_result": {"term_number": 7}}
        model = STAGE2_MODEL
    else:
        return {"model": "gpt-test", "messages": [{"role": "user", "content": term}]}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": json.dumps(item, ensure_ascii=False)}],
        "temperature": 0.7,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def chat(
    term: str = "사람",
    stage: int = 1,
    *,
    key: str | None = KEY,
    max_tokens: int | None = 2000,
    body: dict[str, Any] | None = None,
    url: str = URL,
) -> httpx2.Request:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    payload = body if body is not None else body_for(term, stage, max_tokens=max_tokens)
    return httpx2.Request("POST", url, headers=headers, json=payload)


def virtual(factory: Callable[[VirtualClock], Awaitable[T]]) -> T:
    """Run ``factory(clock)`` on a fresh virtual clock."""
    clock = VirtualClock()

    async def main() -> T:
        return await factory(clock)

    return run_virtual(main(), clock=clock)


async def send(upstream: SimulatedUpstream, request: httpx2.Request) -> httpx2.Response | Exception:
    try:
        return await upstream.handle(request)
    except httpx2.ConnectError as error:
        return error


def content_of(response: httpx2.Response) -> str:
    content = response.json()["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def parse_stage1(content: str) -> dict[str, Any]:
    """The original pipeline's parser: greedy ``\\{.*\\}``, then json.loads."""
    match = re.search(r"\{.*\}", content, re.DOTALL)
    assert match, content
    data = json.loads(match.group(0))
    assert isinstance(data, dict)
    return data


# --- profiles -----------------------------------------------------------------------------


def test_presets_are_named_valid_and_tweakable() -> None:
    """Six presets; preset() returns them, with changes applied via dataclasses.replace."""
    assert set(PRESETS) == {
        "healthy",
        "flaky",
        "rate_limited",
        "outage",
        "brownout",
        "llm_realistic",
    }
    assert FaultProfile.preset("flaky") is PRESETS["flaky"]
    tweaked = FaultProfile.preset("flaky", error_rate=0.5)
    assert tweaked.error_rate == 0.5
    assert tweaked.rpm == PRESETS["flaky"].rpm
    assert dataclasses.replace(PRESETS["healthy"], rpm=10).rpm == 10
    assert PRESETS["rate_limited"].counts_rejected
    assert not PRESETS["llm_realistic"].counts_rejected
    with pytest.raises(ValidationError, match="unknown preset"):
        FaultProfile.preset("nope")
    with pytest.raises(TypeError):
        FaultProfile(0.5)  # type: ignore[call-arg]  # keyword-only


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("error_rate", 1.5),
        ("malformed_rate", -0.1),
        ("rpm", 0),
        ("tpm", float("nan")),
        ("latency_p99", 0.1),  # below the default median of 0.5
        ("outages", ((20.0, 10.0),)),
        ("brownouts", [(1.0, 2.0)]),
        ("header_style", "google"),
        ("limit_mode", "sliding"),
        ("capacity", 0),
        ("over_capacity_status", 500),
        ("limit_schedule", ((60.0, 10, None), (30.0, 20, None))),
        ("bucket_fraction", 0.0),
        ("context_limit", True),
        ("spend_cap_tokens", -1),
    ],
)
def test_bad_profile_values_raise_validation_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        FaultProfile(**{field: value})
    assert f"FaultProfile.{field}" in str(caught.value)
    assert caught.value.details["field"] == field
    assert not caught.value.retryable


def test_upstream_accepts_a_preset_name_and_rejects_other_things() -> None:
    assert SimulatedUpstream("outage", clock=VirtualClock()).profile is PRESETS["outage"]
    with pytest.raises(ValidationError, match="FaultProfile or a preset name"):
        SimulatedUpstream(42, clock=VirtualClock())  # type: ignore[arg-type]


# --- determinism --------------------------------------------------------------------------


def _fingerprint(seed: int) -> list[tuple[Any, ...]]:
    profile = FaultProfile.preset(
        "flaky",
        error_rate=0.2,
        overload_rate=0.1,
        malformed_rate=0.05,
        truncated_rate=0.05,
        bad_content_rate=0.05,
        rpm=200,
        outages=((3.0, 4.0),),
    )

    async def run(clock: VirtualClock) -> list[tuple[Any, ...]]:
        upstream = SimulatedUpstream(profile, seed=seed, clock=clock)
        terms = [entry.term for entry in lexicon().entries[:40]]

        async def one(i: int) -> tuple[Any, ...]:
            await asyncio.sleep(i * 0.02)
            result = await send(upstream, chat(terms[i % 40], 1 + i % 2))
            if isinstance(result, Exception):
                return ("error", type(result).__name__, clock.now())
            return (result.status_code, result.content, sorted(result.headers.items()), clock.now())

        return list(await asyncio.gather(*(one(i) for i in range(300))))

    return virtual(run)


def test_same_seed_same_requests_give_identical_responses_and_timing() -> None:
    first, second = _fingerprint(7), _fingerprint(7)
    assert first == second
    statuses = {item[0] for item in first}
    assert {200, 429, "error"} <= statuses  # the profile really did inject faults
    assert _fingerprint(8) != first


# --- rate limits --------------------------------------------------------------------------


def test_fixed_window_rejects_over_the_limit_with_a_sufficient_retry_after() -> None:
    profile = dataclasses.replace(INSTANT, rpm=5, limit_mode="fixed_window")

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        remaining = []
        for _ in range(5):
            response = await upstream.handle(chat())
            assert response.status_code == 200
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [4, 3, 2, 1, 0]
        clock.advance(12.5)
        rejected = await upstream.handle(chat())
        assert rejected.status_code == 429
        retry_after = float(rejected.headers["retry-after"])
        assert retry_after == math.ceil(60.0 - 12.5)
        error = classify(rejected)
        assert isinstance(error, RateLimitError)
        assert error.retryable
        assert error.retry_after == retry_after
        await asyncio.sleep(retry_after)  # honoured: enough
        assert (await upstream.handle(chat())).status_code == 200
        assert upstream.stats.rate_limited == {"requests": 1}

    virtual(run)


@pytest.mark.parametrize("count_rejected", [True, False])
def test_fixed_window_counts_rejected_requests_against_the_request_limit(
    count_rejected: bool,
) -> None:
    """OpenAI: rejected requests use up the request limit. Two token-rejected requests then
    leave no room for a small one that fits the token limit."""
    profile = dataclasses.replace(
        INSTANT, rpm=3, tpm=1000, limit_mode="fixed_window", count_rejected=count_rejected
    )

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        assert (await upstream.handle(chat(max_tokens=880))).status_code == 200
        for _ in range(2):
            response = await upstream.handle(chat(max_tokens=880))
            assert response.status_code == 429
            assert json.loads(response.content)["error"]["type"] == "tokens"
        small = await upstream.handle(chat("사람", 0, max_tokens=1))
        if count_rejected:
            assert small.status_code == 429
            assert json.loads(small.content)["error"]["type"] == "requests"
        else:
            assert small.status_code == 200

    virtual(run)


@pytest.mark.parametrize("mode", ["token_bucket", "fixed_window"])
def test_token_bucket_refills_continuously_and_windows_do_not(mode: LimitMode) -> None:
    profile = dataclasses.replace(INSTANT, rpm=60, limit_mode=mode)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        statuses = [(await upstream.handle(chat("x", 0))).status_code for _ in range(61)]
        assert statuses == [200] * 60 + [429]
        clock.advance(0.5)
        assert (await upstream.handle(chat("x", 0))).status_code == 429
        clock.advance(0.5)
        after_one_second = [(await upstream.handle(chat("x", 0))).status_code for _ in range(2)]
        if mode == "token_bucket":
            assert after_one_second == [200, 429]  # exactly one request refilled in 1 s
        else:
            assert after_one_second == [429, 429]  # nothing until the window ends
            clock.advance(59.0)
            assert (await upstream.handle(chat("x", 0))).status_code == 200

    virtual(run)


def test_token_limit_reserves_max_tokens_and_bucket_refunds_the_unused_part() -> None:
    profile = dataclasses.replace(INSTANT, tpm=10_000, limit_mode="token_bucket")

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        response = await upstream.handle(chat(max_tokens=5000))
        usage = response.json()["usage"]
        # Charged the reservation in the header of this very response...
        assert int(response.headers["x-ratelimit-remaining-tokens"]) == pytest.approx(
            10_000 - usage["prompt_tokens"] - 5000, abs=1
        )
        # ...and only the real usage afterwards.
        headers = upstream.rate_limit_headers(KEY)
        assert int(headers["x-ratelimit-remaining-tokens"]) == pytest.approx(
            10_000 - usage["total_tokens"], abs=1
        )
        too_large = await upstream.handle(chat(max_tokens=20_000))
        assert too_large.status_code == 429
        assert "retry-after" not in too_large.headers
        error = classify(too_large)
        assert isinstance(error, ValidationError)
        assert error.code == "request_too_large"
        assert upstream.stats.rate_limited == {"too_large": 1}

    virtual(run)


def test_openai_headers_parse_and_agree_with_the_limits() -> None:
    assert [format_duration(s) for s in (360.0, 1.0, 0.02, 7.66, 3723.5, 0.0)] == [
        "6m0s",
        "1s",
        "20ms",
        "7.66s",
        "1h2m3.5s",
        "0s",
    ]
    profile = dataclasses.replace(INSTANT, rpm=10, tpm=50_000, limit_mode="fixed_window")

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        clock.advance(15.0)
        previous_tokens = 50_000
        for expected in range(9, -1, -1):
            response = await upstream.handle(chat(max_tokens=100))
            headers = response.headers
            assert headers["x-ratelimit-limit-requests"] == "10"
            assert headers["x-ratelimit-limit-tokens"] == "50000"
            assert int(headers["x-ratelimit-remaining-requests"]) == expected
            tokens = int(headers["x-ratelimit-remaining-tokens"])
            assert tokens < previous_tokens
            previous_tokens = tokens
            assert _parse_duration(headers["x-ratelimit-reset-requests"]) == pytest.approx(45.0)
            assert _parse_duration(headers["x-ratelimit-reset-tokens"]) == pytest.approx(45.0)
        rejected = await upstream.handle(chat(max_tokens=100))
        assert rejected.status_code == 429
        assert rejected.headers["x-ratelimit-remaining-requests"] == "0"

    virtual(run)


def test_anthropic_headers_use_rfc3339_resets_on_the_upstream_epoch() -> None:
    profile = dataclasses.replace(
        INSTANT, rpm=60, tpm=60_000, header_style="anthropic", limit_mode="token_bucket"
    )

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        assert upstream.epoch == dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
        clock.advance(100.0)
        for expected in (59, 58, 57):
            response = await upstream.handle(chat("x", 0, max_tokens=10))
            headers = response.headers
            assert not any(name.startswith("x-ratelimit") for name in headers)
            assert headers["anthropic-ratelimit-requests-limit"] == "60"
            assert int(headers["anthropic-ratelimit-requests-remaining"]) == expected
            reset = dt.datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
            # Full again after (60 - remaining) requests at one per second, rounded up.
            seconds = reset.timestamp() - upstream.epoch - clock.now()
            assert 60 - expected <= seconds < 60 - expected + 1
            assert int(headers["anthropic-ratelimit-tokens-remaining"]) < 60_000
            # and the server's own time, as every provider sends it: on the same epoch
            date = email.utils.parsedate_to_datetime(headers["date"])
            assert date.timestamp() == math.floor(upstream.epoch + clock.now())

    virtual(run)


def test_limits_change_mid_run_by_schedule_and_by_set_limits() -> None:
    profile = dataclasses.replace(
        INSTANT, rpm=10, limit_mode="fixed_window", limit_schedule=((60.0, 30, None),)
    )

    async def admitted_in_window(upstream: SimulatedUpstream) -> int:
        statuses = [(await upstream.handle(chat("x", 0))).status_code for _ in range(50)]
        return statuses.count(200)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        assert await admitted_in_window(upstream) == 10
        assert upstream.limits == (10, None)
        clock.advance(60.0)
        assert await admitted_in_window(upstream) == 30
        assert upstream.limits == (30, None)
        clock.advance(60.0)
        upstream.set_limits(rpm=5)
        response = await upstream.handle(chat("x", 0))
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert await admitted_in_window(upstream) == 4
        upstream.set_limits(rpm=None)
        assert await admitted_in_window(upstream) == 50
        with pytest.raises(ValidationError, match="rpm"):
            upstream.set_limits(rpm=0)

    virtual(run)


def test_lowering_a_bucket_limit_takes_effect_at_once() -> None:
    profile = dataclasses.replace(INSTANT, rpm=600, limit_mode="token_bucket")

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        assert (await upstream.handle(chat("x", 0))).status_code == 200
        upstream.set_limits(rpm=6)  # the bucket shrinks from 600 to 6
        statuses = [(await upstream.handle(chat("x", 0))).status_code for _ in range(10)]
        assert statuses.count(200) == 6

    virtual(run)


def test_limits_are_per_key() -> None:
    profile = dataclasses.replace(INSTANT, rpm=2, limit_mode="fixed_window")

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        a = [(await upstream.handle(chat("x", 0, key="sk-a"))).status_code for _ in range(3)]
        b = [(await upstream.handle(chat("x", 0, key="sk-b"))).status_code for _ in range(3)]
        assert a == b == [200, 200, 429]

    virtual(run)


def test_spend_cap_429_has_no_retry_after_and_is_not_retryable() -> None:
    profile = dataclasses.replace(INSTANT, spend_cap_tokens=1000, rpm=100)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        first = await upstream.handle(chat())
        assert first.status_code == 200
        assert first.json()["usage"]["total_tokens"] < 1000
        while (response := await upstream.handle(chat())).status_code == 200:
            pass
        assert response.status_code == 429
        assert "retry-after" not in response.headers
        error = classify(response)
        assert isinstance(error, RateLimitError)
        assert error.code == "quota_exceeded"
        assert not error.retryable
        clock.advance(3600.0)
        assert (await upstream.handle(chat())).status_code == 429  # waiting does not help
        assert upstream.stats.rate_limited == {"spend_cap": 2}

    virtual(run)


# --- faults -------------------------------------------------------------------------------


def test_classify_maps_each_fault_as_a_client_would_expect() -> None:
    async def answer(clock: VirtualClock, request: httpx2.Request, **changes: Any) -> Any:
        upstream = SimulatedUpstream(dataclasses.replace(INSTANT, **changes), clock=clock)
        return await send(upstream, request)

    async def run(clock: VirtualClock) -> None:
        server = await answer(clock, chat(), error_rate=1.0)
        error = classify(server)
        assert isinstance(error, ExternalServiceError)
        assert error.retryable
        assert error.code in {"server_error_500", "server_error_502", "server_error_503"}

        overloaded = await answer(clock, chat(), overload_rate=1.0)
        assert overloaded.status_code == 529
        error = classify(overloaded)
        assert isinstance(error, ExternalServiceError)
        assert error.code == "overloaded"

        missing = await answer(clock, chat(key=None))
        assert isinstance(classify(missing), AuthenticationError)
        invalid = await answer(clock, chat(key="invalid"))
        assert invalid.status_code == 401
        assert isinstance(classify(invalid), AuthenticationError)

        long = "가" * 400
        context = await answer(clock, chat(long, 0, max_tokens=50), context_limit=100)
        assert context.status_code == 400
        assert json.loads(context.content)["error"]["code"] == "context_length_exceeded"
        error = classify(context)
        assert isinstance(error, ValidationError)
        assert error.code == "context_length_exceeded"

        not_found = await answer(clock, chat(url="http://sim/v1/embeddings"))
        assert not_found.status_code == 404
        assert classify(not_found).code == "not_found"  # type: ignore[union-attr]
        wrong_method = await answer(clock, httpx2.Request("GET", URL))
        assert wrong_method.status_code == 405

        not_json = httpx2.Request(
            "POST", URL, headers={"Authorization": f"Bearer {KEY}"}, content=b"{"
        )
        bad = await answer(clock, not_json)
        assert bad.status_code == 400
        assert isinstance(classify(bad), ValidationError)

        outage = await answer(clock, chat(), outages=((0.0, 10.0),), outage_connect_fraction=1.0)
        assert isinstance(outage, httpx2.ConnectError)
        error = classify(outage)
        assert isinstance(error, ExternalServiceError)
        assert error.code == "connection_error"

    virtual(run)


def test_outage_window_fails_everything_inside_and_nothing_outside() -> None:
    profile = dataclasses.replace(INSTANT, outages=((10.0, 20.0), (40.0, 45.0)))

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=3, clock=clock)
        failures = set()
        for second in range(60):
            result = await send(upstream, chat())
            inside = 10 <= second < 20 or 40 <= second < 45
            ok = isinstance(result, httpx2.Response) and result.status_code == 200
            assert ok != inside, second
            if inside:
                failures.add(type(result).__name__ if isinstance(result, Exception) else 503)
                if isinstance(result, httpx2.Response):
                    assert result.status_code == 503
            clock.advance(1.0)
        assert failures == {"ConnectError", 503}
        stats = upstream.stats
        assert stats.connect_errors + stats.server_errors == 15
        assert stats.ok == 45

    virtual(run)


def test_brownout_raises_error_rate_and_latency_inside_its_window() -> None:
    profile = FaultProfile(
        brownouts=((1000.0, 100_000.0),),
        brownout_error_rate=0.5,
        brownout_latency_factor=4.0,
        latency_median=1.0,
        latency_p99=2.0,
        reject_latency=0.0,
    )

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=11, clock=clock)
        outside: list[tuple[int, float]] = []
        inside: list[tuple[int, float]] = []
        for bucket in (outside, inside):
            if bucket is inside:
                clock.advance(1000.0 - clock.now())
            for _ in range(400):
                start = clock.now()
                response = await upstream.handle(chat("x", 0))
                bucket.append((response.status_code, clock.now() - start))
        assert all(status == 200 for status, _ in outside)
        errors = sum(status >= 500 for status, _ in inside)
        assert 0.4 < errors / 400 < 0.6
        median_out = statistics.median(t for _, t in outside)
        median_in = statistics.median(t for status, t in inside if status == 200)
        assert median_out == pytest.approx(1.0, rel=0.1)
        assert median_in == pytest.approx(4.0, rel=0.1)

    virtual(run)


def test_malformed_truncated_and_bad_content_fractions_are_about_right() -> None:
    profile = dataclasses.replace(
        INSTANT, malformed_rate=0.1, truncated_rate=0.05, bad_content_rate=0.05, fenced_rate=0.5
    )
    n = 2000

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=5, clock=clock)
        unreadable = broken = good = 0
        for _ in range(n):
            response = await upstream.handle(chat())
            assert response.status_code == 200
            try:
                content = content_of(response)
            except ValueError:  # json.JSONDecodeError
                unreadable += 1
                continue
            try:
                data = parse_stage1(content)
                ok = "comparison" in data
            except (ValueError, AssertionError):
                ok = False
            if ok:
                good += 1
            else:
                broken += 1
        stats = upstream.stats
        assert unreadable == stats.malformed + stats.truncated
        assert broken == stats.bad_content
        assert good == stats.ok
        # Binomial bounds: ~4.5 standard deviations.
        assert abs(stats.malformed - 0.1 * n) < 60
        assert abs(stats.truncated - 0.05 * n) < 45
        assert abs(stats.bad_content - 0.05 * n) < 45

    virtual(run)


def test_latency_matches_median_and_p99_at_low_load_and_grows_with_load() -> None:
    profile = FaultProfile(latency_median=1.5, latency_p99=6.0, load_slowdown=0.05)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=2, clock=clock)
        alone = []
        for _ in range(3000):
            start = clock.now()
            await upstream.handle(chat("x", 0))
            alone.append(clock.now() - start)
        cuts = statistics.quantiles(alone, n=100)
        assert cuts[49] == pytest.approx(1.5, rel=0.06)
        assert cuts[98] == pytest.approx(6.0, rel=0.2)

        async def timed() -> float:
            start = clock.now()
            await upstream.handle(chat("x", 0))
            return clock.now() - start

        crowded = await asyncio.gather(*(timed() for _ in range(100)))
        assert upstream.stats.max_in_flight == 100
        # In flight 1..100 on arrival: factors 1 + 0.05 * (0..99), mean ~3.5.
        assert statistics.median(crowded) > 2.5 * statistics.median(alone)

    virtual(run)


def test_hidden_capacity_rejects_requests_above_it() -> None:
    profile = FaultProfile(latency_median=1.0, latency_p99=1.0, capacity=5, reject_latency=0.0)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        responses = await asyncio.gather(*(upstream.handle(chat("x", 0)) for _ in range(12)))
        assert [r.status_code for r in responses] == [200] * 5 + [529] * 7
        assert upstream.stats.overloaded == 7
        later = await upstream.handle(chat("x", 0))
        assert later.status_code == 200

    virtual(run)


def test_cancelled_requests_are_counted_and_leave_the_in_flight_count() -> None:
    profile = FaultProfile(latency_median=5.0, latency_p99=5.0)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(upstream.handle(chat()), timeout=1.0)
        assert clock.now() == pytest.approx(1.0)
        assert upstream.stats.cancelled == 1
        assert upstream.stats.in_flight == 0
        assert upstream.load.to_records()[0]["cancelled"] == 1

    virtual(run)


# --- content ------------------------------------------------------------------------------


@pytest.mark.parametrize("fenced_rate", [0.0, 1.0])
@pytest.mark.parametrize("term", ["사람", "학교", "먹다", "나", "안녕하세요", "이"])
def test_stage1_reply_is_json_with_every_field(term: str, fenced_rate: float) -> None:
    profile = dataclasses.replace(INSTANT, fenced_rate=fenced_rate)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        response = await upstream.handle(chat(term))
        envelope = response.json()
        assert envelope["object"] == "chat.completion"
        assert envelope["model"] == STAGE1_MODEL
        assert envelope["choices"][0]["finish_reason"] == "stop"
        content = content_of(response)
        assert content.startswith("```json") == (fenced_rate == 1.0)
        data = parse_stage1(content)
        assert set(STAGE1_FIELDS) <= set(data)
        entry = lexicon().lookup(term)
        assert entry is not None
        assert data["term_number"] == 7
        assert data["term"] == f"{term} [{entry.ipa}]"
        assert data["pos"] == entry.pos
        assert data["primary_meaning"] in entry.meaning
        assert set(data["comparison"]) == {"vs", "nuance"}
        assert data["comparison"]["vs"] != term
        assert term in data["korean_keywords"]
        assert entry.example in data["usage_context"]
        assert TEMPLATE_MARK not in content
        usage = envelope["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["completion_tokens"] == math.ceil(len(content) / 4)

    virtual(run)


def test_stage1_homonyms_carry_hanja_for_sino_korean_words() -> None:
    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        data = parse_stage1(content_of(await upstream.handle(chat("학교"))))
        assert data["homonyms"][0]["hanja"] == "學校"
        assert set(data["homonyms"][0]) == {"hanja", "reading", "meaning", "differentiator"}

    virtual(run)


@pytest.mark.parametrize("term", ["학교", "사람", "가다", "사람이"])
def test_stage2_reply_is_tsv_with_nine_columns_and_cards(term: str) -> None:
    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        content = content_of(await upstream.handle(chat(term, 2)))
        lines = content.split("\n")
        assert lines[0].split("\t") == list(TSV_COLUMNS)
        rows = [line.split("\t") for line in lines[1:]]
        assert len(rows) >= 1
        assert all(len(row) == 9 for row in rows)
        tabs = [row[3] for row in rows]
        assert tabs[:2] == ["Scene", "Usage-Comparison"]
        assert tabs[2] == ("Hanja" if term == "학교" else "Example")
        for row in rows:
            assert row[0] == "7"
            assert row[2] == "7"
            assert row[1].startswith(term)
            assert re.fullmatch(r"term:[^,]+,pos:[a-z]+,card:[A-Za-z-]+", row[7]), row[7]
            assert row[8] in {"formal", "polite", "casual", "neutral"}
        assert upstream.stats.unknown_terms == 0  # 사람이 is 사람 with a particle

    virtual(run)


def test_unknown_word_gets_templated_content_in_valid_shapes() -> None:
    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        data = parse_stage1(content_of(await upstream.handle(chat("뷁뷁"))))
        assert set(STAGE1_FIELDS) <= set(data)
        assert TEMPLATE_MARK in data["primary_meaning"]
        assert data["term"].startswith("뷁뷁")
        tsv = content_of(await upstream.handle(chat("뷁뷁", 2))).split("\n")
        assert len(tsv) >= 2
        assert all(len(line.split("\t")) == 9 for line in tsv)
        assert all("source:template" in line.split("\t")[7] for line in tsv[1:])
        assert upstream.stats.unknown_terms == 2

    virtual(run)


def test_stage_is_detected_from_the_user_json_when_the_model_is_plain() -> None:
    """The original client dropped the preset model name: the shape still tells the stage."""

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        stage1 = body_for("학교", 1)
        stage1["model"] = "anthropic/claude-3.5-sonnet"
        data = parse_stage1(content_of(await upstream.handle(chat(body=stage1))))
        assert data["primary_meaning"] == "school"
        stage2 = body_for("학교", 2)
        stage2["model"] = "anthropic/claude-3.5-sonnet"
        tsv = content_of(await upstream.handle(chat(body=stage2)))
        assert tsv.startswith("position\tterm")
        generic = content_of(await upstream.handle(chat("What is 2 + 2?", 0)))
        assert "simulated reply" in generic
        assert "2 + 2" in generic

    virtual(run)


def test_max_tokens_truncates_content_with_finish_reason_length() -> None:
    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(INSTANT, clock=clock)
        full = (await upstream.handle(chat("학교", 2))).json()
        short = (await upstream.handle(chat("학교", 2, max_tokens=20))).json()
        assert full["choices"][0]["finish_reason"] == "stop"
        assert full["usage"]["completion_tokens"] > 20
        assert short["choices"][0]["finish_reason"] == "length"
        assert short["usage"]["completion_tokens"] == 20
        text = short["choices"][0]["message"]["content"]
        assert full["choices"][0]["message"]["content"].startswith(text)
        assert len(text) == 80

    virtual(run)


def test_lexicon_has_two_hundred_complete_korean_entries() -> None:
    entries = lexicon().entries
    assert len(entries) >= 200
    assert len({entry.term for entry in entries}) == len(entries)
    hangul = re.compile(r"[\uac00-\ud7a3]")
    parts = {"pronoun", "noun", "verb", "adjective", "adverb", "particle", "interjection"}
    parts.add("determiner")
    for entry in entries:
        assert hangul.search(entry.term), entry
        assert hangul.search(entry.example), entry
        assert entry.ipa, entry
        assert entry.meaning, entry
        assert entry.translation, entry
        assert entry.pos in parts, entry
        assert "\t" not in entry.example + entry.translation + entry.meaning
    counts = {pos: sum(entry.pos == pos for entry in entries) for pos in parts}
    assert min(counts[pos] for pos in ("pronoun", "noun", "verb", "adjective", "adverb")) >= 15
    assert counts["particle"] >= 10


# --- stats and serving --------------------------------------------------------------------


def test_stats_and_load_series_account_for_every_request() -> None:
    profile = FaultProfile.preset(
        "flaky", latency_median=0.2, latency_p99=1.0, rpm=120, limit_mode="fixed_window"
    )

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=4, clock=clock)

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.05)
            key = "invalid" if i % 50 == 0 else KEY
            await send(upstream, chat("사람", 1 + i % 2, key=key))

        await asyncio.gather(*(one(i) for i in range(400)))
        stats = upstream.stats
        assert stats.requests == 400
        assert stats.in_flight == 0
        assert stats.auth_errors == 8
        assert stats.rate_limited_total > 0
        total = (
            stats.ok
            + stats.rate_limited_total
            + stats.server_errors
            + stats.overloaded
            + stats.connect_errors
            + stats.malformed
            + stats.truncated
            + stats.bad_content
            + stats.auth_errors
            + stats.invalid_requests
            + stats.cancelled
        )
        assert total == 400
        assert sum(stats.by_status.values()) == 400 - stats.connect_errors
        assert stats.prompt_tokens > 0
        assert stats.completion_tokens > 0
        records = upstream.load.to_records()
        assert [r["second"] for r in records] == list(range(len(records)))
        assert sum(r["requests"] for r in records) == 400
        assert sum(sum(r[name] for name in OUTCOMES) for r in records) == 400
        assert sum(r["ok"] for r in records) == stats.ok
        assert max(r["requests"] for r in records) == 20  # one request per 50 ms
        payload = json.dumps(stats_payload(upstream))
        assert KEY not in payload
        upstream.reset()
        assert upstream.stats.requests == 0
        assert upstream.load.to_records() == []

    virtual(run)


def test_the_api_key_never_appears_in_answers_or_stats() -> None:
    sample_key = "sk-sample_key-abcdefghijklmnop"
    profile = FaultProfile.preset("flaky", latency_median=0.0, latency_p99=0.0, error_rate=0.3)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, clock=clock)
        for key in (sample_key, "invalid", None):
            for stage in (0, 1, 2):
                result = await send(
                    upstream, chat(sample_key if stage == 0 else "사람", stage, key=key)
                )
                if isinstance(result, httpx2.Response):
                    text = result.content.decode(errors="replace")
                    if stage != 0:  # the generic reply quotes the user's message, not headers
                        assert sample_key not in text
                    assert all(sample_key not in v for v in result.headers.values())
        assert sample_key not in json.dumps(stats_payload(upstream))

    virtual(run)


def test_the_httpx_transport_serves_a_client_in_virtual_time() -> None:
    profile = FaultProfile.preset("llm_realistic", capacity=None, rpm=600, tpm=1_000_000)

    async def run(clock: VirtualClock) -> None:
        upstream = SimulatedUpstream(profile, seed=9, clock=clock)
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=body_for("사람", 1)) for _ in range(200))
            )
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) > 150
        ok = next(r for r in responses if r.status_code == 200)
        assert "anthropic-ratelimit-requests-remaining" in ok.headers
        assert ok.request.url.path == "/v1/chat/completions"
        assert clock.now() > 2.0  # seconds-long calls, spent in virtual time
        assert upstream.stats.requests == 200

    virtual(run)


def test_public_names_are_listed_sorted_and_importable() -> None:
    import flashkit.sim

    assert flashkit.sim.__all__ == sorted(flashkit.sim.__all__, key=str.casefold)
    for name in flashkit.sim.__all__:
        assert getattr(flashkit.sim, name) is not None, name
    assert {"FaultProfile", "SimulatedUpstream", "PRESETS", "serve"} <= set(flashkit.sim.__all__)
