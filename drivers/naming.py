"""Link names and addresses derived from IDs alone, shared by the backends.

Every link pynet makes is a prefix plus part of an ID (or a VNI), so after a crash a link is
found, and removed, by its name alone: no record is needed to know it is pynet's.
"""

from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base.py imports the config types, which import these names
    from pynet.drivers.base import Network

BRIDGE_PREFIX = "pnb-"  # a bridge network's bridge
HOST_END_PREFIX = "pnh-"  # the host end of an endpoint's veth (bridge and VXLAN)
PEER_PREFIX = "pnc-"  # the container end of an endpoint's veth
VXLAN_BRIDGE_PREFIX = "pno-"  # + VNI: a VXLAN network's bridge
VXLAN_DEVICE_PREFIX = "pnx-"  # + VNI: its VXLAN device
MACVLAN_PREFIX = "pnv-"  # a macvlan endpoint
SHIM_PREFIX = "pns-"  # a macvlan network's host shim
INTERNAL_PREFIX = "pnm-"  # an --internal macvlan network's port-less parent
ID_CHARS = 11  # IFNAMSIZ (15) less a 4-character prefix


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:ID_CHARS]


def endpoint_links(endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) of an endpoint's veth."""
    return HOST_END_PREFIX + endpoint_id[:ID_CHARS], PEER_PREFIX + endpoint_id[:ID_CHARS]


def vxlan_bridge(vni: int) -> str:
    return f"{VXLAN_BRIDGE_PREFIX}{vni}"


def vxlan_device(vni: int) -> str:
    return f"{VXLAN_DEVICE_PREFIX}{vni}"


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


def vni_mac(vni: int) -> str:
    """A VXLAN gateway bridge's MAC: the same on every host of the segment."""
    return "02:70:78:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big"))


def gateway_ip(net: Network, address: str) -> str:
    """The gateway (bare IP) of the subnet holding `address`."""
    if not address:
        return ""
    ip = ipaddress.ip_interface(address).ip
    for sub in (*net.ipv4, *net.ipv6):
        if sub.gateway and ip in ipaddress.ip_network(sub.pool):
            return str(ipaddress.ip_interface(sub.gateway).ip)
    return ""
