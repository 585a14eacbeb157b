"""The pure-ASGI middleware under a real uvicorn server on loopback (spec §5.2, §7, §9)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import httpx
from _scrape import samples, value
from _servers import RecordCollector, raw_request, uvicorn_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from logcontext import current_context
from logcontext.metrics import Metrics, serve_metrics
from logcontext.web import LogContextMiddleware, request_handler, set_requester

F = r"\d+\.\d{3}"
SF = r"-?\d+\.\d{3}"


@request_handler("hello")
async def hello(request: Request) -> PlainTextResponse:
    if "r" in request.query_params:
        set_requester(request.query_params["r"])
    return PlainTextResponse("hello")


async def named(request: Request) -> PlainTextResponse:
    current_context().record_event_fetch(4)
    return PlainTextResponse("named")


@request_handler("boom")
async def boom(request: Request) -> PlainTextResponse:
    raise ValueError("boom")


@request_handler("stream")
async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"chunk{i};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def on_value_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"request": current_context().name}, status_code=500)


def starlette_app(**opts: Any) -> LogContextMiddleware:
    app = Starlette(
        routes=[
            Route("/hello", hello, methods=["GET", "OPTIONS"]),
            Route("/named", named, name="named_route"),
            Route("/boom", boom),
            Route("/stream", stream),
        ],
        exception_handlers={ValueError: on_value_error},
    )
    return LogContextMiddleware(app, **opts)


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: ``/hangup`` streams until the client leaves, ``/cancel`` is cancelled
    when it does, ``/raise`` raises before responding."""
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("raw failure")
    if path == "/hangup":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if path == "/cancel":
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.sleep(10)
        finally:
            watcher.cancel()
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_access_line_request_id_and_servlets(records: RecordCollector) -> None:
    """Labelled line with redaction and requester; servlet from decorator or route name."""
    with uvicorn_server(starlette_app(site_tag="asgi")) as base:
        r = httpx.get(f"{base}/hello?client_secret=s&r=@bob:hs&access_token=t", headers={"User-Agent": "ua"})
        n = httpx.get(f"{base}/named")
        u = httpx.get(f"{base}/nowhere")
        recs = records.wait_access(3)
    assert r.status_code == 200 and n.status_code == 200 and u.status_code == 404
    assert re.fullmatch(r"GET-\d+", r.headers["x-request-id"])
    line = recs[0].getMessage()
    assert re.fullmatch(
        rf"127\.0\.0\.1 - asgi - \{{@bob:hs\}} Processed request: {F}sec/{SF}sec "
        rf"ru=\({F}sec, {F}sec\) db=\(0\.000sec/0\.000sec/0\) 5B 200 "
        r'"GET /hello\?client_secret=<redacted>&r=@bob:hs&access_token=<redacted> HTTP/1\.1" '
        r'"ua" \[0 dbevts\]',
        line,
    ), line
    assert recs[0].access["request_id"] == r.headers["x-request-id"]  # type: ignore[attr-defined]
    assert [x.access["servlet"] for x in recs] == ["hello", "named_route", "unrouted"]  # type: ignore[attr-defined]
    assert recs[1].getMessage().endswith("[4 dbevts]")
    assert " 404 " in recs[2].getMessage()


def test_options_debug_and_streaming_logs_once(records: RecordCollector) -> None:
    """OPTIONS logs at DEBUG; a streamed response logs one line after its last chunk."""
    with uvicorn_server(starlette_app()) as base:
        httpx.options(f"{base}/hello")
        s = httpx.get(f"{base}/stream")
        recs = records.wait_access(2)
    assert recs[0].levelno == logging.DEBUG
    assert s.text == "chunk0;chunk1;chunk2;"
    assert len(records.access()) == 2
    assert recs[1].levelno == logging.INFO
    assert recs[1].access["bytes_sent"] == len(s.content)  # type: ignore[attr-defined]
    assert recs[1].access["completed"] is True  # type: ignore[attr-defined]


def test_request_id_visible_in_exception_handler(records: RecordCollector, metrics: Metrics) -> None:
    """The framework's exception handler runs inside the request context; the 500 is counted."""
    srv = serve_metrics(0)
    try:
        with uvicorn_server(starlette_app()) as base:
            r = httpx.get(f"{base}/boom")
            (rec,) = records.wait_access(1)
        text = httpx.get(f"http://127.0.0.1:{srv.server_port}/metrics").text
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.status_code == 500
    assert r.json()["request"] == r.headers["x-request-id"]
    assert " 500 " in rec.getMessage()
    smp = samples(text)
    assert value(smp, "logcontext_http_server_responses_total", code="500", method="GET") == 1
    assert value(smp, "logcontext_http_server_requests_received_total", servlet="boom") == 1


