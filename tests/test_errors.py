"""flashkit.errors: StructuredError and its family, redact(), and classify() on real httpx objects.

Every response is a real ``httpx2.Response`` bound to a real ``httpx2.Request``; every transport
failure is a real httpx (or builtin) exception. The bodies are the ones OpenAI, Anthropic and
OpenRouter actually send.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import math
import pickle
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from flashkit._headers import parse_rate_limit_headers
from flashkit.errors import (
    AuthenticationError,
    CacheError,
    CircuitOpenError,
    DatabaseError,
    ErrorCategory,
    ExternalServiceError,
    RateLimitError,
    RetryExhausted,
    StructuredError,
    ValidationError,
    classify,
    is_retryable,
    redact,
    retry_after_of,
)

URL = "https://api.example.com/v1/chat/completions"
UTC = dt.UTC


def make_request(url: str = URL, headers: dict[str, str] | None = None) -> httpx2.Request:
    return httpx2.Request("POST", url, headers=headers)


def make_response(
    status: int,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    request: httpx2.Request | None = None,
) -> httpx2.Response:
    request = request if request is not None else make_request()
    if json_body is not None:
        return httpx2.Response(status, headers=headers, json=json_body, request=request)
    return httpx2.Response(status, headers=headers, content=content or b"", request=request)


def openai_error(message: str, *, type_: str | None = None, code: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_error(type_: str, message: str, **extra: Any) -> Any:
    return {"type": "error", "error": {"type": type_, "message": message, **extra}}


def http_date_in(seconds: float) -> str:
    when = dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)
    return email.utils.format_datetime(when, usegmt=True)


def rfc3339_in(seconds: float) -> str:
    when = dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat().replace("+00:00", "Z")


OPENAI_QUOTA = openai_error(
    "You exceeded your current quota, please check your plan and billing details.",
    type_="insufficient_quota",
    code="insufficient_quota",
)
# OpenAI's ordinary free-tier 429: a busy minute whose text links to the billing page.
OPENAI_RPM_WITH_BILLING_LINK = openai_error(
    "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more. You can increase your rate "
    "limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing.",
    type_="requests",
    code="rate_limit_exceeded",
)
OPENAI_TOO_LARGE = openai_error(
    "Request too large for gpt-4 in organization org-abc on tokens per min (TPM): Limit 30000, "
    "Requested 45411. The input or output tokens must be reduced in order to run successfully.",
    type_="tokens",
    code="rate_limit_exceeded",
)
OPENAI_CONTEXT = openai_error(
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages.",
    type_="invalid_request_error",
    code="context_length_exceeded",
)
OPENAI_SCHEMA = openai_error(
    "Invalid type for 'messages[0].content': expected one of a string or array, but got an "
    "integer instead.",
    type_="invalid_request_error",
    code="invalid_type",
)
# The spend cap as Anthropic sends it: a rate_limit_error whose details carry the code.
ANTHROPIC_SPEND_CAP = anthropic_error(
    "rate_limit_error",
    "You have reached your API usage limits: your organization has crossed its monthly API "
    "usage threshold.",
    details={"error_code": "enforced_spend_limit_reached"},
)
ANTHROPIC_OVERLOADED = anthropic_error("overloaded_error", "Overloaded")


# --- classify(): responses with a static expectation ----------------------------------------

# (status, headers, json body, expected type, retryable, code, retry_after)
RESPONSE_CASES: list[Any] = [
    pytest.param(
        429, {"retry-after": "7"}, None, RateLimitError, True, "rate_limited", 7.0,
        id="429-retry-after-seconds",
    ),
    pytest.param(
        429, {"retry-after-ms": "1500"}, None, RateLimitError, True, "rate_limited", 1.5,
        id="429-retry-after-ms",
    ),
    pytest.param(
        429, {"retry-after-ms": "1500", "retry-after": "7"}, None, RateLimitError, True,
        "rate_limited", 1.5, id="429-retry-after-ms-wins",
    ),
    pytest.param(
        429, {"retry-after-ms": "soon", "retry-after": "7"}, None, RateLimitError, True,
        "rate_limited", 7.0, id="429-garbage-ms-falls-back-to-seconds",
    ),
    pytest.param(
        429, {"retry-after": "0"}, None, RateLimitError, True, "rate_limited", 0.0,
        id="429-retry-after-zero-is-a-hint",
    ),
    pytest.param(
        429, {"retry-after": "soon"}, None, RateLimitError, True, "rate_limited", None,
        id="429-garbage-retry-after",
    ),
    pytest.param(
        429, {"retry-after": "-5"}, None, RateLimitError, True, "rate_limited", None,
        id="429-negative-retry-after",
    ),
    pytest.param(
        429, {"retry-after": "inf"}, None, RateLimitError, True, "rate_limited", None,
        id="429-infinite-retry-after",
    ),
    pytest.param(
        429, {"retry-after": "nan"}, None, RateLimitError, True, "rate_limited", None,
        id="429-nan-retry-after",
    ),
    pytest.param(
        429, {"retry-after-ms": "1e999"}, None, RateLimitError, True, "rate_limited", None,
        id="429-overflowing-retry-after-ms",
    ),
    pytest.param(
        429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, RateLimitError, True,
        "rate_limited", 0.0, id="429-http-date-in-the-past",
    ),
    pytest.param(
        429,
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"},
        None, RateLimitError, True, "rate_limited", 360.0, id="429-openai-reset-requests",
    ),
    pytest.param(
        429,
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "12ms"},
        None, RateLimitError, True, "rate_limited", 0.012, id="429-openai-reset-tokens-ms",
    ),
    pytest.param(
        429,
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h2m3.5s"},
        None, RateLimitError, True, "rate_limited", 3723.5, id="429-openai-reset-compound",
    ),
    pytest.param(
        429,
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        None, RateLimitError, True, "rate_limited", 360.0, id="429-openai-both-exhausted-latest",
    ),
    pytest.param(
        429,
        {"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "6m0s"},
        None, RateLimitError, True, "rate_limited", None, id="429-openai-not-exhausted-no-hint",
    ),
    pytest.param(
        429,
        {
            "retry-after": "2",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
        },
        None, RateLimitError, True, "rate_limited", 2.0, id="429-retry-after-beats-reset",
    ),
    pytest.param(
        429, {}, OPENAI_QUOTA, RateLimitError, False, "quota_exceeded", None,
        id="429-openai-insufficient-quota",
    ),
    pytest.param(
        429, {}, ANTHROPIC_SPEND_CAP, RateLimitError, False, "quota_exceeded", None,
        id="429-anthropic-spend-cap-details-code",
    ),
    pytest.param(
        429, {}, anthropic_error("enforced_spend_limit_reached", "Spend cap reached."),
        RateLimitError, False, "quota_exceeded", None, id="429-anthropic-spend-cap-type",
    ),
    pytest.param(
        429, {}, anthropic_error("rate_limit_error", "You have hit your monthly spend limit."),
        RateLimitError, False, "quota_exceeded", None, id="429-spend-limit-wording",
    ),
    pytest.param(
        429, {"retry-after": "30"}, OPENAI_QUOTA, RateLimitError, True, "rate_limited", 30.0,
        id="429-quota-with-retry-after-hint-wins",
    ),
    pytest.param(
        429, {}, OPENAI_RPM_WITH_BILLING_LINK, RateLimitError, True, "rate_limited", None,
        id="429-openai-rate-limit-text-with-billing-link",
    ),
    pytest.param(
        429,
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"},
        OPENAI_RPM_WITH_BILLING_LINK, RateLimitError, True, "rate_limited", 20.0,
        id="429-openai-rate-limit-billing-link-and-reset",
    ),
    pytest.param(
        429, {}, anthropic_error("rate_limit_error", "Number of requests has exceeded your rate."),
        RateLimitError, True, "rate_limited", None, id="429-anthropic-plain-rate-limit",
    ),
    pytest.param(
        429, {}, OPENAI_TOO_LARGE, ValidationError, False, "request_too_large", None,
        id="429-request-too-large",
    ),
    pytest.param(
        400, {}, OPENAI_CONTEXT, ValidationError, False, "context_length_exceeded", None,
        id="400-context-length",
    ),
    pytest.param(
        400, {}, anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens"),
        ValidationError, False, "context_length_exceeded", None, id="400-anthropic-too-long",
    ),
    pytest.param(
        413, {}, None, ValidationError, False, "context_length_exceeded", None,
        id="413-payload-too-large",
    ),
    pytest.param(
        400, {}, OPENAI_SCHEMA, ValidationError, False, "invalid_request", None,
        id="400-schema",
    ),
    pytest.param(
        404, {}, openai_error("The model `gpt-9` does not exist", code="model_not_found"),
        ValidationError, False, "not_found", None, id="404-not-found",
    ),
    pytest.param(
        422, {}, {"detail": [{"loc": ["body", "model"], "msg": "field required"}]},
        ValidationError, False, "unprocessable", None, id="422-unprocessable",
    ),
    pytest.param(
        401, {}, openai_error("Incorrect API key provided.", code="invalid_api_key"),
        AuthenticationError, False, "unauthorized", None, id="401-unauthorized",
    ),
    pytest.param(
        403, {"retry-after": "5"}, anthropic_error("permission_error", "Not allowed."),
        AuthenticationError, False, "forbidden", None, id="403-forbidden-ignores-hint",
    ),
    pytest.param(
        402, {}, {"error": {"code": 402, "message": "Insufficient credits"}},
        RateLimitError, False, "payment_required", None, id="402-payment-required",
    ),
    pytest.param(
        408, {}, None, ExternalServiceError, True, "request_timeout", None, id="408-timeout",
    ),
    pytest.param(409, {}, None, ExternalServiceError, True, "conflict", None, id="409-conflict"),
    pytest.param(
        500, {}, openai_error("The server had an error."), ExternalServiceError, True,
        "server_error_500", None, id="500",
    ),
    pytest.param(
        502, {}, None, ExternalServiceError, True, "server_error_502", None, id="502",
    ),
    pytest.param(
        503, {"retry-after": "3"}, None, ExternalServiceError, True, "server_error_503", 3.0,
        id="503-with-retry-after",
    ),
    pytest.param(
        504, {}, None, ExternalServiceError, True, "server_error_504", None, id="504",
    ),
    pytest.param(
        529, {}, None, ExternalServiceError, True, "overloaded", None, id="529-empty-body",
    ),
    pytest.param(
        529, {}, ANTHROPIC_OVERLOADED, ExternalServiceError, True, "overloaded", None,
        id="529-anthropic-overloaded-body",
    ),
    pytest.param(
        500, {}, ANTHROPIC_OVERLOADED, ExternalServiceError, True, "overloaded", None,
        id="500-overloaded-body",
    ),
    pytest.param(
        503, {"x-should-retry": "false"}, None, ExternalServiceError, False,
        "server_error_503", None, id="503-x-should-retry-false",
    ),
    pytest.param(
        400, {"x-should-retry": "true"}, OPENAI_SCHEMA, ValidationError, True,
        "invalid_request", None, id="400-x-should-retry-true",
    ),
    pytest.param(
        409, {"x-should-retry": "true"}, None, ExternalServiceError, True, "conflict", None,
        id="409-x-should-retry-true",
    ),
    pytest.param(
        409, {"x-should-retry": "False"}, None, ExternalServiceError, False, "conflict", None,
        id="409-x-should-retry-false-any-case",
    ),
    pytest.param(
        503, {"x-should-retry": "maybe"}, None, ExternalServiceError, True,
        "server_error_503", None, id="503-x-should-retry-garbage-ignored",
    ),
    pytest.param(
        400, {"x-should-retry": "1"}, OPENAI_SCHEMA, ValidationError, False,
        "invalid_request", None, id="400-x-should-retry-garbage-ignored",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retryable", "code", "retry_after"), RESPONSE_CASES
)
def test_classify_response(
    status: int,
    headers: dict[str, str],
    body: Any,
    kind: type[StructuredError],
    retryable: bool,
    code: str,
    retry_after: float | None,
) -> None:
    """Each status/header/body combination maps to the expected type, code, retryability, hint."""
    error = classify(make_response(status, headers=headers, json_body=body))
    assert type(error) is kind
    assert error.code == code
    assert error.retryable is retryable
    assert is_retryable(error) is retryable
    if retry_after is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(retry_after)
    assert error.details["status_code"] == status
    json.dumps(error.to_dict(), allow_nan=False)


def test_x_should_retry_override_is_recorded_in_details() -> None:
    """An x-should-retry header that changes the verdict is recorded in the details."""
    flipped = classify(make_response(503, headers={"x-should-retry": "false"}))
    agreeing = classify(make_response(503, headers={"x-should-retry": "true"}))
    assert flipped is not None
    assert agreeing is not None
    assert flipped.details["x_should_retry"] is False
    assert "x_should_retry" not in agreeing.details


# --- classify(): hints relative to now ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(lambda: {"retry-after": http_date_in(30)}, 30.0, id="http-date-30s"),
        pytest.param(
            lambda: {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": rfc3339_in(20),
            },
            20.0,
            id="anthropic-requests-reset-20s",
        ),
        pytest.param(
            lambda: {
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": rfc3339_in(45),
                "anthropic-ratelimit-requests-remaining": "12",
                "anthropic-ratelimit-requests-reset": rfc3339_in(5),
            },
            45.0,
            id="anthropic-only-exhausted-limit-counts",
        ),
    ],
)
def test_classify_time_based_hints(headers: Any, expected: float) -> None:
    """HTTP-date retry-after and Anthropic RFC 3339 resets become seconds from now."""
    error = classify(make_response(429, headers=headers()))
    assert isinstance(error, RateLimitError)
    assert error.retryable
    assert error.retry_after == pytest.approx(expected, abs=2)


def test_instants_are_read_against_the_server_date_when_this_clock_is_far_off() -> None:
    """A response from a server whose clock (its ``Date``) is a year away from this one (a
    simulator in virtual time, or a clock here that is off): its reset and HTTP-date
    retry-after are read against its own ``Date``, not against this machine's clock."""
    date = dt.datetime(2025, 1, 1, tzinfo=UTC)
    server = email.utils.format_datetime(date, usegmt=True)
    reset = (date + dt.timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    later = email.utils.format_datetime(date + dt.timedelta(seconds=30), usegmt=True)
    headers = {
        "date": server,
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
    }
    error = classify(make_response(429, headers=headers))
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 20.0
    error = classify(make_response(429, headers={"date": server, "retry-after": later}))
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 30.0
    parsed = parse_rate_limit_headers(headers)
    assert parsed.requests is not None
    assert parsed.requests.reset == 20.0


def test_a_server_date_close_to_this_clock_leaves_this_clock_in_charge() -> None:
    """Within 2 s of this machine's clock the ``Date`` header (whole seconds) is not used: the
    local clock is finer. A reset 20 s ahead of now, with a Date half a second behind (then cut
    to whole seconds: 0.5-1.5 s behind): 20 s, not 20.5-21.5."""
    now = dt.datetime.now(UTC)
    headers = {
        "date": email.utils.format_datetime(now - dt.timedelta(seconds=0.5), usegmt=True),
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": rfc3339_in(20),
    }
    parsed = parse_rate_limit_headers(headers)
    assert parsed.requests is not None
    assert parsed.requests.reset is not None
    assert 19.0 < parsed.requests.reset <= 20.0


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304])
def test_classify_success_and_redirect_is_none(status: int) -> None:
    """Anything below 400 is not an error."""
    assert classify(make_response(status)) is None


