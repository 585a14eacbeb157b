"""Token traps (§6.4, §10 item 39): scopes exited in a foreign ``Context`` end cleanly.

Each case checks: no "Failed to detach context" line, the span ended exactly once, nothing
raised, the ambient context and active span untouched, one ``foreign-exit`` report.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from _tracing_harness import Harness

import logcontext.tracing as lt
from logcontext import LoggingContext, _misuse, current_context


@pytest.fixture
def detach_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture everything OpenTelemetry logs, to prove no detach failure is logged."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    records = caplog.get_records("call")
    assert not [r for r in records if "Failed to detach" in r.getMessage()]
    assert not [r for r in records if r.name.startswith("opentelemetry") and r.exc_info]


class _Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield


def _foreign_exits() -> int:
    return _misuse.counts.get("foreign-exit", 0)


def _ended_once(h: Harness, name: str) -> None:
    assert [f.name for f in h.finished()].count(name) == 1


async def test_scope_exited_in_another_task(tracing: Harness, detach_log: Any) -> None:
    """A scope entered in task A and exited in task B ends its span; B's state is untouched."""
    before = _foreign_exits()
    cm = lt.start_span("moved")
    entered = asyncio.Event()
    proceed = asyncio.Event()

    async def a() -> None:
        cm.__enter__()
        entered.set()
        await proceed.wait()

    async def b() -> None:
        await entered.wait()
        with LoggingContext("b"), lt.start_span("b-span") as mine:
            cm.__exit__(None, None, None)
            assert lt.active_span() is mine
            assert str(current_context()) == "b"
        proceed.set()

    await asyncio.gather(asyncio.create_task(a()), asyncio.create_task(b()))
    assert lt.active_span() is None
    _ended_once(tracing, "moved")
    assert _foreign_exits() == before + 1


async def test_scope_exited_in_done_callback(otel: Harness, detach_log: Any) -> None:
    """A scope entered in a task and exited from its done-callback (a copy) ends once, quietly."""
    before = _foreign_exits()
    cm = lt.start_span("cb")
    spans: list[Any] = []

    async def owner() -> None:
        spans.append(cm.__enter__())
        await asyncio.sleep(0)

    task = asyncio.create_task(owner())
    exited = asyncio.Event()

    def on_done(_t: object) -> None:
        cm.__exit__(None, None, None)
        exited.set()

    task.add_done_callback(on_done)
    with LoggingContext("req") as req, lt.start_span("req-span") as mine:
        await exited.wait()
        assert lt.active_span() is mine
        assert current_context().parent_context is req  # type: ignore[union-attr]
    assert not spans[0].is_recording()
    _ended_once(otel, "cb")
    assert _foreign_exits() == before + 1


@pytest.mark.misuse_ok
def test_collected_coroutine_in_foreign_context(tracing: Harness, detach_log: Any) -> None:
    """A coroutine suspended inside ``LoggingContext`` + span, collected elsewhere, leaks nothing."""
    before = _foreign_exits()

    async def req() -> None:
        with LoggingContext("req"), lt.start_span("suspended"):
            await _Suspend()

    coro = req()
    contextvars.copy_context().run(coro.send, None)
    with LoggingContext("x"), lt.start_span("x-span") as xs:
        x = current_context()
        del coro
        gc.collect()
        assert current_context() is x
        assert lt.active_span() is xs
    _ended_once(tracing, "suspended")
    assert _foreign_exits() >= before + 1


@pytest.mark.misuse_ok
async def test_async_generator_closed_from_another_task(tracing: Harness, detach_log: Any) -> None:
    """An async generator holding a span, closed by another task, ends it once, quietly."""

    async def gen() -> Any:
        with lt.start_span("gen"):
            yield 1
            yield 2

    g = gen()

    async def consume() -> None:
        assert await g.__anext__() == 1

    await asyncio.create_task(consume())

    async def closer() -> None:
        with lt.start_span("closer") as c:
            await g.aclose()
            assert lt.active_span() is c

    await asyncio.create_task(closer())
    assert lt.active_span() is None
    _ended_once(tracing, "gen")


def test_double_exit_is_reported_not_repeated(otel: Harness) -> None:
    """Exiting a scope twice ends the span once and reports ``double-exit``."""
    cm = lt.start_span("twice")
    cm.__enter__()
    cm.__exit__(None, None, None)
    with pytest.raises(lt._api._misuse.LogContextError):
        cm.__exit__(None, None, None)
    _ended_once(otel, "twice")


def test_backend_failure_never_raises(otel: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """A backend that throws leaves user code running untraced, logged once."""

    class Broken:
        def start_span(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("backend down")

    backend = lt._api._backend
    assert backend is not None
    backend.tracer = Broken()  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="logcontext.tracing"):
        for _ in range(3):
            with lt.start_span("x") as span:
                assert not span.is_recording()

            @lt.trace
            def f() -> int:
                return 5

            assert f() == 5
    assert len([r for r in caplog.records if "start_span" in r.getMessage()]) == 1
