"""The per-span hot paths: the null manager, ``start_span``'s options, the one-call start+activate."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from _tracing_harness import Harness
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

import logcontext.tracing as lt
import logcontext.tracing.otel as lt_otel
from logcontext import LoggingContext, current_context
from logcontext.tracing import _api


def test_null_manager_yields_null_span_and_lets_exceptions_through() -> None:
    """Tracing off, ``with start_span`` gives the null span and never swallows an exception."""
    with lt.start_span("x") as span:
        assert span is lt.NULL_SPAN
    with pytest.raises(KeyError), lt.start_span("x"):
        raise KeyError("k")
    assert not _api.NULL_SCOPE.__exit__(KeyError, KeyError("k"), None)


def test_null_manager_in_an_exit_stack() -> None:
    """Tracing off, the null manager also works where its methods get the manager passed in."""
    with contextlib.ExitStack() as stack:
        assert stack.enter_context(lt.start_span("x")) is lt.NULL_SPAN
    with pytest.raises(KeyError), contextlib.ExitStack() as stack:
        stack.enter_context(lt.start_span("x"))
        raise KeyError("k")
    assert _api.NULL_SCOPE.__enter__() is lt.NULL_SPAN


async def test_null_manager_async_with() -> None:
    """Tracing off, ``async with start_span`` also yields the null span."""
    async with lt.start_span("x") as span:
        assert span is lt.NULL_SPAN


@pytest.mark.parametrize("enabled", [False, True])
def test_unknown_option_is_a_type_error(enabled: bool, make_harness: Any) -> None:
    """An unknown keyword is rejected with a TypeError naming it, whether tracing is on or off."""
    if enabled:
        make_harness("otel")
    with pytest.raises(TypeError, match="'kinds'"):
        lt.start_span("x", kinds="server")  # type: ignore[call-arg]


def test_options_reach_the_span(otel: Harness) -> None:
    """Options given as keywords (kind, attributes, record_usage) still apply."""
    with LoggingContext("req"), lt.start_span("x", kind="server", attributes={"a": 1}, record_usage=False):
        assert str(current_context()) == "req"
    (span,) = otel.exporter.get_finished_spans()
    assert span.kind is otel_trace.SpanKind.SERVER
    assert dict(span.attributes or {}) == {"a": 1}


def test_one_call_start_parents_on_the_active_span(otel: Harness) -> None:
    """The common case starts a child of the active span, makes it active, and restores on exit."""
    with lt.start_span("outer") as outer:
        with lt.start_span("inner") as inner:
            assert otel_trace.get_current_span() is inner.raw
        assert otel_trace.get_current_span() is outer.raw
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    spans = {s.name: s for s in otel.exporter.get_finished_spans()}
    assert spans["inner"].parent is not None
    assert spans["inner"].parent.span_id == spans["outer"].context.span_id


def test_activation_failure_still_ends_the_span(
    otel: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If only the activation fails, the block runs, the span is ended once and it is logged once."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("attach failed")

    # Both activation routes: OTel's ``attach``, and the Context our direct one would set.
    monkeypatch.setattr(otel_context, "attach", broken)
    monkeypatch.setattr(lt_otel, "_OtelContext", broken)
    with caplog.at_level(logging.WARNING, logger="logcontext.tracing"):
        for _ in range(2):
            with LoggingContext("req"), lt.start_span("x") as span:
                assert span.is_recording()
    assert [s.name for s in otel.exporter.get_finished_spans()] == ["x", "x"]
    assert [r.getMessage() for r in caplog.records].count(
        "tracing backend failed in activate; continuing untraced"
    ) == 1


def test_span_options_are_exported_and_complete() -> None:
    """``SpanOptions`` (public) names exactly the keywords ``start_span`` accepts."""
    assert lt.SpanOptions.__optional_keys__ == {
        "parent",
        "links",
        "attributes",
        "kind",
        "root",
        "record_usage",
        "end_on_exit",
    }
    assert "SpanOptions" in lt.__all__


def test_otel_scopes_set_no_marker_of_their_own(otel: Harness) -> None:
    """Under OTel's contextvars runtime the activated Context records our span wrapper: the
    scope sets no marker, yet ``active_span()`` is the very object the block got."""
    assert _api._backend is not None and _api._backend.marker_free
    with LoggingContext("req"), lt.start_span("outer") as outer:
        assert _api._SCOPE.get() is None
        assert lt.active_span() is outer
        with lt.start_span("inner", root=True) as inner:  # the start-then-activate route
            assert lt.active_span() is inner
        assert lt.active_span() is outer
    assert lt.active_span() is None


def test_a_foreign_span_inside_our_scope_is_the_active_one(otel: Harness) -> None:
    """A span activated by other instrumentation inside our block is the active span (our
    wrapper, inherited in its Context, is not mistaken for it)."""
    with lt.start_span("ours") as ours:
        with otel.provider.get_tracer("other").start_as_current_span("theirs") as theirs:
            active = lt.active_span()
            assert active is not None and active is not ours and active.raw is theirs
        assert lt.active_span() is ours


def test_without_the_span_key_scopes_keep_their_marker(
    otel: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If OTel's active-span key cannot be found, activations go through OTel's own calls and
    scopes set their marker: same spans, same active span, same foreign-exit handling."""
    monkeypatch.setattr(lt_otel, "_probe_keys", lambda: None)
    monkeypatch.setattr(lt_otel, "_span_key", None)
    monkeypatch.setattr(lt_otel, "_cv_runtime", None)
    h = Harness("otel").init()
    assert _api._backend is not None and not _api._backend.marker_free
    with LoggingContext("req"), lt.start_span("x") as span:
        assert _api._SCOPE.get() is not None
        assert lt.active_span() is span
        assert otel_trace.get_current_span() is span.raw
    assert [s.name for s in h.exporter.get_finished_spans()] == ["x"]
    assert lt.active_span() is None
