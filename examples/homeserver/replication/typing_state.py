"""The in-memory ``typing`` stream (spec §3.2): writer state and HTTP catch-up.

The writer keeps ``room -> (serial, users)``; each change bumps one serial,
which restarts at 0 with the process.  Readers catch up over HTTP from the
writer's ``get_repl_stream_updates`` endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from homeserver.replication import _instrument
from homeserver.replication.streams import Update

__all__ = ["HttpStreamFetcher", "TypingWriter"]


class TypingWriter:
    """Who is typing where, with a serial per change (the stream token)."""

    def __init__(self, instance_name: str = "master") -> None:
        self.instance_name = instance_name
        self.serial = 0
        self.rooms: dict[str, tuple[int, frozenset[str]]] = {}
        self._listeners: list[Callable[[int], None]] = []

    def add_listener(self, cb: Callable[[int], None]) -> None:
        self._listeners.append(cb)

    def set_typing(self, room_id: str, user_id: str, typing: bool) -> int:
        """Start or stop ``user_id`` typing in ``room_id``; return the new serial."""
        _, users = self.rooms.get(room_id, (0, frozenset()))
        new_users = users | {user_id} if typing else users - {user_id}
        self.serial += 1
        self.rooms[room_id] = (self.serial, frozenset(new_users))
        for cb in list(self._listeners):
            cb(self.serial)
        return self.serial

    def current_token(self, instance: str) -> int:
        return self.serial if instance == self.instance_name else 0

    def snapshot(self) -> dict[str, list[str]]:
        """Rooms with someone typing, users sorted."""
        return {r: sorted(u) for r, (_, u) in self.rooms.items() if u}

    async def update_function(
        self, instance: str, from_token: int, upto_token: int, limit: int
    ) -> tuple[list[Update], int, bool]:
        """Rooms whose latest serial lies in ``(from, upto]``, by serial."""
        if instance != self.instance_name or from_token >= upto_token:
            return [], upto_token, False
        changed = sorted(
            (serial, [room, sorted(users)])
            for room, (serial, users) in self.rooms.items()
            if from_token < serial <= upto_token
        )
        if len(changed) > limit:
            changed = changed[:limit]
            last = changed[-1][0]
            if last < upto_token:
                return changed, last, True
        return changed, upto_token, False


class HttpStreamFetcher:
    """``update_function`` for readers of an in-memory stream: GET from the writer."""

    def __init__(
        self, stream: str, base_url: str, *, secret: str | None = None, timeout: float = 30.0
    ) -> None:
        self.stream = stream
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.timeout = timeout
        self._session: Any = None

    async def __call__(
        self, instance: str, from_token: int, upto_token: int, limit: int
    ) -> tuple[list[Update], int, bool]:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers: dict[str, str] = {}
        if self.secret:
            headers["Authorization"] = f"Bearer {self.secret}"
        carrier = _instrument.current_trace_carrier()
        if carrier:
            headers.update(carrier)
        url = f"{self.base_url}/_synapse/replication/get_repl_stream_updates/{self.stream}"
        params = {
            "instance": instance,
            "from_token": str(from_token),
            "upto_token": str(upto_token),
            "limit": str(limit),
        }
        async with self._session.get(url, params=params, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"catch-up of {self.stream} failed: HTTP {resp.status}")
            body = await resp.json()
        updates = [(int(t), row) for t, row in body["updates"]]
        return updates, int(body["upto_token"]), bool(body["limited"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)
