"""``logcontext report --html``: the page is rendered in headless Chromium and checked as drawn.

Chromium is Debian's ``chromium`` (``.ci/run`` installs it when missing). Without it the browser
tests skip, unless the ``CI`` environment variable is set, in which case they fail.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from logcontext.cli import main

CHROMIUM_TIMEOUT_S = 90
SVG_NS = "http://www.w3.org/2000/svg"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI is set, so this fails instead of skipping)")
        pytest.skip("chromium is not installed")
    return exe


def run_chromium(exe: str, tmp: Path, *args: str) -> str:
    """Run headless Chromium with ``args``; return stdout. Killed (whole group) after the timeout."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {cmd}") from None
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


class Dom(HTMLParser):
    """Elements of a dumped DOM, each with the id of the ``<svg>`` it is drawn in."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.body: dict[str, str] = {}
        self._svg: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if tag == "svg":
            self._svg = a.get("id")
        self.elements.append((tag, a, self._svg))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None

    def find(self, tag: str, cls: str | None = None, svg: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a, s in self.elements
            if t == tag and (cls is None or cls in a.get("class", "").split()) and (svg is None or s == svg)
        ]


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG into rows of raw pixel bytes (stdlib only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        base = y * (stride + 1)
        ftype = raw[base]
        line = bytearray(raw[base + 1 : base + 1 + stride])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def colours(width: int, bpp: int, rows: list[bytes]) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for x in range(width):
            px = (row[x * bpp], row[x * bpp + 1], row[x * bpp + 2])
            counts[px] = counts.get(px, 0) + 1
    return counts


SERVLETS = ["SyncRestServlet", "RoomSendEventRestServlet", "</script><b>x</b>%%DATA%%"]
N_TRACES = 5


def span_json(
    trace: int, t0: float, d: float, name: str, sid: int, parent: int | None, a: float, b: float, **extra: Any
) -> str:
    """Span ``sid`` of trace ``trace``, from ``t0 + a*d`` to ``t0 + b*d`` (span-file format)."""
    return json.dumps(
        {
            "name": name,
            "trace_id": f"{trace:032x}",
            "span_id": f"{trace * 16 + sid:016x}",
            "parent_id": None if parent is None else f"{trace * 16 + parent:016x}",
            "start_ns": round((t0 + a * d) * 1e9),
            "end_ns": round((t0 + b * d) * 1e9),
            "status": extra.pop("status", "unset"),
            "attributes": extra,
        }
    )


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    """20 access lines per servlet over one minute, and N_TRACES traces of 4 spans (child-first order)."""
    access = tmp / "access.jsonl"
    with access.open("w") as fh:
        for i in range(60):
            servlet = SERVLETS[i % 3]
            rec = {
                "log": "Processed request",
                "namespace": "logcontext.access.http.client",
                "request": f"GET-{i}",
                "access": {
                    "servlet": servlet,
                    "method": "GET",
                    "status": 200,
                    "received_ts": 1_700_000_000 + i,
                    "end_ts": 1_700_000_000 + i + 0.05,
                    "ru_utime": 0.001 * (i % 7 + 1),
                    "ru_stime": 0.0005,
                    "db_txn_duration_sec": 0.002 * (i % 5),
                    "db_sched_duration_sec": 0.0001,
                    "db_txn_count": i % 4,
                },
            }
            fh.write(json.dumps(rec) + "\n")
        fh.write("{broken\n")
    spans = tmp / "spans.jsonl"
    with spans.open("w") as fh:
        for k in range(1, N_TRACES + 1):
            t0, d = 1_700_000_100.0 + k, 0.01 * k
            usage = {"logcontext.cpu.user_s": 0.1 * d, "logcontext.db.txn_s": 0.2 * d}
            rows = [
                span_json(k, t0, d, "db.fetch", 3, 2, 0.15, 0.3),
                span_json(k, t0, d, "compute", 4, 1, 0.5, 0.9, status="error" if k == 5 else "unset"),
                span_json(k, t0, d, "db.txn", 2, 1, 0.1, 0.4, **usage),
                span_json(k, t0, d, "GET /sync", 1, None, 0.0, 1.0, **usage),
            ]
            fh.write("\n".join(rows) + "\n")
    return access, spans


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("report-html")
    access, spans = write_inputs(tmp)
    out = tmp / "report.html"
    err = io.StringIO()
    rc = main(
        ["report", str(access), str(spans), "--html", str(out), "--traces", "3"],
        stdout=io.StringIO(),
        stderr=err,
    )
    assert rc == 0, err.getvalue()
    yield out


def test_page_is_self_contained(page: Path) -> None:
    """The page loads nothing: no src/href attributes, no URL but the SVG namespace, a CSP of 'none'."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\b(src|href)\s*=", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {SVG_NS}
    assert "default-src 'none'" in text
    # Data embedded safely: a handler named like a closing script tag stays inside the JSON block.
    assert text.count("</script>") == 2
    assert 'id="bad-lines"' in text and "access.jsonl:61" in text


