"""Database accounting: a pool of DB-API connections on worker threads (spec §8).

:class:`DatabasePool` runs each *interaction* — a plain function
``fn(txn, *args)`` — in one transaction on a worker thread, inside a child of
the caller's logging context, and records into the caller's context the time
spent waiting for a connection (``db_sched_duration_sec``), the transaction's
wall time (``db_txn_duration_sec``) and one transaction (``db_txn_count``).
The worker's CPU is charged to that child, so it rolls up into the caller.

SQLite (:mod:`sqlite3`) and PostgreSQL (psycopg 3, extra ``[postgres]``,
imported only when used) are built in; other DB-API drivers plug in through
:class:`Engine`.

>>> pool = DatabasePool.sqlite("app.db")
>>> rows = await pool.execute("list_users", "SELECT name FROM users WHERE id > ?", 10)
>>> await pool.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import itertools
import logging
import os
import queue
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from types import CoroutineType, TracebackType
from typing import Any, Concatenate, Final, Generic, ParamSpec, TypeVar

from . import _db_hooks, _ledger
from ._config import config as _config
from ._context import (
    SENTINEL_CONTEXT,
    LoggingContext,
    LoggingContextOrSentinel,
    current_context,
    set_current_context,
)
from ._context import enter_measured_child as _enter_measured_child
from ._context import exit_measured_child as _exit_measured_child
from ._db_cursor import Cursor
from ._db_engines import Engine, EngineName, PostgresEngine, SqliteEngine, resolve_engine
from ._misuse import report

__all__ = [
    "ConnectionLostError",
    "Cursor",
    "DatabaseObserver",
    "DatabasePool",
    "Engine",
    "FetchDeduplicator",
    "PostgresEngine",
    "SqliteEngine",
    "record_event_fetch",
    "set_database_observer",
]

DatabaseObserver = _db_hooks.DatabaseObserver
set_database_observer = _db_hooks.set_observer

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

logger: Final = logging.getLogger("logcontext.db")
_monotonic: Final = time.monotonic
_copy_context: Final = contextvars.copy_context
_get_running_loop: Final = asyncio.get_running_loop
_current_context: Final = current_context
_settle_pending: Final = _ledger.settle_pending


class ConnectionLostError(Exception):
    """The connection died under an interaction and it could not be retried.

    Either it died while committing — the transaction may or may not have been
    committed, so running it again could apply it twice — or every retry lost
    its connection too. ``desc``, ``txn_id`` and ``during_commit`` say which;
    the driver's error is the ``__cause__``.
    """

    def __init__(self, desc: str, txn_id: str, attempts: int, *, during_commit: bool) -> None:
        self.desc = desc
        self.txn_id = txn_id
        self.attempts = attempts
        self.during_commit = during_commit
        if during_commit:
            msg = (
                f"database connection lost while committing interaction {desc!r} "
                f"(txn {txn_id}): it may or may not have been committed; not retried"
            )
        else:
            msg = (
                f"database connection lost in interaction {desc!r} (txn {txn_id}) "
                f"on each of {attempts} attempts; nothing was committed"
            )
        super().__init__(msg)


def _tracing() -> Any | None:
    mod = sys.modules.get("logcontext.tracing")
    if mod is None:
        return None
    try:
        return mod if mod.tracing_enabled() else None
    except Exception:  # pragma: no cover - half-initialised tracing
        return None


def _context_span_starter(tracing: Any) -> Any | None:
    """``start_context_span`` (a span owned by a logging context), wherever tracing keeps it."""
    fn = getattr(tracing, "start_context_span", None)
    if fn is None:
        api = sys.modules.get("logcontext.tracing._api")
        fn = getattr(api, "start_context_span", None)
    return fn


class _Job:
    """One submitted interaction and where its outcome goes."""

    __slots__ = (
        "args",
        "cfuture",
        "context",
        "desc",
        "exc",
        "finished",
        "fn",
        "kwargs",
        "loop",
        "on_finish",
        "parent",
        "result",
        "t_submit",
        "waiter",
    )

    def __init__(
        self,
        desc: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: LoggingContextOrSentinel,
        loop: asyncio.AbstractEventLoop | None = None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> None:
        self.desc = desc
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.parent = parent
        self.result: Any = None
        self.exc: BaseException | None = None
        self.loop = loop
        self.waiter = waiter
        self.cfuture: concurrent.futures.Future[Any] | None = None
        self.finished = False  # loop thread only
        self.on_finish: asyncio.Future[None] | None = None  # loop thread only
        self.t_submit = 0.0
        self.context: contextvars.Context | None = None


class _WorkerState:
    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Any = None


def _deliver_to_loop(job: _Job) -> None:
    """Runs on the caller's loop: hand the outcome to the awaiting coroutine."""
    job.finished = True
    w = job.waiter
    if w is not None and not w.done():
        if job.exc is None:
            w.set_result(job.result)
        else:
            w.set_exception(job.exc)
    f = job.on_finish
    if f is not None and not f.done():
        f.set_result(None)


