"""Batch parsing of plain ``RDATA`` runs behaves like line-by-line parsing (§1.1, §1.3, §2.3, §2.5)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from homeserver.app import MainProcess, Worker
from homeserver.config import DatabaseConfig
from homeserver.replication.handler import HandlerConfig, ReplicationHandler
from homeserver.replication.protocol import MAX_LINE_BYTES, RdataCommand
from homeserver.replication.streams import Stream, parse_device_row
from replhelpers import FakeMain, LinePeer, fast_options, running_worker, wait_until

DL = ("device_lists", "master")


@contextlib.asynccontextmanager
async def synced_worker(db_cfg: DatabaseConfig) -> AsyncIterator[tuple[LinePeer, Worker]]:
    """A worker on a scripted main whose ``device_lists`` is synced at token 0."""
    schema = MainProcess(db_cfg, replication=None, http=None, options=fast_options())
    await schema.start()  # creates the schema the worker reads its start position from
    await schema.stop()
    fake = await FakeMain().start()
    try:
        async with running_worker("w1", db_cfg, port=fake.port) as w:
            peer = await fake.accept()
            peer.send("POSITION device_lists master 0 0")
            await wait_until(lambda: _conn(w) is not None and DL in _conn(w).synced, what="synced")
            yield peer, w
    finally:
        await fake.stop()


def _conn(w: Worker) -> Any:
    return w.client.connection if w.client is not None else None


def _groups(w: Worker) -> list[tuple[int, list[Any]]]:
    return [(d.token, d.rows) for d in w.consumer.deliveries if d.stream == "device_lists"]


async def test_mixed_read_delivers_every_group_in_order(db_cfg: DatabaseConfig) -> None:
    """Plain RDATA, a trace trailer, CRLF, an inline PING and a non-ASCII read all deliver in order."""
    async with asyncio.timeout(15), synced_worker(db_cfg) as (peer, w):
        trailer = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
        peer.send_raw(
            b'RDATA device_lists master batch ["@a:x"]\n'
            b'RDATA device_lists master 3 ["@b:x"]\n'
            b'RDATA device_lists master 4 ["@c:x"]\t' + trailer.encode() + b"\n"
            b'RDATA device_lists master 5 ["@d:x"]\r\n'
            b"PING 1\n"
            b'RDATA device_lists master 6 ["@e:x"]\n'
        )
        peer.send_raw(
            'RDATA device_lists master batch ["@é:x"]\nRDATA device_lists master 7 ["@f:x"]\n'.encode()
        )
        await wait_until(lambda: w.handler.cur.get(DL) == 7, what="token 7")
        assert _groups(w) == [
            (3, [["@a:x"], ["@b:x"]]),
            (4, [["@c:x"]]),
            (5, [["@d:x"]]),
            (6, [["@e:x"]]),
            (7, [["@é:x"], ["@f:x"]]),
        ]
        counted = sum(n for k, n in w.handler.stats.counters.items() if k[:2] == ("commands_in", "RDATA"))
        assert counted == 7
        assert not _conn(w).is_closed


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("RDATA device_lists master 4 [1]", "ERROR bad device_lists row: device_lists row must be [entity]"),
        ("RDATA device_lists master 4 [NaN]", "ERROR invalid JSON: NaN is not valid JSON"),
        ('RDATA device_lists master 04 ["@b:x"]', "ERROR invalid token: '04'"),
    ],
)
async def test_bad_line_in_a_run_keeps_the_rows_before_it(
    db_cfg: DatabaseConfig, bad: str, error: str
) -> None:
    """A bad line in a run: ERROR and close; the row before it was queued (then dropped), none after."""
    async with asyncio.timeout(15), synced_worker(db_cfg) as (peer, w):
        conn = _conn(w)
        peer.send_raw(
            f'RDATA device_lists master 3 ["@a:x"]\n{bad}\nRDATA device_lists master 5 ["@c:x"]\n'.encode()
        )
        lines = await peer.read_until_eof()
        assert lines[-1] == error
        stats = w.handler.stats
        await wait_until(lambda: stats.dropped("device_lists", "unconnected") == 1, what="row 3 dropped")
        await asyncio.sleep(0.05)
        assert conn.is_closed and stats.dropped("device_lists", "unconnected") == 1
        assert _groups(w) == []


def test_streamer_encoding_matches_commands() -> None:
    """The streamer's one-pass encoding equals RdataCommand lines, with batch runs and an oversized token."""

    async def no_updates(*_: Any) -> Any:
        return [], 0, False

    stream = Stream("device_lists", parse_device_row, no_updates, lambda i: 0)
    handler = ReplicationHandler([stream], HandlerConfig(writes=frozenset({"device_lists"})))
    streamer = handler.streamer
    assert streamer is not None
    big = "x" * MAX_LINE_BYTES
    updates = [(1, ["a"]), (1, ["b"]), (2, ["c"]), (3, ["d"]), (3, [big]), (3, ["e"]), (4, ["f"])]
    data, count = streamer.encode(stream, 0, updates, 6)
    want = [
        RdataCommand("device_lists", "master", None, ["a"]).to_line(),
        RdataCommand("device_lists", "master", 1, ["b"]).to_line(),
        RdataCommand("device_lists", "master", 2, ["c"]).to_line(),
        "POSITION device_lists master 3 3",
        RdataCommand("device_lists", "master", 4, ["f"]).to_line(),
        "POSITION device_lists master 4 6",
    ]
    assert data.decode().split("\n") == [*want, ""]
    assert count == len(want)
    assert handler.stats.dropped("device_lists", "oversize") == 1
