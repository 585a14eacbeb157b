"""``python -m homeserver demo``: a main process and two workers, a workload, and where the time went.

The demo starts ``python -m homeserver main`` and two ``python -m homeserver worker``
processes (SQLite in ``--out`` by default; ``--postgres DSN`` / ``--redis URL`` switch to
those), waits until they are ready, drives a bounded workload over the main process's HTTP
API (rooms whose DAG forks and needs state resolution, federation invites, device-list
changes replicated to the workers, typing notifications), waits until the workers have
caught up, stops everything with SIGTERM and prints:

- the top request / background / replication contexts by CPU and by database time, from the
  processes' JSON access logs and span files;
- the share of CPU the processes' ledgers could not attribute to any context;
- whether each worker received every replicated row;
- where the traces went (OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else span files)
  and the ``logcontext report`` command for the access log.

Everything it writes is in ``--out``: ``access-*.jsonl``, ``spans-*.jsonl``, ``usage-*.json``,
``*.log`` (each process's standard error), ``worker*-rows.jsonl`` (every delivered row),
``status.json`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ContextRow",
    "DemoSummary",
    "add_arguments",
    "aggregate",
    "check_replication",
    "classify_span",
    "run",
]

WORKERS = ("worker1", "worker2")
STREAMS = ("events", "device_lists", "typing")
# Files of a previous run that the demo replaces (only these are ever deleted).
_OWN_PATTERNS = (
    "access-*.jsonl",
    "spans-*.jsonl",
    "usage-*.json",
    "main*.log",
    "worker*.log",
    "worker*-rows.jsonl",
    "status.json",
    "summary.json",
    "homeserver.db",
    "homeserver.db-wal",
    "homeserver.db-shm",
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from homeserver.demo_workload import SIZES

    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        metavar="DIR",
        help="where logs, spans and the summary go (default: ./demo-out)",
    )
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="medium",
        help="workload size (default: medium, seconds on 2 cores; small is ~4x less)",
    )
    parser.add_argument(
        "--rooms", type=_positive_int, metavar="N", help="number of rooms (overrides the size's)"
    )
    parser.add_argument("--postgres", metavar="DSN", help="use this PostgreSQL database instead of SQLite")
    parser.add_argument("--redis", metavar="URL", help="replicate over Redis pub/sub instead of TCP")
    parser.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight (default 8)")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="give up on the workload after this long (default 120)",
    )
    parser.add_argument("--top", type=_positive_int, default=8, help="rows per table (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- processes --------------------------------------------------------------------------------


class Child:
    """One started process: its ready line, its standard output drained to a file."""

    def __init__(self, name: str, argv: list[str], out_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = out_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=out_dir,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._drain, name=f"demo-{name}-stdout", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with (self.log_path.parent / f"{self.name}.stdout.log").open("wb") as copy:
            for raw in self.proc.stdout:
                copy.write(raw)
                copy.flush()
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix``; raise ``RuntimeError`` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s (see {self.log_path})")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"{self.name} exited with {code} before it was ready:\n{self.tail()}")
            if line.startswith(prefix):
                return line

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + x for x in lines[-n:])

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code (None if killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._close()
                return None
        self._reader.join(5)
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _hostport(line: str, key: str) -> tuple[str, int]:
    """``key=HOST:PORT`` from a ready line."""
    for word in line.split():
        if word.startswith(key + "="):
            host, _, port = word[len(key) + 1 :].rpartition(":")
            return host, int(port)
    raise RuntimeError(f"no {key}= in ready line {line!r}")


def _supports_log_dir() -> bool:
    """Whether ``main``/``worker`` take ``--log-dir`` themselves (else the demo wraps them)."""
    from homeserver.commands import main_process, worker

    for mod in (main_process, worker):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        if "--log-dir" not in p.format_help():
            return False
    return True


def _command(service: str, args: list[str], out_dir: Path, direct: bool) -> list[str]:
    if direct:
        return [sys.executable, "-m", "homeserver", *args, "--log-dir", str(out_dir)]
    return [
        sys.executable,
        "-m",
        "homeserver.observability",
        "--log-dir",
        str(out_dir),
        "--service",
        service,
        "--",
        *args,
    ]


# -- replication check ------------------------------------------------------------------------


def _db_tokens(dsn: str, baseline: dict[str, int], final: dict[str, int]) -> dict[str, Counter[int]]:
    """Rows per stream token in the database, for tokens in ``(baseline, final]``."""
    queries = {
        "events": (
            "SELECT stream_ordering FROM events WHERE instance_name = 'master'"
            " AND stream_ordering > {p} AND stream_ordering <= {p}",
            "SELECT stream_id FROM current_state_delta_stream WHERE instance_name = 'master'"
            " AND stream_id > {p} AND stream_id <= {p}",
        ),
        "device_lists": (
            "SELECT stream_id FROM device_lists_stream WHERE instance_name = 'master'"
            " AND stream_id > {p} AND stream_id <= {p}",
            "SELECT stream_id FROM device_lists_outbound_pokes WHERE instance_name = 'master'"
            " AND stream_id > {p} AND stream_id <= {p}",
        ),
    }
    if dsn.startswith("sqlite:///"):
        import sqlite3

        uri = Path(dsn[len("sqlite:///") :]).resolve().as_uri() + "?mode=ro"
        conn: Any = sqlite3.connect(uri, uri=True)
        p = "?"
    else:
        import psycopg

        conn = psycopg.connect(dsn)
        p = "%s"
    out: dict[str, Counter[int]] = {}
    try:
        for stream, sqls in queries.items():
            c: Counter[int] = Counter()
            for sql in sqls:
                cur = conn.cursor()
                cur.execute(sql.format(p=p), (baseline.get(stream, 0), final.get(stream, 0)))
                c.update(int(r[0]) for r in cur.fetchall())
            out[stream] = c
    finally:
        conn.close()
    return out


def _recorded_tokens(path: Path, baseline: dict[str, int], final: dict[str, int]) -> dict[str, Counter[int]]:
    """Rows per stream token that a worker recorded (``--record``), in ``(baseline, final]``."""
    out: dict[str, Counter[int]] = {s: Counter() for s in STREAMS}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
                stream, token, rows = d["stream"], int(d["token"]), d["rows"]
            except (ValueError, KeyError, TypeError):
                continue
            if stream in out and baseline.get(stream, 0) < token <= final.get(stream, 0):
                out[stream][token] += len(rows)
    return out


def check_replication(
    expected: dict[str, Counter[int]],
    recorded: dict[str, dict[str, Counter[int]]],
    main_positions: dict[str, int],
    worker_status: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Compare, per worker and stream, the rows it received with the rows in the database.

    Returns ``{"ok": bool, "workers": {name: {stream: {"expected", "received", "missing",
    "extra", "position", "main_position"}}}}``; every stream's position must have reached the main
    process's (``main_positions``, read when the workload ended).
    """
    result: dict[str, Any] = {"ok": True, "workers": {}}
    for name, rec in recorded.items():
        per: dict[str, Any] = {}
        status = worker_status.get(name, {})
        positions = status.get("positions", {}) if isinstance(status, dict) else {}
        for stream in STREAMS:
            pos = (positions.get(stream) or {}).get("master")
            entry: dict[str, Any] = {"position": pos, "main_position": main_positions.get(stream)}
            main_pos = main_positions.get(stream)
            ok = pos is not None and main_pos is not None and pos >= main_pos
            if stream in expected:
                exp, got = expected[stream], rec.get(stream, Counter())
                missing = sum((exp - got).values())
                extra = sum((got - exp).values())
                entry.update(
                    expected=sum(exp.values()), received=sum(got.values()), missing=missing, extra=extra
                )
                ok = ok and missing == 0 and extra == 0
            entry["ok"] = ok
            result["ok"] = result["ok"] and ok
            per[stream] = entry
        result["workers"][name] = per
    return result


