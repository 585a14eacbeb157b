"""Tracing costs, side by side in one process (spec §11 P14, P15; issue 10 targets).

Suites:

Notes under each suite give the same ratios per round (paired), as a ratio of 10th percentiles
and as a ratio of minima, which resist a noisy, shared machine better than a ratio of medians.
Span samples are short (4 ms) and the batch processor's queue is drained before each sample, so
with ``--rounds 201`` the three agree within a few percent on a loaded 2-core machine.

* ``tracing`` (issue 10): a traced context — ``with start_span("x")`` inside a context, so the
  block runs in a child context whose usage goes on the span — against a bare OTel SDK
  ``start_as_current_span`` (both with a ``BatchSpanProcessor`` and a no-op exporter, no
  network), bound 1.2; the no-op path (``with LoggingContext("x"): with start_span("x")``,
  tracing uninitialised) against an untraced context, bound 1.1.
  Breakdown candidates: the span without usage (``record_usage=False``), a bare OTel span inside
  an untraced context, the child context alone (what ``record_usage`` adds to the span: enter and
  exit of a context under a context), the child as ``start_span`` runs it (measured: a
  thread-clock pair around the block and the charge at its exit make its figures final without
  closing the thread's CPU window) and a context owning its span (request style).
* ``tracing-clocks`` (information, not gated): the traced context / bare span ratio under each
  clock (and the ``sampled`` step mode): the child context's clock reads and ledger bookkeeping
  are the part of the cost that depends on the configuration.
* ``tracing-p14``: ``with start_span("x")`` uninitialised ≤ 3 × ContextVar set+reset; ``@trace``
  without a tracing extra returns the function itself.
* ``tracing-p15``: ``start_span`` with usage attributes on the OTel SDK + ``SimpleSpanProcessor``
  (no-op exporter) ≤ 1.25 × OTel ``start_as_current_span``; our scope handling (span without
  usage, minus the bare OTel span) ≤ 2 × OTel attach+detach.

All suites run in the live configuration, printed first with the library's defaults (clock
``cpu``, step mode ``sampled`` at the time of writing); only ``tracing-clocks`` switches modes.

    python benchmarks/bench_tracing.py --rounds 201   # full run (~1 min)
    python benchmarks/bench_tracing.py --quick    # smoke run
"""

from __future__ import annotations

import contextvars
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Suite, b_empty, b_tcv, exit_code, parse_args

import logcontext.tracing as lt
from logcontext import LoggingContext, _context, configure
from logcontext._config import config
from logcontext.tracing import _api

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
except ImportError:  # pragma: no cover
    sys.exit("bench_tracing needs the [otel] extra (opentelemetry-sdk)")

pc = time.perf_counter


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(batch: bool) -> TracerProvider:
    p = TracerProvider()
    if batch:
        p.add_span_processor(
            BatchSpanProcessor(NoopExporter(), max_queue_size=1 << 17, schedule_delay_millis=100)
        )
    else:
        p.add_span_processor(SimpleSpanProcessor(NoopExporter()))
    return p


BATCH = _provider(True)
SIMPLE = _provider(False)
BATCH_TRACER = BATCH.get_tracer("bench")
SIMPLE_TRACER = SIMPLE.get_tracer("bench")


def drain(provider: TracerProvider | None) -> None:
    """Export what the batch processor holds, so every sample starts with an empty queue.

    Without it the queue's backlog depends on when the export thread last ran (machine load),
    and the garbage collector's passes over the queued spans land on whichever candidate
    allocates most: the batch ratios then swing between runs by far more than the effect measured.
    """
    if provider is BATCH:
        BATCH.force_flush()


def use(provider: TracerProvider | None) -> None:
    """Point our tracing at ``provider`` (None: uninitialised fast path)."""
    if provider is None:
        lt.init_tracing("noop")
    else:
        lt.init_tracing("otel", tracer_provider=provider)


def b_null_span(n: int) -> float:
    use(None)
    start_span = lt.start_span
    t = pc()
    for _ in range(n):
        with start_span("x"):
            pass
    return pc() - t


