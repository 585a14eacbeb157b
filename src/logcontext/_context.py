"""Logging contexts: the current one, entering and leaving, usage roll-up (spec §1)."""

from __future__ import annotations

import logging
import os
import threading
import time
from contextvars import ContextVar, Token

from . import _hooks, _ledger
from . import clock as _clock
from ._config import config
from ._misuse import report
from ._sentinel import SENTINEL_CONTEXT, _Sentinel
from ._usage import ContextResourceUsage

TYPE_CHECKING = False  # typing is not imported at run time (import cost, spec P18)
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Final, Literal, Self

__all__ = [
    "SENTINEL_CONTEXT",
    "ContextRequest",
    "LoggingContext",
    "LoggingContextOrSentinel",
    "PreserveLoggingContext",
    "current_context",
    "nested_logging_context",
    "set_current_context",
]

_current: Final[ContextVar[LoggingContextOrSentinel]] = ContextVar("logcontext", default=SENTINEL_CONTEXT)
_var_get: Final = _current.get
_var_set: Final = _current.set
_var_reset: Final = _current.reset

_new_usage: Final = object.__new__
_local: Final = _ledger._local  # the per-thread ledger slot (read on the hot path)
_perf_ns: Final = time.perf_counter_ns

#: One process-wide lock guards every addition to a context and its ancestors.
_usage_lock = threading.Lock()

_dbg: Final = logging.getLogger("logcontext.debug")

#: The switch tracer is on only when ``logcontext.debug`` has its own level set
#: to DEBUG (a root logger at DEBUG does not enable it).
_trace_on = False
#: ``True`` when enter/exit must do more than set the variable: metering (any
#: clock but ``off``) or the switch tracer. One global read on the fast path.
_hot = True


def _refresh_hot() -> None:
    global _hot
    _hot = _clock._metering or _trace_on


def _update_trace() -> None:
    global _trace_on
    _trace_on = bool(_dbg.level) and _dbg.isEnabledFor(logging.DEBUG)
    _refresh_hot()


_dbg_set_level = _dbg.setLevel


def _set_debug_level(level: int | str) -> None:
    _dbg_set_level(level)
    _update_trace()


# Setting the tracer's level (setLevel, dictConfig) refreshes the cached flag.
_dbg.setLevel = _set_debug_level  # type: ignore[method-assign]
_clock._listeners.append(_refresh_hot)
_ID_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


#: ``current_context()``: the logging context current in this task or thread
#: (the sentinel if none). It is the variable's bound ``get``, so reading it
#: costs no more than reading a ``ContextVar``.
current_context: Final = _var_get


#: Default of ``LoggingContext``'s positional-only guard (see ``LoggingContext._init``).
_NO_POSITIONAL: Final = object()


class _InitSignature:
    """``LoggingContext.__signature__``: the documented keyword-only signature, built on
    first use (``inspect`` is not imported with the package). Subclasses get their own."""

    def __get__(self, obj: object, cls: type | None = None) -> Any:
        if cls is not None and cls is not LoggingContext:
            raise AttributeError("__signature__")
        import inspect

        kw = inspect.Parameter.KEYWORD_ONLY
        return inspect.Signature(
            [
                inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str"),
                inspect.Parameter(
                    "parent_context", kw, default=None, annotation="LoggingContextOrSentinel | None"
                ),
                inspect.Parameter("server_name", kw, default=None, annotation="str | None"),
                inspect.Parameter("request", kw, default=None, annotation="ContextRequest | None"),
                inspect.Parameter("tag", kw, default="", annotation="str"),
            ],
            return_annotation="None",
        )


