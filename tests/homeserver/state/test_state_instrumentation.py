"""State resolution runs in a nested logging context with one span per phase."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _state_vectors import LazySource, case, expected_of, inputs_of
from homeserver.state import (
    InMemoryEventSource,
    ResolveOptions,
    resolve_state,
    resolve_state_async,
    rules_for,
)

from logcontext import LoggingContext
from logcontext.tracing import init_tracing, shutdown_tracing

PHASES = {
    "split",
    "auth_difference",
    "load_events",
    "power_graph",
    "sender_power",
    "power_sort",
    "iac_power",
    "mainline",
    "iac_rest",
    "overlay",
}


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    shutdown_tracing(2.0)
    init_tracing("otel", tracer_provider=provider)
    try:
        yield exp
    finally:
        shutdown_tracing(2.0)


def test_phase_spans_under_resolve_span(exporter: Any) -> None:
    """One ``state_res.resolve`` span, a child span per phase with the phase's attributes."""
    c = case("v10/random/room300-2way-s1036")
    with LoggingContext("request"):
        got = resolve_state(
            c["room_version"],
            inputs_of(c),
            InMemoryEventSource.from_vector(c),
            room_id=c["room_id"],
            options=ResolveOptions(trace_decisions=True),
        )
    assert got == expected_of(c)
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "state_res.resolve"]
    assert root.attributes["state_res.algorithm"] == "v2"
    assert root.attributes["inputs"] == 2
    children = {
        s.name.removeprefix("state_res."): s
        for s in spans
        if s.parent is not None and s.parent.span_id == root.context.span_id
    }
    assert set(children) >= PHASES
    diff = children["auth_difference"]
    assert diff.attributes["method"] == "walk"
    assert diff.attributes["size"] == len(c["stages"]["auth_difference"])
    iac = children["iac_power"]
    assert iac.attributes["checked"] >= iac.attributes["accepted"]
    assert any(e.name == "iac.decision" for e in children["iac_rest"].events)
    # Each phase span carries the resource usage of its block; the resolution is a child context.
    assert all("logcontext.cpu.user_s" in s.attributes for s in children.values())
    assert root.attributes["logcontext.name"] == "request-state_res"


def test_error_category_on_span(exporter: Any) -> None:
    """A failing resolution tags its span with the error category."""
    c = case("v7/malformed/event-from-another-room")
    with LoggingContext("request"), pytest.raises(Exception, match="wrong_room"):
        resolve_state(
            c["room_version"], inputs_of(c), InMemoryEventSource.from_vector(c), room_id=c["room_id"]
        )
    [root] = [s for s in exporter.get_finished_spans() if s.name == "state_res.resolve"]
    assert root.attributes["error.category"] == "wrong_room"


async def test_async_resolution_in_nested_context(exporter: Any) -> None:
    """Over an async source the phases still nest under the resolve span; v12 adds the subgraph."""
    c = case("v12/msc4297/problem-b-subgraph")
    with LoggingContext("request"):
        got = await resolve_state_async(
            c["room_id"], rules_for("12"), inputs_of(c), LazySource(InMemoryEventSource.from_vector(c))
        )
    assert got == expected_of(c)
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"state_res.resolve", "state_res.conflicted_subgraph", "state_res.iac_rest"} <= names


def test_no_context_no_instrumentation(exporter: Any) -> None:
    """Outside any logging context (CLI, scripts) nothing is recorded and nothing complains."""
    c = case("v2/synapse-v2/ban_vs_pl/at-END")
    resolve_state(c["room_version"], inputs_of(c), InMemoryEventSource.from_vector(c), room_id=c["room_id"])
    assert not [s for s in exporter.get_finished_spans() if s.name.startswith("state_res")]
