"""``ContextResourceUsage``: the figures a context accounts (spec §1.1)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

_FIELDS: Final = (
    "ru_utime",
    "ru_stime",
    "db_txn_count",
    "db_txn_duration_sec",
    "db_sched_duration_sec",
    "evt_db_fetch_count",
)


class ContextResourceUsage:
    """CPU and database figures of a context, added field by field.

    ``ru_utime`` holds the CPU charged (user CPU in ``rusage`` mode, user +
    system in ``cpu`` mode, on-thread wall time in ``wall`` mode) and
    ``ru_stime`` the system CPU (``rusage`` mode only). Not locked itself:
    contexts guard theirs. Subtraction may go negative; feed differences to
    counters through :meth:`clamped`.

    >>> a = ContextResourceUsage(); a.db_txn_count = 2
    >>> (a + a).db_txn_count
    4
    """

    __slots__ = _FIELDS

    ru_utime: float
    ru_stime: float
    db_txn_count: int
    db_txn_duration_sec: float
    db_sched_duration_sec: float
    evt_db_fetch_count: int

    def __init__(self, copy_from: ContextResourceUsage | None = None) -> None:
        if copy_from is None:
            self.ru_utime = 0.0
            self.ru_stime = 0.0
            self.db_txn_count = 0
            self.db_txn_duration_sec = 0.0
            self.db_sched_duration_sec = 0.0
            self.evt_db_fetch_count = 0
        else:
            self.ru_utime = copy_from.ru_utime
            self.ru_stime = copy_from.ru_stime
            self.db_txn_count = copy_from.db_txn_count
            self.db_txn_duration_sec = copy_from.db_txn_duration_sec
            self.db_sched_duration_sec = copy_from.db_sched_duration_sec
            self.evt_db_fetch_count = copy_from.evt_db_fetch_count

    def copy(self) -> ContextResourceUsage:
        """A new object with the same figures."""
        return ContextResourceUsage(copy_from=self)

    def reset(self) -> None:
        """Set every field to zero."""
        self.__init__()  # type: ignore[misc]

    def __iadd__(self, other: ContextResourceUsage) -> ContextResourceUsage:
        if not isinstance(other, ContextResourceUsage):
            return NotImplemented
        self.ru_utime += other.ru_utime
        self.ru_stime += other.ru_stime
        self.db_txn_count += other.db_txn_count
        self.db_txn_duration_sec += other.db_txn_duration_sec
        self.db_sched_duration_sec += other.db_sched_duration_sec
        self.evt_db_fetch_count += other.evt_db_fetch_count
        return self

    def __isub__(self, other: ContextResourceUsage) -> ContextResourceUsage:
        if not isinstance(other, ContextResourceUsage):
            return NotImplemented
        self.ru_utime -= other.ru_utime
        self.ru_stime -= other.ru_stime
        self.db_txn_count -= other.db_txn_count
        self.db_txn_duration_sec -= other.db_txn_duration_sec
        self.db_sched_duration_sec -= other.db_sched_duration_sec
        self.evt_db_fetch_count -= other.evt_db_fetch_count
        return self

    def __add__(self, other: ContextResourceUsage) -> ContextResourceUsage:
        if not isinstance(other, ContextResourceUsage):
            return NotImplemented
        res = self.copy()
        res += other
        return res

    def __sub__(self, other: ContextResourceUsage) -> ContextResourceUsage:
        if not isinstance(other, ContextResourceUsage):
            return NotImplemented
        res = self.copy()
        res -= other
        return res

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextResourceUsage):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def clamped(self) -> ContextResourceUsage:
        """A copy with negative fields raised to zero (for counter increments)."""
        res = self.copy()
        for f in _FIELDS:
            if getattr(res, f) < 0:
                setattr(res, f, 0 if isinstance(getattr(res, f), int) else 0.0)
        return res

    def as_dict(self) -> dict[str, float | int]:
        """The figures keyed by field name."""
        return {f: getattr(self, f) for f in _FIELDS}

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS)
        return f"ContextResourceUsage({inner})"
