"""Observability of a homeserver process: JSON access log, trace spans, metrics, CPU ledger.

:func:`setup_observability` is called once at start-up by ``python -m homeserver main`` and
``worker`` (flag ``--log-dir DIR``). It writes into ``DIR``:

- ``access-<service>.jsonl`` — the library's "Processed request" lines
  (:class:`logcontext.logging.TerseJsonFormatter`, with the ``access`` extra), readable by
  ``logcontext report``;
- ``spans-<service>.jsonl`` — every finished span (OpenTelemetry SDK with
  :class:`logcontext.tracing.jsonl.JsonLinesSpanExporter`), unless OTLP is chosen, in which case
  spans go to ``OTEL_EXPORTER_OTLP_ENDPOINT`` instead;
- ``usage-<service>.json`` — written by :meth:`Observability.shutdown`: the process's CPU
  time and the ledger's attributed / unattributed CPU per thread.

It also installs the Prometheus metric families (served at ``/metrics`` by the main process)
and makes every event loop created afterwards meter its tasks (``logcontext.aio``), the main
task included, so plain ``asyncio.run`` is enough.

``python -m homeserver.observability --log-dir DIR --service NAME -- COMMAND ARGS...`` runs a
``python -m homeserver`` command with all of this set up; the demo uses it for commands that
do not take ``--log-dir`` themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Observability",
    "access_log_path",
    "setup_observability",
    "span_file_path",
    "usage_file_path",
]

logger = logging.getLogger(__name__)

ACCESS_LOGGER = "logcontext.access"


def access_log_path(out_dir: str | os.PathLike[str], service_name: str) -> Path:
    """Where ``service_name`` writes its JSON access log."""
    return Path(out_dir) / f"access-{service_name}.jsonl"


def span_file_path(out_dir: str | os.PathLike[str], service_name: str) -> Path:
    """Where ``service_name`` writes its JSON-lines spans (when not exporting over OTLP)."""
    return Path(out_dir) / f"spans-{service_name}.jsonl"


def usage_file_path(out_dir: str | os.PathLike[str], service_name: str) -> Path:
    """Where ``service_name`` writes its CPU ledger summary at shutdown."""
    return Path(out_dir) / f"usage-{service_name}.json"


def _check_service_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"service name {name!r} must be non-empty letters, digits, '-', '_' or '.'")


class _MeteredLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """Every new event loop gets the ``logcontext.aio`` metering task factory."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        from logcontext import aio

        loop = super().new_event_loop()
        aio.install(loop)
        return loop


@dataclass
class Observability:
    """What :func:`setup_observability` configured; call :meth:`shutdown` once at exit."""

    out_dir: Path
    service_name: str
    access_log: Path
    span_file: Path | None
    usage_file: Path
    otlp_endpoint: str | None
    started: float = field(default_factory=time.process_time)
    _handler: logging.Handler | None = None
    _provider: Any = None
    _closed: bool = False

    def describe(self) -> str:
        """One line naming where the figures go."""
        traces = f"OTLP {self.otlp_endpoint}" if self.otlp_endpoint else str(self.span_file)
        return f"access log {self.access_log}, traces {traces}"

    def usage_summary(self) -> dict[str, Any]:
        """The process's CPU time and the ledger's attributed / unattributed CPU (seconds)."""
        from logcontext import _ledger

        threads = [
            {"thread": name, "attributed_s": att / 1e9, "unattributed_s": unatt / 1e9}
            for name, att, unatt in _ledger.ledger_stats()
        ]
        return {
            "service": self.service_name,
            "pid": os.getpid(),
            "process_cpu_s": time.process_time(),
            "attributed_s": sum(t["attributed_s"] for t in threads),
            "unattributed_s": sum(t["unattributed_s"] for t in threads),
            "threads": threads,
        }

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Write the usage file, flush and stop tracing, close the access log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.usage_file.write_text(json.dumps(self.usage_summary(), indent=1) + "\n", "utf-8")
        except OSError as e:
            logger.warning("Could not write %s: %s", self.usage_file, e)
        from logcontext import tracing

        tracing.shutdown_tracing(timeout_s)
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception:  # pragma: no cover - exporter failures must not block exit
                logger.warning("Tracer provider shutdown failed", exc_info=True)
        if self._handler is not None:
            logging.getLogger(ACCESS_LOGGER).removeHandler(self._handler)
            self._handler.close()


