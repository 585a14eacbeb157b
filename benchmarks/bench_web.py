"""Web, logging and metrics costs, side by side in one process (issue 5; spec §11 P11–P13, P16).

Suite "web": requests/s of an aiohttp hello-world with and without ``logcontext_middleware``
(clock ``cpu`` and the library's default step mode ``sampled`` unless stated, tracing off). The
servers run in background threads of this process, each on its own loop
(``aio.loop_factory()`` where "metered"). The load comes from a **separate client process**
over loopback: one keep-alive raw-socket connection per candidate, 16 pipelined requests per
round trip, so the client neither shares the GIL with the servers nor costs them anything,
and it is the same client for both arms of every ratio (its own CPU per request is printed).
Metrics are installed once and switched on only around the candidates that say so.

Every target (bound 1.05, issue 5) is checked twice: on time per request (requests/s, noisy
on a shared machine) and on the server thread's own CPU per request (``thread_time`` read in
the server thread around each sample; the client's cost is excluded):

- W1  middleware only: the same metered app with / without the middleware;
- W1m the same with metrics installed (as a deployment would run it);
- W1b metering + middleware against a plain loop without either;
- W1d clock ``off``; W1x step mode ``exact`` (W1's definition before the default became
  ``sampled``).

The notes give requests/s, CPU per request (median, min), ratios of minima, and the CPU each
layer adds (pass-through middleware, context, our bookkeeping, metrics, access line).

Suite "web-layers" measures the same layers in one thread through a fake transport (no
sockets, no client): steadier per-layer differences, clocks ``cpu`` and ``off``.

Suites "logging" (P11, P12, P13) and "metrics" (P16) are micro-ratios.

    python benchmarks/bench_web.py                # full run (~1-2 min)
    python benchmarks/bench_web.py --quick        # smoke run
    python benchmarks/bench_web.py --only web     # the web suites only
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Suite, b_empty, b_tcv, exit_code, parse_args

import logcontext
from logcontext import ContextRequest, LoggingContext, Measure, aio

pc = time.perf_counter
ANCHOR_US = {"merge_contextvars": 0.76, "synapse_filter": 0.72}


# -- web ---------------------------------------------------------------------------------------


class Server:
    """An aiohttp app served from its own thread/loop on 127.0.0.1; tracks the thread's CPU."""

    def __init__(self, name: str, *, middleware: bool | str, metered: bool, log: bool = False) -> None:
        from aiohttp import web

        from logcontext.web import logcontext_middleware

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="Hello, world")

        mws: list[Any] = []
        if middleware == "pass":
            mws = [_passthrough]
        elif middleware == "context":
            mws = [_context_only]
        elif middleware:
            mws = [logcontext_middleware(site_tag=name)]
        self.app = web.Application(middlewares=mws)
        self.app.router.add_get("/", hello)
        if log:
            lg = logging.getLogger(f"logcontext.access.http.{name}")
            lg.setLevel(logging.INFO)
            h = logging.StreamHandler(open("/dev/null", "w"))  # noqa: SIM115 (lives with the process)
            h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
            lg.addHandler(h)
            lg.propagate = False
        self.metered = metered
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.cpu = 0.0
        self.requests = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name=f"bench-{name}", daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")

    def _run(self) -> None:
        from aiohttp import web

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            runner = web.AppRunner(self.app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, self.sock).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        factory = aio.loop_factory() if self.metered else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(main())

    def thread_cpu(self) -> float:
        """CPU seconds used so far by the server thread (read inside it)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(_thread_time(), self._loop)
        return fut.result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def _make_breakdown_middlewares() -> tuple[Any, Any]:
    import itertools

    from aiohttp import web

    counter = itertools.count()

    @web.middleware
    async def passthrough(request: Any, handler: Any) -> Any:
        return await handler(request)

    @web.middleware
    async def context_only(request: Any, handler: Any) -> Any:
        with LoggingContext(f"GET-{next(counter)}"):
            return await handler(request)

    return passthrough, context_only


_passthrough, _context_only = _make_breakdown_middlewares()


async def _thread_time() -> float:
    return time.thread_time()


REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"
DEPTH = 16  # pipelined requests per round trip


class Client:
    """A keep-alive HTTP/1.1 client on a raw socket sending ``DEPTH`` pipelined requests at a
    time, so the server thread works back to back and the client costs little."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, k: int) -> None:
        s = self.s
        s.sendall(REQUEST * k)
        buf = self.buf
        pos = 0
        while k:
            end = buf.find(b"\r\n\r\n", pos)
            if end >= 0:
                i = buf.find(b"Content-Length:", pos, end)
                length = int(buf[i + 15 : buf.find(b"\r\n", i)])
                total = end + 4 + length
                if len(buf) >= total:
                    pos = total
                    k -= 1
                    continue
            chunk = s.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf = buf[pos:] + chunk
            pos = 0
        self.buf = buf[pos:]


