"""``LogContextResource``: a context per Twisted Web request, and the access line (spec §4, §5.2, §9)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from _twisted_harness import TwistedHarness
from _twisted_web import Broken, Client, Decorated, Hello, Slow
from twisted.web.resource import Resource

import logcontext.twisted as lt
from logcontext import LoggingContext, PreserveLoggingContext, current_context
from logcontext.logging import install_log_record_factory, uninstall_log_record_factory


@pytest.fixture(autouse=True)
def _factory() -> Iterator[None]:
    install_log_record_factory()
    try:
        yield
    finally:
        uninstall_log_record_factory()


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


def test_request_gets_parentless_context_and_one_access_line(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A request runs in ``GET-<n>`` with a ``ContextRequest``; one redacted access line; caller untouched."""
    root = Resource()
    root.putChild(b"hello", Hello())
    client = Client(tw, root)
    outer = LoggingContext("outer")
    with caplog.at_level(logging.DEBUG), PreserveLoggingContext(outer):
        client.get("/hello?access_token=secret&x=1")
        assert current_context() is outer
    client.close()
    app = _records(caplog, "lc.test.web")
    assert len(app) == 1
    rid = app[0].request  # type: ignore[attr-defined]
    assert rid.startswith("GET-") and rid[4:].isdigit()
    assert app[0].ip_address == "10.1.2.3"  # type: ignore[attr-defined]
    assert app[0].url == "/hello?access_token=<redacted>&x=1"  # type: ignore[attr-defined]
    access = _records(caplog, "logcontext.access.http.twisted")
    lines = [r for r in access if "Processed request" in r.getMessage()]
    assert len(lines) == 1
    msg = lines[0].getMessage()
    assert msg.startswith("10.1.2.3 - twisted - {None} Processed request: ")
    assert ' 5B 200 "GET /hello?access_token=<redacted>&x=1 HTTP/1.1" "lc-test/1" [0 dbevts]' in msg
    assert lines[0].request == rid  # type: ignore[attr-defined]
    assert b"hello" in client.transport.value()
    assert f"X-Request-Id: {rid}".encode() in client.transport.value()


def test_async_render_keeps_context_until_finish(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine started in ``render`` keeps the request context across awaits; the line comes at finish."""
    slow = Slow(tw)
    client = Client(tw, slow)
    with caplog.at_level(logging.INFO):
        client.get("/slow")
        assert not [r for r in caplog.records if "Processed request" in r.getMessage()]
        tw.spin(lambda: any("Processed request" in r.getMessage() for r in caplog.records))
    client.close()
    assert slow.seen[0] == slow.seen[1] and slow.seen[0].startswith("GET-")
    done = [r for r in caplog.records if r.getMessage() == "slow done"]
    assert done[0].request == slow.seen[0]  # type: ignore[attr-defined]
    lines = [r for r in caplog.records if "Processed request" in r.getMessage()]
    assert len(lines) == 1 and ' 4B 200 "GET /slow HTTP/1.1"' in lines[0].getMessage()
    assert lines[0].access["status"] == 200  # type: ignore[attr-defined]


def test_client_gone_marks_bang(tw: TwistedHarness, caplog: pytest.LogCaptureFixture) -> None:
    """A client that disconnects before the response is finished gets ``!`` in the access line."""
    slow = Slow(tw, finish=False)
    client = Client(tw, slow)
    with caplog.at_level(logging.INFO):
        client.get("/slow")
        tw.spin(lambda: len(slow.seen) == 2)
        client.close()
    lines = [r.getMessage() for r in caplog.records if "Processed request" in r.getMessage()]
    assert len(lines) == 1 and '200! "GET /slow HTTP/1.1"' in lines[0]


def test_render_error_is_logged_inside_the_request_context(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception while rendering is handled inside the context: Twisted's error log carries the id; 500."""
    lt.route_twisted_logs(begin_logging=False)
    client = Client(tw, Broken())
    try:
        with caplog.at_level(logging.INFO):
            client.get("/broken")
    finally:
        lt.unroute_twisted_logs()
        client.close()
    errors = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert errors, [r.getMessage() for r in caplog.records]
    assert errors[0].request.startswith("GET-")  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records if "Processed request" in r.getMessage()]
    assert len(lines) == 1 and ' 500 "GET /broken HTTP/1.1"' in lines[0]


def test_request_id_header_trust_and_echo(tw: TwistedHarness, caplog: pytest.LogCaptureFixture) -> None:
    """A trusted inbound ``X-Request-ID`` names the context and is echoed; an invalid one is ignored."""
    client = Client(tw, Hello(), trust_request_id=True, echo_request_id=True, site_tag="client")
    with caplog.at_level(logging.INFO):
        client.get("/", {"X-Request-ID": "abc-123"})
        client.get("/", {"X-Request-ID": "bad id!"})
    client.close()
    ids = [r.request for r in _records(caplog, "lc.test.web")]  # type: ignore[attr-defined]
    assert ids[0] == "GET-abc-123"
    assert ids[1].startswith("GET-") and ids[1][4:].isdigit()
    assert b"X-Request-Id: abc-123" in client.transport.value()
    assert _records(caplog, "logcontext.access.http.client")


def test_request_handler_decorator_sets_servlet_and_tag(
    tw: TwistedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """``@request_handler`` inside a wrapped resource labels the request (servlet, tag)."""
    client = Client(tw, Decorated())
    with caplog.at_level(logging.INFO):
        client.get("/")
    client.close()
    (line,) = [r for r in caplog.records if "Processed request" in r.getMessage()]
    assert line.access["servlet"] == "hello_servlet"  # type: ignore[attr-defined]


def test_put_child_goes_to_the_wrapped_tree(tw: TwistedHarness, caplog: pytest.LogCaptureFixture) -> None:
    """``putChild`` on the wrapper adds to the wrapped resource, and traversal finds it."""
    root = Resource()
    client = Client(tw, root)
    client.site.resource.putChild(b"late", Hello())
    assert b"late" in root.children
    with caplog.at_level(logging.INFO):
        client.get("/late")
    client.close()
    assert b"hello" in client.transport.value()


def test_wrapper_validates_arguments() -> None:
    """Bad arguments raise clear errors."""
    with pytest.raises(TypeError, match="resource"):
        lt.LogContextResource(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="site_tag"):
        lt.LogContextResource(Hello(), site_tag="")
    with pytest.raises(ValueError, match="access_line_format"):
        lt.LogContextResource(Hello(), access_line_format="fancy")
