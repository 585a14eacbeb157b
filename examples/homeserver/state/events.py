"""Event records and parsed content views read by the auth rules and state resolution.

Content is parsed once, lazily, into small views; a malformed value raises a categorised
error only when it is read (spec §5.3), never at parse time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidEventError
from .versions import RoomRules

__all__ = [
    "PDU",
    "PowerLevelsView",
    "StateKey",
    "StateMap",
    "compute_ranks",
    "domain_of",
    "pdu_from_dict",
    "redact_event_dict",
    "to_level",
]

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
MEMBER = "m.room.member"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
CREATE_KEY: StateKey = (CREATE, "")
PL_KEY: StateKey = (POWER_LEVELS, "")
JR_KEY: StateKey = (JOIN_RULES, "")

_PL_CATEGORY = "invalid_power_levels"


def to_level(value: object, what: str, event_id: str | None) -> int:
    """Convert a power level with Python ``int()`` semantics (spec §2.1) or raise."""
    if type(value) is int:
        return value
    if isinstance(value, bool | float | str):
        try:
            return int(value)
        except (ValueError, OverflowError):
            pass
    raise InvalidEventError(f"power level {what} is not a number: {value!r}", event_id, category=_PL_CATEGORY)


_DOMAINS: dict[str, str] = {}


def domain_of(user_id: object, event_id: str | None = None) -> str:
    """The server name of a user ID (the part after the first ``:``)."""
    if isinstance(user_id, str):
        d = _DOMAINS.get(user_id)
        if d is not None:
            return d
        i = user_id.find(":")
        if i >= 0:
            d = user_id[i + 1 :]
            if len(_DOMAINS) > 65536:
                _DOMAINS.clear()
            _DOMAINS[user_id] = d
            return d
    raise InvalidEventError(f"not a user ID: {user_id!r}", event_id)


def _as_dict(value: object, what: str, event_id: str | None) -> Mapping[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, list | str | tuple) and not value:
        return {}
    raise InvalidEventError(f"{what} is not an object: {value!r}", event_id, category=_PL_CATEGORY)


class PowerLevelsView:
    """Lazily converted view of a power-levels event's content (memoised per read)."""

    __slots__ = ("_content", "_event_id", "_named", "_users", "_users_map")

    def __init__(self, content: Mapping[str, Any], event_id: str):
        self._content = content
        self._event_id = event_id
        self._users: dict[str, int] = {}
        self._named: dict[str, int | None] = {}
        self._users_map: Mapping[str, Any] | None = None

    def users_map(self) -> Mapping[str, Any]:
        m = self._users_map
        if m is None:
            raw = self._content.get("users", {})
            if not isinstance(raw, dict):
                raise InvalidEventError(
                    f"users is not an object: {raw!r}", self._event_id, category=_PL_CATEGORY
                )
            m = self._users_map = raw
        return m

    def user_level(self, user: str) -> int:
        """``users[user]``, else ``users_default``, else 0 (nulls count as absent)."""
        lv = self._users.get(user)
        if lv is not None:
            return lv
        raw = self.users_map().get(user)
        if raw is None:
            raw = self._content.get("users_default", 0)
            if raw is None:
                self._users[user] = 0
                return 0
            lv = to_level(raw, "users_default", self._event_id)
        else:
            lv = to_level(raw, f"users[{user!r}]", self._event_id)
        self._users[user] = lv
        return lv

    def named(self, name: str) -> int | None:
        """A top-level level (``ban``, ``kick`` …), ``None`` when absent or null."""
        if name in self._named:
            return self._named[name]
        raw = self._content.get(name)
        lv = None if raw is None else to_level(raw, name, self._event_id)
        self._named[name] = lv
        return lv

    def send_level(self, etype: str, is_state: bool) -> int:
        events = self._content.get("events", {})
        if not isinstance(events, dict):
            raise InvalidEventError(
                f"events is not an object: {events!r}", self._event_id, category=_PL_CATEGORY
            )
        raw = events.get(etype)
        if raw is not None:
            return to_level(raw, f"events[{etype!r}]", self._event_id)
        if is_state:
            return to_level(self._content.get("state_default", 50), "state_default", self._event_id)
        return to_level(self._content.get("events_default", 0), "events_default", self._event_id)

    def section_converts(self, name: str) -> bool:
        """Whether every value of a section converts (memoised; never raises)."""
        key = "\0" + name
        ok = self._named.get(key)
        if ok is None:
            try:
                for v in self.section(name).values():
                    to_level(v, name, self._event_id)
                ok = 1
            except InvalidEventError:
                ok = 0
            self._named[key] = ok
        return bool(ok)

    def section(self, name: str) -> Mapping[str, Any]:
        """``users``/``events``/``notifications`` as a mapping (raises if not an object)."""
        return _as_dict(self._content.get(name, {}), name, self._event_id)


