"""flashkit.lab.success: the before/after/peer/sdk success metrics, in virtual time (small N)."""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest

from flashkit.clock import VirtualClock
from flashkit.flashcards.stages import parse_stage1
from flashkit.lab.success import (
    COMPARED,
    OriginalCircuitBreaker,
    OriginalCircuitOpen,
    Workload,
    ideal_seconds,
    load_words,
    parse_stage2,
    run_policy,
    run_success_metrics,
    sent_in_retry_after,
    target_verdicts,
    versus_peer,
    versus_summary,
)
from flashkit.lab.success.metrics import tokens_per_request
from flashkit.lab.success.original import original_stage1
from flashkit.sim import PRESETS, FaultProfile
from flashkit.sim._content import stage1_text

pytest.importorskip("tenacity")
pytest.importorskip("aiolimiter")
pytest.importorskip("pybreaker")
pytest.importorskip("openai")


@pytest.fixture(scope="module")
def flaky():  # type: ignore[no-untyped-def]
    return run_success_metrics("flaky", seed=3, words=30)


@pytest.fixture(scope="module")
def rate_limited():  # type: ignore[no-untyped-def]
    return run_success_metrics("rate_limited", seed=2, words=20)


def test_every_policy_completes_every_word(flaky) -> None:  # type: ignore[no-untyped-def]
    assert list(flaky.metrics.index) == ["before", "after", "peer", "sdk"]
    for run in flaky.runs.values():
        assert len(run.words) == 30
        assert (run.words["end"] >= run.words["start"]).all()
    assert (flaky.metrics["succeeded"] + flaky.metrics["failed"] == 30).all()


def test_metrics_come_from_real_counts(flaky) -> None:  # type: ignore[no-untyped-def]
    for policy, run in flaky.runs.items():
        row = flaky.metrics.loc[policy]
        succeeded = int(run.words["ok"].sum())
        assert row["succeeded"] == succeeded
        assert row["error_rate"] == pytest.approx((30 - succeeded) / 30)
        # The upstream's own count, which the client-side log must agree with.
        assert row["upstream_requests"] == run.stats["requests"] == len(run.exchanges)
        expected = run.stats["requests"] / succeeded if succeeded else math.inf
        assert row["amplification"] == pytest.approx(expected)
        assert row["rate_limited_429"] == sum(run.stats["rate_limited"].values())
        ok = run.words.loc[run.words["ok"], "latency"]
        if len(ok):
            assert row["p99_latency_ok"] == pytest.approx(ok.quantile(0.99))
        to_card = sorted(
            (end - release) if done else math.inf
            for end, release, done in zip(
                run.words["end"], run.words["release"], run.words["ok"], strict=True
            )
        )
        assert row["p99_time_to_card"] == to_card[math.ceil(0.99 * 30) - 1]  # inf if > 1 % failed
        assert row["completion_seconds"] == pytest.approx(run.words["end"].max())
    # Every word needs at least its two calls.
    after = flaky.metrics.loc["after"]
    assert after["upstream_requests"] >= 2 * after["succeeded"]


def test_before_ignores_retry_after_and_after_never_does(rate_limited) -> None:  # type: ignore[no-untyped-def]
    before = rate_limited.metrics.loc["before"]
    assert before["rate_limited_429"] > 0
    assert before["sent_in_retry_after"] > 0
    assert rate_limited.metrics.loc["after"]["sent_in_retry_after"] == 0


def test_after_honours_retry_after_when_it_does_get_429s() -> None:
    """Without a limiter the client meets 429s, and still never sends inside their window."""
    run = run_policy("after", "rate_limited", Workload(words=20), seed=2, after_limiter="none")
    assert run.stats["rate_limited_total"] > 0
    assert run.exchanges["retry_after"].notna().any()
    assert sent_in_retry_after(run.exchanges) == 0


def test_runs_are_deterministic_from_the_seed() -> None:
    workload = Workload(words=15)
    for policy in ("before", "after", "peer"):
        first = run_policy(policy, "flaky", workload, seed=5)
        again = run_policy(policy, "flaky", workload, seed=5)
        pd.testing.assert_frame_equal(first.words, again.words)
        pd.testing.assert_frame_equal(first.exchanges, again.exchanges)
        assert first.stats == again.stats
        assert first.breaker_trips == again.breaker_trips
    other = run_policy("after", "flaky", workload, seed=6)
    assert not other.exchanges.equals(first.exchanges) or other.stats != first.stats


