"""Instrumentation of state resolution (spec §6): spans, metrics, logs.

A resolution called from inside a logging context runs in a child context
(``nested_logging_context("state_res")``) and one span ``state_res.resolve``; every phase is a
child span ``state_res.<phase>`` (with the phase's resource usage, recorded by
``logcontext.tracing.start_span``) inside a ``logcontext.Measure("state_res.<phase>")`` block.
Called from no context (the CLI, plain scripts) there are no spans, but the phases are still
timed for the metrics (``_metrics``) and the log lines, unless both are off.

Logs (logger ``homeserver.state``): one INFO line per resolution slower than `SLOW_SECONDS` or
with at least `LARGE_FULL_SET` events in the full conflicted set (room, version, sizes, time per
phase); at DEBUG, one line per resolution with the sets themselves (event IDs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Set
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from ._metrics import ResolutionFigures, StateMetrics, active_state_metrics
from .errors import StateResolutionError
from .versions import RoomRules

logger = logging.getLogger("homeserver.state")

#: Resolutions slower than this (seconds) or with a larger full set are logged at INFO.
SLOW_SECONDS = 0.050
LARGE_FULL_SET = 500


def set_log_thresholds(*, seconds: float | None = None, full_events: int | None = None) -> None:
    """Change when a resolution is logged at INFO (defaults: 0.050 s, 500 ``full`` events)."""
    global SLOW_SECONDS, LARGE_FULL_SET
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"seconds must be a number >= 0, not {seconds!r}")
        SLOW_SECONDS = float(seconds)
    if full_events is not None:
        if isinstance(full_events, bool) or not isinstance(full_events, int) or full_events < 0:
            raise ValueError(f"full_events must be an int >= 0, not {full_events!r}")
        LARGE_FULL_SET = full_events


class NoPhases:
    """Phase hooks that do nothing (no context, no metrics, INFO off)."""

    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]:
        return nullcontext({})

    def sets(
        self, conflicted: Set[str], auth_difference: Set[str], subgraph: Set[str], full: Set[str]
    ) -> None:
        pass


def _attr(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class _Phase:
    """One timed phase of a `Recorder` (a class, cheaper than a generator context manager)."""

    __slots__ = ("attrs", "name", "rec", "t0")

    def __init__(self, rec: Recorder, name: str):
        self.rec = rec
        self.name = name
        self.attrs: dict[str, Any] = {}
        self.t0 = 0.0

    def __enter__(self) -> dict[str, Any]:
        self.t0 = time.perf_counter()
        return self.attrs

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.attrs.pop("decisions", None)
        self.rec._done(self.name, self.attrs, time.perf_counter() - self.t0, exc_type is None)


class Recorder:
    """Times each phase and keeps the figures for the metrics and the log lines (no spans)."""

    def __init__(self, room_id: str, rules: RoomRules, n_inputs: int, largest: int):
        self.room_id = room_id
        self.version = rules.version
        self.n_inputs = n_inputs
        self.largest = largest
        self.figures = ResolutionFigures("v2.1" if rules.state_res_v21 else "v2")
        #: Every phase that ran (failed ones included), for the log line; seconds.
        self.times: dict[str, float] = {}
        self.conflicted_keys = 0
        self._sets: tuple[Set[str], Set[str], Set[str], Set[str]] | None = None

    @property
    def full_set(self) -> int:
        return self.figures.full_set or 0

    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]:
        return _Phase(self, name)

    def sets(
        self, conflicted: Set[str], auth_difference: Set[str], subgraph: Set[str], full: Set[str]
    ) -> None:
        self._sets = (conflicted, auth_difference, subgraph, full)

    def _done(self, name: str, attrs: Mapping[str, Any], seconds: float, ok: bool) -> None:
        self.times[name] = seconds
        if not ok:
            return
        fig = self.figures
        fig.phase_seconds[name] = seconds
        if name == "split":
            self.conflicted_keys = int(attrs.get("conflicted_keys", 0))
        elif name == "auth_difference":
            fig.auth_difference = int(attrs.get("size", 0))
            fig.method = attrs.get("method")
        elif name == "load_events":
            fig.full_set = int(attrs.get("loaded", 0))
        elif name in ("iac_power", "iac_rest"):
            for outcome in ("accepted", "failed", "skipped_rejected"):
                fig.iac[(name, outcome)] = int(attrs.get(outcome, 0))

    def conclude(self, seconds: float, error: str | None, metrics: StateMetrics | None) -> None:
        """Record the resolution in the metrics and log it (see the module docstring)."""
        if metrics is not None:
            metrics.record(self.figures, seconds, error)
        if seconds >= SLOW_SECONDS or self.full_set >= LARGE_FULL_SET:
            logger.info(
                "state res %s (v%s, %s): %.1f ms; inputs %d (largest %d), conflicted %d keys / %d"
                " events, auth difference %d (%s), full set %d%s; phases %s",
                self.room_id,
                self.version,
                self.figures.algorithm,
                seconds * 1000,
                self.n_inputs,
                self.largest,
                self.conflicted_keys,
                len(self._sets[0]) if self._sets else 0,
                self.figures.auth_difference or 0,
                self.figures.method or "-",
                self.full_set,
                f", error {error}" if error else "",
                " ".join(f"{k}={v * 1000:.1f}ms" for k, v in self.times.items()),
            )
        if self._sets is not None and logger.isEnabledFor(logging.DEBUG):
            conflicted, diff, sub, full = self._sets
            logger.debug(
                "state res %s sets: conflicted %s; auth difference %s; subgraph %s; full %s",
                self.room_id,
                " ".join(sorted(conflicted)),
                " ".join(sorted(diff)),
                " ".join(sorted(sub)),
                " ".join(sorted(full)),
            )


class Phases(Recorder):
    """Also one span and one ``Measure`` block per phase; span attributes from the yielded dict."""

    def __init__(self, room_id: str, rules: RoomRules, n_inputs: int, largest: int, trace_decisions: bool):
        super().__init__(room_id, rules, n_inputs, largest)
        self.trace_decisions = trace_decisions

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        from logcontext import Measure
        from logcontext.tracing import start_span

        attrs: dict[str, Any] = {}
        t0 = time.perf_counter()
        ok = False
        with Measure(f"state_res.{name}"), start_span(f"state_res.{name}") as span:
            try:
                yield attrs
                ok = True
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
                self._done(name, attrs, time.perf_counter() - t0, ok)


@contextmanager
def _concluded(rec: Recorder, metrics: StateMetrics | None, span: Any) -> Iterator[None]:
    """Time the resolution; on success or `Exception` record and log it (not on cancellation)."""
    t0 = time.perf_counter()
    outcome: str | None = None
    try:
        yield
        outcome = ""
    except StateResolutionError as e:
        outcome = e.category
        if span is not None:
            span.set_attribute("error.category", e.category)
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        if outcome is not None:
            elapsed = time.perf_counter() - t0
            try:
                rec.conclude(elapsed, outcome or None, metrics)
            except Exception:  # pragma: no cover - reporting must never fail a resolution
                logger.exception("state res %s: recording the resolution failed", rec.room_id)


@contextmanager
def errors_counted() -> Iterator[None]:
    """Count a `StateResolutionError` raised before resolving (bad inputs, unknown version)."""
    try:
        yield
    except StateResolutionError as e:
        metrics = active_state_metrics()
        if metrics is not None:
            metrics.record_error(e.category)
        raise


@contextmanager
def resolution_scope(
    room_id: str, rules: RoomRules, n_inputs: int, largest: int, trace_decisions: bool
) -> Iterator[NoPhases | Recorder]:
    """The context, span, metrics and log lines around one resolution."""
    from logcontext import current_context, nested_logging_context

    metrics = active_state_metrics()
    if not current_context():
        if metrics is None and not logger.isEnabledFor(logging.INFO):
            yield NoPhases()
            return
        rec = Recorder(room_id, rules, n_inputs, largest)
        with _concluded(rec, metrics, None):
            yield rec
        return
    from logcontext.tracing import start_span

    phases = Phases(room_id, rules, n_inputs, largest, trace_decisions)
    attributes: dict[str, str | int] = {
        "room_id": room_id,
        "room_version": rules.version,
        "state_res.algorithm": phases.figures.algorithm,
        "inputs": n_inputs,
        "largest_input": largest,
        "cache": "off",
    }
    with (
        nested_logging_context("state_res"),
        start_span("state_res.resolve", attributes=attributes) as span,
        _concluded(phases, metrics, span),
    ):
        yield phases
