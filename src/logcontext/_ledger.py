"""Per-thread CPU ledger and the checkpoint (spec §2.1, §2.4).

Each OS thread has one :class:`Ledger`, created at its first checkpoint and
never shared. ``checkpoint(new)`` charges the clock's advance since the last
checkpoint to the context charged until now (the sentinel's share is booked
as *unattributed*) and makes ``new`` the charged context; when ``new`` is
already charged it returns without reading the clock.

Step modes ``exact`` and ``lazy`` read the configured clock at each switch.
``sampled`` (``cpu``/``rusage`` clocks) reads only ``perf_counter_ns`` at a
switch, adding the wall delta to the outgoing context's *pending share* of the
current window; the thread clock is read when the window closes (a checkpoint
at least ``window_ns`` after it opened, ``get_resource_usage()``, the settle
points), and the window's CPU advance ``C`` is split: the metered wall time
``W`` gets ``min(W, C)`` in proportion to each share, the rest is
unattributed. An armed block (:func:`arm_exact`) that exits without a switch
reads it once more and takes, alone, the share a close would give it. Under
the ``wall`` clock ``sampled`` behaves as ``exact`` (the clock is already the
cheap one).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import clock as _clock
from ._config import config
from ._sentinel import SENTINEL_CONTEXT

TYPE_CHECKING = False  # typing is not imported at run time (import cost, spec P18)
if TYPE_CHECKING:
    from typing import Any

    from ._context import LoggingContext

__all__ = [
    "Ledger",
    "arm_exact",
    "armed_share",
    "charge_armed",
    "checkpoint",
    "get_ledger",
    "in_progress",
    "ledger_stats",
    "set_sample_window",
    "settle_pending",
    "stats",
    "went_late",
]

_SENTINEL: Any = SENTINEL_CONTEXT
_POOL_SUFFIX = re.compile(r"(?:[-_]\d+)+$")

#: The cheap clock of the ``sampled`` mode (tests swap it with :func:`use_wall_clock`).
perf_counter_ns: Callable[[], int] = time.perf_counter_ns
_wall: Callable[[], int] = time.perf_counter_ns


def _window_from_env() -> int:
    raw = os.environ.get("LOGCONTEXT_SAMPLE_WINDOW_MS", "")
    try:
        ms = float(raw) if raw else 1.0
    except ValueError:
        ms = 1.0
    return max(int(ms * 1_000_000), 0)


#: Minimum window length of the ``sampled`` step mode, in ns.
_window_ns: int = _window_from_env()


class _Stats:
    """Process-wide counters exported as metrics."""

    __slots__ = ("clock_regressions", "late_cpu_ns", "windows")

    def __init__(self) -> None:
        self.late_cpu_ns = 0
        self.clock_regressions = 0
        self.windows = 0


stats = _Stats()

_fold_lock = threading.Lock()
#: thread label -> [attributed_ns, unattributed_ns] of exited threads.
_exited: dict[str, list[int]] = {}
#: id(ledger) -> ledger of the live threads (weak: a thread's ledger dies with its
#: thread-local storage, and its ``__del__`` folds it into ``_exited``).
_live: weakref.WeakValueDictionary[int, Ledger] = weakref.WeakValueDictionary()


def thread_label(name: str) -> str:
    """Thread name with trailing ``[-_]<digits>`` groups removed (pools collapse)."""
    return _POOL_SUFFIX.sub("", name) or name


class Ledger:
    """One thread's accounting state (see the module docstring).

    ``fast``/``clk``/``sampled``/``end_cp``/``window_ns``/``wall`` are derived
    from the settings of generation ``flags_gen``. ``fast`` selects the switch
    path: 0 generic (``rusage``, fake clocks: charge at once), 1 scalar clock
    (``cpu``/``wall`` in ``exact``/``lazy``: ``clk`` is read, ``last_u`` holds
    the last reading, and a context's CPU is added to ``pend`` and charged when
    the window closes), 2 ``sampled`` (``pend`` holds wall shares, ``wlast`` the
    wall reading at the last switch). Windows open at ``wopen`` (``clk`` or
    wall units).
    """

    __slots__ = (
        "__weakref__",
        "attributed_ns",
        "charged",
        "clk",
        "cpuclk",
        "depth",
        "end_cp",
        "fast",
        "fgen",
        "fin",
        "fin_mark",
        "fin_t0",
        "flags_gen",
        "ident",
        "last_s",
        "last_u",
        "lat",
        "mgen",
        "mode_generation",
        "pair",
        "pend",
        "ran",
        "sampled",
        "sgen",
        "taken",
        "thread_label",
        "unattributed_ns",
        "wall",
        "wdl",
        "window_ns",
        "wlast",
        "wopen",
    )

    charged: LoggingContext | Any
    pend: defaultdict[Any, int]
    lat: set[Any]

    def __init__(self) -> None:
        self.charged = _SENTINEL
        self.depth = 0
        self.unattributed_ns = 0
        self.attributed_ns = 0
        self.thread_label = thread_label(threading.current_thread().name)
        self.ident = threading.get_ident()
        self.pend = defaultdict(int)
        self.lat = set()
        self.ran: set[Any] = set()
        self.fast = 0
        self.clk = _wall
        self.cpuclk: Callable[[], int] | None = None
        self.sampled = False
        self.end_cp = True
        self.window_ns = _window_ns
        self.wall = _wall
        self.wlast = self.wopen = self.wdl = 0
        self.fin: Any = None
        self.fin_mark = self.taken = 0
        self.fin_t0 = -1
        self.pair = False
        self.flags_gen = self.fgen = self.sgen = self.mgen = -1
        self.mode_generation = _clock._generation
        r = _clock._reader()
        self.last_u, self.last_s = r if r is not None else (0, 0)
        _reconfigure(self)
        with _fold_lock:
            _live[id(self)] = self

    def __del__(self) -> None:
        try:
            if self.pend and self.ident == threading.get_ident():
                # The thread is ending (its thread-local storage is being cleared):
                # charge the shares still pending in its last window.
                self._final_close()
        except Exception:  # interpreter shutdown, a foreign thread
            pass
        try:
            with _fold_lock:
                _live.pop(id(self), None)
                acc = _exited.setdefault(self.thread_label, [0, 0])
                acc[0] += self.attributed_ns
                acc[1] += self.unattributed_ns
        except Exception:  # interpreter shutdown
            pass

    def _final_close(self) -> None:
        if not _clock._metering or self.flags_gen != _clock._generation or not self.fast:
            return
        if self.fast == 2:
            now = self.wall()
            if self.charged is not _SENTINEL:
                self.pend[self.charged] += now - self.wlast
                self.wlast = now
        else:
            now = self.clk()
        close_window(self, now)


# A plain ``threading.local`` (a subclass makes every attribute read slower).
_local: Any = threading.local()


def get_ledger() -> Ledger:
    """The calling thread's ledger (created on first use)."""
    try:
        led: Ledger = _local.ledger
    except AttributeError:
        led = _local.ledger = Ledger()
    return led


