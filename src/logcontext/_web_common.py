"""Request state shared by the ASGI and aiohttp integrations and ``@request_handler``."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from logcontext import ContextRequest, ContextResourceUsage, LoggingContext, _config

from . import _bgmetrics
from ._access import access_logger, access_values, check_access_line_format
from ._redact import DEFAULT_REDACT, redact_uri

__all__ = [
    "DEFAULT_QUIET_PATHS",
    "RequestState",
    "WebOptions",
    "current_request_state",
    "next_request_id",
]

logger = logging.getLogger("logcontext.web")

DEFAULT_QUIET_PATHS: frozenset[str] = frozenset({"/health"})
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_counter = itertools.count(1)
_monotonic = time.monotonic
_time = time.time
_ZERO_USAGE = ContextResourceUsage()
_DEBUG = logging.DEBUG
_INFO = logging.INFO

#: The request being handled in this ``Context`` (set by the integrations).
_CURRENT: ContextVar[RequestState | None] = ContextVar("logcontext_web_request", default=None)

TraceOrigin = Callable[[Mapping[str, str]], tuple[str | None, bool]]
"""``hook(headers) -> (origin, authenticated)`` deciding whether inbound trace context may parent."""


def next_request_id() -> str:
    """The next per-process request number, as a string."""
    return str(next(_counter))


def current_request_state() -> RequestState | None:
    """The state of the request handled in this ``Context``, if any."""
    return _CURRENT.get()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class WebOptions:
    """Validated options of the middlewares."""

    server_name: str | None = None
    site_tag: str = "asgi"
    request_id_header: str = "X-Request-ID"
    trust_request_id: bool = False
    echo_request_id: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    redact_params: tuple[str, ...] = DEFAULT_REDACT
    quiet_paths: frozenset[str] = DEFAULT_QUIET_PATHS
    access_line_format: str = "labelled"
    trace_origin: TraceOrigin | None = None

    @classmethod
    def build(
        cls,
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
    ) -> WebOptions:
        """Validate and normalise the keyword options (clear errors for bad input)."""
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise ValueError(f"server_name must be a non-empty str or None, got {server_name!r}")
        if not isinstance(site_tag, str) or not site_tag:
            raise ValueError(f"site_tag must be a non-empty str, got {site_tag!r}")
        if not isinstance(request_id_header, str) or not request_id_header.strip():
            raise ValueError(f"request_id_header must be a header name, got {request_id_header!r}")
        if isinstance(trusted_proxies, str):
            raise TypeError("trusted_proxies must be an iterable of addresses/networks, not a str")
        nets: list[Network] = []
        for p in trusted_proxies:
            try:
                nets.append(ipaddress.ip_network(p, strict=False))
            except (TypeError, ValueError) as e:
                raise ValueError(f"trusted_proxies: {p!r} is not an IP address or network") from e
        if isinstance(redact_params, str):
            raise TypeError("redact_params must be an iterable of parameter names, not a str")
        params = tuple(redact_params)
        redact_uri("/", params)  # validates the names
        if isinstance(quiet_paths, str):
            raise TypeError("quiet_paths must be an iterable of paths, not a str")
        quiet = frozenset(quiet_paths)
        for q in quiet:
            if not isinstance(q, str):
                raise TypeError(f"quiet_paths entries must be str, got {q!r}")
        check_access_line_format(access_line_format)
        if trace_origin is not None and not callable(trace_origin):
            raise TypeError("trace_origin must be callable or None")
        return cls(
            server_name=server_name,
            site_tag=site_tag,
            request_id_header=request_id_header.strip(),
            trust_request_id=bool(trust_request_id),
            echo_request_id=bool(echo_request_id),
            trusted_proxies=tuple(nets),
            redact_params=params,
            quiet_paths=quiet,
            access_line_format=access_line_format,
            trace_origin=trace_origin,
        )

    def choose_request_id(self, inbound: str | None) -> tuple[str, str | None]:
        """``(id, echoed)``: the inbound id if trusted and valid, else a counter value."""
        if self.trust_request_id and inbound is not None:
            inbound = inbound.strip()
            if _REQUEST_ID_RE.fullmatch(inbound):
                return inbound, inbound
        return next_request_id(), None

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer, or the ``X-Forwarded-For`` client when the peer is a trusted proxy."""
        if not peer:
            return "-"
        if not self.trusted_proxies or not forwarded_for or not self._trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop if _is_ip(hop) else peer
        return hops[0] if hops and _is_ip(hops[0]) else peer

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)


