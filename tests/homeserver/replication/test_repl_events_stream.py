"""The ``events`` stream reads the event store (spec §3.2, §4.1).

Events persisted through :class:`EventStore` as non-outliers take their ``stream_ordering``
from the events stream ID generator; current-state changes share it; outliers stay off the
stream. Database tests run on SQLite and on the suite's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from homeserver.app import EVENT_TABLES, MainProcess, Worker, apply_schema
from homeserver.config import DatabaseConfig, open_database
from homeserver.federation.invites import InviteHandler
from homeserver.replication.streams import Stream, parse_event_row, token_groups
from homeserver.state import InvalidAuthGraph
from homeserver.storage.events import EventStore
from homeserver.storage.id_generators import StreamIdGenerator, identity_sql, read_position_txn
from homeserver.storage.rooms import RoomStore
from homeserver.storage.streams import StreamStore
from replhelpers import FakeMain, fast_options, running_worker, wait_until

from logcontext import LoggingContext

ROOM = "!s:x"


def _ev(
    eid: str, etype: str, *, key: str | None = None, auth: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": eid,
        "room_id": ROOM,
        "type": etype,
        "sender": "@a:x",
        "content": extra.pop("content", {}),
        "origin_server_ts": 1,
        "auth_events": list(auth),
        "prev_events": [],
        **extra,
    }
    if key is not None:
        d["state_key"] = key
    return d


def _row(eid: str, etype: str, key: str | None = None, **kw: Any) -> list[Any]:
    """The expected ``ev`` row (defaults: no redacts/relates_to/membership, accepted, not outlier)."""
    return [
        "ev",
        [
            eid,
            ROOM,
            etype,
            key,
            kw.get("redacts"),
            kw.get("relates_to"),
            kw.get("membership"),
            kw.get("rejected", False),
            False,
        ],
    ]


def _state(etype: str, key: str, eid: str | None) -> list[Any]:
    return ["state", [ROOM, etype, key, eid]]


ROOM_EVENTS = [
    _ev("$create", "m.room.create", key="", content={"creator": "@a:x"}),
    _ev("$join", "m.room.member", key="@a:x", auth=("$create",), content={"membership": "join"}),
    _ev("$msg", "m.room.message", content={"m.relates_to": {"rel_type": "m.thread", "event_id": "$create"}}),
    _ev("$red", "m.room.redaction", redacts="$msg"),
    _ev("$name1", "m.room.name", key="", content={"name": "one"}),
    _ev("$name2", "m.room.name", key="", content={"name": "rejected"}),
    _ev("$name3", "m.room.name", key="", content={"name": "three"}),
]

# What the stream carries for ROOM_EVENTS persisted in one batch from an empty stream.
EXPECTED = [
    (2, _row("$create", "m.room.create", "")),
    (2, _state("m.room.create", "", "$create")),
    (3, _row("$join", "m.room.member", "@a:x", membership="join")),
    (3, _state("m.room.member", "@a:x", "$join")),
    (4, _row("$msg", "m.room.message", relates_to="$create")),
    (5, _row("$red", "m.room.redaction", redacts="$msg")),
    (6, _row("$name1", "m.room.name", "")),
    (6, _state("m.room.name", "", "$name1")),
    (7, _row("$name2", "m.room.name", "", rejected=True)),  # rejected: on the stream, no state change
    (8, _row("$name3", "m.room.name", "")),
    (8, _state("m.room.name", "", "$name3")),
]


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A pool with the schema applied and the room stored, on SQLite or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        cfg = DatabaseConfig("sqlite", str(tmp_path / "s.db"))
    else:
        from _pg import make_database

        cfg = DatabaseConfig("postgres", make_database(request.getfixturevalue("pg_dsn")))
    pool = open_database(cfg, max_size=2)
    with LoggingContext("test"):
        await pool.run_interaction("apply_schema", apply_schema)
        await RoomStore(pool).store_room(ROOM, "10")
        try:
            yield pool
        finally:
            await pool.close()


async def _store(pool: Any) -> tuple[EventStore, StreamIdGenerator]:
    gen = await StreamIdGenerator.create(pool, "events", EVENT_TABLES)
    return EventStore(pool, stream_ids=gen), gen


async def _all_updates(pool: Any, upto: int, target: int = 100) -> list[tuple[int, list[Any]]]:
    """Every update in ``(1, upto]``, paged through the checked stream wrapper."""
    stream = Stream("events", parse_event_row, StreamStore(pool).event_updates, lambda i: upto)
    stream.check_whole_tokens = True
    out: list[tuple[int, list[Any]]] = []
    cur = 1
    while True:
        updates, cur, limited = await stream.get_updates_since("master", cur, upto, target)
        out.extend(updates)
        if not limited:
            return out


async def test_persisted_events_are_the_stream(db: Any) -> None:
    """A batch gets orderings in the order given; its stream rows carry the spec's fields and state."""
    store, gen = await _store(db)
    batch = await store.persist_batch(ROOM, ROOM_EVENTS, rejected={"$name2": "auth"})
    assert batch.stream_orderings == {e["event_id"]: 2 + i for i, e in enumerate(ROOM_EVENTS)}
    assert gen.get_current_token() == 8
    assert await _all_updates(db, 8) == EXPECTED
    assert await _all_updates(db, 8, target=3) == EXPECTED  # paged: same rows, no token split
    assert (await store.get_current_state(ROOM))[("m.room.name", "")] == "$name3"
    # The generator restarts above the stored orderings (EVENT_TABLES names the event store).
    restarted = await StreamIdGenerator.create(db, "events", EVENT_TABLES)
    assert restarted.get_current_token() == 8


