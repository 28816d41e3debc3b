"""Docker's view for gc: what Docker has in use, from its Engine API through plugin/engine (CLI
only: the daemon never calls Docker from a request)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pynet.plugin.engine import Engine, Network
from pynet.plugin.ops.gc import DockerView, bare


def _uses_pynet(n: Network) -> bool:
    return "pynet" in n.Driver or "pynet" in n.IPAM.Driver


async def docker_view(docker_host: str, pynet_networks: Iterable[str]) -> DockerView:
    """Networks, endpoints and addresses Docker has in use: every network that is pynet's (by
    ID, driver or IPAM driver) with its attachments, and every container's attachments.

    Raises EngineError when Docker cannot be asked, ValueError for a DOCKER_HOST that is no
    Docker address."""
    ours = set(pynet_networks)
    async with Engine(docker_host) as engine:
        listed = await engine.networks()
        relevant = [await engine.network(n.Id) for n in listed if n.Id in ours or _uses_pynet(n)]
        containers = await engine.containers()
    on_networks = [e for n in relevant for e in n.Containers.values()]
    on_containers = [e for c in containers for e in c.NetworkSettings.Networks.values()]
    found = [a for e in on_networks for a in (e.IPv4Address, e.IPv6Address)]
    found += [a for e in on_containers for a in (e.IPAddress, e.GlobalIPv6Address, e.Gateway)]
    configs = [c for n in relevant for c in n.IPAM.Config]
    found += [a for c in configs for a in (c.Gateway, *c.AuxiliaryAddresses.values())]
    return DockerView(
        networks=sorted(n.Id for n in listed),
        endpoints=sorted(({e.EndpointID for e in on_networks} | {e.EndpointID for e in on_containers}) - {""}),
        addresses=sorted({bare(a) for a in found if a}),
        subnets=sorted({str(ipaddress.ip_network(c.Subnet, strict=False)) for c in configs if c.Subnet}),
    )
