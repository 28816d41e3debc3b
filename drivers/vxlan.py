"""The VXLAN backend: one L2 segment and one subnet across hosts, identified by its VNI.

Each host that runs `docker network create -d pynet -o mode=vxlan -o vni=N ...` gets a VXLAN
device `pnx-<vni>` (learning off, proxy on) and a link `pno-<vni>` holding the network's
gateway: a drivers/segment.py `Segment`, as in the bridge mode. Egress, isolation and published
ports are the segment's: every host masquerades its own containers' traffic through its own
gateway.

Design notes: no bridge. The gateway link and every container's link are macvlan links (bridge
mode) of the VXLAN device (`VxlanConfig.lower`): frames between two local containers go from
one macvlan link to the other, frames to other hosts leave by the device, and frames from the
tunnel are handed to the link with their destination MAC. A bridge with veths in the host
namespace would put every in-network frame through the host's netfilter hooks, since Docker
turns br_netfilter on for the whole namespace (a per-bridge switch can only turn it on), and
that alone cost pynet 6-8 % of its TCP throughput against Docker's overlay, whose bridge sits
in a namespace of its own. Measured in one run (2 lab hosts, iperf3 5 s, 6 rounds, paired
against the overlay, Docker 28.5): a bridge with veths 0.99, the same with br_netfilter off
1.06, macvlan links of the device 1.13, the device alone moved into the container 1.10
(bench/README.md, "vxlan"). A namespace per network, the overlay's way, would need
CAP_SYS_ADMIN, and the managed plugin's mount namespace could not keep it past a restart.
What macvlan links cannot do is drop traffic between two of them: a network with
`enable_icc=false` keeps the bridge, where the firewall drops it (`lower` ""), as do networks
recorded before.

The gateway address is the same on every host, so its MAC is too (derived from the VNI):
whichever bridge answers, a container's neighbour entry for its gateway stays valid, and ARP
for it never crosses the tunnel (drivers/peers.py explains why).

Who is where (VTEPs, endpoint MACs and IPs) is shared through the store and programmed as
static FDB and neighbour entries by drivers/peers.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import ClassVar

from msgspec.structs import replace

from pynet.drivers.base import (
    Draft,
    Endpoint,
    Failures,
    MtuLimit,
    Network,
    by_network,
    config_of,
    restore_each,
    undo_on_failure,
)
from pynet.drivers.bridge import SEGMENT_OPTIONS, segment_settings
from pynet.drivers.config import VxlanConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.naming import VXLAN_BRIDGE_PREFIX, VXLAN_DEVICE_PREFIX, vni_mac, vxlan_bridge, vxlan_device
from pynet.drivers.netlink import HostView, Link, Netlink
from pynet.drivers.options import Option, int_in, invalid, parse_bool, parse_options
from pynet.drivers.peers import Observer, Registry, Sync, endpoint_key, vtep_key
from pynet.drivers.ports import HostPorts
from pynet.drivers.segment import Segment, SegmentEndpoints, check_families
from pynet.store import faults
from pynet.store.base import Store
from pynet.store.errors import InvalidRequest, PynetError

log = logging.getLogger("pynet.vxlan")

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def underlay(name: str, value: str) -> str:
    """An interface name or an IPv4 address of this host."""
    if not value or len(value) > 15 or "/" in value or " " in value:
        raise invalid(name, "an interface name or an IPv4 address of this host", value)
    return value


def peer_list(name: str, value: str) -> tuple[str, ...]:
    peers = tuple(p.strip() for p in value.split(",") if p.strip())
    for p in peers:
        try:
            ipaddress.IPv4Address(p)
        except ValueError:
            raise invalid(name, "a comma-separated list of IPv4 addresses", value) from None
    return peers


OPTIONS = [
    *SEGMENT_OPTIONS,
    Option("vni", int_in(1, 16777215)),
    Option("vxlan_port", int_in(1, 65535), 4789),
    Option("underlay", underlay, ""),
    Option("peers", peer_list, ()),
    Option("cluster", parse_bool, False),
]


def underlay_link(given: str, host: HostView) -> Link | None:
    """The interface `given` names, or the one holding `given` if it is an IPv4 address."""
    try:
        ipaddress.IPv4Address(given)
    except ValueError:
        return host.links.get(given)
    return host.link_with_address(given)


def mtu_limit(cfg: VxlanConfig, host: HostView) -> MtuLimit | None:
    """Frames leave encapsulated through the underlay (the default route's link when the
    recorded one is not found)."""
    lower = underlay_link(cfg.underlay or cfg.local, host) or host.uplink
    return MtuLimit(lower, VXLAN_OVERHEAD) if lower else None


async def _ipv4_of(host: str) -> str | None:
    """An etcd endpoint's host as an IPv4 address; a name is resolved, bounded in time."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET), 2.0)
    except (OSError, TimeoutError):
        return None
    return str(infos[0][4][0]) if infos else None


