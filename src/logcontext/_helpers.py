"""Helpers that carry the logging context across tasks, threads and callbacks (spec §3).

``asyncio`` and ``concurrent.futures`` are imported on first use so that
``import logcontext`` stays light.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _ledger, _misuse
from . import clock as _clock
from ._context import (
    SENTINEL_CONTEXT,
    LoggingContext,
    LoggingContextOrSentinel,
    _var_get,
    _var_set,
    set_current_context,
)

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

__all__ = [
    "bind",
    "defer_to_thread",
    "run_as_background_process",
    "run_in_background",
    "run_in_executor",
    "run_in_thread",
    "wrap_as_background_process",
]

P = ParamSpec("P")
R = TypeVar("R")

bg_logger = logging.getLogger("logcontext.background")

#: Strong references to tasks started by the helpers, until they are done.
_bg_tasks: set[asyncio.Task[Any]] = set()
_pending: set[asyncio.Future[Any]] = set()
_counters: dict[str, itertools.count[int]] = {}
_counters_lock = threading.Lock()


def _keep(fut: asyncio.Future[Any], bucket: set[Any]) -> None:
    bucket.add(fut)
    fut.add_done_callback(bucket.discard)


async def _await_it(aw: Awaitable[R]) -> R:
    return await aw


def run_in_background(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """Start ``fn(*args, **kwargs)`` fire-and-forget in the caller's logging context.

    ``fn`` is called synchronously. A coroutine becomes a task in a copy of the
    caller's ``Context`` (metered if :func:`logcontext.aio.install` ran); another
    awaitable is awaited by a small task; a plain value or a synchronous
    exception gives a done future. A strong reference is held until done. If
    ``fn`` changed the current context without restoring it, the change is
    reported (``fn-changed-context``) and undone.
    """
    import asyncio

    if not callable(fn):
        raise TypeError(f"run_in_background: fn must be callable, got {fn!r}")
    loop = asyncio.get_running_loop()
    before = _var_get()
    try:
        res = fn(*args, **kwargs)
    except Exception as exc:
        _restore_if_changed(before, fn)
        fut: asyncio.Future[Any] = loop.create_future()
        fut.set_exception(exc)
        return fut
    _restore_if_changed(before, fn)
    if isinstance(res, Coroutine):
        task = loop.create_task(res)
        _keep(task, _pending)
        return task
    if isinstance(res, asyncio.Future):
        return res
    if isinstance(res, Awaitable):
        task = loop.create_task(_await_it(res))
        _keep(task, _pending)
        return task
    fut = loop.create_future()
    fut.set_result(res)
    return fut


def _restore_if_changed(before: LoggingContextOrSentinel, fn: Any) -> None:
    after = _var_get()
    if after is not before:
        set_current_context(before)
        _misuse.report(
            "fn-changed-context",
            f"{_qualname(fn)} changed the current context from {before} to {after} without "
            "restoring it; restored",
            context=before if before else None,
            site=f"run_in_background:{_qualname(fn)}",
        )


def _qualname(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _next_name(desc: str) -> str:
    with _counters_lock:
        counter = _counters.get(desc)
        if counter is None:
            counter = _counters[desc] = itertools.count(1)
        return f"{desc}-{next(counter)}"


def _start_bg_span(desc: str, ctx: LoggingContext) -> Any:
    api = sys.modules.get("logcontext.tracing._api")
    if api is None or not getattr(api, "_enabled", False):
        return None
    from .tracing._bg import start_background_span

    return start_background_span(desc, ctx)


async def _run_bg(
    desc: str, ctx: LoggingContext, start_span: bool, fn: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    from . import _bgmetrics

    try:
        with ctx:
            span_cm = _start_bg_span(desc, ctx) if start_span else None
            if span_cm is not None:
                span_cm.__enter__()
            _bgmetrics.bg_started(desc, ctx)
            try:
                res = fn(*args, **kwargs)
                if isinstance(res, Awaitable):
                    res = await res
                return res
            except Exception:
                bg_logger.error("Background process %r threw an exception", desc, exc_info=True)
                return None
            finally:
                if span_cm is not None:
                    span_cm.__exit__(*sys.exc_info())
    finally:
        _bgmetrics.bg_finished(desc, ctx)  # after the exit: the usage is final


def run_as_background_process(
    desc: str,
    fn: Callable[..., Any],
    /,
    *args: Any,
    bg_server_name: str | None = None,
    bg_start_span: bool = True,
    **kwargs: Any,
) -> asyncio.Task[Any]:
    """Run ``fn`` as a background process in a new parentless context ``f"{desc}-{n}"``.

    The task runs in a fresh copy of the caller's ``Context`` (other context
    variables, e.g. the active span, are inherited; the logging context is not:
    its usage is not the spawner's). The metrics hooks count the process; with
    tracing on and ``bg_start_span``, root span ``bgproc.<desc>`` is linked to
    the spawner. Exceptions other than cancellation are logged at ERROR on
    ``logcontext.background`` and the result is then ``None``.
    """
    import asyncio

    if not isinstance(desc, str) or not desc:
        raise (TypeError if not isinstance(desc, str) else ValueError)(
            f"run_as_background_process: desc must be a non-empty str, got {desc!r}"
        )
    if not callable(fn):
        raise TypeError(f"run_as_background_process: fn must be callable, got {fn!r}")
    loop = asyncio.get_running_loop()
    ctx = LoggingContext(_next_name(desc), server_name=bg_server_name)
    run_ctx = contextvars.copy_context()
    run_ctx.run(_var_set, SENTINEL_CONTEXT)  # no checkpoint: the caller keeps running
    task = loop.create_task(
        _run_bg(desc, ctx, bg_start_span, fn, args, kwargs), name=ctx.name, context=run_ctx
    )
    _keep(task, _bg_tasks)
    return task


def wrap_as_background_process(
    desc: str,
) -> Callable[[Callable[..., Any]], Callable[..., asyncio.Task[Any]]]:
    """Decorator: each call runs the function via :func:`run_as_background_process`."""
    if not isinstance(desc, str) or not desc:
        raise (TypeError if not isinstance(desc, str) else ValueError)(
            f"wrap_as_background_process: desc must be a non-empty str, got {desc!r}"
        )

    def deco(fn: Callable[..., Any]) -> Callable[..., asyncio.Task[Any]]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> asyncio.Task[Any]:
            return run_as_background_process(desc, fn, *args, **kwargs)

        return wrapper

    return deco


# -- threads -------------------------------------------------------------------


def _run_in_child_context(
    parent: LoggingContextOrSentinel, fn: Callable[..., R], args: Any, kwargs: Any
) -> R:
    """Worker side: run ``fn`` in a thread-bound child of ``parent`` (call inside ``ctx.run``)."""
    # The copied Context holds the caller's context; switch the variable to the
    # sentinel without a checkpoint (this thread is not charging it), so the
    # child's exit brings the ledger back to the sentinel, not to the parent.
    _var_set(SENTINEL_CONTEXT)
    if not parent:
        _misuse.report(
            "sentinel-usage",
            f"{_qualname(fn)} sent to a thread from the sentinel context: its CPU is unattributed",
            site=f"run_in_thread:{_qualname(fn)}",
        )
        return fn(*args, **kwargs)
    assert isinstance(parent, LoggingContext)
    try:
        with LoggingContext(parent.name, parent_context=parent):
            return fn(*args, **kwargs)
    finally:
        # The caller reads its figures once the result is back: charge the child's
        # pending share now (the sampled mode leaves a young window open at exit).
        _ledger.settle_pending()


def _submit_args(fn: Callable[..., R], args: Any, kwargs: Any) -> tuple[Callable[..., R], tuple[Any, ...]]:
    ctx = contextvars.copy_context()
    return ctx.run, (_run_in_child_context, ctx.run(_var_get), fn, args, kwargs)


def run_in_executor(
    executor: concurrent.futures.Executor | None, fn: Callable[..., R], /, *args: Any, **kwargs: Any
) -> asyncio.Future[R]:
    """Run ``fn`` on ``executor`` (``None``: the loop's default) with the caller's context.

    The worker runs in a copy of the caller's ``Context`` inside a thread-bound
    child ``LoggingContext(str(parent), parent_context=parent)``, so its CPU
    rolls up into the caller. From the sentinel: no child, one
    ``sentinel-usage`` per function.
    """
    import asyncio

    if not callable(fn):
        raise TypeError(f"run_in_executor: fn must be callable, got {fn!r}")
    loop = asyncio.get_running_loop()
    runner, rargs = _submit_args(fn, args, kwargs)
    return loop.run_in_executor(executor, functools.partial(runner, *rargs))


def run_in_thread(fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> asyncio.Future[R]:
    """Run ``fn(*args, **kwargs)`` on the loop's default executor with the caller's context."""
    return run_in_executor(None, fn, *args, **kwargs)


def defer_to_thread(
    fn: Callable[..., R],
    /,
    *args: Any,
    executor: concurrent.futures.Executor | None = None,
    **kwargs: Any,
) -> asyncio.Future[R]:
    """:func:`run_in_thread` with an optional ``executor`` (Synapse's name)."""
    return run_in_executor(executor, fn, *args, **kwargs)


# -- callbacks -----------------------------------------------------------------


def _metered_call(lc: LoggingContextOrSentinel, fn: Callable[..., R], args: Any, kwargs: Any) -> R:
    if not _clock._metering:
        return fn(*args, **kwargs)
    led = _ledger.get_ledger()
    saved = led.charged
    led.depth += 1
    if lc is not saved:
        _ledger.switch(led, lc)
    try:
        return fn(*args, **kwargs)
    finally:
        led.depth -= 1
        if led.charged is not saved:
            _ledger.switch(led, saved)
        if not led.depth and led.pend:
            # Charge now: a bound thread target's thread may end before any later checkpoint.
            _ledger.settle(saved)


def bind(fn: Callable[P, R], /, *, metered: bool = True) -> Callable[P, R]:
    """Bind ``fn`` to the caller's ``contextvars.Context`` (captured now).

    Each call runs ``fn`` in a fresh copy of it, so the bound callable is
    re-entrant and usable from several threads at once. With ``metered``, each
    call charges the calling thread's CPU to the captured logging context (a
    checkpoint pair). Use it for ``threading.Thread(target=...)`` and loop or
    protocol callbacks.
    """
    if not callable(fn):
        raise TypeError(f"bind: fn must be callable, got {fn!r}")
    captured = contextvars.copy_context()
    lc = captured.run(_var_get)

    if metered:

        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            return captured.copy().run(_metered_call, lc, fn, args, kwargs)

    else:

        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            return captured.copy().run(fn, *args, **kwargs)

    functools.update_wrapper(bound, fn)
    return bound
