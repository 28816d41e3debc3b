"""The records every backend works on, and the one interface all backends implement.

Records are msgspec Structs so the plugin can persist them in the store as they are, and a
restarted pynet rebuilds the kernel from them (Docker never replays CreateNetwork).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import msgspec


class Subnet(msgspec.Struct, frozen=True):
    """One IPAMData entry of CreateNetwork; addresses are CIDR strings, as Docker sends them."""

    pool: str
    gateway: str = ""
    aux: dict[str, str] = {}


class PortMap(msgspec.Struct, frozen=True):
    """One published port (`-p [host_ip:]host_port:port/proto`) resolved to a container address."""

    proto: str  # "tcp" | "udp" | "sctp"
    host_ip: str  # "" = every host address of the family
    host_port: int
    container_ip: str
    container_port: int


class Network(msgspec.Struct):
    id: str
    mode: str  # "bridge" | "macvlan" | "vxlan"
    options: dict[str, str]  # the user's `-o` options, as given
    config: dict[str, Any]  # the backend's parsed and resolved settings (bridge name, MTU, ...)
    ipv4: list[Subnet] = []
    ipv6: list[Subnet] = []
    internal: bool = False
    enable_ipv6: bool = False


class Endpoint(msgspec.Struct):
    id: str
    network_id: str
    address: str = ""  # CIDR
    address6: str = ""  # CIDR
    mac: str = ""
    ifname: str = ""  # the host-side link (bridge port, or "" when the whole link moves)
    peer: str = ""  # the link handed to Docker in Join (SrcName)
    ports: list[PortMap] = []
    sandbox: str = ""
    joined: bool = False


class JoinInfo(msgspec.Struct):
    """What Join answers; gateways are bare IPs (no prefix), unlike CreateNetwork's."""

    src_name: str
    gateway: str = ""
    gateway6: str = ""
    disable_gateway: bool = False
    static_routes: list[dict[str, Any]] = []


class Backend(Protocol):
    """One network mode. Every method is idempotent: Docker retries after connection errors,
    and delete paths must tolerate objects that are already gone."""

    mode: ClassVar[str]
    # Name prefixes of the links this mode creates in the host namespace; a link with one of
    # them that no backend expects (expected_links) is an orphan, deleted at start.
    link_prefixes: ClassVar[tuple[str, ...]]
    # Whether `-p` means anything here (not on macvlan: containers answer on their own address).
    publishes_ports: ClassVar[bool]

    def parse_options(self, options: dict[str, str], net: Network) -> dict[str, Any]:
        """Validate the user's `-o` options for this mode and resolve defaults into `config`.

        Raises `InvalidRequest` naming the option and value. Called before anything is created.
        """
        ...

    async def create_network(self, net: Network) -> None: ...

    async def delete_network(self, net: Network) -> None: ...

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        """Create the link(s); fills `ep.ifname`, `ep.peer` and `ep.mac` (if Docker gave none)."""
        ...

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo: ...

    async def leave(self, net: Network, ep: Endpoint) -> None: ...

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None: ...

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        """Publish `ep.ports` (already resolved by the caller)."""
        ...

    async def revoke_external(self, net: Network, ep: Endpoint) -> None: ...

    async def reconcile(self, nets: list[Network], eps: list[Endpoint]) -> None:
        """Make the kernel match these records (all of this mode on this host)."""
        ...

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        """The host-namespace links these records (of this mode) account for."""
        ...

    async def close(self) -> None:
        """Stop background work at shutdown; the kernel state stays, containers keep working."""
        ...
