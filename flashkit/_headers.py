"""Provider rate-limit headers, parsed in one place (OpenAI, Anthropic, OpenRouter/generic).

:func:`parse_rate_limit_headers` reads what a response says about the caller's limits:

- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are durations
  (``1s``, ``6m0s``, ``12ms``).
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
  reset}``; resets are RFC 3339 instants. ``tokens`` is the most restrictive token limit; when
  only input/output token headers are present, the tighter of the two is used.
- OpenRouter and generic servers: ``x-ratelimit-{limit,remaining,reset}`` (requests); a reset is
  seconds, or an epoch timestamp in seconds or milliseconds.

Times are seconds from the moment of parsing. Reset instants are read against this machine's
clock, or against the response's ``Date`` (the server's clock) when the two differ by more than
2 s: a clock here that is off, or a simulator answering in virtual time. Nothing here raises on
bad input: a header that does not parse is ignored.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import httpx2

from flashkit.errors import (
    _is_http_headers,
    _parse_duration,
    _parse_retry_after,
    _reference_time,
    _rfc3339,
)

if TYPE_CHECKING:  # annotations only: httpx (0.x) need not be installed
    import httpx

__all__ = ["LimitInfo", "RateLimitHeaders", "parse_rate_limit_headers", "retry_after_seconds"]

_ANTHROPIC_TOKENS: Final = ("tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """One limit as a response reports it: ``limit`` units per window, ``remaining`` units now,
    and ``reset`` seconds until it is fully replenished (each None when absent)."""

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None

    @property
    def unit_interval(self) -> float | None:
        """Seconds until one more unit is free, estimated as ``reset / (limit - remaining)``
        (for a continuously refilled bucket: one refill step). None when unknown."""
        if self.reset is None:
            return None
        if self.limit is not None and self.remaining is not None:
            used = self.limit - self.remaining
            if used >= 1:
                return min(self.reset, self.reset / used)
        return self.reset


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The requests and tokens limits a response reports (``None``: not reported)."""

    requests: LimitInfo | None = None
    tokens: LimitInfo | None = None

    def __bool__(self) -> bool:
        return self.requests is not None or self.tokens is not None


_EMPTY: Final = RateLimitHeaders()


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 and math.isfinite(value) else None


def _rfc3339_seconds(raw: str | None, now: _dt.datetime) -> float | None:
    if raw is None:
        return None
    when = _rfc3339(raw)
    if when is None:
        return _number(raw)
    return max(0.0, (when - now).total_seconds())


def _generic_reset(raw: str | None, now: _dt.datetime) -> float | None:
    """Seconds, or an epoch timestamp (s or ms), or a duration like ``1s``."""
    if raw is None:
        return None
    value = _number(raw)
    if value is None:
        return _parse_duration(raw)
    if value > 1e11:  # epoch milliseconds (OpenRouter)
        return max(0.0, value / 1000.0 - now.timestamp())
    if value > 1e9:  # epoch seconds
        return max(0.0, value - now.timestamp())
    return value


def _info(limit: float | None, remaining: float | None, reset: float | None) -> LimitInfo | None:
    if limit is None and remaining is None and reset is None:
        return None
    return LimitInfo(limit, remaining, reset)


def _tighter(a: LimitInfo | None, b: LimitInfo | None) -> LimitInfo | None:
    if a is None:
        return b
    if b is None:
        return a
    ra = a.remaining if a.remaining is not None else math.inf
    rb = b.remaining if b.remaining is not None else math.inf
    return a if ra <= rb else b


def parse_rate_limit_headers(
    headers: httpx2.Headers | httpx.Headers | Mapping[str, str],
    *,
    now: _dt.datetime | None = None,
) -> RateLimitHeaders:
    """The limits ``headers`` report (an empty, falsy :class:`RateLimitHeaders` when none).
    ``headers``: httpx2's or httpx's, or any mapping (read case-insensitively)."""
    if not _is_http_headers(headers):
        headers = httpx2.Headers(headers)
    get = headers.get
    requests: LimitInfo | None = None
    tokens: LimitInfo | None = None
    wall: _dt.datetime | None = now

    def clock() -> _dt.datetime:
        nonlocal wall
        if wall is None:
            wall = _reference_time(get("date"))
        return wall

    # OpenAI
    if (raw := get("x-ratelimit-remaining-requests")) is not None or get(
        "x-ratelimit-limit-requests"
    ) is not None:
        reset = get("x-ratelimit-reset-requests")
        requests = _info(
            _number(get("x-ratelimit-limit-requests")),
            _number(raw),
            _parse_duration(reset) if reset is not None else None,
        )
    if (raw := get("x-ratelimit-remaining-tokens")) is not None or get(
        "x-ratelimit-limit-tokens"
    ) is not None:
        reset = get("x-ratelimit-reset-tokens")
        tokens = _info(
            _number(get("x-ratelimit-limit-tokens")),
            _number(raw),
            _parse_duration(reset) if reset is not None else None,
        )
    # Anthropic
    if requests is None and (
        get("anthropic-ratelimit-requests-remaining") is not None
        or get("anthropic-ratelimit-requests-limit") is not None
    ):
        requests = _info(
            _number(get("anthropic-ratelimit-requests-limit")),
            _number(get("anthropic-ratelimit-requests-remaining")),
            _rfc3339_seconds(get("anthropic-ratelimit-requests-reset"), clock()),
        )
    if tokens is None:
        for kind in _ANTHROPIC_TOKENS:
            prefix = f"anthropic-ratelimit-{kind}-"
            if get(prefix + "remaining") is None and get(prefix + "limit") is None:
                continue
            info = _info(
                _number(get(prefix + "limit")),
                _number(get(prefix + "remaining")),
                _rfc3339_seconds(get(prefix + "reset"), clock()),
            )
            if kind == "tokens":  # already the most restrictive
                tokens = info
                break
            tokens = _tighter(tokens, info)
    # OpenRouter / generic (requests)
    if requests is None and (
        get("x-ratelimit-remaining") is not None or get("x-ratelimit-limit") is not None
    ):
        requests = _info(
            _number(get("x-ratelimit-limit")),
            _number(get("x-ratelimit-remaining")),
            _generic_reset(get("x-ratelimit-reset"), clock()),
        )
    if requests is None and tokens is None:
        return _EMPTY
    return RateLimitHeaders(requests, tokens)


def retry_after_seconds(
    headers: httpx2.Headers | httpx.Headers | Mapping[str, str],
) -> float | None:
    """``retry-after-ms`` / ``retry-after`` (seconds or HTTP-date) in seconds, or None."""
    if not _is_http_headers(headers):
        headers = httpx2.Headers(headers)
    return _parse_retry_after(headers)
