"""classify() and friends read httpx (0.x) objects exactly as httpx2's.

flashkit is built on httpx2 and never imports httpx; users still on httpx pass its responses and
exceptions to :func:`classify`, :func:`is_retryable`, :func:`retry_after_of`, the rate-limit
header parser and :meth:`AdaptiveRateLimiter.observe`. Every case here is built twice, once from
each library, and must give the same answer (that flashkit runs without httpx installed at all:
``tests/test_no_extras.py``, where httpx, a bench extra, is blocked).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

from flashkit._headers import parse_rate_limit_headers, retry_after_seconds
from flashkit.clock import VirtualClock
from flashkit.errors import (
    ErrorCategory,
    RateLimitError,
    StructuredError,
    classify,
    is_retryable,
    retry_after_of,
)
from flashkit.ratelimit import AdaptiveRateLimiter

URL = "https://api.example.com/v1/chat/completions"
LIBRARIES = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]
RATE_LIMITED = {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}


def response(lib: ModuleType, status: int, **kwargs: Any) -> Any:
    return lib.Response(status, request=lib.Request("POST", URL), **kwargs)


def exceptions(lib: ModuleType) -> dict[str, BaseException]:
    """One of each kind classify tells apart, from ``lib``."""
    request = lib.Request("POST", URL)
    limited = response(lib, 429, headers={"retry-after": "3"}, json=RATE_LIMITED)
    return {
        "status_429": lib.HTTPStatusError("429", request=request, response=limited),
        "connect": lib.ConnectError("refused", request=request),
        "read": lib.ReadError("reset by peer", request=request),
        "protocol": lib.RemoteProtocolError("server disconnected", request=request),
        "read_timeout": lib.ReadTimeout("read timed out", request=request),
        "pool_timeout": lib.PoolTimeout("pool exhausted", request=request),
        "unsupported": lib.UnsupportedProtocol("ftp://", request=request),
        "local_protocol": lib.LocalProtocolError("bad header", request=request),
        "decoding": lib.DecodingError("bad gzip", request=request),
    }


def answers(lib: ModuleType) -> dict[str, Any]:
    """Responses classify tells apart, from ``lib``."""
    return {
        "ok": response(lib, 200, json={"choices": []}),
        "rate_limited": response(lib, 429, headers={"retry-after": "2"}, json=RATE_LIMITED),
        "rate_limited_ms": response(lib, 429, headers={"retry-after-ms": "1500"}),
        "quota": response(lib, 429, json={"error": {"message": "You exceeded your quota"}}),
        "reset_headers": response(
            lib,
            429,
            headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"},
        ),
        "unauthorized": response(lib, 401, json={"error": {"message": "bad key"}}),
        "overloaded": response(
            lib, 529, json={"type": "error", "error": {"type": "overloaded_error"}}
        ),
        "server_error": response(lib, 503, content=b"upstream down", headers={"x-request-id": "r"}),
        "should_not_retry": response(lib, 500, headers={"x-should-retry": "false"}),
    }


def summary(error: StructuredError | None) -> Any:
    """What an answer of classify says, without the library-specific exception it wraps."""
    if error is None:
        return None
    return (
        type(error).__name__,
        error.category,
        error.code,
        error.retryable,
        error.retry_after,
        {k: v for k, v in error.details.items() if k != "exception"},
        str(error),
    )


@pytest.mark.parametrize("case", sorted(answers(httpx2)))
def test_responses_classify_alike(case: str) -> None:
    """Each httpx response is classified as the same httpx2 response is."""
    assert summary(classify(answers(httpx)[case])) == summary(classify(answers(httpx2)[case]))


@pytest.mark.parametrize("case", sorted(exceptions(httpx2)))
def test_exceptions_classify_alike(case: str) -> None:
    """Each httpx exception is classified as the same httpx2 one: category, code, retryable,
    retry-after; the original exception is kept."""
    old, new = exceptions(httpx)[case], exceptions(httpx2)[case]
    assert summary(classify(old)) == summary(classify(new))
    classified = classify(old)
    assert classified is not None
    assert classified.original_exception is old
    assert is_retryable(old) == is_retryable(new) == classified.retryable
    assert retry_after_of(old) == retry_after_of(new)


@pytest.mark.parametrize("lib", LIBRARIES)
def test_what_each_kind_becomes(lib: ModuleType) -> None:
    """The expected category and code, for both libraries (not only equal to each other)."""
    codes = {
        name: (error.category, error.code, error.retryable)
        for name, exc in exceptions(lib).items()
        if (error := classify(exc)) is not None
    }
    assert codes == {
        "status_429": (ErrorCategory.RATE_LIMIT, "rate_limited", True),
        "connect": (ErrorCategory.EXTERNAL_SERVICE, "connection_error", True),
        "read": (ErrorCategory.EXTERNAL_SERVICE, "connection_error", True),
        "protocol": (ErrorCategory.EXTERNAL_SERVICE, "connection_error", True),
        "read_timeout": (ErrorCategory.EXTERNAL_SERVICE, "timeout", True),
        "pool_timeout": (ErrorCategory.EXTERNAL_SERVICE, "timeout", True),
        "unsupported": (ErrorCategory.VALIDATION, "invalid_request", False),
        "local_protocol": (ErrorCategory.VALIDATION, "invalid_request", False),
        "decoding": (ErrorCategory.EXTERNAL_SERVICE, "malformed_response", True),
    }
    limited = classify(response(lib, 429, headers={"retry-after": "2"}, json=RATE_LIMITED))
    assert isinstance(limited, RateLimitError)
    assert limited.retry_after == 2.0
    assert limited.details["url"] == URL
    assert retry_after_of(exceptions(lib)["status_429"]) == 3.0


@pytest.mark.parametrize("lib", LIBRARIES)
def test_a_subclass_is_read_as_its_library_class(lib: ModuleType) -> None:
    """A user's subclass of a library exception is classified by the class it derives from."""
    request = lib.Request("POST", URL)

    class GatewayReset(lib.ReadError):  # type: ignore[misc,name-defined]
        pass

    error = classify(GatewayReset("reset", request=request))
    assert error is not None
    assert (error.code, error.retryable) == ("connection_error", True)


