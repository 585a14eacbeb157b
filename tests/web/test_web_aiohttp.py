"""The aiohttp middleware against a real aiohttp server on loopback (spec §5.2, §7, §9)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

import httpx
import pytest
from _scrape import samples, value
from _servers import RecordCollector, aiohttp_server, raw_request
from aiohttp import web

from logcontext import Measure, current_context
from logcontext.metrics import Metrics, metrics_handler
from logcontext.web import logcontext_middleware, request_handler, set_requester

F = r"\d+\.\d{3}"  # a non-negative float with 3 decimals
SF = r"-?\d+\.\d{3}"


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


STATE = web.AppKey("state", dict)


def make_app(**opts: Any) -> web.Application:
    state: dict[str, Any] = {}

    @request_handler("hello")
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    @request_handler("who")
    async def who(request: web.Request) -> web.Response:
        set_requester(request.query.get("r"), request.query.get("e"))
        return web.Response(text="ok")

    @request_handler("boom")
    async def boom(request: web.Request) -> web.Response:
        state["boom_ctx"] = current_context().name
        raise ValueError("boom")

    @request_handler("missing")
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    @request_handler("slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return web.Response(text="late")

    @request_handler("work", tag="work_tag")
    async def work(request: web.Request) -> web.Response:
        n = int(request.query["n"])
        ctx = current_context()
        for _ in range(n):
            ctx.record_db_txn(0.001)
            await asyncio.sleep(0.002)
        ctx.record_event_fetch(n)
        with Measure("work_block"):
            await asyncio.sleep(0)
        return web.Response(text=str(n))

    @request_handler("burn")
    async def burner(request: web.Request) -> web.Response:
        ev = state.setdefault("release", asyncio.Event())
        while not ev.is_set():
            burn(0.01)
            await asyncio.sleep(0.01)
        return web.Response(text="burnt")

    async def release(request: web.Request) -> web.Response:
        state.setdefault("release", asyncio.Event()).set()
        return web.Response(text="released")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[logcontext_middleware(**opts)])
    app[STATE] = state
    app.router.add_get("/hello", hello)
    app.router.add_route("OPTIONS", "/hello", hello)
    app.router.add_get("/who", who)
    app.router.add_get("/boom", boom)
    app.router.add_get("/missing", missing)
    app.router.add_get("/slow", slow)
    app.router.add_get("/work", work)
    app.router.add_get("/burn", burner)
    app.router.add_get("/release", release)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_handler())
    return app


def test_access_line_golden_fields_and_request_id(records: RecordCollector) -> None:
    """One labelled access line with redacted URI, who=None, bytes, status and matching request id."""
    with aiohttp_server(make_app(site_tag="client")) as base:
        r = httpx.get(f"{base}/hello?access_token=secret&x=1", headers={"User-Agent": "ua/1"})
        assert r.status_code == 200
        rid = r.headers["X-Request-ID"]
        assert re.fullmatch(r"GET-\d+", rid)
        (rec,) = records.wait_access(1)
    line = rec.getMessage()
    assert re.fullmatch(
        rf"127\.0\.0\.1 - client - \{{None\}} Processed request: {F}sec/{SF}sec "
        rf"ru=\({F}sec, {F}sec\) db=\(0\.000sec/0\.000sec/0\) 5B 200 "
        r'"GET /hello\?access_token=<redacted>&x=1 HTTP/1\.1" "ua/1" \[0 dbevts\]',
        line,
    ), line
    assert rec.levelno == logging.INFO
    assert rec.name == "logcontext.access.http.client"
    acc = rec.access  # type: ignore[attr-defined]
    assert acc["request_id"] == rid and acc["servlet"] == "hello"
    assert acc["status"] == 200 and acc["bytes_sent"] == 5 and acc["completed"] is True


def test_quiet_paths_and_options_log_at_debug(records: RecordCollector) -> None:
    """/health and OPTIONS requests log their access line at DEBUG, others at INFO."""
    with aiohttp_server(make_app()) as base:
        httpx.get(f"{base}/health")
        httpx.options(f"{base}/hello")
        httpx.get(f"{base}/hello")
        recs = records.wait_access(3)
    levels = {r.access["uri"] + " " + r.access["method"]: r.levelno for r in recs}  # type: ignore[attr-defined]
    assert levels == {
        "/health GET": logging.DEBUG,
        "/hello OPTIONS": logging.DEBUG,
        "/hello GET": logging.INFO,
    }


def test_requester_and_puppeting(records: RecordCollector) -> None:
    """``set_requester`` shows ``{requester}``, or ``{entity|requester}`` when they differ."""
    with aiohttp_server(make_app()) as base:
        httpx.get(f"{base}/who", params={"r": "@alice:hs"})
        records.wait_access(1)
        httpx.get(f"{base}/who", params={"r": "@alice:hs", "e": "@admin:hs"})
        recs = records.wait_access(2)
    assert "{@alice:hs} Processed request" in recs[0].getMessage()
    assert "{@admin:hs|@alice:hs} Processed request" in recs[1].getMessage()


def test_redaction_over_http(records: RecordCollector) -> None:
    """Repeated, percent-encoded and client_secret parameters are redacted; malformed queries whole."""
    with aiohttp_server(make_app()) as base:
        raw_request(base, "/hello?access_token=a&x=%41&access_token=b&access%5Ftoken=c&client_secret=d")
        records.wait_access(1)
        raw_request(base, "/hello?%ZZ&access_token=a")
        recs = records.wait_access(2)
    assert recs[0].access["uri"] == (  # type: ignore[attr-defined]
        "/hello?access_token=<redacted>&x=%41&access_token=<redacted>"
        "&access%5Ftoken=<redacted>&client_secret=<redacted>"
    )
    assert recs[1].access["uri"] == "/hello?<redacted>"  # type: ignore[attr-defined]
    assert all("=a" not in r.getMessage() for r in records.named("logcontext"))


def test_exception_logged_in_context_and_counted(records: RecordCollector, metrics: Metrics) -> None:
    """An unhandled exception gives a 500, an ERROR record inside the request context, a 500 line."""
    app = make_app()
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                seen.append(current_context().name)

    cap = Capture()
    logging.getLogger("logcontext.web").addHandler(cap)
    try:
        with aiohttp_server(app) as base:
            r = httpx.get(f"{base}/boom")
            m = httpx.get(f"{base}/missing")
            recs = records.wait_access(2)
            text = httpx.get(f"{base}/metrics").text
    finally:
        logging.getLogger("logcontext.web").removeHandler(cap)
    assert r.status_code == 500 and m.status_code == 404
    rid = r.headers["X-Request-ID"]
    assert app[STATE]["boom_ctx"] == rid
    assert seen == [rid]
    assert " 500 " in recs[0].getMessage() and " 404 " in recs[1].getMessage()
    smp = samples(text)
    assert value(smp, "logcontext_http_server_responses_total", code="500") == 1
    assert value(smp, "logcontext_http_server_responses_total", code="404") == 1
    assert value(smp, "logcontext_http_server_response_count_total", servlet="boom") == 1


def test_client_disconnect_logs_bang(records: RecordCollector, metrics: Metrics) -> None:
    """A client gone before the response is sent: the line still appears, with ``200!``."""
    with aiohttp_server(make_app()) as base:
        raw_request(base, "/slow?s=0.3", close_after_s=0.05)
        (rec,) = records.wait_access(1)
    line = rec.getMessage()
    assert re.search(r' 200! "GET /slow\?s=0\.3 HTTP/1\.1"', line), line
    assert rec.access["completed"] is False  # type: ignore[attr-defined]


def test_cancelled_handler_logs_499(records: RecordCollector, metrics: Metrics) -> None:
    """With handler cancellation on disconnect, the line says ``499!`` and the metrics count 499."""
    with aiohttp_server(make_app(), handler_cancellation=True) as base:
        raw_request(base, "/slow?s=5", close_after_s=0.1)
        (rec,) = records.wait_access(1)
        text = httpx.get(f"{base}/metrics").text
    line = rec.getMessage()
    assert re.search(r' 0B 499! "GET /slow\?s=5 HTTP/1\.1"', line), line
    smp = samples(text)
    assert value(smp, "logcontext_http_server_responses_total", code="499") == 1


def test_request_id_header_trust_and_echo(records: RecordCollector) -> None:
    """A valid inbound id is used only when trusted, and echoed only with echo_request_id."""
    with aiohttp_server(make_app(trust_request_id=True, echo_request_id=True)) as base:
        ok = httpx.get(f"{base}/hello", headers={"X-Request-ID": "abc.123:x"})
        bad = httpx.get(f"{base}/hello", headers={"X-Request-ID": "no spaces!"})
        recs = records.wait_access(2)
    assert ok.headers["X-Request-ID"] == "abc.123:x"
    assert recs[0].access["request_id"] == "GET-abc.123:x"  # type: ignore[attr-defined]
    assert re.fullmatch(r"GET-\d+", bad.headers["X-Request-ID"])
    with aiohttp_server(make_app()) as base:
        untrusted = httpx.get(f"{base}/hello", headers={"X-Request-ID": "abc"})
    assert re.fullmatch(r"GET-\d+", untrusted.headers["X-Request-ID"])


def test_concurrent_requests_never_mix(records: RecordCollector, metrics: Metrics) -> None:
    """Eight interleaved requests each report exactly their own DB and event figures."""
    ns = [1, 2, 3, 4, 5, 6, 7, 8]

    async def drive(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as c:
            return await asyncio.gather(*(c.get(f"{base}/work", params={"n": n}) for n in ns))

    with aiohttp_server(make_app()) as base:
        responses = asyncio.run(drive(base))
        recs = records.wait_access(len(ns))
        text = httpx.get(f"{base}/metrics").text
    assert [r.text for r in responses] == [str(n) for n in ns]
    for rec in recs:
        acc = rec.access  # type: ignore[attr-defined]
        n = int(acc["uri"].split("=")[1])
        assert acc["db_txn_count"] == n and acc["evt_db_fetch_count"] == n
        assert rec.getMessage().endswith(f"[{n} dbevts]")
        assert f"db=({n * 0.001:.3f}sec/" not in rec.getMessage()  # sched stays 0
        assert f"/{n * 0.001:.3f}sec/{n})" in rec.getMessage()
    smp = samples(text)
    total = sum(ns)
    assert value(smp, "logcontext_http_server_response_db_txn_count_total", servlet="work") == total
    assert value(smp, "logcontext_http_server_response_evt_db_fetch_count_total", tag="work_tag") == total
    assert value(smp, "logcontext_block_count_total", block_name="work_block") == len(ns)


def test_metrics_in_flight_grow_across_scrapes(records: RecordCollector, metrics: Metrics) -> None:
    """A running request's CPU shows in the in-flight counters at each scrape, then in the response ones."""
    with aiohttp_server(make_app()) as base:
        done: list[httpx.Response] = []
        t = threading.Thread(target=lambda: done.append(httpx.get(f"{base}/burn", timeout=20)))
        t.start()
        try:
            deadline = time.monotonic() + 10
            first = 0.0
            while first <= 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                smp1 = samples(httpx.get(f"{base}/metrics").text)
                first = value(
                    smp1,
                    "logcontext_http_server_in_flight_requests_ru_utime_seconds_total",
                    servlet="burn",
                )
            assert first > 0
            assert value(smp1, "logcontext_http_server_in_flight_requests_count", servlet="burn") == 1
            second = first
            while second <= first and time.monotonic() < deadline:
                time.sleep(0.05)
                smp2 = samples(httpx.get(f"{base}/metrics").text)
                second = value(
                    smp2,
                    "logcontext_http_server_in_flight_requests_ru_utime_seconds_total",
                    servlet="burn",
                )
            assert second > first
        finally:
            httpx.get(f"{base}/release")
            t.join(20)
        records.wait_access(1)
        smp3 = samples(httpx.get(f"{base}/metrics").text)
    assert done and done[0].status_code == 200
    assert value(smp3, "logcontext_http_server_in_flight_requests_count", servlet="burn") == 0
    final = value(smp3, "logcontext_http_server_response_ru_utime_seconds_total", servlet="burn")
    assert final >= second
    assert value(smp3, "logcontext_http_server_requests_received_total", servlet="burn") == 1
    assert value(smp3, "logcontext_http_server_response_time_seconds_count", servlet="burn") == 1


