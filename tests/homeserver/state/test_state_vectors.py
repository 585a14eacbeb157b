"""Every conformance vector in ``shared/vectors/state-res``: results, errors and stages."""

from __future__ import annotations

from typing import Any

import pytest
from _state_vectors import LazySource, case_params, expected_of, inputs_of, load_cases, parse
from homeserver.state import (
    InMemoryEventSource,
    ResolutionStages,
    ResolveOptions,
    StateResolutionError,
    resolve_state,
    resolve_state_async,
    rules_for,
)
from homeserver.state.authdiff import (
    auth_difference,
    conflicted_subgraph,
    full_auth_difference,
    nodes_from_graph,
)


def _resolve(c: dict[str, Any], inputs: Any, *, build_index: bool = False, **opts: Any) -> Any:
    src = InMemoryEventSource.from_vector(c)
    if build_index:
        src.build_index()
    stages = ResolutionStages()
    result = resolve_state(
        c["room_version"],
        inputs,
        src,
        room_id=c["room_id"],
        options=ResolveOptions(**opts),
        stages=stages,
    )
    return result, stages


_VARIANTS: list[dict[str, Any]] = [
    {},
    {"reverse": True},
    {"reverse": True, "index": "chain", "build_index": True},
    {"walk_mode": "eager"},
]


def test_vector_files_are_all_there() -> None:
    """The suite sees every state-resolution case the README promises (161) and 28 graphs."""
    assert len(load_cases()) == 161
    assert len(load_cases("auth-graph.jsonl")) == 28


@pytest.mark.parametrize("line", case_params())
async def test_vector(line: str) -> None:
    """Expected state or error: both input orders, walk or index, lazy or eager, sync or async."""
    c = parse(line)
    await _check_async_source(c)
    if "stages" in c:
        _check_stages(c)
    for variant in _VARIANTS:
        opts = dict(variant)
        inputs = inputs_of(c)[::-1] if opts.pop("reverse", False) else inputs_of(c)
        if "expected_error" in c:
            with pytest.raises(StateResolutionError) as exc:
                _resolve(c, inputs, **opts)
            assert exc.value.category == c["expected_error"], variant
        else:
            result, stages = _resolve(c, inputs, **opts)
            assert result == expected_of(c), variant
            if "stages" in c:
                assert sorted(stages.auth_difference) == c["stages"]["auth_difference"], variant
                assert stages.method == ("chain" if "index" in opts else "walk")


def _check_stages(c: dict[str, Any]) -> None:
    """Difference (every method), subgraph, full set and both replay orders equal ``stages``."""
    stg = c["stages"]
    _, stages = _resolve(c, inputs_of(c))
    assert sorted(stages.conflicted) == stg["conflicted"]
    assert sorted(stages.auth_difference) == stg["auth_difference"]
    if "conflicted_subgraph" in stg:
        assert sorted(stages.conflicted_subgraph) == stg["conflicted_subgraph"]
    assert sorted(stages.full_conflicted_set) == stg["full_conflicted_set"]
    assert stages.power_order == stg["power_order"]
    assert stages.mainline_pl == stg["mainline_pl"]
    assert stages.mainline_order == stg["mainline_order"]

    src = InMemoryEventSource.from_vector(c)
    idx = src.build_index()
    sets = [[e for _, _, e in s] for s in c["state_sets"]]
    want = set(stg["auth_difference"])
    assert full_auth_difference(sets, src.nodes) == want
    assert auth_difference(sets, src.nodes, mode="lazy") == want
    assert auth_difference(sets, src.nodes, mode="eager") == want
    assert auth_difference(sets, src.nodes, mode="lazy", budget=-1) == want
    assert idx.difference(sets) == want
    common = set(sets[0]).intersection(*sets[1:])
    oracle = idx.closure_oracle(common)
    assert auth_difference(sets, src.nodes, mode="oracle", is_common=oracle) == want


async def _check_async_source(c: dict[str, Any]) -> None:
    """Over an async source that must be asked for events, the answer is the same."""
    src = LazySource(InMemoryEventSource.from_vector(c))
    rules = rules_for(c["room_version"])
    if "expected_error" in c:
        with pytest.raises(StateResolutionError) as exc:
            await resolve_state_async(c["room_id"], rules, inputs_of(c), src)
        assert exc.value.category == c["expected_error"]
    else:
        assert await resolve_state_async(c["room_id"], rules, inputs_of(c), src) == expected_of(c)


@pytest.mark.parametrize("line", case_params("auth-graph.jsonl"))
def test_auth_graph_case(line: str) -> None:
    """Pure-graph cases: the walk and the subgraph equal the exact definitions."""
    c = parse(line)
    nodes = nodes_from_graph(c["auth_events"])
    if "expected_auth_difference" in c:
        want = set(c["expected_auth_difference"])
        assert full_auth_difference(c["state_sets"], nodes) == want
        for mode in ("lazy", "eager"):
            assert auth_difference(c["state_sets"], nodes, mode=mode) == want
            assert auth_difference(c["state_sets"][::-1], nodes, mode=mode) == want
    else:
        assert conflicted_subgraph(c["conflicted"], nodes) == set(c["expected_conflicted_subgraph"])