# --- classify(): exceptions ------------------------------------------------------------------

REQ = make_request()


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        pytest.param(httpx2.ConnectError("refused", request=REQ), "connection_error", id="connect"),
        pytest.param(httpx2.ReadError("reset by peer", request=REQ), "connection_error", id="read"),
        pytest.param(
            httpx2.RemoteProtocolError("server disconnected", request=REQ),
            "connection_error",
            id="remote-protocol",
        ),
        pytest.param(ConnectionResetError(104, "reset"), "connection_error", id="builtin-reset"),
        pytest.param(httpx2.ReadTimeout("read timed out", request=REQ), "timeout", id="read-to"),
        pytest.param(httpx2.ConnectTimeout("connect timed out", request=REQ), "timeout", id="ct"),
        pytest.param(httpx2.PoolTimeout("pool exhausted", request=REQ), "timeout", id="pool-to"),
        pytest.param(TimeoutError(), "timeout", id="builtin-timeout"),
    ],
)
def test_classify_transport_exceptions(exc: BaseException, code: str) -> None:
    """Timeouts and connection failures are retryable upstream errors chained to the cause."""
    error = classify(exc)
    assert type(error) is ExternalServiceError
    assert error.code == code
    assert error.retryable
    assert error.retry_after is None
    assert error.original_exception is exc
    assert error.__cause__ is exc
    assert error.details["exception"] == type(exc).__name__


