"""The macvlan backend: Docker's macvlan driver, as a plugin, plus what its users keep asking for.

Each endpoint is a macvlan link on the network's parent interface that Docker moves, whole,
into the container: the container sits on the parent's segment with its own MAC, and its
traffic never crosses the host's IP stack. So there are no firewall rules and no published
ports here: a container answers on its own address. Beyond Docker's driver:

- `parent=eth0.10` creates the 802.1q sub-interface when it is missing and deletes it with the
  last pynet network on it; Docker deletes it with the network that made it, even while
  another network still uses it (docs/landscape.md theme 11, moby#47318).
- `host_shim=<cidr>` gives the host a macvlan link of its own on the parent: the parent itself
  never exchanges frames with its macvlan children, so without one the host cannot reach its
  own containers (theme 10, moby#21735).
- `--internal` networks hang off a port-less pynet bridge, where Docker uses a dummy link
  (kernels without the dummy module are common in CI and minimal hosts; pynet needs bridges
  anyway).

Link names derive from IDs only (`pnv-` endpoint, `pns-` shim, `pnm-` internal parent, each
+ 11 hex), so after a crash a link is found and removed by name alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import ClassVar

from msgspec.structs import replace

from pynet.drivers.base import (
    Draft,
    Endpoint,
    Failures,
    JoinInfo,
    MtuLimit,
    Network,
    by_network,
    config_of,
    restore_each,
    undo_on_failure,
)
from pynet.drivers.config import MacvlanConfig
from pynet.drivers.naming import ID_CHARS, INTERNAL_PREFIX, MACVLAN_PREFIX, SHIM_PREFIX, gateway_ip, mac_for
from pynet.drivers.netlink import HostView, Link, Netlink
from pynet.drivers.options import Option, ifname, int_in, invalid, one_of, parse_bool, parse_options
from pynet.store.errors import Conflict, InvalidRequest, PynetError

log = logging.getLogger("pynet.macvlan")

MODES = ("bridge", "vepa", "private", "passthru")
MTU = "com.docker.network.driver.mtu"
INTERNAL_MTU = 1500


def ipv4_cidr(name: str, value: str) -> str:
    """An address with its prefix length; a bare address is refused rather than read as /32,
    so the user says which subnet the address is meant to sit in."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        iface = None
    if iface is None or iface.version != 4 or "/" not in value:
        raise invalid(name, "an IPv4 address in CIDR form (e.g. 192.168.1.250/32)", value)
    return str(iface)


OPTIONS = [
    Option("parent", ifname, ""),
    Option("macvlan_mode", one_of(*MODES), "bridge"),
    Option(MTU, int_in(68, 65535), None, ("mtu",)),
    Option("host_shim", ipv4_cidr, ""),
    Option("cluster", parse_bool, False),
]


def endpoint_link(endpoint_id: str) -> str:
    return MACVLAN_PREFIX + endpoint_id[:ID_CHARS]


def shim_link(network_id: str) -> str:
    return SHIM_PREFIX + network_id[:ID_CHARS]


def internal_parent(network_id: str) -> str:
    return INTERNAL_PREFIX + network_id[:ID_CHARS]


def mtu_limit(cfg: MacvlanConfig, host: HostView) -> MtuLimit | None:
    """Frames leave through the parent as they are."""
    lower = host.links.get(cfg.parent)
    return MtuLimit(lower) if lower else None


def host_route(address: str) -> str:
    return f"{ipaddress.ip_interface(address).ip}/32"


def split_vlan(parent: str) -> tuple[str, int] | None:
    """(base interface, VLAN id) of an `<interface>.<id>` parent; None for any other name,
    since an existing link may have a dot in its name (Docker uses such a parent as it is)."""
    base, dot, suffix = parent.rpartition(".")
    if not dot or not suffix.isascii() or not suffix.isdigit():
        return None
    if not base or not 1 <= int(suffix) <= 4094:
        raise invalid("parent", "<interface>.<VLAN id> with a VLAN id in 1..4094", parent)
    return base, int(suffix)


def check_parent_name(parent: str, pynet_links: tuple[str, ...]) -> None:
    """`pynet_links`: the prefixes of every link pynet makes (drivers/registry.py), none of
    which is the uplink a user means by `parent`."""
    if parent.split(".")[0] == "lo":
        raise invalid("parent", "an Ethernet interface, not the loopback", parent)
    if parent.startswith(pynet_links):
        raise invalid("parent", "a host interface, not a link pynet made for a network", parent)
    split_vlan(parent)


