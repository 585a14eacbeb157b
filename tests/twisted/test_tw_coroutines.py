"""Contexts follow Twisted coroutines, ``inlineCallbacks`` and Deferred chains (spec §4, §10 W)."""

from __future__ import annotations

import gc
from collections.abc import Generator
from typing import Any

import pytest
from _twisted_harness import TwistedHarness
from twisted.internet import defer
from twisted.internet.defer import Deferred

import logcontext.twisted as lt
from logcontext import (
    LoggingContext,
    MisuseReport,
    PreserveLoggingContext,
    _misuse,
    current_context,
    set_current_context,
    set_misuse_hook,
)
from logcontext.aio import MeteredCoroutine
from logcontext.clock import FakeClock, use_clock


def test_with_block_in_coroutine_survives_reactor_sleeps(tw: TwistedHarness) -> None:
    """§10.1 W: in ``with LoggingContext("test")`` a coroutine sees "test" across sleeps; after: sentinel."""
    seen: list[str] = []

    async def body() -> None:
        with LoggingContext("test"):
            seen.append(str(current_context()))
            await tw.sleep(0.001)
            seen.append(str(current_context()))
        seen.append(str(current_context()))

    tw.wait(lt.ensure_deferred(body()))
    assert seen == ["test", "test", "sentinel"]
    assert not current_context()


def test_competing_coroutines_keep_their_own_contexts(tw: TwistedHarness) -> None:
    """§10.2 W: "foo" sleeps twice while a competitor enters "competing"; each keeps its own."""
    log: list[tuple[str, str]] = []

    async def foo() -> None:
        with LoggingContext("foo"):
            await tw.sleep(0.002)
            log.append(("foo", str(current_context())))
            await tw.sleep(0.002)
            log.append(("foo", str(current_context())))
        log.append(("foo-after", str(current_context())))

    async def competitor() -> None:
        log.append(("competitor-start", str(current_context())))
        with LoggingContext("competing"):
            await tw.sleep(0.001)
            log.append(("competitor", str(current_context())))
        log.append(("competitor-after", str(current_context())))

    d1 = lt.ensure_deferred(foo())
    d2 = lt.ensure_deferred(competitor())
    tw.wait(defer.gatherResults([d1, d2]))
    assert ("competitor-start", "sentinel") in log
    assert ("competitor", "competing") in log
    assert log.count(("foo", "foo")) == 2
    assert ("foo-after", "sentinel") in log and ("competitor-after", "sentinel") in log
    assert not current_context()


def test_inline_callbacks_context_and_return_value(tw: TwistedHarness) -> None:
    """``inline_callbacks`` keeps the context across yields; ``return`` and yielded coroutines work."""
    seen: list[str] = []

    async def inner() -> int:
        seen.append("inner:" + str(current_context()))
        await tw.sleep(0.001)
        return 41

    @lt.inline_callbacks
    def gen() -> Generator[Any, Any, int]:
        with LoggingContext("ic"):
            yield tw.sleep(0.001)
            seen.append(str(current_context()))
            value = yield inner()
            seen.append(str(current_context()))
        return value + 1

    assert tw.wait(gen()) == 42
    assert seen == ["ic", "inner:ic", "ic"]


def test_inline_callbacks_exceptions_reach_the_generator(tw: TwistedHarness) -> None:
    """A failing Deferred is thrown into the generator, which can catch it in its context."""

    def boom() -> Deferred[None]:
        return defer.fail(KeyError("x"))

    @lt.inline_callbacks
    def gen() -> Generator[Any, Any, str]:
        with LoggingContext("g"):
            try:
                yield boom()
            except KeyError:
                return str(current_context())
        return "not caught"

    assert tw.wait(gen()) == "g"


def test_inline_callbacks_rejects_non_generators() -> None:
    """Decorating a function that does not return a generator fails with ``TypeError`` when called."""

    @lt.inline_callbacks
    def not_gen() -> Any:
        return 1

    with pytest.raises(TypeError, match="generator"):
        not_gen()
    with pytest.raises(TypeError):
        lt.inline_callbacks(3)  # type: ignore[arg-type]


def test_fired_deferred_callback_runs_coroutine_in_firer_context() -> None:
    """§10.6: callbacks fired in "foo" see "foo"; a coroutine started there leaves "foo" intact."""
    seen: list[str] = []

    async def child() -> None:
        with LoggingContext("child"):
            seen.append(str(current_context()))

    def cb(_: object) -> Deferred[None]:
        seen.append(str(current_context()))
        return lt.ensure_deferred(child())

    d: Deferred[None] = Deferred()
    d.addCallback(cb)
    d.addCallback(lambda _: seen.append(str(current_context())))
    with LoggingContext("foo"):
        d.callback(None)
        seen.append(str(current_context()))
    assert seen == ["foo", "child", "foo", "foo"]

    d2: Deferred[None] = Deferred()
    d2.addCallback(lambda _: seen.append("p:" + str(current_context())))
    with LoggingContext("foo2"), PreserveLoggingContext():
        d2.callback(None)
    assert seen[-1] == "p:sentinel"


