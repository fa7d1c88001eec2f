"""Structured logging: one JSON object per line, trace-correlated, with secrets redacted.

>>> configure_logging("INFO")                 # JSON lines on stderr; calling it again is harmless
>>> logging.getLogger("app").info("batch done", extra={"words": 120, "stage": 2})
{"timestamp": "2025-01-11T09:30:00.123456+00:00", "level": "INFO", "logger": "app",
 "message": "batch done", "module": "...", "function": "...", "line": 12,
 "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
 "words": 120, "stage": 2}

What :class:`StructuredFormatter` fixes in the original plan's version (``docs/origins.md``):
extras are every attribute a blank :class:`logging.LogRecord` does not have (so ``taskName`` and
future attributes never leak in); values JSON cannot hold are rendered safely (``repr``
fallback, bounded length, depth and item count, cycles marked, non-finite floats as strings), so
formatting never raises; timestamps are aware UTC ISO 8601; exceptions become ``{"type",
"message", "traceback"}``; ``trace_id`` and ``span_id`` (OpenTelemetry hex) are added while a
span is recording; and anything that looks like an API key or bearer token is redacted
(:func:`flashkit.errors.redact`) in the message, the exception and every string extra, as are
values of keys such as ``api_key`` or ``authorization``."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import logging
import math
import re
import sys
import traceback
from collections.abc import Mapping
from typing import IO, Any, Final

from opentelemetry import trace

from flashkit.errors import redact

__all__ = ["configure_logging", "StructuredFormatter"]

# Everything logging itself puts on a record: a blank record's attributes, plus what
# Formatter.format adds (message, asctime) and what newer Pythons add (taskName, 3.12+).
_STANDARD: Final = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

# Keys whose values are secrets whatever they look like (compared lower-case, "-" as "_").
_SECRET_KEYS: Final = re.compile(
    r"(?:.*_)?(?:api_?key|apikey|authorization|password|passwd|secret|client_secret|token"
    r"|access_token|refresh_token|auth_token|id_token|bearer|cookie|set_cookie|private_key)"
)
_REDACTED: Final = "[REDACTED]"


def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.fullmatch(key.lower().replace("-", "_")) is not None


class _Renderer:
    """Turns any value into something ``json.dumps`` accepts, within the given bounds."""

    def __init__(self, *, max_chars: int, max_items: int, max_depth: int) -> None:
        self.max_chars = max_chars
        self.max_items = max_items
        self.max_depth = max_depth

    def text(self, value: str) -> str:
        value = redact(value)
        if len(value) > self.max_chars:
            return f"{value[: self.max_chars]}…(+{len(value) - self.max_chars} chars)"
        return value

    def fallback(self, value: object) -> str:
        try:
            text = repr(value)
        except Exception as error:  # a broken __repr__ must not break logging
            text = f"<{type(value).__qualname__} (repr failed: {type(error).__name__})>"
        return self.text(text)

    def render(self, value: object, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
        if value is None or isinstance(value, bool | int):
            return value if not isinstance(value, enum.Enum) else self.render(value.value, depth)
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _dt.datetime | _dt.date | _dt.time):
            return value.isoformat()
        if isinstance(value, enum.Enum):
            return self.render(value.value, depth + 1, seen)
        if isinstance(value, BaseException):
            return {"type": type(value).__name__, "message": self.fallback_str(value)}
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if id(value) in seen:
                return f"<cycle: {type(value).__name__}>"
            if depth >= self.max_depth:
                return self.fallback(value)
            inner = seen | {id(value)}
            if isinstance(value, Mapping):
                return self._mapping(value, depth, inner)
            items = list(value)  # sets: any order is fine
            rendered = [self.render(item, depth + 1, inner) for item in items[: self.max_items]]
            if len(items) > self.max_items:
                rendered.append(f"…(+{len(items) - self.max_items} items)")
            return rendered
        return self.fallback(value)

    def fallback_str(self, value: BaseException) -> str:
        try:
            return self.text(str(value))
        except Exception:
            return self.fallback(value)

    def _mapping(self, value: Mapping[Any, Any], depth: int, seen: frozenset[int]) -> Any:
        out: dict[str, Any] = {}
        try:
            pairs = list(value.items())
        except Exception:
            return self.fallback(value)
        for key, item in pairs[: self.max_items]:
            name = self.text(key if isinstance(key, str) else self.fallback(key))
            out[name] = _REDACTED if _secret_key(name) else self.render(item, depth + 1, seen)
        if len(pairs) > self.max_items:
            out["…"] = f"+{len(pairs) - self.max_items} items"
        return out


class StructuredFormatter(logging.Formatter):
    """Formats a record as one JSON object (one line): ``timestamp`` (aware UTC ISO 8601),
    ``level``, ``logger``, ``message``, ``module``, ``function``, ``line``, ``trace_id``/
    ``span_id`` inside a recording span, ``exception`` (``type``, ``message``, ``traceback``)
    and ``stack`` when present, then the record's extras (an extra named like a core field is
    written as ``extra.<name>``).

    Args (keyword-only):
        static_fields: fields added to every line (e.g. ``{"service": "pipeline"}``).
        max_chars: longest string kept per value, in characters (default 2000).
        max_items: items kept per list or dict (default 50).
        max_depth: nesting kept before falling back to ``repr`` (default 6).
    """

    def __init__(
        self,
        *,
        static_fields: Mapping[str, Any] | None = None,
        max_chars: int = 2000,
        max_items: int = 50,
        max_depth: int = 6,
    ) -> None:
        super().__init__()
        if max_chars < 1 or max_items < 1 or max_depth < 1:
            raise ValueError("max_chars, max_items and max_depth must be >= 1")
        self._render = _Renderer(max_chars=max_chars, max_items=max_items, max_depth=max_depth)
        self.static_fields = dict(static_fields or {})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Aware UTC ISO 8601 with microseconds (``datefmt`` is ignored)."""
        return _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC).isoformat()

    def format(self, record: logging.LogRecord) -> str:
        render = self._render
        try:
            message = record.getMessage()
        except Exception as error:  # bad %-args: log what we have rather than raise
            message = f"{record.msg!r} (formatting failed: {type(error).__name__})"
        data: dict[str, Any] = {
            "timestamp": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": render.text(str(message)),
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            data["trace_id"] = trace.format_trace_id(span_context.trace_id)
            data["span_id"] = trace.format_span_id(span_context.span_id)
        if record.exc_info and record.exc_info[1] is not None:
            kind, exc, tb = record.exc_info
            data["exception"] = {
                "type": kind.__name__ if kind is not None else type(exc).__name__,
                "message": render.fallback_str(exc),
                "traceback": redact("".join(traceback.format_exception(kind, exc, tb))),
            }
        elif record.exc_text:
            data["exception"] = {"traceback": redact(record.exc_text)}
        if record.stack_info:
            data["stack"] = redact(record.stack_info)
        for key, value in self.static_fields.items():
            data.setdefault(key, render.render(value))
        for key, value in vars(record).items():
            if key in _STANDARD:
                continue
            name = key if key not in data else f"extra.{key}"
            data[name] = _REDACTED if _secret_key(key) else render.render(value)
        return json.dumps(data, ensure_ascii=False, allow_nan=False, default=render.fallback)


class _TextFormatter(logging.Formatter):
    """Plain text, secrets redacted (``configure_logging(json=False)``)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_HANDLER_MARK: Final = "_flashkit_handler"


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    levels = logging.getLevelNamesMapping()
    try:
        return levels[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {sorted(levels)}") from None


def configure_logging(
    level: int | str = "INFO",
    *,
    json: bool = True,
    stream: IO[str] | None = None,
    logger: str | logging.Logger | None = None,
) -> logging.Handler:
    """Send ``logger``'s records (default: the root logger) to ``stream`` (default
    ``sys.stderr``) as JSON lines (:class:`StructuredFormatter`; ``json=False``: redacted
    plain text), and set its level (default ``"INFO"``).

    Idempotent: flashkit's handler is added once per logger; calling again updates its
    formatter and stream and returns the same handler. Other handlers are left alone.
    """
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    target.setLevel(_level(level))
    formatter: logging.Formatter = (
        StructuredFormatter()
        if json
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    out = stream if stream is not None else sys.stderr
    for handler in target.handlers:
        if getattr(handler, _HANDLER_MARK, False) and isinstance(handler, logging.StreamHandler):
            if handler.stream is not out:
                handler.setStream(out)
            handler.setFormatter(formatter)
            return handler
    new: logging.StreamHandler[IO[str]] = logging.StreamHandler(out)
    setattr(new, _HANDLER_MARK, True)
    new.setFormatter(formatter)
    target.addHandler(new)
    return new
