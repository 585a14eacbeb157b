"""Prometheus metrics and log lines of state resolution (spec §6)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from _state_vectors import LazySource, case, expected_of, inputs_of
from homeserver.state import (
    InMemoryEventSource,
    ResolutionStages,
    ResolveOptions,
    StateResolutionError,
    _instrument,
    _metrics,
    resolve_state,
    resolve_state_async,
    rules_for,
)
from homeserver.state._metrics import (
    ERROR_CATEGORIES,
    IAC_OUTCOMES,
    IAC_PASSES,
    PHASES,
    active_state_metrics,
    add_unindexed_source,
    install_state_metrics,
    pool_unindexed_source,
    uninstall_state_metrics,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext import LoggingContext

V2_CASES = [
    "v2/synapse-v2/ban_vs_pl/at-END",
    "v4/edge/rejected-power-levels-in-auth-chain",
    "v6/edge/unknown-conflicted-event",
]
V21_CASES = ["v12/msc4297/problem-b-subgraph"]
FAILING = "v7/malformed/event-from-another-room"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh registry holding the active state-resolution families; the previous ones restored."""
    prev = _metrics._active
    reg = CollectorRegistry()
    assert install_state_metrics(reg) is not None
    try:
        yield reg
    finally:
        uninstall_state_metrics()
        if isinstance(prev, _metrics.StateMetrics):
            install_state_metrics(prev.registry)
        else:
            _metrics._active = prev


@pytest.fixture
def thresholds() -> Iterator[None]:
    """Restore the INFO log thresholds after the test."""
    saved = (_instrument.SLOW_SECONDS, _instrument.LARGE_FULL_SET)
    try:
        yield
    finally:
        _instrument.set_log_thresholds(seconds=saved[0], full_events=saved[1])


def scrape(reg: CollectorRegistry) -> tuple[set[str], Samples]:
    """Family names and samples ``(name, labels) -> value`` parsed from the exposition text."""
    text = generate_latest(reg).decode()
    families: set[str] = set()
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def run(name: str, **kw: Any) -> tuple[dict[str, Any], ResolutionStages]:
    c = case(name)
    stages = ResolutionStages()
    got = resolve_state(
        c["room_version"],
        inputs_of(c),
        InMemoryEventSource.from_vector(c),
        room_id=c["room_id"],
        stages=stages,
        **kw,
    )
    assert got == expected_of(c)
    return c, stages


def test_families_and_values_after_resolutions(registry: CollectorRegistry) -> None:
    """Every family is exposed with its labels; counts and sums match what the resolutions did."""
    done = []
    with LoggingContext("request"):  # one path with spans ...
        done.append(run(V2_CASES[0]))
    done += [run(n) for n in V2_CASES[1:] + V21_CASES]  # ... and the others without a context
    families, samples = scrape(registry)
    assert {
        "state_res_seconds",
        "state_res_full_conflicted_events",
        "state_res_auth_difference_events",
        "state_res_iac",
        "state_res_errors",
        "state_res_auth_difference_method",
        "state_res_unindexed_events",
    } <= families

    # One `total` observation per resolution, per algorithm; phases only with known names.
    assert value(samples, "state_res_seconds_count", phase="total", algorithm="v2") == len(V2_CASES)
    assert value(samples, "state_res_seconds_count", phase="total", algorithm="v2.1") == len(V21_CASES)
    assert value(samples, "state_res_seconds_sum", phase="total", algorithm="v2") > 0
    phases = {dict(lb)["phase"] for n, lb in samples if n == "state_res_seconds_count"}
    assert phases <= set(PHASES)
    assert value(samples, "state_res_seconds_count", phase="iac_power", algorithm="v2") == len(V2_CASES)
    assert value(samples, "state_res_seconds_count", phase="conflicted_subgraph", algorithm="v2.1") == 1
    assert value(samples, "state_res_seconds_count", phase="conflicted_subgraph", algorithm="v2") == 0

    # Sizes: one observation per resolution, summing to the sizes the stages report.
    n = len(done)
    assert value(samples, "state_res_full_conflicted_events_count") == n
    assert value(samples, "state_res_full_conflicted_events_sum") == sum(
        len(s.full_conflicted_set) for _, s in done
    )
    assert value(samples, "state_res_auth_difference_events_count") == n
    assert value(samples, "state_res_auth_difference_events_sum") == sum(
        len(s.auth_difference) for _, s in done
    )
    for bound in ("0.0", "1.0", "5.0", "10.0", "20.0", "50.0", "+Inf"):  # cumulative buckets
        limit = float(bound)
        for family, stage in (
            ("state_res_full_conflicted_events", "full_conflicted_set"),
            ("state_res_auth_difference_events", "auth_difference"),
        ):
            got = value(samples, f"{family}_bucket", le=bound)
            assert got == sum(1 for _, s in done if len(getattr(s, stage)) <= limit), (family, bound)
    assert value(samples, "state_res_auth_difference_method_total", method="walk") == n
    assert value(samples, "state_res_auth_difference_method_total", method="chain") == 0

    # IAC: every event of each pass's order has one outcome; rejected ones are skipped.
    for pass_, order in (("iac_power", "power_order"), ("iac_rest", "mainline_order")):
        outcomes = {
            o: value(samples, "state_res_iac_total", **{"pass": pass_, "outcome": o}) for o in IAC_OUTCOMES
        }
        assert sum(outcomes.values()) == sum(len(getattr(s, order)) for _, s in done)
        rejected = sum(1 for c, s in done for e in getattr(s, order) if e in c.get("rejected", {}))
        assert outcomes["skipped_rejected"] == rejected
    assert value(samples, "state_res_iac_total", **{"pass": "iac_power", "outcome": "accepted"}) > 0
    assert value(samples, "state_res_iac_total", **{"pass": "iac_rest", "outcome": "accepted"}) > 0
    assert (
        sum(
            value(samples, "state_res_iac_total", **{"pass": p, "outcome": "skipped_rejected"})
            for p in IAC_PASSES
        )
        > 0
    )

    # No errors; every known category exposed at 0.
    for cat in ERROR_CATEGORIES:
        assert ("state_res_errors_total", frozenset({("category", cat)})) in samples
        assert value(samples, "state_res_errors_total", category=cat) == 0
    assert value(samples, "state_res_unindexed_events") == 0


