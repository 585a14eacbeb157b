"""The demo (``python -m homeserver demo``): workload generator, room routes, aggregation, end to end."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from homeserver.commands.demo import (
    DemoSummary,
    aggregate,
    check_replication,
    classify_span,
)
from homeserver.demo_workload import (
    SIZES,
    WorkloadSize,
    build_plan,
    build_room,
)
from homeserver.state import InMemoryEventSource, ResolveOptions, resolve_state, rules_for

# -- workload generator -------------------------------------------------------------------------


def test_plan_is_deterministic_and_bounded() -> None:
    """The same seed gives the same requests; the counts follow the size."""
    size = SIZES["small"]
    a, b = build_plan(size, seed=3, tag="x1"), build_plan(size, seed=3, tag="x1")
    assert [(r.method, r.path, r.body) for r in a.requests] == [
        (r.method, r.path, r.body) for r in b.requests
    ]
    assert a.count("room") == a.count("resolve") == size.rooms
    assert a.count("fork") == size.rooms * size.forks
    assert a.count("invite") == a.count("invite-read") == size.invites
    assert a.count("devices") == size.device_changes
    assert a.count("typing") == 2 * size.typing
    phases = a.phases()
    assert {r.kind for r in phases[0]} == {"room", "invite", "devices"}
    assert {r.kind for r in phases[-1]} == {"invite-read"}


@pytest.mark.parametrize("version", ["10", "11", "12"])
def test_room_forks_conflict_and_resolve(version: str) -> None:
    """Every room's branches disagree, and state resolution picks the demotion over bob's events."""
    room = build_room(0, version, members=2, forks=4)
    keys = set().union(*room.state_sets)
    conflicted = {k for k in keys if len({s.get(k) for s in room.state_sets}) > 1}
    assert {("m.room.power_levels", ""), ("m.room.topic", ""), ("m.room.name", "")} <= conflicted
    rules = rules_for(version)
    events = room.base + [e for branch in room.forks for e in branch]
    source = InMemoryEventSource.from_dicts(rules, events, {})
    resolved = resolve_state(rules, room.state_sets, source, room_id=room.room_id, options=ResolveOptions())
    pl_after_demotion = room.forks[0][0]["event_id"]
    assert resolved[("m.room.power_levels", "")] == pl_after_demotion
    assert ("m.room.name", "") not in resolved  # bob lost the power to name the room
    assert (
        resolved[("m.room.member", "@dave:localhost")]
        == room.state_sets[0][("m.room.member", "@dave:localhost")]
    )
    if version == "12":
        assert room.room_id == "!" + room.base[0]["event_id"][1:]


def test_workload_size_rejects_bad_values() -> None:
    """Sizes out of range are refused with the field named."""
    with pytest.raises(ValueError, match="forks"):
        WorkloadSize(rooms=1, members=1, forks=5, invites=0, device_changes=0, typing=0)
    with pytest.raises(ValueError, match="rooms"):
        WorkloadSize(rooms=-1, members=1, forks=2, invites=0, device_changes=0, typing=0)
    with pytest.raises(ValueError, match="tag"):
        build_plan(SIZES["small"], tag="Bad Tag")


# -- aggregation and the replication check ------------------------------------------------------


def _span(name: str, kind: str, cpu: float, db: float, service: str) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": "1" * 32,
        "span_id": f"{abs(hash((name, cpu))) % 16**16:016x}",
        "parent_id": None,
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_000_100_000_000,
        "kind": kind,
        "status": "unset",
        "service": service,
        "attributes": {
            "logcontext.cpu.user_s": cpu,
            "logcontext.cpu.system_s": 0.0,
            "logcontext.db.txn_s": db,
            "logcontext.db.sched_s": 0.0,
            "logcontext.db.txn_count": 1,
        },
    }


def _access(servlet: str, cpu: float, db: float) -> dict[str, Any]:
    return {
        "log": "Processed request",
        "namespace": "logcontext.access.http.aiohttp",
        "level": "INFO",
        "access": {
            "servlet": servlet,
            "method": "PUT",
            "uri": "/x",
            "status": 200,
            "ru_utime": cpu,
            "ru_stime": 0.0,
            "db_txn_duration_sec": db,
            "db_sched_duration_sec": 0.0,
            "db_txn_count": 2,
            "processing_time": 0.01,
        },
    }


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")


def test_aggregate_groups_contexts_and_unattributed(tmp_path: Path) -> None:
    """Requests come from the access log, background/replication from spans; shares add up."""
    _write(
        tmp_path / "access-main.jsonl",
        [_access("A", 0.010, 0.020), _access("A", 0.030, 0.0), _access("B", 0.001, 0.5)],
    )
    _write(
        tmp_path / "spans-main.jsonl",
        [
            _span("PUT A", "server", 0.04, 0.02, "main"),  # the request again: not counted twice
            _span("bgproc.replication_notifier", "internal", 0.005, 0.01, "main"),
            _span("db.txn", "client", 0.001, 0.01, "main"),
        ],
    )
    _write(
        tmp_path / "spans-worker1.jsonl",
        [
            _span("replication.recv.RDATA", "internal", 0.002, 0.0, "worker1"),
            _span("bgproc.cleanup", "internal", 0.003, 0.0, "worker1"),
        ],
    )
    (tmp_path / "usage-main.json").write_text(
        json.dumps({"service": "main", "attributed_s": 0.3, "unattributed_s": 0.1, "process_cpu_s": 1.0})
    )
    (tmp_path / "usage-worker1.json").write_text(
        json.dumps({"service": "worker1", "attributed_s": 0.5, "unattributed_s": 0.1, "process_cpu_s": 1.0})
    )
    s = aggregate(tmp_path)
    assert isinstance(s, DemoSummary)
    by = {(r.category, r.name): r for r in s.rows}
    assert set(by) == {
        ("request", "A"),
        ("request", "B"),
        ("replication", "bgproc.replication_notifier"),
        ("replication", "replication.recv.RDATA"),
        ("background", "bgproc.cleanup"),
    }
    a = by[("request", "A")]
    assert (a.count, round(a.cpu, 6), round(a.db, 6), a.txns) == (2, 0.04, 0.02, 4)
    assert [r.name for r in s.top("cpu", 2)] == ["A", "bgproc.replication_notifier"]
    assert s.top("db", 1)[0].name == "B"
    assert s.unattributed_share() == pytest.approx(0.2)
    assert (s.requests, s.spans, s.bad_lines) == (3, 5, 0)


def test_classify_span() -> None:
    """Span names map to the table's kinds; database and other internal spans are left out."""
    assert classify_span("bgproc.replication_notifier", "internal") == "replication"
    assert classify_span("bgproc.process-replication-data-events", "internal") == "replication"
    assert classify_span("bgproc.prune", "internal") == "background"
    assert classify_span("replication.send", "internal") == "replication"
    assert classify_span("GET /x", "server") == "request"
    assert classify_span("db.txn", "client") is None


