"""Replication throughput against its physical limits, measured in the same run (spec §9: P1, P2, P2b).

* **live** (P1): the main process (this process) streams ``device_lists`` rows to one
  worker (a separate ``python -m homeserver worker`` process, no-op consumer) over
  loopback TCP, with ``batch`` groups and write coalescing on.  The headline figure is
  the **burst**: the rows (500 per transaction) are committed while the streamer is
  held, then the streamer is poked and the clock runs from that poke to the worker's
  status endpoint reporting the last token.  That interval holds exactly the
  replication path: the streamer's paged reads of the rows, line encoding, coalesced
  ``transport.write``, the worker's line splitting and parsing, its per-stream queue,
  logging contexts, metrics and delivery.  The status is polled every 10 ms, so the end
  is seen up to 10 ms late, which understates the rate (a few % at the default 50k rows;
  use 50k or more).  It is compared with **L_db** on *the same rows*: the stream's own
  paged ``SELECT`` at the streamer's page size on a bare ``sqlite3`` connection to that
  round's database file, ``json.dumps`` of each row and formatting its ``RDATA`` line,
  single-threaded in this process, right after the round.  Neither side includes
  writing the rows.  The "commit -> worker" figure (streamer live while the rows are
  committed, clock from the first commit) is printed for orientation only: it contains
  the writer's commits (here about twice as long as replicating the rows), which L_db
  does not.  Also printed: L_net (pre-encoded lines over plain asyncio loopback, the
  receiver splits lines and ``json.loads`` each row) and each process's CPU per row
  during the burst.  ``--profile`` runs the burst with main and worker in this one
  process (loopback TCP) under ``cProfile`` and prints where the time goes.
* **catch-up** (P2): a gap of ``--rows`` ``device_lists`` rows (and ``--events`` events with 30 %
  state rows) in SQLite; rows/s from the ``POSITION`` written by a scripted main to the
  worker's position reaching the end, at page sizes 100/500/1000, against L_db at the
  same page size.  With ``--pg-dsn`` (or env ``BENCH_PG_DSN``) the same on PostgreSQL.

For catch-up the worker runs in this process against a scripted main (the DB work runs
in pool threads); logging contexts and metrics are on, tracing off.  Each figure is the median of
``--rounds`` rounds (candidate and limit interleaved) with its IQR, and its minimum.

    python benchmarks/bench_replication.py                 # quick: 100k-row gap
    python benchmarks/bench_replication.py --rows 1000000  # the 1M-row gap
    python benchmarks/bench_replication.py --live-only --rounds 7
    python benchmarks/bench_replication.py --profile       # in-process cProfile of the burst
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
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
    return f"  {name:<38} {med:>10,.0f} rows/s  (IQR {iqr:,.0f}, min {min(samples):,.0f}, n={len(samples)})"


def ratio_line(label: str, cand: list[float], limit: list[float], bound: float) -> str:
    r = statistics.median(cand) / statistics.median(limit)
    verdict = "PASS" if r >= bound else "FAIL"
    lo = min(a / b for a, b in zip(cand, limit, strict=True))
    return f"  {label:<38} {r:>10.2f}x   (per-round min {lo:.2f}x; target >= {bound}x) {verdict}"


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
        "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
        " origin_server_ts, auth_rank, json) VALUES (?, ?, ?, ?, ?, '@a:x', 0, 1, '{}')",
        ((i, f"$e{i}", f"!room{i % 100}:x", "m.room.message", None) for i in range(2, n_events + 2)),
    )
    cur.executemany(
        "INSERT INTO current_state_delta_stream (stream_id, room_id, type, state_key, event_id)"
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


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class LiveRound:
    rate: float  # rows/s
    rows: int
    db_path: Path
    main_cpu: float  # seconds of this process's CPU in the measured interval
    worker_cpu: float  # seconds of the worker process's CPU in the measured interval


async def _commit_rows(main: MainProcess, n_changes: int, devices_per_change: int) -> None:
    devices = [f"D{i}" for i in range(devices_per_change)]
    sem = asyncio.Semaphore(4)

    async def one(i: int) -> None:
        async with sem:
            await main.change_devices(f"@user{i % 1000}:example.com", devices, [])

    with LoggingContext("bench-writer"):
        await asyncio.gather(*(one(i) for i in range(n_changes)))


async def live_rate(
    tmp: Path, n_changes: int, devices_per_change: int = 500, page: int | None = None, burst: bool = False
) -> LiveRound:
    """One live round: rows/s until the worker (a separate process) holds the last token.

    With ``burst`` the streamer is held while the rows are committed, and the clock
    runs from its release: the replication path alone (streamer read, encode, send,
    parse, queue, deliver).  Without, the clock runs from the first commit.
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
        streamer = main.handler.streamer
        assert streamer is not None
        if burst:  # hold the streamer: the generator does not poke it while we write
            listeners = list(main.devices_gen._listeners)
            main.devices_gen._listeners.clear()
            await _commit_rows(main, n_changes, devices_per_change)
            main.devices_gen._listeners.extend(listeners)
        with LoggingContext("bench-replication"):
            wcpu0 = _proc_cpu(proc.pid)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if burst:
                streamer.poke()
            else:
                await _commit_rows(main, n_changes, devices_per_change)
            written = time.perf_counter() - t0
            last = main.devices_gen.get_current_token()
            while (await _status(wport))["positions"].get("device_lists", {}).get("master", 0) < last:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            main_cpu = time.process_time() - cpu0
            worker_cpu = _proc_cpu(proc.pid) - wcpu0
        if os.environ.get("BENCH_DEBUG"):
            print(
                f"    ({'burst' if burst else 'live'}: writes done after {written:.3f}s, worker caught up"
                f" after {elapsed:.3f}s; main CPU {main_cpu:.2f}s, worker CPU {worker_cpu:.2f}s)"
            )
    finally:
        proc.terminate()
        await proc.wait()
        await main.stop()
    rows = n_changes * devices_per_change
    return LiveRound(rows / elapsed, rows, Path(db.target), main_cpu, worker_cpu)


