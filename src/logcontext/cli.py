"""The ``logcontext`` command.

``logcontext report FILE [FILE...] [--html OUT] [--top N] [--json]`` reads JSON-lines access logs
(``logcontext.logging.JsonFormatter`` output with the ``access`` numbers of the "Processed request"
line) and JSON-lines span files (``logcontext.tracing.jsonl.JsonLinesSpanExporter``), detecting the
format line by line, and prints per-handler counts with CPU and database-time percentiles. See
``docs/report.md``. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from ._report_load import LoadResult, load_files
from ._report_stats import SORT_KEYS, HandlerStats, format_table, summarise

__all__ = ["build_parser", "main"]

#: Exit statuses.
EXIT_OK = 0
EXIT_NO_RECORDS = 1
EXIT_USAGE = 2


class _Fail(Exception):
    """A user-facing error: print the message and exit with status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``logcontext`` command."""
    parser = argparse.ArgumentParser(
        prog="logcontext",
        description="Tools for logcontext output: see where the CPU and database time went.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    rep = sub.add_parser(
        "report",
        help="per-handler CPU/DB percentiles from a JSON access log or a JSON-lines span file",
        description=(
            "Read JSON-lines access logs (logcontext.logging.JsonFormatter) and/or JSON-lines span files "
            "(logcontext.tracing.jsonl.JsonLinesSpanExporter); the format is detected per line. Prints "
            "per-handler counts and p50/p90/p99/max of CPU (user+system), DB transaction time, DB "
            "scheduling wait and transaction count. Bad lines are counted and skipped."
        ),
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="input file ('-' for standard input)")
    rep.add_argument("--html", metavar="OUT", help="also write a self-contained HTML page to OUT")
    rep.add_argument("--top", type=_positive_int, metavar="N", help="show only the first N handlers")
    rep.add_argument("--json", action="store_true", help="print the statistics as JSON instead of tables")
    rep.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="cpu",
        help="order handlers by total CPU (default), total DB time, count or name",
    )
    rep.add_argument(
        "--traces",
        type=_positive_int,
        default=5,
        metavar="N",
        help="slowest traces drawn in the HTML waterfall (default 5)",
    )
    return parser


def _check_inputs(paths: Sequence[str]) -> None:
    for path in paths:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise _Fail(f"cannot read {path!r}: no such file")
        if os.path.isdir(path):
            raise _Fail(f"cannot read {path!r}: is a directory")
        if not os.access(path, os.R_OK):
            raise _Fail(f"cannot read {path!r}: permission denied")


def _check_output(path: str) -> None:
    if os.path.isdir(path):
        raise _Fail(f"cannot write --html {path!r}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise _Fail(f"cannot write --html {path!r}: directory {parent!r} does not exist")


def _bad_summary(result: LoadResult) -> str:
    return f"{result.bad_lines} bad line(s) skipped; first: {result.first_bad}"


def _footer(result: LoadResult, n_files: int) -> str:
    traces = len({s.trace_id for s in result.spans})
    text = (
        f"Read {result.lines_read} line(s) from {n_files} file(s): {len(result.access)} access, "
        f"{len(result.spans)} span(s) in {traces} trace(s), {result.other_lines} other log line(s), "
        f"{result.bad_lines} bad"
    )
    if result.first_bad is not None:
        text += f" (first bad: {result.first_bad})"
    return text


def _as_json(
    result: LoadResult,
    access: Sequence[HandlerStats],
    spans: Sequence[HandlerStats],
    files: Sequence[str],
    top: int | None,
) -> dict[str, Any]:
    first_bad = result.first_bad
    return {
        "files": list(files),
        "lines": result.lines_read,
        "access_lines": len(result.access),
        "spans": len(result.spans),
        "traces": len({s.trace_id for s in result.spans}),
        "other_lines": result.other_lines,
        "bad_lines": result.bad_lines,
        "first_bad": (
            None
            if first_bad is None
            else {"file": first_bad.path, "line": first_bad.lineno, "reason": first_bad.reason}
        ),
        "access": [s.as_dict() for s in (access[:top] if top else access)],
        "span_names": [s.as_dict() for s in (spans[:top] if top else spans)],
    }


def _report(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    files: list[str] = args.files
    _check_inputs(files)
    if args.html is not None:
        _check_output(args.html)
    try:
        result = load_files(files)
    except OSError as e:
        raise _Fail(f"cannot read {e.filename!r}: {e.strerror or e}") from None
    access = summarise(result.access, sort=args.sort)
    spans = summarise(result.spans, sort=args.sort)
    if result.bad_lines:
        print(f"logcontext report: warning: {_bad_summary(result)}", file=err)
    if args.json:
        json.dump(_as_json(result, access, spans, files, args.top), out, indent=2)
        out.write("\n")
    else:
        sections = []
        if access:
            sections.append(
                format_table(
                    access,
                    title=f"Requests (access log): {len(result.access)} request(s), {len(access)} handler(s)",
                    top=args.top,
                )
            )
        if spans:
            traces = len({s.trace_id for s in result.spans})
            sections.append(
                format_table(
                    spans,
                    title=f"Spans: {len(result.spans)} span(s) in {traces} trace(s), {len(spans)} name(s)",
                    top=args.top,
                )
            )
        sections.append(_footer(result, len(files)))
        out.write("\n\n".join(sections) + "\n")
    if not result.access and not result.spans:
        print(
            "logcontext report: error: no access-log records or spans found in "
            + ", ".join(repr(f) for f in files),
            file=err,
        )
        return EXIT_NO_RECORDS
    if args.html is not None:
        from ._report_html import render_html

        page = render_html(
            result, access_stats=access, span_stats=spans, inputs=files, top=args.top, traces=args.traces
        )
        try:
            with open(args.html, "w", encoding="utf-8") as fh:
                fh.write(page)
        except OSError as e:
            raise _Fail(f"cannot write --html {args.html!r}: {e.strerror or e}") from None
        print(f"logcontext report: wrote {args.html}", file=err)
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Run the command; returns the exit status (0 ok, 1 nothing to report, 2 bad usage or input)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args, out, err)
    except _Fail as e:
        print(f"logcontext {args.command}: error: {e}", file=err)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, keep Python's flush at exit from complaining.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
