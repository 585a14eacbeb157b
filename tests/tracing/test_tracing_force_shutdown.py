"""Forced tracing, jaeger-client pins and bounded shutdown (§10 item 40)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

from _tracing_harness import Harness

import logcontext.tracing as lt
from logcontext import LoggingContext
from logcontext.tracing import _api
from logcontext.tracing.opentracing import jaeger_tracer

ROOT = Path(__file__).resolve().parents[2]


async def test_force_tracing_otel_samples_later_children(make_harness: Any) -> None:
    """Under an always-off sampler, ``force_tracing`` makes later spans (and tasks) sampled."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    h: Harness = make_harness("otel", sampler=lt.ForceTracingSampler(ALWAYS_OFF))
    with lt.start_span("before") as before:
        assert not before.is_recording()
    with lt.start_span("unsampled") as a:
        assert not a.is_recording() and not lt.is_forced()
        lt.force_tracing()
        assert lt.is_forced()
        with lt.start_span("child") as b:
            assert b.is_recording()
            assert lt.is_forced(b.context)

        async def later() -> None:
            with lt.start_span("task-span") as t:
                assert t.is_recording()

        await asyncio.create_task(later())
    assert not lt.is_forced()
    with lt.start_span("after") as after:
        assert not after.is_recording()
    assert sorted(f.name for f in h.finished()) == ["child", "task-span"]


def test_force_tracing_jaeger_sets_priority(make_harness: Any) -> None:
    """With jaeger-client and a never-sampler, ``force_tracing`` rescues the span and its children."""
    from jaeger_client.sampler import ConstSampler

    h: Harness = make_harness("jaeger", sampler=ConstSampler(False))
    with lt.start_span("dropped"):
        pass
    with lt.start_span("forced") as a:
        assert not a.is_recording()
        lt.force_tracing()
        assert a.is_recording() and lt.is_forced() and lt.is_forced(a.context)
        with lt.start_span("child") as b:
            assert b.is_recording()
    assert sorted(f.name for f in h.finished()) == ["child", "forced"]


def test_force_tracing_for_users(make_harness: Any) -> None:
    """``force_tracing_for`` ids force tracing through ``apply_force_tracing_for``; others do not."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    h: Harness = make_harness(
        "otel",
        sampler=lt.ForceTracingSampler(ALWAYS_OFF),
        force_tracing_for=["@alice:example.com"],
    )
    with lt.start_span("req-bob"):
        assert _api.apply_force_tracing_for("@bob:example.com") is False
        with lt.start_span("bob-child"):
            pass
    with lt.start_span("req-alice"):
        assert _api.apply_force_tracing_for("@alice:example.com") is True
        with lt.start_span("alice-child"):
            pass
    assert [f.name for f in h.finished()] == ["alice-child"]


def test_jaeger_client_imports_with_pins() -> None:
    """jaeger-client imports on this Python; the ``[opentracing]`` extra pins ``six``."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("six") for dep in extras["opentracing"])
    code = "import jaeger_client, jaeger_client.thrift_gen.agent.Agent, six, tornado; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def _spans_in(datagrams: list[bytes]) -> list[str]:
    from jaeger_client.thrift_gen.agent import Agent
    from thrift.protocol.TCompactProtocol import TCompactProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    names = []
    for data in datagrams:
        proto = TCompactProtocol(TMemoryBuffer(data))
        proto.readMessageBegin()
        args = Agent.emitBatch_args()
        args.read(proto)
        names += [s.operationName for s in args.batch.spans]
    return names


async def test_shutdown_jaeger_inside_running_loop(udp_agent: Any) -> None:
    """``shutdown_tracing`` called inside a running loop returns, having flushed jaeger-client."""
    lt.init_tracing("opentracing", tracer=jaeger_tracer("svc", agent_port=udp_agent.port))
    with LoggingContext("req"), lt.start_span("in-loop"):
        await asyncio.sleep(0)
    assert lt.shutdown_tracing(5.0) is True
    assert not lt.tracing_enabled()
    assert "in-loop" in _spans_in(udp_agent.receive())


def test_shutdown_jaeger_after_asyncio_run(udp_agent: Any) -> None:
    """After ``asyncio.run`` (no current loop) ``shutdown_tracing`` still closes and flushes."""
    lt.init_tracing("opentracing", tracer=jaeger_tracer("svc", agent_port=udp_agent.port))

    async def main() -> None:
        with lt.start_span("in-run"):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert lt.shutdown_tracing(5.0) is True
    assert "in-run" in _spans_in(udp_agent.receive())


def test_shutdown_otel_with_stuck_exporter_returns() -> None:
    """An exporter that never returns cannot hold ``shutdown_tracing`` past its timeout."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            release.wait(30)

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Stuck()))
    lt.init_tracing("otel", tracer_provider=provider)
    try:
        assert lt.shutdown_tracing(0.3) is False
        assert not lt.tracing_enabled()
    finally:
        release.set()
