"""The retry policy: :class:`RetryConfig` (seconds), its :class:`Jitter` kinds and the
:class:`RetryEvent` hooks receive; re-exported by :mod:`flashkit.retry`."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

from flashkit.budget import RetryBudget
from flashkit.clock import Clock, default_clock
from flashkit.errors import ValidationError

__all__ = ["Jitter", "RetryConfig", "RetryEvent"]

_SHARED_RNG: Final = random.Random()


class Jitter(enum.Enum):
    """How a backoff delay ``v = min(max_delay, initial_delay * exponential_base**n)`` is spread.

    - ``NONE``: ``v`` (plain exponential; synchronised clients retry together).
    - ``FULL``: ``uniform(0, v)`` (least total work in Brooker's simulation).
    - ``EQUAL``: ``v/2 + uniform(0, v/2)`` (``jitter=True``: the original plan's 50–100 %).
    - ``DECORRELATED``: ``min(max_delay, uniform(initial_delay, 3 * previous_delay))``.
    """

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What a hook is told: the attempt that just ended (1-based), the delay before the next one
    (seconds, 0.0 when giving up), the error or the unacceptable result, the server hint
    (seconds or None), seconds elapsed since the first attempt, and on give-up the ``reason``
    (``"not_retryable"``, ``"attempts"``, ``"deadline"``, ``"retry_after_too_long"``,
    ``"budget"``, ``"result"``)."""

    attempt: int
    delay: float
    error: BaseException | None
    result: Any
    retry_after: float | None
    elapsed: float
    reason: str | None = None


def _bad(field_name: str, value: object, rule: str, fix: str) -> ValidationError:
    return ValidationError(
        f"RetryConfig({field_name}={value!r}): {rule}; {fix}",
        code="invalid_config",
        details={"field": field_name},
    )


# (field, rule, fix) of RetryConfig's fields that must be numbers >= 0.
_NON_NEGATIVE_FIELDS: Final = (
    ("max_retry_after", "must be seconds >= 0", "hints above it end the call at once"),
    (
        "retry_after_jitter",
        "must be a fraction >= 0",
        "0.1 waits up to 10 % longer than the server asked",
    ),
)
_OPTIONAL_CALLABLES: Final = ("retry_if", "retry_if_result", "on_retry", "on_giveup")


def _jitter_kind(jitter: object) -> Jitter:
    """``RetryConfig.jitter`` as a :class:`Jitter`: True is EQUAL, False NONE, names allowed."""
    if isinstance(jitter, bool):
        return Jitter.EQUAL if jitter else Jitter.NONE
    if isinstance(jitter, str):
        try:
            return Jitter(jitter.lower())
        except ValueError:
            raise _bad(
                "jitter", jitter, "is not a jitter kind", f"use {[j.value for j in Jitter]}"
            ) from None
    if not isinstance(jitter, Jitter):
        raise _bad("jitter", jitter, "must be a bool or a Jitter", "e.g. Jitter.FULL")
    return jitter


def _exception_types(retry_on: object) -> tuple[type[BaseException], ...]:
    """``RetryConfig.retry_on`` as a tuple of exception types (one type is allowed)."""
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not isinstance(retry_on, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        raise _bad(
            "retry_on",
            retry_on,
            "must be a tuple of exception types",
            "e.g. (httpx.HTTPError, TimeoutError)",
        )
    return retry_on


@dataclass(frozen=True)
class RetryConfig:
    """A retry policy. Times are seconds.

    The original plan's fields (positional, ``docs/origins.md``): ``max_attempts=3`` (total
    attempts, 1 = no retries), ``initial_delay=1.0``, ``max_delay=60.0``,
    ``exponential_base=2.0``, ``jitter=True`` (``True`` = :attr:`Jitter.EQUAL`, ``False`` =
    :attr:`Jitter.NONE`, or a :class:`Jitter`), ``retry_on=(Exception,)`` (exception types worth
    retrying).

    Keyword-only:

    - ``retry_if(error) -> bool``: narrows ``retry_on`` further (default: the error's own
      ``retryable`` verdict, see :func:`flashkit.errors.is_retryable`).
    - ``retry_if_result(result) -> bool``: True when a returned value should be retried.
    - ``deadline``: seconds for the whole call, attempts and sleeps included (None: unbounded).
    - ``attempt_timeout``: seconds per attempt; async attempts are cancelled (None: unbounded).
    - ``respect_retry_after=True``, ``max_retry_after=60.0``, ``retry_after_jitter=0.1``:
      server hints as floors, their ceiling, and the jitter above them (fraction of the hint).
    - ``backoff_from_start=False``: True counts each delay from the start of the failed
      attempt instead of its end, so an attempt that took longer to fail than the delay drawn is
      retried at once (a server hint still counts from the answer). The backoff then spaces
      the starts of attempts, which is what keeps their rate down; a slow failure has spaced
      itself already.
    - ``budget``: a shared :class:`~flashkit.budget.RetryBudget`.
    - ``on_retry(event)`` / ``on_giveup(event)``: hooks receiving a :class:`RetryEvent`.
    - ``clock``: a :class:`~flashkit.clock.Clock` (default: :func:`flashkit.clock.default_clock`).
    - ``rng``: a ``random.Random`` for jitter (default: a shared one); seed it to reproduce.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: bool | Jitter = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    _: KW_ONLY
    retry_if: Callable[[BaseException], bool] | None = None
    retry_if_result: Callable[[Any], bool] | None = None
    deadline: float | None = None
    attempt_timeout: float | None = None
    respect_retry_after: bool = True
    max_retry_after: float = 60.0
    retry_after_jitter: float = 0.1
    backoff_from_start: bool = False
    budget: RetryBudget | None = None
    on_retry: Callable[[RetryEvent], None] | None = None
    on_giveup: Callable[[RetryEvent], None] | None = None
    clock: Clock = field(default=None, repr=False)  # type: ignore[assignment]
    rng: random.Random = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._check_backoff()
        object.__setattr__(self, "jitter", _jitter_kind(self.jitter))
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))
        self._check_limits()
        if self.clock is None:
            object.__setattr__(self, "clock", default_clock())
        if self.rng is None:
            object.__setattr__(self, "rng", _SHARED_RNG)

    def _check_backoff(self) -> None:
        """``max_attempts``, the delays and their growth."""
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise _bad(
                "max_attempts",
                self.max_attempts,
                "must be an int >= 1",
                "it counts all attempts, so 1 means no retries and 3 means up to 2 retries",
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value >= 0 and math.isfinite(value)):
                raise _bad(name, value, "must be a finite number of seconds >= 0", "e.g. 1.0")
        if self.max_delay < self.initial_delay:
            raise _bad(
                "max_delay",
                self.max_delay,
                f"is below initial_delay={self.initial_delay!r}",
                "max_delay caps the backoff, so it must be >= initial_delay",
            )
        if not isinstance(self.exponential_base, int | float) or not self.exponential_base >= 1:
            raise _bad(
                "exponential_base",
                self.exponential_base,
                "must be a number >= 1",
                "2.0 doubles the delay after every failure; 1.0 keeps it constant",
            )

    def _check_limits(self) -> None:
        """The time limits, the server-hint fields, the budget and the callables."""
        for name in ("deadline", "attempt_timeout"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and value > 0 and math.isfinite(value)
            ):
                raise _bad(name, value, "must be seconds > 0 or None", "None means unbounded")
        for name, rule, fix in _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise _bad(name, value, rule, fix)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise _bad("budget", self.budget, "must be a RetryBudget", "e.g. RetryBudget.grpc()")
        for name in _OPTIONAL_CALLABLES:
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise _bad(name, value, "must be callable or None", "pass a function")

    def calculate_delay(
        self, attempt: int, *, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based: 0 is the first retry).

        ``previous`` is the last delay (used by :attr:`Jitter.DECORRELATED`; default
        ``initial_delay``). Never above ``max_delay``.
        """
        if attempt < 0:
            raise ValueError(f"calculate_delay(attempt={attempt}): attempt is 0-based, >= 0")
        rng = rng if rng is not None else self.rng
        jitter = self.jitter
        if jitter is Jitter.DECORRELATED:
            last = self.initial_delay if previous is None else previous
            upper = max(self.initial_delay, 3.0 * last)
            return min(self.max_delay, rng.uniform(self.initial_delay, upper))
        try:
            value = min(
                self.max_delay, self.initial_delay * float(self.exponential_base) ** attempt
            )
        except OverflowError:  # base**attempt beyond a float: capped, unless there is no backoff
            value = self.max_delay if self.initial_delay > 0 else 0.0
        if jitter is Jitter.NONE:
            return value
        if jitter is Jitter.FULL:
            return rng.uniform(0.0, value)
        half = value / 2.0
        return half + rng.uniform(0.0, half)

    def delays(self, *, rng: random.Random | None = None) -> list[float]:
        """One sample of the delays a call that always fails would wait (``max_attempts - 1``)."""
        out: list[float] = []
        previous: float | None = None
        for n in range(self.max_attempts - 1):
            previous = self.calculate_delay(n, previous=previous, rng=rng)
            out.append(previous)
        return out
