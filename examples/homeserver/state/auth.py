"""The state-dependent authorization rules for room versions 2–12 (spec §2).

`check_auth` returns on success and raises `AuthFailure(rule_id, reason)` on rejection;
malformed content raises a categorised `InvalidEventError` at the point it is read.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from typing import Any

from .errors import InvalidEventError, StateResolutionError
from .events import (
    ALIASES,
    CREATE,
    CREATE_KEY,
    JR_KEY,
    MEMBER,
    PDU,
    PL_KEY,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    StateKey,
    domain_of,
    to_level,
)
from .versions import MAX_POWER_LEVEL, RoomRules

__all__ = ["AuthFailure", "AuthMap", "auth_types", "check_auth", "user_level"]

AuthMap = Mapping[StateKey, PDU]

_TOP_LEVELS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")


class AuthFailure(Exception):
    """An event fails the auth rules; ``rule_id`` is the stable ID of spec §2 (R5, M6, P3 …)."""

    def __init__(self, rule_id: str, reason: str):
        super().__init__(f"{rule_id}: {reason}")
        self.rule_id = rule_id
        self.reason = reason


def auth_types(event: PDU, rules: RoomRules) -> list[StateKey]:
    """The state keys an event's auth map may draw from state (spec §2.6)."""
    if event.type == CREATE:
        return []
    types: list[StateKey] = [PL_KEY, (MEMBER, event.sender), CREATE_KEY]
    if event.type == MEMBER:
        m = event.membership()
        sk = event.state_key
        if m in ("join", "invite", "knock"):
            types.append(JR_KEY)
        if sk is not None:
            types.append((MEMBER, sk))
        content = event.content
        if m == "invite" and "third_party_invite" in content:
            try:
                token = content["third_party_invite"]["signed"]["token"]
                hash(token)
            except (KeyError, TypeError, IndexError):
                raise InvalidEventError(
                    f"{event.event_id}: third_party_invite has no usable signed.token",
                    event.event_id,
                    category="invalid_third_party_invite",
                ) from None
            types.append((THIRD_PARTY_INVITE, token))
        if rules.restricted_join and m == "join" and "join_authorised_via_users_server" in content:
            user = content["join_authorised_via_users_server"]
            if isinstance(user, list | dict):
                raise InvalidEventError(
                    f"{event.event_id}: join_authorised_via_users_server is {user!r}",
                    event.event_id,
                    category="invalid_member_content",
                )
            types.append((MEMBER, user))
    return types


def user_level(user: object, auth_map: AuthMap, rules: RoomRules) -> int:
    """The level of a user in the room described by ``auth_map`` (spec §2.1)."""
    create = auth_map.get(CREATE_KEY)
    if rules.creators_unbounded and create is not None and user in create.creators():
        return MAX_POWER_LEVEL
    pl = auth_map.get(PL_KEY)
    if pl is not None:
        if not isinstance(user, str):
            return 0
        return pl.power_levels().user_level(user)
    if create is not None and create.creator(rules) == user:
        return 100
    return 0


def _named(auth_map: AuthMap, name: str, default: int) -> int:
    pl = auth_map.get(PL_KEY)
    if pl is None:
        return default
    lv = pl.power_levels().named(name)
    return default if lv is None else lv


def _federates(create: PDU) -> bool:
    return create.content.get("m.federate", True) is True


def check_auth(event: PDU, auth_map: AuthMap, rules: RoomRules) -> None:
    """Apply the state-dependent auth rules; raise `AuthFailure` naming the failed rule."""
    etype = event.type
    if etype == CREATE:
        return  # R0
    create = auth_map.get(CREATE_KEY)
    if create is None:
        raise AuthFailure("R1", "no create event in the auth events")
    sender = event.sender
    eid = event.event_id
    if domain_of(sender, eid) != domain_of(create.sender, create.event_id) and not _federates(create):
        raise AuthFailure("R2", "the room is not federatable")
    if etype == ALIASES and rules.aliases_special_case:
        sk = event.state_key
        if not sk:
            raise AuthFailure("R3", "aliases event without a state key")
        if sk != domain_of(sender, eid):
            raise AuthFailure("R3", "aliases state key is not the sender's domain")
        return
    if etype == MEMBER:
        _check_membership(event, auth_map, rules, create)
        return
    member = auth_map.get((MEMBER, sender))
    if member is None or member.membership() != "join":
        raise AuthFailure("R5", f"{sender} is not joined")
    if etype == THIRD_PARTY_INVITE:
        if user_level(sender, auth_map, rules) < _named(auth_map, "invite", 0):
            raise AuthFailure("R6", "sender may not invite")
        return
    pl = auth_map.get(PL_KEY)
    sk = event.state_key
    if pl is not None:
        send_level = pl.power_levels().send_level(etype, sk is not None)
    else:
        send_level = 50 if sk is not None else 0
    if user_level(sender, auth_map, rules) < send_level:
        raise AuthFailure("R7", f"sender level below the send level {send_level} of {etype}")
    if sk is not None and sk.startswith("@") and sk != sender:
        raise AuthFailure("R8", "state key names another user")
    if etype == POWER_LEVELS:
        _check_power_levels(event, auth_map, rules, create)


