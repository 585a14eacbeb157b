"""The sentinel: the "no context" value of the current-context variable."""

from __future__ import annotations

from ._config import config
from ._usage import ContextResourceUsage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class _Sentinel:
    """Falsy stand-in for "no logging context"; recording on it does nothing.

    Time charged while it is current is booked by the ledger as
    *unattributed*. Test for it by truthiness: ``if not current_context():``.
    """

    __slots__ = ("__weakref__", "_reported")

    name: Final = "sentinel"
    parent_context: Final = None
    request: Final = None
    span: Final = None
    tag: Final = ""
    finished: Final = False
    late_usage: Final = None
    end_span_on_exit: Final = False
    _ancestors: Final[tuple[()]] = ()
    _extra: Final = None

    @property
    def server_name(self) -> str:
        return config.default_server_name

    def __str__(self) -> str:
        return "sentinel"

    def __repr__(self) -> str:
        return "SENTINEL_CONTEXT"

    def __bool__(self) -> bool:
        return False

    def get_resource_usage(self) -> ContextResourceUsage:
        """Always zeros."""
        return ContextResourceUsage()

    def add_cputime(self, utime: float, stime: float = 0.0) -> None:
        """No-op."""

    def record_db_txn(self, duration_sec: float) -> None:
        """No-op."""

    def record_db_scheduled(self, sched_sec: float) -> None:
        """No-op."""

    def record_event_fetch(self, count: int) -> None:
        """No-op."""

    add_database_transaction = record_db_txn
    add_database_scheduled = record_db_scheduled

    def start(self, reading: object) -> None:
        """No-op: the sentinel is charged implicitly when nothing else is."""

    def stop(self, reading: object) -> None:
        """No-op."""


SENTINEL_CONTEXT: Final = _Sentinel()
