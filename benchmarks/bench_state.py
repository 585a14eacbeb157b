"""State-resolution benchmarks (spec state-res §8): run ``python benchmarks/bench_state.py``.

Prints, in one run:

1. resolution time on the largest conformance vectors (``room300``);
2. resolution time on seeded synthetic ~1,000-event rooms (small-fork: ~50-event conflict;
   big-fork / all-fork: 470–660-event conflicted sets; tiny), v10 and v12, against the
   reference anchors of the spec (Synapse 1.163.2: 39–41 ms and 112–131 ms);
3. the auth-difference walk against the full-chain set difference on converging
   room-shaped auth DAGs of 10k and 100k events (recent forks, and one fork citing an
   ancient PL), and the chain-cover index (difference query and walk with its oracle).

Medians of ``--runs`` runs (default 7). ``--quick`` skips the 100k graphs.
"""

# ruff: noqa: B023  (closures are timed inside the loop that defines them)
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from homeserver.state import (  # noqa: E402
    AuthFailure,
    InMemoryEventSource,
    ResolutionStages,
    auth_types,
    check_auth,
    pdu_from_dict,
    resolve_state,
    rules_for,
)
from homeserver.state.authdiff import (  # noqa: E402
    AuthDifferenceWalk,
    CompleteNodes,
    full_auth_difference,
    rank_order,
)
from homeserver.state.chain_index import ChainCoverIndex  # noqa: E402

VECTORS = ROOT / ".." / "shared" / "vectors" / "state-res"