class DatabasePool:
    """A pool of ``max_size`` worker threads, each owning one connection.

    ``connect()`` is called in a worker thread to open that worker's
    connection (thread-affine, as :mod:`sqlite3` requires); ``engine`` is
    ``"sqlite"``, ``"postgres"`` or an :class:`Engine`. Threads and
    connections are created on demand, named ``logcontext-db-<name>_<i>``.

    Retryable errors (SQLite busy/locked; PostgreSQL serialization failures
    and deadlocks) roll back and run the whole interaction again, up to
    ``max_retries`` times; so does a connection lost before ``COMMIT`` (it is
    reopened). Other errors roll back and propagate with a note naming the
    interaction's ``desc``.

    SQLite: one writer. Readers run concurrently (WAL), but a transaction
    takes the pool's writer lock before its first statement that is not a
    plain read and keeps it until commit or rollback; interactions known to
    write start with the lock held and ``BEGIN IMMEDIATE``, so they never hit
    a stale snapshot. Waiting for that lock counts as transaction time.
    ``max_size`` is therefore the number of concurrent *readers*.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        engine: EngineName | Engine = "sqlite",
        name: str = "main",
        max_size: int = 10,
        max_retries: int = 5,
        server_name: str | None = None,
        trace_queries: bool = False,
        log_sql: bool = True,
    ) -> None:
        if not callable(connect):
            raise TypeError(f"connect must be a callable returning a connection, not {connect!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"pool name must be a non-empty str, not {name!r}")
        if type(max_size) is not int or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, not {max_size!r}")
        if type(max_retries) is not int or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, not {max_retries!r}")
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise ValueError(f"server_name must be a non-empty str or None, not {server_name!r}")
        self._connect = connect
        self.engine: Engine = resolve_engine(engine)
        self.name = name
        self.max_size = max_size
        self.max_retries = max_retries
        self._server_name = server_name
        self.trace_queries = bool(trace_queries)
        self.log_sql = bool(log_sql)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._txn_counters: dict[str, Iterator[int]] = {}
        self._sentinel_descs: set[str] = set()
        #: SQLite's one-writer lock (``None`` for engines without ``single_writer``).
        self._write_lock: threading.Lock | None = threading.Lock() if self.engine.single_writer else None
        self._writer_descs: set[str] = set()
        _db_hooks.pools.add(self)

    # -- convenience constructors ----------------------------------------------

    @classmethod
    def sqlite(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        wal: bool = True,
        max_size: int | None = None,
        **kwargs: Any,
    ) -> DatabasePool:
        """A pool over a SQLite database file (``":memory:"`` needs ``max_size=1``).

        ``timeout`` is how long a statement waits for another process's lock
        before failing (then the interaction is retried). ``max_size`` defaults
        to 1 for an in-memory database, else 10.
        """
        database = os.fspath(path)
        memory = database in ("", ":memory:") or (
            database.startswith("file:") and ("mode=memory" in database or database[5:6] in ("", "?"))
        )
        if max_size is None:
            max_size = 1 if memory else 10
        elif memory and max_size != 1:
            raise ValueError(
                f"an in-memory SQLite database needs max_size=1, not {max_size}: "
                "each connection would open a different database"
            )
        uri = database.startswith("file:")

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(database, timeout=timeout, isolation_level=None, uri=uri)

        return cls(connect, engine=SqliteEngine(wal=wal), max_size=max_size, **kwargs)

    @classmethod
    def postgres(
        cls, conninfo: str, *, connect_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> DatabasePool:
        """A pool over PostgreSQL with psycopg 3 (``pip install logcontext-tracing[postgres]``).

        ``conninfo`` is a libpq DSN or URI; ``connect_kwargs`` go to
        ``psycopg.connect``. Connections use ``autocommit=False``.
        """
        try:
            import psycopg
        except ImportError as e:
            raise ImportError(
                "DatabasePool.postgres needs psycopg 3: pip install 'logcontext-tracing[postgres]'"
            ) from e
        extra = dict(connect_kwargs or {})
        extra["autocommit"] = False

        def connect() -> Any:
            return psycopg.connect(conninfo, **extra)

        return cls(connect, engine=PostgresEngine(), **kwargs)

    # -- properties ----------------------------------------------------------

    @property
    def server_name(self) -> str:
        """The ``server_name`` metric label: the explicit one, else the configured default."""
        name = self._server_name
        return _config.default_server_name if name is None else name

    @property
    def connections_in_use(self) -> int:
        """Workers running an interaction now (for the ``db_connections_in_use`` gauge)."""
        return max(0, len(self._threads) - self._idle)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` (or :meth:`shutdown`) was called."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<DatabasePool {self.name!r} {self.engine.name} max_size={self.max_size}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- submitting ------------------------------------------------------------

    async def run_interaction(
        self,
        desc: str,
        fn: Callable[Concatenate[Cursor, P], R],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``fn(txn, *args, **kwargs)`` in a transaction on a worker; return its result.

        Shielded from cancellation: a cancelled caller gets ``CancelledError``
        only once the transaction has finished and been recorded.
        """
        tracing = _tracing()
        if tracing is not None:
            with tracing.start_span(
                f"db.{desc}",
                attributes={"db.system.name": self.engine.system_name, "logcontext.db.desc": desc},
                record_usage=False,
            ):
                return await self._await_job(desc, fn, args, kwargs)  # type: ignore[no-any-return]
        # The untraced path awaits the job's future here: no nested coroutine.
        loop = _get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        job = _Job(desc, fn, args, kwargs, _current_context(), loop, waiter)
        self._submit(job)
        try:
            return await waiter
        except asyncio.CancelledError:
            await _finish_cancelled(job, loop)
            raise

    async def _await_job(
        self, desc: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        loop = _get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        job = _Job(desc, fn, args, kwargs, _current_context(), loop, waiter)
        self._submit(job)
        try:
            return await waiter
        except asyncio.CancelledError:
            await _finish_cancelled(job, loop)
            raise

    def submit_interaction(
        self,
        desc: str,
        fn: Callable[Concatenate[Cursor, P], R],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> concurrent.futures.Future[R]:
        """Like :meth:`run_interaction`, from any thread or loop; returns a future.

        The future is already running: ``cancel()`` never stops the transaction.
        """
        job = _Job(desc, fn, args, kwargs, current_context())
        cf: concurrent.futures.Future[R] = concurrent.futures.Future()
        cf.set_running_or_notify_cancel()
        job.cfuture = cf
        self._submit(job)
        return cf

    async def execute(self, desc: str, sql: str, /, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) in its own transaction; return its rows."""
        return await self.run_interaction(desc, _execute_fetch, sql, args if args else None)

    def _submit(self, job: _Job) -> None:
        desc = job.desc
        if type(desc) is not str or not desc:
            if not isinstance(desc, str):
                raise TypeError(f"desc must be a str naming the interaction, not {desc!r}")
            raise ValueError("desc must be a non-empty str naming the interaction")
        if not callable(job.fn):
            raise TypeError(f"interaction {desc!r}: fn must be callable, not {job.fn!r}")
        if not job.parent and desc not in self._sentinel_descs:
            self._sentinel_descs.add(desc)
            report(
                "sentinel-usage",
                f"database interaction {desc!r} started outside any logging context: "
                "its time is not recorded",
                site=f"db:{desc}",
            )
        job.context = _copy_context()
        job.t_submit = _monotonic()
        q = self._queue
        with self._lock:
            if self._closed:
                raise RuntimeError(f"database pool {self.name!r} is closed (interaction {desc!r})")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_size:
                i = len(self._threads)
                t = threading.Thread(target=self._worker, name=f"logcontext-db-{self.name}_{i}", daemon=True)
                self._threads.append(t)
                t.start()
            q.put(job)

    # -- the worker side -------------------------------------------------------

    def _worker(self) -> None:
        state = _WorkerState()
        get = self._queue.get
        try:
            while True:
                job = get()
                if job is None:
                    break
                job.context.run(self._run_job, state, job)  # type: ignore[union-attr]
                del job
        finally:
            conn, state.conn = state.conn, None
            if conn is not None:
                _close_quietly(conn)

    def _run_job(self, state: _WorkerState, job: _Job) -> None:
        parent = job.parent
        try:
            if parent:
                # The copied Context has the caller's context current; make the
                # sentinel the restore point so the worker's ledger never keeps
                # charging the caller once the child exits.
                set_current_context(SENTINEL_CONTEXT)
                # A transaction that enters no context of its own is charged exactly at the
                # child's exit (no window to settle for it below).
                child = _enter_measured_child(parent)  # type: ignore[arg-type]  # truthy
                try:
                    if _tracing() is None:
                        job.result = self._transact(state, job, child, None)
                    else:
                        job.result = self._transact_traced(state, job, child)
                except BaseException as e:
                    _exit_measured_child(child, type(e), e, e.__traceback__)
                    raise
                _exit_measured_child(child)
            elif _tracing() is None:
                job.result = self._transact(state, job, None, None)
            else:
                job.result = self._transact_traced(state, job, None)
        except BaseException as e:
            job.exc = e
        # Charge the child's CPU before the caller can read its figures (the sampled
        # step mode leaves a young window open at the child's exit).
        _settle_pending()
        with self._lock:
            self._idle += 1
        cf = job.cfuture
        if cf is not None:
            if job.exc is None:
                cf.set_result(job.result)
            else:
                cf.set_exception(job.exc)
        loop = job.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(_deliver_to_loop, job)
            except RuntimeError:  # the caller's loop is closed
                logger.debug("loop closed before interaction %r finished", job.desc)

    def _transact_traced(self, state: _WorkerState, job: _Job, owner: LoggingContext | None) -> Any:
        tracing = _tracing()
        if tracing is None:
            return self._transact(state, job, owner, None)
        attributes = {"db.system.name": self.engine.system_name, "logcontext.db.desc": job.desc}
        start_context_span = _context_span_starter(tracing)
        if start_context_span is None:  # older tracing module: a span with its own child
            with tracing.start_span("db.txn", attributes=attributes, kind="client") as span:
                ctx = current_context()
                return self._transact(state, job, ctx if isinstance(ctx, LoggingContext) else None, span)
        # The child context owns the span: it ends, with the child's usage, when the child exits.
        with start_context_span(owner, "db.txn", attributes=attributes, kind="client") as span:
            return self._transact(state, job, owner, span)

    def _transact(self, state: _WorkerState, job: _Job, ctx: LoggingContext | None, span: Any) -> Any:
        """Run the job's transaction, with retries, and record it into ``ctx``.

        ``ctx`` (the worker's child context, else ``None``) gets the scheduling
        and transaction time and one transaction in a single locked update.
        """
        desc = job.desc
        now = _monotonic()
        sched = now - job.t_submit
        if sched < 0.0:
            sched = 0.0
        obs = _db_hooks.observer
        if obs is not None:
            _observe(obs.scheduled, self, sched)
        counter = self._txn_counters.get(desc)
        if counter is None:
            counter = self._txn_counters.setdefault(desc, itertools.count(1))
        txn_id = f"{desc}-{next(counter)}"
        if span is not None:
            span.set_attribute("logcontext.db.txn_id", txn_id)
        engine = self.engine
        write_lock = self._write_lock
        attempts = 0
        ok = False
        result: Any = None
        after: list[Any] | None = None
        t_begin = now
        try:
            while True:
                attempts += 1
                conn = state.conn
                cur: Cursor | None = None
                phase = -1  # -1 connect, 0 begin, 1 body, 2 commit
                try:
                    if conn is None:
                        conn = self._open(state)
                    phase = 0
                    cur = Cursor(self, conn, desc, txn_id)
                    immediate = write_lock is not None and desc in self._writer_descs
                    if immediate:
                        write_lock.acquire()  # type: ignore[union-attr]
                        cur._writing = True
                    engine.begin(conn, immediate=immediate)
                    phase = 1
                    result = job.fn(cur, *job.args, **job.kwargs)
                    if type(result) is CoroutineType:
                        result.close()
                        raise TypeError(
                            f"interaction {desc!r}: fn must be a plain function, "
                            "not a coroutine function (it runs on a worker thread)"
                        )
                    phase = 2
                    conn.commit()
                    ok = True
                    after = cur._after
                    break
                except BaseException as e:
                    lost = self._after_failure(state, conn, e)
                    retry = attempts <= self.max_retries and isinstance(e, Exception)
                    if lost and phase == -1:  # could not (re)connect: keep the driver's error
                        if not retry:
                            _add_note(e, desc, txn_id, attempts, "could not connect")
                            raise
                    elif lost:
                        if phase == 2:
                            raise ConnectionLostError(desc, txn_id, attempts, during_commit=True) from e
                        if not retry:
                            raise ConnectionLostError(desc, txn_id, attempts, during_commit=False) from e
                    elif not (retry and engine.is_retryable(e)):
                        _add_note(e, desc, txn_id, attempts)
                        raise
                    logger.info(
                        "retrying interaction %r (txn %s, attempt %d failed: %s)",
                        desc,
                        txn_id,
                        attempts,
                        e,
                    )
                finally:
                    if cur is not None:
                        if cur._writing:
                            cur._writing = False
                            assert write_lock is not None
                            write_lock.release()
                        cur.close()
                # retrying: the lock is released, back off a little
                if obs is not None:
                    _observe(obs.retry, self, desc)
                time.sleep(min(0.2, 0.005 * 2 ** (attempts - 1)) * (0.5 + random.random() / 2))
        finally:
            duration = _monotonic() - t_begin
            if ctx is not None:
                # One locked update of the child and every ancestor.
                ctx._add(0.0, 0.0, 1, duration if duration > 0.0 else 0.0, sched, 0)
            if obs is not None:
                _observe(obs.transaction, self, desc, duration, attempts, ok)
            if span is not None:
                span.set_attribute("logcontext.db.attempts", attempts)
        if after:
            _run_after(after, desc)
        return result

    def _take_write_lock(self, cur: Cursor) -> None:
        assert self._write_lock is not None
        self._write_lock.acquire()
        cur._writing = True
        self._writer_descs.add(cur.desc)

    def _open(self, state: _WorkerState) -> Any:
        conn = self._connect()
        try:
            self.engine.on_connect(conn, max_size=self.max_size)
        except BaseException:
            _close_quietly(conn)
            raise
        state.conn = conn
        return conn

    def _after_failure(self, state: _WorkerState, conn: Any, exc: BaseException) -> bool:
        """Roll back after ``exc``; drop the connection if it is lost. True if lost."""
        if conn is None:
            return self.engine.is_connection_lost(exc, None)
        if self.engine.is_connection_lost(exc, conn):
            state.conn = None
            _close_quietly(conn)
            return True
        try:
            conn.rollback()
        except Exception as e:
            if self.engine.is_connection_lost(e, conn):
                state.conn = None
                _close_quietly(conn)
                return True
            logger.warning("rollback failed after %r; reopening the connection", exc)
            state.conn = None
            _close_quietly(conn)
        return False

    # -- closing ---------------------------------------------------------------

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new interactions; run those already accepted, then close every connection."""
        with self._lock:
            threads = list(self._threads)
            if not self._closed:
                self._closed = True
                for _ in threads:
                    self._queue.put(None)
        _db_hooks.pools.discard(self)
        if wait:
            me = threading.current_thread()
            for t in threads:
                if t is not me:
                    t.join()

    async def close(self) -> None:
        """Asynchronous :meth:`shutdown`: wait for accepted interactions, close connections."""
        self.shutdown(wait=False)
        if any(t.is_alive() for t in self._threads):
            await asyncio.to_thread(self.shutdown, True)

    async def __aenter__(self) -> DatabasePool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _execute_fetch(txn: Cursor, sql: str, args: tuple[Any, ...] | None) -> list[tuple[Any, ...]]:
    txn.execute(sql, args)
    return [tuple(r) for r in txn.fetchall()]


async def _finish_cancelled(job: _Job, loop: asyncio.AbstractEventLoop) -> None:
    """The caller was cancelled: wait until the job has finished and been recorded."""
    while not job.finished:
        job.on_finish = loop.create_future()
        with contextlib.suppress(asyncio.CancelledError):
            await job.on_finish
    if job.exc is not None and not isinstance(job.exc, asyncio.CancelledError):
        logger.warning(
            "database interaction %r failed after its caller was cancelled",
            job.desc,
            exc_info=job.exc,
        )


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _add_note(exc: BaseException, desc: str, txn_id: str, attempts: int, what: str = "") -> None:
    prefix = f"{what} " if what else ""
    with contextlib.suppress(Exception):
        exc.add_note(f"{prefix}in database interaction {desc!r} (txn {txn_id}, attempt {attempts})")


def _observe(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("database metrics observer %r failed", fn)


def _run_after(after: list[Any], desc: str) -> None:
    for fn, args, kwargs in after:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.exception("call_after callback %r of interaction %r failed", fn, desc)


def record_event_fetch(count: int) -> None:
    """Count ``count`` events loaded from the database in the current context.

    Count only events that were neither cached nor already being fetched by
    another caller (:class:`FetchDeduplicator` does that bookkeeping).
    """
    if type(count) is not int or count < 0:
        raise ValueError(f"record_event_fetch needs a non-negative int, not {count!r}")
    ctx = current_context()
    if ctx:
        ctx.record_event_fetch(count)


_MISSING: Final[Any] = object()


class FetchDeduplicator(Generic[K, V]):
    """Coalesce concurrent loads of the same keys into one fetch (asyncio).

    ``fetch(keys)`` loads the given keys (e.g. events by id) and returns a
    mapping of those found. A key already being loaded for another caller is
    awaited, not fetched again. Each caller's context is charged
    ``record_event_fetch`` only for the keys it fetched itself: two
    concurrent requests for one uncached event make one fetch, charged 1 and 0.
    The fetch runs as a task in the first caller's context, so cancelling that
    caller does not fail the others.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        count_fetches: bool = True,
    ) -> None:
        self._fetch = fetch
        self._count = count_fetches
        self._in_flight: dict[K, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Keys being fetched now."""
        return len(self._in_flight)

    async def get(self, key: K) -> V | None:
        """The value for ``key``, or ``None`` if ``fetch`` did not find it."""
        return (await self.get_many((key,))).get(key)

    async def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """Values for ``keys`` found by ``fetch`` (missing keys are left out)."""
        loop = asyncio.get_running_loop()
        waits: dict[K, asyncio.Future[Any]] = {}
        mine: list[K] = []
        for k in keys:
            if k in waits:
                continue
            f = self._in_flight.get(k)
            if f is None:
                f = loop.create_future()
                self._in_flight[k] = f
                mine.append(k)
            waits[k] = f
        if mine:
            futs = {k: waits[k] for k in mine}
            task = loop.create_task(self._load(mine, futs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pending = [f for f in waits.values() if not f.done()]
        if pending:
            await asyncio.wait(pending)
        out: dict[K, V] = {}
        for k, f in waits.items():
            v = f.result()
            if v is not _MISSING:
                out[k] = v
        return out

    async def _load(self, keys: list[K], futs: dict[K, asyncio.Future[Any]]) -> None:
        try:
            if self._count:
                record_event_fetch(len(keys))
            found = await self._fetch(keys)
        except asyncio.CancelledError:
            for f in futs.values():
                f.cancel()
            raise
        except BaseException as e:
            for f in futs.values():
                if not f.done():
                    f.set_exception(e)
                    f.exception()  # retrieved by the waiters; never "never retrieved"
            if not isinstance(e, Exception):
                raise
        else:
            for k, f in futs.items():
                if not f.done():
                    f.set_result(found.get(k, _MISSING))
        finally:
            for k, f in futs.items():
                if self._in_flight.get(k) is f:
                    del self._in_flight[k]
