"""Exits leave a young window open: the deferred close of the ledger (spec §2.4).

An exit reads only the wall clock; the exited context's CPU stays pending on its
thread until the window closes. These tests pin down who closes it: a read of
the figures on that thread, the thread hand-off helpers, the thread's end, and
that no spurious ``late-usage`` report comes out of the deferral.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import logcontext
from logcontext import LoggingContext, PreserveLoggingContext, _ledger, _usage, aio
from logcontext._context import enter_measured_child, exit_measured_child


@pytest.fixture
def sampled() -> Iterator[None]:
    """cpu clock, sampled steps, a window long enough that none closes on its own."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(10_000)
    try:
        yield
    finally:
        _ledger.set_sample_window(1.0)


@pytest.fixture
def scalar_exact() -> Iterator[list[int]]:
    """exact mode on a scripted scalar clock (advance ``now[0]``), a long window, one warm-up
    context settled so the window is open and empty."""
    now = [0]
    logcontext.configure(clock="cpu", step_mode="exact")
    _ledger.set_sample_window(10_000)
    try:
        with _ledger.use_scalar_clock(lambda: now[0]):
            with LoggingContext("warm"):
                pass
            _ledger.settle_pending()
            yield now
    finally:
        _ledger.set_sample_window(1.0)


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_exit_keeps_the_share_pending_until_read(sampled: None) -> None:
    """An exit in a young window charges nothing yet; reading the figures closes the window."""
    with LoggingContext("warm"):
        pass
    _ledger.settle_pending()  # the first window is open now and young
    led = _ledger.get_ledger()
    windows = _ledger.stats.windows
    with LoggingContext("a") as a:
        _burn(0.002)
    assert a in led.pend
    assert _ledger.stats.windows == windows
    assert a.get_resource_usage().ru_utime >= 0.0015
    assert a not in led.pend
    assert _ledger.stats.windows == windows + 1


def test_parent_and_child_exiting_in_one_window_are_not_late(sampled: None) -> None:
    """Charging a deferred child share after its parent exited is not late usage for the parent."""
    with LoggingContext("p") as p:
        with LoggingContext("c", parent_context=p) as c:
            _burn(0.001)
    assert p.finished and c.finished
    usage = p.get_resource_usage()  # closes the window: strict mode raises on a late report
    assert usage.ru_utime >= c.get_resource_usage().ru_utime > 0
    assert p.late_usage is None and c.late_usage is None


@pytest.mark.misuse_ok
def test_child_running_after_its_parent_finished_is_still_late() -> None:
    """A share recorded after the parent's window closed is reported late on the parent."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(0)  # every checkpoint closes the window
    try:
        p = LoggingContext("p")
        c = LoggingContext("c", parent_context=p)
        with p:
            pass
        with c:
            _burn(0.002)
        assert c.get_resource_usage().ru_utime >= 0.0015
        assert c.late_usage is None
        assert p.late_usage is not None
        assert p.late_usage.ru_utime >= 0.0015
    finally:
        _ledger.set_sample_window(1.0)


def test_a_raw_threads_pending_share_is_charged_when_it_ends(sampled: None) -> None:
    """A thread that ends with a share pending has it charged by its ledger's finaliser."""
    p = LoggingContext("p")
    seen: list[bool] = []

    def work() -> None:
        with LoggingContext("c", parent_context=p) as c:
            _burn(0.003)
        seen.append(c in _ledger.get_ledger().pend)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [True]  # still pending when the thread's function returned
    assert p.get_resource_usage().ru_utime >= 0.0025


def test_run_in_executor_settles_the_worker(sampled: None) -> None:
    """The caller sees a pool worker's CPU as soon as the awaited call returns."""

    async def main() -> float:
        with LoggingContext("req") as req:
            await logcontext.run_in_executor(None, _burn, 0.003)
            return req.get_resource_usage().ru_utime

    assert aio.run(main()) >= 0.0025


