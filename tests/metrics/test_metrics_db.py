"""DB metrics through a real sqlite ``DatabasePool`` (spec §7, §8)."""

from __future__ import annotations

import sqlite3

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext import LoggingContext
from logcontext.db import DatabasePool
from logcontext.metrics import Metrics


async def test_pool_feeds_db_families(metrics: Metrics) -> None:
    """Interactions count per desc, statements per verb, waits per server; pools show in use."""
    pool = DatabasePool(lambda: sqlite3.connect(":memory:"), engine="sqlite", name="main", max_size=1)
    try:
        with LoggingContext("req"):
            await pool.run_interaction("create", lambda c: c.execute("CREATE TABLE t (x)"))
            for i in range(3):
                await pool.run_interaction(
                    "insert_x", lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,))
                )
        text = generate_latest(metrics.registry).decode()
    finally:
        await pool.close()
    v = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    sn = ("server_name", "localhost")
    assert v[("logcontext_db_transaction_count_total", (("desc", "insert_x"), sn))] == 3
    assert v[("logcontext_db_transaction_count_total", (("desc", "create"), sn))] == 1
    assert v[("logcontext_db_schedule_time_seconds_count", (sn,))] == 4
    assert v[("logcontext_db_query_time_seconds_count", (sn, ("verb", "INSERT")))] >= 3
    assert v[("logcontext_db_connections_in_use", (("pool", "main"), sn))] == 0