def setup_observability(
    out_dir: str | os.PathLike[str],
    service_name: str,
    *,
    otlp: bool | None = None,
    metrics: bool = True,
    meter_asyncio: bool = True,
) -> Observability:
    """Configure logging, tracing and metrics for one process; files go into ``out_dir``.

    ``otlp`` (default: whether ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) exports spans over
    OTLP/HTTP instead of writing the span file. ``meter_asyncio`` sets an event-loop policy
    whose loops meter every task, so call this before ``asyncio.run``.
    """
    _check_service_name(service_name)
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"log directory {str(out)!r} does not exist or is not a directory")
    if otlp is None:
        otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    from logcontext.logging import TerseJsonFormatter, install_log_record_factory

    install_log_record_factory()
    access = access_log_path(out, service_name)
    handler = logging.FileHandler(access, encoding="utf-8")
    handler.setFormatter(TerseJsonFormatter())
    access_logger = logging.getLogger(ACCESS_LOGGER)
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    from logcontext import tracing

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter: SpanExporter
    span_file: Path | None = None
    endpoint: str | None = None
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    else:
        from logcontext.tracing.jsonl import JsonLinesSpanExporter

        span_file = span_file_path(out, service_name)
        exporter = JsonLinesSpanExporter(span_file)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing.init_tracing("otel", tracer_provider=provider, service_name=service_name)

    if metrics:
        from logcontext.metrics import install_metrics

        install_metrics()
    if meter_asyncio:
        asyncio.set_event_loop_policy(_MeteredLoopPolicy())
    # Import the HTTP stack now: imported later, lazily, inside the running process, its import
    # time would be charged to nobody and inflate the unattributed share.
    import aiohttp.web  # noqa: F401

    import logcontext.web  # noqa: F401

    return Observability(
        out_dir=out,
        service_name=service_name,
        access_log=access,
        span_file=span_file,
        usage_file=usage_file_path(out, service_name),
        otlp_endpoint=endpoint,
        _handler=handler,
        _provider=provider,
    )


# -- launcher ---------------------------------------------------------------------------------


def _add_room_routes_to_main_app() -> None:
    """Make ``homeserver.http_api.build_main_app`` include :mod:`homeserver.http_rooms`.

    Only for commands that do not call ``add_room_routes`` themselves; a no-op when they do.
    """
    import homeserver.http_api as http_api
    from homeserver.http_rooms import add_room_routes

    original = http_api.build_main_app
    if getattr(original, "_with_room_routes", False):
        return

    def build_main_app(main: Any) -> Any:
        app = original(main)
        add_room_routes(app, main)
        return app

    build_main_app._with_room_routes = True  # type: ignore[attr-defined]
    http_api.build_main_app = build_main_app


def launch(argv: list[str]) -> int:
    """``--log-dir DIR --service NAME [--otlp] -- COMMAND ARGS...``: run a command observed."""
    import argparse

    if "--" not in argv:
        print(
            "usage: python -m homeserver.observability --log-dir DIR --service NAME -- COMMAND ...",
            file=sys.stderr,
        )
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m homeserver.observability")
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--service", required=True)
    parser.add_argument("--otlp", action="store_true", default=None)
    args = parser.parse_args(argv[:cut])
    try:
        obs = setup_observability(args.log_dir, args.service, otlp=args.otlp)
    except ValueError as e:
        print(f"homeserver.observability: error: {e}", file=sys.stderr)
        return 2
    _add_room_routes_to_main_app()
    from homeserver.__main__ import main

    try:
        return main(argv[cut + 1 :])
    finally:
        obs.shutdown()


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
