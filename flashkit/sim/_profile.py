"""FaultProfile: everything the simulated upstream can do wrong, as one frozen value.

Times are seconds; rates are fractions of requests in [0, 1]; limits are per API key and per
minute. Windows (``outages``, ``brownouts``, ``limit_schedule``) are measured from the upstream's
start (its construction or its last ``reset()``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from flashkit.errors import ValidationError
from flashkit.sim._network_faults import NETWORK_FAULTS

__all__ = ["PRESETS", "FaultProfile", "HeaderStyle", "LimitMode", "check_limit"]

LimitMode = Literal["token_bucket", "fixed_window"]
HeaderStyle = Literal["openai", "anthropic", "none"]
_LIMIT_MODES: Final = ("token_bucket", "fixed_window")
_HEADER_STYLES: Final = ("openai", "anthropic", "none")
_OVER_CAPACITY: Final = (503, 529)
# The fields that are fractions of requests in [0, 1].
_FRACTIONS: Final = (
    "error_rate",
    "overload_rate",
    "malformed_rate",
    "truncated_rate",
    "bad_content_rate",
    "outage_connect_fraction",
    "brownout_error_rate",
    "fenced_rate",
    "first_token_fraction",
    *(f"{kind}_rate" for kind in NETWORK_FAULTS),
)
# The network faults that hit an answer on its way (all but "refused"): at most 1 in total.
_ANSWER_FAULTS: Final = tuple(f"{kind}_rate" for kind in NETWORK_FAULTS if kind != "refused")


def _bad(name: str, value: object, must: str, fix: str) -> ValidationError:
    return ValidationError(
        f"FaultProfile.{name}={value!r}: {must}; {fix}",
        code="invalid_config",
        details={"field": name},
    )


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(name, value, "must be a finite number", "pass an int or float")
    return float(value)


def _check_fraction(name: str, value: object) -> None:
    number = _number(name, value)
    if not 0.0 <= number <= 1.0:
        raise _bad(name, value, "must be a fraction in [0, 1]", "e.g. 0.05 for 5 % of requests")


def _check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    number = _number(name, value)
    if number < 0.0 or (positive and number == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise _bad(name, value, f"must be seconds {bound}", "pass a duration in seconds")


def check_limit(name: str, value: object) -> None:
    """Raise a ValidationError naming ``name`` unless ``value`` is None or a number >= 1."""
    if value is None:
        return
    number = _number(name, value)
    if number < 1.0:
        raise _bad(name, value, "must be >= 1 per minute, or None", "use None for no limit")


def _check_windows(name: str, value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad(name, value, "must be a tuple of (start, end) pairs", "e.g. ((60.0, 120.0),)")
    for window in value:
        if not (isinstance(window, tuple) and len(window) == 2):
            raise _bad(name, value, "each window must be a (start, end) pair of seconds", "")
        start, end = (_number(name, part) for part in window)
        if not 0.0 <= start < end:
            raise _bad(
                name, value, f"window {window!r} needs 0 <= start < end", "swap or fix the bounds"
            )


def _check_network_windows(value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad(
            "network_windows",
            value,
            "must be a tuple of (start, end, fault) triples",
            'e.g. ((60.0, 90.0, "refused"),)',
        )
    for window in value:
        if not (isinstance(window, tuple) and len(window) == 3):
            raise _bad("network_windows", window, "each window must be (start, end, fault)", "")
        if window[2] not in NETWORK_FAULTS:
            raise _bad("network_windows", window, f"the fault must be one of {NETWORK_FAULTS}", "")
        _check_windows("network_windows", (window[:2],))


def _check_int(name: str, value: object, minimum: int, must: str) -> None:
    """Raise unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(name, value, must, "")


