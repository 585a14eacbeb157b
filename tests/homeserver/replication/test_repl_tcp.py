"""TCP connection rules over loopback (spec §1.3–§1.5, §2.1; scenarios 3–8, 28, 29)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from homeserver.config import DatabaseConfig
from homeserver.replication.connection import ConnectionConfig, ConnState, ReplicationConnection
from homeserver.replication.metrics import Stats
from homeserver.replication.protocol import MAX_LINE_BYTES, PingCommand
from replhelpers import (
    FakeMain,
    fast_options,
    raw_client,
    running_main,
    running_worker,
    synced,
    tokens,
    wait_until,
)


async def test_server_handshake_and_replicate_answer(db_cfg: DatabaseConfig) -> None:
    """Server sends SERVER then PING; REPLICATE gets one POSITION per stream and no RDATA backlog."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        await main.change_devices("@a:x", ["D"], ["h"])
        peer = await raw_client(main.replication_port)
        assert await peer.read_line() == "SERVER localhost"
        assert (await peer.read_line() or "").startswith("PING ")
        peer.send("NAME raw", "REPLICATE")
        got = sorted([await peer.expect("POSITION") for _ in range(3)])
        assert got == [
            "POSITION device_lists master 3 3",
            "POSITION events master 1 1",
            "POSITION typing master 0 0",
        ]
        peer.close()


async def test_client_handshake_order_with_secret(db_cfg: DatabaseConfig) -> None:
    """The client sends AUTH, NAME, PING, REPLICATE in that order."""
    fake = await FakeMain().start()
    async with (
        asyncio.timeout(10),
        running_worker("w1", db_cfg, port=fake.port, options=fast_options(secret="s3cret")),
    ):
        peer = await fake.peers.get()
        lines = [await peer.read_line() for _ in range(4)]
        assert lines[0] == "AUTH s3cret" and lines[1] == "NAME w1"
        assert (lines[2] or "").startswith("PING ") and lines[3] == "REPLICATE"
        peer.close()
    await fake.stop()


async def test_wrong_remote_backs_off(db_cfg: DatabaseConfig) -> None:
    """A wrong SERVER name gets `ERROR Wrong remote`; reconnects back off instead of tight-looping."""
    fake = await FakeMain().start()
    opts = fast_options(reconnect_min=0.05, reconnect_max=0.4)
    async with asyncio.timeout(10), running_worker("w1", db_cfg, port=fake.port, options=opts) as w:
        for _ in range(5):
            peer = await fake.peers.get()
            peer.send("SERVER other.example")
            assert await peer.expect("ERROR") == "ERROR Wrong remote"
            assert await peer.read_line() is None
        assert w.client is not None and w.client.backoff == 0.4
    await fake.stop()


@pytest.mark.parametrize("mode", ["missing", "wrong", "late"])
async def test_auth_failures_never_receive_rows(db_cfg: DatabaseConfig, mode: str) -> None:
    """Missing, wrong or late AUTH → ERROR and close; no RDATA/POSITION reached that connection."""
    opts = fast_options(secret="right", auth_timeout=0.3)
    async with asyncio.timeout(10), running_main(db_cfg, opts) as main:
        peer = await raw_client(main.replication_port)
        await main.change_devices("@a:x", ["D"], [])
        if mode == "missing":
            peer.send("NAME x", "REPLICATE")
        elif mode == "wrong":
            peer.send("AUTH wrong", "REPLICATE")
        await main.change_devices("@b:x", ["D"], [])
        lines = await peer.read_until_eof()
        assert lines[-1].startswith("ERROR")
        assert not [x for x in lines if x.startswith(("RDATA", "POSITION"))]
        expected = {"missing": "AUTH required", "wrong": "Invalid AUTH", "late": "auth timeout"}
        assert lines[-1] == f"ERROR {expected[mode]}"


async def test_right_secret_syncs_and_no_secret_needs_no_auth(db_cfg: DatabaseConfig) -> None:
    """With the right secret the worker syncs; without a secret configured AUTH is not needed."""
    async with asyncio.timeout(10):
        async with running_main(db_cfg, fast_options(secret="k")) as main:
            async with running_worker("w1", db_cfg, main, fast_options(secret="k")) as w:
                await wait_until(lambda: synced(w), what="sync with secret")
        async with running_main(db_cfg) as main:
            peer = await raw_client(main.replication_port)
            peer.send("NAME x", "REPLICATE")
            await peer.expect("POSITION")
            peer.close()


