"""Core costs, side by side in one process (spec §11: P1, P2, P3, P4, P5, P18).

Prints per-operation medians and the target ratios. Comparators (structlog,
OpenTelemetry, matrix-synapse) are measured when installed; without them the
ratios to their anchors are printed marked "anchor, not measured here".

    python benchmarks/bench_core.py            # full run (~1-2 min)
    python benchmarks/bench_core.py --quick    # smoke run
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextvars import ContextVar, Token
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Suite, b_cv_get, b_empty, b_tcv, b_tpc, b_ttt, exit_code, make_with, parse_args

import logcontext
from logcontext import LoggingContext, PreserveLoggingContext, current_context

# Anchors (spec §11), microseconds, used only when a comparator is missing.
ANCHOR_US = {"structlog": 1.2, "synapse_with": 1.97, "otel": 0.31}

pc = time.perf_counter


def b_current(n: int) -> float:
    cc = current_context
    t = pc()
    for _ in range(n):
        cc()
    return pc() - t


def b_rusage(n: int) -> float:
    import resource

    f, who = resource.getrusage, resource.RUSAGE_THREAD
    t = pc()
    for _ in range(n):
        f(who)
    return pc() - t


def b_preserve_off(n: int) -> float:
    logcontext.configure(clock="off")
    ctx = LoggingContext("p")
    P = PreserveLoggingContext
    t = pc()
    for _ in range(n):
        with P(ctx):
            pass
    dt = pc() - t
    logcontext.configure(clock="cpu")
    return dt


# Floors: the least a context manager with these semantics can do, built the same way
# (a slotted class with LoggingContext's fields, its variable set on enter and reset with the
# token on exit). They skip everything else the library does (argument and misuse checks, the
# exit-mismatch read, extras, hooks), so a bound the floor already misses cannot be met by
# trimming that; the notes print each bound's value for the floor beside ours.
_floor_var: ContextVar[object] = ContextVar("floor")
_floor_set, _floor_reset = _floor_var.set, _floor_var.reset
_floor_local = threading.local()
_wall_ns = time.perf_counter_ns


class _FloorContext:
    __slots__ = ("_ancestors", "_extra", "_token", "_u", "finished", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._ancestors = ()
        self.finished = False
        self._token: Token[object] | None = None
        self._u = None
        self._extra = None

    def __enter__(self) -> _FloorContext:
        self._token = _floor_set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _floor_reset(self._token)  # type: ignore[arg-type]
        self._token = None
        self.finished = True


class _FloorSampled(_FloorContext):
    """Plus the ``sampled`` switch minimum: the thread's ledger looked up on enter and exit,
    a wall read each, the block's wall time added to its pending share (no window closes)."""

    __slots__ = ()

    def __enter__(self) -> _FloorContext:
        self._token = _floor_set(self)
        _floor_local.led[0] = _wall_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        led = _floor_local.led
        led[1][self] += _wall_ns() - led[0]
        _floor_reset(self._token)  # type: ignore[arg-type]
        self._token = None
        self.finished = True


def _floor_with(cls: type[_FloorContext]) -> Callable[[int], float]:
    def bench(n: int) -> float:
        _floor_local.led = [0, defaultdict(int)]
        t = pc()
        for _ in range(n):
            with cls("x"):
                pass
        return pc() - t

    return bench


