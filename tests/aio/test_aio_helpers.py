"""run_in_background, background processes, thread helpers and bind (spec §3; §10 items 8, 9, 16)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import pytest

import logcontext
from logcontext import (
    LoggingContext,
    _bgmetrics,
    _misuse,
    aio,
    current_context,
    set_current_context,
)
from logcontext.testing import strict


def test_run_in_background_variants_keep_callers_context() -> None:
    """Suspending and non-suspending coroutines, awaitables and plain values all run in the
    caller's context, which stays current in the caller; no report."""
    seen: list[str] = []

    async def suspending() -> int:
        seen.append(str(current_context()))
        await asyncio.sleep(0)
        seen.append(str(current_context()))
        return 1

    async def immediate() -> int:
        seen.append(str(current_context()))
        return 2

    def value() -> int:
        seen.append(str(current_context()))
        return 3

    async def main() -> None:
        with LoggingContext("foo") as foo:
            f1 = logcontext.run_in_background(suspending)
            f2 = logcontext.run_in_background(immediate)
            f3 = logcontext.run_in_background(value)
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(4)
            f4 = logcontext.run_in_background(lambda: fut)
            assert current_context() is foo
            assert await asyncio.gather(f1, f2, f3, f4) == [1, 2, 3, 4]
            assert current_context() is foo

    aio.run(main())
    assert seen == ["foo"] * 4


@pytest.mark.misuse_ok
def test_run_in_background_restores_changed_context_and_fails_future() -> None:
    """A sync fn that leaves another context current is reported (fn-changed-context) and the
    caller's context restored; a sync exception gives a failed future."""
    reports: list[_misuse.MisuseReport] = []
    logcontext.set_misuse_hook(reports.append)

    def changes() -> None:
        set_current_context(LoggingContext("other"))

    def fails() -> None:
        raise KeyError("boom")

    async def main() -> None:
        with LoggingContext("foo") as foo:
            await logcontext.run_in_background(changes)
            assert current_context() is foo
            fut = logcontext.run_in_background(fails)
            with pytest.raises(KeyError):
                await fut

    try:
        aio.run(main())
    finally:
        logcontext.set_misuse_hook(None)
    assert [r.kind for r in reports] == ["fn-changed-context"]


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def bg_started(self, desc: str, ctx: Any) -> None:
        self.events.append(("start", desc, str(ctx)))

    def bg_finished(self, desc: str, ctx: Any) -> None:
        self.events.append(("finish", desc, str(ctx)))


