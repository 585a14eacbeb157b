"""Metric families, names, labels and scrape-time updates (spec §7, §10 item 41)."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext import ContextResourceUsage, LoggingContext, Measure, _bgmetrics, _db_hooks, _misuse
from logcontext.metrics import Metrics, install_metrics, uninstall_metrics

USAGE6 = (
    "ru_utime_seconds",
    "ru_stime_seconds",
    "db_txn_count",
    "db_txn_duration_seconds",
    "db_sched_duration_seconds",
    "evt_db_fetch_count",
)

# name -> (type, labels), written out from the spec's tables.
DEFAULT: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"block_{s}": ("counter", ("block_name", "server_name")) for s in ("count", "time_seconds", *USAGE6)},
    "block_in_flight": ("gauge", ("block_name", "server_name")),
    "block_in_flight_real_time_max_seconds": ("gauge", ("block_name", "server_name")),
    "block_in_flight_real_time_sum_seconds": ("gauge", ("block_name", "server_name")),
    "http_server_requests_received": ("counter", ("method", "servlet", "server_name")),
    "http_server_responses": ("counter", ("method", "code", "server_name")),
    "http_server_response_count": ("counter", ("method", "servlet", "tag", "server_name")),
    "http_server_response_time_seconds": (
        "histogram",
        ("method", "servlet", "tag", "code", "server_name"),
    ),
    **{
        f"http_server_response_{s}": ("counter", ("method", "servlet", "tag", "server_name"))
        for s in (*USAGE6, "size")
    },
    **{
        f"http_server_in_flight_requests_{s}": ("counter", ("method", "servlet", "server_name"))
        for s in USAGE6[:5]
    },
    "http_server_in_flight_requests_count": ("gauge", ("method", "servlet", "server_name")),
    "background_process_start_count": ("counter", ("name", "server_name")),
    "background_process_in_flight_count": ("gauge", ("name", "server_name")),
    **{f"background_process_{s}": ("counter", ("name", "server_name")) for s in USAGE6},
    "db_transaction_count": ("counter", ("desc", "server_name")),
    "db_transaction_duration_seconds": ("counter", ("desc", "server_name")),
    "db_schedule_time_seconds": ("histogram", ("server_name",)),
    "db_query_time_seconds": ("histogram", ("verb", "server_name")),
    "db_transaction_retries": ("counter", ("desc", "server_name")),
    "db_connections_in_use": ("gauge", ("pool", "server_name")),
    "cpu_attributed_seconds": ("counter", ("thread",)),
    "cpu_unattributed_seconds": ("counter", ("thread",)),
    "context_late_cpu_seconds": ("counter", ()),
    "clock_regressions": ("counter", ()),
    "misuse_reports": ("counter", ("kind",)),
}

SYNAPSE = {
    "block_count": "synapse_util_metrics_block_count",
    "block_time_seconds": "synapse_util_metrics_block_time_seconds",
    "block_ru_utime_seconds": "synapse_util_metrics_block_ru_utime_seconds",
    "block_ru_stime_seconds": "synapse_util_metrics_block_ru_stime_seconds",
    "block_db_txn_count": "synapse_util_metrics_block_db_txn_count",
    "block_db_txn_duration_seconds": "synapse_util_metrics_block_db_txn_duration_seconds",
    "block_db_sched_duration_seconds": "synapse_util_metrics_block_db_sched_duration_seconds",
    "block_in_flight": "synapse_util_metrics_block_in_flight_total",
    "block_in_flight_real_time_max_seconds": "synapse_util_metrics_block_in_flight_real_time_max",
    "block_in_flight_real_time_sum_seconds": "synapse_util_metrics_block_in_flight_real_time_sum",
    "db_transaction_count": "synapse_storage_transaction_time_count",
    "db_transaction_duration_seconds": "synapse_storage_transaction_time_sum",
    "db_schedule_time_seconds": "synapse_storage_schedule_time",
    "db_query_time_seconds": "synapse_storage_query_time",
    **{
        k: "synapse_http_server_" + k.removeprefix("http_server_")
        for k in DEFAULT
        if k.startswith("http_server_")
    },
    **{
        k: "synapse_background_process_" + k.removeprefix("background_process_")
        for k in DEFAULT
        if k.startswith("background_process_")
    },
}


def families(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """Parsed families: name -> (type, label names seen on samples)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        out[fam.name] = (fam.type, labels)
    return out


class FakePool:
    """Stands in for a DatabasePool (labels and the in-use gauge)."""

    name = "main"
    server_name = "hs"
    connections_in_use = 1