def test_record_places_observations_in_buckets(registry: CollectorRegistry) -> None:
    """`StateMetrics.record` puts each time and size in the right cumulative bucket."""
    m = active_state_metrics()
    assert m is not None
    fig = _metrics.ResolutionFigures("v2.1")
    fig.phase_seconds.update(split=0.0003, overlay=0.7)
    fig.full_set, fig.auth_difference, fig.method = 7, 0, "chain"
    fig.iac[("iac_rest", "failed")] = 3
    m.record(fig, 2.0, "invalid_membership")
    m.record(fig, 0.00005, None)
    _, samples = scrape(registry)

    def bucket(phase: str, le: str) -> float:
        return value(samples, "state_res_seconds_bucket", phase=phase, algorithm="v2.1", le=le)

    assert [bucket("total", le) for le in ("0.0001", "1.0", "2.5", "+Inf")] == [1, 1, 2, 2]
    assert value(samples, "state_res_seconds_sum", phase="total", algorithm="v2.1") == 2.00005
    assert [bucket("split", le) for le in ("0.00025", "0.0005", "+Inf")] == [0, 2, 2]
    assert [bucket("overlay", le) for le in ("0.5", "1.0")] == [0, 2]
    assert value(samples, "state_res_full_conflicted_events_bucket", le="5.0") == 0
    assert value(samples, "state_res_full_conflicted_events_bucket", le="10.0") == 2
    assert value(samples, "state_res_auth_difference_events_bucket", le="0.0") == 2
    assert value(samples, "state_res_iac_total", **{"pass": "iac_rest", "outcome": "failed"}) == 6
    assert value(samples, "state_res_errors_total", category="invalid_membership") == 1
    assert value(samples, "state_res_auth_difference_method_total", method="chain") == 2


def test_failing_resolution_counts_its_category(registry: CollectorRegistry) -> None:
    """A vector that fails counts one error of its category and still one `total` observation."""
    c = case(FAILING)
    for in_context in (True, False):
        with LoggingContext("request") if in_context else nullcontext():
            with pytest.raises(StateResolutionError) as info:
                resolve_state(
                    c["room_version"], inputs_of(c), InMemoryEventSource.from_vector(c), room_id=c["room_id"]
                )
        assert info.value.category == c["expected_error"] == "wrong_room"
    _, samples = scrape(registry)
    assert value(samples, "state_res_errors_total", category="wrong_room") == 2
    assert sum(value(samples, "state_res_errors_total", category=k) for k in ERROR_CATEGORIES) == 2
    assert value(samples, "state_res_seconds_count", phase="total", algorithm="v2") == 2