@pytest.mark.parametrize("lib", LIBRARIES)
def test_a_body_that_cannot_be_read_is_classified_by_status(lib: ModuleType) -> None:
    """A streamed error body whose read fails (the library's error) leaves the status to speak."""

    class BrokenSync(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Any:
            raise lib.ReadError("reset mid-body")

    answer = lib.Response(503, stream=BrokenSync(), request=lib.Request("POST", URL))
    error = classify(answer)
    assert error is not None
    assert (error.code, error.retryable) == ("server_error_503", True)


class Unrelated(Exception):
    """An exception from neither library whose name is one of theirs."""


class ReadTimeout(Exception):  # the same name as httpx's, another module: not httpx's
    pass


def test_names_count_only_from_the_libraries() -> None:
    """A class merely named like an httpx class is an ordinary exception."""
    error = classify(ReadTimeout("not httpx"))
    assert error is not None
    assert error.code == "unexpected_error"
    assert classify(Unrelated("x")).code == "unexpected_error"  # type: ignore[union-attr]


@pytest.mark.parametrize("lib", LIBRARIES)
def test_rate_limit_headers_from_either_library(lib: ModuleType) -> None:
    """The header parser and retry-after reader take either library's Headers as they are."""
    headers = lib.Headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "retry-after": "4",
        }
    )
    parsed = parse_rate_limit_headers(headers)
    assert parsed.requests is not None
    assert (parsed.requests.limit, parsed.requests.remaining, parsed.requests.reset) == (
        60.0,
        0.0,
        1.0,
    )
    assert retry_after_seconds(headers) == 4.0


@pytest.mark.parametrize("lib", LIBRARIES)
def test_adaptive_limiter_observes_either_library(lib: ModuleType) -> None:
    """AdaptiveRateLimiter.observe learns from either library's response: a 429 with its
    retry-after blocks the limiter, as it does for httpx2."""
    limiter = AdaptiveRateLimiter(initial_rate=60, period=60.0, clock=VirtualClock())
    limiter.observe(response(lib, 429, headers={"retry-after": "5"}))
    stats = limiter.learning
    assert stats.rate_limited == 1
    assert stats.blocked_until == 5.0
    assert not limiter.try_acquire().allowed