class FakeRequest:
    """Stands in for a request state (what the web integrations hand to the metrics)."""

    def __init__(self) -> None:
        self.ctx = LoggingContext("GET-1")
        self.method = "GET"
        self.server_name = "hs"
        self.reported = ContextResourceUsage()
        self.servlet_name = "s"


def use(ctx: LoggingContext) -> None:
    """Record some of every usage field on ``ctx``."""
    ctx.add_cputime(0.1, 0.1)
    ctx.record_db_txn(0.1)
    ctx.record_db_scheduled(0.1)
    ctx.record_event_fetch(1)


def exercise_and_scrape(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """Create at least one child in every labelled family, then parse a scrape."""
    m = _bgmetrics.active
    assert isinstance(m, Metrics)
    with LoggingContext("req") as ctx, Measure("blk"):
        use(ctx)
    req = FakeRequest()
    use(req.ctx)
    m.request_received("GET", "s", "hs")
    m.request_started(req)
    generate_latest(m.registry)
    m.request_finished(req, code="200", tag="", duration=0.1, size=1)
    m.request_started(req)  # keep one in flight for the gauge
    bg = LoggingContext("bg-1")
    use(bg)
    m.bg_started("bg", bg)
    pool = FakePool()
    m.scheduled(pool, 0.1)
    m.transaction(pool, "d", 0.1, 1, True)
    m.retry(pool, "d")
    m.query(pool, "SELECT", 0.1)
    _db_hooks.pools.add(pool)  # type: ignore[arg-type]
    try:
        with LoggingContext("req2"), Measure("blk"):
            return families(registry)
    finally:
        m.bg_finished("bg", bg)
        _db_hooks.pools.discard(pool)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "compat"),
    [("logcontext_", False), ("hs_", False), ("", False), ("logcontext_", True)],
)
def test_exact_names_types_and_labels(prefix: str, compat: bool) -> None:
    """Every family of the spec, under the default, a custom, empty and the Synapse naming."""
    reg = CollectorRegistry()
    install_metrics(registry=reg, prefix=prefix, synapse_compat=compat)
    try:
        got = exercise_and_scrape(reg)
    finally:
        uninstall_metrics()
    expected = {}
    for key, (typ, labels) in DEFAULT.items():
        name = SYNAPSE.get(key, prefix + key) if compat else prefix + key
        if typ == "counter":
            name = name.removesuffix("_total")
        expected[name] = (typ, set(labels))
    assert {k: v for k, v in got.items() if k in expected} == expected
    # prometheus_client's own ``_created`` series are not ours to name.
    extra = {n for n in set(got) - set(expected) if not n.endswith("_created")}
    assert extra == set(), extra


def test_invalid_arguments() -> None:
    """Bad prefix, cap or registry raise clear errors."""
    with pytest.raises(ValueError, match="prefix"):
        install_metrics(registry=CollectorRegistry(), prefix="bad-prefix")
    with pytest.raises(ValueError, match="label_cap"):
        install_metrics(registry=CollectorRegistry(), label_cap=0)
    with pytest.raises(TypeError, match="registry"):
        install_metrics(registry=object())  # type: ignore[arg-type]


def test_install_idempotent_and_uninstall() -> None:
    """Same arguments return the installed object; uninstall switches hooks off."""
    reg = CollectorRegistry()
    m = install_metrics(registry=reg)
    try:
        assert install_metrics(registry=reg) is m
        assert _bgmetrics.active is m and _db_hooks.observer is m
    finally:
        uninstall_metrics()
    assert _bgmetrics.active is None and _db_hooks.observer is None
    assert list(reg.collect()) == []


@pytest.mark.misuse_ok
def test_label_cap_folds_into_other(metrics: Metrics) -> None:
    """Past ``label_cap`` label sets, new block names count under ``__other__``, reported once."""
    uninstall_metrics()
    m = install_metrics(registry=CollectorRegistry(), label_cap=3)
    before = _misuse.counts["label-cardinality"]
    with LoggingContext("req"):
        for i in range(6):
            with Measure(f"blk{i}"):
                pass
    names = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        if fam.name == "logcontext_block_count":
            names = {s.labels["block_name"]: s.value for s in fam.samples if s.name.endswith("_total")}
    assert names == {"blk0": 1, "blk1": 1, "blk2": 1, "__other__": 3}
    assert _misuse.counts["label-cardinality"] - before == 1


