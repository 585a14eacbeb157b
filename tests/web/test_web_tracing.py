"""Request server spans from both middlewares (spec §6.2, §6.3, §9) with the OTel SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _servers import RecordCollector, aiohttp_server, uvicorn_server
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from logcontext import _hooks, current_context
from logcontext.tracing import _api, init_tracing, shutdown_tracing
from logcontext.web import LogContextMiddleware, logcontext_middleware, request_handler

REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """OTel tracing with an in-memory exporter, an allow-list and a trace-id response header."""
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    init_tracing(
        "otel",
        tracer_provider=provider,
        propagation_allowlist=[r"trusted\.example"],
        trace_id_header="Synapse-Trace-Id",
    )
    try:
        yield exp
    finally:
        shutdown_tracing(2.0)
        _api.set_propagation_allowlist(())
        _api._logged_errors.clear()
        _hooks.span_ender = None


def origin_hook(headers: Any) -> tuple[str | None, bool]:
    """The tests' notion of an authenticated origin: an ``X-Origin`` header."""
    return headers.get("x-origin") or headers.get("X-Origin"), True


def server_spans(exp: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exp.get_finished_spans() if s.kind.name == "SERVER"]


def test_aiohttp_server_span_parenting_and_usage(
    exporter: InMemorySpanExporter, records: RecordCollector
) -> None:
    """Allowed origins parent the server span; others only link; usage and HTTP attributes are set."""

    @request_handler("txn_servlet")
    async def handler(request: web.Request) -> web.Response:
        current_context().record_db_txn(0.01)
        return web.Response(text="ok")

    app = web.Application(middlewares=[logcontext_middleware(trace_origin=origin_hook)])
    app.router.add_get("/t", handler)
    with aiohttp_server(app) as base:
        allowed = httpx.get(
            f"{base}/t?access_token=x",
            headers={"traceparent": TRACEPARENT, "X-Origin": "trusted.example"},
        )
        records.wait_access(1)
        other = httpx.get(f"{base}/t", headers={"traceparent": TRACEPARENT, "X-Origin": "evil.example"})
        records.wait_access(2)
    s1, s2 = server_spans(exporter)
    assert s1.name == "GET txn_servlet"
    assert f"{s1.context.trace_id:032x}" == REMOTE_TRACE
    assert s1.parent is not None and f"{s1.parent.span_id:016x}" == REMOTE_SPAN
    assert allowed.headers["Synapse-Trace-Id"] == REMOTE_TRACE
    a = dict(s1.attributes or {})
    assert a["http.request.method"] == "GET" and a["url.path"] == "/t"
    assert a["url.query"] == "access_token=<redacted>"
    assert a["http.route"] == "txn_servlet" and a["http.response.status_code"] == 200
    assert a["logcontext.name"] == allowed.headers["X-Request-ID"]
    assert a["logcontext.db.txn_count"] == 1
    assert f"{s2.context.trace_id:032x}" != REMOTE_TRACE
    assert s2.parent is None
    assert [f"{lk.context.trace_id:032x}" for lk in s2.links] == [REMOTE_TRACE]
    assert other.headers["Synapse-Trace-Id"] == f"{s2.context.trace_id:032x}"


def test_asgi_server_span(exporter: InMemorySpanExporter, records: RecordCollector) -> None:
    """The ASGI middleware opens and ends one server span per request, named after the servlet."""

    @request_handler("raw")
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    with uvicorn_server(LogContextMiddleware(inner)) as base:
        r = httpx.get(f"{base}/x")
        records.wait_access(1)
    (span,) = server_spans(exporter)
    assert span.name == "GET raw"
    assert dict(span.attributes or {})["http.response.status_code"] == 201
    assert r.headers["synapse-trace-id"] == f"{span.context.trace_id:032x}"
