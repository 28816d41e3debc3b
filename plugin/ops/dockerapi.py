"""Docker's view for gc: what Docker has in use, from its Engine API (CLI only: the daemon
never calls Docker from a request)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from pynet.plugin.ops.gc import DockerView, bare

T = TypeVar("T")

DOCKER_TIMEOUT = 10.0


class _IpamConfig(msgspec.Struct):
    Subnet: str = ""
    Gateway: str = ""
    AuxiliaryAddresses: dict[str, str] | None = None


class _Ipam(msgspec.Struct):
    Driver: str = ""
    Config: list[_IpamConfig] | None = None


class _Attached(msgspec.Struct):
    """An entry of a network's `Containers` or of a container's `NetworkSettings.Networks`."""

    EndpointID: str = ""
    IPv4Address: str = ""
    IPv6Address: str = ""
    IPAddress: str = ""
    GlobalIPv6Address: str = ""
    Gateway: str = ""

    def addresses(self) -> set[str]:
        found = (self.IPv4Address, self.IPv6Address, self.IPAddress, self.GlobalIPv6Address, self.Gateway)
        return {bare(a) for a in found if a}


class _Network(msgspec.Struct):
    Id: str
    Driver: str = ""
    IPAM: _Ipam | None = None
    Containers: dict[str, _Attached] | None = None

    def uses_pynet(self) -> bool:
        return "pynet" in self.Driver or (self.IPAM is not None and "pynet" in self.IPAM.Driver)


class _Settings(msgspec.Struct):
    Networks: dict[str, _Attached] | None = None


class _Container(msgspec.Struct):
    NetworkSettings: _Settings | None = None


def _session(docker_host: str) -> tuple[aiohttp.ClientSession, str]:
    """A session and base URL for `unix:///path` or `tcp://host:port` (plain HTTP)."""
    url = urlsplit(docker_host)
    timeout = aiohttp.ClientTimeout(total=DOCKER_TIMEOUT)
    if url.scheme == "unix":
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=url.path), timeout=timeout), "http://docker"
    if url.scheme in ("tcp", "http"):
        return aiohttp.ClientSession(timeout=timeout), f"http://{url.netloc}"
    raise ValueError(f"pynet: --docker-host must be unix:///path or tcp://host:port, got {docker_host!r}")


async def docker_view(docker_host: str, pynet_networks: Iterable[str]) -> DockerView:
    """Networks, endpoints and addresses Docker has in use: every network that is pynet's (by
    ID, driver or IPAM driver) with its attachments, and every container's attachments.

    Raises OSError, aiohttp.ClientError, msgspec.DecodeError or TimeoutError when Docker
    cannot be asked."""
    ours = set(pynet_networks)
    session, base = _session(docker_host)
    async with session:

        async def get(path: str, type_: type[T]) -> T:
            async with session.get(base + path) as r:
                if r.status != 200:
                    raise aiohttp.ClientError(f"Docker answered {r.status} to GET {path}: {await r.text()}")
                return msgspec.json.decode(await r.read(), type=type_)

        listed = await get("/networks", list[_Network])
        relevant = [await get(f"/networks/{quote(n.Id)}", _Network) for n in listed if n.Id in ours or n.uses_pynet()]
        containers = await get("/containers/json?all=1", list[_Container])
    attached = [a for n in relevant for a in (n.Containers or {}).values()]
    attached += [a for c in containers for a in ((c.NetworkSettings and c.NetworkSettings.Networks) or {}).values()]
    configs = [c for n in relevant for c in ((n.IPAM and n.IPAM.Config) or [])]
    reserved = {bare(a) for c in configs for a in (c.Gateway, *(c.AuxiliaryAddresses or {}).values()) if a}
    return DockerView(
        networks=sorted(n.Id for n in listed),
        endpoints=sorted({a.EndpointID for a in attached} - {""}),
        addresses=sorted(reserved.union(*(a.addresses() for a in attached))),
        subnets=sorted({str(ipaddress.ip_network(c.Subnet, strict=False)) for c in configs if c.Subnet}),
    )
