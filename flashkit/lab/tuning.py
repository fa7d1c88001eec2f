"""From what a notebook tuned to a ``flashkit.toml`` that ``flashkit process`` runs with.

>>> values = {**retry_values(explorer.config), **breaker_values(simulator.settings)}
>>> write_settings("flashkit.toml", values)       # merged into the file if it exists
>>> # flashkit process words.csv --config flashkit.toml   (`flashkit config show` names the file)

Each ``*_values`` function maps a primitive's configuration to ``{"section.field": value}`` of
:class:`flashkit.config.Settings`; times are seconds, limits per minute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flashkit.config import Settings, load_settings
from flashkit.lab.breaker import BreakerSettings
from flashkit.ratelimit import RateLimiter
from flashkit.retry import Jitter, RetryConfig

__all__ = ["breaker_values", "limit_values", "retry_values", "tuned_settings", "write_settings"]


def retry_values(config: RetryConfig) -> dict[str, Any]:
    """The ``[retry]`` settings of a :class:`RetryConfig` (its budget and hooks stay in code)."""
    if config.max_delay is None:
        raise ValueError("retry_values: a RetryConfig without max_delay has no flashkit.toml form")
    return {
        "retry.max_attempts": config.max_attempts,
        "retry.initial_delay": float(config.initial_delay),
        "retry.max_delay": float(config.max_delay),
        "retry.multiplier": float(config.exponential_base),
        "retry.jitter": Jitter(config.jitter).value,
        "retry.max_retry_after": float(config.max_retry_after),
        "retry.respect_retry_after": bool(config.respect_retry_after),
    }


def breaker_values(settings: BreakerSettings) -> dict[str, Any]:
    """The ``[breaker]`` settings of the breaker simulator's knobs (growth 1.0: a fixed break)."""
    return {
        "breaker.enabled": True,
        "breaker.failure_threshold": float(settings.failure_threshold),
        "breaker.min_throughput": int(settings.min_throughput),
        "breaker.sampling_duration": float(settings.sampling_duration),
        "breaker.break_duration": float(settings.break_duration),
        "breaker.growth": float(settings.growth),
        "breaker.max_break_duration": float(max(settings.max_break, settings.break_duration)),
        "breaker.half_open_max_calls": int(settings.half_open_max_calls),
    }


def limit_values(
    requests: RateLimiter | None = None, tokens: RateLimiter | None = None
) -> dict[str, Any]:
    """The ``[limits]`` settings mirrored by a requests and a tokens limiter (per minute): a
    token bucket is the provider's bucket (its burst), a window the provider's windows."""
    values: dict[str, Any] = {}
    if requests is not None:
        values["limits.rpm"] = requests.rate * 60.0 / requests.period
        if requests.algorithm == "token_bucket":
            values["limits.style"] = "token_bucket"
            if requests.burst is not None:
                values["limits.burst"] = float(requests.burst)
        else:
            values["limits.style"] = "fixed_window"
        values["limits.adaptive"] = False
    if tokens is not None:
        values["limits.tpm"] = tokens.rate * 60.0 / tokens.period
    return values


def tuned_settings(
    values: Mapping[str, Any], *, base: Settings | None = None, source: str = "notebook"
) -> Settings:
    """``base`` (default: the built-in tuned defaults) with ``values`` set and checked, as
    :class:`~flashkit.config.Settings` would load them."""
    return (base if base is not None else Settings()).replace(values, source)


def write_settings(path: str | Path, values: Mapping[str, Any]) -> Path:
    """Write ``values`` into the settings file at ``path``: what the file already says is kept
    (the environment is not read), these values win, and only settings away from their
    defaults are written. Returns the path; ``flashkit process --config <path>`` runs with it."""
    target = Path(path)
    base = load_settings(config_file=target, environ={}) if target.exists() else Settings()
    settings = tuned_settings(values, base=base, source=str(target))
    target.write_text(settings.to_toml(only_changed=True), encoding="utf-8")
    return target
