"""What a :class:`~flashkit.breaker.CircuitBreaker` reports and checks: its states, the
context of a break, state changes, stats, and the validation of its settings (seconds)."""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from flashkit.errors import ErrorCategory, StructuredError, ValidationError

__all__ = ["BreakDurationContext", "CircuitBreakerStats", "CircuitState", "StateChange"]

DEFAULT_BREAK_DURATION: Final = 5.0


class CircuitState(enum.Enum):
    """Where a breaker is: ``CLOSED`` (calls flow), ``OPEN`` (rejected for a break),
    ``HALF_OPEN`` (probing), ``ISOLATED`` (held open by hand)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"


@dataclass(frozen=True, slots=True)
class BreakDurationContext:
    """What ``break_duration_generator`` is given when the circuit opens: handled failures and
    failure ratio in the window (for a failed probe: the probe failure, ratio 1.0), and how many
    times in a row it has opened (1 for the first open after a close)."""

    failure_count: int
    failure_ratio: float
    consecutive_opens: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition, as told to listeners: breaker name, old and new state, clock time (seconds)
    and why (``"failure_ratio"``, ``"slow_call_ratio"``, ``"probe_failed"``, ``"break_elapsed"``,
    ``"probes_succeeded"``, ``"isolated: <reason>"``, ``"reset"``)."""

    name: str
    old: CircuitState
    new: CircuitState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitBreakerStats:
    """A snapshot. Window counts cover the last ``sampling_duration`` seconds; ``trips`` counts
    openings from the closed state since creation (a failed probe reopening the circuit is not a
    new trip; see ``consecutive_opens``); ``rejected`` counts calls refused; ``last_failure_at``
    is clock seconds and ``last_failure`` a short description of the error."""

    name: str
    state: CircuitState
    time_in_state: float
    calls: int
    failures: int
    slow_calls: int
    failure_ratio: float
    slow_call_ratio: float
    trips: int
    rejected: int
    consecutive_opens: int
    half_open_in_flight: int
    last_failure: str | None
    last_failure_at: float | None
    break_remaining: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (state as its string value)."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["state"] = self.state.value
        return data


def _default_handled(error: BaseException) -> bool:
    if isinstance(error, StructuredError):
        return error.category not in (ErrorCategory.VALIDATION, ErrorCategory.AUTHENTICATION)
    return isinstance(error, Exception)


def _bad(field_name: str, value: object, rule: str) -> ValidationError:
    return ValidationError(
        f"CircuitBreaker({field_name}={value!r}): {rule}",
        code="invalid_config",
        details={"field": field_name},
    )


def _number(value: object, name: str, *, low: float, high: float = math.inf, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, value, f"must be a number; {hint}")
    number = float(value)
    if not (low <= number <= high) or math.isnan(number):
        raise _bad(name, value, f"must be in [{low:g}, {high:g}]; {hint}")
    return number


def _count(value: object, name: str, not_int: str, too_small: str) -> int:
    """``value`` as an int >= 1 (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, not_int)
    if value < 1:
        raise _bad(name, value, too_small)
    return value


def _break_duration(
    break_duration: float | None, generator: Callable[[BreakDurationContext], float] | None
) -> float:
    """The fixed break (checked), warning when a generator overrides it."""
    if break_duration is not None:
        break_duration = _number(
            break_duration, "break_duration", low=1e-6, hint="seconds, e.g. 5.0"
        )
    if generator is not None:
        if not callable(generator):
            raise _bad("break_duration_generator", generator, "must be callable(ctx) -> seconds")
        if break_duration is not None:
            warnings.warn(
                "CircuitBreaker: both break_duration and break_duration_generator given; "
                "the generator takes precedence",
                UserWarning,
                stacklevel=3,  # CircuitBreaker(...)'s caller
            )
    return break_duration if break_duration is not None else DEFAULT_BREAK_DURATION
