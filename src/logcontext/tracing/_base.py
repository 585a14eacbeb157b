"""Backend-neutral tracing types: the ``Span`` protocol, ``SpanContext`` and the backend interface.

Backends (``otel``, ``opentracing``, ``noop``) implement :class:`Backend` and wrap their native
spans in objects satisfying :class:`Span`. Nothing here imports a third-party package.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "NULL_SPAN",
    "AttributeValue",
    "Backend",
    "Span",
    "SpanContext",
    "SpanKind",
]

#: Values a span attribute may hold (what OpenTelemetry accepts).
AttributeValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]

#: Accepted ``kind`` values for :func:`logcontext.tracing.start_span`.
SpanKind = str
SPAN_KINDS = frozenset({"internal", "server", "client", "producer", "consumer"})


@dataclass(frozen=True, slots=True)
class SpanContext:
    """Identity of a span: ``trace_id`` (128-bit), ``span_id`` (64-bit), ``sampled``.

    ``forced`` is True when forced tracing applies to it; ``raw`` keeps the backend's own context
    object (an OTel ``Context`` or an OpenTracing ``SpanContext``) so it can be used as a parent or
    link without loss. Neither takes part in equality.
    """

    trace_id: int
    span_id: int
    sampled: bool
    forced: bool = field(default=False, compare=False)
    raw: Any = field(default=None, compare=False, repr=False)

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 lower-case hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """The span id as 16 lower-case hex digits."""
        return f"{self.span_id:016x}"


@runtime_checkable
class Span(Protocol):
    """What every backend's span offers through this package."""

    @property
    def context(self) -> SpanContext:
        """The span's identity."""
        ...

    def is_recording(self) -> bool:
        """True if attributes and events set on the span are kept (it is sampled)."""
        ...

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute (OpenTracing: tag)."""
        ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Add a timestamped event (OpenTracing: log)."""
        ...

    def record_exception(self, exc: BaseException) -> None:
        """Record an exception and mark the span as failed."""
        ...

    def end(self) -> None:
        """End the span; later calls do nothing."""
        ...


class _NullSpan:
    """The span handed out when tracing is off: records nothing, ends nothing."""

    __slots__ = ()

    _CONTEXT = SpanContext(0, 0, False)

    @property
    def context(self) -> SpanContext:
        return self._CONTEXT

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        return None

    def record_exception(self, exc: BaseException) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def end(self) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<NullSpan>"


NULL_SPAN = _NullSpan()


class BackendSpan(abc.ABC):
    """Base of backend span wrappers: keeps the native span in ``raw``; ``end()`` runs once."""

    __slots__ = ("_ended", "forced", "forced_known", "raw")

    def __init__(self, raw: Any, forced: bool = False) -> None:
        self.raw = raw
        self.forced = forced
        self.forced_known = True
        self._ended = False

    @property
    @abc.abstractmethod
    def context(self) -> SpanContext: ...

    @abc.abstractmethod
    def is_recording(self) -> bool: ...

    @abc.abstractmethod
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes at once."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_usage(self, attributes: dict[str, AttributeValue]) -> None:
        """Set the usage attributes of :func:`~logcontext.tracing.usage_attributes` if recording.

        ``attributes`` is freshly built and holds only valid keys (non-empty ``str``) and values
        (``str``, ``bool``, ``int``, ``float``); backends may take a cheaper path for it.
        """
        if self.is_recording():
            self.set_attributes(attributes)

    def _end_with_usage(self, attributes: dict[str, AttributeValue]) -> None:
        """:meth:`set_usage` then :meth:`_end`, which runs even if the first fails (the caller
        has marked the span ended)."""
        try:
            self.set_usage(attributes)
        finally:
            self._end()

    @abc.abstractmethod
    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None: ...

    @abc.abstractmethod
    def record_exception(self, exc: BaseException) -> None: ...

    @abc.abstractmethod
    def update_name(self, name: str) -> None: ...

    @abc.abstractmethod
    def _end(self) -> None: ...

    @property
    def ended(self) -> bool:
        """True once :meth:`end` has run."""
        return self._ended

    def end(self) -> None:
        """End the native span the first time only."""
        if self._ended:
            return
        self._ended = True
        self._end()

    def __repr__(self) -> str:
        ctx = self.context
        return f"<{type(self).__name__} trace={ctx.trace_id:032x} span={ctx.span_id:016x}>"


