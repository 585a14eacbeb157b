"""The "Processed request" access line (spec §5.2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ACCESS_LINE_FORMATS",
    "AccessRecord",
    "access_logger",
    "check_access_line_format",
    "format_access_line",
    "format_who",
    "log_access",
    "log_arrival",
]

AccessLineFormat = Literal["labelled", "legacy"]
ACCESS_LINE_FORMATS: frozenset[str] = frozenset({"labelled", "legacy"})

_LABELLED = (
    "{ip} - {site_tag} - {{{who}}} Processed request: {proc:.3f}sec/{send:.3f}sec "
    "ru=({utime:.3f}sec, {stime:.3f}sec) db=({sched:.3f}sec/{txn:.3f}sec/{txn_count}) "
    '{nbytes}B {status}{bang} "{method} {uri} {protocol}" "{user_agent}" [{evts} dbevts]'
)
_LEGACY = (
    "{ip} - {site_tag} - {{{who}}} Processed request: {proc:.3f}sec/{send:.3f}sec "
    "({utime:.3f}sec, {stime:.3f}sec) ({sched:.3f}sec/{txn:.3f}sec/{txn_count}) "
    '{nbytes}B {status}{bang} "{method} {uri} {protocol}" "{user_agent}" [{evts} dbevts]'
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
    status = rec.status_text
    bang = ""
    if status.endswith("!"):
        status, bang = status[:-1], "!"
    return template.format(
        ip=rec.ip,
        site_tag=rec.site_tag,
        who=format_who(rec.requester, rec.authenticated_entity),
        proc=rec.processing_time,
        send=rec.send_time,
        utime=rec.ru_utime,
        stime=rec.ru_stime,
        sched=rec.db_sched_duration_sec,
        txn=rec.db_txn_duration_sec,
        txn_count=rec.db_txn_count,
        nbytes=rec.bytes_sent,
        status=status,
        bang=bang,
        method=rec.method,
        uri=rec.uri,
        protocol=rec.protocol,
        user_agent=rec.user_agent,
        evts=rec.evt_db_fetch_count,
    )


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
