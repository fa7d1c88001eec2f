"""What the client speaks in: providers, usage, results, the cache it may use, its policies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx2

from flashkit.errors import ErrorCategory, ExternalServiceError, StructuredError

__all__ = [
    "DEFAULT_MODEL",
    "PROVIDERS",
    "ChatCache",
    "ChatResult",
    "Provider",
    "Usage",
    "breaker_handles",
    "chat_cache_key",
    "malformed",
]

DEFAULT_MODEL: Final = "anthropic/claude-3.5-sonnet"


@dataclass(frozen=True, slots=True)
class Provider:
    """Where a provider lives: ``base_url``, the environment variables its key may come from (in
    order), whether a key is needed at all, and the API it speaks (``"openai"``: chat
    completions; ``"anthropic"``: Messages)."""

    name: str
    base_url: str
    key_env: tuple[str, ...]
    needs_key: bool = True
    api: str = "openai"


PROVIDERS: Final[Mapping[str, Provider]] = {
    "openrouter": Provider(
        "openrouter", "https://openrouter.ai/api/v1", ("FLASHKIT_API_KEY", "OPENROUTER_API_KEY")
    ),
    "openai": Provider(
        "openai", "https://api.openai.com/v1", ("FLASHKIT_API_KEY", "OPENAI_API_KEY")
    ),
    "anthropic": Provider(
        "anthropic",
        "https://api.anthropic.com/v1",
        ("FLASHKIT_API_KEY", "ANTHROPIC_API_KEY"),
        api="anthropic",
    ),
    "sim": Provider("sim", "http://sim.flashkit.invalid/v1", ("FLASHKIT_API_KEY",), False),
}
"""Provider presets: ``openrouter`` (default), ``openai`` (any OpenAI-compatible server with
``base_url=``), ``anthropic`` (the Messages API; any Messages server with ``base_url=``) and
``sim`` (flashkit's simulated upstream, in process; no key needed)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts an answer reports."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_json(cls, data: object) -> Usage | None:
        if not isinstance(data, dict):
            return None
        try:
            prompt = int(data.get("prompt_tokens", data.get("input_tokens", 0)) or 0)
            completion = int(data.get("completion_tokens", data.get("output_tokens", 0)) or 0)
            total = int(data.get("total_tokens", prompt + completion) or 0)
        except (TypeError, ValueError):
            return None
        return cls(prompt, completion, total)


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One successful chat call.

    ``content``: the assistant's text; ``usage``: token counts (None if not reported);
    ``attempts``: attempts made (1 = first try); ``latency``: seconds from the call to the answer
    (waits and retries included); ``limiter_wait``: seconds spent waiting for the limiter;
    ``hedged``: a hedge request was sent; ``finish_reason``, ``model`` and ``request_id`` as the
    provider reported them (Anthropic's ``stop_reason`` in OpenAI's terms: ``stop``,
    ``length``, ``tool_calls``); ``cached``: answered from the client's cache (then
    ``attempts`` is 0 and nothing was sent); ``raw``: the decoded response body (a stream's: the
    answer its events add up to, in the API's non-streamed shape).
    """

    content: str
    model: str
    usage: Usage | None
    attempts: int
    latency: float
    limiter_wait: float = 0.0
    hedged: bool = False
    finish_reason: str | None = None
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    cached: bool = False


class ChatCache(Protocol):
    """What the client needs of a cache (:class:`flashkit.cache.CacheService` is one): async
    ``get(key)`` (None on a miss) and ``set(key, value)`` of JSON-able values."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...


def chat_cache_key(host: str, body: Mapping[str, Any]) -> str:
    """The cache key of a chat request: SHA-256 of the canonical JSON of the server's host and
    the request body (model, messages, sampling parameters): the same in every process and
    Python version."""
    canonical = json.dumps(
        {"host": host, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def breaker_handles(error: BaseException) -> bool:
    """The client's breaker policy (its ``handled``): rate limits, bad requests and bad keys say
    nothing about the upstream's health and do not count; every other failure does."""
    if isinstance(error, StructuredError):
        return error.category not in (
            ErrorCategory.VALIDATION,
            ErrorCategory.AUTHENTICATION,
            ErrorCategory.RATE_LIMIT,
        )
    return isinstance(error, Exception)


def malformed(what: str, response: httpx2.Response | None = None) -> ExternalServiceError:
    details: dict[str, Any] = {}
    if response is not None:
        details["status_code"] = response.status_code
    return ExternalServiceError(
        f"malformed response: {what}", code="malformed_response", details=details, retryable=True
    )
