"""The bridge backend (the default mode): Docker's bridge driver, as a plugin.

One Linux bridge per network holds the gateway address(es); each endpoint is a veth pair whose
host end is a bridge port and whose other end Docker moves into the container. Egress is
masqueraded, networks are isolated from each other and from Docker's own bridges, and
published ports are DNAT rules, all in `drivers.firewall` (which rewrites pynet's chains in
one restore).

Link names derive from IDs only (`pnb-`/`pnh-`/`pnc-` + 11 hex), so after a crash a link is
found and removed by name alone.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import Any, ClassVar

from pynet.drivers.base import Endpoint, JoinInfo, Network, PortMap
from pynet.drivers.firewall import Firewall, NetRules
from pynet.drivers.netlink import Netlink, write_sysctl
from pynet.drivers.options import Option, int_in, ifname, ipv4_address, parse_bool, parse_options
from pynet.store.errors import Conflict

log = logging.getLogger("pynet.bridge")

BRIDGE_PREFIX = "pnb-"
HOST_END_PREFIX = "pnh-"
PEER_PREFIX = "pnc-"

OPTIONS = [
    Option("com.docker.network.bridge.name", ifname, None, ("bridge_name",)),
    Option("com.docker.network.driver.mtu", int_in(68, 65535), None, ("mtu",)),
    Option(
        "com.docker.network.bridge.enable_ip_masquerade", parse_bool, True, ("enable_ip_masquerade", "masquerade")
    ),
    Option("com.docker.network.bridge.enable_icc", parse_bool, True, ("enable_icc", "icc")),
    Option("com.docker.network.bridge.host_binding_ipv4", ipv4_address, "", ("host_binding_ipv4",)),
]


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:11]


def endpoint_links(endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) of an endpoint's veth."""
    return HOST_END_PREFIX + endpoint_id[:11], PEER_PREFIX + endpoint_id[:11]


def mac_for(address: str) -> str:
    """Docker's scheme: 02:42 + the IPv4 address, so a MAC is stable for an address and
    unique wherever the address is; random (locally administered) without one."""
    if address:
        ip = ipaddress.ip_interface(address).ip
        if ip.version == 4:
            return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)
    return "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))


def bridge_mac(network_id: str) -> str:
    """A fixed bridge MAC: without one the bridge takes its lowest port's MAC, which changes
    as containers come and go and makes neighbours' ARP entries stale."""
    return "02:70:" + ":".join(network_id[i : i + 2] for i in range(0, 8, 2))


def gateway_ip(net: Network, address: str) -> str:
    """The gateway (bare IP) of the subnet holding `address`."""
    if not address:
        return ""
    ip = ipaddress.ip_interface(address).ip
    for sub in (*net.ipv4, *net.ipv6):
        if sub.gateway and ip in ipaddress.ip_network(sub.pool):
            return str(ipaddress.ip_interface(sub.gateway).ip)
    return ""


