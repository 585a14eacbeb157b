"""Spans of database interactions: ``db.<desc>``, ``db.txn`` with usage, ``db.query`` (spec §8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logcontext import LoggingContext
from logcontext.db import Cursor, DatabasePool

pytest.importorskip("opentelemetry.sdk")


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from logcontext.tracing import init_tracing, shutdown_tracing

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    init_tracing("otel", tracer_provider=provider)
    try:
        yield exp
    finally:
        shutdown_tracing()


async def test_txn_span_attributes_and_parenting(tmp_path: Path, exporter: Any) -> None:
    """db.<desc> wraps db.txn (desc, txn id, attempts, system, usage) which wraps db.query."""
    pool = DatabasePool.sqlite(tmp_path / "t.db", trace_queries=True)

    def insert(txn: Cursor, x: int) -> None:
        txn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        txn.execute("INSERT INTO t VALUES (?)", (x,))

    with LoggingContext("req"):
        await pool.run_interaction("insert_x", insert, 1)
    await pool.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"db.insert_x", "db.txn", "db.query"}
    outer, txn = spans["db.insert_x"], spans["db.txn"]
    assert txn.parent is not None and txn.parent.span_id == outer.context.span_id
    attrs = dict(txn.attributes)
    assert attrs["db.system.name"] == "sqlite"
    assert attrs["logcontext.db.desc"] == "insert_x"
    assert attrs["logcontext.db.txn_id"] == "insert_x-1"
    assert attrs["logcontext.db.attempts"] == 1
    assert attrs["logcontext.db.txn_count"] == 1
    assert attrs["logcontext.db.txn_s"] > 0
    queries = [s for s in exporter.get_finished_spans() if s.name == "db.query"]
    assert [dict(q.attributes)["db.query.text"] for q in queries] == [
        "CREATE TABLE IF NOT EXISTS t (x INTEGER)",
        "INSERT INTO t VALUES (?)",
    ]
    assert all(q.parent is not None and q.parent.span_id == txn.context.span_id for q in queries)


async def test_no_query_spans_without_trace_queries(tmp_path: Path, exporter: Any) -> None:
    """Without trace_queries only the interaction and transaction spans are made."""
    pool = DatabasePool.sqlite(tmp_path / "t.db")
    with LoggingContext("req"):
        await pool.execute("probe", "SELECT 1")
    await pool.close()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["db.probe", "db.txn"]
