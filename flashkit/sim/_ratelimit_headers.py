"""Rate-limit headers as the providers send them: OpenAI's ``x-ratelimit-{limit,remaining,reset}-
{requests,tokens}`` (resets as durations like ``6m0s``) and Anthropic's ``anthropic-ratelimit-
{requests,tokens}-{limit,remaining,reset}`` (resets as RFC 3339 times)."""

from __future__ import annotations

import datetime as _dt
import math

from flashkit.sim._limits import LimitView

__all__ = ["format_duration", "limit_headers", "number", "rfc3339"]


def number(value: float) -> str:
    """A limit or count as a header shows it: ``60``, ``0.5``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``7.66s``, ``6m0s``, ``1h2m3s`` (rounded up to
    whole milliseconds)."""
    if seconds <= 0.0:
        return "0s"
    millis = math.ceil(seconds * 1000.0 - 1e-6)
    if millis < 1000:
        return f"{max(1, millis)}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") or "0"
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{secs}s"


def rfc3339(wall: float) -> str:
    """Unix seconds as an RFC 3339 UTC time, rounded up to the second."""
    moment = _dt.datetime.fromtimestamp(math.ceil(wall - 1e-6), _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def limit_headers(
    style: str, requests: LimitView | None, tokens: LimitView | None, wall: float
) -> dict[str, str]:
    """The headers of ``style`` (``"openai"``, ``"anthropic"``; anything else: none) for the
    limits' views; ``wall``: Unix seconds now (for Anthropic's reset times)."""
    headers: dict[str, str] = {}
    if style == "openai":
        for name, view in (("requests", requests), ("tokens", tokens)):
            if view is not None:
                headers[f"x-ratelimit-limit-{name}"] = number(view.limit)
                headers[f"x-ratelimit-remaining-{name}"] = number(view.remaining)
                headers[f"x-ratelimit-reset-{name}"] = format_duration(view.reset)
    elif style == "anthropic":
        for name, view in (("requests", requests), ("tokens", tokens)):
            if view is not None:
                headers[f"anthropic-ratelimit-{name}-limit"] = number(view.limit)
                headers[f"anthropic-ratelimit-{name}-remaining"] = number(view.remaining)
                headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(wall + view.reset)
    return headers