def _reconfigure(led: Ledger) -> None:
    """Derive the ledger's switch path from the settings (spec: a change applies at the next
    checkpoint, dropping the interval in progress)."""
    if led.fast == 1 and led.pend:
        _flush_exact(led)  # CPU measured exactly under the old settings: keep it
    led.pend.clear()
    led.lat.clear()
    led.fin = None
    led.taken = 0
    led.pair = False
    led.ran.clear()
    led.flags_gen = gen = _clock._generation
    mode = config.step_mode
    metering = _clock._metering
    # A FakeClock alone keeps scripted charges exact: sampled needs a scripted wall clock too.
    sampled = (
        mode == "sampled"
        and metering
        and (
            _wall is not time.perf_counter_ns
            if _clock._fake is not None
            else config.clock_mode in ("cpu", "rusage")
        )
    )
    led.end_cp = mode != "lazy"
    led.window_ns = _window_ns
    led.wall = _wall
    if sampled:
        r = _clock._reader()
        if r is not None:
            led.last_u, led.last_s = r
        led.cpuclk = time.thread_time_ns if _clock._fake is None and config.clock_mode == "cpu" else None
        led.mode_generation = gen
        led.wlast = led.wopen = _wall()
        led.wdl = led.wopen + _window_ns
        led.fast = 2
    elif _scalar_override is not None or (
        metering and _clock._fake is None and config.clock_mode in ("cpu", "wall")
    ):
        clk = _scalar_override or (
            time.thread_time_ns if config.clock_mode == "cpu" else time.perf_counter_ns
        )
        led.clk = clk
        led.last_u = led.wopen = clk()
        # Pending charges here are exact: the window only batches them (one lock per
        # window), so it can be longer than a sampling window.
        led.window_ns = _window_ns * EXACT_FLUSH_WINDOWS
        led.wdl = led.wopen + led.window_ns
        led.last_s = 0
        led.mode_generation = gen
        led.fast = 1
    else:
        led.fast = 0
    led.sampled = sampled
    # The one test of each dedicated step path (aio): ``sampled``; a scalar clock (``exact``
    # and ``lazy``); anything else takes the generic switch.
    led.sgen = gen if led.fast == 2 else -1
    # ``_context.enter_measured_child``'s one test: ``sampled`` on the real clocks.
    led.mgen = gen if led.fast == 2 and led.cpuclk is not None and led.wall is time.perf_counter_ns else -1
    led.fgen = gen if led.fast == 1 else -1


