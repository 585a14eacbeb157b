"""Auth-chain difference (spec §4): the definition, the multi-source walk, the v2.1 subgraph.

``nodes`` maps an event ID to ``(auth_rank, auth_event_ids)`` or ``None`` for an unknown event.
A lookup that raises ``KeyError`` means "not fetched yet": the walk raises `NeedNodes` *before*
changing any state, so the caller can fetch and call `AuthDifferenceWalk.run` again.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

__all__ = [
    "AuthDifferenceWalk",
    "CompleteNodes",
    "NeedNodes",
    "Node",
    "auth_difference",
    "conflicted_subgraph",
    "full_auth_difference",
    "nodes_from_graph",
    "rank_order",
    "reach_closure",
]

Node = tuple[int, tuple[str, ...]] | None
NodeMap = Mapping[str, Node]


class CompleteNodes(dict[str, Node]):
    """Auth nodes of a complete graph: an ID without an entry is an unknown event."""

    def __missing__(self, key: str) -> Node:
        return None


class NeedNodes(Exception):
    """The walk needs ``(rank, auth IDs)`` of these events before it can go on."""

    def __init__(self, ids: Collection[str]):
        super().__init__(f"{len(ids)} auth nodes needed")
        self.ids = tuple(ids)


def _node(nodes: NodeMap, eid: str, missing: list[str]) -> Node:
    try:
        return nodes[eid]
    except KeyError:
        missing.append(eid)
        return None


def reach_closure(roots: Iterable[str], nodes: NodeMap) -> set[str]:
    """Ancestors-or-self of ``roots`` over auth edges (iterative)."""
    seen: set[str] = set()
    stack = [r for r in roots if r not in seen]
    seen.update(stack)
    while stack:
        n = nodes.get(stack.pop())
        if n is None:
            continue
        for a in n[1]:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def full_auth_difference(state_sets: Sequence[Iterable[str]], nodes: NodeMap) -> set[str]:
    """The definition: ``⋃ D_i − ⋂ D_i`` with ``D_i`` = input ``i``'s events and their chains."""
    if not state_sets:
        return set()
    closures = [reach_closure(s, nodes) for s in state_sets]
    union = set().union(*closures)
    inter = set(closures[0]).intersection(*closures[1:])
    return union - inter


