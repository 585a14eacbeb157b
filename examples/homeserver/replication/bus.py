"""Redis pub/sub transport (spec §5).

Two connections per process: a *subscriber* and a *publisher* with one ordered
send task and a bounded queue.  After every subscriber (re)connect: SUBSCRIBE
and wait for the confirmation, register a fresh :class:`BusConnection` (every
stream ``UNSYNCED``), publish ``REPLICATE`` (readers), announce our own
positions (writers).  On publisher overflow or reconnect the queue is cleared
and our positions are queued first, so a reader that lost rows sees a
``POSITION`` whose ``prev`` covers them and fetches the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from homeserver.replication import _instrument
from homeserver.replication.handler import ReplicationHandler
from homeserver.replication.protocol import (
    MAX_LINE_BYTES,
    Command,
    ProtocolError,
    ReplicateCommand,
    UserIpCommand,
    parse_line,
)

__all__ = ["BusConnection", "RedisBus"]

logger = logging.getLogger(__name__)


class BusConnection:
    """One subscription lifetime; the handler's per-connection reader state lives here."""

    transport_kind = "bus"

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.peer_name = "bus"
        self.synced: set[tuple[str, str]] = set()
        self.pending: dict[tuple[str, str], list[Any]] = {}
        self.positions_seen: set[tuple[str, str]] = set()
        self.all_synced_once = False
        self.on_all_synced: Callable[[], None] | None = None
        self.context: Any = None
        self.closed = False

    @property
    def is_closed(self) -> bool:
        return self.closed

    def send_command(self, cmd: Command) -> bool:
        return self.bus.publish(cmd)

    def send_bytes(self, data: bytes, count: int) -> bool:
        self.bus.publish_bytes(data, count)
        return True