def test_check_replication_finds_missing_rows_and_lagging_positions() -> None:
    """A missing row or a position behind the main process fails the check for that worker only."""
    expected = {"events": Counter({1: 2, 2: 1}), "device_lists": Counter({3: 1, 4: 1})}
    main_pos = {"events": 2, "device_lists": 4, "typing": 5}

    def status(ev: int) -> dict[str, Any]:
        return {
            "positions": {"events": {"master": ev}, "device_lists": {"master": 4}, "typing": {"master": 5}}
        }

    good = {"events": Counter({1: 2, 2: 1}), "device_lists": Counter({3: 1, 4: 1})}
    short = {"events": Counter({1: 1, 2: 1}), "device_lists": Counter({3: 1, 4: 1})}
    res = check_replication(expected, {"w1": good, "w2": short}, main_pos, {"w1": status(2), "w2": status(2)})
    assert not res["ok"]
    assert res["workers"]["w1"]["events"]["ok"] and res["workers"]["w1"]["typing"]["ok"]
    assert res["workers"]["w2"]["events"]["missing"] == 1
    res = check_replication(expected, {"w1": good}, main_pos, {"w1": status(1)})
    assert not res["ok"] and not res["workers"]["w1"]["events"]["ok"]
    assert check_replication(expected, {"w1": good}, main_pos, {"w1": status(2)})["ok"]


