"""Each mode's parsed and resolved settings: a tagged union, stored in a network's record.

The tag (`mode`) sits in the stored JSON, so a record decodes to the right type on its own.
Option parsing (drivers/options.py tables) makes these from the user's `-o` options; values
only known once the kernel is asked (an MTU derived from a link, the local VTEP, whether pynet
made a bridge or a sub-interface) stay None/empty until the backend's `create_network`
resolves them and returns a copy with them filled in. Frozen: a backend never changes a record
behind its owner's back.
"""

from __future__ import annotations

import msgspec


class BridgedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge and VXLAN modes share: one L2 segment whose gateway a host link holds.
    Containers are veths on a pynet bridge, or, with `lower`, macvlan links of that device."""

    bridge: str  # the link holding the gateway: the bridge, or with `lower` a macvlan link of it
    mtu: int | None = None  # None: derived at create (uplink, or underlay less the VXLAN header)
    masquerade: bool = True
    icc: bool = True
    host_binding_ipv4: str = ""
    # Whether pynet made the bridge (False: a user's `bridge_name` that existed before, which
    # pynet leaves in place); None until create looks.
    owns_bridge: bool | None = None
    # The device whose macvlan links (bridge mode) the gateway link and the containers' links
    # are, instead of a bridge with veths: a VXLAN network's own device (drivers/vxlan.py says
    # why). "": a bridge, as every bridge network and VXLAN networks recorded before.
    lower: str = ""

    def claims(self) -> dict[str, str | int]:
        """What no two networks of one host may share (drivers/claims.py reserves them)."""
        return {"bridge": self.bridge}

    def links(self) -> tuple[str, ...]:
        """The host links these settings name."""
        return (self.bridge,)

    def describe(self) -> str:
        return f"bridge={self.bridge}"


class BridgeConfig(BridgedConfig, frozen=True, kw_only=True, tag="bridge", tag_field="mode"):
    pass


class VxlanConfig(BridgedConfig, frozen=True, kw_only=True, tag="vxlan", tag_field="mode"):
    vni: int
    device: str  # the VXLAN device: a port of `bridge`, or the `lower` of its links
    port: int = 4789
    underlay: str = ""  # as given: an interface or an address; "" for the daemon's default
    peers: tuple[str, ...] = ()  # static remote VTEPs
    local: str = ""  # the local VTEP address, resolved at create
    # Replicated to every host by the cluster agent (drivers/vnis.py says when it is on).
    cluster: bool = False

    def claims(self) -> dict[str, str | int]:
        # The VNI first: its bridge and device are named after it, so a clash is the VNI's.
        return {"vni": self.vni, "bridge": self.bridge}

    def links(self) -> tuple[str, ...]:
        return (self.bridge, self.device)

    def describe(self) -> str:
        return f"bridge={self.bridge} vni={self.vni}"


class MacvlanConfig(msgspec.Struct, frozen=True, kw_only=True, tag="macvlan", tag_field="mode"):
    parent: str
    macvlan_mode: str = "bridge"
    mtu: int | None = None  # None: the parent's, resolved at create
    host_shim: str = ""
    # Whether pynet made the parent (an 802.1q sub-interface) and so deletes it with the last
    # network on it; None until create looks.
    vlan_created: bool | None = None
    cluster: bool = False  # `-o cluster=true`: replicated to every host by the cluster agent

    def claims(self) -> dict[str, str | int]:
        return {}  # networks share a parent; drivers/macvlan.py checks how

    def links(self) -> tuple[str, ...]:
        return (self.parent,)

    def describe(self) -> str:
        return f"parent={self.parent}"


Config = BridgeConfig | MacvlanConfig | VxlanConfig
