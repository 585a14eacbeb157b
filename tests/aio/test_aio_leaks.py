"""No context leaks between tasks, into the loop or into pooled threads (spec §2.3, §3; §10 2-4, 12)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time

import pytest

import logcontext
from logcontext import SENTINEL_CONTEXT, LoggingContext, _ledger, _misuse, aio, current_context
from logcontext._helpers import run_in_thread

MODES = ["exact", "lazy", "sampled"]


@pytest.fixture(params=MODES)
def step_mode(request: pytest.FixtureRequest) -> str:
    logcontext.configure(clock="cpu", step_mode=request.param)
    return str(request.param)


def test_sleeping_tasks_keep_their_own_context(step_mode: str) -> None:
    """ "foo" sleeps twice while a competitor enters "competing"; each sees its own after every
    sleep, the loop's callbacks see the sentinel, and everything ends in the sentinel."""
    seen: list[str] = []

    async def foo() -> None:
        with LoggingContext("foo"):
            for _ in range(2):
                await asyncio.sleep(0.001)
                seen.append(str(current_context()))

    async def competitor() -> None:
        assert not current_context()
        with LoggingContext("competing"):
            await asyncio.sleep(0.001)
            seen.append(str(current_context()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(foo(), competitor())
        # a callback scheduled from outside any context runs in the sentinel
        fut: asyncio.Future[str] = loop.create_future()
        contextvars.Context().run(loop.call_soon, lambda: fut.set_result(str(current_context())))
        assert await fut == "sentinel"

    aio.run(main())
    assert sorted(seen) == ["competing", "foo", "foo"]
    assert _ledger.get_ledger().charged is SENTINEL_CONTEXT


def test_child_task_context_does_not_reach_creator(step_mode: str) -> None:
    """A task created in "foo" sees "foo"; its own "bar" leaves the creator in "foo" (gather and
    TaskGroup)."""

    async def child() -> str:
        seen = str(current_context())
        with LoggingContext("bar"):
            await asyncio.sleep(0)
        return seen

    async def main() -> None:
        with LoggingContext("foo") as foo:
            assert await asyncio.gather(child(), child()) == ["foo", "foo"]
            assert current_context() is foo
            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(child())
            assert t.result() == "foo"
            assert current_context() is foo

    aio.run(main())


def test_cancelled_mid_step_leaves_nothing_behind(step_mode: str) -> None:
    """Tasks cancelled while suspended inside nested contexts exit them; no context stays current
    in the loop and the ledger returns to the sentinel."""
    entered = asyncio.Event

    async def holder(ev: asyncio.Event) -> None:
        with LoggingContext("outer"), LoggingContext("inner"):
            ev.set()
            await asyncio.sleep(10)

    async def main() -> None:
        ev = entered()
        tasks = [asyncio.create_task(holder(ev)) for _ in range(3)]
        await ev.wait()
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in res)
        assert not current_context()

    aio.run(main())
    assert _ledger.get_ledger().charged is SENTINEL_CONTEXT


def test_collected_coroutine_closes_in_foreign_context(step_mode: str) -> None:
    """A metered task suspended inside `with LoggingContext("req")` whose loop is dropped is
    closed by the GC while "x" is current: "x" stays current and the ledger is not touched."""

    async def holder() -> None:
        with LoggingContext("req"):
            await asyncio.sleep(10)

    loop = asyncio.new_event_loop()
    aio.install(loop)
    task = loop.create_task(holder())
    loop.run_until_complete(asyncio.sleep(0.001))
    assert not task.done()
    loop.close()
    before = _misuse.counts["foreign-exit"]
    with LoggingContext("x") as x:
        led = _ledger.get_ledger()
        charged = led.charged
        del task
        gc.collect()
        assert current_context() is x
        assert led.charged is charged
    assert not current_context()
    assert _misuse.counts["foreign-exit"] == before + 1  # the GC really closed it


def test_pooled_threads_return_to_the_sentinel(step_mode: str) -> None:
    """After run_in_thread work the pool thread holds no context: neither its ContextVar nor
    its ledger; raw run_in_executor on the same pool sees the sentinel."""
    seen: list[tuple[str, object, int]] = []

    def work() -> None:
        seen.append((str(current_context()), current_context().parent_context, threading.get_ident()))

    def probe() -> tuple[str, object]:
        return str(current_context()), _ledger.get_ledger().charged

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with LoggingContext("req") as req:
            await run_in_thread(work)
            await run_in_thread(work)
        assert seen[0][0] == "req" and seen[0][1] is req
        name, charged = await loop.run_in_executor(None, probe)
        assert name == "sentinel" and charged is SENTINEL_CONTEXT

    aio.run(main())


def test_thread_workers_do_not_see_each_others_contexts(step_mode: str) -> None:
    """Concurrent run_in_thread calls from different requests each see a child of their own
    request, never the other's."""
    results: dict[str, list[str]] = {"r1": [], "r2": []}

    def work(tag: str) -> None:
        for _ in range(3):
            results[tag].append(str(current_context().parent_context))
            time.sleep(0.001)

    async def request(tag: str) -> None:
        with LoggingContext(tag):
            await asyncio.gather(run_in_thread(work, tag), run_in_thread(work, tag))

    async def main() -> None:
        await asyncio.gather(request("r1"), request("r2"))

    aio.run(main())
    assert set(results["r1"]) == {"r1"} and set(results["r2"]) == {"r2"}


def test_run_settles_the_ledger(step_mode: str) -> None:
    """When aio.run returns, this thread charges the caller's context again and nothing is left
    pending (lazy mode leaves the last step's context charged inside the loop)."""

    async def main() -> None:
        with LoggingContext("last"):
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    aio.run(main())
    led = _ledger.get_ledger()
    assert led.charged is SENTINEL_CONTEXT
    assert not led.pend
