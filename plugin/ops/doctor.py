"""`pynet doctor`: checks of this host that explain most "the network does not work" reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import msgspec

from pynet.drivers import registry
from pynet.drivers.firewall import NFTABLES, TABLES, jump_fixes, jumps_for, stale_jumps
from pynet.drivers.netlink import HostView
from pynet.drivers.nftables import NftTables
from pynet.plugin.daemon.config import Settings
from pynet.plugin.ops import admin_api
from pynet.plugin.ops.access import Unreachable, ask, closing, fetch, open_store, opened_netlink
from pynet.plugin.ops.admin_api import NetworkInfo, Status
from pynet.plugin.ops.iptables import Iptables, configured
from pynet.plugin.ops.render import Report, short, table
from pynet.plugin.ops.reports import unrestored
from pynet.store.errors import PynetError

Verdict = Literal["ok", "warn", "fail"]


class Check(msgspec.Struct):
    name: str
    verdict: Verdict
    detail: str


async def doctor(settings: Settings, args: argparse.Namespace) -> Report:
    checks = [await _daemon_check(settings), await _restored_check(settings), _forwarding_check()]
    checks += await _firewall_checks(configured(settings))
    checks += await _mtu_checks(settings)
    if settings.etcd_endpoints:
        checks.append(await _etcd_check(settings))
        from pynet.plugin.ops.dns_checks import dns_checks  # it imports Check from here

        checks += await dns_checks(settings, configured(settings), args)
    checks += await _cluster_checks(settings)
    rows = [(c.verdict.upper() if c.verdict != "ok" else "ok", c.name, c.detail) for c in checks]
    return Report(checks, table(["VERDICT", "CHECK", "DETAIL"], rows), all(c.verdict != "fail" for c in checks))


async def _daemon_check(settings: Settings) -> Check:
    try:
        st = await ask(settings, "status", Status)
    except Unreachable as e:
        return Check("daemon", "fail", str(e))
    if not st.daemon.ready:
        return Check("daemon", "warn", f"pid {st.daemon.pid} answers but is still starting")
    return Check("daemon", "ok", f"pid {st.daemon.pid} answers on {settings.socket}")


async def _restored_check(settings: Settings) -> Check:
    """Networks reconcile could not restore (an underlay address or a parent missing): the
    daemon retries them, and says why they are still down."""
    name = "networks restored"
    try:
        down = unrestored(await ask(settings, "status", Status))
    except Unreachable as e:
        return Check(name, "warn", f"unknown: {e}")
    return Check(name, "fail", down) if down else Check(name, "ok", "every network is up")


def _forwarding_check() -> Check:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    value = path.read_text().strip()
    if value == "1":
        return Check("ip_forward", "ok", "net.ipv4.ip_forward = 1")
    detail = f"net.ipv4.ip_forward = {value}: containers have no egress and no published ports"
    return Check("ip_forward", "fail", detail)


async def _firewall_checks(iptables: Iptables) -> list[Check]:
    try:
        flavour = await iptables.flavour()
    except PynetError as e:
        return [Check("firewall", "fail", str(e))]
    if flavour == NFTABLES:
        return await _nft_checks(iptables.nft())
    checks = [Check("firewall", "ok", f"iptables-{flavour} (the flavour Docker uses here)")]
    for family in (4, 6):
        try:
            listings = {table: await iptables.table(family, table) for table in TABLES}
        except PynetError as e:
            checks.append(Check(f"jumps IPv{family}", "fail", str(e)))
            continue
        checks.append(_jumps_check(family, listings))
    return checks


async def _nft_checks(nft: NftTables) -> list[Check]:
    """Under Docker's nftables backend: pynet's tables exist, and Docker's filter-FORWARD does
    not drop by policy (which no other table can undo)."""
    checks = [Check("firewall", "ok", "nftables: pynet's own tables (Docker's nftables firewall backend)")]
    try:
        present = await nft.present((4, 6))
        dropping = await nft.docker_forward_drop()
    except PynetError as e:
        return [*checks, Check("nft tables", "fail", str(e))]
    if present:
        checks.append(Check("nft tables", "ok", "ip pynet and ip6 pynet"))
    else:
        checks.append(Check("nft tables", "fail", "ip pynet or ip6 pynet missing (is pynet running?)"))
    if dropping:
        families = " and ".join(f"IPv{f}" for f in dropping)
        detail = (
            f"Docker's filter-FORWARD drops by policy ({families}; Docker enabled IP forwarding itself): "
            "every forwarded packet of pynet's networks is dropped there. Enable forwarding before dockerd "
            'starts (sysctl), or set "ip-forward-no-drop": true in daemon.json, and restart dockerd'
        )
        checks.append(Check("docker forward policy", "fail", detail))
    else:
        checks.append(Check("docker forward policy", "ok", "accept (pynet's tables decide)"))
    return checks


def _jumps_check(family: int, listings: dict[str, str]) -> Check:
    """The jumps the firewall itself would keep (into DOCKER-USER on a Docker host): missing
    fails, misplaced or doubled only warns, since pynet's resync puts them back."""
    missing: list[str] = []
    misplaced: list[str] = []
    for jump in jumps_for(listings["filter"]):
        if jump_fixes(jump, listings[jump.table]):
            lines = listings[jump.table].splitlines()
            there = any(x.startswith(f"-A {jump.chain} ") and x.endswith(f"-j {jump.target}") for x in lines)
            (misplaced if there else missing).append(f"{jump.chain}->{jump.target}")
    misplaced += [line[3:] for _, line in stale_jumps(jumps_for(listings["filter"]), listings)]
    name = f"jumps IPv{family}"
    if missing:
        return Check(name, "fail", "missing: " + ", ".join(missing) + " (is pynet running?)")
    if misplaced:
        return Check(name, "warn", "misplaced: " + ", ".join(misplaced) + " (pynet's resync puts them back)")
    return Check(name, "ok", "one jump to each PYNET chain, in place")


