"""Docker's plugin request and reply bodies, with Docker's own field names (docs/protocol.md §2, §3):
the whole wire contract, as moby's drivers/remote/api and ipams/remote/api keep it.

Decoding is strict about types and lenient about what Docker leaves out: a missing field or a
JSON `null` map becomes its empty default, and unknown fields are ignored (Docker adds some in
newer versions). Replies leave out (`omit_defaults`) what pynet has no value for, as Docker's
own drivers do; in CreateEndpoint's that matters: echoing a field Docker set makes it roll back.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from pynet.store.errors import InvalidRequest

# Docker's IDs: 64 hex digits (swarm's are 25 base-36 ones). They become store keys and link
# names (drivers/naming.py), where a '/', a space or an empty ID would make another key or no
# valid link, so anything else is refused at the door.
DOCKER_ID = re.compile(r"[0-9A-Za-z]{1,64}")


def decode(body: bytes, type_: type[msgspec.Struct]) -> Any:
    """An empty body (no-argument calls, retries after a connection error) decodes as `{}`."""
    if not body.strip():
        return msgspec.convert({}, type_)
    return msgspec.json.decode(body, type=type_)


class Request(msgspec.Struct):
    """A request naming a network or endpoint; msgspec reports a ValueError raised here as a
    ValidationError, like a wrong type."""

    def __post_init__(self) -> None:
        for field in ("NetworkID", "EndpointID"):
            value = getattr(self, field, None)
            if value is not None and not DOCKER_ID.fullmatch(value):
                raise ValueError(f"{field} must be a Docker ID (1 to 64 letters and digits), got {value!r}")


class Empty(msgspec.Struct):
    """`{}`: the reply of every call that only succeeds or fails."""


class ActivateResponse(msgspec.Struct):
    Implements: list[str]


# -- NetworkDriver -----------------------------------------------------------------------------


class CapabilitiesResponse(msgspec.Struct):
    Scope: str
    ConnectivityScope: str
    # Docker 28+ then asks GwAllocCheck before allocating a network's gateways; earlier
    # releases ignore the field (docs/protocol.md §2.1).
    GwAllocChecker: bool


class IPAMData(msgspec.Struct):
    AddressSpace: str = ""
    Pool: str = ""
    Gateway: str = ""
    AuxAddresses: dict[str, str] | None = None


class CreateNetworkRequest(Request):
    """Also swarm's AllocateNetwork, whose body has the same fields (its options are all
    strings, a subset of what this accepts)."""

    NetworkID: str
    Options: dict[str, Any] | None = None
    IPv4Data: list[IPAMData] | None = None
    IPv6Data: list[IPAMData] | None = None


class GwAllocCheckRequest(msgspec.Struct):
    """Docker 28+, before IPAM: the Options CreateNetwork will carry (the network has no ID yet)."""

    Options: dict[str, Any] | None = None


class GwAllocCheckResponse(msgspec.Struct):
    """True: Docker reserves no gateway address of that family, unless the user named one."""

    SkipIPv4: bool
    SkipIPv6: bool


class NetworkRequest(Request):
    """DeleteNetwork, FreeNetwork."""

    NetworkID: str


class EndpointInterface(msgspec.Struct, omit_defaults=True):
    """In CreateEndpoint's request and its reply, which holds only what Docker left empty."""

    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class CreateEndpointRequest(Request):
    NetworkID: str
    EndpointID: str
    Interface: EndpointInterface | None = None
    Options: dict[str, Any] | None = None


class CreateEndpointResponse(msgspec.Struct):
    Interface: EndpointInterface


class EndpointRequest(Request):
    """DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity."""

    NetworkID: str
    EndpointID: str


class EndpointInfoResponse(msgspec.Struct):
    Value: dict[str, Any]


class JoinRequest(Request):
    NetworkID: str
    EndpointID: str
    SandboxKey: str = ""
    Options: dict[str, Any] | None = None


class InterfaceName(msgspec.Struct):
    SrcName: str
    DstPrefix: str


class StaticRoute(msgspec.Struct):
    Destination: str
    RouteType: int
    NextHop: str = ""


class JoinResponse(msgspec.Struct, omit_defaults=True):
    InterfaceName: InterfaceName
    DisableGatewayService: bool  # no default: always sent
    Gateway: str = ""
    GatewayIPv6: str = ""
    StaticRoutes: list[StaticRoute] = []


class ExternalConnectivityRequest(Request):
    NetworkID: str
    EndpointID: str
    Options: dict[str, Any] | None = None


class AllocateNetworkResponse(msgspec.Struct):
    Options: dict[str, str]


# -- IpamDriver --------------------------------------------------------------------------------


class IpamCapabilitiesResponse(msgspec.Struct):
    RequiresMACAddress: bool
    RequiresRequestReplay: bool


class AddressSpacesResponse(msgspec.Struct):
    LocalDefaultAddressSpace: str
    GlobalDefaultAddressSpace: str


class RequestPoolRequest(msgspec.Struct):
    AddressSpace: str = ""
    Pool: str = ""
    SubPool: str = ""
    Options: dict[str, str] | None = None
    V6: bool = False


class RequestPoolResponse(msgspec.Struct):
    PoolID: str
    Pool: str
    Data: dict[str, str]


class ReleasePoolRequest(msgspec.Struct):
    PoolID: str


class RequestAddressRequest(msgspec.Struct):
    PoolID: str
    Address: str = ""
    Options: dict[str, str] | None = None


class RequestAddressResponse(msgspec.Struct):
    Address: str
    Data: dict[str, str]


class ReleaseAddressRequest(msgspec.Struct):
    PoolID: str
    Address: str


# -- Docker's port-mapping labels (CreateEndpoint, Join and ProgramExternalConnectivity) ----------

PORTMAP_OPTION = "com.docker.network.portmap"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


class PortBinding(msgspec.Struct):
    """One entry of `com.docker.network.portmap`; HostPort 0 means "pick one"."""

    Proto: int = 6
    IP: str = ""
    Port: int = 0
    HostIP: str = ""
    HostPort: int = 0
    HostPortEnd: int = 0


def port_bindings(options: dict[str, Any] | None) -> list[PortBinding]:
    raw = (options or {}).get(PORTMAP_OPTION) or []
    try:
        return msgspec.convert(raw, list[PortBinding])
    except msgspec.ValidationError as e:  # its path starts at the option, which it does not name
        raise InvalidRequest(f"pynet: invalid Options.{PORTMAP_OPTION}: {e}") from None
