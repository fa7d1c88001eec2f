"""flashkit.budget: the three retry budgets against their published steady states.

Time is a :class:`~flashkit.clock.VirtualClock` advanced by hand; randomness is seeded. The
simulations follow the retry loop's protocol: ``on_request`` before a call's first attempt,
``on_failure`` after each failed attempt, ``try_acquire_retry`` before each retry and
``on_success`` when an attempt succeeds.
"""

from __future__ import annotations

import math
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from flashkit.budget import (
    BudgetStats,
    PercentBudget,
    RetryBudget,
    RetryTokenBucket,
    TokenRatioBudget,
)
from flashkit.clock import VirtualClock
from flashkit.errors import ValidationError

# --- helpers -----------------------------------------------------------------------------------


def one_call(budget: RetryBudget, fails: Callable[[], bool], max_attempts: int = 2) -> int:
    """One call through a RetryConfig-style loop; returns the retries it was granted."""
    budget.on_request()
    granted = 0
    for attempt in range(max_attempts):
        if not fails():
            budget.on_success(retried=attempt > 0)
            return granted
        budget.on_failure()
        if attempt + 1 == max_attempts or not budget.try_acquire_retry():
            return granted
        granted += 1
    return granted


def grpc_retry_ratio(p: float, *, requests: int = 20_000, seed: int = 7) -> tuple[float, float]:
    """(retries per request, refused share of asks) over the second half of a gRPC run."""
    rng = random.Random(seed)
    budget = RetryBudget.grpc()
    half = requests // 2
    for _ in range(half):
        one_call(budget, lambda: rng.random() < p)
    before = budget.stats
    for _ in range(requests - half):
        one_call(budget, lambda: rng.random() < p)
    after = budget.stats
    retries = after.retries - before.retries
    asks = retries + after.refused - before.refused
    return retries / (after.requests - before.requests), (asks - retries) / max(asks, 1)


def finagle_all_failing(
    budget: PercentBudget, clock: VirtualClock, rate: int, *, seconds: int = 120, last: int = 60
) -> float:
    """``rate`` requests/s, each failing and asking one retry; retries/requests over ``last`` s."""
    requests = retries = 0
    for i in range(seconds * rate):
        clock.advance(i / rate - clock.now())
        budget.on_request()
        budget.on_failure()
        granted = budget.try_acquire_retry()
        if granted:
            budget.on_failure()
        if i / rate >= seconds - last:
            requests += 1
            retries += granted
    return retries / requests


# --- presets -----------------------------------------------------------------------------------


def test_grpc_preset() -> None:
    """RetryBudget.grpc() is gRPC's throttling: 10 tokens, ratio 0.1, full at start."""
    budget = RetryBudget.grpc()
    assert type(budget) is TokenRatioBudget
    assert (budget.max_tokens, budget.token_ratio, budget.tokens) == (10.0, 0.1, 10.0)


def test_finagle_preset() -> None:
    """RetryBudget.finagle() is Finagle's default: ttl 10 s, 10 retries/s, 20 %."""
    clock = VirtualClock(5.0)
    budget = RetryBudget.finagle(clock=clock)
    assert type(budget) is PercentBudget
    assert (budget.ttl, budget.min_retries_per_sec, budget.percent_can_retry) == (10.0, 10.0, 0.2)
    assert budget.clock is clock
    assert budget.balance == 100.0  # the reserve: 10/s x 10 s


def test_aws_preset() -> None:
    """RetryBudget.aws() is the AWS SDK standard quota: 500, 5, 10 on timeout, refund 1."""
    budget = RetryBudget.aws()
    assert type(budget) is RetryTokenBucket
    assert (
        budget.capacity,
        budget.retry_cost,
        budget.timeout_retry_cost,
        budget.no_retry_increment,
    ) == (500.0, 5.0, 10.0, 1.0)
    assert budget.level == 500.0


def test_stats_start_at_zero() -> None:
    """A fresh budget has all counters at zero and a retry ratio of 0.0."""
    stats = RetryBudget.aws().stats
    assert stats == BudgetStats(0, 0, 0, 0, 0)
    assert stats.retry_ratio == 0.0


def test_stats_count_every_hook() -> None:
    """Each hook bumps its own counter, and retry_ratio is retries per request."""
    budget = RetryBudget.grpc()
    for _ in range(4):
        budget.on_request()
    budget.on_failure()
    budget.on_failure(timeout=True)
    assert budget.try_acquire_retry()
    budget.on_success(retried=True)
    budget.on_success()
    assert budget.stats == BudgetStats(requests=4, retries=1, refused=0, successes=2, failures=2)
    assert budget.stats.retry_ratio == 0.25


