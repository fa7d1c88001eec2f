"""Running a sans-I/O flow: a generator that yields what it needs done (a store call, a Redis
round trip, a sleep) and is sent the answer or thrown the error. One driver for each world: the
blocking one and the asyncio one; the flow itself is written once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["run_async", "run_sync"]

T = TypeVar("T")


def _advance(flow: Generator[Any, Any, Any], reply: Any, error: BaseException | None) -> Any:
    """(finished, what the flow asks next or returned)."""
    try:
        return False, (flow.send(reply) if error is None else flow.throw(error))
    except StopIteration as stop:
        return True, stop.value


def run_sync(flow: Generator[Any, Any, T], perform: Callable[[Any], Any]) -> T:
    """Drive ``flow`` to its return value, doing each request with ``perform``."""
    done, op = _advance(flow, None, None)
    while not done:
        try:
            reply = perform(op)
        except BaseException as error:
            done, op = _advance(flow, None, error)
        else:
            done, op = _advance(flow, reply, None)
    result: T = op
    return result


async def run_async(flow: Generator[Any, Any, T], perform: Callable[[Any], Awaitable[Any]]) -> T:
    """As :func:`run_sync`, awaiting each request's ``perform``."""
    done, op = _advance(flow, None, None)
    while not done:
        try:
            reply = await perform(op)
        except BaseException as error:
            done, op = _advance(flow, None, error)
        else:
            done, op = _advance(flow, reply, None)
    result: T = op
    return result