class PDU:
    """One event as state resolution sees it (spec §1.1)."""

    __slots__ = (
        "_creators",
        "_pl",
        "auth_event_ids",
        "auth_rank",
        "content",
        "event_id",
        "origin_server_ts",
        "prev_event_ids",
        "rejected_reason",
        "room_id",
        "sender",
        "state_key",
        "type",
    )

    def __init__(
        self,
        event_id: str,
        room_id: str | None,
        type: str,
        state_key: str | None,
        sender: str,
        content: dict[str, Any],
        origin_server_ts: int,
        auth_event_ids: tuple[str, ...],
        prev_event_ids: tuple[str, ...] = (),
        rejected_reason: str | None = None,
        auth_rank: int = 0,
    ):
        self.event_id = event_id
        self.room_id = room_id
        self.type = type
        self.state_key = state_key
        self.sender = sender
        self.content = content
        self.origin_server_ts = origin_server_ts
        self.auth_event_ids = auth_event_ids
        self.prev_event_ids = prev_event_ids
        self.rejected_reason = rejected_reason
        self.auth_rank = auth_rank
        self._pl: PowerLevelsView | None = None
        self._creators: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"PDU({self.event_id!r}, {self.type!r}, {self.state_key!r})"

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    def key(self) -> StateKey:
        """The state key; a non-state event raises ``invalid_event``."""
        sk = self.state_key
        if sk is None:
            raise InvalidEventError(f"{self.event_id} is not a state event", self.event_id)
        return (self.type, sk)

    def membership(self) -> object:
        try:
            return self.content["membership"]
        except KeyError:
            raise InvalidEventError(
                f"member event {self.event_id} has no membership",
                self.event_id,
                category="invalid_membership",
            ) from None

    def power_levels(self) -> PowerLevelsView:
        pl = self._pl
        if pl is None:
            pl = self._pl = PowerLevelsView(self.content, self.event_id)
        return pl

    def creators(self) -> frozenset[str]:
        """v12: the create sender plus ``additional_creators``."""
        c = self._creators
        if c is None:
            extra = self.content.get("additional_creators", [])
            names = {x for x in extra if isinstance(x, str)} if isinstance(extra, list) else set()
            c = self._creators = frozenset({self.sender, *names})
        return c

    def creator(self, rules: RoomRules) -> object:
        """The room creator named by this create event (per version)."""
        if rules.creator_is_sender:
            return self.sender
        return self.content.get("creator")


