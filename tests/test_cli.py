"""``logcontext report``: reading access logs and span files, percentiles, the text table, bad lines."""

from __future__ import annotations

import io
import json
import logging
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logcontext import LoggingContext
from logcontext._access import AccessRecord, log_access
from logcontext._report_load import AccessEntry, SpanEntry, parse_line
from logcontext._report_stats import percentile
from logcontext.cli import main
from logcontext.logging import JsonFormatter, install_log_record_factory, uninstall_log_record_factory


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def table_row(text: str, handler: str) -> list[str]:
    """The cells after ``handler`` on its row of the text table."""
    for line in text.splitlines():
        if line.startswith(handler + " "):
            return line[len(handler) :].split()
    raise AssertionError(f"no row for {handler!r} in:\n{text}")


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """A file receiving every record of the ``logcontext.access`` loggers through ``JsonFormatter``."""
    path = tmp_path / "access.jsonl"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    lg = logging.getLogger("logcontext.access")
    old_level, old_propagate = lg.level, lg.propagate
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    install_log_record_factory()
    try:
        yield path
    finally:
        uninstall_log_record_factory()
        lg.removeHandler(handler)
        lg.setLevel(old_level)
        lg.propagate = old_propagate
        handler.close()


def write_access(n: int, servlet: str, *, cpu_ms: float = 1.0, t0: float = 1.7e9) -> None:
    """Log ``n`` access lines for ``servlet``: request i uses i*cpu_ms CPU, 2i ms DB, i txns."""
    for i in range(1, n + 1):
        with LoggingContext(f"GET-{servlet}-{i}"):
            rec = AccessRecord(
                ip="127.0.0.1",
                site_tag="client",
                method="GET",
                uri=f"/_matrix/{servlet}?access_token=<redacted>",
                protocol="HTTP/1.1",
                user_agent="test",
                processing_time=0.01,
                ru_utime=i * cpu_ms / 1000 * 0.75,
                ru_stime=i * cpu_ms / 1000 * 0.25,
                db_txn_duration_sec=2 * i / 1000,
                db_sched_duration_sec=i / 10000,
                db_txn_count=i,
                status=500 if i % 10 == 0 else 200,
                request_id=f"GET-{i}",
                servlet=servlet,
                received_ts=t0 + i,
                end_ts=t0 + i + 0.01,
            )
            log_access(rec, scheme="http")


def span_line(
    name: str,
    trace: int,
    span: int,
    parent: int | None,
    start_s: float,
    end_s: float,
    **attrs: Any,
) -> str:
    """One line of the span-file format."""
    return json.dumps(
        {
            "name": name,
            "trace_id": f"{trace:032x}",
            "span_id": f"{span:016x}",
            "parent_id": None if parent is None else f"{parent:016x}",
            "start_ns": int(start_s * 1e9),
            "end_ns": int(end_s * 1e9),
            "kind": "internal",
            "status": "unset",
            "attributes": {f"logcontext.{k.replace('__', '.')}": v for k, v in attrs.items()},
        }
    )


