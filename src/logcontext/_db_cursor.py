"""The cursor handed to interaction functions: logs, times and traces statements."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import _db_hooks
from ._db_engines import READ_VERBS, Engine, sanitize_sql, statement_verb

if TYPE_CHECKING:
    from .db import DatabasePool

__all__ = ["Cursor", "sql_logger"]

#: Statements and their values are logged here at DEBUG, in the current context.
sql_logger: Final = logging.getLogger("logcontext.db.sql")
_DEBUG: Final = logging.DEBUG
_VALUE_MAX: Final = 1000

Params = Sequence[Any] | Mapping[str, Any]


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _VALUE_MAX:
        return value[:_VALUE_MAX] + "..."
    if isinstance(value, bytes) and len(value) > _VALUE_MAX:
        return value[:_VALUE_MAX] + b"..."
    return value


def _cut_params(args: Params) -> Any:
    if isinstance(args, Mapping):
        return {k: _cut(v) for k, v in args.items()}
    return tuple(_cut(v) for v in args)


def _tracing() -> Any | None:
    mod = sys.modules.get("logcontext.tracing")
    if mod is None:
        return None
    try:
        return mod if mod.tracing_enabled() else None
    except Exception:  # pragma: no cover - a half-initialised tracing module
        return None


class Cursor:
    """A DB-API cursor inside one transaction of one interaction.

    ``execute``/``executemany`` take ``?`` placeholders on every engine (the
    engine converts them; with a mapping of named parameters the SQL is passed
    to the driver as written); each statement is logged at DEBUG on
    ``logcontext.db.sql`` (values cut at 1000 characters), timed into the
    metrics observer, and traced as a ``db.query`` span when the pool has
    ``trace_queries``. Never commit or roll back through ``connection``: the
    pool does that.
    """

    __slots__ = (
        "_after",
        "_cur",
        "_pool",
        "_writing",
        "connection",
        "desc",
        "engine",
        "txn_id",
    )

    def __init__(self, pool: DatabasePool, connection: Any, desc: str, txn_id: str) -> None:
        self._pool = pool
        self._cur = connection.cursor()
        self._writing = False
        self._after: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] | None = None
        self.connection = connection
        self.desc = desc
        self.txn_id = txn_id
        self.engine: Engine = pool.engine

    # -- statements ----------------------------------------------------------

    def execute(self, sql: str, args: Params | None = None) -> Cursor:
        """Run one statement; returns the cursor so ``txn.execute(...).fetchall()`` works."""
        self._run(self._cur.execute, sql, args, False)
        return self

    def executemany(self, sql: str, args: Iterable[Params]) -> Cursor:
        """Run one statement per parameter set."""
        self._run(self._cur.executemany, sql, list(args), True)
        return self

    def _run(self, call: Callable[..., Any], sql: str, args: Any, many: bool) -> None:
        pool = self._pool
        if pool._write_lock is not None and not self._writing and statement_verb(sql) not in READ_VERBS:
            pool._take_write_lock(self)
        query = sql
        if args is not None and self.engine.converts_params:
            first = (args[0] if args else None) if many else args
            if not isinstance(first, Mapping):  # named parameters use the driver's own style
                query = self.engine.convert_param_style(sql)
        if pool.log_sql and sql_logger.isEnabledFor(_DEBUG):
            self._log(sql, args, many)
        obs = _db_hooks.observer
        if obs is None and not pool.trace_queries:
            if args is None:
                call(query)
            else:
                call(query, args)
            return
        tracing = _tracing() if pool.trace_queries else None
        t0 = time.perf_counter()
        try:
            if tracing is not None:
                with tracing.start_span(
                    "db.query",
                    attributes={
                        "db.system.name": self.engine.system_name,
                        "db.query.text": sanitize_sql(sql),
                        "logcontext.db.txn_id": self.txn_id,
                    },
                    record_usage=False,
                ):
                    call(query) if args is None else call(query, args)
            elif args is None:
                call(query)
            else:
                call(query, args)
        finally:
            if obs is not None:
                try:
                    obs.query(pool, statement_verb(sql), time.perf_counter() - t0)
                except Exception:
                    _db_hooks_error("query")

    def _log(self, sql: str, args: Any, many: bool) -> None:
        sql_logger.debug("[SQL] {%s} %s", self.txn_id, sql)
        if args is None:
            return
        if many:
            shown: Any = [_cut_params(a) for a in args[:20]]
            if len(args) > 20:
                shown.append(f"... {len(args) - 20} more")
        else:
            shown = _cut_params(args)
        sql_logger.debug("[SQL values] {%s} %r", self.txn_id, shown)

    # -- results -------------------------------------------------------------

    def fetchone(self) -> Any:
        """The next row, or ``None``."""
        return self._cur.fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` rows (the driver's ``arraysize`` by default)."""
        return list(self._cur.fetchmany() if size is None else self._cur.fetchmany(size))

    def fetchall(self) -> list[Any]:
        """The remaining rows (``[]`` after a statement without a result set)."""
        if self._cur.description is None:
            return []
        return list(self._cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    @property
    def rowcount(self) -> int:
        """Rows changed or returned by the last statement (``-1`` if unknown)."""
        return int(self._cur.rowcount)

    @property
    def lastrowid(self) -> Any:
        """The driver's ``lastrowid`` (SQLite: rowid of the last insert)."""
        return self._cur.lastrowid

    @property
    def description(self) -> Any:
        """The DB-API column description of the last result set."""
        return self._cur.description

    # -- callbacks -----------------------------------------------------------

    def call_after(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` on the worker after this transaction commits.

        Callbacks of an attempt that is rolled back (and retried) are dropped;
        an exception in one is logged and does not affect the result.
        """
        if self._after is None:
            self._after = []
        self._after.append((fn, args, kwargs))

    def close(self) -> None:
        """Close the driver cursor (the pool does this after each attempt)."""
        try:  # noqa: SIM105 - contextlib.suppress costs a context manager per attempt
            self._cur.close()
        except Exception:
            pass


def _db_hooks_error(what: str) -> None:
    logging.getLogger("logcontext.db").exception("database metrics observer failed in %s()", what)
