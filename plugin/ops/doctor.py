"""`pynet doctor`: checks of this host that explain most "the network does not work" reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import msgspec

from pynet.drivers.firewall import TABLES, jump_fixes, jumps_for, stale_jumps
from pynet.drivers.netlink import Link, Netlink
from pynet.drivers.vxlan import VXLAN_OVERHEAD
from pynet.plugin.daemon.config import Settings
from pynet.plugin.ops import admin_api
from pynet.plugin.ops.access import Unreachable, ask, closing, fetch, open_store, opened_netlink
from pynet.plugin.ops.admin_api import NetworkInfo, Status
from pynet.plugin.ops.iptables import Iptables
from pynet.plugin.ops.render import Report, short, table
from pynet.store.errors import PynetError

Verdict = Literal["ok", "warn", "fail"]


class Check(msgspec.Struct):
    name: str
    verdict: Verdict
    detail: str


async def doctor(settings: Settings, _: argparse.Namespace) -> Report:
    checks = [await _daemon_check(settings), _forwarding_check()]
    checks += await _firewall_checks(Iptables())
    checks += await _mtu_checks(settings)
    if settings.etcd_endpoints:
        checks.append(await _etcd_check(settings))
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
    checks = [Check("firewall", "ok", f"iptables-{flavour} (the flavour Docker uses here)")]
    for family in (4, 6):
        try:
            listings = {table: await iptables.table(family, table) for table in TABLES}
        except PynetError as e:
            checks.append(Check(f"jumps IPv{family}", "fail", str(e)))
            continue
        checks.append(_jumps_check(family, listings))
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
        links = {link.name: link for link in await nl.links()}
        uplink = await nl.default_link()
        checks = [await _mtu_check(n, links, uplink, nl) for n in nets]
    return checks or [Check("mtu", "ok", "no networks")]


async def _mtu_check(net: NetworkInfo, links: dict[str, Link], uplink: Link | None, nl: Netlink) -> Check:
    """A bridge's MTU must fit its uplink, a macvlan's its parent, a VXLAN's the underlay less
    the VXLAN header; larger frames are dropped or fragmented on the way out."""
    name = f"mtu {short(net.id)}"
    mtu = net.config.get("mtu")
    if not isinstance(mtu, int):
        return Check(name, "ok", f"{net.mode}: no MTU set")
    overhead = VXLAN_OVERHEAD if net.mode == "vxlan" else 0
    if net.mode == "macvlan":
        lower = links.get(net.config.get("parent", ""))
    elif net.mode == "vxlan":
        given = net.config.get("underlay") or net.config.get("local") or ""
        lower = await _underlay(given, links, nl) or uplink
    else:
        lower = uplink
    if lower is None:
        return Check(name, "warn", f"{net.mode} MTU {mtu}: no link underneath to compare with")
    limit = lower.mtu - overhead
    verdict: Verdict = "ok" if mtu <= limit else "fail"
    less = f" - {overhead}" if overhead else ""
    return Check(name, verdict, f"{net.mode} MTU {mtu}, {lower.name} MTU {lower.mtu}{less}")


async def _underlay(value: str, links: dict[str, Link], nl: Netlink) -> Link | None:
    """The VXLAN `underlay` option names an interface or one of its addresses."""
    if value in links:
        return links[value]
    for link in links.values():
        if value and any(a.split("/")[0] == value for a in await nl.addresses(link.name)):
            return link
    return None


async def _etcd_check(settings: Settings) -> Check:
    store = open_store(settings)
    try:
        info = await admin_api.store_info(settings, store)
    finally:
        await store.close()
    if info.reachable:
        return Check("etcd", "ok", f"{info.where} answers")
    return Check("etcd", "fail", f"{info.where}: {info.error}")

