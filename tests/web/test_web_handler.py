"""``@request_handler`` without a middleware, and ``set_requester`` outside requests (spec §9)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pytest
from _servers import RecordCollector

from logcontext import current_context
from logcontext.web import request_handler, set_requester


class FakeRequest:
    """Looks like an aiohttp request (method, headers, raw_path, remote)."""

    method = "POST"
    headers: ClassVar[dict[str, str]] = {"User-Agent": "ua/2"}
    raw_path = "/send?access_token=abc"
    remote = "192.0.2.1"


class FakeResponse:
    status = 201
    body = b"created"


async def test_standalone_async_handler(records: RecordCollector) -> None:
    """The decorator creates a parentless request context and logs a line from the response."""
    seen: list[Any] = []

    @request_handler("send", tag="t")
    async def handler(request: FakeRequest) -> FakeResponse:
        ctx = current_context()
        seen.append((ctx.name, ctx.parent_context, ctx.tag, ctx.request.url))  # type: ignore[union-attr]
        set_requester("@u:hs")
        return FakeResponse()

    assert isinstance(await handler(FakeRequest()), FakeResponse)
    (name, parent, tag, url) = seen[0]
    assert re.fullmatch(r"POST-\d+", name) and parent is None and tag == "t"
    assert url == "/send?access_token=<redacted>"
    (rec,) = records.access()
    assert rec.access["servlet"] == "send"  # type: ignore[attr-defined]
    assert re.search(
        r"^192\.0\.2\.1 - handler - \{@u:hs\} .* 7B 201 "
        r'"POST /send\?access_token=<redacted> HTTP/1\.1" "ua/2"',
        rec.getMessage(),
    )
    assert not current_context()


def test_standalone_sync_handler_exception(records: RecordCollector) -> None:
    """A raising sync handler still logs (500) and the exception propagates."""

    @request_handler
    def boom(request: FakeRequest) -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom(FakeRequest())
    (rec,) = records.access()
    assert " 500 " in rec.getMessage()
    assert rec.access["servlet"].endswith("boom")  # type: ignore[attr-defined]


def test_set_requester_outside_request_and_bad_args() -> None:
    """Outside a request set_requester does nothing; wrong types raise TypeError."""
    set_requester("@u:hs")
    with pytest.raises(TypeError):
        set_requester(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        request_handler(3)  # type: ignore[call-overload]
