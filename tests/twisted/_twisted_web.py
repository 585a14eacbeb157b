"""Twisted Web helpers for the tests: small resources and an in-memory HTTP client."""

from __future__ import annotations

import logging
from typing import Any

from _twisted_harness import TwistedHarness
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

import logcontext.twisted as lt
from logcontext import current_context
from logcontext.web import request_handler

app_log = logging.getLogger("lc.test.web")


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        app_log.info("rendering hello")
        return b"hello"


class Slow(Resource):
    """Finishes after a reactor sleep, from a coroutine started in ``render``."""

    isLeaf = True

    def __init__(self, tw: TwistedHarness, finish: bool = True) -> None:
        super().__init__()
        self.tw = tw
        self.finish = finish
        self.seen: list[str] = []

    def render_GET(self, request: Any) -> Any:
        async def later() -> None:
            self.seen.append(str(current_context()))
            await self.tw.sleep(0.001)
            self.seen.append(str(current_context()))
            app_log.info("slow done")
            if self.finish:
                request.write(b"slow")
                request.finish()

        lt.ensure_deferred(later())
        return NOT_DONE_YET


class Broken(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise RuntimeError("render failed")


class Decorated(Resource):
    isLeaf = True

    @request_handler("hello_servlet", tag="greeting")
    def render_GET(self, request: Any) -> bytes:
        return b"decorated"


class Client:
    """One HTTP connection to a ``Site`` over an in-memory transport."""

    def __init__(self, tw: TwistedHarness, root: Resource, **options: Any) -> None:
        self.site = Site(lt.LogContextResource(root, **options), reactor=tw.reactor)
        self.site.timeOut = None
        peer = IPv4Address("TCP", "10.1.2.3", 40000)
        self.transport = StringTransport(peerAddress=peer)
        self.proto = self.site.buildProtocol(peer)
        assert self.proto is not None
        self.proto.makeConnection(self.transport)

    def get(self, path: str, headers: dict[str, str] | None = None) -> None:
        lines = [f"GET {path} HTTP/1.1", "Host: test", "User-Agent: lc-test/1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))
