"""Prometheus metrics (spec §7; extra ``[prometheus]``).

``install_metrics()`` registers every family on a registry and switches the library's metric
hooks on (blocks, HTTP requests, background processes, database, per-thread CPU, misuse
reports). Only this module imports ``prometheus_client``; ``import logcontext`` never does.

Labelled children are cached per label tuple, so the hot path does a dict lookup and an
``inc()``, never ``.labels()``. ``block_name``, ``servlet``, ``desc`` and ``name`` values must be
code constants: past ``label_cap`` tuples in a family, new ones are folded into ``__other__``
and one ``label-cardinality`` misuse report is made per family.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from logcontext import ContextResourceUsage, _bgmetrics

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from aiohttp import web

    from logcontext import LoggingContextOrSentinel

__all__ = [
    "Metrics",
    "install_metrics",
    "installed_metrics",
    "metrics_handler",
    "serve_metrics",
    "uninstall_metrics",
]

OTHER = "__other__"

# Family key (default name without prefix) -> Synapse's name, or None when Synapse has none.
_SYNAPSE_NAMES: dict[str, str | None] = {
    "block_count": "synapse_util_metrics_block_count",
    "block_time_seconds": "synapse_util_metrics_block_time_seconds",
    "block_ru_utime_seconds": "synapse_util_metrics_block_ru_utime_seconds",
    "block_ru_stime_seconds": "synapse_util_metrics_block_ru_stime_seconds",
    "block_db_txn_count": "synapse_util_metrics_block_db_txn_count",
    "block_db_txn_duration_seconds": "synapse_util_metrics_block_db_txn_duration_seconds",
    "block_db_sched_duration_seconds": "synapse_util_metrics_block_db_sched_duration_seconds",
    "block_evt_db_fetch_count": None,
    "block_in_flight": "synapse_util_metrics_block_in_flight_total",
    "block_in_flight_real_time_max_seconds": "synapse_util_metrics_block_in_flight_real_time_max",
    "block_in_flight_real_time_sum_seconds": "synapse_util_metrics_block_in_flight_real_time_sum",
    "db_transaction_count": "synapse_storage_transaction_time_count",
    "db_transaction_duration_seconds": "synapse_storage_transaction_time_sum",
    "db_schedule_time_seconds": "synapse_storage_schedule_time",
    "db_query_time_seconds": "synapse_storage_query_time",
    "db_transaction_retries": None,
    "db_connections_in_use": None,
    "cpu_attributed_seconds": None,
    "cpu_unattributed_seconds": None,
    "context_late_cpu_seconds": None,
    "clock_regressions": None,
    "misuse_reports": None,
}
_USAGE_SUFFIXES = (
    "ru_utime_seconds",
    "ru_stime_seconds",
    "db_txn_count",
    "db_txn_duration_seconds",
    "db_sched_duration_seconds",
    "evt_db_fetch_count",
)
for _s in (
    "requests_received",
    "responses",
    "response_count",
    "response_time_seconds",
    *(f"response_{u}" for u in _USAGE_SUFFIXES),
    "response_size",
    *(f"in_flight_requests_{u}" for u in _USAGE_SUFFIXES[:5]),
    "in_flight_requests_count",
):
    _SYNAPSE_NAMES[f"http_server_{_s}"] = f"synapse_http_server_{_s}"
for _s in ("start_count", "in_flight_count", *_USAGE_SUFFIXES):
    _SYNAPSE_NAMES[f"background_process_{_s}"] = f"synapse_background_process_{_s}"

FAMILY_KEYS: tuple[str, ...] = tuple(_SYNAPSE_NAMES)
"""Every family, by its default name without prefix (counters without ``_total``)."""

_PREFIX_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*|")
_THREAD_SUFFIX_RE = re.compile(r"(?:[-_]\d+)+$")

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def family_name(key: str, *, prefix: str = "logcontext_", synapse_compat: bool = False) -> str:
    """The exposed name of family ``key`` (counters: without the ``_total`` the client adds)."""
    if key not in _SYNAPSE_NAMES:
        raise KeyError(f"unknown metric family {key!r}")
    if synapse_compat:
        syn = _SYNAPSE_NAMES[key]
        if syn is not None:
            return syn
    return prefix + key


def normalise_thread_name(name: str) -> str:
    """Strip trailing ``-N``/``_N`` groups (repeatedly) so a pool's threads share one label."""
    return _THREAD_SUFFIX_RE.sub("", name) or name


