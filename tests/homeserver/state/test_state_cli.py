"""``python -m homeserver resolve-state FILE`` over the vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _state_vectors import VECTORS, expected_of, load_cases
from homeserver.__main__ import main


def test_cli_matches_every_vector(tmp_path: Path, capsys: object) -> None:
    """One output line per case: the expected triples, or the expected error category."""
    cases = load_cases()
    assert main(["resolve-state", str(VECTORS / "v02-v05.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()  # type: ignore[attr-defined]
    by_name = {c["name"]: c for c in cases}
    assert len(out) == 46
    for line in out:
        rec = json.loads(line)
        c = by_name[rec["name"]]
        if "expected_error" in c:
            assert rec["error"].split(": ", 1)[0] == c["expected_error"]
        else:
            assert {(t, k): e for t, k, e in rec["resolved"]} == expected_of(c)


def test_cli_subprocess_and_bad_lines(tmp_path: Path) -> None:
    """A bad JSON line gives an ``invalid_input`` record; the run still exits 0."""
    f = tmp_path / "cases.jsonl"
    good = (VECTORS / "v12.jsonl").read_text().splitlines()[0]
    f.write_text(good + "\n{not json\n" + json.dumps({"name": "x", "room_version": "1"}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "homeserver", "resolve-state", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "resolved" in recs[0]
    assert recs[1]["error"].startswith("invalid_input: ")
    assert recs[2] == {"name": "x", "error": recs[2]["error"]}
    assert recs[2]["error"].startswith("unsupported_room_version: ")


def test_cli_missing_file(tmp_path: Path) -> None:
    """A missing file is reported and exits 2."""
    assert main(["resolve-state", str(tmp_path / "nope.jsonl")]) == 2