def comparators(suite: Suite) -> set[str]:
    have = set()
    try:
        from opentelemetry import context as otel_context

        key = otel_context.create_key("bench")

        def b_otel(n: int) -> float:
            attach, detach, set_value = otel_context.attach, otel_context.detach, otel_context.set_value
            ctx = set_value(key, 1)
            t = pc()
            for _ in range(n):
                detach(attach(ctx))
            return pc() - t

        suite.add("otel attach+detach", b_otel)
        have.add("otel")
    except ImportError:
        pass
    try:
        import structlog.contextvars as scv

        def b_structlog(n: int) -> float:
            bind, reset = scv.bind_contextvars, scv.reset_contextvars
            t = pc()
            for _ in range(n):
                reset(**bind(request="x"))
            return pc() - t

        def b_structlog_cm(n: int) -> float:
            bound = scv.bound_contextvars
            t = pc()
            for _ in range(n):
                with bound(request="x"):
                    pass
            return pc() - t

        suite.add("structlog bind+reset", b_structlog)
        suite.add("structlog bound_contextvars", b_structlog_cm)
        have.add("structlog")
    except ImportError:
        pass
    try:
        from synapse.logging.context import LoggingContext as SLC

        def b_synapse(n: int) -> float:
            t = pc()
            for _ in range(n):
                with SLC(name="x", server_name="hs"):
                    pass
            return pc() - t

        suite.add("synapse with LoggingContext", b_synapse)
        have.add("synapse")
    except Exception:  # synapse import can fail in odd ways; it is optional
        pass
    return have