def test_verdicts_report_zero_baselines_as_not_applicable() -> None:
    metrics = pd.DataFrame(
        {
            "error_rate": [0.2, 0.05],
            "p99_time_to_card": [10.0, 8.0],
            "breaker_trips": [0, 0],
            "succeeded": [80, 95],
        },
        index=pd.Index(["before", "after"], name="policy"),
    )
    verdicts = target_verdicts(metrics)
    assert verdicts.error_rate.met is True
    assert verdicts.error_rate.change == pytest.approx(-0.75)
    assert verdicts.p99_latency.met is False
    assert verdicts.breaker_trips.met is None
    assert verdicts.breaker_trips.verdict == "n/a (0 before)"
    assert not verdicts.all_met
    assert set(verdicts.to_dict()) == {"error_rate", "p99_time_to_card", "breaker_trips"}


def test_p99_counts_failed_words_as_never_done() -> None:
    """A policy cannot look fast by failing its slow words: its p99 time to card is inf once
    over 1 % of the words failed, and a finite p99 against that is the target met."""
    metrics = pd.DataFrame(
        {
            "error_rate": [0.9, 0.0],
            "p99_time_to_card": [math.inf, 400.0],
            "breaker_trips": [2, 0],
            "succeeded": [10, 100],
        },
        index=pd.Index(["before", "after"], name="policy"),
    )
    verdict = target_verdicts(metrics).p99_latency
    assert verdict.met is True
    assert verdict.verdict.startswith("met (before leaves over 1 % of the words without cards")


def test_original_breaker_keeps_its_flaws() -> None:
    clock = VirtualClock()
    breaker = OriginalCircuitBreaker(5, 60.0, clock=clock)
    for _ in range(4):
        breaker._on_failure()
    for _ in range(100):
        breaker._on_success()  # closed: the count is never reset
    breaker._on_failure()
    assert breaker.state == "open"
    assert breaker.trips == 1
    with pytest.raises(OriginalCircuitOpen):
        breaker._before_call()
    clock.advance(60.0)
    for _ in range(10):  # half-open admits every caller
        breaker._before_call()
    assert breaker.state == "half_open"
    breaker._on_success()
    assert breaker.state == "closed"
    assert breaker.failure_count == 0


def test_parsers_and_words() -> None:
    words = load_words(300)
    assert len(words) == 300
    assert words[0].position == 1
    assert words[291].term == words[0].term  # the lexicon repeats with new positions
    with pytest.raises(KeyError):
        original_stage1('{"term": "나"}')
    answer = stage1_text(1, "학교", "noun")
    assert original_stage1(f"```json\n{answer}\n```") == json.loads(answer)
    # The one parser lets comparison be null; the original's Stage1Response did not.
    null = json.dumps({**json.loads(answer), "comparison": None})
    assert parse_stage1(null).comparison is None
    with pytest.raises(KeyError, match="comparison"):
        original_stage1(null)
    with pytest.raises(ValueError, match="no valid data rows"):
        parse_stage2(
            "position\tterm\tterm_number\ttab_name\tprimer\tfront\tback\ttags\thonorific_level"
        )
    rows = parse_stage2("1\t나\t1\tScene\tp\tf\tb\tt\tcasual\n")
    assert rows[0]["tab_name"] == "Scene"


# --- after against the peer: hedging and latency-aware timeouts (docs/design/hedging.md) --------
def test_where_the_tail_is_latency_after_beats_the_peer_on_every_seed() -> None:
    """flaky, 300 words arriving over 120 s, seeds 1-5: after fails no word, its p99 time to
    card is at most 0.8 of the peer's, with at most 1.15 times its upstream requests, and it
    finishes no later. Measured: p99 ratio 0.62-0.76, requests 1.09-1.13."""
    frame = versus_peer(["flaky"], workloads=["arriving"])
    assert list(frame["seed"]) == [1, 2, 3, 4, 5]
    assert frame["all_ok"].all(), frame.to_string()
    assert (frame["hedges_sent"] > 0).all()  # the latency tail is what hedging attacks
    # requests per card delivered: the requests ratio scaled by cards delivered (peer / after)
    cards = (frame["words"] - frame["peer_failed"]) / (frame["words"] - frame["after_failed"])
    pd.testing.assert_series_equal(
        frame["requests_per_card_ratio"], frame["requests_ratio"] * cards, check_names=False
    )
    assert frame["per_card_ok"].all()
    summary = versus_summary(frame)
    assert summary.loc[("arriving", "flaky"), "per_card_ok"] == 5
    assert summary.loc[("arriving", "flaky"), "max_requests_per_card_ratio"] == pytest.approx(
        frame["requests_per_card_ratio"].max()
    )


