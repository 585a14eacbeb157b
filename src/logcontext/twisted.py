"""Twisted integration (spec §4; extra ``[twisted]``).

Twisted's coroutine runners (``ensureDeferred``, ``Deferred.fromCoroutine``,
``inlineCallbacks``) run every step of a coroutine in the ``contextvars.Context``
copied when it started, so the logging context follows ``await`` and ``yield``.
Everything else (plain Deferred callbacks, ``callLater``, ``callFromThread``,
protocol callbacks) runs in whatever ``Context`` the code that fires it has:

* :func:`ensure_deferred`, :func:`inline_callbacks` and the opt-in
  :func:`patch_coroutine_runner` meter each coroutine step, charging its CPU to the
  context current in that coroutine;
* :func:`bind_callback`, :func:`add_callbacks_bound`, :func:`call_later` and
  :func:`looping_call` give callbacks a context;
* :func:`run_in_background`, :func:`make_deferred_yieldable`,
  :func:`run_as_background_process` keep the names ported code knows;
* :func:`defer_to_thread`, :func:`defer_to_threadpool`, :func:`run_interaction`
  carry the context into worker threads, whose CPU rolls up into the caller;
* :func:`install` (optional leak checker), :func:`route_twisted_logs`, and
  :class:`LogContextResource` for Twisted Web.

Only this module imports Twisted; ``import logcontext`` never does.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable
from types import GeneratorType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from twisted.internet import defer, task, threads
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource as _web_resource
from twisted.web import server as _web_server
from twisted.web.error import UnsupportedMethod

from . import _bgmetrics, _ledger, _misuse
from ._config import config
from ._context import (
    SENTINEL_CONTEXT,
    LoggingContext,
    PreserveLoggingContext,
    _var_get,
    _var_set,
)
from ._helpers import (
    _next_name,
    _qualname,
    _restore_if_changed,
    _run_in_child_context,
    _start_bg_span,
    bg_logger,
    bind,
)
from ._redact import DEFAULT_REDACT
from .aio import MeteredCoroutine

if TYPE_CHECKING:
    import concurrent.futures

    from twisted.logger import LogEvent

__all__ = [
    "LogContextResource",
    "PreserveLoggingContext",
    "add_callbacks_bound",
    "bind_callback",
    "call_later",
    "defer_to_thread",
    "defer_to_threadpool",
    "ensure_deferred",
    "inline_callbacks",
    "install",
    "is_coroutine_runner_patched",
    "looping_call",
    "make_deferred_yieldable",
    "patch_coroutine_runner",
    "route_twisted_logs",
    "run_as_background_process",
    "run_in_background",
    "run_interaction",
    "uninstall",
    "unpatch_coroutine_runner",
    "unroute_twisted_logs",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("logcontext.twisted")

_SENTINEL: Any = SENTINEL_CONTEXT
_local = _ledger._local
_get_ledger = _ledger.get_ledger

#: Twisted's own runner entry point, saved before any patching.
_orig_from_coroutine: Any = Deferred.__dict__["fromCoroutine"]
_orig_ensure_deferred: Any = defer.ensureDeferred
_DefGenReturn: type[BaseException] | None = getattr(defer, "_DefGen_Return", None)
# Untyped in Twisted's stubs; called through ``Any`` to keep ``mypy --strict`` quiet.
_new_failure: Any = Failure
_get_child_for_request: Any = _web_resource.getChildForRequest


def _exc_info(f: Failure) -> Any:
    tb: Any = cast(Any, f).getTracebackObject()
    return (f.type, f.value, tb)


# -- metered coroutine running ---------------------------------------------------------------


class _TwistedMeteredCoroutine(MeteredCoroutine[R]):
    """A :class:`~logcontext.aio.MeteredCoroutine` for Twisted's runner.

    asyncio's loop drives every step from the loop itself, so a step at depth 0 ends
    in the sentinel. Twisted resumes a coroutine from whatever code fires the Deferred
    it awaits, often inside another context's block; when the thread is charging a
    context at the start of a step, the step counts as nested, so its end gives the
    ledger back to that context instead of the sentinel. (Not in the ``lazy`` step
    mode, where the context still charged is just the previous step's, nor to a
    finished context.)
    """

    __slots__ = ()

    def send(self, value: Any) -> Any:
        try:
            led = _local.ledger
        except AttributeError:
            led = _get_ledger()
        ch = led.charged
        if ch is _SENTINEL or ch.finished or not led.end_cp:
            return MeteredCoroutine.send(self, value)
        led.depth += 1
        try:
            return MeteredCoroutine.send(self, value)
        finally:
            led.depth -= 1

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        try:
            led = _local.ledger
        except AttributeError:
            led = _get_ledger()
        ch = led.charged
        if ch is _SENTINEL or ch.finished or not led.end_cp:
            return MeteredCoroutine.throw(self, typ, val, tb)
        led.depth += 1
        try:
            return MeteredCoroutine.throw(self, typ, val, tb)
        finally:
            led.depth -= 1

    def __repr__(self) -> str:
        return f"<MeteredCoroutine (twisted) {self._coro!r}>"


def _is_coroutine_like(obj: object) -> bool:
    return asyncio.iscoroutine(obj) or inspect.isgenerator(obj)


def _meter(coro: Any) -> Any:
    """Wrap ``coro`` for metered steps (unless metering is off or it is wrapped already)."""
    if config.clock_mode == "off" or type(coro) is _TwistedMeteredCoroutine:
        return coro
    return _TwistedMeteredCoroutine(coro)


def _start(coro: Any) -> Deferred[Any]:
    """Hand a (metered) coroutine to Twisted's runner."""
    return cast("Deferred[Any]", _orig_from_coroutine.__func__(Deferred, coro))


