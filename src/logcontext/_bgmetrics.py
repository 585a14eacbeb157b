"""Metric hook slots, importable without ``prometheus_client``.

Other modules call these hooks unconditionally; they are no-ops until
:func:`logcontext.metrics.install_metrics` sets :data:`active`.

Hooks for ``run_as_background_process`` (asyncio and Twisted helpers)::

    bg_started(desc: str, ctx: LoggingContext) -> None    # after the context is created, before fn
    bg_finished(desc: str, ctx: LoggingContext) -> None   # once, when the process ends (any outcome)

Database metrics come through ``logcontext._db_hooks`` (an observer set by the exporter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from logcontext import LoggingContextOrSentinel

__all__ = [
    "MetricsSink",
    "active",
    "bg_finished",
    "bg_started",
]


class MetricsSink(Protocol):
    """What :mod:`logcontext.metrics` provides to the hooks (blocks, requests, background)."""

    def block(self, block_name: str, server_name: str) -> Any: ...
    def request_started(self, req: Any) -> None: ...
    def request_received(self, method: str, servlet: str, server_name: str) -> None: ...
    def request_finished(
        self,
        req: Any,
        *,
        code: str,
        tag: str,
        duration: float,
        size: int,
        usage: Any = None,
        received: bool = False,
    ) -> None: ...
    def bg_started(self, desc: str, ctx: LoggingContextOrSentinel) -> None: ...
    def bg_finished(self, desc: str, ctx: LoggingContextOrSentinel) -> None: ...


active: MetricsSink | None = None
"""The installed metrics, or ``None``; set by ``install_metrics``."""


def bg_started(desc: str, ctx: LoggingContextOrSentinel) -> None:
    """A background process ``desc`` started running in ``ctx`` (its parentless context).

    Call after the context is created, before ``fn`` runs. Counts
    ``background_process_start_count`` and adds the process to the in-flight set whose
    usage is reported at every scrape.
    """
    m = active
    if m is not None:
        m.bg_started(desc, ctx)


def bg_finished(desc: str, ctx: LoggingContextOrSentinel) -> None:
    """The background process ``desc`` running in ``ctx`` ended (any outcome): final update."""
    m = active
    if m is not None:
        m.bg_finished(desc, ctx)
