"""Engines: parameter style, statement verbs, retryable and lost-connection errors."""

from __future__ import annotations

import sqlite3

import pytest

from logcontext._db_engines import (
    PostgresEngine,
    SqliteEngine,
    resolve_engine,
    sanitize_sql,
    statement_verb,
)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT '?' , ?", "SELECT '?' , %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ('SELECT "we?ird" FROM t WHERE x = ?', 'SELECT "we?ird" FROM t WHERE x = %s'),
        ("SELECT a FROM t WHERE b LIKE 'x%' AND c = ?", "SELECT a FROM t WHERE b LIKE 'x%%' AND c = %s"),
        ("SELECT 5 % 2, ?", "SELECT 5 %% 2, %s"),
        ("SELECT ? -- why?\n, ?", "SELECT %s -- why?\n, %s"),
        ("SELECT /* a? */ ?", "SELECT /* a? */ %s"),
        ("SELECT $$ ? $$, $tag$ ?' $tag$, ?", "SELECT $$ ? $$, $tag$ ?' $tag$, %s"),
        ("SELECT jsonb_path ? 'k'", "SELECT jsonb_path %s 'k'"),
    ],
)
def test_postgres_param_style(sql: str, expected: str) -> None:
    """`?` outside literals and comments becomes %s; every % is escaped for psycopg."""
    assert PostgresEngine().convert_param_style(sql) == expected


def test_sqlite_param_style_is_identity() -> None:
    """SQLite keeps qmark placeholders unchanged."""
    assert SqliteEngine().convert_param_style("SELECT ? WHERE a LIKE '%'") == ("SELECT ? WHERE a LIKE '%'")


@pytest.mark.parametrize(
    ("sql", "verb"),
    [
        ("select 1", "SELECT"),
        ("  INSERT INTO t VALUES (1)", "INSERT"),
        ("-- comment\nUPDATE t SET a = 1", "UPDATE"),
        ("/* c */ delete from t", "DELETE"),
        ("(SELECT 1) UNION (SELECT 2)", "SELECT"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("frobnicate", "OTHER"),
        ("", "OTHER"),
    ],
)
def test_statement_verb(sql: str, verb: str) -> None:
    """The metric verb is the first keyword from a fixed set, else OTHER."""
    assert statement_verb(sql) == verb


def test_sqlite_retryable_errors() -> None:
    """Busy and locked errors are retryable; others (and non-sqlite errors) are not."""
    eng = SqliteEngine()
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT * FROM missing")
    conn.close()
    assert not eng.is_retryable(info.value)
    assert eng.is_retryable(sqlite3.OperationalError("database is locked"))
    assert not eng.is_retryable(ValueError("database is locked"))
    assert not eng.is_connection_lost(sqlite3.OperationalError("x"), None)


def test_postgres_retryable_by_sqlstate() -> None:
    """Serialization failures and deadlocks are retryable, other SQLSTATEs not."""
    psycopg = pytest.importorskip("psycopg")
    eng = PostgresEngine()
    assert eng.is_retryable(psycopg.errors.SerializationFailure())
    assert eng.is_retryable(psycopg.errors.DeadlockDetected())
    assert not eng.is_retryable(psycopg.errors.UniqueViolation())
    assert eng.is_connection_lost(psycopg.OperationalError("gone"), None)
    assert not eng.is_connection_lost(psycopg.errors.UniqueViolation(), None)


def test_resolve_engine() -> None:
    """Names map to engines, instances pass through, unknown names raise ValueError."""
    assert resolve_engine("sqlite").system_name == "sqlite"
    assert resolve_engine("postgres").system_name == "postgresql"
    eng = SqliteEngine(wal=False)
    assert resolve_engine(eng) is eng
    with pytest.raises(ValueError, match="'mysql'"):
        resolve_engine("mysql")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'secret', 42 FROM t1 WHERE a = ?", "SELECT ?, ? FROM t1 WHERE a = ?"),
        ("UPDATE t SET note = 'it''s' WHERE id = 7", "UPDATE t SET note = ? WHERE id = ?"),
        ("SELECT x FROM t WHERE id = $1 LIMIT 10", "SELECT x FROM t WHERE id = $1 LIMIT ?"),
        ("SELECT -3.5e2, col2 FROM t", "SELECT ?, col2 FROM t"),
    ],
)
def test_sanitize_sql_for_spans(sql: str, expected: str) -> None:
    """Span statements lose string and numeric literals, keep names and placeholders."""
    assert sanitize_sql(sql) == expected
