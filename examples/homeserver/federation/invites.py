"""Invites received over federation for rooms this server is not in (Synapse #6983).

Receiving an invite stores the room's version in ``rooms`` only if no row exists (a later
join overwrites it), so the stored invite can later be read, rejected and redacted with that
version's rules even though the server has no other event of the room.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from homeserver.state import PDU, InvalidEventError, pdu_from_dict, rules_for
from homeserver.state.events import MEMBER, redact_event_dict
from homeserver.storage.events import (
    EventStore,
    get_event_rows_txn,
    get_membership_txn,
    replace_event_json_txn,
    set_membership_txn,
)
from homeserver.storage.rooms import RoomStore, store_room_txn

__all__ = ["InviteError", "InviteHandler"]


class InviteError(Exception):
    """An invite operation that cannot be done (no such invite, wrong event)."""


class InviteHandler:
    """Receives, reads, rejects and redacts invites with the room's stored version."""

    def __init__(self, events: EventStore, rooms: RoomStore | None = None):
        self.events = events
        self.rooms = rooms or RoomStore(events.pool)
        self.pool = events.pool

    async def on_invite(self, room_version: str, event: Mapping[str, Any]) -> PDU:
        """Store an invite received over federation; record the room version if absent."""
        rules = rules_for(room_version)
        pdu = pdu_from_dict(event, rules)
        content = pdu.content
        if pdu.type != MEMBER or pdu.state_key is None or content.get("membership") != "invite":
            raise InvalidEventError(f"{pdu.event_id} is not an invite", pdu.event_id)
        room_id = pdu.room_id
        if room_id is None:
            raise InvalidEventError(f"{pdu.event_id} has no room", pdu.event_id)
        await self.pool.run_interaction(
            "store_invite_room", store_room_txn, room_id, room_version, overwrite=False
        )
        [stored] = await self.events.persist_events(room_id, [event], outlier=True)
        await self.pool.run_interaction(
            "set_membership", set_membership_txn, room_id, pdu.state_key, pdu.event_id, "invite"
        )
        return stored

    async def on_join(self, room_id: str, room_version: str) -> None:
        """Joining the room (as the server learns its real version) overwrites the row."""
        await self.rooms.store_room(room_id, room_version, overwrite=True)

    async def get_invite(self, room_id: str, user_id: str) -> PDU | None:
        """The user's pending invite, parsed with the room's stored version; else None."""
        m = await self.pool.run_interaction("get_membership", get_membership_txn, room_id, user_id)
        if m is None or m[1] != "invite":
            return None
        got = await self.events.get_events([m[0]])
        return got.get(m[0])

    async def reject_invite(self, room_id: str, user_id: str, leave: Mapping[str, Any]) -> PDU:
        """Store the user's leave (built by the inviting server) in place of the invite."""
        invite = await self.get_invite(room_id, user_id)
        if invite is None:
            raise InviteError(f"no pending invite for {user_id} in {room_id}")
        version = await self.rooms.get_room_version(room_id)
        pdu = pdu_from_dict(leave, rules_for(version))
        if (
            pdu.type != MEMBER
            or pdu.state_key != user_id
            or pdu.sender != user_id
            or pdu.content.get("membership") != "leave"
            or pdu.room_id != room_id
        ):
            raise InviteError(f"{pdu.event_id} is not {user_id}'s leave in {room_id}")
        [stored] = await self.events.persist_events(room_id, [leave], outlier=True)
        await self.pool.run_interaction(
            "set_membership", set_membership_txn, room_id, user_id, pdu.event_id, "leave"
        )
        return stored

    async def redact_event(self, event_id: str, redaction_id: str) -> dict[str, Any]:
        """Redact a stored event (e.g. the invite) with its room version's algorithm."""
        rows = await self.pool.run_interaction("get_events", get_event_rows_txn, [event_id])
        if not rows:
            raise InviteError(f"unknown event {event_id}")
        _, raw, _, _, version = rows[0]
        if version is None:
            raise InviteError(f"no room version stored for {event_id}")
        pruned = redact_event_dict(rules_for(version), json.loads(raw))
        await self.pool.run_interaction(
            "redact_event", replace_event_json_txn, event_id, json.dumps(pruned), redaction_id
        )
        self.events._events.pop(event_id, None)
        return pruned