def test_plain_callbacks_follow_the_firer_bound_ones_the_adder() -> None:
    """Raw callbacks run in the firer's context; ``add_callbacks_bound`` ones in the adder's."""
    seen: list[str] = []
    d_ok: Deferred[int] = Deferred()
    d_err: Deferred[int] = Deferred()
    with PreserveLoggingContext(LoggingContext("adder")):  # not finished: bound calls charge it later
        d_ok.addCallback(lambda _: seen.append("raw:" + str(current_context())))
        lt.add_callbacks_bound(d_ok, lambda _: seen.append("bound:" + str(current_context())))
        lt.add_callbacks_bound(
            d_err,
            lambda _: seen.append("wrong"),
            lambda f: seen.append("errback:" + str(current_context())),
        )
    with LoggingContext("firer"):
        d_ok.callback(1)
        d_err.errback(ValueError("x"))
    assert seen == ["raw:firer", "bound:adder", "errback:adder"]
    with pytest.raises(TypeError):
        lt.add_callbacks_bound(object(), print)  # type: ignore[arg-type]


def _charged_after_resume(start: Any) -> float:
    """CPU charged to "x" for 5 fake ms burnt after a resumption from the sentinel."""
    clock = FakeClock()
    gate: Deferred[None] = Deferred()
    ctx: list[LoggingContext] = []

    async def body() -> None:
        with LoggingContext("x") as x:
            ctx.append(x)
            await gate
            clock.advance(ms=5)

    with use_clock(clock):
        d = start(body())
        with PreserveLoggingContext():  # resumed from the sentinel, like a reactor callback
            gate.callback(None)
        assert d.called
    return ctx[0].get_resource_usage().ru_utime


def test_ensure_deferred_meters_each_step() -> None:
    """A step resumed from the sentinel is charged to the coroutine's context (Twisted's runner: not)."""
    assert _charged_after_resume(lt.ensure_deferred) == pytest.approx(0.005)
    assert _charged_after_resume(defer.ensureDeferred) == 0.0


def test_patch_coroutine_runner_meters_unedited_code() -> None:
    """``patch_coroutine_runner`` makes ``ensureDeferred``/``fromCoroutine`` meter; unpatch restores."""
    lt.patch_coroutine_runner()
    try:
        lt.patch_coroutine_runner()  # idempotent
        assert lt.is_coroutine_runner_patched()
        assert _charged_after_resume(defer.ensureDeferred) == pytest.approx(0.005)
        assert _charged_after_resume(Deferred.fromCoroutine) == pytest.approx(0.005)
        assert _charged_after_resume(lt.ensure_deferred) == pytest.approx(0.005)
    finally:
        lt.unpatch_coroutine_runner()
    assert not lt.is_coroutine_runner_patched()
    assert _charged_after_resume(defer.ensureDeferred) == 0.0


def test_inline_callbacks_meters_each_step() -> None:
    """Generator steps resumed from the sentinel are charged to the generator's context."""
    clock = FakeClock()
    gate: Deferred[None] = Deferred()
    box: list[LoggingContext] = []

    @lt.inline_callbacks
    def gen() -> Generator[Any, Any, None]:
        with LoggingContext("g") as g:
            box.append(g)
            yield gate
            clock.advance(ms=3)

    with use_clock(clock):
        d = gen()
        with PreserveLoggingContext():
            gate.callback(None)
        assert d.called
    assert box[0].get_resource_usage().ru_utime == pytest.approx(0.003)


def test_nested_step_gives_the_ledger_back_to_the_firer() -> None:
    """A coroutine resumed inside another context's block hands the CPU back to that block afterwards."""
    clock = FakeClock()
    gate: Deferred[None] = Deferred()

    async def body() -> None:
        with LoggingContext("inner"):
            await gate
            clock.advance(ms=2)

    with use_clock(clock):
        d = lt.ensure_deferred(body())
        with LoggingContext("outer") as outer:
            clock.advance(ms=1)
            gate.callback(None)
            clock.advance(ms=4)
        assert d.called
    assert outer.get_resource_usage().ru_utime == pytest.approx(0.005)


def test_ensure_deferred_passthrough_and_errors() -> None:
    """A Deferred is returned as is; a non-coroutine raises ``TypeError``; metering wraps once."""
    d: Deferred[int] = defer.succeed(1)
    assert lt.ensure_deferred(d) is d
    with pytest.raises(TypeError, match="coroutine"):
        lt.ensure_deferred(42)  # type: ignore[arg-type]

    async def f() -> int:
        return 7

    coro = f()
    wrapped = MeteredCoroutine(coro)
    assert lt.ensure_deferred(wrapped).result == 7  # type: ignore[attr-defined]


