"""Spans on every backend: activation, nesting, tasks, usage attributes (§10 items 34–37)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _tracing_harness import Finished, Harness

import logcontext
import logcontext.tracing as lt
from logcontext import LoggingContext, _ledger, current_context
from logcontext.tracing._bg import start_background_span

USAGE_KEYS = (
    "logcontext.name",
    "logcontext.server_name",
    "logcontext.cpu.clock",
    "logcontext.cpu.user_s",
    "logcontext.cpu.system_s",
    "logcontext.db.txn_count",
    "logcontext.db.txn_s",
    "logcontext.db.sched_s",
    "logcontext.db.event_fetches",
)


def assert_usage(span: Finished, ctx: Any) -> None:
    """The span's §6.2 attributes equal ``ctx``'s usage after it exited."""
    usage = ctx.get_resource_usage()
    a = span.attributes
    for key in USAGE_KEYS:
        assert key in a, (key, a)
    assert a["logcontext.name"] == ctx.name
    assert a["logcontext.server_name"] == ctx.server_name
    assert a["logcontext.cpu.user_s"] == pytest.approx(usage.ru_utime, abs=1e-9)
    assert a["logcontext.cpu.system_s"] == pytest.approx(usage.ru_stime, abs=1e-9)
    assert a["logcontext.db.txn_count"] == usage.db_txn_count
    assert a["logcontext.db.txn_s"] == pytest.approx(usage.db_txn_duration_sec)
    assert a["logcontext.db.sched_s"] == pytest.approx(usage.db_sched_duration_sec)
    assert a["logcontext.db.event_fetches"] == usage.evt_db_fetch_count


def test_nesting_activation_and_finish_order(tracing: Harness) -> None:
    """Spans are active at once, restored on exit, parented by nesting, finished inner first."""
    assert lt.tracing_enabled()
    with lt.start_span("root") as root:
        assert lt.active_span() is root
        with lt.start_span("child1") as c1:
            assert lt.active_span() is c1
            with lt.start_span("child2") as c2:
                assert lt.active_span() is c2
            assert lt.active_span() is c1
        assert lt.active_span() is root
    assert lt.active_span() is None
    spans = tracing.finished()
    assert [s.name for s in spans] == ["child2", "child1", "root"]
    by = tracing.by_name()
    assert by["root"].parent_id is None
    assert by["child1"].parent_id == by["root"].span_id
    assert by["child2"].parent_id == by["child1"].span_id
    assert len({s.trace_id for s in spans}) == 1


def test_root_and_explicit_parent(tracing: Harness) -> None:
    """``root=True`` ignores the active span; ``parent=`` picks another one."""
    with lt.start_span("a") as a:
        with lt.start_span("r", root=True):
            pass
        with lt.start_span("b"), lt.start_span("p", parent=a):
            pass
    by = tracing.by_name()
    assert by["r"].parent_id is None
    assert by["r"].trace_id != by["a"].trace_id
    assert by["p"].parent_id == by["a"].span_id


def test_usage_attributes_equal_child_context_usage(tracing: Harness) -> None:
    """A span in a context gets its own child context's inclusive usage; the parent is untouched."""
    with LoggingContext("req") as req:
        with lt.start_span("outer"):
            outer_ctx = current_context()
            assert outer_ctx is not req and str(outer_ctx) == "req"
            assert outer_ctx.parent_context is req  # type: ignore[union-attr]
            outer_ctx.record_db_txn(0.25)
            with lt.start_span("inner"):
                inner_ctx = current_context()
                inner_ctx.record_db_txn(0.5)
                inner_ctx.record_event_fetch(3)
                inner_ctx.record_db_scheduled(0.125)
                inner_ctx.add_cputime(0.75, 0.25)
            assert current_context() is outer_ctx
        assert current_context() is req
    by = tracing.by_name()
    assert_usage(by["inner"], inner_ctx)
    assert_usage(by["outer"], outer_ctx)
    assert by["inner"].attributes["logcontext.db.txn_count"] == 1
    assert by["outer"].attributes["logcontext.db.txn_count"] == 2
    assert by["inner"].attributes["logcontext.db.event_fetches"] == 3
    assert req.get_resource_usage().db_txn_count == 2