# --- gRPC: token ratio -------------------------------------------------------------------------


def test_grpc_failure_costs_one_and_success_earns_ratio_capped() -> None:
    """A failure costs 1 token, a success earns 0.1, never above max_tokens or below 0."""
    budget = TokenRatioBudget(max_tokens=10, token_ratio=0.1)
    budget.on_success()
    assert budget.tokens == 10.0
    budget.on_failure()
    budget.on_failure(timeout=True)
    assert budget.tokens == 8.0
    budget.on_success(retried=True)
    assert budget.tokens == pytest.approx(8.1)
    for _ in range(50):
        budget.on_failure()
    assert budget.tokens == 0.0
    for _ in range(200):
        budget.on_success()
    assert budget.tokens == 10.0


def test_grpc_threshold_is_strictly_above_half() -> None:
    """Retries need tokens > max/2: 4 failures from 10 still retry, 5 failures do not."""
    budget = RetryBudget.grpc()
    for _ in range(4):
        budget.on_failure()
    assert budget.tokens == 6.0
    assert budget.try_acquire_retry()
    assert budget.tokens == 6.0  # asking costs nothing; failures do
    budget.on_failure()
    assert budget.tokens == 5.0
    assert not budget.try_acquire_retry()
    budget.on_success()
    assert budget.try_acquire_retry()  # 5.1 > 5 again
    assert budget.stats.retries == 2
    assert budget.stats.refused == 1


def test_grpc_all_failing_steady_state_is_zero_retries() -> None:
    """At 100 % failure the tokens sink to half and no retry is ever granted again."""
    budget = RetryBudget.grpc()
    for _ in range(1_000):
        one_call(budget, lambda: True, max_attempts=4)
    first = budget.stats
    assert first.retries <= 5  # only while the first five tokens lasted
    for _ in range(1_000):
        one_call(budget, lambda: True, max_attempts=4)
    assert budget.stats.retries == first.retries
    assert budget.stats.refused == first.refused + 1_000
    assert budget.tokens == 0.0


@pytest.mark.parametrize("p", [0.02, 0.05], ids=["2%", "5%"])
def test_grpc_below_balance_keeps_retrying(p: float) -> None:
    """With failures below token_ratio x successes, nearly every failure is still retried."""
    ratio, refused_share = grpc_retry_ratio(p)
    assert ratio == pytest.approx(p, abs=0.01)
    assert refused_share < 0.1


@pytest.mark.parametrize("p", [0.15, 0.3, 0.6], ids=["15%", "30%", "60%"])
def test_grpc_above_balance_stops_retrying(p: float) -> None:
    """With failures above token_ratio x successes, retries stop almost entirely."""
    ratio, refused_share = grpc_retry_ratio(p)
    assert ratio < 0.005
    assert refused_share > 0.98


def test_grpc_balance_point_separates_the_regimes() -> None:
    """Just below 1/11 failures retries mostly flow; just above they mostly stop."""
    below, _ = grpc_retry_ratio(0.06)
    above, _ = grpc_retry_ratio(0.12)
    assert below > 0.04
    assert above < 0.02


# --- Finagle: percent of requests ----------------------------------------------------------------


@pytest.mark.parametrize("rate", [20, 100, 400])
def test_finagle_all_failing_without_floor_is_percent_can_retry(rate: int) -> None:
    """At 100 % failure and no floor, retries settle at 20 % of requests, whatever the rate."""
    clock = VirtualClock()
    budget = RetryBudget.finagle(min_retries_per_sec=0, clock=clock)
    assert finagle_all_failing(budget, clock, rate) == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("percent", [0.1, 0.5])
def test_finagle_ratio_follows_percent_can_retry(percent: float) -> None:
    """The steady-state ratio tracks percent_can_retry, not a hard-coded 20 %."""
    clock = VirtualClock()
    budget = PercentBudget(min_retries_per_sec=0, percent_can_retry=percent, clock=clock)
    assert finagle_all_failing(budget, clock, 100) == pytest.approx(percent, abs=0.01)


def test_finagle_all_failing_with_default_floor() -> None:
    """With the 10/s floor at 100 requests/s, retries are 20 % + 10/100 = 30 % of requests."""
    clock = VirtualClock()
    budget = RetryBudget.finagle(clock=clock)
    assert finagle_all_failing(budget, clock, 100) == pytest.approx(0.3, abs=0.015)


def test_finagle_quiet_client_retries_from_the_reserve() -> None:
    """At 1 request/s (0.2 retries earned per second) every failure is still retried."""
    clock = VirtualClock()
    budget = RetryBudget.finagle(clock=clock)
    assert finagle_all_failing(budget, clock, 1) == 1.0
    starved = PercentBudget(min_retries_per_sec=0, clock=VirtualClock())
    starved.on_request()
    assert not starved.try_acquire_retry()  # 0.2 < 1 retry without the reserve


