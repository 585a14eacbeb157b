"""DatabasePool against a real PostgreSQL server (the suite's throwaway cluster, ``pg_dsn``)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from logcontext import LoggingContext, current_context
from logcontext.db import ConnectionLostError, Cursor, DatabasePool

pytestmark = pytest.mark.postgres


@pytest.fixture
def table(pg_dsn: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id SERIAL PRIMARY KEY, x INTEGER, note TEXT)")
    return name


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[DatabasePool]:
    p = DatabasePool.postgres(pg_dsn, max_size=3)
    yield p
    await p.close()


def _kill_backend(dsn: str, pid: int) -> None:
    """Terminate backend ``pid`` from another connection and wait until it is gone."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None:
                return
            time.sleep(0.01)


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"SELECT x FROM {table} ORDER BY x").fetchall()


async def test_interactions_counted_rolled_up(pool: DatabasePool, table: str) -> None:
    """N PostgreSQL interactions from a request give db_txn_count == N up the chain."""

    def insert(txn: Cursor, x: int) -> int:
        txn.execute(f"INSERT INTO {table} (x, note) VALUES (?, ?) RETURNING id", (x, "100% ok?"))
        return int(txn.fetchone()[0])

    with LoggingContext("parent") as parent:
        with LoggingContext("req", parent_context=parent) as req:
            ids = [await pool.run_interaction("insert", insert, i) for i in range(4)]
            rows = await pool.execute("select", f"SELECT x, note FROM {table} WHERE x >= ?", 2)
            usage = req.get_resource_usage()
    assert len(set(ids)) == 4
    assert sorted(rows) == [(2, "100% ok?"), (3, "100% ok?")]
    assert usage.db_txn_count == 5
    assert usage.db_txn_duration_sec > 0
    assert usage.db_sched_duration_sec > 0
    assert parent.get_resource_usage().db_txn_count == 5
    assert pool.engine.convert_param_style("SELECT ? WHERE a LIKE 'x%?'") == ("SELECT %s WHERE a LIKE 'x%%?'")


async def test_child_context_on_pg_worker(pool: DatabasePool) -> None:
    """fn runs on a pool thread in a child of the caller, with its own connection."""

    def probe(txn: Cursor) -> tuple[str, Any, int]:
        ctx = current_context()
        pid = txn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return str(ctx), getattr(ctx, "parent_context", None), pid

    with LoggingContext("req") as req:
        name, parent, _pid = await pool.run_interaction("probe", probe)
    assert (name, parent) == ("req", req)


async def test_serialization_failure_retried(pg_dsn: str, table: str) -> None:
    """Two SERIALIZABLE transactions with a write skew: one fails, is retried, both commit."""
    pool = DatabasePool.postgres(pg_dsn, max_size=2)
    barrier = threading.Barrier(2, timeout=5)
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def skew(txn: Cursor, who: str) -> None:
        with lock:
            attempts[who] = attempts.get(who, 0) + 1
            first = attempts[who] == 1
        txn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        total = txn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if first:
            barrier.wait()  # both have read before either writes
        txn.execute(f"INSERT INTO {table} (x) VALUES (?)", (total,))

    with LoggingContext("req") as req:
        await asyncio.gather(pool.run_interaction("skew", skew, "a"), pool.run_interaction("skew", skew, "b"))
        assert req.get_resource_usage().db_txn_count == 2
    await pool.close()
    assert sorted(attempts.values()) == [1, 2]
    assert _rows(pg_dsn, table) == [(0,), (1,)]


async def test_killed_backend_mid_transaction_is_retried(pool: DatabasePool, pg_dsn: str, table: str) -> None:
    """A backend killed mid-transaction: reconnect, retry; earlier commits kept, no duplicates."""
    calls: list[int] = []

    def insert(txn: Cursor, x: int) -> None:
        txn.execute(f"INSERT INTO {table} (x) VALUES (?)", (x,))

    def killed_once(txn: Cursor) -> None:
        calls.append(1)
        pid = txn.execute("SELECT pg_backend_pid()").fetchone()[0]
        txn.execute(f"INSERT INTO {table} (x) VALUES (2)")
        if len(calls) == 1:
            _kill_backend(pg_dsn, pid)
            txn.execute("SELECT 1")  # the lost connection surfaces here

    with LoggingContext("req") as req:
        await pool.run_interaction("insert", insert, 1)
        await pool.run_interaction("killed_once", killed_once)
        await pool.run_interaction("insert", insert, 3)
        assert req.get_resource_usage().db_txn_count == 3
    assert len(calls) == 2
    assert _rows(pg_dsn, table) == [(1,), (2,), (3,)]


async def test_lost_connection_every_attempt_surfaces_clear_error(pg_dsn: str, table: str) -> None:
    """When every attempt loses its connection the error names the desc; nothing is committed."""
    pool = DatabasePool.postgres(pg_dsn, max_size=1, max_retries=1)

    def always_killed(txn: Cursor) -> None:
        pid = txn.execute("SELECT pg_backend_pid()").fetchone()[0]
        txn.execute(f"INSERT INTO {table} (x) VALUES (9)")
        _kill_backend(pg_dsn, pid)
        txn.execute("SELECT 1")

    with LoggingContext("req") as req:
        with pytest.raises(ConnectionLostError, match="'always_killed'") as info:
            await pool.run_interaction("always_killed", always_killed)
        assert req.get_resource_usage().db_txn_count == 1
        # the pool recovers: the next interaction gets a fresh connection
        assert await pool.execute("after", "SELECT 1") == [(1,)]
    await pool.close()
    assert info.value.attempts == 2 and not info.value.during_commit
    assert isinstance(info.value.__cause__, psycopg_operational_error())
    assert _rows(pg_dsn, table) == []


