"""The resilient LLM client: every flashkit primitive composed around one chat call.

>>> async with LLMClient(provider="openrouter") as client:        # key from FLASHKIT_API_KEY
...     result = await client.chat([{"role": "user", "content": "안녕"}], max_tokens=200)

:class:`LLMClient` lives in ``_llm``; what it speaks in (providers, usage, results, the cache
key) in ``_types``; how its arguments become a policy in ``_setup``.
"""

from flashkit.client._llm import LLMClient
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
    "LLMClient",
    "Provider",
    "Usage",
    "breaker_handles",
    "chat_cache_key",
]