async def test_state_deltas_carry_the_event_ordering(db: Any) -> None:
    """A state change is a row at its event's token; an unchanged key or a message adds none; None removes."""
    store, gen = await _store(db)
    await store.persist_batch(ROOM, ROOM_EVENTS[:2])  # 2, 3
    again = await store.persist_batch(ROOM, ROOM_EVENTS[1:2])  # already stored: no new row
    assert again.stream_orderings == {"$join": 3}
    resolved = {("m.room.member", "@a:x"): "$join", ("m.room.topic", ""): "$t", ("m.x", "gone"): None}
    last = await store.persist_batch(ROOM, [_ev("$m2", "m.room.message")], state_changes=resolved)
    so = last.stream_orderings["$m2"]
    assert so == 5 and gen.get_current_token() == 5  # 4 was allocated for the duplicate, unused
    drop = await store.persist_batch(
        ROOM, [_ev("$m3", "m.room.message")], state_changes={("m.room.topic", ""): None}
    )
    assert drop.stream_orderings == {"$m3": 6}
    got = await _all_updates(db, 6)
    assert got[4:] == [
        (5, _row("$m2", "m.room.message")),
        (5, _state("m.room.topic", "", "$t")),
        (6, _row("$m3", "m.room.message")),
        (6, _state("m.room.topic", "", None)),
    ]
    assert [t for t, _ in got[:4]] == [2, 2, 3, 3]
    assert await store.get_current_state(ROOM) == {
        ("m.room.create", ""): "$create",
        ("m.room.member", "@a:x"): "$join",
    }


async def test_outliers_get_no_stream_row(db: Any) -> None:
    """An outlier invite takes no ordering and changes no state; de-outliered it joins the stream."""
    store, gen = await _store(db)
    await store.persist_batch(ROOM, ROOM_EVENTS[:1])  # 2
    invite = _ev("$inv", "m.room.member", key="@b:x", content={"membership": "invite"})
    await InviteHandler(store).on_invite("10", invite)
    assert gen.get_current_token() == 2
    assert await _all_updates(db, 2) == EXPECTED[:2]
    assert ("m.room.member", "@b:x") not in await store.get_current_state(ROOM)
    later = await store.persist_batch(ROOM, [invite])  # the room's real history includes it
    assert later.stream_orderings == {"$inv": 3}
    assert (await _all_updates(db, 3))[2:] == [
        (3, _row("$inv", "m.room.member", "@b:x", membership="invite")),
        (3, _state("m.room.member", "@b:x", "$inv")),
    ]
    with pytest.raises(ValueError, match="state_changes"):
        await store.persist_batch(ROOM, [invite], outlier=True, state_changes={("m.x", ""): "$inv"})