@pytest.fixture
def sampled_windows() -> Iterator[Callable[[], int]]:
    """cpu/sampled with a window no test outlasts; yields a count of the windows closed since
    the fixture settled this thread's ledger."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(10_000)
    try:
        with LoggingContext("warm"):
            pass
        _ledger.settle_pending()
        start = _ledger.stats.windows
        yield lambda: _ledger.stats.windows - start
    finally:
        _ledger.set_sample_window(1.0)


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_sampled_span_cpu_is_final_at_its_exit_without_a_window_close(
    tracing: Harness, sampled_windows: Callable[[], int]
) -> None:
    """sampled mode: a span block that never switches is charged its share of the window at its
    exit, so its CPU attribute covers the block and ending the span closes no sampling window."""
    with LoggingContext("req"):
        _ledger.settle_pending()
        closed = sampled_windows()
        with lt.start_span("burn"):
            _burn(0.002)
        assert sampled_windows() == closed
    assert tracing.by_name()["burn"].attributes["logcontext.cpu.user_s"] >= 0.0019


def test_sampled_owned_span_usage_is_final_at_the_owners_exit_without_a_window_close(
    tracing: Harness, sampled_windows: Callable[[], int]
) -> None:
    """sampled mode: a context owning its span (request, background process, transaction style)
    that never switches is charged at its exit; ending the span with its usage closes no window."""
    ctx = LoggingContext("txn")
    with ctx, lt._api.start_context_span(ctx, "txn"):
        closed = sampled_windows()
        _burn(0.002)
    assert sampled_windows() == closed
    attrs = tracing.by_name()["txn"].attributes
    assert attrs["logcontext.cpu.user_s"] >= 0.0019
    assert attrs["logcontext.cpu.user_s"] == ctx.get_resource_usage().ru_utime


def test_usage_off_and_sentinel(make_harness: Any) -> None:
    """No usage attributes outside a context, with ``record_usage=False``, or when disabled."""
    h = make_harness("otel")
    with lt.start_span("no-ctx"):
        assert not current_context()
    with LoggingContext("req"):
        with lt.start_span("no-usage", record_usage=False):
            assert str(current_context()) == "req"
    lt.shutdown_tracing(2.0)
    h = make_harness("otel", record_usage=False)
    with LoggingContext("req"), lt.start_span("disabled"):
        pass
    for f in h.finished():
        assert not any(k.startswith("logcontext.") for k in f.attributes), f


def test_end_on_exit_false_keeps_span_open(otel: Harness) -> None:
    """``end_on_exit=False`` deactivates at block end but leaves ending to the caller."""
    with LoggingContext("req"):
        with lt.start_span("later", end_on_exit=False) as span:
            current_context().record_db_txn(0.1)
        assert lt.active_span() is None
        assert otel.finished() == []
        span.end()
        span.end()
    (f,) = otel.finished()
    assert f.attributes["logcontext.db.txn_count"] == 1


def test_exception_recorded_and_propagated(tracing: Harness) -> None:
    """An exception leaving the block is recorded on the span and re-raised unchanged."""
    with pytest.raises(KeyError), lt.start_span("boom"):
        raise KeyError("k")
    (f,) = tracing.finished()
    assert f.error


def test_helpers_set_tag_event_rename(tracing: Harness) -> None:
    """``set_tag``, ``log_event``/``log_kv`` and ``set_operation_name`` act on the active span."""
    with lt.start_span("old"):
        lt.set_tag("s", "v")
        lt.set_attribute("n", 3)
        lt.set_tag("obj", {"a": 1})
        lt.log_event("happened", {"k": 1})
        lt.log_kv({"event": "kv", "x": "y"})
        lt.set_operation_name("new")
    (f,) = tracing.finished()
    assert f.name == "new"
    assert f.attributes["s"] == "v" and f.attributes["n"] == 3
    assert f.attributes["obj"] == "{'a': 1}"
    names = [e[0] for e in f.events]
    assert "happened" in names and "kv" in names


async def test_nesting_across_tasks(tracing: Harness) -> None:
    """Tasks inherit the active span as parent; their spans never leak into the creator."""

    async def worker(i: int) -> None:
        with lt.start_span(f"task{i}") as s:
            await asyncio.sleep(0)
            assert lt.active_span() is s
            with lt.start_span(f"task{i}-inner"):
                await asyncio.sleep(0)

    with LoggingContext("req"), lt.start_span("root") as root:
        await asyncio.gather(*(worker(i) for i in range(3)))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(worker(3))
        assert lt.active_span() is root
    by = tracing.by_name()
    for i in range(4):
        assert by[f"task{i}"].parent_id == by["root"].span_id
        assert by[f"task{i}-inner"].parent_id == by[f"task{i}"].span_id
    assert tracing.finished()[-1].name == "root"


async def test_overlapping_spans_in_tasks(tracing: Harness) -> None:
    """Item 35: tasks entering at t=0 and t=2, each holding a span for 4 ticks, see their own."""
    now = 0
    tick = asyncio.Condition()

    async def sleep_until(t: int) -> None:
        async with tick:
            await tick.wait_for(lambda: now >= t)

    async def task(name: str, start: int) -> None:
        await sleep_until(start)
        with lt.start_span(name) as s:
            await sleep_until(start + 4)
            assert lt.active_span() is s

    with lt.start_span("root") as root:
        tasks = [asyncio.create_task(task("task1", 0)), asyncio.create_task(task("task2", 2))]
        for t in range(1, 8):
            await asyncio.sleep(0)
            async with tick:
                now = t
                tick.notify_all()
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert lt.active_span() is root
    assert [s.name for s in tracing.finished()] == ["task1", "task2", "root"]
    by = tracing.by_name()
    assert by["task1"].parent_id == by["task2"].parent_id == by["root"].span_id


# -- decorators -----------------------------------------------------------------------------


class Thing:
    @lt.trace_with_name("Thing.sync")
    @lt.tag_args
    def sync(self, a: int, b: str = "x", *more: int, **kw: int) -> int:
        current_context().record_db_txn(0.5)
        return a

    @lt.trace
    @lt.tag_args
    async def coro(self, a: int) -> int:
        await asyncio.sleep(0)
        current_context().record_event_fetch(2)
        return a * 2

    @lt.trace_with_opname("Thing.awaitable")
    def returns_awaitable(self, a: int) -> Any:
        async def inner() -> int:
            await asyncio.sleep(0)
            current_context().record_db_txn(0.25)
            return a

        return inner()

    @lt.trace_with_name("Thing.future")
    def returns_future(self, fail: bool) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if fail:
            fut.set_exception(ValueError("bad"))
        else:
            fut.set_result(7)
        return fut

    @lt.trace_with_name("Thing.fails")
    def fails(self) -> None:
        raise RuntimeError("nope")

    @lt.trace_with_name("Thing.afails")
    async def afails(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("anope")


async def test_decorators_on_all_callable_shapes(tracing: Harness) -> None:
    """Item 36: one span per call for sync, async, awaitable- and future-returning functions."""
    t = Thing()
    assert asyncio.iscoroutinefunction(Thing.coro)
    with LoggingContext("req") as req:
        assert t.sync(1, "y", 9, k=2) == 1
        assert await t.coro(3) == 6
        assert await t.returns_awaitable(4) == 4
        assert await t.returns_future(False) == 7
        with pytest.raises(ValueError):
            await t.returns_future(True)
        with pytest.raises(RuntimeError):
            t.fails()
        with pytest.raises(RuntimeError):
            await t.afails()
        assert current_context() is req
    assert lt.active_span() is None
    by = tracing.by_name()
    assert sorted(by) == sorted(
        [
            "Thing.sync",
            "Thing.coro",
            "Thing.awaitable",
            "Thing.future",
            "Thing.fails",
            "Thing.afails",
        ]
    )
    assert len(tracing.finished()) == 7  # the future-returning function ran twice
    s = by["Thing.sync"].attributes
    assert s["ARG.a"] == 1 and s["ARG.b"] == "y"
    assert "ARG.self" not in s
    assert s["args"] == "(9,)" and s["kwargs"] == "{'k': 2}"
    assert s["logcontext.db.txn_count"] == 1
    assert by["Thing.coro"].attributes["ARG.a"] == 3
    assert by["Thing.coro"].attributes["logcontext.db.event_fetches"] == 2
    assert by["Thing.awaitable"].attributes["logcontext.db.txn_count"] == 1
    assert by["Thing.fails"].error and by["Thing.afails"].error
    futures = [f for f in tracing.finished() if f.name == "Thing.future"]
    assert sorted(f.error for f in futures) == [False, True]
    assert req.get_resource_usage().db_txn_count == 2


@pytest.mark.accuracy
def test_sync_decorator_cpu_attribute(otel: Harness) -> None:
    """A decorated function burning CPU reports at least that CPU in ``logcontext.cpu.user_s``."""

    @lt.trace
    def burn() -> float:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.02:
            pass
        return time.thread_time() - t0

    with LoggingContext("req"):
        burnt = burn()
    (f,) = otel.finished()
    user = f.attributes["logcontext.cpu.user_s"] + f.attributes["logcontext.cpu.system_s"]
    assert burnt * 0.9 <= user <= burnt + 0.05


@pytest.mark.accuracy
def test_span_cpu_stays_close_under_gil_contention(otel: Harness) -> None:
    """Default mode (``sampled``), a CPU-bound thread contending for the GIL every 200 us: span
    CPU attributes stay close to the CPU each block burnt (the thread's lossy windows switch it
    to clock pairs; wall shares alone were off by 30 % on average here)."""
    import statistics
    import sys
    import threading

    from logcontext import aio

    truth: dict[str, float] = {}
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            sum(range(1000))

    def burn(seconds: float) -> float:
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass
        return time.thread_time() - t0

    async def task(i: int) -> None:
        with LoggingContext(f"t{i}"):
            for j in range(30):
                burn(0.0001)  # the parent's own work in the window
                with lt.start_span(f"s{i}.{j}"):
                    truth[f"s{i}.{j}"] = burn(0.00015)
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task(i) for i in range(8)))

    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    thread = threading.Thread(target=hog)
    thread.start()
    try:
        aio.run(main())
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(saved)
    errors = [
        abs(f.attributes["logcontext.cpu.user_s"] - truth[f.name]) / truth[f.name]
        for f in otel.finished()
        if f.name in truth
    ]
    assert len(errors) == 240
    assert statistics.mean(errors) < 0.15


# -- background processes ---------------------------------------------------------------------


async def test_background_span_linked_not_parented(tracing: Harness) -> None:
    """Item 37: ``bgproc.<desc>`` is a root span active inside, linked to (not under) the spawner."""
    seen: dict[str, Any] = {}

    async def bg() -> None:
        ctx = LoggingContext("job-1")
        with ctx, start_background_span("job", ctx) as span:
            seen["span"] = span
            seen["active"] = lt.active_span()
            with lt.start_span("inside"):
                await asyncio.sleep(0)
            ctx.record_db_txn(0.1)
        seen["ctx"] = ctx

    with LoggingContext("GET-1"), lt.start_span("request"):
        await asyncio.create_task(bg())
    assert seen["active"] is seen["span"]
    by = tracing.by_name()
    req, job = by["request"], by["bgproc.job"]
    assert by["inside"].parent_id == job.span_id
    assert_usage(job, seen["ctx"])
    if tracing.kind == "otel":
        assert job.parent_id is None
        assert job.trace_id != req.trace_id
        assert job.links == [(req.trace_id, req.span_id, {"logcontext.link": "spawned_by"})]
        assert req.links == [(job.trace_id, job.span_id, {"logcontext.link": "spawned"})]
    else:
        if tracing.kind == "jaeger":
            assert job.follows_from == [req.span_id]
        spawned = [e for e in req.events if e[0] == "logcontext.spawned"]
        assert spawned and spawned[0][1]["logcontext.trace_id"] == f"{job.trace_id:032x}"


def test_background_span_without_spawner(otel: Harness) -> None:
    """With no active span, the background span is a plain root without links."""
    ctx = LoggingContext("job-2")
    with ctx, start_background_span("alone", ctx):
        pass
    (f,) = otel.finished()
    assert f.name == "bgproc.alone" and f.parent_id is None and f.links == []
    assert f.attributes["logcontext.name"] == "job-2"


def test_background_span_off_is_null() -> None:
    """Tracing off: ``start_background_span`` is the shared null manager and sets no span."""
    ctx = LoggingContext("job-3")
    with ctx, start_background_span("x", ctx) as span:
        assert not span.is_recording()
    assert ctx.span is None


def test_context_span_is_ended_by_context_exit(otel: Harness) -> None:
    """A context's owned span ends when the context exits, with its inclusive usage."""
    ctx = LoggingContext("GET-9")
    with ctx:
        with lt._api.start_context_span(ctx, "request", kind="server"):
            ctx.record_db_txn(0.3)
            child = LoggingContext("GET-9", parent_context=ctx)
            with child:
                child.record_event_fetch(4)
        assert otel.finished() == []
    (f,) = otel.finished()
    assert_usage(f, ctx)
    assert f.attributes["logcontext.db.event_fetches"] == 4


