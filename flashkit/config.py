"""One :class:`Settings` object for a flashcard run, and where each value came from.

>>> settings = load_settings(config_file="flashkit.toml", overrides={"run.batch_size": 20})
>>> settings.retry.max_attempts, settings.source("retry.max_attempts")
(10, 'default')
>>> client = build_client(settings, api_key="sk-...")          # the tuned policy, composed

Values resolve in this order, later winning: the built-in defaults (the *tuned* policy, the
one ``benchmarks/success_metrics.ipynb`` calls *after*) < ``flashkit.toml`` in the working
directory or ``config_file`` < ``FLASHKIT_*`` environment variables < ``overrides`` (the command
line). ``FLASHKIT_SECTION_FIELD`` sets ``section.field`` (``FLASHKIT_RETRY_MAX_ATTEMPTS=5``);
the rollout flags are ``FLASHKIT_POLICY=original|tuned`` (``original``: the original
pipeline's parameters, the rollback path), ``FLASHKIT_BREAKER=off``,
``FLASHKIT_ADAPTIVE_LIMIT=off``, ``FLASHKIT_HEDGING=off`` and ``FLASHKIT_ADAPTIVE_TIMEOUT=off``.
Times are seconds, limits are per minute.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import httpx2

from flashkit._settings import (
    CONFIG_FILE,
    BreakerSettings,
    CacheSettings,
    HedgingSettings,
    LimitSettings,
    RetrySettings,
    RunSettings,
    Settings,
    TelemetrySettings,
    load_settings,
    original_settings,
)
from flashkit.breaker import CircuitBreaker
from flashkit.budget import RetryBudget
from flashkit.cache import CacheService, CompressedCache, RedisStore, SQLStore, Store
from flashkit.client import ChatCache, FromLatency, LLMClient, breaker_handles
from flashkit.clock import Clock
from flashkit.errors import ValidationError
from flashkit.ratelimit import AdaptiveRateLimiter, Limiter, RateLimiter, RedisRateLimiter
from flashkit.retry import Jitter, RetryConfig, RetryEvent

__all__ = [
    "CONFIG_FILE",
    "BreakerSettings",
    "CacheSettings",
    "HedgingSettings",
    "LimitSettings",
    "RetrySettings",
    "RunSettings",
    "Settings",
    "TelemetrySettings",
    "build_cache",
    "build_client",
    "build_limiters",
    "load_settings",
    "original_settings",
]


# --- building the client ------------------------------------------------------------------------
def _style(settings: Settings) -> Literal["token_bucket", "fixed_window"]:
    style = settings.limits.style
    if style != "auto":
        return style
    base = settings.run.base_url or ""
    anthropic = settings.run.provider == "anthropic" or "anthropic" in base
    return "token_bucket" if anthropic else "fixed_window"


def _request_limiter(
    settings: Settings, clock: Clock | None, redis_url: str | None, key_prefix: str
) -> Limiter | None:
    limits = settings.limits
    if limits.rpm is None:
        if redis_url is not None:
            raise ValidationError(
                "--redis shares the provider's request limit between processes, so it must be "
                "known: set limits.rpm (e.g. FLASHKIT_LIMITS_RPM=600)",
                code="invalid_config",
                details={"setting": "limits.rpm"},
            )
        if not limits.adaptive:
            return None
        return AdaptiveRateLimiter(initial_rate=60.0, period=60.0, clock=clock, name="requests")
    bucket = _style(settings) == "token_bucket"
    burst = limits.burst if limits.burst is not None else limits.rpm
    burst = max(1.0, burst - max(1.0, limits.rpm / 60.0 * limits.margin)) if bucket else burst
    if redis_url is not None:
        return RedisRateLimiter(
            redis_url,
            limits.rpm,
            60.0,
            algorithm="token_bucket" if bucket else "gcra",
            burst=burst if bucket else None,
            key_prefix=f"{key_prefix}:requests",
            name="requests",
            clock=clock,
        )
    if bucket:  # the provider lets a minute's worth go at once: mirror its bucket, burst included
        return RateLimiter(
            limits.rpm, 60.0, algorithm="token_bucket", burst=burst, clock=clock, name="requests"
        )
    # Windows: evenly spaced, so a burst never meets a window (or the token limit) all at once.
    return RateLimiter(limits.rpm, 60.0, algorithm="gcra", clock=clock, name="requests")


def _token_limiter(
    settings: Settings, clock: Clock | None, redis_url: str | None, key_prefix: str
) -> Limiter | None:
    tpm = settings.limits.tpm
    if tpm is None:
        return None
    if redis_url is not None:
        return RedisRateLimiter(
            redis_url, tpm, 60.0, key_prefix=f"{key_prefix}:tokens", name="tokens", clock=clock
        )
    if _style(settings) == "token_bucket":
        # The provider's own rule: a minute's worth at once (less ``margin`` seconds of refill),
        # each call charged its estimate and settled at completion, any call's unused tokens
        # back at once. A sliding window would hold every call's estimate for a full minute
        # (measured on llm_realistic: 1.14-1.18x the ideal completion time against 1.0x).
        burst = max(1.0, tpm - tpm / 60.0 * settings.limits.margin)
        return RateLimiter(
            tpm,
            60.0,
            algorithm="token_bucket",
            burst=burst,
            refunds="immediate",
            clock=clock,
            name="tokens",
        )
    # Per-minute windows counting max_tokens as spent (OpenAI): a sliding window, never more
    # than tpm in any minute, whose refunds of unused max_tokens are exact for every grant.
    return RateLimiter(tpm, 60.0, clock=clock, name="tokens")


def build_limiters(
    settings: Settings, *, clock: Clock | None = None
) -> tuple[Limiter | None, Limiter | None]:
    """The (requests, tokens) limiters :func:`build_client` gives the client (None: no limit).
    ``limits.rpm``: a token bucket for a ``token_bucket`` provider (``limits.burst`` less
    ``limits.margin`` seconds of refill), else GCRA, evenly spaced; unknown, an adaptive one when
    ``limits.adaptive``. ``limits.tpm``: for a ``token_bucket`` provider a bucket like its
    own, settled at once (``refunds="immediate"``), else a sliding window. Shared through
    ``run.redis``."""
    run = settings.run
    host = httpx2.URL(run.base_url).host if run.base_url else run.provider
    key_prefix = f"flashkit:rl:{host}"
    return (
        _request_limiter(settings, clock, run.redis, key_prefix),
        _token_limiter(settings, clock, run.redis, key_prefix),
    )


def _budget(settings: Settings, clock: Clock | None) -> RetryBudget | Literal[False]:
    kind = settings.retry.budget
    if kind == "none":
        return False
    if kind == "grpc":
        return RetryBudget.grpc()
    if kind == "aws":
        return RetryBudget.aws()
    return RetryBudget.finagle(clock=clock)


def _attempt_timeout(hedging: HedgingSettings) -> float | FromLatency:
    ceiling = hedging.attempt_timeout
    if not hedging.adaptive_timeout:
        return ceiling
    return FromLatency(
        hedging.timeout_quantile,
        factor=hedging.timeout_factor,
        floor=min(hedging.timeout_floor, ceiling),
        ceiling=ceiling,
    )


def _hedge_after(hedging: HedgingSettings) -> float | FromLatency | None:
    if not hedging.hedge:
        return None
    if hedging.after is not None:
        return hedging.after
    return FromLatency(hedging.hedge_quantile, floor=hedging.hedge_floor)


def build_client(
    settings: Settings,
    *,
    api_key: str | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    cache: ChatCache | None = None,
    name: str = "llm",
) -> LLMClient:
    """The :class:`~flashkit.client.LLMClient` the settings describe: provider, limiters sized
    to the provider's limits (a request limiter learning an unknown limit when
    ``limits.adaptive``; shared through ``run.redis`` when set), breaker, retry with its budget,
    timeouts and hedging. ``transport`` replaces the network (the simulator's, in tests and
    virtual time); ``rng`` seeds the jitter; ``on_retry`` is told of every failed attempt that
    is retried (e.g. to count 429s); ``cache`` answers repeated requests (:func:`build_cache`).
    Timeouts and hedges follow recent attempts (``hedging.adaptive_timeout``,
    ``hedging.hedge``: :class:`~flashkit.client.FromLatency`) unless switched off."""
    run, retry, breaker = settings.run, settings.retry, settings.breaker
    requests, tokens = build_limiters(settings, clock=clock)
    budget = _budget(settings, clock)
    config = RetryConfig(
        retry.max_attempts,
        retry.initial_delay,
        max(retry.max_delay, retry.initial_delay),
        retry.multiplier,
        Jitter(retry.jitter),
        respect_retry_after=retry.respect_retry_after,
        max_retry_after=retry.max_retry_after,
        backoff_from_start=retry.backoff_from_start,
        deadline=settings.hedging.deadline,
        on_retry=on_retry,
        rng=rng if rng is not None else random.Random(),
    )
    circuit: CircuitBreaker | Literal[False] = False
    if breaker.enabled:
        first, longest = (
            breaker.break_duration,
            max(breaker.max_break_duration, breaker.break_duration),
        )
        circuit = CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            min_throughput=breaker.min_throughput,
            sampling_duration=breaker.sampling_duration,
            break_duration_generator=lambda ctx: min(
                longest, first * breaker.growth ** (ctx.consecutive_opens - 1)
            ),
            half_open_max_calls=breaker.half_open_max_calls,
            handled=breaker_handles,
            name=name,
            clock=clock,
        )
    return LLMClient(
        provider=run.provider,
        base_url=run.base_url,
        api_key=api_key,
        model=run.model,
        max_tokens=run.max_tokens,
        temperature=run.temperature,
        transport=transport,
        limiter=requests,
        token_limiter=tokens,
        # fixed windows count max_tokens as spent: refunds would run ahead of the provider
        token_refunds=_style(settings) == "token_bucket",
        limiter_timeout=settings.limits.timeout,
        breaker=circuit,
        breaker_wait=retry.breaker_wait,
        retry=config,
        budget=budget,
        attempt_timeout=_attempt_timeout(settings.hedging),
        hedge_after=_hedge_after(settings.hedging),
        max_in_flight=run.batch_size,
        cache=cache,
        clock=clock,
        rng=rng,
        name=name,
    )


def build_cache(settings: Settings, *, store: Store | None = None) -> CacheService | None:
    """The answers cache the settings describe, or None when ``cache.enabled`` is off: a
    :class:`~flashkit.cache.CompressedCache` with every other ``cache.*`` setting, over
    ``store``, else a :class:`~flashkit.cache.RedisStore` for a ``redis://`` URL, else an
    :class:`~flashkit.cache.SQLStore` in ``cache.url`` or, by default, the state database
    (``run.db``). Close its store when done (``cache.store.close()``)."""
    chosen = settings.cache
    if not chosen.enabled:
        return None
    if store is None:
        url = chosen.url or settings.run.db
        redis = url.startswith(("redis://", "rediss://", "unix://"))
        store = RedisStore(url, prefix="flashkit:cache:") if redis else SQLStore(url)
    zstd = chosen.codec == "zstd"
    return CompressedCache(
        store, codec=chosen.codec, level=chosen.level if chosen.codec != "none" else None,
        threshold=chosen.threshold, dictionary="auto" if chosen.dictionary and zstd else None,
        dictionary_size=chosen.dictionary_size, ttl=chosen.ttl, ttl_jitter=chosen.ttl_jitter,
        single_flight=chosen.single_flight, early_refresh=chosen.early_refresh,
        beta=chosen.beta, namespace="chat", name="answers",
    )  # fmt: skip