def test_percentile_matches_statistics_inclusive() -> None:
    """Percentiles interpolate linearly between ranks, like statistics.quantiles(method="inclusive")."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0
    skewed = [0.1, 0.2, 0.2, 5.0, 9.0]
    q = statistics.quantiles(skewed, n=100, method="inclusive")
    assert [percentile(skewed, p) for p in (50, 90, 99)] == pytest.approx([q[49], q[89], q[98]])
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_access_log_table_counts_and_percentiles(json_log: Path) -> None:
    """A JsonFormatter access log gives one row per servlet with count, errors and exact percentiles."""
    write_access(100, "SyncRestServlet")
    write_access(10, "LoginRestServlet", cpu_ms=50.0)
    rc, out, err = run("report", str(json_log))
    assert rc == 0, err
    assert "Requests (access log): 110 request(s), 2 handler(s)" in out
    sync = table_row(out, "SyncRestServlet")
    # count, err, then CPU p50 p90 p99 max, DB txn ..., DB sched ..., txns ...
    assert sync[:2] == ["100", "10"]
    assert sync[2:6] == ["50.5", "90.1", "99.0", "100.0"]
    assert sync[6:10] == ["101.0", "180.2", "198.0", "200.0"]
    assert sync[10:14] == ["5.05", "9.01", "9.90", "10.0"]
    assert sync[14:18] == ["50.5", "90.1", "99.0", "100"]
    login = table_row(out, "LoginRestServlet")
    assert login[:2] == ["10", "1"]
    # Sorted by total CPU: Sync (5050 ms) before Login (2750 ms).
    lines = out.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("SyncRestServlet"))) < lines.index(
        next(x for x in lines if x.startswith("LoginRestServlet"))
    )
    assert "0 bad" in out and err == ""


def test_json_output_and_top(json_log: Path) -> None:
    """--json prints the same figures as numbers (seconds); --top keeps the first N handlers."""
    write_access(4, "A", cpu_ms=100.0)
    write_access(4, "B", cpu_ms=1.0)
    rc, out, _ = run("report", str(json_log), "--json", "--top", "1")
    assert rc == 0
    data = json.loads(out)
    assert data["access_lines"] == 8 and data["bad_lines"] == 0
    assert [h["handler"] for h in data["access"]] == ["A"]
    cpu = data["access"][0]["cpu_s"]
    assert cpu["n"] == 4
    assert cpu["p50"] == pytest.approx(0.25)
    assert cpu["max"] == pytest.approx(0.4)
    assert data["access"][0]["db_txn_count"]["total"] == 10
    rc, out, _ = run("report", str(json_log), "--top", "1")
    assert "1 more handler(s) not shown" in out
    assert table_row(out, "A")[0] == "4"


def test_bad_lines_counted_with_first_line_number(tmp_path: Path) -> None:
    """Bad lines (not JSON, not UTF-8, wrong types, unknown shape) are counted; the first is named."""
    good = span_line("root", 1, 1, None, 10.0, 10.5, cpu__user_s=0.1, cpu__system_s=0.0)
    lines = [
        good.encode(),
        b"",
        b"this is not json",
        b"\xff\xfe broken utf-8",
        b"[1, 2, 3]",
        json.dumps({"access": {"ru_utime": "fast"}}).encode(),
        json.dumps({"name": "x", "trace_id": "zz", "span_id": "01"}).encode(),
        json.dumps({"something": "else"}).encode(),
        json.dumps({"log": "an ordinary log line", "namespace": "app"}).encode(),
        span_line("root", 2, 2, None, 11.0, 11.2, cpu__user_s=0.3).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rc, out, err = run("report", str(path))
    assert rc == 0
    assert "6 bad" in out
    assert f"first bad: {path}:3: not JSON" in out
    assert "warning: 6 bad line(s) skipped" in err
    assert table_row(out, "root")[:2] == ["2", "0"]
    data = json.loads(run("report", str(path), "--json")[1])
    assert data["first_bad"]["line"] == 3
    assert data["other_lines"] == 1 and data["spans"] == 2


def test_parse_line_reasons() -> None:
    """Each kind of bad line gets a reason naming what is wrong."""
    cases = {
        "{": "not JSON",
        "42": "not a JSON object",
        '{"access": 3}': "'access' must be an object",
        '{"access": {"ru_utime": "x"}}': "'ru_utime' must be a number",
        '{"access": {"db_txn_count": 1.5}}': "'db_txn_count' must be an integer",
        '{"name": "s", "trace_id": "1", "span_id": "2"}': "span has no start time",
        '{"name": "s", "trace_id": "1", "span_id": "2", "start_s": 2, "end_s": 1}': "ends before it starts",
        '{"name": 5, "trace_id": "1", "span_id": "2", "start_s": 1, "end_s": 2}': "'name' must be a string",
        '{"x": 1}': "neither an access-log record",
    }
    for line, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            parse_line(line)


def test_span_time_units_detected() -> None:
    """Span times are read from *_ns, *_s, or bare start/end (nanoseconds when large, else seconds)."""
    base = '{"name": "s", "trace_id": "0x0a", "span_id": 11, '
    ns = parse_line(base + '"start_ns": 1700000000000000000, "end_ns": 1700000000500000000}')
    s = parse_line(base + '"start_s": 1700000000.0, "end_s": 1700000000.5}')
    bare_ns = parse_line(base + '"start": 1700000000000000000, "end": 1700000000500000000}')
    bare_s = parse_line(base + '"start": 1700000000, "end": 1700000000.5}')
    for entry in (ns, s, bare_ns, bare_s):
        assert isinstance(entry, SpanEntry)
        assert entry.start == pytest.approx(1.7e9)
        assert entry.duration == pytest.approx(0.5, abs=1e-6)
        assert entry.trace_id == "0" * 30 + "0a" and entry.span_id == "000000000000000b"


def test_access_entry_fallbacks() -> None:
    """Without servlet or timestamps the handler is METHOD + path and the start is the record's time."""
    entry = parse_line(
        json.dumps(
            {
                "time": 123.5,
                "request": "GET-7",
                "access": {"method": "PUT", "uri": "/rooms/x/send?access_token=<redacted>", "status": "200!"},
            }
        )
    )
    assert isinstance(entry, AccessEntry)
    assert entry.handler == "PUT /rooms/x/send"
    assert entry.request_id == "GET-7" and entry.start == 123.5 and entry.status == 200