def import_time(stmt: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = pc()
        subprocess.run(
            [sys.executable, "-S", "-c", stmt] if False else [sys.executable, "-c", stmt], check=True
        )
        samples.append(pc() - t)
    return statistics.median(samples)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    suite = Suite("core", args)
    suite.add("empty", b_empty)
    suite.add("ContextVar.get", b_cv_get)
    suite.add("tcv (set+reset)", b_tcv)
    suite.add("current_context()", b_current)
    suite.add("thread_time_ns", b_ttt)
    suite.add("perf_counter_ns", b_tpc)
    if sys.platform.startswith("linux"):
        suite.add("getrusage(THREAD)", b_rusage)
    for mode in ("off", "wall", "cpu", "rusage"):
        suite.add(f"with LoggingContext [{mode}]", make_with(mode, "exact"))
    suite.add("with LoggingContext [cpu, sampled]", make_with("cpu", "sampled"))
    suite.add("with PreserveLoggingContext [off]", b_preserve_off)
    suite.add("floor: with-block", _floor_with(_FloorContext))
    suite.add("floor: with-block, sampled switch", _floor_with(_FloorSampled))
    have = comparators(suite)
    suite.run()
    if suite.enabled:
        tcv = suite.median("tcv (set+reset)")
        m = suite.median
        suite.ratio("P1", "current_context()", "ContextVar.get", 1.5)
        suite.check("P2", "with [off] / tcv", m("with LoggingContext [off]") / tcv, 4.0)
        if "structlog" in have:
            suite.ratio("P2", "with LoggingContext [off]", "structlog bind+reset", 0.5)
            suite.ratio("P2", "with LoggingContext [off]", "structlog bound_contextvars", 0.5)
        else:
            suite.check(
                "P2",
                "with [off] / structlog anchor",
                m("with LoggingContext [off]") / (ANCHOR_US["structlog"] * 1e-6),
                0.5,
                anchor=True,
            )
        if "synapse" in have:
            suite.ratio("P2", "with LoggingContext [off]", "synapse with LoggingContext", 0.3)
            suite.ratio("P4", "with LoggingContext [cpu]", "synapse with LoggingContext", 1.75)
            suite.ratio("P4s", "with LoggingContext [cpu, sampled]", "synapse with LoggingContext", 0.5)
        else:
            for ident, mode, bound in (("P2", "off", 0.3), ("P4", "cpu", 1.75), ("P4s", "cpu, sampled", 0.5)):
                suite.check(
                    ident,
                    f"with [{mode}] / synapse anchor",
                    m(f"with LoggingContext [{mode}]") / (ANCHOR_US["synapse_with"] * 1e-6),
                    bound,
                    anchor=True,
                )
        if "otel" in have:
            suite.ratio(
                "--",
                "with LoggingContext [off]",
                "otel attach+detach",
                float("inf"),
                "with [off] / OTel attach+detach (informational)",
            )
        suite.check(
            "P3",
            "with [wall] / (2 tpc + 12 tcv)",
            m("with LoggingContext [wall]") / (2 * m("perf_counter_ns") + 12 * tcv),
            1.0,
        )
        suite.check(
            "P4",
            "with [cpu] / (2 ttt + 12 tcv)",
            m("with LoggingContext [cpu]") / (2 * m("thread_time_ns") + 12 * tcv),
            1.0,
        )
        suite.check("P5", "Preserve [off] / tcv", m("with PreserveLoggingContext [off]") / tcv, 6.0)
        # Every clock mode against every baseline measured in this run (informational).
        bases = [("tcv", "tcv (set+reset)")]
        if "otel" in have:
            bases.append(("OTel attach+detach", "otel attach+detach"))
        if "structlog" in have:
            bases.append(("structlog bind+reset", "structlog bind+reset"))
            bases.append(("structlog bound_contextvars", "structlog bound_contextvars"))
        if "synapse" in have:
            bases.append(("Synapse with LoggingContext", "synapse with LoggingContext"))
        for mode in ("off", "wall", "cpu", "rusage", "cpu, sampled"):
            ours = m(f"with LoggingContext [{mode}]")
            ratios = ", ".join(f"{label} {ours / m(name):.2f}x" for label, name in bases)
            suite.note(f"with LoggingContext [{mode}] {ours * 1e6:.3f}us = {ratios}")
        floor, floor_s = m("floor: with-block"), m("floor: with-block, sampled switch")
        parts = [f"P2 floor / tcv {floor / tcv:.2f} (bound 4.0)"]
        if "structlog" in have:
            parts.append(
                f"P2 floor / structlog bind+reset {floor / m('structlog bind+reset'):.2f} (bound 0.5)"
            )
        if "synapse" in have:
            syn = m("synapse with LoggingContext")
            parts.append(f"P2 floor / synapse {floor / syn:.2f} (bound 0.3)")
            parts.append(f"P4s floor / synapse {floor_s / syn:.2f} (bound 0.5)")
        else:
            parts.append(
                f"P4s floor / synapse anchor {floor_s / (ANCHOR_US['synapse_with'] * 1e-6):.2f} (bound 0.5)"
            )
        suite.note("floors (see _FloorContext): " + "; ".join(parts))
    ok = suite.finish()

    # P18: import cost in fresh interpreters. Both imports happen in the same
    # process, timed by -X importtime: the cumulative time of the top-level
    # "logging", "contextvars" and "threading" entries against that of
    # "logcontext" (which then only pays for what the stdlib trio did not load).
    if not args.only or "import" in args.only:
        runs = 7 if args.quick else 31
        ratios, ours_us, base_us = [], [], []
        for _ in range(runs):
            err = subprocess.run(
                [
                    sys.executable,
                    "-X",
                    "importtime",
                    "-c",
                    "import logging, contextvars, threading; import logcontext",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
            top = {}
            for line in err.splitlines():
                parts = line.split("|")
                if (
                    len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  ")
                ):  # top level
                    top[parts[2].strip()] = int(parts[1])
            base = sum(top.get(m, 0) for m in ("logging", "contextvars", "threading"))
            ours = top.get("logcontext", 0)
            ratios.append(ours / base)
            ours_us.append(ours)
            base_us.append(base)
        leak = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; b=set(sys.modules); import logcontext; "
                "print(sorted(m for m in set(sys.modules)-b if m.split('.')[0] not in sys.stdlib_module_names and not m.startswith('logcontext')))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        imp = Suite("import", args)
        imp.check(
            "P18",
            "import logcontext / import logging,contextvars,threading (-X importtime, same process)",
            statistics.median(ratios),
            1.5,
        )
        imp.note(
            f"median cumulative import: logcontext {statistics.median(ours_us) / 1000:.2f} ms after the stdlib trio "
            f"{statistics.median(base_us) / 1000:.2f} ms; third-party modules imported: {leak}"
        )
        ok = imp.finish() and ok and leak == "[]"
    return exit_code(ok, args)


if __name__ == "__main__":
    sys.exit(main())
