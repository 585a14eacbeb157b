"""Real HTTP servers on loopback for the web tests, each in its own thread and metered loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from logcontext import aio

START_TIMEOUT_S = 10.0


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _LoopThread:
    """Runs ``main(started, stop_event)`` in a thread on a loop with metering installed."""

    def __init__(self, main: Callable[[threading.Event, asyncio.Event], Any]) -> None:
        self._main = main
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        async def runner() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self._main(self._started, self._stop)

        try:
            with asyncio.Runner(loop_factory=aio.loop_factory()) as r:
                r.run(runner())
        except BaseException as e:  # surfaced by start()/stop()
            self._error = e
            self._started.set()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError("test server did not start in time")
        if self._error is not None:
            raise RuntimeError("test server failed to start") from self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError("test server did not stop in time")


@contextmanager
def aiohttp_server(app: Any, *, handler_cancellation: bool = False) -> Iterator[str]:
    """Serve the aiohttp ``app`` on 127.0.0.1:<free port>; yields the base URL."""
    from aiohttp import web

    sock = _bound_socket()
    port = sock.getsockname()[1]

    async def main(started: threading.Event, stop: asyncio.Event) -> None:
        runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        started.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    t = _LoopThread(main)
    t.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        t.stop()
        sock.close()


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    sock = _bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="critical",
        access_log=False,
        http="h11",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    async def main(started: threading.Event, stop: asyncio.Event) -> None:
        serve = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and not serve.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started.set()
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({serve, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await asyncio.wait_for(serve, START_TIMEOUT_S)
        stop_wait.cancel()

    t = _LoopThread(main)
    t.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        t.stop()
        sock.close()


class RecordCollector(logging.Handler):
    """Thread-safe list of records from the access loggers (and others, if attached)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cv = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cv:
            self.records.append(record)
            self._cv.notify_all()

    def access(self) -> list[logging.LogRecord]:
        with self._cv:
            return [
                r for r in self.records if r.name.startswith("logcontext.access") and hasattr(r, "access")
            ]

    def wait_access(self, n: int, timeout: float = 10.0) -> list[logging.LogRecord]:
        """Wait until ``n`` access lines were logged (the response may reach the client first)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                got = [
                    r for r in self.records if r.name.startswith("logcontext.access") and hasattr(r, "access")
                ]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {n} access lines, got {len(got)}: {[r.getMessage() for r in got]}"
                    )
                self._cv.wait(left)

    def named(self, prefix: str) -> list[logging.LogRecord]:
        with self._cv:
            return [r for r in self.records if r.name.startswith(prefix)]


def raw_request(
    base: str,
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    close_after_s: float | None = None,
    timeout: float = 10.0,
) -> bytes:
    """Send one request with the exact request-target bytes; return the raw response.

    With ``close_after_s``, the client hangs up that long after sending (a disconnect).
    """
    host, port = base.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if close_after_s is not None:
            time.sleep(close_after_s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)
