"""State resolution v2 (rooms 2–11) and v2.1 (room 12), spec §3.

The algorithm is a generator that asks its driver for what it lacks (events, auth nodes) and
for a pause every ``yield_every`` iterations; `resolve_state` drives it synchronously over
events in memory, `resolve_state_async` over an async `EventSource` (e.g. the event store).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, TypeVar

from ._instrument import errors_counted, resolution_scope
from .auth import AuthFailure, auth_types, check_auth
from .authdiff import AuthDifferenceWalk, CompleteNodes, NeedNodes, Node, conflicted_subgraph
from .authdiff import rank_order as authdiff_rank_order
from .errors import (
    InvalidEventError,
    MissingCreateError,
    StateResolutionError,
    UnknownEventError,
    WrongRoomError,
)
from .events import (
    CREATE,
    CREATE_KEY,
    JR_KEY,
    MEMBER,
    PDU,
    PL_KEY,
    StateKey,
    StateMap,
    compute_ranks,
    pdu_from_dict,
)
from .versions import MAX_POWER_LEVEL, RoomRules, rules_for

__all__ = [
    "EventSource",
    "InMemoryEventSource",
    "ResolutionStages",
    "ResolveOptions",
    "resolve_state",
    "resolve_state_async",
    "split_state",
]

Request = tuple[str, Sequence[str]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResolveOptions:
    """Knobs of a resolution (spec Appendix A); the defaults match the reference."""

    readmit_rejected: bool = False
    index: str = "auto"  # "auto" | "walk" | "chain"
    index_threshold: int = 5000
    walk_mode: str = "lazy"  # "lazy" | "eager" (how common state is expanded without an index)
    yield_every: int = 100
    trace_decisions: bool = False

    def __post_init__(self) -> None:
        if self.index not in ("auto", "walk", "chain"):
            raise ValueError(f"index must be 'auto', 'walk' or 'chain', not {self.index!r}")
        if self.walk_mode not in ("lazy", "eager"):
            raise ValueError(f"walk_mode must be 'lazy' or 'eager', not {self.walk_mode!r}")
        if type(self.yield_every) is not int or self.yield_every < 0:
            raise ValueError(f"yield_every must be an int >= 0, not {self.yield_every!r}")


@dataclass(slots=True)
class ResolutionStages:
    """Intermediate values of one resolution (the vectors' ``stages``), filled when asked for."""

    conflicted: set[str] = field(default_factory=set)
    auth_difference: set[str] = field(default_factory=set)
    conflicted_subgraph: set[str] = field(default_factory=set)
    full_conflicted_set: set[str] = field(default_factory=set)
    power_order: list[str] = field(default_factory=list)
    mainline_pl: str | None = None
    mainline_order: list[str] = field(default_factory=list)
    method: str = "walk"
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


class EventSource(Protocol):
    """Where the resolver loads events from (the store, with in-flight events overlaid)."""

    async def get_events(self, ids: Collection[str]) -> Mapping[str, PDU]: ...

    async def get_auth_nodes(self, ids: Collection[str]) -> Mapping[str, tuple[int, tuple[str, ...]]]: ...

    def chain_index(self) -> Any: ...


_MISSING: Any = object()


class _NeedEvents(Exception):
    def __init__(self, ids: Sequence[str]):
        super().__init__(f"{len(ids)} events needed")
        self.ids = ids


class _Ctx:
    __slots__ = ("complete", "events", "nodes", "room_id")

    def __init__(self, room_id: str, events: dict[str, PDU | None], nodes: dict[str, Node], complete: bool):
        self.room_id = room_id
        self.events = events
        self.nodes = nodes
        self.complete = complete

    def ev(self, eid: str) -> PDU | None:
        """The event (room-checked), ``None`` if unknown; raises `_NeedEvents` if not fetched."""
        try:
            e = self.events[eid]
        except KeyError:
            if self.complete:
                return None
            raise _NeedEvents((eid,)) from None
        if e is not None and e.room_id != self.room_id:
            raise WrongRoomError(f"event {eid} is in room {e.room_id!r}, not {self.room_id!r}", eid)
        return e

    def ensure(self, ids: Iterable[str]) -> Generator[Request, None, None]:
        if self.complete:
            return
        missing = sorted({i for i in ids if i not in self.events})
        if missing:
            yield ("events", missing)


class _Phases(Protocol):
    """Phase hooks: a context manager per phase yielding a dict of span attributes."""

    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]: ...

    def sets(
        self,
        conflicted: AbstractSet[str],
        auth_difference: AbstractSet[str],
        subgraph: AbstractSet[str],
        full: AbstractSet[str],
    ) -> None: ...


