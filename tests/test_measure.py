"""``Measure`` and ``measure_func`` (spec §7 "Blocks")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import logcontext
from logcontext import LoggingContext, Measure, _ledger, _misuse, current_context, measure_func
from logcontext.metrics import Metrics, install_metrics, uninstall_metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = install_metrics(registry=CollectorRegistry())
    try:
        yield m
    finally:
        uninstall_metrics()


def values(m: Metrics) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            if "block_name" in s.labels:
                out[(s.name, s.labels["block_name"])] = s.value
    return out


def test_child_named_like_parent_and_inclusive_usage() -> None:
    """Inside, the current context is a child named like the parent; its usage rolls up."""
    with LoggingContext("GET-1") as parent:
        with Measure("blk") as m:
            inner = current_context()
            assert inner is not parent and inner.name == "GET-1"
            assert inner.parent_context is parent
            inner.record_db_txn(0.5)
            inner.record_event_fetch(2)
        assert current_context() is parent
        assert parent.get_resource_usage().db_txn_count == 1
    usage = m.get_resource_usage()
    assert usage.db_txn_count == 1 and usage.evt_db_fetch_count == 2


def test_reentering_raises() -> None:
    """A Measure object can be entered only once, whatever the misuse policy."""
    with LoggingContext("x"):
        m = Measure("blk")
        with m, pytest.raises(RuntimeError, match="entered twice"):
            m.__enter__()
        with pytest.raises(RuntimeError):
            m.__enter__()


def test_bad_name() -> None:
    """Names must be non-empty strings."""
    with pytest.raises(ValueError):
        Measure("")
    with pytest.raises(TypeError):
        Measure(3)  # type: ignore[arg-type]


@pytest.mark.misuse_ok
def test_sentinel_reports_once_per_name() -> None:
    """From the sentinel: a ``sentinel-usage`` report (site = block name) and no parent."""
    before = _misuse.counts["sentinel-usage"]
    for _ in range(3):
        with Measure("lonely"):
            assert current_context().parent_context is None
    assert _misuse.counts["sentinel-usage"] - before == 3  # counted each time
    assert not current_context()


def test_block_metrics(metrics: Metrics) -> None:
    """Count, time, CPU and DB families are fed with the block's inclusive usage."""
    with LoggingContext("req"):
        for _ in range(2):
            with Measure("blk"):
                current_context().record_db_txn(0.25)
                current_context().record_db_scheduled(0.125)
                current_context().record_event_fetch(3)
    v = values(metrics)
    assert v[("logcontext_block_count_total", "blk")] == 2
    assert v[("logcontext_block_db_txn_count_total", "blk")] == 2
    assert v[("logcontext_block_db_txn_duration_seconds_total", "blk")] == 0.5
    assert v[("logcontext_block_db_sched_duration_seconds_total", "blk")] == 0.25
    assert v[("logcontext_block_evt_db_fetch_count_total", "blk")] == 6
    assert v[("logcontext_block_time_seconds_total", "blk")] >= 0


def test_block_cpu_is_final_when_the_block_exits(metrics: Metrics) -> None:
    """A block's CPU reaches its metrics even when its exit leaves the sampling window open."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(10_000)  # no window closes on its own during the test
    try:
        with LoggingContext("req"):
            with Measure("burn"):
                end = time.thread_time() + 0.002
                while time.thread_time() < end:
                    pass
        assert values(metrics)[("logcontext_block_ru_utime_seconds_total", "burn")] >= 0.0015
    finally:
        _ledger.set_sample_window(1.0)


def test_an_uninterrupted_block_closes_no_window(metrics: Metrics) -> None:
    """sampled mode: a block that never switches is measured by a thread-clock pair at its exit;
    reporting its figures closes no sampling window."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(10_000)
    try:
        with LoggingContext("req"):
            _ledger.settle_pending()
            windows = _ledger.stats.windows
            with Measure("burn"):
                end = time.thread_time() + 0.002
                while time.thread_time() < end:
                    pass
            assert _ledger.stats.windows == windows
        assert values(metrics)[("logcontext_block_ru_utime_seconds_total", "burn")] >= 0.0019
    finally:
        _ledger.set_sample_window(1.0)


def test_a_block_that_switches_reports_its_final_cpu(metrics: Metrics) -> None:
    """sampled mode: a block that enters a nested context leaves CPU pending in the window at
    its exit; its metrics still get all of it (the report reads the final figures)."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(10_000)
    try:
        with LoggingContext("req"), Measure("nested"):
            current_context().record_event_fetch(1)  # the block has figures before its CPU
            with LoggingContext("inner", parent_context=current_context()):
                end = time.thread_time() + 0.001
                while time.thread_time() < end:
                    pass
            end = time.thread_time() + 0.001
            while time.thread_time() < end:
                pass
        v = values(metrics)
        assert v[("logcontext_block_ru_utime_seconds_total", "nested")] >= 0.0019
        assert v[("logcontext_block_evt_db_fetch_count_total", "nested")] == 1
    finally:
        _ledger.set_sample_window(1.0)


def test_in_flight_gauges(metrics: Metrics) -> None:
    """While a block runs it shows in the in-flight gauges; afterwards it does not."""
    with LoggingContext("req"), Measure("slow"):
        v = values(metrics)
        assert v[("logcontext_block_in_flight", "slow")] == 1
        assert v[("logcontext_block_in_flight_real_time_max_seconds", "slow")] >= 0
    assert ("logcontext_block_in_flight", "slow") not in values(metrics)


async def test_measure_func_sync_and_async(metrics: Metrics) -> None:
    """The decorator wraps sync and async functions, naming blocks by qualname by default."""

    @measure_func
    def f() -> str:
        return current_context().name

    @measure_func("named")
    async def g() -> str:
        await asyncio.sleep(0)
        return current_context().name

    with LoggingContext("req"):
        assert f() == "req"
        assert await g() == "req"
    v = values(metrics)
    assert v[("logcontext_block_count_total", f.__qualname__)] == 1
    assert v[("logcontext_block_count_total", "named")] == 1


async def test_spans_awaits_inclusive(metrics: Metrics) -> None:
    """A block around several awaits is charged for all its steps, not only the last one."""
    with LoggingContext("req"), Measure("awaits") as m:
        for _ in range(5):
            current_context().record_event_fetch(1)
            await asyncio.sleep(0)
    assert m.get_resource_usage().evt_db_fetch_count == 5


def test_server_name_inherited_or_explicit(metrics: Metrics) -> None:
    """Without ``server_name`` the block runs in, and is labelled with, the parent's server
    name; an explicit one is the child's server name and the label."""
    with LoggingContext("GET-1", server_name="hs1"):
        with Measure("inherit") as m1:
            inner1 = current_context()
        with Measure("explicit", server_name="hs2") as m2:
            inner2 = current_context()
    assert m1.server_name == "hs1" and inner1.server_name == "hs1"
    assert m2.server_name == "hs2" and inner2.server_name == "hs2"
    labels = {
        (s.labels["block_name"], s.labels["server_name"])
        for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in fam.samples
        if "block_name" in s.labels
    }
    assert ("inherit", "hs1") in labels and ("explicit", "hs2") in labels
    assert not any(b == "inherit" and sn != "hs1" for b, sn in labels)