# -- aggregation ------------------------------------------------------------------------------


def classify_span(name: str, kind: str | None) -> str | None:
    """The category of a span for the tables: request / background / replication, else None."""
    if name.startswith("bgproc."):
        return "replication" if "replication" in name else "background"
    if name.startswith("replication"):
        return "replication"
    if kind == "server":
        return "request"
    return None


@dataclass
class ContextRow:
    """One context name's totals (seconds) across every process that ran it."""

    category: str
    name: str
    services: set[str] = field(default_factory=set)
    count: int = 0
    cpu: float = 0.0
    db_txn: float = 0.0
    db_sched: float = 0.0
    txns: int = 0

    @property
    def db(self) -> float:
        return self.db_txn + self.db_sched

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "name": self.name,
            "services": sorted(self.services),
            "count": self.count,
            "cpu_s": round(self.cpu, 6),
            "db_s": round(self.db, 6),
            "db_txn_s": round(self.db_txn, 6),
            "db_sched_s": round(self.db_sched, 6),
            "db_txns": self.txns,
        }


@dataclass
class DemoSummary:
    """Everything the final tables show."""

    rows: list[ContextRow]
    requests: int
    spans: int
    bad_lines: int
    unattributed: dict[str, dict[str, float]]  # service -> attributed_s, unattributed_s, process_cpu_s

    def top(self, key: str, n: int) -> list[ContextRow]:
        if key not in ("cpu", "db"):
            raise ValueError(f"key must be 'cpu' or 'db', not {key!r}")
        rows = [r for r in self.rows if (r.cpu if key == "cpu" else r.db) > 0 or r.count]
        rows.sort(key=lambda r: (-(r.cpu if key == "cpu" else r.db), -r.count, r.name))
        return rows[:n]

    def unattributed_share(self) -> float | None:
        att = sum(v["attributed_s"] for v in self.unattributed.values())
        un = sum(v["unattributed_s"] for v in self.unattributed.values())
        return un / (att + un) if att + un > 0 else None

    def as_dict(self, top: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "spans": self.spans,
            "bad_lines": self.bad_lines,
            "top_by_cpu": [r.as_dict() for r in self.top("cpu", top)],
            "top_by_db": [r.as_dict() for r in self.top("db", top)],
            "unattributed": self.unattributed,
            "unattributed_share": self.unattributed_share(),
        }