#: In the ``exact``/``lazy`` modes a thread's pending (exact) charges are flushed every this
#: many sampling windows (10 ms by default), or sooner by a read of the figures on that thread.
EXACT_FLUSH_WINDOWS = 10

#: Tests only: a scalar clock for the ``exact``/``lazy`` fast path (see ``use_scalar_clock``).
_scalar_override: Callable[[], int] | None = None


@contextmanager
def use_scalar_clock(fn: Callable[[], int]) -> Iterator[None]:
    """Drive the ``exact``/``lazy`` fast path from ``fn`` for the block (tests only)."""
    global _scalar_override
    saved = _scalar_override
    _scalar_override = fn
    _clock._bump_generation()
    try:
        yield
    finally:
        _scalar_override = saved
        _clock._bump_generation()


def set_sample_window(ms: float) -> None:
    """Set the minimum window of the ``sampled`` step mode (default 1 ms).

    Longer windows read the thread clock less often; attribution drifts only
    within a window. The ``exact`` and ``lazy`` modes charge the CPU they measured
    (exactly) in batches, every ``EXACT_FLUSH_WINDOWS`` windows. Applies at each
    thread's next checkpoint.
    """
    global _window_ns
    if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"sample window must be a non-negative number of ms, got {ms!r}")
    _window_ns = int(ms * 1_000_000)
    _clock._bump_generation()


@contextmanager
def use_wall_clock(fn: Callable[[], int]) -> Iterator[None]:
    """Replace the ``sampled`` mode's wall clock for the block (tests only)."""
    global _wall
    saved = _wall
    _wall = fn
    _clock._bump_generation()
    try:
        yield
    finally:
        _wall = saved
        _clock._bump_generation()


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
    if new is not led.charged:
        switch(led, new)


