"""ID generators, device-list and event paging (spec §3.1, §4; scenarios 11, 12, 16, 17, 19, 26, 36, 37).

Database tests run on SQLite and, when the suite's ``pg_dsn`` is available, PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from homeserver.app import EVENT_TABLES, apply_schema
from homeserver.config import DatabaseConfig, open_database
from homeserver.replication.streams import (
    Stream,
    UpdateFunctionContractError,
    parse_device_row,
    parse_event_row,
    token_groups,
)
from homeserver.storage import streams as storage_streams
from homeserver.storage.devices import DEVICE_LIST_TABLES, add_device_change_to_streams
from homeserver.storage.events import EventStore
from homeserver.storage.id_generators import StreamIdGenerator, param_converter, read_position_txn
from homeserver.storage.rooms import RoomStore
from homeserver.storage.streams import StreamStore

from logcontext import LoggingContext


@pytest.fixture(params=["sqlite", "postgres"])
async def pool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A pool with the schema applied, on SQLite or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        cfg = DatabaseConfig("sqlite", str(tmp_path / "s.db"))
    else:
        from _pg import make_database

        cfg = DatabaseConfig("postgres", make_database(request.getfixturevalue("pg_dsn")))
    db = open_database(cfg, max_size=2)
    with LoggingContext("test-setup"):
        await db.run_interaction("apply_schema", apply_schema)
    try:
        with LoggingContext("test"):
            yield db
    finally:
        await db.close()


async def test_token_waits_for_unfinished_ids() -> None:
    """3 finishing before 2 keeps the token at 1 until 2 finishes; a failing body releases its ID."""
    gen = StreamIdGenerator("s", 1)
    with gen.get_next_sync() as a, gen.get_next_sync() as b:
        assert (a, b) == ([2], [3])
    assert gen.get_current_token() == 3
    gen2 = StreamIdGenerator("s", 1)
    cm2 = gen2.get_next_sync()
    two = cm2.__enter__()
    with gen2.get_next_sync() as three:
        pass
    assert three == [3] and gen2.get_current_token() == 1
    cm2.__exit__(None, None, None)
    assert two == [2] and gen2.get_current_token() == 3
    with pytest.raises(RuntimeError):
        async with gen2.get_next() as sid:
            assert sid == 4
            raise RuntimeError("body failed")
    assert gen2.get_current_token() == 4
    async with gen2.get_next_mult(3) as ids:
        assert ids == [5, 6, 7]
    assert gen2.get_current_token() == 7


async def test_empty_stream_starts_at_two_and_persists_position(pool: Any) -> None:
    """An empty stream hands out 2 first; stream_positions is written at start-up and stays <= token."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    q = param_converter(pool)
    assert await pool.run_interaction("r", read_position_txn, q, "device_lists", "master") == 1
    last = await add_device_change_to_streams(pool, gen, "@u:x", ["D"], [])
    assert last == 2
    stored = await pool.run_interaction("r", read_position_txn, q, "device_lists", "master")
    assert stored <= gen.get_current_token()