def test_settle_pending_is_a_no_op_without_shares(sampled: None) -> None:
    """settle_pending() with nothing pending reads no clock and closes no window."""
    _ledger.settle_pending()
    windows = _ledger.stats.windows
    _ledger.settle_pending()
    assert _ledger.stats.windows == windows


def test_exact_mode_exit_defers_too_and_stays_exact(scalar_exact: list[int]) -> None:
    """exact (scalar clock): an exit adds the exact CPU to the window; a read charges exactly it."""
    now = scalar_exact
    with LoggingContext("a") as a:
        now[0] += 5_000_000
    assert a in _ledger.get_ledger().pend
    assert a._u is None
    assert a.get_resource_usage().ru_utime == pytest.approx(0.005)
    assert a._u is not None and a._u.ru_utime == pytest.approx(0.005)
    assert {f: getattr(a._u, f) for f in _usage._FIELDS} == {
        "ru_utime": pytest.approx(0.005),
        "ru_stime": 0.0,
        "db_txn_count": 0,
        "db_txn_duration_sec": 0.0,
        "db_sched_duration_sec": 0.0,
        "evt_db_fetch_count": 0,
    }  # the first charge builds the whole usage


def test_a_dropped_context_is_not_given_a_usage_but_its_parent_is_charged(
    monkeypatch: pytest.MonkeyPatch, scalar_exact: list[int]
) -> None:
    """At a window close, an exited context nothing references gets no usage object of its
    own (nobody can read it); its ancestors are charged in full; held contexts are charged."""
    built: list[object] = []
    real_new = _ledger._new_obj

    def counting_new(cls: type) -> object:
        obj = real_new(cls)
        built.append(obj)
        return obj

    now = scalar_exact
    monkeypatch.setattr(_ledger, "_new_obj", counting_new)
    parent = LoggingContext("parent")
    for _ in range(20):
        with LoggingContext("dropped", parent_context=parent):
            now[0] += 100_000
    held = []
    for _ in range(5):
        with LoggingContext("held") as ctx:
            now[0] += 100_000
        held.append(ctx)
    _ledger.settle_pending()
    assert len(built) == 5  # one per held context, none for the 20 dropped ones
    assert all(c._u is not None and c._u.ru_utime == pytest.approx(0.0001) for c in held)
    assert parent.get_resource_usage().ru_utime == pytest.approx(0.002)


def test_dropped_root_contexts_are_not_charged_but_the_thread_total_is(
    monkeypatch: pytest.MonkeyPatch, scalar_exact: list[int]
) -> None:
    """A window close passes no dropped root context on to be charged (nobody can read it);
    the thread's attributed total still counts their CPU."""
    charged: list[object] = []
    real = _ledger._charge_items

    def recording(items: list[tuple[object, int, int]], *args: object) -> None:
        charged.extend(ctx for ctx, _, _ in items)
        real(items, *args)  # type: ignore[arg-type]

    now = scalar_exact
    monkeypatch.setattr(_ledger, "_charge_items", recording)
    led = _ledger.get_ledger()
    before = led.attributed_ns
    for _ in range(10):
        with LoggingContext("dropped"):
            now[0] += 100_000
    kept = LoggingContext("kept")
    with kept:
        now[0] += 100_000
    _ledger.settle_pending()
    assert charged == [kept]
    assert led.attributed_ns - before == 11 * 100_000
    assert kept.get_resource_usage().ru_utime == pytest.approx(0.0001)


# -- armed blocks (``_ledger.arm_exact``): spans and Measure blocks final at their exit ----------


def _armed(name: str, parent: LoggingContext | None = None) -> LoggingContext:
    """A context entered and armed the way ``start_span`` and ``Measure`` do it."""
    ctx = LoggingContext(name, parent_context=parent)
    ctx.__enter__()
    _ledger.arm_exact(ctx)
    return ctx


