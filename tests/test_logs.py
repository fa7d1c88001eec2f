"""flashkit.logs: JSON lines that always parse, carry trace ids and never carry secrets."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import json
import logging
import math
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from flashkit import telemetry as tm
from flashkit.logs import StructuredFormatter, configure_logging

LEAK = "sk-live-abc123"  # what an API key pasted into a log line looks like
CORE = {"timestamp", "level", "logger", "message", "module", "function", "line"}


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines into a buffer (handlers removed afterwards)."""
    logger = logging.getLogger(f"flashkit.test_logs.{id(object())}")
    logger.propagate = False
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer, logger=logger)
    yield logger, buffer
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def format_record(**extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", (), None)
    record.__dict__.update(extra)
    parsed: dict[str, Any] = json.loads(StructuredFormatter().format(record))
    return parsed


def test_each_line_is_a_json_object_with_the_core_fields(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = log
    logger.info("card %s of %d", "사과", 3)
    logger.debug("second")
    first, second = lines(buffer)
    assert set(first) == CORE
    assert first["message"] == "card 사과 of 3"
    assert first["level"] == "INFO"
    assert first["logger"] == logger.name
    assert first["function"] == "test_each_line_is_a_json_object_with_the_core_fields"
    assert first["module"] == "test_logs"
    assert second["message"] == "second"


def test_timestamps_are_aware_utc_iso_8601(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = log
    logger.info("now")
    (line,) = lines(buffer)
    stamp = dt.datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs(stamp - dt.datetime.now(dt.UTC)) < dt.timedelta(days=1)


def test_no_standard_record_attribute_leaks_into_extras(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    """Not args, msg, exc_text, stack_info, taskName (3.12+), processName, ... only real extras."""
    logger, buffer = log

    async def in_a_task() -> None:
        logger.info("from a task", extra={"word": "사과"})

    asyncio.run(in_a_task())
    (line,) = lines(buffer)
    assert set(line) == CORE | {"word"}
    assert "taskName" not in line
    blank = vars(logging.LogRecord("x", logging.INFO, "", 0, "", (), None))
    assert not set(blank) & set(line) - CORE


def test_extras_named_like_core_fields_do_not_overwrite_them() -> None:
    line = format_record(level="custom", trace_id="mine")
    assert line["level"] == "INFO"
    assert line["extra.level"] == "custom"
    assert line["trace_id"] == "mine"  # no span here, so the extra keeps its own name


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_unserialisable_and_cyclic_extras_never_crash() -> None:
    cyclic_list: list[Any] = [1]
    cyclic_list.append(cyclic_list)
    cyclic_dict: dict[str, Any] = {"name": "root"}
    cyclic_dict["self"] = cyclic_dict
    deep: list[Any] = []
    node = deep
    for _ in range(50):
        node.append([])
        node = node[0]
    line = format_record(
        obj=object(),
        unprintable=_Unprintable(),
        cyclic_list=cyclic_list,
        cyclic_dict=cyclic_dict,
        deep=deep,
        when=dt.datetime(2025, 1, 11, 9, 30, tzinfo=dt.UTC),
        amount=decimal.Decimal("1.50"),
        nan=math.nan,
        inf=-math.inf,
        raw=b"\x00\xff",
        tags={"b"},
        error=ValueError("bad input"),
        big="x" * 100_000,
        many=list(range(10_000)),
    )
    assert line["obj"].startswith("<object object at")
    assert "repr failed" in line["unprintable"]
    assert line["cyclic_list"] == [1, "<cycle: list>"]
    assert line["cyclic_dict"] == {"name": "root", "self": "<cycle: dict>"}
    depth, node = 0, line["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth == 6  # then the rest as a (bounded) repr string
    assert node.startswith("[[[")
    assert line["when"] == "2025-01-11T09:30:00+00:00"
    assert line["amount"] == "Decimal('1.50')"
    assert (line["nan"], line["inf"]) == ("nan", "-inf")
    assert line["raw"] == "b'\\x00\\xff'"
    assert line["tags"] == ["b"]
    assert line["error"] == {"type": "ValueError", "message": "bad input"}
    assert len(line["big"]) < 2_100
    assert len(line["many"]) == 51


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(value=json_values)
def test_any_extra_value_gives_one_parseable_line(value: Any) -> None:
    text = StructuredFormatter().format(
        logging.makeLogRecord({"msg": "m", "levelno": 20, "levelname": "INFO", "value": value})
    )
    assert "\n" not in text
    assert "value" in json.loads(text)


def test_exceptions_are_rendered_with_type_message_and_traceback(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = log
    try:
        raise KeyError("missing card")
    except KeyError:
        logger.exception("lookup failed")
    (line,) = lines(buffer)
    exception = line["exception"]
    assert exception["type"] == "KeyError"
    assert exception["message"] == "'missing card'"
    assert isinstance(exception["traceback"], str)
    assert exception["traceback"].startswith("Traceback (most recent call last)")
    assert "raise KeyError" in exception["traceback"]


def test_trace_and_span_ids_inside_a_span(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = log
    telemetry = tm.configure_opentelemetry(in_memory=True, set_global=False)
    try:
        logger.info("outside")
        with telemetry.tracer().start_as_current_span("batch") as span:
            logger.info("inside")
        context = span.get_span_context()
    finally:
        telemetry.shutdown()
    outside, inside = lines(buffer)
    assert "trace_id" not in outside
    assert "span_id" not in outside
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)
    assert len(inside["trace_id"]) == 32
    assert len(inside["span_id"]) == 16


def test_secrets_are_redacted_in_message_extras_and_exceptions(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = log
    try:
        raise PermissionError(f"401 with key {LEAK}")
    except PermissionError:
        logger.exception(
            "calling with %s",
            f"Authorization: Bearer {LEAK}",
            extra={
                "headers": {"Authorization": "Bearer abcdefghijklmnop", "x-request": "r1"},
                "api_key": "plain-looking-value",
                "note": f"key={LEAK}",
                "items": [LEAK],
            },
        )
    text = buffer.getvalue()
    assert LEAK not in text
    assert "abc123" not in text
    assert "abcdefghijklmnop" not in text
    assert "plain-looking-value" not in text
    (line,) = lines(buffer)
    assert line["api_key"] == "[REDACTED]"
    assert line["headers"]["x-request"] == "r1"
    assert "[REDACTED]" in line["message"]


def test_configure_logging_is_idempotent() -> None:
    logger = logging.getLogger("flashkit.test_logs.idempotent")
    logger.propagate = False
    first_buffer, second_buffer = io.StringIO(), io.StringIO()
    try:
        first = configure_logging(stream=first_buffer, logger=logger)
        second = configure_logging("WARNING", stream=second_buffer, logger=logger)
        assert second is first
        assert logger.handlers == [first]
        assert logger.level == logging.WARNING
        logger.info("dropped")
        logger.warning("kept")
        assert first_buffer.getvalue() == ""
        assert [line["message"] for line in lines(second_buffer)] == ["kept"]
        third = configure_logging("INFO", json=False, stream=second_buffer, logger=logger)
        assert third is first
        logger.info("plain %s", LEAK)
        last = second_buffer.getvalue().splitlines()[-1]
        assert last.endswith("INFO flashkit.test_logs.idempotent: plain sk[REDACTED]")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


def test_configure_logging_defaults_to_the_root_logger_and_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        handler = configure_logging()
        assert configure_logging() is handler
        assert [h for h in root.handlers if h not in before] == [handler]
        assert isinstance(handler, logging.StreamHandler)
        assert handler.stream is sys.stderr
        assert isinstance(handler.formatter, StructuredFormatter)
        assert root.level == logging.INFO
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_configure_logging_rejects_unknown_levels() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD", logger="flashkit.test_logs.levels")


def test_formatter_options_are_keyword_only_and_checked() -> None:
    formatter = StructuredFormatter(static_fields={"service": "pipeline"}, max_chars=10)
    record = logging.makeLogRecord({"msg": "m" * 50, "long": "y" * 50})
    line = json.loads(formatter.format(record))
    assert line["service"] == "pipeline"
    assert line["message"].startswith("m" * 10 + "…")
    assert line["long"].startswith("y" * 10 + "…")
    with pytest.raises(ValueError, match=">= 1"):
        StructuredFormatter(max_items=0)