# -- the room routes, in process ----------------------------------------------------------------


@pytest.fixture
async def main_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    import homeserver.http_api as http_api
    from homeserver.app import MainProcess
    from homeserver.config import parse_database
    from homeserver.http_rooms import add_room_routes

    original = http_api.build_main_app

    def build(main: Any) -> Any:
        app = original(main)
        add_room_routes(app, main)
        add_room_routes(app, main)  # idempotent
        return app

    monkeypatch.setattr(http_api, "build_main_app", build)
    main = MainProcess(
        parse_database(f"sqlite:///{tmp_path / 'hs.db'}"), replication=None, http=("127.0.0.1", 0)
    )
    await main.start()
    try:
        yield f"http://127.0.0.1:{main.http_port}"
    finally:
        await main.stop()


async def test_room_routes_resolve_and_refuse_bad_input(main_url: str) -> None:
    """A forked room is stored and resolved over HTTP; bad input gets a 4xx naming the problem."""
    from urllib.parse import quote

    import aiohttp

    room = build_room(1, "10", members=1, forks=2)
    rid = quote(room.room_id, safe="")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{main_url}/_hs/status") as r:
            before = (await r.json())["positions"]["events"]
        async with s.put(
            f"{main_url}/_hs/rooms/{rid}", json={"room_version": "10", "events": room.base}
        ) as r:
            assert r.status == 200, await r.text()
        for branch in room.forks:
            async with s.post(f"{main_url}/_hs/rooms/{rid}/events", json={"events": branch}) as r:
                assert r.status == 200, await r.text()
        sets = [[[t, k, e] for (t, k), e in sorted(st.items())] for st in room.state_sets]
        async with s.post(f"{main_url}/_hs/rooms/{rid}/state", json={"state_sets": sets}) as r:
            body = await r.json()
            assert r.status == 200, body
            resolved = {(t, k): e for t, k, e in body["resolved"]}
            assert resolved[("m.room.power_levels", "")] == room.forks[0][0]["event_id"]
            assert resolved[("m.room.topic", "")] == room.forks[0][1]["event_id"]
        async with s.post(f"{main_url}/_hs/rooms/{rid}/state", json={"state_sets": [[["a", "b"]]]}) as r:
            assert r.status == 400 and "not [type, state_key, event_id]" in (await r.json())["error"]
        async with s.post(f"{main_url}/_hs/rooms/%21nope%3Ax/state", json={"state_sets": sets}) as r:
            assert r.status == 404
        async with s.post(f"{main_url}/_hs/rooms/{rid}/events", data=b"{not json") as r:
            assert r.status == 400
        async with s.get(f"{main_url}/_hs/status") as r:
            positions = (await r.json())["positions"]
            assert positions["events"] - before == len(room.base) + sum(len(b) for b in room.forks)