def test_classify_http_status_error_keeps_the_original() -> None:
    """An HTTPStatusError is classified by its response and chained as the cause."""
    response = make_response(429, headers={"retry-after": "4"})
    with pytest.raises(httpx2.HTTPStatusError) as caught:
        response.raise_for_status()
    error = classify(caught.value)
    assert type(error) is RateLimitError
    assert error.retry_after == 4.0
    assert error.original_exception is caught.value
    assert error.__cause__ is caught.value


def test_classify_returns_structured_errors_unchanged() -> None:
    """A StructuredError is already classified and comes back as the same object."""
    error = CircuitOpenError("open", retry_after=3)
    assert classify(error) is error


def test_classify_plain_exception_is_internal_and_not_retryable() -> None:
    """An unknown exception becomes a non-retryable internal error wrapping it."""
    exc = ValueError("bad value")
    error = classify(exc)
    assert type(error) is StructuredError
    assert error.category is ErrorCategory.INTERNAL
    assert error.code == "unexpected_error"
    assert not error.retryable
    assert "ValueError: bad value" in error.message
    assert error.__cause__ is exc


def test_classify_malformed_json_is_a_retryable_upstream_error() -> None:
    """A JSONDecodeError from a truncated answer is a retryable malformed response."""
    try:
        json.loads('{"choices": [')
    except json.JSONDecodeError as exc:
        error = classify(exc)
    assert type(error) is ExternalServiceError
    assert error.code == "malformed_response"
    assert error.retryable


