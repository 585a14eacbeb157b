"""Ledger behaviour under metered steps, with scripted clocks (spec §2.1, §2.3, §2.4; §10 item 28)."""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine, Generator, Iterator
from typing import Any

import pytest

import logcontext
from logcontext import SENTINEL_CONTEXT, LoggingContext, _ledger
from logcontext.aio import MeteredCoroutine
from logcontext.clock import FakeClock, use_clock

US = 1_000
MS = 1_000_000


class _Yield:
    """An awaitable that suspends once (one task step ends)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


class Clocks:
    """A scripted CPU clock (FakeClock) and a scripted wall clock for the sampled mode."""

    def __init__(self) -> None:
        self.cpu = FakeClock()
        self.wall_ns = 0
        self.wall_reads = 0

    def wall(self) -> int:
        self.wall_reads += 1
        return self.wall_ns

    def run(self, wall_ns: int, cpu_ns: int) -> None:
        self.wall_ns += wall_ns
        self.cpu.advance(cpu_ns)


@pytest.fixture
def clocks() -> Iterator[Clocks]:
    c = Clocks()
    with use_clock(c.cpu), _ledger.use_wall_clock(c.wall):
        yield c


@pytest.fixture(params=["generic", "fast"])
def xclocks(request: pytest.FixtureRequest, clocks: Clocks) -> Iterator[Clocks]:
    """Scripted clocks for exact/lazy, through the generic (charge at once) and the fast
    (scalar clock, deferred charges) switch paths."""
    if request.param == "generic":
        yield clocks
    else:
        with _ledger.use_scalar_clock(lambda: sum(clocks.cpu.read())):
            yield clocks


def _resync() -> _ledger.Ledger:
    """Make the thread's ledger pick up the current settings (a switch away and back)."""
    led = _ledger.get_ledger()
    _ledger.switch(led, LoggingContext("resync"))
    _ledger.switch(led, SENTINEL_CONTEXT)
    return led


class Task:
    """Drives a coroutine through a MeteredCoroutine one step at a time, in its own Context."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = MeteredCoroutine(coro)
        self.context = contextvars.copy_context()
        self.done = False

    def step(self) -> None:
        try:
            self.context.run(self.coro.send, None)
        except StopIteration:
            self.done = True


async def _script(ctx: LoggingContext, clocks: Clocks, steps: list[tuple[int, int]]) -> None:
    with ctx:
        for wall_ns, cpu_ns in steps:
            clocks.run(wall_ns, cpu_ns)
            await _Yield()


def _interleave(tasks: list[Task], clocks: Clocks, overhead_ns: int) -> None:
    while not all(t.done for t in tasks):
        for t in tasks:
            if not t.done:
                clocks.run(overhead_ns, overhead_ns)  # loop overhead: nobody's step
                t.step()


@pytest.mark.parametrize("mode", ["exact", "lazy"])
def test_reads_per_step_exact_and_lazy(xclocks: Clocks, mode: str) -> None:
    """exact reads the clock at both ends of a switching step, lazy once per switch, and a
    step whose context is already charged reads nothing."""
    clocks = xclocks
    logcontext.configure(step_mode=mode)  # type: ignore[arg-type]
    _resync()
    a, b = LoggingContext("a"), LoggingContext("b")
    ta = Task(_script(a, clocks, [(0, 1 * MS)] * 3))
    tb = Task(_script(b, clocks, [(0, 1 * MS)] * 3))
    ta.step()  # enter a (1 read) + end of step (exact: 1 read)
    tb.step()
    reads = clocks.cpu.reads
    ta.step()
    assert clocks.cpu.reads - reads == (2 if mode == "exact" else 1)
    reads = clocks.cpu.reads
    ta.step()  # same task again: lazy left `a` charged, so no read at all
    assert clocks.cpu.reads - reads == (2 if mode == "exact" else 0)
    _interleave([ta, tb], clocks, 0)


@pytest.mark.parametrize("mode", ["exact", "lazy"])
def test_exact_scripted_charges_across_steps(xclocks: Clocks, mode: str) -> None:
    """Interleaved steps are charged exactly what they burnt; loop overhead goes to nobody in
    exact mode and to the previous step's context in lazy mode."""
    clocks = xclocks
    logcontext.configure(step_mode=mode)  # type: ignore[arg-type]
    led = _resync()
    un0 = led.unattributed_ns
    a, b = LoggingContext("a"), LoggingContext("b")
    ta = Task(_script(a, clocks, [(0, 2 * MS)] * 5))
    tb = Task(_script(b, clocks, [(0, 10 * MS)] * 5))
    _interleave([ta, tb], clocks, 100 * US)
    ua, ub = a.get_resource_usage().ru_utime, b.get_resource_usage().ru_utime
    if mode == "exact":
        assert ua == pytest.approx(0.010)
        assert ub == pytest.approx(0.050)
    else:
        assert 0.010 <= ua <= 0.0112 and 0.050 <= ub <= 0.0512
    total = 60 * MS + 12 * 100 * US
    assert round((ua + ub) * 1e9) + led.unattributed_ns - un0 == total