class LoadProcess:
    """The load generator in a child process (``Client`` connections, driven over a pipe).

    ``connect(port)`` opens (and warms) one keep-alive connection and returns its handle;
    ``run(handle, n)`` sends ``n`` requests on it, ``DEPTH`` at a time, and returns the
    client's wall seconds and its own CPU seconds for them. While it runs, this process only
    waits on the pipe, so the server threads have the interpreter to themselves.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--load-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, line: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().split()
        if not reply or reply[0] != "ok":
            raise RuntimeError(f"load worker failed on {line!r}: {reply!r}")
        return reply[1:]

    def connect(self, port: int) -> int:
        return int(self._ask(f"connect {port}")[0])

    def run(self, handle: int, n: int) -> tuple[float, float]:
        wall, cpu = self._ask(f"run {handle} {n}")
        return float(wall), float(cpu)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


def load_worker() -> int:
    """The child side of :class:`LoadProcess`: one command per stdin line, one reply line."""
    conns: list[Client] = []
    for line in sys.stdin:
        cmd, *a = line.split()
        try:
            if cmd == "connect":
                c = Client(int(a[0]))
                c.get(DEPTH)
                conns.append(c)
                print("ok", len(conns) - 1, flush=True)
            elif cmd == "run":
                get = conns[int(a[0])].get
                batches, rest = divmod(int(a[1]), DEPTH)
                cpu0 = time.process_time()
                t = pc()
                for _ in range(batches):
                    get(DEPTH)
                if rest:
                    get(rest)
                dt = pc() - t
                print("ok", repr(dt), repr(time.process_time() - cpu0), flush=True)
            else:
                print("error unknown-command", flush=True)
        except Exception as e:
            print("error", type(e).__name__, flush=True)
    return 0


class Candidate:
    """One configuration: a server plus clock/step mode and whether metrics are on.

    ``fn(n)`` has the load process send ``n`` requests on this candidate's own connection and
    returns the client's wall time; it also records the server thread's CPU per request of
    that sample (``thread_time`` read inside the server thread before and after) and the
    client's CPU per request.
    """

    def __init__(
        self,
        server: Server,
        load: LoadProcess,
        *,
        clock: str = "cpu",
        step_mode: str = "sampled",
        metrics: Any = None,
    ) -> None:
        self.server = server
        self.load = load
        self.clock = clock
        self.step_mode = step_mode
        self.metrics = metrics
        self.cpu: list[float] = []  # server CPU seconds per request, one per sample
        self.client_cpu: list[float] = []  # client process CPU seconds per request
        self.conn = load.connect(server.port)

    def __call__(self, n: int) -> float:
        from logcontext import _bgmetrics

        # Modes are set for every sample (candidates differ).
        logcontext.configure(clock=self.clock, step_mode=self.step_mode)  # type: ignore[arg-type]
        _bgmetrics.active = self.metrics
        try:
            return self._run(n)
        finally:
            # Safe: the last thread_cpu() round trip ran after the last request's finish().
            _bgmetrics.active = None

    def _run(self, n: int) -> float:
        server = self.server
        cpu0 = server.thread_cpu()
        dt, client_cpu = self.load.run(self.conn, n)
        self.cpu.append((server.thread_cpu() - cpu0) / n)
        self.client_cpu.append(client_cpu / n)
        return dt


# Candidate names.
PLAIN = "plain loop, no middleware"
NONE = "metered loop, no middleware"
PASS = "metered loop + pass-through middleware"
CTX = "metered loop + context-only middleware"
MW = "metered loop + middleware"
MWM = "metered loop + middleware + metrics"
MWL = "metered loop + middleware + metrics + access log"
NONE_OFF = "metered loop, no middleware [clock off]"
MW_OFF = "metered loop + middleware [clock off]"
NONE_X = "metered loop, no middleware [cpu, exact]"
MW_X = "metered loop + middleware [cpu, exact]"

# (id, with, without, description): each is checked on time per request (requests/s) and
# on server-thread CPU per request, bound 1.05 (issue 5's target).
RATIOS = (
    ("W1", MW, NONE, "middleware only: middleware / none, both on a metered loop"),
    ("W1m", MWM, NONE, "middleware with metrics installed / none, metered loop"),
    ("W1b", MW, PLAIN, "metering + middleware / plain loop without either"),
    ("W1d", MW_OFF, NONE_OFF, "middleware / none, clock off (no CPU accounting)"),
    ("W1x", MW_X, NONE_X, "middleware / none, cpu clock with step mode exact"),
)


def web_suite(args: Any) -> bool:
    from prometheus_client import CollectorRegistry

    from logcontext import _bgmetrics
    from logcontext.metrics import install_metrics, uninstall_metrics

    if args.only and args.only not in "web":
        return True
    from logcontext._config import config

    saved_step = config.step_mode
    logcontext.configure(clock="cpu")
    metrics = install_metrics(registry=CollectorRegistry())
    _bgmetrics.active = None  # switched on only around the candidates that use it
    suite = Suite("web", args, sample_s=0.01 if args.quick else 0.04)
    servers = {
        "plain": Server("plain", middleware=False, metered=False),
        "metered": Server("metered", middleware=False, metered=True),
        "pass": Server("pass", middleware="pass", metered=True),
        "ctx": Server("ctx", middleware="context", metered=True),
        "mw": Server("mw", middleware=True, metered=True),
        "mwlog": Server("mwlog", middleware=True, metered=True, log=True),
    }
    load = LoadProcess()
    cands = {
        PLAIN: Candidate(servers["plain"], load),
        NONE: Candidate(servers["metered"], load),
        PASS: Candidate(servers["pass"], load),
        CTX: Candidate(servers["ctx"], load),
        MW: Candidate(servers["mw"], load),
        MWM: Candidate(servers["mw"], load, metrics=metrics),
        MWL: Candidate(servers["mwlog"], load, metrics=metrics),
        NONE_OFF: Candidate(servers["metered"], load, clock="off"),
        MW_OFF: Candidate(servers["mw"], load, clock="off"),
        NONE_X: Candidate(servers["metered"], load, step_mode="exact"),
        MW_X: Candidate(servers["mw"], load, step_mode="exact"),
    }
    try:
        for name, c in cands.items():
            suite.add(name, c)
        suite.run(empty=None)
        if suite.enabled:
            # Keep the samples of the kept rounds (the harness calibrates, then runs
            # warm-up + kept rounds, calling each candidate once per round).
            rounds = args.rounds or (7 if args.quick else 61)
            warmup = 1 if args.quick else 3
            for c in cands.values():
                c.cpu = c.cpu[-(rounds + warmup) :][warmup:]
                c.client_cpu = c.client_cpu[-(rounds + warmup) :][warmup:]
            cpu_med = {n: statistics.median(c.cpu) for n, c in cands.items()}
            cpu_min = {n: min(c.cpu) for n, c in cands.items()}
            for ident, a, b, desc in RATIOS:
                suite.ratio(ident, a, b, 1.05, f"time per request: {desc}")
            for ident, a, b, desc in RATIOS:
                suite.check(
                    ident + "s", f"server CPU per request (median): {desc}", cpu_med[a] / cpu_med[b], 1.05
                )
            suite.ratio("W1c", MWL, NONE, float("inf"), "middleware + metrics + access line / none (info)")
            m = suite.median
            mins = {n: r.min for n, r in suite.results.items()}
            for name in suite.results:
                suite.note(
                    f"{name}: {1 / m(name):,.0f} requests/s (best {1 / mins[name]:,.0f}); server CPU "
                    f"per request median {cpu_med[name] * 1e6:.1f}us, min {cpu_min[name] * 1e6:.1f}us; "
                    f"client CPU per request {statistics.median(cands[name].client_cpu) * 1e6:.1f}us"
                )
            for ident, a, b, _ in RATIOS:
                rt, rc = m(a) / m(b), cpu_med[a] / cpu_med[b]
                suite.note(
                    f"{ident}: {1 / m(a):,.0f} vs {1 / m(b):,.0f} requests/s, server CPU "
                    f"{cpu_med[a] * 1e6:.1f} vs {cpu_med[b] * 1e6:.1f}us per request "
                    f"(+{(cpu_med[a] - cpu_med[b]) * 1e6:.1f}us): ratio time {rt:.3f} "
                    f"{'PASS' if rt <= 1.05 else 'FAIL'}, cpu {rc:.3f} {'PASS' if rc <= 1.05 else 'FAIL'} "
                    "(bound 1.05)"
                )
            # The floor of W1: an empty aiohttp middleware (one that only awaits the handler)
            # against none. Any aiohttp middleware pays aiohttp's middleware dispatch.
            suite.note(
                f"W1 floor (pass-through middleware / none): time {m(PASS) / m(NONE):.3f}, "
                f"cpu {cpu_med[PASS] / cpu_med[NONE]:.3f} (bound 1.05)"
            )
            suite.note(
                "ratios of minima (robust to interference): "
                + ", ".join(
                    f"{ident} time {mins[a] / mins[b]:.3f} cpu {cpu_min[a] / cpu_min[b]:.3f}"
                    for ident, a, b, _ in RATIOS
                )
            )
            steps = ((PASS, NONE), (CTX, PASS), (MW, CTX), (MWM, MW), (MWL, MWM), (NONE, PLAIN))
            suite.note(
                "server CPU per request added by each layer (paired medians): "
                + ", ".join(
                    f"{a} - {b}: {_paired(cands[a].cpu, cands[b].cpu) * 1e6:+.1f}us" for a, b in steps
                )
            )
        return suite.finish()
    finally:
        logcontext.configure(clock="cpu", step_mode=saved_step)
        _bgmetrics.active = metrics
        uninstall_metrics()
        load.close()
        for srv in servers.values():
            srv.stop()


def _paired(a: list[float], b: list[float]) -> float:
    """Median of per-round differences (the shuffled rounds pair the candidates)."""
    return statistics.median(x - y for x, y in zip(a, b, strict=False))


# -- web layers: the same request path without sockets -------------------------------------


class _FakeTransport(asyncio.Transport):
    """Swallows responses; counts ``write`` calls (one per response here)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.target = 0
        self.done: asyncio.Event | None = None

    def write(self, data: Any) -> None:
        self.writes += 1
        if self.writes >= self.target and self.done is not None:
            self.done.set()

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def layers_suite(args: Any) -> bool:
    """Per-layer CPU of the aiohttp request path, in one thread, fed through a fake transport.

    No sockets and no client: the layers' differences are measured without the kernel's share
    and the noise of a second thread (the absolute figures are lower than over loopback).
    """
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from logcontext import _bgmetrics
    from logcontext._config import config
    from logcontext.metrics import install_metrics, uninstall_metrics
    from logcontext.web import logcontext_middleware

    saved_step = config.step_mode
    rounds = args.rounds or (5 if args.quick else 31)
    n = 320 if args.quick else 1600
    metrics = install_metrics(registry=CollectorRegistry())
    _bgmetrics.active = None
    lg = logging.getLogger("logcontext.access.http.layers-log")
    lg.setLevel(logging.INFO)
    h = logging.StreamHandler(open("/dev/null", "w"))  # noqa: SIM115 (lives with the process)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    lg.addHandler(h)
    lg.propagate = False
    layers: list[tuple[str, list[Any], Any]] = [
        ("no middleware", [], None),
        ("pass-through middleware", [_passthrough], None),
        ("context-only middleware", [_context_only], None),
        ("logcontext_middleware", [logcontext_middleware(site_tag="layers")], None),
        ("+ metrics", [logcontext_middleware(site_tag="layers")], metrics),
        ("+ metrics + access line", [logcontext_middleware(site_tag="layers-log")], metrics),
    ]

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, world")

    async def make(mws: list[Any]) -> tuple[Any, _FakeTransport]:
        app = web.Application(middlewares=mws)
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        proto = runner.server()
        t = _FakeTransport()
        proto.connection_made(t)
        return proto, t

    async def drive(proto: Any, t: _FakeTransport, count: int) -> None:
        t.done = asyncio.Event()
        for _ in range(count // DEPTH):
            t.target = t.writes + DEPTH
            t.done.clear()
            proto.data_received(REQUEST * DEPTH)
            await t.done.wait()

    async def main(clock: str, step_mode: str) -> dict[str, list[float]]:
        logcontext.configure(clock=clock, step_mode=step_mode)  # type: ignore[arg-type]
        servers = [(name, await make(mws), m) for name, mws, m in layers]
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in layers}
        for _, (proto, t), m in servers:
            _bgmetrics.active = m
            await drive(proto, t, 4 * DEPTH)
            _bgmetrics.active = None
        import random

        for _ in range(rounds):
            random.shuffle(servers)
            for name, (proto, t), m in servers:
                _bgmetrics.active = m
                t0 = time.thread_time()
                await drive(proto, t, n)
                cpu[name].append((time.thread_time() - t0) / n)
                _bgmetrics.active = None
        return cpu

    print(f"\n== suite web-layers ({'quick' if args.quick else 'full'}; {rounds} rounds x {n} requests) ==")
    print("CPU per request, one thread, fake transport; layer = paired median difference to the row above")
    try:
        for clock, step_mode in (("cpu", "sampled"), ("cpu", "exact"), ("off", "sampled")):
            with asyncio.Runner(loop_factory=aio.loop_factory()) as r:
                cpu = r.run(main(clock, step_mode))
            print(f"clock {clock}, step mode {step_mode}:")
            prev: str | None = None
            for name, _, _ in layers:
                v = cpu[name]
                extra = f"  layer {_paired(v, cpu[prev]) * 1e6:+6.2f}us" if prev else ""
                print(
                    f"  {name:<26} median {statistics.median(v) * 1e6:6.2f}us  min {min(v) * 1e6:6.2f}us{extra}"
                )
                prev = name
    finally:
        logcontext.configure(clock="cpu", step_mode=saved_step)
        _bgmetrics.active = metrics
        uninstall_metrics()
        lg.removeHandler(h)
    return True


