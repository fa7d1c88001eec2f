"""Structured errors, and :func:`classify` for LLM APIs spoken over httpx2 (or httpx).

Every error flashkit raises is a :class:`StructuredError`: a category (what kind of failure), a
stable ``code`` (what exactly), a human ``message``, JSON-safe ``details``, an optional server hint
``retry_after`` (seconds) and ``retryable`` (may the same request succeed later?).

:func:`classify` turns an ``httpx2.Response`` or an exception into one of them, the way the official
OpenAI and Anthropic SDKs read an answer, plus the cases they get wrong::

    response = await client.post(url, json=body)
    if (error := classify(response)) is not None:
        raise error

httpx (0.x) responses and exceptions are classified alike, by their classes' names (httpx2 is the
continuation of httpx with the same names): flashkit never imports httpx itself, so it need not
be installed.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx2

if TYPE_CHECKING:  # annotations only: httpx (0.x) need not be installed
    import httpx

__all__ = [
    "AuthenticationError",
    "CacheError",
    "CircuitOpenError",
    "DatabaseError",
    "ErrorCategory",
    "ExternalServiceError",
    "RateLimitError",
    "RetryExhausted",
    "StructuredError",
    "ValidationError",
    "classify",
    "is_retryable",
    "redact",
    "retry_after_of",
]


class ErrorCategory(enum.Enum):
    """What kind of failure an error is; decides how it is handled."""

    VALIDATION = "validation"
    AUTHENTICATION = "authentication"
    RATE_LIMIT = "rate_limit"
    CIRCUIT_BREAKER = "circuit_breaker"
    EXTERNAL_SERVICE = "external_service"
    DATABASE = "database"
    CACHE = "cache"
    INTERNAL = "internal"


# Whether a category is worth retrying when the error itself does not say.
_RETRYABLE_BY_DEFAULT: Final = {
    ErrorCategory.VALIDATION: False,
    ErrorCategory.AUTHENTICATION: False,
    ErrorCategory.RATE_LIMIT: True,
    ErrorCategory.CIRCUIT_BREAKER: True,
    ErrorCategory.EXTERNAL_SERVICE: True,
    ErrorCategory.DATABASE: True,
    ErrorCategory.CACHE: True,
    ErrorCategory.INTERNAL: False,
}

_SECRET_PATTERNS: Final = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bsk-(ant|or|proj)-[A-Za-z0-9_-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
    ),
)


def redact(text: str) -> str:
    """Replace anything that looks like an API key or bearer token in ``text`` by ``[REDACTED]``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)
        else:
            text = pattern.sub("[REDACTED]", text)
    return text