def _retry(ctx: _Ctx, make: Callable[[], Generator[Request, None, T]]) -> Generator[Request, None, T]:
    while True:
        try:
            return (yield from make())
        except _NeedEvents as need:
            yield ("events", need.ids)
        except NeedNodes as need:
            yield ("nodes", need.ids)


# -- split --------------------------------------------------------------------------------------


def split_state(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]], dict[str, int], set[str]]:
    """Split inputs into (unconflicted map, conflicted key → IDs, seed masks, common IDs)."""
    n = len(state_sets)
    first = state_sets[0]
    common_items = first.items()
    inter: Any = set(common_items)
    for s in state_sets[1:]:
        inter &= s.items()
    unconflicted: dict[StateKey, str] = dict(inter)
    conflicted: dict[StateKey, set[str]] = {}
    masks: dict[str, int] = {}
    for i, s in enumerate(state_sets):
        bit = 1 << i
        for k, v in s.items() - inter:
            conflicted.setdefault(k, set()).add(v)
            masks[v] = masks.get(v, 0) | bit
    common = set(unconflicted.values())
    full = (1 << n) - 1
    for v, m in list(masks.items()):
        if m == full or v in common:
            common.add(v)
            del masks[v]
    return unconflicted, conflicted, masks, common


_STR, _TUPLE, _TWO = frozenset({str}), frozenset({tuple}), frozenset({2})


def _check_inputs(state_sets: Sequence[object]) -> list[dict[StateKey, str]]:
    if not isinstance(state_sets, Sequence) or isinstance(state_sets, str | bytes):
        raise InvalidEventError("state_sets must be a sequence of state maps", category="invalid_input")
    out: list[dict[StateKey, str]] = []
    for i, s in enumerate(state_sets):
        if not isinstance(s, Mapping):
            raise InvalidEventError(f"state set {i} is not a mapping", category="invalid_input")
        if (
            set(map(type, s.values())) <= _STR
            and set(map(type, s)) <= _TUPLE
            and set(map(len, s)) <= _TWO
            and set(map(type, chain.from_iterable(s))) <= _STR
        ):
            out.append(s if isinstance(s, dict) else dict(s))
            continue  # the common case, checked at C speed; else find the culprit below
        for k, v in s.items():
            if (
                not isinstance(k, tuple)
                or len(k) != 2
                or not isinstance(k[0], str)
                or not isinstance(k[1], str)
            ):
                raise InvalidEventError(
                    f"state set {i}: key {k!r} is not a (type, state_key) pair",
                    category="invalid_input",
                )
            if not isinstance(v, str):
                raise InvalidEventError(
                    f"state set {i}: value of {k!r} is not an event ID", category="invalid_input"
                )
        out.append(s if isinstance(s, dict) else dict(s))
    return out


# -- pieces -------------------------------------------------------------------------------------


def _is_power_event(ev: PDU) -> bool:
    k = ev.key()
    if k in (PL_KEY, JR_KEY, CREATE_KEY):
        return True
    if ev.type == MEMBER and ev.membership() in ("leave", "ban"):
        return ev.sender != ev.state_key
    return False


