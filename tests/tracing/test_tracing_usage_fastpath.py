"""The OTel SDK fast path for usage attributes: taken only when it is equivalent, else the public call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan

import logcontext.tracing as lt
from logcontext import LoggingContext, current_context
from logcontext.tracing import otel as otel_backend


@pytest.fixture
def set_items_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts calls of the SDK's validating ``BoundedAttributes._set_items`` (the public path)."""
    calls: list[int] = []
    original = BoundedAttributes._set_items

    def counting(self: BoundedAttributes, attributes: Any) -> None:
        calls.append(len(attributes))
        original(self, attributes)

    monkeypatch.setattr(BoundedAttributes, "_set_items", counting)
    yield calls


def _init(limits: SpanLimits | None = None) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits) if limits is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lt.init_tracing("otel", tracer_provider=provider)
    return exporter


def test_sdk_span_stores_usage_directly(set_items_calls: list[int]) -> None:
    """An SDK span gets exactly ``usage_attributes`` of its child context without the validating call."""
    exporter = _init()
    set_items_calls.clear()
    with LoggingContext("req"):
        with lt.start_span("s"):
            child = current_context()
            assert isinstance(child, LoggingContext)
            child.record_db_txn(0.5)
            child.record_event_fetch(2)
    (span,) = exporter.get_finished_spans()
    expected = lt.usage_attributes(child)
    assert dict(span.attributes or {}) == expected
    assert {k: type(v) for k, v in (span.attributes or {}).items()} == {
        k: type(v) for k, v in expected.items()
    }
    assert set_items_calls == []
    assert any(issubclass(tp, SdkSpan) and ok for tp, ok in otel_backend._direct_ok.items())


def test_value_length_limit_takes_public_path(set_items_calls: list[int]) -> None:
    """With an attribute length limit the SDK's own setter runs, so strings are truncated as configured."""
    exporter = _init(SpanLimits(max_attribute_length=3))
    set_items_calls.clear()
    with LoggingContext("request-1"), lt.start_span("s"):
        pass
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["logcontext.name"] == "req"
    assert 9 in set_items_calls


def test_attribute_count_limit_takes_public_path(set_items_calls: list[int]) -> None:
    """When the usage attributes would not fit the count limit, the SDK's setter applies its eviction."""
    exporter = _init(SpanLimits(max_span_attributes=4))
    set_items_calls.clear()
    with LoggingContext("req"), lt.start_span("s", attributes={"mine": 1}):
        pass
    (span,) = exporter.get_finished_spans()
    assert len(span.attributes or {}) == 4
    assert span.dropped_attributes > 0
    assert 9 in set_items_calls


def test_probe_rejects_other_span_types() -> None:
    """A subclass overriding the setter, or a non-SDK span type, never takes the direct path."""

    class Custom(SdkSpan):
        def set_attributes(self, attributes: Any) -> None:
            super().set_attributes(attributes)

    assert otel_backend._probe_direct(SdkSpan) is True
    assert otel_backend._probe_direct(Custom) is False
    assert otel_backend._probe_direct(NonRecordingSpan) is False


def test_span_ended_inside_block_gets_no_usage() -> None:
    """A span ended early by user code is left alone at the block's exit (no usage, no error)."""
    exporter = _init()
    with LoggingContext("req"), lt.start_span("s") as span:
        span.raw.end()  # type: ignore[attr-defined]
    (finished,) = exporter.get_finished_spans()
    assert not any(k.startswith("logcontext.") for k in finished.attributes or {})


def test_usage_attribute_values_are_primitive() -> None:
    """A non-str tag or server name becomes a str, so every value is valid as stored."""
    ctx = LoggingContext("req", server_name=7)  # type: ignore[arg-type]
    ctx.tag = 8  # type: ignore[assignment]
    attrs = lt.usage_attributes(ctx)
    assert attrs["logcontext.server_name"] == "7"
    assert attrs["logcontext.tag"] == "8"
    assert all(type(v) in (str, bool, int, float) for v in attrs.values())
