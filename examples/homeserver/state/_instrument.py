"""Instrumentation hooks for state resolution (no-op until wired to logcontext)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from .versions import RoomRules


class _NoPhases:
    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]:
        return nullcontext({})


def instrumented_phases(room_id: str, rules: RoomRules) -> Any:
    return _NoPhases()
