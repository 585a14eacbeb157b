"""Federation invites for rooms we are not in (Synapse #6983)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from homeserver.federation.invites import InviteError, InviteHandler
from homeserver.state import UnsupportedRoomVersion
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import apply_schema

from logcontext import LoggingContext
from logcontext.db import DatabasePool

ROOM = "!remote:other.example"


def _member(eid: str, sender: str, target: str, membership: str, **content: object) -> dict[str, object]:
    return {
        "event_id": eid,
        "room_id": ROOM,
        "type": "m.room.member",
        "state_key": target,
        "sender": sender,
        "content": {"membership": membership, **content},
        "origin_server_ts": 10,
        "depth": 5,
        "auth_events": ["$create", "$pl", "$alice"],
        "prev_events": ["$prev"],
        "hashes": {},
        "signatures": {},
    }


@pytest.fixture
async def handler() -> AsyncIterator[InviteHandler]:
    pool = DatabasePool.sqlite(":memory:")
    with LoggingContext("invite-test"):
        await pool.run_interaction("apply_schema", apply_schema)
        try:
            yield InviteHandler(EventStore(pool))
        finally:
            await pool.close()


async def test_invite_stores_room_version_once(handler: InviteHandler) -> None:
    """The first invite records the version; a second invite does not overwrite it; a join does."""
    with LoggingContext("t"):
        await handler.on_invite("9", _member("$inv", "@alice:other.example", "@bob:here", "invite"))
        rooms = RoomStore(handler.pool)
        assert await rooms.get_room_version(ROOM) == "9"
        await handler.on_invite("10", _member("$inv2", "@alice:other.example", "@carol:here", "invite"))
        assert await rooms.get_room_version(ROOM) == "9"
        await handler.on_join(ROOM, "10")
        assert await rooms.get_room_version(ROOM) == "10"


async def test_invite_read_reject_redact(handler: InviteHandler) -> None:
    """The stored invite is read, rejected and redacted with the stored version's rules."""
    with LoggingContext("t"):
        inv = _member(
            "$inv",
            "@alice:other.example",
            "@bob:here",
            "invite",
            join_authorised_via_users_server="@alice:other.example",
            displayname="Bob",
        )
        await handler.on_invite("9", inv)
        got = await handler.get_invite(ROOM, "@bob:here")
        assert got is not None and got.event_id == "$inv"
        pruned = await handler.redact_event("$inv", "$redaction")
        # v9 keeps the authorising user on redaction; the display name goes.
        assert pruned["content"] == {
            "membership": "invite",
            "join_authorised_via_users_server": "@alice:other.example",
        }
        await handler.reject_invite(ROOM, "@bob:here", _member("$leave", "@bob:here", "@bob:here", "leave"))
        assert await handler.get_invite(ROOM, "@bob:here") is None


async def test_redaction_follows_older_version(handler: InviteHandler) -> None:
    """A v6 room's redaction drops ``join_authorised_via_users_server`` (kept only from v9)."""
    with LoggingContext("t"):
        inv = _member(
            "$inv",
            "@alice:other.example",
            "@bob:here",
            "invite",
            join_authorised_via_users_server="@alice:other.example",
        )
        await handler.on_invite("6", inv)
        pruned = await handler.redact_event("$inv", "$r")
        assert pruned["content"] == {"membership": "invite"}


async def test_bad_invites_are_refused(handler: InviteHandler) -> None:
    """Unknown room versions, non-invites and stray leaves are refused with clear errors."""
    with LoggingContext("t"):
        with pytest.raises(UnsupportedRoomVersion):
            await handler.on_invite("1", _member("$i", "@a:o", "@b:here", "invite"))
        with pytest.raises(Exception, match="not an invite"):
            await handler.on_invite("9", _member("$j", "@a:o", "@b:here", "join"))
        assert await RoomStore(handler.pool).get_room_version(ROOM) is None
        with pytest.raises(InviteError):
            await handler.reject_invite(ROOM, "@b:here", _member("$l", "@b:here", "@b:here", "leave"))