def test_plot_and_waterfall_drawn(chromium: str, page: Path, tmp_path: Path) -> None:
    """Chromium draws a point per request in each plot panel and a bar per span of the 3 slowest traces."""
    dom = Dom(run_chromium(chromium, tmp_path, "--dump-dom", page.as_uri()))
    body = dom.body
    assert body.get("data-rendered") == "ok", body.get("data-error")

    cpu_pts = dom.find("circle", "pt", "plot-cpu")
    db_pts = dom.find("circle", "pt", "plot-db")
    assert len(cpu_pts) == len(db_pts) == 60
    assert body["data-plot-cpu-points"] == "60" and body["data-plot-points"] == "120"
    assert {p["data-handler"] for p in cpu_pts} == {"0", "1", "2"}
    xs = [float(p["cx"]) for p in cpu_pts]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 500  # time axis spans the panel
    legend = [a for t, a, _ in dom.elements if t == "span" and a.get("class") == "legend-item"]
    assert len(legend) == 3

    traces = dom.find("g", "trace", "waterfall")
    assert [t["data-trace-id"] for t in traces] == [f"{k:032x}" for k in (5, 4, 3)]
    bars = dom.find("rect", "wf-bar", "waterfall")
    assert len(bars) == 12 and body["data-waterfall-bars"] == "12" and body["data-waterfall-traces"] == "3"
    # Tree order within the slowest trace: root, db.txn, its child db.fetch, then compute.
    assert [b["data-span-id"] for b in bars[:4]] == [f"{5 * 16 + i:016x}" for i in (1, 2, 3, 4)]
    root, txn, fetch, compute = ((float(b["x"]), float(b["width"])) for b in bars[:4])
    for child, parent in ((txn, root), (fetch, txn), (compute, root)):
        assert parent[0] <= child[0] and child[0] + child[1] <= parent[0] + parent[1] + 0.01
    assert txn[1] == pytest.approx(root[1] * 0.3, rel=0.01)
    assert "error" in bars[3]["class"].split()
    assert len(dom.find("rect", "wf-cpu", "waterfall")) == 6  # root and db.txn of each trace
    assert len(dom.find("rect", "wf-db", "waterfall")) == 6


def test_screenshot_is_not_blank(chromium: str, page: Path, tmp_path: Path) -> None:
    """A screenshot shows the bars, CPU strips and plot colours as actual pixels."""
    shot = tmp_path / "shot.png"
    run_chromium(
        chromium,
        tmp_path,
        "--force-device-scale-factor=0.5",
        "--window-size=1000,1400",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    width, bpp, rows = png_pixels(shot)
    counts = colours(width, bpp, rows)
    assert len(counts) > 50, "screenshot is (nearly) blank"
    white = counts.get((255, 255, 255), 0)
    assert white < 0.95 * width * len(rows)
    assert counts.get((0x9F, 0xC5, 0xE8), 0) > 100  # waterfall bars
    assert counts.get((0xCC, 0x41, 0x25), 0) > 0  # CPU strips
    assert counts.get((0x1F, 0x77, 0xB4), 0) > 0  # first handler's legend swatch


def test_access_log_only_page(chromium: str, tmp_path: Path) -> None:
    """With no spans the plot is still drawn and the waterfall says there is nothing to draw."""
    access, _ = write_inputs(tmp_path)
    out = tmp_path / "only.html"
    assert main(["report", str(access), "--html", str(out)], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    dom = Dom(run_chromium(chromium, tmp_path, "--dump-dom", out.as_uri()))
    assert dom.body.get("data-rendered") == "ok", dom.body.get("data-error")
    assert dom.body["data-plot-db-points"] == "60"
    assert dom.body["data-waterfall-bars"] == "0" and not dom.find("g", "trace")


def test_waterfall_rows_survive_cycles_and_orphans() -> None:
    """Spans in a parent cycle or whose parent is missing are still laid out, each exactly once."""
    from logcontext._report_html import slowest_traces
    from logcontext._report_load import SpanEntry

    def sp(sid: str, parent: str | None, start: float) -> SpanEntry:
        return SpanEntry(name=sid, trace_id="t", span_id=sid, parent_id=parent, start=start, end=start + 1)

    spans = [
        sp("a", "b", 0),
        sp("b", "a", 1),
        sp("root", None, 0.5),
        sp("orphan", "gone", 2),
        sp("c", "root", 3),
    ]
    (trace,) = slowest_traces(spans, 5)
    assert trace["duration"] == 4 and trace["truncated"] == 0
    rows = trace["spans"]
    assert sorted(r[6] for r in rows) == ["a", "b", "c", "orphan", "root"]
    assert [(r[6], r[0]) for r in rows[:3]] == [("root", 0), ("c", 1), ("orphan", 0)]


def test_plot_thins_large_inputs() -> None:
    """More than MAX_POINTS units of work are thinned evenly; the total is kept for the page's note."""
    from logcontext._report_html import MAX_POINTS, plot_series
    from logcontext._report_load import AccessEntry, LoadResult

    result = LoadResult()
    for i in range(3 * MAX_POINTS + 7):
        result.access.append(AccessEntry(f"h{i % 11}", None, "GET", 200, 1e9 + i, 0.1, 0.001, 0, 0, 0, 0, 0))
    series = plot_series(result)
    assert series["total"] == 3 * MAX_POINTS + 7
    assert MAX_POINTS // 2 < len(series["points"]) <= MAX_POINTS
    assert len(series["handlers"]) == 9 and series["handlers"][-1] == "other (3 handlers)"
    assert series["axis"] == "time" and series["points"][0][0] == 0