class _Labelled:
    """A labelled metric plus a cache of its children, capped at ``cap`` label tuples."""

    __slots__ = ("_lock", "cap", "children", "const_idx", "group", "metric", "name", "reported")

    def __init__(
        self,
        metric: Any,
        name: str,
        labelnames: Sequence[str],
        cap: int,
        reported: set[tuple[str, ...]],
    ) -> None:
        self.metric = metric
        self.group = tuple(labelnames)
        self.name = name
        self.cap = cap
        self.children: dict[tuple[str, ...], Any] = {}
        code_constants = {"block_name", "servlet", "desc", "name"}
        idx = tuple(i for i, n in enumerate(labelnames) if n in code_constants)
        self.const_idx = idx or tuple(range(len(labelnames)))
        # Shared by the families of one Metrics: one report per label schema.
        self.reported = reported
        self._lock = threading.Lock()

    def child(self, key: tuple[str, ...]) -> Any:
        """The cached child for ``key`` (slow path: creates it, or folds it into ``__other__``)."""
        c = self.children.get(key)
        if c is not None:
            return c
        with self._lock:
            c = self.children.get(key)
            if c is not None:
                return c
            if len(self.children) >= self.cap:
                folded = tuple(OTHER if i in self.const_idx else v for i, v in enumerate(key))
                if folded != key and self.group not in self.reported:
                    self.reported.add(self.group)
                    _report_cardinality(self.name, self.cap, key)
                c = self.children.get(folded)
                if c is None:
                    c = self.children[folded] = self.metric.labels(*folded)
                return c
            c = self.children[key] = self.metric.labels(*key)
            return c


def _report_cardinality(name: str, cap: int, key: tuple[str, ...]) -> None:
    from logcontext import _misuse

    _misuse.report(
        "label-cardinality",
        f"metric {name} passed label_cap={cap} label sets; new ones (e.g. {key!r}) are "
        f"counted under {OTHER!r}: label values must be code constants",
        site=name,
        can_raise=False,
    )


class BlockStats:
    """Running totals of one (block_name, server_name) block, exported at scrape time.

    ``Measure`` adds to plain fields under a lock (cheaper than several ``Counter.inc()``
    calls); the collector turns them into counter families.
    """

    __slots__ = (
        "count",
        "evts",
        "in_flight",
        "lock",
        "sched",
        "stime",
        "time",
        "txn_count",
        "txn_duration",
        "utime",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.time = 0.0
        self.utime = 0.0
        self.stime = 0.0
        self.txn_count = 0
        self.txn_duration = 0.0
        self.sched = 0.0
        self.evts = 0
        #: ``Measure`` objects of this block running now (read by the in-flight gauges).
        self.in_flight: set[Any] = set()

    def add(self, duration: float, u: ContextResourceUsage) -> None:
        """Count one finished block of ``duration`` seconds with usage ``u`` (clamped)."""
        with self.lock:
            self.count += 1
            if duration > 0:
                self.time += duration
            if u.ru_utime > 0:
                self.utime += u.ru_utime
            if u.ru_stime > 0:
                self.stime += u.ru_stime
            if u.db_txn_count > 0:
                self.txn_count += u.db_txn_count
                self.txn_duration += max(u.db_txn_duration_sec, 0.0)
            if u.db_sched_duration_sec > 0:
                self.sched += u.db_sched_duration_sec
            if u.evt_db_fetch_count > 0:
                self.evts += u.evt_db_fetch_count


_BLOCK_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("block_count", "count", "Measure blocks completed"),
    ("block_time_seconds", "time", "Wall time in Measure blocks"),
    ("block_ru_utime_seconds", "utime", "CPU charged to Measure blocks, user"),
    ("block_ru_stime_seconds", "stime", "CPU charged to Measure blocks, system"),
    ("block_db_txn_count", "txn_count", "Database transactions in Measure blocks"),
    ("block_db_txn_duration_seconds", "txn_duration", "Time in database transactions in blocks"),
    ("block_db_sched_duration_seconds", "sched", "Time waiting for a database connection"),
    ("block_evt_db_fetch_count", "evts", "Events fetched from the database in blocks"),
)


