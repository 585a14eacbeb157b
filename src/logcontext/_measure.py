"""``Measure`` blocks and ``measure_func`` (spec §7 "Blocks")."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast, overload

from logcontext import LoggingContext, current_context

from . import _bgmetrics
from ._context import enter_measured_child as _enter_measured_child
from ._context import exit_measured_child as _exit_measured_child
from ._ledger import arm_exact as _arm_exact

__all__ = ["Measure", "measure_func"]

P = ParamSpec("P")
R = TypeVar("R")

_monotonic = time.monotonic


class Measure:
    """Measure a block of code: wall time and the inclusive usage of a child context.

    On enter a child of the current context, named like it (so log lines are unchanged), is
    created and entered; on exit its usage (CPU, DB, event fetches, including threads and
    tasks it started) is added to the block metrics ``block_name``/``server_name`` when
    metrics are installed. Synchronous; fine inside coroutines around ``await``. A
    ``Measure`` object can be entered once: entering it again raises ``RuntimeError``.
    """

    __slots__ = ("_block", "_ctx", "_span_cm", "name", "server_name", "span", "start")

    def __init__(self, name: str, *, server_name: str | None = None, span: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise (TypeError if not isinstance(name, str) else ValueError)(
                f"Measure: name must be a non-empty str, got {name!r}"
            )
        self.name = name
        self.server_name = server_name
        self.span = span
        self.start = -1.0
        self._ctx: LoggingContext | None = None
        self._block: Any = None
        self._span_cm: Any = None

    def __enter__(self) -> Measure:
        if self.start >= 0:
            raise RuntimeError(f"Measure({self.name!r}) cannot be entered twice")
        parent = current_context()
        explicit = self.server_name
        server = self.server_name = parent.server_name if explicit is None else explicit
        ctx: LoggingContext | None
        if parent:
            # An inherited server name is not passed on: the child reads its parent's (built
            # and entered below, in one step).
            ctx = (
                None
                if explicit is None
                else LoggingContext(parent.name, parent_context=parent, server_name=explicit)
            )
        else:
            from . import _misuse

            _misuse.report(
                "sentinel-usage",
                f"Measure({self.name!r}) entered in the sentinel context: usage not attributed",
                site=f"Measure:{self.name}",
            )
            ctx = LoggingContext("sentinel", server_name=server)
        m = _bgmetrics.active
        self.start = _monotonic()
        if m is not None:
            b = self._block = m.block(self.name, server)
            b.in_flight.add(self)
        # Armed: the block's figures are final at its exit, no window close.
        if ctx is None:
            ctx = _enter_measured_child(parent)  # type: ignore[arg-type]  # truthy: a LoggingContext
        else:
            ctx.__enter__()
            _arm_exact(ctx)
        self._ctx = ctx
        if self.span:
            self._span_cm = _start_block_span(self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError(f"Measure({self.name!r}) exited without being entered")
        if self._span_cm is not None:
            cm, self._span_cm = self._span_cm, None
            cm.__exit__(exc_type, exc, tb)
        figures = _exit_measured_child(ctx, exc_type, exc, tb)  # else ``ctx.__exit__``
        b = self._block
        if b is None:
            return
        duration = _monotonic() - self.start
        self._block = None
        b.in_flight.discard(self)
        u = ctx._u
        if figures is None or u is None:
            # An interrupted block's exit leaves its CPU pending while the sampling window is
            # young: get_resource_usage() closes the window on this thread (final figures).
            u = ctx.get_resource_usage()
        # else measured: its own usage holds the final figures (read, not kept)
        b.add(duration, u)

    def get_resource_usage(self) -> Any:
        """The block's usage so far (zeros before it was entered)."""
        from logcontext import ContextResourceUsage

        return ContextResourceUsage() if self._ctx is None else self._ctx.get_resource_usage()

    def __repr__(self) -> str:
        return f"Measure({self.name!r}, server_name={self.server_name!r})"


def _start_block_span(name: str) -> Any:
    """Open a tracing span for a ``Measure(span=True)`` block, if tracing is enabled."""
    import sys

    tracing = sys.modules.get("logcontext.tracing")
    if tracing is None or not tracing.tracing_enabled():
        return None
    # The block's own child context already isolates its usage, so the span need not
    # create another one.
    cm = tracing.start_span(name, record_usage=False)
    cm.__enter__()
    return cm


@overload
def measure_func(name: Callable[P, R]) -> Callable[P, R]: ...
@overload
def measure_func(name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def measure_func(name: Any = None) -> Any:
    """Decorator: run each call of a sync or async function inside ``Measure(name)``.

    ``name`` defaults to the function's ``__qualname__``; ``@measure_func`` works bare too.
    """
    if callable(name):
        return measure_func(None)(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"measure_func: name must be a non-empty str, got {name!r}")

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        block = name or fn.__qualname__
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with Measure(block):
                    return await afn(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with Measure(block):
                return fn(*args, **kwargs)

        return wrapper

    return decorator
