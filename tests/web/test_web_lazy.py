"""The aiohttp middleware's lazy paths: nothing formatted unless logged, derived fields right."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _scrape import samples, value
from _servers import RecordCollector, aiohttp_server
from aiohttp import web

from logcontext import _web_common
from logcontext.metrics import Metrics, metrics_handler
from logcontext.web import logcontext_middleware, request_handler


def make_app() -> web.Application:
    @request_handler("hello")
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application(middlewares=[logcontext_middleware()])
    app.router.add_get("/hello", hello)
    app.router.add_get("/metrics", metrics_handler())
    return app


@pytest.fixture
def access_off() -> Iterator[None]:
    """The access loggers above INFO for the test (no access line at any level)."""
    lg = logging.getLogger("logcontext.access")
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


def test_access_logger_off_formats_nothing_but_counts(
    access_off: None, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the access logger disabled no line is formatted; ids and metrics are still produced."""
    calls: list[Any] = []

    def spy(**kw: Any) -> Any:
        calls.append(kw)
        raise AssertionError("access line formatted while its logger is disabled")

    monkeypatch.setattr(_web_common, "access_values", spy)
    with aiohttp_server(make_app()) as base:
        rs = [httpx.get(f"{base}/hello?access_token=s3cret") for _ in range(3)]
        smp = samples(httpx.get(f"{base}/metrics").text)
    assert [r.status_code for r in rs] == [200, 200, 200]
    ids = [r.headers["X-Request-ID"] for r in rs]
    assert len(set(ids)) == 3 and all(i.startswith("GET-") for i in ids)
    assert calls == []
    assert value(smp, "logcontext_http_server_response_time_seconds_count", servlet="hello") == 3
    assert value(smp, "logcontext_http_server_requests_received_total", servlet="hello") == 3


def test_wall_clock_times_bracket_the_request(records: RecordCollector) -> None:
    """received_ts/end_ts lie within the client's wall-clock window and span the request."""
    with aiohttp_server(make_app()) as base:
        httpx.get(f"{base}/hello")  # warm the server
        t0 = time.time()
        r = httpx.get(f"{base}/hello")
        [*_, rec] = records.wait_access(2)
        t1 = time.time()
    assert r.status_code == 200
    a = rec.access  # type: ignore[attr-defined]
    assert t0 - 0.01 <= a["received_ts"] <= a["end_ts"] <= t1 + 0.01
    span = a["processing_time"] + a["send_time"]
    assert a["end_ts"] - a["received_ts"] == pytest.approx(span, abs=2e-3)


def test_http10_request_logs_its_protocol(records: RecordCollector) -> None:
    """An HTTP/1.0 request line is reported as HTTP/1.0 in the access line and its values."""
    with aiohttp_server(make_app()) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        [rec] = records.wait_access(1)
    assert data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]
    assert rec.access["protocol"] == "HTTP/1.0"  # type: ignore[attr-defined]
    assert '"GET /hello HTTP/1.0"' in rec.getMessage()
