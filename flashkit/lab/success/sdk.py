"""The ``sdk`` policy: what a user picks instead of :class:`~flashkit.client.LLMClient`, the
official openai SDK (``openai.AsyncOpenAI``) with its documented defaults, on the same workload.

What the SDK brings, unchanged: ``max_retries=2`` (three attempts), retrying 408, 409, 429, 5xx
and connection errors and timeouts, its own backoff (0.5 s doubling up to 8 s, minus up to 25 %
jitter) unless the answer carries ``retry-after-ms`` / ``retry-after`` of at most 120 s, which
it waits instead (a longer one is not retried), ``x-should-retry`` obeyed, a 600 s read timeout.
Nothing else: no limiter, no breaker, no retry budget, and parsing the answer is outside its
retries (a broken answer fails the word, as for any SDK user who does not wrap the call). The
words run at most ``concurrency`` at once under an ``asyncio.Semaphore``
(:func:`~flashkit.lab.success._record.drive`), and the SDK talks to the simulator through
``http_client=httpx2.AsyncClient(transport=<the recording transport>)``, so its exchanges are
logged like every policy's.

Virtual time: the SDK sleeps between attempts with ``anyio.sleep``, which on asyncio is
``asyncio.sleep``, so its waits run on the virtual event loop (:func:`flashkit.clock.run_virtual`)
and cost no wall time. It reads the wall clock (``time.time()``) only to turn a ``retry-after``
HTTP-date into seconds; the simulator sends whole seconds, so that never happens here (against a
server sending dates in virtual time the SDK would compute a wrong wait). Its jitter draws from
the global ``random``; :func:`run_sdk` points it at the run's seeded ``random.Random`` (a patch of
``openai._base_client.random``, as the SDK has no way to inject one), so a run is deterministic
from its seed.

Needs the openai package (the ``bench`` extra: ``pip install 'flashkit[bench]'``).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any
from unittest import mock

import httpx2

from flashkit.lab.success._record import Outcome, RunSetup, drive
from flashkit.lab.success.original import original_stages
from flashkit.lab.success.workload import API_KEY, BASE_URL, reply_content

__all__ = ["openai_sdk", "run_sdk"]


def openai_sdk() -> ModuleType:
    """The ``openai`` package, or an ``ImportError`` naming the extra that installs it."""
    try:
        import openai
    except ModuleNotFoundError as error:
        if error.name != "openai":
            raise
        raise ImportError(
            "the 'sdk' policy runs the official openai SDK, which is not installed: "
            "pip install 'flashkit[bench]'"
        ) from error
    return openai


@contextlib.contextmanager
def _seeded_jitter(openai: ModuleType, rng: random.Random) -> Iterator[None]:
    """The SDK's retry jitter drawn from ``rng`` (it calls ``random()`` from its base client)."""
    base = openai._base_client  # the module whose ``random`` the backoff calls
    if not callable(getattr(base, "random", None)):  # another layout: leave it unseeded
        yield
        return
    with mock.patch.object(base, "random", rng.random):
        yield


async def run_sdk(run: RunSetup) -> Outcome:
    """Both stages of every word through ``openai.AsyncOpenAI(base_url=..., api_key=...,
    http_client=httpx2.AsyncClient(transport=run.transport))`` with the SDK's defaults
    (``max_retries=2``, its backoff and ``retry-after`` handling, its timeout), the answers parsed
    by the original's parsers after the call. ``run.clock`` is the run's virtual clock (the loop
    the SDK's sleeps run on); no breaker, so no trips."""
    openai = openai_sdk()
    http = httpx2.AsyncClient(transport=run.transport)
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=BASE_URL, http_client=http)

    async def call_stage(content: bytes, parse: Callable[[str], Any]) -> Any:
        body = json.loads(content)
        completion = await client.chat.completions.create(**body)
        text = completion.choices[0].message.content
        return parse(reply_content({"choices": [{"message": {"content": text}}]}))

    process = original_stages(run.workload, call_stage)
    try:
        with _seeded_jitter(openai, run.rng()):
            records = await drive(run.workload, run.words, process)
    finally:
        await client.close()
    return records, 0, {"max_retries": client.max_retries}