def b_untraced_ctx(n: int) -> float:
    use(None)
    t = pc()
    for _ in range(n):
        with LoggingContext("x"):
            pass
    return pc() - t


def b_noop_ctx(n: int) -> float:
    use(None)
    start_span = lt.start_span
    t = pc()
    for _ in range(n):
        with LoggingContext("x"), start_span("x"):
            pass
    return pc() - t


def _bare(tracer: Any, n: int) -> float:
    use(None)
    drain(BATCH if tracer is BATCH_TRACER else None)
    start = tracer.start_as_current_span
    t = pc()
    for _ in range(n):
        with start("x"):
            pass
    return pc() - t


def _ours(provider: TracerProvider, n: int, *, in_context: bool, record_usage: bool) -> float:
    use(provider)
    drain(provider)
    start_span = lt.start_span
    ctx = LoggingContext("req")
    if in_context:
        ctx.__enter__()
    try:
        t = pc()
        if record_usage:  # the documented candidate: ``with start_span("x")`` (the default)
            for _ in range(n):
                with start_span("x"):
                    pass
        else:
            for _ in range(n):
                with start_span("x", record_usage=False):
                    pass
        return pc() - t
    finally:
        if in_context:
            ctx.__exit__(None, None, None)
        use(None)


_floor_var: contextvars.ContextVar[Any] = contextvars.ContextVar("floor")


def b_floor_batch(n: int) -> float:
    """The least a traced context following spec §6.1/§6.2 does besides the span: a child
    context (a ``ContextVar`` set/reset standing for its enter/exit), one thread-clock read to
    make its CPU final, and the usage attributes built and stored in the span's own dict."""
    var = _floor_var
    use(None)
    drain(BATCH)
    start = BATCH_TRACER.start_as_current_span
    clock = time.thread_time_ns
    t = pc()
    for _ in range(n):
        with start("x") as span:
            token = var.set(span)
            var.reset(token)
            cpu = clock()
            span._attributes._dict.update(  # what a direct store costs (the SDK's own dict)
                {
                    "logcontext.name": "x",
                    "logcontext.server_name": "hs",
                    "logcontext.cpu.clock": "cpu",
                    "logcontext.cpu.user_s": cpu * 1e-9,
                    "logcontext.cpu.system_s": 0.0,
                    "logcontext.db.txn_count": 0,
                    "logcontext.db.txn_s": 0.0,
                    "logcontext.db.sched_s": 0.0,
                    "logcontext.db.event_fetches": 0,
                }
            )
    return pc() - t


def b_bare_batch(n: int) -> float:
    return _bare(BATCH_TRACER, n)


def b_traced_batch(n: int) -> float:
    return _ours(BATCH, n, in_context=True, record_usage=True)


def b_scope_only_batch(n: int) -> float:
    return _ours(BATCH, n, in_context=True, record_usage=False)


def b_owned_span_ctx_batch(n: int) -> float:
    """A context owning its span (request style): ended with usage by the context's exit."""
    use(BATCH)
    drain(BATCH)
    start = _api.start_context_span
    try:
        t = pc()
        for _ in range(n):
            ctx = LoggingContext("x")
            with ctx, start(ctx, "x"):
                pass
        return pc() - t
    finally:
        use(None)


def b_child_ctx(n: int) -> float:
    """What ``record_usage`` adds around the block: a child context entered and exited in a context."""
    parent = LoggingContext("req")
    parent.__enter__()
    try:
        t = pc()
        for _ in range(n):
            with LoggingContext("req", parent_context=parent):
                pass
        return pc() - t
    finally:
        parent.__exit__(None, None, None)


def b_child_ctx_read(n: int) -> float:
    """The child context as ``start_span`` runs it: entered measured (a thread-clock reading),
    exited with its final figures (a second reading, the charge)."""
    parent = LoggingContext("req")
    parent.__enter__()
    enter, leave = _context.enter_measured_child, _context.exit_measured_child
    try:
        t = pc()
        for _ in range(n):
            leave(enter(parent))
        return pc() - t
    finally:
        parent.__exit__(None, None, None)


