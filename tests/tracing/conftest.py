"""Fixtures for the tracing tests: one harness per backend, each recording finished spans.

``tracing`` is parametrised over the OTel SDK (in-memory exporter), opentracing's ``MockTracer``
and jaeger-client with its in-memory reporter; every harness normalises finished spans to
:class:`Finished` so the same assertions run against all three.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from _tracing_harness import Harness

from logcontext import _hooks
from logcontext.tracing import _api, set_propagation_allowlist, shutdown_tracing


@pytest.fixture(autouse=True)
def _reset_tracing() -> Iterator[None]:
    """Every test starts and ends uninitialised, with an empty allow-list."""
    shutdown_tracing(2.0)
    yield
    shutdown_tracing(2.0)
    set_propagation_allowlist(())
    _api._logged_errors.clear()
    _hooks.span_ender = None


@pytest.fixture(params=["otel", "mock", "jaeger"])
def tracing(request: pytest.FixtureRequest) -> Harness:
    """An initialised backend (default options); see :class:`Harness`."""
    return Harness(request.param).init()


@pytest.fixture
def otel() -> Harness:
    """The OTel SDK backend with an in-memory exporter."""
    return Harness("otel").init()


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    """Build a harness with custom ``init_tracing`` options: ``make_harness("otel", ...)``."""
    return lambda kind, **kwargs: Harness(kind).init(**kwargs)


class UdpAgent:
    """A UDP socket standing in for a Jaeger agent on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def receive(self, timeout_s: float = 10.0) -> list[bytes]:
        """Datagrams received so far, waiting up to ``timeout_s`` for the first one."""
        out: list[bytes] = []
        self.sock.settimeout(timeout_s)
        try:
            out.append(self.sock.recv(65535))
            self.sock.settimeout(0.2)
            while True:
                out.append(self.sock.recv(65535))
        except (TimeoutError, BlockingIOError):
            pass
        return out


@pytest.fixture
def udp_agent() -> Iterator[UdpAgent]:
    """A bound UDP socket (free port) that collects jaeger-client's emitBatch datagrams."""
    agent = UdpAgent()
    yield agent
    agent.sock.close()
