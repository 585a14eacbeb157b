"""Per-thread CPU ledger and the checkpoint (spec §2.1).

Each OS thread has one :class:`Ledger`, created at its first checkpoint and
never shared. ``checkpoint(new)`` charges the clock's advance since the last
checkpoint to the context charged until now (the sentinel's share is booked
as *unattributed*) and makes ``new`` the charged context; when ``new`` is
already charged it returns without reading the clock.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from . import clock as _clock
from ._sentinel import SENTINEL_CONTEXT

if TYPE_CHECKING:
    from ._context import LoggingContext

__all__ = ["Ledger", "checkpoint", "get_ledger", "in_progress", "ledger_stats", "stats"]

_SENTINEL = SENTINEL_CONTEXT
_POOL_SUFFIX = re.compile(r"(?:[-_]\d+)+$")


class _Stats:
    """Process-wide counters exported as metrics."""

    __slots__ = ("clock_regressions", "late_cpu_ns")

    def __init__(self) -> None:
        self.late_cpu_ns = 0
        self.clock_regressions = 0


stats = _Stats()

_fold_lock = threading.Lock()
#: thread label -> [attributed_ns, unattributed_ns] of exited threads.
_exited: dict[str, list[int]] = {}
_live: dict[int, Ledger] = {}  # id(ledger) -> ledger (weak semantics via __del__)


def thread_label(name: str) -> str:
    """Thread name with trailing ``[-_]<digits>`` groups removed (pools collapse)."""
    return _POOL_SUFFIX.sub("", name) or name


class Ledger:
    """One thread's accounting state (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "attributed_ns",
        "charged",
        "depth",
        "last_s",
        "last_u",
        "mode_generation",
        "thread_label",
        "unattributed_ns",
    )

    charged: LoggingContext | Any

    def __init__(self) -> None:
        self.charged = _SENTINEL
        self.depth = 0
        self.unattributed_ns = 0
        self.attributed_ns = 0
        self.thread_label = thread_label(threading.current_thread().name)
        self.mode_generation = _clock._generation
        r = _clock._reader()
        self.last_u, self.last_s = r if r is not None else (0, 0)
        with _fold_lock:
            _live[id(self)] = self

    def __del__(self) -> None:
        try:
            with _fold_lock:
                _live.pop(id(self), None)
                acc = _exited.setdefault(self.thread_label, [0, 0])
                acc[0] += self.attributed_ns
                acc[1] += self.unattributed_ns
        except Exception:  # interpreter shutdown
            pass


class _Local(threading.local):
    ledger: Ledger


_local = _Local()


def get_ledger() -> Ledger:
    """The calling thread's ledger (created on first use)."""
    try:
        return _local.ledger
    except AttributeError:
        led = _local.ledger = Ledger()
        return led


_log = logging.getLogger("logcontext.clock")
_warned_regression = False


def _regression(du: int, ds: int) -> tuple[int, int]:
    global _warned_regression
    stats.clock_regressions += 1
    if not _warned_regression:
        _warned_regression = True
        _log.warning("clock went backwards by (%d ns, %d ns); clamped to 0", du, ds)
    return max(du, 0), max(ds, 0)


def checkpoint(new: Any) -> None:
    """Charge the interval since the last checkpoint and make ``new`` charged."""
    try:
        led = _local.ledger
    except AttributeError:
        led = _local.ledger = Ledger()
    old = led.charged
    if new is old:
        return
    led.charged = new
    r = _clock._reader()
    if r is None:
        return
    u, s = r
    if led.mode_generation != _clock._generation:
        led.mode_generation = _clock._generation
        led.last_u = u
        led.last_s = s
        return
    du = u - led.last_u
    ds = s - led.last_s
    led.last_u = u
    led.last_s = s
    if du < 0 or ds < 0:
        du, ds = _regression(du, ds)
    if old is _SENTINEL:
        led.unattributed_ns += du + ds
    else:
        led.attributed_ns += du + ds
        old._charge_ns(du, ds)


def in_progress(ctx: Any) -> tuple[int, int] | None:
    """The not-yet-charged slice of this thread if it is charging ``ctx`` or a descendant."""
    try:
        led = _local.ledger
    except AttributeError:
        return None
    ch = led.charged
    if ch is _SENTINEL or (ch is not ctx and ctx not in ch._ancestors):
        return None
    if led.mode_generation != _clock._generation:
        return None
    r = _clock._reader()
    if r is None:
        return None
    return max(r[0] - led.last_u, 0), max(r[1] - led.last_s, 0)


def ledger_stats() -> list[tuple[str, int, int]]:
    """``(thread label, attributed_ns, unattributed_ns)``, exited threads folded in.

    Values are read without stopping the threads: a thread's figures are as of
    its last checkpoint.
    """
    with _fold_lock:
        acc = {k: list(v) for k, v in _exited.items()}
        for led in list(_live.values()):
            a = acc.setdefault(led.thread_label, [0, 0])
            a[0] += led.attributed_ns
            a[1] += led.unattributed_ns
    return sorted((k, v[0], v[1]) for k, v in acc.items())


def _after_fork_in_child() -> None:
    global _local, _fold_lock
    _fold_lock = threading.Lock()
    _live.clear()
    _local = _Local()
    from ._context import current_context

    led = get_ledger()
    led.charged = current_context()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
