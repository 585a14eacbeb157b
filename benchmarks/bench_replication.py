"""Replication throughput against its physical limits, measured in the same run (spec §9: P1, P2, P2b).

* **live**: the main process commits ``device_lists`` changes flat out (500 devices per
  transaction), one worker applies them (no-op consumer) over loopback TCP with ``batch``
  groups and write coalescing on; rows/s from the first commit to the worker (a separate
  ``python -m homeserver worker`` process, polled on its status endpoint) holding the last
  token; and the same rows committed while the streamer is held, timed from its release
  ("burst": the RDATA path without the row writes).  Compared with L_db (paged SELECT + ``json.dumps`` + RDATA formatting on a
  bare connection) and L_net (pre-encoded lines over plain asyncio loopback, receiver
  splits lines and ``json.loads`` each row).
* **catch-up**: a gap of ``--rows`` ``device_lists`` rows (and ``--events`` events with 30 %
  state rows) in SQLite; rows/s from the ``POSITION`` written by a scripted main to the
  worker's position reaching the end, at page sizes 100/500/1000, against L_db at the
  same page size.  With ``--pg-dsn`` (or env ``BENCH_PG_DSN``) the same on PostgreSQL.

For catch-up the worker runs in this process against a scripted main (the DB work runs
in pool threads); logging contexts and metrics are on, tracing off.  Each figure is the median of
``--rounds`` rounds (candidate and limit interleaved) with its IQR.

    python benchmarks/bench_replication.py                 # quick: 100k-row gap
    python benchmarks/bench_replication.py --rows 1000000  # the 1M-row gap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from homeserver.app import MainProcess, ProcessOptions, Worker
from homeserver.config import DatabaseConfig
from homeserver.replication.protocol import RdataCommand
from homeserver.storage.streams import DEVICE_LIST_UPDATES_SQL

from logcontext import LoggingContext

# The same page query the stream's update function runs.
DEVICE_SQL = DEVICE_LIST_UPDATES_SQL.format(order=" ORDER BY stream_id")


def summary(samples: list[float]) -> tuple[float, float]:
    """Median and IQR."""
    if len(samples) < 4:
        return statistics.median(samples), 0.0
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


def fmt(name: str, samples: list[float]) -> str:
    med, iqr = summary(samples)
    return f"  {name:<34} {med:>12,.0f} rows/s  (IQR {iqr:,.0f}, n={len(samples)})"


def ratio_line(label: str, cand: list[float], limit: list[float], bound: float) -> str:
    r = statistics.median(cand) / statistics.median(limit)
    verdict = "PASS" if r >= bound else "FAIL"
    return f"  {label:<34} {r:>12.2f}x   (target >= {bound}x) {verdict}"


# -- limits ---------------------------------------------------------------------------------


def l_db(
    connect: Callable[[], Any], n_from: int, n_to: int, page: int, pg: bool = False, encode: bool = True
) -> float:
    """Raw paged SELECT ... ORDER BY stream_id LIMIT page, json.dumps each row, format RDATA.

    ``encode=False`` gives bare paging (no JSON), printed for orientation only.
    """
    conn = connect()
    sql = DEVICE_SQL.replace("?", "%s") if pg else DEVICE_SQL
    cur = conn.cursor()
    dumps = json.dumps
    t0 = time.perf_counter()
    frm, rows = n_from, 0
    while True:
        cur.execute(sql, ("master", frm, n_to, page, "master", frm, n_to, page, page))
        batch = cur.fetchall()
        if encode:
            for sid, entity in batch:
                line = f"RDATA device_lists master {sid} {dumps([entity], separators=(',', ':'))}\n"
                del line
        rows += len(batch)
        if len(batch) < page:
            break
        frm = batch[-1][0]
    elapsed = time.perf_counter() - t0
    if pg:
        conn.rollback()
    conn.close()
    return rows / elapsed


async def l_net(n: int) -> float:
    """Pre-encoded RDATA lines written in chunks of 100; the receiver splits and json.loads."""
    lines = [
        RdataCommand("device_lists", "master", i, [f"@user{i % 1000}:example.com"]).to_line().encode() + b"\n"
        for i in range(2, n + 2)
    ]
    chunks = [b"".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]
    done = asyncio.get_running_loop().create_future()
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        buf = b""
        loads = json.loads
        while count < n:
            data = await reader.read(65536)
            if not data:
                break
            parts = (buf + data).split(b"\n")
            buf = parts.pop()
            for p in parts:
                loads(p.split(b" ", 4)[4])
                count += 1
        done.set_result(None)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    for c in chunks:
        w.write(c)
        await w.drain()
    await done
    elapsed = time.perf_counter() - t0
    w.close()
    server.close()
    return n / elapsed


# -- data -----------------------------------------------------------------------------------


def populate_sqlite(path: Path, n_rows: int, n_events: int) -> None:
    """``n_rows`` device-list rows (ids 2..n+1, 1 in 5 a poke) and events (30 % with state)."""
    from homeserver.app import apply_schema

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    cur = conn.cursor()
    cur.execute("BEGIN")
    apply_schema(cur)
    cur.executemany(
        "INSERT INTO device_lists_stream (stream_id, user_id, device_id) VALUES (?, ?, ?)",
        ((i, f"@user{i % 1000}:example.com", f"D{i}") for i in range(2, n_rows + 2) if i % 5),
    )
    cur.executemany(
        "INSERT INTO device_lists_outbound_pokes (destination, stream_id, user_id, device_id, ts)"
        " VALUES (?, ?, ?, ?, 0)",
        ((f"remote{i % 50}.example.org", i, "@u:x", "D") for i in range(2, n_rows + 2) if not i % 5),
    )
    cur.executemany(
        "INSERT INTO event_stream (stream_ordering, event_id, room_id, type, state_key)"
        " VALUES (?, ?, ?, ?, ?)",
        ((i, f"$e{i}", f"!room{i % 100}:x", "m.room.message", None) for i in range(2, n_events + 2)),
    )
    cur.executemany(
        "INSERT INTO event_stream_state_deltas (stream_id, room_id, type, state_key, event_id)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            (i, f"!room{i % 100}:x", "m.room.member", f"@u{i}:x", f"$e{i}")
            for i in range(2, n_events + 2)
            if i % 10 < 3
        ),
    )
    cur.execute("COMMIT")
    conn.close()


def populate_pg(dsn: str, n_rows: int) -> None:
    import psycopg
    from homeserver.app import apply_schema

    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        apply_schema(cur)
        cur.execute("TRUNCATE device_lists_stream, device_lists_outbound_pokes, stream_positions")
        with cur.copy("COPY device_lists_stream (stream_id, user_id, device_id) FROM STDIN") as cp:
            for i in range(2, n_rows + 2):
                if i % 5:
                    cp.write_row((i, f"@user{i % 1000}:example.com", f"D{i}"))
        with cur.copy(
            "COPY device_lists_outbound_pokes (destination, stream_id, user_id, device_id, ts) FROM STDIN"
        ) as cp:
            for i in range(2, n_rows + 2):
                if not i % 5:
                    cp.write_row((f"remote{i % 50}.example.org", i, "@u:x", "D", 0))
        conn.commit()


# -- candidates -----------------------------------------------------------------------------


class _ScriptedMain:
    """Accepts the worker and sends what the test script says."""

    def __init__(self) -> None:
        self.writers: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def start(self) -> int:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"SERVER localhost\n")
            await self.writers.put(w)
            while await r.read(65536):
                pass

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def catch_up_rate(db: DatabaseConfig, stream: str, upto: int, page: int) -> tuple[float, int]:
    """Rows/s of one catch-up from the start to ``upto`` (a fresh worker each time)."""
    fake = _ScriptedMain()
    port = await fake.start()
    worker = Worker(
        "bench",
        db,
        main=("127.0.0.1", port),
        options=ProcessOptions(target_rows=page),
        keep_deliveries=False,
    )
    await worker.start()
    w = await fake.writers.get()
    key = (stream, "master")
    worker.handler.cur[key] = 1
    before = worker.consumer.rows_received.get(stream, 0)
    t0 = time.perf_counter()
    w.write(f"POSITION {stream} master {upto} {upto}\n".encode())
    await worker.handler.wait_for_stream_position("master", stream, upto, timeout=3600)
    while key not in (worker.client.connection.synced if worker.client and worker.client.connection else ()):
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    rows = worker.consumer.rows_received.get(stream, 0) - before
    await worker.stop()
    fake.server.close()
    return rows / elapsed, rows


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _status(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /_hs/status HTTP/1.0\r\nHost: x\r\n\r\n")
    data = await reader.read()
    writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


async def live_rate(
    tmp: Path, n_changes: int, devices_per_change: int = 500, page: int | None = None, burst: bool = False
) -> float:
    """Rows/s from the first commit to the worker (a separate process) holding the last token.

    With ``burst`` the streamer is held while the rows are committed, and the time runs
    from its release: the live RDATA path (streamer read, encode, send, parse, apply)
    without the cost of writing the rows.
    """
    db = DatabaseConfig("sqlite", str(tmp / f"live-{time.monotonic_ns()}.db"))
    opts = ProcessOptions(position_interval=3600)
    if page is not None:
        opts.target_rows = page
    main = MainProcess(db, replication=("127.0.0.1", 0), http=None, options=opts)
    await main.start()
    wport = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "homeserver",
        "worker",
        "--name",
        "bench",
        "--database",
        f"sqlite:///{db.target}",
        "--main",
        f"127.0.0.1:{main.replication_port}",
        "--http",
        f"127.0.0.1:{wport}",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        await proc.stdout.readline()  # "worker bench ready"
        while "device_lists/master" not in (await _status(wport)).get("synced", []):
            await asyncio.sleep(0.01)
        devices = [f"D{i}" for i in range(devices_per_change)]
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with sem:
                await main.change_devices(f"@user{i % 1000}:example.com", devices, [])

        streamer = main.handler.streamer
        assert streamer is not None
        poke = streamer.poke
        if burst:  # hold the streamer: the generator does not poke it while we write
            listeners = list(main.devices_gen._listeners)
            main.devices_gen._listeners.clear()
            with LoggingContext("bench-writer"):
                await asyncio.gather(*(one(i) for i in range(n_changes)))
            main.devices_gen._listeners.extend(listeners)
        with LoggingContext("bench-writer"):
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if burst:
                poke()
            else:
                await asyncio.gather(*(one(i) for i in range(n_changes)))
            written = time.perf_counter() - t0
            last = main.devices_gen.get_current_token()
            while (await _status(wport))["positions"].get("device_lists", {}).get("master", 0) < last:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
        if os.environ.get("BENCH_DEBUG"):
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            worker_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            print(
                f"    (writes done after {written:.3f}s, worker caught up after {elapsed:.3f}s; "
                f"main CPU {time.process_time() - cpu0:.2f}s, worker CPU total {worker_cpu:.2f}s)"
            )
    finally:
        proc.terminate()
        await proc.wait()
        await main.stop()
    return n_changes * devices_per_change / elapsed


# -- main -----------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"rows={args.rows:,} events={args.events:,} rounds={args.rounds}"
    )
    failed = False
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # P1 live
        if not args.skip_live:
            live, burst, ldb, lnet = [], [], [], []
            db_path = tmp / "limit.db"
            populate_sqlite(db_path, args.live_rows, 0)
            for _ in range(args.rounds):
                live.append(await live_rate(tmp, max(1, args.live_rows // 500), page=args.live_page))
                burst.append(
                    await live_rate(tmp, max(1, args.live_rows // 500), page=args.live_page, burst=True)
                )
                ldb.append(l_db(lambda: sqlite3.connect(db_path), 1, args.live_rows + 1, 100))
                lnet.append(await l_net(args.live_rows))
            print(f"\nP1 live RDATA over loopback ({args.live_rows:,} device_lists rows, 500 per commit)")
            print(fmt("candidate: commit -> worker", live))
            print(fmt("candidate: burst, streamer -> worker", burst))
            print(fmt("L_db (page 100)", ldb))
            print(fmt("L_net", lnet))
            print(ratio_line("live / L_db", live, ldb, 0.5))
            mins = [min(a, b) for a, b in zip(ldb, lnet, strict=True)]
            print(ratio_line("live / min(L_db, L_net)", live, mins, 0.35))
            print(ratio_line("burst / L_db", burst, ldb, 0.5))
            print(ratio_line("burst / min(L_db, L_net)", burst, mins, 0.35))
            failed |= statistics.median(live) < 0.5 * statistics.median(ldb)
        # P2 catch-up from SQLite
        db_path = tmp / "gap.db"
        t0 = time.perf_counter()
        populate_sqlite(db_path, args.rows, args.events)
        print(
            f"\n(populated {args.rows:,} device-list rows + {args.events:,} events in "
            f"{time.perf_counter() - t0:.1f}s)"
        )
        db = DatabaseConfig("sqlite", str(db_path))
        upto = args.rows + 1
        for page in args.pages:
            cand, lim = [], []
            for _ in range(args.rounds):
                rate, rows = await catch_up_rate(db, "device_lists", upto, page)
                assert rows == args.rows, f"caught up {rows} rows, expected {args.rows}"
                cand.append(rate)
                lim.append(l_db(lambda: sqlite3.connect(db_path), 1, upto, page))
            print(f"\nP2 catch-up from SQLite: {args.rows:,} device_lists rows, page {page}")
            print(fmt("candidate: POSITION -> synced", cand))
            print(fmt("L_db", lim))
            bare = [l_db(lambda: sqlite3.connect(db_path), 1, upto, page, encode=False) for _ in range(3)]
            print(fmt("(bare paging, no JSON: orientation)", bare))
            print(ratio_line("catch-up / L_db", cand, lim, 0.5))
            failed |= statistics.median(cand) < 0.5 * statistics.median(lim)
        if args.events:
            ev = []
            for _ in range(args.rounds):
                rate, _ = await catch_up_rate(db, "events", args.events + 1, 100)
                ev.append(rate)
            print(f"\nP2 catch-up of {args.events:,} events (30 % with a state row), page 100")
            print(fmt("candidate: POSITION -> synced", ev))
        # P2b PostgreSQL
        if args.pg_dsn:
            import psycopg

            populate_pg(args.pg_dsn, args.rows)
            pgdb = DatabaseConfig("postgres", args.pg_dsn)
            cand, lim = [], []
            for _ in range(args.rounds):
                rate, rows = await catch_up_rate(pgdb, "device_lists", upto, 100)
                cand.append(rate)
                lim.append(l_db(lambda: psycopg.connect(args.pg_dsn), 1, upto, 100, pg=True))
            print(f"\nP2b catch-up from PostgreSQL: {args.rows:,} device_lists rows, page 100")
            print(fmt("candidate: POSITION -> synced", cand))
            print(fmt("L_db (psycopg)", lim))
            print(ratio_line("catch-up / L_db", cand, lim, 0.5))
            failed |= statistics.median(cand) < 0.5 * statistics.median(lim)
    return 1 if failed and args.strict else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=100_000, help="device-list gap for catch-up (default 100k)")
    p.add_argument("--events", type=int, default=20_000, help="events for the events catch-up (0: skip)")
    p.add_argument("--live-rows", type=int, default=20_000, help="rows for the live benchmark")
    p.add_argument("--pages", type=int, nargs="+", default=[100, 500, 1000], help="catch-up page sizes")
    p.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    p.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN"), help="PostgreSQL DSN for P2b")
    p.add_argument("--skip-live", action="store_true", help="only the catch-up benchmarks")
    p.add_argument(
        "--live-page", type=int, default=None, help="streamer page size (default: the process default)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 10k rows, 2 rounds, page 100")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.events, args.live_rows, args.rounds, args.pages = 10_000, 2_000, 2_000, 2, [100]
    for name in ("rows", "live_rows", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