def switch(led: Ledger, new: Any) -> None:
    """:func:`checkpoint` on a known ledger (the metering objects' entry point)."""
    old = led.charged
    if new is old:
        return
    if led.flags_gen != _clock._generation:
        _reconfigure(led)
    fast = led.fast
    if fast == 1:
        now = led.clk()
        d = now - led.last_u
        led.last_u = now
        led.charged = new
        if d < 0:
            d = _regression(d, 0)[0]
        if old is _SENTINEL:
            led.unattributed_ns += d
            if now >= led.wdl:
                close_window(led, now)
            return
        led.pend[old] += d
        if old.finished:
            went_late(led, old, now, d)
        # An exit does not close a young window either (see the ``sampled`` branch).
        if now >= led.wdl:
            close_window(led, now)
        return
    if fast == 2:
        now = led.wall()
        led.charged = new
        if old is not _SENTINEL:
            d = now - led.wlast
            led.pend[old] += d
            led.wlast = now
            if old.finished:
                went_late(led, old, now, d)
            # An exit does not close a young window: the exited context's share stays
            # pending (less than one window of CPU) until the next close, which
            # ``get_resource_usage()`` on this thread and ``settle_pending()`` force.
            if now >= led.wdl:
                close_window(led, now, old, d)
            return
        led.wlast = now
        if now >= led.wdl:
            close_window(led, now)
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


def arm_exact(ctx: Any) -> None:
    """Measure ``ctx``, just entered and charged on this thread, until it exits.

    For blocks whose figures are read at their exit (span children, ``Measure`` blocks,
    contexts that own a recording span, the database worker's transaction contexts): if no
    switch happens on this thread before ``ctx`` exits, its exit charges the block's CPU at once
    instead of leaving it pending in the window, so reading its usage right after needs no
    window close. ``exact``/``lazy``: the last interval, exact. ``sampled``: the share of the
    window's CPU that closing the window at the exit would give the block (:func:`armed_share`,
    one thread-clock read at the exit); a window holding no metered share yet is closed here
    first, so the block's share is not mixed with unmetered CPU (a worker thread's idle
    overhead). While the thread's windows show CPU well short of their metered wall time
    (``pair``: GIL waits, preemption, blocking calls), a share could be far off: the block is
    measured by a thread-clock pair instead, exactly. A block that switches (awaits, enters a
    nested context) is charged as usual.
    """
    try:
        led = _local.ledger
    except AttributeError:
        return
    if led.charged is not ctx or led.flags_gen != _clock._generation or led.fin is ctx:
        return  # (armed already: the first arm's mark stands)
    fast = led.fast
    if fast == 2:
        # Only with the real clocks: the test below relies on two switches never reading
        # the same wall time.
        if led.cpuclk is None or led.wall is not time.perf_counter_ns:
            return
        if not led.pend:
            now = led.wall()
            led.pend[ctx] += now - led.wlast
            led.wlast = now
            close_window(led, now)
        # A pair after a lossy window; none in a fresh one (the exit's one reading is exact).
        led.fin_t0 = led.cpuclk() if led.pair and led.pend else -1
        led.fin_mark = led.wlast
    elif fast != 1:
        return
    led.fin = ctx


def armed_share(k: int, c: int, wo: int, span: int) -> int:
    """The CPU of an uninterrupted armed block (``sampled``) that exits now.

    ``k`` is the block's wall time, ``c`` the window's CPU so far (the thread clock's advance
    since the window opened, less what earlier armed blocks took), ``wo`` the other pending
    shares (wall), ``span`` the window's age. The block gets what :func:`close_window` would give
    its share if the window closed now: its wall time when the window's CPU covers every share;
    otherwise, if the block spans most of the window (it probably blocked or was preempted),
    what the other shares leave, else its proportion of the CPU.
    (``_context.exit_measured_child`` inlines it: keep them in step.)
    """
    w = wo + k
    if c >= w:
        return k
    if c <= 0:
        return 0
    if 2 * k > span:
        return c - wo if c > wo else 0
    return c * k // w


#: A window's CPU short of its metered wall time by more than this many ns *and* by more than
#: 5 % is *lossy* (GIL waits, preemption, blocking calls): shares of it can be far off, so armed
#: blocks are measured by a thread-clock pair (``Ledger.pair``). The absolute floor keeps the
#: offset between the two clocks' readings (≈ 1 µs) from flagging short windows.
LOSSY_MIN_NS = 20_000


