"""Property tests: random nesting across tasks and threads (issue: foundation, must show)."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logcontext import SENTINEL_CONTEXT, LoggingContext, current_context

# An op program: "enter" (a child of the current context, or a root), "exit",
# "yield" (let other tasks run), "record" (one DB transaction).
OPS = st.lists(st.sampled_from(["enter", "enter-root", "exit", "yield", "record"]), max_size=25)
PROGRAMS = st.lists(OPS, min_size=1, max_size=6)


class Book:
    """Records direct DB counts per context and the parent relation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.direct: dict[LoggingContext, int] = defaultdict(int)
        self.children: dict[LoggingContext, list[LoggingContext]] = defaultdict(list)
        self.all: list[LoggingContext] = []

    def new(self, parent: LoggingContext | None, name: str) -> LoggingContext:
        ctx = LoggingContext(name, parent_context=parent)
        with self.lock:
            self.all.append(ctx)
            if parent is not None:
                self.children[parent].append(ctx)
        return ctx

    def check(self) -> None:
        def total(c: LoggingContext) -> int:
            return self.direct[c] + sum(total(k) for k in self.children[c])

        for c in self.all:
            assert c.get_resource_usage().db_txn_count == total(c)


def step(book: Book, stack: list[LoggingContext], op: str, name: str) -> None:
    if op.startswith("enter"):
        parent = stack[-1] if stack and op == "enter" else None
        ctx = book.new(parent, name)
        ctx.__enter__()
        stack.append(ctx)
    elif op == "exit" and stack:
        stack.pop().__exit__(None, None, None)
    elif op == "record" and stack:
        stack[-1].record_db_txn(0.0)
        with book.lock:
            book.direct[stack[-1]] += 1
    expected = stack[-1] if stack else SENTINEL_CONTEXT
    assert current_context() is expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROGRAMS)
def test_tasks_never_see_foreign_contexts(programs: list[list[str]]) -> None:
    """Interleaved tasks each see exactly their own context stack; the loop ends in the sentinel."""
    book = Book()

    async def run(i: int, program: list[str]) -> None:
        stack: list[LoggingContext] = []
        for j, op in enumerate(program):
            if op == "yield":
                await asyncio.sleep(0)
            step(book, stack, op, f"t{i}-{j}")
        while stack:
            stack.pop().__exit__(None, None, None)
        assert current_context() is SENTINEL_CONTEXT

    async def main() -> None:
        await asyncio.gather(*(run(i, p) for i, p in enumerate(programs)))
        assert current_context() is SENTINEL_CONTEXT

    asyncio.run(main())
    assert current_context() is SENTINEL_CONTEXT
    book.check()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROGRAMS)
def test_threads_never_see_foreign_contexts(programs: list[list[str]]) -> None:
    """Threads each see their own stack; usage of every context equals its own plus its children's."""
    book = Book()
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(programs))

    def run(i: int, program: list[str]) -> None:
        try:
            barrier.wait(timeout=10)
            stack: list[LoggingContext] = []
            for j, op in enumerate(program):
                step(book, stack, op, f"th{i}-{j}")
            while stack:
                stack.pop().__exit__(None, None, None)
            assert current_context() is SENTINEL_CONTEXT
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(programs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert current_context() is SENTINEL_CONTEXT
    book.check()