async def profile_burst(tmp: Path, n_rows: int, page: int | None, top: int) -> None:
    """The burst with main and worker in this process (loopback TCP) under cProfile."""
    import cProfile
    import pstats

    db = DatabaseConfig("sqlite", str(tmp / "profile.db"))
    opts = ProcessOptions(position_interval=3600)
    if page is not None:
        opts.target_rows = page
    main = MainProcess(db, replication=("127.0.0.1", 0), http=None, options=opts)
    await main.start()
    worker = Worker("bench", db, main=("127.0.0.1", main.replication_port), keep_deliveries=False)
    await worker.start()
    key = ("device_lists", "master")
    while not (worker.client and worker.client.connection and key in worker.client.connection.synced):
        await asyncio.sleep(0.01)
    listeners = list(main.devices_gen._listeners)
    main.devices_gen._listeners.clear()
    await _commit_rows(main, max(1, n_rows // 500), 500)
    main.devices_gen._listeners.extend(listeners)
    last = main.devices_gen.get_current_token()
    streamer = main.handler.streamer
    assert streamer is not None
    prof = cProfile.Profile()
    with LoggingContext("bench-replication"):
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        prof.enable()
        streamer.poke()
        await worker.handler.wait_for_stream_position("master", "device_lists", last, timeout=600)
        prof.disable()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    rows = worker.consumer.rows_received.get("device_lists", 0)
    await worker.stop()
    await main.stop()
    print(
        f"\nIn-process burst under cProfile: {rows:,} rows in {elapsed:.3f}s "
        f"({cpu / max(rows, 1) * 1e6:.2f} us CPU per row, both sides, profiler included)"
    )
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)


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
        if args.profile:
            await profile_burst(tmp, args.live_rows, args.live_page, 30)
            return 0
        if not args.skip_live:
            n_changes = max(1, args.live_rows // 500)
            page = args.live_page or ProcessOptions().target_rows
            live: list[float] = []
            burst: list[float] = []
            ldb: list[float] = []
            lnet: list[float] = []
            main_us: list[float] = []
            worker_us: list[float] = []
            for _ in range(args.rounds):
                live.append((await live_rate(tmp, n_changes, page=page)).rate)
                b = await live_rate(tmp, n_changes, page=page, burst=True)
                burst.append(b.rate)
                main_us.append(b.main_cpu / b.rows * 1e6)
                worker_us.append(b.worker_cpu / b.rows * 1e6)
                # the same rows, from the same file, at the streamer's page size
                ldb.append(l_db(functools.partial(sqlite3.connect, b.db_path), 0, 2**62, page))
                lnet.append(await l_net(b.rows))
            rows = n_changes * 500
            print(f"\nP1 live RDATA over loopback ({rows:,} device_lists rows, 500 per commit, page {page})")
            print(fmt("candidate: burst, streamer -> worker", burst))
            print(fmt("L_db (same rows, same page size)", ldb))
            print(fmt("L_net", lnet))
            print(ratio_line("burst / L_db", burst, ldb, 0.5))
            mins = [min(a, b) for a, b in zip(ldb, lnet, strict=True)]
            print(ratio_line("burst / min(L_db, L_net)", burst, mins, 0.35))
            print(
                f"  CPU per row during the burst: main {statistics.median(main_us):.2f} us, "
                f"worker {statistics.median(worker_us):.2f} us (medians)"
            )
            print("  orientation (includes the writer's commits, which L_db does not):")
            print(fmt("commit -> worker", live))
            print(
                ratio_line("commit -> worker / L_db", live, ldb, 0.5).replace("PASS", "").replace("FAIL", "")
            )
            failed |= statistics.median(burst) < 0.5 * statistics.median(ldb)
            if args.live_only:
                return 1 if failed and args.strict else 0
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
    p.add_argument("--live-rows", type=int, default=50_000, help="rows for the live benchmark (default 50k)")
    p.add_argument("--pages", type=int, nargs="+", default=[100, 500, 1000], help="catch-up page sizes")
    p.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    p.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN"), help="PostgreSQL DSN for P2b")
    p.add_argument("--skip-live", action="store_true", help="only the catch-up benchmarks")
    p.add_argument("--live-only", action="store_true", help="only the live benchmark")
    p.add_argument("--profile", action="store_true", help="cProfile the live burst in one process, then exit")
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
