"""Room versions 2–12 as frozen rule records (one boolean per behaviour)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedRoomVersion

__all__ = ["KNOWN_VERSIONS", "MAX_POWER_LEVEL", "RoomRules", "rules_for"]

#: The level of a v12 room creator: above every legal level (Synapse uses the same value).
MAX_POWER_LEVEL = 2**53


@dataclass(frozen=True, slots=True)
class RoomRules:
    """The behaviours of one room version that the auth rules and state resolution read."""

    version: str
    state_res_v21: bool
    explicit_event_ids: bool
    aliases_special_case: bool
    redaction_in_auth: bool
    notifications_levels: bool
    knocking: bool
    restricted_join: bool
    knock_restricted_join: bool
    integer_levels_only: bool
    creator_is_sender: bool
    creators_unbounded: bool
    create_implied: bool
    redaction_keeps_aliases: bool
    redaction_keeps_allow: bool
    redaction_keeps_authoriser: bool
    redaction_v11: bool


def _make(n: int) -> RoomRules:
    return RoomRules(
        version=str(n),
        state_res_v21=n >= 12,
        explicit_event_ids=n == 2,
        aliases_special_case=n <= 5,
        redaction_in_auth=n == 2,
        notifications_levels=n >= 6,
        knocking=n >= 7,
        restricted_join=n >= 8,
        knock_restricted_join=n >= 10,
        integer_levels_only=n >= 10,
        creator_is_sender=n >= 11,
        creators_unbounded=n >= 12,
        create_implied=n >= 12,
        redaction_keeps_aliases=n <= 5,
        redaction_keeps_allow=n >= 8,
        redaction_keeps_authoriser=n >= 9,
        redaction_v11=n >= 11,
    )


_RULES: dict[str, RoomRules] = {str(n): _make(n) for n in range(2, 13)}
KNOWN_VERSIONS: tuple[str, ...] = tuple(_RULES)


def rules_for(version: object) -> RoomRules:
    """Return the rules of a room version; raise `UnsupportedRoomVersion` for v1 or unknown ones."""
    rules = _RULES.get(version) if isinstance(version, str) else None
    if rules is None:
        raise UnsupportedRoomVersion(f"unsupported room version {version!r}")
    return rules
