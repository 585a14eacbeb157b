"""Event-fetch accounting: record_event_fetch and FetchDeduplicator (spec §8, §10 item 29)."""

from __future__ import annotations

import asyncio

import pytest

from logcontext import LoggingContext
from logcontext.db import FetchDeduplicator, record_event_fetch


async def test_concurrent_requests_one_fetch_charged_once() -> None:
    """Two concurrent requests for one uncached event: one fetch, charged 1 and 0."""
    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[str]) -> dict[str, str]:
        calls.append(keys)
        await gate.wait()
        return {k: f"event {k}" for k in keys}

    dedup: FetchDeduplicator[str, str] = FetchDeduplicator(fetch)

    async def request(name: str) -> tuple[str | None, int]:
        with LoggingContext(name) as ctx:
            ev = await dedup.get("$e1")
            return ev, ctx.get_resource_usage().evt_db_fetch_count

    first = asyncio.ensure_future(request("r1"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(request("r2"))
    await asyncio.sleep(0)
    assert dedup.in_flight == 1
    gate.set()
    assert await first == ("event $e1", 1)
    assert await second == ("event $e1", 0)
    assert calls == [["$e1"]]
    assert dedup.in_flight == 0


async def test_partial_overlap_fetches_only_new_keys() -> None:
    """A caller asking for in-flight and new keys fetches only the new ones."""
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[int]) -> dict[int, int]:
        calls.append(keys)
        await gate.wait()
        return {k: k * 10 for k in keys if k != 3}

    dedup: FetchDeduplicator[int, int] = FetchDeduplicator(fetch)

    async def request(name: str, keys: list[int]) -> tuple[dict[int, int], int]:
        with LoggingContext(name) as ctx:
            found = await dedup.get_many(keys)
            return found, ctx.get_resource_usage().evt_db_fetch_count

    t1 = asyncio.ensure_future(request("a", [1, 2]))
    await asyncio.sleep(0)
    t2 = asyncio.ensure_future(request("b", [2, 3, 3]))
    await asyncio.sleep(0)
    gate.set()
    assert await t1 == ({1: 10, 2: 20}, 2)
    assert await t2 == ({2: 20}, 1)  # 3 not found; 2 was fetched by "a"
    assert calls == [[1, 2], [3]]


async def test_fetch_failure_reaches_every_waiter() -> None:
    """A failing fetch fails the fetcher and the waiters; the keys can be fetched again."""
    gate = asyncio.Event()
    fail = True

    async def fetch(keys: list[str]) -> dict[str, int]:
        await gate.wait()
        if fail:
            raise OSError("db down")
        return dict.fromkeys(keys, 1)

    dedup: FetchDeduplicator[str, int] = FetchDeduplicator(fetch)
    with LoggingContext("req"):
        t1 = asyncio.ensure_future(dedup.get("k"))
        t2 = asyncio.ensure_future(dedup.get("k"))
        await asyncio.sleep(0)
        gate.set()
        for t in (t1, t2):
            with pytest.raises(OSError, match="db down"):
                await t
        fail = False
        assert await dedup.get("k") == 1


async def test_cancelled_first_caller_does_not_fail_second() -> None:
    """Cancelling the caller that started a fetch leaves the other waiter's result intact."""
    gate = asyncio.Event()

    async def fetch(keys: list[str]) -> dict[str, int]:
        await gate.wait()
        return dict.fromkeys(keys, 7)

    dedup: FetchDeduplicator[str, int] = FetchDeduplicator(fetch)
    with LoggingContext("req"):
        t1 = asyncio.ensure_future(dedup.get("k"))
        await asyncio.sleep(0)
        t2 = asyncio.ensure_future(dedup.get("k"))
        await asyncio.sleep(0)
        t1.cancel()
        gate.set()
        assert await t2 == 7
        with pytest.raises(asyncio.CancelledError):
            await t1


def test_record_event_fetch() -> None:
    """record_event_fetch adds to the current context and its parents; bad counts raise."""
    with LoggingContext("parent") as parent:
        with LoggingContext("child", parent_context=parent):
            record_event_fetch(3)
    assert parent.get_resource_usage().evt_db_fetch_count == 3
    record_event_fetch(1)  # sentinel: ignored
    with pytest.raises(ValueError):
        record_event_fetch(-1)