def _lossy(wall: int, cpu: int) -> bool:
    """Whether ``cpu`` falls short of the metered ``wall`` enough to distrust its shares."""
    short = wall - cpu
    return short > LOSSY_MIN_NS and short * 20 > wall


def finish_exact_sampled(led: Ledger, ctx: Any, now: int) -> None:
    """The ``sampled`` exit of an armed context (see :func:`arm_exact`); ``ctx`` was charged.

    The caller has made the restored context charged from ``now``. Uninterrupted (no
    switch since the arm: ``wlast`` unchanged), the block's share of the window's CPU
    (:func:`armed_share`) is charged now and taken out of the window; otherwise the exit is
    the usual one.
    """
    led.fin = None
    if led.wlast == led.fin_mark and led.cpuclk is not None:
        if led.fin_t0 >= 0:
            cpu = led.cpuclk() - led.fin_t0  # measured by a pair (see ``arm_exact``)
            if cpu < 0:
                cpu = _regression(cpu, 0)[0]
        else:
            pend = led.pend
            k = now - led.wlast
            c = led.cpuclk() - led.last_u - led.taken
            wo = sum(pend.values()) if pend else 0
            cpu = armed_share(k, c, wo, now - led.wopen)
            if _lossy(wo + k, c):
                led.pair = True  # CPU well short of the wall time: pairs from now on
        led.wlast = now
        led.taken += cpu
        charge_armed(led, ctx, cpu)
        if now >= led.wdl:
            close_window(led, now)
        return
    d = now - led.wlast
    led.pend[ctx] += d
    led.wlast = now
    if now >= led.wdl:
        close_window(led, now, ctx, d)


def charge_armed(led: Ledger, ctx: Any, ns: int) -> None:
    """Charge an armed context its block's CPU at its exit (see :func:`arm_exact`)."""
    led.attributed_ns += ns
    ctx._charge_ns(ns, 0)
    led.ran.add(ctx)  # it ran in this window (its ancestors' late judgement at the close)


def _charge_one(led: Ledger, ctx: Any, ns: int, ran: set[Any] | None = None) -> None:
    """Charge one context (and its ancestors); late only if it was finished when recorded."""
    lat = led.lat
    if ctx.finished and ctx not in lat:
        _charge_items([(ctx, ns, 0)], lat, None, ran)
        return
    lat.clear()
    ctx._charge_ns(ns, 0)


def went_late(led: Ledger, ctx: Any, now: int, d: int) -> None:
    """``d`` was just added to the pending share of ``ctx``, which has finished.

    From now on the context's pending CPU is late. A share it had from before it finished
    (CPU burnt while it ran) must not be reported late with it, so the window closes first
    (rare: once per late context and window). In the scalar modes ``d`` is held back from that
    close and stays late; in the ``sampled`` mode it is charged with the close (the CPU of
    that one interval is only known within the window's total).
    """
    lat = led.lat
    if ctx in lat:
        return
    pend = led.pend
    if pend.get(ctx, 0) > d:
        if led.fast == 1:
            pend[ctx] -= d
            close_window(led, now)
            led.pend[ctx] += d
        else:
            close_window(led, now)
            led.lat.add(ctx)
            return
    led.lat.add(ctx)


def settle(current: Any) -> None:
    """Checkpoint this thread to ``current`` and charge everything pending (close the window).

    Called when an event loop run ends, so ``lazy`` leftovers and pending charges do not
    linger until some unrelated later checkpoint.
    """
    led = get_ledger()
    if not _clock._metering:
        led.charged = current
        return
    switch(led, current)
    if led.fast and led.flags_gen == _clock._generation and (led.pend or led.fast == 2):
        now = led.wall() if led.fast == 2 else led.clk()
        if led.fast == 2 and led.charged is not _SENTINEL:
            led.pend[led.charged] += now - led.wlast
            led.wlast = now
        close_window(led, now)


