"""OpenTelemetry backend (extra ``[otel]``): spans from the given or global tracer provider.

The active span lives in OpenTelemetry's own ``ContextVar``, so other OTel instrumentation sees
it. Export with the SDK, e.g. ``BatchSpanProcessor(OTLPSpanExporter())`` → a collector →
Jaeger/Tempo. ``ForceTracingSampler`` needs ``opentelemetry-sdk``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace import SpanContext as OtelSpanContext

from ._base import ACTIVATE_FAILED, AttributeValue, Backend, BackendSpan, SpanContext

if TYPE_CHECKING:
    from ._sampler import ForceTracingSampler

__all__ = ["ForceTracingSampler", "OtelBackend", "OtelSpan"]

FORCE_KEY = "logcontext-force-tracing"

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}


def __getattr__(name: str) -> Any:
    if name == "ForceTracingSampler":
        from ._sampler import ForceTracingSampler

        return ForceTracingSampler
    raise AttributeError(name)


#: Per native span type: may usage attributes go straight into the SDK span's attribute dict?
_direct_ok: dict[type, bool] = {}
_bounded_type: Any = None
#: The last span type found direct-capable (one identity test on the hot path).
_direct_type: Any = None


def _forget_direct(tp: type) -> None:
    global _direct_type
    if _direct_type is tp:
        _direct_type = None


def _probe_direct(tp: type) -> bool:
    """True if ``tp`` is the OpenTelemetry SDK span whose ``set_attributes`` we know.

    Such a span keeps its attributes in a ``BoundedAttributes`` (``_dict`` under ``_lock``,
    limits ``maxlen``/``max_value_len``, ``_immutable`` once ended) and ``set_attributes`` only
    validates values and stores them under the span's ``_lock`` while ``_end_time`` is None. The
    usage attributes are valid by construction, so storing them directly is equivalent; any
    deviation (another SDK layout, a subclass overriding the setters) keeps the public call.
    """
    global _bounded_type, _direct_type
    try:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import Span as SdkSpan
    except ImportError:
        return False
    if not (
        isinstance(tp, type)
        and issubclass(tp, SdkSpan)
        and tp.set_attributes is SdkSpan.set_attributes
        and tp.set_attribute is SdkSpan.set_attribute
        and tp.is_recording is SdkSpan.is_recording
        and getattr(BoundedAttributes, "_set_items", None) is not None
    ):
        return False
    probe = BoundedAttributes(maxlen=4, immutable=False)
    probe["k"] = 1
    d = getattr(probe, "_dict", None)
    if not (
        type(d) is dict
        and d == {"k": 1}
        and getattr(probe, "_immutable", None) is False
        and getattr(probe, "maxlen", None) == 4
        and getattr(probe, "max_value_len", 0) is None
        and hasattr(probe, "_lock")
    ):
        return False
    _bounded_type = BoundedAttributes
    _direct_type = tp
    return True


class OtelSpan(BackendSpan):
    """An OpenTelemetry span behind the :class:`~logcontext.tracing.Span` protocol."""

    __slots__ = ("_start_ctx",)

    def __init__(self, raw: Any, start_ctx: context.Context | None) -> None:
        self.raw = raw
        self.forced = False
        self._ended = False
        # Forced tracing is read from the start context's baggage only when asked for.
        self._start_ctx = start_ctx
        self.forced_known = False

    @property
    def context(self) -> SpanContext:
        sc = self.raw.get_span_context()
        if not self.forced_known:
            self.forced = self.forced or baggage.get_baggage(FORCE_KEY, self._start_ctx) == "1"
            self.forced_known = True
        return SpanContext(sc.trace_id, sc.span_id, sc.trace_flags.sampled, self.forced, sc)

    def is_recording(self) -> bool:
        raw = self.raw
        if type(raw) is _direct_type:  # the SDK's span (see ``_probe_direct``): until it ends
            return raw._end_time is None
        return raw.is_recording() is True  # OTel's API returns a bool

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.raw.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.raw.set_attributes(attributes)

    def set_usage(self, attributes: dict[str, AttributeValue]) -> None:
        if not self._store_usage(attributes):
            raw = self.raw
            if raw.is_recording():
                raw.set_attributes(attributes)

    def _end_with_usage(self, attributes: dict[str, AttributeValue]) -> None:
        raw = self.raw
        try:
            if type(raw) is _direct_type:
                # ``_store_usage``'s direct store, inlined (the per-span path). Every writer of
                # the attributes holds the span's lock; a reader's copy cannot interleave with
                # one ``dict.update`` from a dict of ``str`` keys.
                lock = raw._lock
                lock.acquire()  # not ``with``: half the cost in 3.11 (the per-span path)
                try:
                    attrs = raw._attributes
                    if (
                        raw._end_time is None
                        and type(attrs) is _bounded_type
                        and not attrs._immutable
                        and attrs.max_value_len is None
                        and (attrs.maxlen is None or len(attrs._dict) + len(attributes) <= attrs.maxlen)
                    ):
                        attrs._dict.update(attributes)
                        attributes = {}
                finally:
                    lock.release()
            if attributes and not self._store_usage(attributes) and raw.is_recording():
                raw.set_attributes(attributes)
        finally:
            raw.end()

    def _store_usage(self, attributes: dict[str, AttributeValue]) -> bool:
        """Store valid usage attributes straight into an SDK span's own dict (see
        ``_probe_direct``); False if the span is not of that layout (use the public setter)."""
        raw = self.raw
        tp = type(raw)
        if tp is _direct_type:
            direct = True
        else:
            direct = _direct_ok.get(tp)  # type: ignore[assignment]
            if direct is None:
                direct = _direct_ok[tp] = _probe_direct(tp)
        if direct:
            # SDK span: the values are valid by construction, skip the per-value validation
            # (several us for nine attributes) when no limit could apply.
            try:
                with raw._lock:
                    if raw._end_time is not None:
                        return True  # ended: nothing to add
                    attrs: Any = raw._attributes
                    if type(attrs) is _bounded_type and not attrs._immutable and attrs.max_value_len is None:
                        store = attrs._dict
                        maxlen = attrs.maxlen
                        if maxlen is None or len(store) + len(attributes) <= maxlen:
                            with attrs._lock:
                                store.update(attributes)
                            return True
            except AttributeError:
                _direct_ok[tp] = False
                _forget_direct(tp)
        return False

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.raw.add_event(name, attributes)

    def record_exception(self, exc: BaseException) -> None:
        self.raw.record_exception(exc)
        self.raw.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def update_name(self, name: str) -> None:
        self.raw.update_name(name)

    def _end(self) -> None:
        self.raw.end()


_new_span: Final = object.__new__
_OtelContext: Final = context.Context
_cv_runtime: bool | None = None
#: OTel's own ``ContextVar`` under its default runtime (else None): ``attach`` is its ``set``.
_cv_var: ContextVar[context.Context] | None = None
#: The key under which OTel keeps the active span in a ``Context`` (found by :func:`_probe_keys`).
_span_key: str | None = None
#: Our key beside it: the :class:`OtelSpan` wrapping that span, for :meth:`OtelBackend.current_wrapper`.
_WRAP_KEY: Final = "logcontext-tracing-span"


def _contextvars_runtime() -> bool:
    """True if OTel keeps its ``Context`` in a plain ``ContextVar`` (its default runtime)."""
    global _cv_runtime, _cv_var
    if _cv_runtime is None:
        try:
            from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

            runtime = getattr(context, "_RUNTIME_CONTEXT", None)
            _cv_runtime = type(runtime) is ContextVarsRuntimeContext
            var = getattr(runtime, "_current_context", None) if _cv_runtime else None
            _cv_var = var if type(var) is ContextVar else None
        except ImportError:
            _cv_runtime = False
        _probe_keys()
    return _cv_runtime


def _probe_keys() -> None:
    """Find OTel's active-span key: the one key ``set_span_in_context`` puts in an empty
    ``Context`` (a plain ``dict`` subclass). Not found: activations go through OTel's calls."""
    global _span_key
    _span_key = None
    try:
        probe = trace.set_span_in_context(INVALID_SPAN, context.Context())
        keys = list(probe)
        if (
            isinstance(probe, dict)
            and len(keys) == 1
            and type(keys[0]) is str
            and trace.get_current_span(context.Context({keys[0]: INVALID_SPAN})) is INVALID_SPAN
        ):
            _span_key = keys[0]
    except Exception:
        _span_key = None


