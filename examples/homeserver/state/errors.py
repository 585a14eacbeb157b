"""Categorised errors of state resolution (spec §5): never a bare KeyError or TypeError."""

from __future__ import annotations

__all__ = [
    "InvalidAuthGraph",
    "InvalidEventError",
    "MissingCreateError",
    "StateResolutionError",
    "UnknownEventError",
    "UnsupportedRoomVersion",
    "WrongRoomError",
]


class StateResolutionError(Exception):
    """A resolution that cannot complete; ``category`` is the vectors' error category."""

    category = "state_resolution_error"

    def __init__(self, message: str, event_id: str | None = None, *, category: str | None = None):
        super().__init__(message)
        if category is not None:
            self.category = category
        self.event_id = event_id
        self.message = message

    def __str__(self) -> str:
        return f"{self.category}: {self.message}"


class InvalidEventError(StateResolutionError):
    """Malformed event content; the category names the kind (``invalid_power_levels`` …)."""

    category = "invalid_event"


class UnknownEventError(StateResolutionError):
    """An event needed for the auth checks is not available."""

    category = "unknown_event"


class WrongRoomError(StateResolutionError):
    """An event belongs to another room."""

    category = "wrong_room"


class MissingCreateError(StateResolutionError):
    """A non-create event whose auth list has no create event where one is required."""

    category = "missing_create"


class InvalidAuthGraph(StateResolutionError):
    """The auth events form a cycle."""

    category = "auth_cycle"


class UnsupportedRoomVersion(StateResolutionError):
    """Room version 1 or an unknown version."""

    category = "unsupported_room_version"