def settle_pending() -> None:
    """Close this thread's window if it holds pending shares (cheap when it does not).

    Thread hand-off points call it when their work is done (a pool worker's job,
    a bound callable), so the CPU of contexts that exited on this thread is
    charged before the caller reads its figures.
    """
    try:
        led = _local.ledger
    except AttributeError:
        return
    if led.pend and _clock._metering:
        settle(led.charged)


def _flush_exact(led: Ledger) -> list[tuple[Any, int, int]]:
    """Charge the exactly measured pending CPU of the fast path."""
    pend = led.pend
    ran = led.ran
    if ran:
        led.ran = set()
    if len(pend) == 1:
        ((ctx, d),) = pend.items()
        pend.clear()
        led.attributed_ns += d
        _charge_one(led, ctx, d, ran)
        return [(ctx, d, 0)]
    led.pend = defaultdict(int)  # ``pend`` stays the window's record for _charge_items
    lat = led.lat
    items = []
    total = 0
    for ctx, d in pend.items():
        total += d
        # A root context nothing else references is skipped: its figures can never be read.
        if ctx._ancestors or _refcount(ctx) > _UNREFERENCED_IN_PEND or ctx in lat:
            items.append((ctx, d, 0))
    led.attributed_ns += total
    if items:
        _charge_items(items, led.lat, pend, ran)
    return items


def close_window(led: Ledger, now: int, last: Any = None, d_last: int = 0) -> list[tuple[Any, int, int]]:
    """Close the window: charge the pending CPU (fast path) or, in the ``sampled``
    mode, read the thread clock and split the window's CPU over the wall shares.

    The caller has added the charged context's share up to ``now``. ``last`` and
    ``d_last`` name the step (context, wall ns) that ended at ``now``: if that one
    step spans most of the window it was probably preempted or blocked, so the
    other shares are served first and it gets what CPU is left (at most its wall
    time) instead of a share inflated by time off-CPU. Returns the charges made
    ``(context, user_ns, system_ns)``.
    """
    if led.flags_gen != _clock._generation:
        _reconfigure(led)  # drops the shares measured under the old settings
        return []
    span = now - led.wopen
    led.wopen = now
    led.wdl = now + led.window_ns
    if led.fast == 1:
        return _flush_exact(led)
    pend = led.pend
    cpuclk = led.cpuclk
    if cpuclk is not None:
        u = cpuclk()
        du = u - led.last_u
        ds = 0
        led.last_u = u
        if du < 0:
            du = _regression(du, 0)[0]
        taken = led.taken
        if taken:
            # CPU of armed blocks, charged at their exit (see ``arm_exact``).
            led.taken = 0
            du = du - taken if du > taken else 0
    else:
        r = _clock._reader()
        if r is None:
            pend.clear()
            return []
        du = r[0] - led.last_u
        ds = r[1] - led.last_s
        led.last_u, led.last_s = r
        if du < 0 or ds < 0:
            du, ds = _regression(du, ds)
    cpu = du + ds
    stats.windows += 1
    ran = led.ran
    if ran:
        led.ran = set()
    if len(pend) == 1 and ds == 0:
        # One context in the window (a with-block, a lone request): no apportioning.
        ((ctx, w),) = pend.items()
        pend.clear()
        led.pair = _lossy(w, cpu)
        a = w if w <= cpu else cpu
        if a < 0:
            a = 0
        led.attributed_ns += a
        led.unattributed_ns += cpu - a
        _charge_one(led, ctx, a, ran)
        return [(ctx, a, 0)]
    if not pend:
        led.unattributed_ns += cpu
        return []
    held = 0
    if last is not None and d_last * 2 > span and ds == 0 and pend.get(last, 0) >= d_last:
        held = d_last
        pend[last] -= d_last
    total = sum(pend.values())
    # Armed blocks are measured by a thread-clock pair until a window closes clean again.
    led.pair = _lossy(total + held, cpu)
    if cpu <= 0 or total + held <= 0:
        pend.clear()
        led.unattributed_ns += cpu
        return []
    items: list[tuple[Any, int, int]]
    if total <= cpu and ds == 0:
        # The usual case: metered steps were on-CPU, each gets exactly its share.
        lat = led.lat
        items = []
        for ctx, w in pend.items():
            # A root context nothing else references is skipped: its figures can never be read.
            if w > 0 and (ctx._ancestors or _refcount(ctx) > _UNREFERENCED_IN_PEND or ctx in lat):
                items.append((ctx, w, 0))
        charged = total
    else:
        given = min(total, cpu)
        items = []
        charged = 0
        for ctx, w in pend.items():
            a = given * w // total
            if a > 0:
                au = a * du // cpu
                items.append((ctx, au, a - au))
                charged += a
    if held:
        extra = min(cpu - charged, held)
        if extra > 0:
            items.append((last, extra, 0))
            charged += extra
    led.pend = defaultdict(int)  # ``pend`` stays the window's record for _charge_items
    led.attributed_ns += charged
    led.unattributed_ns += cpu - charged
    if items:
        _charge_items(items, led.lat, pend, ran)
    else:
        led.lat.clear()
    return items


