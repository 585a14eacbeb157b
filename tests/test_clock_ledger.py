"""Clock modes and the per-thread ledger with a FakeClock (spec §2.1, §2.2; §10 items 17, 28)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import logcontext
from logcontext import SENTINEL_CONTEXT, LoggingContext, PreserveLoggingContext, _ledger, clock
from logcontext.clock import FakeClock, use_clock

MS = 1_000_000


def test_read_per_mode() -> None:
    """read() gives (user_ns, system_ns) tuples in cpu/wall/rusage and None when off."""
    for mode in ("cpu", "wall", "rusage"):
        logcontext.configure(clock=mode)  # type: ignore[arg-type]
        r = clock.read()
        assert isinstance(r, tuple) and len(r) == 2 and all(isinstance(v, int) for v in r)
    logcontext.configure(clock="off")
    assert clock.read() is None
    assert clock.mode() == "off"


def test_off_mode_makes_no_clock_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the clock off, entering and leaving contexts calls no clock at all."""
    logcontext.configure(clock="off")
    calls = []
    monkeypatch.setattr(clock, "_reader", lambda: calls.append(1))
    with LoggingContext("a"):
        with LoggingContext("b"):
            with PreserveLoggingContext():
                pass
    assert calls == []


def test_switch_tracer_needs_its_own_level(caplog: pytest.LogCaptureFixture) -> None:
    """logcontext.debug is silent with the root at DEBUG, and logs enter/exit once its own level is set."""
    import logging

    dbg = logging.getLogger("logcontext.debug")
    with caplog.at_level(logging.DEBUG):
        with LoggingContext("quiet"):
            pass
        assert not [r for r in caplog.records if r.name == "logcontext.debug"]
        dbg.setLevel(logging.DEBUG)
        try:
            with LoggingContext("traced"):
                pass
        finally:
            dbg.setLevel(logging.NOTSET)
    lines = [r.getMessage() for r in caplog.records if r.name == "logcontext.debug"]
    assert len(lines) == 2 and lines[0].startswith("enter traced[") and lines[1].startswith("exit traced[")


def test_identity_skip_and_one_read_per_switch() -> None:
    """Checkpointing to the already-charged context reads nothing; each real switch reads once."""
    fake = FakeClock()
    with use_clock(fake):
        with PreserveLoggingContext():  # checkpoint to the sentinel: resync after the generation bump
            pass
        base = fake.reads
        ctx = LoggingContext("a")
        with ctx:
            assert fake.reads == base + 1
            _ledger.checkpoint(ctx)
            assert fake.reads == base + 1
        assert fake.reads == base + 2


def test_exact_scripted_charges() -> None:
    """Scripted clock advances are charged exactly: inner blocks to the inner, the rest to the outer."""
    fake = FakeClock()
    with use_clock(fake):
        _ledger.checkpoint(LoggingContext("resync"))
        _ledger.checkpoint(SENTINEL_CONTEXT)
        led = _ledger.get_ledger()
        un0 = led.unattributed_ns
        fake.advance(ms=1)  # unattributed
        with LoggingContext("outer") as outer:
            fake.advance(ms=5)
            with LoggingContext("inner", parent_context=outer) as inner:
                fake.advance(ms=5)
            fake.advance(ms=2, system_ns=0)
        fake.advance(ms=3)  # unattributed again
        _ledger.checkpoint(LoggingContext("flush"))
        _ledger.checkpoint(SENTINEL_CONTEXT)
    assert inner.get_resource_usage().ru_utime == pytest.approx(0.005)
    assert outer.get_resource_usage().ru_utime == pytest.approx(0.012)
    assert led.unattributed_ns - un0 == 4 * MS


def test_start_stop_symmetric_with_one_reading() -> None:
    """stop(r) charges r − last to the context and its parents; start(r) continues from r."""
    parent = LoggingContext("p")
    child = LoggingContext("c", parent_context=parent)
    fake = FakeClock()
    with use_clock(fake):
        _ledger.checkpoint(SENTINEL_CONTEXT)
        r0 = fake.read()
        child.start(r0)
        fake.advance(ms=7)
        r1 = fake.read()
        child.stop(r1)
        parent.start(r1)
        fake.advance(ms=3)
        parent.stop(fake.read())
    assert child.get_resource_usage().ru_utime == pytest.approx(0.007)
    assert parent.get_resource_usage().ru_utime == pytest.approx(0.010)
    assert _ledger.get_ledger().charged is SENTINEL_CONTEXT