async def test_persists_of_one_room_go_one_at_a_time(db: Any) -> None:
    """A second persist in the room waits for the first's transaction, so state follows the orderings."""
    store, _ = await _store(db)
    await store.persist_batch(ROOM, ROOM_EVENTS[:1])  # 2
    real = db.run_interaction
    gate = asyncio.Event()
    calls: list[Any] = []

    async def gated(desc: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if desc == "persist_events":
            calls.append(kwargs.get("orderings"))
            if len(calls) == 1:
                await gate.wait()
        return await real(desc, fn, *args, **kwargs)

    db.run_interaction = gated
    try:
        first = asyncio.ensure_future(store.persist_batch(ROOM, ROOM_EVENTS[4:5]))  # $name1
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(store.persist_batch(ROOM, ROOM_EVENTS[6:7]))  # $name3
        await asyncio.sleep(0.05)
        assert calls == [[3]]
        gate.set()
        await asyncio.gather(first, second)
    finally:
        del db.run_interaction
    assert calls == [[3], [4]]
    assert (await store.get_current_state(ROOM))[("m.room.name", "")] == "$name3"
    assert (await _all_updates(db, 4))[-1] == (4, _state("m.room.name", "", "$name3"))


async def test_failed_persist_leaves_a_gap_the_token_passes(db: Any) -> None:
    """A batch refused inside its transaction writes nothing; its IDs finish and the next event follows."""
    store, gen = await _store(db)
    cycle = [_ev("$c1", "m.x", auth=("$c2",)), _ev("$c2", "m.x", auth=("$c1",))]
    with pytest.raises(InvalidAuthGraph):
        await store.persist_batch(ROOM, cycle)
    assert gen.get_current_token() == 3
    ok = await store.persist_batch(ROOM, ROOM_EVENTS[:1])
    assert ok.stream_orderings == {"$create": 4}
    assert await _all_updates(db, 4) == [(4, row) for _, row in EXPECTED[:2]]


async def test_old_layout_database_is_upgraded(tmp_path: Path) -> None:
    """An `events` table without the stream columns gets them; the old events position is forgotten."""
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE events (event_id TEXT NOT NULL PRIMARY KEY, room_id TEXT NOT NULL,"
        " type TEXT NOT NULL, state_key TEXT, sender TEXT NOT NULL, origin_server_ts BIGINT NOT NULL,"
        " depth BIGINT NOT NULL DEFAULT 0, auth_rank BIGINT NOT NULL,"
        " outlier BOOLEAN NOT NULL DEFAULT FALSE, rejected_reason TEXT, redacted_by TEXT,"
        " json TEXT NOT NULL);"
        "INSERT INTO events (event_id, room_id, type, sender, origin_server_ts, auth_rank, json)"
        " VALUES ('$old', '!s:x', 'm.room.message', '@a:x', 1, 1, '{}');"
        "CREATE TABLE stream_positions (stream_name TEXT NOT NULL, instance_name TEXT NOT NULL,"
        " stream_id BIGINT NOT NULL, PRIMARY KEY (stream_name, instance_name));"
        "INSERT INTO stream_positions VALUES ('events', 'master', 500), ('device_lists', 'master', 7);"
    )
    conn.close()
    pool = open_database(DatabaseConfig("sqlite", str(path)), max_size=1)
    with LoggingContext("test"):
        try:
            await pool.run_interaction("apply_schema", apply_schema)
            await pool.run_interaction("apply_schema", apply_schema)  # idempotent
            assert (
                await pool.run_interaction("r", read_position_txn, identity_sql, "events", "master") is None
            )
            assert (
                await pool.run_interaction("r", read_position_txn, identity_sql, "device_lists", "master")
                == 7
            )
            await RoomStore(pool).store_room(ROOM, "10")
            store, _ = await _store(pool)
            await store.persist_batch(ROOM, ROOM_EVENTS[:1])
            assert await _all_updates(pool, 2) == EXPECTED[:2]  # the old event has no ordering
        finally:
            await pool.close()


@contextlib.asynccontextmanager
async def _writer_and_worker(
    cfg: DatabaseConfig, **opts: Any
) -> AsyncIterator[tuple[MainProcess, Any, Worker]]:
    """(row writer without a listener, the fake main's peer, a worker connected to the fake main)."""
    writer = MainProcess(cfg, replication=None, http=None, options=fast_options())
    await writer.start()
    fake = await FakeMain().start()
    try:
        async with running_worker("w1", cfg, port=fake.port, options=fast_options(**opts)) as w:
            peer = await fake.accept()
            yield writer, peer, w
    finally:
        await fake.stop()
        await writer.stop()


async def test_worker_catches_up_from_the_event_store(db_cfg: DatabaseConfig) -> None:
    """A worker told the events position reads the event store's rows from the DB, in small pages, whole."""
    async with asyncio.timeout(15), _writer_and_worker(db_cfg, target_rows=3) as (writer, peer, w):
        with LoggingContext("writes"):
            await RoomStore(writer.db).store_room(ROOM, "10")
            await writer.event_store.persist_batch(ROOM, ROOM_EVENTS, rejected={"$name2": "auth"})
            await InviteHandler(writer.event_store).on_invite(
                "10", _ev("$inv", "m.room.member", key="@b:x", content={"membership": "invite"})
            )
        eid, so = await writer.send_event(ROOM, "m.room.topic", "@a:x", state_key="", content={"topic": "t"})
        top = writer.events_gen.get_current_token()
        assert so == top == 9
        peer.send(f"POSITION events master {top} {top}")
        await wait_until(lambda: w.handler.cur.get(("events", "master")) == top, what="caught up")
        want = [*EXPECTED, (9, _row(eid, "m.room.topic", "")), (9, _state("m.room.topic", "", eid))]
        got = [d for d in w.consumer.deliveries if d.stream == "events"]
        assert [(d.token, d.rows, d.path) for d in got] == [
            (t, rows, "catch_up") for t, rows in token_groups(want)
        ]
