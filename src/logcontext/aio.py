"""asyncio integration: metered task steps, ``run``, executors and background processes.

asyncio resumes tasks without telling anyone, so the library charges CPU at checkpoints.
:func:`install` sets a task factory that wraps each task's coroutine in a
:class:`MeteredCoroutine`; each ``send``/``throw`` of the wrapper is a task step whose
start checkpoints the ledger to the task's current logging context and whose end (in the
``exact`` and ``sampled`` step modes) checkpoints back to the sentinel, so loop overhead
stays unattributed (spec §2.3, §2.4).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable, Coroutine, Generator
from types import FrameType
from typing import Any, TypeVar

from logcontext import _ledger, _misuse
from logcontext import clock as _clock
from logcontext._context import SENTINEL_CONTEXT, current_context
from logcontext._helpers import (
    _bg_tasks,
    _run_in_child_context,
)

__all__ = [
    "ContextThreadPoolExecutor",
    "MeteredCoroutine",
    "install",
    "is_installed",
    "loop_factory",
    "run",
    "shutdown_background_processes",
    "uninstall",
    "wrap_task_factory",
]

T = TypeVar("T")
TaskFactory = Callable[..., "asyncio.Future[Any]"]

_MARKER = "_logcontext_metering"
_local = _ledger._local
_get_ledger = _ledger.get_ledger
_switch = _ledger.switch
_close_window = _ledger.close_window
_went_late = _ledger.went_late
_SENTINEL: Any = SENTINEL_CONTEXT


class MeteredCoroutine(Coroutine[Any, Any, T]):
    """A transparent coroutine proxy whose every ``send``/``throw`` is a metered task step.

    It subclasses :class:`collections.abc.Coroutine`, so ``asyncio.iscoroutine`` is true for
    it while ``inspect.iscoroutine`` is false (it is not a native coroutine object).
    ``cr_*`` attributes, ``__name__``, ``__qualname__`` delegate to the wrapped coroutine,
    available as ``__wrapped__``; ``close()`` delegates without checkpoints, since it may run
    in a foreign ``Context`` during garbage collection. There is deliberately no
    ``__next__``: the C Task would call it instead of ``send(None)``.
    """

    # ``__qualname__`` is an instance slot: a class body cannot define it as a property
    # (``type()`` takes it as the class's own), and a ``__getattr__`` fallback would slow down
    # every attribute access of the hot path (no specialisation for custom getattro).
    __slots__ = ("__qualname__", "__weakref__", "_coro")

    _coro: Coroutine[Any, Any, T]

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        if isinstance(coro, MeteredCoroutine):
            coro = coro._coro
        self._coro = coro
        self.__qualname__ = getattr(coro, "__qualname__", None) or type(coro).__qualname__

    def send(self, value: Any) -> Any:
        # The hot path (§2.3): a top-level step, with the ledger's fast switch paths inlined
        # (``_ledger.switch`` is the reference; keep them in step), one path per kind of switch
        # (``sampled``, a scalar clock, generic) so that a step tests its mode once. Nested steps
        # (depth > 0, e.g. eager tasks) and the first step after a settings change go through
        # ``_step``.
        try:
            led = _local.ledger
        except AttributeError:
            led = _get_ledger()
        if led.depth:
            return self._step(led, led.charged, current_context(), value)
        gen = _clock._generation
        saved = led.charged
        ctx = current_context()
        if led.sgen == gen:
            # ``sampled``: wall-clock shares of the window; every step ends in the sentinel.
            if ctx is not saved:
                now = led.wall()
                if saved is not _SENTINEL:
                    led.pend[saved] += now - led.wlast
                led.wlast = now
                led.charged = ctx
            led.depth = 1
            try:
                return self._coro.send(value)
            finally:
                led.depth = 0
                old = led.charged
                if old is not _SENTINEL:
                    now = led.wall()
                    d = now - led.wlast
                    led.pend[old] += d
                    if old.finished:
                        _went_late(led, old, now, d)
                    led.charged = _SENTINEL  # ``wlast`` is read only while a context is charged
                    if now >= led.wdl:
                        _close_window(led, now, old, d)
        if led.fgen == gen:
            # A scalar clock (``cpu``/``wall``): exact CPU, pending until the window closes;
            # ``exact`` ends every step in the sentinel, ``lazy`` leaves the context charged.
            clk = led.clk
            exact = led.end_cp
            if ctx is not saved:
                now = clk()
                d = now - led.last_u
                led.last_u = now
                if saved is _SENTINEL:
                    led.unattributed_ns += d
                else:
                    led.pend[saved] += d
                    if saved.finished:
                        _went_late(led, saved, now, d)
                led.charged = ctx
            led.depth = 1
            try:
                return self._coro.send(value)
            finally:
                led.depth = 0
                if exact:
                    old = led.charged
                    if old is not _SENTINEL:
                        # ``led.clk`` again: a settings change inside the step may have replaced it
                        now = led.clk()
                        d = now - led.last_u
                        led.pend[old] += d
                        if old.finished:
                            _went_late(led, old, now, d)
                        led.last_u = now
                        led.charged = _SENTINEL
                        if now >= led.wdl:
                            _close_window(led, now)
        if led.flags_gen != gen:
            return self._step(led, saved, ctx, value)
        # The generic switch (``rusage``, fake clocks).
        if ctx is not saved:
            _switch(led, ctx)
        led.depth = 1
        try:
            return self._coro.send(value)
        finally:
            led.depth = 0
            if led.end_cp and led.charged is not _SENTINEL:
                _switch(led, _SENTINEL)

    def _step(self, led: Any, saved: Any, ctx: Any, value: Any) -> Any:
        # Nested steps (an eager task's first step inside its creator's) and the first step
        # after a settings change: the generic checkpoint, which also re-derives the flags.
        led.depth += 1
        if ctx is not saved:
            _switch(led, ctx)
        try:
            return self._coro.send(value)
        finally:
            depth = led.depth - 1
            led.depth = depth
            if depth or led.end_cp:
                target = saved if depth else _SENTINEL
                if led.charged is not target:
                    _switch(led, target)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        try:
            led = _local.ledger
        except AttributeError:
            led = _get_ledger()
        saved = led.charged
        led.depth += 1
        ctx = current_context()
        if ctx is not saved:
            _switch(led, ctx)
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)
        finally:
            depth = led.depth - 1
            led.depth = depth
            if depth or led.end_cp:
                target = saved if depth else _SENTINEL
                if led.charged is not target:
                    _switch(led, target)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        # Returning ``self`` would require ``__next__``, which the C Task would then call
        # instead of ``send``; a small driver gives ``await wrapper`` the same metered steps.
        send, throw = self.send, self.throw
        value: Any = None
        exc: BaseException | None = None
        while True:
            try:
                yielded = send(value) if exc is None else throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value = yield yielded
                exc = None
            except GeneratorExit:
                self.close()
                raise
            except BaseException as err:
                exc = err
                value = None

    @property
    def __wrapped__(self) -> Coroutine[Any, Any, T]:
        return self._coro

    @property
    def __name__(self) -> str:
        return str(getattr(self._coro, "__name__", type(self._coro).__name__))

    @property
    def cr_frame(self) -> FrameType | None:
        return self._coro.cr_frame  # type: ignore[attr-defined,no-any-return]

    @property
    def cr_running(self) -> bool:
        return self._coro.cr_running  # type: ignore[attr-defined,no-any-return]

    @property
    def cr_await(self) -> Any:
        return self._coro.cr_await  # type: ignore[attr-defined]

    @property
    def cr_code(self) -> Any:
        return self._coro.cr_code  # type: ignore[attr-defined]

    @property
    def cr_origin(self) -> Any:
        return self._coro.cr_origin  # type: ignore[attr-defined]

    @property
    def cr_suspended(self) -> bool:
        return self._coro.cr_suspended  # type: ignore[attr-defined,no-any-return]

    def __repr__(self) -> str:
        return f"<MeteredCoroutine {self._coro!r}>"


def _wrap(coro: Any) -> Any:
    """Wrap ``coro`` unless it is already metered or metering is off."""
    if type(coro) is MeteredCoroutine or not _clock._metering:
        return coro
    return MeteredCoroutine(coro)


def wrap_task_factory(previous: TaskFactory | None = None) -> TaskFactory:
    """Return a task factory that meters each task's coroutine, then delegates.

    It calls ``previous(loop, wrapped, **kwargs)`` when given, else
    ``asyncio.Task(wrapped, loop=loop, **kwargs)``, passing every keyword the loop gives
    (``name``, ``context``, ``eager_start``, ...) unchanged.
    """
    if previous is not None and not callable(previous):
        raise TypeError(f"previous task factory must be callable, got {previous!r}")

    if previous is None:

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
            if type(coro) is not MeteredCoroutine and _clock._metering:
                coro = MeteredCoroutine(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

    else:
        prev = previous

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
            if type(coro) is not MeteredCoroutine and _clock._metering:
                coro = MeteredCoroutine(coro)
            return prev(loop, coro, **kwargs)

    setattr(factory, _MARKER, True)
    factory._logcontext_previous = previous  # type: ignore[attr-defined]
    return factory


def _resolve_loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    if loop is None:
        return asyncio.get_running_loop()
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop, got {loop!r}")
    return loop


def is_installed(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Whether our task factory is the one set on ``loop`` (default: the running loop)."""
    return bool(getattr(_resolve_loop(loop).get_task_factory(), _MARKER, False))


