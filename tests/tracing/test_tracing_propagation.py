"""Propagation: allow-list (fullmatch), inject/extract, links, trace-id header (§10 item 38)."""

from __future__ import annotations

import re

import pytest
from _tracing_harness import Harness

import logcontext.tracing as lt


@pytest.mark.parametrize(
    ("dest", "allowed"),
    [
        ("example.com", True),
        ("example.com.evil.net", False),
        ("evil.net/example.com", False),
        ("sub.example.com", False),
        ("exampleXcom", False),
        ("matrix.org", True),
        ("matrix.org:8448", False),
        ("", False),
        (None, False),
        (b"example.com", True),
    ],
)
def test_allowlist_fullmatch(dest: str | bytes | None, allowed: bool) -> None:
    """Patterns must match the whole destination (Synapse's ``re.match`` only anchored the start)."""
    lt.set_propagation_allowlist([r"example\.com", re.compile(r"matrix\.org")])
    assert lt.is_allowed_destination(dest) is allowed
    assert lt.whitelisted_homeserver(dest) is allowed  # type: ignore[attr-defined]


def test_empty_allowlist_blocks_everything() -> None:
    """An empty allow-list admits nothing, not even the empty string."""
    lt.set_propagation_allowlist([])
    assert not lt.is_allowed_destination("example.com")
    assert not lt.is_allowed_destination("")


def test_allowlist_bad_input() -> None:
    """A bare string or a broken regex is rejected with an error naming it."""
    with pytest.raises(TypeError, match="not a str"):
        lt.set_propagation_allowlist("example.com")
    with pytest.raises(ValueError, match=r"'\['"):
        lt.set_propagation_allowlist(["["])
    with pytest.raises(TypeError, match=r"str or re\.Pattern"):
        lt.set_propagation_allowlist([3])  # type: ignore[list-item]


HEADER = {"otel": "traceparent", "mock": "ot-tracer-traceid", "jaeger": "uber-trace-id"}


def test_inject_only_to_allowed_destinations(make_harness: object) -> None:
    """``inject`` writes nothing for disallowed destinations, unless ``internal=True``."""
    for kind in ("otel", "jaeger"):
        h: Harness = make_harness(kind, propagation_allowlist=[r"good\.example"])  # type: ignore[operator]
        key = HEADER[kind]
        with lt.start_span("out"):
            denied: dict[str, str] = {}
            lt.inject(denied, destination="good.example.evil.net")
            assert denied == {}
            allowed: dict[str, str] = {}
            lt.inject(allowed, destination="good.example")
            assert key in allowed
            internal: dict[str, str] = {}
            lt.inject(internal, destination=None, internal=True)
            assert key in internal
            assert lt.inject_text_map(destination="bad.example") == {}
            assert key in lt.inject_text_map(destination="good.example")
        assert h.finished()
        lt.shutdown_tracing(2.0)


def test_inject_bytes_headers(otel: Harness) -> None:
    """Twisted-style ``dict[bytes, list[bytes]]`` and Twisted ``Headers`` get bytes entries."""
    from twisted.web.http_headers import Headers

    lt.set_propagation_allowlist([r"remote"])
    with lt.start_span("out") as span:
        d: dict[bytes, list[bytes]] = {}
        lt.inject_header_dict(d, "remote")  # type: ignore[attr-defined]
        assert list(d) == [b"traceparent"]
        assert d[b"traceparent"][0].decode().split("-")[1] == span.context.trace_id_hex
        existing: dict[bytes, list[bytes]] = {b"host": [b"remote"]}
        lt.inject(existing, destination="remote")
        assert b"traceparent" in existing
        h = Headers()
        lt.inject(h, destination="remote")
        assert h.getRawHeaders(b"traceparent")


@pytest.mark.parametrize("kind", ["otel", "jaeger"])
def test_extract_requires_authenticated_allowed_origin(kind: str, make_harness: object) -> None:
    """``extract`` returns a parent only for authenticated, allowed origins; ``extract_link`` always."""
    h: Harness = make_harness(kind, propagation_allowlist=[r"peer\.example"])  # type: ignore[operator]
    with lt.start_span("remote") as remote:
        carrier = lt.inject_text_map(destination=None, internal=True)
        headers: dict[str, str] = {}
        lt.inject(headers, destination=None, internal=True)
    upper = {k.upper(): v for k, v in headers.items()}
    assert lt.extract(upper, origin="peer.example", authenticated=False) is None
    assert lt.extract(upper, origin="peer.example.evil", authenticated=True) is None
    parent = lt.extract(upper, origin="peer.example", authenticated=True)
    assert parent is not None
    assert parent.trace_id == remote.context.trace_id
    assert parent.span_id == remote.context.span_id
    bytes_headers = {k.encode(): [v.encode()] for k, v in headers.items()}
    assert lt.extract(bytes_headers, origin="peer.example", authenticated=True) == parent
    assert lt.extract_text_map(carrier, origin="peer.example", authenticated=True) == parent
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert lt.extract(pairs, origin="peer.example", authenticated=True) == parent
    link = lt.extract_link(headers)
    assert link == parent
    assert lt.extract_link({"unrelated": "x"}) is None
    with lt.start_span("child", parent=parent):
        pass
    with lt.start_span("linked", links=[link]):
        pass
    by = h.by_name()
    assert by["child"].parent_id == by["remote"].span_id
    assert by["child"].trace_id == by["remote"].trace_id
    if kind == "otel":
        assert by["linked"].links[0][:2] == (by["remote"].trace_id, by["remote"].span_id)
        assert by["linked"].trace_id != by["remote"].trace_id
    else:
        assert by["linked"].follows_from == [by["remote"].span_id]


def test_garbage_headers_extract_nothing(otel: Harness) -> None:
    """Malformed propagation headers yield None, never an exception."""
    lt.set_propagation_allowlist([r".*"])
    for headers in ({"traceparent": "garbage"}, {"traceparent": ""}, {}, {b"traceparent": []}):
        assert lt.extract(headers, origin="x", authenticated=True) is None
    with pytest.raises(TypeError, match="mapping"):
        lt.extract_link(42)


@pytest.mark.parametrize("kind", ["otel", "jaeger"])
def test_trace_id_header_only_when_configured(kind: str, make_harness: object) -> None:
    """``inject_response_headers`` adds 32 lower-hex digits only with ``trace_id_header`` set."""
    make_harness(kind)  # type: ignore[operator]
    with lt.start_span("req"):
        headers: dict[str, str] = {}
        lt.inject_response_headers(headers)
        assert headers == {}
    lt.shutdown_tracing(2.0)
    make_harness(kind, trace_id_header="Synapse-Trace-Id")  # type: ignore[operator]
    headers = {}
    lt.inject_response_headers(headers)
    assert headers == {}  # no active span
    with lt.start_span("req") as span:
        lt.inject_response_headers(headers)
        raw: dict[bytes, list[bytes]] = {b"x": [b"y"]}
        lt.inject_response_headers(raw)
    value = headers["Synapse-Trace-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", value)
    assert int(value, 16) == span.context.trace_id
    assert raw[b"Synapse-Trace-Id"] == [value.encode()]
