"""Event store: events with their auth rank, auth and prev edges, state groups, memberships.

It is also the source of the replication ``events`` stream (spec §3.2, §4.1): an event
persisted as a non-outlier gets a ``stream_ordering`` from the events stream ID generator, and
a change of its room's current state (``current_state_events``) is recorded in
``current_state_delta_stream`` at that ordering, in the same transaction. Outliers get no
ordering and change no current state.

Every ``*_txn`` function takes a DB-API cursor and runs inside
``await pool.run_interaction(desc, fn, *args)`` (portable SQL with ``?`` placeholders; the
pool converts them for PostgreSQL). `EventStore` wraps them over a
`logcontext.db.DatabasePool` and is an `EventSource` for state resolution, with an LRU cache
of events and of ``(rank, auth IDs)`` nodes (auth lists never change).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.state import (
    PDU,
    InvalidAuthGraph,
    ResolutionStages,
    ResolveOptions,
    StateKey,
    pdu_from_dict,
    resolve_state_async,
    rules_for,
)
from homeserver.state.chain_index import ChainCoverIndex

from .id_generators import StreamIdGenerator
from .rooms import get_room_version_txn

__all__ = [
    "EVENT_STREAM_TABLES",
    "EventRow",
    "EventStore",
    "PersistedBatch",
    "event_stream_fields",
    "get_auth_nodes_txn",
    "get_current_state_txn",
    "get_event_rows_txn",
    "get_membership_txn",
    "get_state_group_txn",
    "persist_events_txn",
    "set_membership_txn",
    "store_chain_index_txn",
    "store_state_group_txn",
]

_BATCH = 100

# Every (table, column) holding IDs of the events stream (the generator starts above their MAX).
EVENT_STREAM_TABLES = [("events", "stream_ordering")]

# (pdu, json, depth, outlier, redacts) of one event to store.
EventRow = tuple[PDU, str, int, bool, str | None]


def event_stream_fields(d: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(redacts, relates_to, membership)`` of a JSON event, as the stream's ``ev`` row has them.

    ``redacts`` is the top-level key (room versions < 11) or ``content.redacts`` (11+);
    ``relates_to`` is ``content["m.relates_to"].event_id``; ``membership`` that of a member event.
    Values that are not strings count as absent.
    """
    content = d.get("content")
    if not isinstance(content, Mapping):
        content = {}
    redacts = d.get("redacts")
    if not isinstance(redacts, str):
        redacts = content.get("redacts")
    relation = content.get("m.relates_to")
    relates_to = relation.get("event_id") if isinstance(relation, Mapping) else None
    membership = content.get("membership") if d.get("type") == "m.room.member" else None
    return (
        redacts if isinstance(redacts, str) else None,
        relates_to if isinstance(relates_to, str) else None,
        membership if isinstance(membership, str) else None,
    )


def _chunks(ids: Sequence[str], n: int = _BATCH) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


