"""structlog integration (spec §5.3).

``add_logcontext`` is a structlog processor that adds the current logging context's fields
(``request``, ``server_name``, the request fields and, when tracing is enabled, ``trace_id`` and
``span_id``) to the event dict with ``setdefault``, so explicit bindings win. It reads the one
``ContextVar`` of the core: nothing is mirrored into ``structlog.contextvars``.

It also works as a ``foreign_pre_chain`` processor of ``structlog.stdlib.ProcessorFormatter``,
annotating records from plain ``logging`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from logcontext import _hooks
from logcontext._config import config as _config
from logcontext._context import _var_get

__all__ = ["DEFAULT_FIELDS", "REQUEST_FIELDS", "add_logcontext", "make_processor"]

REQUEST_FIELDS: tuple[str, ...] = (
    "ip_address",
    "site_tag",
    "requester",
    "authenticated_entity",
    "method",
    "url",
    "protocol",
    "user_agent",
)
"""Fields copied from ``ctx.request`` when the context has one."""

DEFAULT_FIELDS: tuple[str, ...] = ("request", "server_name", *REQUEST_FIELDS)
"""Every field the processor can add (besides ``trace_id``/``span_id``)."""

EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]

_ALL = frozenset(DEFAULT_FIELDS)


def add_logcontext(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Add the current context's fields to ``event_dict`` (explicit bindings win)."""
    ctx = _var_get()
    if ctx._extra is None and not ctx._ancestors:
        # No explicit fields and no parent (the sentinel included): what the ``server_name``
        # and ``request`` properties would return, without their calls.
        server = _config.default_server_name
        req = None
    else:
        server = ctx.server_name
        req = ctx.request
    # ``in`` + item assignment is cheaper than ``setdefault`` calls on the hot path.
    if "request" not in event_dict:
        event_dict["request"] = ctx.name
    if "server_name" not in event_dict:
        event_dict["server_name"] = server
    if req is not None:
        sd = event_dict.setdefault
        sd("ip_address", req.ip_address)
        sd("site_tag", req.site_tag)
        sd("requester", req.requester)
        sd("authenticated_entity", req.authenticated_entity)
        sd("method", req.method)
        sd("url", req.url)
        sd("protocol", req.protocol)
        sd("user_agent", req.user_agent)
    get_ids = _hooks.trace_ids
    if get_ids is not None:
        ids = get_ids()
        if ids is not None:
            if "trace_id" not in event_dict:
                event_dict["trace_id"] = ids[0]
            if "span_id" not in event_dict:
                event_dict["span_id"] = ids[1]
    return event_dict


def make_processor(
    fields: Iterable[str] = DEFAULT_FIELDS,
    field_prefix: str = "",
    trace_fields: bool = True,
) -> Processor:
    """Build a variant of :func:`add_logcontext` with a subset of fields and/or a key prefix."""
    if isinstance(fields, str):
        raise TypeError("make_processor: fields must be an iterable of field names, not a str")
    chosen = tuple(fields)
    unknown = [f for f in chosen if f not in _ALL]
    if unknown:
        raise ValueError(f"make_processor: unknown fields {unknown}; known: {list(DEFAULT_FIELDS)}")
    if not isinstance(field_prefix, str):
        raise TypeError("make_processor: field_prefix must be a str")
    if chosen == DEFAULT_FIELDS and not field_prefix and trace_fields:
        return add_logcontext
    want_request = "request" in chosen
    want_server = "server_name" in chosen
    req_fields = tuple((field_prefix + f, f) for f in REQUEST_FIELDS if f in chosen)
    k_request = field_prefix + "request"
    k_server = field_prefix + "server_name"
    k_trace = field_prefix + "trace_id"
    k_span = field_prefix + "span_id"

    def processor(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        ctx = _var_get()
        sd = event_dict.setdefault
        if want_request:
            sd(k_request, ctx.name)
        if want_server:
            sd(k_server, ctx.server_name)
        if req_fields:
            req = ctx.request
            if req is not None:
                for key, attr in req_fields:
                    sd(key, getattr(req, attr))
        get_ids = _hooks.trace_ids
        if trace_fields and get_ids is not None:
            ids = get_ids()
            if ids is not None:
                sd(k_trace, ids[0])
                sd(k_span, ids[1])
        return event_dict

    processor.__name__ = processor.__qualname__ = "add_logcontext_custom"
    return processor
