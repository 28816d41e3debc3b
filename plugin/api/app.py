"""The aiohttp application: one POST route per Docker plugin method.

Every reply is 200 with a JSON object, or a non-200 status with `{"Err": m, "Error": m}`:
NetworkDriver reads `Err`, IpamDriver reads `Error` (docs/protocol.md §1.4). Bodies may be empty
(Docker's no-argument calls, and retries after a connection error); they decode as `{}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from pynet.plugin.api import ipam, network, wire
from pynet.plugin.api.routes import Handler, Routes
from pynet.plugin.daemon.daemon import DAEMON, Daemon
from pynet.plugin.metrics import METRICS, Metrics
from pynet.store.errors import PynetError

log = logging.getLogger("pynet.api")

# How long a request waits for start-up (store open, reconcile) before failing.
READY_TIMEOUT = 20.0
# The operator's routes (plugin/ops/admin_api.py) live under a path Docker never calls.
ADMIN_PREFIX = "/pynet/"


def error_reply(status: int, message: str) -> web.Response:
    return web.json_response({"Err": message, "Error": message}, status=status)


plugin = Routes("Plugin")


@plugin("Activate", early=True)
async def activate(_: Daemon, __: bytes) -> wire.ActivateResponse:
    return wire.ActivateResponse(Implements=["NetworkDriver", "IpamDriver"])


TABLES = (plugin, network.route, ipam.route)
# Methods answered before start-up completes, and the rest, which wait for `ready`.
EARLY: dict[str, Handler] = {m: h for t in TABLES for m, h in t.early.items()}
ROUTES: dict[str, Handler] = {m: h for t in TABLES for m, h in t.ready.items()}


class _Ids(msgspec.Struct):
    NetworkID: str = ""
    EndpointID: str = ""
    PoolID: str = ""


def _failure(method: str, body: bytes, error: object) -> dict[str, object]:
    """Log fields of a failed request: the method and the IDs its body names, if it can be read."""
    try:
        ids = msgspec.json.decode(body.strip() or b"{}", type=_Ids)
    except msgspec.MsgspecError:
        ids = _Ids()
    named = {"network": ids.NetworkID, "endpoint": ids.EndpointID, "pool": ids.PoolID}
    return {"method": method, **{k: v for k, v in named.items() if v}, "error": str(error)}


def _endpoint(method: str, handler: Handler, early: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        daemon = request.app[DAEMON]
        body = await request.read()
        started = time.monotonic()
        try:
            if not early:
                await asyncio.wait_for(daemon.ready.wait(), READY_TIMEOUT)
            reply = await handler(daemon, body)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            log.warning("bad request", extra=_failure(method, body, e))
            return error_reply(400, f"pynet: invalid {method} request: {e}")
        except PynetError as e:
            log.warning("request failed", extra=_failure(method, body, e))
            return error_reply(500, str(e))
        except TimeoutError:
            log.warning("request failed", extra=_failure(method, body, "pynet is still starting"))
            return error_reply(503, f"pynet: {method}: pynet is still starting, try again")
        except Exception as e:
            log.exception("internal error", extra=_failure(method, body, e))
            return error_reply(500, f"pynet: internal error in {method}: {e}")
        log.debug("request", extra={"method": method, "ms": round((time.monotonic() - started) * 1000, 2)})
        return web.Response(body=msgspec.json.encode(reply), content_type="application/json")

    return serve


async def not_found(request: web.Request) -> web.Response:
    log.warning("unknown method", extra={"method": request.path.lstrip("/")})
    return error_reply(404, f"pynet: unknown method {request.path.lstrip('/')!r}")


@web.middleware
async def measure(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts and times Docker's requests, by method; unknown methods share one label so that
    junk paths cannot grow the label set, and the operator's /pynet/ routes are not counted."""
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    method = request.path[1:]
    label = method if method in EARLY or method in ROUTES else "unknown"
    started = time.perf_counter()
    failed = True
    try:
        response = await handler(request)
        failed = response.status != 200
        return response
    finally:
        request.app[METRICS].observe_request(label, time.perf_counter() - started, failed)


def make_app(
    daemon: Daemon, metrics: Metrics | None = None, extend: Callable[[web.Application], None] | None = None
) -> web.Application:
    """`metrics` is the daemon's own (its store is timed into it); tests may leave it out.
    `extend` adds routes ahead of the catch-all (serve adds the operator's, from a room above)."""
    app = web.Application(middlewares=[measure])
    app[DAEMON] = daemon
    app[METRICS] = metrics or Metrics()
    for method, handler in EARLY.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=True))
    for method, handler in ROUTES.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=False))
    if extend is not None:
        extend(app)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
