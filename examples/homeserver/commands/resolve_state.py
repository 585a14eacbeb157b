"""``python -m homeserver resolve-state FILE``: resolve JSON-lines cases (vector format).

Prints one JSON line per case: ``{"name": ..., "resolved": [[type, state_key, event_id], ...]}``
(sorted by type and state key) or ``{"name": ..., "error": "<category>: <reason>"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["add_arguments", "resolve_case", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON-lines cases ('-' for standard input)")
    parser.add_argument(
        "--index",
        choices=("auto", "walk", "chain"),
        default="auto",
        help="auth-difference method: the walk, the chain-cover index, or by room size",
    )
    parser.add_argument(
        "--reverse", action="store_true", help="reverse the order of the state sets (a check)"
    )


def _state_sets(raw: object) -> list[dict[tuple[str, str], str]]:
    from homeserver.state import InvalidEventError

    if not isinstance(raw, list):
        raise InvalidEventError("state_sets is not a list", category="invalid_input")
    out = []
    for i, s in enumerate(raw):
        if not isinstance(s, list):
            raise InvalidEventError(f"state set {i} is not a list", category="invalid_input")
        m: dict[tuple[str, str], str] = {}
        for entry in s:
            if not isinstance(entry, list) or len(entry) != 3 or not all(isinstance(x, str) for x in entry):
                raise InvalidEventError(
                    f"state set {i}: entry {entry!r} is not [type, state_key, event_id]",
                    category="invalid_input",
                )
            m[(entry[0], entry[1])] = entry[2]
        out.append(m)
    return out


def resolve_case(case: Mapping[str, Any], *, index: str = "auto", reverse: bool = False) -> dict[str, Any]:
    """Resolve one case; return the output record (``resolved`` or ``error``)."""
    from homeserver.state import (
        InMemoryEventSource,
        InvalidEventError,
        ResolveOptions,
        StateResolutionError,
        resolve_state,
        rules_for,
    )

    name = case.get("name") if isinstance(case, Mapping) else None
    try:
        if not isinstance(case, Mapping):
            raise InvalidEventError("a case must be a JSON object", category="invalid_input")
        rules = rules_for(case.get("room_version"))
        events = case.get("events", [])
        if not isinstance(events, list):
            raise InvalidEventError("events is not a list", category="invalid_input")
        rejected = case.get("rejected") or {}
        if not isinstance(rejected, dict):
            raise InvalidEventError("rejected is not an object", category="invalid_input")
        room_id = case.get("room_id")
        if room_id is not None and not isinstance(room_id, str):
            raise InvalidEventError("room_id is not a string", category="invalid_input")
        inputs = _state_sets(case.get("state_sets"))
        if reverse:
            inputs.reverse()
        source = InMemoryEventSource.from_dicts(rules, events, rejected)
        if index == "chain":
            source.build_index()
        result = resolve_state(rules, inputs, source, room_id=room_id, options=ResolveOptions(index=index))
    except StateResolutionError as e:
        return {"name": name, "error": f"{e.category}: {e.message}"}
    return {"name": name, "resolved": [[t, k, v] for (t, k), v in sorted(result.items())]}


def _lines(path: str) -> Iterable[str]:
    if path == "-":
        yield from sys.stdin
    else:
        with open(path, encoding="utf-8") as f:
            yield from f


def run(args: argparse.Namespace) -> int:
    """Resolve every case of the file; exit 0 (errors of cases are output, not failures)."""
    try:
        lines = list(_lines(args.file))
    except OSError as e:
        print(f"resolve-state: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    out = sys.stdout
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError as e:
            record: dict[str, Any] = {"name": None, "error": f"invalid_input: line {lineno}: {e}"}
        else:
            record = resolve_case(case, index=args.index, reverse=args.reverse)
        try:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        except BrokenPipeError:  # the reader went away (e.g. `| head`)
            return 1
    out.flush()
    return 0