# -- logging (P11, P12, P13) -------------------------------------------------------------------


def make_record_bench(
    factory: Callable[..., logging.LogRecord], request: ContextRequest | None
) -> Callable[[int], float]:
    def bench(n: int) -> float:
        with LoggingContext("GET-1", request=request):
            t = pc()
            for _ in range(n):
                factory("bench", 20, __file__, 1, "msg", (), None)
            return pc() - t

    return bench


def logging_suite(args: Any) -> bool:
    from logcontext.logging import install_log_record_factory, uninstall_log_record_factory
    from logcontext.structlog import add_logcontext

    logcontext.configure(clock="off")
    suite = Suite("logging", args)
    stdlib_factory = logging.getLogRecordFactory()
    install_log_record_factory()
    ours = logging.getLogRecordFactory()
    uninstall_log_record_factory()
    req = ContextRequest("GET-1", "10.0.0.1", "client", "GET", "/path", "HTTP/1.1", "ua")
    suite.add("empty", b_empty)
    suite.add("tcv (set+reset)", b_tcv)
    suite.add("stdlib record", make_record_bench(stdlib_factory, None))
    suite.add("factory record, context", make_record_bench(ours, None))
    suite.add("factory record, request context", make_record_bench(ours, req))

    def b_add(n: int) -> float:
        with LoggingContext("bench"):
            proc = add_logcontext
            t = pc()
            for _ in range(n):
                proc(None, "info", {"event": "x"})
            return pc() - t

    suite.add("structlog add_logcontext", b_add)

    def b_dict(n: int) -> float:
        t = pc()
        for _ in range(n):
            {"event": "x"}  # noqa: B018
        return pc() - t

    suite.add("dict literal", b_dict)
    have_structlog = have_synapse = False
    try:
        import structlog.contextvars as scv

        def b_merge(n: int) -> float:
            scv.bind_contextvars(request="x")
            merge = scv.merge_contextvars
            try:
                t = pc()
                for _ in range(n):
                    merge(None, "info", {"event": "x"})
                return pc() - t
            finally:
                scv.clear_contextvars()

        suite.add("structlog merge_contextvars (1 key)", b_merge)
        have_structlog = True
    except ImportError:
        pass
    try:
        from synapse.logging.context import LoggingContext as SLC
        from synapse.logging.context import LoggingContextFilter

        def b_syn(n: int) -> float:
            f = LoggingContextFilter().filter
            rec = logging.LogRecord("bench", 20, __file__, 1, "msg", (), None)
            with SLC(name="x", server_name="hs"):
                t = pc()
                for _ in range(n):
                    f(rec)
                return pc() - t

        suite.add("synapse LoggingContextFilter", b_syn)
        have_synapse = True
    except Exception:
        pass
    suite.run()
    if suite.enabled:
        m = suite.median
        tcv = m("tcv (set+reset)")
        d11 = m("factory record, context") - m("stdlib record")
        d12 = m("factory record, request context") - m("stdlib record")
        suite.check("P11", "Δ factory (no request) vs stdlib / tcv", d11 / tcv, 4.0)
        if have_synapse:
            suite.check("P11", "Δ factory / Synapse filter", d11 / m("synapse LoggingContextFilter"), 1.0)
        else:
            suite.check(
                "P11",
                "Δ factory / Synapse filter anchor",
                d11 / (ANCHOR_US["synapse_filter"] * 1e-6),
                1.0,
                anchor=True,
            )
        suite.check("P12", "Δ factory (request) vs stdlib / tcv", d12 / tcv, 8.0)
        add = m("structlog add_logcontext") - m("dict literal")
        if have_structlog:
            merge = m("structlog merge_contextvars (1 key)") - m("dict literal")
            suite.check(
                "P13", "add_logcontext / merge_contextvars (1 key), net of the dict", add / merge, 0.5
            )
        else:
            suite.check(
                "P13",
                "add_logcontext / merge anchor",
                add / (ANCHOR_US["merge_contextvars"] * 1e-6),
                0.5,
                anchor=True,
            )
    logcontext.configure(clock="cpu")
    return suite.finish()


