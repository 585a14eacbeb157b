"""Fixtures for the Twisted integration tests.

``tw`` gives each test a fresh reactor of one flavour — ``select`` (the default,
non-asyncio reactor family: ``callLater`` captures no ``Context``) or ``asyncio``
(``AsyncioSelectorReactor`` on a new event loop) — iterated by hand with bounded
loops, never ``reactor.run()``. At teardown a raw ``callLater`` probe asserts the
reactor's callbacks still run in the sentinel (no context leaked into it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _twisted_harness import REACTORS, TwistedHarness

import logcontext.twisted as lt


@pytest.fixture(params=REACTORS)
def tw(request: pytest.FixtureRequest) -> Iterator[TwistedHarness]:
    """A fresh reactor (both flavours); asserts no context leaked into it at teardown."""
    h = TwistedHarness(request.param)
    lt.install(h.reactor)
    try:
        yield h
        seen = h.probe_context()
        assert not seen, f"context {seen!r} leaked into the {h.kind} reactor"
    finally:
        lt.uninstall()
        h.close()