@pytest.mark.parametrize(
    "value", [None, "HTTP 429", 429, {"status": 429}], ids=["none", "str", "int", "dict"]
)
def test_classify_rejects_non_responses(value: Any) -> None:
    """Neither a response nor an exception is a TypeError naming what was passed."""
    with pytest.raises(
        TypeError, match=r"httpx\.Response or an exception, got " + type(value).__name__
    ):
        classify(value)


# --- classify(): bodies that are not JSON, and details -----------------------------------------


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"error": {"message": "never read"}}'


@pytest.mark.parametrize(
    ("response", "expected_message"),
    [
        pytest.param(
            make_response(502, content=b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            id="html",
        ),
        pytest.param(make_response(500), "Internal Server Error", id="empty-body"),
        pytest.param(make_response(503, content=b"   \n"), "Service Unavailable", id="blank-body"),
        pytest.param(make_response(500, content=b'{"error": '), '{"error":', id="truncated-json"),
        pytest.param(make_response(500, json_body=[1, 2]), "[1,2]", id="json-list"),
        pytest.param(make_response(500, json_body="oops"), "oops", id="json-string"),
        pytest.param(make_response(500, json_body={"error": "down"}), "down", id="error-string"),
        pytest.param(make_response(404, json_body={"detail": "Not Found"}), "Not Found", id="det"),
        pytest.param(
            make_response(500, json_body={"error": None}), '{"error":null}', id="error-null"
        ),
        pytest.param(
            make_response(500, content=b"\xff\xfe\x00bad bytes\x80"), "bad bytes", id="not-utf8"
        ),
        pytest.param(
            httpx2.Response(500, stream=httpx2.AsyncByteStream(), request=make_request()),
            "Internal Server Error",
            id="unread-async-stream",
        ),
        pytest.param(
            httpx2.Response(599, content=b"", request=make_request()), "HTTP 599", id="no-reason"
        ),
    ],
)
def test_classify_odd_bodies_do_not_crash(response: httpx2.Response, expected_message: str) -> None:
    """Non-JSON, empty, odd-JSON and unreadable bodies still give a useful message."""
    error = classify(response)
    assert error is not None
    assert expected_message in error.message
    json.dumps(error.to_dict())


def test_classify_unread_async_stream_with_real_iterator() -> None:
    """An async-streamed body that was never read does not crash the sync classifier."""
    response = httpx2.Response(503, content=_chunks(), request=make_request())
    error = classify(response)
    assert type(error) is ExternalServiceError
    assert error.message == "Service Unavailable"


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(make_response(500, content=b"x" * 100_000), id="text"),
        pytest.param(make_response(400, json_body=openai_error("y" * 100_000)), id="json-message"),
        pytest.param(make_response(502, content=b"<p>" * 40_000), id="html"),
    ],
)
def test_classify_truncates_huge_messages(response: httpx2.Response) -> None:
    """A huge body is cut to at most 500 characters of message."""
    error = classify(response)
    assert error is not None
    assert 100 < len(error.message) <= 500


