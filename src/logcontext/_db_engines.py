"""Database engines for :class:`logcontext.db.DatabasePool`: SQLite and PostgreSQL.

An engine knows its driver's quirks: how to prepare a fresh connection, how a
transaction begins, which errors are worth retrying, when a connection is gone,
and the parameter style. psycopg is never imported here; its errors are
recognised by SQLSTATE and by the module already loaded in ``sys.modules``.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "Engine",
    "PostgresEngine",
    "SqliteEngine",
    "resolve_engine",
    "sanitize_sql",
    "statement_verb",
]

#: First SQL words that label ``db_query_time_seconds{verb}``; anything else is ``OTHER``.
VERBS: Final = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "UPSERT",
        "REPLACE",
        "WITH",
        "VALUES",
        "CREATE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "PRAGMA",
        "EXPLAIN",
        "ANALYZE",
        "VACUUM",
        "LOCK",
        "SET",
        "SHOW",
        "COPY",
    }
)
#: Verbs that never write; every other statement takes SQLite's writer lock.
READ_VERBS: Final = frozenset({"SELECT", "EXPLAIN", "VALUES", "SHOW"})

_verb_cache: dict[str, str] = {}
_CACHE_MAX: Final = 4096


def statement_verb(sql: str) -> str:
    """The statement's first keyword, upper-cased, if in :data:`VERBS`, else ``"OTHER"``."""
    verb = _verb_cache.get(sql)
    if verb is not None:
        return verb
    text = sql.lstrip(" \t\r\n(")
    while text.startswith(("--", "/*")):  # skip leading comments
        if text.startswith("--"):
            nl = text.find("\n")
            text = "" if nl < 0 else text[nl + 1 :]
        else:
            end = text.find("*/")
            text = "" if end < 0 else text[end + 2 :]
        text = text.lstrip(" \t\r\n(")
    word = text[:16].split(None, 1)[0].upper() if text else ""
    word = word.rstrip(";(")
    verb = word if word in VERBS else "OTHER"
    if len(_verb_cache) >= _CACHE_MAX:
        _verb_cache.clear()
    _verb_cache[sql] = verb
    return verb


_LITERALS: Final = re.compile(
    r"'(?:[^']|'')*'"  # string literals
    r"|(?<![\w$.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])"  # numbers, not in names
)
_sanitized: dict[str, str] = {}


def sanitize_sql(sql: str) -> str:
    """``sql`` with string and numeric literals replaced by ``?`` (for span attributes)."""
    out = _sanitized.get(sql)
    if out is None:
        out = _LITERALS.sub("?", sql)
        if len(_sanitized) >= _CACHE_MAX:
            _sanitized.clear()
        _sanitized[sql] = out
    return out