_ctxmod: Any = None
_new_obj = object.__new__
_refcount = sys.getrefcount


def _unreferenced_base() -> int:
    """The reference count ``_charge_items`` sees for a context that nothing else holds.

    Measured through the same shapes (window key, item tuple, loop variable) so the
    figure follows the interpreter; a context with any other reference counts more.
    """
    obj = object()
    window = {obj: 1}
    items = [(obj, 1, 0)]
    del obj
    base = 1 << 30
    for ctx, _, _ in items:
        base = _refcount(ctx)
    del window
    return base


def _unreferenced_in_pend_base() -> int:
    """The reference count of a context held only by ``pend``, seen while iterating it."""
    pend: defaultdict[object, int] = defaultdict(int)
    pend[object()] += 1
    base = 1 << 30
    for ctx, _ in pend.items():
        base = _refcount(ctx)
    return base


_CPYTHON = sys.implementation.name == "cpython"
#: ``_charge_items`` skips building the usage of a context at this count: no code can
#: ever read it (its ancestors are still charged). Off where counts are not exact.
_UNREFERENCED: int = _unreferenced_base() if _CPYTHON else -1
#: The same while a window close iterates the pending shares.
_UNREFERENCED_IN_PEND: int = _unreferenced_in_pend_base() if _CPYTHON else -1


