"""Chain-cover index of the auth DAG (spec §4.4), for large rooms.

Every indexed event gets ``(chain, seq)``; within a chain a higher ``seq`` reaches every lower
one. Links are kept *closed*: for each chain and each chain it reaches there is a staircase of
``(origin_seq, target_seq)`` pairs (origins and targets both increasing), so reachability is a
single bisect, never a recursion. Unindexed auth IDs (unknown events) are remembered with the
events citing them, so queries about them stay exact.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Sequence

__all__ = ["ChainCoverIndex"]


class _Stair:
    __slots__ = ("origins", "targets")

    def __init__(self) -> None:
        self.origins: list[int] = []
        self.targets: list[int] = []

    def max_at(self, seq: int) -> int:
        """Highest target reached from origin ``seq`` (0 if none)."""
        i = bisect_right(self.origins, seq)
        return self.targets[i - 1] if i else 0


class ChainCoverIndex:
    """In-memory chain-cover index; the store persists the same ``(chain, seq)`` and links."""

    def __init__(self) -> None:
        self.position: dict[str, tuple[int, int]] = {}
        self.chains: list[list[str]] = []
        self.chain_keys: list[tuple[str, str | None]] = []
        self.links: list[dict[int, _Stair]] = []
        # Per target chain: (target_seq, source_chain, origin_seq) of every link into it.
        self.into: list[list[tuple[int, int, int]]] = []
        self._into_sorted: list[bool] = []
        self.dangling: dict[str, list[str]] = {}
        #: Links added since the last `take_new_links` (for a store to persist).
        self.new_links: list[tuple[int, int, int, int]] = []
        #: True when built by `from_rows` (loaded from a store's tables).
        self.from_storage = False

    def __len__(self) -> int:
        return len(self.position)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.position

    @property
    def link_count(self) -> int:
        return sum(len(s.origins) for d in self.links for s in d.values())

    def add(
        self, event_id: str, etype: str, state_key: str | None, auth_ids: Iterable[str]
    ) -> tuple[int, int]:
        """Index a new event whose indexed auth events are already in (topological order)."""
        if event_id in self.position:
            return self.position[event_id]
        pos = self.position
        auths: list[tuple[int, int]] = []
        for a in auth_ids:
            p = pos.get(a)
            if p is None:
                self.dangling.setdefault(a, []).append(event_id)
            else:
                auths.append(p)
        key = (etype, state_key)
        chain = -1
        seq = 1
        for c, s in auths:
            if self.chain_keys[c] == key and len(self.chains[c]) == s:
                chain, seq = c, s + 1
                break
        if chain < 0:
            chain = len(self.chains)
            self.chains.append([])
            self.chain_keys.append(key)
            self.links.append({})
            self.into.append([])
            self._into_sorted.append(True)
        self.chains[chain].append(event_id)
        pos[event_id] = (chain, seq)
        reach: dict[int, int] = {}
        links = self.links
        for c, s in auths:
            if s > reach.get(c, 0):
                reach[c] = s
            for c2, stair in links[c].items():
                t = stair.max_at(s)
                if t > reach.get(c2, 0):
                    reach[c2] = t
        reach.pop(chain, None)
        own = links[chain]
        for c2, t in reach.items():
            st = own.get(c2)
            if st is None:
                st = own[c2] = _Stair()
            if t > st.max_at(seq):
                st.origins.append(seq)
                st.targets.append(t)
                self.new_links.append((chain, seq, c2, t))
                into = self.into[c2]
                if into and into[-1][0] > t:
                    self._into_sorted[c2] = False
                into.append((t, chain, seq))
        return chain, seq

    def take_new_links(self) -> list[tuple[int, int, int, int]]:
        """``(origin_chain, origin_seq, target_chain, target_seq)`` added since the last call."""
        out, self.new_links = self.new_links, []
        return out

    @classmethod
    def from_rows(
        cls,
        positions: Iterable[tuple[str, int, int, str, str | None]],
        links: Iterable[tuple[int, int, int, int]],
        dangling: Iterable[tuple[str, str]] = (),
    ) -> ChainCoverIndex:
        """Rebuild an index from stored rows: ``(event_id, chain, seq, type, state_key)``,
        links, and ``(unknown auth ID, citing event)`` pairs. Gaps raise `ValueError`."""
        idx = cls()
        for eid, c, s, etype, sk in sorted(positions, key=lambda r: (r[1], r[2])):
            while len(idx.chains) <= c:
                idx.chains.append([])
                idx.chain_keys.append(("", None))
                idx.links.append({})
                idx.into.append([])
                idx._into_sorted.append(False)
            chain = idx.chains[c]
            if len(chain) != s - 1:
                raise ValueError(f"chain {c} has no seq {len(chain) + 1} before {s}")
            if s == 1:
                idx.chain_keys[c] = (etype, sk)
            chain.append(eid)
            idx.position[eid] = (c, s)
        if any(not ch for ch in idx.chains):
            raise ValueError("empty chain in stored index")
        for oc, os_, tc, ts in sorted(links):
            st = idx.links[oc].get(tc)
            if st is None:
                st = idx.links[oc][tc] = _Stair()
            if ts > st.max_at(os_):
                st.origins.append(os_)
                st.targets.append(ts)
                idx.into[tc].append((ts, oc, os_))
        for aid, eid in dangling:
            idx.dangling.setdefault(aid, []).append(eid)
        idx.from_storage = True
        return idx

    def reaches(self, a: str, b: str) -> bool:
        """Whether ``b`` is ``a`` or one of its auth ancestors (both indexed)."""
        ca, sa = self.position[a]
        cb, sb = self.position[b]
        if ca == cb:
            return sb <= sa
        stair = self.links[ca].get(cb)
        return stair is not None and stair.max_at(sa) >= sb

    def max_seqs(self, events: Iterable[str]) -> dict[int, int]:
        """Per chain, the highest ``seq`` reached from ``events`` (ancestors-or-self)."""
        own: dict[int, int] = {}
        pos = self.position
        for e in events:
            p = pos.get(e)
            if p is not None and p[1] > own.get(p[0], 0):
                own[p[0]] = p[1]
        out = dict(own)
        links = self.links
        for c, s in own.items():
            for c2, stair in links[c].items():
                t = stair.max_at(s)
                if t > out.get(c2, 0):
                    out[c2] = t
        return out

    def _unknown_reached(self, events: Collection[str], reach: dict[int, int]) -> set[str]:
        pos = self.position
        out = {e for e in events if e not in pos}
        for x, citers in self.dangling.items():
            if x in out:
                continue
            for c in citers:
                ch, s = pos[c]
                if reach.get(ch, 0) >= s:
                    out.add(x)
                    break
        return out

    def difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """Auth difference (own events counted) straight from the index: per chain, ``lo < seq ≤ hi``."""
        if not state_sets:
            return set()
        reaches = [self.max_seqs(s) for s in state_sets]
        out: set[str] = set()
        for c in set().union(*reaches):
            vals = [r.get(c, 0) for r in reaches]
            lo, hi = min(vals), max(vals)
            if lo < hi:
                out.update(self.chains[c][lo:hi])
        unknown = [self._unknown_reached(s, r) for s, r in zip(state_sets, reaches, strict=True)]
        out |= set().union(*unknown) - set(unknown[0]).intersection(*unknown[1:])
        return out

    def closure_oracle(self, common: Collection[str]) -> Callable[[str], bool]:
        """A test for "ancestor-or-self of some event of ``common``" (the walk's oracle, §4.3).

        Nothing is computed up front: per chain, the highest ``seq`` held by a common event is
        found on demand by scanning the chain from its top (memoised), and links into a chain
        are read from the highest target down, so a test costs only what it touches.
        """
        pos = self.position
        chains = self.chains
        into = self.into
        into_sorted = self._into_sorted
        u_top: dict[int, int] = {}

        def top_common(c: int) -> int:
            t = u_top.get(c)
            if t is None:
                events = chains[c]
                t = len(events)
                while t > 0 and events[t - 1] not in common:
                    t -= 1
                u_top[c] = t
            return t

        def reached(c: int, s: int) -> bool:
            # Some event of ``common`` on ``c`` at ``>= s``, or on a chain linking into ``c``
            # at ``>= s`` from a ``seq`` it holds? Only links above ``s`` are read.
            if top_common(c) >= s:
                return True
            links_in = into[c]
            if not into_sorted[c]:
                links_in.sort()
                into_sorted[c] = True
            for i in range(len(links_in) - 1, -1, -1):
                target, src, origin = links_in[i]
                if target < s:
                    return False
                if top_common(src) >= origin:
                    return True
            return False

        def is_common(x: str) -> bool:
            p = pos.get(x)
            if p is None:
                if x in common:
                    return True
                return any(reached(*pos[citer]) for citer in self.dangling.get(x, ()))
            return reached(p[0], p[1])

        return is_common
