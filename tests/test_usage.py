"""ContextResourceUsage arithmetic and roll-up to parents (spec §1.1, §1.3; §10 item 29)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logcontext import ContextResourceUsage, LoggingContext
from logcontext.testing import MisuseDuringTest, strict

FIELDS = (
    "ru_utime",
    "ru_stime",
    "db_txn_count",
    "db_txn_duration_sec",
    "db_sched_duration_sec",
    "evt_db_fetch_count",
)


def make(values: list[int]) -> ContextResourceUsage:
    u = ContextResourceUsage()
    for f, v in zip(FIELDS, values, strict=True):
        setattr(u, f, v if "count" in f else float(v))
    return u


def test_zero_and_copy() -> None:
    """A new usage is all zeros; copy() and copy_from give equal, independent objects."""
    u = ContextResourceUsage()
    assert all(getattr(u, f) == 0 for f in FIELDS)
    u.db_txn_count = 3
    c = u.copy()
    assert c == u and c is not u
    c.db_txn_count = 4
    assert u.db_txn_count == 3
    assert ContextResourceUsage(copy_from=u) == u


def test_slots_only_fields() -> None:
    """The object has __slots__: no other attribute can be set."""
    with pytest.raises(AttributeError):
        ContextResourceUsage().other = 1  # type: ignore[attr-defined]


@given(
    st.lists(st.integers(-1000, 1000), min_size=6, max_size=6),
    st.lists(st.integers(-1000, 1000), min_size=6, max_size=6),
)
def test_arithmetic_fieldwise(a: list[int], b: list[int]) -> None:
    """+, -, += and -= act field by field; + and - return new objects."""
    ua, ub = make(a), make(b)
    s = ua + ub
    d = ua - ub
    for i, f in enumerate(FIELDS):
        assert getattr(s, f) == a[i] + b[i]
        assert getattr(d, f) == a[i] - b[i]
    assert ua == make(a)
    same = ua
    ua += ub
    assert ua is same and ua == s
    ua -= ub
    assert ua == make(a)


def test_clamped_and_reset_and_repr() -> None:
    """clamped() raises negative fields to zero; reset() zeroes; repr names every field."""
    u = make([-1, 2, -3, 4, -5, 6])
    c = u.clamped()
    assert (c.ru_utime, c.ru_stime, c.db_txn_count, c.evt_db_fetch_count) == (0.0, 2.0, 0, 6)
    assert u.ru_utime == -1.0
    assert all(f in repr(u) for f in FIELDS)
    assert u.as_dict()["db_sched_duration_sec"] == -5.0
    u.reset()
    assert u == ContextResourceUsage()


def test_db_figures_roll_up_to_every_ancestor() -> None:
    """A record on a grandchild reaches the child and the root at once; the child keeps its own total."""
    root = LoggingContext("root")
    child = LoggingContext("child", parent_context=root)
    grandchild = LoggingContext("gc", parent_context=child)
    sibling = LoggingContext("sib", parent_context=root)
    grandchild.record_db_txn(0.25)
    grandchild.record_db_scheduled(0.5)
    grandchild.record_event_fetch(3)
    sibling.record_db_txn(0.75)
    root.add_cputime(1.0, 0.5)
    r, c, g = root.get_resource_usage(), child.get_resource_usage(), grandchild.get_resource_usage()
    assert (r.db_txn_count, r.db_txn_duration_sec, r.evt_db_fetch_count) == (2, 1.0, 3)
    assert (c.db_txn_count, c.db_sched_duration_sec, c.evt_db_fetch_count) == (1, 0.5, 3)
    assert g.db_txn_count == 1 and g.ru_utime == 0.0
    assert r.ru_utime == 1.0 and r.ru_stime == 0.5 and c.ru_utime == 0.0


def test_cpu_rolls_up_while_child_runs() -> None:
    """A parent's CPU includes a running child's finished checkpoints (no move-and-reset)."""
    with LoggingContext("parent") as parent:
        with LoggingContext("child", parent_context=parent) as child:
            x = 0
            for i in range(200_000):
                x += i
            with LoggingContext("grandchild", parent_context=child):
                for i in range(200_000):
                    x += i
            mid_child = child.get_resource_usage().ru_utime
            mid_parent = parent.get_resource_usage().ru_utime  # read later: includes at least as much
        assert mid_parent >= mid_child > 0
    assert parent.get_resource_usage().ru_utime >= child.get_resource_usage().ru_utime > 0


def test_negative_arguments_raise() -> None:
    """Negative arguments to add_cputime and record_* raise ValueError."""
    ctx = LoggingContext("n")
    for call in (
        lambda: ctx.add_cputime(-1.0),
        lambda: ctx.add_cputime(0.0, -1.0),
        lambda: ctx.record_db_txn(-0.1),
        lambda: ctx.record_db_scheduled(-0.1),
        lambda: ctx.record_event_fetch(-1),
    ):
        with pytest.raises(ValueError):
            call()


def test_late_usage_counted_and_reported_once() -> None:
    """Usage after the block exited is still counted, summed in late_usage, reported once per context."""
    parent = LoggingContext("parent")
    child = LoggingContext("child", parent_context=parent)
    with parent:
        pass
    with pytest.raises(MisuseDuringTest) as info:
        with strict():
            for _ in range(1000):
                child.record_db_txn(0.001)
    assert [r.kind for r in info.value.reports] == ["late-usage"]
    assert parent.get_resource_usage().db_txn_count == 1000
    assert parent.late_usage is not None and parent.late_usage.db_txn_count == 1000
    assert child.late_usage is None


def test_threads_add_exactly() -> None:
    """8 threads x 2,000 transactions into children of one parent give exactly 16,000 on the parent."""
    parent = LoggingContext("parent")

    def work() -> None:
        with LoggingContext("t", parent_context=parent) as c:
            for _ in range(2000):
                c.record_db_txn(0.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert parent.get_resource_usage().db_txn_count == 16_000
