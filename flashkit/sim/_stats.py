"""What the simulated upstream saw: totals (:class:`SimStats`) and a per-second series
(:class:`LoadSeries`) for plots. Never holds an API key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OUTCOMES", "LoadSeries", "SimStats"]

OUTCOMES: Final = (
    "ok",
    "rate_limited",
    "server_error",
    "overloaded",
    "connect_error",
    "malformed",
    "client_error",
    "cancelled",
    "network_error",
)
"""Outcome columns of the load series. ``rate_limited`` includes spend-cap 429s; ``malformed``
includes truncated bodies and broken content; ``client_error`` is 400/401/404/405;
``connect_error`` includes refused connections; ``network_error`` is every other network fault
(resets, stalls, dribbled and oversized bodies)."""


@dataclass
class SimStats:
    """Counters since the start or the last reset. Each finished request counts once in exactly
    one of ``ok``, ``rate_limited`` (by kind: ``requests``, ``tokens``, ``too_large``,
    ``spend_cap``), ``server_errors`` (5xx, outages included), ``overloaded`` (529),
    ``connect_errors`` (outages), ``network_faults`` (by kind: ``refused``,
    ``reset_before_headers``, ``reset_mid_body``, ``stall_after_headers``, ``dribble``,
    ``oversized``), ``malformed``, ``truncated``, ``bad_content``, ``auth_errors`` (401),
    ``invalid_requests`` (400/404/405) or ``cancelled`` (the client gave up while waiting).
    ``ok`` includes ``GET /v1/models``. A request is finished when its headers go out (or it
    fails before them): a streamed body still on its way is not in ``in_flight``.
    ``requests`` counts arrivals (so it includes those still in flight). Tokens are those of
    answered requests; ``unknown_terms`` counts flashcard requests for words not in the lexicon.
    """

    requests: int = 0
    ok: int = 0
    rate_limited: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    overloaded: int = 0
    connect_errors: int = 0
    network_faults: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    truncated: int = 0
    bad_content: int = 0
    auth_errors: int = 0
    invalid_requests: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unknown_terms: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    @property
    def rate_limited_total(self) -> int:
        """All 429s, whatever the kind."""
        return sum(self.rate_limited.values())

    @property
    def finished(self) -> int:
        """Requests answered (or cancelled) so far."""
        return self.requests - self.in_flight

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe counters (status codes as strings)."""
        data = asdict(self)
        data["by_status"] = {str(code): n for code, n in sorted(self.by_status.items())}
        data["rate_limited"] = dict(sorted(self.rate_limited.items()))
        data["rate_limited_total"] = self.rate_limited_total
        data["network_faults"] = dict(sorted(self.network_faults.items()))
        return data


class LoadSeries:
    """Requests and outcomes per second of upstream time (second 0 = start), by arrival second:
    a request that arrives in second 12 and fails in second 14 counts in row 12."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[int, list[int]] = {}

    def arrive(self, second: int) -> None:
        row = self._rows.get(second)
        if row is None:
            row = self._rows[second] = [0] * (len(OUTCOMES) + 1)
        row[0] += 1

    def finish(self, second: int, outcome: int) -> None:
        """Count ``OUTCOMES[outcome]`` for requests that arrived in ``second``."""
        self._rows[second][outcome + 1] += 1

    def clear(self) -> None:
        self._rows.clear()

    def to_records(self) -> list[dict[str, int]]:
        """One dict per second from 0 to the last second seen (empty seconds as zeros):
        ``{"second", "requests", "ok", "rate_limited", ...}``."""
        if not self._rows:
            return []
        empty = [0] * (len(OUTCOMES) + 1)
        records = []
        for second in range(max(self._rows) + 1):
            row = self._rows.get(second, empty)
            record = {"second": second, "requests": row[0]}
            record.update(zip(OUTCOMES, row[1:], strict=True))
            records.append(record)
        return records

    def to_frame(self) -> pd.DataFrame:
        """The records as a pandas DataFrame indexed by second (needs pandas)."""
        import pandas as pd

        columns = ["second", "requests", *OUTCOMES]
        return pd.DataFrame(self.to_records(), columns=columns).set_index("second")
