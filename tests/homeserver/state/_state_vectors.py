"""Helpers shared by the state tests: the vectors beside the repo, case lookup, labels."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from homeserver.state import PDU, InMemoryEventSource, StateKey

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
VECTORS = SHARED / "vectors" / "state-res"


@cache
def _lines(pattern: str) -> tuple[str, ...]:
    # Kept as strings (not tracked by the garbage collector, which runs after every test).
    files = sorted(VECTORS.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no vectors matching {pattern} in {VECTORS}")
    return tuple(line for path in files for line in path.read_text("utf-8").splitlines() if line.strip())


def load_cases(pattern: str = "v*.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(pattern)]


def case_params(pattern: str = "v*.jsonl", *, with_stages: bool = False) -> list[Any]:
    """One param per case: the raw JSON line (parse it with `parse`), id = the case name."""
    out = []
    for line in _lines(pattern):
        c = json.loads(line)
        if with_stages and "stages" not in c:
            continue
        out.append(pytest.param(line, id=c["name"]))
    return out


def parse(line: str) -> dict[str, Any]:
    return json.loads(line)  # type: ignore[no-any-return]


def case(name: str) -> dict[str, Any]:
    for line in _lines("v*.jsonl"):
        if f'"name": "{name}"' in line or f'"name":"{name}"' in line:
            c = parse(line)
            if c["name"] == name:
                return c
    raise KeyError(name)


def inputs_of(c: Mapping[str, Any]) -> list[dict[StateKey, str]]:
    return [{(t, k): e for t, k, e in s} for s in c["state_sets"]]


def expected_of(c: Mapping[str, Any]) -> dict[StateKey, str]:
    return {(t, k): e for t, k, e in c["expected"]}


def labelled(c: Mapping[str, Any], state: Mapping[StateKey, str]) -> set[str]:
    """The result as the case's human labels (unlabelled IDs as they are)."""
    labels = c.get("labels", {})
    return {labels.get(e, e) for e in state.values()}


class LazySource:
    """An async source that is not complete in memory: makes the resolver fetch in batches."""

    def __init__(self, inner: InMemoryEventSource, index: Any = None):
        self.inner = inner
        self.event_fetches = 0
        self.node_fetches = 0
        self._index = index

    async def get_events(self, ids: Collection[str]) -> Mapping[str, PDU]:
        self.event_fetches += 1
        return await self.inner.get_events(ids)

    async def get_auth_nodes(self, ids: Collection[str]) -> Mapping[str, tuple[int, tuple[str, ...]]]:
        self.node_fetches += 1
        return await self.inner.get_auth_nodes(ids)

    def chain_index(self) -> Any:
        return self._index