class ContextRequest:
    """Plain data copied from an HTTP request, shared by its context and children.

    Equivalent to a ``@dataclass(slots=True)`` (written out by hand so that
    ``import logcontext`` does not import :mod:`dataclasses`). Authentication
    fills ``requester`` and ``authenticated_entity`` by mutation.
    """

    __slots__ = (
        "authenticated_entity",
        "ip_address",
        "method",
        "protocol",
        "request_id",
        "requester",
        "site_tag",
        "url",
        "user_agent",
    )

    _FIELDS = (
        "request_id",
        "ip_address",
        "site_tag",
        "method",
        "url",
        "protocol",
        "user_agent",
        "requester",
        "authenticated_entity",
    )

    def __init__(
        self,
        request_id: str,
        ip_address: str,
        site_tag: str,
        method: str,
        url: str,
        protocol: str,
        user_agent: str,
        requester: str | None = None,
        authenticated_entity: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.ip_address = ip_address
        self.site_tag = site_tag
        self.method = method
        self.url = url
        self.protocol = protocol
        self.user_agent = user_agent
        self.requester = requester
        self.authenticated_entity = authenticated_entity

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS)
        return f"ContextRequest({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextRequest):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]


def _debug_id(ctx: object) -> str:
    if not ctx:
        return "-----"
    ident: str | None = getattr(ctx, "_dbg_id", None)
    if ident is None:
        import random

        ident = "".join(random.choices(_ID_CHARS, k=5))
        ctx._dbg_id = ident  # type: ignore[attr-defined]
    return ident


def _trace(event: str, ctx: object, other: object) -> None:
    _dbg.debug("%s %s[%s] (from/to %s[%s])", event, ctx, _debug_id(ctx), other, _debug_id(other))


class _Extra:
    """Rarely set fields of a context, kept out of the hot construction path."""

    __slots__ = ("end_span_on_exit", "late_usage", "request", "server_name", "span", "tag", "tokens")

    def __init__(self) -> None:
        self.tokens: list[Token[LoggingContextOrSentinel]] | None = None  # re-entry stack
        self.span: Any = None
        self.server_name: str | None = None
        self.request: ContextRequest | None = None
        self.tag = ""
        self.late_usage: ContextResourceUsage | None = None
        self.end_span_on_exit = False