def test_an_armed_block_is_charged_at_its_exit_without_a_window_close(sampled: None) -> None:
    """An armed block that never switches is charged its thread-clock delta at its exit: it is
    not left pending, and reading it closes no window."""
    with LoggingContext("warm"):
        pass
    _ledger.settle_pending()
    led = _ledger.get_ledger()
    windows = _ledger.stats.windows
    with LoggingContext("p") as p:
        c = _armed("c", p)
        _burn(0.002)
        c.__exit__(None, None, None)
        assert c not in led.pend
        assert c._u is not None and c._u.ru_utime >= 0.0019  # charged at the exit
        assert c.get_resource_usage().ru_utime == c._u.ru_utime
        assert p.get_resource_usage().ru_utime >= c._u.ru_utime  # rolled up at once
    assert _ledger.stats.windows == windows + 1  # p's read closed the window, c's did not
    assert c.late_usage is None and p.late_usage is None


def test_an_armed_blocks_cpu_is_taken_out_of_its_window(sampled: None) -> None:
    """Conservation holds exactly with armed blocks (their CPU leaves the window's split), and
    the enclosing context gets its own share plus the block's, not the block's twice."""
    with LoggingContext("warm"):
        pass
    _ledger.settle_pending()
    led = _ledger.get_ledger()
    total0, clock0 = led.attributed_ns + led.unattributed_ns, led.last_u
    with LoggingContext("p") as p:
        _burn(0.001)
        c = _armed("c", p)
        _burn(0.002)
        c.__exit__(None, None, None)
        _burn(0.001)
    _ledger.settle_pending()
    assert led.attributed_ns + led.unattributed_ns - total0 == led.last_u - clock0
    own = p.get_resource_usage().ru_utime - c.get_resource_usage().ru_utime
    assert 0.0019 <= own <= led.last_u * 1e-9 - clock0 * 1e-9 - 0.0019


def test_an_armed_root_on_a_fresh_window_excludes_earlier_unmetered_cpu(sampled: None) -> None:
    """A context armed on a window with no metered share (a request entered on an idle thread)
    closes that window first: the CPU burnt unmetered before it is not its share at its exit,
    though it slept through the block."""
    led = _settled()
    _burn(0.003)  # unmetered: nothing charged
    unattributed = led.unattributed_ns
    c = _armed("c")
    assert led.unattributed_ns - unattributed >= 2_900_000  # the close at the arm
    time.sleep(0.005)
    c.__exit__(None, None, None)
    assert c._u is not None and c._u.ru_utime < 0.001


def test_a_nested_context_in_an_armed_block_is_charged_as_usual(sampled: None) -> None:
    """A switch inside an armed block (here a nested context) disarms it: the block is charged
    through the window, and its CPU is counted once."""
    with LoggingContext("p") as p:
        c = _armed("c", p)
        with LoggingContext("g", parent_context=c) as g:
            _burn(0.002)
        c.__exit__(None, None, None)
    assert c in _ledger.get_ledger().pend  # left pending: the usual deferred exit
    g_cpu = g.get_resource_usage().ru_utime
    c_cpu = c.get_resource_usage().ru_utime
    assert 0.0019 <= g_cpu <= c_cpu < 2 * g_cpu
    assert p.get_resource_usage().ru_utime < 2 * g_cpu


def test_an_armed_block_that_awaits_gets_none_of_the_other_tasks_cpu(sampled: None) -> None:
    """An armed block suspended while another task burns is charged only its own steps."""

    async def other() -> None:
        with LoggingContext("other"):
            _burn(0.01)

    async def main() -> tuple[float, float]:
        with LoggingContext("p") as p:
            c = _armed("c", p)
            task = asyncio.get_running_loop().create_task(other())
            _burn(0.001)
            await asyncio.sleep(0)  # ``other`` runs its 10 ms here
            _burn(0.001)
            c.__exit__(None, None, None)
            await task
        return c.get_resource_usage().ru_utime, p.get_resource_usage().ru_utime

    c_cpu, p_cpu = aio.run(main())
    assert 0.0019 <= c_cpu <= p_cpu < 0.008


