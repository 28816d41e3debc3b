"""The aiohttp application: one POST route per Docker plugin method.

Every reply is 200 with a JSON object, or a non-200 status with `{"Err": m, "Error": m}`:
NetworkDriver reads `Err`, IpamDriver reads `Error` (protocol.md §1.4). Bodies may be empty
(Docker's no-argument calls, and retries after a connection error); they decode as `{}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import msgspec
from aiohttp import web

from plugin import ipam_api, network_api
from plugin.context import DAEMON, Daemon
from store.errors import PynetError

log = logging.getLogger("pynet.api")

Handler = Callable[[Daemon, bytes], Awaitable[dict[str, Any]]]

# How long a request waits for start-up (store open, reconcile) before failing.
READY_TIMEOUT = 20.0


def error_reply(status: int, message: str) -> web.Response:
    return web.json_response({"Err": message, "Error": message}, status=status)


async def activate(_: Daemon, __: bytes) -> dict[str, Any]:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


# Methods answered before start-up completes: Docker calls them at registration.
EARLY: dict[str, Handler] = {
    "Plugin.Activate": activate,
    "NetworkDriver.GetCapabilities": network_api.get_capabilities,
    "IpamDriver.GetCapabilities": ipam_api.get_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": ipam_api.get_default_address_spaces,
}

ROUTES: dict[str, Handler] = {
    **{f"NetworkDriver.{name}": h for name, h in network_api.HANDLERS.items()},
    **{f"IpamDriver.{name}": h for name, h in ipam_api.HANDLERS.items()},
}


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
            log.warning("bad request", extra={"method": method, "error": str(e)})
            return error_reply(400, f"pynet: invalid {method} request: {e}")
        except PynetError as e:
            log.warning("request failed", extra={"method": method, "error": str(e)})
            return error_reply(500, str(e))
        except TimeoutError:
            return error_reply(503, f"pynet: {method}: pynet is still starting, try again")
        except Exception as e:
            log.exception("internal error", extra={"method": method})
            return error_reply(500, f"pynet: internal error in {method}: {e}")
        log.debug("request", extra={"method": method, "ms": round((time.monotonic() - started) * 1000, 2)})
        return web.json_response(reply)

    return serve


async def not_found(request: web.Request) -> web.Response:
    return error_reply(404, f"pynet: unknown method {request.path.lstrip('/')!r}")


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[DAEMON] = daemon
    for method, handler in EARLY.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=True))
    for method, handler in ROUTES.items():
        app.router.add_post("/" + method, _endpoint(method, handler, early=False))
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