def _json_safe(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return redact(value) if isinstance(value, str) else value
    if depth > 6:
        return redact(repr(value))
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _json_safe(value.value, depth + 1)
    return redact(repr(value))


class StructuredError(Exception):
    """An error with a category, a stable code, JSON-safe details and an optional server hint.

    ``retry_after`` is the number of seconds the server asked to wait (``None``: no hint).
    ``retryable`` defaults by category (validation, authentication and internal errors are not
    retryable; the rest are); pass ``retryable=`` to override. ``timestamp`` is aware UTC. Secrets
    that look like API keys are redacted from ``message`` and ``details``.
    """

    category: ErrorCategory = ErrorCategory.INTERNAL
    default_code: str = "internal_error"

    def __init__(
        self,
        category: ErrorCategory | None = None,
        code: str | None = None,
        message: str = "",
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        original_exception: BaseException | None = None,
        *,
        retryable: bool | None = None,
    ) -> None:
        if category is not None and not isinstance(category, ErrorCategory):
            raise TypeError(
                f"StructuredError category must be an ErrorCategory, got {category!r}; "
                f"use one of {[c.name for c in ErrorCategory]}"
            )
        self.category = category if category is not None else type(self).category
        self.code = code if code is not None else type(self).default_code
        self.message = redact(message)
        self.details: dict[str, Any] = _json_safe(dict(details)) if details else {}
        if retry_after is not None:
            retry_after = float(retry_after)
            if not (retry_after >= 0 and math.isfinite(retry_after)):
                raise ValueError(
                    f"retry_after must be finite seconds >= 0 or None, got {retry_after!r}"
                )
        self.retry_after = retry_after
        self.original_exception = original_exception
        self.timestamp = _dt.datetime.now(_dt.UTC)
        self._retryable = retryable
        super().__init__(self.message)
        if original_exception is not None and self.__cause__ is None:
            self.__cause__ = original_exception

    @property
    def retryable(self) -> bool:
        """May the same request succeed if tried again later?"""
        if self._retryable is not None:
            return self._retryable
        return _RETRYABLE_BY_DEFAULT[self.category]

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-safe data, in the original plan's shape (``docs/origins.md``)."""
        return {
            "error": {
                "category": self.category.value,
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "timestamp": self.timestamp.isoformat(),
                "retryable": self.retryable,
            },
            "retry_after": self.retry_after,
        }

    def __str__(self) -> str:
        hint = f" (retry after {self.retry_after:g} s)" if self.retry_after is not None else ""
        return f"[{self.category.value}/{self.code}] {self.message}{hint}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps errors picklable across processes (multiprocessing, papermill workers); the
        # state keeps the time the error happened, not the time it was unpickled.
        return (
            _rebuild,
            (
                type(self),
                self.category,
                self.code,
                self.message,
                self.details,
                self.retry_after,
                self._retryable,
            ),
            {"timestamp": self.timestamp},
        )


def _rebuild(
    cls: type[StructuredError],
    category: ErrorCategory,
    code: str,
    message: str,
    details: dict[str, Any],
    retry_after: float | None,
    retryable: bool | None,
) -> StructuredError:
    error = StructuredError.__new__(cls)
    StructuredError.__init__(
        error, category, code, message, details, retry_after, retryable=retryable
    )
    return error


class _PermanentError(StructuredError):
    """Base of errors that say the request itself is wrong: no hint, not retryable by default."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        original_exception: BaseException | None = None,
    ) -> None:
        StructuredError.__init__(
            self,
            type(self).category,
            code,
            message,
            details,
            None,
            original_exception,
            retryable=False,
        )


class ValidationError(_PermanentError, ValueError):
    """The request or configuration is wrong; retrying the same thing cannot help."""

    category = ErrorCategory.VALIDATION
    default_code = "invalid_request"

    @classmethod
    def config(cls, message: str, *, field: str) -> ValidationError:
        """A bad constructor or settings value: code ``invalid_config``, ``details["field"]``
        naming it; ``message`` says what, where and how to fix it."""
        return cls(message, code="invalid_config", details={"field": field})


class AuthenticationError(_PermanentError):
    """The credentials are missing, wrong or not allowed to do this (401/403); not retryable
    (unless the server itself says ``x-should-retry: true``)."""

    category = ErrorCategory.AUTHENTICATION
    default_code = "authentication_failed"


class _HintedError(StructuredError):
    """Base of errors about the dependency's state: may carry ``retry_after`` (seconds)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        original_exception: BaseException | None = None,
        retryable: bool | None = None,
    ) -> None:
        StructuredError.__init__(
            self,
            type(self).category,
            code,
            message,
            details,
            retry_after,
            original_exception,
            retryable=retryable,
        )


class RateLimitError(_HintedError):
    """Too many requests (429), or a quota/spend cap when ``retryable`` is False."""

    category = ErrorCategory.RATE_LIMIT
    default_code = "rate_limited"


class CircuitOpenError(_HintedError):
    """A circuit breaker rejected the call without trying it; ``retry_after`` says when it may
    admit calls again."""

    category = ErrorCategory.CIRCUIT_BREAKER
    default_code = "circuit_open"


class ExternalServiceError(_HintedError):
    """The upstream failed: 5xx, 529 overloaded, 408/409, timeouts and connection errors."""

    category = ErrorCategory.EXTERNAL_SERVICE
    default_code = "upstream_error"


