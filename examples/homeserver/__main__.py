"""``python -m homeserver <command>``: the reference homeserver's entry point.

Each sub-command lives in ``homeserver.commands.<name>`` and provides
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their command is used, so ``resolve-state`` does not pay for the network
stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "resolve-state": ("resolve_state", "resolve state for JSON-lines cases (vector format)"),
    "main": ("main_process", "run the main process (HTTP API + replication server)"),
    "worker": ("worker", "run a worker that follows the main process over replication"),
    "demo": ("demo", "start a main process and two workers, drive a workload, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m homeserver", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(f"homeserver.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"homeserver.commands.{module}":
                raise
            p.set_defaults(_missing=name)
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"homeserver: command {args._missing!r} is not available in this build", file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
