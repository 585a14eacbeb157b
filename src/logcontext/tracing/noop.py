"""The no-op backend: ``init_tracing("noop")`` keeps every helper on its null fast path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._base import NULL_SPAN, AttributeValue, Backend, BackendSpan, SpanContext

__all__ = ["NoopBackend", "NoopSpan"]


class NoopSpan(BackendSpan):
    """A non-recording span (only handed out if the backend is driven directly)."""

    __slots__ = ()

    @property
    def context(self) -> SpanContext:
        return NULL_SPAN.context

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

    def _end(self) -> None:
        return None


class NoopBackend(Backend):
    """Records nothing. While it is selected ``tracing_enabled()`` is False."""

    name = "noop"

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
        return NoopSpan(None)

    def activate(self, span: BackendSpan) -> object:
        return None

    def deactivate(self, token: object) -> None:
        return None

    def current_raw(self) -> Any:
        return None

    def wrap(self, raw: Any) -> BackendSpan:
        return NoopSpan(raw)

    def inject(self, span: BackendSpan, carrier: dict[str, str], *, http: bool = True) -> None:
        return None

    def extract(self, carrier: Mapping[str, str], *, http: bool = True) -> SpanContext | None:
        return None

    def force(self, span: BackendSpan) -> None:
        return None

    def is_forced_current(self) -> bool:
        return False
