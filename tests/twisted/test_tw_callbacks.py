"""Reactor callbacks, looping calls and the ported helpers (spec §4, §10 items 4, 5, 7–9)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from _twisted_harness import TwistedHarness
from twisted.internet import defer
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred

import logcontext.twisted as lt
from logcontext import (
    LoggingContext,
    MisuseReport,
    PreserveLoggingContext,
    current_context,
    set_current_context,
    set_misuse_hook,
)
from logcontext.clock import FakeClock, use_clock


def _asyncio_reactor_timer_per_call() -> bool:
    """Whether this Twisted's asyncio reactor maps each ``callLater`` to its own ``loop.call_later``."""
    import inspect

    return "call_later(" in inspect.getsource(AsyncioSelectorReactor.callLater)


def test_call_later_sees_scheduler_context_raw_one_does_not(tw: TwistedHarness) -> None:
    """§10.4 W: ``call_later`` sees the scheduler's context; raw ``callLater`` does not (default reactor)."""
    seen: dict[str, object] = {}
    foo = LoggingContext("foo")
    with PreserveLoggingContext(foo):
        lt.call_later(tw.reactor, 0.001, lambda: seen.__setitem__("ours", current_context()))
        tw.reactor.callLater(0.001, lambda: seen.__setitem__("raw", current_context()))
    tw.spin(lambda: len(seen) == 2)
    assert seen["ours"] is foo
    if tw.kind == "asyncio" and _asyncio_reactor_timer_per_call():
        assert seen["raw"] is foo  # older Twisted: one loop.call_later per call
    else:
        # Default reactor: nothing captured. Newer asyncio reactor: install() re-arms its
        # shared timer in an empty Context (see the next test for what happens without).
        assert not seen["raw"]


def test_raw_call_later_on_asyncio_reactor_borrows_another_callers_context() -> None:
    """Without ``install``, raw asyncio-reactor timers can run in another scheduler's context."""
    import asyncio

    if _asyncio_reactor_timer_per_call():
        pytest.skip("this Twisted maps each callLater to loop.call_later")
    loop = asyncio.new_event_loop()
    r = AsyncioSelectorReactor(loop)
    try:
        seen: dict[str, object] = {}
        a, c = LoggingContext("a"), LoggingContext("c")
        with PreserveLoggingContext(a):
            r.callLater(0.02, lambda: seen.__setitem__("a", current_context()))
        with PreserveLoggingContext(c):
            r.callLater(0.001, lambda: seen.__setitem__("c", current_context()))
        for _ in range(200):
            if len(seen) == 2:
                break
            r.iterate(0.002)
        assert seen["c"] is c
        assert seen["a"] is c  # a's call ran in c's copied Context
    finally:
        for dc in r.getDelayedCalls():
            dc.cancel()
        r.disconnectAll()
        loop.close()


def test_call_later_is_metered_and_validates(tw: TwistedHarness) -> None:
    """A ``call_later`` callback's CPU is charged to the captured context; bad delay/fn raise."""
    clock = FakeClock()
    foo = LoggingContext("foo")
    done: list[bool] = []

    def burn() -> None:
        clock.advance(ms=4)
        done.append(True)

    with use_clock(clock):
        with PreserveLoggingContext(foo):
            lt.call_later(tw.reactor, 0, burn)
        tw.spin(lambda: bool(done))
    assert foo.get_resource_usage().ru_utime == pytest.approx(0.004)
    with pytest.raises(ValueError, match="delay"):
        lt.call_later(tw.reactor, -1, burn)
    with pytest.raises(TypeError, match="callable"):
        lt.call_later(tw.reactor, 0, "nope")  # type: ignore[arg-type]


def test_looping_call_runs_each_iteration_in_a_fresh_context(tw: TwistedHarness) -> None:
    """§10.5: iterations run in a new parentless context ``looping_call``, neither sentinel nor "foo"."""
    seen: list[Any] = []
    with PreserveLoggingContext(LoggingContext("foo")):
        lc = lt.looping_call(tw.reactor, 0.001, lambda: seen.append(current_context()), now=True)
    try:
        tw.spin(lambda: len(seen) >= 3)
    finally:
        lc.stop()
    assert all(str(c) == "looping_call" for c in seen)
    assert all(c.parent_context is None for c in seen)
    assert len({id(c) for c in seen}) == len(seen)
    assert all(c.finished for c in seen)