def test_nested_step_restores_outer_context(xclocks: Clocks) -> None:
    """A metered step driven inside another step (depth > 0, as for an eager task) charges its
    own context and then restores the outer step's context, not the sentinel."""
    clocks = xclocks
    logcontext.configure(step_mode="exact")
    led = _resync()
    outer, inner = LoggingContext("outer"), LoggingContext("inner")
    seen: list[object] = []

    async def inner_script() -> None:
        with inner:
            clocks.run(0, 3 * MS)
            await _Yield()

    async def outer_script() -> None:
        with outer:
            clocks.run(0, 1 * MS)
            Task(inner_script()).step()  # nested: runs inside this step
            seen.append(led.charged)
            assert led.depth == 1
            clocks.run(0, 1 * MS)
            await _Yield()

    t = Task(outer_script())
    t.step()
    assert seen == [outer]
    assert led.depth == 0 and led.charged is SENTINEL_CONTEXT
    t.step()
    assert inner.get_resource_usage().ru_utime == pytest.approx(0.003)
    assert outer.get_resource_usage().ru_utime == pytest.approx(0.002)


def test_close_makes_no_clock_read(xclocks: Clocks) -> None:
    """close() delegates without checkpoints (it may run in a foreign Context)."""
    clocks = xclocks
    logcontext.configure(step_mode="exact")
    _resync()

    async def idle() -> None:
        await _Yield()

    t = Task(idle())
    reads = clocks.cpu.reads
    t.coro.close()
    assert clocks.cpu.reads == reads
    assert _ledger.get_ledger().charged is SENTINEL_CONTEXT


def test_sampled_reads_only_wall_clock_within_a_window(clocks: Clocks) -> None:
    """sampled: steps inside one window read only the wall clock, the context's exit included; the
    CPU clock is read when the window closes (here: when the exited context's figures are read)."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1000)  # 1 s: no window closes during the steps
    _resync()
    a = LoggingContext("a")
    ta = Task(_script(a, clocks, [(10 * US, 10 * US)] * 20))
    ta.step()
    reads = clocks.cpu.reads
    wall = clocks.wall_reads
    for _ in range(19):
        ta.step()
    assert clocks.cpu.reads == reads
    assert clocks.wall_reads - wall == 2 * 19
    ta.step()  # exits `a`: its share stays pending (the window is young)
    assert clocks.cpu.reads == reads
    assert a.get_resource_usage().ru_utime == pytest.approx(200e-6)  # closes the window
    assert clocks.cpu.reads == reads + 1


def test_sampled_apportions_window_cpu_by_wall_share(clocks: Clocks) -> None:
    """sampled: interleaved burners get exactly their metered share when steps are on-CPU; loop
    overhead (unmetered) is unattributed and conservation is exact."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1)
    led = _resync()
    un0 = led.unattributed_ns
    a, b = LoggingContext("a"), LoggingContext("b")
    ta = Task(_script(a, clocks, [(2 * MS, 2 * MS)] * 5))
    tb = Task(_script(b, clocks, [(10 * MS, 10 * MS)] * 5))
    _interleave([ta, tb], clocks, 50 * US)
    ua, ub = a.get_resource_usage().ru_utime, b.get_resource_usage().ru_utime
    assert ua == pytest.approx(0.010)
    assert ub == pytest.approx(0.050)
    assert round((ua + ub) * 1e9) + led.unattributed_ns - un0 == 60 * MS + 12 * 50 * US


