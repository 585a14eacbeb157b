"""The stream abstraction (spec §3.1) and the row types of our streams (§3.2).

A :class:`Stream` couples a name, a strict row parser and an
``update_function(instance, from_token, upto_token, target_rows)`` returning
``(updates, new_upto, limited)``.  :meth:`Stream.get_updates_since` wraps it and
checks the contract at run time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_TARGET_ROWS",
    "Row",
    "Stream",
    "Update",
    "UpdateFunction",
    "UpdateFunctionContractError",
    "check_updates",
    "parse_device_row",
    "parse_event_row",
    "parse_typing_row",
    "token_groups",
]

DEFAULT_TARGET_ROWS = 100

Row = list[Any]
Update = tuple[int, Row]
UpdateResult = tuple[list[Update], int, bool]
UpdateFunction = Callable[[str, int, int, int], Awaitable[UpdateResult]]


class UpdateFunctionContractError(AssertionError):
    """An ``update_function`` broke its contract (order, bounds, whole tokens, progress)."""


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_opt_str(x: Any) -> bool:
    return x is None or isinstance(x, str)


def _is_bool(x: Any) -> bool:
    return isinstance(x, bool)


def parse_event_row(row: Any) -> Row:
    """``["ev", [9 fields]]`` or ``["state", [room_id, type, state_key, event_id|null]]``."""
    if not isinstance(row, list) or len(row) != 2 or not isinstance(row[1], list):
        raise ValueError("events row must be [kind, [fields]]")
    kind, data = row
    if kind == "ev":
        if len(data) != 9:
            raise ValueError("events 'ev' row needs 9 fields")
        eid, room, typ, skey, redacts, relates, membership, rejected, outlier = data
        if not (_is_str(eid) and _is_str(room) and _is_str(typ)):
            raise ValueError("events 'ev' row: event_id, room_id, type must be strings")
        if not (_is_opt_str(skey) and _is_opt_str(redacts) and _is_opt_str(relates)):
            raise ValueError("events 'ev' row: state_key, redacts, relates_to must be str|null")
        if not (_is_opt_str(membership) and _is_bool(rejected) and _is_bool(outlier)):
            raise ValueError("events 'ev' row: bad membership/rejected/outlier")
        return row
    if kind == "state":
        if len(data) != 4 or not all(_is_str(x) for x in data[:3]) or not _is_opt_str(data[3]):
            raise ValueError("events 'state' row must be [room_id, type, state_key, event_id|null]")
        return row
    raise ValueError(f"unknown events row kind {kind!r}")


def parse_device_row(row: Any) -> Row:
    """``[entity]``: a user ID (``@…``) or a destination server name."""
    if not isinstance(row, list) or len(row) != 1 or not _is_str(row[0]) or not row[0]:
        raise ValueError("device_lists row must be [entity]")
    return row


def parse_typing_row(row: Any) -> Row:
    """``[room_id, [user_id, …]]``: the complete list of users typing in the room."""
    if (
        not isinstance(row, list)
        or len(row) != 2
        or not _is_str(row[0])
        or not isinstance(row[1], list)
        or not all(_is_str(u) for u in row[1])
    ):
        raise ValueError("typing row must be [room_id, [user_id, ...]]")
    return row


def token_groups(updates: Sequence[Update]) -> list[tuple[int, list[Row]]]:
    """Split sorted updates into ``(token, rows)`` groups, in order."""
    groups: list[tuple[int, list[Row]]] = []
    for token, row in updates:
        if groups and groups[-1][0] == token:
            groups[-1][1].append(row)
        else:
            groups.append((token, [row]))
    return groups


def check_updates(name: str, from_token: int, upto_token: int, result: UpdateResult) -> None:
    """Check the cheap parts of the ``update_function`` contract (§3.1).

    Raises :class:`UpdateFunctionContractError` on unsorted or out-of-range
    tokens, a wrong ``new_upto`` or a limited page without progress.
    """
    updates, new_upto, limited = result
    if limited and new_upto >= upto_token:
        raise UpdateFunctionContractError(f"{name}: limited but new_upto {new_upto} >= {upto_token}")
    if not limited and new_upto != upto_token:
        raise UpdateFunctionContractError(f"{name}: not limited but new_upto {new_upto}")
    if limited and new_upto <= from_token:
        raise UpdateFunctionContractError(f"{name}: limited without progress at {from_token}")
    prev = from_token
    for token, _row in updates:
        if token < prev or token <= from_token:
            raise UpdateFunctionContractError(f"{name}: unsorted or out-of-range token {token}")
        if token > new_upto:
            raise UpdateFunctionContractError(f"{name}: token {token} above new_upto {new_upto}")
        prev = token


@dataclass(eq=False)
class Stream:
    """One replication stream as this process sees it.

    ``current_token(instance)`` is the writer's generator token on the writer;
    readers keep their own ``cur`` in the command handler.  ``last_token`` is the
    writer-side streamer position (§2.6).
    """

    name: str
    parse_row: Callable[[Any], Row]
    update_function: UpdateFunction
    current_token: Callable[[str], int]
    resettable: bool = False
    one_row_per_token: bool = False
    source: str = "db"  # "db" or "http": where readers catch up from
    trace_carrier: Callable[[int], dict[str, str] | None] | None = None
    check_contract: bool = True
    check_whole_tokens: bool = False

    async def get_updates_since(
        self, instance: str, from_token: int, upto_token: int, target_rows: int = DEFAULT_TARGET_ROWS
    ) -> UpdateResult:
        """Call ``update_function`` and check its contract (§3.1).

        With ``check_whole_tokens`` a limited page of a multi-row stream is
        verified not to end mid-token by re-reading its last token (one extra
        query per page; tests turn it on).
        """
        if from_token >= upto_token:
            return [], upto_token, False
        result = await self.update_function(instance, from_token, upto_token, target_rows)
        if self.check_contract:
            check_updates(self.name, from_token, upto_token, result)
        updates, new_upto, limited = result
        if self.check_whole_tokens and limited and updates and not self.one_row_per_token:
            last = updates[-1][0]
            if last == new_upto:
                whole, _, _ = await self.update_function(instance, last - 1, last, 1 << 30)
                have = sum(1 for t, _ in updates if t == last)
                if len(whole) != have:
                    raise UpdateFunctionContractError(
                        f"{self.name}: page ends mid-token {last} ({have} of {len(whole)} rows)"
                    )
        return result
