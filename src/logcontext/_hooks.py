"""Hook slots that optional modules fill in, so the core never imports them.

Each slot is ``None`` until the module that owns it is set up; the core tests
the slot and skips the call, so an unused integration costs one load.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from ._context import LoggingContext

#: Called by ``LoggingContext.__exit__`` (after restoring the previous context
#: and marking the context finished) when ``ctx.span`` is set and
#: ``ctx.end_span_on_exit`` is true. Set by :mod:`logcontext.tracing`.
span_ender: Callable[[LoggingContext], None] | None = None

#: Called by ``LoggingContext.__exit__`` after ``span_ender``, for every
#: context whose ``_exit_hook`` flag is set (metrics: background processes).
on_context_exit: Callable[[LoggingContext], None] | None = None

#: Returns ``(trace_id_hex32, span_id_hex16)`` of the active span, or ``None``.
#: Set by :mod:`logcontext.tracing` when tracing is initialised; used by the
#: log-record factory and the structlog processor.
trace_ids: Callable[[], tuple[str, str] | None] | None = None

#: Free-form registry for integrations that need to find each other lazily.
extra: dict[str, Any] = {}
