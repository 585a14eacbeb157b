"""logcontext: a logging context for every unit of work.

Each request, background job or transaction runs in a :class:`LoggingContext`
that tags its log lines, accounts the CPU and database time it uses (rolled up
into its parents as it is recorded) and carries a trace span.

>>> from logcontext import LoggingContext, current_context
>>> with LoggingContext("GET-1") as ctx:
...     assert current_context() is ctx
>>> bool(current_context())
False
"""

from __future__ import annotations

import importlib

from . import _config as _config_module
from ._config import configure
from ._context import (
    SENTINEL_CONTEXT,
    ContextRequest,
    LoggingContext,
    LoggingContextOrSentinel,
    PreserveLoggingContext,
    current_context,
    nested_logging_context,
    set_current_context,
)
from ._misuse import LogContextError, MisuseReport, set_misuse_hook
from ._usage import ContextResourceUsage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0.dev0"

# Helpers that live in their own modules; imported on first use so that
# ``import logcontext`` loads only the core.
_LAZY: dict[str, str] = {
    "run_in_background": "._helpers",
    "run_as_background_process": "._helpers",
    "wrap_as_background_process": "._helpers",
    "run_in_thread": "._helpers",
    "run_in_executor": "._helpers",
    "defer_to_thread": "._helpers",
    "bind": "._helpers",
    "Measure": "._measure",
    "measure_func": "._measure",
    "redact_uri": "._redact",
}

__all__ = [
    "SENTINEL_CONTEXT",
    "ContextRequest",
    "ContextResourceUsage",
    "LogContextError",
    "LoggingContext",
    "LoggingContextOrSentinel",
    "Measure",
    "MisuseReport",
    "PreserveLoggingContext",
    "bind",
    "configure",
    "current_context",
    "defer_to_thread",
    "measure_func",
    "nested_logging_context",
    "redact_uri",
    "run_as_background_process",
    "run_in_background",
    "run_in_executor",
    "run_in_thread",
    "set_current_context",
    "set_misuse_hook",
    "wrap_as_background_process",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'logcontext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


_config_module._from_environment()