async def _mtu_checks(settings: Settings) -> list[Check]:
    try:
        nets = await fetch(settings, "networks", list[NetworkInfo], lambda loc: admin_api.networks(loc.state))
    except PynetError as e:
        return [Check("mtu", "warn", f"networks unknown: {e}")]
    async with closing(await opened_netlink()) as nl:
        host = await nl.host_view()
    checks = [_mtu_check(n, host) for n in nets]
    return checks or [Check("mtu", "ok", "no networks")]


def _mtu_check(net: NetworkInfo, host: HostView) -> Check:
    """A network's MTU must fit the link its frames leave through, less what its mode adds
    (the backends know which link and how much: drivers/registry.py `mtu_limit`); larger
    frames are dropped or fragmented on the way out."""
    name = f"mtu {short(net.id)}"
    mtu = net.config.mtu
    if mtu is None:
        return Check(name, "ok", f"{net.mode}: no MTU set")
    fit = registry.mtu_limit(net.config, host)
    if fit is None:
        return Check(name, "warn", f"{net.mode} MTU {mtu}: no link underneath to compare with")
    verdict: Verdict = "ok" if mtu <= fit.limit else "fail"
    less = f" - {fit.overhead}" if fit.overhead else ""
    return Check(name, verdict, f"{net.mode} MTU {mtu}, {fit.lower.name} MTU {fit.lower.mtu}{less}")


async def _etcd_check(settings: Settings) -> Check:
    store = open_store(settings)
    try:
        info = await admin_api.store_info(settings, store)
    finally:
        await store.close()
    if info.reachable:
        return Check("etcd", "ok", f"{info.where} answers")
    return Check("etcd", "fail", f"{info.where}: {info.error}")


async def _cluster_checks(settings: Settings) -> list[Check]:
    """The cluster agent (plugin/cluster/networks.py) runs, and every cluster network has its
    copy here: a name held by a different network, or a copy Docker refused, only warns. Asked
    of the daemon, whose settings (etcd) this shell may not have."""
    name = "cluster networks"
    try:
        st = await ask(settings, "status", Status)
    except Unreachable as e:
        return [Check(name, "warn", f"agent unknown: {e}")] if settings.etcd_endpoints else []
    task = next((t for t in st.tasks if t.name == "cluster-networks"), None)
    if task is None:
        missing = Check(name, "warn", "the agent has not started (pynet still starting?)")
        return [missing] if settings.etcd_endpoints else []
    if task.state != "running":
        return [Check(name, "warn", f"agent {task.state}: {task.last_error}")]
    problems = [f"{k}: {task.detail[k]}" for k in ("conflict", "error") if task.detail.get(k, "-") != "-"]
    if problems:
        return [Check(name, "warn", "; ".join(problems) + " (a different network of that name here is left alone)")]
    return [Check(name, "ok", f"{task.detail.get('networks', '0')} copied, Docker API {task.detail.get('api', '-')}")]