async def test_run_as_background_process_span(tracing: Harness) -> None:
    """``run_as_background_process`` opens ``bgproc.<desc>`` linked to the spawner, with usage."""
    from logcontext import run_as_background_process

    seen: dict[str, Any] = {}

    async def job() -> None:
        seen["ctx"] = current_context()
        seen["span"] = lt.active_span()
        current_context().record_db_txn(0.2)
        await asyncio.sleep(0)

    with LoggingContext("GET-3"), lt.start_span("request"):
        await run_as_background_process("purge", job)
    by = tracing.by_name()
    req, bg = by["request"], by["bgproc.purge"]
    assert seen["span"] is not None and seen["span"].context.span_id == bg.span_id
    assert bg.attributes["logcontext.name"] == str(seen["ctx"])
    assert bg.attributes["logcontext.db.txn_count"] == 1
    assert req.attributes["logcontext.db.txn_count"] == 0
    if tracing.kind == "otel":
        assert bg.parent_id is None and bg.links[0][1] == req.span_id
    else:
        assert any(e[0] == "logcontext.spawned" for e in req.events)


def test_trace_ids_hook_for_log_records(otel: Harness) -> None:
    """``_hooks.trace_ids`` gives the active span's hex ids while tracing is on, else None."""
    from logcontext import _hooks

    assert _hooks.trace_ids is not None
    assert _hooks.trace_ids() is None
    with lt.start_span("x") as span:
        assert _hooks.trace_ids() == (span.context.trace_id_hex, span.context.span_id_hex)
    lt.shutdown_tracing(2.0)
    assert _hooks.trace_ids is None


