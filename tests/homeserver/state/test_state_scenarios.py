"""The spec's named scenarios (§7), each as its own readable test, plus §7.8 unit checks."""

from __future__ import annotations

from typing import Any

import pytest
from _state_vectors import case, inputs_of
from homeserver.state import (
    PDU,
    AuthFailure,
    InMemoryEventSource,
    StateResolutionError,
    check_auth,
    resolve_state,
    rules_for,
)
from homeserver.state.resolve import _Ctx, _kahn, _sender_power


def outcome(name: str, *, reverse: bool = False) -> set[str]:
    """Resolve a vector case; return the resolved state as the case's labels."""
    c = case(name)
    inputs = inputs_of(c)[::-1] if reverse else inputs_of(c)
    result = resolve_state(
        c["room_version"], inputs, InMemoryEventSource.from_vector(c), room_id=c["room_id"]
    )
    labels = c.get("labels", {})
    return {labels.get(e, e) for e in result.values()}


def error_of(name: str) -> str:
    c = case(name)
    with pytest.raises(StateResolutionError) as exc:
        resolve_state(
            c["room_version"], inputs_of(c), InMemoryEventSource.from_vector(c), room_id=c["room_id"]
        )
    return exc.value.category


@pytest.mark.parametrize("v", ["v2", "v12"])
def test_ban_vs_power_levels_synapse(v: str) -> None:
    """Alice's PL, rejoin and ban sort first; Bob's PL, checked after his ban, fails."""
    assert {"PA", "MA", "MB"} <= outcome(f"{v}/synapse-v2/ban_vs_pl/at-END")


def test_join_rule_evasion() -> None:
    """A misspelled join_rule key counts as invite: Evelyn's uninvited join fails."""
    got = outcome("v2/synapse-v2/join_rule_evasion/at-END")
    assert "JR" in got and "ME" not in got


def test_offtopic_power_levels() -> None:
    """Charlie's self-demotion PC wins over the other fork."""
    assert "PC" in outcome("v2/synapse-v2/offtopic_pl/at-END")


def test_topic_reset() -> None:
    """Bob's topic is rechecked after his ban and fails: T1, MB, PA."""
    assert {"T1", "MB", "PA"} <= outcome("v2/synapse-v2/topic_reset/at-END")


def test_topic_two_merges() -> None:
    """At MZ1 the topic is T2; at END Alice's later T4 wins. PA2 both times."""
    assert {"PA2", "T2"} <= outcome("v2/synapse-v2/topic/at-MZ1")
    assert {"PA2", "T4"} <= outcome("v2/synapse-v2/topic/at-END")


def test_mainline_sort() -> None:
    """T4 meets the mainline at the older PA1 and replays before T3: T3 wins despite its timestamp."""
    assert {"T3", "PA2"} <= outcome("v2/synapse-v2/mainline_sort/at-END")


def test_msc4297_problem_b_is_fixed_in_v12() -> None:
    """v11 resets to PL1 and me2; v12's conflicted subgraph keeps PL3, me1 and Zara."""
    assert {"p1", "me2"} <= outcome("v11/msc4297/problem-b-subgraph")
    got = outcome("v12/msc4297/problem-b-subgraph")
    assert {"p3", "me1", "mz"} <= got and "p1" not in got


def test_msc4297_problem_a_empty_start() -> None:
    """v11 loses the join rules entirely; v12 (empty start) keeps JR2."""
    assert not {"jr1", "jr2"} & outcome("v11/msc4297/problem-a-empty-start")
    assert "jr2" in outcome("v12/msc4297/problem-a-empty-start")


def test_ruma_topic_vs_ban() -> None:
    """Alice bans Bob while Bob sets a topic: the ban and the common topic stay."""
    assert {"BAN_BOB", "TOPIC0"} <= outcome("v10/ruma/topic-vs-ban")


def test_origin_server_ts_tiebreak() -> None:
    """Parallel join-rule changes by Alice: the later timestamp wins, not the smaller ID."""
    assert "JR_PUBLIC" in outcome("v10/ruma/origin-server-ts-tiebreak")