class DatabaseError(_HintedError):
    """A database operation failed."""

    category = ErrorCategory.DATABASE
    default_code = "database_error"


class CacheError(_HintedError):
    """A cache operation failed."""

    category = ErrorCategory.CACHE
    default_code = "cache_error"


class RetryExhausted(StructuredError):
    """A retrying call gave up. The last error is chained as ``__cause__`` and ``last_error``.

    ``attempts`` is how many attempts were made, ``elapsed`` the seconds since the first one,
    ``reason`` why it stopped (``"attempts"``, ``"deadline"``, ``"retry_after_too_long"``,
    ``"result"``), ``retry_after`` the last server hint, and ``last_result`` the last returned
    value when a result predicate asked for the retries. Never retryable itself.
    """

    category = ErrorCategory.INTERNAL
    default_code = "retry_exhausted"

    def __init__(
        self,
        *,
        attempts: int,
        elapsed: float,
        reason: str = "attempts",
        last_error: BaseException | None = None,
        last_result: Any = None,
        retry_after: float | None = None,
    ) -> None:
        if isinstance(last_error, StructuredError):
            category = last_error.category
        elif last_error is not None:
            category = ErrorCategory.EXTERNAL_SERVICE
        else:
            category = ErrorCategory.INTERNAL
        what = (
            f"{type(last_error).__name__}: {last_error}"
            if last_error is not None
            else "an unacceptable result"
        )
        why = {
            "attempts": f"after {attempts} attempt(s)",
            "deadline": f"at the deadline after {attempts} attempt(s)",
            "retry_after_too_long": (
                f"after {attempts} attempt(s): the server asked to wait {retry_after:g} s, "
                "longer than allowed"
                if retry_after is not None
                else f"after {attempts} attempt(s)"
            ),
            "result": f"after {attempts} attempt(s)",
        }.get(reason, f"after {attempts} attempt(s) ({reason})")
        StructuredError.__init__(
            self,
            category,
            "retry_exhausted",
            f"gave up {why} in {elapsed:.3f} s; last: {what}",
            {"attempts": attempts, "elapsed": elapsed, "reason": reason},
            retry_after,
            last_error,
            retryable=False,
        )
        self.attempts = attempts
        self.elapsed = elapsed
        self.reason = reason
        self.last_error = last_error
        self.last_result = last_result

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_exhausted,
            (self.attempts, self.elapsed, self.reason, self.retry_after, self.message),
            # The last error itself may not pickle; its category (taken above) must survive.
            {"timestamp": self.timestamp, "category": self.category},
        )


def _rebuild_exhausted(
    attempts: int, elapsed: float, reason: str, retry_after: float | None, message: str
) -> RetryExhausted:
    error = RetryExhausted(
        attempts=attempts, elapsed=elapsed, reason=reason, retry_after=retry_after
    )
    error.message = message
    error.args = (message,)
    return error


# --- classification of LLM API answers -------------------------------------------------------

_QUOTA_WORDS: Final = re.compile(
    r"(?i)(insufficient_quota|quota|spend(ing)?[ _]limit|billing|credit|exceeded your current"
    r"|monthly (usage )?limit|enforced_spend_limit|payment|api usage limit)"
)
# OpenAI's ordinary 429 text ends "...increase your rate limit by adding a payment method to your
# account at .../account/billing": a busy minute, not an empty account.
_RATE_LIMIT_WORDS: Final = re.compile(r"(?i)(rate_limit_exceeded|rate limit reached)")
_TOO_LARGE_WORDS: Final = re.compile(
    r"(?i)(request too large|too many tokens|context[_ ]length|maximum context|prompt is too long"
    r"|exceeds the (model'?s )?(context|limit))"
)
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_MAX_MESSAGE: Final = 500


_DATE_SKEW: Final = 2.0  # seconds: see _reference_time