class RedisBus:
    """Publishes every command on ``<prefix><server_name>`` and follows it."""

    def __init__(
        self,
        handler: ReplicationHandler,
        url: str,
        server_name: str,
        *,
        prefix: str = "",
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_queue_commands: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        replicate_before_subscribe: bool = False,  # test hook (#7409)
        client_name: str | None = None,
    ) -> None:
        self.handler = handler
        self.url = url
        self.channel = f"{prefix}{server_name}"
        self.user_ip_channel = f"{self.channel}/USER_IP"
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_queue_commands = max_queue_commands
        self.max_queue_bytes = max_queue_bytes
        self.replicate_before_subscribe = replicate_before_subscribe
        self.client_name = client_name or handler.instance_name
        self.hold: asyncio.Event | None = None  # test hook: publisher waits while set and unset
        self.connection: BusConnection | None = None
        self.subscribes = 0
        self.publisher_connects = 0
        self.errors = 0
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queue_bytes = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = False
        self._publisher: Any = None
        handler.publish = self.publish
        handler.publish_bytes = self.publish_bytes

    # -- publishing --------------------------------------------------------------------

    def publish(self, cmd: Command) -> bool:
        """Queue one command for the publisher task (over-long ones are refused)."""
        line = cmd.to_line().encode("utf-8")
        if len(line) > MAX_LINE_BYTES:
            logger.error("Not publishing over-long %s command", cmd.NAME)
            self.handler.stats.inc("dropped", getattr(cmd, "stream", "-"), "oversize")
            return False
        channel = self.user_ip_channel if isinstance(cmd, UserIpCommand) else self.channel
        self._enqueue(channel, line)
        return True

    def publish_bytes(self, data: bytes, count: int) -> None:
        """Queue pre-encoded lines; one bus message per line."""
        for line in data.rstrip(b"\n").split(b"\n"):
            self._enqueue(self.channel, line)

    def _enqueue(self, channel: str, line: bytes) -> None:
        self._queue.append((channel, line))
        self._queue_bytes += len(line)
        if len(self._queue) > self.max_queue_commands or self._queue_bytes > self.max_queue_bytes:
            logger.warning("Bus publisher queue overflowed: clearing and re-announcing positions")
            self.handler.stats.inc("dropped", "-", "overflow", amount=len(self._queue))
            self._reset_queue_with_announcements()
        self._wakeup.set()

    def _announcements(self) -> list[tuple[str, bytes]]:
        streamer = self.handler.streamer
        if streamer is None:
            return []
        return [(self.channel, cmd.to_line().encode()) for cmd in streamer.positions()]

    def _reset_queue_with_announcements(self) -> None:
        self._queue.clear()
        self._queue.extend(self._announcements())
        self._queue_bytes = sum(len(x) for _, x in self._queue)

    def _on_publisher_connected(self, first: bool) -> None:
        """Our positions go out before anything else on every publisher connection.

        On the first one this is what tells readers where a (re)started writer
        stands before its first ``RDATA`` (queued rows are kept behind it); on a
        reconnect commands in flight may be lost, so the queue is replaced by the
        announcements (and a ``REPLICATE`` from readers, whose own may have been lost).
        """
        announcements = self._announcements()
        if first:
            self._queue.extendleft(reversed(announcements))
        else:
            self._queue.clear()
            self._queue.extend(announcements)
            if self.handler.config.reader:
                self._queue.append((self.channel, ReplicateCommand().to_line().encode()))
        self._queue_bytes = sum(len(x) for _, x in self._queue)

    async def _publisher_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = self.min_backoff
        first = True
        while not self._stopped:
            try:
                client = aioredis.Redis.from_url(
                    self.url, health_check_interval=30, client_name=f"{self.client_name}-pub"
                )
                await client.ping()
            except Exception as e:
                self.errors += 1
                logger.error("Redis publisher connection failed: %s", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self.publisher_connects += 1
            self._publisher = client
            self._on_publisher_connected(first)
            first = False
            backoff = self.min_backoff
            try:
                while not self._stopped:
                    if not self._queue:
                        self._wakeup.clear()
                        await self._wakeup.wait()
                        continue
                    if self.hold is not None:
                        await self.hold.wait()
                        if not self._queue:
                            continue
                    channel, line = self._queue[0]
                    await client.publish(channel, line)
                    if self._queue and self._queue[0][1] is line:
                        self._queue.popleft()
                        self._queue_bytes -= len(line)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                logger.error("Redis publish failed, reconnecting: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
                self._publisher = None

    # -- subscribing -------------------------------------------------------------------

    async def _subscriber_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = self.min_backoff
        is_writer = self.handler.streamer is not None
        channels = [self.channel] + ([self.user_ip_channel] if is_writer else [])
        while not self._stopped:
            conn: BusConnection | None = None
            client = None
            try:
                client = aioredis.Redis.from_url(
                    self.url, health_check_interval=30, client_name=f"{self.client_name}-sub"
                )
                pubsub = client.pubsub()
                if self.replicate_before_subscribe and self.handler.config.reader:
                    await client.publish(self.channel, ReplicateCommand().to_line())
                    await asyncio.sleep(0.3)  # the answers go out before we listen
                await pubsub.subscribe(*channels)
                confirmed = 0
                while confirmed < len(channels):
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        confirmed += 1
                self.subscribes += 1
                backoff = self.min_backoff
                conn = BusConnection(self)
                conn.context = _instrument.new_context("replication-bus")
                self.connection = conn
                self.handler.connection_registered(conn)
                if self.handler.config.reader and not self.replicate_before_subscribe:
                    self.publish(ReplicateCommand())
                if is_writer:
                    for _, line in self._announcements():
                        self._enqueue(self.channel, line)
                while not self._stopped:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    with _instrument.activate(conn.context):
                        self._on_message(conn, msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                logger.error("Redis subscriber failed: %s", e)
            finally:
                if conn is not None:
                    conn.closed = True
                    conn.synced.clear()
                    conn.pending.clear()
                    self.handler.connection_lost(conn)
                    self.connection = None
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
            if self._stopped:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _on_message(self, conn: BusConnection, data: bytes) -> None:
        if len(data) > MAX_LINE_BYTES:
            logger.warning("Ignoring over-long bus message (%d bytes)", len(data))
            self.handler.stats.inc("bus_bad_messages")
            return
        try:
            cmd = parse_line(data.decode("utf-8"))
            self.handler.stats.inc("commands_in", cmd.NAME, "bus")
            if cmd.NAME in ("RDATA", "POSITION"):
                self.handler.on_command(conn, cmd)
            else:
                with _instrument.logging_context(f"replication-{cmd.NAME}", conn.context):
                    self.handler.on_command(conn, cmd)
        except (ProtocolError, UnicodeDecodeError) as e:
            logger.warning("Ignoring bad bus message: %s", e)
            self.handler.stats.inc("bus_bad_messages")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            _instrument.background_process("replication-bus-subscriber", self._subscriber_loop),
            _instrument.background_process("replication-bus-publisher", self._publisher_loop),
        ]

    async def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self.handler.publish = None
        self.handler.publish_bytes = None
