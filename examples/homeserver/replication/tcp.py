"""TCP transport: the main process's listener and the worker's reconnecting client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from homeserver.replication.connection import ConnectionConfig, ReplicationConnection
from homeserver.replication.handler import ReplicationHandler

__all__ = ["ReplicationClient", "ReplicationServer"]

logger = logging.getLogger(__name__)


class ReplicationServer:
    """Accepts worker connections; every accepted connection runs the server side."""

    def __init__(self, handler: ReplicationHandler, config: ConnectionConfig) -> None:
        self.handler = handler
        self.config = config
        self.connections: set[ReplicationConnection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    def _factory(self) -> ReplicationConnection:
        conn = ReplicationConnection(
            self.handler, self.config, is_server=True, on_close=self.connections.discard
        )
        self.connections.add(conn)
        return conn

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host, port, reuse_address=True)
        logger.info("Replication listening on %s:%s", host, self.port)

    async def stop(self, *, timeout: float = 5.0) -> None:
        """``ERROR server shutting down`` to every connection, then close."""
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        for conn in conns:
            conn.send_error("server shutting down", reason="shutdown")
        waits = [c.closed for c in conns if not c.closed.done()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)


class ReplicationClient:
    """Connects to the main process and reconnects with backoff (§1.4).

    The backoff (``min_backoff`` doubling to ``max_backoff``) is reset only once a
    connection has synced every stream, so a wrong-remote or bad-auth peer cannot
    make the client tight-loop (#4749).
    """

    def __init__(
        self,
        handler: ReplicationHandler,
        config: ConnectionConfig,
        host: str,
        port: int,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 1.0,
    ) -> None:
        self.handler = handler
        self.config = config
        self.host = host
        self.port = port
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.backoff = min_backoff
        self.connection: ReplicationConnection | None = None
        self.connects = 0
        self.attempts = 0
        self._task: asyncio.Task[Any] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def _reset_backoff(self) -> None:
        self.backoff = self.min_backoff

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            self.attempts += 1
            try:
                _, conn = await loop.create_connection(
                    lambda: ReplicationConnection(self.handler, self.config, is_server=False),
                    self.host,
                    self.port,
                )
            except OSError as e:
                logger.info("Replication connect to %s:%s failed: %s", self.host, self.port, e)
            else:
                self.connects += 1
                self.connection = conn
                conn.on_all_synced = self._reset_backoff
                await conn.closed
                self.connection = None
            if self._stopped:
                break
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, self.max_backoff)

    async def stop(self) -> None:
        self._stopped = True
        conn = self.connection
        if conn is not None:
            conn.close(reason="shutdown")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