def test_looping_call_named_async_iteration_keeps_context(tw: TwistedHarness) -> None:
    """An async iteration keeps its named context across an await; the next waits for it."""
    seen: list[tuple[str, str]] = []

    async def tick() -> None:
        before = str(current_context())
        await tw.sleep(0.001)
        seen.append((before, str(current_context())))

    lc = lt.looping_call(tw.reactor, 0.001, tick, name="cleanup")
    try:
        tw.spin(lambda: len(seen) >= 2)
    finally:
        lc.stop()
    assert seen[:2] == [("cleanup", "cleanup"), ("cleanup", "cleanup")]
    with pytest.raises(ValueError, match="name"):
        lt.looping_call(tw.reactor, 1, tick, name="")


def test_looping_call_failure_is_logged_and_stops(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing iteration stops the loop and is logged (no unhandled Deferred error)."""

    def bad() -> None:
        raise RuntimeError("tick failed")

    with caplog.at_level(logging.ERROR, logger="logcontext.twisted"):
        lc = lt.looping_call(tw.reactor, 0.001, bad, now=True)
        tw.spin(lambda: not lc.running)
    assert any("stopped after a failure" in r.getMessage() for r in caplog.records)


# -- run_in_background / make_deferred_yieldable ---------------------------------------------


@pytest.mark.parametrize("suspends", [False, True])
def test_run_in_background_keeps_foo_for_callee_and_polling_caller(
    tw: TwistedHarness, suspends: bool
) -> None:
    """§10.8 W: callee and polling caller see "foo" throughout, with and without suspension."""
    seen: list[str] = []

    async def callee() -> str:
        seen.append(str(current_context()))
        if suspends:
            await tw.sleep(0.001)
        seen.append(str(current_context()))
        return "ok"

    async def caller() -> None:
        with LoggingContext("foo"):
            d = lt.run_in_background(callee)
            seen.append(str(current_context()))
            while not d.called:
                await tw.sleep(0.001)
                seen.append(str(current_context()))
            assert (await d) == "ok"
            seen.append(str(current_context()))

    tw.wait(lt.ensure_deferred(caller()))
    assert seen and set(seen) == {"foo"}


def test_run_in_background_with_deferreds(tw: TwistedHarness) -> None:
    """§10.8 W: fired and called-but-paused Deferreds are returned as is; the caller stays in "foo"."""
    fired: Deferred[int] = defer.succeed(1)
    paused: Deferred[int] = Deferred()
    paused.pause()
    paused.callback(2)
    with PreserveLoggingContext(LoggingContext("foo")):
        assert lt.run_in_background(lambda: fired) is fired
        assert lt.run_in_background(lambda: paused) is paused
        assert str(current_context()) == "foo"
    paused.unpause()
    assert paused.result == 2  # type: ignore[attr-defined]


def test_run_in_background_values_and_sync_errors() -> None:
    """§10.9: a value gives a fired Deferred; a synchronous exception a failed one."""
    assert lt.run_in_background(lambda: 5).result == 5  # type: ignore[attr-defined]

    def boom() -> None:
        raise KeyError("k")

    d = lt.run_in_background(boom)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(KeyError)
    with pytest.raises(TypeError):
        lt.run_in_background(3)  # type: ignore[arg-type]


@pytest.mark.misuse_ok
def test_run_in_background_restores_a_changed_context() -> None:
    """§10.9: a sync ``fn`` that sets a context without restoring it → ``fn-changed-context``, restored."""
    reports: list[MisuseReport] = []
    set_misuse_hook(reports.append)
    try:
        foo = LoggingContext("foo")
        with PreserveLoggingContext(foo):
            lt.run_in_background(lambda: set_current_context(LoggingContext("other")))
            assert current_context() is foo
    finally:
        set_misuse_hook(None)
    assert [r.kind for r in reports] == ["fn-changed-context"]


def test_deferred_fired_from_background_fn_under_preserve(tw: TwistedHarness) -> None:
    """§10.7: "foo" via Preserve; a Deferred fired by a background fn: callbacks see "foo", no late usage."""
    seen: list[str] = []

    def fn() -> Deferred[None]:
        d: Deferred[None] = Deferred()
        lt.call_later(tw.reactor, 0, d.callback, None)
        return d

    foo = LoggingContext("foo")
    with PreserveLoggingContext(foo):
        d = lt.run_in_background(fn)
        lt.add_callbacks_bound(d, lambda _: seen.append(str(current_context())))
    tw.spin(lambda: bool(seen))
    assert seen == ["foo"]
    assert foo.late_usage is None and not foo.finished


# -- run_as_background_process -----------------------------------------------------------------


def test_background_process_has_its_own_parentless_context(tw: TwistedHarness) -> None:
    """The process runs in ``f"{desc}-{n}"``, parentless, across awaits; the spawner is untouched."""
    seen: list[Any] = []

    async def job(x: int) -> int:
        seen.append(current_context())
        await tw.sleep(0.001)
        seen.append(current_context())
        return x * 2

    with PreserveLoggingContext(LoggingContext("spawner")):
        d1 = lt.run_as_background_process("tw_job", job, 2)
        d2 = lt.run_as_background_process("tw_job", job, 3)
        assert str(current_context()) == "spawner"
    assert tw.wait(d1) == 4 and tw.wait(d2) == 6
    assert seen[0] is not seen[1]
    assert {id(seen[2]), id(seen[3])} == {id(seen[0]), id(seen[1])}  # same context after the await
    ctxs = {id(c): c for c in seen}
    assert all(str(c).startswith("tw_job-") for c in ctxs.values())
    nums = sorted(int(str(c).rsplit("-", 1)[1]) for c in ctxs.values())
    assert nums[1] == nums[0] + 1
    assert all(c.parent_context is None and c.finished for c in ctxs.values())


def test_background_process_errors_are_logged_and_give_none(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception is logged at ERROR on ``logcontext.background``; the result is None."""

    async def bad() -> None:
        await tw.sleep(0.001)
        raise ValueError("nope")

    with caplog.at_level(logging.ERROR, logger="logcontext.background"):
        assert tw.wait(lt.run_as_background_process("tw_bad", bad)) is None
    recs = [r for r in caplog.records if r.name == "logcontext.background"]
    assert len(recs) == 1 and "tw_bad" in recs[0].getMessage()
    assert recs[0].exc_info is not None
    with pytest.raises(ValueError, match="desc"):
        lt.run_as_background_process("", bad)


def test_call_later_does_not_seed_an_uninstalled_asyncio_timer() -> None:
    """Without ``install``, ``call_later`` in "foo" does not make later raw asyncio timers see "foo"."""
    import asyncio

    loop = asyncio.new_event_loop()
    r = AsyncioSelectorReactor(loop)
    try:
        seen: dict[str, object] = {}
        foo = LoggingContext("foo")
        r.callLater(0.02, lambda: seen.__setitem__("raw", current_context()))
        with PreserveLoggingContext(foo):
            lt.call_later(r, 0.001, lambda: seen.__setitem__("ours", current_context()))
        for _ in range(200):
            if len(seen) == 2:
                break
            r.iterate(0.002)
        assert seen["ours"] is foo
        assert not seen["raw"]
    finally:
        for dc in r.getDelayedCalls():
            dc.cancel()
        r.disconnectAll()
        loop.close()


def test_bind_callback_captures_and_meters() -> None:
    """``bind_callback`` runs later in the binder's context and charges it (``metered=False``: no charge)."""
    clock = FakeClock()
    foo = LoggingContext("foo")
    seen: list[object] = []

    def work() -> None:
        seen.append(current_context())
        clock.advance(ms=3)

    with use_clock(clock):
        with PreserveLoggingContext(foo):
            bound = lt.bind_callback(work)
            unmetered = lt.bind_callback(work, metered=False)
        bound()
        unmetered()
    assert seen == [foo, foo]
    assert foo.get_resource_usage().ru_utime == pytest.approx(0.003)
    assert bound.__name__ == "work"
