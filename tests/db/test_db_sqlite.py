"""DatabasePool over SQLite: accounting, retries, cancellation, logging (spec §8, §10)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from logcontext import LoggingContext, _ledger, _misuse, configure, current_context
from logcontext.db import Cursor, DatabasePool, set_database_observer


class RecordingObserver:
    """Collects every observer callback."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def scheduled(self, pool: DatabasePool, sched_s: float) -> None:
        with self.lock:
            self.events.append(("scheduled", pool.name, sched_s))

    def transaction(self, pool: DatabasePool, desc: str, duration_s: float, attempts: int, ok: bool) -> None:
        with self.lock:
            self.events.append(("transaction", desc, duration_s, attempts, ok))

    def retry(self, pool: DatabasePool, desc: str) -> None:
        with self.lock:
            self.events.append(("retry", desc))

    def query(self, pool: DatabasePool, verb: str, duration_s: float) -> None:
        with self.lock:
            self.events.append(("query", verb, duration_s))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


@pytest.fixture
def observer() -> Iterator[RecordingObserver]:
    obs = RecordingObserver()
    previous = set_database_observer(obs)
    try:
        yield obs
    finally:
        set_database_observer(previous)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


@pytest.fixture
async def pool(db_path: Path) -> AsyncIterator[DatabasePool]:
    p = DatabasePool.sqlite(db_path, max_size=4, timeout=0.05)
    with LoggingContext("setup"):
        await p.execute("create", "CREATE TABLE t (x INTEGER)")
    yield p
    await p.close()


def _insert(txn: Cursor, value: int) -> None:
    txn.execute("INSERT INTO t VALUES (?)", (value,))


