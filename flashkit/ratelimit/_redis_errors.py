"""What a Redis limiter raises, and what a redis-py error means: an outage (the server does not
answer: fail closed or fall back) or a mistake (credentials, permissions, a foreign value under
the limiter's keys: not retryable). URLs and messages never carry credentials.
"""

from __future__ import annotations

import functools
import re
from typing import Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from flashkit.errors import RateLimitError, redact

__all__ = [
    "RedisErrors",
    "redis_errors",
    "safe_url",
    "scrub",
    "script_error",
    "timeout_error",
    "unavailable_error",
]

_CREDENTIALS: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^@/\s]*@")


def safe_url(url: str) -> str:
    """``url`` without user, password or query (which may hold ``password=``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if parts.username is not None or parts.password is not None:
            netloc = f"***@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return scrub(url.split("?", 1)[0])


def scrub(text: str) -> str:
    """``text`` with any ``scheme://user:password@`` and known secrets masked."""
    return redact(_CREDENTIALS.sub(r"\1***@", text))


def _describe(error: BaseException) -> str:
    return scrub(f"{type(error).__name__}: {error}")


class RedisErrors(NamedTuple):
    """The redis-py exception classes, by what they mean here (redis is imported on first use:
    ``flashkit`` itself does not need the ``redis`` extra)."""

    any: tuple[type[BaseException], ...]  # every failure of a call
    unavailable: tuple[type[BaseException], ...]  # the server does not answer: an outage
    connection: tuple[type[BaseException], ...]
    config: tuple[type[BaseException], ...]  # credentials or permissions: a mistake
    no_script: type[BaseException]

    def broken(self, error: BaseException) -> bool:
        """A broken connection (redis-py has closed it; the next send reconnects)."""
        return isinstance(error, self.connection) and not isinstance(error, self.config)


@functools.cache
def redis_errors() -> RedisErrors:
    """The classes (imported when a limiter is built: a missing extra shows at once)."""
    try:
        import redis.exceptions as rex
    except ImportError as error:
        hint = "RedisRateLimiter needs redis-py: pip install 'flashkit[redis]'"
        raise ImportError(hint, name=error.name) from error
    return RedisErrors(
        any=(rex.RedisError, OSError),
        unavailable=(
            rex.ConnectionError,  # also BusyLoadingError (a restarted server loading)
            rex.TimeoutError,
            rex.ReadOnlyError,  # a replica after a failover
            rex.TryAgainError,
            rex.ClusterDownError,  # also MasterDownError
            OSError,
        ),
        connection=(rex.ConnectionError,),
        config=(
            rex.AuthenticationError,  # (a ConnectionError subclass: checked first)
            rex.AuthorizationError,
            rex.AuthenticationWrongNumberOfArgsError,
            rex.NoPermissionError,
        ),
        no_script=rex.NoScriptError,
    )


def unavailable_error(
    name: str, url: str, error: BaseException, retry_after: float
) -> RateLimitError:
    """Redis does not answer and the limiter fails closed (retryable after ``retry_after`` s)."""
    return RateLimitError(
        f"{name}: the rate limiter's Redis at {url} is unavailable ({_describe(error)}); "
        "failing closed: nothing is admitted until it answers. Pass "
        "on_unavailable='local_fallback' to admit on a local share of the limit meanwhile",
        code="limiter_unavailable",
        retryable=True,
        retry_after=retry_after,
        details={"url": url, "limiter": name},
    )


def script_error(name: str, url: str, error: BaseException, hint: str) -> RateLimitError:
    """A script call failed for a reason waiting will not fix (not retryable)."""
    return RateLimitError(
        f"{name}: the rate limit script failed on Redis at {url} ({_describe(error)}); {hint}",
        code="limiter_error",
        retryable=False,
        details={"url": url, "limiter": name},
    )


def timeout_error(
    name: str, key: str, n: float, wait: float, timeout: float | None
) -> RateLimitError:
    """``n`` units would wait ``wait`` s, more than ``timeout`` allows."""
    return RateLimitError(
        f"{name}: {n:g} units for key {key!r} would wait {wait:.3g} s, more than "
        f"timeout={0.0 if timeout is None else timeout:g} s",
        code="timeout",
        details={"key": key, "count": n, "wait": wait},
        retry_after=wait,
    )
