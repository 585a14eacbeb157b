"""Test harness for the Twisted integration tests (used by ``conftest.py``'s ``tw`` fixture).

``TwistedHarness`` gives each test a fresh reactor of one flavour — ``select`` (the default,
non-asyncio reactor family: ``callLater`` captures no ``Context``) or ``asyncio``
(``AsyncioSelectorReactor`` on a new event loop) — iterated by hand with bounded
loops, never ``reactor.run()``. At teardown a raw ``callLater`` probe asserts the
reactor's callbacks still run in the sentinel (no context leaked into it), then the
reactor is stopped (its thread pool joined) and its file descriptors closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.selectreactor import SelectReactor
from twisted.python.failure import Failure

from logcontext import current_context

REACTORS = ("select", "asyncio")


class TwistedHarness:
    """A per-test reactor plus helpers to drive it for a bounded time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        if kind == "select":
            self.reactor: Any = SelectReactor()
        else:
            self.loop = asyncio.new_event_loop()
            self.reactor = AsyncioSelectorReactor(self.loop)
        self.reactor.startRunning(installSignalHandlers=False)

    def spin(self, until: Callable[[], bool], timeout: float = 5.0, step: float = 0.002) -> None:
        """Iterate the reactor until ``until()`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"reactor condition not met within {timeout} s")
            self.reactor.iterate(step)

    def wait(self, d: Deferred[Any], timeout: float = 5.0) -> Any:
        """Spin until ``d`` fires; return its result or raise its failure."""
        box: list[Any] = []
        d.addBoth(box.append)
        self.spin(lambda: bool(box), timeout)
        res = box[0]
        if isinstance(res, Failure):
            res.raiseException()
        return res

    def sleep(self, seconds: float) -> Deferred[None]:
        """A Deferred fired by a raw ``callLater`` (no context captured)."""
        d: Deferred[None] = Deferred()
        self.reactor.callLater(seconds, d.callback, None)
        return d

    def probe_context(self) -> object:
        """What a raw ``callLater(0)`` callback sees as the current context."""
        seen: list[object] = []
        self.reactor.callLater(0, lambda: seen.append(current_context()))
        self.spin(lambda: bool(seen))
        return seen[0]

    def close(self) -> None:
        r = self.reactor
        r.stop()
        deadline = time.monotonic() + 5
        while (r.threadpool is not None or r.running) and time.monotonic() < deadline:
            r.iterate(0.001)
        for c in r.getDelayedCalls():
            c.cancel()
        internal = getattr(r, "_internalReaders", None)
        if internal:
            for reader in list(internal):
                r.removeReader(reader)
                reader.connectionLost(None)
            internal.clear()
        r.disconnectAll()
        if self.loop is not None:
            self.loop.close()
