"""A throwaway PostgreSQL cluster for the test suite (session fixture ``pg_dsn``).

``initdb`` runs in a temporary directory, the server listens on a free loopback
port only (no Unix socket), and the cluster is stopped and deleted at the end
of the session. Run as root, the server runs as the ``postgres`` user (or
``nobody``), since PostgreSQL refuses to run as root.

``LOGCONTEXT_TEST_PG_DSN`` points the fixture at an existing server instead.
Without binaries or psycopg the tests skip, unless ``CI`` is set: then they
fail, so CI can never silently skip PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PgCluster", "find_pg_bin", "make_database", "pg_dsn"]

_DB_NAME = "logcontext_test"


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {why}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {why}")


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest version first."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    for initdb in candidates:
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _traversable_by_others(path: Path) -> bool:
    """True if every directory from ``/`` down to ``path`` lets other users through."""
    for p in (path, *path.parents):
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _temp_parent() -> str | None:
    """A temp directory the server user can reach (``TMPDIR`` may sit under ``/root``)."""
    if os.geteuid() != 0:
        return None
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        if Path(candidate).is_dir() and _traversable_by_others(Path(candidate)):
            return candidate
    return None


class PgCluster:
    """One ``initdb``-created cluster in ``root``; ``start()``/``stop()``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="logcontext-pg-", dir=_temp_parent()))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            name = "postgres"
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                name = "nobody"
                pw = pwd.getpwnam(name)
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            # The server user must traverse the temp dir and own its files.
            os.chmod(self.root, 0o755)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *argv: str, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self._user,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}"
            )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        last: Exception | None = None
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=60 -c shared_buffers=16MB"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                    timeout=90.0,
                )
                return
            except RuntimeError as e:
                last = e
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def make_database(dsn: str, name: str | None = None) -> str:
    """Create a fresh database on the server of ``dsn``; return its DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a database on a throwaway PostgreSQL server (see module docstring)."""
    try:
        import psycopg
    except ImportError:
        _missing("psycopg is not installed")
        raise
    external = os.environ.get("LOGCONTEXT_TEST_PG_DSN")
    if external:
        yield external
        return
    bindir = find_pg_bin()
    if bindir is None:
        _missing("initdb/pg_ctl not found (install Debian's postgresql)")
        raise AssertionError("unreachable")
    cluster = PgCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{_DB_NAME}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield cluster.dsn(_DB_NAME)
    finally:
        cluster.stop()
