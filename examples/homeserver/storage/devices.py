"""Device-list changes into the replication stream (spec §4.1, #7010).

One stream ID per row across ``device_lists_stream`` (one row per changed
device, the lower IDs) and ``device_lists_outbound_pokes`` (one row per
``(destination, device)``, the higher IDs), written in **one** transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from homeserver.storage.id_generators import StreamIdGenerator, param_converter

__all__ = ["DEVICE_LIST_TABLES", "add_device_change_to_streams", "add_device_change_txn"]

# Every table holding device-list stream IDs: the generator's start-up maximum
# must cover both (#7010 added the pokes table to Synapse's extra_tables).
DEVICE_LIST_TABLES: list[tuple[str, str]] = [
    ("device_lists_stream", "stream_id"),
    ("device_lists_outbound_pokes", "stream_id"),
]


def add_device_change_txn(
    txn: Any,
    q: Callable[[str], str],
    ids: Sequence[int],
    user_id: str,
    device_ids: Sequence[str],
    hosts: Sequence[str],
    ts_ms: int,
    instance: str,
    trace_context: str | None = None,
) -> None:
    """Write ``len(device_ids) * (1 + len(hosts))`` rows using ``ids`` in order."""
    d = len(device_ids)
    if len(ids) != d + d * len(hosts):
        raise ValueError(f"need {d + d * len(hosts)} stream IDs, got {len(ids)}")
    txn.executemany(
        q("DELETE FROM device_lists_stream WHERE user_id = ? AND device_id = ?"),
        [(user_id, device_id) for device_id in device_ids],
    )
    txn.executemany(
        q(
            "INSERT INTO device_lists_stream"
            " (stream_id, user_id, device_id, instance_name, trace_context)"
            " VALUES (?, ?, ?, ?, ?)"
        ),
        [
            (sid, user_id, device_id, instance, trace_context)
            for sid, device_id in zip(ids[:d], device_ids, strict=True)
        ],
    )
    pokes = [(dest, dev) for dest in hosts for dev in device_ids]
    if pokes:
        txn.executemany(
            q(
                "INSERT INTO device_lists_outbound_pokes (destination, stream_id, user_id,"
                " device_id, sent, ts, instance_name, trace_context)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            [
                (dest, sid, user_id, device_id, False, ts_ms, instance, trace_context)
                for sid, (dest, device_id) in zip(ids[d:], pokes, strict=True)
            ],
        )


async def add_device_change_to_streams(
    db: Any,
    gen: StreamIdGenerator,
    user_id: str,
    device_ids: Sequence[str],
    hosts: Sequence[str],
    *,
    trace_context: str | None = None,
) -> int:
    """Record that ``user_id``'s ``device_ids`` changed, to tell ``hosts``; return the last ID."""
    if not device_ids:
        raise ValueError("add_device_change_to_streams needs at least one device ID")
    hosts = sorted(set(hosts))
    n = len(device_ids) * (1 + len(hosts))
    async with gen.get_next_mult(n) as ids:
        await db.run_interaction(
            "add_device_change_to_streams",
            add_device_change_txn,
            param_converter(db),
            ids,
            user_id,
            list(device_ids),
            hosts,
            int(time.time() * 1000),
            gen.instance_name,
            trace_context,
        )
    return ids[-1]
