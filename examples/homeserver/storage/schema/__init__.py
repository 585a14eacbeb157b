"""The schema: every ``*.sql`` file of this package, applied in name order.

Each SQL file holds portable statements (SQLite and PostgreSQL) separated by
``;`` at line ends; every statement must be idempotent (``CREATE TABLE IF NOT
EXISTS``, ``CREATE INDEX IF NOT EXISTS``) so the schema can be applied at every
start-up.
"""

from __future__ import annotations

from importlib import resources
from typing import Any


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


def apply_schema(txn: Any) -> None:
    """Apply the whole schema with a DB-API cursor (inside a transaction)."""
    for statement in schema_statements():
        txn.execute(statement)