async def _stream_check(main: Any, workers: list[Any], n: int) -> None:
    before = [len(tokens(w, "device_lists")) for w in workers]
    for i in range(n):
        await main.change_devices(f"@after{i}:x", ["D"], [])
    for w, b in zip(workers, before, strict=True):
        await wait_until(lambda w=w, b=b: len(tokens(w, "device_lists")) >= b + n, what="rows")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"NAME " + b"x" * MAX_LINE_BYTES + b"\n", "ERROR Line length exceeded"),
        (b"PING " + b"1" * (MAX_LINE_BYTES + 100), "ERROR Line length exceeded"),  # unterminated
        (b"FOO bar\n", "ERROR unknown command: FOO"),
        (b'RDATA events master 5 ["ev"]\n', "ERROR invalid command: RDATA"),
        (b"POSITION events master 1 2\n", "ERROR invalid command: POSITION"),
        (b"REPLICATE events 5\n", "ERROR REPLICATE takes no arguments (old form?)"),
        (b"NAME bad name\n", "ERROR invalid instance name: 'bad name'"),
        (b"SYNC 12\n", "ERROR unknown command: SYNC"),
        (b"\xff\xfe\n", "ERROR invalid UTF-8"),
    ],
)
async def test_bad_input_closes_only_that_connection(
    db_cfg: DatabaseConfig, payload: bytes, error: str
) -> None:
    """Malformed, unknown, wrong-direction and over-long input → ERROR and close; workers keep streaming."""
    async with asyncio.timeout(15), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w1, running_worker("w2", db_cfg, main) as w2:
            await wait_until(lambda: synced(w1) and synced(w2), what="workers synced")
            peer = await raw_client(main.replication_port)
            peer.send_raw(payload)
            lines = await peer.read_until_eof()
            assert lines[-1] == error
            await _stream_check(main, [w1, w2], 3)
            assert w1.client is not None and w1.client.connects == 1


async def test_blank_lines_ignored_and_crlf_accepted(db_cfg: DatabaseConfig) -> None:
    """Blank lines are ignored and do not refresh the ping timer; `\\r\\n` parses like `\\n`."""
    opts = fast_options(ping_interval=0.1, ping_timeout=0.5)
    async with asyncio.timeout(10), running_main(db_cfg, opts) as main:
        peer = await raw_client(main.replication_port)
        peer.send_raw(b"\r\n   \nNAME nc\r\nPING 1\r\nREPLICATE\r\n")
        await peer.expect("POSITION")

        async def blanks() -> None:
            while not peer.writer.is_closing():
                peer.send_raw(b"\n  \r\n")
                await asyncio.sleep(0.05)

        sender = asyncio.ensure_future(blanks())
        try:
            assert await peer.expect("ERROR", timeout=3) == "ERROR ping timeout"
        finally:
            sender.cancel()
        peer.close()


async def test_no_timeout_without_ping(db_cfg: DatabaseConfig) -> None:
    """A peer that never pings (netcat) is never timed out."""
    opts = fast_options(ping_interval=0.1, ping_timeout=0.3)
    async with asyncio.timeout(10), running_main(db_cfg, opts) as main:
        peer = await raw_client(main.replication_port)
        peer.send("NAME nc", "REPLICATE")
        await asyncio.sleep(1.0)
        await main.change_devices("@a:x", ["D"], [])
        await peer.expect("RDATA device_lists master 2")
        peer.close()


async def test_client_times_out_silent_server(db_cfg: DatabaseConfig) -> None:
    """After the server's PING, 'ping timeout' of silence closes the connection from the client side."""
    fake = await FakeMain().start()
    opts = fast_options(ping_interval=0.1, ping_timeout=0.4)
    async with asyncio.timeout(10), running_worker("w1", db_cfg, port=fake.port, options=opts):
        peer = await fake.accept()
        peer.send("PING 1")
        lines = await peer.read_until_eof()
        assert lines[-1] == "ERROR ping timeout"
    await fake.stop()


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1)


class _Handler:
    def __init__(self) -> None:
        self.stats = Stats()
        self.registered: list[Any] = []

    def connection_registered(self, conn: Any) -> None:
        self.registered.append(conn)

    def connection_lost(self, conn: Any) -> None:
        pass

    def on_command(self, conn: Any, cmd: Any) -> None:
        pass


def _server_conn(**cfg: Any) -> tuple[ReplicationConnection, _FakeTransport]:
    conn = ReplicationConnection(
        _Handler(),
        ConnectionConfig(server_name="hs", **cfg),
        is_server=True,  # type: ignore[arg-type]
    )
    transport = _FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def test_send_queue_overflow_disconnects() -> None:
    """Paused, more than the bound queued → `ERROR Failed to keep up` bypassing the queue, close."""
    conn, transport = _server_conn(max_queue_commands=100, close_abort=0.1)
    conn.pause_writing()
    assert conn.state is ConnState.PAUSED
    for i in range(100):
        assert conn.send_command(PingCommand(str(i)))
    assert not conn.send_command(PingCommand("overflow"))
    assert transport.written[-1] == b"ERROR Failed to keep up\n"
    assert not any(b"PING 5" in w for w in transport.written)
    assert conn.state is ConnState.CLOSED and transport.closed
    assert not conn.send_command(PingCommand("late"))
    assert conn.handler.stats.counters[("dropped", "-", "closed")] == 1
    await asyncio.sleep(0.2)
    assert transport.aborted  # the graceful close was never completed