async def test_rejected_calls_count_errors_untimed(registry: CollectorRegistry) -> None:
    """Bad inputs and unknown room versions count an error but no resolution time."""
    c = case(V2_CASES[0])
    with pytest.raises(StateResolutionError, match="invalid_input"):
        resolve_state(c["room_version"], [{"not": "a key"}], c["events"])  # type: ignore[dict-item]
    with pytest.raises(StateResolutionError, match="unsupported_room_version"):
        resolve_state("1", inputs_of(c), c["events"])
    with pytest.raises(StateResolutionError, match="invalid_input"):
        await resolve_state_async(c["room_id"], rules_for("10"), "nope", InMemoryEventSource.from_vector(c))  # type: ignore[arg-type]
    _, samples = scrape(registry)
    assert value(samples, "state_res_errors_total", category="invalid_input") == 2
    assert value(samples, "state_res_errors_total", category="unsupported_room_version") == 1
    assert not any(n == "state_res_seconds_count" and v for (n, _), v in samples.items())


async def test_async_chain_index_method(registry: CollectorRegistry) -> None:
    """Over an async source with a chain index, the auth difference is counted as ``chain``."""
    c = case("v10/random/room300-2way-s1036")
    inner = InMemoryEventSource.from_vector(c)
    src = LazySource(inner, index=inner.build_index())
    with LoggingContext("request"):
        got = await resolve_state_async(
            c["room_id"], rules_for(c["room_version"]), inputs_of(c), src, ResolveOptions(index="chain")
        )
    assert got == expected_of(c)
    _, samples = scrape(registry)
    assert value(samples, "state_res_auth_difference_method_total", method="chain") == 1
    assert value(samples, "state_res_auth_difference_method_total", method="walk") == 0
    assert value(samples, "state_res_full_conflicted_events_count") == 1


def test_registered_once_per_registry(registry: CollectorRegistry) -> None:
    """Installing again on a registry reuses its families; another registry takes them over."""
    m = active_state_metrics()
    assert install_state_metrics(registry) is m  # no duplicate-timeseries error
    other = CollectorRegistry()
    try:
        assert install_state_metrics(other) is not m
        run(V2_CASES[0])
        assert not {f for f in scrape(registry)[0] if f.startswith("state_res")}
        _, samples = scrape(other)
        assert value(samples, "state_res_seconds_count", phase="total", algorithm="v2") == 1
    finally:
        install_state_metrics(registry)
    with pytest.raises(TypeError, match="CollectorRegistry"):
        install_state_metrics(object())  # type: ignore[arg-type]


def test_uninstalled_records_nothing(registry: CollectorRegistry) -> None:
    """After `uninstall_state_metrics` the families are gone and resolutions still work."""
    uninstall_state_metrics()
    assert active_state_metrics() is None
    run(V2_CASES[0])
    assert not {f for f in scrape(registry)[0] if f.startswith("state_res")}


def test_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra, metrics are off (no-op) and resolution works, in and out of context."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    monkeypatch.setattr(_metrics, "_active", _metrics._UNSET)
    run(V2_CASES[0])
    with LoggingContext("request"):
        run(V21_CASES[0])
    assert _metrics._active is None
    assert install_state_metrics() is None


def test_unindexed_gauge_sums_sources(registry: CollectorRegistry) -> None:
    """The gauge is read at scrape time from the sources; NaN when every source failed."""

    def broken() -> int:
        raise RuntimeError("database down")

    count = [3]
    removers = [add_unindexed_source(lambda: count[0]), add_unindexed_source(lambda: 4)]
    try:
        assert value(scrape(registry)[1], "state_res_unindexed_events") == 7
        count[0] = 10
        assert value(scrape(registry)[1], "state_res_unindexed_events") == 14
    finally:
        for r in removers:
            r()
    remove = add_unindexed_source(broken)
    try:
        assert math.isnan(value(scrape(registry)[1], "state_res_unindexed_events"))
    finally:
        remove()
    assert value(scrape(registry)[1], "state_res_unindexed_events") == 0
    with pytest.raises(TypeError, match="callable"):
        add_unindexed_source(3)  # type: ignore[arg-type]