def test_classify_details() -> None:
    """Details carry status, method, url (no query), provider type and code, and request id."""
    response = make_response(
        400,
        headers={"x-request-id": "req_123"},
        json_body=OPENAI_SCHEMA,
        request=make_request(URL + "?api-version=2024-06-01&key=abc"),
    )
    error = classify(response)
    assert error is not None
    assert error.details == {
        "status_code": 400,
        "method": "POST",
        "url": URL,
        "type": "invalid_request_error",
        "provider_code": "invalid_type",
        "request_id": "req_123",
    }


def test_classify_reads_anthropic_request_id() -> None:
    """Anthropic's request-id header lands in the details too."""
    error = classify(make_response(529, headers={"request-id": "req_011"}))
    assert error is not None
    assert error.details["request_id"] == "req_011"


def test_classify_response_without_request() -> None:
    """A response built without a request has no method or url in its details."""
    error = classify(httpx2.Response(500, content=b"down"))
    assert error is not None
    assert error.details == {"status_code": 500}


# --- secrets -------------------------------------------------------------------------------------

SECRET = "sk-or-v1-" + "0123456789abcdef" * 4


def _rendered(error: StructuredError) -> list[str]:
    return [str(error), repr(error), json.dumps(error.to_dict()), *map(str, error.args)]


def _assert_no_secret(texts: list[str], secret: str) -> None:
    for text in texts:
        assert secret not in text
        assert secret[-16:] not in text  # not even the tail of the key


def test_classify_never_leaks_the_key() -> None:
    """A key in the Authorization header, the body and the query string never reaches the error."""
    request = make_request(f"{URL}?key={SECRET}", headers={"Authorization": f"Bearer {SECRET}"})
    body = openai_error(
        f"Incorrect API key provided: {SECRET}. Header was 'Authorization: Bearer {SECRET}'.",
        code="invalid_api_key",
    )
    response = make_response(401, json_body=body, request=request)
    error = classify(response)
    assert isinstance(error, AuthenticationError)
    _assert_no_secret(_rendered(error), SECRET)
    assert error.details["url"] == URL
    assert error.details["method"] == "POST"
    assert "[REDACTED]" in error.message


def test_classify_never_leaks_url_credentials() -> None:
    """user:password in the URL and a fragment are dropped from the details url."""
    request = make_request("https://user:hunter2hunter2@api.example.com/v1/chat#frag")
    error = classify(make_response(500, request=request))
    assert error is not None
    assert error.details["url"] == "https://api.example.com/v1/chat"
    assert all("hunter2" not in text for text in _rendered(error))


def test_retry_exhausted_over_http_status_error_never_leaks_the_key() -> None:
    """httpx's own message names the full URL; RetryExhausted over it still hides the key."""
    request = make_request(f"{URL}?key={SECRET}")
    response = make_response(503, request=request)
    with pytest.raises(httpx2.HTTPStatusError) as caught:
        response.raise_for_status()
    assert SECRET in str(caught.value)  # the premise: httpx does leak it
    error = RetryExhausted(attempts=3, elapsed=2.0, last_error=caught.value)
    _assert_no_secret(_rendered(error), SECRET)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param("Authorization: Bearer abcDEF123456789xyz", "abcDEF123456789xyz", id="bearer"),
        pytest.param("bearer eyJhbGciOi.JIUzI1NiJ9.payload", "eyJhbGciOi", id="bearer-jwt"),
        pytest.param("key sk-proj-AbCdEf0123456789_-xyz used", "AbCdEf0123456789", id="sk-proj"),
        pytest.param("sk-1234567890abcdefghij", "1234567890abcdefghij", id="sk-legacy"),
        pytest.param("sk-ant-api03-AbC_dEf-1234567890", "AbC_dEf-1234567890", id="sk-ant"),
        pytest.param(SECRET, SECRET[-16:], id="sk-or"),
        pytest.param("GET /v1?api_key=supersecretvalue42&x=1", "supersecretvalue42", id="api_key="),
        pytest.param('{"x-api-key": "anthropicsecret99"}', "anthropicsecret99", id="x-api-key"),
        pytest.param("API-KEY: zzzsecretzzz", "zzzsecretzzz", id="api-key-header"),
        pytest.param("apikey='q1w2e3r4t5y6'", "q1w2e3r4t5y6", id="apikey-quoted"),
    ],
)
def test_redact_hides_secrets(text: str, secret: str) -> None:
    """Bearer tokens, sk-... keys and api-key assignments are replaced by [REDACTED]."""
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[REDACTED]" in cleaned
    assert redact(cleaned) == cleaned  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "task-manager-v2 and risk-assessment-report",
        "Rate limit reached for gpt-4o-mini on requests per min",
        "the key is short: api_key=abc",
        "",
    ],
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    """Words that merely contain sk-/rk- and short values are left alone."""
    assert redact(text) == text


def test_structured_error_redacts_message_and_details() -> None:
    """Secrets passed to the constructor are redacted from message and (nested) details."""
    error = StructuredError(
        ErrorCategory.EXTERNAL_SERVICE,
        "upstream_error",
        f"failed with {SECRET}",
        details={"headers": {"authorization": f"Bearer {SECRET}"}, "keys": [SECRET]},
    )
    _assert_no_secret(_rendered(error), SECRET)


