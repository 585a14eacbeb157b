"""The misuse policy: warn once, rate limit, raise, ignore, hook (spec §1.6; §10 item 14)."""

from __future__ import annotations

import logging

import pytest

import logcontext
from logcontext import LogContextError, LoggingContext, MisuseReport, _misuse, set_misuse_hook

pytestmark = pytest.mark.misuse_ok


def test_warn_once_per_kind_and_context(caplog: pytest.LogCaptureFixture) -> None:
    """Under warn a (kind, context) pair is logged once; another context logs again."""
    logcontext.configure(misuse="warn")
    a, b = LoggingContext("a"), LoggingContext("b")
    with caplog.at_level(logging.WARNING, logger="logcontext.misuse"):
        for _ in range(5):
            _misuse.report("leak", "x", context=a)
        _misuse.report("leak", "x", context=b)
    assert len([r for r in caplog.records if r.name == "logcontext.misuse"]) == 2


def test_rate_limit_then_suppressed_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most 20 lines per kind per window, then one "N similar reports suppressed" line."""
    logcontext.configure(misuse="warn")
    clock = [1000.0]
    monkeypatch.setattr(_misuse.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="logcontext.misuse"):
        for i in range(30):
            _misuse.report("leak", "x", site=f"site-{i}")
        assert len(caplog.records) == 20
        clock[0] += 61
        _misuse.report("leak", "x", site="later")
    messages = [r.getMessage() for r in caplog.records]
    assert "10 similar 'leak' reports suppressed" in messages
    assert len(messages) == 22


def test_raise_policy() -> None:
    """Under raise a report raises LogContextError carrying the report."""
    logcontext.configure(misuse="raise")
    with pytest.raises(LogContextError) as info:
        _misuse.report("leak", "boom", site="s")
    assert info.value.report.kind == "leak" and isinstance(info.value, RuntimeError)


def test_ignore_counts_only(caplog: pytest.LogCaptureFixture) -> None:
    """Under ignore nothing is logged but the report is counted."""
    logcontext.configure(misuse="ignore")
    before = _misuse.counts["leak"]
    with caplog.at_level(logging.DEBUG, logger="logcontext.misuse"):
        _misuse.report("leak", "quiet", site="s")
    assert _misuse.counts["leak"] == before + 1 and not caplog.records


def test_hook_replaces_sink_but_keeps_filtering() -> None:
    """set_misuse_hook sends reports to a function; dedup still applies; None restores logging."""
    logcontext.configure(misuse="warn")
    got: list[MisuseReport] = []
    set_misuse_hook(got.append)
    try:
        ctx = LoggingContext("hooked")
        _misuse.report("leak", "one", context=ctx)
        _misuse.report("leak", "two", context=ctx)
    finally:
        set_misuse_hook(None)
    assert [(r.kind, r.message, r.context) for r in got] == [("leak", "one", "hooked")]


def test_configure_rejects_bad_values() -> None:
    """configure() names the bad setting and the allowed values."""
    with pytest.raises(ValueError, match="clock mode 'fast'"):
        logcontext.configure(clock="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="misuse policy"):
        logcontext.configure(misuse="loud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step mode"):
        logcontext.configure(step_mode="sometimes")  # type: ignore[arg-type]


def test_environment_is_read_and_bad_values_ignored(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOGCONTEXT_* variables configure the library; a bad value is reported and ignored."""
    monkeypatch.setenv("LOGCONTEXT_CLOCK", "wall")
    monkeypatch.setenv("LOGCONTEXT_MISUSE", "nonsense")
    logcontext._config._from_environment()
    assert logcontext.clock.mode() == "wall"
    assert "LOGCONTEXT_MISUSE='nonsense'" in capsys.readouterr().err
