"""How long the client's recent attempts took, and seconds derived from it.

>>> tracker = LatencyTracker(window=100, max_age=300.0, clock=clock)
>>> tracker.observe(1.7)                      # one attempt answered after 1.7 s
>>> tracker.quantile(0.95)                    # seconds, or None before any sample
>>> FromLatency(0.99, factor=3.0, floor=10.0, ceiling=60.0).seconds(tracker)

:class:`LatencyTracker` keeps the last ``window`` samples (seconds), none older than ``max_age``
seconds on its clock, in sorted order, so a quantile is one index (``observe`` costs a binary
search and a short memmove). :class:`FromLatency` turns a quantile into a bound: an attempt
timeout or a hedge delay that follows what the upstream does now, not a constant chosen once.
Why these quantiles: ``docs/design/hedging.md``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from flashkit.clock import Clock, default_clock
from flashkit.errors import ValidationError

__all__ = ["FromLatency", "LatencyTracker"]


class LatencyTracker:
    """The latencies (seconds) of the last ``window`` attempts, none older than ``max_age``
    seconds on ``clock`` (None: kept until ``window`` newer ones push them out).

    A shift in latency is followed within ``window`` observations at most: a quantile ``q``
    moves up once ``1 - q`` of the window is slower (a few samples for a high quantile), and
    down once fewer than ``1 - q`` of the window are still the old, slow ones.
    """

    __slots__ = ("_clock", "_sorted", "_times", "max_age", "window")

    def __init__(
        self, window: int = 100, *, max_age: float | None = 300.0, clock: Clock | None = None
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValidationError.config(
                f"LatencyTracker(window={window!r}): must be an int >= 1 (samples kept), e.g. 100",
                field="window",
            )
        if max_age is not None and not (max_age > 0 and math.isfinite(max_age)):
            raise ValidationError.config(
                f"LatencyTracker(max_age={max_age!r}): must be seconds > 0 or None", field="max_age"
            )
        self.window = window
        self.max_age = max_age
        self._clock = clock if clock is not None else default_clock()
        self._times: deque[tuple[float, float]] = deque()  # (when, seconds), oldest first
        self._sorted: list[float] = []

    def __len__(self) -> int:
        """Samples currently kept (after dropping those older than ``max_age``)."""
        self._expire()
        return len(self._sorted)

    def observe(self, seconds: float) -> None:
        """Record one attempt that took ``seconds`` (a timed-out attempt: its timeout, a lower
        bound of its latency, so a slower upstream raises the quantiles even when no attempt
        finishes)."""
        if not seconds >= 0.0 or math.isinf(seconds):
            return  # NaN, negative or infinite: not a latency
        times, ordered = self._times, self._sorted
        times.append((self._clock.now(), seconds))
        bisect.insort(ordered, seconds)
        if len(times) > self.window:
            _, old = times.popleft()
            del ordered[bisect.bisect_left(ordered, old)]
        self._expire()

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) of the samples kept, in seconds (nearest rank: the
        smallest sample with at least ``q`` of them at or below it); None without samples."""
        if not 0.0 < q <= 1.0:
            raise ValidationError(
                f"LatencyTracker.quantile({q!r}): q must be in (0, 1], e.g. 0.95",
                code="invalid_config",
            )
        self._expire()
        ordered = self._sorted
        n = len(ordered)
        if not n:
            return None
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]

    def clear(self) -> None:
        """Forget every sample."""
        self._times.clear()
        self._sorted.clear()

    def _expire(self) -> None:
        if self.max_age is None or not self._times:
            return
        oldest = self._clock.now() - self.max_age
        times, ordered = self._times, self._sorted
        while times and times[0][0] < oldest:
            _, old = times.popleft()
            del ordered[bisect.bisect_left(ordered, old)]


@dataclass(frozen=True, slots=True)
class FromLatency:
    """Seconds derived from recent attempts: their ``quantile`` times ``factor``, never below
    ``floor`` nor above ``ceiling`` seconds (None: unbounded). Until ``min_samples`` attempts
    are known the value is ``ceiling`` (for a hedge delay, None: not known yet, looked up again
    while the request runs; for a timeout, the configured one).

    ``LLMClient(attempt_timeout=FromLatency(0.99, factor=3.0, floor=10.0, ceiling=60.0))``: a
    stalled attempt is abandoned after three times the slowest percent of recent ones, at least
    10 s and at most 60 s. ``LLMClient(hedge_after=FromLatency(0.9, floor=1.0))``: a hedge goes
    out once the first request is slower than 90 % of recent attempts (never sooner than 1 s).
    """

    quantile: float
    factor: float = 1.0
    floor: float = 0.0
    ceiling: float | None = None
    min_samples: int = 20

    def __post_init__(self) -> None:
        checks = (
            ("quantile", 0.0 < self.quantile <= 1.0, "in (0, 1], e.g. 0.95"),
            ("factor", self.factor > 0 and math.isfinite(self.factor), "> 0, e.g. 3.0"),
            ("floor", self.floor >= 0 and math.isfinite(self.floor), "seconds >= 0"),
            (
                "ceiling",
                self.ceiling is None or (self.ceiling > 0 and self.ceiling >= self.floor),
                "seconds >= floor, or None",
            ),
            (
                "min_samples",
                isinstance(self.min_samples, int) and self.min_samples >= 1,
                "an int >= 1",
            ),
        )
        for name, ok, hint in checks:
            if not ok:
                raise ValidationError(
                    f"FromLatency({name}={getattr(self, name)!r}): must be {hint}",
                    code="invalid_config",
                    details={"field": name},
                )

    def seconds(self, tracker: LatencyTracker) -> float | None:
        """The bound now, in seconds (``ceiling`` while fewer than ``min_samples`` are kept)."""
        if len(tracker) < self.min_samples:
            return self.ceiling
        q = tracker.quantile(self.quantile)
        value = self.floor if q is None else max(self.floor, q * self.factor)
        ceiling = self.ceiling
        return value if ceiling is None or value < ceiling else ceiling
