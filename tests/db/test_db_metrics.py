"""The pool's metrics hook wired to logcontext.metrics (spec §7 DB families)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logcontext import LoggingContext
from logcontext.db import Cursor, DatabasePool

pytest.importorskip("prometheus_client")


@pytest.fixture
def registry() -> Iterator[Any]:
    from prometheus_client import CollectorRegistry

    from logcontext.metrics import install_metrics, uninstall_metrics

    reg = CollectorRegistry()
    install_metrics(registry=reg)
    try:
        yield reg
    finally:
        uninstall_metrics()


async def test_db_families_fed_by_pool(tmp_path: Path, registry: Any) -> None:
    """Per-desc transaction count/time, retries, schedule and query histograms are exported."""
    pool = DatabasePool.sqlite(tmp_path / "m.db", server_name="hs1")
    failures = [1]

    def insert(txn: Cursor) -> None:
        txn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        txn.execute("INSERT INTO t VALUES (1)")
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("database is locked")

    with LoggingContext("req"):
        await pool.run_interaction("insert_row", insert)
        await pool.execute("count_rows", "SELECT count(*) FROM t")
    await pool.close()

    def value(name: str, **labels: str) -> float | None:
        v = registry.get_sample_value(name, labels)
        return None if v is None else float(v)

    assert value("logcontext_db_transaction_count_total", desc="insert_row", server_name="hs1") == 1
    assert value("logcontext_db_transaction_count_total", desc="count_rows", server_name="hs1") == 1
    assert (
        value("logcontext_db_transaction_duration_seconds_total", desc="insert_row", server_name="hs1") or 0
    ) > 0
    assert value("logcontext_db_transaction_retries_total", desc="insert_row", server_name="hs1") == 1
    assert value("logcontext_db_schedule_time_seconds_count", server_name="hs1") == 2
    assert value("logcontext_db_query_time_seconds_count", verb="INSERT", server_name="hs1") == 2
    assert value("logcontext_db_query_time_seconds_count", verb="SELECT", server_name="hs1") == 1


async def test_connections_in_use_gauge(tmp_path: Path, registry: Any) -> None:
    """The in-use gauge counts workers running an interaction, read at scrape time."""
    pool = DatabasePool.sqlite(tmp_path / "g.db", name="gauge", server_name="hs1")
    started = threading.Event()
    release = threading.Event()

    def hold(txn: Cursor) -> None:
        started.set()
        release.wait(5)

    def in_use() -> float | None:
        v = registry.get_sample_value(
            "logcontext_db_connections_in_use", {"pool": "gauge", "server_name": "hs1"}
        )
        return None if v is None else float(v)

    with LoggingContext("req"):
        task = asyncio.ensure_future(pool.run_interaction("hold", hold))
        while not started.is_set():
            await asyncio.sleep(0.001)
        assert in_use() == 1
        release.set()
        await task
    assert in_use() == 0
    await pool.close()
    assert in_use() is None  # closed pools leave the gauge
