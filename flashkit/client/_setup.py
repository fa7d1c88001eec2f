"""How an :class:`~flashkit.client.LLMClient` is put together from its arguments: the key (and
how it is scrubbed from errors), checked settings, its HTTP client, and the default breaker and
retry policy."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx2

from flashkit.breaker import CircuitBreaker, CircuitState
from flashkit.budget import RetryBudget
from flashkit.client._types import Provider, breaker_handles
from flashkit.clock import Clock
from flashkit.errors import AuthenticationError, StructuredError, ValidationError
from flashkit.retry import Jitter, RetryConfig, RetryEvent


def api_key_for(preset: Provider, api_key: str | None) -> str:
    """The key to send: ``api_key``, else the first of the provider's variables that is set;
    raises when the provider needs one and there is none."""
    key = api_key
    if key is None:
        for variable in preset.key_env:
            if found := os.environ.get(variable):
                key = found
                break
    if not key and preset.needs_key:
        raise AuthenticationError(
            f"LLMClient(provider={preset.name!r}): no API key configured; pass api_key=... or "
            f"set one of {', '.join(preset.key_env)} (provider='sim' needs none)",
            code="missing_api_key",
        )
    if not key and preset.name == "sim":
        key = "sk-sim-local"  # the simulator wants some bearer token; any will do
    return key or ""


_DEFAULT_CONNECTIONS: Final = 100  # httpx2's default pool size, when the concurrency is unbounded


def http_client(
    base_url: str,
    transport: httpx2.AsyncBaseTransport | None,
    headers: Mapping[str, str],
    *,
    timeout: float | None,
    in_flight: int | None,
    hedging: bool,
) -> httpx2.AsyncClient:
    """The client's HTTP layer: an ``httpx2.AsyncClient`` on ``base_url`` sending ``headers``
    with every request, ``timeout`` seconds for each phase (connect, read, write, pool; None:
    unbounded), and a connection pool sized to the concurrency: ``in_flight`` attempts at once
    (None: unbounded, httpx2's 100), twice that with ``hedging`` (an attempt and its copy), every
    connection kept alive between requests (httpx2 keeps 20 by default: above that, each
    request would open a new connection)."""
    connections = _DEFAULT_CONNECTIONS if in_flight is None else in_flight * (2 if hedging else 1)
    return httpx2.AsyncClient(
        base_url=base_url,
        transport=transport,
        headers=dict(headers),
        timeout=httpx2.Timeout(timeout),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def scrub_secret(error: BaseException, secret: str) -> None:
    """Replace ``secret`` with ``[REDACTED]`` in ``error`` and everything chained to it: its
    message, details and arguments."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StructuredError):
            if secret in current.message:
                current.message = current.message.replace(secret, "[REDACTED]")
            if current.details and secret in json.dumps(current.details, default=str):
                current.details = json.loads(
                    json.dumps(current.details, default=str).replace(secret, "[REDACTED]")
                )
        if any(secret in str(arg) for arg in current.args):
            current.args = tuple(
                str(arg).replace(secret, "[REDACTED]") if secret in str(arg) else arg
                for arg in current.args
            )
        current = current.__cause__ or current.__context__


def check_seconds(**values: float | None) -> None:
    """Each value is seconds > 0 or None."""
    for label, value in values.items():
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ValidationError(
                f"LLMClient({label}={value!r}): must be seconds > 0 or None",
                code="invalid_config",
                details={"field": label},
            )


def check_whole(label: str, value: object, example: str, *, optional: bool = False) -> None:
    """``value`` is an int >= 1 (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            f"LLMClient({label}={value!r}): must be an int >= 1{' or None' if optional else ''}"
            f", e.g. {example}",
            code="invalid_config",
            details={"field": label},
        )


def default_breaker(name: str, clock: Clock) -> CircuitBreaker:
    """50 % failures of at least 20 calls in 30 s open it for 5 s; 429s are not failures."""
    return CircuitBreaker(
        failure_threshold=0.5,
        min_throughput=20,
        sampling_duration=30.0,
        break_duration=5.0,
        handled=breaker_handles,
        name=name,
        clock=clock,
    )


def retry_policy(
    retry: RetryConfig | None,
    *,
    budget: RetryBudget | None,
    clock: Clock,
    deadline: float | None,
    rng: random.Random | None,
    on_retry: Callable[[RetryEvent], None],
    on_giveup: Callable[[RetryEvent], None],
) -> RetryConfig:
    """The user's ``retry`` with the client's clock, budget and hooks, or the default: 5
    attempts, full jitter from 0.5 s up to 30 s, ``retry-after`` honoured up to 120 s."""
    if retry is None:
        config = RetryConfig(
            5,
            0.5,
            30.0,
            2.0,
            Jitter.FULL,
            deadline=deadline,
            max_retry_after=120.0,
            budget=budget,
            clock=clock,
            on_retry=on_retry,
            on_giveup=on_giveup,
        )
        return config if rng is None else dataclasses.replace(config, rng=rng)
    changes: dict[str, Any] = {
        "rng": rng if rng is not None else retry.rng,
        "budget": budget,
        "clock": clock,
        "deadline": deadline if deadline is not None else retry.deadline,
        "attempt_timeout": None,  # applied by the client to the HTTP exchange only
        "on_retry": _chain(on_retry, retry.on_retry),
        "on_giveup": _chain(on_giveup, retry.on_giveup),
    }
    return dataclasses.replace(retry, **changes)


def _chain(
    first: Callable[[RetryEvent], None], second: Callable[[RetryEvent], None] | None
) -> Callable[[RetryEvent], None]:
    if second is None:
        return first

    def both(event: RetryEvent) -> None:
        first(event)
        second(event)

    return both


async def wait_out_breaker(
    breaker: CircuitBreaker, clock: Clock, *, waited: float, limit: float
) -> float:
    """Before an attempt takes a slot, wait while ``breaker`` would reject it: open (until its
    break ends) or half-open with its probes out (looking again every second), for at most
    ``limit`` seconds per call in all (``waited`` of them spent already). Returns the seconds
    waited so far. Such an attempt never reached the upstream: it costs no attempt and no retry
    token (past the limit the breaker rejects it as before)."""
    while True:
        stats = breaker.stats
        if stats.state is CircuitState.OPEN:
            wait = stats.break_remaining
        elif stats.state is CircuitState.HALF_OPEN:
            if stats.half_open_in_flight < breaker.half_open_max_calls:
                return waited  # this attempt may be the probe
            wait = 1.0
        else:
            return waited  # closed, or isolated (rejected at once)
        if wait <= 0.0 or waited + wait > limit:
            return waited
        waited += wait
        await clock.sleep(wait)