@dataclass(slots=True)
class _UsageChildren:
    utime: Any
    stime: Any
    txn_count: Any
    txn_duration: Any
    sched: Any
    evts: Any | None

    def add(self, d: ContextResourceUsage) -> None:
        if d.ru_utime:
            self.utime.inc(d.ru_utime)
        if d.ru_stime:
            self.stime.inc(d.ru_stime)
        if d.db_txn_count:
            self.txn_count.inc(d.db_txn_count)
        if d.db_txn_duration_sec:
            self.txn_duration.inc(d.db_txn_duration_sec)
        if d.db_sched_duration_sec:
            self.sched.inc(d.db_sched_duration_sec)
        if d.evt_db_fetch_count and self.evts is not None:
            self.evts.inc(d.evt_db_fetch_count)


class _HttpBundle:
    """Every child one finished request touches, for one (method, servlet, tag, server, code).

    A cached bundle accumulates plain numbers in ``pending`` (under the metrics lock) and
    hands them to its children at the next scrape: one lock and a few additions per request
    instead of a dozen ``inc()`` calls. The histogram is observed directly.
    """

    __slots__ = ("cached", "children", "dirty", "pending", "time")

    def __init__(self, children: tuple[Any, ...], time: Any, cached: bool) -> None:
        #: In :data:`_PENDING` order.
        self.children = children
        self.time = time
        self.cached = cached
        self.pending: list[float] = [0] * len(children)
        self.dirty = False

    def flush(self, values: Sequence[float]) -> None:
        """Add ``values`` (one per child) to the children."""
        for child, v in zip(self.children, values, strict=True):
            if v:
                child.inc(v)


# Indices into _HttpBundle.pending / children.
_RESPONSES, _COUNT, _SIZE, _UTIME, _STIME, _TXN_COUNT, _TXN_DUR, _SCHED, _EVTS = range(9)
_IN_UTIME, _IN_STIME, _IN_TXN_COUNT, _IN_TXN_DUR, _IN_SCHED, _RECEIVED = range(9, 15)


def _add_db(p: list[float], at: int, u: ContextResourceUsage, base: ContextResourceUsage | None) -> None:
    """Add the clamped database differences ``u - base`` at ``p[at:at + 3]`` (the rare part)."""
    d = u.db_txn_count - (base.db_txn_count if base is not None else 0)
    if d > 0:
        p[at] += d
    f = u.db_txn_duration_sec - (base.db_txn_duration_sec if base is not None else 0.0)
    if f > 0:
        p[at + 1] += f
    f = u.db_sched_duration_sec - (base.db_sched_duration_sec if base is not None else 0.0)
    if f > 0:
        p[at + 2] += f


class RequestLike(Protocol):
    """What the request integrations hand to :meth:`Metrics.request_started` and friends."""

    ctx: LoggingContextOrSentinel
    method: str
    server_name: str
    reported: ContextResourceUsage

    @property
    def servlet_name(self) -> str: ...


@dataclass(slots=True)
class _BgEntry:
    desc: str
    server_name: str
    reported: ContextResourceUsage


