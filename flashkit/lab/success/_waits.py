"""tenacity's two wait strategies the ``before`` and ``peer`` policies use, drawing from a seeded
``random.Random``: tenacity's own strategies draw from the global ``random``, and its ``wait=``
takes any callable of the retry state, so a run is deterministic from its seed without a patch.
The formulas are tenacity's (9.x), so the waits are the ones tenacity would draw."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

__all__ = ["Attempt", "jittered_exponential", "random_exponential"]


class Attempt(Protocol):
    """What the strategies read of tenacity's ``RetryCallState``."""

    @property
    def attempt_number(self) -> int: ...


def jittered_exponential(
    rng: random.Random, *, initial: float = 1.0, maximum: float = 10.0, jitter: float = 1.0
) -> Callable[[Attempt], float]:
    """``wait_exponential_jitter(initial, max, jitter)``: ``initial * 2**(n-1)`` plus
    ``uniform(0, jitter)``, at most ``maximum``."""

    def wait(state: Attempt) -> float:
        drawn = rng.uniform(0, jitter)
        return max(0.0, min(initial * float(2 ** (state.attempt_number - 1)) + drawn, maximum))

    return wait


def random_exponential(
    rng: random.Random, *, minimum: float = 1.0, maximum: float = 60.0
) -> Callable[[Attempt], float]:
    """``wait_random_exponential(min, max)`` (full jitter): ``uniform(minimum, high)`` where
    ``high`` is ``2**(n-1)`` kept within ``[minimum, maximum]``."""

    def wait(state: Attempt) -> float:
        high = max(minimum, min(float(2 ** (state.attempt_number - 1)), maximum))
        return rng.uniform(minimum, high)

    return wait
