"""HTTP routes of the main process for rooms, state resolution and federation invites.

:func:`add_room_routes` adds them to the main process's aiohttp application, together with
the library's request middleware (:func:`logcontext.web.logcontext_middleware`) so every
request runs in its own logging context, writes an access line and is a server span; each
handler carries :func:`logcontext.web.request_handler`, which names it.

- ``PUT /_hs/rooms/{room_id}`` ``{"room_version": "10", "events": [PDU, ...]}`` — store the
  room's version and its first events in the event store, which puts them on the ``events``
  stream (one transaction; each event's ``stream_ordering`` is in the response);
- ``POST /_hs/rooms/{room_id}/events`` ``{"events": [PDU, ...]}`` — more events of a known
  room (e.g. one fork of its DAG);
- ``POST /_hs/rooms/{room_id}/state`` ``{"state_sets": [[[type, state_key, event_id], ...],
  ...], "index": "auto"|"walk"|"chain"}`` — resolve the state sets with the room's version
  (state resolution v2 / v2.1) and store the result as a state group;
- ``PUT /_hs/federation/invite/{room_id}/{event_id}`` ``{"room_version": "9", "event": PDU}``
  — an invite received over federation, stored with its room version;
- ``GET /_hs/federation/invite/{room_id}/{user_id}`` — the pending invite and the room version
  stored for it.

Events are PDUs in the shape of the state-resolution vectors (an ``event_id`` key on each).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from logcontext.web import logcontext_middleware, request_handler

if TYPE_CHECKING:
    from homeserver.app import MainProcess
    from homeserver.federation.invites import InviteHandler
    from homeserver.storage.events import EventStore

__all__ = ["add_room_routes"]

_MARK = web.AppKey("homeserver.http_rooms", bool)
MAX_EVENTS_PER_REQUEST = 1000
INDEXES = ("auto", "walk", "chain")


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"errcode": "M_NOT_JSON", "error": "body is not JSON"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"errcode": "M_BAD_JSON", "error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


def _events_of(body: dict[str, Any]) -> list[dict[str, Any]] | str:
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return "events must be a non-empty list of events"
    if len(events) > MAX_EVENTS_PER_REQUEST:
        return f"at most {MAX_EVENTS_PER_REQUEST} events per request, got {len(events)}"
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            return f"events[{i}] is not an object"
    return events


def _state_sets_of(body: dict[str, Any]) -> list[dict[tuple[str, str], str]] | str:
    raw = body.get("state_sets")
    if not isinstance(raw, list) or not raw:
        return "state_sets must be a non-empty list of state sets"
    out: list[dict[tuple[str, str], str]] = []
    for i, s in enumerate(raw):
        if not isinstance(s, list):
            return f"state_sets[{i}] is not a list"
        m: dict[tuple[str, str], str] = {}
        for entry in s:
            if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, str) for x in entry)):
                return f"state_sets[{i}]: {entry!r} is not [type, state_key, event_id]"
            m[(entry[0], entry[1])] = entry[2]
        out.append(m)
    return out


class _Rooms:
    """The handlers, bound to one main process (stores made on first use: the DB opens first)."""

    def __init__(self, main: MainProcess) -> None:
        self.main = main
        self._invites: InviteHandler | None = None

    @property
    def events(self) -> EventStore:
        # The main process's store: it allocates stream orderings from the events generator.
        return self.main.event_store

    @property
    def invites(self) -> InviteHandler:
        if self._invites is None:
            from homeserver.federation.invites import InviteHandler

            self._invites = InviteHandler(self.events)
        return self._invites

    async def _persist(self, room_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store ``events`` in the event store; they join the ``events`` stream in the order given."""
        batch = await self.events.persist_batch(room_id, events)
        return [
            {
                "event_id": pdu.event_id,
                "stream_ordering": batch.stream_orderings.get(pdu.event_id),
                "auth_rank": pdu.auth_rank,
            }
            for pdu in batch.pdus
        ]

    @request_handler("RoomCreateServlet")
    async def put_room(self, request: web.Request) -> web.Response:
        from homeserver.state import StateResolutionError

        room_id = request.match_info["room_id"]
        body = await _body(request)
        version = body.get("room_version")
        if not isinstance(version, str) or not version:
            return _error(400, "M_BAD_JSON", "room_version must be a non-empty string")
        events = _events_of(body)
        if isinstance(events, str):
            return _error(400, "M_BAD_JSON", events)
        from homeserver.state import rules_for
        from homeserver.storage.rooms import RoomStore

        try:
            rules_for(version)
        except StateResolutionError as e:
            return _error(400, "M_UNSUPPORTED_ROOM_VERSION", e.message)
        await RoomStore(self.main.db).store_room(room_id, version, overwrite=False)
        try:
            stored = await self._persist(room_id, events)
        except (StateResolutionError, ValueError) as e:
            return _error(400, "M_BAD_JSON", str(e))
        return web.json_response({"room_id": room_id, "room_version": version, "events": stored})

    @request_handler("RoomEventsServlet")
    async def post_events(self, request: web.Request) -> web.Response:
        from homeserver.state import StateResolutionError

        room_id = request.match_info["room_id"]
        events = _events_of(await _body(request))
        if isinstance(events, str):
            return _error(400, "M_BAD_JSON", events)
        try:
            stored = await self._persist(room_id, events)
        except LookupError as e:
            return _error(404, "M_NOT_FOUND", str(e))
        except (StateResolutionError, ValueError) as e:
            return _error(400, "M_BAD_JSON", str(e))
        return web.json_response({"room_id": room_id, "events": stored})

    @request_handler("RoomStateResolutionServlet")
    async def post_state(self, request: web.Request) -> web.Response:
        from homeserver.state import ResolveOptions, StateResolutionError

        room_id = request.match_info["room_id"]
        body = await _body(request)
        sets = _state_sets_of(body)
        if isinstance(sets, str):
            return _error(400, "M_BAD_JSON", sets)
        index = body.get("index", "auto")
        if index not in INDEXES:
            return _error(400, "M_BAD_JSON", f"index must be one of {list(INDEXES)}, got {index!r}")
        try:
            resolved = await self.events.resolve_state(room_id, sets, ResolveOptions(index=index))
        except LookupError as e:
            return _error(404, "M_NOT_FOUND", str(e))
        except StateResolutionError as e:
            return _error(400, "M_STATE_RESOLUTION", f"{e.category}: {e.message}")
        group = await self.events.store_state_group(room_id, resolved)  # the store serialises IDs
        return web.json_response(
            {
                "room_id": room_id,
                "state_group": group,
                "resolved": [[t, k, v] for (t, k), v in sorted(resolved.items())],
            }
        )

    @request_handler("FederationInviteServlet")
    async def put_invite(self, request: web.Request) -> web.Response:
        from homeserver.state import StateResolutionError, UnsupportedRoomVersion

        room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
        body = await _body(request)
        version, event = body.get("room_version"), body.get("event")
        if not isinstance(version, str) or not version:
            return _error(400, "M_BAD_JSON", "room_version must be a non-empty string")
        if not isinstance(event, dict):
            return _error(400, "M_BAD_JSON", "event must be an object")
        if event.get("event_id") != event_id or event.get("room_id") != room_id:
            return _error(400, "M_BAD_JSON", "the event's event_id and room_id must match the path")
        try:
            pdu = await self.invites.on_invite(version, event)
        except StateResolutionError as e:
            unsupported = isinstance(e, UnsupportedRoomVersion)
            errcode = "M_UNSUPPORTED_ROOM_VERSION" if unsupported else "M_BAD_JSON"
            return _error(400, errcode, e.message)
        from homeserver.storage.rooms import RoomStore

        stored_version = await RoomStore(self.main.db).get_room_version(room_id)
        return web.json_response(
            {"event_id": pdu.event_id, "room_id": room_id, "room_version": stored_version}
        )

    @request_handler("FederationInviteReadServlet")
    async def get_invite(self, request: web.Request) -> web.Response:
        room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
        pdu = await self.invites.get_invite(room_id, user_id)
        if pdu is None:
            return _error(404, "M_NOT_FOUND", f"no pending invite for {user_id} in {room_id}")
        from homeserver.storage.rooms import RoomStore

        version = await RoomStore(self.main.db).get_room_version(room_id)
        return web.json_response({"event_id": pdu.event_id, "room_id": room_id, "room_version": version})


def add_room_routes(app: web.Application, main: MainProcess) -> None:
    """Add the room / state / invite routes and the request middleware to ``app``.

    Call before the application starts (``build_main_app``). Idempotent; the middleware is put
    first (outermost) unless the application already has it.
    """
    if app.get(_MARK):
        return
    app[_MARK] = True
    if not any(getattr(m, "__name__", "") == "logcontext_mw" for m in app.middlewares):
        app.middlewares.insert(0, logcontext_middleware(server_name=main.options.server_name))
    h = _Rooms(main)
    app.router.add_put("/_hs/rooms/{room_id}", h.put_room)
    app.router.add_post("/_hs/rooms/{room_id}/events", h.post_events)
    app.router.add_post("/_hs/rooms/{room_id}/state", h.post_state)
    app.router.add_put("/_hs/federation/invite/{room_id}/{event_id}", h.put_invite)
    app.router.add_get("/_hs/federation/invite/{room_id}/{user_id}", h.get_invite)
