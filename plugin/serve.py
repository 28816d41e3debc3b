"""`pynet serve`: bind the socket first, then open the store and reconcile, then serve.

The order matters (docs/protocol.md §5.2, §7): Docker gives a plugin seconds to answer, and a
stale socket from a crash stalls unrelated Docker commands, so the socket is unlinked and
bound before any slow work; requests other than activation wait for `ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from pynet.drivers import registry
from pynet.drivers.base import Failures
from pynet.drivers.config import VxlanConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.netlink import Link, Netlink
from pynet.drivers.ports import HostPorts
from pynet.drivers.vxlan import VxlanBackend
from pynet.ipam import Ipam
from pynet.plugin.api.app import make_app
from pynet.plugin.cluster.names import Publisher
from pynet.plugin.cluster.networks import ClusterNetworks
from pynet.plugin.daemon import logs, restore
from pynet.plugin.daemon.config import Settings, resolve_host_id
from pynet.plugin.daemon.daemon import Daemon, open_store
from pynet.plugin.daemon.instance import AlreadyRunning, claim_socket, lock_state_dir
from pynet.plugin.daemon.marker import Marker
from pynet.plugin.daemon.state import State
from pynet.plugin.daemon.version import VERSION
from pynet.plugin.dns.records import NameTable
from pynet.plugin.dns.server import DnsServer, Resolver
from pynet.plugin.dns.subnets import SubnetTable
from pynet.plugin.dns.upstreams import upstreams
from pynet.plugin.dns.watcher import Watcher
from pynet.plugin.engine import Engine
from pynet.plugin.metrics import Metrics, serve_metrics, timed
from pynet.plugin.ops import admin_api
from pynet.store import faults
from pynet.store.errors import StoreUnavailable

log = logging.getLogger("pynet")

# The resolver's address lives on this portless bridge, left in place on exit: with pynet
# stopped, queries to it are refused at once and Docker moves on to the next server.
DNS_LINK = "pndns0"


def build(settings: Settings, metrics: Metrics | None = None) -> Daemon:
    host = resolve_host_id(settings)
    store = timed(open_store(settings), metrics)
    netlink = Netlink()
    # Names across hosts need the shared store: only then does pynet serve them.
    dns_address = settings.dns_address if settings.etcd_endpoints else ""
    firewall = Firewall(settings.firewall_flavour, dns_address=dns_address)
    ports = HostPorts()
    backends = registry.build(
        registry.Deps(
            netlink,
            firewall,
            ports,
            store,
            settings.store_prefix,
            host,
            settings.lease_ttl,
            observer=metrics.vxlan if metrics else None,
            underlay=settings.underlay,
            store_address=settings.store_address,
        )
    )
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
        ports=ports,
        backends=backends,
    )


async def reconcile(d: Daemon) -> None:
    """Rebuild the kernel from the store: Docker never replays CreateNetwork (§4.3). A network
    that cannot be restored is left to `restore_failing`; the others serve at once."""
    nets = await d.state.networks()
    eps = await d.state.endpoints()
    # One look at the kernel for every network of every mode, and the orphan sweep: a dump of
    # 1,251 links took 2.3-3.7 s at load 14 on 2 cores (pyroute2 parsing), and the VXLAN mode
    # took one per network. Links reconcile adds are expected ones, so the sweep may use it.
    await d.netlink.settle()
    view = await d.netlink.host_view()
    expected: set[str] = set()
    failing: Failures = {}
    for mode, backend in d.backends.items():
        mine = [n for n in nets if n.mode == mode]
        ids = {n.id for n in mine}
        my_eps = [e for e in eps if e.network_id in ids]
        failing |= await backend.reconcile(mine, my_eps, view)
        expected |= backend.expected_links(mine, my_eps)  # a failing network's links are kept
    # Every mode's rules (the backends staged them) and PYNET-INPUT, in one apply: one per
    # mode cost 5.5 s more at 250 networks, load 13 on 2 cores.
    await d.firewall.apply()
    d.failing = failing
    for net_id, cause in failing.items():
        log.warning("network not restored, retrying", extra={"network": net_id, "error": cause})
    removed = await sweep_orphan_links(d, expected, view.links.values())
    log.info(
        "reconciled",
        extra={"networks": len(nets), "endpoints": len(eps), "failing": len(failing), "orphans": ",".join(removed)},
    )


async def reconcile_until_done(d: Daemon, stop: asyncio.Event) -> None:
    """At boot the store (etcd) may not be reachable yet: keep trying, without touching the
    kernel, while requests get a clear "still starting" error instead of hanging."""
    delay = 0.5
    while not stop.is_set():
        try:
            await reconcile(d)
            return
        except StoreUnavailable as e:
            log.warning("store unavailable at start, retrying", extra={"error": str(e), "retry_s": delay})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)


async def sweep_orphan_links(d: Daemon, expected: set[str], links: Iterable[Link]) -> list[str]:
    """Delete links with a pynet prefix that no record accounts for (a crash between creating
    a link and saving its record, endpoints Docker never deleted), judged by name and records
    alone, every mode's prefixes, among `links` (the host's, as reconcile saw it). Only on a
    store that has seen this host before (plugin/daemon/marker.py): on another, they may be
    running containers' links, and are kept and reported. Returns those deleted."""
    orphans = [
        link.name for link in links if link.name.startswith(registry.LINK_PREFIXES) and link.name not in expected
    ]
    marker = Marker(d.store, d.settings.store_prefix, d.host, d.settings.state_dir)
    if await marker.seen():
        return [name for name in orphans if await d.netlink.delete_link(name)]
    d.kept_links = orphans
    if orphans:
        log.warning(
            "orphan links kept: this store has not seen this host before, they may be running containers'",
            extra={"links": ",".join(orphans), "store_prefix": d.settings.store_prefix, "host": d.host},
        )
    else:
        await marker.mark()
    return []


