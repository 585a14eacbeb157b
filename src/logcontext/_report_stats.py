"""Per-handler statistics and the aligned text table of ``logcontext report``."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._report_load import AccessEntry, SpanEntry

__all__ = [
    "METRICS",
    "SORT_KEYS",
    "HandlerStats",
    "Summary",
    "format_table",
    "format_value",
    "handler_stats",
    "percentile",
    "summarise",
]

#: The percentiles reported, as (label, p).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))

#: Metric key -> (table heading, unit scale, is a duration in seconds).
METRICS: dict[str, tuple[str, bool]] = {
    "cpu": ("CPU user+sys (ms)", True),
    "db_txn": ("DB txn time (ms)", True),
    "db_sched": ("DB sched (ms)", True),
    "txn_count": ("DB txns", False),
}

SortKey = Literal["cpu", "db", "count", "name"]
SORT_KEYS: tuple[str, ...] = ("cpu", "db", "count", "name")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ascending ``sorted_values`` by linear interpolation.

    Same definition as ``statistics.quantiles(method="inclusive")`` (and numpy's default):
    rank ``(n - 1) * p / 100`` between the two nearest values. One value is its own percentile.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if n == 1 or p <= 0:
        return float(sorted_values[0])
    if p >= 100:
        return float(sorted_values[-1])
    if float(p).is_integer():
        return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1]
    pos = (n - 1) * p / 100.0
    lo = int(pos)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[lo + 1] - sorted_values[lo]) * frac)


@dataclass(slots=True)
class Summary:
    """Count, total and percentiles of one metric; empty (``n == 0``) when never recorded."""

    n: int = 0
    total: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary:
        """Summarise the non-``None`` ``values``."""
        vals = sorted(float(v) for v in values if v is not None)
        if not vals:
            return cls()
        return cls(
            n=len(vals),
            total=sum(vals),
            p50=percentile(vals, 50),
            p90=percentile(vals, 90),
            p99=percentile(vals, 99),
            max=vals[-1],
        )

    def as_dict(self) -> dict[str, float | int]:
        """The figures as a plain dict (seconds or counts)."""
        return {
            "n": self.n,
            "total": self.total,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
        }


@dataclass(slots=True)
class HandlerStats:
    """Statistics for one handler (servlet or span name)."""

    handler: str
    count: int
    errors: int
    wall: Summary
    metrics: dict[str, Summary] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; times in seconds."""
        return {
            "handler": self.handler,
            "count": self.count,
            "errors": self.errors,
            "wall_s": self.wall.as_dict(),
            "cpu_s": self.metrics["cpu"].as_dict(),
            "db_txn_s": self.metrics["db_txn"].as_dict(),
            "db_sched_s": self.metrics["db_sched"].as_dict(),
            "db_txn_count": self.metrics["txn_count"].as_dict(),
        }


def _is_error(entry: AccessEntry | SpanEntry) -> bool:
    if isinstance(entry, AccessEntry):
        return entry.status is not None and entry.status >= 500
    return entry.status == "error"


def handler_stats(entries: Iterable[AccessEntry | SpanEntry]) -> list[HandlerStats]:
    """Group ``entries`` by handler name and summarise each group (unsorted)."""
    groups: dict[str, list[AccessEntry | SpanEntry]] = {}
    for e in entries:
        groups.setdefault(e.handler if isinstance(e, AccessEntry) else e.name, []).append(e)
    out = []
    for name, group in groups.items():
        out.append(
            HandlerStats(
                handler=name,
                count=len(group),
                errors=sum(1 for e in group if _is_error(e)),
                wall=Summary.of(e.duration for e in group),
                metrics={
                    "cpu": Summary.of(e.cpu for e in group),
                    "db_txn": Summary.of(e.db_txn for e in group),
                    "db_sched": Summary.of(e.db_sched for e in group),
                    "txn_count": Summary.of(e.txn_count for e in group),
                },
            )
        )
    return out


def _sort(stats: list[HandlerStats], key: str) -> list[HandlerStats]:
    if key == "name":
        return sorted(stats, key=lambda s: s.handler)
    if key == "count":
        return sorted(stats, key=lambda s: (-s.count, s.handler))
    if key == "db":
        return sorted(
            stats,
            key=lambda s: (-(s.metrics["db_txn"].total + s.metrics["db_sched"].total), s.handler),
        )
    if key == "cpu":
        return sorted(stats, key=lambda s: (-s.metrics["cpu"].total, -s.count, s.handler))
    raise ValueError(f"unknown sort key {key!r}: choose from {list(SORT_KEYS)}")


def summarise(entries: Iterable[AccessEntry | SpanEntry], *, sort: str = "cpu") -> list[HandlerStats]:
    """Per-handler statistics, sorted by ``sort`` (``cpu``/``db`` total, ``count``, ``name``)."""
    return _sort(handler_stats(entries), sort)


def format_value(value: float, *, seconds: bool) -> str:
    if seconds:
        ms = value * 1000.0
        if ms == 0:
            return "0"
        if abs(ms) < 10:
            return f"{ms:.2f}"
        if abs(ms) < 1000:
            return f"{ms:.1f}"
        return f"{ms:.0f}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}"


def format_table(stats: Sequence[HandlerStats], *, title: str, top: int | None = None) -> str:
    """An aligned text table: handler, count, errors, then p50/p90/p99/max per metric."""
    shown = list(stats if top is None else stats[:top])
    cols: list[str] = ["handler", "count", "err"]
    groups: list[tuple[str, int]] = [("", 3)]
    for heading, _ in METRICS.values():
        groups.append((heading, 4))
        cols += ["p50", "p90", "p99", "max"]
    rows: list[list[str]] = []
    for s in shown:
        row = [s.handler, str(s.count), str(s.errors)]
        for key, (_, seconds) in METRICS.items():
            m = s.metrics[key]
            if m.n == 0:
                row += ["-"] * 4
            else:
                row += [format_value(v, seconds=seconds) for v in (m.p50, m.p90, m.p99, m.max)]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    # Widen each group's last column so its heading fits over the group.
    i = 0
    for heading, span in groups:
        cover = sum(widths[i : i + span]) + 2 * (span - 1)
        if len(heading) > cover:
            widths[i + span - 1] += len(heading) - cover
        i += span

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    head_parts: list[str] = []
    i = 0
    for heading, span in groups:
        cover = sum(widths[i : i + span]) + 2 * (span - 1)
        head_parts.append(heading.center(cover) if heading else " " * cover)
        i += span
    out = [title, "  ".join(head_parts).rstrip(), line(cols)]
    out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in rows]
    if top is not None and len(stats) > top:
        out.append(f"... {len(stats) - top} more handler(s) not shown (--top {top})")
    return "\n".join(out)
