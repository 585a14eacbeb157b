#!/usr/bin/env python3
"""Set up ``.venv/`` (idempotently) and run the demo or the test suite.

Usage::

    python3 dev.py demo [ARGS...]   # the main job: the homeserver demo on SQLite
    python3 dev.py test [ARGS...]   # the whole test suite (pytest arguments pass through)
    python3 dev.py setup            # only create/refresh .venv

Needs nothing but Python >= 3.11 and access to the package registry.  The
virtual environment is (re)installed only when a dependency file changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".logcontext-stamp"
DEP_FILES = ("pyproject.toml", "examples/pyproject.toml")


def _digest() -> str:
    h = hashlib.sha256(sys.version.encode())
    for name in DEP_FILES:
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"logcontext needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    digest = _digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing logcontext and the homeserver example into .venv", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]", "-e", str(ROOT / "examples")], check=True)
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    setup()
    os.chdir(ROOT)
    if command == "setup":
        return 0
    if command == "demo":
        return subprocess.call([str(PY), "-m", "homeserver", "demo", *rest])
    return subprocess.call([str(PY), "-m", "pytest", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
