"""Process assembly: :class:`MainProcess` (writer) and :class:`Worker` (reader).

Both are usable in-process (tests, benchmarks) and from the ``main`` and
``worker`` commands.  The main process writes the ``events``,
``device_lists`` and ``typing`` streams, serves replication over TCP (and the
bus if configured) and a small HTTP API; a worker follows the streams and
records what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from homeserver.config import DatabaseConfig, open_database
from homeserver.replication import _instrument
from homeserver.replication.connection import ConnectionConfig
from homeserver.replication.handler import HandlerConfig, ReplicationHandler
from homeserver.replication.streams import (
    Row,
    Stream,
    parse_device_row,
    parse_event_row,
    parse_typing_row,
)
from homeserver.replication.tcp import ReplicationClient, ReplicationServer
from homeserver.replication.typing_state import HttpStreamFetcher, TypingWriter
from homeserver.state import add_unindexed_source, pool_unindexed_source
from homeserver.storage.devices import DEVICE_LIST_TABLES, add_device_change_to_streams
from homeserver.storage.events import EVENT_STREAM_TABLES, EventStore
from homeserver.storage.id_generators import StreamIdGenerator
from homeserver.storage.rooms import RoomStore
from homeserver.storage.streams import StreamStore

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "EVENT_TABLES",
    "Delivery",
    "MainProcess",
    "ProcessOptions",
    "Worker",
    "WorkerConsumer",
]

logger = logging.getLogger(__name__)


def apply_schema(txn: Any) -> None:
    """Apply every ``storage/schema/*.sql`` file in name order (idempotent)."""
    from homeserver.storage.schema import apply_schema as apply

    apply(txn)


def _own_context(name: str) -> contextlib.AbstractContextManager[Any]:
    """A context named ``name`` when called from none (in-process callers, tests)."""
    if _instrument.current_context():
        return contextlib.nullcontext()
    return _instrument.logging_context(name)


# The events stream's IDs live in the event store (`events.stream_ordering`).
EVENT_TABLES = EVENT_STREAM_TABLES
# Version given to a room that `send_event` meets first (rooms created through
# `PUT /_hs/rooms/{room_id}` carry their own).
DEFAULT_ROOM_VERSION = "10"
STREAM_NAMES = ("device_lists", "events", "typing")


@dataclass
class ProcessOptions:
    """Knobs shared by both process kinds (tests shrink the intervals)."""

    server_name: str = "localhost"
    secret: str | None = None
    ping_interval: float = 5.0
    ping_timeout: float = 25.0
    close_abort: float = 25.0
    auth_timeout: float = 10.0
    max_queue_commands: int = 10_000
    max_queue_bytes: int = 16 * 1024 * 1024
    inbound_bound: int = 10_000
    catch_up_backoff: float = 0.5
    catch_up_backoff_max: float = 10.0
    reconnect_min: float = 0.1
    reconnect_max: float = 1.0
    target_rows: int = 500  # page size; chosen from bench_replication (P2: 500 beat 100 and 1000)
    torture_level: int = 0
    check_whole_tokens: bool = False
    position_interval: float = 1.0
    db_max_size: int = 4
    redis_url: str | None = None
    redis_prefix: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def connection_config(self, instance_name: str) -> ConnectionConfig:
        return ConnectionConfig(
            server_name=self.server_name,
            instance_name=instance_name,
            secret=self.secret,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_abort=self.close_abort,
            auth_timeout=self.auth_timeout,
            max_queue_commands=self.max_queue_commands,
            max_queue_bytes=self.max_queue_bytes,
        )


class MainProcess:
    """The writer of every stream: generators, streamer, replication server, HTTP API."""

    def __init__(
        self,
        database: DatabaseConfig,
        *,
        replication: tuple[str, int] | None = ("127.0.0.1", 0),
        http: tuple[str, int] | None = None,
        options: ProcessOptions | None = None,
        instance_name: str = "master",
    ) -> None:
        self.database = database
        self.replication_addr = replication
        self.http_addr = http
        self.options = options or ProcessOptions()
        self.instance_name = instance_name
        self.db: Any = None
        self.store: StreamStore
        self.event_store: EventStore
        self.events_gen: StreamIdGenerator
        self.devices_gen: StreamIdGenerator
        self.typing = TypingWriter(instance_name)
        self.handler: ReplicationHandler
        self.server: ReplicationServer | None = None
        self.http_runner: Any = None
        self.http_port: int | None = None
        self.bus: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._persisted: dict[str, int] = {}
        self._known_rooms: set[str] = set()
        self._remove_unindexed: Callable[[], None] = lambda: None

    @property
    def replication_port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def start(self) -> None:
        """Open the database, start the generators, listeners and the streamer."""
        with _instrument.logging_context(f"{self.instance_name}-startup"):
            await self._open()
        await self._start()

    async def _open(self) -> None:
        self.db = open_database(self.database, max_size=self.options.db_max_size)
        await self.db.run_interaction("apply_schema", apply_schema)
        self.store = StreamStore(self.db)
        self.events_gen = await StreamIdGenerator.create(
            self.db, "events", EVENT_TABLES, instance_name=self.instance_name
        )
        self.devices_gen = await StreamIdGenerator.create(
            self.db, "device_lists", DEVICE_LIST_TABLES, instance_name=self.instance_name
        )
        self.event_store = EventStore(self.db, stream_ids=self.events_gen)
        # state_res_unindexed_events counts this database's events awaiting their chain index
        self._remove_unindexed = add_unindexed_source(pool_unindexed_source(self.db))

    async def _start(self) -> None:
        opts = self.options
        for gen in (self.events_gen, self.devices_gen):
            gen.trace_capture = _instrument.current_trace_carrier
            self._persisted[gen.stream_name] = gen.get_current_token()
        streams = [
            Stream(
                "events",
                parse_event_row,
                self.store.event_updates,
                self.events_gen.current_token,
                trace_carrier=self.events_gen.trace_carrier,
                check_whole_tokens=opts.check_whole_tokens,
            ),
            Stream(
                "device_lists",
                parse_device_row,
                self.store.device_list_updates,
                self.devices_gen.current_token,
                one_row_per_token=True,
                trace_carrier=self.devices_gen.trace_carrier,
            ),
            Stream(
                "typing",
                parse_typing_row,
                self.typing.update_function,
                self.typing.current_token,
                resettable=True,
                one_row_per_token=True,
                source="http",
            ),
        ]
        self.handler = ReplicationHandler(
            streams,
            HandlerConfig(
                instance_name=self.instance_name,
                server_name=opts.server_name,
                writes=frozenset(STREAM_NAMES),
                reader=False,
                target_rows=opts.target_rows,
                torture_level=opts.torture_level,
                extra=dict(opts.extra),
            ),
        )
        assert self.handler.streamer is not None
        poke = self.handler.streamer.poke
        self.events_gen.add_listener(poke)
        self.devices_gen.add_listener(poke)
        self.typing.add_listener(poke)
        if self.replication_addr is not None:
            self.server = ReplicationServer(self.handler, opts.connection_config(self.instance_name))
            await self.server.start(*self.replication_addr)
        if opts.redis_url:
            from homeserver.replication.bus import RedisBus

            self.bus = RedisBus(
                self.handler,
                opts.redis_url,
                opts.server_name,
                prefix=opts.redis_prefix,
                **opts.extra.get("bus_kwargs", {}),
            )
            await self.bus.start()
        if self.http_addr is not None:
            from homeserver.http_api import start_main_http

            self.http_runner, self.http_port = await start_main_http(self, *self.http_addr)
        self._tasks.append(_instrument.background_process("replication_housekeeping", self._housekeeping))

    async def _housekeeping(self) -> None:
        """Every ``position_interval``: poke the streamer (#8499), persist positions."""
        assert self.handler.streamer is not None
        while True:
            await asyncio.sleep(self.options.position_interval)
            self.handler.streamer.poke()
            await self.persist_positions()

    async def persist_positions(self) -> None:
        for gen in (self.events_gen, self.devices_gen):
            token = gen.get_current_token()
            if self._persisted.get(gen.stream_name) != token:
                self._persisted[gen.stream_name] = await gen.persist(self.db)

    # -- writes ----------------------------------------------------------------------

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        sender: str,
        *,
        state_key: str | None = None,
        content: dict[str, Any] | None = None,
        extra_state: Sequence[tuple[str, str, str | None]] = (),
        event_id: str | None = None,
    ) -> tuple[str, int]:
        """Persist an event through the event store; return ``(event_id, stream_ordering)``.

        The event joins the ``events`` stream; a state event also changes the room's current
        state (a ``state`` row at its ordering), as do ``extra_state`` entries ``(type,
        state_key, event_id | None)`` (e.g. a resolved fork; ``None`` removes the key). A
        room not stored yet is created with :data:`DEFAULT_ROOM_VERSION`.
        """
        event_id = event_id or f"${uuid.uuid4().hex}"
        event: dict[str, Any] = {
            "event_id": event_id,
            "room_id": room_id,
            "type": event_type,
            "sender": sender,
            "content": content or {},
            "origin_server_ts": int(time.time() * 1000),
            "auth_events": [],
            "prev_events": [],
        }
        if state_key is not None:
            event["state_key"] = state_key
        changes = {(t, k): e for t, k, e in extra_state}
        with _own_context("send_event"):
            if room_id not in self._known_rooms:
                await RoomStore(self.db).store_room(room_id, DEFAULT_ROOM_VERSION, overwrite=False)
                self._known_rooms.add(room_id)
            batch = await self.event_store.persist_batch(room_id, [event], state_changes=changes)
        return event_id, batch.stream_orderings[event_id]

    async def change_devices(self, user_id: str, device_ids: Sequence[str], hosts: Sequence[str] = ()) -> int:
        """Record a device-list change; return the last stream ID used."""
        with _own_context("change_devices"):
            return await add_device_change_to_streams(self.db, self.devices_gen, user_id, device_ids, hosts)

    def set_typing(self, room_id: str, user_id: str, typing: bool) -> int:
        return self.typing.set_typing(room_id, user_id, typing)

    def positions(self) -> dict[str, int]:
        return {
            "events": self.events_gen.get_current_token(),
            "device_lists": self.devices_gen.get_current_token(),
            "typing": self.typing.serial,
        }

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, *, clean: bool = True) -> None:
        """Stop serving; ``clean=False`` simulates a crash (no ERROR, no final persist)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self.server is not None:
            if clean:
                await self.server.stop()
            else:
                if self.server._server is not None:
                    self.server._server.close()
                for conn in list(self.server.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
        if self.bus is not None:
            await self.bus.stop()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        await self.handler.stop()
        if clean:
            with _instrument.logging_context(f"{self.instance_name}-shutdown"):
                try:
                    await self.persist_positions()
                except Exception:
                    logger.exception("Could not persist stream positions at shutdown")
        self._remove_unindexed()
        self._remove_unindexed = lambda: None
        await self.db.close()


@dataclass
class Delivery:
    stream: str
    instance: str
    token: int
    rows: list[Row]
    path: str


class WorkerConsumer:
    """Applies rows on a worker: typing state, device changes, and a delivery log."""

    def __init__(self, record: IO[str] | None = None, keep: bool = True) -> None:
        self.deliveries: list[Delivery] = []
        self.keep = keep
        self.rows_received: dict[str, int] = {}
        self.typing: dict[str, list[str]] = {}
        self.device_changes: dict[str, int] = {}
        self.resets: list[tuple[str, str]] = []
        self.fail: Callable[[str, int, list[Row]], bool] | None = None  # test hook
        self._record = record
        self.listeners: list[Callable[[Delivery], None]] = []

    def on_rows(self, stream: str, instance: str, token: int, rows: list[Row], path: str) -> None:
        if self.fail is not None and self.fail(stream, token, rows):
            raise RuntimeError(f"consumer refused {stream} token {token}")
        if stream == "typing":
            for room, users in rows:
                if users:
                    self.typing[room] = list(users)
                else:
                    self.typing.pop(room, None)
        elif stream == "device_lists":
            for (entity,) in rows:
                self.device_changes[entity] = token
        self.rows_received[stream] = self.rows_received.get(stream, 0) + len(rows)
        d = Delivery(stream, instance, token, rows, path)
        if self.keep:
            self.deliveries.append(d)
        if self._record is not None:
            self._record.write(json.dumps(d.__dict__) + "\n")
            self._record.flush()
        for cb in self.listeners:
            cb(d)

    def on_reset(self, stream: str, instance: str) -> None:
        self.resets.append((stream, instance))
        if stream == "typing":
            self.typing.clear()


class Worker:
    """A reader of every stream the main process writes."""

    def __init__(
        self,
        name: str,
        database: DatabaseConfig,
        *,
        main: tuple[str, int] | None,
        main_http: str | None = None,
        options: ProcessOptions | None = None,
        record_path: Path | None = None,
        http: tuple[str, int] | None = None,
        keep_deliveries: bool = True,
    ) -> None:
        self.name = name
        self.database = database
        self.main = main
        self.main_http = main_http
        self.options = options or ProcessOptions()
        self.http_addr = http
        self._record_file = record_path.open("a", encoding="utf-8") if record_path else None
        self.consumer = WorkerConsumer(self._record_file, keep=keep_deliveries)
        self.db: Any = None
        self.handler: ReplicationHandler
        self.client: ReplicationClient | None = None
        self.bus: Any = None
        self.http_runner: Any = None
        self.http_port: int | None = None
        self._fetchers: list[HttpStreamFetcher] = []

    async def start(self) -> None:
        """Open the database, read start positions, connect to the main process (and/or the bus)."""
        await self._start()

    async def _start(self) -> None:
        opts = self.options
        self.db = open_database(self.database, readonly=True, max_size=opts.db_max_size)
        store = StreamStore(self.db)
        streams = [
            Stream(
                "events",
                parse_event_row,
                store.event_updates,
                lambda i: 0,
                check_whole_tokens=opts.check_whole_tokens,
            ),
            Stream(
                "device_lists",
                parse_device_row,
                store.device_list_updates,
                lambda i: 0,
                one_row_per_token=True,
            ),
        ]
        if self.main_http:
            fetcher = HttpStreamFetcher("typing", self.main_http, secret=opts.secret)
            self._fetchers.append(fetcher)
            streams.append(
                Stream(
                    "typing",
                    parse_typing_row,
                    fetcher,
                    lambda i: 0,
                    resettable=True,
                    one_row_per_token=True,
                    source="http",
                )
            )
        self.handler = ReplicationHandler(
            streams,
            HandlerConfig(
                instance_name=self.name,
                server_name=opts.server_name,
                reader=True,
                inbound_bound=opts.inbound_bound,
                catch_up_backoff=opts.catch_up_backoff,
                catch_up_backoff_max=opts.catch_up_backoff_max,
                target_rows=opts.target_rows,
                start_positions=store.start_position,
                extra=dict(opts.extra),
            ),
            self.consumer,
        )
        with _instrument.logging_context(f"{self.name}-startup"):
            for stream in streams:
                if stream.source == "db":
                    try:
                        start = await store.start_position(stream.name, "master")
                    except Exception as e:  # no schema yet: loaded on the first POSITION
                        logger.info("Start position of %s not readable yet: %s", stream.name, e)
                    else:
                        self.handler.cur[(stream.name, "master")] = start
        if self.main is not None:
            self.client = ReplicationClient(
                self.handler,
                opts.connection_config(self.name),
                *self.main,
                min_backoff=opts.reconnect_min,
                max_backoff=opts.reconnect_max,
            )
            self.client.start()
        if opts.redis_url:
            from homeserver.replication.bus import RedisBus

            self.bus = RedisBus(
                self.handler,
                opts.redis_url,
                opts.server_name,
                prefix=opts.redis_prefix,
                **opts.extra.get("bus_kwargs", {}),
            )
            await self.bus.start()
        if self.http_addr is not None:
            from homeserver.http_api import start_worker_http

            self.http_runner, self.http_port = await start_worker_http(self, *self.http_addr)

    def status(self) -> dict[str, Any]:
        positions: dict[str, dict[str, int]] = {}
        for (stream, writer), token in sorted(self.handler.cur.items()):
            positions.setdefault(stream, {})[writer] = token
        conn: Any = self.client.connection if self.client is not None else None
        if conn is None and self.bus is not None:
            conn = self.bus.connection
        return {
            "instance": self.name,
            "positions": positions,
            "rows_received": dict(self.consumer.rows_received),
            "typing": self.consumer.typing,
            "connected": conn is not None and not conn.is_closed,
            "synced": sorted(f"{s}/{w}" for s, w in conn.synced) if conn is not None else [],
        }

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()
        if self.bus is not None:
            await self.bus.stop()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        await self.handler.stop()
        for f in self._fetchers:
            await f.close()
        await self.db.close()
        if self._record_file is not None:
            self._record_file.close()
