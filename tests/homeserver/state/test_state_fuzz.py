"""Malformed events and state sets give a categorised error, never a crash (hypothesis fuzz)."""

from __future__ import annotations

import copy
from typing import Any

from _state_vectors import case
from homeserver.commands.resolve_state import resolve_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_BASES = [
    "v2/synapse-v2/ban_vs_pl/at-END",
    "v8/edge/third-party-invite-bad-signature",
    "v10/ruma/topic-vs-power-levels",
    "v12/edge/additional-creator-power",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

_FIELDS = [
    "type",
    "sender",
    "state_key",
    "content",
    "origin_server_ts",
    "room_id",
    "auth_events",
    "prev_events",
    "event_id",
]
_CONTENT_KEYS = [
    "membership",
    "users",
    "users_default",
    "state_default",
    "events",
    "ban",
    "kick",
    "invite",
    "join_rule",
    "creator",
    "m.federate",
    "third_party_invite",
    "join_authorised_via_users_server",
    "additional_creators",
    "notifications",
]


@st.composite
def mutated_cases(draw: Any) -> dict[str, Any]:
    c = copy.deepcopy(case(draw(st.sampled_from(_BASES))))
    c.pop("expected", None)
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["field", "content", "drop", "state", "auth_ref", "version"]))
        ev = draw(st.sampled_from(c["events"]))
        if what == "field":
            ev[draw(st.sampled_from(_FIELDS))] = draw(json_values)
        elif what == "content" and isinstance(ev.get("content"), dict):
            ev["content"][draw(st.sampled_from(_CONTENT_KEYS))] = draw(json_values)
        elif what == "drop":
            c["events"].remove(ev)
        elif what == "state":
            s = draw(st.sampled_from(c["state_sets"]))
            s.append(
                draw(st.lists(json_values, max_size=4))
                if draw(st.booleans())
                else [
                    "m.room.topic",
                    "",
                    draw(st.sampled_from([e.get("event_id") for e in c["events"]] + ["$nope"])),
                ]
            )
        elif what == "auth_ref" and isinstance(ev.get("auth_events"), list):
            other = draw(st.sampled_from(c["events"])).get("event_id")
            ev["auth_events"].append([other, {}] if c["room_version"] == "2" else other)
        elif what == "version":
            c["room_version"] = draw(st.sampled_from(["1", "13", 2, None, "12", "6"]))
    return c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cases())
def test_mutated_cases_never_crash(c: dict[str, Any]) -> None:
    """Any mutation either resolves or yields ``category: reason``; no other exception escapes."""
    out = resolve_case(c)
    assert out["name"] == c["name"]
    if "error" in out:
        category, _, reason = out["error"].partition(": ")
        assert category and reason and " " not in category
    else:
        assert all(len(t) == 3 for t in out["resolved"])


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, max_size=3) | json_values)
def test_malformed_state_sets(raw: Any) -> None:
    """State sets of the wrong shape are reported as ``invalid_input`` (or resolve if well-formed)."""
    c = copy.deepcopy(case(_BASES[0]))
    c["state_sets"] = raw
    out = resolve_case(c)
    assert "resolved" in out or out["error"].startswith(
        ("invalid_input: ", "unknown_event: ", "invalid_event: ")
    )


def test_auth_cycle_is_refused() -> None:
    """v2 events whose auth events form a cycle fail with ``auth_cycle``."""
    c = copy.deepcopy(case(_BASES[0]))
    first = c["events"][0]
    first["auth_events"] = [[c["events"][-1]["event_id"], {}]]
    out = resolve_case(c)
    assert out["error"].startswith("auth_cycle: ")


def test_unsupported_room_version() -> None:
    """Room version 1 (state resolution v1) is refused before anything else."""
    c = copy.deepcopy(case(_BASES[0]))
    c["room_version"] = "1"
    assert resolve_case(c)["error"].startswith("unsupported_room_version: ")