def test_exact_mode_armed_exit_charges_the_last_interval_at_once(scalar_exact: list[int]) -> None:
    """exact (scalar clock): an armed block's exit charges its CPU directly, nothing pending."""
    now = scalar_exact
    with LoggingContext("p") as p:
        c = _armed("c", p)
        now[0] += 700_000
        c.__exit__(None, None, None)
        led = _ledger.get_ledger()
        assert c not in led.pend
        assert c._u is not None and c._u.ru_utime == pytest.approx(0.0007)
        now[0] += 300_000
    assert p.get_resource_usage().ru_utime == pytest.approx(0.001)


def test_arming_needs_the_context_charged_on_this_thread(sampled: None) -> None:
    """arm_exact on a context that is not the one charged here does nothing."""
    c = LoggingContext("c")
    _ledger.arm_exact(c)  # never entered
    assert _ledger.get_ledger().fin is None
    logcontext.configure(clock="off")
    try:
        with LoggingContext("d") as d:
            _ledger.arm_exact(d)  # metering off: the ledger does not follow contexts
        assert _ledger.get_ledger().fin is None
    finally:
        logcontext.configure(clock="cpu", step_mode="sampled")


@pytest.mark.misuse_ok
def test_only_the_cpu_charged_after_the_exit_is_late(scalar_exact: list[int]) -> None:
    """exact (scalar clock): a context charged while it ran and again after its exit, in one
    window, has only the later CPU reported late; the in-block share is charged in time."""
    now = scalar_exact
    p = LoggingContext("p")
    with p:
        now[0] += 400_000
    assert p in _ledger.get_ledger().pend  # the in-block share is still pending
    with PreserveLoggingContext(p):  # work still running in the finished context
        now[0] += 100_000
    assert p.get_resource_usage().ru_utime == pytest.approx(0.0005)
    assert p.late_usage is not None and p.late_usage.ru_utime == pytest.approx(0.0001)


def test_an_armed_block_that_exited_in_the_window_is_not_a_late_ancestor(
    scalar_exact: list[int],
) -> None:
    """A nested context's share charged at the window close, after its armed parent exited
    (charged at its own exit, so absent from the window's shares), is not late for it."""
    now = scalar_exact
    with LoggingContext("p") as p:
        c = _armed("c", p)
        with LoggingContext("g", parent_context=c) as g:
            _ledger.settle_pending()  # a window closes: c's (empty) share goes with it
            now[0] += 100_000
        now[0] += 50_000
        c.__exit__(None, None, None)
    assert g in _ledger.get_ledger().pend  # still pending when c and p have exited
    _ledger.settle_pending()
    assert c.late_usage is None and p.late_usage is None
    assert c.get_resource_usage().ru_utime == pytest.approx(0.00015)


def test_arming_twice_keeps_the_first_reading(sampled: None) -> None:
    """A block armed again (a context span started inside an armed transaction) is charged from
    its first arming, not from the second."""
    with LoggingContext("p") as p:
        c = _armed("c", p)
        _burn(0.001)
        _ledger.arm_exact(c)
        _burn(0.001)
        c.__exit__(None, None, None)
        assert c._u is not None and c._u.ru_utime >= 0.0019


# -- the fused measured child (``enter_measured_child`` / ``exit_measured_child``) ----------


def _settled() -> _ledger.Ledger:
    with LoggingContext("warm"):
        pass
    _ledger.settle_pending()
    return _ledger.get_ledger()


