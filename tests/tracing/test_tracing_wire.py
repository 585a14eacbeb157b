"""On the wire: real exporters to loopback receivers, payloads decoded and checked.

OTLP/HTTP: the SDK's ``OTLPSpanExporter`` posts protobuf to a tiny ``http.server`` receiver,
decoded as ``ExportTraceServiceRequest``. Jaeger: jaeger-client sends thrift compact
``Agent.emitBatch`` datagrams to a UDP socket, decoded with its own thrift definitions.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import logcontext.tracing as lt
from logcontext import LoggingContext, current_context
from logcontext.tracing._bg import start_background_span
from logcontext.tracing.opentracing import jaeger_tracer


class OtlpReceiver:
    """Collects ``ExportTraceServiceRequest`` bodies posted to ``/v1/traces``."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.requests: list[Any] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver.paths.append(self.path)
                receiver.requests.append(req)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(resource attributes, spans by name) from everything received."""
        resource: dict[str, Any] = {}
        spans: dict[str, Any] = {}
        for req in self.requests:
            for rs in req.resource_spans:
                resource.update({kv.key: _any(kv.value) for kv in rs.resource.attributes})
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans[s.name] = s
        return resource, spans


def _any(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attrs(span: Any) -> dict[str, Any]:
    return {kv.key: _any(kv.value) for kv in span.attributes}


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 (free port), stopped after the test."""
    r = OtlpReceiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_otlp_http_export_decoded(otlp_receiver: OtlpReceiver) -> None:
    """Spans exported over OTLP/HTTP carry names, parent ids, resource and usage attributes."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "wire-test"}))
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_receiver.port}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    lt.init_tracing("otel", tracer_provider=provider)
    with LoggingContext("GET-1"), lt.start_span("request", kind="server"):
        current_context().record_db_txn(0.5)
        with lt.start_span("db.work", kind="client"):
            inner = current_context()
            inner.record_db_txn(0.25)
            inner.record_event_fetch(7)
        bg = LoggingContext("job-1")
        with bg, start_background_span("job", bg):
            bg.record_db_txn(0.125)
    assert lt.shutdown_tracing(10.0) is True
    assert otlp_receiver.paths and set(otlp_receiver.paths) == {"/v1/traces"}
    resource, spans = otlp_receiver.spans()
    assert resource["service.name"] == "wire-test"
    req, work, job = spans["request"], spans["db.work"], spans["bgproc.job"]
    assert work.parent_span_id == req.span_id and len(req.span_id) == 8
    assert work.trace_id == req.trace_id and len(req.trace_id) == 16
    assert req.parent_span_id == b""
    assert job.parent_span_id == b"" and job.trace_id != req.trace_id
    assert job.links[0].span_id == req.span_id
    assert {kv.key: _any(kv.value) for kv in job.links[0].attributes} == {"logcontext.link": "spawned_by"}
    a = _attrs(work)
    assert a["logcontext.name"] == "GET-1"
    assert a["logcontext.db.txn_count"] == 1
    assert a["logcontext.db.txn_s"] == pytest.approx(0.25)
    assert a["logcontext.db.event_fetches"] == 7
    assert a["logcontext.cpu.clock"] == "cpu" and a["logcontext.cpu.user_s"] >= 0.0
    assert _attrs(req)["logcontext.db.txn_count"] == 2
    assert _attrs(job)["logcontext.db.txn_count"] == 1


def test_jaeger_udp_thrift_batch_decoded(udp_agent: Any) -> None:
    """jaeger-client's UDP emitBatch decodes to our spans, parent ids, process and usage tags."""
    from jaeger_client.thrift_gen.agent import Agent
    from thrift.protocol.TCompactProtocol import TCompactProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    lt.init_tracing("opentracing", tracer=jaeger_tracer("wire-svc", agent_port=udp_agent.port))
    with LoggingContext("GET-2"), lt.start_span("request", kind="server"):
        with lt.start_span("work"):
            current_context().record_db_txn(0.5)
            current_context().record_event_fetch(3)
    assert lt.shutdown_tracing(10.0) is True
    batches = []
    for data in udp_agent.receive():
        proto = TCompactProtocol(TMemoryBuffer(data))
        name, _type, _seq = proto.readMessageBegin()
        assert name == "emitBatch"
        args = Agent.emitBatch_args()
        args.read(proto)
        batches.append(args.batch)
    assert batches and batches[0].process.serviceName == "wire-svc"
    spans = {s.operationName: s for b in batches for s in b.spans}
    req, work = spans["request"], spans["work"]
    assert work.parentSpanId == req.spanId and work.traceIdLow == req.traceIdLow
    assert req.parentSpanId == 0
    tags = {t.key: t for t in work.tags}
    assert tags["logcontext.name"].vStr == "GET-2"
    assert tags["logcontext.db.txn_count"].vLong == 1
    assert tags["logcontext.db.txn_s"].vDouble == pytest.approx(0.5)
    assert tags["logcontext.db.event_fetches"].vLong == 3
    assert {t.key: t.vStr for t in req.tags}["span.kind"] == "server"


def test_service_name_builds_default_jaeger_tracer(udp_agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``opentracing`` with only ``service_name`` builds a jaeger tracer for the env's agent."""
    monkeypatch.setenv("JAEGER_AGENT_PORT", str(udp_agent.port))
    lt.init_tracing("opentracing", service_name="env-svc")
    with lt.start_span("hello"):
        pass
    assert lt.shutdown_tracing(10.0) is True
    from jaeger_client.thrift_gen.agent import Agent
    from thrift.protocol.TCompactProtocol import TCompactProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    (data, *_) = udp_agent.receive()
    proto = TCompactProtocol(TMemoryBuffer(data))
    proto.readMessageBegin()
    args = Agent.emitBatch_args()
    args.read(proto)
    assert args.batch.process.serviceName == "env-svc"
    assert [s.operationName for s in args.batch.spans] == ["hello"]


def test_service_name_builds_sdk_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """``otel`` with only ``service_name`` and no global provider uses an SDK one with it."""
    from opentelemetry import trace

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    lt.init_tracing("otel", service_name="sdk-svc")
    backend = lt._api._backend
    assert backend is not None
    assert backend.provider.resource.attributes["service.name"] == "sdk-svc"  # type: ignore[attr-defined]
    with lt.start_span("x") as span:
        assert span.is_recording()
