"""The aiohttp application: one POST route per Docker plugin method.

Every reply is 200 with a JSON object, or a non-200 status with `{"Err": m, "Error": m}`:
NetworkDriver reads `Err`, IpamDriver reads `Error` (docs/protocol.md §1.4). Bodies may be empty
(Docker's no-argument calls, and retries after a connection error); they decode as `{}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from aiohttp import web

from pynet.plugin.api import ipam, network, wire
from pynet.plugin.api.routes import Handler, Routes
from pynet.plugin.daemon.daemon import DAEMON, Daemon
from pynet.plugin.metrics import METRICS, Metrics
from pynet.store.errors import Conflict, Exhausted, InvalidRequest, NotFound, PynetError, StoreUnavailable

log = logging.getLogger("pynet.api")

# How long a request waits for start-up (store open, reconcile) before failing.
READY_TIMEOUT = 20.0
# The operator's routes (plugin/ops/admin_api.py) live under a path Docker never calls.
ADMIN_PREFIX = "/pynet/"
# Docker's largest body is CreateEndpoint's (or Join's) with a port map of every port, TCP and
# UDP: 2 x 65535 bindings and exposed ports in Go's encoding are 13.4 MiB. aiohttp's default,
# 1 MiB, would refuse `-p 1-65535:1-65535`; anything over 16 MiB is not Docker.
MAX_BODY = 16 * 1024 * 1024
# Messages echo the bad value; a huge one is cut, so one request cannot flood Docker's error
# output or the log.
MAX_MESSAGE = 1024
# The caller's mistakes are 4xx, pynet's own failures 5xx: Docker only tells 200 from the rest
# (docs/protocol.md §1.4), operators and the log tell these apart. Never 404 for a known method:
# Docker reads a 404 from ProgramExternalConnectivity as "not implemented" and goes on without
# the published ports; 404 stays the answer to an unknown method alone.
STATUS: tuple[tuple[type[PynetError], int], ...] = (
    (InvalidRequest, 400),
    # Well-formed, but pynet's state refuses it: no such network, address taken, pool full.
    (NotFound, 409),
    (Conflict, 409),
    (Exhausted, 409),
    (StoreUnavailable, 503),
)


def clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE} more characters)"


def error_reply(status: int, message: str) -> web.Response:
    message = clip(message)
    return web.json_response({"Err": message, "Error": message}, status=status)


def status_of(error: PynetError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 500)


def failed(logger: logging.Logger, name: str, error: Exception, fields: Mapping[str, object]) -> web.Response:
    """The reply to a request whose handler raised, and its log line. A bad request (a body
    msgspec refuses, or a PynetError) is logged as a warning, with no traceback; only what
    pynet did not foresee is a 500 logged at error level with one."""
    extra = {**fields, "error": clip(str(error))}
    if isinstance(error, msgspec.DecodeError):  # ValidationError included: it names the field
        logger.warning("bad request", extra=extra)
        return error_reply(400, f"pynet: invalid {name} request: {error}")
    if isinstance(error, PynetError):
        logger.warning("request failed", extra=extra)
        return error_reply(status_of(error), str(error))
    logger.exception("internal error", extra=extra)
    return error_reply(500, f"pynet: internal error in {name}: {error}")


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


def _ids(method: str, body: bytes) -> dict[str, object]:
    """Log fields of a failed request: the method and the IDs its body names, if it can be read."""
    try:
        ids = msgspec.json.decode(body.strip() or b"{}", type=_Ids)
    except msgspec.MsgspecError:
        ids = _Ids()
    named = {"network": ids.NetworkID, "endpoint": ids.EndpointID, "pool": ids.PoolID}
    return {"method": method, **{k: clip(v) for k, v in named.items() if v}}


def _endpoint(method: str, handler: Handler, early: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        daemon = request.app[DAEMON]
        body = await request.read()  # over MAX_BODY: a 413, made JSON by `json_errors`
        started = time.monotonic()
        if not early:
            try:
                await asyncio.wait_for(daemon.ready.wait(), READY_TIMEOUT)
            except TimeoutError:
                log.warning("request failed", extra={**_ids(method, body), "error": "pynet is still starting"})
                return error_reply(503, f"pynet: {method}: pynet is still starting, try again")
        try:
            reply = await handler(daemon, body)
        except Exception as e:
            return failed(log, method, e, _ids(method, body))
        # The Host header too: Docker's differs by release and Go toolchain, and one Go refuses
        # to send (docs/protocol.md §1.3); pynet never reads it.
        ms = round((time.monotonic() - started) * 1000, 2)
        log.debug("request", extra={"method": method, "ms": ms, "host_header": request.headers.get("Host", "")})
        return web.Response(body=msgspec.json.encode(reply), content_type="application/json")

    return serve


async def not_found(request: web.Request) -> web.Response:
    log.warning("unknown method", extra={"method": request.path.lstrip("/")})
    return error_reply(404, f"pynet: unknown method {request.path.lstrip('/')!r}")


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (a body over MAX_BODY: 413) in Docker's error shape, not its plain text."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        log.warning("bad request", extra={"method": request.path.lstrip("/"), "status": e.status, "error": e.text})
        return error_reply(e.status, f"pynet: {request.path.lstrip('/')}: {e.text}")


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
    app = web.Application(middlewares=[measure, json_errors], client_max_size=MAX_BODY)
    app[DAEMON] = daemon
    app[METRICS] = metrics or Metrics()
    app[METRICS].declare_methods([*EARLY, *ROUTES, "unknown"])
    for method, handler in EARLY.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=True))
    for method, handler in ROUTES.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=False))
    if extend is not None:
        extend(app)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
