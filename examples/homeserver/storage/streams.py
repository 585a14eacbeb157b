"""Database side of the replication streams (spec §3.2, §4.1).

The ``events`` stream has no table of its own: it reads the event store's ``events`` (rows
with a ``stream_ordering``, written by :mod:`homeserver.storage.events`) and
``current_state_delta_stream``.  Transaction functions take a DB-API cursor and ``q`` (the placeholder
converter) so they run unchanged on SQLite and PostgreSQL; :class:`StreamStore`
wraps them for a pool with ``run_interaction``.  Paging always orders by the
stream token and never ends a page in the middle of a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from homeserver.storage.id_generators import param_converter, read_position_txn

__all__ = [
    "DEVICE_LIST_UPDATES_SQL",
    "EVENT_ROWS_SQL",
    "STATE_DELTA_ROWS_SQL",
    "StreamStore",
    "get_device_list_updates_txn",
    "get_event_updates_txn",
]

logger = logging.getLogger(__name__)

Q = Callable[[str], str]
Update = tuple[int, list[Any]]

# Test hook (#12321): with False the device-list union has LIMIT without ORDER BY,
# the bug that could skip rows; a test proves the catch-up then loses rows.
ORDER_DEVICE_LIST_UNION = True


# One page of the device-list stream. Each side is bounded by its own
# index-ordered LIMIT (the overall first `limit` rows are among the first
# `limit` of each table), so neither database sorts the whole remaining range
# for every page. Parameters: instance, from, upto, limit (twice), then limit.
DEVICE_LIST_UPDATES_SQL = (
    "SELECT stream_id, entity FROM ("
    " SELECT stream_id, user_id AS entity FROM ("
    "  SELECT stream_id, user_id FROM device_lists_stream"
    "  WHERE instance_name = ? AND stream_id > ? AND stream_id <= ?"
    "  ORDER BY stream_id LIMIT ?) AS s"
    " UNION ALL"
    " SELECT stream_id, destination AS entity FROM ("
    "  SELECT stream_id, destination FROM device_lists_outbound_pokes"
    "  WHERE instance_name = ? AND stream_id > ? AND stream_id <= ?"
    "  ORDER BY stream_id LIMIT ?) AS p"
    ") AS u{order} LIMIT ?"
)


def get_device_list_updates_txn(
    txn: Any, q: Q, instance: str, from_token: int, upto_token: int, limit: int
) -> tuple[list[Update], int, bool]:
    """One page of ``device_lists``: ``[entity]`` rows, one per stream ID (#7010)."""
    order = " ORDER BY stream_id" if ORDER_DEVICE_LIST_UNION else ""
    txn.execute(
        q(DEVICE_LIST_UPDATES_SQL.format(order=order)),
        (instance, from_token, upto_token, limit, instance, from_token, upto_token, limit, limit),
    )
    rows = txn.fetchall()
    updates = [(int(sid), [entity]) for sid, entity in rows]
    if len(updates) < limit or not updates:
        return updates, upto_token, False
    last = updates[-1][0]
    if last >= upto_token:
        return updates, upto_token, False
    return updates, last, True


# The events stream's `ev` rows: events of the event store that have a stream ordering
# (non-outliers). `rejected` is derived from `rejected_reason`. Parameters: instance, from,
# upto; callers append the ORDER BY / LIMIT.
EVENT_ROWS_SQL = (
    "SELECT stream_ordering, event_id, room_id, type, state_key, redacts, relates_to,"
    " membership, rejected_reason IS NOT NULL, outlier FROM events"
    " WHERE instance_name = ? AND stream_ordering > ? AND stream_ordering <= ?"
)

# Its `state` rows: current-state changes, at the ordering of the event that made them.
STATE_DELTA_ROWS_SQL = (
    "SELECT stream_id, room_id, type, state_key, event_id FROM current_state_delta_stream"
    " WHERE instance_name = ? AND stream_id > ? AND stream_id <= ?"
)
_STATE_ORDER = " ORDER BY stream_id, room_id, type, state_key"


def get_event_updates_txn(
    txn: Any, q: Q, instance: str, from_token: int, upto_token: int, target: int
) -> tuple[list[Update], int, bool]:
    """One page of ``events`` (#7358): ``ev`` rows then ``state`` rows, per token.

    At most ``target // 2`` events; state rows up to the last event's token with
    the remaining budget; a limited state page is cut back to its last complete
    token, or returned whole if a single token exceeds the budget.
    """
    ev_limit = max(1, target // 2)
    txn.execute(
        q(EVENT_ROWS_SQL + " ORDER BY stream_ordering LIMIT ?"), (instance, from_token, upto_token, ev_limit)
    )
    events = txn.fetchall()
    cap = upto_token
    if len(events) == ev_limit:
        cap = int(events[-1][0])
    budget = max(1, target - len(events))
    txn.execute(q(STATE_DELTA_ROWS_SQL + _STATE_ORDER + " LIMIT ?"), (instance, from_token, cap, budget))
    state = txn.fetchall()
    if len(state) == budget:
        last = int(state[-1][0])
        if int(state[0][0]) == last:
            txn.execute(q(STATE_DELTA_ROWS_SQL + _STATE_ORDER), (instance, last - 1, last))
            state = txn.fetchall()
            cap = last
        else:
            cap = last - 1
            state = [r for r in state if int(r[0]) <= cap]
        events = [e for e in events if int(e[0]) <= cap]
    merged: list[tuple[int, int, list[Any]]] = []
    for e in events:
        so, eid, room, typ, skey, redacts, relates, membership, rejected, outlier = e
        fields = [eid, room, typ, skey, redacts, relates, membership, bool(rejected), bool(outlier)]
        merged.append((int(so), 0, ["ev", fields]))
    for s in state:
        merged.append((int(s[0]), 1, ["state", [s[1], s[2], s[3], s[4]]]))
    merged.sort(key=lambda m: (m[0], m[1]))
    updates = [(t, row) for t, _, row in merged]
    return updates, cap, cap < upto_token


class StreamStore:
    """Async wrappers over a pool with ``run_interaction`` (a ``DatabasePool``)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.q = param_converter(db)

    async def device_list_updates(
        self, instance: str, from_token: int, upto_token: int, target: int
    ) -> tuple[list[Update], int, bool]:
        result: tuple[list[Update], int, bool] = await self.db.run_interaction(
            "get_device_list_updates",
            get_device_list_updates_txn,
            self.q,
            instance,
            from_token,
            upto_token,
            target,
        )
        return result

    async def event_updates(
        self, instance: str, from_token: int, upto_token: int, target: int
    ) -> tuple[list[Update], int, bool]:
        result: tuple[list[Update], int, bool] = await self.db.run_interaction(
            "get_event_updates",
            get_event_updates_txn,
            self.q,
            instance,
            from_token,
            upto_token,
            target,
        )
        return result

    async def start_position(self, stream: str, instance: str) -> int:
        """Where a reader starts: ``stream_positions(stream, writer)``, never MAX(id); else 0."""
        pos: int | None = await self.db.run_interaction(
            "get_stream_position", read_position_txn, self.q, stream, instance
        )
        if pos is None:
            logger.info("No stored position for %s/%s: starting at 0", stream, instance)
            return 0
        return pos
