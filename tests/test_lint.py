"""The repository's own quality gates, run with the test suite so CI enforces them.

``mypy --strict`` on ``src/`` and ``ruff`` (lint and format) on the whole tree, with the
versions the ``dev`` extra installs into ``.venv``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(module: str) -> list[str]:
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"{module} is not installed in the test environment (it is in the 'dev' extra)")
    return [sys.executable, "-m", module]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_mypy_strict_src() -> None:
    """``mypy --strict src`` reports no issue."""
    proc = _run([*_tool("mypy"), "--strict", "src"])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args: list[str]) -> None:
    """``ruff check`` and ``ruff format --check`` pass on the whole repository."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else _tool("ruff")
    proc = _run([*cmd, *args])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
