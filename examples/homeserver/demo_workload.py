"""The demo's workload: rooms whose DAG forks and needs state resolution, federation invites,
device-list changes and typing notifications, as a bounded list of HTTP requests.

:func:`build_plan` is deterministic for a seed and does no I/O; :func:`run_plan` sends the
requests to the main process's HTTP API (aiohttp), phase after phase, the requests of a phase
concurrently (bounded), and checks every answer.

Each room (versions 10, 11 and 12 in turn) gets a common prefix — create, the creator's join,
power levels, join rules, members joining — then ``forks`` concurrent branches from the same
head that disagree on the power levels, the topic, the name and a ban, and finally a request
resolving the state after each branch.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "SIZES",
    "Outcome",
    "Plan",
    "PlannedRequest",
    "RoomPlan",
    "WorkloadSize",
    "build_plan",
    "build_room",
    "run_plan",
]

ROOM_VERSIONS = ("10", "11", "12")
INVITE_VERSIONS = ("6", "9", "10", "11")
SERVER = "localhost"
REMOTE = "remote.example"


@dataclass(frozen=True)
class WorkloadSize:
    """How much work one run does (every figure bounded)."""

    rooms: int
    members: int  # users joining each room besides the four named ones
    forks: int  # concurrent branches per room (2-4)
    invites: int
    device_changes: int
    typing: int  # typing notifications (start + stop pairs)

    def __post_init__(self) -> None:
        for name in ("rooms", "members", "invites", "device_changes", "typing"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or value > 10_000:
                raise ValueError(f"workload {name} must be an integer 0..10000, got {value!r}")
        if not 2 <= self.forks <= 4:
            raise ValueError(f"workload forks must be 2..4, got {self.forks!r}")


SIZES: dict[str, WorkloadSize] = {
    "small": WorkloadSize(rooms=4, members=4, forks=3, invites=6, device_changes=12, typing=8),
    "medium": WorkloadSize(rooms=12, members=16, forks=3, invites=24, device_changes=48, typing=24),
    "large": WorkloadSize(rooms=40, members=40, forks=4, invites=80, device_changes=160, typing=80),
}


@dataclass
class PlannedRequest:
    """One HTTP request; ``check`` validates the JSON answer (returns an error or None)."""

    phase: int
    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    check: Callable[[dict[str, Any]], str | None] | None = None


@dataclass
class RoomPlan:
    """One room: its version, common events, the branches, and the state after each."""

    room_id: str
    version: str
    base: list[dict[str, Any]]
    forks: list[list[dict[str, Any]]]
    state_sets: list[dict[tuple[str, str], str]]


@dataclass
class Plan:
    """The whole workload: requests by phase, plus what the checks expect."""

    requests: list[PlannedRequest] = field(default_factory=list)
    rooms: list[RoomPlan] = field(default_factory=list)
    invites: dict[tuple[str, str], str] = field(default_factory=dict)  # (room, user) -> version
    device_users: set[str] = field(default_factory=set)

    def phases(self) -> list[list[PlannedRequest]]:
        """The requests grouped by phase, in phase order."""
        out: dict[int, list[PlannedRequest]] = {}
        for r in self.requests:
            out.setdefault(r.phase, []).append(r)
        return [out[k] for k in sorted(out)]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.requests if r.kind == kind)


# -- rooms ------------------------------------------------------------------------------------


class _RoomBuilder:
    """Builds valid events of one room; tracks state per branch."""

    def __init__(self, local: str, version: str, ts: int) -> None:
        self.version = version
        self.v12 = int(version) >= 12
        self.create_id = f"${local}-create"
        self.room_id = "!" + self.create_id[1:] if self.v12 else f"!{local}:{SERVER}"
        self.local = local
        self.n = 0
        self.ts = ts

    def event(
        self,
        state: dict[tuple[str, str], str],
        prev: list[str],
        depth: int,
        etype: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        auth_keys: list[tuple[str, str]],
    ) -> dict[str, Any]:
        self.n += 1
        self.ts += 1
        eid = f"${self.local}-{self.n}"
        auth = [state[k] for k in dict.fromkeys(auth_keys) if k in state]
        if self.v12:
            auth = [a for a in auth if a != self.create_id]
        ev: dict[str, Any] = {
            "event_id": eid,
            "room_id": self.room_id,
            "type": etype,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.ts,
            "depth": depth,
            "auth_events": auth,
            "prev_events": prev,
            "hashes": {},
            "signatures": {},
        }
        if state_key is not None:
            ev["state_key"] = state_key
            state[(etype, state_key)] = eid
        return ev

    def create(self, creator: str) -> dict[str, Any]:
        content: dict[str, Any] = {"room_version": self.version}
        if int(self.version) < 11:
            content["creator"] = creator
        ev: dict[str, Any] = {
            "event_id": self.create_id,
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "content": content,
            "origin_server_ts": self.ts,
            "depth": 1,
            "auth_events": [],
            "prev_events": [],
            "hashes": {},
            "signatures": {},
        }
        if not self.v12:
            ev["room_id"] = self.room_id
        return ev


def _user(name: str) -> str:
    return f"@{name}:{SERVER}"


def _power_levels(users: dict[str, int], v12: bool, creator: str) -> dict[str, Any]:
    if v12:  # creators have unbounded power and must not be listed (v12)
        users = {u: lvl for u, lvl in users.items() if u != creator}
    return {
        "users": users,
        "users_default": 0,
        "events": {"m.room.topic": 0, "m.room.name": 50, "m.room.power_levels": 100},
        "state_default": 50,
        "events_default": 0,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    }


CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")


def _member_key(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


def build_room(
    index: int, version: str, members: int, forks: int, ts: int = 1_700_000_000_000, *, tag: str = ""
) -> RoomPlan:
    """The events of room ``index`` and the state after each of its ``forks`` branches.

    ``tag`` prefixes the room's local ID and its event IDs (runs sharing a database use a new one).
    """
    if not 2 <= forks <= 4:
        raise ValueError(f"forks must be 2..4, got {forks!r}")
    b = _RoomBuilder(f"{tag}room{index}", version, ts)
    alice, bob, carol, dave = (_user(n) for n in ("alice", "bob", "carol", "dave"))
    state: dict[tuple[str, str], str] = {}
    create = b.create(alice)
    state[CREATE] = create["event_id"]
    base = [create]
    depth = 1

    def add(etype: str, sender: str, content: dict[str, Any], key: str | None, auth: list[Any]) -> None:
        nonlocal depth
        depth += 1
        base.append(b.event(state, [base[-1]["event_id"]], depth, etype, sender, content, key, auth))

    add("m.room.member", alice, {"membership": "join"}, alice, [CREATE])
    add(
        "m.room.power_levels",
        alice,
        _power_levels({alice: 100, bob: 50}, b.v12, alice),
        "",
        [CREATE, _member_key(alice)],
    )
    add("m.room.join_rules", alice, {"join_rule": "public"}, "", [CREATE, PL, _member_key(alice)])
    joiners = [bob, carol, dave] + [_user(f"u{index}x{i}") for i in range(members)]
    for u in joiners:
        add("m.room.member", u, {"membership": "join"}, u, [CREATE, PL, JR])
    head = base[-1]["event_id"]

    # Branches from the same head, each disagreeing with the others.
    scripts: list[list[tuple[str, str, dict[str, Any], str | None, list[Any]]]] = [
        [  # alice demotes bob, then sets the topic
            (
                "m.room.power_levels",
                alice,
                _power_levels({alice: 100, bob: 0}, b.v12, alice),
                "",
                [CREATE, PL, _member_key(alice)],
            ),
            ("m.room.topic", alice, {"topic": "alice's topic"}, "", [CREATE, PL, _member_key(alice)]),
        ],
        [  # bob names the room and sets the topic while still at 50
            ("m.room.name", bob, {"name": "bob's room"}, "", [CREATE, PL, _member_key(bob)]),
            ("m.room.topic", bob, {"topic": "bob's topic"}, "", [CREATE, PL, _member_key(bob)]),
        ],
        [  # dave sets the topic
            ("m.room.topic", dave, {"topic": "dave's topic"}, "", [CREATE, PL, _member_key(dave)]),
        ],
        [  # bob bans dave
            (
                "m.room.member",
                bob,
                {"membership": "ban"},
                dave,
                [CREATE, PL, _member_key(bob), _member_key(dave)],
            ),
        ],
    ]
    branches: list[list[dict[str, Any]]] = []
    state_sets: list[dict[tuple[str, str], str]] = []
    for script in scripts[:forks]:
        st = dict(state)
        prev, d = head, depth
        evs = []
        for etype, sender, content, key, auth in script:
            d += 1
            ev = b.event(st, [prev], d, etype, sender, content, key, auth)
            evs.append(ev)
            prev = ev["event_id"]
        branches.append(evs)
        state_sets.append(st)
    return RoomPlan(b.room_id, version, base, branches, state_sets)


def _invite(index: int, tag: str = "") -> tuple[str, str, dict[str, Any]]:
    local = f"{tag}invite{index}"
    room_id = f"!{local}:{REMOTE}"
    target = _user(f"invitee{index}")
    event = {
        "event_id": f"${local}",
        "room_id": room_id,
        "type": "m.room.member",
        "state_key": target,
        "sender": f"@inviter:{REMOTE}",
        "content": {"membership": "invite", "displayname": f"invitee {index}"},
        "origin_server_ts": 1_700_000_000_000 + index,
        "depth": 7,
        "auth_events": [f"${local}-create", f"${local}-pl", f"${local}-inviter"],
        "prev_events": [f"${local}-prev"],
        "hashes": {},
        "signatures": {},
    }
    return room_id, target, event


# -- checks -----------------------------------------------------------------------------------


def _expect_events(n: int) -> Callable[[dict[str, Any]], str | None]:
    def check(body: dict[str, Any]) -> str | None:
        got = body.get("events")
        if not isinstance(got, list) or len(got) != n:
            return f"expected {n} stored events, got {got!r:.200}"
        return None

    return check


def _expect_resolved(room: RoomPlan) -> Callable[[dict[str, Any]], str | None]:
    keys = set().union(*room.state_sets)
    create_id = room.base[0]["event_id"]

    def check(body: dict[str, Any]) -> str | None:
        resolved = body.get("resolved")
        if not isinstance(resolved, list):
            return f"no resolved state in {body!r:.200}"
        got = {(t, k): e for t, k, e in resolved}
        if got.get(CREATE) != create_id:
            return "the resolved state lost the create event"
        candidates = {(k, s[k]) for s in room.state_sets for k in s}
        for key, eid in got.items():
            if (key, eid) not in candidates:
                return f"resolved {key} to {eid}, which no state set had"
        missing = {k for k in keys if all(k in s for s in room.state_sets)} - got.keys()
        if missing:
            return f"unconflicted keys missing from the resolved state: {sorted(missing)}"
        return None

    return check


def _expect_version(version: str) -> Callable[[dict[str, Any]], str | None]:
    def check(body: dict[str, Any]) -> str | None:
        if body.get("room_version") != version:
            return f"expected room_version {version!r}, got {body.get('room_version')!r}"
        return None

    return check


def _state_set_json(s: dict[tuple[str, str], str]) -> list[list[str]]:
    return [[t, k, e] for (t, k), e in sorted(s.items())]


_TAG = re.compile(r"[a-z0-9]{0,16}")


def build_plan(size: WorkloadSize, *, seed: int = 0, tag: str = "") -> Plan:
    """All requests of one run, deterministic for ``seed`` and ``tag``.

    ``tag`` (up to 16 lower-case letters and digits) prefixes room and event IDs, so runs that
    share a database do not collide.

    Phase 0 creates the rooms, receives the invites and makes half the device changes;
    phase 1 sends every room's branches concurrently and starts typing; phase 2 resolves
    each room's state, makes the other device changes and stops typing; phase 3 reads the
    invites back and checks their stored room version.
    """
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise ValueError(f"tag must be up to 16 lower-case letters and digits, got {tag!r}")
    rng = random.Random(seed)
    plan = Plan()
    add = plan.requests.append
    for i in range(size.rooms):
        room = build_room(i, ROOM_VERSIONS[i % len(ROOM_VERSIONS)], size.members, size.forks, tag=tag)
        plan.rooms.append(room)
        rid = quote(room.room_id, safe="")
        add(
            PlannedRequest(
                0,
                "room",
                "PUT",
                f"/_hs/rooms/{rid}",
                {"room_version": room.version, "events": room.base},
                _expect_events(len(room.base)),
            )
        )
        for branch in room.forks:
            add(
                PlannedRequest(
                    1,
                    "fork",
                    "POST",
                    f"/_hs/rooms/{rid}/events",
                    {"events": branch},
                    _expect_events(len(branch)),
                )
            )
        add(
            PlannedRequest(
                2,
                "resolve",
                "POST",
                f"/_hs/rooms/{rid}/state",
                {"state_sets": [_state_set_json(s) for s in room.state_sets]},
                _expect_resolved(room),
            )
        )
    for i in range(size.invites):
        version = INVITE_VERSIONS[i % len(INVITE_VERSIONS)]
        room_id, target, event = _invite(i, tag)
        plan.invites[(room_id, target)] = version
        rid, eid = quote(room_id, safe=""), quote(event["event_id"], safe="")
        add(
            PlannedRequest(
                0,
                "invite",
                "PUT",
                f"/_hs/federation/invite/{rid}/{eid}",
                {"room_version": version, "event": event},
                _expect_version(version),
            )
        )
        add(
            PlannedRequest(
                3,
                "invite-read",
                "GET",
                f"/_hs/federation/invite/{rid}/{quote(target, safe='')}",
                None,
                _expect_version(version),
            )
        )
    users = [_user(f"dev{i}") for i in range(max(1, size.device_changes // 3))]
    for i in range(size.device_changes):
        user = users[i % len(users)]
        plan.device_users.add(user)
        devices = [f"DEV{rng.randrange(1000)}" for _ in range(rng.randint(1, 2))]
        hosts = sorted(rng.sample(["a.example", "b.example", "c.example"], rng.randint(0, 2)))
        add(
            PlannedRequest(
                0 if i % 2 == 0 else 2,
                "devices",
                "PUT",
                f"/_hs/devices/{quote(user, safe='')}",
                {"device_ids": devices, "hosts": hosts},
            )
        )
    typing_rooms = [r.room_id for r in plan.rooms] or [f"!typing:{SERVER}"]
    for i in range(size.typing):
        rid = quote(typing_rooms[i % len(typing_rooms)], safe="")
        user = quote(_user(f"typist{i}"), safe="")
        add(PlannedRequest(1, "typing", "PUT", f"/_hs/typing/{rid}/{user}", {"typing": True}))
        add(PlannedRequest(2, "typing", "PUT", f"/_hs/typing/{rid}/{user}", {"typing": False}))
    return plan


# -- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What running a plan did."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)


async def run_plan(
    session: Any,
    base_url: str,
    plan: Plan,
    *,
    concurrency: int = 8,
    on_done: Callable[[PlannedRequest], None] | None = None,
    request_timeout: float = 30.0,
) -> Outcome:
    """Send every request of ``plan`` to ``base_url`` with the aiohttp ``session``.

    Phases run in order; the requests of a phase run concurrently, at most ``concurrency`` at
    a time. A non-2xx answer or a failed check counts in ``failed``; the first 20 are described
    in ``failures``.
    """
    import aiohttp

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    out = Outcome()
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout)

    def fail(req: PlannedRequest, why: str) -> None:
        out.failed += 1
        if len(out.failures) < 20:
            out.failures.append(f"{req.method} {req.path}: {why}")

    async def one(req: PlannedRequest) -> None:
        async with sem:
            out.sent += 1
            try:
                async with session.request(
                    req.method, base_url + req.path, json=req.body, timeout=timeout
                ) as resp:
                    text = await resp.text()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as e:
                fail(req, f"{type(e).__name__}: {e}")
                return
            finally:
                if on_done is not None:
                    on_done(req)
        if not 200 <= status < 300:
            fail(req, f"HTTP {status}: {text[:200]}")
            return
        if req.check is not None:
            import json

            try:
                body = json.loads(text)
            except ValueError:
                fail(req, f"answer is not JSON: {text[:200]}")
                return
            why = req.check(body)
            if why is not None:
                fail(req, why)
                return
        out.ok += 1
        out.by_kind[req.kind] = out.by_kind.get(req.kind, 0) + 1

    for phase in plan.phases():
        await asyncio.gather(*(one(r) for r in phase))
    return out