def test_a_measured_child_returns_final_figures_without_a_window_close(sampled: None) -> None:
    """Uninterrupted, the measured child's exit charges its thread-clock delta and returns the
    figures ``get_resource_usage()`` gives, already rolled up, with no window close."""
    led = _settled()
    with LoggingContext("p") as p:
        windows = _ledger.stats.windows
        c = enter_measured_child(p)
        assert logcontext.current_context() is c and c.name == "p"
        _burn(0.002)
        figures = exit_measured_child(c)
        assert _ledger.stats.windows == windows
        assert logcontext.current_context() is p and c.finished
        assert figures is not None and figures[0] >= 0.0019
        assert c not in led.pend and led.fin is None
        u = c.get_resource_usage()
        assert figures == (
            u.ru_utime,
            u.ru_stime,
            u.db_txn_count,
            u.db_txn_duration_sec,
            u.db_sched_duration_sec,
            u.evt_db_fetch_count,
        )
        assert p.get_resource_usage().ru_utime >= figures[0]
    assert c.late_usage is None and p.late_usage is None


def test_a_measured_childs_figures_include_what_it_was_charged_before(sampled: None) -> None:
    """Figures the block added itself (here DB time) come back with the CPU charged at exit."""
    _settled()
    with LoggingContext("p") as p:
        c = enter_measured_child(p)
        c.add_database_transaction(0.25)
        figures = exit_measured_child(c)
    assert figures is not None
    assert figures[2] == 1 and figures[3] == pytest.approx(0.25)
    assert p.get_resource_usage().db_txn_count == 1


def test_a_measured_child_keeps_conservation_exact(sampled: None) -> None:
    """Its CPU leaves the window's split: attributed plus unattributed equals the thread clock."""
    led = _settled()
    total0, clock0 = led.attributed_ns + led.unattributed_ns, led.last_u
    with LoggingContext("p") as p:
        _burn(0.001)
        c = enter_measured_child(p)
        _burn(0.002)
        assert exit_measured_child(c) is not None
        _burn(0.001)
    _ledger.settle_pending()
    assert led.attributed_ns + led.unattributed_ns - total0 == led.last_u - clock0
    assert p.get_resource_usage().ru_utime - c.get_resource_usage().ru_utime >= 0.0019


def test_a_measured_child_that_switches_falls_back_to_the_window(sampled: None) -> None:
    """A nested context inside the block: the exit is the usual deferred one (no figures)."""
    led = _settled()
    with LoggingContext("p") as p:
        c = enter_measured_child(p)
        with LoggingContext("g", parent_context=c):
            _burn(0.001)
        assert exit_measured_child(c) is None
        assert c in led.pend and c.finished
        assert c.get_resource_usage().ru_utime >= 0.0009