def test_response_metrics_match_the_access_line(records: RecordCollector, metrics: Metrics) -> None:
    """The response counters report the CPU and DB figures of the access line's snapshot."""
    with aiohttp_server(make_app()) as base:
        with httpx.Client(timeout=10) as c:
            assert c.get(f"{base}/work", params={"n": 3}).status_code == 200
            records.wait_access(1)
            text = c.get(f"{base}/metrics").text
    (rec,) = [r for r in records.wait_access(1) if r.access["uri"].startswith("/work")]  # type: ignore[attr-defined]
    acc = rec.access  # type: ignore[attr-defined]
    smp = samples(text)
    cpu = value(smp, "logcontext_http_server_response_ru_utime_seconds_total", servlet="work")
    assert acc["ru_utime"] > 0
    assert abs(cpu - acc["ru_utime"]) <= 1e-6, (cpu, acc["ru_utime"])
    assert (
        value(smp, "logcontext_http_server_response_db_txn_count_total", servlet="work")
        == acc["db_txn_count"]
        == 3
    )


def test_dbevts_and_legacy_layout(records: RecordCollector) -> None:
    """The legacy layout drops ``ru=``/``db=`` labels; ``dbevts`` shows the event fetches."""
    with aiohttp_server(make_app(access_line_format="legacy", site_tag="legacy")) as base:
        httpx.get(f"{base}/work", params={"n": 2})
        (rec,) = records.wait_access(1)
    line = rec.getMessage()
    assert re.fullmatch(
        rf"127\.0\.0\.1 - legacy - \{{None\}} Processed request: {F}sec/{SF}sec "
        rf"\({F}sec, {F}sec\) \({F}sec/0\.002sec/2\) 1B 200 "
        r'"GET /work\?n=2 HTTP/1\.1" "python-httpx/[\d.]+" \[2 dbevts\]',
        line,
    ), line


def test_bad_options_are_rejected() -> None:
    """Invalid middleware options raise clear errors naming the option."""
    with pytest.raises(ValueError, match="access_line_format"):
        logcontext_middleware(access_line_format="fancy")
    with pytest.raises(ValueError, match="trusted_proxies"):
        logcontext_middleware(trusted_proxies=["not-an-ip"])
    with pytest.raises(TypeError, match="quiet_paths"):
        logcontext_middleware(quiet_paths="/health")
