"""Tracing: spans that carry each logging context's resource usage (extras ``[otel]``,
``[opentracing]``).

Nothing is traced until :func:`init_tracing`; until then :func:`start_span` returns a shared null
context manager and the decorators, applied while no tracing extra is installed, return the
function itself. Helper calls never raise backend errors into user code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._api import (
    FORCE_TRACING_BAGGAGE,
    SpanOptions,
    active_span,
    extract,
    extract_link,
    extract_text_map,
    force_tracing,
    get_active_span_text_map,
    init_tracing,
    inject,
    inject_header_dict,
    inject_response_headers,
    inject_text_map,
    is_allowed_destination,
    is_forced,
    log_event,
    log_kv,
    set_attribute,
    set_operation_name,
    set_propagation_allowlist,
    set_tag,
    shutdown_tracing,
    start_active_span,
    start_span,
    tag_args,
    trace,
    trace_with_name,
    trace_with_opname,
    tracing_enabled,
    usage_attributes,
)
from ._base import NULL_SPAN, Span, SpanContext

if TYPE_CHECKING:
    from ._sampler import ForceTracingSampler

__all__ = [
    "FORCE_TRACING_BAGGAGE",
    "NULL_SPAN",
    "ForceTracingSampler",
    "Span",
    "SpanContext",
    "SpanOptions",
    "active_span",
    "extract",
    "extract_link",
    "extract_text_map",
    "force_tracing",
    "get_active_span_text_map",
    "init_tracing",
    "inject",
    "inject_header_dict",
    "inject_response_headers",
    "inject_text_map",
    "is_allowed_destination",
    "is_forced",
    "log_event",
    "log_kv",
    "set_attribute",
    "set_homeserver_whitelist",
    "set_operation_name",
    "set_propagation_allowlist",
    "set_tag",
    "shutdown_tracing",
    "start_active_span",
    "start_span",
    "tag_args",
    "trace",
    "trace_with_name",
    "trace_with_opname",
    "tracing_enabled",
    "usage_attributes",
    "whitelisted_homeserver",
]

#: Synapse-parity aliases.
set_homeserver_whitelist = set_propagation_allowlist
whitelisted_homeserver = is_allowed_destination


def __getattr__(name: str) -> Any:
    # ForceTracingSampler subclasses the OTel SDK's Sampler: imported only when asked for.
    if name == "ForceTracingSampler":
        from ._sampler import ForceTracingSampler

        return ForceTracingSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