def test_a_measured_child_in_a_foreign_context_is_reported(
    sampled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Exited in another ``contextvars.Context``: reported as ``foreign-exit``, nothing raised,
    no figures, the calling Context's current context left alone."""
    import contextvars

    with LoggingContext("p") as p:
        c = enter_measured_child(p)
        other = contextvars.copy_context()
        with caplog.at_level("DEBUG", logger="logcontext.misuse"):
            assert other.run(exit_measured_child, c) is None
        assert logcontext.current_context() is c  # ours: untouched by the foreign exit
        assert c.finished
        assert any("different contextvars.Context" in r.getMessage() for r in caplog.records)
        logcontext.set_current_context(p)  # undo the leak the foreign exit had to leave


@pytest.mark.parametrize("mode", ["exact", "lazy"])
def test_a_measured_child_in_the_scalar_modes_is_exact(scalar_exact: list[int], mode: str) -> None:
    """Outside ``sampled`` the calls are enter, arm and exit: the last interval is charged."""
    now = scalar_exact
    logcontext.configure(step_mode=mode)
    with _ledger.use_scalar_clock(lambda: now[0]):
        with LoggingContext("p") as p:
            c = enter_measured_child(p)
            now[0] += 70_000
            assert exit_measured_child(c) is None
            assert c.get_resource_usage().ru_utime == pytest.approx(0.00007)


def test_a_measured_child_on_a_thread_charging_nothing_is_measured_too(sampled: None) -> None:
    """A worker thread (no context charged) measures a child of another thread's context the
    same way: final figures at the exit, rolled up into the parent at once."""
    out: list[object] = []

    with LoggingContext("p") as p:

        def work() -> None:
            _ledger.get_ledger()  # a fresh ledger: nothing charged, nothing pending
            c = enter_measured_child(p)
            _burn(0.002)
            out.append(exit_measured_child(c))
            out.append(_ledger.get_ledger().pend.copy())

        t = threading.Thread(target=work)
        t.start()
        t.join()
    figures, pend = out
    assert isinstance(figures, tuple) and figures[0] >= 0.0019
    assert pend == {}
    assert p.get_resource_usage().ru_utime >= figures[0]


def test_a_measured_child_that_blocks_gets_what_its_parent_leaves(sampled: None) -> None:
    """One reading at the exit splits the window: a block that sleeps through most of the
    window is served last, so it is not charged the CPU its parent burnt before it."""
    _settled()
    with LoggingContext("p") as p:
        _burn(0.002)
        c = enter_measured_child(p)
        time.sleep(0.01)
        figures = exit_measured_child(c)
    assert figures is not None and figures[0] < 0.001
    assert p.get_resource_usage().ru_utime - figures[0] >= 0.0019


def test_a_measured_child_on_a_fresh_window_excludes_earlier_unmetered_cpu(sampled: None) -> None:
    """A thread charging nothing with no metered share in its window (a worker between jobs)
    closes the window at the enter: CPU it burnt unmetered before the block is not the block's,
    even when the block sleeps (its wall time is no measure of its CPU)."""
    out: list[object] = []

    with LoggingContext("p") as p:

        def work() -> None:
            led = _ledger.get_ledger()
            _burn(0.005)  # unmetered: nothing is charged on this thread
            windows = _ledger.stats.windows
            c = enter_measured_child(p)
            out.append(_ledger.stats.windows - windows)
            time.sleep(0.005)
            out.append(exit_measured_child(c))
            out.append(led.unattributed_ns)

        t = threading.Thread(target=work)
        t.start()
        t.join()
    closed, figures, unattributed = out
    assert closed == 1
    assert isinstance(figures, tuple) and figures[0] < 0.001
    assert isinstance(unattributed, int) and unattributed >= 4_900_000


@given(
    k=st.integers(0, 10**7),
    others=st.lists(st.integers(0, 10**7), max_size=3),
    idle=st.integers(0, 10**7),
    c=st.integers(-1000, 4 * 10**7),
)
@settings(max_examples=300, deadline=None)
def test_armed_share_is_what_a_window_close_would_give_the_block(
    k: int, others: list[int], idle: int, c: int
) -> None:
    """``armed_share`` (one reading at an armed block's exit) gives the block what closing the
    window there would: checked against ``close_window`` on a ledger with a scripted clock
    (within the close's rounding, one ns per other share)."""
    root = LoggingContext("root")
    block = LoggingContext("block", parent_context=root)
    shares = [LoggingContext(f"o{i}", parent_context=root) for i in range(len(others))]
    span = k + sum(others) + idle
    led = _ledger.Ledger()
    led.fast = 2
    led.flags_gen = logcontext.clock._generation
    led.cpuclk = lambda: c
    led.last_u = led.taken = 0
    led.wopen, led.window_ns = 0, 10**12
    for ctx, w in zip(shares, others, strict=True):
        led.pend[ctx] += w
    led.pend[block] += k
    try:
        items = _ledger.close_window(led, span, block, k)
    finally:
        led.attributed_ns = led.unattributed_ns = 0  # folded into the thread's totals when freed
    by_close = sum(u + s for ctx, u, s in items if ctx is block)
    share = _ledger.armed_share(k, c, sum(others), span)
    assert 0 <= share <= k
    assert abs(share - by_close) <= len(others)


def test_a_measured_child_is_built_as_child_context_builds_it(sampled: None) -> None:
    """``enter_measured_child`` inlines ``child_context``: the two build the same object (every
    slot equal but the token the enter sets)."""
    from logcontext._context import child_context

    with LoggingContext("p", server_name="hs") as p:
        c = enter_measured_child(p)
        built = child_context(p)
        slots = [n for k in type(c).__mro__ for n in getattr(k, "__slots__", ()) if n != "_token"]
        assert slots
        for name in slots:
            assert getattr(c, name, "unset") == getattr(built, name, "unset"), name
        exit_measured_child(c)


def test_a_lossy_window_makes_measured_children_use_a_clock_pair(sampled: None) -> None:
    """A window whose CPU fell well short of its metered wall time (here the parent slept, as a
    GIL wait would look) switches the thread to clock pairs: a child after a parent that slept
    in its window is charged its own CPU, not a proportion of the window's."""
    led = _settled()
    with LoggingContext("p") as p:
        time.sleep(0.005)
        p.get_resource_usage()  # closes the window: 5 ms metered, almost no CPU
        assert led.pair
        time.sleep(0.003)  # in the new window, before the block
        c = enter_measured_child(p)
        assert led.fin_t0 >= 0
        _burn(0.001)
        figures = exit_measured_child(c)
    assert figures is not None and 0.0009 <= figures[0] < 0.002


def test_a_clean_window_close_returns_to_one_reading(sampled: None) -> None:
    """Once a window closes with its CPU covering its metered wall time, blocks are measured
    with one reading at their exit again."""
    led = _settled()
    with LoggingContext("p") as p:
        time.sleep(0.005)
        p.get_resource_usage()
        assert led.pair
        _burn(0.002)
        p.get_resource_usage()
        assert not led.pair
        c = enter_measured_child(p)
        assert led.fin_t0 == -1
        exit_measured_child(c)


def test_a_lossy_share_at_a_measured_childs_exit_switches_to_pairs(sampled: None) -> None:
    """A one-reading exit that finds the window's CPU well short of its wall time charges the
    window's proportion (the documented drift) and measures the following blocks by pairs."""
    led = _settled()
    with LoggingContext("p") as p:
        time.sleep(0.003)
        c = enter_measured_child(p)
        assert led.fin_t0 == -1 and not led.pair
        _burn(0.001)
        figures = exit_measured_child(c)
        assert led.pair
        assert figures is not None and figures[0] < 0.0009  # a proportion of the window's CPU
        c2 = enter_measured_child(p)
        assert led.fin_t0 >= 0
        exit_measured_child(c2)


@pytest.mark.parametrize(
    ("wall", "cpu", "lossy"),
    [
        (1_000_000, 960_000, False),  # 4 % short
        (1_000_000, 940_000, True),  # 6 % short
        (200_000, 180_000, False),  # 10 % short but only 20 us: clock offsets, not waits
        (300_000, 270_000, True),
        (1_000_000, 1_200_000, False),  # unmetered CPU in the window
    ],
)
def test_lossy_needs_five_percent_and_twenty_microseconds(wall: int, cpu: int, lossy: bool) -> None:
    """A window is lossy when its CPU is short of the metered wall time by > 5 % and > 20 us."""
    assert _ledger._lossy(wall, cpu) is lossy


def test_an_armed_context_after_a_lossy_window_is_measured_by_a_pair(sampled: None) -> None:
    """The generic arm (contexts that own a span) follows the same rule as measured children."""
    led = _settled()
    with LoggingContext("p") as p:
        time.sleep(0.005)
        p.get_resource_usage()
        assert led.pair
        time.sleep(0.003)
        c = _armed("c", p)
        assert led.fin_t0 >= 0
        _burn(0.001)
        c.__exit__(None, None, None)
        assert c._u is not None and 0.0009 <= c._u.ru_utime < 0.002