def test_finagle_deposits_expire_after_ttl() -> None:
    """A burst's deposits are spendable within ttl and forgotten after it."""
    clock = VirtualClock(100.0)
    budget = RetryBudget.finagle(clock=clock)
    for _ in range(1_000):
        budget.on_request()
    assert budget.balance == pytest.approx(100 + 0.2 * 1_000)
    clock.advance(9.0)
    assert budget.balance == pytest.approx(300.0)
    clock.advance(60.0)
    assert budget.balance == pytest.approx(100.0)


def test_finagle_withdrawals_expire_after_ttl() -> None:
    """An exhausted reserve refills once the withdrawals are older than ttl."""
    clock = VirtualClock()
    budget = PercentBudget(ttl=10, min_retries_per_sec=1, percent_can_retry=0.2, clock=clock)
    granted = sum(budget.try_acquire_retry() for _ in range(15))
    assert granted == 10
    clock.advance(5.0)
    assert not budget.try_acquire_retry()
    clock.advance(5.0)
    assert budget.balance == pytest.approx(10.0)
    assert budget.try_acquire_retry()


def test_finagle_grants_while_balance_covers_one_retry() -> None:
    """Five requests at 20 % buy exactly one retry; four do not."""
    budget = PercentBudget(min_retries_per_sec=0, clock=VirtualClock())
    for _ in range(4):
        budget.on_request()
    assert not budget.try_acquire_retry()
    budget.on_request()
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    assert budget.balance == pytest.approx(0.0)


# --- AWS: token bucket ---------------------------------------------------------------------------


def test_aws_all_failing_grants_exactly_one_hundred() -> None:
    """500 units at 5 per retry: exactly 100 retries, then refused forever."""
    budget = RetryBudget.aws()
    granted = [one_call(budget, lambda: True, max_attempts=3) for _ in range(1_000)]
    assert sum(granted) == 100
    assert budget.stats.retries == 100
    assert budget.level == 0.0
    assert not any(granted[100:])  # every call after the bucket emptied got no retry


def test_aws_first_try_success_refunds_one_capped() -> None:
    """A first-try success refunds 1, never above capacity."""
    budget = RetryBudget.aws()
    budget.on_success()
    assert budget.level == 500.0
    assert budget.try_acquire_retry()
    assert budget.level == 495.0
    budget.on_success()
    assert budget.level == 496.0
    for _ in range(10):
        budget.on_success()
    assert budget.level == 500.0


def test_aws_retried_success_refunds_the_retry_cost() -> None:
    """A success after a retry refunds 5, or 10 when that retry followed a timeout."""
    budget = RetryBudget.aws()
    for _ in range(3):
        budget.try_acquire_retry(timeout=True)
    assert budget.level == 470.0
    budget.on_success(retried=True)
    assert budget.level == 475.0
    budget.on_success(retried=True, timeout=True)
    assert budget.level == 485.0


def test_aws_timeout_retry_costs_ten() -> None:
    """A retry after a timeout costs 10 and is refused when fewer than 10 units are left."""
    budget = RetryTokenBucket(capacity=25)
    assert budget.try_acquire_retry(timeout=True)
    assert budget.try_acquire_retry(timeout=True)
    assert budget.level == 5.0
    assert not budget.try_acquire_retry(timeout=True)
    assert budget.try_acquire_retry()  # an ordinary retry still fits
    assert budget.level == 0.0
    assert budget.stats.retries == 3
    assert budget.stats.refused == 1


def test_aws_failures_cost_nothing() -> None:
    """Only retries draw from the bucket; reporting failures does not."""
    budget = RetryBudget.aws()
    for _ in range(100):
        budget.on_failure()
        budget.on_failure(timeout=True)
    assert budget.level == 500.0


# --- sharing across threads ---------------------------------------------------------------

THREADS = 8
CALLS = 1_000