def test_span_file_from_exporter(tmp_path: Path) -> None:
    """Spans written by JsonLinesSpanExporter are read back with their tree and usage attributes."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from logcontext.tracing.jsonl import JsonLinesSpanExporter

    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for i in range(3):
        with tracer.start_as_current_span("GET /sync") as root:
            with tracer.start_as_current_span("db.get_events") as db:
                db.set_attribute("logcontext.db.txn_count", 1)
                db.set_attribute("logcontext.db.txn_s", 0.002 * (i + 1))
                db.set_attribute("logcontext.db.sched_s", 0.0)
                db.add_event("fetched", {"n": 3})
            root.set_attribute("logcontext.cpu.user_s", 0.01 * (i + 1))
            root.set_attribute("logcontext.cpu.system_s", 0.0)
            root.set_attribute("logcontext.db.txn_count", 1)
            root.set_attribute("logcontext.tags", ["a", "b"])
    provider.shutdown()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 6
    by_id = {r["span_id"]: r for r in records}
    child = next(r for r in records if r["name"] == "db.get_events")
    assert by_id[child["parent_id"]]["name"] == "GET /sync"
    assert child["events"][0]["name"] == "fetched"
    assert by_id[child["parent_id"]]["attributes"]["logcontext.tags"] == ["a", "b"]
    assert len(child["trace_id"]) == 32 and len(child["span_id"]) == 16
    assert child["end_ns"] >= child["start_ns"]
    assert exporter.export([]).name == "FAILURE"  # shut down with the provider

    rc, out, _ = run("report", str(path))
    assert rc == 0
    assert "Spans: 6 span(s) in 3 trace(s), 2 name(s)" in out
    sync = table_row(out, "GET /sync")
    assert sync[:6] == ["3", "0", "20.0", "28.0", "29.8", "30.0"]
    assert sync[6:10] == ["-"] * 4  # no DB time attribute on the root
    db = table_row(out, "db.get_events")
    assert db[2:6] == ["-"] * 4 and db[6:10] == ["4.00", "5.60", "5.96", "6.00"]


def test_access_and_spans_in_one_file(tmp_path: Path) -> None:
    """The format is detected per line, so one file may hold both access lines and spans."""
    access = {"access": {"servlet": "S", "ru_utime": 0.002, "db_txn_count": 1}, "log": "Processed request"}
    path = tmp_path / "both.jsonl"
    path.write_text(json.dumps(access) + "\n" + span_line("sp", 1, 1, None, 1.0, 2.0) + "\n")
    rc, out, _ = run("report", str(path))
    assert rc == 0
    assert table_row(out, "S")[:3] == ["1", "0", "2.00"]
    assert table_row(out, "sp")[:2] == ["1", "0"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing input exits 2 naming the file, before printing any report."""
    ok = tmp_path / "ok.jsonl"
    ok.write_text(span_line("s", 1, 1, None, 1.0, 2.0) + "\n")
    missing = tmp_path / "nope.jsonl"
    rc, out, err = run("report", str(ok), str(missing))
    assert rc == 2 and out == ""
    assert f"cannot read '{missing}': no such file" in err
    rc, _, err = run("report", str(tmp_path))
    assert rc == 2 and "is a directory" in err
    rc, _, err = run("report", str(ok), "--html", str(tmp_path / "no" / "dir.html"))
    assert rc == 2 and "does not exist" in err


