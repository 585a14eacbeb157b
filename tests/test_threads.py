"""Contexts and CPU accounting across plain threads (spec §3, §2.4; §10 items 15, 16, 23)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

import logcontext
from logcontext import LoggingContext, _config, _ledger, _misuse, current_context
from logcontext.aio import ContextThreadPoolExecutor


@pytest.fixture(autouse=True)
def _restore_modes() -> Iterator[None]:
    """Restore clock and step mode through ``configure`` so every ledger re-derives its flags."""
    saved = (_config.config.clock_mode, _config.config.step_mode)
    yield
    logcontext.configure(clock=saved[0], step_mode=saved[1])


def _burn(ms: float) -> None:
    end = time.thread_time_ns() + int(ms * 1_000_000)
    while time.thread_time_ns() < end:
        pass


def _retry_once(check: object) -> None:
    try:
        check()  # type: ignore[operator]
    except AssertionError:
        check()  # type: ignore[operator]


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="3.14 may inherit the creator's Context")
def test_new_threads_start_in_the_sentinel() -> None:
    """A plain Thread started inside a context sees the sentinel (3.11-3.13)."""
    seen: list[str] = []
    with LoggingContext("foo"):
        t = threading.Thread(target=lambda: seen.append(str(current_context())))
        t.start()
        t.join()
    assert seen == ["sentinel"]


@pytest.mark.accuracy
def test_bound_thread_target_charges_captured_context() -> None:
    """Thread(target=bind(fn)) runs fn in the captured context and charges its CPU there; with
    metered=False it is tagged but not charged."""

    def check() -> None:
        logcontext.configure(clock="cpu", step_mode="exact")
        with LoggingContext("metered") as m:
            t = threading.Thread(target=logcontext.bind(_burn), args=(20,))
            t.start()
            t.join()
        with LoggingContext("unmetered") as u:
            seen: list[str] = []

            def fn() -> None:
                seen.append(str(current_context()))
                _burn(5)

            t = threading.Thread(target=logcontext.bind(fn, metered=False))
            t.start()
            t.join()
        assert m.get_resource_usage().ru_utime == pytest.approx(0.020, rel=0.15)
        assert seen == ["unmetered"]
        assert u.get_resource_usage().ru_utime < 0.002

    _retry_once(check)


@pytest.mark.accuracy
@pytest.mark.parametrize("mode", ["exact", "lazy", "sampled"])
def test_pool_work_rolls_up_to_submitter(mode: str) -> None:
    """ContextThreadPoolExecutor.submit from a plain thread runs fn in a child named like the
    caller; its CPU reaches the caller and the caller's parent (within 15 %)."""
    logcontext.configure(clock="cpu", step_mode=mode)  # type: ignore[arg-type]

    def check() -> None:
        with ContextThreadPoolExecutor(max_workers=2) as pool:
            with LoggingContext("parent") as parent, LoggingContext("req", parent_context=parent) as req:
                names = [f.result() for f in [pool.submit(_who_and_burn, 10) for _ in range(2)]]
        assert names == [("req", "req")] * 2
        assert req.get_resource_usage().ru_utime == pytest.approx(0.020, rel=0.15)
        assert parent.get_resource_usage().ru_utime == pytest.approx(0.020, rel=0.15)

    _retry_once(check)


def _who_and_burn(ms: float) -> tuple[str, str]:
    c = current_context()
    _burn(ms)
    return str(c), str(c.parent_context)


@pytest.mark.misuse_ok
def test_worker_outliving_its_parent_reports_late_usage() -> None:
    """A worker still running after its parent's block exited charges the parent anyway and
    reports late-usage once."""
    reports: list[_misuse.MisuseReport] = []
    logcontext.set_misuse_hook(reports.append)
    go = threading.Event()
    try:
        with ContextThreadPoolExecutor(max_workers=1) as pool:
            with LoggingContext("short") as short:
                fut = pool.submit(lambda: (go.wait(5), _burn(2)))
            go.set()
            fut.result()
    finally:
        logcontext.set_misuse_hook(None)
    assert short.late_usage is not None and short.late_usage.ru_utime > 0
    assert [r.kind for r in reports] == ["late-usage"]


def test_pool_threads_have_their_own_ledger_label() -> None:
    """Pool workers keep per-thread ledgers; their label collapses the pool's numeric suffixes."""
    with ContextThreadPoolExecutor(max_workers=1, thread_name_prefix="lcpool") as pool:
        with LoggingContext("req"):
            pool.submit(_burn, 1).result()
    labels = {label for label, _, _ in _ledger.ledger_stats()}
    assert "lcpool" in labels


@pytest.mark.parametrize("mode", ["exact", "lazy", "sampled"])
def test_short_bound_thread_target_is_charged_before_the_thread_ends(mode: str) -> None:
    """A bound target shorter than a window still has its CPU charged when its thread ends."""
    logcontext.configure(clock="cpu", step_mode=mode)  # type: ignore[arg-type]
    with LoggingContext("short-target") as ctx:
        t = threading.Thread(target=logcontext.bind(_burn), args=(0.3,))
        t.start()
        t.join()
        assert ctx.get_resource_usage().ru_utime >= 0.00025
