"""Retry budgets: how many retries a whole client may add on top of its requests.

A per-call attempt cap (3 attempts) still lets a client triple its load when the upstream is down;
a budget bounds retries across *all* calls of a client, so an outage costs about 1.1x the load,
not 3x (Google SRE book, ch. 21). One interface, three published designs:

- :class:`TokenRatioBudget` — gRPC retry throttling (gRFC A6): tokens start at ``max_tokens``; a
  retryable failure costs 1, a success earns ``token_ratio``; retries are allowed only while
  tokens > ``max_tokens / 2``. ``RetryBudget.grpc()``: 10 tokens, ratio 0.1.
- :class:`PercentBudget` — Finagle ``RetryBudget``: over the last ``ttl`` seconds, retries may be
  ``percent_can_retry`` of requests, plus ``min_retries_per_sec``. ``RetryBudget.finagle()``:
  ttl 10 s, 10 retries/s, 20 %.
- :class:`RetryTokenBucket` — the AWS SDK retry quota: a bucket of ``capacity`` (500) retry
  tokens (permits to retry, not LLM tokens); a retry costs ``retry_cost`` (5, timeouts
  ``timeout_retry_cost`` 10); a first-try success refunds ``no_retry_increment`` (1) and a
  retried success refunds its retry's cost. ``RetryBudget.aws()``.

A budget is shared by handing the same object to many :class:`~flashkit.retry.RetryConfig`\\ s.
It is thread-safe. When it refuses a retry, the caller gets the last error at once.
"""

from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass

from flashkit.clock import Clock, default_clock
from flashkit.errors import ValidationError

__all__ = [
    "BudgetStats",
    "PercentBudget",
    "RetryBudget",
    "RetryTokenBucket",
    "TokenRatioBudget",
]


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """Counters since the budget was built: requests (first attempts), retries granted and
    refused, successes and failures reported."""

    requests: int
    retries: int
    refused: int
    successes: int
    failures: int

    @property
    def retry_ratio(self) -> float:
        """Retries granted per request (0.0 when there were no requests)."""
        return self.retries / self.requests if self.requests else 0.0


def _positive(value: float, what: str, fix: str) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValidationError(f"{what} must be a finite number > 0, got {value!r}; {fix}")
    return value


class RetryBudget(abc.ABC):
    """What a retry loop asks a budget. Subclasses implement :meth:`_grant` and the hooks.

    The retry loop calls :meth:`on_request` before a call's first attempt, :meth:`on_failure`
    after each retryable failure, :meth:`try_acquire_retry` before each retry (``False``: do not
    retry) and :meth:`on_success` when an attempt succeeds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._refused = 0
        self._successes = 0
        self._failures = 0

    # --- presets ---------------------------------------------------------------------------
    @staticmethod
    def grpc(max_tokens: float = 10.0, token_ratio: float = 0.1) -> TokenRatioBudget:
        """gRPC retry throttling defaults: 10 tokens, 0.1 earned per success."""
        return TokenRatioBudget(max_tokens=max_tokens, token_ratio=token_ratio)

    @staticmethod
    def finagle(
        ttl: float = 10.0,
        min_retries_per_sec: float = 10.0,
        percent_can_retry: float = 0.2,
        *,
        clock: Clock | None = None,
    ) -> PercentBudget:
        """Finagle defaults: 20 % of requests over 10 s, plus 10 retries per second."""
        return PercentBudget(
            ttl=ttl,
            min_retries_per_sec=min_retries_per_sec,
            percent_can_retry=percent_can_retry,
            clock=clock,
        )

    @staticmethod
    def aws() -> RetryTokenBucket:
        """AWS SDK standard retry quota: 500 capacity, 5 per retry (10 on timeout), refund 1."""
        return RetryTokenBucket()

    # --- the interface ---------------------------------------------------------------------
    def on_request(self) -> None:
        """A call is about to make its first attempt."""
        with self._lock:
            self._requests += 1
            self._on_request()

    def on_success(self, *, retried: bool = False, timeout: bool = False) -> None:
        """An attempt succeeded; ``retried`` when it was not the call's first attempt, and
        ``timeout`` when the retry before it followed a timeout."""
        with self._lock:
            self._successes += 1
            self._on_success(retried, timeout)

    def on_failure(self, *, timeout: bool = False) -> None:
        """An attempt failed with a retryable error (``timeout`` when it timed out)."""
        with self._lock:
            self._failures += 1
            self._on_failure(timeout)

    def try_acquire_retry(self, *, timeout: bool = False) -> bool:
        """May the caller retry now? Takes the retry's cost from the budget when it may."""
        with self._lock:
            if self._grant(timeout):
                self._retries += 1
                return True
            self._refused += 1
            return False

    @property
    def stats(self) -> BudgetStats:
        """A snapshot of the counters."""
        with self._lock:
            return BudgetStats(
                self._requests, self._retries, self._refused, self._successes, self._failures
            )

    # --- for subclasses (called with the lock held) -----------------------------------------
    def _on_request(self) -> None:  # noqa: B027 - optional hook
        pass

    def _on_success(self, retried: bool, timeout: bool) -> None:  # noqa: B027 - optional hook
        pass

    def _on_failure(self, timeout: bool) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    def _grant(self, timeout: bool) -> bool: ...


