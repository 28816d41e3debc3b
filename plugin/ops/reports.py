"""`pynet status|networks|endpoints|ipam`: what the daemon (or, when it is down, the store) holds."""

from __future__ import annotations

import argparse

from pynet.plugin.daemon import restore
from pynet.plugin.daemon.config import Settings
from pynet.plugin.ops import admin_api
from pynet.plugin.ops.access import CliError, Unreachable, ask, closing, fetch, host_id, open_store
from pynet.plugin.ops.admin_api import DaemonInfo, EndpointInfo, NetworkInfo, PoolInfo, Status
from pynet.plugin.ops.render import Report, duration, short, table, yes
from pynet.store.errors import PynetError

KEPT = "kept at start, not deleted: this store has not seen this host before (pynet gc lists them)"


async def status(settings: Settings, _: argparse.Namespace) -> Report:
    try:
        st = await ask(settings, "status", Status)
    except Unreachable as e:
        st = await _status_from_store(settings, DaemonInfo(settings.socket, False, error=str(e)))
    ok = st.daemon.answers and st.daemon.ready and st.store.reachable
    ok = ok and not unrestored(st) and not st.kept_links
    return Report(st, _status_text(st), ok)


def unrestored(st: Status) -> str:
    """Why networks are down since the daemon started, from its restore task; "" if none is."""
    task = next((t for t in st.tasks if t.name == restore.TASK), None)
    return task.last_error if task and task.detail.get("failing", "-") != "-" else ""


async def _status_from_store(settings: Settings, daemon: DaemonInfo) -> Status:
    try:
        async with closing(open_store(settings)) as store:
            try:
                host = await host_id(settings, store)
            except PynetError:
                host = ""  # no host's records to count, but the store is still worth probing
            return await admin_api.status(daemon, host, settings, store)
    except CliError as e:
        info = admin_api.StoreInfo(*admin_api.store_location(settings), False, str(e))
        return Status(daemon, settings.host_id, info, 0, 0, [])


def _status_text(st: Status) -> str:
    d = st.daemon
    if d.answers:
        state = "ready" if d.ready else "starting"
        daemon = f"answers on {d.socket} (pynet {d.version}, pid {d.pid}, up {duration(d.uptime)}, {state})"
    else:
        daemon = f"DOWN: {d.error}"
    reach = "reachable" if st.store.reachable else f"UNREACHABLE: {st.store.error}"
    store = f"{st.store.kind} {st.store.where}: {reach}"
    lines = [
        f"daemon     {daemon}",
        f"host       {st.host or '?'}",
        f"store      {store}",
        f"networks   {st.networks}" + (f" (DOWN: {down})" if (down := unrestored(st)) else ""),
        f"endpoints  {st.endpoints}",
        *([f"orphans    {' '.join(st.kept_links)}: {KEPT}"] if st.kept_links else []),
        "vxlan peers:",
        table(["VNI", "VTEP", "HOST"], [(p.vni, p.vtep, p.host or "(static)") for p in st.vxlan_peers]),
    ]
    if st.tasks:
        rows = [
            (
                t.name,
                t.state,
                t.restarts,
                t.last_error or "-",
                " ".join(f"{k}={v}" for k, v in sorted(t.detail.items())),
            )
            for t in st.tasks
        ]
        lines += ["tasks:", table(["TASK", "STATE", "RESTARTS", "LAST ERROR", "DETAIL"], rows)]
    return "\n".join(lines)


async def networks(settings: Settings, _: argparse.Namespace) -> Report:
    nets = await fetch(settings, "networks", list[NetworkInfo], lambda loc: admin_api.networks(loc.state))
    rows = [(short(n.id), n.mode, ",".join(n.subnets), n.config.describe(), yes(n.internal), n.endpoints) for n in nets]
    return Report(nets, table(["NETWORK", "MODE", "SUBNETS", "DEVICE", "INTERNAL", "ENDPOINTS"], rows), True)


async def endpoints(settings: Settings, _: argparse.Namespace) -> Report:
    eps = await fetch(settings, "endpoints", list[EndpointInfo], lambda loc: admin_api.endpoints(loc.state))
    rows = [
        (short(e.id), short(e.network), ",".join(e.addresses), e.mac, e.link, yes(e.joined), ",".join(e.ports))
        for e in eps
    ]
    return Report(eps, table(["ENDPOINT", "NETWORK", "ADDRESSES", "MAC", "LINK", "JOINED", "PORTS"], rows), True)


async def ipam(settings: Settings, _: argparse.Namespace) -> Report:
    pools = await fetch(settings, "ipam", list[PoolInfo], lambda loc: admin_api.pools(loc.ipam))
    rows = [(p.subnet, ",".join(p.hosts), f"{p.allocated}/{p.total}", p.gateway) for p in pools]
    return Report(pools, table(["POOL", "HOSTS", "ALLOCATED", "GATEWAY"], rows), True)