def _count(txn: Cursor) -> int:
    return int(txn.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_memory_database_needs_one_connection() -> None:
    """`:memory:` with max_size > 1 raises ValueError, up front or at the first connection."""
    with pytest.raises(ValueError, match="max_size=1"):
        DatabasePool.sqlite(":memory:", max_size=2)
    generic = DatabasePool(lambda: sqlite3.connect(":memory:"), engine="sqlite", max_size=2)
    with LoggingContext("req"), pytest.raises(ValueError, match="max_size=1"):
        await generic.execute("probe", "SELECT 1")
    await generic.close()
    single = DatabasePool.sqlite(":memory:")
    assert single.max_size == 1
    with LoggingContext("req"):
        assert await single.execute("probe", "SELECT 1") == [(1,)]
    await single.close()


async def test_n_interactions_counted_and_rolled_up(pool: DatabasePool) -> None:
    """N interactions from one request give db_txn_count == N there and on its parent."""
    with LoggingContext("parent") as parent:
        with LoggingContext("req", parent_context=parent) as req:
            for i in range(5):
                await pool.run_interaction("insert", _insert, i)
            usage = req.get_resource_usage()
    assert usage.db_txn_count == 5
    assert usage.db_txn_duration_sec > 0
    assert usage.db_sched_duration_sec > 0
    up = parent.get_resource_usage()
    assert up.db_txn_count == 5
    assert up.db_txn_duration_sec == pytest.approx(usage.db_txn_duration_sec)
    assert up.db_sched_duration_sec == pytest.approx(usage.db_sched_duration_sec)


async def test_worker_runs_in_child_of_caller(pool: DatabasePool) -> None:
    """fn runs on a named pool thread in a child context named like the caller."""
    seen: dict[str, Any] = {}

    def probe(txn: Cursor) -> None:
        ctx = current_context()
        seen["name"] = str(ctx)
        seen["parent"] = getattr(ctx, "parent_context", None)
        seen["thread"] = threading.current_thread().name

    with LoggingContext("req") as req:
        await pool.run_interaction("probe", probe)
    assert seen["name"] == "req"
    assert seen["parent"] is req
    assert seen["thread"].startswith("logcontext-db-main_")


@pytest.mark.accuracy
async def test_worker_cpu_rolls_up_to_caller_and_parents(pool: DatabasePool) -> None:
    """CPU burnt in fn on the worker is charged to the caller and its ancestors (± 15 %)."""
    configure(clock="cpu")  # restored by the suite's guard
    burnt: list[float] = []

    def burn(txn: Cursor) -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.02:
            pass
        burnt.append(time.thread_time() - t0)

    with LoggingContext("parent") as parent:
        with LoggingContext("req", parent_context=parent) as req:
            before = req.get_resource_usage().ru_utime
            await pool.run_interaction("burn", burn)
            after = req.get_resource_usage().ru_utime
    assert burnt[0] * 0.95 <= after - before <= burnt[0] * 1.15 + 0.003
    assert parent.get_resource_usage().ru_utime >= burnt[0] * 0.95


async def test_worker_cpu_settled_before_the_caller_resumes(pool: DatabasePool) -> None:
    """cpu/sampled: a burning interaction's CPU is in the caller's usage right after the await."""
    configure(clock="cpu", step_mode="sampled")  # the defaults; restored by the suite's guard
    saved_window_ms = _ledger._window_ns / 1e6
    # A window far longer than the test: nothing closes it on its own, so the
    # worker's share of it stays pending unless the pool settles the ledger.
    _ledger.set_sample_window(10_000)
    try:
        for i in range(3):

            def burn(txn: Cursor) -> float:
                t0 = time.thread_time()
                while time.thread_time() - t0 < 0.002:
                    pass
                return time.thread_time() - t0

            with LoggingContext("parent") as parent:
                with LoggingContext(f"req-{i}", parent_context=parent) as req:
                    burnt = await pool.run_interaction("burn", burn)
                    usage = req.get_resource_usage()
                    assert usage.ru_utime + usage.ru_stime >= burnt * 0.75, (i, usage, burnt)
            up = parent.get_resource_usage()
            assert up.ru_utime + up.ru_stime >= burnt * 0.75
    finally:
        _ledger.set_sample_window(saved_window_ms)


async def test_a_transaction_is_charged_at_its_exit_without_a_window_close(
    pool: DatabasePool,
) -> None:
    """cpu/sampled: the worker's context for a transaction that enters no context of its own is
    armed, so its CPU is charged when it exits and the hand-back closes no window; the one window
    the job closes is the worker's own at the job's start (it held only unmetered CPU), which
    makes the transaction's figures exact."""
    configure(clock="cpu", step_mode="sampled")
    saved_window_ms = _ledger._window_ns / 1e6
    _ledger.set_sample_window(10_000)
    seen: dict[str, object] = {}

    def burn(txn: Cursor) -> float:
        seen["ctx"] = current_context()
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.002:
            pass
        return time.thread_time() - t0

    try:
        with LoggingContext("req") as req:
            await pool.run_interaction("warm", lambda txn: None)
            windows = _ledger.stats.windows
            burnt = await pool.run_interaction("burn", burn)
            assert _ledger.stats.windows == windows + 1  # the worker's, at the job's start
            worker_ctx = seen["ctx"]
            assert isinstance(worker_ctx, LoggingContext) and worker_ctx.parent_context is req
            assert worker_ctx.get_resource_usage().ru_utime >= burnt * 0.95
            assert req.get_resource_usage().ru_utime >= burnt * 0.95
    finally:
        _ledger.set_sample_window(saved_window_ms)


async def test_saturated_pool_grows_scheduling_time(db_path: Path) -> None:
    """max_size=1 and two concurrent 50 ms transactions: the second waits >= 45 ms."""
    pool = DatabasePool.sqlite(db_path, max_size=1)

    def slow(txn: Cursor) -> None:
        txn.execute("SELECT 1")
        time.sleep(0.05)

    async def one(name: str) -> float:
        with LoggingContext(name) as ctx:
            await pool.run_interaction("slow", slow)
            return ctx.get_resource_usage().db_sched_duration_sec

    scheds = await asyncio.gather(one("a"), one("b"))
    await pool.close()
    assert max(scheds) >= 0.045
    assert max(scheds) - min(scheds) >= 0.045  # only the second one waited for the first


def test_threads_into_children_of_one_parent_exact_count(db_path: Path) -> None:
    """8 threads x 200 transactions into children of one parent: exactly 1600 on the parent."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")  # counting, not durability
        return conn

    pool = DatabasePool(connect, engine="sqlite", max_size=4)
    n = 200
    errors: list[BaseException] = []
    with LoggingContext("setup"):
        pool.submit_interaction("create", lambda txn: txn.execute("CREATE TABLE t (x)")).result()
    parent = LoggingContext("parent")

    def work(i: int) -> None:
        try:
            with LoggingContext(f"child{i}", parent_context=parent) as child:
                for j in range(n):
                    pool.submit_interaction("insert", _insert, j).result()
                assert child.get_resource_usage().db_txn_count == n
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.shutdown()
    assert not errors
    assert parent.get_resource_usage().db_txn_count == 8 * n


async def test_lock_errors_retried_then_raised(db_path: Path, observer: RecordingObserver) -> None:
    """A write blocked by another connection's lock is retried max_retries times, then raised."""
    pool = DatabasePool.sqlite(db_path, max_size=1, timeout=0.01, max_retries=2)
    with LoggingContext("setup"):
        await pool.execute("create", "CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with LoggingContext("req") as req:
            with pytest.raises(sqlite3.OperationalError, match="locked") as info:
                await pool.run_interaction("blocked_insert", _insert, 1)
            assert req.get_resource_usage().db_txn_count == 1
    finally:
        other.rollback()
        other.close()
    assert any("blocked_insert" in note for note in info.value.__notes__)
    assert observer.of("retry") == [("retry", "blocked_insert")] * 2
    txn = [e for e in observer.of("transaction") if e[1] == "blocked_insert"]
    assert [(e[3], e[4]) for e in txn] == [(3, False)]
    await pool.close()


async def test_lock_released_midway_retry_succeeds(db_path: Path, observer: RecordingObserver) -> None:
    """A retry after the other writer let go succeeds; one transaction is recorded."""
    pool = DatabasePool.sqlite(db_path, max_size=1, timeout=0.01, max_retries=50)
    with LoggingContext("setup"):
        await pool.execute("create", "CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.05, other.rollback)
    timer.start()
    with LoggingContext("req") as req:
        await pool.run_interaction("insert", _insert, 7)
        assert await pool.run_interaction("count", _count) == 1
        assert req.get_resource_usage().db_txn_count == 2
    timer.join()
    other.close()
    assert observer.of("retry")
    await pool.close()


async def test_retry_discards_failed_attempts(pool: DatabasePool) -> None:
    """Rows written by a failed attempt are rolled back; the retry's rows stay."""
    attempts: list[int] = []

    def flaky(txn: Cursor) -> str:
        attempts.append(1)
        txn.execute("INSERT INTO t VALUES (?)", (len(attempts),))
        if len(attempts) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    with LoggingContext("req") as req:
        assert await pool.run_interaction("flaky", flaky) == "done"
        assert await pool.execute("rows", "SELECT x FROM t") == [(3,)]
        assert req.get_resource_usage().db_txn_count == 2


async def test_other_errors_roll_back_and_carry_desc(pool: DatabasePool) -> None:
    """A non-retryable error rolls back, is not retried and names the desc."""
    calls: list[int] = []

    def bad(txn: Cursor) -> None:
        calls.append(1)
        txn.execute("INSERT INTO t VALUES (1)")
        raise KeyError("boom")

    with LoggingContext("req") as req:
        with pytest.raises(KeyError) as info:
            await pool.run_interaction("bad_insert", bad)
        assert await pool.run_interaction("count", _count) == 0
        assert req.get_resource_usage().db_txn_count == 2
    assert calls == [1]
    assert any("'bad_insert'" in n for n in info.value.__notes__)


async def test_cancellation_waits_for_recorded_transaction(pool: DatabasePool) -> None:
    """A cancelled caller gets CancelledError only after the txn committed and was recorded."""
    started = threading.Event()
    release = threading.Event()

    def slow_insert(txn: Cursor) -> None:
        txn.execute("INSERT INTO t VALUES (1)")
        started.set()
        release.wait(5)

    with LoggingContext("req") as req:
        task = asyncio.ensure_future(pool.run_interaction("slow_insert", slow_insert))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.sleep(0.02)
        assert not task.done()  # still waiting for the transaction
        task.cancel()  # a second cancel is absorbed too
        await asyncio.sleep(0.01)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert req.get_resource_usage().db_txn_count == 1
        assert await pool.run_interaction("count", _count) == 1


def test_submit_interaction_is_loop_agnostic(pool: DatabasePool) -> None:
    """submit_interaction returns a running concurrent future usable from plain threads."""
    with LoggingContext("req") as req:
        fut = pool.submit_interaction("insert", _insert, 3)
        assert not fut.cancel()
        assert fut.result(5) is None
        assert pool.submit_interaction("count", _count).result(5) == 1
        with pytest.raises(ZeroDivisionError):
            pool.submit_interaction("div", lambda txn: 1 / 0).result(5)
    assert req.get_resource_usage().db_txn_count == 3


@pytest.mark.misuse_ok
async def test_sentinel_usage_reported_once_per_desc(pool: DatabasePool) -> None:
    """From the sentinel an interaction still runs and reports sentinel-usage once per desc."""
    before = _misuse.counts["sentinel-usage"]
    await pool.run_interaction("from_sentinel", _insert, 1)
    await pool.run_interaction("from_sentinel", _insert, 2)
    await pool.run_interaction("from_sentinel_2", _insert, 3)
    assert _misuse.counts["sentinel-usage"] - before == 2
    with LoggingContext("req"):
        assert await pool.run_interaction("count", _count) == 3


class _CaptureSQL(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((str(current_context()), record.getMessage()))


@pytest.fixture
def sql_log() -> Iterator[_CaptureSQL]:
    logger = logging.getLogger("logcontext.db.sql")
    handler = _CaptureSQL()
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def test_sql_logged_at_debug_in_context(pool: DatabasePool, sql_log: _CaptureSQL) -> None:
    """Statements and values are logged in the caller's context; long values are cut."""
    with LoggingContext("req"):
        await pool.run_interaction("log", lambda txn: txn.execute("SELECT ?", ("x" * 5000,)))
    assert ("req", "[SQL] {log-1} SELECT ?") in sql_log.lines
    values = [msg for ctx, msg in sql_log.lines if msg.startswith("[SQL values]")]
    assert len(values) == 1
    assert "x" * 1000 + "..." in values[0]
    assert "x" * 1001 not in values[0]


async def test_log_sql_false_logs_nothing(db_path: Path, sql_log: _CaptureSQL) -> None:
    """log_sql=False keeps statements out of the log."""
    pool = DatabasePool.sqlite(db_path, log_sql=False)
    with LoggingContext("req"):
        await pool.execute("quiet", "SELECT 1")
    await pool.close()
    assert sql_log.lines == []


async def test_writers_serialised_readers_concurrent(pool: DatabasePool, observer: RecordingObserver) -> None:
    """Two writers never collide (no retries); a reader proceeds while a writer holds the lock."""
    in_write = threading.Event()
    release = threading.Event()

    def long_write(txn: Cursor) -> None:
        txn.execute("INSERT INTO t VALUES (1)")
        in_write.set()
        release.wait(5)

    with LoggingContext("req"):
        w1 = asyncio.ensure_future(pool.run_interaction("long_write", long_write))
        while not in_write.is_set():
            await asyncio.sleep(0.001)
        w2 = asyncio.ensure_future(pool.run_interaction("insert", _insert, 2))
        assert await pool.run_interaction("count", _count) == 0  # reader not blocked
        await asyncio.sleep(0.02)
        assert not w2.done()  # second writer waits for the lock
        release.set()
        await asyncio.gather(w1, w2)
        assert await pool.run_interaction("count", _count) == 2
    assert observer.of("retry") == []


async def test_observer_sees_schedule_transactions_queries(
    pool: DatabasePool, observer: RecordingObserver
) -> None:
    """The metrics hook receives schedule time, per-desc transactions and statement verbs."""
    with LoggingContext("req"):
        await pool.run_interaction("insert", _insert, 1)
        await pool.run_interaction("count", _count)
    assert len(observer.of("scheduled")) == 2
    txns = observer.of("transaction")
    assert [(e[1], e[3], e[4]) for e in txns] == [("insert", 1, True), ("count", 1, True)]
    assert all(e[2] > 0 for e in txns)
    assert [e[1] for e in observer.of("query")] == ["INSERT", "SELECT"]


async def test_call_after_runs_only_after_commit(pool: DatabasePool) -> None:
    """call_after callbacks run after a successful commit, never for a rolled-back attempt."""
    ran: list[str] = []

    def ok(txn: Cursor) -> None:
        txn.call_after(ran.append, "ok")
        assert ran == []

    def fails(txn: Cursor) -> None:
        txn.call_after(ran.append, "fails")
        raise ValueError("no")

    with LoggingContext("req"):
        await pool.run_interaction("ok", ok)
        with pytest.raises(ValueError):
            await pool.run_interaction("fails", fails)
    assert ran == ["ok"]


async def test_coroutine_function_rejected(pool: DatabasePool) -> None:
    """An async fn is refused with a TypeError naming the desc (it would never run)."""

    async def wrong(txn: Cursor) -> None:  # pragma: no cover - never awaited
        pass

    with LoggingContext("req"), pytest.raises(TypeError, match="'wrong_fn'"):
        await pool.run_interaction("wrong_fn", wrong)  # type: ignore[arg-type]


async def test_close_finishes_accepted_and_refuses_new(db_path: Path) -> None:
    """close() lets accepted interactions finish, then new ones raise RuntimeError."""
    pool = DatabasePool.sqlite(db_path, max_size=1)
    with LoggingContext("req"):
        await pool.execute("create", "CREATE TABLE t (x INTEGER)")
        futs = [pool.submit_interaction("insert", _insert, i) for i in range(10)]
        await pool.close()
        assert all(f.done() and f.exception() is None for f in futs)
        with pytest.raises(RuntimeError, match="closed"):
            await pool.execute("late", "SELECT 1")
    check = sqlite3.connect(db_path)
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 10
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()


async def test_bad_arguments_rejected(pool: DatabasePool) -> None:
    """Bad desc, fn, sizes and engines raise clear errors."""
    with LoggingContext("req"):
        with pytest.raises(ValueError, match="desc"):
            await pool.run_interaction("", _count)
        with pytest.raises(TypeError, match="desc"):
            await pool.run_interaction(None, _count)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            await pool.run_interaction("x", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        DatabasePool(sqlite3.connect, max_size=0)
    with pytest.raises(ValueError, match="engine"):
        DatabasePool(sqlite3.connect, engine="oracle")  # type: ignore[arg-type]


@pytest.mark.accuracy
def test_worker_cpu_rolls_up_from_thread_caller(pool: DatabasePool) -> None:
    """From a plain thread, submit_interaction charges the worker's CPU to the caller's parents."""
    configure(clock="cpu")  # restored by the suite's guard
    burnt: list[float] = []

    def burn(txn: Cursor) -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.02:
            pass
        burnt.append(time.thread_time() - t0)

    parent = LoggingContext("parent")
    seen: list[float] = []

    def caller() -> None:
        with LoggingContext("thread-req", parent_context=parent) as req:
            pool.submit_interaction("burn", burn).result(5)
            seen.append(req.get_resource_usage().ru_utime)

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert seen[0] >= burnt[0] * 0.95
    assert burnt[0] * 0.95 <= parent.get_resource_usage().ru_utime <= burnt[0] * 1.15 + 0.003


async def test_read_only_connections_work(db_path: Path) -> None:
    """A read-only connection (mode=ro) that cannot switch to WAL still serves reads."""
    setup = sqlite3.connect(db_path)
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.execute("INSERT INTO t VALUES (5)")
    setup.commit()
    setup.close()
    pool = DatabasePool(
        lambda: sqlite3.connect(f"file:{db_path}?mode=ro", uri=True), engine="sqlite", max_size=2
    )
    with LoggingContext("req"):
        assert await pool.execute("read", "SELECT x FROM t") == [(5,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly") as info:
            await pool.execute("write", "INSERT INTO t VALUES (6)")
    await pool.close()
    assert any("'write'" in n for n in info.value.__notes__)
