"""The "Processed request" access line: golden strings (spec §5.2)."""

from __future__ import annotations

import json
import logging

import pytest

from logcontext import ContextResourceUsage
from logcontext._access import AccessRecord, access_values, format_access_line, format_who, log_access
from logcontext.logging import JsonFormatter


def rec(**kw: object) -> AccessRecord:
    base: dict[str, object] = dict(
        ip="10.0.0.1",
        site_tag="client",
        method="GET",
        uri="/_matrix/client/v3/sync?access_token=<redacted>",
        protocol="HTTP/1.1",
        user_agent="curl/8",
        requester="@alice:hs",
        processing_time=0.1234,
        send_time=0.0016,
        ru_utime=0.05,
        ru_stime=0.0101,
        db_sched_duration_sec=0.002,
        db_txn_duration_sec=0.0306,
        db_txn_count=3,
        evt_db_fetch_count=7,
        bytes_sent=512,
        status=200,
    )
    base.update(kw)
    return AccessRecord(**base)  # type: ignore[arg-type]


def test_labelled_golden() -> None:
    """The labelled layout, byte for byte."""
    assert format_access_line(rec()) == (
        "10.0.0.1 - client - {@alice:hs} Processed request: 0.123sec/0.002sec "
        "ru=(0.050sec, 0.010sec) db=(0.002sec/0.031sec/3) 512B 200 "
        '"GET /_matrix/client/v3/sync?access_token=<redacted> HTTP/1.1" "curl/8" [7 dbevts]'
    )


def test_legacy_golden() -> None:
    """The legacy layout has bare parentheses."""
    assert format_access_line(rec(), "legacy") == (
        "10.0.0.1 - client - {@alice:hs} Processed request: 0.123sec/0.002sec "
        "(0.050sec, 0.010sec) (0.002sec/0.031sec/3) 512B 200 "
        '"GET /_matrix/client/v3/sync?access_token=<redacted> HTTP/1.1" "curl/8" [7 dbevts]'
    )


def test_who_none_puppet_and_bangs() -> None:
    """``None`` when unauthenticated, ``a|b`` when puppeting, ``!`` and ``499!`` for incomplete sends."""
    line = format_access_line(rec(requester=None, completed=False, send_time=-0.05, bytes_sent=0))
    assert line.startswith("10.0.0.1 - client - {None} Processed request: 0.123sec/-0.050sec ")
    assert ' 0B 200! "GET ' in line
    line = format_access_line(rec(authenticated_entity="@admin:hs", cancelled=True, status=None))
    assert "{@admin:hs|@alice:hs}" in line and ' 512B 499! "GET ' in line
    assert format_who("@a:hs", "@a:hs") == "@a:hs"
    assert format_who(None, None) == "None"


def test_bad_format_rejected() -> None:
    """An unknown layout raises ValueError naming the option."""
    with pytest.raises(ValueError, match="access_line_format"):
        format_access_line(rec(), "json")


def test_log_access_levels_and_json_layout(caplog: pytest.LogCaptureFixture) -> None:
    """INFO normally, DEBUG when quiet; the JSON formatter gives the numbers under ``access``."""
    caplog.set_level(logging.DEBUG, logger="logcontext.access")
    log_access(rec(), scheme="https")
    log_access(rec(method="OPTIONS"), scheme="https", quiet=True)
    a, b = caplog.records
    assert a.name == "logcontext.access.https.client" and a.levelno == logging.INFO
    assert b.levelno == logging.DEBUG
    doc = json.loads(JsonFormatter().format(a))
    assert doc["log"].endswith("[7 dbevts]")
    assert doc["access"]["db_txn_count"] == 3
    assert doc["access"]["ru_utime"] == 0.05
    assert doc["access"]["db_txn_duration_sec"] == 0.0306
    assert doc["access"]["status"] == 200 and doc["access"]["completed"] is True


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"completed": False, "send_time": -0.05, "bytes_sent": 0, "requester": None},
        {"cancelled": True, "status": None, "authenticated_entity": "@admin:hs"},
        {"status": None},
    ],
)
@pytest.mark.parametrize("fmt", ["labelled", "legacy"])
def test_access_values_match_record_rendering(kw: dict[str, object], fmt: str) -> None:
    """The integrations' direct path renders the same line and values as ``AccessRecord``."""
    r = rec(**kw, request_id="GET-1", servlet="sync", received_ts=10.0, end_ts=10.2)
    usage = ContextResourceUsage()
    usage.ru_utime, usage.ru_stime = r.ru_utime, r.ru_stime
    usage.db_sched_duration_sec, usage.db_txn_duration_sec = r.db_sched_duration_sec, r.db_txn_duration_sec
    usage.db_txn_count, usage.evt_db_fetch_count = r.db_txn_count, r.evt_db_fetch_count
    line, values = access_values(
        ip=r.ip,
        site_tag=r.site_tag,
        requester=r.requester,
        authenticated_entity=r.authenticated_entity,
        method=r.method,
        uri=r.uri,
        protocol=r.protocol,
        user_agent=r.user_agent,
        proc=r.processing_time,
        send=r.send_time,
        usage=usage,
        bytes_sent=r.bytes_sent,
        status=r.status,
        completed=r.completed,
        cancelled=r.cancelled,
        request_id=r.request_id,
        servlet=r.servlet,
        received_ts=r.received_ts,
        end_ts=r.end_ts,
        fmt=fmt,
    )
    assert line == format_access_line(r, fmt)
    assert values == r.as_dict()
