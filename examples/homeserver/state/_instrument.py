"""Instrumentation of state resolution (spec §6).

A resolution called from inside a logging context runs in a child context
(``nested_logging_context("state_res")``) and one span ``state_res.resolve``; every phase is a
child span ``state_res.<phase>`` (with the phase's resource usage, recorded by
``logcontext.tracing.start_span``) inside a ``logcontext.Measure("state_res.<phase>")`` block.
Called from no context (the CLI, plain scripts), nothing is instrumented.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from .errors import StateResolutionError
from .versions import RoomRules

logger = logging.getLogger("homeserver.state")

#: Resolutions slower than this (seconds) or with a larger full set are logged at INFO.
SLOW_SECONDS = 0.050
LARGE_FULL_SET = 500


class NoPhases:
    """Phase hooks that do nothing (no logging context current)."""

    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]:
        return nullcontext({})


def _attr(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class Phases:
    """One span and one ``Measure`` block per phase; attributes set from the yielded dict."""

    def __init__(self, trace_decisions: bool):
        self.trace_decisions = trace_decisions
        self.times: dict[str, float] = {}
        self.full_set = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        from logcontext import Measure
        from logcontext.tracing import start_span

        attrs: dict[str, Any] = {}
        t0 = time.perf_counter()
        with Measure(f"state_res.{name}"), start_span(f"state_res.{name}") as span:
            try:
                yield attrs
            finally:
                decisions = attrs.pop("decisions", None)
                for k, v in attrs.items():
                    span.set_attribute(k, _attr(v))
                if decisions and self.trace_decisions:
                    for eid, outcome, rule in decisions:
                        ev: dict[str, Any] = {"event_id": eid, "pass": name, "outcome": outcome}
                        if rule is not None:
                            ev["rule"] = rule
                        span.add_event("iac.decision", ev)
                if name == "load_events":
                    self.full_set = int(attrs.get("loaded", 0))
                self.times[name] = time.perf_counter() - t0


@contextmanager
def resolution_scope(
    room_id: str, rules: RoomRules, n_inputs: int, largest: int, trace_decisions: bool
) -> Iterator[NoPhases | Phases]:
    """The context, span and log line around one resolution."""
    from logcontext import current_context, nested_logging_context

    if not current_context():
        yield NoPhases()
        return
    from logcontext.tracing import start_span

    phases = Phases(trace_decisions)
    t0 = time.perf_counter()
    attributes = {
        "room_id": room_id,
        "room_version": rules.version,
        "state_res.algorithm": "v2.1" if rules.state_res_v21 else "v2",
        "inputs": n_inputs,
        "largest_input": largest,
        "cache": "off",
    }
    with nested_logging_context("state_res"), start_span("state_res.resolve", attributes=attributes) as span:
        try:
            yield phases
        except StateResolutionError as e:
            span.set_attribute("error.category", e.category)
            raise
        finally:
            elapsed = time.perf_counter() - t0
            if elapsed >= SLOW_SECONDS or phases.full_set >= LARGE_FULL_SET:
                logger.info(
                    "state res %s (v%s): %.1f ms, full set %d; phases %s",
                    room_id,
                    rules.version,
                    elapsed * 1000,
                    phases.full_set,
                    " ".join(f"{k}={v * 1000:.1f}ms" for k, v in phases.times.items()),
                )
