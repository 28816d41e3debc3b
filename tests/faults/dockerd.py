"""The fault tier's dockerd: the plugin calls Docker makes, and what it does when one fails.

Modelled on docs/protocol.md: a connection error is retried (§1.5) and a retry after a request
that was delivered carries an empty body (Go drained the buffer), which pynet refuses, so a
call that crashed the daemon fails for Docker; a call refused before it was sent (the daemon
was already dead) is retried with its body. A failed create is rolled back the way libnetwork
does (§2.2, §2.4, §3.2); errors of delete paths are only logged (§2.3, §2.5, §3.1), and Docker
goes on. A "container" is a network namespace the veth is moved into, as after Join (§2.6).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.kernel.test_serve import sh

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


async def post(sock: Path, method: str, data: bytes) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.post(f"http://p/{method}", data=data) as r:
            return r.status, await r.json(content_type=None)


@dataclass
class Net:
    id: str
    pool_id: str
    subnet: str
    gateway: str  # CIDR, as IPAM returned it
    bridge: str = ""


@dataclass
class Container:
    name: str  # its network namespace
    net: Net
    endpoint: str
    address: str  # CIDR
    src: str = ""  # Join's SrcName: the name the interface has again once Docker takes it back


@dataclass
class Docker:
    """Plays one host's dockerd against the pynet socket `sock`. `revive(sent)` is called
    when a call meets a dead daemon: it checks how the daemon died and starts it again."""

    sock: Path
    revive: Callable[[bool], None]
    netns: str  # the host namespace
    # Docker's own IPAM instead of pynet's (`-d pynet` without `--ipam-driver pynet`): no
    # IpamDriver call reaches pynet; Docker hands out the gateway and addresses itself.
    own_ipam: bool = False
    networks: list[Net] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # calls that failed, as Docker saw them

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The reply on success; None when Docker would see an error."""
        data = json.dumps(body).encode()
        try:
            status, reply = await post(self.sock, method, data)
        except aiohttp.ClientConnectionError as e:
            sent = not isinstance(e, aiohttp.ClientConnectorError)  # delivered, then the daemon died
            self.revive(sent)
            status, reply = await post(self.sock, method, b"" if sent else data)
        if status != 200:
            self.failed.append(method)
            return None
        return reply

    # -- docker network create / rm ------------------------------------------------------------

    async def network_create(self, subnet: str, options: dict[str, str] | None = None) -> Net | None:
        if self.own_ipam:
            net = Net(secrets.token_hex(32), "", subnet, _nth(subnet, 1))
            return net if await self._create_network(net, options) else None
        pool = await self.call(
            "IpamDriver.RequestPool",
            {"AddressSpace": "pynet-local", "Pool": subnet, "SubPool": "", "Options": {}, "V6": False},
        )
        if pool is None:
            return None
        pool_id = pool["PoolID"]
        gw = await self.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": GATEWAY})
        if gw is None:
            await self.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
            return None
        net = Net(secrets.token_hex(32), pool_id, subnet, gw["Address"])
        if not await self._create_network(net, options):
            await self._release(net.pool_id, net.gateway)
            await self.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
            return None
        return net

    async def _create_network(self, net: Net, options: dict[str, str] | None) -> bool:
        created = await self.call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": net.id,
                "Options": {"com.docker.network.generic": options or {}, "com.docker.network.enable_ipv6": False},
                "IPv4Data": [{"AddressSpace": "pynet-local" if net.pool_id else "LocalDefault", "Pool": net.subnet,
                              "Gateway": net.gateway}],
                "IPv6Data": [],
            },
        )
        if created is not None:
            self.networks.append(net)
        return created is not None

    async def network_rm(self, net: Net) -> None:
        if net.pool_id:
            await self._release(net.pool_id, net.gateway)
            await self.call("IpamDriver.ReleasePool", {"PoolID": net.pool_id})
        await self.call("NetworkDriver.DeleteNetwork", {"NetworkID": net.id})
        self.networks.remove(net)

    async def _release(self, pool_id: str, cidr: str) -> None:
        if not pool_id:
            return  # Docker's own IPAM
        address = str(ipaddress.ip_interface(cidr).ip)
        await self.call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address})

    # -- docker run / rm -f --------------------------------------------------------------------

    async def run(self, net: Net) -> Container | None:
        if self.own_ipam:
            got: dict[str, Any] | None = {"Address": _nth(net.subnet, 2 + sum(c.net is net for c in self.containers))}
        else:
            got = await self.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": None})
        if got is None:
            return None
        ctr = Container(f"{self.netns}-c{secrets.token_hex(2)}", net, secrets.token_hex(32), got["Address"])
        ids = {"NetworkID": net.id, "EndpointID": ctr.endpoint}
        interface = {"Address": ctr.address, "AddressIPv6": "", "MacAddress": ""}
        if await self.call("NetworkDriver.CreateEndpoint", {**ids, "Interface": interface, "Options": {}}) is None:
            await self._release(net.pool_id, ctr.address)
            return None
        join = await self.call("NetworkDriver.Join", {**ids, "SandboxKey": "", "Options": {}})
        if join is None:
            await self.call("NetworkDriver.DeleteEndpoint", ids)
            await self._release(net.pool_id, ctr.address)
            return None
        ctr.src = join["InterfaceName"]["SrcName"]
        sh("ip", "netns", "add", ctr.name)
        sh("ip", "-n", self.netns, "link", "set", ctr.src, "netns", ctr.name)
        sh("ip", "-n", ctr.name, "link", "set", ctr.src, "name", "eth0")
        sh("ip", "-n", ctr.name, "addr", "add", ctr.address, "dev", "eth0")
        sh("ip", "-n", ctr.name, "link", "set", "eth0", "up")
        sh("ip", "-n", ctr.name, "route", "add", "default", "via", join["Gateway"])
        if await self.call("NetworkDriver.EndpointOperInfo", ids) is None:
            await self.rm(ctr)
            return None
        self.containers.append(ctr)
        return ctr

    async def rm(self, ctr: Container) -> None:
        ids = {"NetworkID": ctr.net.id, "EndpointID": ctr.endpoint}
        await self.call("NetworkDriver.Leave", ids)
        # Docker moves the interface back under its SrcName (§2.5), then deletes the endpoint.
        sh("ip", "-n", ctr.name, "link", "set", "eth0", "down", "name", ctr.src, check=False)
        sh("ip", "-n", ctr.name, "link", "set", ctr.src, "netns", self.netns, check=False)
        sh("ip", "netns", "del", ctr.name, check=False)
        await self.call("NetworkDriver.DeleteEndpoint", ids)
        await self._release(ctr.net.pool_id, ctr.address)
        if ctr in self.containers:
            self.containers.remove(ctr)

    def forget(self) -> None:
        """Namespaces of containers still running at the end of a failed test."""
        for ctr in self.containers:
            sh("ip", "netns", "del", ctr.name, check=False)


def _nth(subnet: str, n: int) -> str:
    """What Docker's own IPAM hands out: the gateway first, then serially."""
    net = ipaddress.ip_network(subnet)
    return f"{net.network_address + n}/{net.prefixlen}"