def _sender_power(ctx: _Ctx, ev: PDU, rules: RoomRules) -> int:
    pl = create = None
    for aid in ev.auth_event_ids:
        a = ctx.ev(aid)
        if a is None:
            continue
        k = a.key()
        if k == PL_KEY:
            pl = a
        elif k == CREATE_KEY:
            create = a
    if create is None:
        if ev.type != CREATE:
            raise MissingCreateError(f"{ev.event_id} does not cite the create event", ev.event_id)
        return 0
    if rules.creators_unbounded and ev.sender in create.creators():
        return MAX_POWER_LEVEL
    if pl is None:
        return 100 if create.creator(rules) == ev.sender else 0
    return pl.power_levels().user_level(ev.sender)


def _first_pl(ctx: _Ctx, ev: PDU) -> PDU | None:
    for aid in ev.auth_event_ids:
        a = ctx.ev(aid)
        if a is not None and a.key() == PL_KEY:
            return a
    return None


def _kahn(graph: dict[str, set[str]], key: Callable[[str], tuple[int, int, str]]) -> list[str]:
    """Kahn's algorithm from the roots, smallest key first (spec §3.4)."""
    outdeg = {n: len(e) for n, e in graph.items()}
    rev: dict[str, list[str]] = {n: [] for n in graph}
    for n, edges in graph.items():
        for a in edges:
            rev[a].append(n)
    heap = [(key(n), n) for n, d in outdeg.items() if d == 0]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for p in rev[n]:
            outdeg[p] -= 1
            if outdeg[p] == 0:
                heapq.heappush(heap, (key(p), p))
    return out


class _IacStats:
    __slots__ = ("accepted", "checked", "failed", "failed_by_rule", "skipped_rejected")

    def __init__(self) -> None:
        self.checked = self.accepted = self.failed = self.skipped_rejected = 0
        self.failed_by_rule: dict[str, int] = {}

    def as_attrs(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "accepted": self.accepted,
            "failed": self.failed,
            "skipped_rejected": self.skipped_rejected,
            "failed_by_rule": dict(sorted(self.failed_by_rule.items())),
        }


def _iac(
    ctx: _Ctx,
    rules: RoomRules,
    order: Sequence[str],
    start: dict[StateKey, str],
    opts: ResolveOptions,
    stats: _IacStats,
    decisions: list[tuple[str, str, str | None]] | None,
) -> Generator[Request, None, dict[StateKey, str]]:
    state = dict(start)
    every = opts.yield_every
    readmit = opts.readmit_rejected
    get = ctx.events.get
    room = ctx.room_id
    for i, eid in enumerate(order, 1):
        if every and i % every == 0:
            yield ("pause", ())
        ev = ctx.ev(eid)
        if ev is None:
            raise UnknownEventError(f"event {eid} is not available", eid)
        auth_map: dict[StateKey, PDU] = {}
        for aid in ev.auth_event_ids:
            a = get(aid, _MISSING)
            if a is _MISSING or (a is not None and a.room_id != room):
                a = ctx.ev(aid)  # slow path: fetch, unknown or wrong room
            if a is not None and a.rejected_reason is None:
                sk = a.state_key
                auth_map[(a.type, sk) if sk is not None else a.key()] = a
        mismatch = False
        for k in auth_types(ev, rules):
            sid = state.get(k)
            if sid is None:
                continue
            a = get(sid, _MISSING)
            if a is _MISSING or (a is not None and a.room_id != room):
                a = ctx.ev(sid)
            if a is None:
                raise UnknownEventError(f"state event {sid} for {k!r} is not available", sid)
            if a.rejected_reason is None:
                auth_map[k] = a
                if a.state_key != k[1] or a.type != k[0]:
                    mismatch = True
        if ev.rejected_reason is not None and not readmit:
            stats.skipped_rejected += 1
            if decisions is not None:
                decisions.append((eid, "skipped_rejected", None))
            continue
        if mismatch:
            auth_map = {a.key(): a for a in auth_map.values()}
        stats.checked += 1
        try:
            check_auth(ev, auth_map, rules)
        except AuthFailure as f:
            stats.failed += 1
            stats.failed_by_rule[f.rule_id] = stats.failed_by_rule.get(f.rule_id, 0) + 1
            if decisions is not None:
                decisions.append((eid, "failed", f.rule_id))
            continue
        stats.accepted += 1
        state[ev.key()] = eid
        if decisions is not None:
            decisions.append((eid, "accepted", None))
    return state