class BridgeBackend:
    mode: ClassVar[str] = "bridge"
    link_prefixes: ClassVar[tuple[str, ...]] = (BRIDGE_PREFIX, HOST_END_PREFIX, PEER_PREFIX)
    publishes_ports: ClassVar[bool] = True

    def __init__(self, netlink: Netlink, firewall: Firewall) -> None:
        self.nl = netlink
        self.fw = firewall
        # Published ports per network, per endpoint: the firewall is rewritten per network.
        self._ports: dict[str, dict[str, list[PortMap]]] = {}

    def bridge_mac(self, net: Network) -> str:
        return bridge_mac(net.id)

    def parse_options(self, options: dict[str, str], net: Network) -> dict[str, Any]:
        cfg = parse_options(self.mode, OPTIONS, options)
        return {
            "bridge": cfg["com.docker.network.bridge.name"] or bridge_name(net.id),
            "mtu": cfg["com.docker.network.driver.mtu"],  # None: resolved at create
            "masquerade": cfg["com.docker.network.bridge.enable_ip_masquerade"],
            "icc": cfg["com.docker.network.bridge.enable_icc"],
            "host_binding_ipv4": cfg["com.docker.network.bridge.host_binding_ipv4"],
        }

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, net: Network) -> None:
        cfg = net.config
        if cfg["mtu"] is None:
            uplink = await self.nl.default_link()
            cfg["mtu"] = uplink.mtu if uplink else 1500
        existing = await self.nl.link(cfg["bridge"])
        if existing is not None and existing.kind != "bridge":
            raise Conflict(
                f"pynet: option com.docker.network.bridge.name: {cfg['bridge']!r} exists and is not a bridge"
            )
        cfg.setdefault("owns_bridge", existing is None)
        try:
            await self._ensure_bridge(net)
            await self._apply_rules(net)
        except BaseException:
            await self.delete_network(net)
            raise
        log.info(
            "bridge ready",
            extra={"network": net.id, "bridge": cfg["bridge"], "mtu": cfg["mtu"], "internal": net.internal},
        )

    async def _ensure_bridge(self, net: Network) -> None:
        cfg = net.config
        owns = cfg.get("owns_bridge", True)
        await self.nl.ensure_bridge(cfg["bridge"], cfg["mtu"], self.bridge_mac(net) if owns else "")
        for sub in (*net.ipv4, *net.ipv6):
            if sub.gateway:
                await self.nl.ensure_address(cfg["bridge"], sub.gateway)
        write_sysctl("net/ipv4/ip_forward", "1")
        if net.ipv6:
            write_sysctl("net/ipv6/conf/all/forwarding", "1")
        # DNAT of 127.0.0.1:<port> to a container needs local-source routing on the bridge.
        write_sysctl(f"net/ipv4/conf/{cfg['bridge']}/route_localnet", "1")

    async def delete_network(self, net: Network) -> None:
        cfg = net.config
        self._ports.pop(net.id, None)
        await self.fw.remove(net.id)
        await self.nl.settle()
        bridge = await self.nl.link(cfg["bridge"])
        if bridge is None:
            return
        # Ports left behind by endpoints Docker never deleted (crash paths, protocol.md §4.3).
        for link in await self.nl.links():
            if link.master == bridge.index and link.name.startswith(HOST_END_PREFIX):
                await self.nl.delete_link(link.name)
        if cfg.get("owns_bridge", True):
            await self.nl.delete_link(cfg["bridge"])
        else:
            for sub in (*net.ipv4, *net.ipv6):
                if sub.gateway:
                    await self.nl.ipr.addr(
                        "del",
                        index=bridge.index,
                        address=str(ipaddress.ip_interface(sub.gateway).ip),
                        prefixlen=ipaddress.ip_interface(sub.gateway).network.prefixlen,
                    )

    # -- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        ep.ifname, ep.peer = endpoint_links(ep.id)
        ep.mac = ep.mac or mac_for(ep.address)
        await self.nl.create_veth(ep.ifname, ep.peer, net.config["mtu"], ep.mac, net.config["bridge"])

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        if net.internal:
            # Docker's bridge gives internal networks no gateway; Docker then skips
            # docker_gwbridge itself for internal networks.
            return JoinInfo(src_name=ep.peer)
        gw4, gw6 = gateway_ip(net, ep.address), gateway_ip(net, ep.address6)
        return JoinInfo(src_name=ep.peer, gateway=gw4, gateway6=gw6, disable_gateway=not (gw4 or gw6))

    async def leave(self, net: Network, ep: Endpoint) -> None:
        return None

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        host_end, _ = endpoint_links(ep.id)
        await self.nl.retire_link(host_end)
        if self._ports.get(net.id, {}).pop(ep.id, None):
            await self._apply_rules(net)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        self._ports.setdefault(net.id, {})[ep.id] = list(ep.ports)
        if ep.ports:
            await self.nl.set_hairpin(ep.ifname)
        await self._apply_rules(net)

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        if self._ports.get(net.id, {}).pop(ep.id, None) is not None:
            await self._apply_rules(net)

    # -- firewall ----------------------------------------------------------------------------

    def rules(self, net: Network) -> NetRules:
        cfg = net.config
        ports = tuple(p for eps in self._ports.get(net.id, {}).values() for p in eps)
        return NetRules(
            bridge=cfg["bridge"],
            subnets4=tuple(s.pool for s in net.ipv4),
            subnets6=tuple(s.pool for s in net.ipv6),
            internal=net.internal,
            icc=cfg["icc"],
            masquerade=cfg["masquerade"],
            ports=() if net.internal else ports,
        )

    async def _apply_rules(self, net: Network) -> None:
        await self.fw.set(net.id, self.rules(net))

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(self, nets: list[Network], eps: list[Endpoint]) -> None:
        by_net: dict[str, dict[str, list[PortMap]]] = {}
        for ep in eps:
            if ep.ports:
                by_net.setdefault(ep.network_id, {})[ep.id] = list(ep.ports)
        self._ports = by_net
        for net in nets:
            await self._ensure_bridge(net)
            self.fw.desired[net.id] = self.rules(net)
        await self.fw.apply()

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        return {n.config["bridge"] for n in nets} | {e.ifname for e in eps} | {e.peer for e in eps}

    async def close(self) -> None:
        return None