def test_no_records_exits_1(tmp_path: Path) -> None:
    """An input with no access lines or spans prints the counts and exits 1."""
    path = tmp_path / "plain.jsonl"
    path.write_text('{"log": "hello", "namespace": "x"}\nnot json\n')
    rc, out, err = run("report", str(path))
    assert rc == 1
    assert "1 other log line(s), 1 bad" in out
    assert "no access-log records or spans found" in err


def test_bad_options_rejected() -> None:
    """--top must be a positive integer; argparse exits 2."""
    with pytest.raises(SystemExit) as exc:
        main(["report", "x.jsonl", "--top", "0"], stdout=io.StringIO(), stderr=io.StringIO())
    assert exc.value.code == 2


def test_console_script_module_entry_reads_stdin() -> None:
    """`python -m logcontext.cli report -` reads standard input and exits with main()'s status."""
    proc = subprocess.run(
        [sys.executable, "-m", "logcontext.cli", "report", "-"],
        input=span_line("bgproc.job", 1, 1, None, 1.0, 2.0, cpu__user_s=0.5) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 0, proc.stderr
    assert table_row(proc.stdout, "bgproc.job")[:3] == ["1", "0", "500.0"]


def test_sort_orders(tmp_path: Path) -> None:
    """--sort orders handlers by total CPU (default), total DB time, count or name."""
    path = tmp_path / "s.jsonl"
    lines = [span_line("a", 1, 1, None, 1, 2, cpu__user_s=0.1, db__txn_s=0.9)]
    lines += [span_line("b", 2, i, None, 1, 2, cpu__user_s=0.2, db__txn_s=0.0) for i in (1, 2)]
    lines += [span_line("c", 3, 1, None, 1, 2, cpu__user_s=0.05, db__txn_s=0.1)]
    path.write_text("\n".join(lines) + "\n")

    def order(*opts: str) -> list[str]:
        data = json.loads(run("report", str(path), "--json", *opts)[1])
        return [h["handler"] for h in data["span_names"]]

    assert order() == ["b", "a", "c"]
    assert order("--sort", "db") == ["a", "c", "b"]
    assert order("--sort", "count") == ["b", "a", "c"]
    assert order("--sort", "name") == ["a", "b", "c"]


def test_report_of_real_tracing_spans(tmp_path: Path) -> None:
    """Spans from init_tracing("otel") through JsonLinesSpanExporter report inclusive CPU per name."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from logcontext.tracing import init_tracing, shutdown_tracing, start_span
    from logcontext.tracing.jsonl import JsonLinesSpanExporter

    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    init_tracing("otel", tracer_provider=provider)
    try:
        for i in range(2):
            with LoggingContext(f"req-{i}"), start_span("handler"):
                sum(range(20_000))
                with start_span("inner"):
                    sum(range(200_000))
    finally:
        shutdown_tracing()
        provider.shutdown()
    rc, out, err = run("report", str(path), "--json")
    assert rc == 0, err
    stats = {h["handler"]: h for h in json.loads(out)["span_names"]}
    assert stats["handler"]["count"] == stats["inner"]["count"] == 2
    assert stats["handler"]["db_txn_count"]["n"] == 2  # usage attributes present on every span
    cpu: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        attrs = rec["attributes"]
        cpu.setdefault(rec["trace_id"], {})[rec["name"]] = (
            attrs["logcontext.cpu.user_s"] + attrs["logcontext.cpu.system_s"]
        )
    assert len(cpu) == 2
    for per_trace in cpu.values():
        assert per_trace["handler"] >= per_trace["inner"] > 0  # the outer span's usage is inclusive
    assert stats["handler"]["cpu_s"]["max"] == pytest.approx(max(t["handler"] for t in cpu.values()))
