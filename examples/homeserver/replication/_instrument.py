"""Thin bridge to ``logcontext`` (contexts, background processes, tracing).

The replication code calls these helpers only; each uses the library when the
needed part is importable and degrades to a no-op otherwise, so the protocol
works (and its tests run) while parts of the library are still being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = [
    "activate",
    "background_process",
    "current_trace_carrier",
    "logging_context",
    "nested_context",
    "span",
]


@functools.cache
def _lc() -> Any:
    try:
        import logcontext
    except ImportError:  # pragma: no cover - the library is a dependency
        return None
    return logcontext if hasattr(logcontext, "LoggingContext") else None


@functools.cache
def _tracing() -> Any:
    try:
        from logcontext import tracing
    except ImportError:
        return None
    return tracing if hasattr(tracing, "start_span") else None


def _lc_attr(name: str) -> Any:
    """``logcontext.<name>`` or None (parts of the library may not exist yet)."""
    lc = _lc()
    if lc is None:
        return None
    try:
        return getattr(lc, name)
    except (AttributeError, ImportError):
        return None


def new_context(name: str, parent: Any = None) -> Any:
    """A (not entered) ``LoggingContext`` or ``None`` without the library."""
    lc = _lc()
    if lc is None:
        return None
    return lc.LoggingContext(name, parent_context=parent)


@contextlib.contextmanager
def logging_context(name: str, parent: Any = None) -> Iterator[Any]:
    """``with LoggingContext(name, parent_context=parent)`` when available."""
    ctx = new_context(name, parent)
    if ctx is None:
        yield None
        return
    with ctx:
        yield ctx


@contextlib.contextmanager
def activate(ctx: Any) -> Iterator[None]:
    """Re-activate a long-lived context without finishing it (``PreserveLoggingContext``)."""
    preserve = _lc_attr("PreserveLoggingContext") if ctx is not None else None
    if preserve is None:
        yield
        return
    with preserve(ctx):
        yield


@contextlib.contextmanager
def nested_context(suffix: str) -> Iterator[Any]:
    """``with nested_logging_context(suffix)`` when available."""
    fn = _lc_attr("nested_logging_context")
    if fn is None:
        yield None
        return
    with fn(suffix) as ctx:
        yield ctx


def current_context() -> Any:
    fn = _lc_attr("current_context")
    return fn() if fn is not None else None


_bg_counts: dict[str, int] = {}


def background_process(
    desc: str, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any
) -> asyncio.Task[Any]:
    """``run_as_background_process(desc, fn, *args)``, or a task in its own context."""
    runner = _lc_attr("run_as_background_process")
    if runner is not None:
        task: asyncio.Task[Any] = runner(desc, fn, *args)
        return task
    n = _bg_counts[desc] = _bg_counts.get(desc, 0) + 1

    async def run() -> Any:
        preserve = _lc_attr("PreserveLoggingContext")
        ctx = new_context(f"{desc}-{n}")
        if ctx is None or preserve is None:
            return await fn(*args)
        with preserve(), ctx:
            return await fn(*args)

    return asyncio.ensure_future(run())


@contextlib.contextmanager
def span(
    name: str, attributes: dict[str, Any] | None = None, links: Any = (), parent: Any = None
) -> Iterator[Any]:
    """``logcontext.tracing.start_span`` (usage recorded) or nothing."""
    tr = _tracing()
    if tr is None or not _tracing_on(tr):
        yield None
        return
    with tr.start_span(name, attributes=attributes, links=links, parent=parent) as s:
        yield s


def tracing_on() -> bool:
    """True when a tracing backend is configured."""
    tr = _tracing()
    return tr is not None and _tracing_on(tr)


def remote_parent_or_link(headers: Any) -> tuple[Any, Any]:
    """``(parent, links)`` for an authenticated internal request carrying trace headers."""
    tr = _tracing()
    if tr is None or not _tracing_on(tr):
        return None, ()
    parent = tr.extract(headers, origin="replication", authenticated=True)
    if parent is not None:
        return parent, ()
    link = tr.extract_link(headers)
    return None, ((link,) if link is not None else ())


def _tracing_on(tr: Any) -> bool:
    enabled = getattr(tr, "tracing_enabled", None)
    return bool(enabled()) if callable(enabled) else True


def current_trace_carrier() -> dict[str, str] | None:
    """The active span as a W3C text map, if tracing is on and sampled."""
    tr = _tracing()
    if tr is None or not _tracing_on(tr):
        return None
    inject = getattr(tr, "inject_text_map", None)
    if inject is None:
        return None
    carrier = inject(destination="replication", internal=True)
    return dict(carrier) if carrier else None


def link_from_carrier(carrier: dict[str, str] | None) -> Any:
    """A span link to the writer's span described by ``carrier`` (or ``()``)."""
    if not carrier:
        return ()
    tr = _tracing()
    fn = getattr(tr, "extract_link", None) if tr else None
    if fn is None:
        return ()
    link = fn(carrier)
    return (link,) if link is not None else ()