class TokenRatioBudget(RetryBudget):
    """gRPC retry throttling: retry only while ``tokens > max_tokens / 2``.

    Tokens start at ``max_tokens``; each retryable failure costs 1 and each success earns
    ``token_ratio`` (capped at ``max_tokens``). In balance, retries stop once failures exceed
    ``token_ratio`` x successes.
    """

    def __init__(self, *, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        super().__init__()
        self.max_tokens = _positive(max_tokens, "TokenRatioBudget max_tokens", "gRPC uses 10")
        self.token_ratio = _positive(token_ratio, "TokenRatioBudget token_ratio", "gRPC uses 0.1")
        self._tokens = self.max_tokens

    @property
    def tokens(self) -> float:
        """Tokens left, in [0, max_tokens]."""
        return self._tokens

    def _on_success(self, retried: bool, timeout: bool) -> None:
        self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def _on_failure(self, timeout: bool) -> None:
        self._tokens = max(0.0, self._tokens - 1.0)

    def _grant(self, timeout: bool) -> bool:
        return self._tokens > self.max_tokens / 2


class PercentBudget(RetryBudget):
    """Finagle's budget: within any ``ttl`` seconds, retries <= ``percent_can_retry`` x requests
    + ``min_retries_per_sec`` x ``ttl``.

    Each request deposits 1 into a window of ``ttl`` seconds (kept in 10 slots); each retry
    withdraws ``1 / percent_can_retry``; a reserve of ``min_retries_per_sec x ttl`` retries lets a
    quiet client retry at all. Deposits and withdrawals older than ``ttl`` are forgotten.
    """

    _SLOTS = 10

    def __init__(
        self,
        *,
        ttl: float = 10.0,
        min_retries_per_sec: float = 10.0,
        percent_can_retry: float = 0.2,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.ttl = _positive(ttl, "PercentBudget ttl (seconds)", "Finagle uses 10.0")
        min_retries_per_sec = float(min_retries_per_sec)
        if not (min_retries_per_sec >= 0 and math.isfinite(min_retries_per_sec)):
            raise ValidationError(
                f"PercentBudget min_retries_per_sec must be >= 0, got {min_retries_per_sec!r}"
            )
        percent_can_retry = float(percent_can_retry)
        if not 0 <= percent_can_retry <= 1000:
            raise ValidationError(
                f"PercentBudget percent_can_retry is a fraction of requests in [0, 1000] "
                f"(0.2 = 20 %), got {percent_can_retry!r}"
            )
        self.min_retries_per_sec = min_retries_per_sec
        self.percent_can_retry = percent_can_retry
        self.clock = clock if clock is not None else default_clock()
        # Units: one retry costs 1.0 "retry"; a request deposits percent_can_retry retries.
        self._reserve = min_retries_per_sec * self.ttl
        self._slot_width = self.ttl / self._SLOTS
        self._slots = [0.0] * self._SLOTS
        self._slot_index = self._index(self.clock.now())

    def _index(self, now: float) -> int:
        return math.floor(now / self._slot_width)

    def _roll(self) -> None:
        index = self._index(self.clock.now())
        gap = index - self._slot_index
        if gap <= 0:
            return
        for i in range(1, min(gap, self._SLOTS) + 1):
            self._slots[(self._slot_index + i) % self._SLOTS] = 0.0
        self._slot_index = index

    @property
    def balance(self) -> float:
        """Retries available right now."""
        with self._lock:
            self._roll()
            return self._reserve + sum(self._slots)

    def _on_request(self) -> None:
        self._roll()
        self._slots[self._slot_index % self._SLOTS] += self.percent_can_retry

    def _grant(self, timeout: bool) -> bool:
        self._roll()
        if self._reserve + sum(self._slots) >= 1.0 - 1e-9:
            self._slots[self._slot_index % self._SLOTS] -= 1.0
            return True
        return False


class RetryTokenBucket(RetryBudget):
    """The AWS SDK retry quota (botocore ``standard`` mode): a bucket of retry tokens (permits to
    retry, not LLM tokens).

    A bucket of ``capacity`` units; a retry takes ``retry_cost`` (``timeout_retry_cost`` after a
    timeout) and is refused when the bucket holds less. A success on the first try refunds
    ``no_retry_increment``; a success after a retry refunds that retry's cost.
    """

    def __init__(
        self,
        *,
        capacity: float = 500.0,
        retry_cost: float = 5.0,
        timeout_retry_cost: float = 10.0,
        no_retry_increment: float = 1.0,
    ) -> None:
        super().__init__()
        self.capacity = _positive(capacity, "RetryTokenBucket capacity", "AWS uses 500")
        self.retry_cost = _positive(retry_cost, "RetryTokenBucket retry_cost", "AWS uses 5")
        self.timeout_retry_cost = _positive(
            timeout_retry_cost, "RetryTokenBucket timeout_retry_cost", "AWS uses 10"
        )
        self.no_retry_increment = float(no_retry_increment)
        if not self.no_retry_increment >= 0:
            raise ValidationError(
                f"RetryTokenBucket no_retry_increment must be >= 0, got {no_retry_increment!r}"
            )
        self._level = self.capacity

    @property
    def level(self) -> float:
        """Units left in the bucket."""
        return self._level

    def _on_success(self, retried: bool, timeout: bool) -> None:
        if retried:
            refund = self.timeout_retry_cost if timeout else self.retry_cost
        else:
            refund = self.no_retry_increment
        self._level = min(self.capacity, self._level + refund)

    def _grant(self, timeout: bool) -> bool:
        cost = self.timeout_retry_cost if timeout else self.retry_cost
        if self._level >= cost:
            self._level -= cost
            return True
        return False
