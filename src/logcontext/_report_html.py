"""The self-contained HTML page of ``logcontext report --html``.

One file, no network: inline CSS, the data as an inline JSON block, and inline JavaScript that
draws SVG. Drawn elements have stable ids and classes, and when drawing ends the script sets
``data-rendered="ok"`` plus counts on ``<body>`` (``data-plot-points``, ``data-plot-cpu-points``,
``data-plot-db-points``, ``data-waterfall-traces``, ``data-waterfall-bars``) so a headless browser
can check that the page was really drawn; a script error sets ``data-rendered="error"`` and
``data-error`` instead.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ._report_load import LoadResult, SpanEntry
from ._report_stats import METRICS, HandlerStats, format_value

__all__ = ["MAX_POINTS", "MAX_SPANS_PER_TRACE", "plot_series", "render_html", "slowest_traces"]

#: Points drawn per panel at most; larger inputs are thinned evenly (the page says so).
MAX_POINTS = 4000
#: Spans drawn per trace at most.
MAX_SPANS_PER_TRACE = 300
#: Handlers given their own colour in the plot; the rest are drawn as "other".
PLOT_HANDLERS = 8


def _local_roots(spans: Sequence[SpanEntry]) -> list[SpanEntry]:
    ids = {s.span_id for s in spans}
    return [s for s in spans if s.parent_id is None or s.parent_id not in ids]


def plot_series(result: LoadResult) -> dict[str, Any]:
    """The points of the CPU / DB-time plot.

    Access lines when there are any, else the local-root spans (no parent in the input) that
    carry usage attributes, else every span that carries them. ``t`` is seconds since the first
    point, or the record's position when the inputs carry no timestamps.
    """
    raw: list[tuple[float | None, str, float, float]] = []
    if result.access:
        source = "access log"
        for a in result.access:
            raw.append((a.start, a.handler, a.cpu, a.db_txn + a.db_sched))
    else:
        source = "spans"
        with_usage = [s for s in result.spans if s.cpu is not None or s.db_txn is not None]
        roots = [s for s in _local_roots(result.spans) if s.cpu is not None or s.db_txn is not None]
        for s in roots or with_usage:
            raw.append((s.start, s.name, s.cpu or 0.0, (s.db_txn or 0.0) + (s.db_sched or 0.0)))
    timed = bool(raw) and all(t is not None for t, *_ in raw)
    if timed:
        raw.sort(key=lambda r: r[0] or 0.0)
        t0 = min(t for t, *_ in raw if t is not None)
    else:
        t0 = 0.0
    totals: dict[str, float] = {}
    for _, h, cpu, db in raw:
        totals[h] = totals.get(h, 0.0) + cpu + db
    ranked = sorted(totals, key=lambda h: (-totals[h], h))
    handlers = ranked[:PLOT_HANDLERS]
    index = {h: i for i, h in enumerate(handlers)}
    if len(ranked) > PLOT_HANDLERS:
        handlers.append(f"other ({len(ranked) - PLOT_HANDLERS} handlers)")
    total = len(raw)
    step = max(1, -(-total // MAX_POINTS))
    points = []
    for i, (t, h, cpu, db) in enumerate(raw):
        if i % step:
            continue
        x = (t - t0) if (timed and t is not None) else float(i)
        points.append([round(x, 6), index.get(h, PLOT_HANDLERS), round(cpu, 6), round(db, 6)])
    start_iso = datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds") if timed else None
    return {
        "source": source,
        "axis": "time" if timed else "sequence",
        "start": start_iso,
        "handlers": handlers,
        "points": points,
        "total": total,
    }


def _row(s: SpanEntry, depth: int, t0: float) -> list[Any]:
    """One waterfall row: depth, start offset, duration, name, CPU, DB time, span id, status."""
    db = None if s.db_txn is None and s.db_sched is None else (s.db_txn or 0.0) + (s.db_sched or 0.0)
    return [
        depth,
        round(s.start - t0, 9),
        round(s.duration, 9),
        s.name,
        None if s.cpu is None else round(s.cpu, 6),
        None if db is None else round(db, 6),
        s.span_id,
        s.status or "",
    ]


def _trace_rows(spans: list[SpanEntry], t0: float) -> tuple[list[list[Any]], int]:
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanEntry]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids and s.parent_id != s.span_id else None
        children.setdefault(parent, []).append(s)
    for group in children.values():
        group.sort(key=lambda s: (s.start, s.seq))
    rows: list[list[Any]] = []
    seen: set[str] = set()
    stack: list[tuple[SpanEntry, int]] = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        s, depth = stack.pop()
        if s.span_id in seen:
            continue
        seen.add(s.span_id)
        if len(rows) < MAX_SPANS_PER_TRACE:
            rows.append(_row(s, depth, t0))
        stack.extend((c, depth + 1) for c in reversed(children.get(s.span_id, [])))
    # Spans caught in a parent cycle are never reached from a root: list them flat at the end.
    for s in spans:
        if s.span_id not in seen and len(rows) < MAX_SPANS_PER_TRACE:
            seen.add(s.span_id)
            rows.append(_row(s, 0, t0))
    return rows, max(0, len(spans) - len(rows))


def slowest_traces(spans: Sequence[SpanEntry], n: int) -> list[dict[str, Any]]:
    """The ``n`` longest traces (first start to last end), each with its spans in tree order."""
    by_trace: dict[str, list[SpanEntry]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    ranked = sorted(
        by_trace.items(),
        key=lambda kv: (-(max(s.end for s in kv[1]) - min(s.start for s in kv[1])), kv[0]),
    )
    out = []
    for trace_id, group in ranked[:n]:
        t0 = min(s.start for s in group)
        dur = max(s.end for s in group) - t0
        roots = _local_roots(group)
        root = min(roots or group, key=lambda s: (s.start, s.seq))
        rows, truncated = _trace_rows(group, t0)
        out.append(
            {
                "trace_id": trace_id,
                "name": root.name,
                "start": datetime.fromtimestamp(t0, UTC).isoformat(timespec="milliseconds"),
                "duration": round(dur, 9),
                "spans": rows,
                "truncated": truncated,
            }
        )
    return out


def _stats_table(stats: Sequence[HandlerStats], table_id: str, top: int | None) -> str:
    heads = "".join(f'<th colspan="4">{html.escape(h)}</th>' for h, _ in METRICS.values())
    sub = "<th>p50</th><th>p90</th><th>p99</th><th>max</th>" * len(METRICS)
    body = []
    for s in stats[:top] if top is not None else stats:
        cells = [f'<td class="h">{html.escape(s.handler)}</td><td>{s.count}</td><td>{s.errors}</td>']
        for key, (_, seconds) in METRICS.items():
            m = s.metrics[key]
            vals = (
                ["-"] * 4
                if m.n == 0
                else [format_value(v, seconds=seconds) for v in (m.p50, m.p90, m.p99, m.max)]
            )
            cells.append("".join(f"<td>{v}</td>" for v in vals))
        body.append(f'<tr data-handler="{html.escape(s.handler)}">{"".join(cells)}</tr>')
    return (
        f'<table class="stats" id="{table_id}"><thead><tr><th rowspan="2">handler</th>'
        f'<th rowspan="2">count</th><th rowspan="2">err</th>{heads}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    result: LoadResult,
    *,
    access_stats: Sequence[HandlerStats],
    span_stats: Sequence[HandlerStats],
    inputs: Sequence[str],
    top: int | None = None,
    traces: int = 5,
) -> str:
    """The whole page as a string."""
    data = {"plot": plot_series(result), "traces": slowest_traces(result.spans, traces)}
    parts = []
    if access_stats:
        parts.append(f"<h3>Requests (access log)</h3>{_stats_table(access_stats, 'stats-access', top)}")
    if span_stats:
        parts.append(f"<h3>Spans</h3>{_stats_table(span_stats, 'stats-spans', top)}")
    bad = ""
    if result.bad_lines:
        bad = (
            f'<p class="bad" id="bad-lines">{result.bad_lines} bad line(s) skipped; first: '
            f"{html.escape(str(result.first_bad))}</p>"
        )
    summary = (
        f"{len(result.access)} access line(s), {len(result.spans)} span(s), "
        f"{result.other_lines} other log line(s) from {len(inputs)} file(s): "
        + ", ".join(html.escape(p) for p in inputs)
    )
    values = {
        "SUMMARY": summary,
        "BAD": bad,
        "TABLES": "".join(parts) or "<p>No records.</p>",
        "STYLE": _STYLE,
        "DATA": _json_for_script(data),
        "SCRIPT": _SCRIPT,
    }
    # One pass, so text inserted for one slot is never scanned for another.
    return re.sub(r"%%([A-Z]+)%%", lambda m: values[m.group(1)], _TEMPLATE)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 6px}h3{font-size:15px;margin:14px 0 4px}
.meta{color:#555}.bad{color:#a40000}
table.stats{border-collapse:collapse;font:12px ui-monospace,monospace}
table.stats th,table.stats td{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.stats td.h{text-align:left;max-width:360px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
svg{display:block;background:#fcfcfc;border:1px solid #e4e4e4;margin:4px 0}
svg text{font:11px ui-monospace,monospace;fill:#333}
.axis{stroke:#888;stroke-width:1}.grid{stroke:#eee;stroke-width:1}
#plot-legend span{display:inline-block;margin:0 12px 4px 0;font-size:12px}
#plot-legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:5px}
.wf-bar{fill:#9fc5e8;stroke:#3d85c6;stroke-width:.5}.wf-bar.error{fill:#f4a6a6;stroke:#c00}
.wf-cpu{fill:#cc4125}.wf-db{fill:#6aa84f}.note{color:#666;font-size:12px}
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:">
<title>logcontext report</title><style>%%STYLE%%</style></head>
<body data-rendered="pending">
<h1>logcontext report</h1>
<p class="meta" id="summary">%%SUMMARY%%</p>
%%BAD%%
<h2>CPU and DB time per handler over time</h2>
<p class="note" id="plot-note"></p>
<div id="plot-legend"></div>
<svg id="plot-cpu" width="960" height="260" role="img" aria-label="CPU time per handler"></svg>
<svg id="plot-db" width="960" height="260" role="img" aria-label="DB time per handler"></svg>
<h2>Slowest traces</h2>
<p class="note" id="waterfall-note">Bars: span wall time; red strip: CPU (user+sys); green strip: DB time
(txn + sched), drawn to the same scale from the span's start and clipped to the bar (hover a bar for the
figures).</p>
<svg id="waterfall" width="960" height="40" role="img" aria-label="Waterfall of the slowest traces"></svg>
<h2>Per handler</h2>
%%TABLES%%
<script type="application/json" id="report-data">%%DATA%%</script>
<script>%%SCRIPT%%</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var body = document.body;
  window.addEventListener("error", function (e) {
    body.dataset.rendered = "error"; body.dataset.error = String(e.message);
  });
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f"];
  function el(tag, attrs, parent, text) {
    var n = document.createElementNS(NS, tag);
    for (var k in attrs) { n.setAttribute(k, attrs[k]); }
    if (text !== undefined) { n.textContent = text; }
    if (parent) { parent.appendChild(n); }
    return n;
  }
  function ms(v) {
    var x = v * 1000;
    if (x === 0) { return "0"; }
    if (Math.abs(x) < 10) { return x.toFixed(2) + " ms"; }
    if (Math.abs(x) < 1000) { return x.toFixed(1) + " ms"; }
    return (x / 1000).toFixed(2) + " s";
  }
  function ticks(max, n) {
    if (!(max > 0)) { return [0]; }
    var raw = max / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
      .filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var v = 0; v <= max * 1.0001; v += step) { out.push(v); }
    return out;
  }
  function colour(i) { return PALETTE[Math.min(i, PALETTE.length - 1)]; }

  function drawPanel(svg, plot, col, label) {
    var W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
    var L = 70, R = 30, T = 22, B = 34, pw = W - L - R, ph = H - T - B;
    var pts = plot.points, xmax = 0, ymax = 0, i;
    for (i = 0; i < pts.length; i++) { xmax = Math.max(xmax, pts[i][0]); ymax = Math.max(ymax, pts[i][col]); }
    if (xmax <= 0) { xmax = 1; }
    if (ymax <= 0) { ymax = 0.001; }
    var yt = ticks(ymax, 4); ymax = Math.max(ymax, yt[yt.length - 1]);
    var xt = ticks(xmax, 8);
    el("text", {x: L, y: 14, "class": "title"}, svg, label);
    yt.forEach(function (v) {
      var y = T + ph - v / ymax * ph;
      el("line", {x1: L, x2: L + pw, y1: y, y2: y, "class": "grid"}, svg);
      el("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, svg, ms(v));
    });
    xt.forEach(function (v) {
      var x = L + v / xmax * pw;
      if (x > L + pw + 0.5) { return; }
      el("line", {x1: x, x2: x, y1: T + ph, y2: T + ph + 4, "class": "axis"}, svg);
      el("text", {x: x, y: T + ph + 16, "text-anchor": "middle"}, svg,
         plot.axis === "time" ? "+" + (+v.toPrecision(4)) + "s" : "#" + Math.round(v));
    });
    el("line", {x1: L, x2: L + pw, y1: T + ph, y2: T + ph, "class": "axis"}, svg);
    el("line", {x1: L, x2: L, y1: T, y2: T + ph, "class": "axis"}, svg);
    var g = el("g", {"class": "points"}, svg), drawn = 0;
    for (i = 0; i < pts.length; i++) {
      var p = pts[i];
      var c = el("circle", {cx: (L + p[0] / xmax * pw).toFixed(2),
        cy: (T + ph - p[col] / ymax * ph).toFixed(2), r: 2.6,
        fill: colour(p[1]), "fill-opacity": 0.75, "class": "pt", "data-handler": p[1]}, g);
      el("title", {}, c, plot.handlers[p[1]] + ": " + ms(p[col]));
      drawn++;
    }
    svg.dataset.points = String(drawn);
    return drawn;
  }

  function drawWaterfall(svg, traces) {
    var W = +svg.getAttribute("width"), LBL = 300, R = 16, bw = W - LBL - R, ROW = 15, y = 8, bars = 0;
    traces.forEach(function (tr, ti) {
      var g = el("g", {"class": "trace", id: "trace-" + ti, "data-trace-id": tr.trace_id}, svg);
      el("text", {x: 4, y: y + 12, "font-weight": "bold"}, g,
         tr.name + " \u2014 " + ms(tr.duration) + " \u2014 trace " + tr.trace_id + " @ " + tr.start);
      y += 30;
      var d = tr.duration > 0 ? tr.duration : 1e-9;
      ticks(d, 6).forEach(function (v) {
        var x = LBL + v / d * bw;
        if (x > LBL + bw + 0.5) { return; }
        el("line", {x1: x, x2: x, y1: y, y2: y + tr.spans.length * ROW, "class": "grid"}, g);
        el("text", {x: x, y: y - 2, "text-anchor": "middle"}, g, ms(v));
      });
      y += 4;
      tr.spans.forEach(function (s) {
        var x = LBL + s[1] / d * bw, w = Math.max(1, s[2] / d * bw);
        var strip = function (v) { return Math.min(w, Math.max(1, v / d * bw)).toFixed(2); };
        var name = s[3].length > 36 ? s[3].slice(0, 35) + "\u2026" : s[3];
        el("text", {x: 4 + Math.min(s[0], 12) * 10, y: y + 10, "class": "wf-label"}, g, name);
        var bar = el("rect", {x: x.toFixed(2), y: y + 1, width: w.toFixed(2), height: ROW - 3,
          "class": "wf-bar" + (s[7] === "error" ? " error" : ""), "data-span-id": s[6]}, g);
        el("title", {}, bar, s[3] + "\n" + ms(s[2]) + (s[4] !== null ? "\nCPU " + ms(s[4]) : "") +
           (s[5] !== null ? "\nDB " + ms(s[5]) : ""));
        if (s[4] !== null && s[4] > 0) {
          el("rect", {x: x.toFixed(2), y: y + 1, width: strip(s[4]), height: 3, "class": "wf-cpu"}, g);
        }
        if (s[5] !== null && s[5] > 0) {
          el("rect", {x: x.toFixed(2), y: y + ROW - 5, width: strip(s[5]), height: 3, "class": "wf-db"}, g);
        }
        bars++; y += ROW;
      });
      if (tr.truncated) {
        el("text", {x: 4, y: y + 10}, g, "\u2026 " + tr.truncated + " more span(s)"); y += ROW;
      }
      y += 12;
    });
    svg.setAttribute("height", Math.max(40, y));
    svg.dataset.bars = String(bars);
    return bars;
  }

  try {
    var data = JSON.parse(document.getElementById("report-data").textContent);
    var plot = data.plot, note = document.getElementById("plot-note");
    note.textContent = plot.points.length + " point(s) from the " + plot.source +
      (plot.points.length < plot.total ? " (thinned from " + plot.total + ")" : "") +
      (plot.axis === "time" ? "; x: seconds since " + plot.start : "; x: record number (no timestamps)");
    var legend = document.getElementById("plot-legend");
    plot.handlers.forEach(function (h, i) {
      var s = document.createElement("span"), sw = document.createElement("i");
      sw.style.background = colour(i); s.appendChild(sw); s.appendChild(document.createTextNode(h));
      s.className = "legend-item"; legend.appendChild(s);
    });
    var cpu = drawPanel(document.getElementById("plot-cpu"), plot, 2, "CPU user+sys per unit of work");
    var db = drawPanel(document.getElementById("plot-db"), plot, 3, "DB time (txn + sched) per unit of work");
    var wf = document.getElementById("waterfall");
    var bars = drawWaterfall(wf, data.traces);
    if (!data.traces.length) {
      document.getElementById("waterfall-note").textContent = "No spans in the input: no traces to draw.";
    }
    body.dataset.plotCpuPoints = String(cpu);
    body.dataset.plotDbPoints = String(db);
    body.dataset.plotPoints = String(cpu + db);
    body.dataset.waterfallTraces = String(data.traces.length);
    body.dataset.waterfallBars = String(bars);
    body.dataset.rendered = "ok";
  } catch (e) {
    body.dataset.rendered = "error";
    body.dataset.error = String(e && e.message || e);
  }
})();
"""