def _service_of(path: Path, prefix: str) -> str:
    stem = path.name[len(prefix) :]
    return stem.rsplit(".", 1)[0]


def aggregate(out_dir: Path) -> DemoSummary:
    """Read every process's access log, span file and usage file in ``out_dir``."""
    from logcontext._report_load import LoadResult, load_lines

    rows: dict[tuple[str, str], ContextRow] = {}
    requests = spans = bad = 0

    def row(category: str, name: str, service: str) -> ContextRow:
        r = rows.get((category, name))
        if r is None:
            r = rows[(category, name)] = ContextRow(category, name)
        r.services.add(service)
        return r

    for path in sorted(out_dir.glob("access-*.jsonl")) + sorted(out_dir.glob("spans-*.jsonl")):
        service = _service_of(path, path.name.split("-", 1)[0] + "-")
        result = LoadResult()
        with path.open("rb") as fh:
            load_lines(fh, str(path), result)
        bad += result.bad_lines
        for a in result.access:
            requests += 1
            r = row("request", a.handler, service)
            r.count += 1
            r.cpu += a.cpu
            r.db_txn += a.db_txn
            r.db_sched += a.db_sched
            r.txns += a.txn_count
        for s in result.spans:
            spans += 1
            category = classify_span(s.name, s.kind)
            if category is None or category == "request":
                continue  # requests come from the access log (the same figures)
            r = row(category, s.name, service)
            r.count += 1
            r.cpu += s.cpu or 0.0
            r.db_txn += s.db_txn or 0.0
            r.db_sched += s.db_sched or 0.0
            r.txns += s.txn_count or 0
    unattributed: dict[str, dict[str, float]] = {}
    for path in sorted(out_dir.glob("usage-*.json")):
        try:
            d = json.loads(path.read_text("utf-8"))
            unattributed[str(d.get("service") or _service_of(path, "usage-"))] = {
                "attributed_s": float(d["attributed_s"]),
                "unattributed_s": float(d["unattributed_s"]),
                "process_cpu_s": float(d.get("process_cpu_s", 0.0)),
            }
        except (OSError, ValueError, KeyError, TypeError):
            bad += 1
    return DemoSummary(list(rows.values()), requests, spans, bad, unattributed)


