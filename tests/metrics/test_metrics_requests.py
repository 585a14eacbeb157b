"""Request metrics on the hot path: bundled children, counts handed over at scrape (spec §7)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext import ContextResourceUsage, LoggingContext, _misuse
from logcontext._web_common import RequestState, WebOptions
from logcontext.metrics import Metrics, install_metrics, uninstall_metrics

P = "logcontext_http_server_"


def scrape_values(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Req:
    """A request state as the web integrations hand it over."""

    def __init__(self, servlet: str = "s", method: str = "GET") -> None:
        self.ctx = LoggingContext(f"{method}-1")
        self.method = method
        self.server_name = "hs"
        self.reported = ContextResourceUsage()
        self.servlet_name = servlet


def finish(m: Metrics, req: Req, code: str = "200", size: int = 5) -> None:
    m.request_received(req.method, req.servlet_name, req.server_name)
    m.request_finished(req, code=code, tag="", duration=0.02, size=size)


def mts(servlet: str = "s") -> tuple[tuple[str, str], ...]:
    return (("method", "GET"), ("server_name", "hs"), ("servlet", servlet), ("tag", ""))


def ms(servlet: str = "s") -> tuple[tuple[str, str], ...]:
    return (("method", "GET"), ("server_name", "hs"), ("servlet", servlet))


def test_counts_between_scrapes_all_reach_the_next_scrape(metrics: Metrics) -> None:
    """Requests finished between two scrapes are all in the second; none is counted twice."""
    for _ in range(3):
        finish(metrics, Req())
    v1 = scrape_values(metrics)
    assert v1[(P + "requests_received_total", ms())] == 3
    assert v1[(P + "response_count_total", mts())] == 3
    assert v1[(P + "response_size_total", mts())] == 15
    assert v1[(P + "responses_total", (("code", "200"), ("method", "GET"), ("server_name", "hs")))] == 3
    assert v1[(P + "response_time_seconds_count", (("code", "200"), *mts()))] == 3
    finish(metrics, Req())
    v2 = scrape_values(metrics)
    assert v2[(P + "response_count_total", mts())] == 4
    assert scrape_values(metrics)[(P + "response_count_total", mts())] == 4


def test_response_and_final_in_flight_usage_from_one_snapshot(metrics: Metrics) -> None:
    """The caller's usage snapshot feeds the response usage and the final in-flight difference."""
    req = Req()
    metrics.request_started(req)
    req.ctx.record_db_txn(0.5)
    scrape_values(metrics)  # reports 1 transaction in flight
    snap = ContextResourceUsage()
    snap.db_txn_count = 3
    snap.db_txn_duration_sec = 1.5
    snap.evt_db_fetch_count = 2
    metrics.request_finished(req, code="200", tag="", duration=0.1, size=0, usage=snap)
    v = scrape_values(metrics)
    assert v[(P + "response_db_txn_count_total", mts())] == 3
    assert v[(P + "response_evt_db_fetch_count_total", mts())] == 2
    assert v[(P + "in_flight_requests_db_txn_count_total", ms())] == 3
    assert v[(P + "in_flight_requests_db_txn_duration_seconds_total", ms())] == 1.5


@pytest.mark.misuse_ok
def test_past_label_cap_requests_still_counted() -> None:
    """Past ``label_cap`` bundles are not kept; counts still reach ``__other__``."""
    m = install_metrics(registry=CollectorRegistry(), label_cap=2)
    before = _misuse.counts.get("label-cardinality", 0)
    try:
        for i in range(5):
            finish(m, Req(servlet=f"s{i}"))
        v = scrape_values(m)
        total = sum(val for (n, _), val in v.items() if n == P + "response_count_total")
        assert total == 5
        assert v[(P + "response_count_total", mts("__other__"))] == 3
        assert _misuse.counts.get("label-cardinality", 0) > before
    finally:
        uninstall_metrics()


def test_received_counted_with_the_response_when_asked(metrics: Metrics) -> None:
    """``received=True`` counts the request in ``requests_received`` with its response, once."""
    metrics.request_finished(Req(), code="200", tag="", duration=0.01, size=0, received=True)
    metrics.request_finished(Req(), code="200", tag="", duration=0.01, size=0)
    v = scrape_values(metrics)
    assert v[(P + "requests_received_total", ms())] == 1
    assert v[(P + "response_count_total", mts())] == 2


def _state() -> RequestState:
    return RequestState(
        WebOptions.build(site_tag="t", server_name="hs"),
        method="GET",
        path="/",
        raw_uri="/",
        protocol="HTTP/1.1",
        peer="127.0.0.1",
        headers_get=lambda name: None,
        scheme="http",
    )


def test_metrics_recorded_once_after_the_context_exits(metrics: Metrics) -> None:
    """``finish(metrics=False)`` defers; ``record_metrics`` after the exit counts the request once."""
    st = _state()
    st.set_servlet("s")
    with st.ctx:
        st.begin()
        st.status = 200
        st.finish(metrics=False)
    assert scrape_values(metrics).get((P + "response_count_total", mts())) is None
    st.record_metrics()
    st.record_metrics()
    v = scrape_values(metrics)
    assert v[(P + "response_count_total", mts())] == 1
    assert v[(P + "requests_received_total", ms())] == 1


def test_finish_records_metrics_by_default(metrics: Metrics) -> None:
    """``finish()`` alone (the Twisted resource's path) records the metrics, once."""
    st = _state()
    st.set_servlet("s")
    with st.ctx:
        st.begin()
        st.status = 200
        st.finish()
    st.record_metrics()
    assert scrape_values(metrics)[(P + "response_count_total", mts())] == 1
