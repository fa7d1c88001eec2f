"""flashkit.sim: a simulated OpenAI-compatible LLM upstream with injectable faults.

>>> upstream = SimulatedUpstream(FaultProfile.preset("flaky"), seed=1, clock=clock)
>>> async with httpx2.AsyncClient(transport=upstream.transport(), base_url="http://sim/v1",
...                               headers={"Authorization": "Bearer sk-test"}) as client:
...     response = await client.post("/chat/completions", json={"model": "m", "messages": [...]})
>>> upstream.stats.ok, upstream.load.to_records()

It answers the two stages of the Korean flashcard pipeline (``@preset/nuance-creator``: a JSON
analysis; ``@preset/nuance-flashcard-generator``: TSV cards) from a shipped lexicon, and any other
chat with a short generic reply. The same code serves real HTTP: :attr:`SimulatedUpstream.asgi_app`
and :func:`serve` (``flashkit sim serve``).

It speaks what the official SDKs speak: ``POST /v1/chat/completions`` (``"stream": true``: server-
sent ``chat.completion.chunk`` events), Anthropic's ``POST /v1/messages`` (plain or streamed) and
``GET /v1/models``. Besides HTTP-level faults it injects the network faults of
:data:`NETWORK_FAULTS`, as the exceptions a real httpx2 client raises in process and on the socket
over HTTP (see :mod:`flashkit.sim._network_faults`).
"""

from flashkit.sim._asgi import stats_payload
from flashkit.sim._content import STAGE1_MODEL, STAGE2_MODEL, TEMPLATE_MARK, TSV_COLUMNS
from flashkit.sim._lexicon import Entry, Lexicon, lexicon
from flashkit.sim._models import MODEL_IDS
from flashkit.sim._network_faults import NETWORK_FAULTS, NetworkFault
from flashkit.sim._profile import PRESETS, FaultProfile, HeaderStyle, LimitMode
from flashkit.sim._ratelimit_headers import format_duration
from flashkit.sim._server import serve
from flashkit.sim._stats import OUTCOMES, LoadSeries, SimStats
from flashkit.sim._upstream import SimTransport, SimulatedUpstream

__all__ = [
    "Entry",
    "FaultProfile",
    "format_duration",
    "HeaderStyle",
    "Lexicon",
    "lexicon",
    "LimitMode",
    "LoadSeries",
    "MODEL_IDS",
    "NETWORK_FAULTS",
    "NetworkFault",
    "OUTCOMES",
    "PRESETS",
    "serve",
    "SimStats",
    "SimTransport",
    "SimulatedUpstream",
    "STAGE1_MODEL",
    "STAGE2_MODEL",
    "stats_payload",
    "TEMPLATE_MARK",
    "TSV_COLUMNS",
]
