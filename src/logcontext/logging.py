"""stdlib ``logging`` integration (spec §5.1): stamp records with the context.

The record factory is preferred: it annotates each record when it is
*created*, so buffering handlers (``QueueHandler`` + ``QueueListener``,
``MemoryHandler``) that format later, on another thread, still show the
context of the logging call::

    import logging
    from logcontext.logging import DEFAULT_FORMAT, install_log_record_factory

    install_log_record_factory()
    logging.basicConfig(format=DEFAULT_FORMAT, level=logging.INFO)

:class:`LoggingContextFilter` does the same as a handler filter, and is right
only when the handler runs in the logging call's thread and ``Context``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

from . import _config, _hooks
from ._context import _var_get

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final


__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_FORMAT",
    "JsonFormatter",
    "LoggingContextFilter",
    "TerseJsonFormatter",
    "install_log_record_factory",
    "uninstall_log_record_factory",
]

DEFAULT_FORMAT: Final = "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"

_REQUEST_FIELDS: Final = (
    "ip_address",
    "site_tag",
    "requester",
    "authenticated_entity",
    "method",
    "url",
    "protocol",
    "user_agent",
)
#: Every field the factory can set (before ``field_prefix``).
DEFAULT_FIELDS: Final = ("request", "server_name", *_REQUEST_FIELDS)

_log = logging.getLogger(__name__)

Annotator = Callable[[logging.LogRecord], None]


def _make_annotator(fields: Iterable[str], field_prefix: str, trace_fields: bool) -> Annotator:
    fields = tuple(fields)
    unknown = set(fields) - set(DEFAULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log-record field(s) {sorted(unknown)}: choose from {list(DEFAULT_FIELDS)}")
    want_request = "request" in fields
    want_server = "server_name" in fields
    req_fields = tuple((f, field_prefix + f) for f in _REQUEST_FIELDS if f in fields)
    k_request = field_prefix + "request"
    k_server = field_prefix + "server_name"
    k_trace = field_prefix + "trace_id"
    k_span = field_prefix + "span_id"

    def annotate(record: logging.LogRecord) -> None:
        ctx = _var_get()
        d = record.__dict__
        if ctx:
            if want_request:
                d[k_request] = ctx.name
            if want_server:
                d[k_server] = ctx.server_name
            req = ctx.request
            if req is not None:
                for attr, key in req_fields:
                    d[key] = getattr(req, attr)
        else:
            # No-clobber in the sentinel: keep what is already on the record.
            if want_request and k_request not in d:
                d[k_request] = "sentinel"
            if want_server and k_server not in d:
                d[k_server] = ctx.server_name
        if trace_fields:
            get_ids = _hooks.trace_ids
            if get_ids is not None:
                ids = get_ids()
                if ids is not None:
                    d[k_trace], d[k_span] = ids

    return annotate


def _default_factory(
    previous: Callable[..., logging.LogRecord], trace_fields: bool
) -> Callable[..., logging.LogRecord]:
    """The factory for the default field set, written out for speed (spec P11/P12)."""
    cfg = _config.config
    hooks = _hooks

    def factory(
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        sinfo: str | None = None,
        **kwargs: Any,
    ) -> logging.LogRecord:
        # Explicit parameters: Logger.makeRecord passes exactly these, and not
        # repacking *args saves a measurable share of the per-record cost.
        if kwargs:
            record = previous(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kwargs)
        else:
            record = previous(name, level, fn, lno, msg, args, exc_info, func, sinfo)
        ctx = _var_get()
        d = record.__dict__
        if ctx:
            d["request"] = ctx.name
            if ctx._extra is None:  # nothing explicit: inherit from the parent, if any
                ancestors = ctx._ancestors
                if not ancestors:
                    d["server_name"] = cfg.default_server_name
                    req = None
                else:
                    parent = ancestors[0]
                    d["server_name"] = parent.server_name
                    req = parent.request
            else:
                d["server_name"] = ctx.server_name
                req = ctx.request
            if req is not None:
                d["ip_address"] = req.ip_address
                d["site_tag"] = req.site_tag
                d["requester"] = req.requester
                d["authenticated_entity"] = req.authenticated_entity
                d["method"] = req.method
                d["url"] = req.url
                d["protocol"] = req.protocol
                d["user_agent"] = req.user_agent
        else:
            if "request" not in d:
                d["request"] = "sentinel"
            if "server_name" not in d:
                d["server_name"] = cfg.default_server_name
        if trace_fields and hooks.trace_ids is not None:
            ids = hooks.trace_ids()
            if ids is not None:
                d["trace_id"], d["span_id"] = ids
        return record

    return factory


_installed: tuple[Callable[..., logging.LogRecord], Callable[..., logging.LogRecord]] | None = None


def install_log_record_factory(
    *,
    fields: Iterable[str] = DEFAULT_FIELDS,
    field_prefix: str = "",
    trace_fields: bool = True,
) -> None:
    """Wrap the current log-record factory so every record carries the context.

    Idempotent: a second call while ours is installed does nothing. The stdlib
    applies ``extra=`` after the factory and refuses to overwrite, so code that
    logs ``extra={"request": ...}`` needs a ``field_prefix`` such as ``"ctx_"``.
    """
    global _installed
    if _installed is not None and logging.getLogRecordFactory() is _installed[1]:
        return
    previous = logging.getLogRecordFactory()
    fields = tuple(fields)
    if field_prefix == "" and set(fields) == set(DEFAULT_FIELDS):
        factory = _default_factory(previous, trace_fields)
    else:
        annotate = _make_annotator(fields, field_prefix, trace_fields)

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            annotate(record)
            return record

    factory.__logcontext__ = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    _installed = (previous, factory)


def uninstall_log_record_factory() -> None:
    """Restore the factory that was current before ours, if ours is on top."""
    global _installed
    if _installed is None:
        return
    previous, ours = _installed
    if logging.getLogRecordFactory() is not ours:
        _log.warning(
            "not uninstalling the logcontext record factory: another factory was installed on top of it"
        )
        return
    logging.setLogRecordFactory(previous)
    _installed = None


class LoggingContextFilter(logging.Filter):
    """A handler filter that stamps records like the factory does; never drops one."""

    def __init__(
        self,
        *,
        fields: Iterable[str] = DEFAULT_FIELDS,
        field_prefix: str = "",
        trace_fields: bool = True,
    ) -> None:
        super().__init__()
        self._annotate = _make_annotator(fields, field_prefix, trace_fields)

    def filter(self, record: logging.LogRecord) -> bool:
        self._annotate(record)
        return True


_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record.

    Keys: ``log`` (the message), ``namespace`` (logger name), ``level``, then
    every non-standard record attribute (context fields, ``extra=``);
    unserialisable values become their ``repr()``. Exceptions add
    ``exc_type`` and ``exc_value`` (and ``traceback`` if asked).
    """

    def __init__(self, *, include_traceback: bool = False) -> None:
        super().__init__()
        self.include_traceback = include_traceback

    def _base(self, record: logging.LogRecord) -> dict[str, Any]:
        return {}

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = self._base(record)
        event["log"] = record.getMessage()
        event["namespace"] = record.name
        event["level"] = record.levelname
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in event:
                event[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_type"] = record.exc_info[0].__name__
            event["exc_value"] = str(record.exc_info[1])
            if self.include_traceback:
                event["traceback"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=repr)


class TerseJsonFormatter(JsonFormatter):
    """:class:`JsonFormatter` plus ``time`` (seconds since the epoch, 2 decimals)."""

    def _base(self, record: logging.LogRecord) -> dict[str, Any]:
        return {"time": round(record.created, 2)}