def ensure_deferred(
    coro: Coroutine[Any, Any, R] | Generator[Any, Any, R] | Deferred[R],
) -> Deferred[R]:
    """Run a coroutine with Twisted's runner, metering each step; return its Deferred.

    Each ``send``/``throw`` charges the CPU it uses to the logging context current in
    the coroutine (its own copy of the caller's ``contextvars.Context``). A Deferred is
    returned unchanged, like ``defer.ensureDeferred``.

    >>> async def work() -> int:
    ...     return 1
    >>> ensure_deferred(work()).result
    1
    """
    if isinstance(coro, Deferred):
        return coro
    if not _is_coroutine_like(coro):
        raise TypeError(
            f"ensure_deferred needs a coroutine, a generator or a Deferred, got {type(coro).__name__}"
        )
    return _start(_meter(coro))


def _drive_generator(gen: Generator[Any, Any, R]) -> Generator[Any, Any, R]:
    """Drive an ``inlineCallbacks`` generator one step at a time.

    ``returnValue()`` becomes a plain return, and a coroutine or generator the
    generator yields is started with :func:`ensure_deferred` *inside* the step, so it
    runs in the generator's context (Twisted's runner would start it in the Context of
    whoever resumed the generator).
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = gen.send(value)
            else:
                err, error = error, None
                yielded = gen.throw(err)
        except StopIteration as stop:
            return cast(R, stop.value)
        except BaseException as exc:
            if _DefGenReturn is not None and isinstance(exc, _DefGenReturn):
                return cast(R, exc.value)  # type: ignore[attr-defined]
            raise
        if not isinstance(yielded, Deferred) and _is_coroutine_like(yielded):
            yielded = ensure_deferred(yielded)
        try:
            value = yield yielded
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            error = exc
            value = None


def inline_callbacks(f: Callable[P, Generator[Any, Any, R]]) -> Callable[P, Deferred[R]]:
    """A metered ``defer.inlineCallbacks``: each generator step is charged to its context.

    The generator runs in a copy of the caller's ``Context`` (as with Twisted's
    decorator). ``returnValue()`` still works; coroutines it yields start in its context.
    """
    if not callable(f):
        raise TypeError(f"inline_callbacks needs a generator function, got {f!r}")

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        try:
            gen = f(*args, **kwargs)
        except BaseException as exc:
            if _DefGenReturn is not None and isinstance(exc, _DefGenReturn):
                raise TypeError(
                    f"inline_callbacks requires {f!r} to produce a generator; "
                    "it called returnValue() without being one"
                ) from None
            raise
        if not isinstance(gen, GeneratorType):
            raise TypeError(
                f"inline_callbacks requires {f!r} to produce a generator, got {type(gen).__name__}"
            )
        return _start(_meter(_drive_generator(gen)))

    return wrapper


def _patched_from_coroutine(cls: type[Deferred[Any]], coro: Any) -> Deferred[Any]:
    if _is_coroutine_like(coro):
        coro = _meter(coro)
    return cast("Deferred[Any]", _orig_from_coroutine.__func__(cls, coro))


def _patched_ensure_deferred(coro: Any) -> Deferred[Any]:
    if isinstance(coro, Deferred):
        return coro
    return cast("Deferred[Any]", _orig_ensure_deferred(_meter(coro) if _is_coroutine_like(coro) else coro))


_patched = False


def patch_coroutine_runner() -> None:
    """Meter coroutines started by ``defer.ensureDeferred`` and ``Deferred.fromCoroutine``.

    Opt-in, for code that cannot be edited to call :func:`ensure_deferred`. Modules that
    did ``from twisted.internet.defer import ensureDeferred`` before the patch keep
    Twisted's function (but it calls ``Deferred.fromCoroutine``, which is patched).
    Idempotent; :func:`unpatch_coroutine_runner` restores Twisted's functions.
    """
    global _patched
    if _patched:
        return
    Deferred.fromCoroutine = classmethod(_patched_from_coroutine)  # type: ignore[method-assign,assignment]
    defer.ensureDeferred = _patched_ensure_deferred
    _patched = True


def unpatch_coroutine_runner() -> None:
    """Undo :func:`patch_coroutine_runner` (no-op if not patched)."""
    global _patched
    if not _patched:
        return
    Deferred.fromCoroutine = _orig_from_coroutine  # type: ignore[method-assign]
    defer.ensureDeferred = _orig_ensure_deferred
    _patched = False


def is_coroutine_runner_patched() -> bool:
    """Whether :func:`patch_coroutine_runner` is in force."""
    return _patched


# -- callbacks that carry no context ----------------------------------------------------------


def bind_callback(fn: Callable[P, R], /, *, metered: bool = True) -> Callable[P, R]:
    """:func:`logcontext.bind` under its Twisted name: capture the caller's context now.

    Each call runs ``fn`` in a fresh copy of the captured ``Context`` and, with
    ``metered``, charges its CPU to the captured logging context.
    """
    return bind(fn, metered=metered)


def _passthrough(value: Any) -> Any:
    return value


def add_callbacks_bound(
    d: Deferred[Any],
    callback: Callable[..., Any],
    errback: Callable[..., Any] | None = None,
) -> Deferred[Any]:
    """``d.addCallbacks`` with both callables bound to the context current now.

    Plain Deferred callbacks run in the ``Context`` of whoever fires ``d``; these run
    in (a copy of) the one current when they were added. Returns ``d``.
    """
    if not isinstance(d, Deferred):
        raise TypeError(f"add_callbacks_bound needs a Deferred, got {type(d).__name__}")
    if not callable(callback):
        raise TypeError(f"add_callbacks_bound: callback must be callable, got {callback!r}")
    if errback is not None and not callable(errback):
        raise TypeError(f"add_callbacks_bound: errback must be callable or None, got {errback!r}")
    return d.addCallbacks(bind(callback), bind(errback) if errback is not None else _passthrough)


def _check_delay(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or value != value:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return float(value)


def call_later(
    reactor: Any, delay: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> IDelayedCall:
    """``reactor.callLater`` that runs ``fn`` in the context current now, metered.

    The default reactor's ``callLater`` captures no ``Context``, and the asyncio
    reactor's runs timers in the ``Context`` of whichever call last rescheduled its
    timer; this one behaves the same on both.
    """
    d = _check_delay("call_later: delay", delay)
    if not callable(fn):
        raise TypeError(f"call_later: fn must be callable, got {fn!r}")
    # Schedule from an empty Context: on an asyncio reactor not given to install(), the
    # call may re-arm the shared timer, which would copy the caller's Context into it.
    dc: IDelayedCall = contextvars.Context().run(reactor.callLater, d, bind(fn), *args, **kwargs)
    return dc


def _context_without_logcontext() -> contextvars.Context:
    """A copy of the caller's ``Context`` with the logging context reset to the sentinel."""
    cv = contextvars.copy_context()
    cv.run(_var_set, _SENTINEL)  # no checkpoint: the caller keeps running
    return cv