def test_response_metrics_match_the_access_line(records: RecordCollector, metrics: Metrics) -> None:
    """The response counters report the CPU and event figures of the access line's snapshot."""
    with uvicorn_server(starlette_app()) as base:
        assert httpx.get(f"{base}/named").status_code == 200
        (rec,) = records.wait_access(1)
        # The metrics are recorded just after the line, on the server's thread: wait for them.
        deadline = time.monotonic() + 10
        while True:
            smp = samples(__import__("prometheus_client").generate_latest(metrics.registry).decode())
            if value(smp, "logcontext_http_server_response_time_seconds_count", servlet="named_route"):
                break
            assert time.monotonic() < deadline, "response metrics were never recorded"
            time.sleep(0.01)
    acc = rec.access  # type: ignore[attr-defined]
    cpu = value(smp, "logcontext_http_server_response_ru_utime_seconds_total", servlet="named_route")
    assert acc["ru_utime"] > 0
    assert abs(cpu - acc["ru_utime"]) <= 1e-6, (cpu, acc["ru_utime"])
    fetches = value(smp, "logcontext_http_server_response_evt_db_fetch_count_total", servlet="named_route")
    assert fetches == acc["evt_db_fetch_count"] == 4


def test_raw_app_exception_gets_500_and_line(records: RecordCollector) -> None:
    """A bare app raising before responding: 500 sent by the middleware, logged in context."""
    with uvicorn_server(LogContextMiddleware(raw_app)) as base:
        r = httpx.get(f"{base}/raise")
        (rec,) = records.wait_access(1)
    assert r.status_code == 500
    errors = [x for x in records.named("logcontext.web") if x.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert re.search(r' 21B 500 "GET /raise HTTP/1\.1"', rec.getMessage()), rec.getMessage()


def test_disconnect_bang_and_cancelled_499(records: RecordCollector, metrics: Metrics) -> None:
    """``http.disconnect`` before the end logs ``200!``; a cancelled app logs ``499!``."""
    with uvicorn_server(LogContextMiddleware(raw_app)) as base:
        raw_request(base, "/hangup", close_after_s=0.2)
        (first,) = records.wait_access(1)
        raw_request(base, "/cancel", close_after_s=0.2)
        recs = records.wait_access(2)
    assert re.search(r' 4B 200! "GET /hangup HTTP/1\.1"', first.getMessage()), first.getMessage()
    assert re.search(r' 0B 499! "GET /cancel HTTP/1\.1"', recs[1].getMessage())
    assert recs[1].access["cancelled"] is True  # type: ignore[attr-defined]
    smp = samples(__import__("prometheus_client").generate_latest(metrics.registry).decode())
    assert value(smp, "logcontext_http_server_responses_total", code="499") == 1
    assert value(smp, "logcontext_http_server_responses_total", code="200") == 1


def test_concurrent_requests_never_mix(records: RecordCollector) -> None:
    """Concurrent requests on one uvicorn loop each report only their own event fetches."""

    async def work(scope: dict[str, Any], receive: Any, send: Any) -> None:
        n = int(scope["query_string"].decode().split("=")[1])
        for _ in range(n):
            current_context().record_event_fetch(1)
            await asyncio.sleep(0.002)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * n})

    async def drive(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as c:
            return await asyncio.gather(*(c.get(f"{base}/w?n={n}") for n in range(1, 9)))

    with uvicorn_server(LogContextMiddleware(work)) as base:
        rs = asyncio.run(drive(base))
        recs = records.wait_access(8)
    assert sorted(len(r.content) for r in rs) == list(range(1, 9))
    for rec in recs:
        acc = rec.access  # type: ignore[attr-defined]
        n = int(acc["uri"].split("=")[1])
        assert acc["evt_db_fetch_count"] == n and acc["bytes_sent"] == n
    assert len({r.access["request_id"] for r in recs}) == 8  # type: ignore[attr-defined]


def test_trusted_proxy_forwarded_for(records: RecordCollector) -> None:
    """X-Forwarded-For is believed only from a trusted proxy."""
    fwd = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
    with uvicorn_server(starlette_app(trusted_proxies=["127.0.0.0/8"])) as base:
        httpx.get(f"{base}/hello", headers=fwd)
        (rec,) = records.wait_access(1)
    assert rec.getMessage().startswith("203.0.113.7 - asgi - ")
    with uvicorn_server(starlette_app()) as base:
        httpx.get(f"{base}/hello", headers=fwd)
        recs = records.wait_access(2)
    assert recs[1].getMessage().startswith("127.0.0.1 - asgi - ")


async def test_websocket_scope_gets_context_without_access_line(records: RecordCollector) -> None:
    """A websocket scope runs in its own context ``WS-<n>``; lifespan passes through; no line."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(f"{scope['type']}:{current_context().name}")

    mw = LogContextMiddleware(app)

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        return None

    await mw({"type": "websocket", "path": "/ws", "headers": []}, nothing, ignore)
    await mw({"type": "lifespan"}, nothing, ignore)
    assert re.fullmatch(r"websocket:WS-\d+", seen[0]) and seen[1] == "lifespan:sentinel"
    assert records.access() == []
