"""This host's networks and endpoints in the store: what pynet rebuilds the kernel from.

Keys: `<prefix>hosts/<host>/networks/<network id>` and `<prefix>hosts/<host>/endpoints/<endpoint id>`.
NetworkIDs are per host (each host's `docker network create` makes its own), so records live
under the host; what is shared across hosts (pools, VXLAN peers) has keys of its own.
"""

from __future__ import annotations

import msgspec

from pynet.drivers.base import Endpoint, Network
from pynet.store.base import Store


class State:
    def __init__(self, store: Store, prefix: str, host: str) -> None:
        self.store = store
        self._base = f"{prefix}hosts/{host}/"

    def _net_key(self, network_id: str) -> str:
        return f"{self._base}networks/{network_id}"

    def _ep_key(self, endpoint_id: str) -> str:
        return f"{self._base}endpoints/{endpoint_id}"

    async def network(self, network_id: str) -> Network | None:
        kv = await self.store.get(self._net_key(network_id))
        return msgspec.json.decode(kv.value, type=Network) if kv else None

    async def networks(self) -> list[Network]:
        kvs = await self.store.range(f"{self._base}networks/")
        return [msgspec.json.decode(kv.value, type=Network) for kv in kvs]

    async def save_network(self, net: Network) -> None:
        await self.store.put(self._net_key(net.id), msgspec.json.encode(net))

    async def delete_network(self, network_id: str) -> None:
        await self.store.delete(self._net_key(network_id))

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        kv = await self.store.get(self._ep_key(endpoint_id))
        return msgspec.json.decode(kv.value, type=Endpoint) if kv else None

    async def endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        kvs = await self.store.range(f"{self._base}endpoints/")
        eps = [msgspec.json.decode(kv.value, type=Endpoint) for kv in kvs]
        return [e for e in eps if network_id is None or e.network_id == network_id]

    async def save_endpoint(self, ep: Endpoint) -> None:
        await self.store.put(self._ep_key(ep.id), msgspec.json.encode(ep))

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self.store.delete(self._ep_key(endpoint_id))
