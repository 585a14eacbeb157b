"""Event store on ``logcontext.db.DatabasePool``: persistence, ranks, state groups, resolution."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from homeserver.state import InvalidAuthGraph, ResolveOptions, StateResolutionError
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import apply_schema

from logcontext import LoggingContext
from logcontext.db import DatabasePool

VECTORS = Path(__file__).resolve().parents[3] / ".." / "shared" / "vectors" / "state-res"

_CASES = [
    "v2/synapse-v2/ban_vs_pl/at-END",
    "v6/edge/unknown-conflicted-event",
    "v4/edge/rejected-power-levels-in-auth-chain",
    "v7/malformed/event-from-another-room",
    "v10/random/room300-2way-s1036",
    "v12/msc4297/problem-b-subgraph",
    "v12/random/room300-2way-s1037",
]


def _case(name: str) -> dict[str, Any]:
    for path in sorted(VECTORS.glob("v*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if f'"{name}"' in line:
                c: dict[str, Any] = json.loads(line)
                if c["name"] == name:
                    return c
    raise KeyError(name)


@pytest.fixture(params=["sqlite", "postgres"])
async def pool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DatabasePool]:
    if request.param == "sqlite":
        p = DatabasePool.sqlite(":memory:")
    else:
        from _pg import make_database

        p = DatabasePool.postgres(make_database(request.getfixturevalue("pg_dsn")), max_size=2)
    with LoggingContext("store-test"):
        await p.run_interaction("apply_schema", apply_schema)
        try:
            yield p
        finally:
            await p.close()


async def _load(store: EventStore, c: dict[str, Any]) -> None:
    rooms = RoomStore(store.pool)
    room_ids = {e.get("room_id") for e in c["events"]} - {None} | {c["room_id"]}
    for r in room_ids:
        await rooms.store_room(r, c["room_version"], overwrite=False)
    by_room: dict[str, list[dict[str, Any]]] = {}
    for e in c["events"]:
        by_room.setdefault(e.get("room_id") or c["room_id"], []).append(e)
    for r, evs in by_room.items():
        await store.persist_events(r, evs, rejected=c.get("rejected"))


async def test_rooms_insert_if_absent_and_overwrite(pool: DatabasePool) -> None:
    """``overwrite=False`` keeps an existing version; ``overwrite=True`` replaces it."""
    with LoggingContext("t"):
        rooms = RoomStore(pool)
        assert await rooms.get_room_version("!a:x") is None
        assert await rooms.store_room("!a:x", "9", overwrite=False)
        assert not await rooms.store_room("!a:x", "10", overwrite=False)
        assert await rooms.get_room_version("!a:x") == "9"
        await rooms.store_room("!a:x", "10", overwrite=True)
        assert await rooms.get_room_version("!a:x") == "10"


async def test_persist_ranks_nodes_and_state_groups(pool: DatabasePool) -> None:
    """Stored events get ``1 + max(auth ranks)``; nodes keep auth order; state maps round-trip."""
    c = _case("v12/msc4297/problem-b-subgraph")
    with LoggingContext("t"):
        store = EventStore(pool)
        await _load(store, c)
        fresh = EventStore(pool)  # no cache: everything from the database
        ids = [e["event_id"] for e in c["events"]]
        nodes = await fresh.get_auth_nodes(ids)
        evs = await fresh.get_events(ids)
        for eid in ids:
            rank, auth = nodes[eid]
            assert auth == evs[eid].auth_event_ids
            assert rank == 1 + max((nodes[a][0] for a in auth if a in nodes), default=0)
        state = {(t, k): e for t, k, e in c["state_sets"][0]}
        group = await store.store_state_group(c["room_id"], state)
        assert await store.get_state_group(group) == state


@pytest.mark.parametrize("name", _CASES)
async def test_resolve_from_store_matches_vector(name: str) -> None:
    """Resolving from a SQLite store (walk and chain index) gives the vector's answer."""
    c = _case(name)
    p = DatabasePool.sqlite(":memory:")
    try:
        with LoggingContext("t"):
            await p.run_interaction("apply_schema", apply_schema)
            store = EventStore(p)
            await _load(store, c)
            inputs = [{(t, k): e for t, k, e in s} for s in c["state_sets"]]
            for opts in (
                ResolveOptions(),
                ResolveOptions(index="chain"),
                ResolveOptions(index="auto", index_threshold=10),
            ):
                fresh = EventStore(p)
                if "expected_error" in c:
                    with pytest.raises(StateResolutionError) as exc:
                        await fresh.resolve_state(c["room_id"], inputs, opts)
                    assert exc.value.category == c["expected_error"]
                else:
                    got = await fresh.resolve_state(c["room_id"], inputs[::-1], opts)
                    assert got == {(t, k): e for t, k, e in c["expected"]}
                    indexed = opts.index == "chain" or len(c["events"]) >= opts.index_threshold
                    assert (c["room_id"] in fresh._indexes) == indexed
    finally:
        await p.close()


