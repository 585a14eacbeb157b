"""The "Processed request" access line (spec §5.2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from logcontext import ContextResourceUsage

__all__ = [
    "ACCESS_LINE_FORMATS",
    "AccessRecord",
    "access_logger",
    "access_values",
    "check_access_line_format",
    "format_access_line",
    "format_who",
    "log_access",
    "log_arrival",
]

AccessLineFormat = Literal["labelled", "legacy"]
ACCESS_LINE_FORMATS: frozenset[str] = frozenset({"labelled", "legacy"})

# printf-style: one ``%`` operation renders a line (cheaper than ``str.format`` with keywords).
_LABELLED = (
    "%s - %s - {%s} Processed request: %.3fsec/%.3fsec "
    "ru=(%.3fsec, %.3fsec) db=(%.3fsec/%.3fsec/%s) "
    '%sB %s%s "%s %s %s" "%s" [%s dbevts]'
)
_LEGACY = (
    "%s - %s - {%s} Processed request: %.3fsec/%.3fsec "
    "(%.3fsec, %.3fsec) (%.3fsec/%.3fsec/%s) "
    '%sB %s%s "%s %s %s" "%s" [%s dbevts]'
)
_TEMPLATES = {"labelled": _LABELLED, "legacy": _LEGACY}


def check_access_line_format(value: object) -> str:
    """Validate an ``access_line_format`` option."""
    if value not in ACCESS_LINE_FORMATS:
        raise ValueError(f"access_line_format must be one of {sorted(ACCESS_LINE_FORMATS)}, got {value!r}")
    return str(value)


def format_who(requester: str | None, authenticated_entity: str | None) -> str:
    """``entity|requester`` when they differ (puppeting), else the requester, else ``None``."""
    if requester is None:
        return authenticated_entity if authenticated_entity is not None else "None"
    if authenticated_entity is not None and authenticated_entity != requester:
        return f"{authenticated_entity}|{requester}"
    return requester


@dataclass(slots=True)
class AccessRecord:
    """Everything one access line reports; times in seconds, ``uri`` already redacted."""

    ip: str
    site_tag: str
    method: str
    uri: str
    protocol: str
    user_agent: str
    requester: str | None = None
    authenticated_entity: str | None = None
    processing_time: float = 0.0
    send_time: float = 0.0
    ru_utime: float = 0.0
    ru_stime: float = 0.0
    db_sched_duration_sec: float = 0.0
    db_txn_duration_sec: float = 0.0
    db_txn_count: int = 0
    evt_db_fetch_count: int = 0
    bytes_sent: int = 0
    status: int | None = None
    completed: bool = True
    cancelled: bool = False
    request_id: str | None = None
    servlet: str | None = None
    received_ts: float | None = None
    end_ts: float | None = None

    @property
    def status_text(self) -> str:
        """Status code plus ``!`` (response not fully sent) or ``499!`` (handler cancelled)."""
        if self.cancelled:
            return "499!"
        code = "-" if self.status is None else str(self.status)
        return code if self.completed else code + "!"

    def as_dict(self) -> dict[str, Any]:
        """Values as numbers, for ``extra={"access": ...}`` and JSON formatters."""
        return {
            "ip": self.ip,
            "site_tag": self.site_tag,
            "requester": self.requester,
            "authenticated_entity": self.authenticated_entity,
            "method": self.method,
            "uri": self.uri,
            "protocol": self.protocol,
            "user_agent": self.user_agent,
            "processing_time": round(self.processing_time, 6),
            "send_time": round(self.send_time, 6),
            "ru_utime": round(self.ru_utime, 6),
            "ru_stime": round(self.ru_stime, 6),
            "db_sched_duration_sec": round(self.db_sched_duration_sec, 6),
            "db_txn_duration_sec": round(self.db_txn_duration_sec, 6),
            "db_txn_count": self.db_txn_count,
            "evt_db_fetch_count": self.evt_db_fetch_count,
            "bytes_sent": self.bytes_sent,
            "status": 499 if self.cancelled else self.status,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "request_id": self.request_id,
            "servlet": self.servlet,
            "received_ts": self.received_ts,
            "end_ts": self.end_ts,
        }


def format_access_line(rec: AccessRecord, fmt: str = "labelled") -> str:
    """Render ``rec`` in the ``labelled`` or ``legacy`` layout."""
    template = _TEMPLATES.get(fmt)
    if template is None:
        check_access_line_format(fmt)
        raise AssertionError("unreachable")
    status, bang = _status_bang(rec.status, rec.completed, rec.cancelled)
    return template % (
        rec.ip,
        rec.site_tag,
        format_who(rec.requester, rec.authenticated_entity),
        rec.processing_time,
        rec.send_time,
        rec.ru_utime,
        rec.ru_stime,
        rec.db_sched_duration_sec,
        rec.db_txn_duration_sec,
        rec.db_txn_count,
        rec.bytes_sent,
        status,
        bang,
        rec.method,
        rec.uri,
        rec.protocol,
        rec.user_agent,
        rec.evt_db_fetch_count,
    )


def _status_bang(status: int | None, completed: bool, cancelled: bool) -> tuple[str, str]:
    if cancelled:
        return "499", "!"
    code = "-" if status is None else str(status)
    return (code, "") if completed else (code, "!")


def access_values(
    *,
    ip: str,
    site_tag: str,
    requester: str | None,
    authenticated_entity: str | None,
    method: str,
    uri: str,
    protocol: str,
    user_agent: str,
    proc: float,
    send: float,
    usage: ContextResourceUsage,
    bytes_sent: int,
    status: int | None,
    completed: bool,
    cancelled: bool,
    request_id: str | None,
    servlet: str | None,
    received_ts: float | None,
    end_ts: float | None,
    fmt: str,
) -> tuple[str, dict[str, Any]]:
    """The line and the ``extra={"access": ...}`` values, straight from a usage snapshot.

    Same output as :func:`format_access_line` and :meth:`AccessRecord.as_dict` without the
    intermediate record (the request integrations' hot path).
    """
    template = _TEMPLATES.get(fmt)
    if template is None:
        check_access_line_format(fmt)
        raise AssertionError("unreachable")
    utime = usage.ru_utime
    stime = usage.ru_stime
    sched = usage.db_sched_duration_sec
    txn = usage.db_txn_duration_sec
    txn_count = usage.db_txn_count
    evts = usage.evt_db_fetch_count
    code, bang = _status_bang(status, completed, cancelled)
    line = template % (
        ip,
        site_tag,
        format_who(requester, authenticated_entity),
        proc,
        send,
        utime,
        stime,
        sched,
        txn,
        txn_count,
        bytes_sent,
        code,
        bang,
        method,
        uri,
        protocol,
        user_agent,
        evts,
    )
    values: dict[str, Any] = {
        "ip": ip,
        "site_tag": site_tag,
        "requester": requester,
        "authenticated_entity": authenticated_entity,
        "method": method,
        "uri": uri,
        "protocol": protocol,
        "user_agent": user_agent,
        "processing_time": round(proc, 6),
        "send_time": round(send, 6),
        "ru_utime": round(utime, 6),
        "ru_stime": round(stime, 6),
        "db_sched_duration_sec": round(sched, 6),
        "db_txn_duration_sec": round(txn, 6),
        "db_txn_count": txn_count,
        "evt_db_fetch_count": evts,
        "bytes_sent": bytes_sent,
        "status": 499 if cancelled else status,
        "completed": completed,
        "cancelled": cancelled,
        "request_id": request_id,
        "servlet": servlet,
        "received_ts": received_ts,
        "end_ts": end_ts,
    }
    return line, values


_LOGGERS: dict[tuple[str, str], logging.Logger] = {}


def access_logger(scheme: str, site_tag: str) -> logging.Logger:
    """The logger ``logcontext.access.<scheme>.<site_tag>`` (cached)."""
    key = (scheme, site_tag)
    lg = _LOGGERS.get(key)
    if lg is None:
        lg = _LOGGERS[key] = logging.getLogger(f"logcontext.access.{scheme}.{site_tag}")
    return lg


def log_access(rec: AccessRecord, *, scheme: str, fmt: str = "labelled", quiet: bool = False) -> None:
    """Log the access line at INFO (DEBUG when ``quiet``), with ``extra={"access": ...}``."""
    lg = access_logger(scheme, rec.site_tag)
    level = logging.DEBUG if quiet else logging.INFO
    if not lg.isEnabledFor(level):
        return
    lg.log(level, "%s", format_access_line(rec, fmt), extra={"access": rec.as_dict()})


def log_arrival(ip: str, site_tag: str, method: str, uri: str, *, scheme: str) -> None:
    """DEBUG ``{ip} - {site_tag} - Received request: {method} {uri}``."""
    lg = access_logger(scheme, site_tag)
    if lg.isEnabledFor(logging.DEBUG):
        lg.debug("%s - %s - Received request: %s %s", ip, site_tag, method, uri)
