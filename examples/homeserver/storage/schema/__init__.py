"""The schema: every ``*.sql`` file of this package, applied in name order.

Each SQL file holds portable statements (SQLite and PostgreSQL) separated by
``;`` at line ends; every statement must be idempotent (``CREATE TABLE IF NOT
EXISTS``, ``CREATE INDEX IF NOT EXISTS``) so the schema can be applied at every
start-up.

Columns added to a table after it was first released are also listed in
:data:`UPGRADE_COLUMNS`: :func:`apply_schema` creates the tables, adds those
columns to a table that lacks them (``ALTER TABLE … ADD COLUMN``, portable),
then runs the remaining statements (indexes may use the new columns).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["UPGRADE_COLUMNS", "apply_schema", "schema_statements"]

# table -> [(column, type and constraints)], in the order they were added.
UPGRADE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    # The events stream reads the event store (replaces the old `event_stream` table).
    "events": [
        ("stream_ordering", "BIGINT"),
        ("instance_name", "TEXT NOT NULL DEFAULT 'master'"),
        ("redacts", "TEXT"),
        ("relates_to", "TEXT"),
        ("membership", "TEXT"),
    ],
}


def schema_statements() -> list[str]:
    """Return every statement of every schema file, files in name order."""
    files = sorted(
        (f for f in resources.files(__name__).iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    statements: list[str] = []
    for f in files:
        text = "\n".join(
            line for line in f.read_text("utf-8").splitlines() if not line.lstrip().startswith("--")
        )
        statements.extend(s.strip() for s in text.split(";") if s.strip())
    return statements


def _upgrade_txn(txn: Any) -> list[str]:
    """Add the :data:`UPGRADE_COLUMNS` a table lacks; return ``table.column`` of each added."""
    added: list[str] = []
    for table, columns in UPGRADE_COLUMNS.items():
        txn.execute(f"SELECT * FROM {table} LIMIT 0")
        have = {d[0].lower() for d in txn.description or ()}
        txn.fetchall()
        for column, decl in columns:
            if column not in have:
                txn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                added.append(f"{table}.{column}")
    if "events.stream_ordering" in added:
        # Events stored before the upgrade have no stream ordering, and the old
        # `event_stream` table's orderings are not carried over: a reader's stored
        # events position may lie above the new stream, so forget it (readers start
        # at 0 and miss nothing).
        txn.execute("DELETE FROM stream_positions WHERE stream_name = 'events'")
    return added


def apply_schema(txn: Any) -> None:
    """Apply the whole schema with a DB-API cursor (inside a transaction)."""
    statements = schema_statements()
    tables = [s for s in statements if s.upper().startswith("CREATE TABLE")]
    for statement in tables:
        txn.execute(statement)
    _upgrade_txn(txn)
    for statement in statements:
        if statement not in tables:
            txn.execute(statement)