def _prefetch_iac(
    ctx: _Ctx, rules: RoomRules, order: Sequence[str], state: Mapping[StateKey, str]
) -> Generator[Request, None, None]:
    if ctx.complete:
        return
    want: set[str] = set()
    for eid in order:
        ev = ctx.events.get(eid)
        if ev is None:
            continue
        want.update(ev.auth_event_ids)
        try:
            keys = auth_types(ev, rules)
        except StateResolutionError:
            continue  # raised again, at the right moment, by the pass itself
        want.update(state[k] for k in keys if k in state)
    yield from ctx.ensure(want)


def _mainline_order(
    ctx: _Ctx, rest: list[str], p0_id: str | None, opts: ResolveOptions, attrs: dict[str, Any]
) -> Generator[Request, None, list[str]]:
    mainline: list[str] = []
    seen: set[str] = set()
    if p0_id is not None:
        p = ctx.ev(p0_id)
        if p is None:
            raise UnknownEventError(f"resolved power levels {p0_id} is not available", p0_id)
        while p is not None:
            if p.event_id in seen:
                break
            seen.add(p.event_id)
            mainline.append(p.event_id)
            p = _first_pl(ctx, p)
    n = len(mainline)
    position = {eid: n - i for i, eid in enumerate(mainline)}
    memo: dict[str, int] = {}
    hits = 0
    order: dict[str, tuple[int, int, str]] = {}
    every = opts.yield_every
    for i, eid in enumerate(rest, 1):
        if every and i % every == 0:
            yield ("pause", ())
        ev = ctx.ev(eid)
        assert ev is not None
        path: list[str] = []
        cur: PDU | None = ev
        depth = 0
        while cur is not None:
            cid = cur.event_id
            d = position.get(cid)
            if d is None:
                d = memo.get(cid)
                if d is not None:
                    hits += 1
            if d is not None:
                depth = d
                break
            path.append(cid)
            cur = _first_pl(ctx, cur)
            if len(path) > len(ctx.events) + 1:
                raise InvalidEventError(f"power-levels cycle below {eid}", eid)
        for pid in path:
            memo[pid] = depth
        order[eid] = (depth, ev.origin_server_ts, eid)
    attrs.update(mainline_length=n, positions_computed=len(memo), memo_hits=hits)
    return sorted(rest, key=order.__getitem__)


# -- the procedure ------------------------------------------------------------------------------