def _check_schedule(value: object) -> None:
    if not isinstance(value, tuple):
        raise _bad(
            "limit_schedule",
            value,
            "must be a tuple of (at_seconds, rpm, tpm)",
            "e.g. ((300.0, 30, None),)",
        )
    last = -math.inf
    for step in value:
        if not (isinstance(step, tuple) and len(step) == 3):
            raise _bad("limit_schedule", step, "each step must be (at_seconds, rpm, tpm)", "")
        _check_seconds("limit_schedule", step[0])
        check_limit("limit_schedule", step[1])
        check_limit("limit_schedule", step[2])
        if step[0] < last:
            raise _bad("limit_schedule", step, "steps must be in time order", "sort them")
        last = step[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultProfile:
    """How the simulated upstream behaves. All fields keyword-only; tweak a preset with
    ``dataclasses.replace(FaultProfile.preset("flaky"), error_rate=0.2)``.

    Rate limits (per API key; ``None`` means no limit):

    - ``rpm`` / ``tpm``: requests and tokens per minute. A request costs its prompt tokens plus
      ``max_tokens`` when admitted; the difference to the real usage is settled at completion.
    - ``limit_mode``: ``"token_bucket"`` (Anthropic: refilled continuously at limit/60 per second,
      holding ``bucket_fraction`` of a minute's limit, at least one request) or ``"fixed_window"``
      (OpenAI: counters reset every 60 s from the upstream's start).
    - ``count_rejected``: rejected requests also use up the request limit ("continuously
      resending a request won't work"). Default ``None``: True for fixed windows, else False.
    - ``limit_schedule``: ``((at_seconds, rpm, tpm), ...)``: the limits change at those times.
    - ``header_style``: ``"openai"`` (``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``,
      resets like ``6m0s``), ``"anthropic"`` (``anthropic-ratelimit-{requests,tokens}-
      {limit,remaining,reset}``, RFC 3339 resets) or ``"none"``; sent on successes and 429s.
      A rate-limit 429 always carries ``retry-after`` (whole seconds, rounded up: enough).
    - ``spend_cap_tokens``: after this many tokens in total (all keys), every request gets a 429
      about the exhausted quota, without ``retry-after`` (not retryable).

    Faults (fractions of requests): ``error_rate`` (500/502/503), ``overload_rate`` (529
    ``overloaded_error``), ``malformed_rate`` (200 with a body that is not JSON),
    ``truncated_rate`` (200 whose body stops mid-way), ``bad_content_rate`` (valid envelope,
    broken content: stage-1 JSON missing a field, stage-2 TSV with only its header).
    ``capacity``: hidden concurrency; more requests in flight than this get
    ``over_capacity_status`` (529 or 503). ``outages``: ``((start, end), ...)`` seconds in which
    every request fails (a connection error with probability ``outage_connect_fraction``, else a
    503). ``brownouts``: windows in which the error rate is at least ``brownout_error_rate`` and
    latency is ``brownout_latency_factor`` times longer.

    Latency: lognormal with ``latency_median`` and ``latency_p99`` seconds (0 and 0: instant),
    multiplied by ``1 + load_slowdown * (in_flight - 1)``. Rejections (401, 400, 429, 529,
    outages) answer after ``reject_latency`` seconds; 5xx after the sampled latency.

    Requests: ``invalid_keys`` are refused with 401, like a missing key; prompt tokens plus
    ``max_tokens`` above ``context_limit`` get 400 ``context_length_exceeded``.
    ``fenced_rate``: stage-1 replies wrapped in a ```json fence.

    Streaming (``"stream": true``): the headers and the first chunk come after
    ``first_token_fraction`` of the sampled latency (the time to first token); the other chunks
    are spread evenly over the rest, so a streamed answer ends when the plain one would arrive.

    Network faults (fractions of requests; what a client sees in process and over a real socket
    is in :mod:`flashkit.sim._network_faults`): ``refused_rate`` (the connection is refused:
    nothing reaches the model, nothing is charged), and, for answers that would be a 200,
    ``reset_before_headers_rate``, ``reset_mid_body_rate`` (a stream: after some chunks),
    ``stall_after_headers_rate`` (no byte after the headers, or after some chunks of a stream,
    for ``stall_seconds``, then the server closes the connection: a client's read timeout fires
    first), ``dribble_rate`` (the body trickles at ``dribble_bytes_per_second``) and
    ``oversized_rate`` (a valid body padded to ``oversized_bytes``: JSON whitespace, or SSE
    comment lines in a stream). ``network_windows``: ``((start, end, fault), ...)`` seconds in
    which every request gets ``fault`` (one of :data:`NETWORK_FAULTS`); a ``"refused"`` window
    over ``flashkit sim serve`` closes the listening socket for real.
    """

    rpm: float | None = None
    tpm: float | None = None
    limit_mode: LimitMode = "token_bucket"
    bucket_fraction: float = 1.0
    count_rejected: bool | None = None
    limit_schedule: tuple[tuple[float, float | None, float | None], ...] = ()
    header_style: HeaderStyle = "openai"
    spend_cap_tokens: int | None = None
    error_rate: float = 0.0
    overload_rate: float = 0.0
    malformed_rate: float = 0.0
    truncated_rate: float = 0.0
    bad_content_rate: float = 0.0
    capacity: int | None = None
    over_capacity_status: int = 529
    outages: tuple[tuple[float, float], ...] = ()
    outage_connect_fraction: float = 0.5
    brownouts: tuple[tuple[float, float], ...] = ()
    brownout_error_rate: float = 0.3
    brownout_latency_factor: float = 3.0
    latency_median: float = 0.5
    latency_p99: float = 2.0
    load_slowdown: float = 0.0
    reject_latency: float = 0.02
    invalid_keys: tuple[str, ...] = ("invalid",)
    context_limit: int = 128_000
    fenced_rate: float = 0.3
    first_token_fraction: float = 0.2
    refused_rate: float = 0.0
    reset_before_headers_rate: float = 0.0
    reset_mid_body_rate: float = 0.0
    stall_after_headers_rate: float = 0.0
    dribble_rate: float = 0.0
    oversized_rate: float = 0.0
    network_windows: tuple[tuple[float, float, str], ...] = ()
    stall_seconds: float = 300.0
    dribble_bytes_per_second: float = 64.0
    oversized_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        self._check_limits()
        self._check_faults()
        self._check_latency()
        if not isinstance(self.invalid_keys, tuple) or not all(
            isinstance(key, str) for key in self.invalid_keys
        ):
            raise _bad("invalid_keys", "...", "must be a tuple of strings", 'e.g. ("invalid",)')
        _check_int("context_limit", self.context_limit, 1, "must be an int >= 1 (tokens)")
        self._check_network()

    def _check_limits(self) -> None:
        """The rate limits, their mode, headers and schedule, and the spend cap."""
        check_limit("rpm", self.rpm)
        check_limit("tpm", self.tpm)
        if self.limit_mode not in _LIMIT_MODES:
            raise _bad("limit_mode", self.limit_mode, f"must be one of {_LIMIT_MODES}", "")
        if self.header_style not in _HEADER_STYLES:
            raise _bad("header_style", self.header_style, f"must be one of {_HEADER_STYLES}", "")
        fraction = _number("bucket_fraction", self.bucket_fraction)
        if not 0.0 < fraction <= 1.0:
            raise _bad(
                "bucket_fraction",
                self.bucket_fraction,
                "must be in (0, 1]",
                "1.0 holds a full minute of the limit, 1/60 one second's worth",
            )
        if self.count_rejected is not None and not isinstance(self.count_rejected, bool):
            raise _bad("count_rejected", self.count_rejected, "must be True, False or None", "")
        _check_schedule(self.limit_schedule)
        if self.spend_cap_tokens is not None:
            _check_int("spend_cap_tokens", self.spend_cap_tokens, 0, "must be an int >= 0 or None")

    def _check_faults(self) -> None:
        """The fault rates, the hidden capacity, outages and brownouts."""
        for name in _FRACTIONS:
            _check_fraction(name, getattr(self, name))
        if self.malformed_rate + self.truncated_rate + self.bad_content_rate > 1.0:
            raise _bad(
                "malformed_rate",
                self.malformed_rate,
                "malformed_rate + truncated_rate + bad_content_rate must be <= 1",
                "lower one of them",
            )
        if self.capacity is not None:
            _check_int("capacity", self.capacity, 1, "must be an int >= 1 or None")
        if self.over_capacity_status not in _OVER_CAPACITY:
            raise _bad("over_capacity_status", self.over_capacity_status, "must be 503 or 529", "")
        _check_windows("outages", self.outages)
        _check_windows("brownouts", self.brownouts)
        if _number("brownout_latency_factor", self.brownout_latency_factor) < 1.0:
            raise _bad("brownout_latency_factor", self.brownout_latency_factor, "must be >= 1", "")

    def _check_network(self) -> None:
        """The network faults' rates (checked with the other fractions), windows and sizes."""
        if sum(getattr(self, name) for name in _ANSWER_FAULTS) > 1.0:
            raise _bad(
                "reset_before_headers_rate",
                self.reset_before_headers_rate,
                f"the network fault rates {_ANSWER_FAULTS} must add up to <= 1",
                "lower one of them",
            )
        _check_network_windows(self.network_windows)
        _check_seconds("stall_seconds", self.stall_seconds, positive=True)
        if _number("dribble_bytes_per_second", self.dribble_bytes_per_second) <= 0.0:
            raise _bad(
                "dribble_bytes_per_second",
                self.dribble_bytes_per_second,
                "must be > 0 (bytes per second)",
                "e.g. 64.0",
            )
        _check_int("oversized_bytes", self.oversized_bytes, 1, "must be an int >= 1 (bytes)")

    @property
    def answer_fault_rate(self) -> float:
        """The network faults that hit answers, added up (0.0: no extra random draw)."""
        return float(sum(getattr(self, name) for name in _ANSWER_FAULTS))

    def _check_latency(self) -> None:
        """The latency distribution, its growth under load and the rejections' latency."""
        _check_seconds("latency_median", self.latency_median)
        _check_seconds("latency_p99", self.latency_p99)
        if self.latency_p99 < self.latency_median or (
            self.latency_median == 0.0 and self.latency_p99 != 0.0
        ):
            raise _bad(
                "latency_p99",
                self.latency_p99,
                f"must be >= latency_median={self.latency_median!r} (and 0 when the median is 0)",
                "p99 is the slow tail: choose a value above the median",
            )
        if _number("load_slowdown", self.load_slowdown) < 0.0:
            raise _bad("load_slowdown", self.load_slowdown, "must be >= 0", "0 disables it")
        _check_seconds("reject_latency", self.reject_latency)

    @property
    def counts_rejected(self) -> bool:
        """Whether rejected requests use up the request limit (``count_rejected`` resolved)."""
        if self.count_rejected is not None:
            return self.count_rejected
        return self.limit_mode == "fixed_window"

    def published_limits(self) -> dict[str, Any]:
        """What a provider would publish about its limits: ``rpm`` and ``tpm`` at the start
        (None: no limit), how it counts them (``style``: the ``limit_mode``) and, for token
        buckets, how many requests may go at once (``burst``)."""
        burst = None
        if self.rpm is not None and self.limit_mode == "token_bucket":
            burst = max(1.0, self.rpm * self.bucket_fraction)
        return {"rpm": self.rpm, "tpm": self.tpm, "style": self.limit_mode, "burst": burst}

    @staticmethod
    def preset(name: str, **changes: Any) -> FaultProfile:
        """The named preset (see ``PRESETS``), optionally with some fields changed."""
        try:
            profile = PRESETS[name]
        except KeyError:
            raise ValidationError(
                f"FaultProfile.preset({name!r}): unknown preset; use one of {sorted(PRESETS)}",
                code="invalid_config",
                details={"field": "preset"},
            ) from None
        return dataclasses.replace(profile, **changes) if changes else profile


_PRESETS: dict[str, FaultProfile] = {
    # No limits and no faults: a fast, well-behaved provider.
    "healthy": FaultProfile(latency_median=0.5, latency_p99=2.0),
    # A few percent of everything that goes wrong in practice, under a generous limit.
    "flaky": FaultProfile(
        rpm=600,
        tpm=1_000_000,
        error_rate=0.05,
        overload_rate=0.02,
        malformed_rate=0.01,
        truncated_rate=0.01,
        bad_content_rate=0.01,
        latency_median=1.0,
        latency_p99=5.0,
        load_slowdown=0.01,
    ),
    # OpenAI-style per-minute windows that a naive client overruns (rejections count).
    "rate_limited": FaultProfile(
        rpm=60,
        tpm=60_000,
        limit_mode="fixed_window",
        header_style="openai",
        latency_median=0.8,
        latency_p99=3.0,
    ),
    # Healthy, but down completely from minute 1 to minute 3.
    "outage": FaultProfile(
        outages=((60.0, 180.0),),
        error_rate=0.01,
        latency_median=0.8,
        latency_p99=3.0,
    ),
    # Healthy, but slow and failing a third of requests from 30 s to 150 s.
    "brownout": FaultProfile(
        brownouts=((30.0, 150.0),),
        brownout_error_rate=0.35,
        brownout_latency_factor=4.0,
        error_rate=0.01,
        latency_median=0.8,
        latency_p99=3.0,
    ),
    # Anthropic tier-1-like: continuous buckets, real headers, seconds-long calls that slow down
    # under load, a hidden capacity, and the occasional overload and broken reply.
    "llm_realistic": FaultProfile(
        rpm=50,
        tpm=30_000,
        limit_mode="token_bucket",
        header_style="anthropic",
        error_rate=0.005,
        overload_rate=0.01,
        truncated_rate=0.002,
        bad_content_rate=0.01,
        capacity=32,
        latency_median=2.5,
        latency_p99=12.0,
        load_slowdown=0.02,
        reject_latency=0.05,
    ),
}

PRESETS: Final[Mapping[str, FaultProfile]] = MappingProxyType(_PRESETS)
"""The named profiles: healthy, flaky, rate_limited, outage, brownout, llm_realistic."""
