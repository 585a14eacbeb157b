"""``python -m homeserver main``: the main process (stream writer, replication server, HTTP API)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from homeserver.config import parse_database, parse_hostport

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("homeserver.main")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``main`` and ``worker``."""
    parser.add_argument(
        "--database",
        required=True,
        metavar="DSN",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
    )
    parser.add_argument("--redis", metavar="URL", help="redis://[:PASSWORD@]HOST:PORT[/DB] (pub/sub bus)")
    parser.add_argument("--redis-prefix", default="", metavar="P", help="channel prefix (default: none)")
    parser.add_argument("--server-name", default="localhost", help="Matrix server name (default: localhost)")
    parser.add_argument(
        "--replication-secret", metavar="S", help="shared secret for AUTH and the replication HTTP API"
    )
    parser.add_argument(
        "--ping-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="keepalive interval; the timeout is 5x (default: 5)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="write the JSON access log, spans (or OTLP if OTEL_EXPORTER_OTLP_ENDPOINT is set) "
        "and the CPU ledger summary into DIR",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--replication",
        default="127.0.0.1:9092",
        metavar="HOST:PORT",
        help="replication TCP listener (default: 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:8008",
        metavar="HOST:PORT",
        help="HTTP API listener (default: 127.0.0.1:8008)",
    )
    parser.add_argument("--instance-name", default="master", help="writer instance name (default: master)")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def start_process(args: argparse.Namespace, command: str, service: str) -> tuple[Any, Any] | None:
    """Common start-up of ``main`` and ``worker``: logging, ``--log-dir`` observability, options.

    Returns ``(ProcessOptions, observability or None)``, or ``None`` after printing an error.
    """
    from homeserver.app import ProcessOptions

    setup_logging(args.log_level)
    obs = None
    if args.log_dir is not None:
        from homeserver.observability import setup_observability

        try:
            obs = setup_observability(args.log_dir, service)
        except ValueError as e:
            print(f"homeserver {command}: error: {e}", file=sys.stderr)
            return None
    options = ProcessOptions(
        server_name=args.server_name,
        secret=args.replication_secret,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval * 5,
        redis_url=args.redis,
        redis_prefix=args.redis_prefix,
    )
    return options, obs


def run(args: argparse.Namespace) -> int:
    from homeserver.app import MainProcess

    try:
        database = parse_database(args.database)
        replication = parse_hostport(args.replication, what="--replication")
        http = parse_hostport(args.http, what="--http")
    except ValueError as e:
        print(f"homeserver main: error: {e}", file=sys.stderr)
        return 2
    started = start_process(args, "main", "main")
    if started is None:
        return 2
    options, obs = started

    async def amain() -> int:
        main = MainProcess(
            database,
            replication=replication,
            http=http,
            options=options,
            instance_name=args.instance_name,
        )
        try:
            await main.start()
        except OSError as e:
            print(f"homeserver main: cannot start: {e}", file=sys.stderr)
            return 1
        print(
            f"main ready: replication={replication[0]}:{main.replication_port} "
            f"http={http[0]}:{main.http_port}",
            flush=True,
        )
        await wait_for_signal()
        logger.info("Shutting down")
        await main.stop()
        return 0

    try:
        return asyncio.run(amain())
    finally:
        if obs is not None:
            obs.shutdown()
