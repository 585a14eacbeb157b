"""Matrix auth rules (room versions 2–12) and state resolution v2 / v2.1.

`resolve_state(room_version, state_sets, events)` resolves in memory and returns the
resolved state map; `resolve_state_async` does the same over an async `EventSource`.
"""

from ._instrument import set_log_thresholds
from ._metrics import (
    add_unindexed_source,
    install_state_metrics,
    pool_unindexed_source,
    uninstall_state_metrics,
)
from .auth import AuthFailure, auth_types, check_auth
from .authdiff import auth_difference, conflicted_subgraph, full_auth_difference
from .errors import (
    InvalidAuthGraph,
    InvalidEventError,
    MissingCreateError,
    StateResolutionError,
    UnknownEventError,
    UnsupportedRoomVersion,
    WrongRoomError,
)
from .events import PDU, StateKey, StateMap, pdu_from_dict
from .resolve import (
    EventSource,
    InMemoryEventSource,
    ResolutionStages,
    ResolveOptions,
    resolve_state,
    resolve_state_async,
)
from .versions import RoomRules, rules_for

__all__ = [
    "PDU",
    "AuthFailure",
    "EventSource",
    "InMemoryEventSource",
    "InvalidAuthGraph",
    "InvalidEventError",
    "MissingCreateError",
    "ResolutionStages",
    "ResolveOptions",
    "RoomRules",
    "StateKey",
    "StateMap",
    "StateResolutionError",
    "UnknownEventError",
    "UnsupportedRoomVersion",
    "WrongRoomError",
    "add_unindexed_source",
    "auth_difference",
    "auth_types",
    "check_auth",
    "conflicted_subgraph",
    "full_auth_difference",
    "install_state_metrics",
    "pdu_from_dict",
    "pool_unindexed_source",
    "resolve_state",
    "resolve_state_async",
    "rules_for",
    "set_log_thresholds",
    "uninstall_state_metrics",
]