@pytest.mark.parametrize("all_tables", [True, False])
async def test_restart_start_covers_pokes_table(pool: Any, all_tables: bool) -> None:
    """With the maximum only in the pokes table the next ID is above it (only if that table is listed)."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    await add_device_change_to_streams(pool, gen, "@u:x", ["D1"], ["h1", "h2"])  # ids 2, 3, 4
    # the latest change of the device replaces its stream row; pokes keep the maximum
    await pool.run_interaction("del", lambda txn: txn.execute("DELETE FROM device_lists_stream"))
    tables = DEVICE_LIST_TABLES if all_tables else DEVICE_LIST_TABLES[:1]
    restarted = await StreamIdGenerator.create(pool, "device_lists", tables)
    async with restarted.get_next() as sid:
        pass
    if all_tables:
        assert sid == 5
    else:
        assert sid <= 4  # the documented bug: an ID already used by a poke is reused


async def test_device_change_rows_and_paging(pool: Any) -> None:
    """3 devices x 2 hosts: 3 user rows then 6 pokes, consecutive IDs, one txn; target 4 pages all."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    calls: list[str] = []
    real = pool.run_interaction

    async def counting(desc: str, fn: Any, *args: Any) -> Any:
        calls.append(desc)
        return await real(desc, fn, *args)

    pool.run_interaction = counting
    try:
        last = await add_device_change_to_streams(pool, gen, "@a:x", ["A", "B", "C"], ["h2", "h1"])
    finally:
        del pool.run_interaction
    assert calls == ["add_device_change_to_streams"] and last == 10
    await add_device_change_to_streams(pool, gen, "@b:x", ["D"], ["h1"])  # ids 11, 12
    store = StreamStore(pool)
    all_rows, _, _ = await store.device_list_updates("master", 1, 12, 100)
    assert [t for t, _ in all_rows] == list(range(2, 13))
    assert [r[0] for _, r in all_rows[:3]] == ["@a:x"] * 3
    assert [r[0] for _, r in all_rows[3:9]] == ["h1"] * 3 + ["h2"] * 3
    stream = Stream(
        "device_lists", parse_device_row, store.device_list_updates, lambda i: 12, one_row_per_token=True
    )
    got: list[int] = []
    cur = 1
    while True:
        updates, upto, limited = await stream.get_updates_since("master", cur, 12, 4)
        got.extend(t for t, _ in updates)
        cur = upto
        if not limited:
            break
    assert got == list(range(2, 13))


