"""Smoke runs of the benchmark scripts (spec §11: CI smoke-runs them, ratios are not gated).

Each harness script runs with ``--quick --rounds 2 --json`` in a fresh interpreter; the test
checks that it exits 0 and that every suite it wrote reports the targets it is meant to print,
each with a finite value and bound. The homeserver benchmarks have their own options and are
checked for a clean exit and their headline figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

#: script -> target ids every full set of its suites must report.
HARNESS_TARGETS = {
    "bench_core.py": {"P1", "P2", "P3", "P4", "P4s", "P5", "P18"},
    "bench_aio.py": {"P4s", "P6", "P7", "P8", "P9", "P9s", "P10"},
    "bench_db.py": {"P17"},
    "bench_web.py": {"W1", "P11", "P12", "P13", "P16"},
    "bench_tracing.py": {"T1", "T2", "P14", "P15"},
}


def _run(args: list[str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("script", sorted(HARNESS_TARGETS))
def test_harness_benchmark_smoke(script: str, tmp_path: Path) -> None:
    """A harness benchmark runs to completion and reports every target it owns, with numbers."""
    out = tmp_path / "results.jsonl"
    proc = _run([str(BENCH / script), "--quick", "--rounds", "2", "--json", str(out)])
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    suites = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert suites, f"{script} wrote no suite results"
    seen: set[str] = set()
    for suite in suites:
        assert suite["results"] or suite["targets"], f"empty suite {suite['suite']!r} in {script}"
        for name, r in suite["results"].items():
            assert math.isfinite(r["median_s"]), f"{script}: {suite['suite']}/{name} median is not finite"
        for t in suite["targets"]:
            assert math.isfinite(t["value"]), f"{script}: target {t['ident']} value {t['value']!r}"
            assert t["bound"] >= 0, f"{script}: target {t['ident']} bound {t['bound']!r}"
            seen.add(t["ident"])
    missing = HARNESS_TARGETS[script] - seen
    assert not missing, f"{script} did not report {sorted(missing)} (saw {sorted(seen)})"


def test_state_benchmark_smoke() -> None:
    """The state-resolution benchmark runs its quick graphs and prints its timing table."""
    proc = _run([str(BENCH / "bench_state.py"), "--quick", "--runs", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " ms " in proc.stdout, proc.stdout[-3000:]


def test_replication_benchmark_smoke() -> None:
    """The replication benchmark's quick catch-up run completes and prints its catch-up ratio."""
    proc = _run([str(BENCH / "bench_replication.py"), "--quick"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "catch-up / L_db" in proc.stdout, proc.stdout[-3000:]
