"""The structlog processor (spec §5.3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from logcontext import ContextRequest, LoggingContext, _config, _hooks, configure
from logcontext.structlog import add_logcontext, make_processor


def request() -> ContextRequest:
    return ContextRequest(
        request_id="POST-9",
        ip_address="10.1.2.3",
        site_tag="client",
        method="POST",
        url="/send",
        protocol="HTTP/1.1",
        user_agent="ua",
        requester="@a:hs",
    )


def test_fields_in_context_and_sentinel() -> None:
    """Inside a request context every field is added; in the sentinel only request/server_name."""
    with LoggingContext("POST-9", request=request(), server_name="hs1"):
        ev = add_logcontext(None, "info", {"event": "x"})
    assert ev == {
        "event": "x",
        "request": "POST-9",
        "server_name": "hs1",
        "ip_address": "10.1.2.3",
        "site_tag": "client",
        "requester": "@a:hs",
        "authenticated_entity": None,
        "method": "POST",
        "url": "/send",
        "protocol": "HTTP/1.1",
        "user_agent": "ua",
    }
    ev = add_logcontext(None, "info", {"event": "y"})
    assert ev["request"] == "sentinel" and set(ev) == {"event", "request", "server_name"}


def test_explicit_bindings_win() -> None:
    """Keys already in the event dict (bound or passed) are never overwritten."""
    with LoggingContext("GET-1"):
        ev = add_logcontext(None, "info", {"event": "x", "request": "mine", "server_name": "s"})
    assert ev["request"] == "mine" and ev["server_name"] == "s"


def test_make_processor_prefix_fields_and_errors() -> None:
    """Variants choose fields and a key prefix; unknown fields are rejected."""
    proc = make_processor(fields=("request", "method"), field_prefix="ctx_")
    with LoggingContext("POST-9", request=request()):
        ev = proc(None, "info", {"event": "x", "request": "app-value"})
    assert ev == {"event": "x", "request": "app-value", "ctx_request": "POST-9", "ctx_method": "POST"}
    assert make_processor() is add_logcontext
    with pytest.raises(ValueError, match="unknown fields"):
        make_processor(fields=("nope",))
    with pytest.raises(TypeError):
        make_processor(fields="request")


def test_trace_fields_from_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """When tracing publishes ids, they are added (and can be turned off)."""
    monkeypatch.setattr(_hooks, "trace_ids", lambda: ("a" * 32, "b" * 16))
    ev = add_logcontext(None, "info", {})
    assert ev["trace_id"] == "a" * 32 and ev["span_id"] == "b" * 16
    ev = make_processor(trace_fields=False)(None, "info", {})
    assert "trace_id" not in ev


@pytest.fixture
def stdlib_logger() -> Iterator[tuple[logging.Logger, list[str]]]:
    out: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(self.format(record))

    h = ListHandler()
    h.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.KeyValueRenderer(key_order=["event", "request"]),
            ],
            foreign_pre_chain=[add_logcontext],
        )
    )
    lg = logging.getLogger("test.structlog.foreign")
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    try:
        yield lg, out
    finally:
        lg.removeHandler(h)


def test_foreign_pre_chain(stdlib_logger: tuple[logging.Logger, list[str]]) -> None:
    """As a ``foreign_pre_chain`` processor it tags plain ``logging`` records."""
    lg, out = stdlib_logger
    saved = _config.config.default_server_name
    configure(default_server_name="hs-default")
    try:
        with LoggingContext("GET-7"):
            lg.info("hello")
        lg.info("outside")
    finally:
        configure(default_server_name=saved)
    assert out[0].startswith("event='hello' request='GET-7'")
    assert out[1].startswith("event='outside' request='sentinel'")
    assert "server_name='hs-default'" in out[1]


def test_structlog_pipeline_with_contextvars_bindings() -> None:
    """With ``merge_contextvars`` first, a bound ``request`` wins and the rest is added."""
    captured: list[dict[str, Any]] = []

    def capture(logger: Any, name: str, ev: Any) -> Any:
        captured.append(dict(ev))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_logcontext, capture],
        cache_logger_on_first_use=False,
    )
    try:
        structlog.contextvars.bind_contextvars(request="bound")
        with LoggingContext("GET-8", server_name="hs2"):
            structlog.get_logger().info("e")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    assert captured[0]["request"] == "bound" and captured[0]["server_name"] == "hs2"


def test_inherited_and_default_server_name_and_request() -> None:
    """A bare root context gets the configured server name and no request fields; a child
    gets its parent's server name and request; a bare child of a bare root the default."""
    saved = _config.config.default_server_name
    configure(default_server_name="hs-default")
    try:
        with LoggingContext("root") as root:
            ev = add_logcontext(None, "info", {"event": "x"})
            with LoggingContext("bare-child", parent_context=root):
                ev_bare_child = add_logcontext(None, "info", {"event": "x"})
        with LoggingContext("req", request=request(), server_name="hs1") as parent:
            with LoggingContext("child", parent_context=parent):
                ev_child = add_logcontext(None, "info", {"event": "x"})
    finally:
        configure(default_server_name=saved)
    assert ev == {"event": "x", "request": "root", "server_name": "hs-default"}
    assert ev_bare_child == {"event": "x", "request": "bare-child", "server_name": "hs-default"}
    assert ev_child["server_name"] == "hs1" and ev_child["request"] == "child"
    assert ev_child["ip_address"] == request().ip_address and ev_child["method"] == request().method