def _charge_items(
    items: list[tuple[Any, int, int]],
    lat: set[Any],
    window: dict[Any, int] | None = None,
    ran: set[Any] | None = None,
) -> None:
    """Charge deferred CPU to contexts and their ancestors under one acquisition of the lock.

    A context counts as charged late only if it was already finished when its
    pending CPU was recorded (``lat``): one that finished before the window
    closed (e.g. exited in another ``Context``) had its CPU burnt in time.
    Ancestors are judged now, except those that ran on this thread during the
    ``window`` (the shares being charged, and ``ran``: armed blocks that exited in
    it, charged at their exit): they exited after the CPU was burnt.
    """
    global _ctxmod
    if _ctxmod is None:
        from . import _context

        _ctxmod = _context
    late: list[tuple[Any, list[Any], int, int]] | None = None
    new_usage = _ctxmod.ContextResourceUsage
    st = 0.0
    with _ctxmod._usage_lock:
        for ctx, du, ds in items:
            ut = du * 1e-9
            if ds:
                st = ds * 1e-9
            u = ctx._u
            if u is None:
                if window is not None and _refcount(ctx) <= _UNREFERENCED and not (lat and ctx in lat):
                    # An exited context nobody holds (``with LoggingContext(...): ...`` whose
                    # object was dropped): its own figures can never be read, so only the
                    # ancestors get the CPU (the thread's attributed total has it too).
                    pass
                else:
                    # A context's first charge (usually a with-block's only one): build its
                    # usage in place, cheaper than ContextResourceUsage() (same fields).
                    u = ctx._u = _new_obj(new_usage)
                    u.ru_utime = ut
                    u.ru_stime = st if ds else 0.0
                    u.db_txn_count = 0
                    u.db_txn_duration_sec = 0.0
                    u.db_sched_duration_sec = 0.0
                    u.evt_db_fetch_count = 0
            else:
                u.ru_utime += ut
                if ds:
                    u.ru_stime += st
            fin = [ctx] if lat and ctx in lat and ctx.finished else None
            for c in ctx._ancestors:
                u = c._u
                if u is None:
                    u = c._u = new_usage()
                u.ru_utime += ut
                if ds:
                    u.ru_stime += st
                if c.finished and (window is None or c not in window) and (not ran or c not in ran):
                    fin = [c] if fin is None else [*fin, c]
            if fin is not None:
                late = [] if late is None else late
                late.append((ctx, fin, du, ds))
    lat.clear()
    if late is not None:
        for ctx, fin, du, ds in late:
            stats.late_cpu_ns += du + ds
            ctx._late(fin, du * 1e-9, ds * 1e-9, 0, 0.0, 0.0, 0)


def in_progress(ctx: Any) -> tuple[int, int] | None:
    """This thread's not-yet-charged CPU of ``ctx``'s subtree (``ctx`` and its descendants).

    Pending charges are made first and what they gave the subtree is returned
    with the slice in progress (the caller's copy of the totals was taken just
    before). In the ``sampled`` mode the window is closed instead.
    """
    try:
        led = _local.ledger
    except AttributeError:
        return None
    fast = led.fast
    if fast and led.flags_gen == _clock._generation:
        ch = led.charged
        if ch is _SENTINEL and not led.pend:
            return None
        if ch is not ctx and (ch is _SENTINEL or ctx not in ch._ancestors):
            # ctx's subtree is not running on this thread: only its pending shares could add
            # to it; without any, its figures are final (e.g. a context that has exited).
            for c in led.pend:
                if c is ctx or ctx in c._ancestors:
                    break
            else:
                return None
        su = ss = 0
        if fast == 2:
            now = led.wall()
            if ch is not _SENTINEL:
                pend = led.pend
                pend[ch] += now - led.wlast
                led.wlast = now
            items = close_window(led, now)
        else:
            items = _flush_exact(led) if led.pend else []
            if ch is not _SENTINEL and (ch is ctx or ctx in ch._ancestors):
                su = max(led.clk() - led.last_u, 0)
        for c, u, s in items:
            if c is ctx or ctx in c._ancestors:
                su += u
                ss += s
        return (su, ss) if su or ss else None
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
    its last checkpoint (in the ``sampled`` mode, its last closed window).
    """
    with _fold_lock:
        acc = {k: list(v) for k, v in _exited.items()}
        for led in list(_live.values()):
            a = acc.setdefault(led.thread_label, [0, 0])
            a[0] += led.attributed_ns
            a[1] += led.unattributed_ns
    return sorted((k, v[0], v[1]) for k, v in acc.items())


def _after_fork_in_child() -> None:
    global _fold_lock
    _fold_lock = threading.Lock()
    _live.clear()
    _exited.clear()
    from ._context import current_context

    # Keep the same ``threading.local`` (other modules hold it): replace the
    # surviving thread's ledger with a fresh one reading the child's clock.
    old = getattr(_local, "ledger", None)
    if old is not None:
        old.attributed_ns = old.unattributed_ns = 0  # nothing to fold from before fork
        old.pend.clear()  # nor to charge: the parent charges its own window
    led = _local.ledger = Ledger()
    led.charged = current_context()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
