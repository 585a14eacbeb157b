"""Redis pub/sub transport against a real redis-server (spec §5; scenarios 9, 31–34)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from homeserver.app import MainProcess, Worker
from homeserver.config import DatabaseConfig
from homeserver.replication.protocol import UserIpCommand
from replhelpers import fast_options, tokens, wait_until

pytestmark = pytest.mark.redis

DL = ("device_lists", "master")


def bus_synced(w: Worker) -> bool:
    conn = w.bus.connection if w.bus is not None else None
    return conn is not None and {k[0] for k in conn.synced} == set(w.handler.streams)


@contextlib.asynccontextmanager
async def bus_setup(
    db_cfg: DatabaseConfig,
    redis_url: str,
    *,
    main_bus: dict[str, Any] | None = None,
    worker_bus: dict[str, Any] | None = None,
    main_opts: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[MainProcess, Worker]]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    main = MainProcess(
        db_cfg,
        replication=None,
        http=("127.0.0.1", 0),
        options=fast_options(
            redis_url=redis_url,
            redis_prefix=prefix,
            extra={"bus_kwargs": main_bus or {}},
            **(main_opts or {}),
        ),
    )
    await main.start()
    await wait_until(lambda: main.bus is not None and main.bus.subscribes >= 1, what="main subscribed")
    worker = Worker(
        "w1",
        db_cfg,
        main=None,
        main_http=f"http://127.0.0.1:{main.http_port}",
        options=fast_options(
            redis_url=redis_url, redis_prefix=prefix, extra={"bus_kwargs": worker_bus or {}}
        ),
    )
    await worker.start()
    try:
        yield main, worker
    finally:
        await worker.stop()
        await main.stop()


async def _kill_clients(redis_url: str, name: str) -> int:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    try:
        killed = 0
        for client in await admin.client_list():
            if client.get("name") == name:
                await admin.client_kill_filter(_id=client["id"])
                killed += 1
        return killed
    finally:
        await admin.aclose()


async def test_rows_flow_over_the_bus_and_echoes_are_ignored(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """A worker on the bus syncs and receives live rows; the writer ignores its own echoes."""
    async with asyncio.timeout(15), bus_setup(db_cfg, redis_url) as (main, w):
        await wait_until(lambda: bus_synced(w), what="bus sync")
        for i in range(5):
            await main.change_devices(f"@u{i}:x", ["D"], ["h"])
        main.set_typing("!r:x", "@a:x", True)
        last = main.devices_gen.get_current_token()
        await wait_until(lambda: w.handler.cur.get(DL) == last)
        await wait_until(lambda: w.consumer.typing == main.typing.snapshot())
        assert tokens(w, "device_lists") == list(range(2, last + 1))
        assert main.handler.stats.dropped("device_lists", "echo") > 0


@pytest.mark.parametrize("hook", [True, False])
async def test_replicate_must_follow_subscribe(db_cfg: DatabaseConfig, redis_url: str, hook: bool) -> None:
    """REPLICATE before the SUBSCRIBE confirmation loses the answers (#7409); the real order syncs."""
    async with (
        asyncio.timeout(15),
        bus_setup(db_cfg, redis_url, worker_bus={"replicate_before_subscribe": hook}) as (main, w),
    ):
        await wait_until(lambda: w.bus is not None and w.bus.connection is not None)
        if hook:
            await asyncio.sleep(0.5)
            assert not bus_synced(w)
        else:
            await wait_until(lambda: bus_synced(w), what="bus sync")
        del main


async def test_subscriber_reconnect_catches_up(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """A worker whose subscription dropped re-subscribes, REPLICATEs and fetches what it missed."""
    async with asyncio.timeout(15), bus_setup(db_cfg, redis_url) as (main, w):
        await wait_until(lambda: bus_synced(w))
        assert await _kill_clients(redis_url, "w1-sub") == 1
        for i in range(5):
            await main.change_devices(f"@u{i}:x", ["D"], [])
        last = main.devices_gen.get_current_token()
        await wait_until(lambda: w.handler.cur.get(DL) == last, what="caught up")
        assert tokens(w, "device_lists") == list(range(2, last + 1))
        assert w.bus is not None and w.bus.subscribes >= 2


async def test_writer_reconnect_announces_positions(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """A writer reconnecting to Redis after writing rows announces; readers catch up (#7482)."""
    async with asyncio.timeout(15), bus_setup(db_cfg, redis_url) as (main, w):
        await wait_until(lambda: bus_synced(w))
        assert main.bus is not None
        main.bus.hold = asyncio.Event()  # the publisher is stuck: rows are not published
        for i in range(4):
            await main.change_devices(f"@u{i}:x", ["D"], [])
        await _kill_clients(redis_url, "master-pub")
        await _kill_clients(redis_url, "master-sub")
        main.bus._queue.clear()  # whatever was queued is lost with the connection
        main.bus.hold.set()
        main.bus.hold = None
        last = main.devices_gen.get_current_token()
        await wait_until(lambda: w.handler.cur.get(DL) == last, what="caught up via announcement")
        assert tokens(w, "device_lists") == list(range(2, last + 1))
        assert all(d.path == "catch_up" for d in w.consumer.deliveries if d.stream == "device_lists")


async def test_publisher_overflow_announces_first(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """Publisher overflow clears the queue and queues positions first; the reader fetches the lost rows."""
    async with (
        asyncio.timeout(15),
        bus_setup(db_cfg, redis_url, main_bus={"max_queue_commands": 5}) as (main, w),
    ):
        await wait_until(lambda: bus_synced(w))
        await main.change_devices("@first:x", ["D"], [])
        await wait_until(lambda: w.handler.cur.get(DL) == 2)
        assert main.bus is not None
        hold = main.bus.hold = asyncio.Event()
        for i in range(12):
            await main.change_devices(f"@u{i}:x", ["D"], [])
        await wait_until(lambda: main.handler.stats.dropped("-", "overflow") > 0)
        assert main.bus._queue[0][1].startswith(b"POSITION")
        hold.set()
        main.bus.hold = None
        last = main.devices_gen.get_current_token()
        await wait_until(lambda: w.handler.cur.get(DL) == last, what="caught up")
        assert tokens(w, "device_lists") == list(range(2, last + 1))


async def test_user_ip_only_reaches_its_channel(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """USER_IP is published on its own channel: the main process gets it, workers do not."""
    async with asyncio.timeout(15), bus_setup(db_cfg, redis_url) as (main, w):
        await wait_until(lambda: bus_synced(w))
        got_main: list[UserIpCommand] = []
        got_worker: list[UserIpCommand] = []
        main.handler.on_user_ip = got_main.append
        w.handler.on_user_ip = got_worker.append
        assert w.bus is not None
        w.bus.publish(UserIpCommand("@u:x", "tok", "1.2.3.4", "ua", "DEV", 1700))
        await wait_until(lambda: bool(got_main), what="USER_IP at main")
        await asyncio.sleep(0.2)
        assert got_worker == [] and got_main[0].ip == "1.2.3.4"


async def test_wrong_redis_password_keeps_retrying(db_cfg: DatabaseConfig, redis_url: str) -> None:
    """A wrong Redis password is retried with backoff and recovers once the password is right."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    await admin.config_set("requirepass", "good")
    admin_auth = aioredis.Redis.from_url(redis_url, password="good")
    try:
        host_port = redis_url.removeprefix("redis://")
        bad_url = f"redis://:bad@{host_port}"
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        async with asyncio.timeout(15):
            main = MainProcess(
                db_cfg,
                replication=None,
                http=None,
                options=fast_options(
                    redis_url=bad_url, redis_prefix=prefix, extra={"bus_kwargs": {"max_backoff": 0.2}}
                ),
            )
            await main.start()
            try:
                assert main.bus is not None
                await wait_until(lambda: main.bus.errors >= 3, what="retries")  # type: ignore[union-attr]
                assert main.bus.subscribes == 0
                await admin_auth.config_set("requirepass", "bad")
                await wait_until(lambda: main.bus.subscribes >= 1, what="recovered")  # type: ignore[union-attr]
            finally:
                await main.stop()
    finally:
        await admin_auth.config_set("requirepass", "")
        await admin_auth.aclose()
        await admin.aclose()