def _resolve(
    ctx: _Ctx,
    rules: RoomRules,
    state_sets: Sequence[dict[StateKey, str]],
    opts: ResolveOptions,
    phases: _Phases,
    index: Any,
    stages: ResolutionStages | None,
    rank_order: Sequence[str] | None = None,
) -> Generator[Request, None, dict[StateKey, str]]:
    n = len(state_sets)
    if n == 0:
        return {}
    if n == 1:
        return dict(state_sets[0])
    with phases.phase("split") as attrs:
        unconflicted, conflicted, seeds, common = split_state(state_sets)
        attrs.update(unconflicted=len(unconflicted), conflicted_keys=len(conflicted))
    if not conflicted:
        return dict(unconflicted)
    conflicted_ids: set[str] = set().union(*conflicted.values())

    with phases.phase("auth_difference") as attrs:
        use_index = index is not None and (
            opts.index == "chain" or (opts.index == "auto" and len(index) >= opts.index_threshold)
        )
        if use_index:
            walk = AuthDifferenceWalk(
                seeds, n, common, ctx.nodes, mode="oracle", is_common=index.closure_oracle(common)
            )
        else:
            walk = AuthDifferenceWalk(seeds, n, common, ctx.nodes, mode=opts.walk_mode, rank_order=rank_order)

        def run_walk() -> Generator[Request, None, set[str]]:
            return walk.run()
            yield  # pragma: no cover

        diff: set[str] = yield from _retry(ctx, run_walk)
        attrs.update(
            method="chain" if use_index else "walk",
            size=len(diff),
            **{
                "walk.pops": walk.pops,
                "walk.common_expanded": walk.common_expanded,
                "walk.max_heap": walk.max_heap,
            },
        )
    sub: set[str] = set()
    if rules.state_res_v21:
        with phases.phase("conflicted_subgraph") as attrs:

            def run_sub() -> Generator[Request, None, set[str]]:
                return conflicted_subgraph(conflicted_ids, ctx.nodes)
                yield  # pragma: no cover

            sub = yield from _retry(ctx, run_sub)
            attrs.update(size=len(sub), added=len(sub - conflicted_ids - diff))

    with phases.phase("load_events") as attrs:
        candidates = conflicted_ids | diff | sub
        yield from ctx.ensure(candidates)
        full: set[str] = set()
        rejected = 0
        for eid in sorted(candidates):
            ev = ctx.ev(eid)
            if ev is not None:
                full.add(eid)
                if ev.rejected_reason is not None:
                    rejected += 1
        attrs.update(
            requested=len(candidates),
            loaded=len(full),
            dropped_unknown=len(candidates) - len(full),
            rejected=rejected,
        )
    phases.sets(conflicted_ids, diff, sub, full)
    if stages is not None:
        stages.conflicted = conflicted_ids
        stages.auth_difference = diff
        stages.conflicted_subgraph = sub
        stages.full_conflicted_set = full
        stages.method = "chain" if use_index else "walk"

    events = ctx.events
    with phases.phase("power_graph") as attrs:
        power = [eid for eid in sorted(full) if _is_power_event(events[eid])]  # type: ignore[arg-type]
        graph: dict[str, set[str]] = {}
        edges = 0
        for p in power:
            if p in graph:
                continue
            stack = [p]
            graph[p] = set()
            while stack:
                eid = stack.pop()
                ev = events[eid]
                assert ev is not None
                out = graph[eid]
                for a in ev.auth_event_ids:
                    if a in full:
                        if a not in graph:
                            graph[a] = set()
                            stack.append(a)
                        if a not in out:
                            out.add(a)
                            edges += 1
        attrs.update(power_events=len(power), nodes=len(graph), edges=edges)

    with phases.phase("sender_power") as attrs:
        want = {a for eid in graph for a in events[eid].auth_event_ids}  # type: ignore[union-attr]
        yield from ctx.ensure(want)

        def compute_powers() -> Generator[Request, None, dict[str, int]]:
            powers: dict[str, int] = {}
            for i, eid in enumerate(graph, 1):
                if opts.yield_every and i % opts.yield_every == 0:
                    yield ("pause", ())
                powers[eid] = _sender_power(ctx, events[eid], rules)  # type: ignore[arg-type]
            return powers

        powers: dict[str, int] = yield from _retry(ctx, compute_powers)
        attrs.update(computed=len(powers), memo_hits=0)

    with phases.phase("power_sort") as attrs:

        def power_key(eid: str) -> tuple[int, int, str]:
            return (-powers[eid], events[eid].origin_server_ts, eid)  # type: ignore[union-attr]

        power_order = _kahn(graph, power_key)
        attrs.update(nodes=len(power_order))

    decisions: list[tuple[str, str, str | None]] | None = [] if opts.trace_decisions else None
    start = {} if rules.state_res_v21 else unconflicted
    with phases.phase("iac_power") as attrs:
        yield from _prefetch_iac(ctx, rules, power_order, start)
        stats = _IacStats()

        def iac1() -> Generator[Request, None, dict[StateKey, str]]:
            stats.__init__()  # type: ignore[misc]
            return (yield from _iac(ctx, rules, power_order, start, opts, stats, decisions))

        state = yield from _retry(ctx, iac1)
        attrs.update(stats.as_attrs())
        if decisions:
            attrs["decisions"] = list(decisions)
            decisions.clear()

    rest = [eid for eid in full if eid not in graph]
    p0 = state.get(PL_KEY)
    if stages is not None:
        stages.power_order = power_order
        stages.mainline_pl = p0
    if rest:
        with phases.phase("mainline") as attrs:
            yield from ctx.ensure(a for eid in rest for a in events[eid].auth_event_ids)  # type: ignore[union-attr]
            ordered: list[str] = yield from _retry(ctx, lambda: _mainline_order(ctx, rest, p0, opts, attrs))
        with phases.phase("iac_rest") as attrs:
            yield from _prefetch_iac(ctx, rules, ordered, state)
            stats = _IacStats()
            base = state

            def iac2() -> Generator[Request, None, dict[StateKey, str]]:
                stats.__init__()  # type: ignore[misc]
                return (yield from _iac(ctx, rules, ordered, base, opts, stats, decisions))

            state = yield from _retry(ctx, iac2)
            attrs.update(stats.as_attrs())
            if decisions:
                attrs["decisions"] = list(decisions)
        if stages is not None:
            stages.mainline_order = ordered

    with phases.phase("overlay") as attrs:
        overwritten = sum(1 for k, v in unconflicted.items() if state.get(k, v) != v)
        state.update(unconflicted)
        attrs.update(overwritten=overwritten)
    return state


