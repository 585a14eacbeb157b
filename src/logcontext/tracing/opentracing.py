"""OpenTracing backend (extra ``[opentracing]``): any ``opentracing.Tracer``, e.g. jaeger-client's.

The tracer must use ``ContextVarsScopeManager`` so spans follow asyncio tasks (a warning is
logged otherwise). Links become FOLLOWS_FROM references; ``force_tracing`` sets
``sampling.priority=1`` plus baggage. Jaeger clients were sunset in 2022: prefer the OTel backend
for new deployments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import opentracing
from opentracing import Format
from opentracing.scope_managers.contextvars import ContextVarsScopeManager

from ._base import AttributeValue, Backend, BackendSpan, SpanContext

__all__ = ["OpenTracingBackend", "OpenTracingSpan", "jaeger_tracer"]

logger = logging.getLogger("logcontext.tracing")

FORCE_KEY = "logcontext-force-tracing"


def _raw_sampled(raw: Any) -> bool:
    is_sampled = getattr(raw, "is_sampled", None)
    return True if is_sampled is None else bool(is_sampled())


class OpenTracingSpan(BackendSpan):
    """An OpenTracing span behind the :class:`~logcontext.tracing.Span` protocol."""

    __slots__ = ()

    @property
    def context(self) -> SpanContext:
        ctx = self.raw.context
        forced = self.forced or ctx.baggage.get(FORCE_KEY) == "1"
        return SpanContext(int(ctx.trace_id or 0), int(ctx.span_id or 0), _raw_sampled(self.raw), forced, ctx)

    def is_recording(self) -> bool:
        return _raw_sampled(self.raw)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.raw.set_tag(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.raw.log_kv({"event": name, **(attributes or {})})

    def record_exception(self, exc: BaseException) -> None:
        self.raw.set_tag("error", True)
        self.raw.log_kv(
            {
                "event": "error",
                "error.kind": type(exc).__name__,
                "error.object": exc,
                "message": str(exc),
            }
        )

    def update_name(self, name: str) -> None:
        self.raw.set_operation_name(name)

    def _end(self) -> None:
        self.raw.finish()


class OpenTracingBackend(Backend):
    """Spans from an ``opentracing.Tracer``; ``uber-trace-id`` propagation with jaeger-client."""

    name = "opentracing"

    def __init__(self, *, tracer: Any = None, service_name: str | None = None) -> None:
        if tracer is None:
            tracer = opentracing.global_tracer()
            if type(tracer) is opentracing.Tracer and service_name is not None:
                # No tracer configured anywhere: a jaeger-client one for the local agent.
                tracer = jaeger_tracer(
                    service_name,
                    agent_host=os.environ.get("JAEGER_AGENT_HOST", "127.0.0.1"),
                    agent_port=int(os.environ.get("JAEGER_AGENT_PORT", "6831")),
                )
        if not isinstance(tracer, opentracing.Tracer):
            raise TypeError(f"init_tracing: tracer must be an opentracing.Tracer, not {tracer!r}")
        self.tracer = tracer
        self.service_name = service_name
        if not isinstance(tracer.scope_manager, ContextVarsScopeManager):
            logger.warning(
                "OpenTracing tracer uses %s: spans will not follow asyncio tasks; build it with "
                "scope_manager=ContextVarsScopeManager()",
                type(tracer.scope_manager).__name__,
            )

    def _ot_context(self, sc: SpanContext) -> Any:
        raw = sc.raw
        if isinstance(raw, opentracing.SpanContext):
            return raw
        try:
            from jaeger_client.span_context import SpanContext as JaegerContext
            from jaeger_client.tracer import Tracer as JaegerTracer

            if isinstance(self.tracer, JaegerTracer):
                return JaegerContext(
                    trace_id=sc.trace_id,
                    span_id=sc.span_id,
                    parent_id=None,
                    flags=1 if sc.sampled else 0,
                )
        except ImportError:
            pass
        from opentracing.mocktracer.context import SpanContext as MockContext

        return MockContext(trace_id=sc.trace_id, span_id=sc.span_id)

    def start_span(
        self,
        name: str,
        *,
        parent: BackendSpan | SpanContext | None,
        root: bool,
        links: Sequence[tuple[SpanContext, Mapping[str, AttributeValue]]],
        attributes: Mapping[str, AttributeValue] | None,
        kind: str,
    ) -> BackendSpan:
        child_of: Any = None
        if parent is not None and not root:
            child_of = parent.raw if isinstance(parent, BackendSpan) else self._ot_context(parent)
        references = [opentracing.follows_from(self._ot_context(sc)) for sc, _ in links] or None
        tags: dict[str, Any] = dict(attributes) if attributes else {}
        if kind != "internal":
            tags["span.kind"] = kind
        raw = self.tracer.start_span(
            operation_name=name,
            child_of=child_of,
            references=references,
            tags=tags or None,
            ignore_active_span=root,
        )
        return OpenTracingSpan(raw)

    def activate(self, span: BackendSpan) -> object:
        return self.tracer.scope_manager.activate(span.raw, False)

    def deactivate(self, token: object) -> None:
        token.close()  # type: ignore[attr-defined]

    def current_raw(self) -> Any:
        scope = self.tracer.scope_manager.active
        return None if scope is None else scope.span

    def wrap(self, raw: Any) -> BackendSpan:
        return OpenTracingSpan(raw)

    def inject(self, span: BackendSpan, carrier: dict[str, str], *, http: bool = True) -> None:
        fmt = Format.HTTP_HEADERS if http else Format.TEXT_MAP
        self.tracer.inject(span.raw.context, fmt, carrier)

    def extract(self, carrier: Mapping[str, str], *, http: bool = True) -> SpanContext | None:
        fmt = Format.HTTP_HEADERS if http else Format.TEXT_MAP
        try:
            ctx = self.tracer.extract(fmt, dict(carrier))
        except (opentracing.SpanContextCorruptedException, opentracing.InvalidCarrierException):
            return None
        if ctx is None or not getattr(ctx, "trace_id", None):
            return None
        flags = getattr(ctx, "flags", 1)
        baggage = getattr(ctx, "baggage", None) or {}
        return SpanContext(
            int(ctx.trace_id),
            int(ctx.span_id or 0),
            bool(flags & 1),
            baggage.get(FORCE_KEY) == "1",
            ctx,
        )

    def force(self, span: BackendSpan) -> None:
        span.raw.set_tag("sampling.priority", 1)
        span.raw.set_baggage_item(FORCE_KEY, "1")
        span.forced = True

    def is_forced_current(self) -> bool:
        raw = self.current_raw()
        return raw is not None and raw.get_baggage_item(FORCE_KEY) == "1"

    def shutdown(self, timeout_s: float) -> bool:
        """Close the tracer and poll its flush future until ``timeout_s``.

        jaeger-client's ``close()`` returns a future completed from its reporter thread without
        waking any loop: awaiting it stalls and, with no loop, creating it raises. It is created
        here on a private loop in this (worker) thread and polled.
        """
        close = getattr(self.tracer, "close", None)
        if close is None:
            return True
        deadline = time.monotonic() + timeout_s
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            future = close()
            done = getattr(future, "done", None)
            if done is None:
                return True
            while not done():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)
            return True
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def jaeger_tracer(
    service_name: str,
    *,
    agent_host: str = "127.0.0.1",
    agent_port: int = 6831,
    sample_all: bool = True,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """Build a jaeger-client tracer reporting over UDP to a Jaeger agent (thrift compact).

    Uses ``ContextVarsScopeManager``; ``sample_all`` picks a constant sampler (else jaeger's
    remote-controlled default). ``config`` entries override jaeger-client ``Config`` keys.
    """
    from jaeger_client.config import Config

    cfg: dict[str, Any] = {
        "local_agent": {"reporting_host": agent_host, "reporting_port": agent_port},
        "logging": False,
    }
    if sample_all:
        cfg["sampler"] = {"type": "const", "param": 1}
    cfg.update(config or {})
    return Config(
        config=cfg,
        service_name=service_name,
        scope_manager=ContextVarsScopeManager(),
        validate=True,
    ).new_tracer()
