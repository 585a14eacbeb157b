"""Reading the inputs of ``logcontext report``: JSON-lines access logs and span files.

Each line is classified on its own (see ``docs/report.md``):

* a JSON object whose ``access`` value is an object is an **access line** as written by
  :class:`logcontext.logging.JsonFormatter` for the "Processed request" record (spec §5.2);
* a JSON object with ``name``, ``trace_id`` and ``span_id`` is a **span** (the JSON-lines span
  format written by :class:`logcontext.tracing.jsonl.JsonLinesSpanExporter`);
* any other JSON object with a ``log`` or ``namespace`` key is an ordinary log record, counted as
  *other* and otherwise ignored;
* everything else (not UTF-8, not JSON, not an object, a known shape with missing or mistyped
  fields) is a **bad line**: counted, the first one remembered with its file, line number and
  reason, and never fatal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    "AccessEntry",
    "BadLine",
    "LoadResult",
    "SpanEntry",
    "load_files",
    "load_lines",
    "parse_line",
]

#: Start/end values above this are nanoseconds, below it seconds (≈ year 5138 in seconds).
_NS_THRESHOLD = 1e11


@dataclass(slots=True)
class AccessEntry:
    """One "Processed request" line; times in seconds, ``start`` in epoch seconds or ``None``."""

    handler: str
    request_id: str | None
    method: str | None
    status: int | None
    start: float | None
    duration: float
    cpu_user: float
    cpu_system: float
    db_txn: float
    db_sched: float
    txn_count: int
    event_fetches: int
    seq: int = 0

    @property
    def cpu(self) -> float:
        """User plus system CPU seconds."""
        return self.cpu_user + self.cpu_system


@dataclass(slots=True)
class SpanEntry:
    """One span; ``start``/``end`` in epoch seconds, usage figures ``None`` when not recorded."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    end: float
    kind: str | None = None
    status: str | None = None
    service: str | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    db_txn: float | None = None
    db_sched: float | None = None
    txn_count: int | None = None
    event_fetches: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    @property
    def duration(self) -> float:
        """End minus start, in seconds."""
        return self.end - self.start

    @property
    def cpu(self) -> float | None:
        """User plus system CPU seconds, or ``None`` when the span carries no CPU figures."""
        if self.cpu_user is None and self.cpu_system is None:
            return None
        return (self.cpu_user or 0.0) + (self.cpu_system or 0.0)


@dataclass(slots=True)
class BadLine:
    """Where and why a line was rejected."""

    path: str
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.reason}"


@dataclass(slots=True)
class LoadResult:
    """Everything read from the inputs."""

    access: list[AccessEntry] = field(default_factory=list)
    spans: list[SpanEntry] = field(default_factory=list)
    other_lines: int = 0
    blank_lines: int = 0
    bad_lines: int = 0
    first_bad: BadLine | None = None
    lines_read: int = 0

    def add_bad(self, path: str, lineno: int, reason: str) -> None:
        """Count a bad line, remembering the first."""
        self.bad_lines += 1
        if self.first_bad is None:
            self.first_bad = BadLine(path, lineno, reason)


class _Bad(Exception):
    """A line that cannot be used; the message says why."""


def _num(obj: Mapping[str, Any], key: str, *, default: float | None = 0.0) -> float | None:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{key!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _Bad(f"{key!r} must be finite, got {value!r}")
    return float(value)


def _int(obj: Mapping[str, Any], key: str, *, default: int | None = 0) -> int | None:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{key!r} must be an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"{key!r} must be an integer, got {value!r}")
        value = int(value)
    return value