@pytest.mark.misuse_ok
def test_start_while_charged_and_stop_not_charged() -> None:
    """start() while another context is charged stops it first; stop() of an uncharged one is a no-op."""
    logcontext.configure(misuse="ignore")
    a, b = LoggingContext("a"), LoggingContext("b")
    counts = logcontext._misuse.counts
    before = (counts["start-while-charged"], counts["stop-not-charged"])
    fake = FakeClock()
    with use_clock(fake):
        _ledger.checkpoint(SENTINEL_CONTEXT)
        a.start(fake.read())
        fake.advance(ms=2)
        b.start(fake.read())
        a.stop(fake.read())
        fake.advance(ms=1)
        b.stop(fake.read())
    assert a.get_resource_usage().ru_utime == pytest.approx(0.002)
    assert b.get_resource_usage().ru_utime == pytest.approx(0.001)
    assert (counts["start-while-charged"], counts["stop-not-charged"]) == (before[0] + 1, before[1] + 1)


def test_clock_regression_clamped() -> None:
    """A clock going backwards charges 0 and counts a regression."""
    fake = FakeClock(user_ns=10 * MS)
    before = _ledger.stats.clock_regressions
    with use_clock(fake):
        _ledger.checkpoint(SENTINEL_CONTEXT)
        with LoggingContext("r") as r:
            fake.advance(ms=-5)
    assert r.get_resource_usage().ru_utime == 0.0
    assert _ledger.stats.clock_regressions == before + 1


def test_get_resource_usage_includes_slice_in_progress() -> None:
    """get_resource_usage() on the charging thread adds the slice since the last checkpoint."""
    fake = FakeClock()
    with use_clock(fake):
        _ledger.checkpoint(SENTINEL_CONTEXT)
        with LoggingContext("p") as p:
            with LoggingContext("c", parent_context=p):
                fake.advance(ms=4)
                assert p.get_resource_usage().ru_utime == pytest.approx(0.004)


def test_rusage_splits_user_and_system() -> None:
    """In rusage mode system time lands in ru_stime (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RUSAGE_THREAD is Linux-only")
    logcontext.configure(clock="rusage")
    with LoggingContext("io") as ctx:
        for _ in range(3000):
            os.stat("/")
        x = 0
        for i in range(300_000):
            x += i
    u = ctx.get_resource_usage()
    assert u.ru_utime + u.ru_stime > 0


def test_each_thread_has_its_own_ledger() -> None:
    """Ledgers are per thread: another thread's ledger is a different object, starting in the sentinel."""
    mine = _ledger.get_ledger()
    other: list[_ledger.Ledger] = []
    t = threading.Thread(target=lambda: other.append(_ledger.get_ledger()), name="worker-3")
    t.start()
    t.join()
    assert other[0] is not mine and other[0].charged is SENTINEL_CONTEXT
    assert other[0].thread_label == "worker"
    del other[:]
    assert any(label == "worker" for label, _, _ in _ledger.ledger_stats())


def test_an_exited_threads_ledger_is_freed_and_folded() -> None:
    """When a thread ends its ledger is released (not kept by the registry) and its totals are
    folded into the per-label figures of exited threads."""
    logcontext.configure(clock="cpu", step_mode="exact")
    seen: list[int] = []

    def work() -> None:
        with LoggingContext("job"):
            for i in range(200_000):
                i += 1
        seen.append(id(_ledger.get_ledger()))

    t = threading.Thread(target=work, name="folded-worker-7")
    t.start()
    t.join()
    assert seen and seen[0] not in _ledger._live
    assert _ledger._exited.get("folded-worker", [0, 0])[0] > 0


def test_thread_label_strips_pool_suffixes() -> None:
    """Thread labels drop trailing -N/_N groups so pools collapse into one label."""
    assert _ledger.thread_label("logcontext-db-main_3") == "logcontext-db-main"
    assert _ledger.thread_label("ThreadPoolExecutor-0_1") == "ThreadPoolExecutor"
    assert _ledger.thread_label("MainThread") == "MainThread"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_fork_child_has_fresh_ledger_and_usable_lock() -> None:
    """After fork a pre-fork context works in the child with no clock regression and a usable lock."""
    with LoggingContext("pre-fork") as ctx:
        holder = threading.Thread(target=lambda: ctx.record_db_txn(0.0))
        holder.start()
        holder.join()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                before = _ledger.stats.clock_regressions
                ctx.record_db_txn(0.1)
                x = 0
                for i in range(10_000):
                    x += i
                ok = ctx.get_resource_usage().db_txn_count == 2 and _ledger.stats.clock_regressions == before
                os.write(w, b"ok" if ok else b"bad")
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        assert os.read(r, 10) == b"ok"
        os.close(r)
