"""The replication command handler: reader state machine and writer streamer.

Reader side (spec §2.2–§2.5): one FIFO queue per stream with exactly one
consumer task; ``POSITION`` triggers catch-up from the stream's source between
``cur`` and the announced position, retried until it succeeds or the
connection closes; ``RDATA`` is applied only while the stream is synced on the
connection it came from and only above ``cur``, one whole token at a time.

Writer side (§2.6): the :class:`Streamer` turns generator advances into
``RDATA`` token groups handed to every connection as one pre-encoded chunk,
and ``REPLICATE`` is answered from ``last_token`` in the same loop step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.replication import _instrument
from homeserver.replication.metrics import Stats
from homeserver.replication.protocol import (
    MAX_LINE_BYTES,
    Command,
    NameCommand,
    PositionCommand,
    ProtocolError,
    RdataCommand,
    RemoteServerUpCommand,
    ReplicateCommand,
    UserIpCommand,
    encode_json,
    with_trailer,
)
from homeserver.replication.streams import Row, Stream, token_groups

__all__ = [
    "Consumer",
    "HandlerConfig",
    "ReplicationHandler",
    "Streamer",
]

logger = logging.getLogger(__name__)

Key = tuple[str, str]
# A parsed plain RDATA line (stream, instance, token or None for ``batch``, row).
RdataTuple = tuple[str, str, int | None, Any]
# Inbound queue items: parsed commands, or RDATA lines from the TCP fast path.
QueueItem = Command | RdataTuple


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Conn(Protocol):
    """What the handler needs from a TCP connection or a bus connection."""

    transport_kind: str
    peer_name: str
    synced: set[Key]
    pending: dict[Key, list[Any]]
    positions_seen: set[Key]
    all_synced_once: bool
    on_all_synced: Callable[[], None] | None
    context: Any

    @property
    def is_closed(self) -> bool: ...

    def send_command(self, cmd: Command) -> bool: ...
    def send_bytes(self, data: bytes, count: int) -> bool: ...


class Consumer(Protocol):
    """Applies delivered rows on a reader.  Must be idempotent for rows near its start."""

    def on_rows(self, stream: str, instance: str, token: int, rows: list[Row], path: str) -> None: ...
    def on_reset(self, stream: str, instance: str) -> None: ...


class NullConsumer:
    def on_rows(self, stream: str, instance: str, token: int, rows: list[Row], path: str) -> None:
        pass

    def on_reset(self, stream: str, instance: str) -> None:
        pass


@dataclass
class HandlerConfig:
    """Behaviour knobs; tests shrink backoffs and bounds."""

    instance_name: str = "master"
    server_name: str = "localhost"
    writes: frozenset[str] = frozenset()  # streams this process writes
    reader: bool = False  # follows other writers' streams
    inbound_bound: int = 10_000
    catch_up_backoff: float = 0.5
    catch_up_backoff_max: float = 10.0
    target_rows: int = 500  # page size; chosen from bench_replication (P2: 500 beat 100 and 1000)
    torture_level: int = 0
    start_positions: Callable[[str, str], Any] | None = None  # async (stream, writer) -> int
    extra: dict[str, Any] = field(default_factory=dict)


class _StreamQueue:
    def __init__(self) -> None:
        self.items: deque[tuple[QueueItem, Conn]] = deque()
        self.wakeup = asyncio.Event()
        self.epoch = 0
        self.task: asyncio.Task[Any] | None = None


class ReplicationHandler:
    """Routes commands of every connection; holds reader state and the streamer."""

    def __init__(
        self,
        streams: Iterable[Stream],
        config: HandlerConfig,
        consumer: Consumer | None = None,
    ) -> None:
        self.streams: dict[str, Stream] = {s.name: s for s in streams}
        self.config = config
        self.instance_name = config.instance_name
        self.consumer: Consumer = consumer or NullConsumer()
        self.stats = Stats()
        self.connections: list[Conn] = []
        self.cur: dict[Key, int] = {}
        self.highest_seen: dict[Key, int] = {}
        self._queues: dict[str, _StreamQueue] = {}
        self._unknown_logged: set[str] = set()
        self._waiters: list[tuple[Key, int, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.streamer = Streamer(self) if config.writes else None
        self.on_remote_server_up: Callable[[str], None] | None = None
        self.on_user_ip: Callable[[UserIpCommand], None] | None = None
        # Bus publisher, if any: one command, or pre-encoded lines (count commands).
        self.publish: Callable[[Command], bool] | None = None
        self.publish_bytes: Callable[[bytes, int], None] | None = None
        self._stopping = False
        self._live_rows: dict[Key, int] = {}

    # -- connection registry ---------------------------------------------------------

    def connection_registered(self, conn: Conn) -> None:
        if conn.transport_kind == "tcp":
            names = [c.peer_name for c in self.connections]
            if conn.peer_name != "anon" and conn.peer_name in names:
                logger.warning("Duplicate replication instance name %s", conn.peer_name)
        self.connections.append(conn)
        self.stats.set("connections", value=len(self.connections))

    def connection_lost(self, conn: Conn) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)
        conn.synced.clear()
        conn.pending.clear()
        self.stats.set("connections", value=len(self.connections))

    # -- inbound ---------------------------------------------------------------------

    def on_command(self, conn: Conn, cmd: Command) -> None:
        """Handle one parsed command from ``conn`` (raises ProtocolError on bad rows)."""
        if isinstance(cmd, RdataCommand | PositionCommand):
            self._on_stream_command(conn, cmd)
        elif isinstance(cmd, ReplicateCommand):
            self._on_replicate(conn)
        elif isinstance(cmd, NameCommand):
            if any(c is not conn and c.peer_name == cmd.instance_name for c in self.connections):
                logger.warning("Duplicate replication instance name %s", cmd.instance_name)
        elif isinstance(cmd, RemoteServerUpCommand):
            if conn.transport_kind == "tcp" and self.config.writes:
                for other in list(self.connections):
                    if other is not conn:
                        other.send_command(cmd)
            if self.on_remote_server_up is not None:
                self.on_remote_server_up(cmd.server_name)
        elif isinstance(cmd, UserIpCommand) and self.on_user_ip is not None:
            self.on_user_ip(cmd)

    def _on_replicate(self, conn: Conn) -> None:
        if self.streamer is None:
            return
        for cmd in self.streamer.positions():
            logger.debug("Sending position for %s: %s", cmd.stream, cmd.new)
            if conn.transport_kind == "bus" and self.publish is not None:
                self.publish(cmd)
            else:
                conn.send_command(cmd)

    def _on_stream_command(self, conn: Conn, cmd: RdataCommand | PositionCommand) -> None:
        stream = self.streams.get(cmd.stream)
        if stream is None:
            if cmd.stream not in self._unknown_logged:
                self._unknown_logged.add(cmd.stream)
                logger.info("Ignoring commands for unknown stream %r", cmd.stream)
            return
        if cmd.instance == self.instance_name:
            self.stats.inc("dropped", cmd.stream, "echo")
            return
        if not self.config.reader:
            return
        key = (cmd.stream, cmd.instance)
        if isinstance(cmd, RdataCommand):
            try:
                stream.parse_row(cmd.row)
            except ValueError as e:
                raise ProtocolError(f"bad {cmd.stream} row: {e}") from None
            seen = cmd.token
        else:
            seen = cmd.new
            cur = self.cur.get(key)
            if not stream.resettable and cur is not None and key in conn.synced and cmd.new <= cur:
                self.stats.inc("dropped", cmd.stream, "redundant_position")
                logger.debug("Discarding redundant POSITION %s/%s %s", *key, cmd.new)
                return
        if seen is not None and seen > self.highest_seen.get(key, -1):
            self.highest_seen[key] = seen  # the lag gauge is refreshed on delivery
        q = self._queue(cmd.stream)
        n = len(q.items)
        if n >= self.config.inbound_bound:
            self._overflow(cmd.stream, conn)
            return
        q.items.append((cmd, conn))
        if not n & 63:  # the queue gauge is sampled, not updated per command
            self.stats.set("queue", cmd.stream, value=n + 1)
        q.wakeup.set()

    def on_rdata_run(self, conn: Conn, run: list[RdataTuple]) -> None:
        """Handle consecutive plain ``RDATA`` lines of one read (TCP fast path).

        The same rules as :meth:`on_command` per row (unknown stream, echo,
        strict row type, lag high-water mark, inbound bound), with the lookups
        hoisted and the queue woken once per stream.  A bad row raises
        :class:`ProtocolError` after the rows before it were queued.
        """
        if not self.config.reader:
            for stream_name, instance, _, _ in run:
                if stream_name not in self.streams:
                    self._on_unknown(stream_name)
                elif instance == self.instance_name:
                    self.stats.inc("dropped", stream_name, "echo")
            return
        streams = self.streams
        highest = self.highest_seen
        bound = self.config.inbound_bound
        me = self.instance_name
        last_name: str | None = None
        last_instance: str | None = None
        parse: Callable[[Any], Row] | None = None
        key: Key = ("", "")
        q: _StreamQueue | None = None
        items: deque[tuple[QueueItem, Conn]] | None = None
        woken: list[_StreamQueue] = []
        try:
            for item in run:
                stream_name, instance, token, row = item
                if stream_name != last_name or instance != last_instance:
                    stream = streams.get(stream_name)
                    if stream is None:
                        self._on_unknown(stream_name)
                        last_name = None
                        continue
                    if instance == me:
                        self.stats.inc("dropped", stream_name, "echo")
                        last_name = None
                        continue
                    last_name, last_instance = stream_name, instance
                    parse = stream.parse_row
                    key = (stream_name, instance)
                    q = self._queue(stream_name)
                    items = q.items
                    if q not in woken:
                        woken.append(q)
                assert parse is not None and q is not None and items is not None
                try:
                    parse(row)
                except ValueError as e:
                    raise ProtocolError(f"bad {stream_name} row: {e}") from None
                if token is not None and token > highest.get(key, -1):
                    highest[key] = token
                n = len(items)
                if n >= bound:
                    self._overflow(stream_name, conn)
                    continue
                items.append((item, conn))
                if not n & 63:
                    self.stats.set("queue", stream_name, value=n + 1)
        finally:
            for wq in woken:
                wq.wakeup.set()

    def _on_unknown(self, stream_name: str) -> None:
        if stream_name not in self._unknown_logged:
            self._unknown_logged.add(stream_name)
            logger.info("Ignoring commands for unknown stream %r", stream_name)

    def _overflow(self, stream_name: str, conn: Conn) -> None:
        q = self._queue(stream_name)
        logger.warning("Inbound queue for %s overflowed: resyncing", stream_name)
        self.stats.inc("dropped", stream_name, "overflow", amount=len(q.items) + 1)
        q.items.clear()
        q.epoch += 1
        self._mark_unsynced_stream(stream_name)
        self.stats.set("queue", stream_name, value=0)
        self._send_replicate(conn)

    def _send_replicate(self, conn: Conn) -> None:
        if conn.transport_kind == "bus" and self.publish is not None:
            self.publish(ReplicateCommand())
        elif not conn.is_closed:
            conn.send_command(ReplicateCommand())

    def _all_conns(self) -> list[Conn]:
        return list(self.connections)

    def _mark_unsynced(self, key: Key) -> None:
        for c in self._all_conns():
            c.synced.discard(key)
            c.pending.pop(key, None)

    def _mark_unsynced_stream(self, stream_name: str) -> None:
        for c in self._all_conns():
            for key in [k for k in c.synced if k[0] == stream_name]:
                c.synced.discard(key)
            for key in [k for k in c.pending if k[0] == stream_name]:
                del c.pending[key]

    def _queue(self, stream_name: str) -> _StreamQueue:
        q = self._queues.get(stream_name)
        if q is None:
            q = self._queues[stream_name] = _StreamQueue()
            q.task = _instrument.background_process(
                f"process-replication-data-{stream_name}", self._consume, stream_name
            )
        return q

    async def _consume(self, stream_name: str) -> None:
        """The one consumer of a stream's queue: items strictly one after another.

        A ``POSITION`` runs in ``replication-POSITION-<stream>``; a run of
        consecutive ``RDATA`` (at most 256, then the loop gets a turn) runs in one
        ``replication-RDATA-<stream>`` context, children of this consumer's context.
        """
        q = self._queues[stream_name]
        rdata_ctx = f"replication-RDATA-{stream_name}"
        position_ctx = f"replication-POSITION-{stream_name}"
        while not self._stopping:
            if not q.items:
                if self._live_rows:
                    self._flush_live_stats()
                self.stats.set("queue", stream_name, value=0)
                q.wakeup.clear()
                await q.wakeup.wait()
                continue
            parent = _instrument.current_context()
            cmd, conn = q.items.popleft()
            if type(cmd) is PositionCommand:
                try:
                    with _instrument.logging_context(position_ctx, parent):
                        await self._process_position(cmd, conn, q)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Error processing replication POSITION on %s", stream_name)
                continue
            # Reads only add to the queue between our awaits, so a run is bounded by
            # the inbound bound (§2.4); draining it without yielding keeps up with them.
            with _instrument.logging_context(rdata_ctx, parent):
                try:
                    self._process_rdata_run(cmd, conn, q)
                except Exception:
                    logger.exception("Error processing replication RDATA on %s", stream_name)
            if self._live_rows:
                self._flush_live_stats()

    async def _get_cur(self, key: Key, conn: Conn) -> int | None:
        cur = self.cur.get(key)
        if cur is not None:
            return cur
        stream = self.streams[key[0]]
        loader = self.config.start_positions
        if stream.source != "db" or loader is None:
            self.cur[key] = 0
            return 0
        backoff = self.config.catch_up_backoff
        while not conn.is_closed:
            try:
                start = int(await loader(*key))
            except Exception as e:
                logger.warning("Failed to read start position of %s/%s: %s", *key, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.catch_up_backoff_max)
                continue
            self.cur.setdefault(key, start)
            return self.cur[key]
        return None

    async def _process_position(self, cmd: PositionCommand, conn: Conn, q: _StreamQueue) -> None:
        key = (cmd.stream, cmd.instance)
        stream = self.streams[cmd.stream]
        if conn.is_closed:
            return
        cur = await self._get_cur(key, conn)
        if cur is None:
            return
        with _instrument.span(
            "replication.recv.POSITION",
            {"stream": cmd.stream, "instance": cmd.instance, "prev": cmd.prev, "new": cmd.new},
            _instrument.link_from_carrier(cmd.trace),
        ):
            if not stream.resettable and key in conn.synced and cmd.new <= cur:
                self.stats.inc("dropped", cmd.stream, "redundant_position")
                return
            epoch = q.epoch
            self._mark_unsynced(key)
            first_on_conn = key not in conn.positions_seen
            conn.positions_seen.add(key)
            reset = False
            if stream.resettable and (cur > cmd.new or (conn.transport_kind == "tcp" and first_on_conn)):
                reset = True
                self.consumer.on_reset(cmd.stream, cmd.instance)
                self.cur[key] = cur = 0
                missing = cmd.new > 0
            elif cmd.new < cur:
                logger.info("Stale POSITION %s/%s %s below cur %s", *key, cmd.new, cur)
                missing = False
            else:
                missing = cur < cmd.prev
            if missing:
                ok = await self._catch_up(stream, cmd.instance, cmd.new, conn, reset)
                if not ok:
                    return
            # on_position: cur never moves back, except after a reset
            self.cur[key] = cmd.new if reset else max(self.cur[key], cmd.new)
            self._update_lag(key)
            self._wake(key)
            if q.epoch == epoch and not conn.is_closed:
                conn.synced.add(key)
                self._check_all_synced(conn)

    def _check_all_synced(self, conn: Conn) -> None:
        """Reset the reconnect backoff once every stream synced on ``conn`` (§2.3 step 6)."""
        if conn.all_synced_once:
            return
        synced_streams = {k[0] for k in conn.synced}
        if all(name in synced_streams for name in self.streams):
            conn.all_synced_once = True
            if conn.on_all_synced is not None:
                conn.on_all_synced()

    async def _catch_up(self, stream: Stream, instance: str, target: int, conn: Conn, reset: bool) -> bool:
        key = (stream.name, instance)
        backoff = self.config.catch_up_backoff
        retries = 0
        started = time.monotonic()
        while True:
            if conn.is_closed:
                return False
            pages = rows_total = 0
            try:
                with (
                    _instrument.nested_context("catchup"),
                    _instrument.span(
                        "replication.catch_up",
                        {
                            "stream": stream.name,
                            "instance": instance,
                            "from": self.cur[key],
                            "to": target,
                            "source": stream.source,
                            "retries": retries,
                            "reset": reset,
                        },
                    ) as sp,
                ):
                    # Page k+1 is fetched while page k is applied (it starts at page
                    # k's end whatever happens to the rows); a failure discards it.
                    fetch = asyncio.ensure_future(self._fetch_page(stream, instance, self.cur[key], target))
                    try:
                        while True:
                            updates, upto, limited = await fetch
                            pages += 1
                            if limited:
                                fetch = asyncio.ensure_future(
                                    self._fetch_page(stream, instance, upto, target)
                                )
                            rows_total += self._deliver_page(key, updates)
                            if upto > self.cur[key]:
                                self.cur[key] = upto
                            self._update_lag(key)
                            self._wake(key)
                            if not limited:
                                break
                    finally:
                        if not fetch.done():
                            fetch.cancel()
                        fetch.add_done_callback(_retrieve)  # an abandoned prefetch's error
                    if sp is not None:
                        sp.set_attribute("pages", pages)
                        sp.set_attribute("rows", rows_total)
                self.stats.inc("catch_up_rows", stream.name, amount=rows_total)
                self.stats.observe(
                    "catch_up_time", stream.name, stream.source, value=time.monotonic() - started
                )
                logger.debug("Caught up with stream '%s' to %s", stream.name, target)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:
                retries += 1
                self.stats.inc("catch_up_failures", stream.name)
                logger.warning(
                    "Catch-up of %s/%s failed (attempt %d), retrying in %.2fs: %s",
                    stream.name,
                    instance,
                    retries,
                    backoff,
                    e,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.catch_up_backoff_max)

    async def _fetch_page(
        self, stream: Stream, instance: str, frm: int, target: int
    ) -> tuple[list[tuple[int, Row]], int, bool]:
        logger.debug(
            "Fetching replication rows for '%s'/%s between %s and %s", stream.name, instance, frm, target
        )
        with _instrument.span("replication.catch_up.page", {"from": frm, "to": target}):
            return await stream.get_updates_since(instance, frm, target, self.config.target_rows)

    def _deliver_page(self, key: Key, updates: list[tuple[int, Row]]) -> int:
        """Apply a fetched page token group by token group; metrics once per page."""
        on_rows = self.consumer.on_rows
        stream, instance = key
        cur = self.cur
        n = 0
        try:
            for token, rows in token_groups(updates):
                if token <= cur[key]:
                    continue
                on_rows(stream, instance, token, rows, "catch_up")
                cur[key] = token  # rows applied, then the position
                n += len(rows)
        finally:
            if n:
                self.stats.inc("rows", stream, instance, "catch_up", amount=n)
        return n

    def _flush_live_stats(self) -> None:
        pending, self._live_rows = self._live_rows, {}
        for key, n in pending.items():
            self.stats.inc("rows", key[0], key[1], "live", amount=n)
            self._update_lag(key)

    def _process_rdata_run(self, item: QueueItem, conn: Conn, q: _StreamQueue) -> None:
        """Process ``item`` and every ``RDATA`` queued right behind it (§2.3), in order.

        Per row only the rules themselves run (synced check, pending batch,
        stale check, delivery); the logging context is the caller's one per run,
        and row counts and the lag gauge are flushed per run.
        """
        items = q.items
        cur = self.cur
        on_rows = self.consumer.on_rows
        live = self._live_rows
        traced = _instrument.tracing_on()
        last_name: str | None = None
        last_instance: str | None = None
        key: Key = ("", "")
        while True:
            if type(item) is tuple:
                stream_name, instance, token, row = item
                trace = None
            elif isinstance(item, RdataCommand):
                stream_name, instance, token, row, trace = (
                    item.stream,
                    item.instance,
                    item.token,
                    item.row,
                    item.trace,
                )
            else:  # not reached: only RDATA is taken into a run
                break
            if stream_name != last_name or instance != last_instance:
                last_name, last_instance = stream_name, instance
                key = (stream_name, instance)
            if key not in conn.synced:
                self.stats.inc("dropped", stream_name, "unconnected")
                logger.debug("Discarding RDATA for unconnected stream %s/%s", *key)
            elif token is None:
                pending = conn.pending.get(key)
                if pending is None:
                    conn.pending[key] = [row]
                else:
                    pending.append(row)
            else:
                rows = conn.pending.pop(key, None)
                if rows is None:
                    rows = [row]
                else:
                    rows.append(row)
                if token <= cur.get(key, 0):
                    self.stats.inc("dropped", stream_name, "stale")
                else:
                    try:
                        if traced:
                            with _instrument.span(
                                "replication.recv.RDATA",
                                {
                                    "stream": stream_name,
                                    "instance": instance,
                                    "token": token,
                                    "rows": len(rows),
                                },
                                _instrument.link_from_carrier(trace),
                            ):
                                on_rows(stream_name, instance, token, rows, "live")
                        else:
                            on_rows(stream_name, instance, token, rows, "live")
                        # rows applied, then the position, then the waiters (#14158)
                        cur[key] = token
                        live[key] = live.get(key, 0) + len(rows)
                        if self._waiters:
                            self._wake(key)
                    except Exception:
                        logger.exception("Consumer failed on %s/%s token %s", *key, token)
                        self._mark_unsynced(key)
                        q.epoch += 1
                        self._later(self.config.catch_up_backoff, self._send_replicate, conn)
            if not items:
                break
            nxt = items[0][0]
            if type(nxt) is not tuple and not isinstance(nxt, RdataCommand):
                break
            item, conn = items.popleft()

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        asyncio.get_running_loop().call_later(delay, fn, *args)

    def _update_lag(self, key: Key) -> None:
        lag = max(0, self.highest_seen.get(key, 0) - self.cur.get(key, 0))
        self.stats.set("lag", *key, value=lag)

    def _wake(self, key: Key) -> None:
        if not self._waiters:
            return
        cur = self.cur.get(key, 0)
        keep = []
        for k, token, fut in self._waiters:
            if k == key and cur >= token:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((k, token, fut))
        self._waiters = keep

    async def wait_for_stream_position(
        self, instance: str, stream: str, token: int, timeout: float = 5.0
    ) -> bool:
        """Return once ``cur >= token`` (True) or after ``timeout`` with a warning (False)."""
        key = (stream, instance)
        if self.cur.get(key, -1) >= token:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, token, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            logger.warning("Timed out waiting for %s/%s to reach %s", stream, instance, token)
            return False

    def is_synced(self, conn: Conn, stream: str, instance: str = "master") -> bool:
        return (stream, instance) in conn.synced

    # -- lifecycle -------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping = True
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        if self.streamer is not None:
            tasks.extend(self.streamer.tasks())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


class Streamer:
    """Writer side (§2.6): sends new rows of the streams this process writes."""

    def __init__(self, handler: ReplicationHandler) -> None:
        self.handler = handler
        self.me = handler.instance_name
        self.streams = [handler.streams[n] for n in sorted(handler.config.writes)]
        self.last_token: dict[str, int] = {s.name: s.current_token(self.me) for s in self.streams}
        self._task: asyncio.Task[Any] | None = None
        self._pending = False

    def tasks(self) -> list[asyncio.Task[Any]]:
        return [self._task] if self._task is not None and not self._task.done() else []

    def positions(self) -> list[PositionCommand]:
        """``POSITION s me last last`` for every stream we write (answers to REPLICATE)."""
        return [
            PositionCommand(s.name, self.me, self.last_token[s.name], self.last_token[s.name])
            for s in self.streams
        ]

    def poke(self, *_: Any) -> None:
        """Something moved: run a pass now, or right after the running one."""
        if self._task is not None and not self._task.done():
            self._pending = True
            return
        self._pending = True
        self._task = _instrument.background_process("replication_notifier", self._run)

    def _has_subscribers(self) -> bool:
        return bool(self.handler.connections) or self.handler.publish is not None

    async def _run(self) -> None:
        torture = self.handler.config.torture_level
        while self._pending and not self.handler._stopping:
            self._pending = False
            order = list(self.streams)
            if torture:
                random.shuffle(order)
            for stream in order:
                if torture:
                    await asyncio.sleep(random.uniform(0, torture) / 1000)
                try:
                    await self._pass(stream)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Streamer pass for %s failed", stream.name)

    async def _pass(self, stream: Stream) -> None:
        name = stream.name
        last = self.last_token[name]
        current = stream.current_token(self.me)
        if last == current:
            return
        if not self._has_subscribers():
            self.last_token[name] = current
            return
        with _instrument.span("replication.send", {"stream": name, "from": last, "to": current}):
            updates, upto, limited = await stream.get_updates_since(
                self.me, last, current, self.handler.config.target_rows
            )
        # From here to the hand-off: no await (ordering invariant, #7360).
        if self.last_token[name] != last:
            return  # another pass moved it meanwhile (cannot happen with one task)
        data, count = self.encode(stream, last, updates, upto)
        self.last_token[name] = upto
        if count:
            self.handler.stats.inc("updates_sent", name, amount=len(updates))
            self.broadcast(data, count)
        if limited:
            self._pending = True

    def encode(
        self, stream: Stream, last: int, updates: list[tuple[int, Row]], upto: int
    ) -> tuple[bytes, int]:
        """Encode token groups (``batch`` … numeric) plus a closing ``POSITION`` if needed.

        One pass over the sorted updates: a row is ``batch`` when the next row has
        the same token.  Lines are joined and encoded to bytes once per pass.
        """
        name, me = stream.name, self.me
        lines: list[str] = []
        append = lines.append
        x = last
        prefix = f"RDATA {name} {me} "
        batch_prefix = prefix + "batch "
        carriers = stream.trace_carrier
        enc = encode_json
        n = len(updates)
        group_start = 0
        skip_token = -1
        for i, (token, row) in enumerate(updates):
            if token == skip_token:
                continue  # the rest of an oversized token (replaced by a POSITION)
            if token != x:
                group_start = len(lines)
                x = token
            # The same text as RdataCommand.to_line(), without building the object.
            if i + 1 < n and updates[i + 1][0] == token:
                line = batch_prefix + enc(row)
            else:
                line = f"{prefix}{token} {enc(row)}"
                trace = carriers(token) if carriers is not None else None
                if trace:
                    line = with_trailer(line, trace)
            if len(line) > MAX_LINE_BYTES:  # ASCII: chars == bytes
                logger.warning("Row of %s token %s too long: sending POSITION", name, token)
                self.handler.stats.inc("dropped", name, "oversize")
                del lines[group_start:]
                append(PositionCommand(name, me, token, token).to_line())
                skip_token = token
                continue
            append(line)
        if x < upto:
            append(PositionCommand(name, me, x, upto).to_line())
        if not lines:
            return b"", 0
        append("")
        return "\n".join(lines).encode("ascii"), len(lines) - 1

    def broadcast(self, data: bytes, count: int) -> None:
        """Hand the same bytes to every connection (write coalescing)."""
        if self.handler.publish_bytes is not None:
            self.handler.publish_bytes(data, count)
        for conn in list(self.handler.connections):
            if conn.transport_kind == "tcp":
                conn.send_bytes(data, count)
