"""Request handlers (spec §9): a decorator, a pure-ASGI middleware and an aiohttp middleware.

Every request runs in its own **parentless** :class:`~logcontext.LoggingContext` named
``f"{METHOD}-{id}"`` carrying a :class:`~logcontext.ContextRequest`; at completion the
integrations write the "Processed request" access line (spec §5.2), end the server span with
the request's usage and record the request metrics (when installed), also when the handler
raised or the client went away.

``aiohttp`` is imported only by :func:`logcontext_middleware`.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast, overload

from logcontext import ContextRequest, LoggingContext, current_context

from ._access import AccessRecord, log_access
from ._redact import DEFAULT_REDACT, redact_uri
from ._web_asgi import LogContextMiddleware
from ._web_common import (
    _CURRENT,
    DEFAULT_QUIET_PATHS,
    TraceOrigin,
    apply_force_tracing,
    next_request_id,
)

__all__ = [
    "DEFAULT_QUIET_PATHS",
    "DEFAULT_REDACT",
    "LogContextMiddleware",
    "logcontext_middleware",
    "request_handler",
    "set_requester",
]

P = ParamSpec("P")
R = TypeVar("R")


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
    """The aiohttp middleware; put it first in ``web.Application(middlewares=[...])``."""
    from ._web_aiohttp import logcontext_middleware as build

    return build(
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


def set_requester(requester: str | None, authenticated_entity: str | None = None) -> None:
    """Record who made the current request (shown as ``{who}`` in the access line).

    Fills the shared :class:`~logcontext.ContextRequest` of the current context and applies
    tracing's ``force_tracing_for``. Outside a request it does nothing.
    """
    if requester is not None and not isinstance(requester, str):
        raise TypeError(f"set_requester: requester must be a str or None, got {requester!r}")
    if authenticated_entity is not None and not isinstance(authenticated_entity, str):
        raise TypeError("set_requester: authenticated_entity must be a str or None")
    req = current_context().request
    if req is None:
        return
    req.requester = requester
    req.authenticated_entity = authenticated_entity
    apply_force_tracing(requester)


@overload
def request_handler(servlet: Callable[P, R], *, tag: str | None = None) -> Callable[P, R]: ...
@overload
def request_handler(
    servlet: str | None = None, *, tag: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def request_handler(servlet: Any = None, *, tag: str | None = None) -> Any:
    """Decorate a (sync or async) request handler.

    Sets the request's ``servlet`` (metric label and span name; default the function's
    ``__qualname__``) and its context's ``tag``, and marks "handler finished" when it returns.
    Without one of the middlewares it gives the call its own request context, logs an access
    line (status and size taken from the returned response when it has them) but cannot see
    the response being sent.
    """
    if callable(servlet):
        return request_handler(None, tag=tag)(servlet)
    if servlet is not None and (not isinstance(servlet, str) or not servlet):
        raise TypeError(f"request_handler: servlet must be a non-empty str, got {servlet!r}")
    if tag is not None and not isinstance(tag, str):
        raise TypeError(f"request_handler: tag must be a str, got {tag!r}")

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        name: str = servlet or fn.__qualname__
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                st = _CURRENT.get()
                if st is None or st.ctx.finished:
                    return await _standalone_async(afn, name, tag, args, kwargs)
                st.set_servlet(name)
                if tag is not None:
                    st.ctx.tag = tag
                try:
                    return await afn(*args, **kwargs)
                finally:
                    st.handler_done()

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            st = _CURRENT.get()
            if st is None or st.ctx.finished:
                return cast(R, _standalone_sync(fn, name, tag, args, kwargs))
            st.set_servlet(name)
            if tag is not None:
                st.ctx.tag = tag
            try:
                return fn(*args, **kwargs)
            finally:
                st.handler_done()

        return wrapper

    return decorator


# -- without a middleware --------------------------------------------------------------------


class _Standalone:
    """A request context made by ``@request_handler`` itself."""

    def __init__(self, servlet: str, tag: str | None, args: tuple[Any, ...]) -> None:
        req = next((a for a in args if hasattr(a, "method") and hasattr(a, "headers")), None)
        self.method = str(getattr(req, "method", "REQUEST")).upper()
        headers = getattr(req, "headers", {}) or {}
        uri = _uri_of(req)
        peer = getattr(req, "remote", None)
        client = getattr(req, "client", None)
        if peer is None and client is not None:
            peer = getattr(client, "host", None)
        self.servlet = servlet
        self.request = ContextRequest(
            request_id=f"{self.method}-{next_request_id()}",
            ip_address=str(peer or "-"),
            site_tag="handler",
            method=self.method,
            url=redact_uri(uri),
            protocol="HTTP/1.1",
            user_agent=str(headers.get("User-Agent") or headers.get("user-agent") or "-"),
        )
        self.ctx = LoggingContext(self.request.request_id, request=self.request, tag=tag or "")
        self.received = time.monotonic()

    def done(self, result: Any, exc: BaseException | None) -> None:
        proc = time.monotonic() - self.received
        usage = self.ctx.get_resource_usage()
        status = getattr(exc, "status", None) if exc is not None else None
        if exc is not None and status is None:
            status = 500
        if exc is None:
            status = getattr(result, "status", None) or getattr(result, "status_code", None)
        body = getattr(result, "body", None)
        req = self.request
        rec = AccessRecord(
            ip=req.ip_address,
            site_tag=req.site_tag,
            method=self.method,
            uri=req.url,
            protocol=req.protocol,
            user_agent=req.user_agent,
            requester=req.requester,
            authenticated_entity=req.authenticated_entity,
            processing_time=proc,
            send_time=0.0,
            ru_utime=usage.ru_utime,
            ru_stime=usage.ru_stime,
            db_sched_duration_sec=usage.db_sched_duration_sec,
            db_txn_duration_sec=usage.db_txn_duration_sec,
            db_txn_count=usage.db_txn_count,
            evt_db_fetch_count=usage.evt_db_fetch_count,
            bytes_sent=len(body) if isinstance(body, bytes | bytearray) else 0,
            status=status if isinstance(status, int) else None,
            completed=True,
            cancelled=False,
            request_id=self.ctx.name,
            servlet=self.servlet,
        )
        log_access(rec, scheme="http", quiet=self.method == "OPTIONS")


def _uri_of(req: Any) -> str:
    if req is None:
        return "-"
    raw = getattr(req, "raw_path", None)  # aiohttp
    if isinstance(raw, str):
        return raw
    url = getattr(req, "url", None)  # starlette
    if url is not None:
        path = getattr(url, "path", None)
        query = getattr(url, "query", None)
        if isinstance(path, str):
            return f"{path}?{query}" if query else path
    return "-"


async def _standalone_async(
    fn: Callable[..., Awaitable[Any]],
    servlet: str,
    tag: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    sa = _Standalone(servlet, tag, args)
    with sa.ctx:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            sa.done(None, exc)
            raise
        sa.done(result, None)
        return result


def _standalone_sync(
    fn: Callable[..., Any],
    servlet: str,
    tag: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    sa = _Standalone(servlet, tag, args)
    with sa.ctx:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            sa.done(None, exc)
            raise
        sa.done(result, None)
        return result