def scrape_values(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_background_process_metrics(metrics: Metrics) -> None:
    """Start count, in-flight gauge, usage added at each scrape, idle processes unchanged, final update."""
    busy, idle = LoggingContext("busy-1"), LoggingContext("idle-1")
    _bgmetrics.bg_started("busy", busy)
    _bgmetrics.bg_started("idle", idle)
    key = lambda n: (("name", n), ("server_name", "localhost"))  # noqa: E731
    busy.record_db_txn(0.5)
    v1 = scrape_values(metrics)
    assert v1[("logcontext_background_process_start_count_total", key("busy"))] == 1
    assert v1[("logcontext_background_process_in_flight_count", key("busy"))] == 1
    assert v1[("logcontext_background_process_db_txn_count_total", key("busy"))] == 1
    assert ("logcontext_background_process_db_txn_count_total", key("idle")) not in v1
    busy.record_db_txn(0.25)
    v2 = scrape_values(metrics)
    assert v2[("logcontext_background_process_db_txn_count_total", key("busy"))] == 2
    assert v2[("logcontext_background_process_db_txn_duration_seconds_total", key("busy"))] == 0.75
    busy.record_event_fetch(4)
    _bgmetrics.bg_finished("busy", busy)
    v3 = scrape_values(metrics)
    assert v3[("logcontext_background_process_evt_db_fetch_count_total", key("busy"))] == 4
    assert ("logcontext_background_process_in_flight_count", key("busy")) not in v3
    assert v3[("logcontext_background_process_in_flight_count", key("idle"))] == 1
    _bgmetrics.bg_finished("idle", idle)


def test_bg_hooks_are_noops_without_metrics() -> None:
    """Without ``install_metrics`` the hooks do nothing."""
    assert _bgmetrics.active is None
    _bgmetrics.bg_started("x", LoggingContext("x-1"))
    _bgmetrics.bg_finished("x", LoggingContext("x-1"))


def test_core_counters_per_thread_cpu_and_misuse(metrics: Metrics) -> None:
    """Per-thread attributed/unattributed CPU, pools collapsed; misuse reports by kind."""

    def work() -> None:
        with LoggingContext("t"):
            sum(range(20000))

    threads = [threading.Thread(target=work, name=f"worker-{i}_1") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with LoggingContext("main"):
        sum(range(20000))
    v = scrape_values(metrics)
    threads_seen = {dict(k)["thread"] for (n, k) in v if n == "logcontext_cpu_attributed_seconds_total"}
    assert "worker" in threads_seen and "MainThread" in threads_seen
    assert not any(t.startswith("worker-") for t in threads_seen)
    assert v[("logcontext_context_late_cpu_seconds_total", ())] >= 0
    assert v[("logcontext_clock_regressions_total", ())] >= 0
    assert ("logcontext_misuse_reports_total", (("kind", "leak"),)) in v


def test_db_observer_feeds_families(metrics: Metrics) -> None:
    """The database observer hook fills the per-desc counters and histograms."""
    pool = SimpleNamespace(name="main", server_name="hs")
    obs = _db_hooks.observer
    assert obs is metrics
    obs.transaction(pool, "get_user", 0.25, 1, True)  # type: ignore[arg-type]
    obs.transaction(pool, "get_user", 0.25, 2, True)  # type: ignore[arg-type]
    obs.retry(pool, "get_user")  # type: ignore[arg-type]
    obs.scheduled(pool, 0.01)  # type: ignore[arg-type]
    obs.query(pool, "SELECT", 0.002)  # type: ignore[arg-type]
    v = scrape_values(metrics)
    k = (("desc", "get_user"), ("server_name", "hs"))
    assert v[("logcontext_db_transaction_count_total", k)] == 2
    assert v[("logcontext_db_transaction_duration_seconds_total", k)] == 0.5
    assert v[("logcontext_db_transaction_retries_total", k)] == 1
    assert v[("logcontext_db_schedule_time_seconds_count", (("server_name", "hs"),))] == 1
    assert v[("logcontext_db_query_time_seconds_count", (("server_name", "hs"), ("verb", "SELECT")))] == 1


def test_import_logcontext_does_not_import_prometheus() -> None:
    """``import logcontext`` (and Measure) never loads prometheus_client."""
    code = (
        "import sys, logcontext\n"
        "from logcontext import Measure, LoggingContext\n"
        "with LoggingContext('x'), Measure('b'): pass\n"
        "import logcontext.web, logcontext.structlog\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus'\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp'\n"
        "assert 'structlog' not in sys.modules, 'structlog'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