class LoggingContext:
    """A unit of work: tags log lines and accounts the resources it uses.

    Entering makes it the current context of this task or thread; leaving
    restores the previous one with the ``ContextVar`` token. Every increment
    of usage (CPU at each checkpoint, database and event counters at each
    ``record_*``) is added to the context **and all its ancestors** at once,
    so a parent's figures include a running child's work.

    ``server_name`` and ``request`` fall back to the parent's (the same
    object) and then, for ``server_name``, to ``configure(default_server_name=)``.

    >>> with LoggingContext("request-1") as ctx:
    ...     ctx.record_db_txn(0.002)
    >>> ctx.get_resource_usage().db_txn_count
    1
    """

    __slots__ = (
        "__weakref__",
        "_ancestors",
        "_dbg_id",
        "_extra",
        "_reported",
        "_token",
        "_u",
        "finished",
        "name",
    )

    name: str
    finished: bool
    _ancestors: tuple[LoggingContext, ...]
    _token: Token[LoggingContextOrSentinel] | Literal[False] | None
    _u: ContextResourceUsage | None
    _extra: _Extra | None

    # The options are keyword-only (see the TYPE_CHECKING signature below and
    # ``__signature__``), but CPython fills missing keyword-only defaults by a dict
    # lookup each (≈ 40 ns for four, 7 % of a with-block): the implementation takes
    # them positionally behind a positional-only guard that rejects a second
    # positional argument.
    def _init(
        self,
        _name: str | None = None,
        _positional: object = _NO_POSITIONAL,
        /,
        parent_context: LoggingContextOrSentinel | None = None,
        server_name: str | None = None,
        request: ContextRequest | None = None,
        tag: str = "",
        name: str | None = None,
    ) -> None:
        if _positional is not _NO_POSITIONAL:
            raise TypeError(
                "LoggingContext() takes 1 positional argument (name); "
                "pass parent_context, server_name, request and tag by keyword"
            )
        if _name is None:
            if name is None:
                raise TypeError("LoggingContext() missing 1 required argument: 'name'")
            _name = name
        elif name is not None:
            raise TypeError("LoggingContext() got multiple values for argument 'name'")
        name = _name
        if name.__class__ is not str and not isinstance(name, str):
            raise TypeError(f"LoggingContext name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("LoggingContext name must be a non-empty str")
        self.name = name
        if parent_context:
            if not isinstance(parent_context, LoggingContext):
                raise TypeError(
                    f"parent_context must be a LoggingContext or None, not {type(parent_context).__name__}"
                )
            self._ancestors = (parent_context, *parent_context._ancestors)
        else:
            self._ancestors = ()
        self.finished = False
        self._token = None
        self._u = None
        if server_name is None and request is None and not tag:
            self._extra = None
        else:
            x = self._extra = _Extra()
            x.server_name = server_name
            x.request = request
            x.tag = tag

    if TYPE_CHECKING:

        def __init__(
            self,
            name: str,
            *,
            parent_context: LoggingContextOrSentinel | None = None,
            server_name: str | None = None,
            request: ContextRequest | None = None,
            tag: str = "",
        ) -> None: ...

    else:
        __init__ = _init
        __signature__ = _InitSignature()
    del _init

    def _x(self) -> _Extra:
        x = self._extra
        if x is None:
            x = self._extra = _Extra()
        return x

    @property
    def parent_context(self) -> LoggingContext | None:
        """The parent given at construction (fixed for life), or ``None``."""
        a = self._ancestors
        return a[0] if a else None

    @property
    def server_name(self) -> str:
        """Explicit, else the parent's, else the configured default."""
        x = self._extra
        if x is not None and x.server_name is not None:
            return x.server_name
        a = self._ancestors
        if a:
            return a[0].server_name
        return config.default_server_name

    @server_name.setter
    def server_name(self, value: str) -> None:
        self._x().server_name = value

    @property
    def request(self) -> ContextRequest | None:
        """Explicit, else the parent's (the same object)."""
        x = self._extra
        if x is not None and x.request is not None:
            return x.request
        a = self._ancestors
        if a:
            return a[0].request
        return None

    @request.setter
    def request(self, value: ContextRequest | None) -> None:
        self._x().request = value

    @property
    def tag(self) -> str:
        """Mutable metric label (not inherited)."""
        x = self._extra
        return "" if x is None else x.tag

    @tag.setter
    def tag(self, value: str) -> None:
        self._x().tag = value

    @property
    def span(self) -> Any:
        """The span owned by this context (set by tracing), or ``None``."""
        x = self._extra
        return None if x is None else x.span

    @span.setter
    def span(self, value: Any) -> None:
        self._x().span = value

    @property
    def late_usage(self) -> ContextResourceUsage | None:
        """Usage recorded after the context finished, or ``None``."""
        x = self._extra
        return None if x is None else x.late_usage

    @property
    def end_span_on_exit(self) -> bool:
        """Whether leaving the ``with`` block ends :attr:`span` (set by tracing)."""
        x = self._extra
        return False if x is None else x.end_span_on_exit

    @end_span_on_exit.setter
    def end_span_on_exit(self, value: bool) -> None:
        self._x().end_span_on_exit = value

    @property
    def _usage(self) -> ContextResourceUsage:
        """The inclusive totals (created on first use; guard with the usage lock)."""
        u = self._u
        if u is None:
            u = self._u = ContextResourceUsage()
        return u

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<LoggingContext {self.name!r}{' finished' if self.finished else ''}>"

    # -- entering and leaving -------------------------------------------------

    def __enter__(self) -> Self:
        # ``_token``: None before the first enter, False once exited (so one test covers
        # both misuse cases on the fast path), else the newest active token.
        held = self._token
        if held is not None:
            if held is False or self.finished:
                report(
                    "restart-finished",
                    f"entering context {self.name!r} again after its block exited",
                    context=self,
                )
            if held is not False:
                report("reenter-active", f"context {self.name!r} entered while already active", context=self)
                x = self._x()
                if x.tokens is None:
                    x.tokens = []
                x.tokens.append(held)  # tokens stack; the newest stays in _token
        self._token = _var_set(self)
        if _hot:
            if _clock._metering:
                # _ledger.checkpoint(self), inlined: one call less on the hot path
                try:
                    led = _local.ledger
                except AttributeError:
                    led = _ledger.get_ledger()
                old = led.charged
                if old is not self:
                    fast = led.fast
                    if fast == 1 and led.flags_gen == _clock._generation:
                        # _ledger.switch's scalar-clock branch, inlined (keep them in step)
                        now = led.clk()
                        d = now - led.last_u
                        led.last_u = now
                        led.charged = self
                        if d < 0:
                            d = _ledger._regression(d, 0)[0]
                        if old is SENTINEL_CONTEXT:
                            led.unattributed_ns += d
                        else:
                            led.pend[old] += d
                            if old.finished:
                                _ledger.went_late(led, old, now, d)
                        if now >= led.wdl:
                            _ledger.close_window(led, now)
                    elif fast == 2 and led.flags_gen == _clock._generation:
                        # _ledger.switch's ``sampled`` branch, inlined (keep them in step)
                        now = led.wall()
                        led.charged = self
                        if old is not SENTINEL_CONTEXT:
                            d = now - led.wlast
                            led.pend[old] += d
                            led.wlast = now
                            if old.finished:
                                _ledger.went_late(led, old, now, d)
                            if now >= led.wdl:
                                _ledger.close_window(led, now, old, d)
                        else:
                            led.wlast = now
                            if now >= led.wdl:
                                _ledger.close_window(led, now)
                    else:
                        _ledger.switch(led, self)
            if _trace_on:
                _trace("enter", self, None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        token = self._token
        if not token:  # None (never entered) or False (exited already)
            report("double-exit", f"context {self.name!r} exited more times than entered", context=self)
            return
        x = self._extra
        self._token = x.tokens.pop() if x is not None and x.tokens else False
        found = _var_get()
        try:
            _var_reset(token)
        except ValueError:
            # The token belongs to another Context: a collected or foreign-closed
            # coroutine is closing in whatever Context is ambient. Leave the
            # variable alone (a plain set would leak this context) and no ledger.
            self.finished = True
            report(
                "foreign-exit",
                f"context {self.name!r} exited in a different contextvars.Context (left as is)",
                context=self,
                level=logging.DEBUG,
                can_raise=False,
            )
            return
        except RuntimeError:
            report("double-exit", f"context {self.name!r} exited twice", context=self)
            return
        if _hot:
            if _clock._metering:
                restored = _var_get()
                try:
                    led = _local.ledger
                except AttributeError:
                    led = _ledger.get_ledger()
                fast = led.fast
                if led.charged is not self or led.flags_gen != _clock._generation:
                    if led.charged is not restored:
                        _ledger.switch(led, restored)
                elif fast == 2:
                    # _ledger.switch's ``sampled`` branch, inlined: the usual exit
                    now = led.wall()
                    led.charged = restored
                    if led.fin is self:
                        _ledger.finish_exact_sampled(led, self, now)
                    else:
                        d = now - led.wlast
                        led.pend[self] += d
                        led.wlast = now
                        if now >= led.wdl:
                            _ledger.close_window(led, now, self, d)
                elif fast == 1:
                    # the scalar-clock branch: the CPU since the last switch is exact
                    now = led.clk()
                    d = now - led.last_u
                    led.last_u = now
                    led.charged = restored
                    if d < 0:
                        d = _ledger._regression(d, 0)[0]
                    if led.fin is self:
                        # armed (``_ledger.arm_exact``): charge the last interval now
                        led.fin = None
                        _ledger.charge_armed(led, self, d)
                    else:
                        led.pend[self] += d
                    if now >= led.wdl:
                        _ledger.close_window(led, now)
                elif led.charged is not restored:
                    _ledger.switch(led, restored)
            if _trace_on:
                _trace("exit", self, _var_get())
        self.finished = True
        if x is not None and x.span is not None and x.end_span_on_exit and _hooks.span_ender is not None:
            _hooks.span_ender(self)
        if found is not self:
            report(
                "exit-mismatch",
                f"expected {self.name} but found {found} when leaving {self.name}",
                context=self,
            )

    # -- the symmetric halves of a switch ------------------------------------

    def start(self, reading: _clock.ClockReading | None) -> None:
        """Make this the context charged on the calling thread from ``reading``."""
        led = _ledger.get_ledger()
        if led.charged is self:
            return
        if led.charged is not SENTINEL_CONTEXT:
            report(
                "start-while-charged",
                f"start({self.name}) while {led.charged} is charged on this thread",
                context=self,
            )
            led.charged.stop(reading)
        elif reading is not None:
            self._book_unattributed(led, reading)
        led.charged = self
        if reading is not None:
            led.last_u, led.last_s = reading
            led.mode_generation = _clock._generation

    @staticmethod
    def _book_unattributed(led: _ledger.Ledger, reading: _clock.ClockReading) -> None:
        if led.mode_generation == _clock._generation:
            led.unattributed_ns += max(reading[0] - led.last_u, 0) + max(reading[1] - led.last_s, 0)

    def stop(self, reading: _clock.ClockReading | None) -> None:
        """Charge the CPU since the last switch to this context and every parent."""
        led = _ledger.get_ledger()
        if led.charged is not self:
            report(
                "stop-not-charged",
                f"stop({self.name}) but this thread is charging {led.charged}",
                context=self,
            )
            return
        if reading is not None and led.mode_generation == _clock._generation:
            du = reading[0] - led.last_u
            ds = reading[1] - led.last_s
            if du < 0 or ds < 0:
                du, ds = _ledger._regression(du, ds)
            led.attributed_ns += du + ds
            self._charge_ns(du, ds)
        if reading is not None:
            led.last_u, led.last_s = reading
            led.mode_generation = _clock._generation
        led.charged = SENTINEL_CONTEXT

    # -- recording -------------------------------------------------------------

    def _charge_ns(self, du: int, ds: int) -> None:
        """Add CPU nanoseconds to this context and every ancestor (ledger path)."""
        ut = du * 1e-9
        st = ds * 1e-9
        late = None
        with _usage_lock:
            u = self._u
            if u is None:  # first charge: build the usage in place (no __init__ frame)
                u = self._u = _new_usage(ContextResourceUsage)
                u.ru_utime = ut
                u.ru_stime = st
                u.db_txn_count = 0
                u.db_txn_duration_sec = 0.0
                u.db_sched_duration_sec = 0.0
                u.evt_db_fetch_count = 0
            else:
                u.ru_utime += ut
                u.ru_stime += st
            if self.finished:
                late = [self]
            for c in self._ancestors:
                u = c._usage
                u.ru_utime += ut
                u.ru_stime += st
                if c.finished:
                    late = [c] if late is None else [*late, c]
        if late is not None:
            _ledger.stats.late_cpu_ns += du + ds
            self._late(late, ut, st, 0, 0.0, 0.0, 0)

    def _add(self, ut: float, st: float, txn: int, txn_s: float, sched_s: float, evts: int) -> None:
        late = None
        with _usage_lock:
            for c in (self, *self._ancestors):
                u = c._u
                if u is None:
                    u = c._u = ContextResourceUsage()
                u.ru_utime += ut
                u.ru_stime += st
                u.db_txn_count += txn
                u.db_txn_duration_sec += txn_s
                u.db_sched_duration_sec += sched_s
                u.evt_db_fetch_count += evts
                if c.finished:
                    late = [c] if late is None else [*late, c]
        if late is not None:
            if ut or st:
                _ledger.stats.late_cpu_ns += int((ut + st) * 1e9)
            self._late(late, ut, st, txn, txn_s, sched_s, evts)

    @staticmethod
    def _late(
        ctxs: list[LoggingContext],
        ut: float,
        st: float,
        txn: int,
        txn_s: float,
        sched_s: float,
        evts: int,
    ) -> None:
        with _usage_lock:
            for c in ctxs:
                x = c._x()
                lu = x.late_usage
                if lu is None:
                    x.late_usage = lu = ContextResourceUsage()
                lu.ru_utime += ut
                lu.ru_stime += st
                lu.db_txn_count += txn
                lu.db_txn_duration_sec += txn_s
                lu.db_sched_duration_sec += sched_s
                lu.evt_db_fetch_count += evts
        for c in ctxs:
            report(
                "late-usage",
                f"usage recorded on context {c.name!r} after its block exited "
                "(still counted; see late_usage)",
                context=c,
                can_raise=False,
            )

    def add_cputime(self, utime: float, stime: float = 0.0) -> None:
        """Add CPU seconds (user, system) to this context and its ancestors."""
        if utime < 0 or stime < 0:
            raise ValueError(f"add_cputime needs non-negative times, got ({utime}, {stime})")
        self._add(float(utime), float(stime), 0, 0.0, 0.0, 0)

    def record_db_txn(self, duration_sec: float) -> None:
        """Count one finished database transaction that took ``duration_sec``."""
        if duration_sec < 0:
            raise ValueError(f"record_db_txn needs a non-negative duration, got {duration_sec}")
        self._add(0.0, 0.0, 1, float(duration_sec), 0.0, 0)

    def record_db_scheduled(self, sched_sec: float) -> None:
        """Add time spent waiting for a pooled database connection."""
        if sched_sec < 0:
            raise ValueError(f"record_db_scheduled needs a non-negative time, got {sched_sec}")
        self._add(0.0, 0.0, 0, 0.0, float(sched_sec), 0)

    def record_event_fetch(self, count: int) -> None:
        """Count ``count`` events loaded from the database (cache hits excluded)."""
        if count < 0:
            raise ValueError(f"record_event_fetch needs a non-negative count, got {count}")
        self._add(0.0, 0.0, 0, 0.0, 0.0, int(count))

    add_database_transaction = record_db_txn
    add_database_scheduled = record_db_scheduled

    def get_resource_usage(self) -> ContextResourceUsage:
        """A copy of the inclusive totals, plus this thread's slice in progress."""
        with _usage_lock:
            res = ContextResourceUsage(self._u)
        if _clock._metering:
            sl = _ledger.in_progress(self)
            if sl is not None:
                res.ru_utime += sl[0] * 1e-9
                res.ru_stime += sl[1] * 1e-9
        return res


_new_object = object.__new__


def child_context(parent: LoggingContext) -> LoggingContext:
    """``LoggingContext(parent.name, parent_context=parent)`` without the argument checks.

    For the library's own children of a context it already holds (spans' usage contexts,
    ``Measure`` blocks, the database worker's transaction contexts): the same object the
    constructor builds, in a third of the time.
    """
    ctx: LoggingContext = _new_object(LoggingContext)
    ctx.name = parent.name
    ctx._ancestors = (parent,) + parent._ancestors  # noqa: RUF005  # faster: no unpacking
    ctx.finished = False
    ctx._token = None
    ctx._u = None
    ctx._extra = None
    return ctx


#: Figures of a measured child, final at its exit: ``ru_utime``, ``ru_stime``,
#: ``db_txn_count``, ``db_txn_duration_sec``, ``db_sched_duration_sec``, ``evt_db_fetch_count``.
Figures = tuple[float, float, int, float, float, int]


def enter_measured_child(parent: LoggingContext) -> LoggingContext:
    """Build and enter a child of ``parent``, armed to be measured.

    The same as ``c = child_context(parent); c.__enter__(); _ledger.arm_exact(c)``; the
    ``sampled`` mode's usual cases (the thread charges ``parent`` or no context; the real
    clocks) take one inlined step. No thread-clock reading here when the window holds
    ``parent``'s share: :func:`exit_measured_child` makes the block's figures final with one.
    """
    # ``child_context(parent)`` inlined (the per-span path; keep them in step)
    ctx: LoggingContext = _new_object(LoggingContext)
    ctx.name = parent.name
    ctx._ancestors = (parent,) + parent._ancestors  # noqa: RUF005  # faster: no unpacking
    ctx.finished = False
    ctx._token = None
    ctx._u = None
    ctx._extra = None
    try:
        led = _local.ledger
    except AttributeError:
        led = None
    # ``mgen`` current: ``sampled`` mode, metering, the real thread and wall clocks. The
    # thread charges ``parent`` (the usual case) or nothing (a worker thread's job).
    if (
        led is not None
        and led.mgen == _clock._generation
        and ((led.charged is parent and not parent.finished) or led.charged is SENTINEL_CONTEXT)
        and not _trace_on
    ):
        ctx._token = _var_set(ctx)
        # ``__enter__``'s ``sampled`` switch, then ``_ledger.arm_exact``
        now = _perf_ns()
        old = led.charged
        led.charged = ctx
        if old is parent:
            d = now - led.wlast
            led.pend[parent] += d
            led.wlast = now
            if now >= led.wdl:
                _ledger.close_window(led, now, parent, d)
        else:
            led.wlast = now
            if now >= led.wdl or not led.pend:
                # (A window with no metered share holds only unmetered CPU: start afresh.)
                _ledger.close_window(led, now)
        # A clock pair (exact) on a thread whose CPU fell well short of its wall time; none in
        # a fresh window (no pending share), where the exit's one reading is exact.
        led.fin_t0 = led.cpuclk() if led.pair and led.pend else -1
        led.fin = ctx
        led.fin_mark = now
        return ctx
    ctx.__enter__()
    _ledger.arm_exact(ctx)
    return ctx


def exit_measured_child(
    ctx: LoggingContext,
    exc_type: type[BaseException] | None = None,
    exc: BaseException | None = None,
    tb: TracebackType | None = None,
) -> Figures | None:
    """Exit a context entered by :func:`enter_measured_child`; its final figures if known.

    When nothing switched on the thread during the block (``sampled`` mode), the block's share
    of the window's CPU (``_ledger.armed_share``: one thread-clock reading) is charged here (as
    ``_charge_ns`` charges: the context and its ancestors) and taken out of the window, and the
    figures are returned, read under the same lock as the charge.
    Otherwise this is ``ctx.__exit__`` and returns None (read them with ``get_resource_usage()``).
    """
    token = ctx._token
    try:
        led = _local.ledger
    except AttributeError:
        led = None
    if (
        token
        and led is not None
        and led.fin is ctx
        and led.charged is ctx
        and led.wlast == led.fin_mark
        and led.mgen == _clock._generation
        and ctx._extra is None
        and not _trace_on
        and _var_get() is ctx
    ):
        try:
            _var_reset(token)
        except (ValueError, RuntimeError):
            pass  # a foreign Context: the generic exit below reports it
        else:
            now = _perf_ns()
            t0 = led.fin_t0
            if t0 < 0:
                k = now - led.fin_mark
                c = led.cpuclk() - led.last_u - led.taken
                pend = led.pend
                # ``_ledger.armed_share`` inlined: what closing the window now would give it
                wo = sum(pend.values()) if pend else 0
                if c >= wo + k:
                    cpu = k
                else:
                    if _ledger._lossy(wo + k, c):
                        led.pair = True  # CPU well short of the wall time: pairs from now on
                    if c <= 0:
                        cpu = 0
                    elif 2 * k > now - led.wopen:
                        cpu = c - wo if c > wo else 0
                    else:
                        cpu = c * k // (wo + k)
            else:
                cpu = led.cpuclk() - t0  # measured by a pair
                if cpu < 0:
                    cpu = _ledger._regression(cpu, 0)[0]
            ctx._token = False
            led.fin = None
            led.charged = _var_get()
            led.wlast = now
            led.taken += cpu
            led.attributed_ns += cpu
            # Not added to ``led.ran`` (``_ledger.charge_armed``): uninterrupted, the block
            # ran no descendant whose pending share could name it as an ancestor.
            ut = cpu * 1e-9
            late = None
            # ``with _usage_lock`` costs twice these two calls in 3.11 (the per-span path). Not
            # bound once: the lock is replaced after a fork.
            _usage_lock.acquire()
            try:
                u = ctx._u
                if u is None:
                    u = ctx._u = _new_usage(ContextResourceUsage)
                    u.ru_utime = ut
                    u.ru_stime = 0.0
                    u.db_txn_count = 0
                    u.db_txn_duration_sec = 0.0
                    u.db_sched_duration_sec = 0.0
                    u.evt_db_fetch_count = 0
                    figures: Figures = (ut, 0.0, 0, 0.0, 0.0, 0)
                else:
                    u.ru_utime += ut
                    figures = (
                        u.ru_utime,
                        u.ru_stime,
                        u.db_txn_count,
                        u.db_txn_duration_sec,
                        u.db_sched_duration_sec,
                        u.evt_db_fetch_count,
                    )
                for anc in ctx._ancestors:
                    u = anc._u
                    if u is None:
                        u = anc._u = ContextResourceUsage()
                    u.ru_utime += ut
                    if anc.finished:
                        late = [anc] if late is None else [*late, anc]
                ctx.finished = True
            finally:
                _usage_lock.release()
            if late is not None:
                _ledger.stats.late_cpu_ns += cpu
                ctx._late(late, ut, 0.0, 0, 0.0, 0.0, 0)
            if now >= led.wdl:
                _ledger.close_window(led, now)
            return figures
    ctx.__exit__(exc_type, exc, tb)
    return None


LoggingContextOrSentinel = LoggingContext | _Sentinel
"""Type of :func:`current_context`'s result."""


def set_current_context(context: LoggingContextOrSentinel) -> LoggingContextOrSentinel:
    """Make ``context`` current without a token; return the previous one.

    Prefer the ``with`` forms: in Twisted code outside coroutines a bare set
    leaks into later reactor callbacks.
    """
    if context is None:
        raise TypeError("set_current_context(None): pass SENTINEL_CONTEXT for 'no context'")
    if not isinstance(context, (LoggingContext, _Sentinel)):
        raise TypeError(f"set_current_context needs a LoggingContext, not {type(context).__name__}")
    previous = _var_get()
    _var_set(context)
    if _clock._metering:
        _ledger.checkpoint(context)
    if _trace_on:
        _trace("switch", context, previous)
    return previous


class PreserveLoggingContext:
    """Run a block with ``new_context`` current (the sentinel by default).

    It re-activates a context without ending it: nothing is marked finished.

    >>> with PreserveLoggingContext():
    ...     assert not current_context()
    """

    __slots__ = ("_new", "_token")

    def __init__(self, new_context: LoggingContextOrSentinel = SENTINEL_CONTEXT) -> None:
        if new_context is None:
            raise TypeError("PreserveLoggingContext(None): pass SENTINEL_CONTEXT for 'no context'")
        self._new = new_context
        self._token: Token[LoggingContextOrSentinel] | None = None

    def __enter__(self) -> None:
        self._token = _var_set(self._new)
        if _clock._metering:
            _ledger.checkpoint(self._new)

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        token = self._token
        if token is None:
            report(
                "double-exit",
                "PreserveLoggingContext exited without a matching enter",
                site="preserve",
            )
            return
        self._token = None
        found = _var_get()
        try:
            _var_reset(token)
        except ValueError:
            report(
                "foreign-exit",
                "PreserveLoggingContext exited in a different contextvars.Context (left as is)",
                context=self._new if self._new else None,
                site="preserve",
                level=logging.DEBUG,
                can_raise=False,
            )
            return
        if _clock._metering:
            _ledger.checkpoint(_var_get())
        if found is not self._new:
            report(
                "exit-mismatch",
                f"expected {self._new} but found {found} when leaving PreserveLoggingContext",
                context=self._new if self._new else None,
                site="preserve",
            )


def nested_logging_context(suffix: str) -> LoggingContext:
    """A new, not entered, child of the current context named ``f"{parent}-{suffix}"``."""
    parent = _var_get()
    if not parent:
        report(
            "sentinel-usage",
            f"nested_logging_context({suffix!r}) called outside any context; usage will not roll up",
            site=f"nested_logging_context:{suffix}",
        )
        return LoggingContext(f"sentinel-{suffix}")
    assert isinstance(parent, LoggingContext)
    return LoggingContext(f"{parent.name}-{suffix}", parent_context=parent)


def _before_fork() -> None:
    _usage_lock.acquire()


def _after_fork_parent() -> None:
    _usage_lock.release()


def _after_fork_child() -> None:
    global _usage_lock
    _usage_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )


_update_trace()