def psycopg_operational_error() -> type[BaseException]:
    import psycopg

    return psycopg.OperationalError


class _KillOnCommit:
    """A connection proxy whose commit() first kills its own backend."""

    def __init__(self, conn: Any, dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn
        self.kill = False

    def commit(self) -> None:
        if self.kill:
            pid = self._conn.info.backend_pid
            _kill_backend(self._dsn, pid)
        self._conn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_conn", "_dsn", "kill"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)


async def test_connection_lost_during_commit_not_retried(pg_dsn: str, table: str) -> None:
    """A connection lost while committing is surfaced (outcome unknown), never retried."""
    import psycopg

    conns: list[_KillOnCommit] = []

    def connect() -> _KillOnCommit:
        c = _KillOnCommit(psycopg.connect(pg_dsn, autocommit=False), pg_dsn)
        conns.append(c)
        return c

    pool = DatabasePool(connect, engine="postgres", max_size=1)
    calls: list[int] = []

    def insert(txn: Cursor, x: int) -> None:
        calls.append(x)
        txn.execute(f"INSERT INTO {table} (x) VALUES (?)", (x,))

    with LoggingContext("req") as req:
        await pool.run_interaction("first", insert, 1)
        conns[0].kill = True
        with pytest.raises(ConnectionLostError, match="committing interaction 'commit_lost'") as info:
            await pool.run_interaction("commit_lost", insert, 2)
        await pool.run_interaction("third", insert, 3)
        assert req.get_resource_usage().db_txn_count == 3
    await pool.close()
    assert info.value.during_commit
    assert calls == [1, 2, 3]
    assert _rows(pg_dsn, table) == [(1,), (3,)]  # killed before COMMIT reached the server


async def test_concurrent_interactions_use_separate_connections(pool: DatabasePool, table: str) -> None:
    """max_size=3 runs three blocking transactions at once, on three backends."""
    barrier = threading.Barrier(3, timeout=5)

    def meet(txn: Cursor) -> int:
        pid = int(txn.execute("SELECT pg_backend_pid()").fetchone()[0])
        barrier.wait()
        return pid

    with LoggingContext("req") as req:
        pids = await asyncio.gather(*(pool.run_interaction("meet", meet) for _ in range(3)))
        assert req.get_resource_usage().db_txn_count == 3
    assert len(set(pids)) == 3


async def test_deadlock_retried(pg_dsn: str, table: str) -> None:
    """Two transactions locking rows in opposite order: the deadlock victim is retried."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} (id, x) VALUES (1, 0), (2, 0)")
    pool = DatabasePool.postgres(pg_dsn, max_size=2)
    barrier = threading.Barrier(2, timeout=5)
    attempts: list[str] = []

    def cross(txn: Cursor, first: int, second: int) -> None:
        attempts.append(f"{first}{second}")
        txn.execute("SET LOCAL deadlock_timeout = '50ms'")
        txn.execute(f"UPDATE {table} SET x = x + 1 WHERE id = ?", (first,))
        if len(attempts) <= 2:
            barrier.wait()  # both hold their first row
        txn.execute(f"UPDATE {table} SET x = x + 1 WHERE id = ?", (second,))

    with LoggingContext("req") as req:
        await asyncio.gather(
            pool.run_interaction("cross", cross, 1, 2), pool.run_interaction("cross", cross, 2, 1)
        )
        assert req.get_resource_usage().db_txn_count == 2
    await pool.close()
    assert len(attempts) == 3
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT x FROM {table} ORDER BY id").fetchall()
    assert rows == [(2,), (2,)]


async def test_unreachable_server_raises_driver_error_with_desc() -> None:
    """A server that cannot be reached: connect retried, then the driver's error names the desc."""
    import psycopg
    from _pg import _free_port

    pool = DatabasePool.postgres(
        f"postgresql://postgres@127.0.0.1:{_free_port()}/none",
        connect_kwargs={"connect_timeout": 2},
        max_retries=1,
    )
    with LoggingContext("req") as req:
        with pytest.raises(psycopg.OperationalError) as info:
            await pool.execute("probe_down", "SELECT 1")
        assert req.get_resource_usage().db_txn_count == 1
    await pool.close()
    assert any("could not connect in database interaction 'probe_down'" in n for n in info.value.__notes__)


async def test_named_parameters_passed_through(pool: DatabasePool, table: str) -> None:
    """With a mapping of parameters the SQL goes to psycopg unconverted (%(name)s style)."""

    def named(txn: Cursor) -> list[Any]:
        txn.execute(f"INSERT INTO {table} (x, note) VALUES (%(x)s, %(note)s)", {"x": 4, "note": "n"})
        txn.executemany(f"INSERT INTO {table} (x) VALUES (%(x)s)", [{"x": 5}, {"x": 6}])
        txn.executemany(f"INSERT INTO {table} (x) VALUES (?)", [(7,), (8,)])
        return txn.execute(f"SELECT x FROM {table} WHERE note = ?", ("n",)).fetchall()

    with LoggingContext("req"):
        assert await pool.run_interaction("named", named) == [(4,)]
        assert len(await pool.execute("all", f"SELECT x FROM {table}")) == 5