def _with_span(cur: context.Context, raw: Any, span: OtelSpan) -> context.Context:
    """``set_span_in_context(raw, cur)`` with our wrapper stored beside it (one copy)."""
    key = _span_key
    if key is None:
        return trace.set_span_in_context(raw, cur)
    values = dict(cur)
    values[key] = raw
    values[_WRAP_KEY] = span
    return _OtelContext(values)


def _to_otel_context(parent: SpanContext) -> context.Context:
    raw = parent.raw
    if isinstance(raw, context.Context):
        return raw
    if isinstance(raw, OtelSpanContext):
        return trace.set_span_in_context(NonRecordingSpan(raw))
    sc = OtelSpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(sc))


def _to_otel_span_context(sc: SpanContext) -> OtelSpanContext:
    raw = sc.raw
    if isinstance(raw, OtelSpanContext):
        return raw
    if isinstance(raw, context.Context):
        return trace.get_current_span(raw).get_span_context()
    return OtelSpanContext(
        sc.trace_id,
        sc.span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sc.sampled else TraceFlags.DEFAULT),
    )


def _default_provider(service_name: str | None) -> Any:
    """The global provider; or, if none is set and a service name is given, a new SDK one."""
    provider = trace.get_tracer_provider()
    if service_name is None or not isinstance(provider, trace.ProxyTracerProvider):
        return provider
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return provider
    sdk_provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        sdk_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return sdk_provider


