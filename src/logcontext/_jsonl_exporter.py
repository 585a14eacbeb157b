"""An OpenTelemetry span exporter that appends one JSON object per span to a file.

The format is the span-file format read by ``logcontext report`` (``docs/report.md``)::

    {"name": "GET /sync", "trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_id": "<16 hex>"|null,
     "start_ns": 1700000000000000000, "end_ns": 1700000000012000000, "kind": "server",
     "status": "unset"|"ok"|"error", "service": "homeserver", "attributes": {...},
     "events": [{"name": ..., "time_ns": ..., "attributes": {...}}],
     "links": [{"trace_id": ..., "span_id": ..., "attributes": {...}}]}

This module imports the OpenTelemetry SDK (extra ``[otel]``); nothing else in the package imports
it, so ``logcontext report`` works without OpenTelemetry installed.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["JsonLinesSpanExporter", "span_to_dict"]


def _value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, str | bool | int | float) or v is None:
        return v
    if isinstance(v, Sequence) and not isinstance(v, bytes | bytearray):
        return [_value(x) for x in v]
    return repr(v)


def _attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {} if not attrs else {str(k): _value(v) for k, v in attrs.items()}


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The span-file object for one finished span."""
    ctx = span.context
    parent = span.parent
    status = span.status
    kind = span.kind
    out: dict[str, Any] = {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx is not None else None,
        "span_id": f"{ctx.span_id:016x}" if ctx is not None else None,
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "kind": str(getattr(kind, "name", kind)).lower() if kind is not None else None,
        "status": status.status_code.name.lower(),
    }
    if status.description:
        out["status_message"] = status.description
    service = span.resource.attributes.get("service.name") if span.resource is not None else None
    if service is not None:
        out["service"] = str(service)
    out["attributes"] = _attrs(span.attributes)
    if span.events:
        out["events"] = [
            {"name": ev.name, "time_ns": ev.timestamp, "attributes": _attrs(ev.attributes)}
            for ev in span.events
        ]
    if span.links:
        out["links"] = [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": _attrs(link.attributes),
            }
            for link in span.links
        ]
    return out


class JsonLinesSpanExporter(SpanExporter):
    """Append each exported span to ``path`` as one JSON line (thread-safe, flushed per batch).

    The file is opened (created if missing, appended to otherwise) when the exporter is made, so
    a bad path fails at set-up rather than on the first export. Use it with a
    ``BatchSpanProcessor`` or ``SimpleSpanProcessor``; :meth:`shutdown` closes the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``; ``FAILURE`` after :meth:`shutdown` or on an I/O error."""
        lines = [
            json.dumps(span_to_dict(s), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
            for s in spans
        ]
        with self._lock:
            if self._fh is None:
                return SpanExportResult.FAILURE
            try:
                self._fh.write("".join(lines))
                self._fh.flush()
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the file; every export already flushes, so this only guards against a racing write."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
        return True

    def shutdown(self) -> None:
        """Close the file; later exports fail."""
        with self._lock:
            fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
