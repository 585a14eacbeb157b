"""Helpers for the replication tests: fast options, waiting, process harnesses, fakes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from homeserver.app import MainProcess, ProcessOptions, Worker
from homeserver.config import DatabaseConfig


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
    main: MainProcess | None = None,
    options: ProcessOptions | None = None,
    *,
    port: int | None = None,
    main_http: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[Worker]:
    """A worker connected to ``main`` (or to ``port``: a proxy or a fake main)."""
    if main is not None and main_http is None and main.http_port:
        main_http = f"http://127.0.0.1:{main.http_port}"
    if port is None:
        assert main is not None
        port = main.replication_port
    worker = Worker(
        name,
        db,
        main=("127.0.0.1", port),
        main_http=main_http,
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


class LinePeer:
    """One raw line-protocol endpoint (a fake main's accepted socket or a raw client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[str] = []

    def send(self, *lines: str) -> None:
        for line in lines:
            self.writer.write(line.encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_line(self, timeout: float = 5.0) -> str | None:
        """The next line without its newline, or None at EOF."""
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        self.received.append(line)
        return line

    async def expect(self, prefix: str, timeout: float = 5.0) -> str:
        """Read lines until one starts with ``prefix`` (skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self.read_line(timeout)
                if line is None:
                    raise AssertionError(f"EOF while waiting for {prefix!r}; got {self.received}")
                if line.startswith(prefix):
                    return line

    async def read_until_eof(self, timeout: float = 5.0) -> list[str]:
        lines = []
        async with asyncio.timeout(timeout):
            while (line := await self.read_line(timeout)) is not None:
                lines.append(line)
        return lines

    def close(self) -> None:
        self.writer.close()


async def raw_client(port: int) -> LinePeer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    return LinePeer(reader, writer)


class FakeMain:
    """A scripted replication server: the test writes the server's lines by hand."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[LinePeer] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FakeMain:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.peers.put(LinePeer(r, w))

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0, limit=1 << 20)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def accept(self, timeout: float = 5.0, server_name: str = "localhost") -> LinePeer:
        """Next connection, greeted with SERVER; its REPLICATE already read."""
        async with asyncio.timeout(timeout):
            peer = await self.peers.get()
        peer.send(f"SERVER {server_name}")
        await peer.expect("REPLICATE")
        return peer

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            while not self.peers.empty():
                self.peers.get_nowait().close()


class Proxy:
    """A byte-level TCP proxy that can cut connections at a chosen byte offset."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepting = True
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._cut: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _on_conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if not self.accepting:
            cw.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        pair = (cw, uw)
        self.pairs.append(pair)
        for src, dst, direction in ((cr, uw, "up"), (ur, cw, "down")):
            t = asyncio.ensure_future(self._pipe(src, dst, direction, pair))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: str,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                left = self._cut.get(direction)
                if left is not None and left <= len(data):
                    dst.write(data[:left])
                    del self._cut[direction]
                    self._abort(pair)
                    return
                if left is not None:
                    self._cut[direction] = left - len(data)
                dst.write(data)
        except (ConnectionError, OSError):
            pass
        self._abort(pair)

    def _abort(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        for w in pair:
            w.transport.abort()
        with contextlib.suppress(ValueError):
            self.pairs.remove(pair)

    def cut_after(self, direction: str, offset: int) -> None:
        """Abort the connection once ``offset`` more bytes went ``up`` or ``down``."""
        self._cut[direction] = offset

    def cut_all(self) -> None:
        for pair in list(self.pairs):
            self._abort(pair)

    async def stop(self) -> None:
        self.accepting = False
        self.cut_all()
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