async def test_device_union_without_order_by_loses_rows(pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ORDER BY removed (test hook, #12321) paged catch-up skips rows."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    await add_device_change_to_streams(pool, gen, "@a:x", ["A", "B", "C"], ["h1", "h2"])
    await add_device_change_to_streams(pool, gen, "@b:x", ["D", "E"], ["h1"])
    monkeypatch.setattr(storage_streams, "ORDER_DEVICE_LIST_UNION", False)
    store = StreamStore(pool)
    got: list[int] = []
    cur, target = 1, gen.get_current_token()
    while True:
        updates, upto, limited = await store.device_list_updates("master", cur, target, 4)
        got.extend(t for t, _ in updates)
        cur = upto
        if not limited:
            break
    assert sorted(got) != list(range(2, target + 1))


async def _write_events(pool: Any, gen: StreamIdGenerator, spec: list[int]) -> None:
    """One event per entry (through the event store); entry n = state rows sharing its token."""
    await RoomStore(pool).store_room("!r:x", "10")
    store = EventStore(pool, stream_ids=gen)
    for i, n_state in enumerate(spec):
        changes = {("m.x", f"k{i}-{j}"): f"$s{i}-{j}" for j in range(n_state)}
        event = {"event_id": f"$e{i}", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x"}
        await store.persist_batch("!r:x", [event], state_changes=changes)


async def test_event_paging_never_splits_a_token(pool: Any) -> None:
    """More than 100 pending rows are paged with `limited`, every row once, in order, no token split."""
    gen = await StreamIdGenerator.create(pool, "events", EVENT_TABLES)
    spec = [(i * 7) % 13 for i in range(60)]  # 60 events, 0-12 state rows each
    await _write_events(pool, gen, spec)
    store = StreamStore(pool)
    stream = Stream("events", parse_event_row, store.event_updates, lambda i: 0, check_whole_tokens=True)
    target = gen.get_current_token()
    cur, pages, seen = 1, 0, []
    while True:
        updates, upto, limited = await stream.get_updates_since("master", cur, target, 20)
        pages += 1
        for token, rows in token_groups(updates):
            assert rows[0][0] == "ev"
            seen.append((token, len(rows)))
        cur = upto
        if not limited:
            break
    assert pages > 5
    assert seen == [(2 + i, 1 + n) for i, n in enumerate(spec)]


async def test_one_big_token_arrives_whole(pool: Any) -> None:
    """A token with more state rows than the target is returned whole in one page."""
    gen = await StreamIdGenerator.create(pool, "events", EVENT_TABLES)
    await _write_events(pool, gen, [1, 150, 2])
    store = StreamStore(pool)
    updates, upto, limited = await store.event_updates("master", 2, 4, 100)
    groups = token_groups(updates)
    assert groups[0][0] == 3 and len(groups[0][1]) == 151
    assert (upto, limited) == (3, True)


async def test_start_position_is_stream_positions_not_max(pool: Any) -> None:
    """9 in flight, 10 committed: a reader starts at stream_positions (8), later gets 9; MAX(id) misses 9."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    for _ in range(7):
        await add_device_change_to_streams(pool, gen, "@u:x", [f"D{_}"], [])  # ids 2..8
    await gen.persist(pool)
    store = StreamStore(pool)
    q = param_converter(pool)
    nine = gen.get_next_sync()
    nine_ids = nine.__enter__()
    async with gen.get_next() as ten:
        await pool.run_interaction(
            "w",
            lambda txn: txn.execute(
                q("INSERT INTO device_lists_stream (stream_id, user_id, device_id) VALUES (?, ?, ?)"),
                (ten, "@ten:x", "T"),
            ),
        )
    await gen.persist(pool)
    start = await store.start_position("device_lists", "master")
    (max_id,) = await pool.run_interaction(
        "m", lambda txn: (txn.execute("SELECT MAX(stream_id) FROM device_lists_stream"), txn.fetchone())[1]
    )
    assert (start, max_id, nine_ids) == (8, 10, [9])
    await pool.run_interaction(
        "w9",
        lambda txn: txn.execute(
            q("INSERT INTO device_lists_stream (stream_id, user_id, device_id) VALUES (?, ?, ?)"),
            (9, "@nine:x", "N"),
        ),
    )
    nine.__exit__(None, None, None)
    assert gen.get_current_token() == 10
    from_start, _, _ = await store.device_list_updates("master", start, 10, 100)
    from_max, _, _ = await store.device_list_updates("master", max_id, 10, 100)
    assert [t for t, _ in from_start] == [9, 10]
    assert 9 not in [t for t, _ in from_max]


async def test_cancel_inside_get_next_waits_for_commit(pool: Any) -> None:
    """Cancelled in get_next() mid-transaction: the token passes the ID only after the commit ended."""
    gen = await StreamIdGenerator.create(pool, "device_lists", DEVICE_LIST_TABLES)
    q = param_converter(pool)
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_insert(txn: Any, sid: int) -> None:
        loop.call_soon_threadsafe(started.set)
        import time

        time.sleep(0.3)
        txn.execute(
            q("INSERT INTO device_lists_stream (stream_id, user_id, device_id) VALUES (?, ?, ?)"),
            (sid, "@c:x", "C"),
        )

    async def writer() -> None:
        async with gen.get_next() as sid:
            await pool.run_interaction("slow", slow_insert, sid)

    task = asyncio.ensure_future(writer())
    async with asyncio.timeout(10):
        await started.wait()
        task.cancel()
        await asyncio.sleep(0.05)
        assert gen.get_current_token() == 1
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gen.get_current_token() == 2
    rows, _, _ = await StreamStore(pool).device_list_updates("master", 1, 2, 10)
    assert rows == [(2, ["@c:x"])]


async def test_contract_violations_raise() -> None:
    """limited without progress, unsorted rows and half a token raise UpdateFunctionContractError."""

    async def no_progress(i: str, f: int, u: int, t: int) -> Any:
        return [], f, True

    async def unsorted(i: str, f: int, u: int, t: int) -> Any:
        return [(3, ["@a"]), (2, ["@b"])], u, False

    async def half_token(i: str, f: int, u: int, t: int) -> Any:
        rows = [(2, ["ev", []]), (3, ["ev", []]), (3, ["state", []])]
        return (
            ([r for r in rows if f < r[0] <= u][:2] if t < 100 else [r for r in rows if f < r[0] <= u]),
            (3 if t < 100 and u > 3 else u),
            t < 100 and u > 3,
        )

    for fn in (no_progress, unsorted, half_token):
        stream = Stream("s", parse_device_row, fn, lambda i: 0, check_whole_tokens=True)
        with pytest.raises(UpdateFunctionContractError):
            await stream.get_updates_since("master", 1, 10, 2)
