"""The resilient LLM client: every flashkit primitive composed around one chat call.

>>> async with LLMClient(provider="openrouter") as client:        # key from FLASHKIT_API_KEY
...     result = await client.chat([{"role": "user", "content": "안녕"}], max_tokens=200)

:class:`LLMClient` lives in ``_llm``; what it speaks in (providers, usage, results, the cache
key) in ``_types``; how its arguments become a policy in ``_setup``; recent attempts' latency
and the bounds derived from it (:class:`FromLatency`) in ``_latency``; hedged requests in
``_hedging``; the answers cache in ``_cached``; streamed answers (:class:`ChatStream`) in
``_stream``; the APIs spoken (OpenAI chat completions, Anthropic Messages) in ``_dialects`` and
``_anthropic``.
"""

from flashkit.client._hedging import HEDGE_SKIPS, HedgeStats
from flashkit.client._latency import FromLatency, LatencyTracker
from flashkit.client._llm import LLMClient
from flashkit.client._stream import STREAM_INTERRUPTED, ChatStream
from flashkit.client._types import (
    DEFAULT_MODEL,
    PROVIDERS,
    ChatCache,
    ChatResult,
    Provider,
    Usage,
    breaker_handles,
    chat_cache_key,
)

__all__ = [
    "DEFAULT_MODEL",
    "PROVIDERS",
    "ChatCache",
    "ChatResult",
    "ChatStream",
    "FromLatency",
    "HEDGE_SKIPS",
    "HedgeStats",
    "LatencyTracker",
    "LLMClient",
    "Provider",
    "STREAM_INTERRUPTED",
    "Usage",
    "breaker_handles",
    "chat_cache_key",
]