def check_shim(shim: str, mode: str, net: Draft) -> None:
    """The host reaches its containers through the shim only in bridge mode (the other modes
    keep siblings apart); containers answer the shim directly only if it is on their subnet;
    and IPAM must never hand the shim's address to a container, which the subnet's gateway or
    an --aux-address reservation guarantees."""
    if mode != "bridge":
        raise InvalidRequest(f"pynet: option host_shim needs macvlan_mode bridge, got macvlan_mode {mode!r}")
    ip = ipaddress.ip_interface(shim).ip
    subnet = next((s for s in net.ipv4 if ip in ipaddress.ip_network(s.pool)), None)
    if subnet is None:
        pools = ", ".join(s.pool for s in net.ipv4) or "none"
        raise invalid("host_shim", f"an address in the network's IPv4 subnets ({pools})", shim)
    reserved = {ipaddress.ip_interface(a).ip for a in (subnet.gateway, *subnet.aux.values()) if a}
    if ip not in reserved:
        raise InvalidRequest(
            f"pynet: option host_shim {shim} must be reserved with --aux-address (e.g. "
            f"--aux-address host_shim={ip}) or be the gateway, or IPAM may give it to a container"
        )


def check_sharing(net: Network, others: Iterable[Network]) -> None:
    """Networks on one parent share its segment (like Docker): one macvlan mode per parent,
    passthru takes the parent whole, and subnets must not overlap."""
    cfg = config_of(net, MacvlanConfig)
    parent, mode = cfg.parent, cfg.macvlan_mode
    for other in others:
        theirs_cfg = config_of(other, MacvlanConfig)
        if other.id == net.id or theirs_cfg.parent != parent:
            continue
        theirs = theirs_cfg.macvlan_mode
        if "passthru" in (mode, theirs):
            raise Conflict(
                f"pynet: option parent {parent!r} is used by network {other.id[:12]} in macvlan_mode "
                f"{theirs}, and macvlan_mode passthru gives a parent to one network only"
            )
        if theirs != mode:
            raise Conflict(
                f"pynet: option macvlan_mode {mode!r} differs from macvlan_mode {theirs!r} of network "
                f"{other.id[:12]} on parent {parent!r}"
            )
        for mine, its in ((net.ipv4, other.ipv4), (net.ipv6, other.ipv6)):
            for a in mine:
                for b in its:
                    if ipaddress.ip_network(a.pool).overlaps(ipaddress.ip_network(b.pool)):
                        raise Conflict(
                            f"pynet: subnet {a.pool} overlaps {b.pool} of network {other.id[:12]} "
                            f"on parent {parent!r}"
                        )


def check_uplink(link: Link, parent: str) -> None:
    """`link` is the parent itself or, for a sub-interface, its base."""
    what = repr(link.name) if link.name == parent else f"{link.name!r} (the base of {parent})"
    if link.kind == "macvlan":
        raise InvalidRequest(f"pynet: option parent: interface {what} is a macvlan link, not a host interface")
    if not link.up:
        raise Conflict(f"pynet: option parent: interface {what} is down (ip link set {link.name} up)")


