"""Twisted: Deferred-returning decorated functions, coroutines on a fake clock, producer traps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from _tracing_harness import Harness

import logcontext.tracing as lt
from logcontext import LoggingContext, current_context

defer = pytest.importorskip("twisted.internet.defer")
task = pytest.importorskip("twisted.internet.task")


@lt.trace_with_name("dfn")
@lt.tag_args
def returns_deferred(x: int, d: Any) -> Any:
    current_context().record_db_txn(0.5)
    return d


def test_deferred_returning_ok_and_failing(tracing: Harness) -> None:
    """Item 36 (W): the span outlives the call, ends in callback or errback, records the error."""
    ok, bad = defer.Deferred(), defer.Deferred()
    with LoggingContext("req") as req:
        with lt.start_span("outer") as outer:
            assert returns_deferred(1, ok) is ok
            assert lt.active_span() is outer
            assert returns_deferred(2, bad) is bad
            assert tracing.by_name().get("dfn") is None  # still open
        assert current_context() is req
    results: list[Any] = []
    ok.addCallback(results.append)
    bad.addErrback(lambda f: results.append(f.type))
    ok.callback("fine")
    bad.errback(ValueError("broken"))
    assert results == ["fine", ValueError]
    spans = [f for f in tracing.finished() if f.name == "dfn"]
    assert len(spans) == 2
    by_arg = {f.attributes["ARG.x"]: f for f in spans}
    assert not by_arg[1].error and by_arg[2].error
    assert by_arg[1].attributes["logcontext.db.txn_count"] == 1
    outer_id = tracing.by_name()["outer"].span_id
    assert all(f.parent_id == outer_id for f in spans)


def test_already_fired_deferred(otel: Harness) -> None:
    """A Deferred that fired before returning ends the span at once."""
    assert returns_deferred(3, defer.succeed(9)).result == 9
    (f,) = otel.finished()
    assert f.name == "dfn" and f.attributes["ARG.x"] == 3


def test_overlapping_coroutines_on_fake_clock(tracing: Harness) -> None:
    """Item 35 (W): ensureDeferred coroutines started at t=0 and t=2 hold spans across 4 s."""
    clock = task.Clock()
    seen: dict[str, Any] = {}

    async def worker(name: str) -> None:
        with lt.start_span(name) as s:
            await task.deferLater(clock, 4, lambda: None)
            seen[name] = lt.active_span() is s

    with LoggingContext("req"), lt.start_span("root") as root:
        d1 = defer.ensureDeferred(worker("task1"))
        clock.advance(2)
        d2 = defer.ensureDeferred(worker("task2"))
        assert lt.active_span() is root
        clock.advance(2)
        assert d1.called and not d2.called
        clock.advance(2)
        assert d2.called
    assert seen == {"task1": True, "task2": True}
    assert [f.name for f in tracing.finished()] == ["task1", "task2", "root"]
    by = tracing.by_name()
    assert by["task1"].parent_id == by["task2"].parent_id == by["root"].span_id


_PRODUCER_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import reactor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import logcontext.tracing as lt
    from logcontext import LoggingContext, current_context

    lines = []
    class Catch(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    logging.getLogger().addHandler(Catch())
    logging.getLogger().setLevel(logging.DEBUG)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lt.init_tracing("otel", tracer_provider=provider)

    class Producer:
        # A response producer: resumeProducing opens the span, stopProducing closes it,
        # each called by the reactor from its own callback (Synapse #19004).
        def resumeProducing(self):
            self.ctx = LoggingContext("GET-1")
            self.ctx.__enter__()
            self.cm = lt.start_span("response")
            self.cm.__enter__()
        def stopProducing(self):
            self.cm.__exit__(None, None, None)
            self.ctx.__exit__(None, None, None)
            later.append(self.cm.span.ended)

    later = []
    p = Producer()
    reactor.callLater(0, p.resumeProducing)
    reactor.callLater(0.01, p.stopProducing)
    reactor.callLater(0.02, lambda: later.append("after"))
    reactor.callLater(0.05, reactor.stop)
    reactor.run()
    names = [s.name for s in exporter.get_finished_spans()]
    failed = [l for l in lines if "Failed to detach" in l]
    from logcontext import _misuse
    foreign = _misuse.counts.get("foreign-exit", 0)
    print(names, failed, later, foreign)
    ok = names == ["response"] and not failed and later == [True, "after"] and foreign >= 1
    sys.exit(0 if ok else 1)
    """
)


def test_stop_producing_under_asyncioreactor() -> None:
    """Item 39 (W): a span closed by ``stopProducing`` under asyncioreactor ends once, quietly."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRODUCER_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
