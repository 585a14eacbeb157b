"""Configuration helpers: DSNs, ``HOST:PORT`` flags and opening the database.

``--database`` takes ``sqlite:///PATH`` (``sqlite:///:memory:`` for tests) or a
``postgresql://`` URL.  :func:`open_database` returns a
``logcontext.db.DatabasePool`` when the library provides one and a small
thread-pool stand-in with the same surface otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "DatabaseConfig",
    "open_database",
    "parse_database",
    "parse_hostport",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseConfig:
    """A parsed ``--database`` value."""

    engine: Literal["sqlite", "postgres"]
    target: str  # SQLite path, or the PostgreSQL conninfo URL

    def describe(self) -> str:
        if self.engine == "sqlite":
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        host = parts.hostname or "localhost"
        return f"postgresql://{host}:{parts.port or 5432}{parts.path}"


def parse_database(dsn: str) -> DatabaseConfig:
    """Parse ``sqlite:///PATH`` or ``postgresql://…``; raise ``ValueError`` naming the problem."""
    if dsn.startswith("sqlite:///"):
        path = dsn[len("sqlite:///") :]
        if not path:
            raise ValueError(f"database DSN {dsn!r} has no path (use sqlite:///PATH)")
        # sqlite:////abs/path and sqlite:///rel/path both work: keep what follows.
        return DatabaseConfig("sqlite", path)
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        if not parts.path.strip("/") and not parts.query:
            raise ValueError(f"database DSN {dsn!r} names no database")
        return DatabaseConfig("postgres", dsn)
    raise ValueError(f"unsupported database DSN {dsn!r}: expected sqlite:///PATH or postgresql://...")


def parse_hostport(value: str, *, what: str = "address") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too); raise ``ValueError`` naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {value!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {value!r}: port must be an integer 0-65535")
    return host, int(port_text)


# -- database ---------------------------------------------------------------------------


def _sqlite_connect(path: str, readonly: bool) -> Callable[[], Any]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA busy_timeout = 10000")
        if path != ":memory:" and not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        return conn

    return connect


def _pg_connect(dsn: str) -> Callable[[], Any]:
    def connect() -> Any:
        import psycopg

        return psycopg.connect(dsn, autocommit=False)

    return connect


class _Engine:
    def __init__(self, name: str) -> None:
        self.name = name

    def convert_param_style(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.name == "postgres" else sql


def _retryable(e: BaseException) -> bool:
    text = str(e).lower()
    if isinstance(e, sqlite3.OperationalError):
        return "locked" in text or "busy" in text
    name = type(e).__name__
    return name in {"SerializationFailure", "DeadlockDetected"}


class _ConvertingCursor:
    """Wraps a driver cursor so SQL written with ``?`` runs on psycopg too."""

    def __init__(self, cur: Any, engine: _Engine) -> None:
        self._cur = cur
        self._engine = engine

    def execute(self, sql: str, args: Any = None) -> Any:
        sql = self._engine.convert_param_style(sql)
        return self._cur.execute(sql) if args is None else self._cur.execute(sql, args)

    def executemany(self, sql: str, args: Any) -> Any:
        return self._cur.executemany(self._engine.convert_param_style(sql), args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class FallbackPool:
    """Minimal stand-in for ``logcontext.db.DatabasePool`` (same call surface).

    One thread per connection; ``run_interaction`` runs ``fn(cursor, *args)``
    in a transaction, retries lock errors, and shields cancellation so a
    cancelled caller resumes only once the transaction really ended.
    """

    def __init__(
        self, connect: Callable[[], Any], *, engine: str, max_size: int = 4, max_retries: int = 5
    ) -> None:
        self.engine = _Engine(engine)
        self._connect = connect
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_size, thread_name_prefix="hs-db")
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._max_retries = max_retries

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        conn = self._conn()
        attempt = 0
        while True:
            cur = _ConvertingCursor(conn.cursor(), self.engine)
            try:
                if self.engine.name == "sqlite":
                    cur.execute("BEGIN")
                result = fn(cur, *args, **kwargs)
                conn.commit() if self.engine.name == "postgres" else cur.execute("COMMIT")
                return result
            except BaseException as e:
                with contextlib.suppress(Exception):
                    conn.rollback()
                if attempt < self._max_retries and _retryable(e):
                    attempt += 1
                    time.sleep(0.01 * attempt)
                    continue
                raise
            finally:
                with contextlib.suppress(Exception):
                    cur.close()

    async def run_interaction(self, desc: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        del desc
        fut = asyncio.wrap_future(self._executor.submit(self._run, fn, args, kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await fut
            raise

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()


def open_database(cfg: DatabaseConfig, *, readonly: bool = False, max_size: int = 4) -> Any:
    """A pool for ``cfg``: ``logcontext.db.DatabasePool`` if available, else :class:`FallbackPool`."""
    connect = _sqlite_connect(cfg.target, readonly) if cfg.engine == "sqlite" else _pg_connect(cfg.target)
    if cfg.engine == "sqlite" and cfg.target == ":memory:":
        max_size = 1
    try:
        from logcontext.db import DatabasePool
    except ImportError:
        return FallbackPool(connect, engine=cfg.engine, max_size=max_size)
    return DatabasePool(connect, engine=cfg.engine, max_size=max_size)
