"""``python -m homeserver worker``: follow the main process's streams over replication."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from homeserver.commands.main_process import add_common_arguments, start_process, wait_for_signal
from homeserver.config import parse_database, parse_hostport

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("homeserver.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="this worker's instance name")
    add_common_arguments(parser)
    parser.add_argument(
        "--main",
        metavar="HOST:PORT",
        help="the main process's replication listener (required unless --redis is given)",
    )
    parser.add_argument(
        "--main-http",
        metavar="URL",
        help="the main process's HTTP API, e.g. http://127.0.0.1:8008 "
        "(needed to follow the in-memory typing stream)",
    )
    parser.add_argument("--http", metavar="HOST:PORT", help="serve GET /_hs/status here")
    parser.add_argument(
        "--record",
        metavar="FILE",
        type=Path,
        help="append one JSON line per delivered token group (stream, instance, token, rows, path)",
    )


def run(args: argparse.Namespace) -> int:
    from homeserver.app import Worker
    from homeserver.replication.protocol import ProtocolError, parse_line

    try:
        database = parse_database(args.database)
        main = parse_hostport(args.main, what="--main") if args.main else None
        http = parse_hostport(args.http, what="--http") if args.http else None
        parse_line(f"NAME {args.name}")
        if main is None and not args.redis:
            raise ValueError("give --main HOST:PORT (TCP) or --redis URL (bus)")
        if args.main_http and not args.main_http.startswith(("http://", "https://")):
            raise ValueError(f"--main-http {args.main_http!r} must be an http:// URL")
    except ProtocolError as e:
        print(f"homeserver worker: error: --name: {e.reason}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"homeserver worker: error: {e}", file=sys.stderr)
        return 2
    started = start_process(args, "worker", args.name)
    if started is None:
        return 2
    options, obs = started

    async def amain() -> int:
        worker = Worker(
            args.name,
            database,
            main=main,
            main_http=args.main_http,
            options=options,
            record_path=args.record,
            http=http,
            keep_deliveries=False,
        )
        await worker.start()
        status = f" http={http[0]}:{worker.http_port}" if http else ""
        print(f"worker {args.name} ready{status}", flush=True)
        await wait_for_signal()
        logger.info("Shutting down")
        await worker.stop()
        return 0

    try:
        return asyncio.run(amain())
    finally:
        if obs is not None:
            obs.shutdown()