#: Token from :meth:`Backend.start_active` when the span started but could not be activated.
ACTIVATE_FAILED: Any = object()


class Backend(abc.ABC):
    """The small interface each tracing backend implements."""

    name: str = "abstract"
    #: True if a ``contextvars.Token`` returned by :meth:`start_active`/:meth:`activate` is
    #: undone by ``token.var.reset(token)`` alone: scopes then skip :meth:`deactivate`.
    plain_tokens: bool = False
    #: True if the backend's activations record the span wrapper so that
    #: :meth:`current_wrapper` finds it, and its tokens are plain: scopes then set no marker of
    #: their own (a foreign ``Context`` shows as the token's failed reset).
    marker_free: bool = False

    @abc.abstractmethod
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
        """Start (not activate) a span; ``parent=None`` and ``root=False`` means the active span."""

    def start_active(
        self, name: str, attributes: Mapping[str, AttributeValue] | None, kind: str
    ) -> tuple[BackendSpan, object]:
        """Start a child of the active span and activate it: ``(span, token)``.

        The common ``start_span(name)`` case in one call; backends may do it cheaper. If only the
        activation fails the token is :data:`ACTIVATE_FAILED` (the span is started all the same).
        """
        span = self.start_span(name, parent=None, root=False, links=(), attributes=attributes, kind=kind)
        try:
            return span, self.activate(span)
        except Exception:
            return span, ACTIVATE_FAILED

    @abc.abstractmethod
    def activate(self, span: BackendSpan) -> object:
        """Make ``span`` the backend's active span in the current ``Context``; return a token."""

    @abc.abstractmethod
    def deactivate(self, token: object) -> None:
        """Undo :meth:`activate` (only called from the ``Context`` that activated)."""

    @abc.abstractmethod
    def current_raw(self) -> Any:
        """The backend's active native span, or None."""

    def current_wrapper(self) -> BackendSpan | None:
        """The wrapper this backend activated for the active span, if it records one."""
        return None

    def current_ids(self) -> tuple[int, int] | None:
        """``(trace_id, span_id)`` of the active span, or None (used for log records)."""
        raw = self.current_raw()
        if raw is None:
            return None
        ctx = self.wrap(raw).context
        return (ctx.trace_id, ctx.span_id) if ctx.trace_id else None

    @abc.abstractmethod
    def wrap(self, raw: Any) -> BackendSpan:
        """Wrap a native span."""

    @abc.abstractmethod
    def inject(self, span: BackendSpan, carrier: dict[str, str], *, http: bool = True) -> None:
        """Write ``span``'s propagation entries into ``carrier`` (HTTP headers or a text map)."""

    @abc.abstractmethod
    def extract(self, carrier: Mapping[str, str], *, http: bool = True) -> SpanContext | None:
        """Read a remote span context from ``carrier`` (lower-case keys), or None."""

    @abc.abstractmethod
    def force(self, span: BackendSpan) -> None:
        """Force tracing for ``span`` and what follows it."""

    @abc.abstractmethod
    def is_forced_current(self) -> bool:
        """True if forced tracing applies in the current ``Context``."""

    def add_back_link(self, spawner: BackendSpan, target: SpanContext) -> None:
        """Link ``spawner`` to ``target`` (``logcontext.link="spawned"``), or add an event."""
        spawner.add_event("logcontext.spawned", {"logcontext.trace_id": target.trace_id_hex})

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and close; return True if it finished within ``timeout_s``."""
        return True
