"""The settings of a :class:`~flashkit.ratelimit.RedisRateLimiter`, checked once, and what
follows from them: the confirm-on-wake tolerance and margin, the local fallback's share. Rates
are units per ``period``; times are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, cast

from flashkit.errors import ValidationError
from flashkit.ratelimit._base import ALGORITHMS, Algorithm, check_number
from flashkit.ratelimit._redis_errors import safe_url

__all__ = ["OnUnavailable", "Settings", "parse"]

OnUnavailable = Literal["fail_closed", "local_fallback"]
ON_UNAVAILABLE: Final = ("fail_closed", "local_fallback")
_WHERE: Final = "RedisRateLimiter"
_SCHEMES: Final = ("redis://", "rediss://", "unix://")
# Positive seconds, checked alike: setting -> hint.
_SECONDS: Final = {
    "lease_duration": "seconds, e.g. 0.1",
    "probe_interval": "seconds, e.g. 1.0",
    "socket_timeout": "seconds, e.g. 0.5",
}


@dataclass(frozen=True)
class Settings:
    """A limiter's checked settings (see :class:`~flashkit.ratelimit.RedisRateLimiter`)."""

    url: str  # without credentials: safe in errors, logs and repr (the limiter keeps the other)
    rate: float
    period: float
    algorithm: Algorithm
    burst: float | None
    max_count: float  # the most units one request can ever be granted
    key_prefix: str
    name: str
    on_unavailable: OnUnavailable
    expected_processes: int
    lease: float | None
    lease_duration: float
    probe_interval: float
    socket_timeout: float
    fallback_hold: float
    # Confirm on wake: how late (s) a waiter may use its grant without asking again, and how far
    # within a period (s) a reservation relies on room that may still move (provisional).
    tolerance: float
    margin: float
    # The local fallback: this process's share (units per period), the others' shares (the
    # phantom units kept for them after an outage; sliding window only), the local burst.
    fallback_rate: float
    fallback_units: float
    fallback_burst: float | None

    @property
    def grace(self) -> float:
        """Seconds a grant may still be used after the last contact with the server."""
        return self.lease_duration


def parse(
    redis_url: object,
    rate: object,
    period: object,
    *,
    algorithm: object,
    burst: object,
    key_prefix: object,
    name: object,
    on_unavailable: object,
    expected_processes: object,
    fallback_hold: object,
    probe_interval: object,
    lease: object,
    lease_duration: object,
    socket_timeout: object,
) -> Settings:
    """Check every setting (a :class:`~flashkit.errors.ValidationError` naming the first that is
    wrong, ``code="invalid_config"``) and derive the rest."""
    url = _check_url(redis_url)
    rate_ = check_number(rate, f"{_WHERE} rate", "units per period, e.g. 60")
    period_ = check_number(period, f"{_WHERE} period", "seconds, e.g. 60.0")
    algo = cast(
        Algorithm,
        _check_choice("algorithm", algorithm, ALGORITHMS, "unknown algorithm; use one of"),
    )
    max_count = _max_count(algo, burst, rate_)
    prefix, label = _check_text("key_prefix", key_prefix), _check_text("name", name)
    mode = cast(
        OnUnavailable, _check_choice("on_unavailable", on_unavailable, ON_UNAVAILABLE, "use one of")
    )
    processes = _check_processes(expected_processes)
    given = (
        ("lease_duration", lease_duration),
        ("probe_interval", probe_interval),
        ("socket_timeout", socket_timeout),
    )
    seconds = {key: check_number(value, f"{_WHERE} {key}", _SECONDS[key]) for key, value in given}
    hold = (
        period_ + seconds["lease_duration"]
        if fallback_hold is None
        else check_number(
            fallback_hold, f"{_WHERE} fallback_hold", "seconds, e.g. the period", allow_zero=True
        )
    )
    tolerance = max(2e-3, period_ / 1024)
    share = max(1, math.floor(rate_ / processes))
    return Settings(
        url=safe_url(url),
        rate=rate_,
        period=period_,
        algorithm=algo,
        burst=None if burst is None else max_count,
        max_count=max_count,
        key_prefix=prefix,
        name=label,
        on_unavailable=mode,
        expected_processes=processes,
        lease=_check_lease(lease, algo, rate_),
        fallback_hold=hold,
        tolerance=tolerance,
        margin=max(period_ / 8, 2 * tolerance),
        fallback_rate=float(share),
        fallback_units=(
            float(min(rate_, (processes - 1) * share)) if algo == "sliding_window" else 0.0
        ),
        fallback_burst=None if burst is None else max(1.0, max_count / processes),
        lease_duration=seconds["lease_duration"],
        probe_interval=seconds["probe_interval"],
        socket_timeout=seconds["socket_timeout"],
    )


def _invalid(message: str) -> ValidationError:
    return ValidationError(f"{_WHERE}{message}", code="invalid_config")


def _check_url(redis_url: object) -> str:
    if isinstance(redis_url, str) and redis_url.startswith(_SCHEMES):
        return redis_url
    shown = safe_url(redis_url) if isinstance(redis_url, str) else repr(redis_url)
    raise _invalid(f"(redis_url={shown!r}): use redis://host:port/db, rediss://… or unix://…")


def _check_choice(label: str, value: object, choices: tuple[str, ...], what: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    raise _invalid(f"({label}={value!r}): {what} {list(choices)}")


def _check_text(label: str, value: object) -> str:
    if isinstance(value, str) and value:
        return value
    raise _invalid(f"({label}={value!r}): must be a non-empty string")


def _check_processes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _invalid(
        f"(expected_processes={value!r}): an int >= 1, the number of processes sharing this limit"
    )


def _max_count(algorithm: str, burst: object, rate: float) -> float:
    """The most units one request can be granted: the rate (sliding window) or the bucket."""
    if algorithm == "sliding_window":
        if burst is not None:
            raise _invalid(
                "(algorithm='sliding_window', burst=...): a sliding window admits up to `rate` "
                "units at once already; `burst` applies to 'token_bucket' and 'gcra'"
            )
        return rate
    if burst is None:
        return 1.0
    size = check_number(burst, f"{_WHERE} burst", "the bucket size in units")
    if size < 1.0:
        raise _invalid(f"(burst={burst!r}): the bucket must hold at least one unit")
    return size


def _check_lease(lease: object, algorithm: str, rate: float) -> float | None:
    if lease is None:
        return None
    if algorithm != "sliding_window":
        raise _invalid(f"(lease={lease!r}): leases need algorithm='sliding_window'")
    units = check_number(lease, f"{_WHERE} lease", "units per round trip, e.g. 10")
    if not 1.0 <= units <= rate:
        raise _invalid(f"(lease={lease!r}): a lease takes between 1 and rate={rate:g} units")
    return units
