"""Per-host uniqueness of what `Config.claims()` names: a bridge, a VXLAN VNI.

Key (under the store prefix), one per claim, valued with the owning network's ID:

    hosts/<host>/claims/<kind>/<value>    e.g. hosts/h1/claims/bridge/br-blue -> "<network id>"

CreateNetwork takes every claim of its network in one transaction guarded by the keys'
absence, before it touches the kernel, so two concurrent creates naming the same bridge (or
VNI) on one host cannot both pass: reading the other networks' records first and writing
afterwards left a window as long as the kernel work in between. Claims are per host, so the
same VNI on several hosts (one network copied to each) stays allowed; drivers/vnis.py keeps
the cluster-wide VNI reservations. DeleteNetwork, and a failed create, release them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from pynet.store.base import Compare, Delete, Put, Store
from pynet.store.errors import Conflict

# Lost races in a row before giving up: each loss means another create took a claim, and the
# next read names it, so two rounds settle every case; the margin covers stale takeovers.
ATTEMPTS = 5

# Whether the network holding a claim is gone, and the claim a leftover of a crash.
IsStale = Callable[[str], Awaitable[bool]]


class Claims:
    def __init__(self, store: Store, prefix: str, host: str) -> None:
        self.store = store
        self._base = f"{prefix}hosts/{host}/claims/"

    def key(self, kind: str, value: str | int) -> str:
        return f"{self._base}{kind}/{value}"

    async def reserve(self, network_id: str, claims: Mapping[str, str | int], stale: IsStale) -> None:
        """Take every claim for `network_id`, or none; raises Conflict naming the claim and the
        network that holds it. A claim `network_id` already holds (a retry) is kept."""
        keys = {self.key(kind, value): (kind, value) for kind, value in claims.items()}
        for _ in range(ATTEMPTS):
            compares, puts = [], []
            for key, (kind, value) in keys.items():
                kv = await self.store.get(key)
                if kv is None:
                    compares.append(Compare.absent(key))
                else:
                    compares.append(Compare.unchanged(kv))
                    owner = kv.value.decode()
                    if owner == network_id:
                        continue
                    if not await stale(owner):
                        kind, value = await self._first_held(keys, owner, (kind, value))
                        raise Conflict(f"pynet: {kind} {value!r} is already used by network {owner[:12]}")
                puts.append(Put(key, network_id.encode()))
            if not puts or await self.store.txn(compares, puts):
                return
        raise Conflict(f"pynet: could not reserve {', '.join(f'{k} {v!r}' for k, v in claims.items())}: contended")

    async def _first_held(
        self, keys: Mapping[str, tuple[str, str | int]], owner: str, seen: tuple[str, str | int]
    ) -> tuple[str, str | int]:
        """The first claim, in the config's order, that `owner` holds: keys are read one by one,
        so a claim read before the owner's transaction landed was seen free (a VXLAN network's
        VNI, read before its bridge); the error names what the user chose, the VNI. `seen`, the
        claim found held, if the owner has let go of them all since."""
        for key, claim in keys.items():
            kv = await self.store.get(key)
            if kv is not None and kv.value.decode() == owner:
                return claim
        return seen

    async def release(self, network_id: str, claims: Mapping[str, str | int]) -> None:
        """Drop the claims `network_id` holds; one another network holds stays. Idempotent."""
        for kind, value in claims.items():
            key = self.key(kind, value)
            await self.store.txn([Compare(key, "value", "==", network_id.encode())], [Delete(key)])