class Metrics:
    """The families installed by :func:`install_metrics` and the hooks feeding them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        synapse_compat: bool,
        label_cap: int,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.synapse_compat = synapse_compat
        self.label_cap = label_cap
        self._metrics: list[Any] = []
        self._cap_reported: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        from logcontext._config import config

        clock = f"clock mode {config.clock_mode}"

        def name(key: str) -> str:
            return family_name(key, prefix=prefix, synapse_compat=synapse_compat)

        def counter(key: str, doc: str, labels: Sequence[str]) -> _Labelled:
            m = Counter(name(key), doc, list(labels), registry=None)
            self._metrics.append(m)
            return _Labelled(m, name(key), labels, label_cap, self._cap_reported)

        def histogram(key: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> _Labelled:
            m = Histogram(name(key), doc, list(labels), registry=None, buckets=buckets)
            self._metrics.append(m)
            return _Labelled(m, name(key), labels, label_cap, self._cap_reported)

        self.names: dict[str, str] = {k: name(k) for k in FAMILY_KEYS}

        # Blocks (Measure): totals kept in BlockStats, exported by the collector.
        self._blocks: dict[tuple[str, str], BlockStats] = {}
        self._real_blocks = 0

        # HTTP requests.
        ms = ("method", "servlet", "server_name")
        mts = ("method", "servlet", "tag", "server_name")
        self.http_received = counter("http_server_requests_received", "HTTP requests received", ms)
        self.http_responses = counter(
            "http_server_responses", "HTTP responses sent", ("method", "code", "server_name")
        )
        self.http_response_count = counter("http_server_response_count", "HTTP requests completed", mts)
        self.http_response_time = histogram(
            "http_server_response_time_seconds",
            "Wall time from receiving a request to sending (or abandoning) its response",
            ("method", "servlet", "tag", "code", "server_name"),
            _TIME_BUCKETS,
        )
        self.http_usage = self._usage_family("http_server_response_", mts, counter, clock, True)
        self.http_size = counter("http_server_response_size", "HTTP response body bytes", mts)
        self.http_inflight_usage = self._usage_family(
            "http_server_in_flight_requests_", ms, counter, clock, False
        )
        self._http_bundles: dict[tuple[str, ...], _HttpBundle] = {}
        self._dirty: list[_HttpBundle] = []
        self._recv_pending: dict[tuple[str, str, str], int] = {}
        self._requests: set[RequestLike] = set()

        # Background processes.
        nl = ("name", "server_name")
        self.bg_start = counter("background_process_start_count", "Background processes started", nl)
        self.bg_usage = self._usage_family("background_process_", nl, counter, clock, True)
        self._bg: dict[LoggingContextOrSentinel, _BgEntry] = {}

        # Database.
        ds = ("desc", "server_name")
        self.db_txn_count = counter("db_transaction_count", "Database transactions", ds)
        self.db_txn_duration = counter("db_transaction_duration_seconds", "Time in database transactions", ds)
        self.db_sched = histogram(
            "db_schedule_time_seconds",
            "Time waiting for a pooled database connection",
            ("server_name",),
            _DB_BUCKETS,
        )
        self.db_query_time = histogram(
            "db_query_time_seconds",
            "Database statement time by verb",
            ("verb", "server_name"),
            _DB_BUCKETS,
        )
        self.db_retries = counter("db_transaction_retries", "Retried database transaction attempts", ds)
        self.collector = _Collector(self)

    def _usage_family(
        self,
        stem: str,
        labels: Sequence[str],
        counter: Callable[[str, str, Sequence[str]], _Labelled],
        clock: str,
        with_evts: bool,
    ) -> tuple[_Labelled, ...]:
        what = stem.replace("_", " ").strip()
        fams = [
            counter(f"{stem}ru_utime_seconds", f"CPU, user ({clock}): {what}", labels),
            counter(f"{stem}ru_stime_seconds", f"CPU, system ({clock}): {what}", labels),
            counter(f"{stem}db_txn_count", f"Database transactions: {what}", labels),
            counter(f"{stem}db_txn_duration_seconds", f"Database transaction time: {what}", labels),
            counter(f"{stem}db_sched_duration_seconds", f"Database wait time: {what}", labels),
        ]
        if with_evts:
            fams.append(counter(f"{stem}evt_db_fetch_count", f"Events fetched: {what}", labels))
        return tuple(fams)

    @staticmethod
    def _usage_children(fams: tuple[_Labelled, ...], key: tuple[str, ...]) -> _UsageChildren:
        ch = [f.child(key) for f in fams]
        return _UsageChildren(ch[0], ch[1], ch[2], ch[3], ch[4], ch[5] if len(ch) > 5 else None)

    # -- blocks ------------------------------------------------------------------------------

    def block(self, block_name: str, server_name: str) -> BlockStats:
        """The totals and in-flight set of one block (``__other__`` past ``label_cap``)."""
        key = (block_name, server_name)
        b = self._blocks.get(key)
        if b is not None:
            return b
        with self._lock:
            b = self._blocks.get(key)
            if b is not None:
                return b
            if self._real_blocks >= self.label_cap:
                if ("block_name", "server_name") not in self._cap_reported:
                    self._cap_reported.add(("block_name", "server_name"))
                    _report_cardinality(self.names["block_count"], self.label_cap, key)
                key = (OTHER, server_name)
                b = self._blocks.get(key)
                if b is not None:
                    return b
            b = self._blocks[key] = BlockStats()
            if key[0] != OTHER:
                self._real_blocks += 1
            return b

    # -- HTTP requests -----------------------------------------------------------------------

    def request_received(self, method: str, servlet: str, server_name: str) -> None:
        """Count a request in ``requests_received`` (once its servlet is known; added at scrape)."""
        key = (method, servlet, server_name)
        with self._lock:
            pending = self._recv_pending
            if key in pending or len(pending) < self.label_cap:
                pending[key] = pending.get(key, 0) + 1
                return
        self.http_received.child(key).inc()

    def request_started(self, req: RequestLike) -> None:
        """Track ``req`` as in flight (its usage is reported at every scrape)."""
        req.reported = _ZERO  # never mutated: replaced by each update
        with self._lock:
            self._requests.add(req)

    def request_finished(
        self,
        req: RequestLike,
        *,
        code: str,
        tag: str,
        duration: float,
        size: int,
        usage: ContextResourceUsage | None = None,
        received: bool = False,
    ) -> None:
        """Final in-flight update and response metrics for ``req``.

        ``usage`` is the request context's snapshot if the caller already took one;
        ``received`` also counts the request in ``requests_received`` (not counted yet). The
        counters of one (method, servlet, tag, server, code) are bundled: the hot path is one
        dict lookup, one lock and plain additions, handed to the children at the next scrape.
        """
        if usage is None:
            usage = req.ctx.get_resource_usage()
        key = (req.method, req.servlet_name, tag, req.server_name, code)
        b = self._http_bundles.get(key)
        if b is None:
            b = self._http_bundle(key)
        utime = usage.ru_utime
        stime = usage.ru_stime
        db = usage.db_txn_count or usage.db_txn_duration_sec or usage.db_sched_duration_sec
        evts = usage.evt_db_fetch_count
        with self._lock:
            self._requests.discard(req)
            reported = req.reported
            req.reported = usage
            p = b.pending
            p[_RESPONSES] += 1
            p[_COUNT] += 1
            if received:
                p[_RECEIVED] += 1
            p[_SIZE] += size
            if utime > 0:
                p[_UTIME] += utime
            if stime > 0:
                p[_STIME] += stime
            # In flight: what the scrapes have not reported yet (clamped).
            d = utime - reported.ru_utime
            if d > 0:
                p[_IN_UTIME] += d
            d = stime - reported.ru_stime
            if d > 0:
                p[_IN_STIME] += d
            if db:
                _add_db(p, _TXN_COUNT, usage, None)
                _add_db(p, _IN_TXN_COUNT, usage, reported)
            if evts > 0:
                p[_EVTS] += evts
            now: list[float] | None = None
            if b.cached:
                if not b.dirty:
                    b.dirty = True
                    self._dirty.append(b)
            else:
                now = p
                b.pending = [0] * len(p)
        if now is not None:  # past label_cap: no bundle kept, add now
            b.flush(now)
        b.time.observe(duration if duration > 0.0 else 0.0)

    def _http_bundle(self, key: tuple[str, str, str, str, str]) -> _HttpBundle:
        method, servlet, tag, server, code = key
        ms = (method, servlet, server)
        mts = (method, servlet, tag, server)
        u = self._usage_children(self.http_usage, mts)
        i = self._usage_children(self.http_inflight_usage, ms)
        children = (
            self.http_responses.child((method, code, server)),
            self.http_response_count.child(mts),
            self.http_size.child(mts),
            u.utime,
            u.stime,
            u.txn_count,
            u.txn_duration,
            u.sched,
            u.evts,
            i.utime,
            i.stime,
            i.txn_count,
            i.txn_duration,
            i.sched,
            self.http_received.child(ms),
        )
        hist = self.http_response_time.child((method, servlet, tag, code, server))
        with self._lock:
            b = self._http_bundles.get(key)
            if b is not None:
                return b
            cached = len(self._http_bundles) < self.label_cap
            b = _HttpBundle(children, hist, cached)
            if cached:
                self._http_bundles[key] = b
            return b

    def flush_pending(self) -> None:
        """Hand the request counts accumulated since the last scrape to their children."""
        with self._lock:
            dirty = self._dirty
            self._dirty = []
            recv = self._recv_pending
            self._recv_pending = {}
            snap: list[tuple[_HttpBundle, list[float]]] = []
            for b in dirty:
                b.dirty = False
                snap.append((b, b.pending))
                b.pending = [0] * len(b.pending)
        for key, n in recv.items():
            self.http_received.child(key).inc(n)
        for b, values in snap:
            b.flush(values)

    def _update_request(self, req: RequestLike) -> None:
        """Scrape-time in-flight update: add the usage not reported yet."""
        usage = req.ctx.get_resource_usage()
        with self._lock:
            diff = (usage - req.reported).clamped()
            req.reported = usage
        key = (req.method, req.servlet_name, req.server_name)
        self._usage_children(self.http_inflight_usage, key).add(diff)

    # -- background processes (hooks from logcontext._bgmetrics) -----------------------------

    def bg_started(self, desc: str, ctx: LoggingContextOrSentinel) -> None:
        server = ctx.server_name
        self.bg_start.child((desc, server)).inc()
        if ctx:
            with self._lock:
                self._bg[ctx] = _BgEntry(desc, server, ContextResourceUsage())

    def bg_finished(self, desc: str, ctx: LoggingContextOrSentinel) -> None:
        with self._lock:
            entry = self._bg.pop(ctx, None)
        if entry is not None:
            self._update_bg(ctx, entry)

    def _update_bg(self, ctx: LoggingContextOrSentinel, entry: _BgEntry) -> None:
        usage = ctx.get_resource_usage()
        with self._lock:
            diff = (usage - entry.reported).clamped()
            entry.reported = usage
        if diff == _ZERO:
            return
        self._usage_children(self.bg_usage, (entry.desc, entry.server_name)).add(diff)

    # -- database (observer for logcontext._db_hooks) ----------------------------------------

    def scheduled(self, pool: Any, sched_s: float) -> None:
        self.db_sched.child((pool.server_name,)).observe(max(sched_s, 0.0))

    def transaction(self, pool: Any, desc: str, duration_s: float, attempts: int, ok: bool) -> None:
        key = (desc, pool.server_name)
        self.db_txn_count.child(key).inc()
        self.db_txn_duration.child(key).inc(max(duration_s, 0.0))

    def retry(self, pool: Any, desc: str) -> None:
        self.db_retries.child((desc, pool.server_name)).inc()

    def query(self, pool: Any, verb: str, duration_s: float) -> None:
        self.db_query_time.child((verb, pool.server_name)).observe(max(duration_s, 0.0))

    # -- scrape ------------------------------------------------------------------------------

    def before_scrape(self) -> None:
        """Report the usage of in-flight requests and background processes since the last scrape."""
        self.flush_pending()
        with self._lock:
            reqs = list(self._requests)
            bgs = list(self._bg.items())
        for r in reqs:
            self._update_request(r)
        for ctx, entry in bgs:
            self._update_bg(ctx, entry)

    def custom_families(self) -> Iterator[Metric]:
        """Families read at scrape time: in-flight gauges, per-thread CPU, core counters."""
        from logcontext import _db_hooks, _ledger, _misuse
        from logcontext._config import config

        n = self.names
        now = time.monotonic()
        clock_note = f" (clock mode {config.clock_mode})"
        blocks = list(self._blocks.items())
        for fam_key, attr, doc in _BLOCK_FAMILIES:
            fam = CounterMetricFamily(
                n[fam_key],
                doc + (clock_note if "CPU" in doc else ""),
                labels=["block_name", "server_name"],
            )
            for (bname, server), b in blocks:
                with b.lock:
                    v = getattr(b, attr)
                fam.add_metric([bname, server], v)
            yield fam
        g_count = GaugeMetricFamily(
            n["block_in_flight"], "Measure blocks in flight", labels=["block_name", "server_name"]
        )
        g_max = GaugeMetricFamily(
            n["block_in_flight_real_time_max_seconds"],
            "Longest running in-flight Measure block",
            labels=["block_name", "server_name"],
        )
        g_sum = GaugeMetricFamily(
            n["block_in_flight_real_time_sum_seconds"],
            "Summed run time of in-flight Measure blocks",
            labels=["block_name", "server_name"],
        )
        for key, b in blocks:
            starts = [m.start for m in b.in_flight.copy()]
            if not starts:
                continue
            ages = [now - s for s in starts]
            g_count.add_metric(list(key), len(ages))
            g_max.add_metric(list(key), max(ages))
            g_sum.add_metric(list(key), sum(ages))
        yield from (g_count, g_max, g_sum)

        req_counts: dict[tuple[str, str, str], int] = {}
        with self._lock:
            reqs = list(self._requests)
            bg_counts: dict[tuple[str, str], int] = {}
            for e in self._bg.values():
                bk = (e.desc, e.server_name)
                bg_counts[bk] = bg_counts.get(bk, 0) + 1
        for r in reqs:
            rk = (r.method, r.servlet_name, r.server_name)
            req_counts[rk] = req_counts.get(rk, 0) + 1
        g_req = GaugeMetricFamily(
            n["http_server_in_flight_requests_count"],
            "HTTP requests in flight",
            labels=["method", "servlet", "server_name"],
        )
        for rk, c in req_counts.items():
            g_req.add_metric(list(rk), c)
        yield g_req
        g_bg = GaugeMetricFamily(
            n["background_process_in_flight_count"],
            "Background processes running",
            labels=["name", "server_name"],
        )
        for bk, c in bg_counts.items():
            g_bg.add_metric(list(bk), c)
        yield g_bg

        g_pool = GaugeMetricFamily(
            n["db_connections_in_use"],
            "Pooled database connections in use",
            labels=["pool", "server_name"],
        )
        for pool in list(_db_hooks.pools):
            try:
                g_pool.add_metric([pool.name, pool.server_name], pool.connections_in_use)
            except Exception:  # a closing pool; skip it this scrape
                continue
        yield g_pool

        clock = config.clock_mode
        attributed: dict[str, float] = {}
        unattributed: dict[str, float] = {}
        for tname, att_ns, unatt_ns in _ledger.ledger_stats():
            t = normalise_thread_name(tname)
            attributed[t] = attributed.get(t, 0.0) + att_ns / 1e9
            unattributed[t] = unattributed.get(t, 0.0) + unatt_ns / 1e9
        c_att = CounterMetricFamily(
            n["cpu_attributed_seconds"],
            f"Thread CPU charged to logging contexts (clock mode {clock})",
            labels=["thread"],
        )
        c_un = CounterMetricFamily(
            n["cpu_unattributed_seconds"],
            f"Thread CPU charged to no logging context (clock mode {clock})",
            labels=["thread"],
        )
        for t in sorted(attributed):
            c_att.add_metric([t], attributed[t])
            c_un.add_metric([t], unattributed[t])
        yield c_att
        yield c_un
        yield CounterMetricFamily(
            n["context_late_cpu_seconds"],
            f"CPU recorded after a context's block ended (clock mode {clock})",
            value=_ledger.stats.late_cpu_ns / 1e9,
        )
        yield CounterMetricFamily(
            n["clock_regressions"],
            "Clock readings that went backwards (clamped to zero)",
            value=_ledger.stats.clock_regressions,
        )
        c_mis = CounterMetricFamily(n["misuse_reports"], "Misuse reports by kind", labels=["kind"])
        for kind, count in sorted(dict(_misuse.counts).items()):
            c_mis.add_metric([kind], count)
        yield c_mis


_ZERO = ContextResourceUsage()


class _Collector(Collector):
    """Runs the scrape-time updates, then yields every family."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        m.before_scrape()
        for metric in m._metrics:
            yield from metric.collect()
        yield from m.custom_families()

    def describe(self) -> Iterable[Metric]:
        m = self._m
        for metric in m._metrics:
            yield from metric.describe()
        n = m.names
        for key in (
            "block_in_flight",
            "block_in_flight_real_time_max_seconds",
            "block_in_flight_real_time_sum_seconds",
            "http_server_in_flight_requests_count",
            "background_process_in_flight_count",
            "db_connections_in_use",
        ):
            yield GaugeMetricFamily(n[key], "")
        for key in (
            *(k for k, _, _ in _BLOCK_FAMILIES),
            "cpu_attributed_seconds",
            "cpu_unattributed_seconds",
            "context_late_cpu_seconds",
            "clock_regressions",
            "misuse_reports",
        ):
            yield CounterMetricFamily(n[key], "")