# --- is_retryable / retry_after_of -------------------------------------------------------------


class _Hinted(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("hinted")
        self.retry_after = retry_after


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx2.HTTPStatusError:
    response = make_response(status, headers=headers)
    return httpx2.HTTPStatusError("boom", request=response.request, response=response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(RateLimitError("slow down"), True, id="rate-limit"),
        pytest.param(RateLimitError("quota", retryable=False), False, id="quota"),
        pytest.param(ValidationError("bad"), False, id="validation"),
        pytest.param(AuthenticationError("no"), False, id="auth"),
        pytest.param(ExternalServiceError("down", retryable=False), False, id="override"),
        pytest.param(RetryExhausted(attempts=2, elapsed=1.0), False, id="exhausted"),
        pytest.param(httpx2.ConnectError("refused", request=REQ), True, id="httpx-connect"),
        pytest.param(httpx2.ReadTimeout("slow", request=REQ), True, id="httpx-timeout"),
        pytest.param(_status_error(429), True, id="status-429"),
        pytest.param(_status_error(503), True, id="status-503"),
        pytest.param(_status_error(401), False, id="status-401"),
        pytest.param(_status_error(400), False, id="status-400"),
        pytest.param(ValueError("unknown"), True, id="plain-assumed-transient"),
    ],
)
def test_is_retryable(error: BaseException, expected: bool) -> None:
    """StructuredErrors say it themselves, httpx errors are classified, others are transient."""
    assert is_retryable(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(RateLimitError("slow", retry_after=2), 2.0, id="structured"),
        pytest.param(RateLimitError("slow"), None, id="structured-no-hint"),
        pytest.param(CircuitOpenError("open", retry_after=0), 0.0, id="zero"),
        pytest.param(_status_error(429, {"retry-after": "4"}), 4.0, id="status-error"),
        pytest.param(_status_error(429, {"retry-after-ms": "250"}), 0.25, id="status-error-ms"),
        pytest.param(_status_error(429), None, id="status-error-no-hint"),
        pytest.param(httpx2.ConnectError("refused", request=REQ), None, id="transport"),
        pytest.param(ValueError("x"), None, id="plain"),
        pytest.param(_Hinted(3), 3.0, id="attr-int"),
        pytest.param(_Hinted(1.5), 1.5, id="attr-float"),
        pytest.param(_Hinted(-1), None, id="attr-negative"),
        pytest.param(_Hinted(math.nan), None, id="attr-nan"),
        pytest.param(_Hinted(True), None, id="attr-bool"),
        pytest.param(_Hinted("5"), None, id="attr-str"),
        pytest.param(_Hinted(None), None, id="attr-none"),
    ],
)
def test_retry_after_of(error: BaseException, expected: float | None) -> None:
    """The server hint comes from a retry_after attribute or an HTTPStatusError's headers."""
    hint = retry_after_of(error)
    if expected is None:
        assert hint is None
    else:
        assert hint == pytest.approx(expected)
        assert type(hint) is float


# --- StructuredError itself ----------------------------------------------------------------------


def test_error_category_has_exactly_the_plans_values() -> None:
    """ErrorCategory has the original plan's eight values (docs/origins.md) and no others."""
    assert {c.value for c in ErrorCategory} == {
        "validation",
        "authentication",
        "rate_limit",
        "circuit_breaker",
        "external_service",
        "database",
        "cache",
        "internal",
    }
    assert len(ErrorCategory) == 8


def test_plan_constructor_positional() -> None:
    """The original plan's positional constructor sets every attribute."""
    cause = OSError("disk")
    error = StructuredError(
        ErrorCategory.DATABASE, "db_down", "database unreachable", {"host": "db1"}, 2.5, cause
    )
    assert error.category is ErrorCategory.DATABASE
    assert error.code == "db_down"
    assert error.message == "database unreachable"
    assert error.details == {"host": "db1"}
    assert error.retry_after == 2.5
    assert error.original_exception is cause
    assert error.__cause__ is cause
    assert error.retryable
    assert str(error) == "[database/db_down] database unreachable (retry after 2.5 s)"
    assert error.args == ("database unreachable",)


def test_timestamp_is_aware_utc_and_now() -> None:
    """timestamp is an aware UTC datetime taken at construction."""
    before = dt.datetime.now(UTC)
    error = StructuredError(ErrorCategory.CACHE, "miss", "m")
    after = dt.datetime.now(UTC)
    assert error.timestamp.tzinfo is not None
    assert error.timestamp.utcoffset() == dt.timedelta(0)
    assert before <= error.timestamp <= after