def test_background_process_runs_in_new_root_context(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each process gets a parentless context "desc-n", its usage is not the spawner's, metrics
    hooks see start and finish, and an exception is logged at ERROR with result None."""
    sink = _Sink()
    monkeypatch.setattr(_bgmetrics, "active", sink)
    info: list[tuple[str, object, str]] = []

    async def job(x: int) -> int:
        ctx = current_context()
        info.append((str(ctx), ctx.parent_context, ctx.server_name))
        await asyncio.sleep(0)
        return x

    async def bad() -> None:
        raise ValueError("nope")

    async def main() -> None:
        with LoggingContext("spawner") as spawner:
            t1 = logcontext.run_as_background_process("job", job, 5, bg_server_name="hs1")
            t2 = logcontext.run_as_background_process("job", job, 6)
            t3 = logcontext.run_as_background_process("bad", bad)
            assert current_context() is spawner
            assert await asyncio.gather(t1, t2, t3) == [5, 6, None]

    with caplog.at_level(logging.ERROR, logger="logcontext.background"):
        aio.run(main())
    names = sorted(n for n, _, _ in info)
    assert names[0].startswith("job-") and names[1].startswith("job-") and names[0] != names[1]
    assert all(parent is None for _, parent, _ in info)
    assert "hs1" in {sn for _, _, sn in info}
    assert [e[0] for e in sink.events].count("start") == 3
    assert [e[0] for e in sink.events].count("finish") == 3
    assert any("Background process 'bad' threw an exception" in r.getMessage() for r in caplog.records)


def test_wrap_as_background_process_and_shutdown() -> None:
    """The decorator starts a background process per call; shutdown_background_processes
    cancels those still running."""
    started = asyncio.Event

    @logcontext.wrap_as_background_process("sleeper")
    async def sleeper(ev: asyncio.Event) -> None:
        ev.set()
        await asyncio.sleep(10)

    async def main() -> None:
        ev = started()
        t = sleeper(ev)
        await ev.wait()
        await aio.shutdown_background_processes(timeout_s=1.0)
        assert t.cancelled()

    aio.run(main())


def test_bad_arguments_raise() -> None:
    """Empty descriptions and non-callables are rejected with errors naming the problem."""

    async def main() -> None:
        with pytest.raises(ValueError, match="desc"):
            logcontext.run_as_background_process("", lambda: None)
        with pytest.raises(TypeError, match="callable"):
            logcontext.run_in_background(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            logcontext.run_in_thread(42)  # type: ignore[arg-type]

    aio.run(main())
    with pytest.raises(TypeError):
        logcontext.wrap_as_background_process(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        logcontext.bind(3)  # type: ignore[arg-type]


def test_thread_helpers_give_a_child_of_the_caller() -> None:
    """run_in_thread, defer_to_thread (with and without an executor) and
    ContextThreadPoolExecutor run fn in a child named like the caller and parented to it; raw
    run_in_executor sees the sentinel and asyncio.to_thread the caller's context itself."""

    def who() -> tuple[str, object]:
        c = current_context()
        return str(c), c.parent_context

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = aio.ContextThreadPoolExecutor(max_workers=2)
        try:
            with LoggingContext("req") as req:
                assert await logcontext.run_in_thread(who) == ("req", req)
                assert await logcontext.defer_to_thread(who) == ("req", req)
                assert await logcontext.defer_to_thread(who, executor=pool) == ("req", req)
                assert await logcontext.run_in_executor(pool, who) == ("req", req)
                assert await loop.run_in_executor(pool, who) == ("req", req)
                assert await loop.run_in_executor(None, who) == ("sentinel", None)
                assert await asyncio.to_thread(who) == ("req", None)
        finally:
            pool.shutdown()

    aio.run(main())


@pytest.mark.misuse_ok
def test_run_in_thread_from_sentinel_reports_once_per_function() -> None:
    """From the sentinel no child is made and one sentinel-usage is reported per function."""
    reports: list[_misuse.MisuseReport] = []
    logcontext.set_misuse_hook(reports.append)

    def f() -> str:
        return str(current_context())

    def g() -> str:
        return str(current_context())

    async def main() -> None:
        assert await logcontext.run_in_thread(f) == "sentinel"
        await logcontext.run_in_thread(f)
        await logcontext.run_in_thread(g)

    try:
        aio.run(main())
    finally:
        logcontext.set_misuse_hook(None)
    assert [r.kind for r in reports] == ["sentinel-usage", "sentinel-usage"]


def test_bind_carries_context_to_threads_and_callbacks() -> None:
    """bind() captures the context at bind time; calls run in fresh copies, from two threads at
    once, and a bound loop callback sees the captured context; metadata is kept."""

    def target(out: list[str], barrier: threading.Barrier) -> None:
        """doc"""
        barrier.wait()
        out.append(str(current_context()))

    out: list[str] = []
    with LoggingContext("foo"):
        bound = logcontext.bind(target)
        assert bound.__doc__ == "doc" and bound.__name__ == "target"
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=bound, args=(out, barrier)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert out == ["foo", "foo"]

    async def main() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        with LoggingContext("cb"):
            cb = logcontext.bind(lambda: fut.set_result(str(current_context())))
            with logcontext.PreserveLoggingContext():
                loop.call_soon(cb)
            return await fut

    assert aio.run(main()) == "cb"


def test_context_pool_executor_outside_asyncio() -> None:
    """ContextThreadPoolExecutor.submit works from plain threads too, under strict."""
    with strict(), aio.ContextThreadPoolExecutor(max_workers=1) as pool:
        with LoggingContext("plain") as plain:
            fut: concurrent.futures.Future[str] = pool.submit(lambda: str(current_context().parent_context))
            assert fut.result() == "plain"
        assert plain.finished


def test_background_process_feeds_prometheus_metrics() -> None:
    """With metrics installed, a background process counts one start under its desc and its
    CPU reaches the background-process CPU counter."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from logcontext.metrics import install_metrics, uninstall_metrics

    registry = prometheus_client.CollectorRegistry()
    install_metrics(registry=registry)
    try:

        async def job() -> None:
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)

        async def main() -> None:
            await logcontext.run_as_background_process("metered_job", job)

        aio.run(main())
        labels = {"name": "metered_job", "server_name": "localhost"}
        starts = registry.get_sample_value("logcontext_background_process_start_count_total", labels)
        cpu = registry.get_sample_value("logcontext_background_process_ru_utime_seconds_total", labels)
    finally:
        uninstall_metrics()
    assert starts == 1
    assert cpu is not None and cpu >= 0.004
