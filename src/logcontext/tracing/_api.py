"""The backend-neutral tracing API: state, scopes, decorators, propagation, usage attributes.

The hot path when tracing is off is one module-global test. When on, every call into a backend is
guarded: a backend failure is logged once per operation and never raised into user code.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar, Unpack, cast, overload

from .. import _config, _hooks, _misuse
from .. import clock as _clock
from .._context import Figures, LoggingContext, PreserveLoggingContext, _usage_lock
from .._context import _var_get as _current_get
from .._context import child_context as _child_context
from .._context import enter_measured_child as _enter_measured_child
from .._context import exit_measured_child as _exit_measured_child
from .._ledger import arm_exact as _arm_exact
from .._ledger import in_progress as _in_progress
from ._base import (
    ACTIVATE_FAILED,
    NULL_SPAN,
    SPAN_KINDS,
    AttributeValue,
    Backend,
    BackendSpan,
    Span,
    SpanContext,
)

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger("logcontext.tracing")

F = TypeVar("F", bound=Callable[..., Any])
Links = Iterable["SpanContext | Span | tuple[SpanContext | Span, Mapping[str, AttributeValue]]"]

#: Baggage key used to force tracing of later spans (``ForceTracingSampler``).
FORCE_TRACING_BAGGAGE: Final = "logcontext-force-tracing"

# ----------------------------------------------------------------------------------------------
# Module state. ``_enabled`` is the flag every fast path tests.

_enabled: bool = False
_backend: Backend | None = None
_backend_name: str = "none"
_record_usage: bool = True
_trace_id_header: str | None = None
_allowlist: tuple[re.Pattern[str], ...] = ()
_force_for: frozenset[str] = frozenset()
_state_lock = threading.Lock()

#: Our scope marker: a scope sets it and resets it first on exit, so a foreign ``Context`` is
#: detected before any backend token is touched. Not used under a marker-free backend
#: (``Backend.marker_free``), whose plain token the scope resets first instead.
_SCOPE: ContextVar[_ScopeBase | None] = ContextVar("logcontext_tracing_scope", default=None)
#: A scope's marker under a marker-free backend (``Backend.marker_free``): entered, no token.
_ENTERED: Final[Any] = object()

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BACKENDS = ("otel", "opentracing", "noop")

_logged_errors: set[str] = set()


def _backend_error(operation: str) -> None:
    """Log a backend failure once per operation (never raises)."""
    if operation in _logged_errors:
        return
    _logged_errors.add(operation)
    logger.warning("tracing backend failed in %s; continuing untraced", operation, exc_info=True)


# ----------------------------------------------------------------------------------------------
# Setup


def init_tracing(
    backend: str = "otel",
    *,
    tracer_provider: Any = None,
    tracer: Any = None,
    service_name: str | None = None,
    propagation_allowlist: Iterable[str | re.Pattern[str]] = (),
    force_tracing_for: Iterable[str] = (),
    trace_id_header: str | None = None,
    record_usage: bool = True,
) -> None:
    """Choose and configure the tracing backend (``"otel"``, ``"opentracing"`` or ``"noop"``).

    ``tracer_provider``/``tracer`` default to the backend's global ones. ``propagation_allowlist``
    holds regexes matched with ``fullmatch`` against destinations and origins;
    ``force_tracing_for`` user ids whose requests are force-traced; ``trace_id_header`` the
    response header that carries the trace id (off when None); ``record_usage`` puts each owning
    context's resource usage on its span at its end.
    """
    global _enabled, _backend, _backend_name, _record_usage, _trace_id_header, _force_for
    if backend not in _BACKENDS:
        raise ValueError(f"init_tracing: backend must be one of {_BACKENDS}, not {backend!r}")
    if service_name is not None and not isinstance(service_name, str):
        raise TypeError(f"init_tracing: service_name must be a str, not {service_name!r}")
    if trace_id_header is not None and (
        not isinstance(trace_id_header, str) or not _HEADER_NAME.fullmatch(trace_id_header)
    ):
        raise ValueError(f"init_tracing: invalid trace_id_header {trace_id_header!r}")
    if isinstance(force_tracing_for, str):
        raise TypeError("init_tracing: force_tracing_for must be a collection of ids, not a str")
    force_for = frozenset(force_tracing_for)
    for user in force_for:
        if not isinstance(user, str):
            raise TypeError(f"init_tracing: force_tracing_for entries must be str, not {user!r}")
    allowlist = _compile_allowlist(propagation_allowlist)

    new: Backend
    if backend == "otel":
        from .otel import OtelBackend

        new = OtelBackend(tracer_provider=tracer_provider, tracer=tracer, service_name=service_name)
    elif backend == "opentracing":
        from .opentracing import OpenTracingBackend

        new = OpenTracingBackend(tracer=tracer, service_name=service_name)
    else:
        from .noop import NoopBackend

        new = NoopBackend()

    with _state_lock:
        global _allowlist
        _backend = new
        _backend_name = backend
        _record_usage = bool(record_usage)
        _trace_id_header = trace_id_header
        _force_for = force_for
        _allowlist = allowlist
        _hooks.span_ender = _end_context_span
        _enabled = backend != "noop"
        _hooks.trace_ids = _trace_ids if _enabled else None


def shutdown_tracing(timeout_s: float = 5.0) -> bool:
    """Stop tracing, flush and close the backend; return within ``timeout_s`` whatever happens.

    Returns True if the backend finished flushing in time. Safe inside a running event loop and
    after ``asyncio.run`` (jaeger-client's ``close()`` future never wakes a loop; it is polled).
    """
    global _enabled, _backend, _backend_name
    if not isinstance(timeout_s, int | float) or timeout_s < 0:
        raise ValueError(f"shutdown_tracing: timeout_s must be a number >= 0, not {timeout_s!r}")
    with _state_lock:
        backend = _backend
        _enabled = False
        _hooks.trace_ids = None
        _backend = None
        _backend_name = "none"
    if backend is None:
        return True
    done = threading.Event()
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(backend.shutdown(timeout_s))
        except Exception:
            _backend_error("shutdown")
        finally:
            done.set()

    worker = threading.Thread(target=run, name="logcontext-tracing-shutdown", daemon=True)
    worker.start()
    done.wait(timeout_s)
    return bool(result and result[0])


def tracing_enabled() -> bool:
    """True when a real backend is configured (not uninitialised, not ``noop``)."""
    return _enabled


def backend_name() -> str:
    """``"otel"``, ``"opentracing"``, ``"noop"`` or ``"none"`` (uninitialised)."""
    return _backend_name


# ----------------------------------------------------------------------------------------------
# Allow-list


def _compile_allowlist(patterns: Iterable[str | re.Pattern[str]]) -> tuple[re.Pattern[str], ...]:
    if isinstance(patterns, str | bytes):
        raise TypeError("propagation allow-list must be a collection of patterns, not a str")
    compiled: list[re.Pattern[str]] = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            compiled.append(pattern)
        elif isinstance(pattern, str):
            try:
                compiled.append(re.compile(pattern))
            except re.error as e:
                raise ValueError(f"invalid allow-list pattern {pattern!r}: {e}") from None
        else:
            raise TypeError(f"allow-list patterns must be str or re.Pattern, not {pattern!r}")
    return tuple(compiled)


def set_propagation_allowlist(patterns: Iterable[str | re.Pattern[str]]) -> None:
    """Replace the allow-list of destinations/origins (regexes, matched with ``fullmatch``)."""
    global _allowlist
    _allowlist = _compile_allowlist(patterns)


def is_allowed_destination(destination: str | bytes | None) -> bool:
    """True if ``destination`` fully matches an allow-list pattern; an empty list allows none."""
    if not destination or not _allowlist:
        return False
    if isinstance(destination, bytes):
        destination = destination.decode("ascii", "replace")
    return any(p.fullmatch(destination) for p in _allowlist)


# ----------------------------------------------------------------------------------------------
# Usage attributes (§6.2) and the core's span-ender hook


_cfg: Final = _config.config


def usage_attributes(ctx: LoggingContext) -> dict[str, AttributeValue]:
    """The §6.2 attributes for ``ctx``: name, server name, tag, inclusive CPU/DB/event usage.

    Every value is a ``str``, ``bool``, ``int`` or ``float`` (a non-``str`` server name or tag is
    converted), so backends may store the dict without validating it again. The figures are
    those ``ctx.get_resource_usage()`` returns, read without building a usage object.
    """
    with _usage_lock:
        u = ctx._u
        if u is None:
            ut = st = txn_s = sched_s = 0.0
            txn = evts = 0
        else:
            ut, st, txn, txn_s = u.ru_utime, u.ru_stime, u.db_txn_count, u.db_txn_duration_sec
            sched_s, evts = u.db_sched_duration_sec, u.evt_db_fetch_count
    if _clock._metering:
        sl = _in_progress(ctx)  # this thread's CPU not yet charged (after the copy above)
        if sl is not None:
            ut += sl[0] * 1e-9
            st += sl[1] * 1e-9
    return _figures_attributes(ctx, (ut, st, txn, txn_s, sched_s, evts))


def _figures_attributes(ctx: LoggingContext, figures: Figures) -> dict[str, AttributeValue]:
    """:func:`usage_attributes` from figures already read (see ``exit_measured_child``)."""
    ut, st, txn, txn_s, sched_s, evts = figures
    mode = _cfg.clock_mode
    x = ctx._extra
    a = ctx._ancestors
    if x is None and a:
        # A child reads its parent's (``LoggingContext.server_name``; the usual span child's
        # parent is a root without its own fields: the configured default).
        p = a[0]
        server = _cfg.default_server_name if p._extra is None and not p._ancestors else p.server_name
    else:
        server = ctx.server_name
    if type(server) is not str:
        server = str(server)
    attrs: dict[str, AttributeValue]
    if mode != "off":
        attrs = {
            "logcontext.name": ctx.name,
            "logcontext.server_name": server,
            "logcontext.cpu.clock": mode,
            "logcontext.cpu.user_s": ut,
            "logcontext.cpu.system_s": st,
            "logcontext.db.txn_count": txn,
            "logcontext.db.txn_s": txn_s,
            "logcontext.db.sched_s": sched_s,
            "logcontext.db.event_fetches": evts,
        }
    else:
        attrs = {
            "logcontext.name": ctx.name,
            "logcontext.server_name": server,
            "logcontext.db.txn_count": txn,
            "logcontext.db.txn_s": txn_s,
            "logcontext.db.sched_s": sched_s,
            "logcontext.db.event_fetches": evts,
        }
    if x is not None:
        # The tag and late usage live in the context's rarely set fields (no fields: neither).
        tag = x.tag
        if tag:
            attrs["logcontext.tag"] = tag if type(tag) is str else str(tag)
        if x.late_usage is not None:
            attrs["logcontext.late"] = True
    return attrs


def end_span_with_usage(span: Span, ctx: LoggingContext | None) -> None:
    """Put ``ctx``'s usage on ``span`` (if recording and enabled) and end it; never raises."""
    if isinstance(span, BackendSpan):
        if span._ended:
            return
        if ctx is not None and _record_usage:
            try:
                if span.is_recording():
                    span.set_usage(usage_attributes(ctx))
            except Exception:
                _backend_error("usage attributes")
        span._ended = True
        try:
            span._end()
        except Exception:
            _backend_error("end_span")
        return
    if ctx is not None and _record_usage:
        try:
            if span.is_recording():
                for key, value in usage_attributes(ctx).items():
                    span.set_attribute(key, value)
        except Exception:
            _backend_error("usage attributes")
    try:
        span.end()
    except Exception:
        _backend_error("end_span")


def _trace_ids() -> tuple[str, str] | None:
    """``logcontext._hooks.trace_ids``: hex ids of the active span for log records."""
    backend = _backend
    if not _enabled or backend is None:
        return None
    try:
        ids = backend.current_ids()
    except Exception:
        _backend_error("trace_ids")
        return None
    if ids is None:
        return None
    return f"{ids[0]:032x}", f"{ids[1]:016x}"


def _end_context_span(ctx: LoggingContext) -> None:
    """``logcontext._hooks.span_ender``: end the context's owned span with its usage."""
    span = ctx.span
    if span is not None:
        end_span_with_usage(span, ctx)


# ----------------------------------------------------------------------------------------------
# Scopes


class _NullScope:
    """The shared context manager returned while tracing is off.

    ``__enter__`` and ``__exit__`` are C callables, so the null path runs no Python frame for
    them (≈ 100 ns less per block). ``__enter__`` is ``next(repeat(NULL_SPAN)[, default])``:
    :data:`NULL_SPAN` whether it is called bare (``with``) or given the manager
    (``ExitStack``, ``type(cm).__enter__(cm)``). ``__exit__`` accepts any arguments and returns
    an empty (false) dict, so exceptions propagate. Neither binds to the instance (a builtin
    method; a ``staticmethod``).
    """

    __slots__ = ()

    __enter__: Callable[..., Span] = staticmethod(functools.partial(next, itertools.repeat(NULL_SPAN)))
    __exit__: Callable[..., object] = type.__prepare__

    async def __aenter__(self) -> Span:
        return NULL_SPAN

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NULL_SCOPE: Final = _NullScope()


def _record_error(span: BackendSpan, exc: BaseException | None) -> None:
    if exc is not None and isinstance(exc, Exception):
        try:
            span.record_exception(exc)
        except Exception:
            _backend_error("record_exception")


def _normalise_links(
    links: Links,
) -> list[tuple[SpanContext, Mapping[str, AttributeValue]]]:
    out: list[tuple[SpanContext, Mapping[str, AttributeValue]]] = []
    for link in links:
        attrs: Mapping[str, AttributeValue] = {}
        if isinstance(link, tuple):
            target, attrs = link
        else:
            target = link
        if isinstance(target, SpanContext):
            sc = target
        elif isinstance(target, BackendSpan) or hasattr(target, "context"):
            sc = target.context
        else:
            raise TypeError(f"start_span: links must be SpanContext or Span, not {target!r}")
        if sc.trace_id:
            out.append((sc, attrs))
    return out


class _ScopeBase:
    """Common machinery: start a span, activate it behind our marker, detach safely."""

    __slots__ = (
        "_attributes",
        "_backend",
        "_kind",
        "_links",
        "_marker",
        "_name",
        "_parent",
        "_root",
        "_token",
        "span",
    )

    def __init__(
        self,
        name: str,
        parent: SpanContext | Span | None,
        links: Sequence[tuple[SpanContext, Mapping[str, AttributeValue]]],
        attributes: Mapping[str, AttributeValue] | None,
        kind: str,
        root: bool,
    ) -> None:
        self._name = name
        self._parent = parent
        self._links = links
        self._attributes = attributes
        self._kind = kind
        self._root = root
        self._backend: Backend | None = None
        self.span: BackendSpan | None = None
        self._marker: Token[_ScopeBase | None] | None = None
        self._token: object = None

    def _start(self) -> BackendSpan | None:
        backend = _backend
        if backend is None or not _enabled:
            return None
        self._backend = backend
        parent = self._parent
        if parent is not None and not isinstance(parent, SpanContext | BackendSpan):
            parent = parent.context
        try:
            span = backend.start_span(
                self._name,
                parent=parent,
                root=self._root,
                links=self._links,
                attributes=self._attributes,
                kind=self._kind,
            )
        except Exception:
            _backend_error("start_span")
            return None
        self.span = span
        return span

    def _attach(self) -> None:
        """Set our marker, then activate the span in the backend."""
        span = self.span
        assert span is not None and self._backend is not None
        self._marker = _SCOPE.set(self)
        try:
            self._token = self._backend.activate(span)
        except Exception:
            self._token = None
            _backend_error("activate")

    def _misplaced_exit(self, error: Exception) -> None:
        """Report a marker reset that failed: a foreign ``Context`` (ValueError) or a reused token."""
        if isinstance(error, ValueError):
            _misuse.report(
                "foreign-exit",
                f"span scope {self._name!r} exited in a different contextvars.Context; "
                "span ended, backend context left alone",
                site=f"span:{self._name}",
                level=logging.DEBUG,
                can_raise=False,
            )
        else:
            _misuse.report(
                "double-exit", f"span scope {self._name!r} exited twice", site=f"span:{self._name}"
            )

    def _detach(self) -> bool:
        """Reset our marker first; only if that worked, deactivate in the backend.

        Returns False if the scope is exited in a foreign ``Context`` (reported as
        ``foreign-exit``) or twice (``double-exit``); the backend token is then left alone.
        """
        marker = self._marker
        if marker is None:
            return False
        self._marker = None
        if marker is _ENTERED:  # a marker-free backend: its plain token tells a foreign Context
            token, self._token = self._token, None
            if token is not None:
                try:
                    token.var.reset(token)  # type: ignore[attr-defined]
                except (ValueError, RuntimeError) as e:
                    self._misplaced_exit(e)
                    return False
                except Exception:
                    _backend_error("deactivate")
            return True
        try:
            _SCOPE.reset(marker)
        except (ValueError, RuntimeError) as e:
            self._misplaced_exit(e)
            return False
        token, self._token = self._token, None
        if token is not None and self._backend is not None:
            try:
                self._backend.deactivate(token)
            except Exception:
                _backend_error("deactivate")
        return True


class _SpanScope(_ScopeBase):
    """``start_span``: a span active for the block, its usage measured in a child context.

    ``__enter__``/``__exit__`` inline the base class steps (this is the per-span hot path).
    """

    __slots__ = ("_child", "_child_token", "_end_on_exit", "_plain", "_preserve", "_want_usage")

    def __init__(
        self,
        name: str,
        parent: SpanContext | Span | None,
        links: Sequence[tuple[SpanContext, Mapping[str, AttributeValue]]],
        attributes: Mapping[str, AttributeValue] | None,
        kind: str,
        root: bool,
        record_usage: bool,
        end_on_exit: bool,
        preserve: bool = False,
    ) -> None:
        self._name = name
        self._parent = parent
        self._links = links
        self._attributes = attributes
        self._kind = kind
        self._root = root
        self._backend = None
        self.span = None
        self._marker = None
        self._token = None
        self._want_usage = record_usage
        self._end_on_exit = end_on_exit
        self._preserve = preserve
        self._plain = False
        self._child: LoggingContext | None = None
        self._child_token: PreserveLoggingContext | None = None

    def __enter__(self) -> Span:
        if self.span is not None:
            raise RuntimeError(f"span scope {self._name!r} entered twice")
        backend = _backend
        if backend is None or not _enabled:
            return NULL_SPAN
        self._backend = backend
        if self._plain or (self._parent is None and not self._root and not self._links):
            # The common case: a child of the active span, started and activated in one call.
            try:
                if self._plain:
                    span, token = backend.start_active(self._name, None, "internal")
                else:
                    span, token = backend.start_active(self._name, self._attributes, self._kind)
            except Exception:
                _backend_error("start_span")
                return NULL_SPAN
            self.span = span
            # Our marker first (see ``_detach``); a marker-free backend's Context records the
            # span itself, and its token's reset tells a foreign Context.
            self._marker = _ENTERED if backend.marker_free else _SCOPE.set(self)
            if token is ACTIVATE_FAILED:
                _backend_error("activate")
            else:
                self._token = token
        else:
            parent = self._parent
            if parent is not None and not isinstance(parent, SpanContext | BackendSpan):
                parent = parent.context
            try:
                span = backend.start_span(
                    self._name,
                    parent=parent,
                    root=self._root,
                    links=self._links,
                    attributes=self._attributes,
                    kind=self._kind,
                )
            except Exception:
                _backend_error("start_span")
                return NULL_SPAN
            self.span = span
            # Our marker first, then the backend's activation (see ``_detach``).
            self._marker = _ENTERED if backend.marker_free else _SCOPE.set(self)
            try:
                self._token = backend.activate(span)
            except Exception:
                _backend_error("activate")
        if self._want_usage and _record_usage:
            try:
                recording = span.is_recording()
            except Exception:
                recording = False
            if recording:
                ctx = _current_get()
                if ctx:  # a LoggingContext (the sentinel is falsy)
                    if self._preserve:
                        self._child = _child_context(ctx)  # type: ignore[arg-type]  # truthy
                        self._enter_child()
                    else:
                        # armed: its figures final at its exit, no window close
                        self._child = _enter_measured_child(ctx)  # type: ignore[arg-type]
        return span

    def _enter_child(self) -> None:
        child = self._child
        assert child is not None
        if self._preserve:
            preserve = PreserveLoggingContext(child)
            preserve.__enter__()
            self._child_token = preserve
        else:
            child.__enter__()

    def _exit_child(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        child = self._child
        if child is None:
            return
        if self._preserve:
            preserve, self._child_token = self._child_token, None
            if preserve is not None:
                preserve.__exit__(exc_type, exc, tb)
        else:
            child.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        if span is None:
            return None
        if self._marker is None:
            # Already exited: a second exit must not touch anything.
            _misuse.report(
                "double-exit", f"span scope {self._name!r} exited twice", site=f"span:{self._name}"
            )
            return None
        if exc is not None:
            _record_error(span, exc)
        figures: Figures | None = None
        try:
            # ``_detach`` inlined: our marker first, the backend's token only if that worked.
            marker = self._marker
            self._marker = None
            if marker is _ENTERED:
                token = self._token
                if token is not None:
                    self._token = None
                    try:
                        token.var.reset(token)  # type: ignore[attr-defined]  # a plain token
                    except (ValueError, RuntimeError) as e:
                        self._misplaced_exit(e)
                    except Exception:
                        _backend_error("deactivate")
            else:
                try:
                    _SCOPE.reset(marker)  # a marker token
                except (ValueError, RuntimeError) as e:
                    self._misplaced_exit(e)  # the backend's context is left alone
                else:
                    token = self._token
                    if token is not None:
                        self._token = None
                        backend = self._backend
                        try:
                            if type(token) is Token and backend.plain_tokens:  # type: ignore[union-attr]
                                token.var.reset(token)
                            else:
                                backend.deactivate(token)  # type: ignore[union-attr]
                        except Exception:
                            _backend_error("deactivate")
            # The core handles a foreign Context for the child itself (``foreign-exit``).
            child = self._child
            if child is not None:
                if self._preserve:
                    self._exit_child(exc_type, exc, tb)
                else:
                    figures = _exit_measured_child(child, exc_type, exc, tb)
        finally:
            if not self._end_on_exit:
                self._apply_usage()
            elif not span._ended:
                child = self._child
                span._ended = True
                if child is not None and _record_usage:
                    # A child exists only for a span that was recording at its start.
                    attrs: dict[str, AttributeValue] | None
                    try:
                        attrs = (
                            usage_attributes(child)
                            if figures is None
                            else _figures_attributes(child, figures)
                        )
                    except Exception:
                        _backend_error("usage attributes")
                        attrs = None
                    try:
                        if attrs is None:
                            span._end()
                        else:
                            span._end_with_usage(attrs)
                    except Exception:
                        _backend_error("end_span")
                else:
                    try:
                        span._end()
                    except Exception:
                        _backend_error("end_span")
        return None

    def detach(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Leave the block: restore the contexts active before it, without ending the span."""
        self._detach()
        # The core handles a foreign Context for the child itself (``foreign-exit``).
        self._exit_child(exc_type, exc, tb)

    def reattach(self) -> None:
        """Make the span (and its usage context) active again, e.g. while awaiting its work."""
        if self.span is None or self._marker is not None:
            return
        self._attach()
        if self._child is not None:
            self._enter_child()

    def _apply_usage(self) -> None:
        span, child = self.span, self._child
        if span is None or child is None or not _record_usage or span.ended:
            return
        try:
            span.set_usage(usage_attributes(child))
        except Exception:
            _backend_error("usage attributes")

    def finish(self, exc: BaseException | None) -> None:
        """End the span with its usage, recording ``exc`` if given (idempotent, never raises)."""
        span = self.span
        if span is None or span.ended:
            return
        _record_error(span, exc)
        end_span_with_usage(span, self._child)


class _ContextSpanScope(_ScopeBase):
    """A span owned by ``ctx``: active for the block, ended with ``ctx``'s usage when it exits."""

    __slots__ = ("_after_start", "_ctx")

    def __init__(
        self,
        ctx: Any,
        name: str,
        parent: SpanContext | Span | None,
        links: Sequence[tuple[SpanContext, Mapping[str, AttributeValue]]],
        attributes: Mapping[str, AttributeValue] | None,
        kind: str,
        root: bool,
        after_start: Callable[[BackendSpan], None] | None = None,
    ) -> None:
        super().__init__(name, parent, links, attributes, kind, root)
        self._ctx = ctx if isinstance(ctx, LoggingContext) else None
        self._after_start = after_start

    def __enter__(self) -> Span:
        if self.span is not None:
            raise RuntimeError(f"span scope {self._name!r} entered twice")
        span = self._start()
        if span is None:
            return NULL_SPAN
        if self._after_start is not None:
            try:
                self._after_start(span)
            except Exception:
                _backend_error("after_start")
        ctx = self._ctx
        if ctx is not None:
            ctx.span = span
            ctx.end_span_on_exit = True
            if _record_usage:
                try:
                    recording = span.is_recording()
                except Exception:
                    recording = False
                if recording:
                    # The span gets ctx's usage at ctx's exit: if ctx is charged here and nothing
                    # switches until then, its figures are final at its exit (no window close).
                    _arm_exact(ctx)
        self._attach()
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        if span is None:
            return None
        _record_error(span, exc)
        same_context = self._detach()
        ctx = self._ctx
        if ctx is None or not same_context or ctx.finished:
            # No owner to end it, a foreign Context (the owner's exit will not reach the hook),
            # or the owner already exited: end it here, once.
            end_span_with_usage(span, ctx)
        return None


# ----------------------------------------------------------------------------------------------
# Public span helpers


class SpanOptions(TypedDict, total=False):
    """Keyword options of :func:`start_span`, each optional: ``parent=None``, ``links=()``,
    ``attributes=None``, ``kind="internal"``, ``root=False``, ``record_usage=True``,
    ``end_on_exit=True``.

    ``start_span(name, **options: Unpack[SpanOptions])`` type-checks each keyword; an unknown one
    raises ``TypeError`` at run time, whether tracing is on or off.
    """

    parent: SpanContext | Span | None
    links: Links
    attributes: Mapping[str, AttributeValue] | None
    kind: str
    root: bool
    record_usage: bool
    end_on_exit: bool


_OPTION_NAMES: Final = SpanOptions.__optional_keys__


def _bad_options(options: Mapping[str, object]) -> TypeError:
    unknown = sorted(k for k in options if k not in _OPTION_NAMES)
    return TypeError(f"start_span() got an unexpected keyword argument {unknown[0]!r}")


_new_object: Final = object.__new__


def start_span(name: str, **options: Unpack[SpanOptions]) -> Any:
    """Start a span and make it active for a ``with`` block; returns a context manager.

    Options (keyword only): ``parent=None``, ``links=()``, ``attributes=None``,
    ``kind="internal"``, ``root=False``, ``record_usage=True``, ``end_on_exit=True``. ``parent``
    defaults to the active span (``root=True`` ignores it); ``links`` are span contexts or spans,
    optionally paired with link attributes. With ``record_usage``, a recording span and a current
    logging context, the block runs in a child context named like its parent and the span
    receives that child's usage at its end. Off or uninitialised: a shared null manager.
    """
    # ``**options`` rather than seven keyword-only defaults: CPython fills those one dict lookup
    # at a time on every call, a third of the cost of the null path.
    if not _enabled:
        if options and not _OPTION_NAMES.issuperset(options):
            raise _bad_options(options)
        return NULL_SCOPE
    if not isinstance(name, str):
        raise TypeError(f"start_span: name must be a str, not {name!r}")
    if not options or (len(options) == 1 and "record_usage" in options):
        # A plain scope (a child of the active span; at most ``record_usage``) leaves the
        # option slots unset: ``__enter__`` reads none of them when ``_plain`` is true.
        scope: _SpanScope = _new_object(_SpanScope)
        scope._name = name
        scope._plain = True
        scope.span = None
        scope._marker = None
        scope._token = None
        scope._child = None
        scope._want_usage = options["record_usage"] if options else True
        scope._end_on_exit = True
        scope._preserve = False
        return scope
    if not _OPTION_NAMES.issuperset(options):
        raise _bad_options(options)
    kind = options.get("kind", "internal")
    if kind not in SPAN_KINDS:
        raise ValueError(f"start_span: kind must be one of {sorted(SPAN_KINDS)}, not {kind!r}")
    links = options.get("links", ())
    return _SpanScope(
        name,
        options.get("parent"),
        _normalise_links(links) if links else (),
        options.get("attributes"),
        kind,
        options.get("root", False),
        options.get("record_usage", True),
        options.get("end_on_exit", True),
    )


start_active_span = start_span


def start_context_span(
    ctx: Any,
    name: str,
    *,
    parent: SpanContext | Span | None = None,
    links: Links = (),
    attributes: Mapping[str, AttributeValue] | None = None,
    kind: str = "internal",
    root: bool = False,
    after_start: Callable[[BackendSpan], None] | None = None,
) -> Any:
    """Start a span owned by logging context ``ctx`` and active for the ``with`` block.

    For integrations (requests, background processes, DB transactions): the span becomes
    ``ctx.span`` and is ended with ``ctx``'s inclusive usage when ``ctx`` exits (through
    ``logcontext._hooks.span_ender``). Use ``with ctx, start_context_span(ctx, ...):`` in the
    ``Context`` that runs the work. Off: the shared null manager.
    """
    if not _enabled:
        return NULL_SCOPE
    if not isinstance(name, str):
        raise TypeError(f"start_context_span: name must be a str, not {name!r}")
    if kind not in SPAN_KINDS:
        raise ValueError(f"start_context_span: kind must be one of {sorted(SPAN_KINDS)}")
    return _ContextSpanScope(
        ctx,
        name,
        parent,
        _normalise_links(links) if links else (),
        attributes,
        kind,
        root,
        after_start,
    )


def active_span() -> Span | None:
    """The active span (ours or another instrumentation's), or None."""
    if not _enabled:
        return None
    backend = _backend
    if backend is None:
        return None
    try:
        span = backend.current_wrapper()
        if span is not None:
            return span
        raw = backend.current_raw()
        if raw is None:
            return None
        scope = _SCOPE.get()
        if scope is not None and scope.span is not None and scope.span.raw is raw:
            return scope.span
        return backend.wrap(raw)
    except Exception:
        _backend_error("active_span")
        return None


def _attr_value(value: Any) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def set_tag(key: str, value: Any) -> None:
    """Set an attribute on the active span (non-primitive values become ``str``)."""
    if not _enabled:
        return
    span = active_span()
    if span is not None:
        try:
            span.set_attribute(str(key), _attr_value(value))
        except Exception:
            _backend_error("set_tag")


set_attribute = set_tag


def log_event(name: str | Mapping[str, Any], attributes: Mapping[str, Any] | None = None) -> None:
    """Add an event to the active span; a mapping as ``name`` (``log_kv`` style) is the attributes."""
    if not _enabled:
        return
    span = active_span()
    if span is None:
        return
    if isinstance(name, Mapping):
        attributes = {**name, **(attributes or {})}
        name = str(attributes.pop("event", "log"))
    attrs = {str(k): _attr_value(v) for k, v in attributes.items()} if attributes else None
    try:
        span.add_event(name, attrs)
    except Exception:
        _backend_error("log_event")


log_kv = log_event


def set_operation_name(name: str) -> None:
    """Rename the active span."""
    if not _enabled:
        return
    span = active_span()
    if isinstance(span, BackendSpan):
        try:
            span.update_name(name)
        except Exception:
            _backend_error("set_operation_name")


def force_tracing(span: Span | None = None) -> None:
    """Force tracing from here on (OTel: baggage read by ``ForceTracingSampler``; OT: priority)."""
    if not _enabled or _backend is None:
        return
    target = span if span is not None else active_span()
    if not isinstance(target, BackendSpan):
        return
    try:
        _backend.force(target)
    except Exception:
        _backend_error("force_tracing")


def is_forced(span_context: SpanContext | None = None) -> bool:
    """True if forced tracing applies to ``span_context`` (default: the current ``Context``)."""
    if span_context is not None:
        return span_context.forced
    if not _enabled or _backend is None:
        return False
    try:
        return _backend.is_forced_current()
    except Exception:
        _backend_error("is_forced")
        return False


def apply_force_tracing_for(user_id: str | None) -> bool:
    """Force tracing if ``user_id`` is in ``force_tracing_for``; return whether it did."""
    if not _enabled or not user_id or user_id not in _force_for:
        return False
    force_tracing()
    return True


# ----------------------------------------------------------------------------------------------
# Decorators


_extra_installed: bool | None = None


def _tracing_possible() -> bool:
    """True if tracing is on or a tracing extra is importable (decided once)."""
    global _extra_installed
    if _enabled:
        return True
    if _extra_installed is None:
        import importlib.util

        _extra_installed = any(
            importlib.util.find_spec(mod) is not None for mod in ("opentelemetry", "opentracing")
        )
    return _extra_installed


def _deferred_type() -> type | None:
    """Twisted's ``Deferred`` if Twisted is already imported (never imports it)."""
    defer = sys.modules.get("twisted.internet.defer")
    return cast("type | None", getattr(defer, "Deferred", None))


async def _await_in_scope(scope: _SpanScope, awaitable: Awaitable[Any]) -> Any:
    scope.reattach()
    exc: BaseException | None = None
    try:
        return await awaitable
    except BaseException as e:
        exc = e
        raise
    finally:
        scope.detach()
        scope.finish(exc)


def _end_with_result(scope: _SpanScope, result: Any) -> Any:
    """Finish ``scope`` now, or when the returned awaitable/Deferred completes."""
    deferred = _deferred_type()
    if deferred is not None and isinstance(result, deferred):
        d: Any = result
        scope.detach()

        def on_success(value: Any) -> Any:
            scope.finish(None)
            return value

        def on_failure(failure: Any) -> Any:
            scope.finish(getattr(failure, "value", None))
            return failure

        d.addCallbacks(on_success, on_failure)
        return d
    import inspect
    from asyncio import isfuture

    if isfuture(result):
        scope.detach()

        def on_done(fut: asyncio.Future[Any]) -> None:
            exc = None if fut.cancelled() else fut.exception()
            scope.finish(exc)

        result.add_done_callback(on_done)
        return result
    if inspect.isawaitable(result):
        scope.detach()
        return _await_in_scope(scope, result)
    scope.__exit__(None, None, None)
    return result


def _wrap(fn: F, name: str) -> F:
    import inspect

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not _enabled:
                return await fn(*args, **kwargs)
            with start_span(name):
                return await fn(*args, **kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _enabled:
            return fn(*args, **kwargs)
        scope = _SpanScope(name, None, (), None, "internal", False, True, True, preserve=True)
        scope.__enter__()
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            scope.__exit__(type(e), e, e.__traceback__)
            raise
        return _end_with_result(scope, result)

    return cast(F, wrapper)


def trace_with_name(name: str) -> Callable[[F], F]:
    """Decorator: run each call in a span named ``name``.

    Works on sync functions, ``async def`` functions, functions returning an awaitable (the span
    ends when it completes) and functions returning a Deferred (ended in callback and errback).
    Without a tracing extra installed, returns the function itself.
    """
    if not isinstance(name, str):
        raise TypeError(f"trace_with_name: name must be a str, not {name!r}")

    def decorator(fn: F) -> F:
        if not _tracing_possible():
            return fn
        return _wrap(fn, name)

    return decorator


trace_with_opname = trace_with_name


def trace(fn: F) -> F:
    """Decorator: like ``trace_with_name(fn.__qualname__)``."""
    if not _tracing_possible():
        return fn
    return _wrap(fn, getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn))))


@overload
def tag_args(fn: F) -> F: ...
@overload
def tag_args(fn: None = None) -> Callable[[F], F]: ...
def tag_args(fn: F | None = None) -> F | Callable[[F], F]:
    """Decorator: put the call's arguments on the active span as ``ARG.<param>``.

    ``self``/``cls`` are skipped; extra positionals go to ``args`` and extra keywords to
    ``kwargs``. Apply inside ``@trace``. The signature is read once.
    """
    if fn is None:
        return tag_args
    if not _tracing_possible():
        return fn
    import inspect

    sig = inspect.signature(fn)
    params = sig.parameters

    def tag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        span = active_span()
        if span is None or not span.is_recording():
            return
        try:
            bound = sig.bind_partial(*args, **kwargs)
        except TypeError:
            return
        extra_args: Any = ()
        extra_kwargs: Any = {}
        for pname, value in bound.arguments.items():
            kind = params[pname].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                extra_args = value
            elif kind is inspect.Parameter.VAR_KEYWORD:
                extra_kwargs = value
            elif pname not in ("self", "cls"):
                span.set_attribute(f"ARG.{pname}", _attr_value(value))
        span.set_attribute("args", str(extra_args))
        span.set_attribute("kwargs", str(extra_kwargs))

    def safe_tag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            tag(args, kwargs)
        except Exception:
            _backend_error("tag_args")

    if inspect.iscoroutinefunction(fn):
        afn = fn

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if _enabled:
                safe_tag(args, kwargs)
            return await afn(*args, **kwargs)

        return cast(F, async_wrapper)

    sfn = fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _enabled:
            safe_tag(args, kwargs)
        return sfn(*args, **kwargs)

    return cast(F, wrapper)


# ----------------------------------------------------------------------------------------------
# Propagation


def _write_headers(headers: Any, values: Mapping[str, str], as_bytes: bool | None) -> None:
    """Write ``values`` into a str or bytes header mapping, or a Twisted ``Headers``."""
    if hasattr(headers, "setRawHeaders"):
        for key, value in values.items():
            headers.setRawHeaders(key.encode("ascii"), [value.encode("ascii")])
        return
    if as_bytes is None:
        as_bytes = any(isinstance(k, bytes) for k in headers)
    target = cast("MutableMapping[Any, Any]", headers)
    for key, value in values.items():
        if as_bytes:
            target[key.encode("ascii")] = [value.encode("ascii")]
        else:
            target[key] = value


def _first(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    return None


def _read_headers(headers: Any) -> dict[str, str]:
    """Normalise inbound headers (str/bytes keys, str/bytes/list values, pairs, Twisted)."""
    if hasattr(headers, "getAllRawHeaders"):
        items: Iterable[tuple[Any, Any]] = headers.getAllRawHeaders()
    elif hasattr(headers, "items"):
        items = headers.items()
    elif isinstance(headers, list | tuple):
        items = headers  # ASGI-style [(name, value), ...]
    else:
        raise TypeError(
            f"headers must be a mapping, a list of pairs or Twisted Headers, not {type(headers)!r}"
        )
    out: dict[str, str] = {}
    for key, value in items:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        v = _first(value)
        if isinstance(k, str) and v is not None:
            out.setdefault(k.lower(), v)
    return out


def _inject_values(destination: Any, internal: bool, *, http: bool) -> dict[str, str]:
    if not _enabled or _backend is None:
        return {}
    if not internal and not is_allowed_destination(destination):
        return {}
    span = active_span()
    if not isinstance(span, BackendSpan):
        return {}
    carrier: dict[str, str] = {}
    try:
        _backend.inject(span, carrier, http=http)
    except Exception:
        _backend_error("inject")
        return {}
    return carrier


def inject(
    headers: Any,
    *,
    destination: str | bytes | None,
    internal: bool = False,
    as_bytes: bool | None = None,
) -> None:
    """Write the active span's propagation headers into ``headers`` if ``destination`` is allowed.

    ``headers`` is a ``MutableMapping[str, str]``, a ``dict[bytes, list[bytes]]`` or a Twisted
    ``Headers``; ``as_bytes`` forces the bytes form (default: bytes if any key is bytes).
    ``internal=True`` (worker to main process) skips the allow-list.
    """
    values = _inject_values(destination, internal, http=True)
    if values:
        _write_headers(headers, values, as_bytes)


def inject_header_dict(
    headers: Any, destination: str | bytes | None = None, *, internal: bool = False
) -> None:
    """Synapse-parity form of :func:`inject` for ``dict[bytes, list[bytes]]`` headers."""
    values = _inject_values(destination, internal, http=True)
    if values:
        _write_headers(headers, values, True)


def inject_text_map(*, destination: str | bytes | None, internal: bool = False) -> dict[str, str]:
    """The active span's propagation entries as a new ``dict[str, str]`` (empty if not allowed)."""
    return _inject_values(destination, internal, http=False)


get_active_span_text_map = inject_text_map


def _extract(carrier: dict[str, str], http: bool) -> SpanContext | None:
    if not _enabled or _backend is None:
        return None
    try:
        return _backend.extract(carrier, http=http)
    except Exception:
        _backend_error("extract")
        return None


def extract(headers: Any, *, origin: str | bytes | None, authenticated: bool) -> SpanContext | None:
    """The remote parent from inbound ``headers``, only for authenticated, allowed origins."""
    if not _enabled or not authenticated or not is_allowed_destination(origin):
        return None
    return _extract(_read_headers(headers), True)


def extract_text_map(
    carrier: Mapping[str, str], *, origin: str | bytes | None, authenticated: bool
) -> SpanContext | None:
    """Like :func:`extract` for a text map produced by :func:`inject_text_map`."""
    if not _enabled or not authenticated or not is_allowed_destination(origin):
        return None
    return _extract(_read_headers(carrier), False)


def extract_link(headers: Any) -> SpanContext | None:
    """The remote span context in ``headers`` whatever its origin: to link to, never parent."""
    if not _enabled:
        return None
    return _extract(_read_headers(headers), True)


def inject_response_headers(headers: Any) -> None:
    """Add the configured trace-id header (32 lower-hex digits) for the active span, if any."""
    header = _trace_id_header
    if not _enabled or header is None:
        return
    span = active_span()
    if span is None:
        return
    try:
        trace_id = span.context.trace_id
    except Exception:
        _backend_error("inject_response_headers")
        return
    if trace_id:
        _write_headers(headers, {header: f"{trace_id:032x}"}, None)