class _Color(enum.Enum):
    RED = "red"


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_to_dict_shape_and_json_safety() -> None:
    """to_dict has the original plan's shape (plus retryable), dumps even non-JSON details."""
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    error = StructuredError(
        ErrorCategory.RATE_LIMIT,
        "rate_limited",
        "slow down",
        details={
            "tags": {"a"},
            "when": when,
            "day": dt.date(2024, 1, 2),
            "obj": _Opaque(),
            "pair": (1, 2),
            "color": _Color.RED,
            "raw": b"\x00",
            3: "int key",
            "nested": {"deep": [{"x": {"y"}}]},
        },
        retry_after=1,
    )
    data = error.to_dict()
    assert set(data) == {"error", "retry_after"}
    assert set(data["error"]) == {
        "category",
        "code",
        "message",
        "details",
        "timestamp",
        "retryable",
    }
    assert data["error"]["category"] == "rate_limit"
    assert data["error"]["code"] == "rate_limited"
    assert data["error"]["retryable"] is True
    assert data["retry_after"] == 1.0
    assert dt.datetime.fromisoformat(data["error"]["timestamp"]) == error.timestamp
    details = data["error"]["details"]
    assert details["tags"] == ["a"]
    assert details["when"] == when.isoformat()
    assert details["day"] == "2024-01-02"
    assert details["obj"] == "<opaque>"
    assert details["pair"] == [1, 2]
    assert details["color"] == "red"
    assert details["3"] == "int key"
    assert details["nested"] == {"deep": [{"x": ["y"]}]}
    assert json.loads(json.dumps(data)) == data


def test_details_are_a_copy() -> None:
    """Mutating the dict passed as details later does not change the error."""
    given = {"a": 1}
    error = StructuredError(ErrorCategory.INTERNAL, "x", "m", given)
    given["a"] = 2
    assert error.details == {"a": 1}


@pytest.mark.parametrize(
    ("category", "retryable"),
    [
        (ErrorCategory.VALIDATION, False),
        (ErrorCategory.AUTHENTICATION, False),
        (ErrorCategory.RATE_LIMIT, True),
        (ErrorCategory.CIRCUIT_BREAKER, True),
        (ErrorCategory.EXTERNAL_SERVICE, True),
        (ErrorCategory.DATABASE, True),
        (ErrorCategory.CACHE, True),
        (ErrorCategory.INTERNAL, False),
    ],
    ids=lambda v: v.value if isinstance(v, ErrorCategory) else str(v),
)
def test_retryable_defaults_by_category_and_can_be_overridden(
    category: ErrorCategory, retryable: bool
) -> None:
    """retryable follows the category unless retryable= says otherwise."""
    assert StructuredError(category, "c", "m").retryable is retryable
    assert StructuredError(category, "c", "m", retryable=not retryable).retryable is not retryable
    assert StructuredError(category, "c", "m").to_dict()["error"]["retryable"] is retryable


@pytest.mark.parametrize("category", ["validation", 1, ErrorCategory], ids=["str", "int", "cls"])
def test_bad_category_is_a_type_error(category: Any) -> None:
    """A category that is not an ErrorCategory member is refused with the valid names."""
    with pytest.raises(TypeError, match="ErrorCategory"):
        StructuredError(category, "c", "m")


@pytest.mark.parametrize("retry_after", [-0.001, -5, math.nan], ids=["tiny", "neg", "nan"])
def test_bad_retry_after_is_a_value_error(retry_after: float) -> None:
    """A negative or NaN retry_after is refused."""
    with pytest.raises(ValueError, match="retry_after"):
        StructuredError(ErrorCategory.RATE_LIMIT, "c", "m", retry_after=retry_after)
    with pytest.raises(ValueError, match="retry_after"):
        RateLimitError("m", retry_after=retry_after)


def test_validation_error_is_a_value_error() -> None:
    """ValidationError can be caught as a ValueError."""
    with pytest.raises(ValueError, match="bad config"):
        raise ValidationError("bad config")


SUBCLASSES = [
    pytest.param(lambda: ValidationError("m"), ErrorCategory.VALIDATION, "invalid_request", id="V"),
    pytest.param(
        lambda: AuthenticationError("m"),
        ErrorCategory.AUTHENTICATION,
        "authentication_failed",
        id="Auth",
    ),
    pytest.param(lambda: RateLimitError("m"), ErrorCategory.RATE_LIMIT, "rate_limited", id="RL"),
    pytest.param(
        lambda: CircuitOpenError("m"), ErrorCategory.CIRCUIT_BREAKER, "circuit_open", id="CB"
    ),
    pytest.param(
        lambda: ExternalServiceError("m"),
        ErrorCategory.EXTERNAL_SERVICE,
        "upstream_error",
        id="Ext",
    ),
    pytest.param(lambda: DatabaseError("m"), ErrorCategory.DATABASE, "database_error", id="DB"),
    pytest.param(lambda: CacheError("m"), ErrorCategory.CACHE, "cache_error", id="Cache"),
    pytest.param(
        lambda: StructuredError(message="m"), ErrorCategory.INTERNAL, "internal_error", id="Base"
    ),
]


@pytest.mark.parametrize(("factory", "category", "code"), SUBCLASSES)
def test_subclass_category_and_default_code(
    factory: Any, category: ErrorCategory, code: str
) -> None:
    """Each subclass carries its category and a default code."""
    error = factory()
    assert isinstance(error, StructuredError)
    assert error.category is category
    assert error.code == code
    assert error.to_dict()["error"]["category"] == category.value