def _reference_time(date: str | None) -> _dt.datetime:
    """Now, to read a response's instants (resets, HTTP-date retry-afters) against: this
    machine's clock, or the response's ``Date`` (the server's) when the two differ by more than
    2 s: a clock here that is off, or a simulator answering in virtual time. (``Date`` has
    whole seconds: within the skew, the local clock is finer.)"""
    local = _dt.datetime.now(_dt.UTC)
    server = _http_date(date)
    if server is None:
        return local
    return server if abs((server - local).total_seconds()) > _DATE_SKEW else local


def _http_date(raw: str | None) -> _dt.datetime | None:
    """An HTTP-date (``Wed, 01 Jan 2025 00:00:00 GMT``) as an aware UTC time, else None."""
    if raw is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def _rfc3339(raw: str) -> _dt.datetime | None:
    """An RFC 3339 instant (``2025-01-01T00:00:30Z``, Anthropic's resets) as an aware time
    (UTC when it names no offset), else None."""
    try:
        when = _dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def _parse_retry_after(headers: Mapping[str, str], now: _dt.datetime | None = None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP-date), else None."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < math.inf:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        when = _http_date(raw)
        if when is None:
            return None
        now = now if now is not None else _reference_time(headers.get("date"))
        return max(0.0, (when - now).total_seconds())
    return value if 0 <= value < math.inf else None


def _parse_duration(raw: str) -> float | None:
    """OpenAI-style reset durations: ``1s``, ``6m0s``, ``12ms``, ``1h2m3.5s``."""
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    return total if pos == len(raw) and pos > 0 else None


def _parse_reset_headers(
    headers: Mapping[str, str], now: _dt.datetime | None = None
) -> float | None:
    """When every exhausted provider limit has reset (OpenAI or Anthropic headers): the latest
    reset, since a retry before it would hit the limit that is still exhausted."""
    hints: list[float] = []
    for kind in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            reset = headers.get(f"x-ratelimit-reset-{kind}")
            if reset is not None and (seconds := _parse_duration(reset)) is not None:
                hints.append(seconds)
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{kind}-remaining", "").strip() == "0":
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            when = _rfc3339(reset) if reset is not None else None
            if when is None:
                continue
            now = now if now is not None else _reference_time(headers.get("date"))
            hints.append(max(0.0, (when - now).total_seconds()))
    return max(hints) if hints else None


_HTTP_LIBRARIES: Final = frozenset({"httpx", "httpx2"})
_RESPONSE: Final = "Response"
_HTTP_NAMES: dict[type, frozenset[str]] = {}  # a class -> its httpx2/httpx classes' names


def _http_names(cls: type) -> frozenset[str]:
    """The names of the httpx2 or httpx classes ``cls`` is or derives from (empty for any other
    class): the two libraries share their class names, so one test covers both without
    importing httpx."""
    names = _HTTP_NAMES.get(cls)
    if names is None:
        names = frozenset(
            base.__name__
            for base in cls.__mro__
            if base.__module__.partition(".")[0] in _HTTP_LIBRARIES
        )
        if len(_HTTP_NAMES) < 1024:  # bounded, should classes be made on the fly
            _HTTP_NAMES[cls] = names
    return names


def _is_http_response(value: object) -> bool:
    """Whether ``value`` is an ``httpx2.Response`` or an ``httpx.Response`` (0.x)."""
    return isinstance(value, httpx2.Response) or _RESPONSE in _http_names(type(value))


def _is_http_headers(value: object) -> bool:
    """Whether ``value`` is an ``httpx2.Headers`` or an ``httpx.Headers`` (0.x)."""
    return isinstance(value, httpx2.Headers) or "Headers" in _http_names(type(value))


