"""One TCP replication connection (spec §1.4, §1.5, §2.1), as an asyncio protocol.

The connection frames and parses lines, enforces the line limit, direction,
``AUTH`` and keepalive rules, and hands every other command to its
:class:`CommandHandler`.  Outbound it writes directly while the transport
accepts data and queues (bounded) while connecting or paused.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.replication import _instrument
from homeserver.replication.metrics import Stats
from homeserver.replication.protocol import (
    CLIENT_COMMANDS,
    MAX_LINE_BYTES,
    SERVER_COMMANDS,
    AuthCommand,
    Command,
    ErrorCommand,
    NameCommand,
    PingCommand,
    ProtocolError,
    ReplicateCommand,
    ServerCommand,
    _valid_instances,
    _valid_streams,
    parse_line,
    scan_json_list,
)

__all__ = [
    "CommandHandler",
    "ConnState",
    "ConnectionConfig",
    "ReplicationConnection",
]

logger = logging.getLogger(__name__)
_scan_json = scan_json_list
# A parsed plain RDATA line: (stream, instance, token or None for ``batch``, row).
RdataTuple = tuple[str, str, int | None, Any]
_ids = itertools.count(1)


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    ESTABLISHED = "established"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass
class ConnectionConfig:
    """Timings and bounds; tests shrink the intervals."""

    server_name: str
    instance_name: str = "master"
    secret: str | None = None
    ping_interval: float = 5.0
    ping_timeout: float = 25.0
    close_abort: float = 25.0
    auth_timeout: float = 10.0
    max_queue_commands: int = 10_000
    max_queue_bytes: int = 16 * 1024 * 1024
    high_water: int = 64 * 1024


class CommandHandler(Protocol):
    """What a connection needs from the replication command handler."""

    stats: Stats

    def connection_registered(self, conn: ReplicationConnection) -> None: ...
    def connection_lost(self, conn: ReplicationConnection) -> None: ...
    def on_command(self, conn: ReplicationConnection, cmd: Command) -> None: ...


class ReplicationConnection(asyncio.Protocol):
    """A replication connection; ``is_server`` says which side of TCP we are."""

    transport_kind = "tcp"

    def __init__(
        self,
        handler: CommandHandler,
        config: ConnectionConfig,
        *,
        is_server: bool,
        on_close: Callable[[ReplicationConnection], None] | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.is_server = is_server
        self.conn_id = next(_ids)
        self.state = ConnState.CONNECTING
        self.peer_name = "anon"
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._on_close = on_close
        self._buf = b""
        self._queue: deque[tuple[bytes, int]] = deque()
        self._queue_cmds = 0
        self._queue_bytes = 0
        self._authenticated = not (is_server and config.secret)
        self._registered = False
        self._received_ping = False
        now = time.monotonic()
        self.last_sent = now
        self.last_received = now
        self._timer: asyncio.TimerHandle | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.close_reason = ""
        # Reader state (§2.2), owned by the command handler.
        self.synced: set[tuple[str, str]] = set()
        self.pending: dict[tuple[str, str], list[Any]] = {}
        self.positions_seen: set[tuple[str, str]] = set()
        self.all_synced_once = False
        self.on_all_synced: Callable[[], None] | None = None
        self.context: Any = None
        self._counts: dict[str, int] = {}

    # -- identity --------------------------------------------------------------------

    def __repr__(self) -> str:
        side = "server" if self.is_server else "client"
        return f"<ReplicationConnection {side} #{self.conn_id} {self.peer_name} {self.state.value}>"

    @property
    def is_closed(self) -> bool:
        return self.state is ConnState.CLOSED

    # -- asyncio protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.config.high_water)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.context = _instrument.new_context(f"replication-conn-{peer_text}-{self.conn_id}")
        self.handler.stats.inc("connections_opened")
        self.state = ConnState.ESTABLISHED if self._authenticated else ConnState.AUTHENTICATING
        loop = asyncio.get_running_loop()
        if self.is_server:
            self.send_command(ServerCommand(self.config.server_name))
            self.send_command(PingCommand(str(int(time.time() * 1000))))
            if self._authenticated:
                self._register()
            else:
                self._auth_timer = loop.call_later(self.config.auth_timeout, self._auth_timeout)
        else:
            if self.config.secret:
                self.send_command(AuthCommand(self.config.secret))
            self.send_command(NameCommand(self.config.instance_name))
            self.send_command(PingCommand(str(int(time.time() * 1000))))
            self._register()
            self.send_command(ReplicateCommand())
        self._schedule_tick()

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            self.handler.connection_registered(self)

    def data_received(self, data: bytes) -> None:
        if self.state is ConnState.CLOSED:
            return
        with _instrument.activate(self.context):
            self._data_received(data)

    def _data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n") + 1
        self._buf = buf[end:]
        self._counts = {}
        try:
            if end:
                complete = buf[:end]
                run_rdata = self._run_rdata
                if run_rdata is not None and complete.isascii():
                    self._lines_fast(complete.decode("ascii").split("\n"), run_rdata)
                else:
                    for raw in complete.split(b"\n")[:-1]:
                        if self.state is ConnState.CLOSED:
                            return
                        self._line_received(raw)
        finally:
            stats = self.handler.stats
            for name, n in self._counts.items():  # counted once per read, not per line
                stats.inc("commands_in", name, self.peer_name, amount=n)
        if len(self._buf) > MAX_LINE_BYTES and self.state is not ConnState.CLOSED:
            self._buf = b""
            self.send_error("Line length exceeded", reason="line_length")

    @property
    def _run_rdata(self) -> Callable[[ReplicationConnection, list[RdataTuple]], None] | None:
        """The handler's batch entry point when this side may receive ``RDATA`` inline."""
        if self.is_server or not self._authenticated:
            return None
        return getattr(self.handler, "on_rdata_run", None)

    def _lines_fast(
        self, lines: list[str], run_rdata: Callable[[ReplicationConnection, list[RdataTuple]], None]
    ) -> None:
        """Parse a read's complete ASCII lines, handing runs of plain ``RDATA`` over in one call.

        A line is taken on the fast path only when it is exactly what our
        streamer writes (known-valid stream and instance names, a canonical
        token or ``batch``, compact JSON list, no trailer, no CR); every
        other line goes through :meth:`_line_received` after the run before it
        has been handed over, so order, errors and limits are unchanged.
        """
        lines.pop()  # after the last "\n"
        run: list[RdataTuple] = []
        streams, instances = _valid_streams, _valid_instances
        scan = _scan_json
        n_rdata = 0
        try:
            for line in lines:
                if line[:6] == "RDATA " and len(line) <= MAX_LINE_BYTES and "\t" not in line:
                    parts = line.split(" ", 4)
                    if len(parts) == 5:
                        _, stream, instance, tok, js = parts
                        if stream in streams and instance in instances and js[:1] == "[":
                            if tok == "batch":
                                token: int | None = None
                            elif tok.isdigit() and len(tok) < 19 and (tok[0] != "0" or len(tok) == 1):
                                token = int(tok)
                            else:
                                token = -1
                            if token != -1:
                                try:
                                    row, stop = scan(js, 0)
                                except (StopIteration, ValueError, RecursionError):
                                    stop = -1
                                if stop == len(js):
                                    run.append((stream, instance, token, row))
                                    continue
                if run:
                    n_rdata += len(run)
                    batch, run = run, []
                    self.last_received = time.monotonic()
                    run_rdata(self, batch)
                if self.state is ConnState.CLOSED:
                    return
                self._line_received(line.encode("ascii"))
                if self.is_closed:
                    return
            if run:
                n_rdata += len(run)
                self.last_received = time.monotonic()
                run_rdata(self, run)
        except ProtocolError as e:
            self.send_error(e.reason, reason="parse")
        except Exception:
            logger.exception("Error handling replication command on %r", self)
            self.send_error("internal error", reason="internal")
        finally:
            if n_rdata:
                counts = self._counts
                counts["RDATA"] = counts.get("RDATA", 0) + n_rdata

    def _line_received(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > MAX_LINE_BYTES:
            self.send_error("Line length exceeded", reason="line_length")
            return
        if not raw.strip():
            return  # blank lines are ignored and do not refresh the timer
        try:
            text = raw.decode("utf-8")
            cmd = parse_line(text)
            allowed = CLIENT_COMMANDS if self.is_server else SERVER_COMMANDS
            if cmd.NAME not in allowed:
                raise ProtocolError(f"invalid command: {cmd.NAME}")
            self.last_received = time.monotonic()
            counts = self._counts
            counts[cmd.NAME] = counts.get(cmd.NAME, 0) + 1
            self._dispatch(cmd)
        except UnicodeDecodeError:
            self.send_error("invalid UTF-8", reason="parse")
        except ProtocolError as e:
            self.send_error(e.reason, reason="parse")
        except Exception:
            logger.exception("Error handling replication command on %r", self)
            self.send_error("internal error", reason="internal")

    def _dispatch(self, cmd: Command) -> None:
        if self._authenticated and cmd.NAME in ("RDATA", "POSITION"):
            self.handler.on_command(self, cmd)  # queued; processed in its stream's context
            return
        with (
            _instrument.logging_context(f"replication-{cmd.NAME}", self.context),
            _instrument.span(f"replication.recv.{cmd.NAME}", {"conn": self.peer_name}),
        ):
            self._dispatch_inline(cmd)

    def _dispatch_inline(self, cmd: Command) -> None:
        if not self._authenticated:
            if not isinstance(cmd, AuthCommand):
                self.send_error("AUTH required", reason="auth")
                return
            expected = (self.config.secret or "").encode()
            if not hmac.compare_digest(cmd.secret.encode(), expected):
                self.send_error("Invalid AUTH", reason="auth")
                return
            self._authenticated = True
            if self._auth_timer is not None:
                self._auth_timer.cancel()
            if self.state is ConnState.AUTHENTICATING:
                self.state = ConnState.ESTABLISHED
            self._register()
            return
        if isinstance(cmd, PingCommand):
            self._received_ping = True
            return
        if isinstance(cmd, AuthCommand):
            return  # already authenticated, or no secret configured
        if isinstance(cmd, ErrorCommand):
            logger.warning("Remote reported error on %r: %s", self, cmd.message)
            self.handler.stats.inc("remote_errors")
            self.close(reason="remote_error")
            return
        if isinstance(cmd, ServerCommand):
            if cmd.server_name != self.config.server_name:
                logger.error("Wrong remote: expected %s, got %s", self.config.server_name, cmd.server_name)
                self.send_error("Wrong remote", reason="wrong_remote")
            return
        if isinstance(cmd, NameCommand):
            self.peer_name = cmd.instance_name
        self.handler.on_command(self, cmd)

    def pause_writing(self) -> None:
        if self.state is ConnState.ESTABLISHED:
            self.state = ConnState.PAUSED

    def resume_writing(self) -> None:
        if self.state is ConnState.PAUSED:
            self.state = ConnState.ESTABLISHED
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state is not ConnState.CLOSED
        self.state = ConnState.CLOSED
        if was_open:
            self.handler.stats.inc("closed", "connection_lost")
        self._cancel_timers()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self._queue.clear()
        self._buf = b""
        self.synced.clear()
        self.pending.clear()
        self._report_lost()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    # -- sending ---------------------------------------------------------------------

    def send_command(self, cmd: Command) -> bool:
        """Encode and send (or queue) one command; False if dropped."""
        line = cmd.to_line()
        data = line.encode("utf-8") + b"\n"
        if len(data) - 1 > MAX_LINE_BYTES:
            logger.error("Not sending over-long %s command (%d bytes)", cmd.NAME, len(data))
            self.handler.stats.inc("dropped", getattr(cmd, "stream", "-"), "oversize")
            return False
        self.handler.stats.inc("commands_out", cmd.NAME, self.peer_name)
        return self.send_bytes(data, 1)

    def send_bytes(self, data: bytes, count: int) -> bool:
        """Write pre-encoded lines (``count`` commands) or queue them (§1.5)."""
        if self.state is ConnState.CLOSED:
            self.handler.stats.inc("dropped", "-", "closed", amount=count)
            return False
        if self.state is ConnState.CONNECTING or self.state is ConnState.PAUSED or self._queue:
            self._queue.append((data, count))
            self._queue_cmds += count
            self._queue_bytes += len(data)
            if (
                self._queue_cmds > self.config.max_queue_commands
                or self._queue_bytes > self.config.max_queue_bytes
            ):
                logger.warning("Remote failed to keep up: %r", self)
                self.send_error("Failed to keep up", reason="send_queue_full")
                return False
            if self.state is not ConnState.PAUSED and self.state is not ConnState.CONNECTING:
                self._flush()
            return True
        assert self.transport is not None
        self.transport.write(data)
        self.last_sent = time.monotonic()
        return True

    def _flush(self) -> None:
        if not self._queue or self.transport is None:
            return
        data = b"".join(d for d, _ in self._queue)
        self._queue.clear()
        self._queue_cmds = 0
        self._queue_bytes = 0
        self.transport.write(data)
        self.last_sent = time.monotonic()

    @property
    def queued_commands(self) -> int:
        return self._queue_cmds

    def send_error(self, message: str, *, reason: str = "error") -> None:
        """Write ``ERROR message`` bypassing the queue, discard the queue, close."""
        if self.state is ConnState.CLOSED:
            return
        logger.warning("Closing %r with ERROR %s", self, message)
        self._queue.clear()
        self._queue_cmds = self._queue_bytes = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ErrorCommand(message).to_line().encode("utf-8")[:MAX_LINE_BYTES] + b"\n")
        self.close(reason=reason)

    def close(self, *, reason: str = "close") -> None:
        """Close gracefully; abort if the transport is still open after ``close_abort``."""
        if self.state is ConnState.CLOSED:
            return
        self.close_reason = reason
        self.state = ConnState.CLOSED
        self.handler.stats.inc("closed", reason)
        self.synced.clear()
        self.pending.clear()
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()
            transport = self.transport
            self._abort_timer = asyncio.get_running_loop().call_later(
                self.config.close_abort, lambda: transport.abort()
            )
        self._report_lost()

    def _report_lost(self) -> None:
        if self._registered:
            self._registered = False
            self.handler.connection_lost(self)

    def _cancel_timers(self) -> None:
        for t in (self._timer, self._auth_timer):
            if t is not None:
                t.cancel()
        self._timer = self._auth_timer = None

    # -- keepalive -------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        interval = min(self.config.ping_interval, self.config.ping_timeout) / 2
        self._timer = asyncio.get_running_loop().call_later(interval, self._tick)

    def _tick(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        now = time.monotonic()
        if self._received_ping and now - self.last_received > self.config.ping_timeout:
            self.send_error("ping timeout", reason="ping_timeout")
            return
        if now - self.last_sent >= self.config.ping_interval:
            self.send_command(PingCommand(str(int(time.time() * 1000))))
        self._schedule_tick()

    def _auth_timeout(self) -> None:
        if not self._authenticated:
            self.send_error("auth timeout", reason="auth_timeout")
