"""Background processes open a root span linked to the spawner (spec §3, §6.3; §10 item 37)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import logcontext
from logcontext import aio

pytest.importorskip("opentelemetry.sdk")


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from logcontext import _hooks
    from logcontext.tracing import init_tracing, shutdown_tracing

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    init_tracing("otel", tracer_provider=provider)
    try:
        yield exp
    finally:
        shutdown_tracing(2.0)
        _hooks.span_ender = None


def test_background_process_span_is_a_linked_root(exporter: Any) -> None:
    """Under a request span, run_as_background_process runs in root span bgproc.<desc> (active
    inside, not a child of the request), linked to the spawner; bg_start_span=False opens none."""
    from logcontext import tracing

    seen: dict[str, Any] = {}

    async def job() -> None:
        seen["active"] = tracing.active_span()
        await asyncio.sleep(0)

    async def quiet() -> None:
        seen["quiet"] = tracing.active_span()

    async def main() -> None:
        with logcontext.LoggingContext("GET-1"), tracing.start_span("request") as req:
            seen["req"] = req
            await logcontext.run_as_background_process("job", job)
            await logcontext.run_as_background_process("quiet", quiet, bg_start_span=False)

    aio.run(main())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    bg, req = spans["bgproc.job"], spans["request"]
    assert "bgproc.quiet" not in spans
    assert bg.parent is None
    assert bg.context.trace_id != req.context.trace_id
    assert [link.context.span_id for link in bg.links] == [req.context.span_id]
    assert seen["active"] is not None and seen["active"] is not seen["req"]
    assert seen["quiet"] is seen["req"]  # no span of its own: the spawner's stays active
