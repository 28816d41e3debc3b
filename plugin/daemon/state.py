"""This host's networks and endpoints in the store: what pynet rebuilds the kernel from.

Keys: `<prefix>hosts/<host>/networks/<network id>` and `<prefix>hosts/<host>/endpoints/<endpoint id>`.
NetworkIDs are per host (each host's `docker network create` makes its own), so records live
under the host; what is shared across hosts (pools, VXLAN peers) has keys of its own.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pynet.drivers.base import Endpoint, Network
from pynet.store.base import Delete, Store

# Keys the first release wrote under `config` that the typed settings name differently.
RENAMED = {"vxlan": {"vxlan": "device"}}


def decode_network(data: bytes) -> Network:
    """A network record; one written before `config` was typed (a plain dict, no `mode` tag)
    is migrated as it is read, and stays in that shape in the store until it is saved again."""
    try:
        return msgspec.json.decode(data, type=Network)
    except msgspec.ValidationError:
        raw = msgspec.json.decode(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) or "mode" in raw["config"]:
            raise
        raw["config"] = migrate_config(str(raw.get("mode", "")), raw["config"])
        return msgspec.convert(raw, Network)


def migrate_config(mode: str, old: dict[str, Any]) -> dict[str, Any]:
    renamed = RENAMED.get(mode, {})
    config = {renamed.get(k, k): v for k, v in old.items()}
    if mode in ("bridge", "vxlan"):
        # Records older than `owns_bridge` were all of bridges pynet made.
        config.setdefault("owns_bridge", True)
    return {**config, "mode": mode}


class State:
    def __init__(self, store: Store, prefix: str, host: str) -> None:
        self.store = store
        self._base = f"{prefix}hosts/{host}/"
        # Each record as last read and decoded (key -> (value, network)): CreateNetwork reads
        # every network for its overlap check, and decoding 250 records anew took 0.4-1 ms of
        # each (Dec 2026). Keyed on the bytes, not a revision, so a record another process
        # rewrote (`pynet gc`) is decoded again. Networks are frozen: callers share them.
        self._decoded: dict[str, tuple[bytes, Network]] = {}

    def _net_key(self, network_id: str) -> str:
        return f"{self._base}networks/{network_id}"

    def _ep_key(self, endpoint_id: str) -> str:
        return f"{self._base}endpoints/{endpoint_id}"

    async def network(self, network_id: str) -> Network | None:
        kv = await self.store.get(self._net_key(network_id))
        return decode_network(kv.value) if kv else None

    async def networks(self) -> list[Network]:
        kvs = await self.store.range(f"{self._base}networks/")
        self._decoded = {kv.key: self._decode(kv.key, kv.value) for kv in kvs}
        return [net for _, net in self._decoded.values()]

    def _decode(self, key: str, value: bytes) -> tuple[bytes, Network]:
        seen = self._decoded.get(key)
        return seen if seen is not None and seen[0] == value else (value, decode_network(value))

    async def save_network(self, net: Network) -> None:
        await self.store.put(self._net_key(net.id), msgspec.json.encode(net))

    async def delete_network(self, network_id: str, endpoint_ids: list[str]) -> None:
        """The network's record and its endpoints' in one transaction: a crash never leaves
        endpoint records of a deleted network, nor a network without its endpoint records."""
        keys = [self._ep_key(e) for e in endpoint_ids] + [self._net_key(network_id)]
        await self.store.txn([], [Delete(k) for k in keys])

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