def _ranks_txn(txn: Any, ids: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in _chunks(ids):
        txn.execute(
            f"SELECT event_id, auth_rank FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
            tuple(chunk),
        )
        out.update((r[0], int(r[1])) for r in txn.fetchall())
    return out


def _stored_txn(txn: Any, ids: Sequence[str]) -> dict[str, tuple[int, bool, int | None]]:
    """``(auth_rank, outlier, stream_ordering)`` of the stored events among ``ids``."""
    out: dict[str, tuple[int, bool, int | None]] = {}
    for chunk in _chunks(ids):
        txn.execute(
            "SELECT event_id, auth_rank, outlier, stream_ordering FROM events"
            f" WHERE event_id IN ({','.join('?' * len(chunk))})",
            tuple(chunk),
        )
        out.update(
            (r[0], (int(r[1]), bool(r[2]), None if r[3] is None else int(r[3]))) for r in txn.fetchall()
        )
    return out


def persist_events_txn(
    txn: Any,
    rows: Sequence[EventRow],
    *,
    orderings: Sequence[int] = (),
    instance: str = "master",
    state_changes: Mapping[StateKey, str | None] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Store ``(pdu, json, depth, outlier, redacts)`` rows; return ``(new ranks, orderings)``.

    Rank = 1 + the highest rank among its auth events (stored, or earlier in the batch);
    unknown auth events count 0. Events already stored are left as they are, except that an
    outlier persisted again as a non-outlier is de-outliered (it joins the stream).

    Each new non-outlier event takes the next of ``orderings`` (the caller allocated them
    from the events stream ID generator; unused ones are gaps), in the order of ``rows``;
    an accepted state event among them that changes its room's current state records the
    change in ``current_state_delta_stream`` at its ordering. ``state_changes`` (e.g. the
    result of resolving the room's forks; ``None`` removes a key) are applied at the
    batch's last new ordering. The returned orderings cover every non-outlier event of
    the batch, new or already stored.
    """
    batch = {r[0].event_id: r for r in rows}
    stored = _stored_txn(txn, list(batch))
    existing = {e: v[0] for e, v in stored.items()}
    cited = sorted({a for r in rows for a in r[0].auth_event_ids} - batch.keys())
    ranks = _ranks_txn(txn, cited)
    ranks.update(existing)
    # Stream orderings, in batch order: new non-outliers and de-outliered events.
    free = iter(orderings)
    assigned: dict[str, int] = {}
    for eid, row in batch.items():
        if row[3]:
            continue
        have = stored.get(eid)
        if have is not None and not have[1]:
            continue
        so = next(free, None)
        if so is None:
            raise ValueError(f"no stream ordering left for {eid}: allocate one per non-outlier event")
        assigned[eid] = so
    # Order the batch so auth events come first (iterative; cycles refused).
    done: set[str] = set(existing)
    order: list[str] = []
    for root in batch:
        if root in done:
            continue
        stack = [(root, 0)]
        on_path = {root}
        while stack:
            eid, i = stack[-1]
            auth = batch[eid][0].auth_event_ids
            while i < len(auth) and (auth[i] in done or auth[i] not in batch):
                i += 1
            if i < len(auth):
                if auth[i] in on_path:
                    raise InvalidAuthGraph(f"auth cycle through {auth[i]}", auth[i])
                stack[-1] = (eid, i + 1)
                stack.append((auth[i], 0))
                on_path.add(auth[i])
                continue
            stack.pop()
            on_path.discard(eid)
            done.add(eid)
            order.append(eid)
    new_ranks: dict[str, int] = {}
    for eid in order:
        pdu, raw, depth, outlier, redacts = batch[eid]
        rank = 1 + max((ranks.get(a, 0) for a in pdu.auth_event_ids), default=0)
        ranks[eid] = new_ranks[eid] = pdu.auth_rank = rank
        _, relates_to, membership = event_stream_fields({"type": pdu.type, "content": pdu.content})
        txn.execute(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,"
            " depth, auth_rank, outlier, rejected_reason, json, stream_ordering, instance_name,"
            " redacts, relates_to, membership)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                eid,
                pdu.room_id,
                pdu.type,
                pdu.state_key,
                pdu.sender,
                pdu.origin_server_ts,
                depth,
                rank,
                outlier,
                pdu.rejected_reason,
                raw,
                assigned.get(eid),
                instance,
                redacts,
                relates_to,
                membership,
            ),
        )
        txn.executemany(
            "INSERT INTO event_auth (event_id, idx, auth_id) VALUES (?, ?, ?)",
            [(eid, i, a) for i, a in enumerate(pdu.auth_event_ids)],
        )
        txn.executemany(
            "INSERT INTO event_edges (event_id, idx, prev_event_id) VALUES (?, ?, ?)",
            [(eid, i, p) for i, p in enumerate(pdu.prev_event_ids)],
        )
    for eid, so in assigned.items():
        if eid in stored:  # de-outlier: the caller's verdict on rejection is the newer one
            txn.execute(
                "UPDATE events SET outlier = ?, stream_ordering = ?, instance_name = ?,"
                " rejected_reason = ? WHERE event_id = ?",
                (False, so, instance, batch[eid][0].rejected_reason, eid),
            )
    _repair_ranks_txn(txn, new_ranks, ranks)
    if assigned:
        _update_current_state_txn(txn, batch, assigned, instance, state_changes or {})
    elif state_changes:
        raise ValueError("state_changes need a new non-outlier event in the batch to carry them")
    out = {e: v[2] for e, v in stored.items() if v[2] is not None and e not in assigned}
    out.update(assigned)
    return new_ranks, out


def _update_current_state_txn(
    txn: Any,
    batch: Mapping[str, EventRow],
    assigned: Mapping[str, int],
    instance: str,
    state_changes: Mapping[StateKey, str | None],
) -> None:
    """Apply the batch's current-state changes in stream order; one delta row per change."""
    changes: list[tuple[int, str, str, str, str | None]] = []
    for eid, so in assigned.items():
        pdu = batch[eid][0]
        if pdu.state_key is not None and pdu.rejected_reason is None and pdu.room_id is not None:
            changes.append((so, pdu.room_id, pdu.type, pdu.state_key, eid))
    if state_changes:
        last = max(assigned.values())
        room = next(batch[e][0].room_id for e, so in assigned.items() if so == last)
        assert room is not None
        changes.extend((last, room, t, k, e) for (t, k), e in state_changes.items())
    current: dict[tuple[str, str, str], str | None] = {}
    for so, room_id, typ, key, new_id in changes:
        k = (room_id, typ, key)
        if k not in current:
            txn.execute(
                "SELECT event_id FROM current_state_events WHERE room_id = ? AND type = ? AND state_key = ?",
                k,
            )
            row = txn.fetchone()
            current[k] = None if row is None else row[0]
        if current[k] == new_id:
            continue
        if new_id is None:
            txn.execute(
                "DELETE FROM current_state_events WHERE room_id = ? AND type = ? AND state_key = ?", k
            )
        else:
            txn.execute(
                "INSERT INTO current_state_events (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
                (*k, new_id),
            )
        txn.execute(
            "INSERT INTO current_state_delta_stream (stream_id, room_id, type, state_key, event_id,"
            " instance_name) VALUES (?, ?, ?, ?, ?, ?)",
            (so, *k, new_id, instance),
        )
        current[k] = new_id


def get_current_state_txn(txn: Any, room_id: str) -> dict[StateKey, str]:
    """The room's current state map."""
    txn.execute("SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?", (room_id,))
    return {(t, k): e for t, k, e in txn.fetchall()}


def _repair_ranks_txn(txn: Any, new_ranks: dict[str, int], ranks: dict[str, int]) -> None:
    """Keep ``rank(citer) > rank(cited)`` when an auth event arrives after events citing it.

    Stored events that cite a newly stored one (they counted it as unknown, rank 0) are
    re-ranked, and so on up through their own citers. Re-ranked IDs are added to
    ``new_ranks`` so callers refresh their caches.
    """
    todo = list(new_ranks)
    limit: int | None = None  # ranks of a DAG never exceed its number of events
    while todo:
        batch, todo = todo[:_BATCH], todo[_BATCH:]
        txn.execute(
            "SELECT a.event_id, a.auth_id, e.auth_rank FROM event_auth AS a"
            " JOIN events AS e ON e.event_id = a.event_id"
            f" WHERE a.auth_id IN ({','.join('?' * len(batch))})",
            tuple(batch),
        )
        for citer, cited, citer_rank in txn.fetchall():
            current = max(int(citer_rank), ranks.get(citer, 0))
            need = ranks[cited] + 1
            if current < need:
                if limit is None:
                    txn.execute("SELECT COUNT(*) FROM events")
                    limit = int(txn.fetchone()[0])
                if need > limit:
                    raise InvalidAuthGraph(f"auth cycle through {cited}", cited)
                ranks[citer] = new_ranks[citer] = need
                txn.execute("UPDATE events SET auth_rank = ? WHERE event_id = ?", (need, citer))
                todo.append(citer)


def get_event_rows_txn(txn: Any, ids: Sequence[str]) -> list[tuple[str, str, str | None, int, str | None]]:
    """``(event_id, json, rejected_reason, auth_rank, room_version)`` of the stored events."""
    out: list[tuple[str, str, str | None, int, str | None]] = []
    for chunk in _chunks(ids):
        txn.execute(
            "SELECT e.event_id, e.json, e.rejected_reason, e.auth_rank, r.room_version"
            " FROM events AS e LEFT JOIN rooms AS r ON r.room_id = e.room_id"
            f" WHERE e.event_id IN ({','.join('?' * len(chunk))})",
            tuple(chunk),
        )
        out.extend((r[0], r[1], r[2], int(r[3]), r[4]) for r in txn.fetchall())
    return out


def get_auth_nodes_txn(txn: Any, ids: Sequence[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """``(auth_rank, auth IDs in list order)`` per stored event, in batches of 100."""
    ranks = _ranks_txn(txn, ids)
    auth: dict[str, list[str]] = {e: [] for e in ranks}
    known = list(ranks)
    for chunk in _chunks(known):
        txn.execute(
            "SELECT event_id, auth_id FROM event_auth"
            f" WHERE event_id IN ({','.join('?' * len(chunk))}) ORDER BY event_id, idx",
            tuple(chunk),
        )
        for eid, aid in txn.fetchall():
            auth[eid].append(aid)
    return {e: (ranks[e], tuple(auth[e])) for e in known}


def store_state_group_txn(txn: Any, room_id: str, state: Mapping[StateKey, str]) -> int:
    """Store a state map as a new state group; return its ID."""
    txn.execute("SELECT COALESCE(MAX(id), 0) FROM state_groups")
    group = int(txn.fetchone()[0]) + 1
    txn.execute("INSERT INTO state_groups (id, room_id) VALUES (?, ?)", (group, room_id))
    txn.executemany(
        "INSERT INTO state_groups_state (state_group, type, state_key, event_id) VALUES (?, ?, ?, ?)",
        [(group, t, k, e) for (t, k), e in state.items()],
    )
    return group


def get_state_group_txn(txn: Any, group: int) -> dict[StateKey, str]:
    txn.execute("SELECT type, state_key, event_id FROM state_groups_state WHERE state_group = ?", (group,))
    return {(t, k): e for t, k, e in txn.fetchall()}


def set_membership_txn(txn: Any, room_id: str, user_id: str, event_id: str, membership: str) -> None:
    txn.execute(
        "INSERT INTO local_current_membership (room_id, user_id, event_id, membership)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (room_id, user_id) DO UPDATE SET"
        " event_id = excluded.event_id, membership = excluded.membership",
        (room_id, user_id, event_id, membership),
    )


def get_membership_txn(txn: Any, room_id: str, user_id: str) -> tuple[str, str] | None:
    """``(event_id, membership)`` of a local user's current membership, or None."""
    txn.execute(
        "SELECT event_id, membership FROM local_current_membership WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    )
    row = txn.fetchone()
    return None if row is None else (row[0], row[1])


def replace_event_json_txn(txn: Any, event_id: str, raw: str, redacted_by: str) -> None:
    txn.execute(
        "UPDATE events SET json = ?, redacted_by = ? WHERE event_id = ?", (raw, redacted_by, event_id)
    )


def _room_events_txn(txn: Any, room_id: str) -> list[tuple[str, str, str | None, list[str]]]:
    txn.execute(
        "SELECT event_id, type, state_key FROM events WHERE room_id = ? ORDER BY auth_rank, event_id",
        (room_id,),
    )
    rows = txn.fetchall()
    nodes = get_auth_nodes_txn(txn, [r[0] for r in rows])
    return [(r[0], r[1], r[2], list(nodes[r[0]][1])) for r in rows]


def _count_events_txn(txn: Any, room_id: str) -> int:
    txn.execute("SELECT COUNT(*) FROM events WHERE room_id = ?", (room_id,))
    return int(txn.fetchone()[0])


def _load_chain_index_txn(txn: Any, room_id: str) -> tuple[list[Any], list[Any], list[Any], int]:
    txn.execute(
        "SELECT c.event_id, c.chain_id, c.seq, e.type, e.state_key FROM event_auth_chains AS c"
        " JOIN events AS e ON e.event_id = c.event_id WHERE c.room_id = ?",
        (room_id,),
    )
    positions = [(r[0], int(r[1]), int(r[2]), r[3], r[4]) for r in txn.fetchall()]
    txn.execute(
        "SELECT origin_chain, origin_seq, target_chain, target_seq FROM event_auth_chain_links"
        " WHERE room_id = ?",
        (room_id,),
    )
    links = [tuple(int(x) for x in r) for r in txn.fetchall()]
    txn.execute(
        "SELECT a.auth_id, a.event_id FROM event_auth AS a"
        " JOIN events AS e ON e.event_id = a.event_id"
        " LEFT JOIN events AS x ON x.event_id = a.auth_id"
        " WHERE e.room_id = ? AND x.event_id IS NULL ORDER BY a.event_id, a.idx",
        (room_id,),
    )
    dangling = [(r[0], r[1]) for r in txn.fetchall()]
    return positions, links, dangling, _count_events_txn(txn, room_id)


def store_chain_index_txn(
    txn: Any,
    room_id: str,
    positions: Sequence[tuple[str, int, int]],
    links: Sequence[tuple[int, int, int, int]],
    *,
    replace: bool,
) -> None:
    """Write index rows; ``replace`` first deletes the room's existing rows."""
    if replace:
        txn.execute("DELETE FROM event_auth_chains WHERE room_id = ?", (room_id,))
        txn.execute("DELETE FROM event_auth_chain_links WHERE room_id = ?", (room_id,))
    txn.executemany(
        "INSERT INTO event_auth_chains (event_id, room_id, chain_id, seq) VALUES (?, ?, ?, ?)",
        [(e, room_id, c, s) for e, c, s in positions],
    )
    txn.executemany(
        "INSERT INTO event_auth_chain_links (room_id, origin_chain, origin_seq, target_chain,"
        " target_seq) VALUES (?, ?, ?, ?, ?)",
        [(room_id, *link) for link in links],
    )


class _LRU(OrderedDict[str, Any]):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class _RoomSource:
    """`EventSource` of one room over the store (with its chain index when built)."""

    def __init__(self, store: EventStore, room_id: str):
        self.store = store
        self.room_id = room_id

    async def get_events(self, ids: Collection[str]) -> Mapping[str, PDU]:
        return await self.store.get_events(ids)

    async def get_auth_nodes(self, ids: Collection[str]) -> Mapping[str, tuple[int, tuple[str, ...]]]:
        return await self.store.get_auth_nodes(ids)

    def chain_index(self) -> ChainCoverIndex | None:
        return self.store._indexes.get(self.room_id)


@dataclass
class PersistedBatch:
    """What :meth:`EventStore.persist_batch` stored: the PDUs (in the order given) and the
    stream ordering of each non-outlier event of the batch (new or already stored)."""

    pdus: list[PDU]
    stream_orderings: dict[str, int] = field(default_factory=dict)


class EventStore:
    """Async event store over a `logcontext.db.DatabasePool` (apply the schema first).

    ``stream_ids`` is the events stream ID generator (the main process passes its own, so
    each persist advances the stream and pokes the streamer); without one the store creates
    one from the database when it first persists a non-outlier.
    """

    def __init__(
        self,
        pool: Any,
        *,
        cache_size: int = 100_000,
        stream_ids: StreamIdGenerator | None = None,
    ):
        self.pool = pool
        self.stream_ids = stream_ids
        self._stream_ids_lock: asyncio.Lock | None = None
        # Persists of one room go one at a time: the current-state change is read and
        # written in the transaction, and orderings must follow the room's commit order.
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._events = _LRU(cache_size)
        self._nodes = _LRU(cache_size)
        self._indexes: dict[str, ChainCoverIndex] = {}
        self._counts: dict[str, int] = {}
        # New state-group IDs are MAX(id) + 1: two concurrent transactions would
        # pick the same one on PostgreSQL (READ COMMITTED), so this process's
        # allocations go one at a time (the main process is the only writer).
        self._state_group_lock: asyncio.Lock | None = None

    async def _stream_id_gen(self) -> StreamIdGenerator:
        if self.stream_ids is None:
            if self._stream_ids_lock is None:
                self._stream_ids_lock = asyncio.Lock()
            async with self._stream_ids_lock:
                if self.stream_ids is None:
                    self.stream_ids = await StreamIdGenerator.create(
                        self.pool, "events", EVENT_STREAM_TABLES, persist=False
                    )
        return self.stream_ids

    async def persist_events(
        self,
        room_id: str,
        events: Iterable[Mapping[str, Any]],
        *,
        rejected: Mapping[str, str] | None = None,
        outlier: bool = False,
    ) -> list[PDU]:
        """Parse (with the room's stored version) and store events; return their PDUs."""
        return (await self.persist_batch(room_id, events, rejected=rejected, outlier=outlier)).pdus

    async def persist_batch(
        self,
        room_id: str,
        events: Iterable[Mapping[str, Any]],
        *,
        rejected: Mapping[str, str] | None = None,
        outlier: bool = False,
        state_changes: Mapping[StateKey, str | None] | None = None,
    ) -> PersistedBatch:
        """Parse and store events in one transaction; non-outliers join the ``events`` stream.

        Stream orderings follow the order of ``events``; ``state_changes`` are further
        current-state changes (``None`` removes a key) recorded at the batch's last ordering
        (see :func:`persist_events_txn`).
        """
        version = await self.pool.run_interaction("get_room_version", get_room_version_txn, room_id)
        if version is None:
            raise LookupError(f"unknown room {room_id}: store its version first")
        rules = rules_for(version)
        rejected = rejected or {}
        rows: list[EventRow] = []
        for d in events:
            pdu = pdu_from_dict(d, rules, rejected_reason=rejected.get(str(d.get("event_id"))))
            if pdu.room_id != room_id:
                raise ValueError(f"event {pdu.event_id} is in {pdu.room_id!r}, not {room_id!r}")
            depth = d.get("depth", 0)
            raw = json.dumps(d, ensure_ascii=False)
            redacts = event_stream_fields(d)[0]
            rows.append((pdu, raw, depth if type(depth) is int else 0, outlier, redacts))
        if state_changes and (outlier or not rows):
            raise ValueError("state_changes need a non-outlier event in the batch to carry them")
        gen = None if outlier or not rows else await self._stream_id_gen()
        lock = self._room_locks.get(room_id)
        if lock is None:  # kept for the store's life, like the per-room caches
            lock = self._room_locks[room_id] = asyncio.Lock()
        async with lock:
            if gen is None:
                ranks, orderings = await self.pool.run_interaction("persist_events", persist_events_txn, rows)
            else:
                async with gen.get_next_mult(len(rows)) as ids:
                    ranks, orderings = await self.pool.run_interaction(
                        "persist_events",
                        persist_events_txn,
                        rows,
                        orderings=ids,
                        instance=gen.instance_name,
                        state_changes=state_changes,
                    )
        stored = {r[0].event_id for r in rows if r[0].event_id in ranks}
        if room_id in self._counts:
            self._counts[room_id] += len(stored)
        for eid in set(ranks) - stored:  # older events re-ranked: forget their cached copies
            self._events.pop(eid, None)
            self._nodes.pop(eid, None)
        for r in rows:  # de-outliered: its rejection may have changed
            if r[0].event_id not in stored and r[0].event_id in orderings:
                self._events.pop(r[0].event_id, None)
        idx = self._indexes.get(room_id)
        if idx is not None and any(e in idx.dangling for e in stored):
            # An auth event arrived after events citing it: rebuild the index when next used.
            del self._indexes[room_id]
            idx = None
        for r in rows:
            pdu = r[0]
            if pdu.event_id in stored:
                self._events.put(pdu.event_id, pdu)
                self._nodes.put(pdu.event_id, (pdu.auth_rank, pdu.auth_event_ids))
        if idx is not None:
            added = []
            for r in sorted(rows, key=lambda r: r[0].auth_rank):
                pdu = r[0]
                if pdu.event_id in stored:
                    c, s = idx.add(pdu.event_id, pdu.type, pdu.state_key, pdu.auth_event_ids)
                    added.append((pdu.event_id, c, s))
            await self.pool.run_interaction(
                "persist_chain_index",
                store_chain_index_txn,
                room_id,
                added,
                idx.take_new_links(),
                replace=False,
            )
        return PersistedBatch([r[0] for r in rows], orderings)

    async def get_current_state(self, room_id: str) -> dict[StateKey, str]:
        """The room's current state (see ``current_state_events``)."""
        result: dict[StateKey, str] = await self.pool.run_interaction(
            "get_current_state", get_current_state_txn, room_id
        )
        return result

    async def get_events(self, ids: Collection[str]) -> dict[str, PDU]:
        """Stored events by ID (rejected ones included and flagged; unknown IDs absent)."""
        out: dict[str, PDU] = {}
        missing = []
        for i in ids:
            ev = self._events.get(i)
            if ev is None:
                missing.append(i)
            else:
                out[i] = ev
        if missing:
            rows = await self.pool.run_interaction("get_events", get_event_rows_txn, missing)
            for eid, raw, rejected_reason, rank, version in rows:
                pdu = pdu_from_dict(json.loads(raw), rules_for(version), rejected_reason=rejected_reason)
                pdu.auth_rank = rank
                self._events.put(eid, pdu)
                out[eid] = pdu
        return out

    async def get_auth_nodes(self, ids: Collection[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
        out: dict[str, tuple[int, tuple[str, ...]]] = {}
        missing = []
        for i in ids:
            n = self._nodes.get(i)
            if n is None:
                missing.append(i)
            else:
                out[i] = n
        if missing:
            got = await self.pool.run_interaction("get_auth_nodes", get_auth_nodes_txn, missing)
            for eid, node in got.items():
                self._nodes.put(eid, node)
                out[eid] = node
        return out

    async def build_chain_index(self, room_id: str) -> ChainCoverIndex:
        """Load the room's chain-cover index from its tables, or build and store it if they
        do not cover every event; later persists keep it (and the tables) up to date."""
        idx = self._indexes.get(room_id)
        if idx is not None:
            return idx
        positions, links, dangling, count = await self.pool.run_interaction(
            "load_chain_index", _load_chain_index_txn, room_id
        )
        if positions and len(positions) == count:
            try:
                idx = ChainCoverIndex.from_rows(positions, links, dangling)
            except ValueError:
                idx = None
        if idx is None:
            rows = await self.pool.run_interaction("load_auth_graph", _room_events_txn, room_id)
            idx = ChainCoverIndex()
            for eid, etype, sk, auth in rows:
                idx.add(eid, etype, sk, auth)
            new = [(e, c, s) for e, (c, s) in idx.position.items()]
            await self.pool.run_interaction(
                "store_chain_index",
                store_chain_index_txn,
                room_id,
                new,
                idx.take_new_links(),
                replace=True,
            )
        idx.take_new_links()
        self._indexes[room_id] = idx
        return idx

    def source(self, room_id: str) -> _RoomSource:
        return _RoomSource(self, room_id)

    async def resolve_state(
        self,
        room_id: str,
        state_sets: Sequence[Mapping[StateKey, str]],
        options: ResolveOptions | None = None,
        *,
        stages: ResolutionStages | None = None,
    ) -> dict[StateKey, str]:
        """Resolve state sets of a stored room with its stored room version."""
        version = await self.pool.run_interaction("get_room_version", get_room_version_txn, room_id)
        if version is None:
            raise LookupError(f"unknown room {room_id}")
        opts = options or ResolveOptions()
        if opts.index == "chain":
            await self.build_chain_index(room_id)
        elif opts.index == "auto" and room_id not in self._indexes:
            count = self._counts.get(room_id)
            if count is None:
                count = self._counts[room_id] = await self.pool.run_interaction(
                    "count_room_events", _count_events_txn, room_id
                )
            if count >= opts.index_threshold:
                await self.build_chain_index(room_id)
        return await resolve_state_async(
            room_id, rules_for(version), state_sets, self.source(room_id), opts, stages=stages
        )

    async def store_state_group(self, room_id: str, state: Mapping[StateKey, str]) -> int:
        if self._state_group_lock is None:
            self._state_group_lock = asyncio.Lock()
        async with self._state_group_lock:
            group: int = await self.pool.run_interaction(
                "store_state_group", store_state_group_txn, room_id, state
            )
        return group

    async def get_state_group(self, group: int) -> dict[StateKey, str]:
        result: dict[StateKey, str] = await self.pool.run_interaction(
            "get_state_group", get_state_group_txn, group
        )
        return result