def test_sampled_blocking_step_gets_at_most_the_cpu(clocks: Clocks) -> None:
    """sampled: when metered wall time exceeds the window's CPU advance (a step blocked), the
    contexts share the CPU advance in proportion to their wall time; nothing is invented."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1000)
    _resync()
    a, b = LoggingContext("a"), LoggingContext("b")
    ta = Task(_script(a, clocks, [(3 * MS, 1 * MS)]))  # blocked for 2 ms of its 3
    tb = Task(_script(b, clocks, [(1 * MS, 1 * MS)]))
    ta.step()
    tb.step()
    ua = a.get_resource_usage().ru_utime  # closes the window: C = 2 ms, W = 4 ms
    ub = b.get_resource_usage().ru_utime
    assert ua == pytest.approx(0.0015)
    assert ub == pytest.approx(0.0005)
    ta.step()
    tb.step()


def test_sampled_get_resource_usage_includes_pending_share(clocks: Clocks) -> None:
    """sampled: get_resource_usage() closes the window, so a parent sees a running child's share."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1000)
    _resync()
    parent = LoggingContext("parent")
    child = LoggingContext("child", parent_context=parent)
    t = Task(_script(child, clocks, [(4 * MS, 4 * MS), (1 * MS, 1 * MS)]))
    t.step()
    reads = clocks.cpu.reads
    assert parent.get_resource_usage().ru_utime == pytest.approx(0.004)
    assert clocks.cpu.reads == reads + 1
    t.step()
    t.step()
    assert child.get_resource_usage().ru_utime == pytest.approx(0.005)
    assert parent.get_resource_usage().ru_utime == pytest.approx(0.005)


def test_sampled_mode_change_drops_pending_shares(clocks: Clocks) -> None:
    """A step-mode change applies at the next checkpoint and drops the interval in progress."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1000)
    led = _resync()
    a = LoggingContext("a")
    t = Task(_script(a, clocks, [(1 * MS, 1 * MS)] * 3))
    t.step()
    assert led.pend
    logcontext.configure(step_mode="exact")
    t.step()
    assert not led.sampled and not led.pend
    t.step()
    t.step()
    assert a.get_resource_usage().ru_utime == pytest.approx(0.002)


def test_sampled_with_wall_clock_behaves_as_exact() -> None:
    """Under the wall clock, sampled is pointless and the ledger uses the exact path."""
    logcontext.configure(clock="wall", step_mode="sampled")
    led = _resync()
    assert not led.sampled and led.end_cp
    logcontext.configure(clock="cpu")
    _resync()
    assert led.sampled


def test_set_sample_window_rejects_bad_values() -> None:
    """A negative or non-numeric window is a ValueError naming the value."""
    with pytest.raises(ValueError, match="-1"):
        _ledger.set_sample_window(-1)
    with pytest.raises(ValueError):
        _ledger.set_sample_window("1")  # type: ignore[arg-type]


def test_sampled_preempted_step_gets_the_residual_not_its_wall_share(clocks: Clocks) -> None:
    """sampled: a step that spans most of its window (preempted: 4 ms of wall, 0.1 ms of CPU)
    gets the window's CPU left after the on-CPU steps' shares, not a share inflated by its
    time off-CPU; the on-CPU steps keep exactly what they burnt."""
    logcontext.configure(step_mode="sampled")
    _ledger.set_sample_window(1)
    led = _resync()
    un0 = led.unattributed_ns
    a, b = LoggingContext("a"), LoggingContext("b")
    ta = Task(_script(a, clocks, [(300 * US, 300 * US)] * 2 + [(0, 0)]))
    tb = Task(_script(b, clocks, [(4 * MS, 100 * US), (0, 0)]))
    ta.step()  # a: 0.3 ms on-CPU
    tb.step()  # b: preempted, 4 ms of wall for 0.1 ms of CPU -> closes the window
    ua = a.get_resource_usage().ru_utime
    ub = b.get_resource_usage().ru_utime
    assert ua == pytest.approx(300e-6)
    assert ub == pytest.approx(100e-6)
    _interleave([ta, tb], clocks, 0)
    assert a.get_resource_usage().ru_utime == pytest.approx(600e-6)
    assert b.get_resource_usage().ru_utime == pytest.approx(100e-6)
    assert led.unattributed_ns == un0  # no loop overhead was scripted
