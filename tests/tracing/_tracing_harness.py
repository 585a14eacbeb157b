"""Tracing test harness: one per backend, each normalising finished spans to :class:`Finished`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from logcontext.tracing import init_tracing


@dataclass
class Finished:
    """A finished span in backend-neutral form."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    follows_from: list[int] = field(default_factory=list)
    error: bool = False


def _jaeger_tag_value(tag: Any) -> Any:
    for attr in ("vStr", "vDouble", "vBool", "vLong", "vBinary"):
        value = getattr(tag, attr, None)
        if value is not None:
            return value
    return None


class Harness:
    """Initialises one backend and reads back what it finished."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.exporter: Any = None
        self.tracer: Any = None
        self.reporter: Any = None
        self.provider: Any = None

    def init(self, sampler: Any = None, **kwargs: Any) -> Harness:
        if self.kind == "otel":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )

            self.exporter = InMemorySpanExporter()
            self.provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
            self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            init_tracing("otel", tracer_provider=self.provider, **kwargs)
        elif self.kind == "mock":
            from opentracing.mocktracer import MockTracer
            from opentracing.scope_managers.contextvars import ContextVarsScopeManager

            self.tracer = MockTracer(scope_manager=ContextVarsScopeManager())
            init_tracing("opentracing", tracer=self.tracer, **kwargs)
        elif self.kind == "jaeger":
            from jaeger_client.reporter import InMemoryReporter
            from jaeger_client.sampler import ConstSampler
            from jaeger_client.tracer import Tracer
            from opentracing.scope_managers.contextvars import ContextVarsScopeManager

            self.reporter = InMemoryReporter()
            self.tracer = Tracer(
                "test",
                reporter=self.reporter,
                sampler=sampler if sampler is not None else ConstSampler(True),
                scope_manager=ContextVarsScopeManager(),
            )
            init_tracing("opentracing", tracer=self.tracer, **kwargs)
        else:  # pragma: no cover
            raise AssertionError(self.kind)
        return self

    def finished(self) -> list[Finished]:
        out: list[Finished] = []
        if self.kind == "otel":
            from opentelemetry.trace import StatusCode

            for s in self.exporter.get_finished_spans():
                out.append(
                    Finished(
                        s.name,
                        s.context.trace_id,
                        s.context.span_id,
                        s.parent.span_id if s.parent else None,
                        dict(s.attributes or {}),
                        [(e.name, dict(e.attributes or {})) for e in s.events],
                        [
                            (lk.context.trace_id, lk.context.span_id, dict(lk.attributes or {}))
                            for lk in s.links
                        ],
                        error=s.status.status_code is StatusCode.ERROR,
                    )
                )
        elif self.kind == "mock":
            for s in self.tracer.finished_spans():
                events = [(str(lg.key_values.get("event")), dict(lg.key_values)) for lg in s.logs]
                out.append(
                    Finished(
                        s.operation_name,
                        s.context.trace_id,
                        s.context.span_id,
                        s.parent_id,
                        dict(s.tags),
                        events,
                        error=bool(s.tags.get("error")),
                    )
                )
        else:
            import opentracing

            for s in self.reporter.get_spans():
                tags = {t.key: _jaeger_tag_value(t) for t in s.tags}
                events = []
                for lg in s.logs:
                    kv = {f.key: _jaeger_tag_value(f) for f in lg.fields}
                    events.append((str(kv.get("event")), kv))
                follows = [
                    r.referenced_context.span_id
                    for r in (s.references or [])
                    if r.type == opentracing.ReferenceType.FOLLOWS_FROM
                ]
                out.append(
                    Finished(
                        s.operation_name,
                        s.trace_id,
                        s.span_id,
                        s.parent_id or None,
                        tags,
                        events,
                        follows_from=follows,
                        error=bool(tags.get("error")),
                    )
                )
        return out

    def by_name(self) -> dict[str, Finished]:
        return {f.name: f for f in self.finished()}
