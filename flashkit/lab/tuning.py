"""From what a notebook tuned to a ``flashkit.toml`` that ``flashkit process`` runs with.

>>> values = {**retry_values(explorer.config), **breaker_values(simulator.settings)}
>>> print(what_to_set(retry_code(explorer.config), values))   # the code and the TOML, as Markdown
>>> write_settings("flashkit.toml", values)       # merged into the file if it exists
>>> # flashkit process words.csv --config flashkit.toml   (`flashkit config show` names the file)

Each ``*_values`` function maps a primitive's configuration to ``{"section.field": value}`` of
:class:`flashkit.config.Settings` (:func:`retry_values`, :func:`breaker_values`,
:func:`limit_values`, :func:`cache_values`); each ``*_code`` function writes the constructor
call to paste. Times are seconds, limits per minute, sizes bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flashkit.config import Settings, load_settings
from flashkit.lab.breaker import BreakerSettings
from flashkit.ratelimit import RateLimiter
from flashkit.retry import Jitter, RetryConfig

__all__ = [
    "breaker_code",
    "breaker_values",
    "cache_values",
    "limit_values",
    "retry_code",
    "retry_values",
    "settings_toml",
    "tuned_settings",
    "what_to_set",
    "write_settings",
]


def retry_values(config: RetryConfig) -> dict[str, Any]:
    """The ``[retry]`` settings of a :class:`RetryConfig` (its budget and hooks stay in code;
    ``backoff_from_start`` is not tuned here, so the settings keep their own, on)."""
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
    token bucket is the provider's bucket (its burst, requests; 1 for ``burst=None``, a pacer),
    a sliding window or GCRA the provider's fixed windows (``flashkit process`` spaces requests
    evenly under them: see :func:`flashkit.config.build_limiters`)."""
    values: dict[str, Any] = {}
    if requests is not None:
        values["limits.rpm"] = requests.rate * 60.0 / requests.period
        if requests.algorithm == "token_bucket":
            values["limits.style"] = "token_bucket"
            values["limits.burst"] = float(requests.max_count)  # burst=None: 1, a pacer
        else:
            values["limits.style"] = "fixed_window"
        values["limits.adaptive"] = False
    if tokens is not None:
        values["limits.tpm"] = tokens.rate * 60.0 / tokens.period
    return values


def cache_values(
    compression: Mapping[str, Any] | None = None,
    stampede: Mapping[str, Any] | None = None,
    *,
    ttl: float | None = None,
) -> dict[str, Any]:
    """The ``[cache]`` settings of what notebooks 03 and 05 chose; only what is given is set.

    ``compression``: a row of :func:`flashkit.lab.cache.compression_table` (or any mapping with
    ``codec``, ``level`` (None or NaN: the codec's default), ``threshold`` bytes and
    ``dictionary_size`` bytes, 0 for no dictionary). ``stampede``: :class:`~flashkit.cache.
    CacheService` options (``ttl_jitter``, ``single_flight``, ``early_refresh``, ``beta``: a
    :class:`~flashkit.lab.cache.StampedeResult`'s ``options``). ``ttl``: seconds entries live.
    """
    values: dict[str, Any] = {}
    if compression is not None:
        codec = str(compression["codec"])
        level = compression.get("level")
        missing = level is None or (isinstance(level, float) and math.isnan(level))
        size = int(compression.get("dictionary_size") or 0) if codec == "zstd" else 0
        values |= {
            "cache.codec": codec,
            "cache.level": None if missing or codec == "none" else int(level),  # type: ignore[arg-type]
            "cache.threshold": int(compression.get("threshold", 1024)),
            "cache.dictionary": bool(size),
        }
        if size:
            values["cache.dictionary_size"] = size
    if stampede is not None:
        known = ("ttl_jitter", "single_flight", "early_refresh", "beta")
        unknown = sorted(set(stampede) - set(known))
        if unknown:
            raise ValueError(f"cache_values: {unknown} are not stampede options; use {known}")
        values |= {f"cache.{name}": stampede[name] for name in known if name in stampede}
    if ttl is not None:
        values["cache.ttl"] = float(ttl)
    return values


def retry_code(config: RetryConfig) -> str:
    """The ``RetryConfig(...)`` call of what :func:`retry_values` writes (seconds)."""
    return (
        f"RetryConfig(max_attempts={config.max_attempts}, initial_delay={config.initial_delay!r}, "
        f"max_delay={config.max_delay!r}, exponential_base={config.exponential_base!r}, "
        f"jitter=Jitter.{Jitter(config.jitter).name}, "
        f"max_retry_after={config.max_retry_after!r})"
    )


def breaker_code(settings: BreakerSettings) -> str:
    """The ``CircuitBreaker(...)`` call of the simulator's knobs (seconds); a growing break is
    the generator ``flashkit process`` builds from ``[breaker]``."""
    if settings.growth > 1.0:
        longest = max(settings.max_break, settings.break_duration)
        pause = (
            f"break_duration_generator=lambda ctx: min({longest!r}, {settings.break_duration!r}"
            f" * {settings.growth!r} ** (ctx.consecutive_opens - 1))"
        )
    else:
        pause = f"break_duration={settings.break_duration!r}"
    return (
        f"CircuitBreaker(failure_threshold={settings.failure_threshold!r}, "
        f"min_throughput={settings.min_throughput}, "
        f"sampling_duration={settings.sampling_duration!r}, {pause}, "
        f"half_open_max_calls={settings.half_open_max_calls})"
    )


def settings_toml(values: Mapping[str, Any]) -> str:
    """``values`` as the ``flashkit.toml`` text :func:`write_settings` would add (checked)."""
    return tuned_settings(values).to_toml(only_changed=True)


def what_to_set(code: str | Sequence[str], values: Mapping[str, Any]) -> str:
    """Markdown: the constructor call(s) to paste, then the same values as ``flashkit.toml``."""
    calls = "\n".join([code] if isinstance(code, str) else code)
    return (
        f"In code:\n\n```python\n{calls}\n```\n\nIn `flashkit.toml` (`flashkit process WORDS.csv "
        f"--config flashkit.toml` runs with it; `write_settings` merges it into a file):\n\n"
        f"```toml\n{settings_toml(values)}```"
    )


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