# -- membership ---------------------------------------------------------------------------------


def _check_membership(event: PDU, auth_map: AuthMap, rules: RoomRules, create: PDU) -> None:
    m = event.membership()
    content = event.content
    sender = event.sender
    target = event.state_key
    eid = event.event_id
    prev = event.prev_event_ids
    # M1: the creator's first join.
    if m == "join" and len(prev) == 1 and prev[0] == create.event_id and create.creator(rules) == target:
        return
    # M2
    if domain_of(target, eid) != domain_of(create.sender, create.event_id) and not _federates(create):
        raise AuthFailure("M2", "the room is not federatable")
    caller = auth_map.get((MEMBER, sender))
    caller_m = caller.membership() if caller is not None else None
    caller_in_room = caller_m == "join"
    caller_invited = caller_m == "invite"
    caller_knocked = rules.knocking and caller_m == "knock"
    tgt = auth_map.get((MEMBER, target)) if target is not None else None
    tgt_m = tgt.membership() if tgt is not None else None
    target_in_room = tgt_m == "join"
    target_banned = tgt_m == "ban"
    jr = auth_map.get(JR_KEY)
    join_rule = jr.content.get("join_rule", "invite") if jr is not None else "invite"

    sender_level = user_level(sender, auth_map, rules)
    target_level = user_level(target, auth_map, rules)
    invite_level = _named(auth_map, "invite", 0)
    ban_level = _named(auth_map, "ban", 50)

    if m == "invite" and "third_party_invite" in content:
        if not _verify_third_party_invite(event, auth_map):
            raise AuthFailure("M3", "third-party invite does not verify")
        if target_banned:
            raise AuthFailure("M3", "target is banned")
        return
    if m != "join" and m != "knock":
        if (caller_invited or caller_knocked) and m == "leave" and target == sender:
            return
        if not caller_in_room:
            raise AuthFailure("M4", f"{sender} is not joined")
    if m == "invite":
        if target_banned:
            raise AuthFailure("M5", "target is banned")
        if target_in_room:
            raise AuthFailure("M5", "target is already joined")
        if sender_level < invite_level:
            raise AuthFailure("M5", "sender may not invite")
    elif m == "join":
        if sender != target:
            raise AuthFailure("M6", "cannot join another user")
        if target_banned:
            raise AuthFailure("M6", "sender is banned")
        if join_rule == "public":
            return
        if (rules.restricted_join and join_rule == "restricted") or (
            rules.knock_restricted_join and join_rule == "knock_restricted"
        ):
            if caller_in_room or caller_invited:
                return
            via = content.get("join_authorised_via_users_server")
            if via is None:
                raise AuthFailure("M6", "restricted join without an authorising user")
            via_member = auth_map.get((MEMBER, via))
            if via_member is None or via_member.membership() != "join":
                raise AuthFailure("M6", "authorising user is not joined")
            if user_level(via, auth_map, rules) < invite_level:
                raise AuthFailure("M6", "authorising user may not invite")
            return
        if join_rule == "invite" or (rules.knocking and join_rule == "knock"):
            if not caller_in_room and not caller_invited:
                raise AuthFailure("M6", "not invited")
            return
        raise AuthFailure("M6", f"join rule {join_rule!r} admits no join")
    elif m == "leave":
        if target_banned and sender_level < ban_level:
            raise AuthFailure("M7", "sender may not unban")
        if target != sender:
            kick_level = _named(auth_map, "kick", 50)
            if sender_level < kick_level or sender_level <= target_level:
                raise AuthFailure("M7", "sender may not kick the target")
    elif m == "ban":
        if sender_level < ban_level or sender_level <= target_level:
            raise AuthFailure("M8", "sender may not ban the target")
    elif rules.knocking and m == "knock":
        if join_rule != "knock" and not (rules.knock_restricted_join and join_rule == "knock_restricted"):
            raise AuthFailure("M9", "the join rule does not allow knocking")
        if target != sender:
            raise AuthFailure("M9", "cannot knock for another user")
        if target_in_room:
            raise AuthFailure("M9", "already joined")
        if caller_invited:
            raise AuthFailure("M9", "already invited")
        if target_banned:
            raise AuthFailure("M9", "banned")
    else:
        raise AuthFailure("M10", f"unknown membership {m!r}")


def _canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def _b64decode(s: str) -> bytes:
    s = s + "=" * (-len(s) % 4)
    if "-" in s or "_" in s:
        return base64.urlsafe_b64decode(s)
    return base64.b64decode(s, validate=True)