# -- sources and drivers ------------------------------------------------------------------------


class InMemoryEventSource:
    """Events held in memory (vectors, tests, the CLI); ranks computed on construction."""

    def __init__(self, events: Iterable[PDU], *, index: Any = None):
        self.events: dict[str, PDU] = {}
        for ev in events:
            self.events[ev.event_id] = ev
        compute_ranks(self.events)
        self.nodes = CompleteNodes(
            {e.event_id: (e.auth_rank, e.auth_event_ids) for e in self.events.values()}
        )
        self._index = index
        self._rank_order: list[str] | None = None

    @property
    def rank_order(self) -> list[str]:
        """Every event by descending auth rank (computed once): the walk's scan order."""
        if self._rank_order is None:
            self._rank_order = authdiff_rank_order(self.nodes)
        return self._rank_order

    @classmethod
    def from_dicts(
        cls,
        rules: RoomRules,
        events: Iterable[Mapping[str, Any]],
        rejected: Mapping[str, object] | None = None,
    ) -> InMemoryEventSource:
        """Parse JSON events; IDs in ``rejected`` are marked rejected."""
        rejected = rejected or {}
        pdus = []
        for d in events:
            pdu = pdu_from_dict(d, rules)
            reason = rejected.get(pdu.event_id)
            if reason is not None:
                pdu.rejected_reason = str(reason)
            pdus.append(pdu)
        return cls(pdus)

    @classmethod
    def from_vector(cls, case: Mapping[str, Any]) -> InMemoryEventSource:
        """Build the source of a vector case (``events`` and ``rejected``)."""
        return cls.from_dicts(rules_for(case["room_version"]), case["events"], case.get("rejected"))

    def build_index(self) -> Any:
        """Build (and keep) a chain-cover index over every event of the source."""
        from .chain_index import ChainCoverIndex

        idx = ChainCoverIndex()
        for eid in sorted(self.events, key=lambda e: self.events[e].auth_rank):
            ev = self.events[eid]
            idx.add(eid, ev.type, ev.state_key, [a for a in ev.auth_event_ids if a in self.events])
        self._index = idx
        return idx

    def chain_index(self) -> Any:
        return self._index

    async def get_events(self, ids: Collection[str]) -> Mapping[str, PDU]:
        return {i: self.events[i] for i in ids if i in self.events}

    async def get_auth_nodes(self, ids: Collection[str]) -> Mapping[str, tuple[int, tuple[str, ...]]]:
        return {i: n for i in ids if (n := self.nodes.get(i)) is not None}


def _drive_sync(gen: Generator[Request, None, dict[StateKey, str]]) -> dict[StateKey, str]:
    with closing(gen):  # a failure closes the generator now (its phase blocks exit in order)
        return _drive_sync_inner(gen)