def install(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Install the metering task factory on ``loop`` (default: the running loop).

    Composes with a factory already set; a second call is a no-op. Tasks created before
    (including the task calling this, under plain ``asyncio.run``) stay unmetered: use
    :func:`run` or :func:`loop_factory` to meter the main task too.
    """
    running = loop is None
    lp = _resolve_loop(loop)
    current = lp.get_task_factory()
    if getattr(current, _MARKER, False):
        return
    lp.set_task_factory(wrap_task_factory(current))
    if running or _running_loop_is(lp):
        task = asyncio.current_task(lp)
        if task is not None and type(task.get_coro()) is not MeteredCoroutine:
            _misuse.report(
                "unmetered-task",
                f"logcontext.aio.install() called inside task {task.get_name()!r}, which "
                "stays unmetered; use logcontext.aio.run() or loop_factory() to meter it",
                context=str(current_context()),
                site="logcontext.aio.install",
            )


def _running_loop_is(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def uninstall(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Restore the previous task factory if ours is on top; return whether it was."""
    lp = _resolve_loop(loop)
    current = lp.get_task_factory()
    if not getattr(current, _MARKER, False):
        return False
    lp.set_task_factory(getattr(current, "_logcontext_previous", None))
    return True


def loop_factory(
    base: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a loop factory (for ``asyncio.Runner``) whose loops have metering installed.

    ``base`` creates the loop, e.g. ``uvloop.new_event_loop``.
    """
    if not callable(base):
        raise TypeError(f"base must be a callable returning an event loop, got {base!r}")

    def factory() -> asyncio.AbstractEventLoop:
        loop = base()
        install(loop)
        return loop

    return factory


def run(
    main: Coroutine[Any, Any, T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Like :func:`asyncio.run`, but the main task is metered too.

    ``loop_factory`` (default ``asyncio.new_event_loop``) is wrapped so metering is
    installed before the main task exists.
    """
    if not asyncio.iscoroutine(main):
        raise TypeError(f"a coroutine was expected, got {main!r}")
    factory = _loop_factory_of(loop_factory or asyncio.new_event_loop)
    try:
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        _ledger.settle(current_context())


_loop_factory_of = loop_factory


class ContextThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose every ``submit`` carries the caller's context.

    The worker runs ``fn`` in a copy of the submitter's ``contextvars.Context``, inside a
    thread-bound child ``LoggingContext(str(parent), parent_context=parent)``, so the
    thread's CPU rolls up into the submitting context. ``loop.run_in_executor`` calls
    ``submit``, so ``loop.run_in_executor(ContextThreadPoolExecutor(), fn)`` is covered.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        ctx = contextvars.copy_context()
        parent = current_context()
        return super().submit(ctx.run, _run_in_child_context, parent, fn, args, kwargs)


async def shutdown_background_processes(timeout_s: float = 10.0) -> None:
    """Cancel every running background process and wait up to ``timeout_s`` for them.

    Only processes on the running loop are awaited; others are just cancelled.
    """
    if timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0, got {timeout_s!r}")
    loop = asyncio.get_running_loop()
    tasks = [t for t in list(_bg_tasks) if not t.done()]
    for t in tasks:
        t.cancel()
    mine: list[asyncio.Future[Any]] = [t for t in tasks if t.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=timeout_s)