_install_lock = threading.Lock()


def install_metrics(
    *,
    registry: CollectorRegistry = REGISTRY,
    prefix: str = "logcontext_",
    synapse_compat: bool = False,
    label_cap: int = 1000,
) -> Metrics:
    """Register every family on ``registry`` and switch the metric hooks on.

    With ``synapse_compat`` the families Synapse has use Synapse's names (the rest keep
    ``prefix``). Installing again with the same arguments returns the installed
    :class:`Metrics`; any other installation replaces (and unregisters) the previous one.
    """
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"install_metrics: invalid metric name prefix {prefix!r}")
    if isinstance(label_cap, bool) or not isinstance(label_cap, int) or label_cap < 1:
        raise ValueError(f"install_metrics: label_cap must be a positive int, got {label_cap!r}")
    if not isinstance(registry, CollectorRegistry):
        raise TypeError("install_metrics: registry must be a prometheus_client CollectorRegistry")
    with _install_lock:
        cur = _bgmetrics.active
        if isinstance(cur, Metrics):
            if (cur.registry, cur.prefix, cur.synapse_compat, cur.label_cap) == (
                registry,
                prefix,
                bool(synapse_compat),
                label_cap,
            ):
                return cur
            _uninstall(cur)
        m = Metrics(registry, prefix, bool(synapse_compat), label_cap)
        registry.register(m.collector)
        _bgmetrics.active = m
        from logcontext import _db_hooks

        _db_hooks.set_observer(m)
        return m


