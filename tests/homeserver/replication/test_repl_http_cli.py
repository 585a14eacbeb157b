"""The main process's HTTP API (scenario 9) and the `main`/`worker` commands end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from homeserver.config import DatabaseConfig
from replhelpers import fast_options, running_main

UPDATES = "/_synapse/replication/get_repl_stream_updates/typing?instance=master&from_token=0&upto_token=1"


@pytest.mark.parametrize(
    ("secret", "auth", "status"),
    [("s", None, 403), ("s", "Bearer wrong", 403), ("s", "Bearer s", 200), (None, None, 200)],
)
async def test_catch_up_endpoint_bearer_auth(
    db_cfg: DatabaseConfig, secret: str | None, auth: str | None, status: int
) -> None:
    """With a secret, a missing or wrong bearer gets 403 and the right one 200; without, all are accepted."""
    async with asyncio.timeout(10), running_main(db_cfg, fast_options(secret=secret)) as main:
        main.set_typing("!r:x", "@a:x", True)
        headers = {"Authorization": auth} if auth else {}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{main.http_port}{UPDATES}", headers=headers) as r:
                assert r.status == status
                if status == 200:
                    assert await r.json() == {
                        "updates": [[1, ["!r:x", ["@a:x"]]]],
                        "upto_token": 1,
                        "limited": False,
                    }


async def test_write_endpoints_and_validation(db_cfg: DatabaseConfig) -> None:
    """The write endpoints feed the streams; bad bodies get 400 naming the problem."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        base = f"http://127.0.0.1:{main.http_port}"
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                f"{base}/_hs/events",
                json={
                    "room_id": "!r:x",
                    "type": "m.room.message",
                    "sender": "@a:x",
                    "content": {"body": "hi"},
                },
            )
            assert r.status == 200 and (await r.json())["stream_ordering"] == 2
            r = await s.put(f"{base}/_hs/devices/@a:x", json={"device_ids": ["D1"], "hosts": ["h"]})
            assert r.status == 200 and (await r.json()) == {"stream_id": 3}
            r = await s.put(f"{base}/_hs/typing/!r:x/@a:x", json={"typing": True})
            assert r.status == 200 and (await r.json()) == {"serial": 1}
            r = await s.get(f"{base}/_hs/status")
            assert (await r.json())["positions"] == {"events": 2, "device_lists": 3, "typing": 1}
            r = await s.put(f"{base}/_hs/devices/@a:x", json={"device_ids": []})
            assert r.status == 400 and "device_ids" in (await r.json())["error"]
            r = await s.post(f"{base}/_hs/events", data=b"not json")
            assert r.status == 400
            r = await s.put(f"{base}/_hs/typing/!r:x/@a:x", json={"typing": "yes"})
            assert r.status == 400


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "homeserver", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], word: str, timeout: float = 20) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return line
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"{word!r} not printed within {timeout}s")


def _http(method: str, url: str, body: Any = None) -> Any:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_main_and_worker_commands_end_to_end(tmp_path: Path) -> None:
    """`main` and `worker` run as processes: rows written over HTTP reach the worker; SIGTERM exits 0."""
    db = f"sqlite:///{tmp_path / 'hs.db'}"
    rport, hport, wport = _free_port(), _free_port(), _free_port()
    main = _spawn(
        "main",
        "--database",
        db,
        "--replication",
        f"127.0.0.1:{rport}",
        "--http",
        f"127.0.0.1:{hport}",
        "--replication-secret",
        "k",
        "--log-level",
        "WARNING",
        cwd=tmp_path,
    )
    worker = None
    try:
        _wait_ready(main, "main ready")
        worker = _spawn(
            "worker",
            "--name",
            "w1",
            "--database",
            db,
            "--main",
            f"127.0.0.1:{rport}",
            "--main-http",
            f"http://127.0.0.1:{hport}",
            "--replication-secret",
            "k",
            "--http",
            f"127.0.0.1:{wport}",
            "--record",
            str(tmp_path / "rows.jsonl"),
            cwd=tmp_path,
        )
        _wait_ready(worker, "worker w1 ready")
        for i in range(3):
            _http(
                "PUT", f"http://127.0.0.1:{hport}/_hs/devices/@u{i}:x", {"device_ids": ["D"], "hosts": ["h"]}
            )
        _http(
            "POST",
            f"http://127.0.0.1:{hport}/_hs/events",
            {
                "room_id": "!r:x",
                "type": "m.room.member",
                "sender": "@u0:x",
                "state_key": "@u0:x",
                "content": {"membership": "join"},
            },
        )
        _http("PUT", f"http://127.0.0.1:{hport}/_hs/typing/!r:x/@u0:x", {"typing": True})
        deadline = time.monotonic() + 15
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = _http("GET", f"http://127.0.0.1:{wport}/_hs/status")
            if status["positions"].get("device_lists", {}).get("master") == 7 and status["typing"]:
                break
            time.sleep(0.1)
        assert status["positions"]["device_lists"]["master"] == 7
        assert status["positions"]["events"]["master"] == 2
        assert status["typing"] == {"!r:x": ["@u0:x"]}
        records = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
        assert [r["token"] for r in records if r["stream"] == "device_lists"] == list(range(2, 8))
        for proc in (worker, main):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    finally:
        for proc in (worker, main):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["main", "--database", "mysql://x"], "unsupported database DSN"),
        (["main", "--database", "sqlite:///x", "--http", "nope"], "--http 'nope' must be HOST:PORT"),
        (["worker", "--name", "w", "--database", "sqlite:///x"], "give --main HOST:PORT"),
        (["worker", "--name", "bad name", "--database", "sqlite:///x", "--main", "h:1"], "--name"),
        (["main", "--database", "sqlite:///x", "--ping-interval", "0"], "must be > 0"),
    ],
)
def test_bad_flags_are_clear_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    """Bad flags exit 2 with a message naming the problem."""
    proc = subprocess.run(
        [sys.executable, "-m", "homeserver", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_help_lists_flags() -> None:
    """`--help` documents every flag of both commands."""
    for cmd, flags in (
        ("main", ["--database", "--replication", "--http", "--redis", "--replication-secret"]),
        ("worker", ["--name", "--database", "--main", "--redis"]),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "homeserver", cmd, "--help"], capture_output=True, text=True, timeout=30
        ).stdout
        assert all(f in out for f in flags)
