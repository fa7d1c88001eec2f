"""The settings model behind :mod:`flashkit.config`: the sections, their defaults and bounds,
and :func:`load_settings` (defaults < ``flashkit.toml`` < ``FLASHKIT_*`` < overrides)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

from flashkit.client import DEFAULT_MODEL
from flashkit.errors import ValidationError

__all__ = [
    "CONFIG_FILE",
    "BreakerSettings",
    "CacheSettings",
    "HedgingSettings",
    "LimitSettings",
    "RetrySettings",
    "RunSettings",
    "Settings",
    "TelemetrySettings",
    "load_settings",
    "original_settings",
]

CONFIG_FILE: Final = "flashkit.toml"
"""The settings file read from the working directory when no other is named."""

Policy = Literal["tuned", "original"]
LimitStyle = Literal["auto", "token_bucket", "fixed_window"]
JitterName = Literal["none", "full", "equal", "decorrelated"]
BudgetName = Literal["finagle", "grpc", "aws", "none"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSettings:
    """What to run against and how much at once.

    ``provider``: ``openrouter`` | ``openai`` (any OpenAI-compatible ``base_url``) |
    ``anthropic`` (the Messages API; key from ``FLASHKIT_API_KEY`` or ``ANTHROPIC_API_KEY``) |
    ``sim``;
    ``batch_size``: requests in flight at once (50: enough to keep a 600-per-minute limit busy
    at seconds-long calls; twice as many words are in progress, see :attr:`words_in_flight`);
    ``spares``: copies an unfinished call may be raced with at the end of
    a run, when slots sit idle (2; 0: none); ``max_tokens`` and ``temperature`` per call;
    ``db``: the state database URL; ``redis``: a Redis URL to share the provider's limit;
    ``profile`` and ``seed``: the simulator's fault profile (``provider = "sim"``).
    """

    provider: Literal["openrouter", "openai", "anthropic", "sim"] = "openrouter"
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    batch_size: int = 50
    spares: int = 2
    max_tokens: int = 2000
    temperature: float = 0.7
    db: str = "sqlite:///flashkit.db"
    redis: str | None = None
    output: str = "output"
    profile: str = "flaky"
    seed: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrySettings:
    """Retry of each call: ``max_attempts`` in all, backoff from ``initial_delay`` growing by
    ``multiplier`` up to ``max_delay`` seconds with ``jitter``; a server's ``retry-after`` is
    honoured up to ``max_retry_after`` seconds; ``budget``: the retry budget shared by all calls
    (``finagle``: 20 % of requests plus 10/s; ``grpc``; ``aws``; ``none``); ``breaker_wait``:
    seconds a call may wait in all for an open circuit breaker (600: it rides out an outage the
    breaker detected without spending attempts or retry tokens on rejections; 0: rejected at
    once); ``backoff_from_start``: each delay counts from the start of the failed attempt, so
    an attempt slower to fail than the delay drawn is retried at once (on: a brownout's slow
    5xx are not made slower still by the backoff; ``retry-after`` still counts from the
    answer; see ``docs/design/retry.md``)."""

    max_attempts: int = 10
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: JitterName = "full"
    max_retry_after: float = 120.0
    respect_retry_after: bool = True
    budget: BudgetName = "finagle"
    breaker_wait: float = 600.0
    backoff_from_start: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerSettings:
    """The circuit breaker: open when at least ``failure_threshold`` of the calls of the last
    ``sampling_duration`` seconds failed (and at least ``min_throughput`` were made), for
    ``break_duration`` seconds, times ``growth`` each time it opens again without having closed,
    up to ``max_break_duration`` (a blip costs seconds; an outage is not probed every few
    seconds); ``half_open_max_calls`` probes decide whether it closes. Rate limits, bad requests
    and bad keys do not count."""

    enabled: bool = True
    failure_threshold: float = 0.5
    min_throughput: int = 20
    sampling_duration: float = 30.0
    break_duration: float = 5.0
    growth: float = 2.0
    max_break_duration: float = 60.0
    half_open_max_calls: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitSettings:
    """The provider's limits, mirrored by the client so it never runs into them.

    ``rpm`` / ``tpm``: requests and tokens per minute (None: unknown). ``style``: how the
    provider counts — ``token_bucket`` (refilled continuously, a minute's worth at once:
    Anthropic), ``fixed_window`` (per-minute windows counting ``max_tokens`` as spent: OpenAI),
    or ``auto`` (from the provider). ``burst``: requests a token bucket lets go at once (None: a
    minute's worth). ``margin``: seconds of the provider's refill a bucket keeps in reserve
    from its burst (0.5), so requests delayed on their way (event loop, network) still arrive
    within the provider's count. ``adaptive``: learn an unknown request limit from rate-limit
    headers and 429s. ``timeout``: longest wait for the limiter per attempt (None: unbounded).
    """

    rpm: float | None = None
    tpm: float | None = None
    style: LimitStyle = "auto"
    burst: float | None = None
    margin: float = 0.5
    adaptive: bool = True
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class HedgingSettings:
    """Time bounds per attempt and hedged requests, in seconds (``docs/design/hedging.md``).

    ``attempt_timeout``: the longest an HTTP exchange may take. With ``adaptive_timeout`` (on)
    the timeout in force follows recent attempts: their ``timeout_quantile`` (0.99) times
    ``timeout_factor`` (3), at least ``timeout_floor`` (10 s) and at most ``attempt_timeout``,
    so a stalled attempt is abandoned and retried long before 60 s. ``deadline``: seconds for a
    whole call (None: unbounded).

    ``hedge`` (on): a request that has not answered after ``after`` seconds (None: the
    ``hedge_quantile``, 0.9, of recent attempts, at least ``hedge_floor``, 1 s) gets a second
    copy, the first good answer winning, but only from capacity no one else asks for: no
    retry-after running, no attempt waiting for a slot or on the limiters, room in them now,
    and a retry token from the budget; skipped otherwise (``FLASHKIT_HEDGING=off`` and
    ``FLASHKIT_ADAPTIVE_TIMEOUT=off`` switch the two off)."""

    attempt_timeout: float = 60.0
    adaptive_timeout: bool = True
    timeout_quantile: float = 0.99
    timeout_factor: float = 3.0
    timeout_floor: float = 10.0
    deadline: float | None = None
    hedge: bool = True
    after: float | None = None
    hedge_quantile: float = 0.9
    hedge_floor: float = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheSettings:
    """The answers cache, a :class:`~flashkit.cache.CompressedCache`: ``enabled``; ``url`` of
    its store (None: a table in the state database; ``redis://…`` to share it between machines;
    any SQLite or PostgreSQL URL); entries live ``ttl`` seconds (30 days) ± ``ttl_jitter``
    (0.1: ±10 %). Compressed (``notebooks/03_compression.ipynb``) with ``codec`` (``zstd`` |
    ``zlib`` | ``lz4`` | ``none``) at ``level`` (None: the codec's default; zstd up to 22, zlib
    -1 to 9, lz4 1 to 12), values under ``threshold`` bytes as they are; ``dictionary``: zstd
    trains one of ``dictionary_size`` bytes on the first 1,000 values. Stampedes
    (``notebooks/05_cache_stampede.ipynb``): ``single_flight`` (one computation per key at a
    time) and ``early_refresh`` (XFetch, the more eagerly the larger ``beta``)."""

    enabled: bool = True
    url: str | None = None
    ttl: float = 30 * 24 * 3600.0
    ttl_jitter: float = 0.1
    codec: Literal["zstd", "zlib", "lz4", "none"] = "zstd"
    level: int | None = None
    threshold: int = 1024
    dictionary: bool = True
    dictionary_size: int = 16_384
    single_flight: bool = True
    early_refresh: bool = True
    beta: float = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TelemetrySettings:
    """OpenTelemetry: ``enabled`` exports spans and metrics (OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) under ``service_name``."""

    enabled: bool = False
    service_name: str = "flashkit"


_SECTIONS: Final[Mapping[str, type]] = {
    "run": RunSettings,
    "retry": RetrySettings,
    "breaker": BreakerSettings,
    "limits": LimitSettings,
    "hedging": HedgingSettings,
    "cache": CacheSettings,
    "telemetry": TelemetrySettings,
}
_FLAGS: Final[Mapping[str, str]] = {
    "FLASHKIT_BREAKER": "breaker.enabled",
    "FLASHKIT_ADAPTIVE_LIMIT": "limits.adaptive",
    "FLASHKIT_TELEMETRY": "telemetry.enabled",
    "FLASHKIT_CACHE": "cache.enabled",
    "FLASHKIT_HEDGING": "hedging.hedge",
    "FLASHKIT_ADAPTIVE_TIMEOUT": "hedging.adaptive_timeout",
}
# Not settings: read elsewhere (API keys, test services), so never "unknown".
_NOT_SETTINGS: Final = frozenset(
    {"FLASHKIT_API_KEY", "FLASHKIT_REDIS_URL", "FLASHKIT_DATABASE_URL", "FLASHKIT_POLICY"}
)
# (low, high) bounds of numeric fields; None: unbounded on that side.
_BOUNDS: Final[Mapping[str, tuple[float | None, float | None]]] = {
    "run.batch_size": (1, 10_000),
    "run.spares": (0, 10),
    "run.max_tokens": (1, None),
    "run.temperature": (0, 2),
    "run.seed": (0, None),
    "retry.max_attempts": (1, 100),
    "retry.initial_delay": (0, None),
    "retry.max_delay": (0, None),
    "retry.multiplier": (1, None),
    "retry.max_retry_after": (0, None),
    "retry.breaker_wait": (0, None),
    "breaker.failure_threshold": (1e-9, 1),
    "breaker.min_throughput": (1, None),
    "breaker.sampling_duration": (1e-6, None),
    "breaker.break_duration": (1e-6, None),
    "breaker.growth": (1, 16),
    "breaker.max_break_duration": (1e-6, None),
    "breaker.half_open_max_calls": (1, 1000),
    "limits.rpm": (1, None),
    "limits.tpm": (1, None),
    "limits.burst": (1, None),
    "limits.margin": (0, 60),
    "limits.timeout": (1e-9, None),
    "hedging.attempt_timeout": (1e-9, None),
    "hedging.timeout_quantile": (0.5, 1),
    "hedging.timeout_factor": (1, 100),
    "hedging.timeout_floor": (1e-9, None),
    "hedging.deadline": (1e-9, None),
    "hedging.after": (1e-9, None),
    "hedging.hedge_quantile": (0.5, 1),
    "hedging.hedge_floor": (0, None),
    "cache.ttl": (1e-3, None),
    "cache.ttl_jitter": (0, 0.99),
    "cache.level": (-131_072, 22),
    "cache.threshold": (0, None),
    "cache.dictionary_size": (256, 1024 * 1024),
    "cache.beta": (0, 100),
}
# The levels each codec takes, (low, high): checked once every layer of settings is applied.
_CACHE_LEVELS: Final[Mapping[str, tuple[int, int]]] = {
    "zstd": (-131_072, 22),
    "zlib": (-1, 9),
    "lz4": (1, 12),
}
_S = TypeVar("_S")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything a flashcard run is configured with; see the module docstring for the order
    in which sources win. ``sources`` maps ``"section.field"`` to where its value came from
    (``"default"``, ``"policy original"``, a file path, ``"env FLASHKIT_…"``, a command-line
    option); :meth:`source` reads it."""

    policy: Policy = "tuned"
    run: RunSettings = field(default_factory=RunSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    hedging: HedgingSettings = field(default_factory=HedgingSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def words_in_flight(self) -> int:
        """Words in progress at once: twice ``run.batch_size`` (the requests in flight), so a
        word waiting out a retry's backoff never leaves a request slot idle."""
        return 2 * self.run.batch_size

    def source(self, key: str) -> str:
        """Where ``"section.field"`` came from (``"default"`` unless set elsewhere)."""
        _split(key, "Settings.source")
        return self.sources.get(key, "default")

    def get(self, key: str) -> Any:
        """The value of ``"section.field"``."""
        section, name = _split(key, "Settings.get")
        return getattr(getattr(self, section), name)

    def items(self) -> list[tuple[str, Any, str]]:
        """Every setting as ``(key, value, source)``, section by section."""
        rows = [("policy", self.policy, self.sources.get("policy", "default"))]
        for section, kind in _SECTIONS.items():
            for f in dataclasses.fields(kind):
                key = f"{section}.{f.name}"
                rows.append((key, self.get(key), self.source(key)))
        return rows

    def replace(self, values: Mapping[str, Any], source: str) -> Settings:
        """A copy with ``{"section.field": value}`` set (validated) and recorded as ``source``."""
        settings = self._replace(values, source)
        _check_combinations(settings)
        return settings

    def _replace(self, values: Mapping[str, Any], source: str) -> Settings:
        """:meth:`replace` without the checks across fields (a layer may be half applied)."""
        changes: dict[str, dict[str, Any]] = {}
        sources = dict(self.sources)
        policy = self.policy
        for key, raw in values.items():
            if key == "policy":
                policy = _check_policy(raw, source)
                sources[key] = source
                continue
            section, name = _split(key, source)
            value = _coerce(section, name, raw, source)
            changes.setdefault(section, {})[name] = value
            sources[key] = source
        parts = {s: dataclasses.replace(getattr(self, s), **c) for s, c in changes.items()}
        return dataclasses.replace(self, policy=policy, sources=sources, **parts)

    def with_provider_limits(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        style: str | None,
        source: str,
        burst: float | None = None,
    ) -> Settings:
        """A copy with the provider's published limits (None: the provider has no such limit)
        in every ``limits`` setting still at its default; a provider without a request limit
        also turns the adaptive limiter off (there is nothing to learn)."""
        values: dict[str, Any] = {"limits.rpm": rpm, "limits.tpm": tpm, "limits.burst": burst}
        if style in ("token_bucket", "fixed_window"):
            values["limits.style"] = style
        if rpm is None:
            values["limits.adaptive"] = False
        chosen = {
            key: value
            for key, value in values.items()
            if self.source(key) == "default" and value != self.get(key)
        }
        return self.replace(chosen, source) if chosen else self

    def to_toml(self, *, only_changed: bool = False) -> str:
        """The settings as ``flashkit.toml`` text (``only_changed``: those not at their default)."""
        lines = [f'policy = "{self.policy}"'] if self.policy != "tuned" or not only_changed else []
        for section, kind in _SECTIONS.items():
            body = []
            for f in dataclasses.fields(kind):
                key = f"{section}.{f.name}"
                value = self.get(key)
                if only_changed and self.source(key) == "default":
                    continue
                body.append(f"{f.name} = {_toml_value(value)}" if value is not None else None)
            rows = [line for line in body if line is not None]
            if rows:
                lines += ["", f"[{section}]", *rows]
        return "\n".join(lines).lstrip("\n") + "\n"


def original_settings() -> Settings:
    """The original pipeline's parameters on flashkit's primitives (the rollback path):
    3 attempts, backoff 1–10 s with equal jitter, ``retry-after`` ignored, no retry budget, a
    breaker opening on 5 failures in 60 s for 60 s, a 600-per-minute token bucket of 20, 30-s
    calls (a fixed timeout, no hedging), 50 words at once."""
    values: dict[str, Any] = {
        "retry.max_attempts": 3,
        "retry.initial_delay": 1.0,
        "retry.max_delay": 10.0,
        "retry.jitter": "equal",
        "retry.respect_retry_after": False,
        "retry.budget": "none",
        "retry.breaker_wait": 0.0,
        "retry.backoff_from_start": False,
        "breaker.failure_threshold": 0.5,
        "breaker.min_throughput": 5,
        "breaker.sampling_duration": 60.0,
        "breaker.break_duration": 60.0,
        "limits.rpm": 600.0,
        "limits.style": "token_bucket",
        "limits.adaptive": False,
        "hedging.attempt_timeout": 30.0,
        "hedging.adaptive_timeout": False,
        "hedging.hedge": False,
    }
    settings = Settings().replace(values, "policy original")
    return dataclasses.replace(settings, policy="original")


def load_settings(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "command line",
    cwd: str | Path | None = None,
) -> Settings:
    """Resolve the settings: defaults < the policy < ``config_file`` (else ``flashkit.toml``
    in ``cwd`` when present) < ``FLASHKIT_*`` variables of ``environ`` (default ``os.environ``)
    < ``overrides`` (``{"section.field": value}``, recorded as ``override_source``).

    Raises :class:`~flashkit.errors.ValidationError` naming the file, variable or option and
    the field for an unknown name or a bad value.
    """
    environ = os.environ if environ is None else environ
    path = Path(config_file) if config_file is not None else Path(cwd or ".") / CONFIG_FILE
    file_values: dict[str, Any] = {}
    if config_file is not None or path.is_file():
        file_values = _read_toml(path)
    env_values = _read_environ(environ)
    layers = [(str(path), file_values), ("env", env_values), (override_source, overrides or {})]
    policy, policy_source = "tuned", "default"
    for source, values in layers:
        if "policy" in values:
            label = "env FLASHKIT_POLICY" if source == "env" else source
            policy, policy_source = _check_policy(values["policy"], label), label
    settings = original_settings() if policy == "original" else Settings()
    settings = dataclasses.replace(settings, sources={**settings.sources, "policy": policy_source})
    for source, values in layers:
        for key, value in values.items():
            if key != "policy":
                label = f"env {_env_name(key)}" if source == "env" else source
                settings = settings._replace({key: value}, label)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    """Checks across fields: a ``cache.level`` the ``cache.codec`` takes."""
    cache = settings.cache
    bounds = _CACHE_LEVELS.get(cache.codec)
    if cache.level is None or bounds is None or bounds[0] <= cache.level <= bounds[1]:
        return
    raise ValidationError(
        f"{settings.source('cache.level')}: cache.level = {cache.level}: {cache.codec} levels are "
        f"{bounds[0]} to {bounds[1]} (cache.codec = {cache.codec!r} from "
        f"{settings.source('cache.codec')}); unset it for the codec's default",
        code="invalid_config",
        details={"setting": "cache.level"},
    )


def _env_name(key: str) -> str:
    for name, target in _FLAGS.items():
        if target == key:
            return name
    return "FLASHKIT_POLICY" if key == "policy" else "FLASHKIT_" + key.replace(".", "_").upper()


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "FLASHKIT_POLICY" in environ:
        values["policy"] = environ["FLASHKIT_POLICY"]
    for name, target in _FLAGS.items():
        if name in environ:
            values[target] = environ[name]
    known = {_env_name(f"{s}.{f.name}"): f"{s}.{f.name}" for s, k in _SECTIONS.items() for f in
             dataclasses.fields(k)}  # fmt: skip
    for name, raw in environ.items():
        if not name.startswith("FLASHKIT_") or name in _FLAGS or name in _NOT_SETTINGS:
            continue
        if name in known:
            values[known[name]] = raw
        elif any(name.startswith(f"FLASHKIT_{s.upper()}_") for s in _SECTIONS):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValidationError(
                f"environment variable {name}: not a flashkit setting{hint} "
                "(`flashkit config show` lists them)",
                code="invalid_config",
                details={"variable": name},
            )
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValidationError(
            f"{path}: cannot read the settings file ({reason})",
            code="invalid_config",
            details={"file": str(path)},
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValidationError(
            f"{path}: not valid TOML ({error}); see `flashkit config show --toml` for the format",
            code="invalid_config",
            details={"file": str(path)},
        ) from None
    values: dict[str, Any] = {}
    for name, body in data.items():
        if name == "policy":
            values["policy"] = body
            continue
        if name not in _SECTIONS or not isinstance(body, dict):
            close = difflib.get_close_matches(name, [*_SECTIONS, "policy"], n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise ValidationError(
                f"{path}: unknown section [{name}]{hint}; sections: {', '.join(_SECTIONS)}",
                code="invalid_config",
                details={"file": str(path), "section": name},
            )
        for key, value in body.items():
            values[f"{name}.{key}"] = value
    return values


def _split(key: str, source: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    kind = _SECTIONS.get(section)
    names = [f.name for f in dataclasses.fields(kind)] if kind is not None else []
    if name not in names:
        every = [f"{s}.{f.name}" for s, k in _SECTIONS.items() for f in dataclasses.fields(k)]
        close = difflib.get_close_matches(key, every, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValidationError(
            f"{source}: unknown setting {key!r}{hint} (`flashkit config show` lists them)",
            code="invalid_config",
            details={"setting": key},
        )
    return section, name


def _check_policy(value: object, source: str) -> Policy:
    if value not in ("tuned", "original"):
        raise ValidationError(
            f"{source}: policy={value!r}: use 'tuned' (the default) or 'original' (the original "
            "pipeline's parameters)",
            code="invalid_config",
            details={"setting": "policy"},
        )
    return value


def _field_type(section: str, name: str) -> Any:
    hints = typing.get_type_hints(_SECTIONS[section])
    return hints[name]


def _coerce(section: str, name: str, raw: Any, source: str) -> Any:
    """``raw`` (a TOML value, or a string from the environment) as the field's type."""
    key = f"{section}.{name}"
    kind = _field_type(section, name)
    optional = False
    if get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        optional = len(args) < len(get_args(kind))
        kind = args[0]
    try:
        value = _convert(kind, raw, optional)
    except (TypeError, ValueError) as error:
        raise ValidationError(
            f"{source}: {key} = {raw!r}: {error}",
            code="invalid_config",
            details={"setting": key},
        ) from None
    if value is not None and key in _BOUNDS:
        low, high = _BOUNDS[key]
        if (low is not None and value < low) or (high is not None and value > high):
            span = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ValidationError(
                f"{source}: {key} = {raw!r}: must be {span}",
                code="invalid_config",
                details={"setting": key},
            )
    return value


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _convert(kind: Any, raw: Any, optional: bool) -> Any:
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in
                                     ("", "none", "null"))):  # fmt: skip
        return None
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        text = raw.strip().lower() if isinstance(raw, str) else raw
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return text
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be on/off (true/false, 1/0)")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("must be a whole number")
        return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError("must be a number")
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if kind is str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError("must be a non-empty string")
        return raw.strip()
    raise TypeError(f"unsupported setting type {kind!r}")  # pragma: no cover


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
