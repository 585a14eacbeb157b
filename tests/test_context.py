"""Core context semantics (spec §1, §10 items 1, 10, 11, 12, 13, 14)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading

import pytest

import logcontext
from logcontext import (
    SENTINEL_CONTEXT,
    ContextRequest,
    LogContextError,
    LoggingContext,
    PreserveLoggingContext,
    current_context,
    nested_logging_context,
    set_current_context,
)
from logcontext.testing import MisuseDuringTest, strict


def test_with_block_sets_and_restores() -> None:
    """Inside ``with LoggingContext("test")`` the current context is "test"; afterwards the sentinel."""
    with LoggingContext("test") as ctx:
        assert str(current_context()) == "test"
        assert current_context() is ctx
    assert current_context() is SENTINEL_CONTEXT
    assert ctx.finished


def test_sentinel_shape() -> None:
    """The sentinel is falsy, named "sentinel", and its recording methods are no-ops."""
    s = SENTINEL_CONTEXT
    assert not s
    assert str(s) == "sentinel" == s.name
    assert s.parent_context is None and s.request is None and s.span is None
    assert s.tag == "" and s.finished is False
    s.add_cputime(1.0)
    s.record_db_txn(1.0)
    s.record_db_scheduled(1.0)
    s.record_event_fetch(3)
    assert s.get_resource_usage() == logcontext.ContextResourceUsage()
    assert s.server_name == logcontext._config.config.default_server_name


def test_name_must_be_nonempty_str() -> None:
    """A context name is a non-empty str: TypeError / ValueError otherwise."""
    with pytest.raises(TypeError):
        LoggingContext(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoggingContext("")


def test_options_are_keyword_only_and_name_may_be_a_keyword() -> None:
    """Only the name may be positional (it may also be passed by keyword); the documented
    signature is what ``inspect`` reports; a subclass keeps its own."""
    import inspect

    assert str(inspect.signature(LoggingContext)) == (
        "(name: 'str', *, parent_context: 'LoggingContextOrSentinel | None' = None, "
        "server_name: 'str | None' = None, request: 'ContextRequest | None' = None, "
        "tag: 'str' = '') -> 'None'"
    )
    parent = LoggingContext("p")
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        LoggingContext("x", parent)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        LoggingContext("x", None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing 1 required argument: 'name'"):
        LoggingContext()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'name'"):
        LoggingContext("x", name="y")  # type: ignore[misc]
    child = LoggingContext(name="c", parent_context=parent, server_name="hs", tag="t")
    assert (child.name, child.parent_context, child.server_name, child.tag) == ("c", parent, "hs", "t")

    class Sub(LoggingContext):
        def __init__(self, label: str, extra: int = 0) -> None:
            super().__init__(label)

    assert str(inspect.signature(Sub)) == "(label: 'str', extra: 'int' = 0) -> 'None'"


def test_construction_activates_nothing() -> None:
    """Building a context neither enters it nor captures a previous context."""
    with LoggingContext("outer"):
        ctx = LoggingContext("built-here")
    assert current_context() is SENTINEL_CONTEXT
    with ctx:
        assert current_context() is ctx
    assert current_context() is SENTINEL_CONTEXT


def test_inheritance_of_server_name_and_request() -> None:
    """server_name: explicit > parent's > default; request: explicit > parent's (the same object)."""
    req = ContextRequest("1", "127.0.0.1", "site", "GET", "/x", "HTTP/1.1", "ua")
    parent = LoggingContext("p", server_name="hs1", request=req, tag="t")
    child = LoggingContext("c", parent_context=parent)
    assert child.server_name == "hs1"
    assert child.request is req
    assert child.tag == ""
    other = LoggingContext("o", parent_context=parent, server_name="hs2")
    assert other.server_name == "hs2"
    assert LoggingContext("plain").server_name == logcontext._config.config.default_server_name


def test_nested_logging_context_names_and_parents() -> None:
    """nested_logging_context("bar") under "foo" returns an un-entered "foo-bar" child of "foo"."""
    with LoggingContext("foo") as foo:
        bar = nested_logging_context("bar")
        assert current_context() is foo
        assert bar.name == "foo-bar" and bar.parent_context is foo


@pytest.mark.misuse_ok
def test_nested_logging_context_from_sentinel(caplog: pytest.LogCaptureFixture) -> None:
    """From the sentinel nested_logging_context reports sentinel-usage and returns a parentless context."""
    with caplog.at_level(logging.WARNING, logger="logcontext.misuse"):
        ctx = nested_logging_context("bar-sentinel-test")
    assert ctx.name == "sentinel-bar-sentinel-test" and ctx.parent_context is None
    assert any("sentinel-usage" in r.getMessage() for r in caplog.records)


def test_set_current_context_none_raises() -> None:
    """set_current_context(None) raises TypeError (Synapse #7179)."""
    with pytest.raises(TypeError):
        set_current_context(None)  # type: ignore[arg-type]


def test_set_current_context_returns_previous() -> None:
    """set_current_context returns the previous context."""
    a = LoggingContext("a")
    prev = set_current_context(a)
    try:
        assert prev is SENTINEL_CONTEXT and current_context() is a
    finally:
        assert set_current_context(prev) is a


def test_exit_mismatch_restores_and_raises_under_strict() -> None:
    """A bare set inside ``with A`` makes A's exit report exit-mismatch, after restoring the pre-A value."""
    with pytest.raises(LogContextError, match="expected A but found B"):
        with LoggingContext("A"):
            set_current_context(LoggingContext("B"))
    assert current_context() is SENTINEL_CONTEXT


@pytest.mark.misuse_ok
def test_exit_mismatch_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Under ``warn`` the mismatch is logged (once per context) and the pre-enter value is restored."""
    with caplog.at_level(logging.WARNING, logger="logcontext.misuse"):
        a = LoggingContext("A")
        with a:
            set_current_context(LoggingContext("B"))
        assert current_context() is SENTINEL_CONTEXT
    lines = [r.getMessage() for r in caplog.records if "exit-mismatch" in r.getMessage()]
    assert len(lines) == 1 and "expected A but found B" in lines[0]


def test_preserve_logging_context_runs_block_in_sentinel() -> None:
    """PreserveLoggingContext() runs its block in the sentinel and restores the context after."""
    with LoggingContext("foo") as foo:
        with PreserveLoggingContext():
            assert current_context() is SENTINEL_CONTEXT
        assert current_context() is foo
        assert not foo.finished


def test_preserve_reactivates_without_finishing() -> None:
    """PreserveLoggingContext(ctx) activates ctx without marking it finished."""
    ctx = LoggingContext("req")
    with PreserveLoggingContext(ctx):
        assert current_context() is ctx
    assert not ctx.finished
    assert current_context() is SENTINEL_CONTEXT


def test_restart_finished_reported() -> None:
    """Entering a finished context reports restart-finished (raise policy under strict)."""
    ctx = LoggingContext("once")
    with ctx:
        pass
    with pytest.raises(LogContextError, match="again"):
        with ctx:
            pass
    assert current_context() is SENTINEL_CONTEXT


@pytest.mark.misuse_ok
def test_reenter_active_stacks_tokens() -> None:
    """Re-entering an active context reports reenter-active and the tokens stack."""
    logcontext.configure(misuse="ignore")
    ctx = LoggingContext("r")
    before = logcontext._misuse.counts["reenter-active"]
    with ctx:
        with ctx:
            assert current_context() is ctx
        assert current_context() is ctx
    assert current_context() is SENTINEL_CONTEXT
    assert logcontext._misuse.counts["reenter-active"] == before + 1


def test_double_exit_reported() -> None:
    """Exiting a context twice reports double-exit."""
    ctx = LoggingContext("d")
    ctx.__enter__()
    ctx.__exit__(None, None, None)
    with pytest.raises(LogContextError, match="exited more times"):
        ctx.__exit__(None, None, None)


def test_foreign_exit_leaves_ambient_context() -> None:
    """A context exited in another contextvars.Context leaves the ambient value alone (foreign-exit)."""
    ctx = LoggingContext("req")
    inner = contextvars.copy_context()
    inner.run(ctx.__enter__)
    with LoggingContext("x") as x:
        with strict(foreign_exit=False):
            ctx.__exit__(None, None, None)
        assert current_context() is x
    assert ctx.finished


async def test_collected_coroutine_does_not_leak() -> None:
    """A coroutine suspended in a context and collected while "x" is current leaves "x" current."""

    async def holder(ev: asyncio.Event) -> None:
        with LoggingContext("req"):
            await ev.wait()

    ev = asyncio.Event()
    coro = holder(ev)
    ctx_copy = contextvars.copy_context()
    ctx_copy.run(coro.send, None)  # suspended inside the with block, in another Context
    with LoggingContext("x") as x:
        del coro
        gc.collect()
        assert current_context() is x


def test_tasks_see_their_own_context() -> None:
    """A task created in "foo" sees "foo"; its own "bar" leaves the creator in "foo"."""

    async def main() -> None:
        with LoggingContext("foo") as foo:

            async def child() -> str:
                assert current_context() is foo
                with LoggingContext("bar"):
                    await asyncio.sleep(0)
                    return str(current_context())

            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(child())
            assert t.result() == "bar"
            results = await asyncio.gather(child(), child())
            assert results == ["bar", "bar"]
            assert current_context() is foo

    asyncio.run(main())


def test_competing_contexts_across_sleeps() -> None:
    """Two tasks keep their own contexts across sleeps; all end in the sentinel."""

    async def competitor() -> None:
        assert current_context() is SENTINEL_CONTEXT
        with LoggingContext("competing") as c:
            await asyncio.sleep(0)
            assert current_context() is c

    async def main() -> None:
        with LoggingContext("foo") as foo:
            t = asyncio.get_running_loop().create_task(competitor(), context=contextvars.Context())
            await asyncio.sleep(0)
            assert current_context() is foo
            await asyncio.sleep(0)
            assert current_context() is foo
            await t
        assert current_context() is SENTINEL_CONTEXT

    asyncio.run(main())


def test_new_thread_starts_in_sentinel() -> None:
    """A new thread starts in the sentinel, whatever context its creator has."""
    seen: list[object] = []
    with LoggingContext("creator"):
        t = threading.Thread(target=lambda: seen.append(current_context()))
        t.start()
        t.join()
    assert seen == [SENTINEL_CONTEXT]


def test_strict_fails_on_recorded_report() -> None:
    """strict() fails at exit when a report that could not raise was recorded."""
    with pytest.raises(MisuseDuringTest, match="late-usage"):
        with strict():
            ctx = LoggingContext("late")
            with ctx:
                pass
            ctx.record_db_txn(0.1)  # late usage: recorded, not raised


def test_child_context_builds_what_the_constructor_builds() -> None:
    """The library's fast child constructor sets every slot the constructor sets, to the same values."""
    from logcontext._context import child_context

    parent = LoggingContext("p", server_name="hs", tag="t")
    fast = child_context(parent)
    built = LoggingContext("p", parent_context=parent)
    for slot in LoggingContext.__slots__:
        if slot == "__weakref__":
            continue
        assert hasattr(fast, slot) == hasattr(built, slot), slot
        if hasattr(built, slot):
            assert getattr(fast, slot) == getattr(built, slot), slot
    assert fast.parent_context is parent and fast.server_name == "hs" and fast.tag == ""
