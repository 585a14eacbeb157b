"""stdlib logging: record factory, filter, JSON formatters (spec §5.1; §10 items 30, 31)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
from collections.abc import Iterator

import pytest

from logcontext import ContextRequest, LoggingContext
from logcontext.logging import (
    JsonFormatter,
    LoggingContextFilter,
    TerseJsonFormatter,
    install_log_record_factory,
    uninstall_log_record_factory,
)


@pytest.fixture
def factory() -> Iterator[None]:
    original = logging.getLogRecordFactory()
    install_log_record_factory()
    yield
    uninstall_log_record_factory()
    assert logging.getLogRecordFactory() is original


def record(msg: str = "hello", **kw: object) -> logging.LogRecord:
    return logging.getLogRecordFactory()("t", logging.INFO, __file__, 1, msg, (), None, **kw)


REQ = ContextRequest("7", "10.0.0.1", "client", "POST", "/path?x=1", "HTTP/1.1", "curl", "@u:hs")


def test_factory_stamps_context_and_request_fields(factory: None) -> None:
    """Records created in a context carry request, server_name and the request's fields."""
    with LoggingContext("POST-7", request=REQ, server_name="hs"):
        r = record()
    assert r.request == "POST-7" and r.server_name == "hs"  # type: ignore[attr-defined]
    assert r.ip_address == "10.0.0.1" and r.method == "POST" and r.requester == "@u:hs"  # type: ignore[attr-defined]


def test_factory_in_sentinel_does_not_clobber(factory: None) -> None:
    """In the sentinel the factory sets request="sentinel" only if the record lacks one."""
    assert record().request == "sentinel"  # type: ignore[attr-defined]
    from logcontext.logging import DEFAULT_FIELDS, _make_annotator

    annotate = _make_annotator(DEFAULT_FIELDS, "", True)
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    rec.request = "from-elsewhere"  # type: ignore[attr-defined]
    annotate(rec)
    assert rec.request == "from-elsewhere"  # type: ignore[attr-defined]
    with LoggingContext("inside"):
        annotate(rec)
    assert rec.request == "inside"  # type: ignore[attr-defined]


def test_install_is_idempotent_and_chains(factory: None) -> None:
    """A second install is a no-op; our factory calls the previous one."""
    ours = logging.getLogRecordFactory()
    install_log_record_factory()
    assert logging.getLogRecordFactory() is ours
    with LoggingContext("c"):
        assert record().request == "c"  # type: ignore[attr-defined]


def test_queue_handler_keeps_creation_time_context(factory: None) -> None:
    """A QueueHandler + QueueListener formats later on another thread, with the creation-time context."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    out: list[str] = []

    class Collect(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            out.append(self.format(rec))

    target = Collect()
    target.setFormatter(logging.Formatter("%(request)s %(message)s"))
    listener = logging.handlers.QueueListener(q, target)
    logger = logging.getLogger("test.queue")
    logger.propagate = False
    handler = logging.handlers.QueueHandler(q)
    logger.addHandler(handler)
    listener.start()
    try:
        with LoggingContext("GET-1"):
            logger.warning("inside")
        logger.warning("outside")
    finally:
        listener.stop()
        logger.removeHandler(handler)
    assert out == ["GET-1 inside", "sentinel outside"]


def test_extra_request_collides_unless_prefixed(factory: None) -> None:
    """extra={"request": ...} raises KeyError inside a context unless a field_prefix is used."""
    logger = logging.getLogger("test.extra")
    with LoggingContext("c"), pytest.raises(KeyError):
        logger.warning("x", extra={"request": "mine"})
    uninstall_log_record_factory()
    install_log_record_factory(field_prefix="ctx_")
    with LoggingContext("c"):
        r = logger.makeRecord("n", logging.INFO, "f", 1, "m", (), None, extra={"request": "mine"})
    assert r.request == "mine" and r.ctx_request == "c"  # type: ignore[attr-defined]


def test_unknown_field_rejected() -> None:
    """Asking for an unknown field names it."""
    with pytest.raises(ValueError, match="nope"):
        install_log_record_factory(fields=("request", "nope"))


def test_filter_annotates_and_passes() -> None:
    """LoggingContextFilter annotates the record and never drops it."""
    f = LoggingContextFilter()
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    with LoggingContext("f"):
        assert f.filter(rec) is True
    assert rec.request == "f"  # type: ignore[attr-defined]


def test_json_formatter_keys() -> None:
    """JSON has exactly log, level, namespace plus extras (no taskName); request fields when present."""
    f = LoggingContextFilter()
    rec = logging.LogRecord("ns", logging.WARNING, __file__, 1, "hi %s", ("there",), None)
    rec.custom = {"a": 1}  # type: ignore[attr-defined]
    rec.odd = object()  # type: ignore[attr-defined]
    with LoggingContext("POST-1", request=REQ, server_name="hs"):
        f.filter(rec)
    data = json.loads(JsonFormatter().format(rec))
    assert data["log"] == "hi there" and data["level"] == "WARNING" and data["namespace"] == "ns"
    assert data["request"].startswith("POST-") and data["custom"] == {"a": 1}
    assert data["odd"].startswith("<object object")
    assert "taskName" not in data and "msg" not in data and "time" not in data
    expected = {"log", "level", "namespace", "custom", "odd", "request", "server_name"}
    expected |= {
        "ip_address",
        "site_tag",
        "requester",
        "authenticated_entity",
        "method",
        "url",
        "protocol",
        "user_agent",
    }
    assert set(data) == expected


def test_terse_json_and_exceptions() -> None:
    """TerseJsonFormatter adds time; exceptions add exc_type and exc_value."""
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = logging.LogRecord("ns", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    data = json.loads(TerseJsonFormatter().format(rec))
    assert isinstance(data["time"], float)
    assert data["exc_type"] == "ValueError" and data["exc_value"] == "bad"
    assert "traceback" not in data
    assert "traceback" in json.loads(JsonFormatter(include_traceback=True).format(rec))