def test_nesting_across_tasks_uvloop(otel: Harness) -> None:
    """Under uvloop too, task spans parent to the creator's span and never leak back."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async def worker(i: int) -> None:
            with lt.start_span(f"t{i}"):
                await asyncio.sleep(0)

        with LoggingContext("req"), lt.start_span("root") as root:
            await asyncio.gather(*(worker(i) for i in range(3)))
            assert lt.active_span() is root

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    by = otel.by_name()
    assert all(by[f"t{i}"].parent_id == by["root"].span_id for i in range(3))
    assert otel.finished()[-1].name == "root"


def test_reinit_and_shutdown_with_open_scope(make_harness: Any) -> None:
    """A scope opened before re-init or shutdown still closes on its own backend, once."""
    first = make_harness("otel")
    cm = lt.start_span("old")
    cm.__enter__()
    lt.set_tag("no-op?", 1)
    second = make_harness("mock")
    with lt.start_span("new"):
        pass
    cm.__exit__(None, None, None)
    assert [f.name for f in first.finished()] == ["old"]
    assert [f.name for f in second.finished()] == ["new"]
    cm2 = lt.start_span("closing")
    cm2.__enter__()
    assert lt.shutdown_tracing(2.0) is True
    cm2.__exit__(None, None, None)
    assert [f.name for f in second.finished()] == ["new", "closing"]
    lt.set_tag("k", "v")  # off again: nothing to set, nothing raised
    assert lt.active_span() is None
