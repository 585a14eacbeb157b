"""Database pool overhead, side by side in one process (spec §11 P17; issue 4).

The same 1-row SQLite insert transaction (``BEGIN``; ``INSERT``; ``COMMIT`` on an
in-memory database owned by one worker thread) is awaited from a coroutine:

- ``run_in_executor``: raw ``loop.run_in_executor`` on a 1-thread executor, no
  context, no accounting (the baseline);
- ``run_interaction``: ``DatabasePool.run_interaction`` from a request context
  (child context on the worker, scheduling/transaction time recorded, cursor
  wrapper, SQL logging check);
- ``bare_handoff``: the least any pool can do — a dedicated thread takes the
  callable from a ``queue.SimpleQueue`` and wakes the loop with
  ``call_soon_threadsafe`` (no ``concurrent.futures``); reported, not gated;
- ``run_interaction+metrics``: the same with the Prometheus observer installed
  (only when ``prometheus_client`` is importable).

Targets: P17 ``run_interaction`` ≤ 1.25 × ``run_in_executor`` (spec), and the
issue's 1.15 ×.

    python benchmarks/bench_db.py            # full run
    python benchmarks/bench_db.py --quick    # smoke run
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Suite, exit_code, parse_args

from logcontext import LoggingContext, _db_hooks
from logcontext.db import Cursor, DatabasePool

pc = time.perf_counter
SQL = "INSERT INTO t VALUES (?)"


def _interaction(txn: Cursor) -> None:
    txn.execute(SQL, (1,))


def main() -> int:
    args = parse_args(__doc__ or "")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    # Baseline: one worker thread owning one connection, raw executor call.
    executor = ThreadPoolExecutor(1, thread_name_prefix="raw-db")
    local = threading.local()

    def _open() -> None:
        local.conn = sqlite3.connect(":memory:", isolation_level=None)
        local.conn.execute("CREATE TABLE t (x INTEGER)")

    executor.submit(_open).result()

    def raw_txn() -> None:
        conn = local.conn
        conn.execute("BEGIN")
        conn.cursor().execute(SQL, (1,))
        conn.commit()

    # Minimal handoff: one thread, a SimpleQueue, call_soon_threadsafe back.
    jobs: queue.SimpleQueue[tuple[asyncio.Future[None], Callable[[], None]] | None] = queue.SimpleQueue()

    def _done(fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.set_result(None)

    def _handoff_worker() -> None:
        _open()
        while (item := jobs.get()) is not None:
            fut, fn = item
            fn()
            loop.call_soon_threadsafe(_done, fut)

    handoff = threading.Thread(target=_handoff_worker, name="bare-handoff", daemon=True)
    handoff.start()

    pool = DatabasePool.sqlite(":memory:", max_size=1)
    # Each sample runs in a fresh request context; their totals roll up here.
    totals = LoggingContext("bench-totals")

    def run(coro: Coroutine[Any, Any, float]) -> float:
        return loop.run_until_complete(coro)

    async def _setup() -> None:
        with LoggingContext("setup"):
            await pool.execute("create", "CREATE TABLE t (x INTEGER)")

    run(_setup())

    async def _empty(n: int) -> float:
        t = pc()
        for _ in range(n):
            pass
        return pc() - t

    async def _raw(n: int) -> float:
        rie = loop.run_in_executor
        t = pc()
        for _ in range(n):
            await rie(executor, raw_txn)
        return pc() - t

    async def _bare(n: int) -> float:
        put = jobs.put
        new = loop.create_future
        t = pc()
        for _ in range(n):
            fut = new()
            put((fut, raw_txn))
            await fut
        return pc() - t

    async def _pool(n: int) -> float:
        ri = pool.run_interaction
        with LoggingContext("bench-request", parent_context=totals):
            t = pc()
            for _ in range(n):
                await ri("insert", _interaction)
            return pc() - t

    def sync(fn: Callable[[int], Coroutine[Any, Any, float]]) -> Callable[[int], float]:
        return lambda n: run(fn(n))

    suite = Suite("db", args, sample_s=0.004 if args.quick else 0.020)
    suite.add("empty", sync(_empty))
    suite.add("run_in_executor", sync(_raw))
    suite.add("run_interaction", sync(_pool))
    suite.add("bare_handoff", sync(_bare))

    observer = None
    try:
        from prometheus_client import CollectorRegistry

        from logcontext.metrics import install_metrics

        install_metrics(registry=CollectorRegistry())
        observer = _db_hooks.set_observer(None)
    except ImportError:
        suite.note("prometheus_client not installed: run_interaction+metrics not measured")

    if observer is not None:
        obs = observer

        async def _pool_metrics(n: int) -> float:
            _db_hooks.set_observer(obs)
            try:
                return await _pool(n)
            finally:
                _db_hooks.set_observer(None)

        suite.add("run_interaction+metrics", sync(_pool_metrics))

    suite.run()
    suite.ratio("P17", "run_interaction", "run_in_executor", bound=1.25)
    suite.ratio("P17i", "run_interaction", "run_in_executor", bound=1.15, description="issue 4 target")
    ratio_bare = suite.median("run_interaction") / suite.median("bare_handoff")
    suite.note(f"run_interaction / bare_handoff = {ratio_bare:.3f} (our cost over the minimal mechanism)")
    if observer is not None:
        suite.ratio(
            "P17m",
            "run_interaction+metrics",
            "run_in_executor",
            bound=1.25,
            description="with the Prometheus observer (reported)",
        )
    usage = totals.get_resource_usage()
    suite.note(
        f"request contexts recorded {usage.db_txn_count} transactions, "
        f"{usage.db_txn_duration_sec * 1e3:.1f} ms in transactions, "
        f"{usage.db_sched_duration_sec * 1e3:.1f} ms scheduling, {usage.ru_utime * 1e3:.1f} ms CPU"
    )
    ok = suite.finish()
    run(pool.close())
    jobs.put(None)
    handoff.join()
    executor.shutdown()
    loop.close()
    return exit_code(ok, args)


if __name__ == "__main__":
    sys.exit(main())