def _in_mode(fn: Any, clock: Any, step: Any) -> Any:
    """``fn`` run with ``configure(clock=clock, step_mode=step)``, defaults restored after."""

    def run(n: int) -> float:
        configure(clock=clock, step_mode=step)
        try:
            return float(fn(n))
        finally:
            configure(clock=DEFAULT_CLOCK, step_mode=DEFAULT_STEP)

    return run


DEFAULT_CLOCK, DEFAULT_STEP = config.clock_mode, config.step_mode
#: Seconds per sample in the span suites: short, so that on a shared machine many samples run
#: undisturbed (minima and 10th percentiles are then stable; pass ``--rounds 201``).
SPAN_SAMPLE_S = 0.004


def b_ctx_and_bare_batch(n: int) -> float:
    use(None)
    drain(BATCH)
    start = BATCH_TRACER.start_as_current_span
    t = pc()
    for _ in range(n):
        with LoggingContext("x"), start("x"):
            pass
    return pc() - t


def b_bare_simple(n: int) -> float:
    return _bare(SIMPLE_TRACER, n)


def b_usage_simple(n: int) -> float:
    return _ours(SIMPLE, n, in_context=True, record_usage=True)


def b_nousage_simple(n: int) -> float:
    return _ours(SIMPLE, n, in_context=False, record_usage=False)


def b_attach_detach(n: int) -> float:
    ctx = otel_trace.set_span_in_context(otel_trace.INVALID_SPAN)
    attach, detach = otel_context.attach, otel_context.detach
    t = pc()
    for _ in range(n):
        detach(attach(ctx))
    return pc() - t


def robust(s: Suite, a: str, b: str) -> None:
    """Note two noise-resistant forms of ``a / b``: per-round paired median and ratio of minima."""
    if not s.enabled:
        return
    ra, rb = s.results[a], s.results[b]
    paired = statistics.median(x / y for x, y in zip(ra.samples, rb.samples, strict=True))
    p10 = _p10(ra.samples) / _p10(rb.samples)
    s.note(
        f"{a} / {b}: paired-round median {paired:.3f}, ratio of 10th percentiles {p10:.3f}, "
        f"ratio of minima {ra.min / rb.min:.3f}"
    )


