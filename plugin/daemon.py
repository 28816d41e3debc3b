"""`pynet serve`: bind the socket first, then open the store and reconcile, then serve.

The order matters (protocol.md §5.2, §7): Docker gives a plugin seconds to answer, and a
stale socket from a crash stalls unrelated Docker commands, so the socket is unlinked and
bound before any slow work; requests other than activation wait for `ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from drivers.base import Backend
from drivers.bridge import BridgeBackend
from drivers.firewall import Firewall
from drivers.macvlan import MacvlanBackend
from drivers.netlink import Netlink
from ipam import Ipam
from plugin import logs
from plugin.app import make_app
from plugin.config import Settings, resolve_host_id
from plugin.context import Daemon
from plugin.state import State
from store.base import Store
from store.embedded import EmbeddedStore

log = logging.getLogger("pynet")


def open_store(settings: Settings) -> Store:
    return EmbeddedStore(settings.store_path)


def build(settings: Settings) -> Daemon:
    host = resolve_host_id(settings)
    store = open_store(settings)
    netlink = Netlink()
    firewall = Firewall()
    backends: dict[str, Backend] = {
        b.mode: b for b in (BridgeBackend(netlink, firewall), MacvlanBackend(netlink))
    }
    return Daemon(
        settings=settings,
        host=host,
        store=store,
        state=State(store, settings.store_prefix, host),
        ipam=Ipam(
            store,
            host,
            settings.store_prefix,
            default_pools4=settings.pools(v6=False),
            default_pools6=settings.pools(v6=True),
        ),
        netlink=netlink,
        firewall=firewall,
        backends=backends,
    )


async def reconcile(d: Daemon) -> None:
    """Rebuild the kernel from the store: Docker never replays CreateNetwork (§4.3)."""
    nets = await d.state.networks()
    eps = await d.state.endpoints()
    expected: set[str] = set()
    for mode, backend in d.backends.items():
        mine = [n for n in nets if n.mode == mode]
        ids = {n.id for n in mine}
        my_eps = [e for e in eps if e.network_id in ids]
        await backend.reconcile(mine, my_eps)
        expected |= backend.expected_links(mine, my_eps)
    removed = await remove_orphan_links(d, expected)
    log.info("reconciled", extra={"networks": len(nets), "endpoints": len(eps), "orphans": ",".join(removed)})


async def remove_orphan_links(d: Daemon, expected: set[str]) -> list[str]:
    """Delete links with a pynet prefix that no record accounts for (a crash between creating
    a link and saving its record, endpoints Docker never deleted). Judged across all modes at
    once: the bridge and VXLAN modes share the veth prefixes."""
    await d.netlink.settle()
    prefixes = tuple(p for b in d.backends.values() for p in b.link_prefixes)
    return [
        link.name
        for link in await d.netlink.links()
        if link.name.startswith(prefixes) and link.name not in expected and await d.netlink.delete_link(link.name)
    ]


async def resync_forever(d: Daemon) -> None:
    """Docker re-inserts its own FORWARD jump when it restarts; keep pynet's in place."""
    while True:
        await asyncio.sleep(d.settings.resync_interval)
        try:
            if await d.firewall.ensure_jumps():
                log.info("firewall jumps restored")
        except Exception:
            log.exception("resync failed")


async def bind(app: web.Application, path: Path) -> web.AppRunner:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crash
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    os.chmod(path, 0o660)
    return runner


async def serve(settings: Settings) -> None:
    d = build(settings)
    sock = Path(settings.socket)
    runner = await bind(make_app(d), sock)
    log.info("listening", extra={"socket": str(sock), "host": d.host, "store": type(d.store).__name__})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    resync: asyncio.Task[None] | None = None
    try:
        await d.netlink.open()
        await reconcile(d)
        d.ready.set()
        resync = asyncio.create_task(resync_forever(d))
        await stop.wait()
        log.info("stopping")
    finally:
        if resync:
            resync.cancel()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        await d.netlink.close()
        await d.store.close()


def main(settings: Settings) -> int:
    logs.setup(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0