def test_all_words_at_once_after_is_never_behind_the_peer() -> None:
    """300 flaky words released together, seeds 1-5 (the hedging issue's experiment): 0
    errors, p99 under the peer's, requests within 1.15 times, done sooner. (Not 0.8 of the
    peer's p99: 50 requests in flight bound such a run, and 0.8 of the peer's p99 is below the
    fault-aware ideal completion; docs/design/hedging.md.) Hedges are skipped while attempts
    queue for a slot: the client is saturated."""
    frame = versus_peer(["flaky"], workloads=["at_once"])
    assert (frame["after_failed"] == 0).all()
    assert (frame["p99_ratio"] < 1.0).all()
    assert frame["requests_ok"].all(), frame.to_string()
    assert frame["completion_ok"].all(), frame.to_string()
    assert (frame["hedges_skipped"] > frame["hedges_sent"]).all()


@pytest.mark.parametrize("profile", ["outage", "brownout"])
def test_through_an_outage_or_a_brownout_after_loses_no_word(profile: str) -> None:
    """Words arriving through the window (300 over 120 s; outage 60-180 s, brownout 30-150 s),
    seeds 1-5: no word fails. (Before breaker_wait, calls rejected by the open breaker spent
    their attempts and retry tokens and up to 21 words were lost in the outage.)"""
    for seed in range(1, 6):
        run = run_policy("after", profile, Workload(300, 50, 120.0), seed=seed)
        assert run.words["ok"].all(), (seed, run.words.loc[~run.words["ok"], "error"].tolist())


@pytest.mark.parametrize("profile", ["rate_limited", "llm_realistic"])
def test_hedging_never_costs_a_limited_run_anything(profile: str) -> None:
    """Where first attempts wait on the limit, hedges are skipped ("queued"); only in the last
    seconds, with nothing left to wait, may one go out from spare room. Against the same run
    without hedging and adaptive timeouts, seeds 1-5: done no later, no 429, no failed word, no
    trip, no request but the hedges."""
    off = {"hedging.hedge": False, "hedging.adaptive_timeout": False}
    for seed in range(1, 6):
        on_run = run_policy("after", profile, Workload(words=60), seed=seed)
        off_run = run_policy("after", profile, Workload(words=60), seed=seed, after_changes=off)
        assert on_run.completion <= off_run.completion + 1e-9
        assert on_run.words["ok"].all()
        assert on_run.breaker_trips == 0
        assert on_run.stats["rate_limited_total"] == 0
        hedges = on_run.notes["hedges_sent"]
        assert on_run.stats["requests"] <= off_run.stats["requests"] + hedges
        assert hedges <= 1 < on_run.notes["hedges_skipped"]


@pytest.mark.parametrize(("profile", "words"), [("rate_limited", 150), ("llm_realistic", 150)])
def test_where_limits_bind_after_finishes_within_a_tenth_of_the_ideal(
    profile: str, words: int
) -> None:
    """All words at once, seeds 1-5: no failed word, no trip, no 429, and the run within 1.1
    times the ideal completion (the fluid model of :func:`ideal_seconds`, charging each call its
    actual tokens). Measured: rate_limited 1.090-1.091; llm_realistic 0.99-1.02 with the token
    limiter settling like the provider's bucket (a sliding window of the same tpm: 1.14-1.18)."""
    workload = Workload(words, 50, 0.0)
    for seed in range(1, 6):
        run = run_policy("after", profile, workload, seed=seed)
        tokens = tokens_per_request(run, PRESETS[profile], workload)
        ideal = ideal_seconds(PRESETS[profile], workload, tokens_per_request=tokens)
        assert run.words["ok"].all()
        assert (run.breaker_trips, run.stats["rate_limited_total"]) == (0, 0)
        assert run.completion <= 1.1 * ideal, (seed, run.completion / ideal)