def _drive_sync_inner(gen: Generator[Request, None, dict[StateKey, str]]) -> dict[StateKey, str]:
    try:
        while True:
            kind, ids = next(gen)
            if kind != "pause":  # pragma: no cover - a complete source never asks
                raise UnknownEventError(f"in-memory source lacks {len(ids)} {kind}")
    except StopIteration as stop:
        result: dict[StateKey, str] = stop.value
        return result


async def _drive_async(
    gen: Generator[Request, None, dict[StateKey, str]], ctx: _Ctx, source: EventSource
) -> dict[StateKey, str]:
    with closing(gen):
        return await _drive_async_inner(gen, ctx, source)


async def _drive_async_inner(
    gen: Generator[Request, None, dict[StateKey, str]], ctx: _Ctx, source: EventSource
) -> dict[StateKey, str]:
    try:
        while True:
            kind, ids = next(gen)
            if kind == "pause":
                await asyncio.sleep(0)
            elif kind == "events":
                got = await source.get_events(ids)
                for i in ids:
                    ev = got.get(i)
                    ctx.events[i] = ev
                    if ev is not None:
                        ctx.nodes[i] = (ev.auth_rank, ev.auth_event_ids)
            else:
                nodes = await source.get_auth_nodes(ids)
                for i in ids:
                    ctx.nodes[i] = nodes.get(i)
    except StopIteration as stop:
        result: dict[StateKey, str] = stop.value
        return result


def resolve_state(
    room_version: str | RoomRules,
    state_sets: Sequence[StateMap],
    events: InMemoryEventSource | Iterable[PDU] | Iterable[Mapping[str, Any]],
    *,
    room_id: str | None = None,
    options: ResolveOptions | None = None,
    stages: ResolutionStages | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` with every event in memory; return the resolved state map.

    ``events`` is an `InMemoryEventSource`, PDUs, or JSON event dicts (vector format).
    ``room_id`` defaults to the room of the create event. Errors are `StateResolutionError`s.
    """
    with errors_counted():
        rules = room_version if isinstance(room_version, RoomRules) else rules_for(room_version)
        inputs = _check_inputs(state_sets)
    if isinstance(events, InMemoryEventSource):
        source = events
    else:
        items = list(events)
        if items and all(isinstance(e, PDU) for e in items):
            source = InMemoryEventSource(items)  # type: ignore[arg-type]
        else:
            source = InMemoryEventSource.from_dicts(rules, items)  # type: ignore[arg-type]
    if room_id is None:
        room_id = (
            next(
                (e.room_id for e in source.events.values() if e.type == CREATE and e.state_key == ""),
                "",
            )
            or ""
        )
    opts = options or ResolveOptions()
    ctx = _Ctx(room_id, source.events, source.nodes, complete=True)  # type: ignore[arg-type]
    largest = max((len(s) for s in inputs), default=0)
    with resolution_scope(room_id, rules, len(inputs), largest, opts.trace_decisions) as phases:
        gen = _resolve(ctx, rules, inputs, opts, phases, source.chain_index(), stages, source.rank_order)
        return _drive_sync(gen)


async def resolve_state_async(
    room_id: str,
    rules: RoomRules,
    state_sets: Sequence[StateMap],
    source: EventSource,
    options: ResolveOptions | None = None,
    *,
    stages: ResolutionStages | None = None,
) -> dict[StateKey, str]:
    """Resolve over an async `EventSource`, yielding to the event loop every ``yield_every``."""
    with errors_counted():
        inputs = _check_inputs(state_sets)
    opts = options or ResolveOptions()
    if isinstance(source, InMemoryEventSource):
        ctx = _Ctx(room_id, source.events, source.nodes, complete=True)  # type: ignore[arg-type]
    else:
        ctx = _Ctx(room_id, {}, {}, complete=False)
    largest = max((len(s) for s in inputs), default=0)
    with resolution_scope(room_id, rules, len(inputs), largest, opts.trace_decisions) as phases:
        order = source.rank_order if isinstance(source, InMemoryEventSource) else None
        gen = _resolve(ctx, rules, inputs, opts, phases, source.chain_index(), stages, order)
        return await _drive_async(gen, ctx, source)