def median_ms(fn: Callable[..., Any], runs: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``fn`` (given ``setup()``'s result, untimed); no GC while timing."""
    if setup:
        fn(setup())  # warm-up
    else:
        fn()
    times = []
    for _ in range(runs):
        arg = setup() if setup else None
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            if setup:
                fn(arg)
            else:
                fn()
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            gc.enable()
    return statistics.median(times)


# -- the reference, side by side ----------------------------------------------------------------


def synapse_resolver(
    version: str,
    room_id: str,
    event_dicts: list[dict[str, Any]],
    rejected: dict[str, str],
    inputs: list[dict[tuple[str, str], str]],
    source: InMemoryEventSource,
) -> Callable[[], Any] | None:
    """Synapse's ``resolve_events_with_store`` on the same room, if Synapse is installed.

    Its store hands over the auth difference (and v12 subgraph) precomputed, for free: the
    comparison is favourable to Synapse. Returns None without Synapse.
    """
    try:
        import synapse.event_auth  # noqa: F401  (import order: synapse.state has a cycle)
        from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
        from synapse.events import make_event_from_dict
        from synapse.state import v2
        from synapse.state.v2 import StateDifference
    except Exception:  # pragma: no cover - optional comparison
        return None
    from homeserver.state.authdiff import conflicted_subgraph

    rv = KNOWN_ROOM_VERSIONS[version]
    evs = {}
    for d in event_dicts:
        d = dict(d)
        if version == "2":
            eid = d["event_id"]
            d["auth_events"] = [a if isinstance(a, list) else [a, {}] for a in d["auth_events"]]
            d["prev_events"] = [a if isinstance(a, list) else [a, {}] for a in d["prev_events"]]
        else:
            eid = d.pop("event_id")
        d.setdefault("hashes", {})
        d.setdefault("signatures", {})
        d.setdefault("depth", 1)
        ev = make_event_from_dict(d, rv, rejected_reason=rejected.get(eid))
        if ev.event_id != eid:
            return None  # synthetic IDs of v3+ rooms are not reference hashes
        evs[eid] = ev
    diff = full_auth_difference([set(s.values()) for s in inputs], source.nodes)

    class Clock:
        async def sleep(self, duration: Any) -> None:
            return None

    class Store:
        async def get_events(self, event_ids: Any, allow_rejected: bool = False) -> Any:
            return {e: evs[e] for e in event_ids if e in evs}

        async def get_auth_chain_difference(
            self, room_id: str, state_sets: Any, conflicted: Any, extra: Any
        ) -> Any:
            sub = None
            if conflicted is not None:
                sub = conflicted_subgraph(set(conflicted) | set(extra or ()), source.nodes)
            return StateDifference(auth_difference=diff, conflicted_subgraph=sub)

    def once() -> Any:
        coro = v2.resolve_events_with_store(Clock(), room_id, rv, inputs, {}, Store())
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("Synapse's resolution suspended")

    return once


def compare(ours_ms: float, ref: Callable[[], Any] | None, want: Any, runs: int) -> str:
    if ref is None:
        return ""
    got = ref()
    if dict(got) != dict(want):
        return "   Synapse: different result!"
    ref_ms = median_ms(ref, runs)
    return f"   Synapse {ref_ms:7.2f} ms   ours/Synapse {ours_ms / ref_ms:5.2f}x"


# -- 1. vectors ---------------------------------------------------------------------------------


def bench_vectors(runs: int) -> None:
    print("== Resolution time, largest conformance vectors (room300: 300-400 events) ==")
    print("   reference (Synapse, spec §8.1) on the same class of machine: 13-36 ms")
    for path in sorted(VECTORS.glob("v*.jsonl")):
        for line in path.read_text().splitlines():
            c = json.loads(line)
            if "room300" not in c.get("tags", []):
                continue
            src = InMemoryEventSource.from_vector(c)
            inputs = [{(t, k): e for t, k, e in s} for s in c["state_sets"]]
            stages = ResolutionStages()
            resolve_state(c["room_version"], inputs, src, room_id=c["room_id"], stages=stages)
            ms = median_ms(lambda: resolve_state(c["room_version"], inputs, src, room_id=c["room_id"]), runs)
            want = resolve_state(c["room_version"], inputs, src, room_id=c["room_id"])
            ref = synapse_resolver(
                c["room_version"], c["room_id"], c["events"], c.get("rejected", {}), inputs, src
            )
            print(
                f"  {c['name']:<40} events={len(c['events']):4d} full_set={len(stages.full_conflicted_set):4d}"
                f"  {ms:7.2f} ms{compare(ms, ref, want, runs)}"
            )


# -- 2. synthetic rooms -------------------------------------------------------------------------


class RoomGen:
    """Grows a room by the spec's random steps, keeping only events that pass auth."""

    def __init__(self, version: str, seed: int):
        self.rules = rules_for(version)
        self.rng = random.Random(seed)
        self.events: dict[str, Any] = {}
        self.dicts: list[dict[str, Any]] = []
        self.state: dict[tuple[str, str], str] = {}
        self.ts = 0
        self.n = 0
        self.nusers = 0
        self.v12 = self.rules.creators_unbounded
        self.room_id = "!bench:example.com"
        create = self._make(
            "m.room.create",
            "@alice:example.com",
            "",
            {"room_version": version, "creator": "@alice:example.com"},
            force=True,
        )
        assert create
        if self.v12:
            # v12: the room ID derives from the create event's ID.
            self.room_id = "!" + create[1:]
            for d in self.dicts:
                d.pop("room_id", None)
            self.events[create] = pdu_from_dict(self.dicts[0], self.rules)
        self._make(
            "m.room.member", "@alice:example.com", "@alice:example.com", {"membership": "join"}, prev=[create]
        )
        users = {} if self.v12 else {"@alice:example.com": 100}
        self._make(
            "m.room.power_levels",
            "@alice:example.com",
            "",
            {
                "users": users,
                "state_default": 50,
                "kick": 50,
                "ban": 50,
                "invite": 0,
                "events": {"m.room.topic": 0, "m.room.name": 0},
            },
        )
        self._make("m.room.join_rules", "@alice:example.com", "", {"join_rule": "public"})

    def fork(self, seed: int) -> RoomGen:
        g = object.__new__(RoomGen)
        g.__dict__.update(self.__dict__)
        g.events = dict(self.events)
        g.dicts = list(self.dicts)
        g.state = dict(self.state)
        g.rng = random.Random(seed)
        return g

    def _make(
        self,
        etype: str,
        sender: str,
        sk: str,
        content: dict[str, Any],
        *,
        prev: list[str] | None = None,
        force: bool = False,
    ) -> str | None:
        self.n += 1
        self.ts += 1
        eid = f"${self.n:06d}-{self.rng.getrandbits(32):08x}"
        d: dict[str, Any] = {
            "event_id": eid,
            "room_id": self.room_id,
            "type": etype,
            "state_key": sk,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.ts,
            "auth_events": [],
            "prev_events": prev or [],
        }
        pdu = pdu_from_dict(d, self.rules)
        auth_ids = []
        auth_map = {}
        for k in auth_types(pdu, self.rules):
            if k in self.state:
                if self.v12 and k[0] == "m.room.create":
                    continue
                auth_ids.append(self.state[k])
                auth_map[k] = self.events[self.state[k]]
        if self.v12 and etype != "m.room.create":
            create_id = "$" + self.room_id[1:]
            auth_map[("m.room.create", "")] = self.events[create_id]
        d["auth_events"] = auth_ids
        pdu = pdu_from_dict(d, self.rules)
        if not force:
            try:
                check_auth(pdu, auth_map, self.rules)
            except AuthFailure:
                return None
        self.events[eid] = pdu
        self.dicts.append(d)
        self.state[(etype, sk)] = eid
        return eid

    def _joined(self) -> list[str]:
        return [
            k
            for (t, k), e in self.state.items()
            if t == "m.room.member" and self.events[e].content.get("membership") == "join"
        ]

    def _pl(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.events[self.state[("m.room.power_levels", "")]].content))

    def _mods(self, joined: list[str]) -> list[str]:
        users = self._pl()["users"]
        mods = [u for u in joined if users.get(u, 0) >= 50]
        if "@alice:example.com" in joined:
            mods.append("@alice:example.com")
        return mods or joined

    def step(self) -> None:
        r = self.rng.random()
        joined = self._joined()
        pick = self.rng.choice
        if r < 0.45:
            self.nusers += 1
            u = f"@u{self.nusers}-{self.rng.getrandbits(16):x}:example.com"
            self._make("m.room.member", u, u, {"membership": "join"})
        elif r < 0.70:
            self._make("m.room.topic", pick(joined), "", {"topic": f"t{self.n}"})
        elif r < 0.80:
            self._make("m.room.name", pick(joined), "", {"name": f"n{self.n}"})
        elif r < 0.88:
            pl = self._pl()
            target = pick(joined)
            if target != "@alice:example.com":
                pl["users"][target] = pick([0, 25, 50])
                self._make("m.room.power_levels", pick(self._mods(joined)), "", pl)
        elif r < 0.94:
            self._make("m.room.member", pick(self._mods(joined)), pick(joined), {"membership": "leave"})
        elif r < 0.98:
            self._make("m.room.member", pick(self._mods(joined)), pick(joined), {"membership": "ban"})
        else:
            jr = self.events[self.state[("m.room.join_rules", "")]].content["join_rule"]
            self._make(
                "m.room.join_rules",
                "@alice:example.com",
                "",
                {"join_rule": "invite" if jr == "public" else "public"},
            )

    def grow(self, kept: int) -> RoomGen:
        """Take random steps until ``kept`` more events have passed auth."""
        target = len(self.dicts) + kept
        while len(self.dicts) < target:
            self.step()
        return self


def synthetic_room(version: str, common: int, fork: int, seed: int) -> tuple[Any, list[Any], str, list[Any]]:
    base = RoomGen(version, seed).grow(common)
    a = base.fork(seed * 31 + 1).grow(fork)
    b = base.fork(seed * 31 + 2)
    b.n += 10_000  # distinct IDs on the second fork
    b.grow(fork)
    events = {**a.events, **b.events}
    dicts = {d["event_id"]: d for d in [*a.dicts, *b.dicts]}
    return InMemoryEventSource(events.values()), [a.state, b.state], base.room_id, list(dicts.values())


def bench_synthetic(runs: int) -> None:
    print()
    print("== Resolution time, synthetic ~1,000-event rooms (spec §8.1 generator) ==")
    shapes = [("tiny", 0, 3), ("small-fork", 950, 25), ("big-fork", 400, 300), ("all-fork", 0, 500)]
    anchors = {
        "tiny": "0.5-0.6",
        "small-fork": "39-41 (v12 ~99)",
        "big-fork": "112-131",
        "all-fork": "112-131",
    }
    print("   (spec anchors: Synapse on the spec's machine; side by side: Synapse here, v2 rooms,")
    print("    whose explicit event IDs it accepts; v10/v12 synthetic IDs are not reference hashes)")
    for version in ("2", "10", "12"):
        for name, common, fork in shapes:
            src, inputs, room_id, dicts = synthetic_room(version, common, fork, seed=7)
            stages = ResolutionStages()
            want = resolve_state(version, inputs, src, room_id=room_id, stages=stages)
            ms = median_ms(lambda: resolve_state(version, inputs, src, room_id=room_id), runs)
            ref = synapse_resolver(version, room_id, dicts, {}, inputs, src) if version == "2" else None
            print(
                f"  v{version:<3} {name:<11} events={len(src.events):5d} conflicted={len(stages.conflicted):4d}"
                f" full_set={len(stages.full_conflicted_set):4d}  {ms:8.2f} ms"
                f"   (anchor: {anchors[name]} ms){compare(ms, ref, want, runs)}"
            )


# -- 3. auth difference on large graphs ---------------------------------------------------------


def room_graph(
    n: int, seed: int, *, stale: bool
) -> tuple[CompleteNodes, list[set[str]], list[tuple[str, str, list[str]]]]:
    """A room-shaped auth DAG of ``n`` state events with two forks of 50 on top.

    Joins cite create/PL/join rules/own previous membership; PL changes (by one of five
    moderators) cite the previous PL and the sender; other state cites create/PL/sender.
    Roughly half the events are still in the state at the end. ``stale``: fork A's first
    event cites the room's first PL event instead of the current one.
    """
    rng = random.Random(seed)
    graph: dict[str, tuple[str, list[str]]] = {}
    order: list[str] = []

    def add(eid: str, key: str, auth: list[str]) -> str:
        graph[eid] = (key, auth)
        order.append(eid)
        return eid

    create = add("create", "create", [])
    st: dict[str, str] = {"create": create}
    st["m:u0"] = add("m0", "m:u0", [create])
    st["pl"] = add("pl0", "pl", [create, "m0"])
    first_pl = st["pl"]
    st["jr"] = add("jr0", "jr", [create, first_pl, "m0"])
    nusers = 1

    def step(eid: str, s: dict[str, str], stale_pl: bool = False) -> None:
        nonlocal nusers
        r = rng.random()
        pl = first_pl if stale_pl else s["pl"]
        if stale_pl or r >= 0.70:
            key = "stale" if stale_pl else "topic" if rng.random() < 0.5 else f"name{rng.randrange(4)}"
            sender = f"u{rng.randrange(nusers)}"
            s[key] = add(eid, key, [create, pl, s.get(f"m:{sender}", "m0")])
        elif r < 0.50:
            u = f"u{nusers}"
            nusers += 1
            s[f"m:{u}"] = add(eid, f"m:{u}", [create, pl, s["jr"]])
        elif r < 0.65:
            u = f"u{rng.randrange(nusers)}"
            auth = [create, pl, s["jr"]]
            if f"m:{u}" in s:
                auth.append(s[f"m:{u}"])
            s[f"m:{u}"] = add(eid, f"m:{u}", auth)
        else:
            mod = f"u{rng.randrange(min(5, nusers))}"
            s["pl"] = add(eid, "pl", [create, pl, s.get(f"m:{mod}", "m0")])

    i = 0
    while len(graph) < n - 100:
        step(f"c{i}", st)
        i += 1
    sa, sb = dict(st), dict(st)
    for j in range(50):
        step(f"a{j}", sa, stale_pl=(stale and j == 0))
        step(f"b{j}", sb)
    rank: dict[str, int] = {}
    for eid in order:
        rank[eid] = 1 + max((rank[a] for a in graph[eid][1]), default=0)
    nodes = CompleteNodes({e: (rank[e], tuple(graph[e][1])) for e in order})
    adds = [(e, graph[e][0], graph[e][1]) for e in order]
    return nodes, [set(sa.values()), set(sb.values())], adds


def bench_auth_difference(runs: int, sizes: list[int]) -> None:
    print()
    print("== Auth difference on room-shaped DAGs: two 50-event forks (spec §8.2) ==")
    print("   times in ms (median); ratio = method / full-chain set difference")
    for n in sizes:
        for stale in (False, True):
            nodes, inputs, adds = room_graph(n, seed=n, stale=stale)
            shape = "one fork cites an ancient PL" if stale else "recent forks"
            want = full_auth_difference(inputs, nodes)
            full_ms = median_ms(lambda: full_auth_difference(inputs, nodes), runs)
            common = inputs[0] & inputs[1]
            seeds = {e: 1 for e in inputs[0] - common}
            for e in inputs[1] - common:
                seeds[e] = seeds.get(e, 0) | 2

            def walk_prep() -> AuthDifferenceWalk:
                w = AuthDifferenceWalk(seeds, 2, common, nodes)
                w._start()
                return w

            prep_ms = median_ms(walk_prep, runs)
            walk_ms = median_ms(lambda w: w.run(), runs, setup=walk_prep)
            order = rank_order(nodes)  # kept per room like the ranks themselves

            def scan_walk() -> set[str]:
                w = AuthDifferenceWalk(seeds, 2, common, nodes, rank_order=order)
                res = w.run()
                probe_scan.append(w)
                return res

            probe_scan: list[AuthDifferenceWalk] = []
            scan_ms = median_ms(scan_walk, runs)
            assert scan_walk() == want
            ps = probe_scan[-1]
            probe = walk_prep()
            assert probe.run() == want
            # chain-cover index
            idx = ChainCoverIndex()
            add_times = []
            for e, key, auth in adds:
                t0 = time.perf_counter()
                idx.add(e, key, None, auth)
                add_times.append((time.perf_counter() - t0) * 1000)
            add_times.sort()
            p99 = add_times[int(len(add_times) * 0.99)]
            assert idx.difference(inputs) == want
            idx_ms = median_ms(lambda: idx.difference(inputs), runs)
            oracle_prep_ms = median_ms(lambda: idx.closure_oracle(common), runs)

            def oracle_walk(oracle: Callable[[str], bool]) -> set[str]:
                w = AuthDifferenceWalk(seeds, 2, common, nodes, mode="oracle", is_common=oracle)
                return w.run()

            assert oracle_walk(idx.closure_oracle(common)) == want
            oracle_ms = median_ms(oracle_walk, runs, setup=lambda: idx.closure_oracle(common))
            fb = " (closure fallback)" if probe.fallback else ""
            print(f"  {n // 1000:>4}k {shape:<30} |diff|={len(want):4d} state={len(inputs[0]):6d}")
            print(f"        full-chain set difference   {full_ms:9.2f} ms   1.000x")
            print(
                f"        walk, rank-order scan       {scan_ms:9.2f} ms   {scan_ms / full_ms:.4f}x"
                f"   pops={ps.pops} common_expanded={ps.common_expanded}"
                f"{' (closure fallback)' if ps.fallback else ''}"
            )
            print(
                f"        walk, heap over common      {walk_ms:9.2f} ms   {walk_ms / full_ms:.4f}x"
                f"   pops={probe.pops} common_expanded={probe.common_expanded}{fb}"
            )
            print(
                f"          + rank-ordering U, O(|U|) {prep_ms:9.2f} ms   {(walk_ms + prep_ms) / full_ms:.4f}x total"
            )
            print(
                f"        index: difference query     {idx_ms:9.2f} ms   {idx_ms / full_ms:.4f}x"
                f"   chains={len(idx.chains)} links={idx.link_count}"
            )
            print(f"        index: walk with oracle     {oracle_ms:9.2f} ms   {oracle_ms / full_ms:.4f}x")
            print(
                f"          + oracle prep, O(|U|)     {oracle_prep_ms:9.2f} ms   {(oracle_ms + oracle_prep_ms) / full_ms:.4f}x total"
            )
            print(f"        index maintenance p99       {p99:9.3f} ms per event")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="skip the 100k-event graphs")
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}; medians of {args.runs} runs; in-memory event source")
    bench_vectors(args.runs)
    bench_synthetic(args.runs)
    bench_auth_difference(args.runs, [10_000] if args.quick else [10_000, 100_000])


if __name__ == "__main__":
    main()