# --- the sdk policy: the official openai SDK ---------------------------------------------------
def test_sdk_policy_runs_in_virtual_time_and_records_its_exchanges() -> None:
    """The SDK's calls go through the recording transport (one logged exchange per request the
    upstream counts), and its waits between attempts run on the virtual clock: one word at a
    time on a rate-limited upstream, each retry after a 429 is sent once that 429's
    ``retry-after`` has passed on the virtual clock (the SDK's own retry-after handling), and the
    run spans those virtual seconds."""
    tight = FaultProfile.preset("rate_limited", rpm=6)  # 6 a minute, fixed windows
    run = run_policy("sdk", tight, Workload(words=8, concurrency=1), seed=2)
    assert run.policy == "sdk"
    assert run.stats["requests"] == len(run.exchanges) > 0
    assert run.stats["rate_limited_total"] > 0
    assert run.words["ok"].all()  # max_retries=2 waits out every 429 of this run
    exchanges = run.exchanges.sort_values("sent").reset_index(drop=True)
    limited = exchanges.index[exchanges["status"] == 429]
    assert len(limited) > 0
    for i in limited:
        hint = exchanges.loc[i, "retry_after"]
        assert hint > 0
        # concurrency 1: the next request is this one's retry, sent after the hint
        assert exchanges.loc[i + 1, "sent"] >= exchanges.loc[i, "answered"] + hint
    assert run.completion >= exchanges["retry_after"].dropna().sum()
    assert sent_in_retry_after(run.exchanges) == 0  # one at a time: no one else to send
    assert run.breaker_trips == 0
    assert run.notes["max_retries"] == 2  # the SDK's documented default


def test_sdk_policy_stops_after_its_default_two_retries() -> None:
    """The SDK's defaults and nothing more: on an upstream that is always down, every request is
    tried three times (max_retries=2) and the word fails with the SDK's own error."""
    down = FaultProfile(error_rate=1.0)  # 500, 502 or 503
    run = run_policy("sdk", down, Workload(words=4, concurrency=2), seed=1)
    assert not run.words["ok"].any()
    assert run.stats["requests"] == len(run.exchanges) == 4 * 3  # stage 1 only, 3 attempts each
    assert all(error.startswith("InternalServerError(5") for error in run.words["error"])


def test_sdk_policy_is_deterministic_from_the_seed() -> None:
    """The SDK's backoff jitter draws from the run's seeded generator."""
    workload = Workload(words=15)
    first = run_policy("sdk", "flaky", workload, seed=5)
    again = run_policy("sdk", "flaky", workload, seed=5)
    pd.testing.assert_frame_equal(first.words, again.words)
    pd.testing.assert_frame_equal(first.exchanges, again.exchanges)
    assert first.stats == again.stats


def test_sdk_metrics_row_sits_beside_the_others(flaky) -> None:  # type: ignore[no-untyped-def]
    """The success report has an ``sdk`` row with every metric; the verdicts stay about
    before/after; the JSON summary carries it."""
    row = flaky.metrics.loc["sdk"]
    assert set(flaky.metrics.columns) == set(row.index)
    assert row["succeeded"] + row["failed"] == 30
    assert row["upstream_requests"] == flaky.runs["sdk"].stats["requests"] > 0
    assert row["breaker_trips"] == 0
    summary = flaky.to_json()
    assert [m["policy"] for m in summary["metrics"]] == ["before", "after", "peer", "sdk"]
    assert "sdk" in summary["upstream"]
    assert set(flaky.verdicts.to_dict()) >= {"error_rate", "p99_time_to_card", "breaker_trips"}
    # The "after vs openai SDK" comparison: both values and their ratio, per metric.
    versus = flaky.versus()
    assert list(versus.index) == list(COMPARED)
    requests = versus.loc["upstream_requests"]
    assert requests["after"] == flaky.metrics.loc["after", "upstream_requests"]
    assert requests["sdk"] == row["upstream_requests"]
    assert requests["ratio"] == pytest.approx(requests["after"] / requests["sdk"])
    assert math.isnan(versus.loc["breaker_trips", "ratio"])  # the SDK has no breaker: 0
    assert [r["metric"] for r in summary["after_vs_sdk"]] == list(COMPARED)
    assert flaky.versus("after", "missing") is None


def test_sdk_policy_without_openai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the openai package the policy says which extra installs it."""
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now fails
    with pytest.raises(ImportError, match=r"flashkit\[bench\]"):
        run_policy("sdk", "healthy", Workload(words=2), seed=0)
