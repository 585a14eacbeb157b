"""aiohttp request middleware (spec §9 "aiohttp"); imports aiohttp when built."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, web
from multidict import istr

from logcontext import ContextRequest

from . import _bgmetrics
from ._access import access_logger
from ._redact import DEFAULT_REDACT, redact_uri
from ._web_common import (
    _CURRENT,
    DEFAULT_QUIET_PATHS,
    RequestState,
    TraceOrigin,
    WebOptions,
    _counter,
    _setup,
    response_trace_headers,
    start_server_span,
)

__all__ = ["logcontext_middleware"]

logger = logging.getLogger("logcontext.web")
_TRACING_MODULE = "logcontext.tracing"
_monotonic = time.monotonic
_modules = sys.modules
_DEBUG = logging.DEBUG
_INFO = logging.INFO
_MISSING: Any = object()
_new_object = object.__new__
_UA = istr("User-Agent")
_XFF = istr("X-Forwarded-For")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    name = route.name
    if name:
        return name
    resource = route.resource
    if resource is not None:
        return resource.canonical
    return None


def _protocol(version: HttpVersion) -> str:
    return "HTTP/1.0" if version == HttpVersion10 else f"HTTP/{version.major}.{version.minor}"


def _error_response(exc: web.HTTPException) -> web.Response:
    return web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)


def logcontext_middleware(
    *,
    server_name: str | None = None,
    site_tag: str = "aiohttp",
    request_id_header: str = "X-Request-ID",
    trust_request_id: bool = False,
    echo_request_id: bool = False,
    trusted_proxies: Iterable[str] = (),
    redact_params: Iterable[str] = DEFAULT_REDACT,
    quiet_paths: Iterable[str] = DEFAULT_QUIET_PATHS,
    access_line_format: str = "labelled",
    trace_origin: TraceOrigin | None = None,
) -> Any:
    """An aiohttp middleware running every request in its own parentless logging context.

    Put it first in ``middlewares`` (outermost). "Handler finished" is when the handler
    returns; the middleware then prepares the response and writes EOF itself, so the send
    time is measured. ``HTTPException`` is turned into its response and other exceptions
    into a 500, logged inside the request context. A cancelled handler (aiohttp's
    ``handler_cancellation=True`` on disconnect) logs ``499!``.
    """
    opts = WebOptions.build(
        server_name=server_name,
        site_tag=site_tag,
        request_id_header=request_id_header,
        trust_request_id=trust_request_id,
        echo_request_id=echo_request_id,
        trusted_proxies=trusted_proxies,
        redact_params=redact_params,
        quiet_paths=quiet_paths,
        access_line_format=access_line_format,
        trace_origin=trace_origin,
    )

    # Everything that is the same for every request, resolved once.
    id_header = istr(opts.request_id_header)  # case-folded once, not per response
    echo = opts.echo_request_id
    trust = opts.trust_request_id
    proxies = opts.trusted_proxies
    redact = opts.redact_params
    site_tag = opts.site_tag
    loggers = {s: access_logger(s, site_tag) for s in ("http", "https")}
    route_name = _route_name

    @web.middleware
    async def logcontext_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        received = _monotonic()
        method = request.method
        headers = request.headers
        echo_id: str | None = None
        if trust:
            rid, echo_id = opts.choose_request_id(headers.get(id_header))
        else:
            rid = str(next(_counter))
        peer = request.remote
        ip = opts.client_ip(peer, headers.get(_XFF)) if proxies else peer or "-"
        raw = request.raw_path
        q = raw.find("?")
        version = request.version
        scheme = request.scheme
        lg = loggers.get(scheme) or access_logger(scheme, site_tag)
        name = f"{method}-{rid}"
        st: RequestState = _new_object(RequestState)
        _setup(
            st,
            opts,
            lg,
            received,
            method,
            raw if q < 0 else raw[:q],
            ContextRequest(
                name,
                ip,
                site_tag,
                method,
                raw if q < 0 else redact_uri(raw, redact),
                "HTTP/1.1" if version == HttpVersion11 else _protocol(version),
                headers.get(_UA) or "-",
            ),
            echo_id,
            request,
            route_name,
        )
        ctx = st.ctx
        writer = request.writer
        previous = getattr(writer, "on_body_write", _MISSING)
        counting = previous is not _MISSING
        if counting:
            # Streamed bodies are counted as written; a bound method unless chaining.
            writer.on_body_write = st.count_body if previous is None else _chain(st, previous)

        try:
            with ctx:
                token = _CURRENT.set(st)
                scope_cm = None
                try:
                    if lg.isEnabledFor(_DEBUG):
                        st.log_arrival()
                    m = _bgmetrics.active
                    if m is not None:
                        m.request_started(st)
                    if _TRACING_MODULE in _modules:
                        scope_cm = start_server_span(st, headers)
                        st.traced = scope_cm is not None
                    # The handler and the send, inline (no extra coroutine per request).
                    try:
                        resp: web.StreamResponse = await handler(request)
                    except web.HTTPException as exc:
                        resp = _error_response(exc)
                    except asyncio.CancelledError:
                        st.cancelled = True
                        st.client_gone()
                        raise
                    except Exception:
                        st.handler_done()
                        logger.exception("Unhandled exception in request %s %s", method, st.request.url)
                        resp = web.Response(status=500, text="500 Internal Server Error")
                    if st.handler_finished is None:
                        st.handler_finished = _monotonic()
                    try:
                        prepared = resp.prepared
                    except AttributeError:
                        logger.error("Web handler returned %r instead of a response", resp)
                        resp = web.Response(status=500, text="500 Internal Server Error")
                        prepared = False
                    st.status = resp.status
                    if not prepared:
                        resp.headers[id_header] = echo_id if (echo_id and echo) else ctx.name
                        if st.traced:
                            for k, v in response_trace_headers().items():
                                resp.headers[k] = v
                    st.response_started = True
                    try:
                        await resp.prepare(request)
                        await resp.write_eof()
                    except asyncio.CancelledError:
                        st.cancelled = True
                        st.client_gone()
                        raise
                    except ConnectionError:
                        # Client gone while sending (aiohttp raises ClientConnectionResetError, a
                        # ConnectionResetError); aiohttp's own finish step sees the same and logs it.
                        st.client_gone()
                        if not counting:
                            st.bytes_sent = 0
                        return resp
                    if not counting:
                        length = resp.content_length
                        st.bytes_sent = length if length is not None else resp.body_length
                    if st.gone_at is None:
                        st.completed = True
                    st.response_sent = _monotonic()
                    return resp
                finally:
                    try:
                        # INFO disabled implies DEBUG disabled: no line at either level.
                        if st.traced or _bgmetrics.active is not None or lg.isEnabledFor(_INFO):
                            st.finish(metrics=False)
                    finally:
                        if scope_cm is not None:
                            scope_cm.__exit__(None, None, None)
                        _CURRENT.reset(token)
                        if counting:
                            writer.on_body_write = previous  # breaks the writer -> state cycle
        finally:
            if _bgmetrics.active is not None:
                st.record_metrics()  # after the exit: the access line's snapshot, else the final figures

    return logcontext_mw


def _chain(st: RequestState, previous: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """An ``on_body_write`` hook counting for ``st`` and then calling the one already set."""

    def on_body_write(size: int, total: int) -> None:
        st.bytes_sent += size
        previous(size, total)

    return on_body_write