# -- metrics (P16) -----------------------------------------------------------------------------


def metrics_suite(args: Any) -> bool:
    from prometheus_client import CollectorRegistry, Counter

    from logcontext.metrics import install_metrics, uninstall_metrics

    logcontext.configure(clock="cpu")
    suite = Suite("metrics", args)
    reg = CollectorRegistry()
    child = Counter("bench_c", "c", ["a"], registry=reg).labels("x")

    def b_inc(n: int) -> float:
        inc = child.inc
        t = pc()
        for _ in range(n):
            inc()
        return pc() - t

    def b_with(n: int) -> float:
        LC = LoggingContext
        t = pc()
        for _ in range(n):
            with LC("x"):
                pass
        return pc() - t

    def b_measure(n: int) -> float:
        with LoggingContext("parent"):
            M = Measure
            t = pc()
            for _ in range(n):
                with M("b"):
                    pass
            return pc() - t

    suite.add("empty", b_empty)
    suite.add("cached Counter.inc()", b_inc)
    suite.add("with LoggingContext [cpu] (P4)", b_with)
    suite.add("with Measure('b') [cpu], metrics installed", b_measure)
    install_metrics(registry=CollectorRegistry())
    try:
        suite.run()
    finally:
        uninstall_metrics()
    if suite.enabled:
        m = suite.median
        bound = m("with LoggingContext [cpu] (P4)") + 10 * m("cached Counter.inc()")
        suite.check(
            "P16",
            "Measure / (P4 + 10 × cached inc)",
            m("with Measure('b') [cpu], metrics installed") / bound,
            1.0,
        )
    return suite.finish()


def main() -> int:
    if sys.argv[1:] == ["--load-worker"]:
        return load_worker()
    args = parse_args(__doc__.splitlines()[0])
    ok = web_suite(args)
    if not args.only or args.only in "web-layers":
        ok = layers_suite(args) and ok
    ok = logging_suite(args) and ok
    ok = metrics_suite(args) and ok
    return exit_code(ok, args)


if __name__ == "__main__":
    sys.exit(main())