def test_power_sort_sender_level() -> None:
    """Higher power sorts first, so the mod's (lower-powered) join rules land last and win."""
    assert "JR_BOB" in outcome("v3/edge/power-sort-sender-level")


def test_pl_equal_level_rule() -> None:
    """A mod may not lower a user whose level equals the mod's own: the admin's PL wins."""
    assert "PL_ALICE" in outcome("v6/edge/pl-equal-level-rule")


def test_unban_needs_kick_level() -> None:
    """An unban needs both ban and kick levels: Evelyn stays banned, the demotion stands."""
    assert {"BAN_EVE", "PL_DEMOTE"} <= outcome("v9/edge/unban-needs-kick-level")


def test_creator_rules_by_version() -> None:
    """v10 reads content.creator (Bob's JR wins); v11 uses the create sender (Alice's JR)."""
    assert "JR_B" in outcome("v10/edge/creator-field-differs-from-sender")
    assert "JR_A" in outcome("v11/edge/creator-is-create-sender")


def test_additional_creator_power() -> None:
    """v12: an additional creator outranks the mod; the mod's PL edit fails."""
    assert "BAN_D" in outcome("v12/edge/additional-creator-power")


def test_aliases_special_case_until_v5() -> None:
    """A non-member's aliases event is kept in v5 (special case) and rejected from v6."""
    assert "ALIASES" in outcome("v5/edge/aliases-from-non-member")
    assert "ALIASES" not in outcome("v6/edge/aliases-from-non-member")


def test_stringy_power_levels_follow_python_int() -> None:
    """ "+50", "0050", "5_0" and 50.9 reach the state level; " 49 " (49) does not."""
    got = outcome("v3/edge/stringy-power-levels")
    assert "T_BOB" in got


def test_third_party_invite_vs_ban() -> None:
    """The signed 3PID invite and join lose to the ban."""
    got = outcome("v2/edge/third-party-invite-vs-ban")
    assert "BAN_C" in got and "JOIN_C" not in got


@pytest.mark.parametrize("v", ["v2", "v10"])
def test_early_bail_trap(v: str) -> None:
    """An early-stopping walk would replay the old PL1 and keep Bob's topic; the exact one keeps T_Q."""
    assert "T_Q" in outcome(f"{v}/edge/early-bail-trap")
    assert "T_Q" in outcome(f"{v}/edge/early-bail-trap", reverse=True)


def test_early_bail_trap_v12_counts_own_events() -> None:
    """v12 starts empty; with the reference's chain convention Bob's topic T_P is kept."""
    assert "T_P" in outcome("v12/edge/early-bail-trap")


def test_rejected_events() -> None:
    """A rejected conflicted topic never wins; a rejected unconflicted one is still copied."""
    assert "T1" in outcome("v4/edge/rejected-conflicted-event")
    assert "T2" in outcome("v4/edge/rejected-unconflicted-event")


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("v2/malformed/pl-users-value-not-a-number", "invalid_power_levels"),
        ("v3/malformed/member-without-membership", "invalid_membership"),
        ("v11/malformed/member-without-membership-rejected", "invalid_membership"),
        ("v4/malformed/power-event-without-create", "missing_create"),
        ("v6/malformed/non-state-event-as-state", "invalid_event"),
        ("v7/malformed/event-from-another-room", "wrong_room"),
        ("v8/malformed/third-party-invite-without-signed", "invalid_third_party_invite"),
        ("v9/malformed/join-authoriser-not-a-string", "invalid_member_content"),
        ("v10/malformed/unknown-unconflicted-power-levels", "unknown_event"),
        ("v12/malformed/pl-lists-creator", "invalid_power_levels"),
    ],
)
def test_malformed_inputs_raise_their_category(name: str, category: str) -> None:
    """Malformed inputs fail with the category the reference gives, never a bare exception."""
    assert error_of(name) == category


def test_malformed_but_never_read() -> None:
    """A stringy level in an unconflicted v10 PL is read, not validated; v12 skips the unknown PL."""
    assert "T_A" in outcome("v10/malformed/pl-string-level-unconflicted")
    assert "T2" in outcome("v12/malformed/unknown-unconflicted-power-levels")


# -- §7.8 unit checks ----------------------------------------------------------------------------


