"""A pynet bridge with its veth endpoints, firewall rules and published ports: one L2 segment.

The bridge mode is this segment alone; the VXLAN mode is this segment plus a VXLAN device and a
control plane (drivers/vxlan.py). The segment holds the gateway address(es) on a host link.
Each endpoint is a veth pair whose host end is a bridge port and whose other end Docker moves
into the container; or, where the settings name a `lower` device (VXLAN), there is no bridge:
the gateway link and every endpoint are macvlan links of that device (bridge mode), and Docker
moves the endpoint's whole link. Egress is masqueraded, networks are isolated from each other
and from Docker's own bridges, and published ports are DNAT rules, all in `drivers.firewall`
(which rewrites pynet's chains in one restore).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from pynet.drivers.base import (
    Draft,
    Endpoint,
    Failures,
    JoinInfo,
    Network,
    PortMap,
    by_network,
    config_of,
    restore_each,
    undo_on_failure,
)
from pynet.drivers.config import BridgedConfig
from pynet.drivers.firewall import Firewall, NetRules
from pynet.drivers.naming import HOST_END_PREFIX, PEER_PREFIX, endpoint_links, gateway_ip, mac_for
from pynet.drivers.netlink import HostView, Netlink, write_sysctl
from pynet.drivers.ports import HostPorts
from pynet.store.errors import Conflict, InvalidRequest, PynetError

log = logging.getLogger("pynet.segment")


def check_families(mode: str, net: Draft) -> None:
    """A bridged network routes: it needs an address family (Docker's bridge refuses the same)."""
    if not (net.enable_ipv4 or net.enable_ipv6):
        raise InvalidRequest(
            f"pynet: a {mode} network needs IPv4 or IPv6, and com.docker.network.enable_ipv4 and "
            "com.docker.network.enable_ipv6 are both false (add --ipv6 to --ipv4=false)"
        )


def resolved_mtu(cfg: BridgedConfig) -> int:
    """Records reach the kernel only after create_network resolved their MTU."""
    if cfg.mtu is None:
        raise PynetError(f"pynet: bridge {cfg.bridge}: the record has no MTU (create_network resolves it)")
    return cfg.mtu


class Segment:
    """The kernel side of bridged networks (records whose config is a `BridgedConfig`)."""

    # The veth ends; each mode that holds a segment lists them with its own link prefixes.
    link_prefixes: tuple[str, ...] = (HOST_END_PREFIX, PEER_PREFIX)

    def __init__(self, netlink: Netlink, firewall: Firewall, ports: HostPorts) -> None:
        self.nl = netlink
        self.fw = firewall
        # The sockets holding the published host ports, one set per daemon (shared by modes).
        self.ports = ports
        # Published ports per network, per endpoint: the firewall is rewritten per network.
        self._ports: dict[str, dict[str, list[PortMap]]] = {}

    # -- networks ----------------------------------------------------------------------------

    async def owns(self, cfg: BridgedConfig) -> bool:
        """Whether pynet makes the bridge (it does not exist yet) or adopts a user's one; once
        recorded, the record's answer (a retried create finds the bridge pynet made)."""
        existing = await self.nl.link(cfg.bridge)
        kind = "macvlan" if cfg.lower else "bridge"
        if existing is not None and existing.kind != kind:
            raise Conflict(
                f"pynet: option com.docker.network.bridge.name: {cfg.bridge!r} exists and is not a {kind}"
            )
        return cfg.owns_bridge if cfg.owns_bridge is not None else existing is None

    async def create(self, net: Network, mac: str) -> None:
        """Bridge, addresses and rules of a resolved record; undoes itself when it fails."""
        async with undo_on_failure(lambda: self.delete(net)):
            await self.ensure(net, mac)
            await self._apply_rules(net)

    async def ensure(self, net: Network, mac: str, view: HostView | None = None) -> None:
        """`mac` is set only on a bridge pynet owns: a user's bridge keeps its own. With `view`
        (reconcile's one look at the host), what it shows in place is not asked for again."""
        cfg = config_of(net, BridgedConfig)
        if cfg.lower:
            await self.nl.ensure_macvlan(cfg.bridge, cfg.lower, resolved_mtu(cfg), mac, view)
        else:
            await self.nl.ensure_bridge(cfg.bridge, resolved_mtu(cfg), mac if cfg.owns_bridge else "", view)
        for sub in (*net.ipv4, *net.ipv6):
            if sub.gateway:
                await self.nl.ensure_address(cfg.bridge, sub.gateway, view=view)
        write_sysctl("net/ipv4/ip_forward", "1")
        if net.ipv6:
            write_sysctl("net/ipv6/conf/all/forwarding", "1")
        # DNAT of 127.0.0.1:<port> to a container needs local-source routing on the bridge.
        write_sysctl(f"net/ipv4/conf/{cfg.bridge}/route_localnet", "1")

    async def delete(self, net: Network) -> None:
        cfg = config_of(net, BridgedConfig)
        for ep_id in self._ports.pop(net.id, {}):
            self.ports.release(ep_id)
        await self.fw.remove(net.id)
        await self.nl.settle()
        bridge = await self.nl.link(cfg.bridge)
        if bridge is None:
            return
        # Ports left behind by endpoints Docker never deleted (crash paths, docs/protocol.md §4.3);
        # a lower's links go with it.
        for link in [] if cfg.lower else await self.nl.ports(bridge.index):
            if link.name.startswith(HOST_END_PREFIX):
                await self.nl.delete_link(link.name)
        if cfg.owns_bridge:
            await self.nl.delete_link(cfg.bridge)
        else:
            for sub in (*net.ipv4, *net.ipv6):
                if sub.gateway:
                    await self.nl.delete_address(cfg.bridge, sub.gateway)

    # -- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        cfg = config_of(net, BridgedConfig)
        ep.ifname, ep.peer = endpoint_links(ep.id)
        ep.mac = ep.mac or mac_for(ep.address)
        if cfg.lower:
            ep.ifname = ""  # the whole link moves
            await self.nl.create_macvlan(ep.peer, cfg.lower, resolved_mtu(cfg), ep.mac)
        else:
            await self.nl.create_veth(ep.ifname, ep.peer, resolved_mtu(cfg), ep.mac, cfg.bridge)

    def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        if net.internal:
            # Docker's bridge gives internal networks no gateway; Docker then skips
            # docker_gwbridge itself for internal networks. With no default route, only a /32
            # through the gateway reaches the resolver (a local address of the host, docs/protocol.md §6.1).
            return JoinInfo(src_name=ep.peer, static_routes=self._resolver_route(net, ep))
        gw4, gw6 = gateway_ip(net, ep.address), gateway_ip(net, ep.address6)
        return JoinInfo(src_name=ep.peer, gateway=gw4, gateway6=gw6, disable_gateway=not (gw4 or gw6))

    def _resolver_route(self, net: Network, ep: Endpoint) -> list[dict[str, Any]]:
        """A NEXTHOP route (RouteType 0, docs/protocol.md §2.6) to the resolver the firewall lets in."""
        resolver = self.fw.dns_address
        if not resolver:
            return []
        v6 = ipaddress.ip_address(resolver).version == 6
        gateway = gateway_ip(net, ep.address6 if v6 else ep.address)
        if not gateway:
            return []
        return [{"Destination": f"{resolver}/{128 if v6 else 32}", "RouteType": 0, "NextHop": gateway}]

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        # A macvlan link is back in the host when Docker could move it back, else it goes
        # with the container's namespace.
        host_end, peer = endpoint_links(ep.id)
        await self.nl.retire_link(peer if config_of(net, BridgedConfig).lower else host_end)
        await self.revoke_external(net, ep)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        self._ports.setdefault(net.id, {})[ep.id] = list(ep.ports)
        if ep.ports and ep.ifname:
            await self.nl.set_hairpin(ep.ifname)
        await self._apply_rules(net)

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        """Rules first, then the sockets: the port is never free while DNAT still takes it."""
        if self._ports.get(net.id, {}).pop(ep.id, None) is not None:
            await self._apply_rules(net)
        self.ports.release(ep.id)

    # -- firewall ----------------------------------------------------------------------------

    def rules(self, net: Network) -> NetRules:
        cfg = config_of(net, BridgedConfig)
        ports = tuple(p for eps in self._ports.get(net.id, {}).values() for p in eps)
        return NetRules(
            bridge=cfg.bridge,
            subnets4=tuple(s.pool for s in net.ipv4),
            subnets6=tuple(s.pool for s in net.ipv6),
            internal=net.internal,
            icc=cfg.icc,
            masquerade=cfg.masquerade,
            ports=() if net.internal else ports,
            ipv4=net.enable_ipv4,
            bridged=not cfg.lower,
        )

    async def _apply_rules(self, net: Network) -> None:
        await self.fw.set(net.id, self.rules(net))

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(
        self, nets: list[Network], eps: list[Endpoint], mac_of: Callable[[Network], str], view: HostView
    ) -> Failures:
        """Bridges back (`mac_of` a network's bridge MAC), judged against `view`, one look at
        the host for every network; the rules are staged for serve's one apply of every mode's
        (a restore of 250 networks' rules took 2.7 s per family). A network whose bridge failed
        keeps its rules, which name the bridge and wait for it."""
        self._ports = {}
        for net_id, mine in by_network(eps).items():
            self._keep_ports(net_id, mine)
        failed = await restore_each(nets, lambda net: self.ensure(net, mac_of(net), view))
        self.fw.stage({net.id: self.rules(net) for net in nets})
        self._retake(eps)
        return failed

    async def restore(self, net: Network, mac: str, eps: list[Endpoint]) -> None:
        """One network's bridge and rules, as reconcile makes them."""
        self._keep_ports(net.id, eps)
        await self.ensure(net, mac)
        await self._apply_rules(net)

    def _retake(self, eps: list[Endpoint]) -> None:
        """The host ports running containers publish, bound again (they died with pynet)."""
        for ep in eps:
            if not ep.ports:
                continue
            lost = self.ports.retake(ep.id, ep.ports)
            if lost:
                # Taken while pynet was down; the container's DNAT still gets the traffic.
                log.warning(
                    "published host port now bound by another process",
                    extra={"network": ep.network_id, "endpoint": ep.id, "ports": ",".join(lost)},
                )

    def _keep_ports(self, net_id: str, eps: list[Endpoint]) -> None:
        self._ports[net_id] = {ep.id: list(ep.ports) for ep in eps if ep.ports}

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        bridges = {config_of(n, BridgedConfig).bridge for n in nets}
        return bridges | {e.ifname for e in eps if e.ifname} | {e.peer for e in eps}


class SegmentEndpoints:
    """The endpoint calls of a mode whose containers are veths on a `Segment` (bridge and
    VXLAN): the same for both, so held once here; VXLAN adds its registrations around them."""

    segment: Segment

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        await self.segment.create_endpoint(net, ep)

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        return self.segment.join(net, ep)

    async def leave(self, net: Network, ep: Endpoint) -> None:
        # Docker takes the container end back; the pair goes at DeleteEndpoint. Its ports go
        # now: Docker revokes them first only for the sandbox's gateway endpoint.
        await self.segment.revoke_external(net, ep)

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        await self.segment.delete_endpoint(net, ep)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        await self.segment.program_external(net, ep)

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        await self.segment.revoke_external(net, ep)