async def _looping_iteration(name: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    with LoggingContext(name):
        res = fn(*args, **kwargs)
        if inspect.isawaitable(res):
            res = await res
        return res


def looping_call(
    reactor: Any,
    interval: float,
    fn: Callable[..., Any],
    /,
    *args: Any,
    name: str = "looping_call",
    now: bool = False,
    **kwargs: Any,
) -> task.LoopingCall:
    """Call ``fn`` every ``interval`` seconds, each time in a fresh parentless context ``name``.

    Returns the started ``task.LoopingCall`` (``stop()`` it when done). ``fn`` may be
    synchronous or return a coroutine or Deferred; the next call waits for it, and the
    context stays current until it completes. Other context variables are those of the
    caller. A failure stops the loop (Twisted's behaviour) and is logged on
    ``logcontext.twisted``.
    """
    iv = _check_delay("looping_call: interval", interval)
    if not callable(fn):
        raise TypeError(f"looping_call: fn must be callable, got {fn!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"looping_call: name must be a non-empty str, got {name!r}")
    base = _context_without_logcontext()

    def iteration() -> Deferred[Any]:
        return base.copy().run(ensure_deferred, _looping_iteration(name, fn, args, kwargs))

    lc = task.LoopingCall(iteration)
    lc.clock = reactor

    def failed(f: Failure) -> None:
        logger.error(
            "looping_call %r (%s) stopped after a failure",
            name,
            _qualname(fn),
            exc_info=_exc_info(f),
        )

    contextvars.Context().run(lc.start, iv, now).addErrback(failed)
    return lc


# -- ported helpers ------------------------------------------------------------------------------


async def _await_it(aw: Any) -> Any:
    return await aw


def run_in_background(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Start ``fn(*args, **kwargs)`` fire-and-forget in the caller's context; a Deferred.

    ``fn`` is called synchronously. A coroutine goes to :func:`ensure_deferred` (its
    own copy of the caller's ``Context``), a Deferred is returned as is, another
    awaitable is awaited by a small coroutine, a value gives ``succeed(value)`` and a
    synchronous exception a failed Deferred. Nothing resets the caller to the sentinel
    afterwards. If ``fn`` changed the current context without restoring it, that is
    reported (``fn-changed-context``) and undone.
    """
    if not callable(fn):
        raise TypeError(f"run_in_background: fn must be callable, got {fn!r}")
    before = _var_get()
    try:
        res = fn(*args, **kwargs)
    except Exception:
        failure = _new_failure()
        _restore_if_changed(before, fn)
        return defer.fail(failure)
    _restore_if_changed(before, fn)
    if isinstance(res, Deferred):
        return res
    if _is_coroutine_like(res):
        return ensure_deferred(res)
    if inspect.isawaitable(res):
        return ensure_deferred(_await_it(res))
    return defer.succeed(res)


def make_deferred_yieldable(d: Deferred[R] | Coroutine[Any, Any, R]) -> Deferred[R]:
    """Return ``d`` unchanged (coroutines go through :func:`ensure_deferred`).

    Synapse needed this to hand the caller's context back when a Deferred completed;
    Twisted's runner restores the awaiting coroutine's own ``Context``, so any
    Deferred is safe to await here.
    """
    if isinstance(d, Deferred):
        return d
    if asyncio.iscoroutine(d):
        return ensure_deferred(d)
    raise TypeError(f"make_deferred_yieldable needs a Deferred or a coroutine, got {type(d).__name__}")


async def _run_bg(
    desc: str, ctx: LoggingContext, start_span: bool, fn: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    with ctx:
        span_cm = _start_bg_span(desc, ctx) if start_span else None
        if span_cm is not None:
            span_cm.__enter__()
        _bgmetrics.bg_started(desc, ctx)
        try:
            res = fn(*args, **kwargs)
            if inspect.isawaitable(res):
                res = await res
            return res
        except (CancelledError, asyncio.CancelledError):
            return None
        except Exception:
            bg_logger.error("Background process %r threw an exception", desc, exc_info=True)
            return None
        finally:
            try:
                if span_cm is not None:
                    span_cm.__exit__(*sys.exc_info())
            finally:
                _bgmetrics.bg_finished(desc, ctx)


def run_as_background_process(
    desc: str,
    fn: Callable[..., Any],
    /,
    *args: Any,
    bg_server_name: str | None = None,
    bg_start_span: bool = True,
    **kwargs: Any,
) -> Deferred[Any]:
    """Run ``fn`` in a new parentless context ``f"{desc}-{n}"``; a Deferred of its result.

    As :func:`logcontext.run_as_background_process`, but with Twisted's runner: the
    process runs in a copy of the caller's ``Context`` whose logging context is the new
    one (its usage is not the spawner's). Exceptions other than cancellation are
    logged at ERROR on ``logcontext.background``; the result is then ``None``.
    """
    if not isinstance(desc, str) or not desc:
        raise (TypeError if not isinstance(desc, str) else ValueError)(
            f"run_as_background_process: desc must be a non-empty str, got {desc!r}"
        )
    if not callable(fn):
        raise TypeError(f"run_as_background_process: fn must be callable, got {fn!r}")
    ctx = LoggingContext(_next_name(desc), server_name=bg_server_name)
    run_ctx = _context_without_logcontext()
    return run_ctx.run(ensure_deferred, _run_bg(desc, ctx, bg_start_span, fn, args, kwargs))


# -- threads -------------------------------------------------------------------------------------


def defer_to_threadpool(
    reactor: Any,
    pool: ThreadPool,
    fn: Callable[..., R],
    /,
    *args: Any,
    **kwargs: Any,
) -> Deferred[R]:
    """Run ``fn`` on ``pool`` in the caller's context; a Deferred fired on the reactor.

    The worker runs in a copy of the caller's ``Context``, inside a thread-bound child
    ``LoggingContext(str(parent), parent_context=parent)``, so the thread's CPU rolls
    up into the caller. From the sentinel: no child, one ``sentinel-usage`` per
    function.
    """
    if not callable(fn):
        raise TypeError(f"defer_to_threadpool: fn must be callable, got {fn!r}")
    cv = contextvars.copy_context()
    parent = cv.run(_var_get)
    return threads.deferToThreadPool(reactor, pool, cv.run, _run_in_child_context, parent, fn, args, kwargs)


def defer_to_thread(reactor: Any, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Deferred[R]:
    """:func:`defer_to_threadpool` on the reactor's own thread pool."""
    if not IReactorThreads.providedBy(reactor):
        raise TypeError(f"defer_to_thread needs a reactor with a thread pool, got {reactor!r}")
    return defer_to_threadpool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)


class _InteractionState:
    __slots__ = ("cancelled", "d")

    def __init__(self) -> None:
        self.cancelled = False
        self.d: Deferred[Any] | None = None


def run_interaction(pool: Any, desc: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Deferred[R]:
    """``pool.submit_interaction(desc, fn, ...)`` (a :class:`logcontext.db.DatabasePool`) as a Deferred.

    The Deferred fires on the reactor given to :func:`install` (else the global one).
    Cancelling it waits for the transaction to finish and be recorded before it
    fails with ``CancelledError``, so nothing is charged to a finished context.
    """
    submit = getattr(pool, "submit_interaction", None)
    if submit is None:
        raise TypeError(f"run_interaction needs a logcontext.db.DatabasePool, got {type(pool).__name__}")
    reactor = _default_reactor()
    st = _InteractionState()

    def cancel(d: Deferred[Any]) -> None:
        # Pause so the CancelledError is delivered only once the transaction is done.
        st.cancelled = True
        d.pause()
        d.errback(_new_failure(CancelledError()))

    d: Deferred[R] = Deferred(cancel)
    st.d = d
    fut: concurrent.futures.Future[R] = submit(desc, fn, *args, **kwargs)

    def deliver(f: concurrent.futures.Future[R]) -> None:
        if st.cancelled:
            d.unpause()
            return
        exc = f.exception()
        if exc is not None:
            d.errback(_new_failure(exc, type(exc), exc.__traceback__))
        else:
            d.callback(f.result())

    def done(f: concurrent.futures.Future[R]) -> None:
        reactor.callFromThread(deliver, f)

    fut.add_done_callback(done)
    return d


# -- reactor installation, leak checking, logs --------------------------------------------------


class _Installed:
    __slots__ = ("checker", "reactor", "unpin")

    def __init__(
        self, reactor: Any, checker: task.LoopingCall | None, unpin: Callable[[], None] | None
    ) -> None:
        self.reactor = reactor
        self.checker = checker
        self.unpin = unpin


def _pin_asyncio_timer(reactor: Any) -> Callable[[], None] | None:
    """Make an asyncio reactor's timer handle capture an empty ``Context``.

    Twisted's asyncio reactor (22.8 and 26.10 checked) keeps its ``DelayedCall`` heap behind a single
    ``loop.call_at`` timer, re-armed by whichever ``callLater`` (or timer run) moves it;
    asyncio copies the current ``Context`` into that handle, so every due call then
    runs in the context of an unrelated scheduler, and the next re-arm copies it on.
    Re-arming in an empty ``Context`` makes raw ``callLater`` callbacks run in the
    sentinel, as on the default reactor. Returns an undo function, or ``None`` when
    the reactor has no such timer.
    """
    resched = getattr(type(reactor), "_reschedule", None)
    if resched is None or not hasattr(reactor, "_asyncioEventloop"):
        return None

    def _reschedule() -> None:
        contextvars.Context().run(resched, reactor)

    reactor._reschedule = _reschedule

    def unpin() -> None:
        if reactor.__dict__.get("_reschedule") is _reschedule:
            del reactor._reschedule

    return unpin


_installed: _Installed | None = None


def _default_reactor() -> Any:
    if _installed is not None:
        return _installed.reactor
    from twisted.internet import reactor

    return reactor


def _check_for_leak() -> None:
    ctx = _var_get()
    if not ctx:
        return
    # Repair first (a leaked context would absorb every later callback's CPU).
    _var_set(_SENTINEL)
    _ledger.checkpoint(_SENTINEL)
    _misuse.report(
        "leak",
        f"context {ctx} was current in the reactor's base Context: a bare set_current_context() "
        "(or an unbalanced enter) outside a coroutine leaked into later reactor callbacks; "
        "reset to the sentinel",
        context=ctx,
        site="logcontext.twisted.install",
        can_raise=False,
    )


def install(reactor: Any, check_leaks: bool = False, *, check_interval: float = 1.0) -> None:
    """Tell the integration which reactor to use, and optionally check for leaks.

    :func:`run_interaction` fires its Deferreds on this reactor. On an asyncio reactor
    whose ``callLater`` shares one asyncio timer (Twisted 22.8 and later), it is re-armed
    in an empty ``Context``, so raw ``callLater`` callbacks stop inheriting the context
    of whichever coroutine last scheduled one. With ``check_leaks``, a check every
    ``check_interval`` seconds that the reactor's timed callbacks run in the sentinel
    reports ``leak`` (and resets the context) when something set a context without
    restoring it. Calling it again replaces the previous installation.
    """
    global _installed
    if not IReactorTime.providedBy(reactor):
        raise TypeError(f"install needs a reactor, got {reactor!r}")
    iv = _check_delay("install: check_interval", check_interval)
    if iv <= 0:
        raise ValueError("install: check_interval must be > 0 seconds")
    uninstall()
    unpin = _pin_asyncio_timer(reactor)
    checker = None
    if check_leaks:
        checker = task.LoopingCall(_check_for_leak)
        checker.clock = reactor
        _context_without_logcontext().run(checker.start, iv, False)
    _installed = _Installed(reactor, checker, unpin)


def uninstall() -> None:
    """Stop the leak checker and forget the reactor given to :func:`install`."""
    global _installed
    inst, _installed = _installed, None
    if inst is None:
        return
    if inst.checker is not None and inst.checker.running:
        inst.checker.stop()
    if inst.unpin is not None:
        inst.unpin()


_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _StdlibObserver:
    """A Twisted log observer forwarding each event to stdlib ``logging``.

    The logger is the event's namespace; failures become ``exc_info``. A thread-local
    guard stops a loop when a stdlib handler writes back into Twisted's log: the
    nested event goes to ``sys.__stderr__`` instead.
    """

    def __init__(self) -> None:
        self._busy = threading.local()

    def __call__(self, event: LogEvent) -> None:
        from twisted.logger import eventAsText

        text = eventAsText(event, includeTraceback=False, includeTimestamp=False, includeSystem=False)
        if getattr(self._busy, "on", False):
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"[twisted, nested] {text}\n")
            return
        self._busy.on = True
        try:
            level_obj = event.get("log_level")
            level = _LEVELS.get(getattr(level_obj, "name", ""), logging.INFO)
            if event.get("isError") and level < logging.ERROR:
                level = logging.ERROR
            name = event.get("log_namespace") or "twisted"
            lg = logging.getLogger(str(name))
            if not lg.isEnabledFor(level):
                return
            exc_info: Any = None
            failure = event.get("log_failure")
            if isinstance(failure, Failure):
                exc_info = _exc_info(failure)
            lg.log(level, "%s", text, exc_info=exc_info)
        finally:
            self._busy.on = False


_observer: _StdlibObserver | None = None


def route_twisted_logs(*, begin_logging: bool = True) -> Callable[[LogEvent], None]:
    """Forward Twisted's log events to stdlib ``logging``; return the observer.

    With ``begin_logging`` it calls ``globalLogBeginner.beginLoggingTo`` (without
    redirecting stdout/stderr), which replays events buffered since start-up;
    otherwise it only adds the observer to ``globalLogPublisher``. Idempotent.
    """
    global _observer
    from twisted.logger import globalLogBeginner, globalLogPublisher

    if _observer is not None:
        return _observer
    obs = _observer = _StdlibObserver()
    if begin_logging:
        globalLogBeginner.beginLoggingTo([cast(Any, obs)], redirectStandardIO=False)
    else:
        globalLogPublisher.addObserver(cast(Any, obs))
    return obs


def unroute_twisted_logs() -> None:
    """Remove the observer added by :func:`route_twisted_logs` (no-op if none)."""
    global _observer
    from twisted.logger import globalLogPublisher

    obs, _observer = _observer, None
    if obs is not None:
        globalLogPublisher.removeObserver(cast(Any, obs))


# -- Twisted Web ---------------------------------------------------------------------------------


class LogContextResource(_web_resource.Resource):
    """Wrap a Twisted Web resource tree: one parentless context per request, and the access line.

    Each request runs in its own ``contextvars.Context`` with a new
    ``LoggingContext(f"{METHOD}-{n}")`` carrying a :class:`~logcontext.ContextRequest`;
    resource traversal, rendering and the error page all happen inside it, so the id
    shows in every log line, including Twisted's "Error rendering". Coroutines the
    resource starts inherit it. When the response is finished (or the client gone), the
    access line is logged on ``logcontext.access.<scheme>.<site_tag>`` and the context
    exits. Options as for :class:`logcontext.web.LogContextMiddleware`.
    """

    isLeaf = True

    def __init__(
        self,
        resource: _web_resource.IResource,
        *,
        server_name: str | None = None,
        site_tag: str = "twisted",
        request_id_header: str = "X-Request-ID",
        trust_request_id: bool = False,
        echo_request_id: bool = False,
        trusted_proxies: Iterable[str] = (),
        redact_params: Iterable[str] = DEFAULT_REDACT,
        quiet_paths: Iterable[str] | None = None,
        access_line_format: str = "labelled",
    ) -> None:
        from ._web_common import DEFAULT_QUIET_PATHS, WebOptions

        if not _web_resource.IResource.providedBy(resource):
            raise TypeError(f"LogContextResource needs a twisted.web resource, got {resource!r}")
        cast(Any, super()).__init__()
        self.wrapped = resource
        self._opts = WebOptions.build(
            server_name=server_name,
            site_tag=site_tag,
            request_id_header=request_id_header,
            trust_request_id=trust_request_id,
            echo_request_id=echo_request_id,
            trusted_proxies=trusted_proxies,
            redact_params=redact_params,
            quiet_paths=DEFAULT_QUIET_PATHS if quiet_paths is None else quiet_paths,
            access_line_format=access_line_format,
        )

    def render(self, request: Any) -> Any:
        return _RequestRun(self, request).render()

    def putChild(self, path: bytes, child: Any) -> None:
        """Add ``child`` to the wrapped resource (this wrapper has no children of its own)."""
        wrapped: Any = self.wrapped
        wrapped.putChild(path, child)


def _header(request: Any, name: str) -> str | None:
    v = request.getHeader(name.encode("latin-1"))
    return None if v is None else bytes(v).decode("latin-1")


def _peer_host(request: Any) -> str | None:
    try:
        addr = request.getClientAddress()
    except Exception:
        return None
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) and host else None


def _within(cur: Any, ctx: LoggingContext) -> bool:
    """Whether ``cur`` is ``ctx`` or one of its descendants."""
    while cur:
        if cur is ctx:
            return True
        cur = cur.parent_context
    return False


class _RequestRun:
    """One request's lifecycle inside a :class:`LogContextResource`."""

    __slots__ = ("cv", "finish_pending", "rendering", "request", "res", "scope", "st")

    def __init__(self, res: LogContextResource, request: Any) -> None:
        from ._web_common import RequestState

        self.res = res
        self.request = request
        method = bytes(request.method).decode("ascii", "replace")
        self.st = RequestState(
            res._opts,
            method=method,
            path=bytes(request.path).decode("latin-1"),
            raw_uri=bytes(request.uri).decode("latin-1"),
            protocol=bytes(request.clientproto).decode("latin-1"),
            peer=_peer_host(request),
            headers_get=lambda name: _header(request, name),
            scheme="https" if request.isSecure() else "http",
        )
        self.cv = _context_without_logcontext()
        self.scope: Any = None
        self.rendering = False
        self.finish_pending = False

    def render(self) -> Any:
        self.request.notifyFinish().addBoth(self._on_finished)
        self.rendering = True
        try:
            body = self.cv.run(self._render_inside)
        finally:
            self.rendering = False
            _ledger.checkpoint(_var_get())  # give the ledger back to the reactor's context
        if body is not _web_server.NOT_DONE_YET:
            self.st.handler_done()
        if self.finish_pending:
            self._complete()
        return body

    def _render_inside(self) -> Any:
        from . import _web_common

        st = self.st
        request = self.request
        st.ctx.__enter__()
        _web_common._CURRENT.set(st)
        st.begin()
        if _web_common.tracing_loaded():
            headers = {
                bytes(k).decode("latin-1").lower(): bytes(v[-1]).decode("latin-1")
                for k, v in request.requestHeaders.getAllRawHeaders()
                if v
            }
            self.scope = _web_common.start_server_span(st, headers)
        st.traced = self.scope is not None
        request.setHeader(st.opts.request_id_header, st.request_id_value)
        if st.traced:
            for k, v in _web_common.response_trace_headers().items():
                request.setHeader(k, v)
        try:
            child = _get_child_for_request(self.res.wrapped, request)
            return child.render(request)
        except UnsupportedMethod:
            raise
        except Exception:
            request.processingFailed(_new_failure())
            return _web_server.NOT_DONE_YET

    def _on_finished(self, result: Any) -> None:
        st = self.st
        if isinstance(result, Failure):
            st.client_gone()
        else:
            st.sent_all()
        if self.rendering:
            self.finish_pending = True
            return
        if _within(_var_get(), st.ctx):
            # Finished from code running in the request's context (typically the
            # handler's coroutine, which goes on until its step ends): write the access
            # line and exit on the next reactor turn, so that step is not late usage.
            site = getattr(self.request, "site", None)
            reactor = getattr(site, "reactor", None) or _default_reactor()
            _context_without_logcontext().run(reactor.callLater, 0, self._complete)
            return
        self._complete()

    def _complete(self) -> None:
        st = self.st
        req = self.request
        st.status = int(req.code) if req.code is not None else None
        st.bytes_sent = int(getattr(req, "sentLength", 0) or 0)
        try:
            self.cv.run(self._complete_inside)
        finally:
            _ledger.checkpoint(_var_get())

    def _complete_inside(self) -> None:
        st = self.st
        try:
            st.finish()
        finally:
            try:
                if self.scope is not None:
                    self.scope.__exit__(None, None, None)
            finally:
                st.ctx.__exit__(None, None, None)
