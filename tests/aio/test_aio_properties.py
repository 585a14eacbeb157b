"""Property: random nesting and interleaving of contexts across metered tasks (spec §1.3, §2.3)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logcontext
from logcontext import SENTINEL_CONTEXT, LoggingContext, _ledger, aio, current_context
from logcontext.clock import FakeClock, use_clock

# One op per list item: ("enter",), ("arm",) (enter, then arm like a span or Measure block),
# ("exit",), ("burn", us), ("yield",)
op = st.one_of(
    st.just(("enter",)),
    st.just(("arm",)),
    st.just(("exit",)),
    st.tuples(st.just("burn"), st.integers(min_value=1, max_value=500)),
    st.just(("yield",)),
)
programs = st.lists(st.lists(op, max_size=12), min_size=1, max_size=5)


@contextlib.contextmanager
def _clocks(path: str) -> Iterator[FakeClock]:
    fake = FakeClock()
    wall = [0]

    def read_wall() -> int:
        return wall[0]

    fake.wall = wall  # type: ignore[attr-defined]
    with use_clock(fake), _ledger.use_wall_clock(read_wall):
        if path == "fast":
            with _ledger.use_scalar_clock(lambda: sum(fake.read())):
                yield fake
        else:
            yield fake


@pytest.mark.parametrize(
    ("mode", "path"),
    [("exact", "generic"), ("exact", "fast"), ("lazy", "fast"), ("sampled", "generic")],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(progs=programs)
def test_random_interleavings_never_leak_and_roll_up(mode: str, path: str, progs: list[list[tuple]]) -> None:
    """Each task only ever sees its own innermost context (or the one it inherited), ends where
    it started, and every context's usage equals its own burns plus its children's usage
    (armed blocks included)."""
    logcontext.configure(step_mode=mode)  # type: ignore[arg-type]
    own: dict[LoggingContext, int] = {}
    children: dict[LoggingContext, list[LoggingContext]] = {}
    with _clocks(path) as fake:
        _ledger.set_sample_window(0.001)

        async def run(prog: list[tuple], base: object) -> None:
            stack: list[LoggingContext] = []
            cms: list[LoggingContext] = []
            for o in prog:
                top = stack[-1] if stack else base
                assert current_context() is top
                if o[0] in ("enter", "arm"):
                    parent = top if isinstance(top, LoggingContext) else None
                    ctx = LoggingContext(f"c{len(own)}", parent_context=parent)
                    own[ctx] = 0
                    children.setdefault(ctx, [])
                    if parent is not None:
                        children[parent].append(ctx)
                    cms.append(ctx.__enter__())
                    stack.append(ctx)
                    if o[0] == "arm":
                        _ledger.arm_exact(ctx)
                elif o[0] == "exit" and stack:
                    stack.pop()
                    cms.pop().__exit__(None, None, None)
                elif o[0] == "burn":
                    ns = o[1] * 1000
                    fake.advance(ns)
                    fake.wall[0] += ns  # type: ignore[attr-defined]
                    if isinstance(top, LoggingContext):
                        own[top] += ns
                elif o[0] == "yield":
                    await asyncio.sleep(0)
            while cms:
                cms.pop().__exit__(None, None, None)
            assert current_context() is base

        async def main() -> None:
            with LoggingContext("root") as root:
                own[root] = 0
                children[root] = []
                # half the tasks inherit "root", half start in the sentinel
                tasks = []
                for i, p in enumerate(progs):
                    if i % 2:
                        with logcontext.PreserveLoggingContext():
                            tasks.append(asyncio.create_task(run(p, SENTINEL_CONTEXT)))
                    else:
                        tasks.append(asyncio.create_task(run(p, root)))
                await asyncio.gather(*tasks)
            assert not current_context()

        # tasks inheriting root may create children of root
        aio.run(main())
        assert _ledger.get_ledger().charged is SENTINEL_CONTEXT

    def inclusive(c: LoggingContext) -> int:
        return own[c] + sum(inclusive(k) for k in children[c])

    for ctx in own:
        got = ctx.get_resource_usage().ru_utime
        assert got == pytest.approx(inclusive(ctx) * 1e-9, abs=1e-9)
        kids = sum(k.get_resource_usage().ru_utime for k in children[ctx])
        assert got == pytest.approx(own[ctx] * 1e-9 + kids, abs=1e-9)


def _burn_us(us: int) -> None:
    end = time.thread_time_ns() + us * 1000
    while time.thread_time_ns() < end:
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(progs=programs)
def test_real_clock_sampled_armed_blocks_conserve_and_roll_up(progs: list[list[tuple]]) -> None:
    """Real clocks, ``sampled``, short windows, armed and plain blocks interleaved across tasks:
    the thread's attributed plus unattributed CPU equals its clock's advance exactly, a parent's
    usage is at least the sum of its children's, and nothing is reported late."""
    logcontext.configure(clock="cpu", step_mode="sampled")
    _ledger.set_sample_window(0.05)
    children: dict[LoggingContext, list[LoggingContext]] = {}
    try:

        async def run(prog: list[tuple]) -> None:
            stack: list[LoggingContext] = []
            for o in prog:
                if o[0] in ("enter", "arm"):
                    parent = stack[-1] if stack else None
                    ctx = LoggingContext(f"c{len(children)}", parent_context=parent)
                    children[ctx] = []
                    if parent is not None:
                        children[parent].append(ctx)
                    ctx.__enter__()
                    stack.append(ctx)
                    if o[0] == "arm":
                        _ledger.arm_exact(ctx)
                elif o[0] == "exit" and stack:
                    stack.pop().__exit__(None, None, None)
                elif o[0] == "burn":
                    _burn_us(min(o[1], 100))
                elif o[0] == "yield":
                    await asyncio.sleep(0)
            while stack:
                stack.pop().__exit__(None, None, None)

        async def main() -> tuple[int, int]:
            led = _ledger.get_ledger()
            with LoggingContext("warm"):  # a switch applies the settings; settle closes the window
                pass
            _ledger.settle(SENTINEL_CONTEXT)
            before = (led.attributed_ns + led.unattributed_ns, led.last_u)
            await asyncio.gather(*(run(p) for p in progs))
            _ledger.settle(SENTINEL_CONTEXT)
            return led.attributed_ns + led.unattributed_ns - before[0], led.last_u - before[1]

        accounted, advanced = aio.run(main())
    finally:
        _ledger.set_sample_window(1.0)
    assert accounted == advanced
    for ctx, kids in children.items():
        assert ctx.late_usage is None
        total = ctx.get_resource_usage().ru_utime
        assert total >= sum(k.get_resource_usage().ru_utime for k in kids) - 1e-9