class MacvlanBackend:
    mode: ClassVar[str] = "macvlan"
    link_prefixes: ClassVar[tuple[str, ...]] = (MACVLAN_PREFIX, SHIM_PREFIX, INTERNAL_PREFIX)
    # Containers answer on their own addresses on the parent's segment: nothing to publish.
    publishes_ports: ClassVar[bool] = False
    internal_gateway: ClassVar[bool] = False

    def __init__(self, netlink: Netlink, pynet_links: tuple[str, ...]) -> None:
        self.nl = netlink
        self.pynet_links = pynet_links
        # This host's macvlan networks (kept by create/delete, loaded by reconcile): who else
        # is on a parent decides conflicts and when a sub-interface pynet made can go.
        self._nets: dict[str, Network] = {}
        # Per parent: two networks created at once on one parent must see each other.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def parse_options(self, options: Mapping[str, str], net: Draft) -> MacvlanConfig:
        cfg = parse_options(self.mode, OPTIONS, options)
        parent, mode, shim = cfg["parent"], cfg["macvlan_mode"], cfg["host_shim"]
        if net.internal:
            if parent:
                raise invalid("parent", "unset on an --internal network, which has no uplink", parent)
            parent = internal_parent(net.id)
        elif not parent:
            raise InvalidRequest(
                "pynet: option parent is required (the host interface the containers share, "
                "e.g. -o parent=eth0), unless the network is --internal"
            )
        else:
            check_parent_name(parent, self.pynet_links)
        if shim:
            check_shim(shim, mode, net)
        mtu = cfg[MTU] or (INTERNAL_MTU if net.internal else None)
        return MacvlanConfig(parent=parent, macvlan_mode=mode, mtu=mtu, host_shim=shim, cluster=cfg["cluster"])

    def _sharing(self, net: Network) -> list[MacvlanConfig]:
        parent = config_of(net, MacvlanConfig).parent
        mine = [config_of(n, MacvlanConfig) for n in self._nets.values() if n.id != net.id]
        return [c for c in mine if c.parent == parent]

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, net: Network) -> MacvlanConfig:
        async with self._locks[config_of(net, MacvlanConfig).parent]:
            if net.id in self._nets:
                # Docker's retry: make sure the kernel has it, as at start, and change nothing.
                net = await self._restore(net, [])
                self._nets[net.id] = net
                return config_of(net, MacvlanConfig)
            check_sharing(net, self._nets.values())
            async with undo_on_failure(lambda: self._remove(net)):
                net = await self._ensure_parent(net)
                parent = await self._link(config_of(net, MacvlanConfig).parent)
                net = await self._check_parent(net, parent)
                await self._ensure_shim(net, parent, [])
            self._nets[net.id] = net
        cfg = config_of(net, MacvlanConfig)
        log.info(
            "macvlan network ready",
            extra={"network": net.id, "parent": cfg.parent, "macvlan_mode": cfg.macvlan_mode, "mtu": cfg.mtu},
        )
        return cfg

    async def _ensure_parent(self, net: Network) -> Network:
        """The parent made first where pynet owns it; the record says whether it does."""
        cfg = config_of(net, MacvlanConfig)
        if net.internal:
            await self.nl.ensure_bridge(cfg.parent, cfg.mtu or INTERNAL_MTU)
        elif await self.nl.link(cfg.parent) is None:
            cfg = await self._create_vlan(cfg)
        elif cfg.vlan_created is None:
            # A sub-interface that another pynet network made is pynet's too: it goes with
            # the last network on it, whichever that is.
            cfg = replace(cfg, vlan_created=any(c.vlan_created for c in self._sharing(net)))
        return replace(net, config=cfg)

    async def _check_parent(self, net: Network, parent: Link) -> Network:
        """Create-time checks, and the MTU resolved. Reconcile skips them: at boot a parent
        may come up after pynet, and its networks must be back when it does."""
        cfg = config_of(net, MacvlanConfig)
        base = await self.nl.link_by_index(parent.parent) if parent.kind == "vlan" else None
        for link in (parent, base) if base else (parent,):
            check_uplink(link, cfg.parent)
        if cfg.mtu is None:
            return replace(net, config=replace(cfg, mtu=parent.mtu))
        if cfg.mtu > parent.mtu:
            raise InvalidRequest(
                f"pynet: option {MTU} {cfg.mtu} is above the MTU {parent.mtu} of parent {parent.name!r}"
            )
        return net

    async def _create_vlan(self, cfg: MacvlanConfig) -> MacvlanConfig:
        name = cfg.parent
        vlan = split_vlan(name)
        if vlan is None or cfg.vlan_created is False:
            # A missing sub-interface the user made is theirs to make again.
            raise InvalidRequest(f"pynet: option parent: interface {name!r} does not exist")
        base = await self.nl.link(vlan[0])
        if base is None:
            raise InvalidRequest(f"pynet: option parent: interface {vlan[0]!r} (the base of {name}) does not exist")
        await self.nl.create_vlan(name, base.index, vlan[1])
        return replace(cfg, vlan_created=True)

    async def _link(self, name: str) -> Link:
        link = await self.nl.link(name)
        if link is None:
            raise PynetError(f"pynet: interface {name!r} vanished while pynet was setting it up")
        return link

    async def _ensure_shim(self, net: Network, parent: Link, eps: list[Endpoint]) -> None:
        """The host's own macvlan link, in bridge mode so it reaches its siblings. Its address
        adds no prefix route; each container's /32 is routed through it instead, so the shim
        works where the macvlan subnet is the LAN the host already routes through the parent
        (the usual case), and never takes that route over."""
        cfg = config_of(net, MacvlanConfig)
        if not cfg.host_shim:
            return
        name = shim_link(net.id)
        await self.nl.add_link(name, "macvlan", link=parent.index, macvlan_mode="bridge", mtu=cfg.mtu)
        await self.nl.ensure_address(name, cfg.host_shim, prefix_route=False)
        await self.nl.set_link(name, state="up")
        for ep in eps:
            if ep.address:
                await self.nl.ensure_route(host_route(ep.address), name)

    async def delete_network(self, net: Network) -> None:
        async with self._locks[config_of(net, MacvlanConfig).parent]:
            await self._remove(net)

    async def _remove(self, net: Network) -> None:
        """Delete what pynet made for `net`. Deleting a parent takes every macvlan link on it
        along, even those inside containers, so a shared sub-interface stays while another
        network is on it."""
        cfg = config_of(net, MacvlanConfig)
        self._nets.pop(net.id, None)
        await self.nl.settle()
        await self.nl.delete_link(shim_link(net.id))
        if net.internal or (cfg.vlan_created and not self._sharing(net)):
            await self.nl.delete_link(cfg.parent)

    # -- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        cfg = config_of(net, MacvlanConfig)
        parent = await self.nl.link(cfg.parent)
        if parent is None:
            raise PynetError(f"pynet: parent {cfg.parent!r} of network {net.id[:12]} is missing")
        passthru = cfg.macvlan_mode == "passthru"
        ep.ifname, ep.peer = "", endpoint_link(ep.id)
        # A passthru link takes the parent's MAC whatever it is given; report that one.
        ep.mac = ep.mac or (parent.mac if passthru else mac_for(ep.address))
        try:
            await self.nl.add_link(
                ep.peer, "macvlan", link=parent.index, macvlan_mode=cfg.macvlan_mode, mtu=cfg.mtu, address=ep.mac
            )
        except PynetError as e:
            if passthru:
                raise Conflict(
                    f"pynet: macvlan_mode passthru gives parent {parent.name!r} to one container, "
                    "and another macvlan link holds it already"
                ) from e
            raise
        if cfg.host_shim and ep.address:
            async with undo_on_failure(lambda: self.nl.delete_link(ep.peer)):
                await self.nl.ensure_route(host_route(ep.address), shim_link(net.id))

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        if net.internal:
            return JoinInfo(src_name=ep.peer, disable_gateway=True)
        gw4, gw6 = gateway_ip(net, ep.address), gateway_ip(net, ep.address6)
        return JoinInfo(src_name=ep.peer, gateway=gw4, gateway6=gw6, disable_gateway=not (gw4 or gw6))

    async def leave(self, net: Network, ep: Endpoint) -> None:
        return None

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        # Docker moves the link back to the host before this; when it could not, the link
        # goes with the container's namespace.
        await self.nl.retire_link(endpoint_link(ep.id))
        if config_of(net, MacvlanConfig).host_shim and ep.address:
            await self.nl.delete_route(host_route(ep.address), shim_link(net.id))

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        return None

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        return None

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(self, nets: list[Network], eps: list[Endpoint], view: HostView) -> Failures:
        """A network whose parent is gone (an unplugged NIC, a sub-interface someone deleted)
        is returned with why: the others, and the daemon, must still come up."""
        self._nets = {n.id: n for n in nets}
        grouped = by_network(eps)
        return await restore_each(nets, lambda n: self._keep(n, grouped.get(n.id, [])))

    async def restore(self, net: Network, eps: list[Endpoint]) -> None:
        async with self._locks[config_of(net, MacvlanConfig).parent]:
            await self._keep(net, eps)

    async def _keep(self, net: Network, eps: list[Endpoint]) -> None:
        self._nets[net.id] = await self._restore(net, eps)

    async def _restore(self, net: Network, eps: list[Endpoint]) -> Network:
        net = await self._ensure_parent(net)
        await self._ensure_shim(net, await self._link(config_of(net, MacvlanConfig).parent), eps)
        return net

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        """Links of running containers sit in the containers' namespaces, out of sight here."""
        known = {e.peer for e in eps}
        known |= {shim_link(n.id) for n in nets if config_of(n, MacvlanConfig).host_shim}
        return known | {config_of(n, MacvlanConfig).parent for n in nets if n.internal}

    async def close(self) -> None:
        return None