def _is_ip(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


class RequestState:
    """One request's bookkeeping: timings, status, bytes, servlet, metrics.

    Slotted, every field written once by ``_setup`` (one call, positional): reads on the
    completion and metrics paths are then plain slot reads.
    """

    __slots__ = (
        "_end",
        "_finished",
        "_route",
        "_route_fn",
        "_usage",
        "bytes_sent",
        "cancelled",
        "completed",
        "ctx",
        "echo_id",
        "gone_at",
        "handler_finished",
        "logger",
        "method",
        "opts",
        "path",
        "received",
        "received_counted",
        "reported",
        "request",
        "response_sent",
        "response_started",
        "servlet",
        "status",
        "traced",
    )

    received: float  # monotonic; the wall-clock arrival is derived when a line needs it
    opts: WebOptions
    method: str
    path: str
    request: ContextRequest
    ctx: LoggingContext
    logger: logging.Logger
    echo_id: str | None
    servlet: str | None
    traced: bool
    handler_finished: float | None
    response_sent: float | None
    response_started: bool
    gone_at: float | None
    status: int | None
    bytes_sent: int
    completed: bool
    cancelled: bool
    received_counted: bool
    reported: ContextResourceUsage
    _route: Any
    _route_fn: Callable[[Any], str | None] | None
    _finished: bool  # finish() ran and the metrics are not recorded yet
    _end: float
    _usage: ContextResourceUsage | None  # the snapshot behind the access line, if one was written

    def __init__(
        self,
        opts: WebOptions,
        *,
        method: str,
        path: str,
        raw_uri: str,
        protocol: str,
        peer: str | None,
        headers_get: Callable[[str], str | None],
        scheme: str,
        route: Any = None,
        route_fn: Callable[[Any], str | None] | None = None,
    ) -> None:
        received = _monotonic()
        echo_id: str | None = None
        if opts.trust_request_id:
            rid, echo_id = opts.choose_request_id(headers_get(opts.request_id_header))
        else:
            rid = str(next(_counter))
        ip = opts.client_ip(peer, headers_get("X-Forwarded-For")) if opts.trusted_proxies else peer or "-"
        name = f"{method}-{rid}"
        _setup(
            self,
            opts,
            access_logger(scheme, opts.site_tag),
            received,
            method,
            path,
            ContextRequest(
                name,
                ip,
                opts.site_tag,
                method,
                redact_uri(raw_uri, opts.redact_params) if "?" in raw_uri else raw_uri,
                protocol,
                headers_get("User-Agent") or "-",
            ),
            echo_id,
            route,
            route_fn,
        )

    @property
    def request_id_value(self) -> str:
        """The value of the request-id response header."""
        return self.echo_id if (self.echo_id and self.opts.echo_request_id) else self.ctx.name

    @property
    def servlet_name(self) -> str:
        """The servlet label: decorator's, else the framework's route name, else ``unrouted``."""
        s = self.servlet
        if s is not None:
            return s
        fn = self._route_fn
        if fn is not None:
            try:
                r = fn(self._route)
            except Exception:
                r = None
            if r:
                return r
        return "unrouted"

    @property
    def server_name(self) -> str:
        """The ``server_name`` option, else the configured default."""
        return self.opts.server_name or _config.config.default_server_name

    @property
    def received_ts(self) -> float:
        """Wall-clock arrival time (derived from the monotonic one, so durations agree)."""
        return _time() - (_monotonic() - self.received)

    @property
    def status_code(self) -> str:
        """The metric/span status label: ``499`` if cancelled, ``0`` without a status."""
        if self.cancelled:
            return "499"
        status = self.status
        return "0" if status is None else str(status)

    # -- events ------------------------------------------------------------------------------

    def begin(self) -> None:
        """Inside the request context: arrival line, in-flight metrics."""
        if self.logger.isEnabledFor(_DEBUG):
            self.log_arrival()
        m = _bgmetrics.active
        if m is not None:
            m.request_started(self)

    def log_arrival(self) -> None:
        """The DEBUG "Received request" line (the caller checked the level)."""
        req = self.request
        self.logger.debug(
            "%s - %s - Received request: %s %s",
            req.ip_address,
            req.site_tag,
            self.method,
            req.url,
        )

    def set_servlet(self, servlet: str) -> None:
        """Set the servlet label (first ``@request_handler`` wins) and count the request."""
        if self.servlet is None:
            self.servlet = servlet
        self._count_received()

    def _count_received(self) -> None:
        if self.received_counted:
            return
        self.received_counted = True
        m = _bgmetrics.active
        if m is not None:
            m.request_received(self.method, self.servlet_name, self.server_name)

    def handler_done(self) -> None:
        """Mark "handler finished" (the first mark wins)."""
        if self.handler_finished is None:
            self.handler_finished = _monotonic()

    def client_gone(self) -> None:
        """The client disconnected before the response was complete."""
        if self.gone_at is None and not self.completed:
            self.gone_at = _monotonic()

    def sent_all(self) -> None:
        """The last byte of the response was handed to the transport."""
        if self.gone_at is None:
            self.completed = True
        self.response_sent = _monotonic()

    def count_body(self, size: int, total: int) -> None:
        """``on_body_write`` hook: count ``size`` body bytes (``total`` is unused)."""
        self.bytes_sent += size

    # -- completion --------------------------------------------------------------------------

    def finish(self, *, metrics: bool = True) -> None:
        """Inside the request context: access line, span name/attributes, request metrics.

        Nothing is formatted unless the access logger is enabled for the line's level. With
        ``metrics=False`` the caller records them with :meth:`record_metrics` once the context
        has exited, from the line's snapshot when a line was written, else from a read then.
        """
        handler_finished = self.handler_finished
        if handler_finished is None:
            handler_finished = self.handler_finished = _monotonic()
        end = self.response_sent if self.completed else None
        if end is None:
            end = self.gone_at
            if end is None:
                end = _monotonic()
        self._end = end
        self._finished = True
        level = _DEBUG if (self.method == "OPTIONS" or self.path in self.opts.quiet_paths) else _INFO
        lg = self.logger
        m = _bgmetrics.active
        enabled = lg.isEnabledFor(level)
        traced = self.traced
        if not (enabled or traced or m is not None):
            return  # nothing logged, traced or counted: no label, no snapshot
        if self.servlet is None:
            # Routing is over: resolve the label once for the line, the span and the metrics.
            self.servlet = self.servlet_name
        usage: ContextResourceUsage | None = None
        if enabled:
            usage = self._usage = self.ctx.get_resource_usage()
            try:
                self._log_access(lg, level, usage, handler_finished, end)
            except Exception:
                logger.exception("logcontext: failed to write the access line")
        if traced:
            _tracing_finish(self, self.status_code)
        if metrics and m is not None:
            self.record_metrics(usage)

    def record_metrics(self, usage: ContextResourceUsage | None = None) -> None:
        """Record the request metrics (after :meth:`finish`); ``usage``: a snapshot to reuse.

        Without one, the snapshot behind the access line is used when a line was written (the
        metrics then agree with the line, and no second read closes the sampling window);
        otherwise the context is read now.
        """
        m = _bgmetrics.active
        if m is None or not self._finished:
            return
        if usage is None:
            usage = self._usage
        self._finished = False  # once
        if self.servlet is None:
            self.servlet = self.servlet_name
        try:
            received = not self.received_counted
            self.received_counted = True
            m.request_finished(
                self,
                code=self.status_code,
                tag=self.ctx.tag,
                duration=self._end - self.received,
                size=self.bytes_sent,
                usage=usage,
                received=received,
            )
        except Exception:
            logger.exception("logcontext: failed to record request metrics")

    def _log_access(
        self,
        lg: logging.Logger,
        level: int,
        usage: ContextResourceUsage,
        handler_finished: float,
        end: float,
    ) -> None:
        req = self.request
        received = self.received
        cancelled = self.cancelled
        completed = self.completed and not cancelled
        proc = handler_finished - received
        send = end - handler_finished
        ts = _time() - (_monotonic() - received)
        line, access = access_values(
            ip=req.ip_address,
            site_tag=req.site_tag,
            requester=req.requester,
            authenticated_entity=req.authenticated_entity,
            method=self.method,
            uri=req.url,
            protocol=req.protocol,
            user_agent=req.user_agent,
            proc=proc,
            send=send,
            usage=usage,
            bytes_sent=self.bytes_sent,
            status=self.status,
            completed=completed,
            cancelled=cancelled,
            request_id=self.ctx.name,
            servlet=self.servlet_name,
            received_ts=ts,
            end_ts=ts + (end - received),
            fmt=self.opts.access_line_format,
        )
        lg.log(level, "%s", line, extra={"access": access})


def _setup(
    st: RequestState,
    opts: WebOptions,
    lg: logging.Logger,
    received: float,
    method: str,
    path: str,
    req: ContextRequest,
    echo_id: str | None,
    route: Any,
    route_fn: Callable[[Any], str | None] | None,
) -> None:
    """Write every field of a new ``st`` (its context is named after ``req.request_id``)."""
    st.received = received
    st.opts = opts
    st.method = method
    st.path = path
    st.request = req
    st.ctx = LoggingContext(req.request_id, server_name=opts.server_name, request=req)
    st.logger = lg
    st.echo_id = echo_id
    st._route = route
    st._route_fn = route_fn
    st.servlet = None
    st.traced = False
    st.handler_finished = None
    st.response_sent = None
    st.response_started = False
    st.gone_at = None
    st.status = None
    st.bytes_sent = 0
    st.completed = False
    st.cancelled = False
    st.received_counted = False
    st.reported = _ZERO_USAGE
    st._finished = False
    st._end = 0.0
    st._usage = None


# -- tracing integration ---------------------------------------------------------------------


def _tracing() -> Any:
    """The tracing API module if ``logcontext.tracing`` is loaded and enabled, else ``None``."""
    if "logcontext.tracing" not in sys.modules:
        return None
    try:
        from logcontext.tracing import _api

        return _api if _api.tracing_enabled() else None
    except Exception:
        return None


def tracing_loaded() -> bool:
    """Cheap pre-check: is ``logcontext.tracing`` imported at all?"""
    return "logcontext.tracing" in sys.modules


def start_server_span(st: RequestState, headers: Mapping[str, str]) -> Any:
    """Enter the request's server span (owned by ``st.ctx``) if tracing is enabled.

    Inbound trace context parents the span only for an allowed, authenticated origin
    (``trace_origin`` hook; default unauthenticated), else it becomes a link.
    Returns the entered scope (to exit) or ``None``.
    """
    tr = _tracing()
    if tr is None:
        return None
    try:
        origin: str | None = None
        authenticated = False
        hook = st.opts.trace_origin
        if hook is not None:
            origin, authenticated = hook(headers)
        parent = tr.extract(headers, origin=origin, authenticated=authenticated)
        links: list[Any] = []
        if parent is None:
            link = tr.extract_link(headers)
            if link is not None:
                links.append(link)
        path, _, query = st.request.url.partition("?")
        attrs: dict[str, Any] = {
            "http.request.method": st.method,
            "url.path": path,
            "client.address": st.request.ip_address,
            "user_agent.original": st.request.user_agent,
        }
        if query:
            attrs["url.query"] = query
        scope = tr.start_context_span(
            st.ctx,
            f"{st.method} {st.servlet_name}",
            parent=parent,
            links=links,
            attributes=attrs,
            kind="server",
        )
        scope.__enter__()
        return scope
    except Exception:
        logger.exception("logcontext: could not start the request span")
        return None


def response_trace_headers() -> dict[str, str]:
    """Trace headers to add to the response (``trace_id_header``), if tracing is enabled."""
    tr = _tracing()
    if tr is None:
        return {}
    out: dict[str, str] = {}
    try:
        tr.inject_response_headers(out)
    except Exception:
        logger.exception("logcontext: inject_response_headers failed")
    return out


def _tracing_finish(st: RequestState, code: str) -> None:
    """Name the request's own server span after the servlet and tag the outcome.

    Targets ``ctx.span`` directly (not the active span, which could be a nested one the
    handler left open).
    """
    span = st.ctx.span
    if span is None:
        return
    try:
        servlet = st.servlet_name
        span.update_name(f"{st.method} {servlet}")
        span.set_attribute("http.route", servlet)
        span.set_attribute("http.response.status_code", int(code))
    except Exception:
        logger.exception("logcontext: could not finish the request span")


def apply_force_tracing(requester: str | None) -> None:
    """``force_tracing_for`` support for ``set_requester``."""
    tr = _tracing()
    if tr is None:
        return
    try:
        tr.apply_force_tracing_for(requester)
    except Exception:
        logger.exception("logcontext: apply_force_tracing_for failed")
