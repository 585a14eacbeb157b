"""The README's usage example runs and logs each request's figures in its context."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs() -> None:
    """The example prints one line per request, tagged with the request's context name."""
    code = re.search(r"## Usage\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None, "README has no usage example"
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if " - cpu " in line]
    assert sorted(line.split(" - ")[4] for line in lines) == ["GET-0", "GET-1", "GET-2"]


def test_readme_opens_with_the_two_commands() -> None:
    """The README's first code block holds exactly the demo and test commands."""
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
