"""The client's answers cache: a request identical to an earlier one is answered from a
:class:`~flashkit.client.ChatCache` (``ChatResult.cached``), and answers are stored as they
come. A cache that fails is skipped, never the call (logged on ``flashkit.client``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from flashkit.client._types import ChatCache, ChatResult, Usage
from flashkit.clock import Clock

__all__ = ["from_cache", "to_cache"]

logger = logging.getLogger("flashkit.client")


async def from_cache(
    cache: ChatCache, key: str, parse: Callable[[str], Any] | None, clock: Clock, name: str
) -> ChatResult | None:
    """The cached answer under ``key`` as a result (``latency``: seconds the read took on
    ``clock``), or None: a miss, a broken cache, or an answer ``parse`` no longer accepts."""
    start = clock.now()
    try:
        entry = await cache.get(key)
    except Exception as error:  # a broken cache is skipped, never the call
        logger.warning("%s: cache read failed (%s); asking the upstream", name, error)
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        return None
    raw: dict[str, Any] = {"cached": True}
    if parse is not None:
        try:
            raw["parsed"] = parse(entry["content"])
        except (ValueError, KeyError, TypeError):
            return None  # no longer acceptable (a stricter parser): ask again
    return ChatResult(
        content=entry["content"],
        model=str(entry.get("model") or ""),
        usage=Usage.from_json(entry.get("usage")),
        attempts=0,
        latency=clock.now() - start,
        finish_reason=entry.get("finish_reason"),
        request_id=entry.get("request_id"),
        raw=raw,
        cached=True,
    )


async def to_cache(cache: ChatCache, key: str, result: ChatResult, name: str) -> None:
    """Store ``result`` under ``key`` (a failure is logged; the answer stands)."""
    entry = {
        "content": result.content,
        "model": result.model,
        "usage": dataclasses.asdict(result.usage) if result.usage is not None else None,
        "finish_reason": result.finish_reason,
        "request_id": result.request_id,
    }
    try:
        await cache.set(key, entry)
    except Exception as error:  # the answer is returned all the same
        logger.warning("%s: cache write failed (%s)", name, error)
