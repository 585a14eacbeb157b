"""Pure-ASGI request middleware (spec §9 "ASGI")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from logcontext import LoggingContext

from ._redact import DEFAULT_REDACT
from ._web_common import (
    _CURRENT,
    DEFAULT_QUIET_PATHS,
    RequestState,
    TraceOrigin,
    WebOptions,
    next_request_id,
    response_trace_headers,
    start_server_span,
    tracing_loaded,
)

__all__ = ["LogContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("logcontext.web")

_ERROR_BODY = b"Internal Server Error"


def _route_name(scope: Scope) -> str | None:
    route = scope.get("route")
    if route is not None:
        name = getattr(route, "name", None)
        if isinstance(name, str) and name:
            return name
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            return path
    return None


class LogContextMiddleware:
    """Run every ASGI request in its own parentless :class:`~logcontext.LoggingContext`.

    Pure ASGI (no ``BaseHTTPMiddleware``), so the application runs in the same task and
    its context changes are seen. Put it outermost so the request id reaches exception
    handlers. "Handler finished" is the ``http.response.start`` message, "response sent"
    the last body message; an ``http.disconnect`` before that logs ``!``, a cancelled
    application ``499!``. Unhandled exceptions are logged inside the request context and
    answered with a 500 when no response was started.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        server_name: str | None = None,
        site_tag: str = "asgi",
        request_id_header: str = "X-Request-ID",
        trust_request_id: bool = False,
        echo_request_id: bool = False,
        trusted_proxies: Iterable[str] = (),
        redact_params: Iterable[str] = DEFAULT_REDACT,
        quiet_paths: Iterable[str] = DEFAULT_QUIET_PATHS,
        access_line_format: str = "labelled",
        trace_origin: TraceOrigin | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"LogContextMiddleware needs an ASGI app, got {app!r}")
        self.app = app
        self.options = WebOptions.build(
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
        self._id_header = self.options.request_id_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            ctx = LoggingContext(f"WS-{next_request_id()}", server_name=self.options.server_name)
            with ctx:
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        opts = self.options
        raw_headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()
        traced = tracing_loaded()
        headers: dict[str, str] = {}
        if traced:
            # The tracing extractors want every header.
            for k, v in raw_headers:
                name = k.decode("latin-1").lower()
                if name not in headers:
                    headers[name] = v.decode("latin-1")

        def hget(name: str) -> str | None:
            if traced:
                return headers.get(name.lower())
            # ASGI header names are lowercase bytes: scan for the few we need.
            want = name.lower().encode("latin-1")
            for k, v in raw_headers:
                if k == want:
                    return v.decode("latin-1")
            return None

        raw_path = scope.get("raw_path")
        path = scope.get("path") or "/"
        uri = raw_path.decode("latin-1") if raw_path else path
        qs = scope.get("query_string") or b""
        if qs:
            uri = f"{uri}?{qs.decode('latin-1')}"
        client = scope.get("client")
        st = RequestState(
            opts,
            method=str(scope.get("method", "GET")).upper(),
            path=path,
            raw_uri=uri,
            protocol=f"HTTP/{scope.get('http_version', '1.1')}",
            peer=client[0] if client else None,
            headers_get=hget,
            scheme=str(scope.get("scheme", "http")),
            route=scope,
            route_fn=_route_name,
        )
        id_header = self._id_header

        async def wrapped_receive() -> Message:
            message = await receive()
            if message.get("type") == "http.disconnect":
                st.client_gone()
            return message

        async def wrapped_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                st.status = int(message.get("status", 200))
                st.handler_done()
                st.response_started = True
                out = [(k, v) for k, v in (message.get("headers") or ()) if k.lower() != id_header]
                out.append((id_header, st.request_id_value.encode("latin-1")))
                if st.traced:
                    for hk, hv in response_trace_headers().items():
                        out.append((hk.lower().encode("latin-1"), hv.encode("latin-1")))
                message = {**message, "headers": out}
                await send(message)
            elif kind == "http.response.body":
                body = message.get("body") or b""
                try:
                    await send(message)
                except OSError:
                    st.client_gone()
                    raise
                st.bytes_sent += len(body)
                if not message.get("more_body", False):
                    st.sent_all()
            else:
                await send(message)

        try:
            with st.ctx:
                token = _CURRENT.set(st)
                try:
                    st.begin()
                    scope_cm = start_server_span(st, headers) if traced else None
                    st.traced = scope_cm is not None
                    try:
                        try:
                            await self.app(scope, wrapped_receive, wrapped_send)
                        except asyncio.CancelledError:
                            st.cancelled = True
                            raise
                        except Exception:
                            st.handler_done()
                            logger.exception(
                                "Unhandled exception in request %s %s", st.method, st.request.url
                            )
                            if not st.response_started:
                                await self._send_500(wrapped_send)
                        finally:
                            st.handler_done()
                            st.finish(metrics=False)
                    finally:
                        if scope_cm is not None:
                            scope_cm.__exit__(None, None, None)
                finally:
                    _CURRENT.reset(token)
        finally:
            st.record_metrics()  # after the exit: the access line's snapshot, else the final figures

    @staticmethod
    async def _send_500(send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_ERROR_BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _ERROR_BODY, "more_body": False})
        except Exception:
            logger.debug("could not send the 500 response", exc_info=True)