def _p10(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[0] if len(samples) >= 2 else samples[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    ok = True
    from logcontext._config import _Config

    lib = _Config()
    print(
        f"clock mode: {config.clock_mode}, step mode: {config.step_mode} "
        f"(library defaults: {lib.clock_mode}, {lib.step_mode})"
    )

    s = Suite("tracing", args, sample_s=0.002 if args.quick else SPAN_SAMPLE_S)
    s.add("empty", b_empty)
    s.add("otel_bare_span_batch", b_bare_batch)
    s.add("traced_ctx_batch", b_traced_batch)
    s.add("span_no_usage_batch", b_scope_only_batch)
    s.add("ctx+otel_bare_batch", b_ctx_and_bare_batch)
    s.add("owned_span_ctx_batch", b_owned_span_ctx_batch)
    s.add("child_ctx_only", b_child_ctx)
    s.add("child_ctx+usage_read", b_child_ctx_read)
    s.add("untraced_ctx", b_untraced_ctx)
    s.add("noop_traced_ctx", b_noop_ctx)
    s.add("floor_traced_batch", b_floor_batch)
    s.run()
    s.ratio(
        "T1", "traced_ctx_batch", "otel_bare_span_batch", 1.2, "traced context / bare OTel SDK span (batch)"
    )
    s.ratio("T2", "noop_traced_ctx", "untraced_ctx", 1.1, "no-op path / untraced context")
    robust(s, "traced_ctx_batch", "otel_bare_span_batch")
    robust(s, "floor_traced_batch", "otel_bare_span_batch")
    robust(s, "noop_traced_ctx", "untraced_ctx")
    robust(s, "span_no_usage_batch", "otel_bare_span_batch")
    robust(s, "traced_ctx_batch", "ctx+otel_bare_batch")
    robust(s, "owned_span_ctx_batch", "otel_bare_span_batch")
    robust(s, "owned_span_ctx_batch", "ctx+otel_bare_batch")
    if s.enabled:
        # Where the traced context's extra over the bare span goes, per round (paired).
        r = s.results
        bare, ours, no_usage = r["otel_bare_span_batch"], r["traced_ctx_batch"], r["span_no_usage_batch"]
        child, read = r["child_ctx_only"], r["child_ctx+usage_read"]

        def paired_us(a: list[float], b: list[float]) -> float:
            return statistics.median(x - y for x, y in zip(a, b, strict=True)) * 1e6

        s.note(
            f"extra over the bare span {paired_us(ours.samples, bare.samples):.2f}us = span scope "
            f"{paired_us(no_usage.samples, bare.samples):.2f}us + record_usage "
            f"{paired_us(ours.samples, no_usage.samples):.2f}us, of which the child context alone "
            f"{statistics.median(child.samples) * 1e6:.2f}us (median) / {child.min * 1e6:.2f}us (min) "
            f"and measuring it to final figures {paired_us(read.samples, child.samples):.2f}us more (paired median)"
        )
    ok &= s.finish()

    s = Suite("tracing-clocks", args, sample_s=0.002 if args.quick else SPAN_SAMPLE_S)
    s.add("empty", b_empty)
    s.add("otel_bare_span_batch", b_bare_batch)
    modes = (("cpu", "exact"), ("cpu", "sampled"), ("wall", "exact"), ("off", "exact"))
    for clock, step in modes:
        s.add(f"traced_ctx_{clock}_{step}", _in_mode(b_traced_batch, clock, step))
        s.add(f"child_ctx_{clock}_{step}", _in_mode(b_child_ctx, clock, step))
    s.run()
    for clock, step in modes:
        robust(s, f"traced_ctx_{clock}_{step}", "otel_bare_span_batch")
    s.finish()

    s = Suite("tracing-p14", args)
    s.add("empty", b_empty)
    s.add("tcv", b_tcv)
    s.add("null_start_span", b_null_span)
    s.run()
    s.ratio("P14", "null_start_span", "tcv", 3.0, "with start_span('x') uninitialised / ContextVar set+reset")
    robust(s, "null_start_span", "tcv")
    saved = _api._extra_installed
    _api._extra_installed = False
    try:

        def f() -> None:
            return None

        same = lt.trace(f) is f and lt.trace_with_name("n")(f) is f and lt.tag_args(f) is f
    finally:
        _api._extra_installed = saved
    s.check(
        "P14b", "@trace without the extra returns the function itself (0 = yes)", 0.0 if same else 1.0, 0.0
    )
    ok &= s.finish()

    s = Suite("tracing-p15", args, sample_s=0.002 if args.quick else SPAN_SAMPLE_S)
    s.add("empty", b_empty)
    s.add("otel_start_as_current_span", b_bare_simple)
    s.add("start_span_usage", b_usage_simple)
    s.add("start_span_no_usage", b_nousage_simple)
    s.add("otel_attach_detach", b_attach_detach)
    s.run()
    s.ratio(
        "P15",
        "start_span_usage",
        "otel_start_as_current_span",
        1.25,
        "start_span with usage / OTel start_as_current_span",
    )
    robust(s, "start_span_usage", "otel_start_as_current_span")
    if s.enabled:
        # A difference of two ~15 us medians is noise-dominated: take the per-round difference.
        a, b = s.results["start_span_no_usage"], s.results["otel_start_as_current_span"]
        extra = statistics.median(x - y for x, y in zip(a.samples, b.samples, strict=True))
        s.check(
            "P15b",
            f"our scope extra ({extra * 1e6:.3f}us, paired per round) / OTel attach+detach",
            extra / s.median("otel_attach_detach"),
            2.0,
        )
    ok &= s.finish()
    lt.shutdown_tracing(1.0)
    return exit_code(ok, args)


if __name__ == "__main__":
    sys.exit(main())
