"""Reader state machine and catch-up (spec §2; scenarios 1, 10, 13–15, 18, 20–25, 30, 40).

Most tests drive a real worker from a scripted fake main process (the test
writes the server's lines) while rows live in a real SQLite database written
by an in-process main process without a replication listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from homeserver.app import MainProcess, Worker
from homeserver.config import DatabaseConfig
from replhelpers import (
    FakeMain,
    LinePeer,
    Proxy,
    fast_options,
    raw_client,
    running_main,
    running_worker,
    synced,
    tokens,
    wait_until,
)

DL = ("device_lists", "master")


@contextlib.asynccontextmanager
async def scripted(
    db_cfg: DatabaseConfig, **opts: Any
) -> AsyncIterator[tuple[MainProcess, FakeMain, LinePeer, Worker]]:
    """(row writer with HTTP, fake main, the worker's first connection, worker)."""
    writer = MainProcess(db_cfg, replication=None, http=("127.0.0.1", 0), options=fast_options())
    await writer.start()
    fake = await FakeMain().start()
    try:
        async with running_worker(
            "w1",
            db_cfg,
            port=fake.port,
            main_http=f"http://127.0.0.1:{writer.http_port}",
            options=fast_options(**opts),
        ) as w:
            peer = await fake.accept()
            yield writer, fake, peer, w
    finally:
        await fake.stop()
        await writer.stop()


def conn_of(w: Worker) -> Any:
    assert w.client is not None and w.client.connection is not None
    return w.client.connection


async def wait_synced(w: Worker, key: tuple[str, str] = DL) -> None:
    await wait_until(
        lambda: (
            w.client is not None and w.client.connection is not None and key in w.client.connection.synced
        ),
        what=f"{key} synced",
    )


async def devices(writer: MainProcess, n: int, prefix: str = "@u") -> list[int]:
    return [await writer.change_devices(f"{prefix}{i}:x", ["D"], []) for i in range(n)]


async def test_unknown_stream_is_ignored(db_cfg: DatabaseConfig) -> None:
    """RDATA/POSITION for an unknown stream name are ignored (logged once); the connection stays open."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        peer.send("POSITION future_stream master 1 2", "RDATA future_stream master 3 []")
        peer.send("RDATA future_stream master 4 []")
        await devices(writer, 1)
        peer.send("POSITION device_lists master 2 2")
        await wait_synced(w)
        assert w.handler._unknown_logged == {"future_stream"}
        assert not conn_of(w).is_closed and tokens(w, "device_lists") == [2]


async def test_rdata_before_position_is_dropped(db_cfg: DatabaseConfig) -> None:
    """RDATA before this connection's POSITION is dropped and comes by catch-up; also on a new connection."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, fake, peer, w):
        await devices(writer, 5)  # 2..6
        peer.send('RDATA device_lists master 5 ["@u3:x"]', "POSITION device_lists master 6 6")
        await wait_synced(w)
        assert [(d.token, d.path) for d in w.consumer.deliveries] == [(t, "catch_up") for t in range(2, 7)]
        assert w.handler.stats.dropped("device_lists", "unconnected") == 1
        peer.close()  # connection A synced, then dropped
        peer_b = await fake.accept()
        await devices(writer, 1, "@v")  # 7
        peer_b.send('RDATA device_lists master 7 ["@v0:x"]')
        peer_b.send("POSITION device_lists master 6 6")
        await wait_until(lambda: DL in conn_of(w).synced)
        assert w.handler.stats.dropped("device_lists", "unconnected") == 2
        assert tokens(w, "device_lists") == [2, 3, 4, 5, 6]


async def test_stale_rdata_is_dropped(db_cfg: DatabaseConfig) -> None:
    """An old RDATA after catch-up is dropped and cur does not go back."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        await devices(writer, 5)
        peer.send("POSITION device_lists master 6 6")
        await wait_synced(w)
        peer.send('RDATA device_lists master 4 ["@old:x"]', 'RDATA device_lists master 7 ["@new:x"]')
        await wait_until(lambda: w.handler.cur[DL] == 7)
        assert w.handler.stats.dropped("device_lists", "stale") == 1
        assert tokens(w, "device_lists") == [2, 3, 4, 5, 6, 7]


def _record_fetches(w: Worker, stream: str) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    s = w.handler.streams[stream]
    real = s.update_function

    async def recording(instance: str, frm: int, upto: int, limit: int) -> Any:
        calls.append((frm, upto))
        return await real(instance, frm, upto, limit)

    s.update_function = recording
    return calls


CASES = {  # name: (prev, new) with cur = 5
    "a": (7, 9),
    "b": (5, 9),
    "c": (3, 9),
    "d": (3, 5),
    "e": (2, 4),
}


@pytest.mark.parametrize("stream", ["device_lists", "typing"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_position_cases_of_16560(db_cfg: DatabaseConfig, stream: str, case: str) -> None:
    """The five #16560 cases with cur=5, on a monotonic stream and on typing, after one sync."""
    prev, new = CASES[case]
    key = (stream, "master")
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        if stream == "device_lists":
            await devices(writer, 8)  # 2..9
        else:
            for i in range(9):
                writer.set_typing(f"!r{i}:x", "@t:x", True)
        peer.send(f"POSITION {stream} master 5 5")
        await wait_synced(w, key)
        w.handler.cur[key] = 5  # device_lists starts at stream_positions; pin cur
        calls = _record_fetches(w, stream)
        before_redundant = w.handler.stats.dropped(stream, "redundant_position")
        peer.send(f"POSITION {stream} master {prev} {new}", "PING marker")
        if stream == "device_lists" and case == "d":
            await wait_until(lambda: w.handler.stats.dropped(stream, "redundant_position") > before_redundant)
        else:
            await wait_until(lambda: key in conn_of(w).synced and w.handler.cur[key] != -1)
            await asyncio.sleep(0.1)
            await wait_until(lambda: key in conn_of(w).synced)
        cur = w.handler.cur[key]
        if case == "a":
            assert calls == [(5, 9)] and cur == 9
        elif case in ("b", "c"):
            assert calls == [] and cur == 9
        elif case == "d":
            assert calls == [] and cur == 5
        elif stream == "typing":  # e: a reset, state rebuilt from (0, 4]
            assert calls == [(0, 4)] and cur == 4
            assert w.consumer.typing == {f"!r{i}:x": ["@t:x"] for i in range(4)}
        else:  # e: stale on a monotonic stream
            assert calls == [] and cur == 5


async def test_typing_reset_on_writer_restart(db_cfg: DatabaseConfig) -> None:
    """A restarted writer announcing `POSITION typing master 0 0` (or `3 3`) resets the typing state."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        for i in range(5):
            writer.set_typing(f"!r{i}:x", "@t:x", True)
        peer.send("POSITION typing master 5 5")
        await wait_synced(w, ("typing", "master"))
        assert len(w.consumer.typing) == 5
        # the writer restarts: serial back to 0
        writer.typing.__init__("master")  # type: ignore[misc]
        peer.send("POSITION typing master 0 0")
        await wait_until(lambda: w.handler.cur[("typing", "master")] == 0)
        assert w.consumer.typing == {}
        peer.send('RDATA typing master 1 ["!n:x",["@z:x"]]')
        await wait_until(lambda: w.consumer.typing == {"!n:x": ["@z:x"]})
        for i in range(3):
            writer.set_typing(f"!s{i}:x", "@q:x", True)
        w.handler.cur[("typing", "master")] = 7  # as if it had seen more before another restart
        peer.send("POSITION typing master 3 3")
        await wait_until(lambda: w.handler.cur[("typing", "master")] == 3)
        assert w.consumer.typing == {f"!s{i}:x": ["@q:x"] for i in range(3)}


@pytest.mark.parametrize("stream", ["device_lists", "typing"])
async def test_failed_catch_up_is_retried(db_cfg: DatabaseConfig, stream: str) -> None:
    """The fetch fails 3 times (DB locked / HTTP 500) then succeeds; live RDATA behind it is applied."""
    key = (stream, "master")
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        if stream == "device_lists":
            await devices(writer, 2)  # 2, 3
            live = 'RDATA device_lists master 4 ["@live:x"]'
            prev, want = 3, 4
        else:
            for i in range(3):
                writer.set_typing(f"!r{i}:x", "@t:x", True)
            live = 'RDATA typing master 4 ["!live:x",["@l:x"]]'
            prev, want = 3, 4
        s = w.handler.streams[stream]
        real = s.update_function
        failures = [0]

        async def flaky(*args: Any) -> Any:
            if failures[0] < 3:
                failures[0] += 1
                raise RuntimeError("database is locked" if stream != "typing" else "HTTP 500")
            return await real(*args)

        s.update_function = flaky
        peer.send(f"POSITION {stream} master {prev} 3", live)
        await wait_until(lambda: w.handler.cur.get(key) == want, what="applied after retries")
        assert failures[0] == 3
        assert w.handler.stats.counters[("catch_up_failures", stream)] == 3
        assert w.handler.stats.gauges[("lag", stream, "master")] == 0
        assert tokens(w, stream)[-1] == 4


async def test_positions_back_to_back_are_serial(db_cfg: DatabaseConfig) -> None:
    """Two POSITIONs while the first catch-up awaits the DB are processed one after another, no row twice."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, _fake, peer, w):
        await devices(writer, 6)  # 2..7
        s = w.handler.streams["device_lists"]
        real = s.update_function
        gate = asyncio.Event()

        async def gated(*args: Any) -> Any:
            await gate.wait()
            return await real(*args)

        s.update_function = gated
        peer.send("POSITION device_lists master 4 4", "POSITION device_lists master 7 7")
        await asyncio.sleep(0.2)
        gate.set()
        await wait_until(lambda: w.handler.cur[DL] == 7)
        assert tokens(w, "device_lists") == [2, 3, 4, 5, 6, 7]


async def test_half_batch_is_never_delivered(db_cfg: DatabaseConfig) -> None:
    """A `batch` cut by a lost connection, or by a POSITION, is discarded; the token arrives whole once."""
    async with asyncio.timeout(10), scripted(db_cfg) as (writer, fake, peer, w):
        _, t2 = await writer.send_event(
            "!r:x", "m.room.create", "@a:x", state_key="", extra_state=[("m.x", "a", "$x")]
        )
        peer.send("POSITION events master 1 1")
        await wait_synced(w, ("events", "master"))
        peer.send(
            'RDATA events master batch ["ev",["$e","!r:x","m.room.create","",null,null,null,false,false]]'
        )
        await asyncio.sleep(0.1)
        peer.close()
        peer2 = await fake.accept()
        peer2.send(f"POSITION events master {t2} {t2}")
        await wait_synced(w, ("events", "master"))
        got = [d for d in w.consumer.deliveries if d.stream == "events"]
        assert [(d.token, len(d.rows), d.path) for d in got] == [(t2, 3, "catch_up")]
        _, t3 = await writer.send_event("!r:x", "m.room.name", "@a:x", state_key="")
        peer2.send(
            'RDATA events master batch ["state",["!r:x","m.room.name","","$partial"]]',
            f"POSITION events master {t3} {t3}",
        )
        await wait_until(lambda: w.handler.cur[("events", "master")] == t3)
        got = [d for d in w.consumer.deliveries if d.stream == "events"]
        assert [(d.token, len(d.rows), d.path) for d in got][-1] == (t3, 2, "catch_up")
        assert "$partial" not in str(got)


async def test_consumer_failure_refetches_the_token(db_cfg: DatabaseConfig) -> None:
    """A consumer raising on a row: cur stays below it; after the forced REPLICATE it is applied once."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w))
            failed = []

            def fail(stream: str, token: int, rows: Any) -> bool:
                if stream == "device_lists" and token == 3 and not failed:
                    failed.append(token)
                    return True
                return False

            w.consumer.fail = fail
            for i in range(4):
                await main.change_devices(f"@u{i}:x", ["D"], [])  # 2..5
            await wait_until(lambda: w.handler.cur.get(DL) == 5, what="recovered")
            assert failed == [3]
            assert tokens(w, "device_lists") == [2, 3, 4, 5]
            assert w.client is not None and w.client.connects == 1


async def test_waiter_sees_applied_rows(db_cfg: DatabaseConfig) -> None:
    """A waiter woken by the position sees the rows (cache invalidations) already applied."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w))
            seen: list[Any] = []

            async def waiter(token: int) -> None:
                assert await w.handler.wait_for_stream_position("master", "device_lists", token)
                seen.append(w.consumer.device_changes.get("@late:x"))

            task = asyncio.ensure_future(waiter(2))
            await asyncio.sleep(0.05)
            t = await main.change_devices("@late:x", ["D"], [])
            await task
            assert seen == [t]


async def test_rows_written_while_disconnected(db_cfg: DatabaseConfig) -> None:
    """Rows written while disconnected arrive once, in order, from the last applied token; later ones live."""
    async with asyncio.timeout(15), running_main(db_cfg) as main:
        proxy = await Proxy(main.replication_port).start()
        async with running_worker("w1", db_cfg, main, port=proxy.port) as w:
            await wait_until(lambda: synced(w))
            await main.change_devices("@a:x", ["D"], [])
            main.set_typing("!r:x", "@a:x", True)
            await wait_until(lambda: w.handler.cur.get(DL) == 2)
            proxy.accepting = False
            proxy.cut_all()
            calls = _record_fetches(w, "device_lists")
            typing_calls = _record_fetches(w, "typing")
            for i in range(5):
                await main.change_devices(f"@b{i}:x", ["D"], [])
                await main.send_event("!r:x", "m.room.message", "@a:x")
            main.set_typing("!r:x", "@b:x", True)
            main.set_typing("!q:x", "@c:x", True)
            proxy.accepting = True
            await wait_until(lambda: synced(w), what="resynced")
            assert calls[0][0] == 2
            assert [(d.token, d.path) for d in w.consumer.deliveries if d.stream == "device_lists"] == [
                (2, "live")
            ] + [(t, "catch_up") for t in range(3, 8)]
            assert typing_calls[0][0] == 0 and w.consumer.typing == main.typing.snapshot()
            await main.change_devices("@later:x", ["D"], [])
            await wait_until(lambda: w.handler.cur.get(DL) == 8)
            assert w.consumer.deliveries[-1].path == "live"
            assert tokens(w, "events") == list(range(2, 7))
        await proxy.stop()


async def test_replicate_during_streamer_pass(db_cfg: DatabaseConfig) -> None:
    """REPLICATE answered mid-pass uses last_token; the later RDATA is above it; each row applied once."""
    async with asyncio.timeout(10), running_main(db_cfg) as main:
        async with running_worker("w1", db_cfg, main) as w:
            await wait_until(lambda: synced(w))
            s = main.handler.streams["device_lists"]
            real = s.update_function
            gate = asyncio.Event()
            entered = asyncio.Event()

            async def gated(*args: Any) -> Any:
                entered.set()
                await gate.wait()
                return await real(*args)

            s.update_function = gated
            t = await main.change_devices("@mid:x", ["D"], [])
            await entered.wait()
            peer = await raw_client(main.replication_port)
            peer.send("NAME raw", "REPLICATE")
            pos = await peer.expect("POSITION device_lists")
            assert pos == f"POSITION device_lists master {t - 1} {t - 1}"
            gate.set()
            assert await peer.expect("RDATA device_lists") == f'RDATA device_lists master {t} ["@mid:x"]'
            await wait_until(lambda: w.handler.cur.get(DL) == t)
            assert tokens(w, "device_lists") == [t]
            peer.close()


async def test_inbound_overflow_resyncs(db_cfg: DatabaseConfig) -> None:
    """A stalled consumer fills the inbound queue: it is cleared, REPLICATE resyncs, nothing is lost."""
    async with asyncio.timeout(15), running_main(db_cfg) as main:
        for i in range(3):
            await main.change_devices(f"@pre{i}:x", ["D"], [])
        gate = asyncio.Event()
        worker = Worker(
            "w1",
            db_cfg,
            main=("127.0.0.1", main.replication_port),
            options=fast_options(inbound_bound=5),
        )
        real_start = worker._start

        async def start_gated() -> None:
            await real_start()
            s = worker.handler.streams["device_lists"]
            real = s.update_function

            async def gated(*args: Any) -> Any:
                await gate.wait()
                return await real(*args)

            s.update_function = gated

        worker._start = start_gated  # type: ignore[method-assign]
        await worker.start()
        try:
            await wait_until(lambda: worker.client is not None and worker.client.connection is not None)
            for i in range(20):
                await main.change_devices(f"@flood{i}:x", ["D"], [])
            await wait_until(lambda: worker.handler.stats.dropped("device_lists", "overflow") > 0)
            gate.set()
            last = main.devices_gen.get_current_token()
            await wait_until(lambda: worker.handler.cur.get(DL) == last, what="all rows")
            assert tokens(worker, "device_lists") == list(range(2, last + 1))
            assert worker.handler.stats.gauges[("lag", "device_lists", "master")] == 0
        finally:
            await worker.stop()
