"""Prometheus metrics of state resolution (spec §6), ``prometheus_client`` imported lazily.

The families live in one `StateMetrics` per registry, registered as a single collector.
Resolutions update the *active* one: the first resolution installs it on the default registry
(the registry of ``logcontext.metrics.install_metrics`` if installed, else
``prometheus_client.REGISTRY``) unless `install_state_metrics` or `uninstall_state_metrics`
was called first. Without ``prometheus_client`` nothing is recorded and nothing fails.

``state_res_unindexed_events`` is read at scrape time from the sources added with
`add_unindexed_source`; `pool_unindexed_source` counts, in a store's database, the events of
rooms that have a chain-cover index but are not in it yet (waiting for the index to be rebuilt).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import sys
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = [
    "ALGORITHMS",
    "ERROR_CATEGORIES",
    "IAC_OUTCOMES",
    "IAC_PASSES",
    "METHODS",
    "PHASES",
    "StateMetrics",
    "active_state_metrics",
    "add_unindexed_source",
    "count_unindexed_events_txn",
    "install_state_metrics",
    "pool_unindexed_source",
    "unindexed_events",
    "uninstall_state_metrics",
]

logger = logging.getLogger("homeserver.state")

#: ``phase`` label values of ``state_res_seconds``: the phases, and ``total`` (whole resolution).
PHASES = (
    "split",
    "auth_difference",
    "conflicted_subgraph",
    "load_events",
    "power_graph",
    "sender_power",
    "power_sort",
    "iac_power",
    "mainline",
    "iac_rest",
    "overlay",
    "total",
)
ALGORITHMS = ("v2", "v2.1")
IAC_PASSES = ("iac_power", "iac_rest")
IAC_OUTCOMES = ("accepted", "failed", "skipped_rejected")
METHODS = ("walk", "chain")
#: Categories pre-created at 0 (others appear when first raised); ``internal`` counts any
#: exception that is not a `StateResolutionError` (a bug); ``invalid_input`` and
#: ``unsupported_room_version`` are raised before resolving (not timed).
ERROR_CATEGORIES = (
    "invalid_power_levels",
    "invalid_membership",
    "invalid_third_party_invite",
    "invalid_member_content",
    "invalid_event",
    "missing_create",
    "wrong_room",
    "unknown_event",
    "auth_cycle",
    "unsupported_room_version",
    "invalid_input",
    "internal",
)

SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)

UNINDEXED_HELP = "Events of rooms with a chain-cover index that are not in it yet"


class ResolutionFigures:
    """What one resolution reports to the metrics (filled by the phase hooks)."""

    __slots__ = ("algorithm", "auth_difference", "full_set", "iac", "method", "phase_seconds")

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.phase_seconds: dict[str, float] = {}
        self.full_set: int | None = None
        self.auth_difference: int | None = None
        self.method: str | None = None
        self.iac: dict[tuple[str, str], int] = {}


class _Hist:
    """Bucket counts and sum of one histogram child (cumulated at scrape time)."""

    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0


class StateMetrics:
    """The state-resolution families of one registry (see the module docstring).

    Values are plain counters updated under one lock per resolution (`record`) and turned into
    metric families at scrape time: recording a resolution costs a few microseconds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        n = len(SECONDS_BUCKETS)
        self.seconds: dict[tuple[str, str], _Hist] = {(p, a): _Hist(n) for p in PHASES for a in ALGORITHMS}
        self.full_conflicted = _Hist(len(SIZE_BUCKETS))
        self.auth_difference = _Hist(len(SIZE_BUCKETS))
        self.iac: dict[tuple[str, str], int] = {(p, o): 0 for p in IAC_PASSES for o in IAC_OUTCOMES}
        self.errors: dict[str, int] = dict.fromkeys(ERROR_CATEGORIES, 0)
        self.methods: dict[str, int] = dict.fromkeys(METHODS, 0)
        self.collector = _Collector(self)
        self.registered = False

    def record(self, figures: ResolutionFigures, seconds: float, error: str | None) -> None:
        """Account one resolution (``error``: its category, ``None`` if it succeeded)."""
        alg = figures.algorithm
        hists = self.seconds
        nb = len(SECONDS_BUCKETS)
        with self._lock:
            for phase, dt in (("total", seconds), *figures.phase_seconds.items()):
                h = hists.get((phase, alg))
                if h is None:
                    h = hists[(phase, alg)] = _Hist(nb)
                h.counts[bisect_left(SECONDS_BUCKETS, dt)] += 1
                h.sum += dt
            if figures.full_set is not None:
                h = self.full_conflicted
                h.counts[bisect_left(SIZE_BUCKETS, figures.full_set)] += 1
                h.sum += figures.full_set
            if figures.auth_difference is not None:
                h = self.auth_difference
                h.counts[bisect_left(SIZE_BUCKETS, figures.auth_difference)] += 1
                h.sum += figures.auth_difference
            if figures.method is not None:
                self.methods[figures.method] = self.methods.get(figures.method, 0) + 1
            iac = self.iac
            for key, count in figures.iac.items():
                iac[key] = iac.get(key, 0) + count
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1

    def record_error(self, category: str) -> None:
        """Count an error raised before a resolution started (not timed)."""
        with self._lock:
            self.errors[category] = self.errors.get(category, 0) + 1

    def families(self) -> list[Metric]:
        """The families' current values (the gauge excepted)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        def buckets(h: _Hist, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
            out: list[tuple[str, float]] = []
            acc = 0
            for bound, c in zip((*map(_le, bounds), "+Inf"), h.counts, strict=True):
                acc += c
                out.append((bound, acc))
            return out

        with self._lock:
            seconds = HistogramMetricFamily("state_res_seconds", SECONDS_HELP, labels=["phase", "algorithm"])
            for (phase, alg), h in self.seconds.items():
                seconds.add_metric([phase, alg], buckets(h, SECONDS_BUCKETS), h.sum)
            full = HistogramMetricFamily("state_res_full_conflicted_events", FULL_HELP)
            full.add_metric([], buckets(self.full_conflicted, SIZE_BUCKETS), self.full_conflicted.sum)
            diff = HistogramMetricFamily("state_res_auth_difference_events", DIFF_HELP)
            diff.add_metric([], buckets(self.auth_difference, SIZE_BUCKETS), self.auth_difference.sum)
            iac = CounterMetricFamily("state_res_iac", IAC_HELP, labels=["pass", "outcome"])
            for (pass_, outcome), count in self.iac.items():
                iac.add_metric([pass_, outcome], count)
            errors = CounterMetricFamily("state_res_errors", ERRORS_HELP, labels=["category"])
            for category, count in self.errors.items():
                errors.add_metric([category], count)
            methods = CounterMetricFamily("state_res_auth_difference_method", METHOD_HELP, labels=["method"])
            for method, count in self.methods.items():
                methods.add_metric([method], count)
        return [seconds, full, diff, iac, errors, methods]


def _le(bound: float) -> str:
    return str(float(bound))


SECONDS_HELP = "Wall time of state resolutions (phase=total) and of their phases"
FULL_HELP = "Events in the full conflicted set of a resolution"
DIFF_HELP = "Events in the auth difference of a resolution"
IAC_HELP = "Events replayed by the iterative auth checks, by pass and outcome"
ERRORS_HELP = "Failed resolutions by error category"
METHOD_HELP = "Auth differences computed, by method"


class _Collector:
    """Every family of a `StateMetrics`, plus the scrape-time unindexed gauge."""

    def __init__(self, metrics: StateMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield from self._m.families()
        yield GaugeMetricFamily("state_res_unindexed_events", UNINDEXED_HELP, value=unindexed_events())

    def describe(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield from self._m.families()
        yield GaugeMetricFamily("state_res_unindexed_events", UNINDEXED_HELP)


# -- the active families ------------------------------------------------------------------------

_UNSET: Any = object()
_lock = threading.Lock()
_active: Any = _UNSET  # StateMetrics, None (off / no prometheus_client) or _UNSET (first use)
_by_registry: weakref.WeakKeyDictionary[Any, StateMetrics] = weakref.WeakKeyDictionary()


def _default_registry() -> CollectorRegistry:
    lib = sys.modules.get("logcontext.metrics")
    installed = lib.installed_metrics() if lib is not None else None
    if installed is not None:
        registry: CollectorRegistry = installed.registry
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def install_state_metrics(registry: CollectorRegistry | None = None) -> StateMetrics | None:
    """Register the families on ``registry`` (once per registry) and make resolutions update them.

    ``registry`` defaults to the library's installed registry or ``prometheus_client.REGISTRY``.
    The previously active families (another registry) are unregistered. Returns ``None``, and
    records nothing, when ``prometheus_client`` is not installed.
    """
    global _active
    try:
        import prometheus_client
    except ImportError:
        with _lock:
            _active = None
        return None
    if registry is None:
        registry = _default_registry()
    elif not isinstance(registry, prometheus_client.CollectorRegistry):
        raise TypeError(f"registry must be a prometheus_client CollectorRegistry, not {registry!r}")
    with _lock:
        m = _by_registry.get(registry)
        if m is None:
            m = _by_registry[registry] = StateMetrics(registry)
        if not m.registered:
            registry.register(m.collector)
            m.registered = True
        prev = _active
        if isinstance(prev, StateMetrics) and prev is not m:
            _unregister(prev)
        _active = m
        return m


def _unregister(m: StateMetrics) -> None:
    if m.registered:
        with contextlib.suppress(KeyError):  # unregistered behind our back
            m.registry.unregister(m.collector)
        m.registered = False


def uninstall_state_metrics() -> None:
    """Unregister the active families; resolutions record nothing until the next install."""
    global _active
    with _lock:
        if isinstance(_active, StateMetrics):
            _unregister(_active)
        _active = None


def active_state_metrics() -> StateMetrics | None:
    """The families resolutions update (installed on the default registry on first use)."""
    global _active
    m = _active
    if m is _UNSET:
        try:
            return install_state_metrics()
        except ValueError as e:  # the names are taken on the default registry
            _active = None
            logger.warning("state resolution metrics disabled: %s", e)
            return None
    return m  # type: ignore[no-any-return]


# -- events waiting for the chain-cover index ---------------------------------------------------

_sources: dict[int, Callable[[], int | None]] = {}
_sources_lock = threading.Lock()
_next_source = 0


def add_unindexed_source(source: Callable[[], int | None]) -> Callable[[], None]:
    """Add a scrape-time reader of unindexed events (``None``: unknown); returns its remover."""
    global _next_source
    if not callable(source):
        raise TypeError(f"unindexed source must be callable, not {source!r}")
    with _sources_lock:
        key = _next_source
        _next_source += 1
        _sources[key] = source

    def remove() -> None:
        with _sources_lock:
            _sources.pop(key, None)

    return remove


def unindexed_events() -> float:
    """The sum over the sources; 0 without sources, NaN if every source failed."""
    with _sources_lock:
        sources = list(_sources.values())
    total = 0
    known = 0
    for source in sources:
        try:
            n = source()
        except Exception as e:
            logger.warning("unindexed events source %r failed: %s", source, e)
            continue
        if n is not None:
            total += int(n)
            known += 1
    if sources and not known:
        return math.nan
    return float(total)


UNINDEXED_SQL = (
    "SELECT COUNT(*) FROM events AS e"
    " WHERE e.room_id IN (SELECT c.room_id FROM event_auth_chains AS c)"
    " AND NOT EXISTS (SELECT 1 FROM event_auth_chains AS c2 WHERE c2.event_id = e.event_id)"
)


def count_unindexed_events_txn(txn: Any) -> int:
    """Events of rooms with index rows (``event_auth_chains``) that have no row themselves."""
    txn.execute(UNINDEXED_SQL)
    row = txn.fetchone()
    return int(row[0]) if row else 0


def pool_unindexed_source(pool: Any, *, timeout: float = 0.5) -> Callable[[], int | None]:
    """A source counting unindexed events in ``pool``'s database (a ``logcontext.db.DatabasePool``).

    The count runs on the pool's worker, in its own logging context. A scrape waits at most
    ``timeout`` seconds for it; past that it reports the previous count (``None`` at first) and
    the next scrape waits for the same query instead of starting another one.
    """
    if not hasattr(pool, "submit_interaction"):
        raise TypeError(f"pool must be a logcontext.db.DatabasePool, not {pool!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    in_flight: list[concurrent.futures.Future[int]] = []
    last: list[int | None] = [None]

    def wait(future: concurrent.futures.Future[int]) -> int | None:
        try:
            n = future.result(timeout)
        except concurrent.futures.TimeoutError:
            in_flight[:] = [future]
            return last[0]
        except BaseException:
            in_flight.clear()
            raise
        in_flight.clear()
        last[0] = n
        return n

    def read() -> int | None:
        if in_flight:
            return wait(in_flight[0])
        from logcontext import LoggingContext

        with LoggingContext("state_res_unindexed_scrape"):
            return wait(pool.submit_interaction("count_unindexed_events", count_unindexed_events_txn))

    return read
