"""Metering task factory and MeteredCoroutine: transparency, composition (spec §2.3; §10 18, 19)."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Coroutine
from typing import Any

import pytest

import logcontext
from logcontext import LoggingContext, _ledger, _misuse, aio, current_context
from logcontext.aio import MeteredCoroutine

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


async def _sample(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def test_task_coroutine_is_metered_and_transparent() -> None:
    """Tasks wrap their coroutine once; the wrapper passes asyncio.iscoroutine, delegates names,
    cr_* attributes and __wrapped__, and has no __next__."""

    async def main() -> None:
        task = asyncio.create_task(_sample(2), name="sample")
        coro = task.get_coro()
        assert type(coro) is MeteredCoroutine
        assert asyncio.iscoroutine(coro) and not inspect.iscoroutine(coro)
        assert inspect.iscoroutine(coro.__wrapped__)
        assert coro.__name__ == "_sample"
        assert coro.__qualname__ == "_sample"
        assert coro.cr_code is _sample.__code__
        assert coro.cr_running is False
        assert not hasattr(coro, "__next__")
        assert "_sample()" in repr(task)
        await asyncio.sleep(0)
        assert coro.cr_frame is not None
        frames = task.get_stack()
        assert frames and frames[0].f_code is _sample.__code__
        assert await task == 4

    aio.run(main())


def test_main_task_is_metered_by_run() -> None:
    """aio.run meters the main task; plain asyncio.run + install() reports one unmetered-task."""

    async def check() -> bool:
        return type(asyncio.current_task().get_coro()) is MeteredCoroutine  # type: ignore[union-attr]

    assert aio.run(check()) is True


@pytest.mark.misuse_ok
def test_install_inside_running_task_reports_unmetered_task() -> None:
    """install() inside a task that already runs (plain asyncio.run) reports unmetered-task once;
    tasks created afterwards are metered."""
    seen: list[_misuse.MisuseReport] = []
    logcontext.set_misuse_hook(seen.append)
    try:

        async def main() -> bool:
            aio.install()
            aio.install()  # second call: no-op, no second report
            t = asyncio.create_task(_sample(1))
            await t
            return type(t.get_coro()) is MeteredCoroutine

        assert asyncio.run(main()) is True
    finally:
        logcontext.set_misuse_hook(None)
    assert [r.kind for r in seen] == ["unmetered-task"]


def test_install_is_idempotent_and_uninstall_restores_previous() -> None:
    """A second install is a no-op; uninstall restores the factory set before ours."""
    loop = asyncio.new_event_loop()
    try:
        calls: list[dict[str, Any]] = []

        def previous(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            calls.append(kwargs)
            return asyncio.Task(coro, loop=lp, **kwargs)

        loop.set_task_factory(previous)
        assert not aio.is_installed(loop)
        aio.install(loop)
        ours = loop.get_task_factory()
        aio.install(loop)
        assert loop.get_task_factory() is ours and aio.is_installed(loop)
        assert aio.uninstall(loop) is True
        assert loop.get_task_factory() is previous
        assert aio.uninstall(loop) is False
    finally:
        loop.close()


def test_composition_passes_every_keyword() -> None:
    """The previous factory receives the wrapped coroutine and every keyword unchanged."""
    calls: list[tuple[Any, dict[str, Any]]] = []

    def previous(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        calls.append((coro, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(aio.wrap_task_factory(previous))
        import contextvars

        ctx = contextvars.copy_context()
        t = loop.create_task(_sample(3), name="n", context=ctx)
        assert await t == 6
        assert t.get_name() == "n"

    asyncio.run(main())
    coro, kwargs = calls[0]  # later calls: the runner's shutdown tasks
    assert type(coro) is MeteredCoroutine and coro.__name__ == "_sample"
    assert "context" in kwargs


def test_never_double_wraps() -> None:
    """A metered coroutine passed to create_task again, or two stacked factories, wraps once."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(aio.wrap_task_factory(aio.wrap_task_factory()))
        t = loop.create_task(_sample(1))
        assert type(t.get_coro()) is MeteredCoroutine
        assert type(t.get_coro().__wrapped__) is not MeteredCoroutine
        await t
        again = MeteredCoroutine(MeteredCoroutine(_sample(1)))
        assert type(again.__wrapped__) is not MeteredCoroutine
        assert await again == 2

    asyncio.run(main())


