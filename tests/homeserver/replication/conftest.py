"""Fixtures for the replication tests: a real ``redis-server`` and a SQLite database.

``redis_url`` starts one ``redis-server`` per session on a free loopback port in
a temporary directory and stops it at the end.  Without the binary the tests
skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from homeserver.config import DatabaseConfig, parse_database


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"redis tests cannot run in CI: {why}", pytrace=False)
    pytest.skip(f"redis-server not available: {why}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of a throwaway ``redis-server`` (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _redis_missing("no redis-server on PATH")
    try:
        import redis  # noqa: F401
    except ImportError:
        _redis_missing("the redis client package is not installed")
    assert binary is not None
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                _redis_missing(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                _redis_missing("redis-server did not answer PING within 10 s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def db_cfg(tmp_path: Path) -> DatabaseConfig:
    return parse_database(f"sqlite:///{tmp_path / 'hs.db'}")