async def test_cycle_in_batch_is_refused() -> None:
    """Two v2 events citing each other cannot be stored (auth cycle)."""
    p = DatabasePool.sqlite(":memory:")
    try:
        with LoggingContext("t"):
            await p.run_interaction("apply_schema", apply_schema)
            await RoomStore(p).store_room("!r:x", "2")
            evs = [
                {
                    "event_id": f"${a}:x",
                    "room_id": "!r:x",
                    "type": "m.room.topic",
                    "state_key": "",
                    "sender": "@a:x",
                    "content": {},
                    "origin_server_ts": 1,
                    "auth_events": [[f"${b}:x", {}]],
                    "prev_events": [],
                }
                for a, b in (("a", "b"), ("b", "a"))
            ]
            with pytest.raises(InvalidAuthGraph):
                await EventStore(p).persist_events("!r:x", evs)
    finally:
        await p.close()


async def test_late_auth_event_reranks_citers() -> None:
    """An auth event stored after events citing it re-ranks them (and their citers) above it."""
    p = DatabasePool.sqlite(":memory:")
    try:
        with LoggingContext("t"):
            await p.run_interaction("apply_schema", apply_schema)
            await RoomStore(p).store_room("!r:x", "2")

            def ev(eid: str, auth: list[str]) -> dict[str, Any]:
                return {
                    "event_id": eid,
                    "room_id": "!r:x",
                    "type": "m.room.topic",
                    "state_key": eid,
                    "sender": "@a:x",
                    "content": {},
                    "origin_server_ts": 1,
                    "auth_events": [[a, {}] for a in auth],
                    "prev_events": [],
                }

            store = EventStore(p)
            await store.persist_events("!r:x", [ev("$c", ["$b"]), ev("$d", ["$c"])])
            await store.persist_events("!r:x", [ev("$a", []), ev("$b", ["$a"])])
            nodes = await EventStore(p).get_auth_nodes(["$a", "$b", "$c", "$d"])
            assert [nodes[e][0] for e in ("$a", "$b", "$c", "$d")] == [1, 2, 3, 4]
            assert (await store.get_auth_nodes(["$d"]))["$d"][0] == 4
            # $e cites the unknown $f; $f arriving with $e as its auth event closes a cycle.
            await store.persist_events("!r:x", [ev("$e", ["$f"])])
            with pytest.raises(InvalidAuthGraph):
                await store.persist_events("!r:x", [ev("$f", ["$e"])])
            assert "$f" not in await EventStore(p).get_events(["$f"])
    finally:
        await p.close()


async def test_chain_index_tables_round_trip(pool: DatabasePool) -> None:
    """The chain index is stored in its tables, reloaded equal, and kept up to date on persist."""
    c = _case("v12/random/room300-2way-s1037")
    with LoggingContext("t"):
        store = EventStore(pool)
        half = len(c["events"]) // 2
        first, rest = dict(c, events=c["events"][:half]), c["events"][half:]
        await _load(store, first)
        built = await store.build_chain_index(c["room_id"])
        await store.persist_events(c["room_id"], rest, rejected=c.get("rejected"))
        loaded = await EventStore(pool).build_chain_index(c["room_id"])
        assert loaded.from_storage and not built.from_storage
        assert len(loaded) == len(c["events"])
        assert loaded.position == built.position
        assert loaded.link_count == built.link_count
        sets = [[e for _, _, e in s] for s in c["state_sets"]]
        assert loaded.difference(sets) == set(c["stages"]["auth_difference"])
        inputs = [{(t, k): e for t, k, e in s} for s in c["state_sets"]]
        got = await EventStore(pool).resolve_state(c["room_id"], inputs, ResolveOptions(index="chain"))
        assert got == {(t, k): e for t, k, e in c["expected"]}


async def test_concurrent_state_groups_get_distinct_ids(pool: DatabasePool) -> None:
    """Concurrent store_state_group calls get distinct IDs and all round-trip (PostgreSQL included)."""
    import asyncio

    with LoggingContext("t"):
        await RoomStore(pool).store_room("!r:x", "10", overwrite=False)
        store = EventStore(pool)
        states = [{("m.room.member", f"@u{i}:x"): f"$e{i}"} for i in range(8)]
        groups = await asyncio.gather(*(store.store_state_group("!r:x", s) for s in states))
        assert len(set(groups)) == 8
        for g, s in zip(groups, states, strict=True):
            assert await store.get_state_group(g) == s
