"""Which cluster network an address belongs to, from the networks' subnets.

The name table knows an asker by its own record, which its host publishes when Docker reports
the container started. A container's first query often comes before that record: `docker run
--rm --network blue busybox ping web` asks within a millisecond of starting, while the record
takes tens of milliseconds (the `start` event, an inspect, a put in etcd, this host's watch).
The subnets close that gap: cluster networks' pools are unique across the cluster (one pool per
subnet in etcd, docs/design.md "IPAM"), so an address in one of them is a container of that
network, and may see that network's names as soon as it can ask.

Fed from the cluster network specs, `P cluster/networks/<name>` (plugin/cluster/specs.py,
`ClusterSpec`): only the fields read here are decoded, so this module needs nothing of
plugin/cluster; the store is where the two meet.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

import msgspec

from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.dns")

Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Pool(msgspec.Struct):
    Subnet: str = ""


class _Ipam(msgspec.Struct):
    Config: list[_Pool] = []


class _Network(msgspec.Struct):
    IPAM: _Ipam = msgspec.field(default_factory=_Ipam)


class _Spec(msgspec.Struct):
    network: _Network


_decoder = msgspec.json.Decoder(_Spec)


class SubnetTable:
    def __init__(self, root: str) -> None:
        """`root` is the store prefix plus `cluster/networks/`: keys are `<root><name>`."""
        self.root = root
        self._warn = Malformed(log)
        self._subnets: dict[str, tuple[Subnet, ...]] = {}  # network name -> its pools

    def __len__(self) -> int:
        return len(self._subnets)

    def replace(self, items: Iterable[tuple[str, bytes]]) -> None:
        self._subnets.clear()
        for key, value in items:
            self.put(key, value)

    def put(self, key: str, value: bytes) -> None:
        self.delete(key)
        name = key[len(self.root) :] if key.startswith(self.root) else ""
        try:
            if not name or "/" in name:
                raise ValueError("key is not cluster/networks/<name>")
            config = _decoder.decode(value).network.IPAM.Config
            pools = tuple(ipaddress.ip_network(p.Subnet) for p in config if p.Subnet)
        except (ValueError, msgspec.DecodeError) as e:
            self._warn("cluster network spec", key, e)
            return
        self._subnets[name] = pools

    def delete(self, key: str) -> None:
        self._subnets.pop(key[len(self.root) :], None)

    def networks_of(self, address: str) -> set[str]:
        """The cluster networks whose subnets hold `address` (empty when none does)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return set()
        return {name for name, pools in self._subnets.items() if any(ip in pool for pool in pools)}