def _ids(raw: object, explicit: bool, what: str, event_id: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise InvalidEventError(f"{what} of {event_id} is not a list", event_id)
    out: list[str] = []
    for item in raw:
        if explicit and isinstance(item, list) and item:
            item = item[0]
        if not isinstance(item, str):
            raise InvalidEventError(f"{what} of {event_id} holds {item!r}", event_id)
        out.append(item)
    return tuple(out)


def pdu_from_dict(d: Mapping[str, Any], rules: RoomRules, *, rejected_reason: str | None = None) -> PDU:
    """Build a `PDU` from a JSON event (the vectors' shape: ``event_id`` key on every event).

    v12: the create event is appended to every non-create event's auth list (spec §1.1).
    Structural problems raise `InvalidEventError` (``invalid_event``); content is not checked.
    """
    if not isinstance(d, Mapping):
        raise InvalidEventError(f"event is not an object: {type(d).__name__}")
    event_id = d.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEventError(f"event without a string event_id: {event_id!r}")
    etype, sender, content = d.get("type"), d.get("sender"), d.get("content", {})
    if not isinstance(etype, str):
        raise InvalidEventError(f"{event_id}: type is not a string", event_id)
    if not isinstance(sender, str):
        raise InvalidEventError(f"{event_id}: sender is not a string", event_id)
    if not isinstance(content, dict):
        raise InvalidEventError(f"{event_id}: content is not an object", event_id)
    state_key = d.get("state_key")
    if state_key is not None and not isinstance(state_key, str):
        raise InvalidEventError(f"{event_id}: state_key is not a string", event_id)
    ts = d.get("origin_server_ts", 0)
    if type(ts) is not int:
        raise InvalidEventError(f"{event_id}: origin_server_ts is not an integer", event_id)
    room_id = d.get("room_id")
    if room_id is not None and not isinstance(room_id, str):
        raise InvalidEventError(f"{event_id}: room_id is not a string", event_id)
    auth = _ids(d.get("auth_events", []), rules.explicit_event_ids, "auth_events", event_id)
    prev = _ids(d.get("prev_events", []), rules.explicit_event_ids, "prev_events", event_id)
    if rules.create_implied:
        if etype == CREATE and state_key == "":
            if room_id is None:
                room_id = "!" + event_id[1:]
        elif room_id is not None and room_id.startswith("!"):
            auth = (*auth, "$" + room_id[1:])
    # Interned IDs: every auth list and state map shares one string object per event ID.
    event_id = sys.intern(event_id)
    auth = tuple(sys.intern(a) for a in auth)
    return PDU(event_id, room_id, etype, state_key, sender, content, ts, auth, prev, rejected_reason)


def compute_ranks(events: Mapping[str, PDU], order: Iterable[str] | None = None) -> None:
    """Set ``auth_rank = 1 + max(rank of auth events)`` (unknown IDs rank 0) on every event.

    Iterative; an auth cycle raises `InvalidAuthGraph`.
    """
    from .errors import InvalidAuthGraph

    done: set[str] = set()
    on_path: set[str] = set()
    for root in order if order is not None else events:
        if root in done:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        on_path.add(root)
        while stack:
            eid, i = stack[-1]
            ev = events[eid]
            auth = ev.auth_event_ids
            while i < len(auth):
                a = auth[i]
                i += 1
                if a in done or a not in events:
                    continue
                if a in on_path:
                    raise InvalidAuthGraph(f"auth cycle through {a}", a)
                stack[-1] = (eid, i)
                stack.append((a, 0))
                on_path.add(a)
                break
            else:
                r = 0
                for a in auth:
                    ae = events.get(a)
                    if ae is not None and ae.auth_rank > r:
                        r = ae.auth_rank
                ev.auth_rank = r + 1
                done.add(eid)
                on_path.discard(eid)
                stack.pop()


_KEPT_TOP = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
_KEPT_TOP_OLD = _KEPT_TOP | {"origin", "membership", "prev_state"}


def redact_event_dict(rules: RoomRules, event: Mapping[str, Any]) -> dict[str, Any]:
    """The redacted form of a JSON event under the room version's redaction algorithm."""
    kept = _KEPT_TOP if rules.redaction_v11 else _KEPT_TOP_OLD
    out = {k: v for k, v in event.items() if k in kept}
    etype = event.get("type")
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
    keys: set[str] = set()
    new: dict[str, Any] = {}
    if etype == MEMBER:
        keys = {"membership"}
        if rules.redaction_keeps_authoriser:
            keys.add("join_authorised_via_users_server")
        if rules.redaction_v11 and isinstance(content.get("third_party_invite"), dict):
            tpi = content["third_party_invite"]
            if "signed" in tpi:
                new["third_party_invite"] = {"signed": tpi["signed"]}
    elif etype == CREATE:
        keys = set(content) if rules.redaction_v11 else {"creator"}
    elif etype == JOIN_RULES:
        keys = {"join_rule", "allow"} if rules.redaction_keeps_allow else {"join_rule"}
    elif etype == POWER_LEVELS:
        keys = {
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        }
        if rules.redaction_v11:
            keys.add("invite")
    elif etype == ALIASES and rules.redaction_keeps_aliases:
        keys = {"aliases"}
    elif etype == "m.room.history_visibility":
        keys = {"history_visibility"}
    elif etype == "m.room.redaction" and rules.redaction_v11:
        keys = {"redacts"}
    new.update({k: v for k, v in content.items() if k in keys})
    out["content"] = new
    return out
