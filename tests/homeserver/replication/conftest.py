"""Fixtures for the replication tests: a real ``redis-server``, fast options, helpers.

``redis_url`` starts one ``redis-server`` per session on a free loopback port in
a temporary directory and stops it at the end.  Without the binary the tests
skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from homeserver.app import MainProcess, ProcessOptions, Worker
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


def fast_options(**overrides: Any) -> ProcessOptions:
    """Options with short intervals for tests (contract checks on)."""
    values: dict[str, Any] = {
        "ping_interval": 1.0,
        "ping_timeout": 10.0,
        "close_abort": 2.0,
        "auth_timeout": 5.0,
        "catch_up_backoff": 0.05,
        "catch_up_backoff_max": 0.2,
        "reconnect_min": 0.02,
        "reconnect_max": 0.2,
        "check_whole_tokens": True,
        "position_interval": 0.2,
    }
    values.update(overrides)
    return ProcessOptions(**values)


@pytest.fixture
def db_cfg(tmp_path: Path) -> DatabaseConfig:
    return parse_database(f"sqlite:///{tmp_path / 'hs.db'}")


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``pred`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_main(
    db: DatabaseConfig, options: ProcessOptions | None = None, *, http: bool = True
) -> AsyncIterator[MainProcess]:
    main = MainProcess(
        db,
        replication=("127.0.0.1", 0),
        http=("127.0.0.1", 0) if http else None,
        options=options or fast_options(),
    )
    await main.start()
    try:
        yield main
    finally:
        await main.stop()


@contextlib.asynccontextmanager
async def running_worker(
    name: str,
    db: DatabaseConfig,
    main: MainProcess,
    options: ProcessOptions | None = None,
    **kwargs: Any,
) -> AsyncIterator[Worker]:
    http = f"http://127.0.0.1:{main.http_port}" if main.http_port else None
    worker = Worker(
        name,
        db,
        main=("127.0.0.1", main.replication_port),
        main_http=http,
        options=options or fast_options(),
        **kwargs,
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def tokens(worker: Worker, stream: str) -> list[int]:
    return [d.token for d in worker.consumer.deliveries if d.stream == stream]


def synced(worker: Worker) -> bool:
    conn = worker.client.connection if worker.client else None
    return conn is not None and len({k[0] for k in conn.synced}) == len(worker.handler.streams)
