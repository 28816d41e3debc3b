"""msgspec models of the Engine API replies pynet reads, holding only the fields it uses, and
the decoding of the event stream. Where API versions differ, `normalise_container` makes them
look alike."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from pynet.plugin.engine.errors import EngineError

T = TypeVar("T")


# -- models: only the fields pynet reads; nulls in a reply are dropped before decoding, so a
# null map or list reads as its empty default -------------------------------------------------


class Version(msgspec.Struct):
    ApiVersion: str
    MinAPIVersion: str = "1.12"  # what 20.10 reports
    Version: str = ""


class IpamConfig(msgspec.Struct, omit_defaults=True):
    Subnet: str = ""
    Gateway: str = ""
    IPRange: str = ""
    AuxiliaryAddresses: dict[str, str] = {}


class Ipam(msgspec.Struct, omit_defaults=True):
    Driver: str = "default"
    Options: dict[str, str] = {}
    Config: list[IpamConfig] = []


class NetworkEndpoint(msgspec.Struct):
    """An entry of a network's `Containers` (filled by inspect only, not by the list)."""

    Name: str = ""
    EndpointID: str = ""
    IPv4Address: str = ""  # with its prefix length: "10.1.0.2/24"
    IPv6Address: str = ""
    MacAddress: str = ""


class NetworkSpec(msgspec.Struct, omit_defaults=True):
    """The body of `POST /networks/create`."""

    Name: str
    Driver: str = "bridge"
    Internal: bool = False
    # API 1.48+ (Docker 28): False is an IPv6-only network. None: the engine does not say
    # (older ones have IPv4 on every network), and a create leaves it out.
    EnableIPv4: bool | None = None
    EnableIPv6: bool = False
    Labels: dict[str, str] = {}
    Options: dict[str, str] = {}
    IPAM: Ipam = msgspec.field(default_factory=Ipam)


class Network(NetworkSpec, kw_only=True):
    """`GET /networks/{id}`: what it was created with, and more."""

    Id: str
    Scope: str = ""
    Containers: dict[str, NetworkEndpoint] = {}


class Endpoint(msgspec.Struct):
    """An entry of a container's `NetworkSettings.Networks`."""

    NetworkID: str = ""
    EndpointID: str = ""
    IPAddress: str = ""  # without prefix length
    GlobalIPv6Address: str = ""
    Gateway: str = ""
    Aliases: list[str] = []  # the user's --network-alias values only (see normalise_container)
    DNSNames: list[str] = []  # every name Docker's DNS answers for it on that network


class NetworkSettings(msgspec.Struct):
    Networks: dict[str, Endpoint] = {}


class State(msgspec.Struct):
    Running: bool = False


class ContainerConfig(msgspec.Struct):
    Hostname: str = ""


class Container(msgspec.Struct):
    """`GET /containers/{id}/json`; Name without Docker's leading "/"."""

    Id: str
    Name: str = ""
    State: State = msgspec.field(default_factory=State)
    Config: ContainerConfig = msgspec.field(default_factory=ContainerConfig)
    NetworkSettings: NetworkSettings = msgspec.field(default_factory=NetworkSettings)


class ContainerSummary(msgspec.Struct):
    """An entry of `GET /containers/json?all=1`; its endpoints have no Aliases nor DNSNames."""

    Id: str
    Names: list[str] = []
    State: str = ""
    NetworkSettings: NetworkSettings = msgspec.field(default_factory=NetworkSettings)


class Created(msgspec.Struct):
    Id: str


class Actor(msgspec.Struct):
    ID: str = ""
    Attributes: dict[str, str] = {}  # e.g. name, type (a network's driver), container


class Event(msgspec.Struct):
    """One line of `GET /events`: Type "network", Action "create", Actor.ID the network's ID."""

    Type: str = ""
    Action: str = ""
    Actor: Actor = msgspec.field(default_factory=Actor)
    timeNano: int = 0


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def decode(body: bytes, type_: type[T]) -> T:
    """BODY (JSON) as TYPE; raises EngineError when it does not fit."""
    try:
        return msgspec.convert(_without_nulls(msgspec.json.decode(body)), type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise EngineError(f"Docker's reply does not parse as {type_.__name__}: {err}") from None


def normalise_container(c: Container) -> Container:
    """The one place where API versions differ in what pynet reads (measured on Docker 20.10,
    26.1 and 28.5). Below API 1.45 (Docker 20.10, or a newer dockerd asked at 1.41) an
    endpoint's `Aliases` also holds the container's short ID; from 1.45 only the user's
    aliases. `DNSNames` (name, aliases, short ID) comes with Docker 25 (API 1.44) at any API
    version asked, and never from 20.10: there it is filled in the same way. `Name` loses
    Docker's leading "/"."""
    name, short_id = c.Name.lstrip("/"), c.Id[:12]
    networks = {}
    for net, e in c.NetworkSettings.Networks.items():
        aliases = [a for a in e.Aliases if a != short_id]
        names = e.DNSNames or [name, *aliases, short_id]
        networks[net] = msgspec.structs.replace(e, Aliases=aliases, DNSNames=names)
    return msgspec.structs.replace(c, Name=name, NetworkSettings=NetworkSettings(Networks=networks))


class EventDecoder:
    """dockerd writes one JSON object and a newline per event, but a read may end mid-line or
    hold several lines: FEED keeps the unfinished line for the next chunk."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[Event]:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [decode(line, Event) for line in lines if line.strip()]