PICKLE_CASES = [
    pytest.param(ValidationError("bad", code="c1", details={"f": 1}), id="validation"),
    pytest.param(AuthenticationError("no", code="forbidden"), id="auth"),
    pytest.param(RateLimitError("slow", retry_after=2.5), id="rate-limit"),
    pytest.param(RateLimitError("quota", code="quota_exceeded", retryable=False), id="quota"),
    pytest.param(CircuitOpenError("open", retry_after=10), id="circuit"),
    pytest.param(ExternalServiceError("down", retryable=False), id="external"),
    pytest.param(DatabaseError("db"), id="database"),
    pytest.param(CacheError("cache"), id="cache"),
    pytest.param(StructuredError(ErrorCategory.DATABASE, "d", "m", {"k": [1]}, 1.0), id="base"),
    pytest.param(
        RetryExhausted(
            attempts=3,
            elapsed=1.5,
            reason="deadline",
            last_error=RateLimitError("slow", retry_after=2),
            retry_after=2,
        ),
        id="exhausted",
    ),
]


@pytest.mark.parametrize("error", PICKLE_CASES)
def test_pickle_round_trip(error: StructuredError) -> None:
    """Pickling keeps type, category, code, message, details, hint, retryable and timestamp."""
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own data
    assert type(clone) is type(error)
    assert clone.category is error.category
    assert clone.code == error.code
    assert clone.message == error.message
    assert clone.details == error.details
    assert clone.retry_after == error.retry_after
    assert clone.retryable is error.retryable
    assert clone.timestamp == error.timestamp
    assert str(clone) == str(error)
    assert clone.to_dict() == error.to_dict()


def test_retry_exhausted_chains_and_describes() -> None:
    """RetryExhausted chains the last error, takes its category, is never retryable, says why."""
    last = RateLimitError("slow down", retry_after=2)
    error = RetryExhausted(attempts=3, elapsed=1.5, reason="attempts", last_error=last)
    assert error.__cause__ is last
    assert error.last_error is last
    assert error.original_exception is last
    assert error.category is ErrorCategory.RATE_LIMIT
    assert error.code == "retry_exhausted"
    assert error.retryable is False
    assert not is_retryable(error)
    assert "3 attempt" in error.message
    assert "1.500 s" in error.message
    assert "slow down" in error.message
    assert error.details == {"attempts": 3, "elapsed": 1.5, "reason": "attempts"}
    assert (error.attempts, error.elapsed, error.reason) == (3, 1.5, "attempts")


@pytest.mark.parametrize(
    ("last_error", "category"),
    [
        pytest.param(ValidationError("bad"), ErrorCategory.VALIDATION, id="structured"),
        pytest.param(OSError("io"), ErrorCategory.EXTERNAL_SERVICE, id="plain"),
        pytest.param(None, ErrorCategory.INTERNAL, id="result-only"),
    ],
)
def test_retry_exhausted_category(
    last_error: BaseException | None, category: ErrorCategory
) -> None:
    """The category follows the last error; without one (a rejected result) it is internal."""
    error = RetryExhausted(attempts=2, elapsed=0.25, reason="result", last_error=last_error)
    assert error.category is category
    assert error.retryable is False
    assert error.__cause__ is last_error


@pytest.mark.parametrize(
    ("reason", "retry_after", "fragment"),
    [
        ("deadline", None, "at the deadline after 4 attempt(s)"),
        ("retry_after_too_long", 90.0, "asked to wait 90 s"),
        ("retry_after_too_long", None, "after 4 attempt(s)"),
        ("budget", None, "after 4 attempt(s) (budget)"),
    ],
)
def test_retry_exhausted_reasons(reason: str, retry_after: float | None, fragment: str) -> None:
    """Each reason produces its own wording, and the hint is kept."""
    error = RetryExhausted(
        attempts=4, elapsed=9.0, reason=reason, last_error=OSError("x"), retry_after=retry_after
    )
    assert fragment in error.message
    assert error.retry_after == retry_after


def test_too_large_for_the_limit_is_never_retried_even_with_a_hint() -> None:
    """A 429 for a request bigger than the limit stays a ValidationError when a hint comes too."""
    request = httpx2.Request("POST", "https://api.example.com/v1/chat/completions")
    response = httpx2.Response(
        429,
        headers={"retry-after": "20"},
        json={"error": {"message": "Request too large for gpt-4 on tokens per min (TPM)"}},
        request=request,
    )
    error = classify(response)
    assert isinstance(error, ValidationError)
    assert error.code == "request_too_large"
    assert not error.retryable


def test_a_schema_error_mentioning_max_tokens_is_not_a_context_length_error() -> None:
    """A 400 about the max_tokens parameter is an invalid request, not a context overflow."""
    request = httpx2.Request("POST", "https://api.example.com/v1/chat/completions")
    response = httpx2.Response(
        400, json={"error": {"message": "max_tokens must be an integer"}}, request=request
    )
    error = classify(response)
    assert isinstance(error, ValidationError)
    assert error.code == "invalid_request"


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.UnsupportedProtocol("Request URL has an unsupported protocol 'htp://'"),
        httpx2.LocalProtocolError("Illegal header value"),
    ],
    ids=["unsupported-protocol", "local-protocol"],
)
def test_malformed_requests_are_not_retryable(exc: Exception) -> None:
    """httpx errors about our own request or URL are validation errors, not transient failures."""
    error = classify(exc)
    assert isinstance(error, ValidationError)
    assert not error.retryable
    assert not is_retryable(exc)


def test_infinite_retry_after_is_refused() -> None:
    """retry_after must be finite: infinity cannot be serialised or waited for."""
    with pytest.raises(ValueError, match="finite"):
        RateLimitError("x", retry_after=float("inf"))

    class Hinted(Exception):
        retry_after = float("inf")

    assert retry_after_of(Hinted()) is None
