"""Side-by-side benchmark harness (spec §11).

Each candidate is ``fn(loops) -> seconds`` with the operation inline in a
loop. The harness calibrates ``loops`` so one sample takes about
``sample_s``; then, every round, runs all candidates of a suite once each in
a freshly shuffled order, so drift in machine speed hits them alike. Warm-up
rounds are dropped. Results are per-operation seconds (median, IQR, min),
optionally net of an ``empty`` candidate; targets are ratios of medians
measured in the same run, printed with their bound and PASS/FAIL.

Usage in a benchmark script::

    suite = Suite("micro", args)
    suite.add("empty", bench_empty)
    suite.add("tcv", bench_tcv)
    suite.run()
    suite.ratio("P1", "current_context", "ContextVar.get", bound=1.5)
    suite.finish()

Command line (shared by every script): ``--quick`` (CI smoke: few rounds,
short samples; ratios are noisy and not gated), ``--rounds N``, ``--json
PATH`` (append the results as one JSON object per suite), ``--strict``
(exit 1 if a target fails).
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Candidate = Callable[[int], float]


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run: few rounds, short samples")
    p.add_argument("--rounds", type=int, default=None, help="rounds kept (default 61, quick 7)")
    p.add_argument("--json", metavar="PATH", help="append results as JSON lines to PATH")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target fails")
    p.add_argument("--only", metavar="SUBSTR", help="run only suites whose name contains SUBSTR")
    return p.parse_args(argv)


@dataclass
class Result:
    name: str
    samples: list[float]  # seconds per operation
    net_of: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) - self.net_of

    @property
    def iqr(self) -> float:
        qs = statistics.quantiles(self.samples, n=4) if len(self.samples) >= 2 else [0, 0, 0]
        return qs[2] - qs[0]

    @property
    def min(self) -> float:
        return min(self.samples) - self.net_of


@dataclass
class Target:
    ident: str
    description: str
    value: float
    bound: float
    anchor: bool = False  # compared with a printed anchor, not measured here

    @property
    def passed(self) -> bool:
        return self.value <= self.bound


@dataclass
class Suite:
    name: str
    args: argparse.Namespace
    sample_s: float | None = None
    candidates: dict[str, Candidate] = field(default_factory=dict)
    loops: dict[str, int] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sample_s is None:
            self.sample_s = 0.002 if self.args.quick else 0.010

    @property
    def enabled(self) -> bool:
        return not self.args.only or self.args.only in self.name

    def add(self, name: str, fn: Candidate) -> None:
        self.candidates[name] = fn

    def _calibrate(self, fn: Candidate) -> int:
        loops = 1
        assert self.sample_s is not None
        while True:
            t = fn(loops)
            if t >= self.sample_s / 4 or loops >= 1 << 26:
                break
            loops *= 4 if t < self.sample_s / 40 else 2
        return max(1, int(loops * self.sample_s / max(t, 1e-9)))

    def run(self, *, empty: str | None = "empty") -> None:
        if not self.enabled:
            return
        rounds = self.args.rounds or (7 if self.args.quick else 61)
        warmup = 1 if self.args.quick else 3
        for name, fn in self.candidates.items():
            self.loops[name] = self._calibrate(fn)
        samples: dict[str, list[float]] = {n: [] for n in self.candidates}
        order = list(self.candidates)
        gc.collect()
        for r in range(rounds + warmup):
            random.shuffle(order)
            for name in order:
                loops = self.loops[name]
                t = self.candidates[name](loops)
                if r >= warmup:
                    samples[name].append(t / loops)
        base = statistics.median(samples[empty]) if empty and empty in samples else 0.0
        for name, s in samples.items():
            self.results[name] = Result(name, s, 0.0 if name == empty else base)

    def median(self, name: str) -> float:
        return self.results[name].median

    def check(
        self, ident: str, description: str, value: float, bound: float, *, anchor: bool = False
    ) -> None:
        if self.enabled:
            self.targets.append(Target(ident, description, value, bound, anchor))

    def ratio(self, ident: str, a: str, b: str, bound: float, description: str | None = None) -> float:
        if not self.enabled:
            return float("nan")
        value = self.median(a) / self.median(b)
        self.check(ident, description or f"{a} / {b}", value, bound)
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> bool:
        """Print the table and targets; return True when every measured target passed."""
        if not self.enabled:
            return True
        print(
            f"\n== suite {self.name} ({platform.python_implementation()} {platform.python_version()}, "
            f"{'quick' if self.args.quick else 'full'}) =="
        )
        width = max([len(n) for n in self.results] + [10])
        print(f"{'candidate':<{width}}  {'median':>10}  {'IQR':>9}  {'min':>10}  (per op, net of empty)")
        for name, res in self.results.items():
            print(f"{name:<{width}}  {_fmt(res.median):>10}  {_fmt(res.iqr):>9}  {_fmt(res.min):>10}")
        ok = True
        if self.targets:
            print(f"{'target':<6} {'value':>8} {'bound':>8}  verdict  description")
            for t in self.targets:
                verdict = "anchor" if t.anchor else ("PASS" if t.passed else "FAIL")
                if not t.anchor and not t.passed:
                    ok = False
                print(f"{t.ident:<6} {t.value:>8.3f} {t.bound:>8.3f}  {verdict:<7}  {t.description}")
        for n in self.notes:
            print(f"note: {n}")
        if self.args.json:
            with open(self.args.json, "a", encoding="utf-8") as f:
                f.write(
                    json.dumps(
                        {
                            "suite": self.name,
                            "python": platform.python_version(),
                            "quick": bool(self.args.quick),
                            "results": {
                                n: {"median_s": r.median, "iqr_s": r.iqr, "min_s": r.min}
                                for n, r in self.results.items()
                            },
                            "targets": [t.__dict__ | {"passed": t.passed} for t in self.targets],
                            "notes": self.notes,
                        }
                    )
                    + "\n"
                )
        return ok


def _fmt(seconds: float) -> str:
    if abs(seconds) < 1e-6:
        return f"{seconds * 1e9:.1f}ns"
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.3f}us"
    return f"{seconds * 1e3:.3f}ms"


def exit_code(all_ok: bool, args: argparse.Namespace) -> int:
    if not all_ok:
        print("\nsome targets FAILED" + ("" if args.strict else " (not gated: pass --strict to gate)"))
    return 1 if (args.strict and not all_ok) else 0


def timer() -> Callable[[], float]:
    return time.perf_counter


# -- baseline candidates shared by the benchmark scripts -----------------------

_pc = time.perf_counter
_cv: contextvars.ContextVar[int] = contextvars.ContextVar("bench", default=0)


def b_empty(n: int) -> float:
    """An empty loop: subtracted from every other candidate."""
    t = _pc()
    for _ in range(n):
        pass
    return _pc() - t


def b_cv_get(n: int) -> float:
    """``ContextVar.get``."""
    get = _cv.get
    t = _pc()
    for _ in range(n):
        get()
    return _pc() - t


def b_tcv(n: int) -> float:
    """``tcv``: ``ContextVar.set`` + ``reset``."""
    cv = _cv
    t = _pc()
    for _ in range(n):
        cv.reset(cv.set(1))
    return _pc() - t


def b_ttt(n: int) -> float:
    """``ttt``: ``time.thread_time_ns()``."""
    f = time.thread_time_ns
    t = _pc()
    for _ in range(n):
        f()
    return _pc() - t


def b_tpc(n: int) -> float:
    """``tpc``: ``time.perf_counter_ns()``."""
    f = time.perf_counter_ns
    t = _pc()
    for _ in range(n):
        f()
    return _pc() - t


def make_with(clock: str, step_mode: str | None = None) -> Candidate:
    """``with LoggingContext("x"): pass`` under ``clock`` (and ``step_mode``; default: the library's)."""

    def bench(n: int) -> float:
        import logcontext
        from logcontext import LoggingContext
        from logcontext._config import config

        saved = (config.clock_mode, config.step_mode)
        logcontext.configure(clock=clock, step_mode=step_mode)  # type: ignore[arg-type]
        lc = LoggingContext
        t = _pc()
        for _ in range(n):
            with lc("x"):
                pass
        dt = _pc() - t
        logcontext.configure(clock=saved[0], step_mode=saved[1])
        return dt

    return bench


if __name__ == "__main__":  # pragma: no cover
    sys.exit("this module is imported by the benchmark scripts")