class OtelBackend(Backend):
    """Spans from an OpenTelemetry tracer; W3C ``traceparent`` (+ baggage) propagation."""

    name = "otel"

    def __init__(
        self, *, tracer_provider: Any = None, tracer: Any = None, service_name: str | None = None
    ) -> None:
        if tracer is not None:
            self.provider = tracer_provider
            self.tracer = tracer
        else:
            self.provider = (
                tracer_provider if tracer_provider is not None else _default_provider(service_name)
            )
            self.tracer = self.provider.get_tracer("logcontext")
        # OTel's contextvars runtime: its detach is the token's reset; ``start_active`` sets
        # OTel's ContextVar directly. With the span key known, the activated Context also
        # holds our wrapper, so scopes need no marker of their own (``Backend.marker_free``).
        self.plain_tokens = _contextvars_runtime()
        self.marker_free = self.plain_tokens and _cv_var is not None and _span_key is not None

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
        if parent is None and not root and not links:
            # The common case (``start_span(name)``): the active span is the parent.
            raw = self.tracer.start_span(
                name,
                kind=_KINDS[kind],
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            return OtelSpan(raw, context.get_current())
        ctx: context.Context | None
        if root:
            # Drop the parent span but keep baggage (forced tracing survives a new root).
            ctx = trace.set_span_in_context(INVALID_SPAN)
        elif parent is None:
            ctx = None
        elif isinstance(parent, BackendSpan):
            ctx = trace.set_span_in_context(parent.raw)
        else:
            ctx = _to_otel_context(parent)
        otel_links = [Link(_to_otel_span_context(sc), dict(attrs)) for sc, attrs in links] if links else None
        raw = self.tracer.start_span(
            name,
            context=ctx,
            kind=_KINDS[kind],
            attributes=attributes,
            links=otel_links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return OtelSpan(raw, ctx if ctx is not None else context.get_current())

    def start_active(
        self, name: str, attributes: Mapping[str, AttributeValue] | None, kind: str
    ) -> tuple[BackendSpan, object]:
        # One read of the current Context serves the SDK (parent, sampler, processors), the
        # activation and the forced-tracing lookup; passing it equals passing None. Under
        # OTel's contextvars runtime ``get_current`` is its variable's ``get``, ``attach`` its
        # ``set``. The API's ``start_span`` parameters, in their order: name, context, kind,
        # attributes, links, start_time, record_exception, set_status_on_exception.
        var = _cv_var
        cur = context.get_current() if var is None else var.get()
        raw = self.tracer.start_span(name, cur, _KINDS[kind], attributes, (), None, False, False)
        # ``OtelSpan(raw, cur)`` without the ``__init__`` frame (the per-span path)
        span = _new_span(OtelSpan)
        span.raw = raw
        span.forced = False
        span._ended = False
        span._start_ctx = cur
        span.forced_known = False
        try:
            if var is None:
                return span, context.attach(trace.set_span_in_context(raw, cur))
            return span, var.set(_with_span(cur, raw, span))
        except Exception:
            return span, ACTIVATE_FAILED

    def activate(self, span: BackendSpan) -> object:
        var = _cv_var
        if var is not None and isinstance(span, OtelSpan):
            return var.set(_with_span(var.get(), span.raw, span))
        return context.attach(trace.set_span_in_context(span.raw))

    def current_wrapper(self) -> BackendSpan | None:
        var = _cv_var
        if var is None:
            return None
        cur = var.get()
        span = cur.get(_WRAP_KEY)
        if type(span) is OtelSpan and cur.get(_span_key or "") is span.raw:
            return span
        return None

    def deactivate(self, token: object) -> None:
        if type(token) is Token and _contextvars_runtime():
            # OTel's contextvars runtime: ``detach`` is this reset behind two calls and a
            # handler for a foreign Context, which our scope marker has already ruled out.
            token.var.reset(token)
        else:
            context.detach(token)  # type: ignore[arg-type]

    def current_raw(self) -> Any:
        raw = trace.get_current_span()
        if raw is INVALID_SPAN or not raw.get_span_context().is_valid:
            return None
        return raw

    def current_ids(self) -> tuple[int, int] | None:
        sc = trace.get_current_span().get_span_context()
        return (sc.trace_id, sc.span_id) if sc.is_valid else None

    def wrap(self, raw: Any) -> BackendSpan:
        return OtelSpan(raw, context.get_current())

    def inject(self, span: BackendSpan, carrier: dict[str, str], *, http: bool = True) -> None:
        propagate.inject(carrier, context=trace.set_span_in_context(span.raw))

    def extract(self, carrier: Mapping[str, str], *, http: bool = True) -> SpanContext | None:
        ctx = propagate.extract(carrier)
        sc = trace.get_current_span(ctx).get_span_context()
        if not sc.is_valid:
            return None
        forced = baggage.get_baggage(FORCE_KEY, ctx) == "1"
        return SpanContext(sc.trace_id, sc.span_id, sc.trace_flags.sampled, forced, ctx)

    def force(self, span: BackendSpan) -> None:
        # The token is dropped on purpose: the enclosing scope's detach discards the change.
        context.attach(baggage.set_baggage(FORCE_KEY, "1"))
        span.forced = True
        if span.is_recording():
            span.set_attribute("logcontext.forced", True)

    def is_forced_current(self) -> bool:
        return baggage.get_baggage(FORCE_KEY) == "1"

    def add_back_link(self, spawner: BackendSpan, target: SpanContext) -> None:
        add_link = getattr(spawner.raw, "add_link", None)
        if add_link is None:
            super().add_back_link(spawner, target)
            return
        add_link(_to_otel_span_context(target), {"logcontext.link": "spawned"})

    def shutdown(self, timeout_s: float) -> bool:
        provider = self.provider
        ok = True
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            ok = bool(flush(int(timeout_s * 1000)))
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            t = threading.Thread(target=shutdown, name="logcontext-otel-shutdown", daemon=True)
            t.start()
            t.join(timeout_s)
            ok = ok and not t.is_alive()
        return ok