async def resync_forever(d: Daemon) -> None:
    """Docker re-inserts its own FORWARD jump when it restarts; keep pynet's in place. Run as
    the supervised task `firewall-jumps`: a failed iptables run restarts it, logged."""
    while True:
        await asyncio.sleep(d.settings.resync_interval)
        if await d.firewall.ensure_jumps():
            log.info("firewall jumps restored")


async def bind(app: web.Application, path: Path) -> web.AppRunner:
    path.parent.mkdir(parents=True, exist_ok=True)
    claim_socket(path)  # a stale one from a crash goes; a live one is another daemon's
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    os.chmod(path, 0o660)
    return runner


# Tasks that only talk to the store retry within 5 s (the etcd watch's own resume cap), not
# Docker's 30 s: until the VXLAN ones run again, peers' new containers get no FDB entry and
# this host's lease is not kept; until the resolver's do, new names do not resolve.
STORE_TASK_MAX_DELAY = 5.0


def start_vxlan(d: Daemon) -> None:
    """The lease keep-alive (`vxlan-lease`) and the peer watch programming the FDB
    (`vxlan-peers`), supervised: an error nobody expected restarts them, and shows in status."""
    vxlan = d.backends[VxlanBackend.mode]
    assert isinstance(vxlan, VxlanBackend)
    d.supervisor.start("vxlan-lease", lambda _: vxlan.registry.keep_alive_forever(), STORE_TASK_MAX_DELAY)
    d.supervisor.start("vxlan-peers", lambda _: vxlan.sync.run_forever(), STORE_TASK_MAX_DELAY)


async def start_names(d: Daemon) -> Engine:
    """Names across hosts (issue 9, etcd only): the resolver on its held address, the table it
    answers from, and this host's names published from Docker's events; each supervised.
    Returns the publisher's Docker client, for serve to close."""
    s = d.settings
    await d.netlink.hold_address(DNS_LINK, s.dns_address)  # PYNET-INPUT came with reconcile's apply
    subnets = SubnetTable(f"{s.store_prefix}cluster/networks/")
    table = NameTable(f"{s.store_prefix}dns/", subnets)
    resolver = Resolver(table, [(u, 53) for u in upstreams(s.dns_upstreams)])
    server, watcher = DnsServer(resolver, s.dns_address), Watcher(d.store, table)
    subnet_watcher = Watcher(d.store, subnets)
    d.supervisor.start("dns-names", lambda _: watcher.run_forever(), STORE_TASK_MAX_DELAY)
    d.supervisor.start("dns-subnets", lambda _: subnet_watcher.run_forever(), STORE_TASK_MAX_DELAY)
    d.supervisor.start("dns-server", lambda _: server.serve_forever())
    vxlan = d.backends[VxlanBackend.mode]
    assert isinstance(vxlan, VxlanBackend)

    async def eligible() -> set[str]:
        """VXLAN cluster networks: the same name on every host. A macvlan container reaches
        this host only through its `host_shim`, so its names are not published."""
        return {n.id for n in await d.state.networks() if isinstance(n.config, VxlanConfig) and n.config.cluster}

    engine = Engine(s.docker_host)
    # Under the VTEPs' lease: a dead host's names go with it.
    publisher = Publisher(engine, d.store, vxlan.registry, s.store_prefix, d.host, eligible)
    d.supervisor.start("publish-names", publisher.run)
    return engine


def application(d: Daemon, metrics: Metrics) -> web.Application:
    """Docker's routes and the operator's, on one socket."""
    return make_app(d, metrics, extend=lambda app: admin_api.register(app, d))


async def serve(settings: Settings) -> None:
    lock = lock_state_dir(settings.state_dir)  # before anything reads the state
    metrics = Metrics()
    d = build(settings, metrics)
    sock = Path(settings.socket)
    # Before the socket answers: a SIGTERM as soon as it does (a test, systemd) must stop
    # pynet cleanly, not kill it with its socket left behind (seen under load, 2 cores).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await bind(application(d, metrics), sock)
    kind = "etcd" if settings.etcd_endpoints else "embedded"  # d.store is wrapped for timing
    log.info("listening", extra={"socket": str(sock), "host": d.host, "store": kind, "version": VERSION})
    scrape: web.AppRunner | None = None
    agent: ClusterNetworks | None = None
    names: Engine | None = None
    try:
        scrape = await serve_metrics(
            settings.metrics_listen, metrics, d.store.revision, lambda: admin_api.pool_usage(d.ipam)
        )
        await d.netlink.open()
        await reconcile_until_done(d, stop)
        d.ready.set()
        if d.failing:
            restore.start(d)
        start_vxlan(d)
        d.supervisor.start("firewall-jumps", lambda _: resync_forever(d))
        if settings.etcd_endpoints:  # cluster networks are shared through etcd; alone, nothing to copy
            agent = ClusterNetworks(d, Engine(settings.docker_host))
            agent.start()
            names = await start_names(d)
        await stop.wait()
        log.info("stopping")
    finally:
        await d.supervisor.close()
        if agent:
            await agent.engine.close()
        if names:
            await names.close()
        for backend in d.backends.values():
            await backend.close()
        if scrape:
            await scrape.cleanup()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        await d.netlink.close()
        await d.store.close()
        os.close(lock)


def main(settings: Settings) -> int:
    logs.setup(settings.log_level, settings.log_format)
    try:
        if point := faults.arm_from_env():
            log.warning("crash point armed: pynet exits when it reaches it", extra={"point": point})
        asyncio.run(serve(settings))
    except (AlreadyRunning, faults.UnknownPoint) as e:
        print(e, file=sys.stderr)
        return 1
    return 0
