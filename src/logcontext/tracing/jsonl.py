"""``JsonLinesSpanExporter``: OTel spans as JSON lines, the span file read by ``logcontext report``."""

from __future__ import annotations

from .._jsonl_exporter import JsonLinesSpanExporter, span_to_dict

__all__ = ["JsonLinesSpanExporter", "span_to_dict"]