def _gateway_mac(net: Network) -> str:
    return vni_mac(config_of(net, VxlanConfig).vni)


async def _in_order(
    cfg: VxlanConfig, segment: Callable[[], Awaitable[object]], device: Callable[[], Awaitable[None]]
) -> None:
    """The segment and the VXLAN device, each once, in the order one needs the other: the
    device first when the segment's links are its own (`lower`), else after the bridge it joins."""
    first, then = (device, segment) if cfg.lower else (segment, device)
    await first()
    await then()


class VxlanBackend(SegmentEndpoints):
    """A segment (held, not inherited from the bridge mode) plus the control plane."""

    mode: ClassVar[str] = "vxlan"
    link_prefixes: ClassVar[tuple[str, ...]] = (VXLAN_BRIDGE_PREFIX, VXLAN_DEVICE_PREFIX, *Segment.link_prefixes)
    publishes_ports: ClassVar[bool] = True
    internal_gateway: ClassVar[bool] = True

    def __init__(
        self,
        netlink: Netlink,
        firewall: Firewall,
        ports: HostPorts,
        store: Store,
        prefix: str,
        host: str,
        lease_ttl: int = 10,
        observer: Observer | None = None,
        underlay: str = "",
        store_address: str = "",
    ) -> None:
        self.nl = netlink
        self.segment = Segment(netlink, firewall, ports)
        self.prefix = prefix
        self.host = host
        # Where a network without `-o underlay` puts its VTEP: the daemon's --underlay, else
        # the interface that routes to the store (etcd's first endpoint), else the default
        # route's. An air-gapped lab often has no default route, but always reaches etcd.
        self.default_underlay = underlay
        self.store_address = store_address
        self.registry = Registry(store, lease_ttl)
        self.sync = Sync(store, prefix, host, netlink, observer)

    def parse_options(self, options: Mapping[str, str], net: Draft) -> VxlanConfig:
        check_families(self.mode, net)
        cfg = parse_options(self.mode, OPTIONS, options)
        vni = cfg["vni"]
        if vni is None:
            raise InvalidRequest(
                "pynet: option vni is required with mode=vxlan: an integer in 1..16777215, "
                "the same on every host of the network"
            )
        settings = segment_settings(cfg)
        return VxlanConfig(
            bridge=vxlan_bridge(vni),
            device=vxlan_device(vni),
            lower=vxlan_device(vni) if settings["icc"] else "",
            vni=vni,
            port=cfg["vxlan_port"],
            underlay=cfg["underlay"],
            peers=cfg["peers"],
            cluster=cfg["cluster"],
            **settings,
        )

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, net: Network) -> VxlanConfig:
        cfg = config_of(net, VxlanConfig)
        link, local = await self._underlay(cfg.underlay)
        limit = link.mtu - VXLAN_OVERHEAD
        mtu = limit if cfg.mtu is None else cfg.mtu
        if mtu > limit:
            log.warning(
                "MTU does not fit the underlay: larger packets will be dropped",
                extra={"network": net.id, "mtu": mtu, "underlay": link.name, "underlay_mtu": link.mtu, "fits": limit},
            )
        cfg = replace(cfg, local=local, mtu=mtu, owns_bridge=await self.segment.owns(cfg))
        net = replace(net, config=cfg)
        async with undo_on_failure(lambda: self.delete_network(net)):
            segment = partial(self.segment.create, net, _gateway_mac(net))
            await _in_order(cfg, segment, partial(self._ensure_device, cfg, link))
            faults.hit("vxlan.create.after_device")
            await self._register(cfg)
        return cfg

    async def _underlay(self, given: str) -> tuple[Link, str]:
        """(link, IPv4 address) of the local VTEP: the option's, else the daemon's --underlay,
        else the interface routing to the store, else the default route's."""
        given = given or self.default_underlay
        if not given:
            return await self._routed_underlay()
        found = underlay_link(given, await self.nl.host_view())
        if found is None:
            try:
                ipaddress.IPv4Address(given)
            except ValueError:
                raise InvalidRequest(f"pynet: option underlay: no interface {given!r} on this host") from None
            raise InvalidRequest(f"pynet: option underlay: {given} is not an address of this host")
        if found.name == given:
            return found, await self._first_ipv4(found, f"option underlay {given!r}")
        return found, given

    async def _routed_underlay(self) -> tuple[Link, str]:
        target = await _ipv4_of(self.store_address) if self.store_address else None
        if target:
            link = await self.nl.route_link(target)
            if link is not None:
                return link, await self._first_ipv4(link, f"the interface routing to etcd at {self.store_address}")
        link = await self.nl.default_link()
        if link is not None:
            return link, await self._first_ipv4(link, "the default route's interface")
        to_store = f", nor a route to etcd at {self.store_address}" if self.store_address else ""
        raise InvalidRequest(
            f"pynet: no VXLAN underlay: this host has no IPv4 default route{to_store}; give the network "
            "-o underlay=<interface or address>, or the daemon --underlay (PYNET_UNDERLAY)"
        )

    async def _first_ipv4(self, link: Link, what: str) -> str:
        for cidr in await self.nl.addresses(link.name):
            iface = ipaddress.ip_interface(cidr)
            if iface.version == 4:
                return str(iface.ip)
        raise InvalidRequest(f"pynet: {what} ({link.name}) has no IPv4 address to use as VTEP")

    async def _ensure_device(self, cfg: VxlanConfig, link: Link, view: HostView | None = None) -> None:
        """The VXLAN device, up: a port of the bridge, or (`lower`) on its own. With `view`
        (reconcile's), a device it shows in place costs no request."""
        seen = view.links.get(cfg.device) if view else None
        if view is not None and seen is not None and seen.kind == "vxlan" and seen.up:
            bridge_seen = view.links.get(cfg.bridge)
            if cfg.lower or (bridge_seen is not None and seen.master == bridge_seen.index):
                return
        bridge = None if cfg.lower else await self.nl.link(cfg.bridge)
        if not cfg.lower and bridge is None:
            raise PynetError(f"pynet: bridge {cfg.bridge!r} is missing")
        await self.nl.add_link(
            cfg.device,
            "vxlan",
            vxlan_id=cfg.vni,
            vxlan_local=cfg.local,
            vxlan_link=link.index,
            vxlan_port=cfg.port,
            vxlan_learning=0,
            # With static peers (VTEPs that are not pynet) ARP must cross the tunnel: no proxy.
            vxlan_proxy=0 if cfg.peers else 1,
            mtu=cfg.mtu,
        )
        if bridge is None:
            await self.nl.set_link(cfg.device, state="up")
        else:
            await self.nl.set_link(cfg.device, master=bridge.index, state="up")

    async def _register(self, cfg: VxlanConfig) -> None:
        await self.registry.put(vtep_key(self.prefix, cfg.vni, self.host), {"address": cfg.local, "port": cfg.port})
        await self.sync.attach(cfg.vni, cfg.device, cfg.peers)

    async def delete_network(self, net: Network) -> None:
        cfg = config_of(net, VxlanConfig)
        self.sync.detach(cfg.vni)
        await self.registry.delete(vtep_key(self.prefix, cfg.vni, self.host))
        await self.nl.delete_link(cfg.device)
        await self.segment.delete(net)

    # -- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        await super().create_endpoint(net, ep)
        async with undo_on_failure(lambda: self.segment.delete_endpoint(net, ep)):
            await self._register_endpoint(config_of(net, VxlanConfig), ep)

    async def _register_endpoint(self, cfg: VxlanConfig, ep: Endpoint) -> None:
        ips = [str(ipaddress.ip_interface(a).ip) for a in (ep.address, ep.address6) if a]
        value = {"host": self.host, "vtep": cfg.local, "mac": ep.mac, "ips": ips, "time": time.time()}
        await self.registry.put(endpoint_key(self.prefix, cfg.vni, ep.id), value)

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        await super().delete_endpoint(net, ep)
        await self.registry.delete(endpoint_key(self.prefix, config_of(net, VxlanConfig).vni, ep.id))

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(self, nets: list[Network], eps: list[Endpoint], view: HostView) -> Failures:
        """Rebuild devices, register this host's VTEPs and endpoints under a new lease; FDB and
        neighbour entries are reprogrammed from the store once the peer watch (`sync`) runs. A
        network whose bridge or underlay fails is left out, and the others still come up."""
        # A device first where the segment's links are its own: a network whose device fails
        # is named for that, not for its gateway link that could not follow.
        # (`_in_order`, for every network at once.)
        lowered = [n for n in nets if config_of(n, VxlanConfig).lower]
        failed = await restore_each(lowered, lambda n: self._device(n, view))
        failed = {**await self.segment.reconcile(nets, eps, _gateway_mac, view), **failed}
        bridged = [n for n in nets if n.id not in failed and not config_of(n, VxlanConfig).lower]
        failed |= await restore_each(bridged, lambda n: self._device(n, view))
        grouped = by_network(eps)
        failed |= await restore_each(
            [n for n in nets if n.id not in failed], lambda n: self._register_all(n, grouped.get(n.id, []))
        )
        return failed

    async def restore(self, net: Network, eps: list[Endpoint]) -> None:
        cfg = config_of(net, VxlanConfig)
        await _in_order(cfg, partial(self.segment.restore, net, _gateway_mac(net), eps), partial(self._device, net))
        await self._register_all(net, eps)

    async def _device(self, net: Network, view: HostView | None = None) -> None:
        """The network's VXLAN device on the underlay address its record holds (the address
        the other hosts know this VTEP by). `view`: the host as reconcile saw it (the
        underlay's address does not change meanwhile)."""
        cfg = config_of(net, VxlanConfig)
        underlay = cfg.underlay or cfg.local
        host = view or await self.nl.host_view()
        link = underlay_link(underlay, host)
        if link is None:
            raise PynetError(f"pynet: the underlay {underlay} of VNI {cfg.vni} is not on this host")
        await self._ensure_device(cfg, link, host)

    async def _register_all(self, net: Network, eps: list[Endpoint]) -> None:
        """The network's VTEP and endpoints registered, and its device attached to the peer sync."""
        cfg = config_of(net, VxlanConfig)
        await self._register(cfg)
        for ep in eps:
            await self._register_endpoint(cfg, ep)

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        return self.segment.expected_links(nets, eps) | {config_of(n, VxlanConfig).device for n in nets}

    async def close(self) -> None:
        """Nothing to stop here: the lease keep-alive and the peer watch (`registry`, `sync`)
        run under serve's supervisor. The lease is left to expire, so a quick restart disturbs
        nothing."""
