"""Background-process spans: a new root ``bgproc.<desc>`` linked to the spawner (§6.3)."""

from __future__ import annotations

from typing import Any

from . import _api
from ._base import BackendSpan

__all__ = ["start_background_span"]


def start_background_span(desc: str, ctx: Any) -> Any:
    """Open root span ``bgproc.<desc>`` owned by background context ``ctx``; a context manager.

    Call it inside the background task (its ``Context`` is a copy of the spawner's, so the
    spawner's span is still the active one there), e.g.
    ``with ctx, start_background_span(desc, ctx): await fn()``. The span is a new root, linked to
    the spawner's span (``logcontext.link="spawned_by"``; OpenTracing: FOLLOWS_FROM) and, where
    the backend can, linked back from the spawner (``"spawned"``, else an event
    ``logcontext.spawned``). It is active for the block and ended with ``ctx``'s usage when
    ``ctx`` exits. Tracing off: the shared null context manager.
    """
    if not _api._enabled:
        return _api.NULL_SCOPE
    if not isinstance(desc, str):
        raise TypeError(f"start_background_span: desc must be a str, not {desc!r}")
    spawner = _api.active_span()
    links: tuple[Any, ...] = ()
    after_start = None
    if isinstance(spawner, BackendSpan) and spawner.context.trace_id:
        links = ((spawner, {"logcontext.link": "spawned_by"}),)
        backend = _api._backend

        def after_start(span: BackendSpan) -> None:
            if backend is not None and spawner.is_recording():
                backend.add_back_link(spawner, span.context)

    return _api.start_context_span(ctx, f"bgproc.{desc}", root=True, links=links, after_start=after_start)
