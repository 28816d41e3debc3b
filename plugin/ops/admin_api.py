"""The operator's routes, `POST /pynet/<command>` on the plugin socket, and the reports behind them.

They share the socket with Docker's routes (one thing to secure and find) under a path Docker
never calls. The reports are built from the store alone, so the CLI builds the same ones from
the store directly when the daemon is down (`plugin/ops/access.py`). Nothing here calls Docker: `gc`
gets Docker's view from the CLI, which asks Docker itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from pynet.drivers.base import Network
from pynet.drivers.config import Config, VxlanConfig
from pynet.drivers.firewall import DOCKER_BRIDGES
from pynet.drivers.peers import decode_vtep
from pynet.ipam import Ipam
from pynet.ipam.layout import GATEWAY, decode_poolset
from pynet.ipam.netmath import reserved
from pynet.plugin.api import network
from pynet.plugin.api.app import ADMIN_PREFIX, error_reply, failed
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.daemon import DAEMON, Daemon
from pynet.plugin.daemon.state import State
from pynet.plugin.daemon.version import VERSION
from pynet.plugin.metrics import PoolUsage
from pynet.plugin.ops import gc
from pynet.plugin.ops.iptables import Iptables
from pynet.store.base import Store

log = logging.getLogger("pynet.admin")

STORE_PROBE_TIMEOUT = 3.0


class DaemonInfo(msgspec.Struct):
    socket: str
    answers: bool
    pid: int = 0
    uptime: float = 0.0
    ready: bool = False
    error: str = ""
    version: str = ""  # the running daemon's: after a plugin upgrade, the build that now runs


class StoreInfo(msgspec.Struct):
    kind: str  # "embedded" | "etcd"
    where: str  # file or endpoints
    reachable: bool
    error: str = ""


class Peer(msgspec.Struct):
    """A remote VTEP: registered by another host in the store, or a network's static peer."""

    vni: int
    host: str  # "" for a static peer
    vtep: str


class TaskInfo(msgspec.Struct):
    name: str
    state: str  # running | retrying | stopped
    restarts: int
    last_error: str
    since: float  # Unix time of the last change of state
    detail: dict[str, str]


class Status(msgspec.Struct):
    daemon: DaemonInfo
    host: str
    store: StoreInfo
    networks: int
    endpoints: int
    vxlan_peers: list[Peer]
    tasks: list[TaskInfo] = []  # the daemon's supervised tasks; none when it is down
    # pynet links no record accounts for that start-up kept: the store had not seen this host.
    kept_links: list[str] = []


class NetworkInfo(msgspec.Struct):
    id: str
    mode: str
    subnets: list[str]
    gateways: list[str]
    config: Config
    internal: bool
    endpoints: int


class EndpointInfo(msgspec.Struct):
    id: str
    network: str
    addresses: list[str]
    mac: str
    link: str
    joined: bool
    ports: list[str]


class PoolInfo(msgspec.Struct):
    subnet: str
    hosts: list[str]
    allocated: int
    total: int  # usable addresses
    gateway: str


class SweepRequest(msgspec.Struct):
    leaks: list[gc.Leak]
    docker: gc.DockerView
    min_age: float = gc.DEFAULT_MIN_AGE


# -- reports (shared with the CLI's store fallback) ------------------------------------------


def store_location(settings: Settings) -> tuple[str, str]:
    """(kind, where) of the store pynet is configured with."""
    etcd = settings.etcd_endpoints
    return ("etcd", etcd) if etcd else ("embedded", str(settings.store_path))


async def store_info(settings: Settings, store: Store) -> StoreInfo:
    kind, where = store_location(settings)
    try:
        await asyncio.wait_for(store.revision(), STORE_PROBE_TIMEOUT)
    except Exception as e:
        return StoreInfo(kind, where, False, str(e) or type(e).__name__)
    return StoreInfo(kind, where, True)


async def status(daemon: DaemonInfo, host: str, settings: Settings, store: Store) -> Status:
    info = await store_info(settings, store)
    if not info.reachable:
        return Status(daemon, host, info, 0, 0, [])
    state = State(store, settings.store_prefix, host)
    nets = await state.networks()
    peers = await vxlan_peers(store, settings.store_prefix, host, nets)
    return Status(daemon, host, info, len(nets), len(await state.endpoints()), peers)


async def vxlan_peers(store: Store, prefix: str, host: str, nets: list[Network]) -> list[Peer]:
    """The other hosts' VTEPs as drivers/peers.py registers them (`vxlan/<vni>/vteps/<host>`),
    for the VNIs this host has networks for, plus those networks' static peers."""
    vnis = {n.config.vni: n.config for n in nets if isinstance(n.config, VxlanConfig)}
    root = f"{prefix}vxlan/"
    peers = []
    for kv in await store.range(root):
        vni, kind, name = [*kv.key[len(root) :].split("/"), "", ""][:3]
        if kind == "vteps" and vni.isdigit() and int(vni) in vnis and name != host:
            try:
                peers.append(Peer(int(vni), name, decode_vtep(kv.value).address))
            except ValueError:
                continue  # not a VTEP record: the daemon's peer sync skips it too, and logs it
    peers += [Peer(vni, "", vtep) for vni, cfg in vnis.items() for vtep in cfg.peers]
    return peers