async def test_unindexed_gauge_counts_events_missing_from_the_chain_tables(
    registry: CollectorRegistry,
) -> None:
    """Events of a room that has chain-index rows but no row of their own are counted."""
    from homeserver.storage.schema import apply_schema

    from logcontext.db import DatabasePool

    pool = DatabasePool.sqlite(":memory:")

    def insert_event(txn: Any, eid: str, room: str) -> None:
        txn.execute(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,"
            " auth_rank, json) VALUES (?, ?, 'm.room.message', NULL, '@a:x', 0, 1, '{}')",
            (eid, room),
        )

    def index_event(txn: Any, eid: str, room: str, seq: int) -> None:
        txn.execute(
            "INSERT INTO event_auth_chains (event_id, room_id, chain_id, seq) VALUES (?, ?, 0, ?)",
            (eid, room, seq),
        )

    remove = add_unindexed_source(pool_unindexed_source(pool, timeout=30))
    try:
        with LoggingContext("test"):
            await pool.run_interaction("apply_schema", apply_schema)
            for i in range(3):  # a room without an index: never "waiting"
                await pool.run_interaction("ins", insert_event, f"$small{i}", "!small:x")
            for i in range(4):
                await pool.run_interaction("ins", insert_event, f"$big{i}", "!big:x")
            assert value(scrape(registry)[1], "state_res_unindexed_events") == 0
            for i in range(2):  # the index covers two of the four events
                await pool.run_interaction("idx", index_event, f"$big{i}", "!big:x", i + 1)
            assert value(scrape(registry)[1], "state_res_unindexed_events") == 2
            for i in range(2, 4):
                await pool.run_interaction("idx", index_event, f"$big{i}", "!big:x", i + 1)
            assert value(scrape(registry)[1], "state_res_unindexed_events") == 0
    finally:
        remove()
        await pool.close()
    with pytest.raises(TypeError, match="DatabasePool"):
        pool_unindexed_source(object())


def test_pool_source_does_not_wait_past_its_timeout() -> None:
    """A slow count reports the previous value (None at first) and is not submitted twice."""
    import concurrent.futures

    submitted: list[concurrent.futures.Future[int]] = []

    class SlowPool:
        def submit_interaction(self, desc: str, fn: Any) -> concurrent.futures.Future[int]:
            assert desc == "count_unindexed_events"
            submitted.append(concurrent.futures.Future())
            return submitted[-1]

    read = pool_unindexed_source(SlowPool(), timeout=0.001)
    assert read() is None and len(submitted) == 1
    assert read() is None and len(submitted) == 1  # still the same query
    submitted[0].set_result(5)
    assert read() == 5 and len(submitted) == 1
    assert read() == 5 and len(submitted) == 2  # a new query; the last count meanwhile
    submitted[1].set_exception(RuntimeError("pool closed"))
    with pytest.raises(RuntimeError, match="closed"):
        read()
    with pytest.raises(ValueError, match="timeout"):
        pool_unindexed_source(SlowPool(), timeout=-1)


def test_info_line_above_forced_low_threshold(
    registry: CollectorRegistry, thresholds: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the (forced low) thresholds one INFO line names room, version, sizes and phases."""
    caplog.set_level(logging.INFO, logger="homeserver.state")
    _instrument.set_log_thresholds(seconds=3600, full_events=1)  # by size
    c, stages = run(V2_CASES[0])
    _instrument.set_log_thresholds(seconds=0, full_events=10**9)  # by time
    with LoggingContext("request"):
        run(V21_CASES[0])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 2
    first = lines[0]
    assert c["room_id"] in first and f"(v{c['room_version']}, v2)" in first
    assert f"full set {len(stages.full_conflicted_set)}" in first
    assert f"auth difference {len(stages.auth_difference)} (walk)" in first
    assert "iac_power=" in first and "overlay=" in first
    assert "(v12, v2.1)" in lines[1] and "conflicted_subgraph=" in lines[1]
    with pytest.raises(ValueError, match="seconds"):
        _instrument.set_log_thresholds(seconds=-1)
    with pytest.raises(ValueError, match="full_events"):
        _instrument.set_log_thresholds(full_events=1.5)  # type: ignore[arg-type]


def test_no_info_line_for_small_case_at_defaults(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A small resolution under the default thresholds (50 ms, 500 events) is not logged."""
    assert (_instrument.SLOW_SECONDS, _instrument.LARGE_FULL_SET) == (0.050, 500)
    caplog.set_level(logging.INFO, logger="homeserver.state")
    with LoggingContext("request"):
        _, stages = run(V2_CASES[0])
    assert len(stages.full_conflicted_set) < 500
    elapsed = value(scrape(registry)[1], "state_res_seconds_sum", phase="total", algorithm="v2")
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    # Only a machine so loaded that this tiny case took 50 ms may log it, and then by time.
    assert len(infos) == (1 if elapsed >= 0.050 else 0)


def test_debug_line_lists_the_sets(registry: CollectorRegistry, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG one line per resolution lists the conflicted, auth-difference and full sets."""
    caplog.set_level(logging.DEBUG, logger="homeserver.state")
    c, stages = run(V2_CASES[1])
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert c["room_id"] in line
    for eid in stages.full_conflicted_set | stages.auth_difference | stages.conflicted:
        assert eid in line