def _str(obj: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _first_num(obj: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        if obj.get(key) is not None:
            return _num(obj, key)
    return None


def _path_of(uri: str) -> str:
    return uri.split("?", 1)[0].split("#", 1)[0]


def _parse_access(rec: Mapping[str, Any], acc: Mapping[str, Any], seq: int) -> AccessEntry:
    method = _str(acc, "method") or _str(rec, "method")
    handler = _str(acc, "servlet", "handler") or _str(rec, "servlet", "http.route")
    if handler is None:
        uri = _str(acc, "uri") or _str(rec, "url")
        handler = f"{method or '-'} {_path_of(uri)}" if uri else "<unknown>"
    status_raw = acc.get("status")
    status: int | None
    if status_raw is None or (isinstance(status_raw, str) and status_raw in ("", "-")):
        status = None
    elif isinstance(status_raw, int) and not isinstance(status_raw, bool):
        status = status_raw
    elif isinstance(status_raw, str) and status_raw.rstrip("!").isdigit():
        status = int(status_raw.rstrip("!"))
    else:
        raise _Bad(f"'access.status' must be an integer, got {status_raw!r}")
    proc = _num(acc, "processing_time") or 0.0
    send = _num(acc, "send_time") or 0.0
    start = _first_num(acc, "received_ts", "start_ts")
    if start is None:
        start = _first_num(rec, "time", "created")
    end = _first_num(acc, "end_ts", "finished_ts")
    duration = (end - start) if (end is not None and start is not None) else proc + max(send, 0.0)
    return AccessEntry(
        handler=handler,
        request_id=_str(acc, "request_id") or _str(rec, "request_id", "request"),
        method=method,
        status=status,
        start=start,
        duration=duration,
        cpu_user=_num(acc, "ru_utime") or 0.0,
        cpu_system=_num(acc, "ru_stime") or 0.0,
        db_txn=_num(acc, "db_txn_duration_sec") or 0.0,
        db_sched=_num(acc, "db_sched_duration_sec") or 0.0,
        txn_count=_int(acc, "db_txn_count") or 0,
        event_fetches=_int(acc, "evt_db_fetch_count") or 0,
        seq=seq,
    )


def _hex_id(rec: Mapping[str, Any], key: str, width: int) -> str:
    value = rec.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:0{width}x}"
    if isinstance(value, str) and value:
        text = value[2:] if value[:2].lower() == "0x" else value
        try:
            int(text, 16)
        except ValueError:
            raise _Bad(f"{key!r} must be a hex string, got {value!r}") from None
        return text.lower().rjust(width, "0")
    raise _Bad(f"{key!r} must be a hex string or integer, got {value!r}")


def _time_s(rec: Mapping[str, Any], which: str) -> float:
    """``start``/``end`` from ``<which>_ns``, ``<which>_s`` or ``<which>`` (ns or s by size)."""
    ns = rec.get(f"{which}_ns")
    if ns is not None:
        v = _num(rec, f"{which}_ns")
        assert v is not None
        return v / 1e9
    if rec.get(f"{which}_s") is not None:
        v = _num(rec, f"{which}_s")
        assert v is not None
        return v
    for key in (which, f"{which}_time"):
        if rec.get(key) is not None:
            v = _num(rec, key)
            assert v is not None
            return v / 1e9 if abs(v) > _NS_THRESHOLD else v
    raise _Bad(f"span has no {which} time ('{which}_ns', '{which}_s' or '{which}')")


def _parse_span(rec: Mapping[str, Any], seq: int) -> SpanEntry:
    name = rec.get("name")
    if not isinstance(name, str):
        raise _Bad(f"'name' must be a string, got {name!r}")
    trace_id = _hex_id(rec, "trace_id", 32)
    span_id = _hex_id(rec, "span_id", 16)
    parent_key = "parent_id" if "parent_id" in rec else "parent_span_id"
    parent_id = None if rec.get(parent_key) in (None, "", 0) else _hex_id(rec, parent_key, 16)
    start = _time_s(rec, "start")
    end = _time_s(rec, "end")
    if end < start:
        raise _Bad(f"span ends before it starts (start={start!r}, end={end!r})")
    attrs_raw = rec.get("attributes", {})
    if attrs_raw is None:
        attrs_raw = {}
    if not isinstance(attrs_raw, dict):
        raise _Bad(f"'attributes' must be an object, got {type(attrs_raw).__name__}")
    attrs: dict[str, Any] = attrs_raw
    status = rec.get("status")
    if isinstance(status, dict):
        status = status.get("status_code") or status.get("code")
    return SpanEntry(
        name=name,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        start=start,
        end=end,
        kind=_str(rec, "kind"),
        status=status.lower() if isinstance(status, str) else None,
        service=_str(rec, "service"),
        cpu_user=_num(attrs, "logcontext.cpu.user_s", default=None),
        cpu_system=_num(attrs, "logcontext.cpu.system_s", default=None),
        db_txn=_num(attrs, "logcontext.db.txn_s", default=None),
        db_sched=_num(attrs, "logcontext.db.sched_s", default=None),
        txn_count=_int(attrs, "logcontext.db.txn_count", default=None),
        event_fetches=_int(attrs, "logcontext.db.event_fetches", default=None),
        attributes=attrs,
        seq=seq,
    )


def parse_line(line: str, seq: int = 0) -> AccessEntry | SpanEntry | None:
    """Classify and parse one line: an entry, ``None`` for another log record, or raise ``ValueError``."""
    try:
        rec = json.loads(line)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object (got {type(rec).__name__})")
    try:
        acc = rec.get("access")
        if isinstance(acc, dict):
            return _parse_access(rec, acc, seq)
        if acc is not None:
            raise _Bad(f"'access' must be an object, got {type(acc).__name__}")
        if "span_id" in rec and "trace_id" in rec:
            return _parse_span(rec, seq)
        if "log" in rec or "namespace" in rec:
            return None
    except _Bad as e:
        raise ValueError(str(e)) from None
    raise ValueError(
        "neither an access-log record ('access'), a span ('trace_id'/'span_id') nor a log record"
    )


def load_lines(lines: Iterable[bytes | str], path: str, result: LoadResult) -> None:
    """Parse ``lines`` of one input into ``result``; bad lines are counted, never raised."""
    for lineno, raw in enumerate(lines, 1):
        result.lines_read += 1
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                result.add_bad(path, lineno, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
        else:
            line = raw
        if not line.strip():
            result.blank_lines += 1
            continue
        seq = len(result.access) + len(result.spans)
        try:
            entry = parse_line(line, seq)
        except (ValueError, RecursionError) as e:
            result.add_bad(path, lineno, str(e) or type(e).__name__)
            continue
        if entry is None:
            result.other_lines += 1
        elif isinstance(entry, AccessEntry):
            result.access.append(entry)
        else:
            result.spans.append(entry)


def load_files(paths: Iterable[str], *, stdin: IO[bytes] | None = None) -> LoadResult:
    """Read every input (``-`` is standard input); ``OSError`` propagates for an unreadable file."""
    result = LoadResult()
    for path in paths:
        if path == "-":
            load_lines(stdin if stdin is not None else sys.stdin.buffer, "<stdin>", result)
            continue
        with open(path, "rb") as fh:
            load_lines(fh, path, result)
    return result
