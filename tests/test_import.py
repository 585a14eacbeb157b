"""``import logcontext`` stays light (spec §11 P18, design §1)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import sys, json
before = set(sys.modules)
import logcontext, logcontext.clock, logcontext.logging, logcontext.testing
after = set(sys.modules) - before
print(json.dumps(sorted(after)))
"""


def test_import_loads_no_third_party_module() -> None:
    """A fresh interpreter importing logcontext loads only the standard library and logcontext."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    stdlib = sys.stdlib_module_names
    foreign = [
        m
        for m in loaded
        if m.split(".")[0] not in stdlib and m.split(".")[0] not in {"logcontext", "_pytest", "pytest"}
    ]
    assert foreign == []


def test_public_names_exported() -> None:
    """The core names of the contract are importable from the package and listed in __all__."""
    import logcontext

    for name in (
        "LoggingContext",
        "ContextResourceUsage",
        "SENTINEL_CONTEXT",
        "current_context",
        "set_current_context",
        "PreserveLoggingContext",
        "nested_logging_context",
        "configure",
        "LogContextError",
    ):
        assert name in logcontext.__all__
        assert getattr(logcontext, name) is not None
