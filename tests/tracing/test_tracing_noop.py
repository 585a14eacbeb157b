"""The fast path: nothing configured, ``noop``, and decorators without a tracing extra."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import logcontext.tracing as lt
from logcontext import LoggingContext, current_context
from logcontext.tracing import _api


def test_start_span_uninitialised_returns_shared_null_manager() -> None:
    """Uninitialised, ``start_span`` returns one shared manager whose span records nothing."""
    cm1 = lt.start_span("x")
    cm2 = lt.start_active_span("y", attributes={"a": 1}, root=True)
    assert cm1 is cm2
    with cm1 as span:
        assert not span.is_recording()
        assert span.context.trace_id == 0
        span.set_attribute("k", "v")
        span.end()
    assert lt.active_span() is None
    assert not lt.tracing_enabled()


def test_noop_backend_keeps_fast_path() -> None:
    """``init_tracing("noop")`` leaves tracing disabled and helpers inert."""
    lt.init_tracing("noop")
    assert not lt.tracing_enabled()
    assert lt.start_span("x") is lt.start_span("y")
    with LoggingContext("req"), lt.start_span("x"):
        assert str(current_context()) == "req"
        lt.set_tag("a", 1)
        lt.log_event("e")
        lt.force_tracing()
    headers: dict[str, str] = {}
    lt.inject(headers, destination="anything", internal=True)
    lt.inject_response_headers(headers)
    assert headers == {}
    assert lt.extract({"traceparent": "x"}, origin="a", authenticated=True) is None


def test_setters_never_raise_when_off() -> None:
    """Every helper returns quietly while tracing is off."""
    lt.set_tag("k", object())
    lt.set_attribute("k", 1)
    lt.log_kv({"event": "x", "n": 1})
    lt.set_operation_name("n")
    lt.force_tracing()
    assert lt.is_forced() is False
    assert lt.inject_text_map(destination="x") == {}
    assert lt.extract_link({}) is None


def test_decorators_without_extra_return_function_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no tracing extra importable, ``trace``/``trace_with_name``/``tag_args`` return ``fn``."""
    monkeypatch.setattr(_api, "_extra_installed", False)

    def f(x: int) -> int:
        return x

    async def g() -> None:
        return None

    assert lt.trace(f) is f
    assert lt.trace_with_name("n")(f) is f
    assert lt.trace_with_opname("n")(g) is g
    assert lt.tag_args(f) is f


def test_decorators_with_extra_call_through_when_off() -> None:
    """With the extra installed but tracing off, wrappers call the function unchanged."""

    @lt.trace
    @lt.tag_args
    def f(x: int, *, y: int = 2) -> int:
        return x + y

    @lt.trace_with_name("g")
    async def g(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert f.__wrapped__ is not None  # type: ignore[attr-defined]
    assert f(1, y=3) == 4
    assert asyncio.run(g(4)) == 8
    assert asyncio.iscoroutinefunction(g)


def test_import_is_light() -> None:
    """``import logcontext.tracing`` imports neither OpenTelemetry, OpenTracing nor Twisted."""
    code = (
        "import sys, logcontext.tracing;"
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('opentelemetry','opentracing','jaeger_client','twisted')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_init_tracing_rejects_bad_arguments() -> None:
    """Bad ``init_tracing`` arguments raise errors naming the problem; state stays off."""
    with pytest.raises(ValueError, match="backend"):
        lt.init_tracing("zipkin")
    with pytest.raises(TypeError, match="allow-list"):
        lt.init_tracing("noop", propagation_allowlist="example.com")
    with pytest.raises(ValueError, match="invalid allow-list pattern"):
        lt.init_tracing("noop", propagation_allowlist=["("])
    with pytest.raises(ValueError, match="trace_id_header"):
        lt.init_tracing("noop", trace_id_header="bad header")
    with pytest.raises(TypeError, match="force_tracing_for"):
        lt.init_tracing("noop", force_tracing_for="@u:x")
    assert not lt.tracing_enabled()


def test_force_tracing_sampler_is_lazy() -> None:
    """``ForceTracingSampler`` is reachable from the package but loaded on first access."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    sampler = lt.ForceTracingSampler(ALWAYS_OFF)
    assert "ForceTracingSampler" in sampler.get_description()
    with pytest.raises(TypeError, match="Sampler"):
        lt.ForceTracingSampler("nope")  # type: ignore[arg-type]


def test_decorated_while_off_traces_once_enabled() -> None:
    """A function decorated before ``init_tracing`` is traced once tracing is on (flag per call)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    @lt.trace_with_name("early")
    def early() -> int:
        return 1

    assert early() == 1
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lt.init_tracing("otel", tracer_provider=provider)
    assert early() == 1
    lt.shutdown_tracing(2.0)
    assert early() == 1
    assert [s.name for s in exporter.get_finished_spans()] == ["early"]