def test_make_deferred_yieldable_semantics() -> None:
    """§10.9: ``make_deferred_yieldable(d) is d``; coroutines become Deferreds; other types raise."""
    d: Deferred[int] = Deferred()
    assert lt.make_deferred_yieldable(d) is d

    async def f() -> int:
        return 3

    assert lt.make_deferred_yieldable(f()).result == 3  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="Deferred"):
        lt.make_deferred_yieldable(3)  # type: ignore[arg-type]
    d.callback(1)


@pytest.mark.misuse_ok
def test_collected_coroutine_exits_foreign_without_leaking() -> None:
    """§10.12 W: a coroutine suspended in "req", collected in "x": "x" stays, one ``foreign-exit``."""
    reports: list[MisuseReport] = []
    set_misuse_hook(reports.append)
    try:
        gate: Deferred[None] = Deferred()

        async def body(g: Deferred[None]) -> None:
            with LoggingContext("req"):
                await g

        d = lt.ensure_deferred(body(gate))
        del d, gate
        with LoggingContext("x") as x:
            gc.collect()
            assert current_context() is x
    finally:
        set_misuse_hook(None)
    kinds = [r.kind for r in reports]
    assert kinds.count("foreign-exit") == 1, kinds
    assert not [r for r in reports if r.kind != "foreign-exit"], reports


@pytest.mark.misuse_ok
def test_child_outliving_parent_reports_late_usage_once() -> None:
    """§10.13 W: a coroutine outliving its parent's block feeds the parent and ``late_usage``; one report."""
    clock = FakeClock()
    reports: list[MisuseReport] = []
    set_misuse_hook(reports.append)
    gates: list[Deferred[None]] = [Deferred() for _ in range(1000)]

    async def child() -> None:
        for g in gates:
            await g
            clock.advance(ns=1000)

    try:
        with use_clock(clock):
            with LoggingContext("parent") as parent:
                d = lt.ensure_deferred(child())
            for g in gates:
                g.callback(None)
            assert d.called
    finally:
        set_misuse_hook(None)
    assert [r.kind for r in reports] == ["late-usage"]
    assert parent.late_usage is not None
    assert parent.late_usage.ru_utime == pytest.approx(0.001)
    assert parent.get_resource_usage().ru_utime == pytest.approx(0.001)
    assert _misuse.counts["late-usage"] >= 1


def test_bare_set_inside_coroutine_does_not_reach_the_caller(tw: TwistedHarness) -> None:
    """A bare ``set_current_context`` inside a Twisted coroutine stays in its own ``Context``."""

    async def body() -> None:
        set_current_context(LoggingContext("inside"))
        await tw.sleep(0.001)

    tw.wait(lt.ensure_deferred(body()))
    assert not current_context()


@pytest.mark.misuse_ok
def test_step_never_hands_the_ledger_back_to_a_finished_context() -> None:
    """A step starting while a finished context is still charged ends in the sentinel, not there."""
    from logcontext import SENTINEL_CONTEXT, _ledger

    clock = FakeClock()
    ran: list[str] = []

    async def body() -> None:
        ran.append(str(current_context()))

    with use_clock(clock):
        with LoggingContext("done") as done:
            pass
        led = _ledger.get_ledger()
        led.charged = done  # what a foreign exit can leave behind
        try:
            lt.ensure_deferred(body())
            after = led.charged
        finally:
            if led.charged is done:
                led.charged = SENTINEL_CONTEXT
    assert ran == ["sentinel"]
    assert after is SENTINEL_CONTEXT


def test_cancelling_a_metered_coroutine_exits_its_context_cleanly() -> None:
    """``d.cancel()`` throws ``CancelledError`` through the metering wrapper; the ``with`` exits normally."""
    gate: Deferred[None] = Deferred()
    seen: list[str] = []

    async def body() -> None:
        with LoggingContext("cancelled") as ctx:
            try:
                await gate
            except defer.CancelledError:
                seen.append(str(current_context()))
                raise
        seen.append("unreachable" if not ctx.finished else "exited")

    d = lt.ensure_deferred(body())
    d.cancel()
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert seen == ["cancelled"]
    assert failures and failures[0].check(defer.CancelledError)
    assert not current_context()


def test_inline_callbacks_return_value_still_works() -> None:
    """The deprecated ``returnValue()`` ends an ``inline_callbacks`` generator with that value."""
    import warnings

    @lt.inline_callbacks
    def gen() -> Generator[Any, Any, None]:
        yield defer.succeed(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            defer.returnValue(5)  # type: ignore[attr-defined]

    assert gen().result == 5  # type: ignore[attr-defined]


def test_run_in_background_awaits_other_awaitables() -> None:
    """An awaitable that is neither a coroutine nor a Deferred is awaited by a small coroutine."""

    class Waiter:
        def __init__(self) -> None:
            self.d: Deferred[int] = Deferred()

        def __await__(self) -> Generator[Any, Any, int]:
            return (yield from self.d.__await__())

    w = Waiter()
    with PreserveLoggingContext(LoggingContext("foo")):
        d = lt.run_in_background(lambda: w)
    assert not d.called
    w.d.callback(9)
    assert d.result == 9  # type: ignore[attr-defined]