def _error_body(response: httpx2.Response | httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an OpenAI/Anthropic/OpenRouter error body, or the raw text."""
    try:
        response.read()
        text = response.text
    except (UnicodeDecodeError, RuntimeError):
        return "", None, None
    except Exception as failure:
        if "HTTPError" not in _http_names(type(failure)):
            raise
        return "", None, None
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_MESSAGE], None, None
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or ""
        kind = error.get("type")
        code = error.get("code")
        extra = error.get("details")
        if code is None and isinstance(extra, dict):
            code = extra.get("error_code")  # Anthropic: enforced_spend_limit_reached
        return (
            str(message)[:_MAX_MESSAGE],
            str(kind) if kind is not None else None,
            str(code) if code is not None else None,
        )
    if isinstance(error, str):
        return error[:_MAX_MESSAGE], None, None
    return text.strip()[:_MAX_MESSAGE], None, None


def _should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _response_details(
    response: httpx2.Response | httpx.Response, kind: str | None, body_code: str | None
) -> dict[str, Any]:
    """What an error from ``response`` carries in ``details`` (no secrets)."""
    headers = response.headers
    request = response.request if response._request is not None else None
    details: dict[str, Any] = {"status_code": response.status_code}
    if request is not None:
        details["method"] = request.method
        # No query, fragment or user:password: keys and passwords hide there.
        details["url"] = str(request.url.copy_with(query=None, fragment=None, userinfo=b""))
    if kind:
        details["type"] = kind
    if body_code:
        details["provider_code"] = body_code
    if request_id := headers.get("x-request-id") or headers.get("request-id"):
        details["request_id"] = request_id
    return details


def _rate_limited(
    text: str, words: str, hint: float | None, headers: Mapping[str, str], details: dict[str, Any]
) -> StructuredError:
    """A 429: too large for any limit, out of quota, or rate limited (with its wait)."""
    if _TOO_LARGE_WORDS.search(words):  # bigger than the limit itself: no wait can help
        return ValidationError(
            f"request can never fit the rate limit: {text}",
            code="request_too_large",
            details=details,
        )
    if hint is None and _QUOTA_WORDS.search(words) and not _RATE_LIMIT_WORDS.search(words):
        return RateLimitError(text, code="quota_exceeded", details=details, retryable=False)
    if hint is None:
        hint = _parse_reset_headers(headers)
    return RateLimitError(text, code="rate_limited", details=details, retry_after=hint)


def _status_error(
    status: int,
    kind: str | None,
    words: str,
    text: str,
    hint: float | None,
    details: dict[str, Any],
) -> StructuredError:
    """Any error status but 429."""
    if status in (401, 403):
        code = "forbidden" if status == 403 else "unauthorized"
        return AuthenticationError(text, code=code, details=details)
    if status == 402:
        return RateLimitError(text, code="payment_required", details=details, retryable=False)
    if status in (408, 409):
        code = "request_timeout" if status == 408 else "conflict"
        return ExternalServiceError(text, code=code, details=details, retry_after=hint)
    if status == 413 or (status == 400 and _TOO_LARGE_WORDS.search(words)):
        return ValidationError(text, code="context_length_exceeded", details=details)
    if status == 529 or kind == "overloaded_error":
        return ExternalServiceError(text, code="overloaded", details=details, retry_after=hint)
    if status >= 500:
        code = f"server_error_{status}"
        return ExternalServiceError(text, code=code, details=details, retry_after=hint)
    # 400, 404, 405, 422 ...: the request itself is wrong
    code = {404: "not_found", 422: "unprocessable"}.get(status, "invalid_request")
    return ValidationError(text, code=code, details=details)


def _classify_response(response: httpx2.Response | httpx.Response) -> StructuredError | None:
    status = response.status_code
    if status < 400:
        return None
    headers = response.headers
    message, kind, body_code = _error_body(response)
    details = _response_details(response, kind, body_code)
    hint = _parse_retry_after(headers)
    override = _should_retry_header(headers)
    words = f"{message} {kind or ''} {body_code or ''}"
    text = message or response.reason_phrase or f"HTTP {status}"
    if status == 429:
        error = _rate_limited(text, words, hint, headers, details)
    else:
        error = _status_error(status, kind, words, text, hint, details)
    if override is not None and override != error.retryable:
        error._retryable = override
        error.details["x_should_retry"] = override
    return error


def classify(value: httpx2.Response | httpx.Response | BaseException) -> StructuredError | None:
    """Turn an LLM API answer or a failure into a :class:`StructuredError` (``None`` for success).

    - 429 with ``retry-after-ms`` / ``retry-after`` (seconds or HTTP-date), or with exhausted
      OpenAI/Anthropic rate-limit headers → retryable :class:`RateLimitError` with ``retry_after``;
    - 429 without a hint whose body speaks of quota, billing or spend limits → non-retryable
      :class:`RateLimitError` (``code="quota_exceeded"``); 402 likewise;
    - 429 "request too large" (a request bigger than the limit) → :class:`ValidationError`;
    - 400/413 context-length and schema errors, 404, 422 → :class:`ValidationError`;
    - 401/403 → :class:`AuthenticationError`;
    - 408, 409, 5xx, 529 overloaded, timeouts and connection errors → retryable
      :class:`ExternalServiceError`;
    - an ``x-should-retry: true|false`` header overrides ``retryable``.

    A :class:`StructuredError` is returned unchanged; any other exception becomes a non-retryable
    internal error wrapping it. httpx2 and httpx (0.x) responses and exceptions are read alike.
    """
    if isinstance(value, httpx2.Response):
        return _classify_response(value)
    if isinstance(value, StructuredError):
        return value
    names = _http_names(type(value))
    if _RESPONSE in names:  # an httpx (0.x) response
        return _classify_response(value)  # type: ignore[arg-type]
    if not isinstance(value, BaseException):
        raise TypeError(
            "classify() takes an httpx2.Response, an httpx.Response or an exception, got "
            f"{type(value).__name__}"
        )
    return _classify_exception(value, names)


def _classify_exception(value: BaseException, names: frozenset[str]) -> StructuredError | None:
    """:func:`classify` for an exception; ``names``: its httpx2/httpx classes' names."""
    if "HTTPStatusError" in names:
        error = _classify_response(value.response)  # type: ignore[attr-defined]
        if error is not None:
            error.original_exception = value
            error.__cause__ = value
        return error
    if "TimeoutException" in names or isinstance(value, TimeoutError):
        return ExternalServiceError(
            f"timed out: {type(value).__name__}",
            code="timeout",
            details={"exception": type(value).__name__},
            original_exception=value,
        )
    if "UnsupportedProtocol" in names or "LocalProtocolError" in names:
        return ValidationError(  # our request or URL is wrong: retrying sends the same thing
            f"invalid request: {type(value).__name__}: {value}",
            code="invalid_request",
            details={"exception": type(value).__name__},
            original_exception=value,
        )
    if "TransportError" in names or isinstance(value, ConnectionError):
        return ExternalServiceError(
            f"connection failed: {type(value).__name__}: {value}",
            code="connection_error",
            details={"exception": type(value).__name__},
            original_exception=value,
        )
    if "DecodingError" in names or isinstance(value, json.JSONDecodeError):
        return ExternalServiceError(
            f"malformed response: {value}",
            code="malformed_response",
            original_exception=value,
        )
    return StructuredError(
        ErrorCategory.INTERNAL,
        "unexpected_error",
        f"{type(value).__name__}: {value}",
        original_exception=value,
    )


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` may succeed if retried: a :class:`StructuredError` says so itself;
    httpx2 and httpx errors are classified; anything else is assumed transient (True)."""
    if isinstance(error, StructuredError):
        return error.retryable
    names = _http_names(type(error))
    if "HTTPStatusError" in names or "TransportError" in names:
        classified = classify(error)
        return classified is not None and classified.retryable
    return True


def retry_after_of(error: BaseException) -> float | None:
    """The server's retry hint carried by ``error`` (seconds), if any."""
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and 0 <= hint < math.inf:
        return float(hint)
    if "HTTPStatusError" in _http_names(type(error)):
        classified = classify(error)
        return classified.retry_after if classified is not None else None
    return None
