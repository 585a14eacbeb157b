"""The small HTTP API (aiohttp) of the main process and the worker status page.

Main process (documented in ``docs/homeserver-replication.md``):

- ``POST /_hs/events`` — persist an event (event store), which puts it on the ``events`` stream
- ``PUT /_hs/devices/{user_id}`` — change a user's devices (``device_lists``)
- ``PUT /_hs/typing/{room_id}/{user_id}`` — start/stop typing (``typing``)
- ``GET /_hs/status`` — stream positions and replication connections
- ``GET /_synapse/replication/get_repl_stream_updates/{stream}`` — catch-up for
  in-memory streams (bearer auth when a replication secret is set)

Worker: ``GET /_hs/status`` — positions, rows received, typing state.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from homeserver.replication import _instrument
from logcontext.web import logcontext_middleware, request_handler

if TYPE_CHECKING:
    from homeserver.app import MainProcess, Worker

__all__ = ["build_main_app", "start_main_http", "start_worker_http"]

MAX_CATCH_UP_LIMIT = 10_000


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"errcode": "M_BAD_JSON", "error": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text='{"error": "body is not JSON"}', content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be a JSON object"}', content_type="application/json"
        )
    return body


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) and x for x in value)


def build_main_app(main: MainProcess) -> web.Application:
    """The main process's routes."""
    routes = web.RouteTableDef()

    @routes.post("/_hs/events")
    @request_handler("SendEventServlet")
    async def post_event(request: web.Request) -> web.Response:
        body = await _json_body(request)
        room_id, etype, sender = body.get("room_id"), body.get("type"), body.get("sender")
        state_key, content = body.get("state_key"), body.get("content", {})
        if not (
            isinstance(room_id, str)
            and room_id
            and isinstance(etype, str)
            and etype
            and isinstance(sender, str)
            and sender
        ):
            return _bad("room_id, type and sender must be non-empty strings")
        if state_key is not None and not isinstance(state_key, str):
            return _bad("state_key must be a string")
        if not isinstance(content, dict):
            return _bad("content must be an object")
        event_id, ordering = await main.send_event(
            room_id, etype, sender, state_key=state_key, content=content
        )
        return web.json_response({"event_id": event_id, "stream_ordering": ordering})

    @routes.put("/_hs/devices/{user_id}")
    @request_handler("DeviceListServlet")
    async def put_devices(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        body = await _json_body(request)
        device_ids, hosts = body.get("device_ids"), body.get("hosts", [])
        if not user_id.startswith("@"):
            return _bad("user_id must start with @")
        if not _str_list(device_ids) or not device_ids:
            return _bad("device_ids must be a non-empty list of strings")
        if not _str_list(hosts):
            return _bad("hosts must be a list of strings")
        stream_id = await main.change_devices(user_id, device_ids, hosts)
        return web.json_response({"stream_id": stream_id})

    @routes.put("/_hs/typing/{room_id}/{user_id}")
    @request_handler("TypingServlet")
    async def put_typing(request: web.Request) -> web.Response:
        body = await _json_body(request)
        typing = body.get("typing")
        if not isinstance(typing, bool):
            return _bad("typing must be true or false")
        serial = main.set_typing(request.match_info["room_id"], request.match_info["user_id"], typing)
        return web.json_response({"serial": serial})

    @routes.get("/_hs/status")
    @request_handler("StatusServlet")
    async def status(request: web.Request) -> web.Response:
        del request
        conns = []
        if main.server is not None:
            conns = [{"name": c.peer_name, "state": c.state.value} for c in main.server.connections]
        return web.json_response({"positions": main.positions(), "connections": conns})

    @routes.get("/_synapse/replication/get_repl_stream_updates/{stream}")
    @request_handler("ReplicationGetStreamUpdatesServlet")
    async def get_updates(request: web.Request) -> web.Response:
        secret = main.options.secret
        if secret:
            auth = request.headers.get("Authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {secret}".encode()):
                return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        stream = main.handler.streams.get(request.match_info["stream"])
        if stream is None:
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        q = request.query
        try:
            instance = q["instance"]
            from_token = int(q["from_token"])
            upto_token = int(q["upto_token"])
            limit = min(int(q.get("limit", "100")), MAX_CATCH_UP_LIMIT)
        except (KeyError, ValueError):
            return _bad("instance, from_token and upto_token are required integers")
        if from_token < 0 or upto_token < 0 or limit < 1:
            return _bad("tokens must be >= 0 and limit >= 1")
        parent, links = _instrument.remote_parent_or_link(dict(request.headers))
        with (
            _instrument.span(
                "replication.http.get_repl_stream_updates",
                {"stream": stream.name, "from": from_token, "to": upto_token},
                links,
                parent,
            ),
        ):
            updates, upto, limited = await stream.get_updates_since(instance, from_token, upto_token, limit)
        return web.json_response(
            {"updates": [[t, row] for t, row in updates], "upto_token": upto, "limited": limited}
        )

    @routes.get("/metrics")
    @request_handler("MetricsServlet")
    async def metrics(request: web.Request) -> web.Response:
        del request
        try:
            import prometheus_client
        except ImportError:
            return web.Response(status=404, text="prometheus_client not installed")
        return web.Response(body=prometheus_client.generate_latest(), content_type="text/plain")

    app = web.Application()
    app.add_routes(routes)
    from homeserver.http_rooms import add_room_routes

    add_room_routes(app, main)  # room/state/invite routes + the request middleware (outermost)
    return app


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound


async def start_main_http(main: MainProcess, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the main process API; return the runner and the bound port."""
    return await _serve(build_main_app(main), host, port)


async def start_worker_http(worker: Worker, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``GET /_hs/status`` for a worker."""

    @request_handler("StatusServlet")
    async def status(request: web.Request) -> web.Response:
        del request
        return web.json_response(worker.status())

    app = web.Application(middlewares=[logcontext_middleware(server_name=worker.options.server_name)])
    app.router.add_get("/_hs/status", status)
    return await _serve(app, host, port)