def test_cancellation_and_unstarted_close() -> None:
    """Cancelling a metered task mid-await and before its first step works as usual and leaves
    no context behind; closing an unstarted wrapper closes the inner coroutine."""

    async def holder() -> None:
        with LoggingContext("holder"):
            await asyncio.sleep(10)

    async def main() -> None:
        t = asyncio.create_task(holder())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        u = asyncio.create_task(holder())
        u.cancel()  # never started
        with pytest.raises(asyncio.CancelledError):
            await u
        assert not current_context()

    aio.run(main())
    assert _ledger.get_ledger().charged is logcontext.SENTINEL_CONTEXT
    inner = _sample(1)
    wrapped = MeteredCoroutine(inner)
    wrapped.close()
    assert inner.cr_frame is None  # closed


def test_await_on_wrapper_and_throw_pass_through() -> None:
    """Awaiting a wrapper directly works; results and exceptions pass through send/throw."""

    async def boom() -> None:
        await asyncio.sleep(0)
        raise KeyError("x")

    async def main() -> None:
        assert await MeteredCoroutine(_sample(5)) == 10
        with pytest.raises(KeyError):
            await MeteredCoroutine(boom())
        m = MeteredCoroutine(_sample(1))
        m.send(None)
        with pytest.raises(ValueError):
            m.throw(ValueError("in"))

    aio.run(main())


def test_clock_off_creates_no_metering_objects() -> None:
    """With the clock off the factory does not wrap (no metering objects)."""
    logcontext.configure(clock="off")

    async def main() -> bool:
        t = asyncio.create_task(_sample(1))
        await t
        return type(t.get_coro()) is MeteredCoroutine

    assert aio.run(main()) is False


def test_loop_factory_and_runner() -> None:
    """loop_factory() gives asyncio.Runner loops with metering installed; bad bases are rejected."""
    with asyncio.Runner(loop_factory=aio.loop_factory()) as runner:
        assert runner.run(_is_metered()) is True
    with pytest.raises(TypeError, match="base"):
        aio.loop_factory(base=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine"):
        aio.run(42)  # type: ignore[arg-type]


async def _is_metered() -> bool:
    return type(asyncio.current_task().get_coro()) is MeteredCoroutine  # type: ignore[union-attr]


@pytest.mark.skipif(uvloop is None, reason="uvloop not installed")
def test_uvloop_tasks_are_metered_and_charged() -> None:
    """On uvloop the main task and child tasks are metered and their CPU is charged."""

    async def main() -> tuple[bool, float]:
        with LoggingContext("uv") as ctx:
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)
        return await _is_metered(), ctx.get_resource_usage().ru_utime

    metered, cpu = aio.run(main(), loop_factory=uvloop.new_event_loop)
    assert metered is True
    assert cpu >= 0.004


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12+")
def test_eager_task_cpu_goes_to_new_task() -> None:  # pragma: no cover - 3.12+
    """With eager_task_factory composed under ours, CPU before the first await goes to the new
    task's context and the creator's context is restored after the eager step."""

    async def child(box: list[LoggingContext]) -> None:
        with LoggingContext("child") as c:
            box.append(c)
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(aio.wrap_task_factory(asyncio.eager_task_factory))  # type: ignore[attr-defined]
        box: list[LoggingContext] = []
        with LoggingContext("creator") as creator:
            t = loop.create_task(child(box))
            assert current_context() is creator
            assert _ledger.get_ledger().charged is creator
            await t
        assert box[0].get_resource_usage().ru_utime >= 0.004
        assert creator.get_resource_usage().ru_utime < 0.004

    aio.run(main())


def test_wrapper_is_a_coroutine_abc_instance() -> None:
    """MeteredCoroutine is a collections.abc.Coroutine (what asyncio and Twisted accept)."""
    c = _sample(1)
    m = MeteredCoroutine(c)
    assert isinstance(m, Coroutine)
    m.close()