@pytest.fixture
def busy_switching() -> Any:
    """Switch threads every microsecond, so unlocked read-modify-writes would interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.parametrize(
    "factory",
    [
        pytest.param(lambda: RetryBudget.grpc(max_tokens=1e9), id="grpc"),
        pytest.param(lambda: RetryBudget.finagle(clock=VirtualClock()), id="finagle"),
        pytest.param(
            lambda: RetryTokenBucket(capacity=1e9, timeout_retry_cost=1e8), id="aws-ledger"
        ),
        pytest.param(lambda: RetryBudget.aws(), id="aws-tight"),
    ],
)
@pytest.mark.usefixtures("busy_switching")
def test_shared_budget_counts_exactly_across_threads(factory: Callable[[], RetryBudget]) -> None:
    """Two retry configs (3 and 5 attempts) share one budget from 8 threads; no update is lost."""
    budget = factory()
    # One retry before the threads start: it also takes the ledger bucket far below capacity,
    # where no refund is ever capped.
    assert budget.try_acquire_retry(timeout=True)
    barrier = threading.Barrier(THREADS)
    tallies: list[dict[str, int]] = [{} for _ in range(THREADS)]

    def worker(index: int) -> None:
        rng = random.Random(index)
        max_attempts = 3 if index % 2 else 5  # two RetryConfig-style callers
        tally = dict.fromkeys(
            ("requests", "asks", "granted", "first_ok", "retried_ok", "failures"), 0
        )
        barrier.wait()
        for _ in range(CALLS):
            budget.on_request()
            tally["requests"] += 1
            for attempt in range(max_attempts):
                if rng.random() >= 0.5:
                    budget.on_success(retried=attempt > 0)
                    tally["retried_ok" if attempt else "first_ok"] += 1
                    break
                budget.on_failure()
                tally["failures"] += 1
                if attempt + 1 == max_attempts:
                    break
                tally["asks"] += 1
                if not budget.try_acquire_retry():
                    break
                tally["granted"] += 1
        tallies[index] = tally

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    total = {key: sum(t[key] for t in tallies) for key in tallies[0]}
    stats = budget.stats
    assert stats.requests == total["requests"] == THREADS * CALLS
    assert stats.retries == total["granted"] + 1
    assert stats.retries + stats.refused == total["asks"] + 1
    assert stats.successes == total["first_ok"] + total["retried_ok"]
    assert stats.failures == total["failures"]
    if isinstance(budget, RetryTokenBucket) and budget.capacity == 1e9:
        # Never capped: the level is an exact ledger of costs and refunds.
        refunds = total["first_ok"] + 5 * total["retried_ok"]
        expected = 1e9 - 1e8 - 5 * total["granted"] + refunds
        assert budget.level == expected


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "name"),
    [
        pytest.param(lambda: TokenRatioBudget(max_tokens=0), "max_tokens", id="tokens-zero"),
        pytest.param(lambda: TokenRatioBudget(max_tokens=-10), "max_tokens", id="tokens-neg"),
        pytest.param(lambda: TokenRatioBudget(max_tokens=math.inf), "max_tokens", id="tokens-inf"),
        pytest.param(lambda: TokenRatioBudget(token_ratio=-0.1), "token_ratio", id="ratio-neg"),
        pytest.param(lambda: TokenRatioBudget(token_ratio=0), "token_ratio", id="ratio-zero"),
        pytest.param(lambda: RetryBudget.grpc(token_ratio=math.nan), "token_ratio", id="ratio-nan"),
        pytest.param(lambda: PercentBudget(ttl=0), "ttl", id="ttl-zero"),
        pytest.param(lambda: PercentBudget(ttl=-1), "ttl", id="ttl-neg"),
        pytest.param(lambda: PercentBudget(percent_can_retry=-1), "percent_can_retry", id="pct"),
        pytest.param(
            lambda: PercentBudget(percent_can_retry=math.nan), "percent_can_retry", id="pct-nan"
        ),
        pytest.param(
            lambda: PercentBudget(min_retries_per_sec=-1), "min_retries_per_sec", id="min-neg"
        ),
        pytest.param(
            lambda: RetryBudget.finagle(min_retries_per_sec=math.inf),
            "min_retries_per_sec",
            id="min-inf",
        ),
        pytest.param(lambda: RetryTokenBucket(capacity=math.nan), "capacity", id="cap-nan"),
        pytest.param(lambda: RetryTokenBucket(capacity=0), "capacity", id="cap-zero"),
        pytest.param(lambda: RetryTokenBucket(retry_cost=-5), "retry_cost", id="cost-neg"),
        pytest.param(
            lambda: RetryTokenBucket(timeout_retry_cost=0), "timeout_retry_cost", id="to-zero"
        ),
        pytest.param(
            lambda: RetryTokenBucket(no_retry_increment=-1), "no_retry_increment", id="inc-neg"
        ),
        pytest.param(
            lambda: RetryTokenBucket(no_retry_increment=math.nan),
            "no_retry_increment",
            id="inc-nan",
        ),
    ],
)
def test_bad_parameters_are_validation_errors(build: Callable[[], Any], name: str) -> None:
    """Nonsense parameters raise ValidationError (also a ValueError) naming the parameter."""
    with pytest.raises(ValidationError, match=name) as caught:
        build()
    assert isinstance(caught.value, ValueError)
    assert not caught.value.retryable
