"""Spans, contexts, trace trailers and metrics of replication (spec §6; scenarios 39, 40)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from homeserver.config import DatabaseConfig
from replhelpers import fast_options, running_main, running_worker, synced, wait_until

from logcontext.tracing import init_tracing, set_propagation_allowlist, shutdown_tracing, start_span


@pytest.fixture
def exporter() -> Iterator[Any]:
    """OTel SDK with an in-memory exporter; tracing is shut down afterwards."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    shutdown_tracing(2.0)
    init_tracing("otel", tracer_provider=provider)
    set_propagation_allowlist([r"replication"])
    try:
        yield exp
    finally:
        shutdown_tracing(2.0)
        set_propagation_allowlist(())


def _spans(exp: Any, name: str) -> list[Any]:
    return [s for s in exp.get_finished_spans() if s.name == name]


async def test_commands_and_catch_up_are_spans_with_usage(db_cfg: DatabaseConfig, exporter: Any) -> None:
    """Each received command is a span; a catch-up is one span with page children and DB usage."""
    opts = fast_options(position_interval=30.0)  # keep stream_positions at the start value
    async with asyncio.timeout(15), running_main(db_cfg, opts) as main:
        for i in range(5):
            await main.change_devices(f"@u{i}:x", ["D"], [])
        main.set_typing("!r:x", "@a:x", True)
        async with running_worker("w1", db_cfg, main, fast_options(target_rows=2)) as w:
            await wait_until(lambda: synced(w) and w.handler.cur.get(("device_lists", "master")) == 6)
            with start_span("client-request", root=True) as writer_span:
                t = await main.change_devices("@traced:x", ["D"], [])
            await wait_until(lambda: w.handler.cur.get(("device_lists", "master")) == t)
    names = {s.name for s in exporter.get_finished_spans()}
    for expected in (
        "replication.recv.NAME",
        "replication.recv.REPLICATE",
        "replication.recv.PING",
        "replication.recv.POSITION",
        "replication.recv.RDATA",
        "replication.send",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    catch_ups = [
        s for s in _spans(exporter, "replication.catch_up") if s.attributes["stream"] == "device_lists"
    ]
    assert len(catch_ups) == 1
    cu = catch_ups[0]
    assert cu.attributes["rows"] == 5 and cu.attributes["pages"] == 3 and cu.attributes["source"] == "db"
    assert cu.attributes["logcontext.db.txn_count"] >= 3
    pages = [
        s
        for s in _spans(exporter, "replication.catch_up.page")
        if s.parent is not None and s.parent.span_id == cu.context.span_id
    ]
    assert len(pages) == 3
    rdata = [s for s in _spans(exporter, "replication.recv.RDATA") if s.attributes["token"] == t]
    assert rdata and rdata[0].links
    assert rdata[0].links[0].context.span_id == writer_span.context.span_id
    typing_cu = [s for s in _spans(exporter, "replication.catch_up") if s.attributes["stream"] == "typing"]
    http = _spans(exporter, "replication.http.get_repl_stream_updates")
    assert typing_cu and http
    assert http[0].parent is not None and http[0].parent.trace_id == typing_cu[0].context.trace_id


async def test_command_contexts_are_named_after_commands(db_cfg: DatabaseConfig) -> None:
    """Inline commands run in `replication-<CMD>` contexts under the connection context."""
    import logcontext

    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        real = main.handler.on_command

        def spy(conn: Any, cmd: Any) -> None:
            ctx = logcontext.current_context()
            parent = getattr(ctx, "parent_context", None)
            seen.append((str(ctx), str(parent)))
            real(conn, cmd)

        main.handler.on_command = spy  # type: ignore[method-assign]
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w))
    names = [c for c, _ in seen]
    assert "replication-NAME" in names and "replication-REPLICATE" in names
    assert all(p.startswith("replication-conn-127.0.0.1") for _, p in seen)


async def test_metrics_rows_lag_and_dropped(db_cfg: DatabaseConfig) -> None:
    """Rows are counted by path, lag returns to 0 after catch-up, Prometheus sees the same."""
    from prometheus_client import REGISTRY

    def prom_rows(path: str) -> float:
        v = REGISTRY.get_sample_value(
            "replication_rows_received_total",
            {"stream": "device_lists", "instance": "master", "path": path},
        )
        return v or 0.0

    before = prom_rows("catch_up"), prom_rows("live")
    opts = fast_options(position_interval=30.0)
    async with asyncio.timeout(10), running_main(db_cfg, opts) as main:
        for i in range(3):
            await main.change_devices(f"@u{i}:x", ["D"], [])
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w))
            await main.change_devices("@live:x", ["D"], [])
            await wait_until(lambda: w.handler.cur.get(("device_lists", "master")) == 5)
            stats = w.handler.stats
            assert stats.counters[("rows", "device_lists", "master", "catch_up")] == 3
            assert stats.counters[("rows", "device_lists", "master", "live")] == 1
            assert stats.gauges[("lag", "device_lists", "master")] == 0
    assert prom_rows("catch_up") - before[0] == 3
    assert prom_rows("live") - before[1] == 1
