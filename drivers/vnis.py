"""Cluster-wide VNIs: the reservations that make a VXLAN network's VNI its own across hosts.

Key (under the store prefix), without a lease, kept after the network is gone ("retired"), so
a VNI once given to a cluster network is never given to another:

    cluster/vnis/<vni>    {"network_id": the origin host's Docker ID, "host", "pools": [...]}

CreateNetwork of a VXLAN network resolves its VNI here, store-only, before its options are
parsed:

- no `-o vni`: the lowest VNI from AUTO_FIRST up that is neither reserved nor used by any
  host's VXLAN network (`vxlan/<vni>/` keys), reserved in a transaction guarded by the key's
  absence (a lost race tries the next one); the network is a cluster network unless
  `-o cluster=false`.
- `-o vni=N` reserved by another network: refused, naming N, unless it is the same network,
  i.e. the same subnets (a replica made by the cluster agent, or the same `--subnet` typed on
  another host); that copy is a cluster network too, unless `-o cluster=false`.
- `-o vni=N` not reserved: a per-host network as before issue 9, unless `-o cluster=true`,
  which reserves N.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import msgspec

from pynet.drivers.base import Draft
from pynet.drivers.options import int_in, parse_bool
from pynet.store.base import Compare, Delete, Put, Store
from pynet.store.errors import Conflict

# Hand-picked VNIs are usually small (the README's examples use 42 and 100); automatic ones
# start above them, so a user's script picking one later is unlikely to meet a reserved VNI.
AUTO_FIRST = 10000
VNI_MAX = 16777215
CLAIM_ATTEMPTS = 20  # lost races in a row before giving up (each loss is another host's win)


class Reservation(msgspec.Struct):
    network_id: str
    host: str
    pools: list[str] = []


def vni_key(prefix: str, vni: int) -> str:
    return f"{prefix}cluster/vnis/{vni}"


def lowest_free(taken: Collection[int], first: int = AUTO_FIRST) -> int:
    vni = first
    while vni in taken:
        vni += 1
    if vni > VNI_MAX:
        raise Conflict(f"pynet: no free VNI left in {first}..{VNI_MAX}")
    return vni


def pools_of(net: Draft) -> list[str]:
    return sorted(s.pool for s in (*net.ipv4, *net.ipv6))


def same_network(r: Reservation, network_id: str, pools: list[str]) -> bool:
    """Whether a create of (NETWORK_ID, POOLS) is the reserving network or a copy of it."""
    return r.network_id == network_id or (bool(pools) and sorted(r.pools) == pools)


async def taken_vnis(store: Store, prefix: str) -> set[int]:
    """Reserved VNIs and those any host's VXLAN network uses (its VTEP key, drivers/peers.py)."""
    taken = set()
    for root in (f"{prefix}cluster/vnis/", f"{prefix}vxlan/"):
        for kv in await store.range(root):
            head = kv.key[len(root) :].partition("/")[0]
            if head.isdigit():
                taken.add(int(head))
    return taken


async def resolve(store: Store, prefix: str, host: str, options: Mapping[str, str], net: Draft) -> dict[str, str]:
    """A VXLAN network's options as its backend should parse them: `vni` and `cluster` filled
    in; raises Conflict naming a VNI another network reserved."""
    out = dict(options)
    given = out.get("cluster")
    cluster = parse_bool("cluster", given) if given is not None else None
    pools = pools_of(net)
    mine = Reservation(net.id, host, pools)
    if "vni" not in out:
        out["vni"] = str(await _reserve_free(store, prefix, mine))
        out["cluster"] = "false" if cluster is False else "true"
        return out
    vni = int_in(1, VNI_MAX)("vni", out["vni"])
    kv = await store.get(vni_key(prefix, vni))
    if kv is not None:
        r = msgspec.json.decode(kv.value, type=Reservation)
        if not same_network(r, net.id, pools):
            raise Conflict(
                f"pynet: VNI {vni} is reserved by cluster network {r.network_id[:12]} (host {r.host}, "
                f"subnets {','.join(r.pools) or 'none'}); choose another -o vni, or leave it out for a free one"
            )
        out["cluster"] = "false" if cluster is False else "true"
    elif cluster:
        if not await _reserve(store, prefix, vni, mine):
            raise Conflict(f"pynet: VNI {vni} was just reserved by another network; choose another -o vni")
    return out


async def release(store: Store, prefix: str, options: Mapping[str, str], network_id: str) -> None:
    """Undoes what `resolve` reserved for a CreateNetwork of NETWORK_ID that then failed (a bad
    option, a clash): no network ever had the VNI, so it is not retired but free again. A
    reservation of another network (this one a copy of it) is left alone."""
    if "vni" not in options:
        return
    key = vni_key(prefix, int(options["vni"]))
    kv = await store.get(key)
    if kv is not None and msgspec.json.decode(kv.value, type=Reservation).network_id == network_id:
        await store.txn([Compare.unchanged(kv)], [Delete(key)])


async def _reserve(store: Store, prefix: str, vni: int, r: Reservation) -> bool:
    key = vni_key(prefix, vni)
    return await store.txn([Compare.absent(key)], [Put(key, msgspec.json.encode(r))])


async def _reserve_free(store: Store, prefix: str, r: Reservation) -> int:
    taken = await taken_vnis(store, prefix)
    for _ in range(CLAIM_ATTEMPTS):
        vni = lowest_free(taken)
        if await _reserve(store, prefix, vni, r):
            return vni
        taken.add(vni)
    raise Conflict(f"pynet: no VNI could be reserved after {CLAIM_ATTEMPTS} tries (many creates at once?)")