# -- output -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _context_table(title: str, rows: Sequence[ContextRow], total_cpu: float) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("kind")
    t.add_column("context", overflow="fold")
    t.add_column("process", overflow="fold")
    t.add_column("count", justify="right")
    t.add_column("CPU ms", justify="right")
    t.add_column("CPU %", justify="right")
    t.add_column("DB ms", justify="right")
    t.add_column("DB txns", justify="right")
    for r in rows:
        t.add_row(
            r.category,
            r.name,
            ",".join(sorted(r.services)),
            str(r.count),
            _ms(r.cpu),
            f"{100 * r.cpu / total_cpu:.1f}" if total_cpu else "-",
            _ms(r.db),
            str(r.txns),
        )
    return t


def print_summary(
    console: Any,
    summary: DemoSummary,
    *,
    top: int,
    replication: dict[str, Any] | None,
    traces: str,
    report_inputs: Sequence[Path],
    report_html: Path,
    metrics_families: int | None,
    wall: float,
    outcome: Any,
) -> None:
    """Print the final tables and where everything went."""
    from rich.table import Table

    metered = sum(v["attributed_s"] + v["unattributed_s"] for v in summary.unattributed.values())
    console.print()
    console.print(
        _context_table(
            f"Top {top} contexts by CPU (inclusive of children; CPU % of all metered CPU)",
            summary.top("cpu", top),
            metered,
        )
    )
    console.print(
        _context_table(
            f"Top {top} contexts by DB time (transaction + waiting for a connection)",
            summary.top("db", top),
            metered,
        )
    )
    u = Table(title="CPU time no context was charged for (unattributed)", title_justify="left")
    u.add_column("process")
    u.add_column("metered CPU s", justify="right")
    u.add_column("attributed s", justify="right")
    u.add_column("unattributed s", justify="right")
    u.add_column("unattributed %", justify="right")
    for service, v in sorted(summary.unattributed.items()):
        att, un = v["attributed_s"], v["unattributed_s"]
        pct = f"{100 * un / (att + un):.1f}" if att + un else "-"
        u.add_row(service, f"{att + un:.3f}", f"{att:.3f}", f"{un:.3f}", pct)
    share = summary.unattributed_share()
    u.add_row("all", f"{metered:.3f}", "", "", "-" if share is None else f"{100 * share:.1f}", style="bold")
    console.print(u)
    if replication is not None:
        r = Table(
            title="Replication: rows each worker received vs rows in the database", title_justify="left"
        )
        r.add_column("worker")
        r.add_column("stream")
        r.add_column("rows expected", justify="right")
        r.add_column("rows received", justify="right")
        r.add_column("position worker/main", justify="right")
        r.add_column("ok")
        for worker, streams in replication["workers"].items():
            for stream, e in streams.items():
                r.add_row(
                    worker,
                    stream,
                    str(e.get("expected", "-")),
                    str(e.get("received", "-")),
                    f"{e.get('position')}/{e.get('main_position')}",
                    "yes" if e["ok"] else "NO",
                )
        console.print(r)
    failed = f", {outcome.failed} failed" if outcome.failed else ""
    console.print(
        f"Workload: {outcome.ok}/{outcome.sent} requests ok{failed}; read {summary.requests} access lines "
        f"and {summary.spans} spans; wall time {wall:.1f}s",
        highlight=False,
    )
    for f in outcome.failures[:5]:
        console.print(f"  [red]failed[/red] {f}", highlight=False)
    if metrics_families is not None:
        console.print(
            f"Metrics: /metrics on the main process served {metrics_families} logcontext families",
            highlight=False,
        )
    console.print(f"Traces: {traces}", highlight=False)
    if report_inputs:
        files = " ".join(str(p) for p in report_inputs)
        console.print(
            f"Report: logcontext report {files} --html {report_html}", highlight=False, soft_wrap=True
        )


# -- the run ----------------------------------------------------------------------------------


async def _get_json(session: Any, url: str) -> Any:
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {resp.status}")
        return await resp.json()