async def test_invite_route_keeps_room_version(main_url: str) -> None:
    """An invite is stored with its room version; unknown versions and mismatched IDs are refused."""
    import aiohttp
    from homeserver.demo_workload import _invite

    room_id, target, event = _invite(7)
    base = f"{main_url}/_hs/federation/invite/%21invite7%3Aremote.example"
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{base}/%24invite7", json={"room_version": "9", "event": event}) as r:
            assert r.status == 200 and (await r.json())["room_version"] == "9"
        async with s.get(f"{base}/%40invitee7%3Alocalhost") as r:
            assert r.status == 200 and (await r.json()) == {
                "event_id": "$invite7",
                "room_id": room_id,
                "room_version": "9",
            }
        async with s.put(f"{base}/%24other", json={"room_version": "9", "event": event}) as r:
            assert r.status == 400 and "must match the path" in (await r.json())["error"]
        async with s.put(f"{base}/%24invite7", json={"room_version": "1", "event": event}) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
        async with s.get(f"{base}/%40nobody%3Alocalhost") as r:
            assert r.status == 404
    assert target == "@invitee7:localhost"


# -- end to end ---------------------------------------------------------------------------------


def _run_demo(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "homeserver",
            "demo",
            "--out",
            str(out),
            "--size",
            "small",
            "--rooms",
            "1",
            "--no-progress",
            "--timeout",
            "60",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The demo runs three processes, prints the tables, writes spans, and every worker got every row."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = _run_demo(out, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for needle in (
        "Top 8 contexts by CPU",
        "Top 8 contexts by DB time",
        "RoomStateResolutionServlet",
        "FederationInviteServlet",
        "unattributed",
        "Replication: rows each worker received",
        "Traces: JSON-lines span files",
        "logcontext report",
        "--html",
    ):
        assert needle in text, f"{needle!r} not in output:\n{text}"

    # The span files: usage attributes on requests (main) and on replication (both sides).
    spans: list[dict[str, Any]] = []
    for f in ("spans-main.jsonl", "spans-worker1.jsonl", "spans-worker2.jsonl"):
        spans += [json.loads(line) for line in (out / f).read_text("utf-8").splitlines()]
    with_usage = [s for s in spans if "logcontext.cpu.user_s" in s["attributes"]]
    names = {(s["service"], s["name"]) for s in with_usage}
    assert ("main", "POST RoomStateResolutionServlet") in names
    assert any(svc == "main" and n.startswith("replication.") for svc, n in names)
    for w in ("worker1", "worker2"):
        assert any(svc == w and n.startswith("replication.") for svc, n in names), w
    server = [s for s in with_usage if s["kind"] == "server"]
    assert server and all(s["attributes"]["logcontext.db.txn_count"] >= 0 for s in server)
    assert any(s["attributes"]["logcontext.db.txn_count"] > 0 for s in server)

    # Every replicated row reached both workers: checked here against the database directly.
    db = sqlite3.connect(out / "homeserver.db")
    devices = db.execute("SELECT COUNT(*) FROM device_lists_stream").fetchone()[0]
    devices += db.execute("SELECT COUNT(*) FROM device_lists_outbound_pokes").fetchone()[0]
    # The events stream reads the event store: events with an ordering, and state deltas.
    events = db.execute("SELECT COUNT(*) FROM events WHERE stream_ordering IS NOT NULL").fetchone()[0]
    events += db.execute("SELECT COUNT(*) FROM current_state_delta_stream").fetchone()[0]
    outliers = db.execute("SELECT COUNT(*), COUNT(stream_ordering) FROM events WHERE outlier").fetchone()
    invites = dict(db.execute("SELECT room_id, room_version FROM rooms WHERE room_id LIKE '%invite%'"))
    db.close()
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    plan = build_plan(WorkloadSize(**{**SIZES["small"].__dict__, "rooms": 1}), tag=summary["tag"])
    assert invites == {room: version for (room, _), version in plan.invites.items()}
    assert devices > 0 and events > 0
    assert outliers[0] > 0 and outliers[1] == 0  # the invites: stored, not on the stream
    status = json.loads((out / "status.json").read_text("utf-8"))
    assert status["replication"]["ok"] is True
    for w in ("worker1", "worker2"):
        rows: Counter[str] = Counter()
        for line in (out / f"{w}-rows.jsonl").read_text("utf-8").splitlines():
            d = json.loads(line)
            rows[d["stream"]] += len(d["rows"])
        assert (rows["events"], rows["device_lists"]) == (events, devices), w
        assert status["workers"][w]["positions"]["events"]["master"] == status["main"]["positions"]["events"]
    assert summary["workload"]["failed"] == 0 and summary["workload"]["ok"] == summary["workload"]["sent"]
    assert 0 <= summary["unattributed_share"] < 1
    assert summary["top_by_cpu"] and summary["metrics_families"] > 0
    assert all(code == 0 for code in summary["exit_codes"].values())


