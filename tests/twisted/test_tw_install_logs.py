"""``install`` (leak checker) and ``route_twisted_logs`` (spec §4 "Leaks")."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _twisted_harness import TwistedHarness
from twisted.logger import Logger, LogLevel, globalLogPublisher

import logcontext.twisted as lt
from logcontext import (
    LoggingContext,
    MisuseReport,
    PreserveLoggingContext,
    current_context,
    set_current_context,
    set_misuse_hook,
)


def _spin_for(tw: TwistedHarness, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    tw.spin(lambda: time.monotonic() > deadline)


@pytest.mark.misuse_ok
def test_leak_checker_reports_and_repairs_a_bare_set(tw: TwistedHarness) -> None:
    """Bare set in a reactor callback: ``leak`` reported and reset (default); contained (asyncio)."""
    reports: list[MisuseReport] = []
    set_misuse_hook(reports.append)
    lt.install(tw.reactor, check_leaks=True, check_interval=0.005)
    leaked = LoggingContext("leaky")
    try:
        tw.reactor.callLater(0, set_current_context, leaked)
        if tw.kind == "select":
            # The callback runs in the reactor thread's base Context: the value stays
            # for every later callback until the checker finds and resets it.
            tw.spin(lambda: any(r.kind == "leak" for r in reports))
        else:
            # Each asyncio handle runs in its own Context copy and install() re-arms the
            # timer in an empty one, so the value dies with that pass: nothing to report.
            _spin_for(tw, 0.03)
        seen = tw.probe_context()
    finally:
        lt.install(tw.reactor)
        set_misuse_hook(None)
    if tw.kind == "select":
        assert [r.kind for r in reports] == ["leak"]
        assert reports[0].context == "leaky"
    else:
        assert reports == []
    assert not seen and not current_context()


def test_leak_checker_is_quiet_when_nothing_leaks(tw: TwistedHarness) -> None:
    """With only ``with`` forms in callbacks, the checker reports nothing (strict mode would fail)."""
    ran: list[int] = []
    lt.install(tw.reactor, check_leaks=True, check_interval=0.002)

    def cb() -> None:
        with LoggingContext("scoped"):
            ran.append(1)

    for i in range(5):
        tw.reactor.callLater(0.001 * i, cb)
    tw.spin(lambda: len(ran) == 5)
    _spin_for(tw, 0.02)
    lt.install(tw.reactor)
    with pytest.raises(TypeError):
        lt.install(object())
    with pytest.raises(ValueError):
        lt.install(tw.reactor, check_interval=0)


@pytest.fixture
def routed() -> Iterator[Any]:
    obs = lt.route_twisted_logs(begin_logging=False)
    try:
        yield obs
    finally:
        lt.unroute_twisted_logs()


def test_twisted_events_reach_stdlib_with_context(routed: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Twisted events become stdlib records (namespace, mapped level) tagged with the context."""
    from logcontext.logging import install_log_record_factory, uninstall_log_record_factory

    assert lt.route_twisted_logs(begin_logging=False) is routed  # idempotent
    log = Logger(namespace="lc.test.twisted")
    install_log_record_factory()
    try:
        with caplog.at_level(logging.DEBUG, logger="lc.test.twisted"), LoggingContext("req-7"):
            log.info("hello {who}", who="world")
            log.warn("careful")
            try:
                raise KeyError("boom")
            except KeyError:
                log.failure("it failed")
    finally:
        uninstall_log_record_factory()
    recs = [r for r in caplog.records if r.name == "lc.test.twisted"]
    assert [(r.levelno, r.getMessage()) for r in recs] == [
        (logging.INFO, "hello world"),
        (logging.WARNING, "careful"),
        (logging.CRITICAL, "it failed"),
    ]
    assert all(getattr(r, "request", None) == "req-7" for r in recs)
    assert recs[2].exc_info is not None and recs[2].exc_info[0] is KeyError


def test_reentrant_events_do_not_loop(routed: Any) -> None:
    """A stdlib handler that logs back into Twisted does not recurse: the nested event goes to stderr."""
    log = Logger(namespace="lc.test.loop")
    calls: list[str] = []

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            calls.append(record.getMessage())
            log.info("echo of {m}", m=record.getMessage())

    h = Echo()
    lg = logging.getLogger("lc.test.loop")
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        log.info("first")
    finally:
        lg.removeHandler(h)
        lg.setLevel(logging.NOTSET)
    assert calls == ["first"]


def test_unroute_stops_forwarding(caplog: pytest.LogCaptureFixture) -> None:
    """After ``unroute_twisted_logs`` events no longer reach stdlib."""
    obs = lt.route_twisted_logs(begin_logging=False)
    lt.unroute_twisted_logs()
    with caplog.at_level(logging.INFO, logger="lc.test.unrouted"):
        globalLogPublisher(
            {"log_namespace": "lc.test.unrouted", "log_level": LogLevel.info, "log_format": "x"}
        )
    assert not [r for r in caplog.records if r.name == "lc.test.unrouted"]
    assert obs is not None


@pytest.mark.slow
def test_begin_logging_replays_buffered_events() -> None:
    """With ``begin_logging`` (default), events logged before routing are replayed to stdlib (subprocess)."""
    code = textwrap.dedent(
        """
        import logging, sys
        fmt = "%(name)s %(levelname)s %(message)s"
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format=fmt)
        from twisted.logger import Logger
        Logger(namespace="early").info("before routing")
        import logcontext.twisted as lt
        lt.route_twisted_logs()
        Logger(namespace="late").error("after routing")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "early INFO before routing" in out.stdout
    assert "late ERROR after routing" in out.stdout


def test_preserve_logging_context_is_reexported() -> None:
    """Ported code can import ``PreserveLoggingContext`` from the integration module."""
    assert lt.PreserveLoggingContext is PreserveLoggingContext