def test_kahn_order() -> None:
    """Graph l→o, m→{n,o}, n→o, p→o with the name as key sorts o, l, n, m, p."""
    graph = {"l": {"o"}, "m": {"n", "o"}, "n": {"o"}, "o": set(), "p": {"o"}}
    assert _kahn(graph, lambda n: (0, 0, n)) == ["o", "l", "n", "m", "p"]


def _pdu(
    eid: str,
    etype: str,
    sender: str,
    content: dict[str, Any],
    auth: tuple[str, ...] = (),
    sk: str | None = "",
) -> PDU:
    return PDU(eid, "!r:x", etype, sk, sender, content, 0, auth)


@pytest.mark.parametrize("version", ["10", "11"])
def test_sender_power_by_version(version: str) -> None:
    """PL {Alice 100, Bob 50, users_default 10}; without a PL the creator (per version) has 100."""
    rules = rules_for(version)
    create = _pdu("$c", "m.room.create", "@alice:x", {"creator": "@bob:x"})
    pl = _pdu(
        "$pl",
        "m.room.power_levels",
        "@alice:x",
        {"users": {"@alice:x": 100, "@bob:x": 50}, "users_default": 10},
        ("$c",),
    )
    evs = {e.event_id: e for e in (create, pl)}
    ctx = _Ctx("!r:x", evs, {}, complete=True)  # type: ignore[arg-type]
    for who, want in (("@alice:x", 100), ("@bob:x", 50), ("@charlie:x", 10)):
        assert _sender_power(ctx, _pdu("$t", "m.room.topic", who, {}, ("$c", "$pl")), rules) == want
    creator = "@bob:x" if version == "10" else "@alice:x"
    other = "@alice:x" if version == "10" else "@bob:x"
    assert _sender_power(ctx, _pdu("$t", "m.room.topic", creator, {}, ("$c",)), rules) == 100
    assert _sender_power(ctx, _pdu("$t", "m.room.topic", other, {}, ("$c",)), rules) == 0


def test_auth_failure_names_the_rule() -> None:
    """A topic from a non-member fails R5; one below the state level fails R7."""
    rules = rules_for("10")
    create = _pdu("$c", "m.room.create", "@alice:x", {})
    pl = _pdu("$pl", "m.room.power_levels", "@alice:x", {"users": {"@alice:x": 100}})
    bob = _pdu("$mb", "m.room.member", "@bob:x", {"membership": "join"}, sk="@bob:x")
    topic = _pdu("$t", "m.room.topic", "@bob:x", {"topic": "hi"})
    auth = {("m.room.create", ""): create, ("m.room.power_levels", ""): pl}
    with pytest.raises(AuthFailure) as exc:
        check_auth(topic, auth, rules)
    assert exc.value.rule_id == "R5"
    with pytest.raises(AuthFailure) as exc:
        check_auth(topic, {**auth, ("m.room.member", "@bob:x"): bob}, rules)
    assert exc.value.rule_id == "R7"


def test_empty_and_single_inputs() -> None:
    """No input resolves to {}; one input is returned as a new dict equal to it."""
    assert resolve_state("10", [], []) == {}
    only = {("m.room.create", ""): "$c"}
    got = resolve_state("10", [only], [])
    assert got == only and got is not only


async def test_async_resolution_yields_to_the_loop() -> None:
    """A long resolution over an async source lets other tasks run while it works."""
    import asyncio

    from _state_vectors import LazySource
    from homeserver.state import resolve_state_async

    c = case("v6/random/room300-3way-s1035")
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    src = LazySource(InMemoryEventSource.from_vector(c))
    try:
        await resolve_state_async(c["room_id"], rules_for(c["room_version"]), inputs_of(c), src)
    finally:
        done = True
        await task
    assert ticks > 3
    assert src.event_fetches > 0


def test_resolve_options_are_validated() -> None:
    """Unknown option values are refused when the options are made, not ignored later."""
    from homeserver.state import ResolveOptions

    with pytest.raises(ValueError, match="index"):
        ResolveOptions(index="fast")
    with pytest.raises(ValueError, match="walk_mode"):
        ResolveOptions(walk_mode="greedy")