@pytest.mark.slow
def test_demo_refuses_bad_options(tmp_path: Path) -> None:
    """A non-PostgreSQL --postgres or a non-redis --redis is an error before anything starts."""
    proc = _run_demo(tmp_path / "o", "--postgres", "sqlite:///x.db")
    assert proc.returncode == 2 and "--postgres" in proc.stderr
    proc = _run_demo(tmp_path / "o", "--redis", "http://x")
    assert proc.returncode == 2 and "--redis" in proc.stderr
    assert not list((tmp_path / "o").glob("*.log"))


def _missing_service(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"cannot run in CI: {why}", pytrace=False)
    pytest.skip(why)


@contextlib.contextmanager
def _otlp_collector() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A minimal OTLP/HTTP trace receiver: yields its endpoint and the (service, span name) pairs."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v1/traces":
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        received.extend((attrs.get("service.name", ""), sp.name) for sp in ss.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.postgres
def test_demo_on_postgres(tmp_path: Path, pg_dsn: str) -> None:
    """--postgres: the processes share the database; a second run on it passes and exports over OTLP."""
    from _pg import make_database
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(make_database(pg_dsn))
    url = f"postgresql://{d.get('user', 'postgres')}@{d['host']}:{d['port']}/{d['dbname']}"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = _run_demo(out, "--postgres", url, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["replication_ok"] and summary["workload"]["failed"] == 0
    assert "PostgreSQL" in proc.stdout and not (out / "homeserver.db").exists()
    # A second run on the same database, exporting its spans over OTLP instead of span files.
    with _otlp_collector() as (endpoint, received):
        proc = _run_demo(out, "--postgres", url, env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    status = json.loads((out / "status.json").read_text("utf-8"))
    assert status["replication"]["ok"]
    assert "Traces: OTLP to http://127.0.0.1:" in proc.stdout
    assert not list(out.glob("spans-*.jsonl"))
    assert {svc for svc, _ in received} == {"main", "worker1", "worker2"}
    assert ("main", "POST RoomStateResolutionServlet") in received
    assert status["main"]["baseline"]["events"] > 0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port."""
    import shutil
    import socket
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        _missing_service("redis-server is not installed")
    assert binary is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.redis
def test_demo_over_redis(tmp_path: Path, redis_server: str) -> None:
    """With --redis the workers follow the main process over pub/sub and receive every row."""
    proc = _run_demo(tmp_path / "out", "--redis", redis_server)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    status = json.loads((tmp_path / "out" / "status.json").read_text("utf-8"))
    assert status["replication"]["ok"]
    for w in ("worker1", "worker2"):
        assert status["replication"]["workers"][w]["device_lists"]["received"] > 0


def test_observability_launcher_refuses_bad_input(tmp_path: Path) -> None:
    """The launcher names a missing log directory, a bad service name and a missing ``--``."""

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "homeserver.observability", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = launch("--log-dir", str(tmp_path / "nope"), "--service", "main", "--", "main")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = launch("--log-dir", str(tmp_path), "--service", "a b", "--", "main")
    assert proc.returncode == 2 and "service name 'a b'" in proc.stderr
    proc = launch("--log-dir", str(tmp_path))
    assert proc.returncode == 2 and "usage:" in proc.stderr
    assert not list(tmp_path.iterdir())
