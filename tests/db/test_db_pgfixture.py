"""The PostgreSQL fixture helpers in tests/_pg.py: CI fails on missing binaries, else skips."""

from __future__ import annotations

import os

import pytest
from _pg import _missing, find_pg_bin, make_database


def test_missing_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI set a missing PostgreSQL fails the test; without it, it skips."""
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        _missing("no initdb")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        _missing("no initdb")


def test_binaries_found_when_installed() -> None:
    """initdb and pg_ctl are located on PATH or under /usr/lib/postgresql/*/bin."""
    bindir = find_pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not installed (CI is set: a missing service is a failure)")
        pytest.skip("PostgreSQL binaries not installed here")
    assert (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()


@pytest.mark.postgres
def test_pg_dsn_reaches_a_fresh_server(pg_dsn: str) -> None:
    """pg_dsn connects to loopback; make_database creates an isolated database."""
    import psycopg

    dsn = make_database(pg_dsn)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone()
    assert row is not None
    assert row[0].startswith("t_")
    assert row[1] in ("127.0.0.1/32", None) or row[1].startswith("127.0.0.1")