async def networks(state: State) -> list[NetworkInfo]:
    counts = Counter(ep.network_id for ep in await state.endpoints())
    return [
        NetworkInfo(
            id=n.id,
            mode=n.mode,
            subnets=[s.pool for s in (*n.ipv4, *n.ipv6)],
            gateways=[s.gateway for s in (*n.ipv4, *n.ipv6) if s.gateway],
            config=n.config,
            internal=n.internal,
            endpoints=counts[n.id],
        )
        for n in await state.networks()
    ]


async def endpoints(state: State) -> list[EndpointInfo]:
    return [
        EndpointInfo(
            id=ep.id,
            network=ep.network_id,
            addresses=[a for a in (ep.address, ep.address6) if a],
            mac=ep.mac,
            link=ep.peer or ep.ifname,
            joined=ep.joined,
            ports=[p.describe() for p in ep.ports],
        )
        for ep in await state.endpoints()
    ]


async def pools(ipam: Ipam) -> list[PoolInfo]:
    """Every pool in the store, with every host's allocations (pools may be shared)."""
    poolset = await ipam.store.get(ipam.keys.poolset)
    allocations = await ipam.allocations()
    out = []
    for subnet in decode_poolset(poolset.value if poolset else None):
        hosts = await ipam.store.range(ipam.keys.pool(subnet) + "hosts/")
        mine = [a for a in allocations if a.pool == str(subnet)]
        out.append(
            PoolInfo(
                subnet=str(subnet),
                hosts=[kv.key.rsplit("/", 1)[1] for kv in hosts],
                allocated=len({a.address for a in mine}),
                total=subnet.num_addresses - len(reserved(subnet)),
                gateway=next((a.address for a in mine if a.owner == GATEWAY), ""),
            )
        )
    return out


async def pool_usage(ipam: Ipam) -> dict[str, PoolUsage]:
    """For the `pynet_ipam_allocations` and `pynet_ipam_pool_size` gauges."""
    return {p.subnet: PoolUsage(p.allocated, p.total) for p in await pools(ipam)}


# -- routes -----------------------------------------------------------------------------------


@dataclass
class Admin:
    """What the admin routes need beyond the daemon; tests swap `iptables` for a fake."""

    started: float
    iptables: Iptables


ADMIN = web.AppKey("admin", Admin)

Route = Callable[[Daemon, Admin, bytes], Awaitable[Any]]


async def _status(d: Daemon, admin: Admin, _: bytes) -> Status:
    uptime = round(time.monotonic() - admin.started, 3)
    info = DaemonInfo(d.settings.socket, True, os.getpid(), uptime, d.ready.is_set(), version=VERSION)
    st = await status(info, d.host, d.settings, d.store)
    st.tasks = [
        TaskInfo(t.name, t.state, t.restarts, t.last_error, t.since, dict(t.detail))
        for t in d.supervisor.tasks.values()
    ]
    st.kept_links = list(d.kept_links)
    return st


def sources(d: Daemon, admin: Admin) -> gc.Sources:
    outsiders = (*DOCKER_BRIDGES, *sorted(d.firewall.other_bridges))
    return gc.Sources(d.host, d.state, d.ipam, d.netlink, admin.iptables, outsiders)


async def _inventory(d: Daemon, admin: Admin, _: bytes) -> gc.Inventory:
    return await gc.gather(sources(d, admin))


async def _sweep(d: Daemon, admin: Admin, body: bytes) -> list[gc.Outcome]:
    req = msgspec.json.decode(body, type=SweepRequest)

    async def remove_endpoint(leak: gc.Leak) -> None:
        await network.remove_endpoint(d, leak.network, leak.name)  # as Docker's DeleteEndpoint would

    async def remove_network(leak: gc.Leak) -> None:
        await network.remove_network(d, leak.name)  # as Docker's DeleteNetwork would

    removers = gc.Removers(endpoint=remove_endpoint, network=remove_network)
    return await gc.sweep(req.leaks, req.docker, sources(d, admin), removers, time.time(), req.min_age)


ROUTES: dict[str, Route] = {
    "status": _status,
    "networks": lambda d, _, __: networks(d.state),
    "endpoints": lambda d, _, __: endpoints(d.state),
    "ipam": lambda d, _, __: pools(d.ipam),
    "gc/inventory": _inventory,
    "gc/sweep": _sweep,
}
# Before start-up completes, reconcile may still be removing orphans; gc must not race it.
NEEDS_READY = frozenset({"gc/inventory", "gc/sweep"})


def _route(name: str, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        d = request.app[DAEMON]
        if name in NEEDS_READY and not d.ready.is_set():
            return error_reply(503, f"pynet: {name}: pynet is still starting, try again")
        body = await request.read()  # too large: the app's 413, in Docker's error shape
        try:
            result = await route(d, request.app[ADMIN], body)
        except Exception as e:
            return failed(log, name, e, {"route": name})
        return web.Response(body=msgspec.json.encode(result), content_type="application/json")

    return serve


def register(app: web.Application, daemon: Daemon) -> None:
    app[ADMIN] = Admin(time.monotonic(), Iptables(lambda: daemon.firewall.flavour, daemon.firewall.netns))
    for name, route in ROUTES.items():
        app.router.add_post(ADMIN_PREFIX + name, _route(name, route))
