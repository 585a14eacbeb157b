"""Replication metrics (spec §6.3), with ``prometheus_client`` imported lazily.

Every update also lands in :class:`Stats`, a plain per-handler counter that
tests read without touching the global Prometheus registry.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

__all__ = ["Stats", "prometheus_metrics"]


@functools.cache
def prometheus_metrics() -> dict[str, Any] | None:
    """Create the metric families once; ``None`` without prometheus_client."""
    try:
        import prometheus_client as pc
    except ImportError:
        return None
    return {
        "commands_in": pc.Counter("replication_commands_in", "Commands received", ["command", "conn"]),
        "commands_out": pc.Counter("replication_commands_out", "Commands sent", ["command", "conn"]),
        "rows": pc.Counter("replication_rows_received", "Rows applied", ["stream", "instance", "path"]),
        "lag": pc.Gauge(
            "replication_stream_lag_tokens", "Highest token seen minus cur", ["stream", "instance"]
        ),
        "catch_up_time": pc.Histogram(
            "replication_catch_up_duration_seconds",
            "Catch-up duration",
            ["stream", "source"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
        ),
        "catch_up_rows": pc.Counter("replication_catch_up_rows", "Rows fetched", ["stream"]),
        "catch_up_failures": pc.Counter(
            "replication_catch_up_failures", "Failed catch-up fetches", ["stream"]
        ),
        "dropped": pc.Counter("replication_dropped", "Dropped commands", ["stream", "reason"]),
        "queue": pc.Gauge("replication_command_queue", "Inbound queue length", ["stream"]),
        "send_queue_commands": pc.Gauge(
            "replication_send_queue_commands", "Queued outbound commands", ["conn"]
        ),
        "send_queue_bytes": pc.Gauge("replication_send_queue_bytes", "Queued outbound bytes", ["conn"]),
        "connections": pc.Gauge("replication_connections", "Open replication connections"),
        "closed": pc.Counter("replication_connection_closed", "Connections closed", ["reason"]),
        "updates_sent": pc.Counter(
            "replication_stream_updates_sent", "Rows sent by the streamer", ["stream"]
        ),
    }


class Stats:
    """Per-handler counters and gauges mirrored to Prometheus."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, ...]] = Counter()
        self.gauges: dict[tuple[str, ...], float] = {}
        self._pm = prometheus_metrics()
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, name: str, labels: tuple[str, ...]) -> Any:
        key = (name, *labels)
        child = self._children.get(key)
        if child is None and self._pm is not None and name in self._pm:
            metric = self._pm[name]
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    def inc(self, name: str, *labels: str, amount: int = 1) -> None:
        self.counters[(name, *labels)] += amount
        child = self._child(name, labels)
        if child is not None:
            child.inc(amount)

    def set(self, name: str, *labels: str, value: float) -> None:
        self.gauges[(name, *labels)] = value
        child = self._child(name, labels)
        if child is not None:
            child.set(value)

    def observe(self, name: str, *labels: str, value: float) -> None:
        self.counters[(name + "_count", *labels)] += 1
        child = self._child(name, labels)
        if child is not None:
            child.observe(value)

    def dropped(self, stream: str, reason: str) -> int:
        """How many commands of ``stream`` were dropped for ``reason``."""
        return int(self.counters[("dropped", stream, reason)])