class AuthDifferenceWalk:
    """The exact multi-source walk of spec §4.2 with the common-state skip of §4.3.

    ``seeds`` maps each event in some but not all inputs to its input bit mask; ``common``
    holds the events in every input. ``mode``: ``"lazy"`` expands ``common`` lazily in rank
    order (default), ``"eager"`` pushes it all, ``"oracle"`` uses ``is_common`` — a test for
    the closure of ``common`` (e.g. the chain-cover index) — and never expands ``common``.
    """

    def __init__(
        self,
        seeds: Mapping[str, int],
        n_inputs: int,
        common: Collection[str],
        nodes: NodeMap,
        *,
        mode: str = "lazy",
        is_common: Callable[[str], bool] | None = None,
        rank_order: Sequence[str] | None = None,
    ):
        if mode not in ("lazy", "eager", "oracle"):
            raise ValueError(f"unknown walk mode {mode!r}")
        if mode == "oracle" and is_common is None:
            raise ValueError("mode 'oracle' needs is_common")
        self.full = (1 << n_inputs) - 1
        self.seeds = seeds
        self.common = common
        self.nodes = nodes
        self.mode = mode
        self.is_common = is_common
        self.mask: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []
        self.u_heap: list[tuple[int, str]] = []
        #: Lazy mode: every event of the room by descending rank (complete ``nodes`` only).
        #: With it, common events are found by scanning from the top instead of ordering
        #: all of ``common`` first, so the cost does not grow with the size of the state.
        self.rank_order = rank_order if mode == "lazy" else None
        self._u_pos = 0
        self._u_next: tuple[int, str] | None = None
        self.pending = 0
        self.started = False
        self.pops = 0
        self.common_expanded = 0
        self.max_heap = 0
        #: Lazy mode: common events expanded before switching to the closure fallback.
        self.budget = min(2000 + 4 * len(seeds), 64 + len(common) // 16)
        self.fallback = False
        self._cu: set[str] | None = None
        self._cu_stack: list[str] = []

    def _start(self) -> None:
        nodes = self.nodes
        missing: list[str] = []
        ranks: dict[str, int] = {}
        for e in self.seeds:
            n = _node(nodes, e, missing)
            ranks[e] = 0 if n is None else n[0]
        common = self.common
        if self.mode != "oracle" and not isinstance(nodes, CompleteNodes):
            missing.extend(e for e in common if e not in nodes)
        if missing:
            raise NeedNodes(missing)
        full = self.full
        mask = self.mask
        heap = self.heap
        is_common = self.is_common if self.mode == "oracle" else None
        for e, m in self.seeds.items():
            if is_common is not None and is_common(e):
                m = full  # a seed inside the closure of the common events
            mask[e] = m
            heap.append((-ranks[e], e))
            if m != full:
                self.pending += 1
        get = nodes.get  # dict.get: an unknown event gives None (never NeedNodes here)
        if self.mode == "eager":
            for e in common:
                if e not in mask:
                    mask[e] = full
                    n = get(e)
                    heap.append((0 if n is None else -n[0], e))
        elif self.mode == "lazy" and self.rank_order is not None:
            self._refill()
        elif self.mode == "lazy":
            # Unknown common events have no auth events: nothing to expand.
            self.u_heap = [(-n[0], e) for e in common if (n := get(e)) is not None]
            heapq.heapify(self.u_heap)
        heapq.heapify(heap)
        self.started = True

    def _refill(self) -> None:
        order = self.rank_order
        assert order is not None
        common, get = self.common, self.nodes.get
        i, end = self._u_pos, len(order)
        while i < end:
            e = order[i]
            i += 1
            if e in common:
                n = get(e)
                if n is not None:
                    self._u_pos = i
                    self._u_next = (-n[0], e)
                    return
        self._u_pos = i
        self._u_next = None

    def run(self) -> set[str]:
        """Walk until the frontiers converge; return the auth difference."""
        if not self.started:
            self._start()
        full = self.full
        mask = self.mask
        heap = self.heap
        u_heap = self.u_heap
        ranked = self.rank_order is not None
        nodes = self.nodes
        common = self.common if self.mode == "lazy" else ()
        is_common = self.is_common if self.mode == "oracle" else None
        heappush, heappop = heapq.heappush, heapq.heappop
        while self.pending > 0:
            if self.common_expanded > self.budget or self.fallback:
                return self._run_fallback()
            if len(heap) > self.max_heap:
                self.max_heap = len(heap)
            if ranked:
                ut = self._u_next
                from_common = ut is not None and (not heap or ut < heap[0])
                top = ut if from_common and ut is not None else heap[0]
            else:
                from_common = bool(u_heap) and (not heap or u_heap[0] < heap[0])
                top = u_heap[0] if from_common else heap[0]
            eid = top[1]
            missing: list[str] = []
            n = _node(nodes, eid, missing)
            if missing:
                raise NeedNodes(missing)
            auth = () if n is None else n[1]
            pnodes = [None if a in mask or a in common else _node(nodes, a, missing) for a in auth]
            if missing:
                raise NeedNodes(missing)
            # -- no failure past this point: pop and propagate --
            if from_common:
                if ranked:
                    self._refill()
                else:
                    heappop(u_heap)
                self.common_expanded += 1
                m = full
            else:
                heappop(heap)
                self.pops += 1
                m = mask[eid]
                if m != full:
                    self.pending -= 1
            for a, pn in zip(auth, pnodes, strict=True):
                if a in common:
                    continue
                old = mask.get(a)
                if old is None:
                    if is_common is not None and is_common(a):
                        mask[a] = full
                        continue
                    mask[a] = m
                    heappush(heap, (0 if pn is None else -pn[0], a))
                    if m != full:
                        self.pending += 1
                elif old != full:
                    new = old | m
                    if new != old:
                        mask[a] = new
                        if new == full:
                            self.pending -= 1
        return {e for e, m in mask.items() if m != full}

    def _run_fallback(self) -> set[str]:
        """Deep common history (e.g. a fork citing an ancient event): compute the closure
        ``CU`` of the common events by a plain search, then each input's reach from its
        own events without entering ``CU``; the difference is union minus intersection of
        those reaches (``D_i = CU ∪ X_i``). O(|CU| + walked), no heap, no early exit."""
        self.fallback = True
        nodes = self.nodes
        if self._cu is None:
            self._cu = set(self.common)
            self._cu_stack = list(self.common)
        cu, stack = self._cu, self._cu_stack
        while stack:
            x = stack[-1]
            try:
                n = nodes[x]
            except KeyError:
                raise NeedNodes([x, *[y for y in stack[-100:-1] if y not in nodes]]) from None
            stack.pop()
            if n is not None:
                for a in n[1]:
                    if a not in cu:
                        cu.add(a)
                        stack.append(a)
        n_inputs = self.full.bit_length()
        reaches: list[set[str]] = []
        for i in range(n_inputs):
            bit = 1 << i
            start = [e for e, m in self.seeds.items() if m & bit and e not in cu]
            seen = set(start)
            todo = list(start)
            while todo:
                x = todo.pop()
                try:
                    n = nodes[x]
                except KeyError:
                    raise NeedNodes([x]) from None
                if n is not None:
                    for a in n[1]:
                        if a not in seen and a not in cu:
                            seen.add(a)
                            todo.append(a)
            reaches.append(seen)
        return set().union(*reaches) - reaches[0].intersection(*reaches[1:])


def auth_difference(
    state_sets: Sequence[Collection[str]],
    nodes: NodeMap,
    *,
    mode: str = "lazy",
    is_common: Callable[[str], bool] | None = None,
    budget: int | None = None,
    rank_order: Sequence[str] | None = None,
) -> set[str]:
    """Auth difference of inputs given as event-ID collections (walk; equals the definition).

    ``budget`` overrides how many common events the lazy walk expands before it switches to
    the closure fallback (0 forces the fallback as soon as common state must be expanded).
    """
    n = len(state_sets)
    if n == 0:
        return set()
    seeds: dict[str, int] = {}
    for i, s in enumerate(state_sets):
        bit = 1 << i
        for e in s:
            seeds[e] = seeds.get(e, 0) | bit
    full = (1 << n) - 1
    common = {e for e, m in seeds.items() if m == full}
    for e in common:
        del seeds[e]
    walk = AuthDifferenceWalk(seeds, n, common, nodes, mode=mode, is_common=is_common, rank_order=rank_order)
    if budget is not None:
        walk.budget = budget
    return walk.run()


def conflicted_subgraph(conflicted: Collection[str], nodes: NodeMap) -> set[str]:
    """v2.1: events on an auth path between two conflicted events, endpoints included (§4.6).

    Raises `NeedNodes` (without side effects) when an event's node must be fetched first.
    """
    missing: list[str] = []
    ranks: dict[str, int] = {}
    for e in conflicted:
        n = _node(nodes, e, missing)
        if n is not None:
            ranks[e] = n[0]
    if missing:
        raise NeedNodes(missing)
    if not ranks:
        return set(conflicted)
    low = min(ranks.values())
    walked: dict[str, tuple[int, tuple[str, ...]]] = {}
    stack = list(ranks)
    seen = set(stack)
    while stack:
        e = stack.pop()
        n = nodes[e]
        assert n is not None
        walked[e] = n
        for a in n[1]:
            if a in seen:
                continue
            an = _node(nodes, a, missing)
            if missing:
                raise NeedNodes(missing)
            seen.add(a)
            if an is not None and an[0] >= low:
                stack.append(a)
    marked = set(conflicted)
    for e in sorted(walked, key=lambda x: walked[x][0]):
        if e not in marked:
            for a in walked[e][1]:
                if a in marked:
                    marked.add(e)
                    break
    return marked


def rank_order(nodes: Mapping[str, Node]) -> list[str]:
    """Every known event by descending rank (ties by ID): the lazy walk's scan order."""
    return sorted((e for e, n in nodes.items() if n is not None), key=lambda e: (-nodes[e][0], e))  # type: ignore[index]


def nodes_from_graph(auth_events: Mapping[str, Iterable[str]]) -> CompleteNodes:
    """``(rank, auth IDs)`` for a plain graph (node → cited nodes); a cycle raises.

    IDs cited but absent from the mapping are unknown events (no node).
    """
    from .errors import InvalidAuthGraph

    graph = {k: tuple(v) for k, v in auth_events.items()}
    rank: dict[str, int] = {}
    on_path: set[str] = set()
    for root in graph:
        if root in rank:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        on_path.add(root)
        while stack:
            node, i = stack[-1]
            parents = graph[node]
            while i < len(parents) and (parents[i] in rank or parents[i] not in graph):
                i += 1
            if i < len(parents):
                p = parents[i]
                if p in on_path:
                    raise InvalidAuthGraph(f"auth cycle through {p}", p)
                stack[-1] = (node, i + 1)
                stack.append((p, 0))
                on_path.add(p)
                continue
            rank[node] = 1 + max((rank[p] for p in parents if p in rank), default=0)
            on_path.discard(node)
            stack.pop()
    return CompleteNodes({k: (rank[k], graph[k]) for k in graph})