@functools.lru_cache(maxsize=4096)
def _ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # pragma: no cover - PyNaCl as the alternative
        try:
            import nacl.exceptions
            import nacl.signing
        except ImportError:
            raise StateResolutionError(
                "verifying third-party invites needs the 'cryptography' package",
                category="missing_dependency",
            ) from None
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _verify_third_party_invite(event: PDU, auth_map: AuthMap) -> bool:
    tpi = event.content.get("third_party_invite")
    if not isinstance(tpi, dict):
        return False
    signed = tpi.get("signed")
    if not isinstance(signed, dict):
        return False
    if not all(k in signed for k in ("mxid", "token", "signatures")):
        return False
    try:
        invite = auth_map.get((THIRD_PARTY_INVITE, signed["token"]))
    except TypeError:
        return False
    if invite is None or invite.sender != event.sender:
        return False
    if signed["mxid"] != event.state_key:
        return False
    keys: list[object] = []
    ic = invite.content
    if "public_key" in ic:
        keys.append(ic["public_key"])
    extra = ic.get("public_keys", [])
    if isinstance(extra, list):
        keys.extend(o.get("public_key") for o in extra if isinstance(o, dict))
    sigs = signed["signatures"]
    if not isinstance(sigs, dict):
        return False
    try:
        message = _canonical_json({k: v for k, v in signed.items() if k != "signatures" and k != "unsigned"})
    except (TypeError, ValueError):
        return False
    for key in keys:
        # Like the reference: per public key, the first ed25519 signature decides.
        try:
            pk = _b64decode(key) if isinstance(key, str) else None
        except ValueError:
            continue
        if pk is None:
            continue
        found = False
        for block in sigs.values():
            if not isinstance(block, dict):
                continue
            for name, sig in block.items():
                if not isinstance(name, str) or not name.startswith("ed25519:"):
                    continue
                found = True
                try:
                    ok = isinstance(sig, str) and _ed25519_verify(pk, _b64decode(sig), message)
                except ValueError:
                    ok = False
                if ok:
                    return True
                break
            if found:
                break
    return False


# -- power levels -------------------------------------------------------------------------------


def _bad_pl(event: PDU, msg: str) -> InvalidEventError:
    return InvalidEventError(f"{event.event_id}: {msg}", event.event_id, category="invalid_power_levels")


def _is_user_id(s: object) -> bool:
    return isinstance(s, str) and len(s) > 1 and s[0] == "@" and ":" in s


def _check_power_levels(event: PDU, auth_map: AuthMap, rules: RoomRules, create: PDU) -> None:
    content = event.content
    new_view = event.power_levels()
    users = content.get("users", {})
    if not isinstance(users, dict):
        raise _bad_pl(event, f"users is not an object: {users!r}")
    # P1: validation (malformed input, not an auth failure).
    for k, v in users.items():
        if not _is_user_id(k):
            raise _bad_pl(event, f"not a valid user ID: {k!r}")
        to_level(v, f"users[{k!r}]", event.event_id)
    if rules.integer_levels_only:
        for k, v in content.items():
            if k in _TOP_LEVELS and type(v) is not int:
                raise _bad_pl(event, f"{k} must be an integer, not {v!r}")
            if k in ("events", "notifications", "users") and (
                not isinstance(v, dict) or not all(type(x) is int for x in v.values())
            ):
                raise _bad_pl(event, f"{k} must be an object of integers")
    if rules.creators_unbounded:
        for c in create.creators():
            if c in users:
                raise _bad_pl(event, f"creator {c} must not appear in users")
    # P2
    old = auth_map.get(PL_KEY)
    if old is None:
        return
    old_view = old.power_levels()
    old_content = old.content
    level = user_level(event.sender, auth_map, rules)

    def check(
        section: str | None, key: str, old_raw: object, new_raw: object, has_old: bool, has_new: bool
    ) -> None:
        what = key if section is None else f"{section}[{key!r}]"
        old_lv = to_level(old_raw, what, old.event_id) if has_old else None
        new_lv = to_level(new_raw, what, event.event_id) if has_new else None
        if old_lv is not None and new_lv is not None and old_lv == new_lv:
            return
        if section == "users" and key != event.sender and old_lv == level:
            raise AuthFailure("P3", f"may not change {key}, whose level equals the sender's")
        if (old_lv is not None and old_lv > level) or (new_lv is not None and new_lv > level):
            raise AuthFailure("P3", f"may not change {what} above the sender's level")

    for name in _TOP_LEVELS:
        check(None, name, old_content.get(name), content.get(name), name in old_content, name in content)
    sections = ["users", "events"]
    if rules.notifications_levels:
        sections.append("notifications")
    for section in sections:
        o = old_view.section(section)
        n = new_view.section(section)
        if o is n:
            continue
        try:
            changed = {k for k, _ in o.items() ^ n.items()}
            fast = True
        except TypeError:  # unhashable values: compare every key
            changed = set(o) | set(n)
            fast = False
        if fast and not old_view.section_converts(section):
            # Equal raw values on both sides are skipped only if they convert (the reference
            # converts every present value of every compared key).
            for k in sorted(set(o).intersection(n).difference(changed), key=str):
                to_level(o[k], f"{section}[{k!r}]", old.event_id)
        for k in sorted(changed, key=str):
            check(section, k, o.get(k), n.get(k), k in o, k in n)
