"""Auth-difference walk and v2.1 subgraph against the exact definitions on random DAGs."""

from __future__ import annotations

from typing import Any

from homeserver.state.authdiff import (
    AuthDifferenceWalk,
    auth_difference,
    conflicted_subgraph,
    full_auth_difference,
    nodes_from_graph,
    rank_order,
    reach_closure,
)
from homeserver.state.chain_index import ChainCoverIndex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@st.composite
def dags(draw: Any) -> tuple[dict[str, list[str]], list[list[str]]]:
    """A random DAG (node i cites lower nodes), a few unknown IDs, and 2–4 inputs."""
    n = draw(st.integers(2, 30))
    graph: dict[str, list[str]] = {}
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        graph[f"e{i:02d}"] = [f"e{p:02d}" for p in parents]
    if draw(st.booleans()):
        graph[f"e{n - 1:02d}"].append("missing")  # an unknown auth event
    names = [*graph, "missing"]
    k = draw(st.integers(2, 4))
    shared = draw(st.lists(st.sampled_from(names), max_size=4))
    inputs = [shared + draw(st.lists(st.sampled_from(names), min_size=1, max_size=6)) for _ in range(k)]
    return graph, inputs


def _index(graph: dict[str, list[str]]) -> ChainCoverIndex:
    nodes = nodes_from_graph(graph)
    idx = ChainCoverIndex()
    for e in sorted(graph, key=lambda x: nodes[x][0]):  # type: ignore[index]
        # Few keys so that chains get longer than one event.
        idx.add(e, "t", str(int(e[1:]) % 3), graph[e])
    return idx


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_walk_equals_definition(data: tuple[dict[str, list[str]], list[list[str]]]) -> None:
    """Lazy, eager and oracle walks and the index query all equal ⋃D_i − ⋂D_i."""
    graph, inputs = data
    nodes = nodes_from_graph(graph)
    want = full_auth_difference(inputs, nodes)
    assert auth_difference(inputs, nodes, mode="lazy") == want
    assert auth_difference(inputs, nodes, mode="eager") == want
    assert auth_difference(inputs, nodes, mode="lazy", budget=-1) == want  # closure fallback
    order = rank_order(nodes)
    assert auth_difference(inputs, nodes, rank_order=order) == want  # scan instead of a heap
    assert auth_difference(inputs, nodes, rank_order=order, budget=-1) == want
    assert auth_difference(inputs[::-1], nodes, mode="lazy") == want
    common = set(inputs[0]).intersection(*inputs[1:])
    closure = reach_closure(common, nodes)
    assert auth_difference(inputs, nodes, mode="oracle", is_common=closure.__contains__) == want
    idx = _index(graph)
    assert auth_difference(inputs, nodes, mode="oracle", is_common=idx.closure_oracle(common)) == want
    assert idx.difference(inputs) == want


@settings(max_examples=300, deadline=None)
@given(dags())
def test_index_reachability_equals_closure(data: tuple[dict[str, list[str]], list[list[str]]]) -> None:
    """The chain-cover index answers reachability exactly like a graph search."""
    graph, _ = data
    nodes = nodes_from_graph(graph)
    idx = _index(graph)
    for a in graph:
        anc = reach_closure([a], nodes)
        for b in graph:
            assert idx.reaches(a, b) == (b in anc)


@settings(max_examples=300, deadline=None)
@given(dags())
def test_subgraph_equals_b_cap_f(data: tuple[dict[str, list[str]], list[list[str]]]) -> None:
    """The rank-bounded subgraph equals ancestors-or-self ∩ descendants-or-self of the conflicted."""
    graph, inputs = data
    nodes = nodes_from_graph(graph)
    conflicted = set().union(*inputs)
    b = reach_closure(conflicted, nodes)
    f = {e for e in graph if reach_closure([e], nodes) & conflicted} | conflicted
    assert conflicted_subgraph(conflicted, nodes) == b & f


def test_early_bail_minimal_dag() -> None:
    """The #7095 DAG: inputs {R, Cr} and {R, P, Cr} differ by {P} only (no early-bail extra A)."""
    graph = {"R": ["R1"], "R1": ["R2"], "R2": ["Q"], "Q": ["A"], "A": ["Cr"], "P": ["A"], "Cr": []}
    nodes = nodes_from_graph(graph)
    assert auth_difference([["R", "Cr"], ["R", "P", "Cr"]], nodes) == {"P"}


def test_in_flight_difference() -> None:
    """Spec §7.8: with A ← B persisted, in-flight C, D, E give the listed differences."""
    g1 = {"A": [], "B": ["A"], "C": ["B"]}
    assert auth_difference([["A", "B"], ["C"]], nodes_from_graph(g1)) == {"C"}
    g2 = {**g1, "D": ["C"]}
    assert auth_difference([["A", "B"], ["C", "D"]], nodes_from_graph(g2)) == {"C", "D"}
    g3 = {**g2, "E": ["C", "B"]}
    assert auth_difference([["A", "B", "E"], ["C", "D"]], nodes_from_graph(g3)) == {"D", "E"}


def test_walk_stops_early_on_converging_chains() -> None:
    """Two short forks on a 2,000-event chain: the walk pops only the forks and the fork point."""
    graph: dict[str, list[str]] = {f"c{i}": [f"c{i - 1}"] if i else [] for i in range(2000)}
    graph.update({"x1": ["c1999"], "x2": ["x1"], "y1": ["c1999"]})
    nodes = nodes_from_graph(graph)
    walk = AuthDifferenceWalk({"x2": 1, "y1": 2}, 2, {"c1999"}, nodes)
    assert walk.run() == {"x1", "x2", "y1"}
    assert walk.pops <= 4 and walk.common_expanded <= 1


def test_single_and_duplicate_inputs() -> None:
    """One input has no difference; adding a copy of an input changes nothing."""
    nodes = nodes_from_graph({"a": ["b"], "b": [], "c": ["b"]})
    assert auth_difference([["a"]], nodes) == set()
    assert auth_difference([["a"], ["c"], ["c"]], nodes) == auth_difference([["a"], ["c"]], nodes)
