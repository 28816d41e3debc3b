"""The bridge backend (the default mode): Docker's bridge driver, as a plugin.

One pynet bridge per network (drivers/segment.py does the kernel work); this module holds the
mode's options and what it resolves at create.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from msgspec.structs import replace

from pynet.drivers.base import Draft, Endpoint, Failures, MtuLimit, Network, config_of
from pynet.drivers.config import BridgeConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.naming import BRIDGE_PREFIX, bridge_mac, bridge_name
from pynet.drivers.netlink import HostView, Netlink
from pynet.drivers.options import Option, ifname, int_in, ipv4_address, parse_bool, parse_options
from pynet.drivers.ports import HostPorts
from pynet.drivers.segment import Segment, SegmentEndpoints, check_families

log = logging.getLogger("pynet.bridge")

MTU = "com.docker.network.driver.mtu"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
ICC = "com.docker.network.bridge.enable_icc"
HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
# The options a bridged segment has in both the bridge and VXLAN modes.
SEGMENT_OPTIONS = [
    Option(MTU, int_in(68, 65535), None, ("mtu",)),
    Option(MASQUERADE, parse_bool, True, ("enable_ip_masquerade", "masquerade")),
    Option(ICC, parse_bool, True, ("enable_icc", "icc")),
    Option(HOST_BINDING, ipv4_address, "", ("host_binding_ipv4",)),
]
OPTIONS = [Option("com.docker.network.bridge.name", ifname, None, ("bridge_name",)), *SEGMENT_OPTIONS]


def segment_settings(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """The `BridgedConfig` fields of parsed `SEGMENT_OPTIONS`."""
    return {
        "mtu": parsed[MTU],  # None: resolved at create
        "masquerade": parsed[MASQUERADE],
        "icc": parsed[ICC],
        "host_binding_ipv4": parsed[HOST_BINDING],
    }


def mtu_limit(cfg: BridgeConfig, host: HostView) -> MtuLimit | None:
    """Egress leaves through the default route's link."""
    return MtuLimit(host.uplink) if host.uplink else None


class BridgeBackend(SegmentEndpoints):
    """The segment alone; its endpoint calls are SegmentEndpoints'."""

    mode: ClassVar[str] = "bridge"
    link_prefixes: ClassVar[tuple[str, ...]] = (BRIDGE_PREFIX, *Segment.link_prefixes)
    publishes_ports: ClassVar[bool] = True
    internal_gateway: ClassVar[bool] = True

    def __init__(self, netlink: Netlink, firewall: Firewall, ports: HostPorts) -> None:
        self.nl = netlink
        self.segment = Segment(netlink, firewall, ports)

    def parse_options(self, options: Mapping[str, str], net: Draft) -> BridgeConfig:
        check_families(self.mode, net)
        cfg = parse_options(self.mode, OPTIONS, options)
        name = cfg["com.docker.network.bridge.name"] or bridge_name(net.id)
        return BridgeConfig(bridge=name, **segment_settings(cfg))

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, net: Network) -> BridgeConfig:
        cfg = config_of(net, BridgeConfig)
        mtu = cfg.mtu
        if mtu is None:
            uplink = await self.nl.default_link()
            mtu = uplink.mtu if uplink else 1500
        cfg = replace(cfg, mtu=mtu, owns_bridge=await self.segment.owns(cfg))
        await self.segment.create(replace(net, config=cfg), bridge_mac(net.id))
        log.info("bridge ready", extra={"network": net.id, "bridge": cfg.bridge, "mtu": mtu, "internal": net.internal})
        return cfg

    async def delete_network(self, net: Network) -> None:
        await self.segment.delete(net)

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(self, nets: list[Network], eps: list[Endpoint], view: HostView) -> Failures:
        return await self.segment.reconcile(nets, eps, lambda n: bridge_mac(n.id), view)

    async def restore(self, net: Network, eps: list[Endpoint]) -> None:
        await self.segment.restore(net, bridge_mac(net.id), eps)

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        return self.segment.expected_links(nets, eps)

    async def close(self) -> None:
        return None