async def _poll(what: str, timeout: float, probe: Any) -> Any:
    """Call ``await probe()`` every 0.1 s until it returns a truthy value; bounded."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = await probe()
            if got:
                return got
        except Exception as e:  # not up yet
            last = e
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else ""))


@dataclass
class _Run:
    main_http: str
    worker_http: dict[str, str]
    redis: bool


async def _drive(run: _Run, args: argparse.Namespace, console: Any, state: dict[str, Any]) -> Any:
    import aiohttp
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from homeserver.demo_workload import SIZES, WorkloadSize, build_plan, run_plan

    size = SIZES[args.size]
    if args.rooms is not None:
        size = WorkloadSize(**{**size.__dict__, "rooms": args.rooms})
    plan = build_plan(size, seed=args.seed, tag=state["tag"])
    async with aiohttp.ClientSession() as session:

        async def workers_connected() -> bool:
            for url in run.worker_http.values():
                st = await _get_json(session, url + "/_hs/status")
                if not run.redis and not st.get("connected"):
                    return False
            if not run.redis:
                main = await _get_json(session, run.main_http + "/_hs/status")
                return len(main.get("connections", [])) >= len(run.worker_http)
            return True

        await _poll("the workers to connect", 30, workers_connected)
        state["baseline"] = (await _get_json(session, run.main_http + "/_hs/status"))["positions"]
        with Progress(
            TextColumn("[bold]workload"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            disable=args.no_progress,
            transient=False,
        ) as progress:
            task = progress.add_task("", total=len(plan.requests))

            def done(req: Any) -> None:
                progress.update(task, advance=1, description=req.kind)

            try:
                outcome = await asyncio.wait_for(
                    run_plan(session, run.main_http, plan, concurrency=args.concurrency, on_done=done),
                    args.timeout,
                )
            except TimeoutError:
                raise RuntimeError(
                    f"the workload did not finish within {args.timeout:g}s (--timeout)"
                ) from None
            progress.update(task, description="done")
        # /metrics while it runs.
        async with session.get(run.main_http + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
            state["metrics_families"] = (
                len({line.split()[2] for line in text.splitlines() if line.startswith("# TYPE logcontext_")})
                if resp.status == 200
                else None
            )
        final = (await _get_json(session, run.main_http + "/_hs/status"))["positions"]

        async def caught_up() -> dict[str, Any] | None:
            statuses = {}
            for name, url in run.worker_http.items():
                st = await _get_json(session, url + "/_hs/status")
                pos = st.get("positions", {})
                for stream in STREAMS:
                    if (pos.get(stream) or {}).get("master", -1) < final.get(stream, 0):
                        return None
                statuses[name] = st
            return statuses

        state["worker_status"] = await _poll("the workers to catch up", 30, caught_up)
        state["final"] = final
    return outcome


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _OWN_PATTERNS:
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    started = time.monotonic()
    out: Path = args.out.resolve()
    try:
        _prepare_out(out)
    except OSError as e:
        print(f"homeserver demo: error: cannot use --out {str(args.out)!r}: {e}", file=sys.stderr)
        return 2
    if args.postgres:
        from homeserver.config import parse_database

        try:
            if parse_database(args.postgres).engine != "postgres":
                raise ValueError(f"--postgres {args.postgres!r} is not a postgresql:// DSN")
        except ValueError as e:
            print(f"homeserver demo: error: {e}", file=sys.stderr)
            return 2
        dsn = args.postgres
    else:
        dsn = f"sqlite:///{out / 'homeserver.db'}"
    if args.redis and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        print(f"homeserver demo: error: --redis {args.redis!r} must be a redis:// URL", file=sys.stderr)
        return 2
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    direct = _supports_log_dir()
    secret = secrets.token_hex(8)
    common = ["--database", dsn, "--replication-secret", secret, "--server-name", "localhost"]
    if args.redis:
        common += ["--redis", args.redis, "--redis-prefix", f"demo{os.getpid()}:"]
    children: list[Child] = []
    # Room and event IDs are new in every run, so runs can share a (PostgreSQL) database.
    state: dict[str, Any] = {"tag": secrets.token_hex(4)}
    outcome: Any = None
    error: str | None = None
    console.print(
        f"[bold]homeserver demo[/bold]: main + {len(WORKERS)} workers on "
        f"{'PostgreSQL' if args.postgres else 'SQLite'}"
        f"{' with Redis' if args.redis else ''}, workload {args.size!r}, output in {out}"
    )
    try:
        main = Child(
            "main",
            _command(
                "main",
                ["main", *common, "--replication", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                out,
                direct,
            ),
            out,
            env,
        )
        children.append(main)
        line = main.wait_ready("main ready", 60)
        rhost, rport = _hostport(line, "replication")
        hhost, hport = _hostport(line, "http")
        main_http = f"http://{hhost}:{hport}"
        worker_http: dict[str, str] = {}
        for name in WORKERS:
            wargs = [
                "worker",
                "--name",
                name,
                *common,
                "--main-http",
                main_http,
                "--http",
                "127.0.0.1:0",
                "--record",
                str(out / f"{name}-rows.jsonl"),
            ]
            if not args.redis:
                wargs += ["--main", f"{rhost}:{rport}"]
            children.append(Child(name, _command(name, wargs, out, direct), out, env))
        for child in children[1:]:
            wline = child.wait_ready(f"worker {child.name} ready", 60)
            whost, wport = _hostport(wline, "http")
            worker_http[child.name] = f"http://{whost}:{wport}"
        console.print(
            f"main: HTTP {main_http} (metrics at {main_http}/metrics), replication {rhost}:{rport}; "
            + ", ".join(f"{n}: {u}" for n, u in worker_http.items()),
            highlight=False,
            soft_wrap=True,
        )
        outcome = asyncio.run(_drive(_Run(main_http, worker_http, bool(args.redis)), args, console, state))
    except RuntimeError as e:
        error = str(e)
    except Exception as e:  # any failure: stop the processes, then say what happened
        error = f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        codes = {}
        for child in reversed(children):  # workers first, then the main process
            codes[child.name] = child.stop(20)
    if error is not None:
        console.print(f"[red]demo failed:[/red] {error}", highlight=False)
        for child in children:
            if codes.get(child.name) not in (0, None) or child.proc.returncode is None:
                console.print(f"{child.name} log tail:\n{child.tail()}", highlight=False, markup=False)
        return 1
    bad_exit = {n: c for n, c in codes.items() if c != 0}
    baseline, final = state["baseline"], state["final"]
    expected = _db_tokens(dsn, baseline, final)
    recorded = {n: _recorded_tokens(out / f"{n}-rows.jsonl", baseline, final) for n in WORKERS}
    replication = check_replication(expected, recorded, final, state["worker_status"])
    status = {
        "main": {"baseline": baseline, "positions": final},
        "workers": state["worker_status"],
        "replication": replication,
        "exit_codes": codes,
    }
    (out / "status.json").write_text(json.dumps(status, indent=1) + "\n", "utf-8")
    summary = aggregate(out)
    wall = time.monotonic() - started
    access_logs = [p for p in sorted(out.glob("access-*.jsonl")) if p.stat().st_size]
    span_files = [p for p in sorted(out.glob("spans-*.jsonl")) if p.stat().st_size]
    traces = (
        f"OTLP to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']} (service names main, worker1, worker2)"
        if otlp
        else "JSON-lines span files " + " ".join(str(p) for p in span_files)
    )
    print_summary(
        console,
        summary,
        top=args.top,
        replication=replication,
        traces=traces,
        report_inputs=[*access_logs, *span_files],
        report_html=out / "report.html",
        metrics_families=state.get("metrics_families"),
        wall=wall,
        outcome=outcome,
    )
    (out / "summary.json").write_text(
        json.dumps(
            {
                **summary.as_dict(args.top),
                "wall_s": round(wall, 3),
                "tag": state["tag"],
                "workload": {
                    "sent": outcome.sent,
                    "ok": outcome.ok,
                    "failed": outcome.failed,
                    "failures": outcome.failures,
                    "by_kind": outcome.by_kind,
                },
                "replication_ok": replication["ok"],
                "exit_codes": codes,
                "traces": "otlp" if otlp else [str(p) for p in span_files],
                "access_logs": [str(p) for p in access_logs],
                "metrics_families": state.get("metrics_families"),
            },
            indent=1,
        )
        + "\n",
        "utf-8",
    )
    ok = not outcome.failed and replication["ok"] and not bad_exit
    if bad_exit:
        console.print(f"[red]processes exited with errors:[/red] {bad_exit}", highlight=False)
    if not ok:
        console.print("[red]demo finished with problems[/red] (see above and the *.log files)")
    return 0 if ok else 1
