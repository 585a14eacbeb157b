"""The hook between :mod:`logcontext.db` and a metrics exporter (spec §7, §8).

The database pool never imports a metrics library. It calls ``observer`` (when
set) at the points a per-``desc`` counter or histogram needs, and keeps every
live pool in ``pools`` so a collector can read gauges at scrape time.
``logcontext.metrics`` sets ``observer``; with no observer the pool pays one
module-attribute load per event.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .db import DatabasePool

__all__ = ["DatabaseObserver", "observer", "pools", "set_observer"]


class DatabaseObserver(Protocol):
    """Callbacks a metrics exporter implements; all run on pool worker threads.

    ``pool.server_name`` and ``pool.name`` give the remaining labels. Each call
    must be cheap and must not raise (an exception is logged and dropped).
    """

    def scheduled(self, pool: DatabasePool, sched_s: float) -> None:
        """A job waited ``sched_s`` seconds for a connection (``db_schedule_time_seconds``)."""

    def transaction(self, pool: DatabasePool, desc: str, duration_s: float, attempts: int, ok: bool) -> None:
        """One interaction finished (``db_transaction_count``/``_duration_seconds{desc}``)."""

    def retry(self, pool: DatabasePool, desc: str) -> None:
        """An attempt of ``desc`` failed retryably and is retried (``db_transaction_retries``)."""

    def query(self, pool: DatabasePool, verb: str, duration_s: float) -> None:
        """One statement ran (``db_query_time_seconds{verb}``); only called when an observer is set."""


#: The installed observer, or ``None`` (no metrics).
observer: DatabaseObserver | None = None

#: Every open :class:`~logcontext.db.DatabasePool` (for the in-use gauge:
#: ``pool.connections_in_use``; labels ``pool.name``, ``pool.server_name``).
pools: weakref.WeakSet[DatabasePool] = weakref.WeakSet()


def set_observer(obs: DatabaseObserver | None) -> DatabaseObserver | None:
    """Install ``obs`` (``None`` removes it); return the previous observer."""
    global observer
    previous, observer = observer, obs
    return previous