async def test_send_queue_byte_bound() -> None:
    """The queue is also bounded by bytes."""
    conn, transport = _server_conn(max_queue_bytes=1000)
    conn.pause_writing()
    conn.send_bytes(b"x" * 600 + b"\n", 1)
    conn.send_bytes(b"y" * 600 + b"\n", 1)
    assert transport.written[-1] == b"ERROR Failed to keep up\n"
    conn.transport = None  # the abort timer is irrelevant here


async def test_resume_flushes_queue_in_order() -> None:
    """Resumed before the limit, the queue is flushed in order in one write."""
    conn, transport = _server_conn()
    conn.pause_writing()
    for i in range(5):
        conn.send_command(PingCommand(str(i)))
    before = len(transport.written)
    conn.resume_writing()
    assert transport.written[before:] == [b"PING 0\nPING 1\nPING 2\nPING 3\nPING 4\n"]
    conn.send_command(PingCommand("5"))
    assert transport.written[-1] == b"PING 5\n"
    conn.close()
    conn.connection_lost(None)


async def test_slow_reader_over_tcp_catches_up_after_reconnect(db_cfg: DatabaseConfig) -> None:
    """A worker whose connection overflowed the send queue reconnects and catches up every row."""
    opts = fast_options(max_queue_commands=50)
    async with asyncio.timeout(20), running_main(db_cfg, opts) as main:
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w), what="synced")
            conn = next(iter(main.server.connections))  # type: ignore[union-attr]
            conn.pause_writing()  # as if the transport crossed its high-water mark
            for i in range(30):
                await main.change_devices(f"@u{i}:x", ["A", "B"], ["h"])
            await wait_until(lambda: conn.is_closed, what="overflow close")
            assert conn.close_reason == "send_queue_full"
            last = main.devices_gen.get_current_token()
            await wait_until(lambda: w.handler.cur.get(("device_lists", "master"), 0) >= last)
            got = tokens(w, "device_lists")
            assert got == sorted(set(got)) and got == list(range(2, last + 1))


async def test_oversized_rdata_becomes_position(db_cfg: DatabaseConfig) -> None:
    """An RDATA over 16384 bytes is never written; `POSITION s w T T` follows and T is fetched once."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w), what="synced")
            peer = await raw_client(main.replication_port)
            peer.send("NAME raw", "REPLICATE")
            await peer.expect("POSITION typing")
            huge = "h" * (MAX_LINE_BYTES + 10)
            last = await main.change_devices("@a:x", ["D"], [huge, "small"])
            assert await peer.expect("RDATA device_lists master") == 'RDATA device_lists master 2 ["@a:x"]'
            assert await peer.expect("POSITION") == "POSITION device_lists master 3 3"
            assert await peer.read_line() == 'RDATA device_lists master 4 ["small"]'
            await wait_until(lambda: w.handler.cur.get(("device_lists", "master")) == last)
            got = [(d.token, d.path) for d in w.consumer.deliveries if d.stream == "device_lists"]
            assert got == [(2, "live"), (3, "catch_up"), (4, "live")]
            assert main.handler.stats.dropped("device_lists", "oversize") == 1
            peer.close()


async def test_remote_server_up_is_relayed_to_others_only(db_cfg: DatabaseConfig) -> None:
    """REMOTE_SERVER_UP from one worker reaches the main process and every other worker, not the sender."""
    from homeserver.replication.protocol import RemoteServerUpCommand

    async with asyncio.timeout(10), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w1, running_worker("w2", db_cfg, main) as w2:
            await wait_until(lambda: synced(w1) and synced(w2))
            seen: dict[str, list[str]] = {"main": [], "w1": [], "w2": []}
            main.handler.on_remote_server_up = seen["main"].append
            w1.handler.on_remote_server_up = seen["w1"].append
            w2.handler.on_remote_server_up = seen["w2"].append
            assert w1.client is not None and w1.client.connection is not None
            w1.client.connection.send_command(RemoteServerUpCommand("remote.example"))
            await wait_until(lambda: seen["w2"] == ["remote.example"], what="relayed")
            await asyncio.sleep(0.1)
            assert seen == {"main": ["remote.example"], "w1": [], "w2": ["remote.example"]}