def _uninstall(m: Metrics) -> None:
    with contextlib.suppress(KeyError):
        m.registry.unregister(m.collector)
    if _bgmetrics.active is m:
        _bgmetrics.active = None
    from logcontext import _db_hooks

    if _db_hooks.observer is m:
        _db_hooks.set_observer(None)


def uninstall_metrics() -> None:
    """Switch the metric hooks off and unregister the families."""
    with _install_lock:
        cur = _bgmetrics.active
        if isinstance(cur, Metrics):
            _uninstall(cur)


def installed_metrics() -> Metrics | None:
    """The installed :class:`Metrics`, if any."""
    cur = _bgmetrics.active
    return cur if isinstance(cur, Metrics) else None


def _default_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    cur = installed_metrics()
    return cur.registry if cur is not None else REGISTRY


def serve_metrics(
    port: int, addr: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> WSGIServer:
    """Serve ``/metrics`` from a daemon thread; returns the server (``server_port``, ``shutdown()``).

    ``port=0`` picks a free port. ``registry`` defaults to the installed one.
    """
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr, registry=_default_registry(registry))
    return server


def metrics_handler(
    registry: CollectorRegistry | None = None,
) -> Callable[[web.Request], Any]:
    """An aiohttp handler answering with the exposition of ``registry`` (default: installed)."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle_metrics(request: web.Request) -> web.Response:
        body = generate_latest(_default_registry(registry))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle_metrics
