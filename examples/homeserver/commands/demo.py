"""``python -m homeserver demo``: serve concurrent fake requests and show their figures.

Each request runs in its own :class:`logcontext.LoggingContext`, burns some
CPU on the event loop, runs SQLite transactions on a worker thread inside a
child context (so the thread's CPU rolls up into the request), and at the end
the demo prints what every request's context accounted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from logcontext import LoggingContext, PreserveLoggingContext, current_context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=8, help="number of concurrent requests (default 8)")


def _burn(ms: float) -> None:
    end = time.thread_time() + ms / 1000
    x = 0
    while time.thread_time() < end:
        x += 1


_local = threading.local()


def _txn(db: Path, n: int) -> int:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(db, isolation_level=None)
    parent = current_context()
    # Leave the copied (parent's) context first, so that when the child exits this
    # pool thread goes back to charging nobody rather than the parent.
    with PreserveLoggingContext(), LoggingContext(parent.name, parent_context=parent or None) as ctx:
        start = time.perf_counter()
        conn.execute("BEGIN")
        for i in range(n):
            conn.execute("INSERT INTO rows (v) VALUES (?)", (i,))
        _burn(2)
        conn.execute("COMMIT")
        ctx.record_db_txn(time.perf_counter() - start)
    return n


async def _request(i: int, db: Path, pool: ThreadPoolExecutor) -> LoggingContext:
    loop = asyncio.get_running_loop()
    with LoggingContext(f"GET-{i}") as ctx:
        for _ in range(i % 3 + 1):
            _burn(1 + i % 4)
            await asyncio.sleep(0)
            await loop.run_in_executor(pool, contextvars.copy_context().run, _txn, db, 10 * (i + 1))
    return ctx


async def _main(n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "demo.db"
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE rows (v INTEGER)")
        with ThreadPoolExecutor(max_workers=2) as pool:
            contexts = await asyncio.gather(*(_request(i, db, pool) for i in range(n)))
    print(f"{'request':<10} {'cpu (ms)':>10} {'db txns':>8} {'db time (ms)':>13}")
    for ctx in contexts:
        u = ctx.get_resource_usage()
        print(
            f"{ctx.name:<10} {u.ru_utime * 1000:>10.2f} {u.db_txn_count:>8} {u.db_txn_duration_sec * 1000:>13.2f}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args.requests))
