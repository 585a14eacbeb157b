"""The main process feeds ``state_res_unindexed_events`` from its database (state-res spec §6)."""

from __future__ import annotations

import asyncio

from homeserver.app import MainProcess
from homeserver.config import DatabaseConfig
from homeserver.state import _metrics
from replhelpers import fast_options


async def test_main_process_registers_its_database_as_unindexed_source(db_cfg: DatabaseConfig) -> None:
    """While the main process runs, its database is a source of the unindexed-events gauge (a
    fresh database has none waiting); after stop() the source is gone, so no scrape hits a
    closed pool."""
    before = dict(_metrics._sources)
    main = MainProcess(db_cfg, replication=None, options=fast_options())
    await main.start()
    try:
        added = [s for k, s in _metrics._sources.items() if k not in before]
        assert len(added) == 1
        assert await asyncio.to_thread(added[0]) == 0
    finally:
        await main.stop()
    assert _metrics._sources == before