class Engine:
    """Driver-specific behaviour; subclass for another DB-API driver.

    ``name`` is the pool's engine name, ``system_name`` the OpenTelemetry
    ``db.system.name``. ``single_writer`` makes the pool serialise writing
    transactions with a lock (SQLite).
    """

    name: ClassVar[str] = "generic"
    system_name: ClassVar[str] = "other_sql"
    single_writer: ClassVar[bool] = False
    #: True when :meth:`convert_param_style` changes anything (the cursor skips it otherwise).
    converts_params: ClassVar[bool] = False

    def convert_param_style(self, sql: str) -> str:
        """Rewrite ``?`` placeholders into the driver's style (identity here)."""
        return sql

    def on_connect(self, conn: Any, *, max_size: int) -> None:
        """Prepare a connection just opened in its worker thread."""

    def begin(self, conn: Any, *, immediate: bool) -> None:
        """Start a transaction (``immediate``: the pool holds the writer lock)."""

    def is_retryable(self, exc: BaseException) -> bool:
        """True for errors after which the whole transaction may simply run again."""
        return False

    def is_connection_lost(self, exc: BaseException, conn: Any | None) -> bool:
        """True when ``exc`` means ``conn`` is unusable and must be reopened."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class SqliteEngine(Engine):
    """The standard library's :mod:`sqlite3`.

    Connections run with ``isolation_level=None`` (the driver never opens
    transactions behind our back) and ``journal_mode=WAL``: readers proceed
    while one writer writes. The pool admits one writing transaction at a
    time (see :class:`~logcontext.db.DatabasePool`). Retries: ``SQLITE_BUSY``
    and ``SQLITE_LOCKED`` (extended codes included).
    """

    name = "sqlite"
    system_name = "sqlite"
    single_writer = True

    def __init__(self, *, wal: bool = True) -> None:
        self.wal = wal

    def on_connect(self, conn: Any, *, max_size: int) -> None:
        if isinstance(conn, sqlite3.Connection):
            conn.isolation_level = None
        if max_size > 1:
            rows = conn.execute("PRAGMA database_list").fetchall()
            main = next((r for r in rows if r[1] == "main"), None)
            if main is not None and not main[2]:
                raise ValueError(
                    "an in-memory (or temporary) SQLite database needs max_size=1: "
                    "each connection would open a different database"
                )
        if self.wal:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode not in ("wal", "memory"):
                try:
                    conn.execute("PRAGMA journal_mode=WAL").fetchall()
                except sqlite3.OperationalError as e:
                    # A read-only connection (``mode=ro``, ``query_only``) cannot
                    # switch; it reads in whatever mode the writer chose.
                    code = getattr(e, "sqlite_errorcode", None)
                    readonly = (
                        (code & 0xFF) == sqlite3.SQLITE_READONLY
                        if isinstance(code, int)
                        else "readonly" in str(e)
                    )
                    if not readonly:
                        raise

    def begin(self, conn: Any, *, immediate: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def is_retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        msg = str(exc).lower()
        return "locked" in msg or "busy" in msg


_PG_RETRY_STATES: Final = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


class PostgresEngine(Engine):
    """psycopg 3 (imported only by :meth:`DatabasePool.postgres`, never here).

    Connections run with ``autocommit=False``: the first statement opens the
    transaction. Retries: ``SerializationFailure`` and ``DeadlockDetected``.
    A psycopg ``OperationalError`` with the connection closed or broken means
    the connection is lost.
    """

    name = "postgres"
    system_name = "postgresql"
    converts_params = True

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def convert_param_style(self, sql: str) -> str:
        """Map ``?`` placeholders to ``%s`` and escape literal ``%`` as ``%%``.

        Question marks inside quoted strings, quoted identifiers, dollar-quoted
        strings and comments are left alone. The result is meant for
        ``execute(sql, params)``; without params psycopg takes SQL verbatim.
        """
        out = self._cache.get(sql)
        if out is None:
            out = _convert_qmark(sql)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[sql] = out
        return out

    def on_connect(self, conn: Any, *, max_size: int) -> None:
        if getattr(conn, "autocommit", False):
            conn.autocommit = False

    def is_retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in _PG_RETRY_STATES

    def is_connection_lost(self, exc: BaseException, conn: Any | None) -> bool:
        psycopg = sys.modules.get("psycopg")
        if psycopg is None or not isinstance(exc, psycopg.OperationalError):
            return False
        return conn is None or bool(conn.closed) or bool(getattr(conn, "broken", False))


def _convert_qmark(sql: str) -> str:
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        elif c in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "$":
            j = sql.find("$", i + 1)
            tag = sql[i : j + 1] if j > 0 else ""
            if tag and (tag == "$$" or tag[1:-1].replace("_", "a").isalnum()) and not tag[1].isdigit():
                end = sql.find(tag, j + 1)
                end = n if end < 0 else end + len(tag)
                out.append(sql[i:end].replace("%", "%%"))
                i = end
            else:
                out.append(c)
                i += 1
        else:
            j = i + 1
            while j < n and sql[j] not in "?%'\"-/$":
                j += 1
            out.append(sql[i:j])
            i = j
    return "".join(out)


EngineName = Literal["sqlite", "postgres"]


def resolve_engine(engine: EngineName | Engine | str) -> Engine:
    """An :class:`Engine` from a name (``sqlite``, ``postgres``/``postgresql``) or an instance."""
    if isinstance(engine, Engine):
        return engine
    if engine == "sqlite":
        return SqliteEngine()
    if engine in ("postgres", "postgresql", "psycopg"):
        return PostgresEngine()
    raise ValueError(f"unknown database engine {engine!r}: expected 'sqlite', 'postgres' or an Engine")
