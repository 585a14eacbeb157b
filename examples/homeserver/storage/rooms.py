"""The ``rooms`` table: one row per room with its version.

Transaction functions take a DB-API cursor (run them with ``pool.run_interaction``);
`RoomStore` wraps them for a `logcontext.db.DatabasePool`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RoomStore", "get_room_version_txn", "store_room_txn"]


def store_room_txn(
    txn: Any, room_id: str, room_version: str, *, creator: str | None = None, overwrite: bool
) -> bool:
    """Insert the room; with ``overwrite`` replace its version, else keep an existing row.

    Returns True when the row now holds ``room_version``.
    """
    if overwrite:
        txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id) DO UPDATE SET room_version = excluded.room_version,"
            " creator = COALESCE(excluded.creator, rooms.creator)",
            (room_id, room_version, creator),
        )
        return True
    txn.execute(
        "INSERT INTO rooms (room_id, room_version, creator) VALUES (?, ?, ?)"
        " ON CONFLICT (room_id) DO NOTHING",
        (room_id, room_version, creator),
    )
    return get_room_version_txn(txn, room_id) == room_version


def get_room_version_txn(txn: Any, room_id: str) -> str | None:
    txn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
    row = txn.fetchone()
    return None if row is None else str(row[0])


class RoomStore:
    """Async access to ``rooms`` over a `logcontext.db.DatabasePool`."""

    def __init__(self, pool: Any):
        self.pool = pool

    async def store_room(
        self, room_id: str, room_version: str, *, creator: str | None = None, overwrite: bool = True
    ) -> bool:
        return bool(
            await self.pool.run_interaction(
                "store_room",
                store_room_txn,
                room_id,
                room_version,
                creator=creator,
                overwrite=overwrite,
            )
        )

    async def get_room_version(self, room_id: str) -> str | None:
        result: str | None = await self.pool.run_interaction(
            "get_room_version", get_room_version_txn, room_id
        )
        return result
