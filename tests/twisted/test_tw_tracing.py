"""Spans from the Twisted integration: request server spans, background-process roots (OTel SDK)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _twisted_harness import TwistedHarness
from _twisted_web import Client, Hello, Slow

import logcontext.twisted as lt
from logcontext import LoggingContext, _hooks
from logcontext.tracing import _api, init_tracing, shutdown_tracing, start_span

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = otel_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shutdown_tracing(2.0)
    init_tracing("otel", tracer_provider=provider)
    try:
        yield exporter
    finally:
        shutdown_tracing(2.0)
        _api._logged_errors.clear()
        _hooks.span_ender = None


def test_request_gets_a_server_span_ended_at_completion(tw: TwistedHarness, spans: Any) -> None:
    """Each wrapped request has a server span owned by its context, ended once, with usage attributes."""
    slow = Slow(tw)
    client = Client(tw, slow)
    client.get("/slow?access_token=x")
    assert not spans.get_finished_spans()  # still in progress
    tw.spin(lambda: bool(spans.get_finished_spans()))
    client.close()
    (span,) = spans.get_finished_spans()
    assert span.kind.name == "SERVER"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.query"] == "access_token=<redacted>"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["logcontext.name"] == slow.seen[0]


def test_sync_request_span_and_child_spans(tw: TwistedHarness, spans: Any) -> None:
    """A span started while rendering is a child of the request's server span."""

    class Traced(Hello):
        def render_GET(self, request: Any) -> bytes:
            with start_span("inner"):
                pass
            return b"ok"

    client = Client(tw, Traced())
    client.get("/")
    client.close()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    server = next(s for n, s in by_name.items() if n != "inner")
    assert by_name["inner"].parent.span_id == server.context.span_id


def test_background_process_root_span_linked_to_spawner(tw: TwistedHarness, spans: Any) -> None:
    """``run_as_background_process`` opens root span ``bgproc.<desc>``, linked to the spawning span."""

    async def job() -> None:
        await tw.sleep(0.001)

    with LoggingContext("req"), start_span("spawner") as spawner:
        d = lt.run_as_background_process("tw_traced", job)
    tw.wait(d)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    bg = by_name["bgproc.tw_traced"]
    assert bg.parent is None
    assert [link.context.span_id for link in bg.links] == [spawner.context.span_id]
    assert bg.attributes["logcontext.name"].startswith("tw_traced-")


def test_overlapping_metered_coroutines_hold_their_own_spans(spans: Any) -> None:
    """§10.35 W: metered coroutines started at t=0 and t=2 under a root each keep their span across 4 s."""
    from twisted.internet import task

    clock = task.Clock()
    seen: dict[str, bool] = {}

    async def worker(name: str) -> None:
        with start_span(name) as s:
            await task.deferLater(clock, 4, lambda: None)
            seen[name] = _api.active_span() is s

    with LoggingContext("req"), start_span("root") as root:
        d1 = lt.ensure_deferred(worker("task1"))
        clock.advance(2)
        d2 = lt.ensure_deferred(worker("task2"))
        assert _api.active_span() is root
        clock.advance(2)
        assert d1.called and not d2.called
        clock.advance(2)
        assert d2.called
    assert seen == {"task1": True, "task2": True}
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["task1", "task2", "root"]
    assert {s.parent.span_id for s in finished[:2]} == {finished[2].context.span_id}
