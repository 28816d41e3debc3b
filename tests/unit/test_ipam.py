"""The IPAM against a real EmbeddedStore: pools, shared pools, addresses, races, bad input."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from pynet.ipam import GATEWAY_REQUEST, GLOBAL_SPACE, LOCAL_SPACE, Allocation, Ipam, PoolId, PoolReply
from pynet.ipam.netmath import first_free_subnet
from pynet.store.base import Compare, Event, KeyValue, Op, Put, Store
from pynet.store.embedded import EmbeddedStore
from pynet.store.etcd import EtcdStore
from pynet.store.errors import Conflict, Exhausted, InvalidRequest, NotFound
from tests.etcd_server import etcd_server, require_etcd

GW = {"RequestAddressType": GATEWAY_REQUEST}
POOLS = "/pynet/ipam/pools/"


class YieldingStore:
    """Suspends around every call, so concurrent requests interleave as they would over etcd
    (the embedded store never suspends, which would hide every race)."""

    def __init__(self, inner: EmbeddedStore) -> None:
        self.inner = inner
        self.lost_txns = 0
        self.before_txn: Callable[[], Awaitable[None]] | None = None

    async def _pause(self) -> None:
        await asyncio.sleep(0)

    async def get(self, key: str) -> KeyValue | None:
        await self._pause()
        kv = await self.inner.get(key)
        await self._pause()
        return kv

    async def range(self, prefix: str) -> list[KeyValue]:
        await self._pause()
        kvs = await self.inner.range(prefix)
        await self._pause()
        return kvs

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._pause()
        return await self.inner.put(key, value, lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        await self._pause()
        return await self.inner.delete(key, prefix)

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        hook, self.before_txn = self.before_txn, None
        if hook is not None:
            await hook()
        await self._pause()
        held = await self.inner.txn(compare, success, failure)
        self.lost_txns += not held
        return held

    async def revision(self) -> int:
        return await self.inner.revision()

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        return self.inner.watch(prefix, start_revision)

    async def grant_lease(self, ttl: int) -> int:
        return await self.inner.grant_lease(ttl)

    async def refresh_lease(self, lease: int) -> None:
        await self.inner.refresh_lease(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.inner.revoke_lease(lease)

    async def close(self) -> None:
        await self.inner.close()


class CountingStore(YieldingStore):
    """Counts the keys each kind of read returns."""

    def __init__(self, inner: EmbeddedStore) -> None:
        super().__init__(inner)
        self.gets = 0
        self.ranged = 0

    async def get(self, key: str) -> KeyValue | None:
        self.gets += 1
        return await super().get(key)

    async def range(self, prefix: str) -> list[KeyValue]:
        kvs = await super().range(prefix)
        self.ranged += len(kvs)
        return kvs


async def index_matches_records(store: Store, pool_key: str) -> None:
    """The pool's chunks/ bits are exactly its addrs/ records (ipam/chunks.py)."""
    net = ipaddress.ip_network(pool_key.rstrip("/").rsplit("/", 1)[1].replace("_", "/"))
    taken = {int(ipaddress.ip_address(kv.key.rsplit("/", 1)[1])) for kv in await store.range(pool_key + "addrs/")}
    marked = set()
    for kv in await store.range(pool_key + "chunks/"):
        base = int(net.network_address) + int(kv.key.rsplit("/", 1)[1]) * 256
        bits = int(json.loads(kv.value)["bits"], 16)
        assert bits, f"{kv.key} is empty but stored"
        marked |= {base + i for i in range(256) if bits >> i & 1}
    assert marked == taken


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "pynet.db")
    yield s
    await s.close()


@pytest.fixture
def h1(store: EmbeddedStore) -> Ipam:
    return Ipam(store, "h1")


@pytest.fixture
def h2(store: EmbeddedStore) -> Ipam:
    return Ipam(store, "h2")


async def pool(ipam: Ipam, subnet: str, sub: str = "", v6: bool = False) -> str:
    return (await ipam.request_pool(LOCAL_SPACE, subnet, sub, {}, v6)).pool_id


async def keys(store: EmbeddedStore, prefix: str = "/pynet/") -> list[str]:
    return [kv.key for kv in await store.range(prefix)]


async def value(store: EmbeddedStore, key: str) -> dict:
    kv = await store.get(key)
    assert kv is not None, key
    return json.loads(kv.value)


# -- pools ---------------------------------------------------------------------------------


async def test_explicit_pool(h1: Ipam, store: EmbeddedStore) -> None:
    reply = await h1.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    assert reply == PoolReply("pynet-local:10.1.0.0/24", "10.1.0.0/24", {})
    assert await keys(store) == [
        "/pynet/ipam/pools/10.1.0.0_24/hosts/h1",
        "/pynet/ipam/pools/10.1.0.0_24/meta",
        "/pynet/ipam/poolset",
    ]
    assert await value(store, "/pynet/ipam/poolset") == {"subnets": ["10.1.0.0/24"]}
    host = await value(store, "/pynet/ipam/pools/10.1.0.0_24/hosts/h1")
    assert (host["space"], host["sub_pool"]) == (LOCAL_SPACE, "")


async def test_explicit_pool_with_sub_pool_and_global_space(h1: Ipam) -> None:
    reply = await h1.request_pool(GLOBAL_SPACE, "10.1.0.0/24", "10.1.0.128/25", None, False)
    assert reply.pool_id == "pynet-global:10.1.0.0/24:10.1.0.128/25"
    assert reply.pool == "10.1.0.0/24"


async def test_custom_prefix_without_trailing_slash(store: EmbeddedStore) -> None:
    ipam = Ipam(store, "h1", prefix="/lab1")
    await pool(ipam, "10.1.0.0/24")
    assert await keys(store, "/lab1/ipam/pools/") == [
        "/lab1/ipam/pools/10.1.0.0_24/hosts/h1",
        "/lab1/ipam/pools/10.1.0.0_24/meta",
    ]


async def test_auto_pool_skips_routes_and_existing_pools(h1: Ipam) -> None:
    await pool(h1, "10.208.1.0/24")
    routes = [
        ipaddress.ip_network("0.0.0.0/0"),  # the default route must not forbid everything
        ipaddress.ip_network("10.208.0.0/24"),
        ipaddress.ip_network("fd70:706e::/64"),  # other family: irrelevant
    ]
    first = await h1.request_pool(LOCAL_SPACE, "", "", {}, False, exclude=routes)
    second = await h1.request_pool(LOCAL_SPACE, "", "", {}, False, exclude=routes)
    assert (first.pool, first.pool_id) == ("10.208.2.0/24", "pynet-local:10.208.2.0/24")
    assert second.pool == "10.208.3.0/24"


async def test_auto_pool_jumps_over_large_routes(h1: Ipam) -> None:
    routes = [ipaddress.ip_network("10.208.0.0/13"), ipaddress.ip_network("10.216.0.0/23")]
    reply = await h1.request_pool(LOCAL_SPACE, "", "", {}, False, exclude=routes)
    assert reply.pool == "10.216.2.0/24"


async def test_auto_pool_exhausted(store: EmbeddedStore) -> None:
    ipam = Ipam(store, "h1", default_pools4=[("10.9.0.0/23", 24)])
    assert [(await ipam.request_pool(LOCAL_SPACE, "", "", {}, False)).pool for _ in range(2)] == [
        "10.9.0.0/24",
        "10.9.1.0/24",
    ]
    with pytest.raises(Exhausted) as e:
        await ipam.request_pool(LOCAL_SPACE, "", "", {}, False)
    assert str(e.value) == (
        "pynet: no free IPv4 subnet left in the default pools 10.9.0.0/23 (split into /24):"
        " all overlap existing pools or host routes; pass --subnet"
    )


async def test_auto_pool_falls_through_to_the_next_default_range(store: EmbeddedStore) -> None:
    ipam = Ipam(store, "h1", default_pools4=[("10.9.0.0/24", 24), ("10.10.0.0/16", 20)])
    await pool(ipam, "10.9.0.128/25")
    assert (await ipam.request_pool(LOCAL_SPACE, "", "", {}, False)).pool == "10.10.0.0/20"


async def test_overlapping_pool_conflicts(h1: Ipam, h2: Ipam) -> None:
    await pool(h1, "10.1.0.0/24")
    with pytest.raises(Conflict) as e:
        await pool(h2, "10.1.0.0/16")
    assert str(e.value) == "pynet: --subnet 10.1.0.0/16 overlaps existing pool 10.1.0.0/24"
    with pytest.raises(Conflict) as e:
        await pool(h1, "10.1.0.128/25")
    assert str(e.value) == "pynet: --subnet 10.1.0.128/25 overlaps existing pool 10.1.0.0/24"


async def test_same_host_same_subnet_conflicts(h1: Ipam) -> None:
    await pool(h1, "10.1.0.0/24")
    with pytest.raises(Conflict) as e:
        await pool(h1, "10.1.0.0/24")
    assert str(e.value) == (
        "pynet: --subnet 10.1.0.0/24: pool 10.1.0.0/24 is already in use on this host (h1)"
    )


async def test_same_subnet_on_two_hosts_is_one_refcounted_pool(
    h1: Ipam, h2: Ipam, store: EmbeddedStore
) -> None:
    id1 = await pool(h1, "10.1.0.0/24")
    id2 = await h2.request_pool(GLOBAL_SPACE, "10.1.0.0/24", "", {}, False)
    assert (id1, id2.pool_id) == ("pynet-local:10.1.0.0/24", "pynet-global:10.1.0.0/24")
    assert await value(store, "/pynet/ipam/poolset") == {"subnets": ["10.1.0.0/24"]}
    assert await keys(store, POOLS + "10.1.0.0_24/hosts/") == [
        POOLS + "10.1.0.0_24/hosts/h1",
        POOLS + "10.1.0.0_24/hosts/h2",
    ]
    a1 = await h1.request_address(id1, "", None)
    a2 = await h2.request_address(id2.pool_id, "", None)
    assert (a1, a2) == ("10.1.0.1/24", "10.1.0.2/24")

    await h1.release_pool(id1)
    assert await keys(store, POOLS + "10.1.0.0_24/hosts/") == [POOLS + "10.1.0.0_24/hosts/h2"]
    assert await h2.request_address(id2.pool_id, "", None) == "10.1.0.3/24"
    # h1 held 10.1.0.1 and has left: it was freed with h1's reference
    assert sorted(a.address for a in await h2.allocations()) == ["10.1.0.2", "10.1.0.3"]

    await h2.release_pool(id2.pool_id)
    assert await keys(store, POOLS) == []
    assert await value(store, "/pynet/ipam/poolset") == {"subnets": []}


async def test_release_pool_is_idempotent(h1: Ipam, h2: Ipam, store: EmbeddedStore) -> None:
    pid = await pool(h1, "10.1.0.0/24")
    await h2.release_pool(pid)  # h2 holds no reference: nothing happens
    assert await keys(store, POOLS + "10.1.0.0_24/hosts/") == [POOLS + "10.1.0.0_24/hosts/h1"]
    await h1.release_pool(pid)
    await h1.release_pool(pid)
    assert await keys(store, POOLS) == []


async def test_release_pool_deletes_allocations(h1: Ipam, store: EmbeddedStore) -> None:
    pid = await pool(h1, "10.1.0.0/24", "10.1.0.0/25")
    assert await h1.request_address(pid, "", GW) == "10.1.0.1/24"
    assert await h1.request_address(pid, "10.1.0.200", None) == "10.1.0.200/24"
    assert await h1.request_address(pid, "", None) == "10.1.0.2/24"
    p = POOLS + "10.1.0.0_24/"
    assert await keys(store, POOLS) == [
        p + "addrs/10.1.0.1",
        p + "addrs/10.1.0.2",
        p + "addrs/10.1.0.200",
        p + "chunks/0",
        p + "cursor/10.1.0.0_25",
        p + "gateway",
        p + "hosts/h1",
        p + "meta",
    ]
    bits = int(await value(store, p + "chunks/0") and (await value(store, p + "chunks/0"))["bits"], 16)
    assert bits == 1 << 1 | 1 << 2 | 1 << 200
    assert await value(store, p + "gateway") == {"address": "10.1.0.1"}
    await h1.release_pool(pid)
    assert await keys(store, POOLS) == []
    with pytest.raises(NotFound) as e:
        await h1.request_address(pid, "", None)
    assert str(e.value) == (
        "pynet: pool 10.1.0.0/24 does not exist (PoolID pynet-local:10.1.0.0/24:10.1.0.0/25);"
        " was its network removed?"
    )


async def test_pool_can_be_recreated_after_release(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24")
    assert await h1.request_address(pid, "", None) == "10.1.0.1/24"
    await h1.release_pool(pid)
    pid = await pool(h1, "10.1.0.0/24")
    assert await h1.request_address(pid, "", None) == "10.1.0.1/24"  # cursor went with it


# -- gateway -------------------------------------------------------------------------------


async def test_gateway_from_both_hosts(h1: Ipam, h2: Ipam, store: EmbeddedStore) -> None:
    id1, id2 = await pool(h1, "10.1.0.0/24"), await pool(h2, "10.1.0.0/24")
    assert await h1.request_address(id1, "", GW) == "10.1.0.1/24"
    assert await h2.request_address(id2, "", GW) == "10.1.0.1/24"
    assert await h2.request_address(id2, "", GW) == "10.1.0.1/24"  # a retry is harmless
    gw = POOLS + "10.1.0.0_24/addrs/10.1.0.1"
    assert (await value(store, gw))["hosts"] == ["h1", "h2"]
    assert sorted((a.host, a.owner) for a in await h1.allocations()) == [
        ("h1", "gateway"),
        ("h2", "gateway"),
    ]

    await h1.release_address(id1, "10.1.0.1")
    assert (await value(store, gw))["hosts"] == ["h2"]
    await h1.release_address(id1, "10.1.0.1")  # h1 is no longer in it: nothing changes
    assert (await value(store, gw))["hosts"] == ["h2"]
    await h2.release_address(id2, "10.1.0.1")
    assert await store.get(gw) is None


async def test_gateway_without_address_joins_the_existing_gateway(h1: Ipam, h2: Ipam) -> None:
    id1, id2 = await pool(h1, "10.1.0.0/24"), await pool(h2, "10.1.0.0/24")
    assert await h1.request_address(id1, "10.1.0.254", GW) == "10.1.0.254/24"
    assert await h2.request_address(id2, "", GW) == "10.1.0.254/24"


async def test_gateway_is_first_address_of_pool_not_of_range(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24", "10.1.0.128/25")
    assert await h1.request_address(pid, "", GW) == "10.1.0.1/24"


async def test_gateway_on_a_container_address_conflicts(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24")
    assert await h1.request_address(pid, "", None) == "10.1.0.1/24"
    with pytest.raises(Conflict) as e:
        await h1.request_address(pid, "", GW)
    assert str(e.value) == "pynet: address 10.1.0.1 is already in use in pool 10.1.0.0/24"


# -- specific addresses ----------------------------------------------------------------------


async def test_static_address_taken_conflicts(h1: Ipam, h2: Ipam) -> None:
    id1, id2 = await pool(h1, "10.1.0.0/24"), await pool(h2, "10.1.0.0/24")
    assert await h1.request_address(id1, "10.1.0.5", None) == "10.1.0.5/24"
    for ipam, pid in ((h1, id1), (h2, id2)):
        with pytest.raises(Conflict) as e:
            await ipam.request_address(pid, "10.1.0.5", {})
        assert str(e.value) == "pynet: address 10.1.0.5 is already in use in pool 10.1.0.0/24"


@pytest.mark.parametrize(
    ("address", "options", "message"),
    [
        ("10.2.0.5", None, "pynet: invalid --ip 10.2.0.5: outside pool 10.1.0.0/24"),
        ("10.2.0.1", GW, "pynet: invalid --gateway 10.2.0.1: outside pool 10.1.0.0/24"),
        ("fd00::5", None, "pynet: invalid --ip fd00::5: outside pool 10.1.0.0/24"),
        ("10.1.0.x", None, "pynet: invalid --ip 10.1.0.x: not an IP address"),
        ("10.1.0.5/24", None, "pynet: invalid --ip 10.1.0.5/24: not an IP address"),
        (
            "10.1.0.0",
            None,
            "pynet: invalid --ip 10.1.0.0: the network address of pool 10.1.0.0/24 cannot be assigned",
        ),
        (
            "10.1.0.255",
            GW,
            "pynet: invalid --gateway 10.1.0.255: the broadcast address of pool 10.1.0.0/24"
            " cannot be assigned",
        ),
    ],
)
async def test_bad_specific_address(
    h1: Ipam, address: str, options: dict[str, str] | None, message: str
) -> None:
    pid = await pool(h1, "10.1.0.0/24", "10.1.0.128/25")
    with pytest.raises(InvalidRequest) as e:
        await h1.request_address(pid, address, options)
    assert str(e.value) == message


async def test_static_address_may_lie_outside_the_range(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24", "10.1.0.128/25")
    assert await h1.request_address(pid, "10.1.0.7", None) == "10.1.0.7/24"


async def test_point_to_point_prefixes_use_every_address(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/31")
    assert await h1.request_address(pid, "", GW) == "10.1.0.0/31"
    assert await h1.request_address(pid, "", None) == "10.1.0.1/31"


# -- dynamic addresses -----------------------------------------------------------------------


async def test_sub_pool_allocation_stays_in_range(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24", "10.1.0.128/30")
    assert await h1.request_address(pid, "", GW) == "10.1.0.1/24"
    got = [await h1.request_address(pid, "", None) for _ in range(4)]
    assert got == ["10.1.0.128/24", "10.1.0.129/24", "10.1.0.130/24", "10.1.0.131/24"]
    with pytest.raises(Exhausted) as e:
        await h1.request_address(pid, "", None)
    assert str(e.value) == "pynet: no free address in pool 10.1.0.0/24 (range 10.1.0.128/30)"


async def test_hosts_with_different_ranges_share_one_pool(h1: Ipam, h2: Ipam) -> None:
    id1 = await pool(h1, "10.1.0.0/24", "10.1.0.0/25")
    id2 = await pool(h2, "10.1.0.0/24", "10.1.0.128/25")
    assert id2 == "pynet-local:10.1.0.0/24:10.1.0.128/25"
    got = [
        await h1.request_address(id1, "", None),
        await h2.request_address(id2, "", None),
        await h1.request_address(id1, "", None),
        await h2.request_address(id2, "", None),
    ]
    assert got == ["10.1.0.1/24", "10.1.0.128/24", "10.1.0.2/24", "10.1.0.129/24"]


async def test_serial_allocation_does_not_reuse_a_just_released_address(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/29")
    assert await h1.request_address(pid, "", GW) == "10.1.0.1/29"
    assert [await h1.request_address(pid, "", None) for _ in range(2)] == [
        "10.1.0.2/29",
        "10.1.0.3/29",
    ]
    await h1.release_address(pid, "10.1.0.2")
    assert await h1.request_address(pid, "", None) == "10.1.0.4/29"
    assert await h1.request_address(pid, "", None) == "10.1.0.5/29"
    assert await h1.request_address(pid, "", None) == "10.1.0.6/29"
    # the end of the range: wrap around to the only free one
    assert await h1.request_address(pid, "", None) == "10.1.0.2/29"


async def test_exhaustion_of_a_slash_30(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/30")
    assert await h1.request_address(pid, "", GW) == "10.1.0.1/30"
    assert await h1.request_address(pid, "", None) == "10.1.0.2/30"
    with pytest.raises(Exhausted) as e:
        await h1.request_address(pid, "", None)
    assert str(e.value) == "pynet: no free address in pool 10.1.0.0/30 (range 10.1.0.0/30)"
    await h1.release_address(pid, "10.1.0.2")
    assert await h1.request_address(pid, "", None) == "10.1.0.2/30"


async def test_v6_auto_pool_and_dynamic_addresses(h1: Ipam) -> None:
    first = await h1.request_pool(LOCAL_SPACE, "", "", None, True)
    second = await h1.request_pool(LOCAL_SPACE, "", "", None, True)
    assert (first.pool, first.pool_id) == ("fd70:706e::/64", "pynet-local:fd70:706e::/64")
    assert second.pool == "fd70:706e:0:1::/64"
    pid = first.pool_id
    assert await h1.request_address(pid, "", GW) == "fd70:706e::1/64"
    assert [await h1.request_address(pid, "", None) for _ in range(2)] == [
        "fd70:706e::2/64",
        "fd70:706e::3/64",
    ]
    # the subnet-router anycast address is nobody's; the last address of a /64 is fine
    with pytest.raises(InvalidRequest) as e:
        await h1.request_address(pid, "fd70:706e::", None)
    assert str(e.value) == (
        "pynet: invalid --ip6 fd70:706e::: the subnet-router anycast address of pool"
        " fd70:706e::/64 cannot be assigned"
    )
    last = "fd70:706e::ffff:ffff:ffff:ffff"
    assert await h1.request_address(pid, last, None) == f"{last}/64"


async def test_v6_sub_pool_pool_id_round_trips(h1: Ipam) -> None:
    reply = await h1.request_pool(LOCAL_SPACE, "fd00:1::/64", "fd00:1::8000/113", {}, True)
    assert reply.pool_id == "pynet-local:fd00:1::/64:fd00:1::8000/113"
    parsed = PoolId.parse(reply.pool_id)
    assert (str(parsed.subnet), str(parsed.sub_pool)) == ("fd00:1::/64", "fd00:1::8000/113")
    assert await h1.request_address(reply.pool_id, "", None) == "fd00:1::8000/64"


def test_first_free_subnet_skips_over_blockers_in_a_huge_range() -> None:
    base = ipaddress.ip_network("fd70:706e::/32")
    blocked = [ipaddress.ip_network("fd70:706e::/33"), ipaddress.ip_network("fd70:706e:8000::/64")]
    assert str(first_free_subnet([(base, 64)], blocked)) == "fd70:706e:8000:1::/64"
    assert first_free_subnet([(base, 64)], [base]) is None


# -- release and ownership -------------------------------------------------------------------


async def test_release_address_is_idempotent_and_tolerant(h1: Ipam, h2: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24")
    await h1.release_address(pid, "10.1.0.9")  # never allocated
    await h1.release_address("pynet-local:10.9.0.0/24", "10.9.0.1")  # unknown pool: logged
    assert await h1.request_address(pid, "", None) == "10.1.0.1/24"
    await h1.release_address(pid, "10.1.0.1")
    await h1.release_address(pid, "10.1.0.1")
    assert await h1.allocations() == []


async def test_release_address_never_frees_another_hosts_address(h1: Ipam, h2: Ipam) -> None:
    id1, id2 = await pool(h1, "10.1.0.0/24"), await pool(h2, "10.1.0.0/24")
    assert await h2.request_address(id2, "", None) == "10.1.0.1/24"
    await h1.release_address(id1, "10.1.0.1")
    assert [(a.address, a.host) for a in await h1.allocations()] == [("10.1.0.1", "h2")]


async def test_bind_and_allocations(h1: Ipam, h2: Ipam) -> None:
    id1, id2 = await pool(h1, "10.1.0.0/24"), await pool(h2, "10.1.0.0/24")
    assert await h1.request_address(id1, "", GW) == "10.1.0.1/24"
    assert await h1.request_address(id1, "10.1.0.100", None) == "10.1.0.100/24"
    assert await h1.request_address(id1, "10.1.0.101", None) == "10.1.0.101/24"
    assert await h1.request_address(id1, "", None) == "10.1.0.2/24"
    assert await h2.request_address(id2, "", None) == "10.1.0.3/24"

    await h1.bind("10.1.0.2/24", "ep-dyn")
    await h1.bind("10.1.0.101", "ep-static")
    await h1.bind("10.1.0.1/24", "ep-x")  # a gateway keeps its owner
    await h1.bind("10.1.0.3/24", "ep-y")  # h2's address: not h1's to bind
    await h1.bind("10.1.0.50/24", "ep-z")  # free address: no-op
    await h1.bind("172.17.0.2/16", "ep-z")  # Docker's own IPAM: no-op

    allocs = sorted(await h1.allocations(), key=lambda a: ipaddress.ip_address(a.address))
    assert all(isinstance(a, Allocation) and a.pool == "10.1.0.0/24" and a.time > 0 for a in allocs)
    assert [(a.address, a.host, a.owner) for a in allocs] == [
        ("10.1.0.1", "h1", "gateway"),
        ("10.1.0.2", "h1", "ep-dyn"),
        ("10.1.0.3", "h2", "container"),
        ("10.1.0.100", "h1", "aux"),
        ("10.1.0.101", "h1", "ep-static"),
    ]


async def test_bind_rejects_malformed_input(h1: Ipam) -> None:
    with pytest.raises(InvalidRequest) as e:
        await h1.bind("10.1.0.x/24", "ep")
    assert str(e.value) == "pynet: invalid Address 10.1.0.x/24: not an IP address"


# -- races (the store suspends, so coroutines interleave as over etcd) ----------------------


async def test_200_concurrent_requests_from_two_hosts_are_distinct(store: EmbeddedStore) -> None:
    shared = YieldingStore(store)
    a, b = Ipam(shared, "h1"), Ipam(shared, "h2")
    ida, idb = await pool(a, "10.1.0.0/24"), await pool(b, "10.1.0.0/24")
    got = await asyncio.gather(
        *(a.request_address(ida, "", None) for _ in range(100)),
        *(b.request_address(idb, "", None) for _ in range(100)),
    )
    assert len(set(got)) == 200
    assert all(ipaddress.ip_interface(g) in ipaddress.ip_network("10.1.0.0/24") for g in got)
    assert len(await keys(store, POOLS + "10.1.0.0_24/addrs/")) == 200
    hosts = sorted(x.host for x in await a.allocations())
    assert (hosts.count("h1"), hosts.count("h2")) == (100, 100)
    assert shared.lost_txns > 0  # the hosts did race; the compares resolved it
    await index_matches_records(store, POOLS + "10.1.0.0_24/")
    await asyncio.gather(*(ipam.release_address(pid, g.split("/")[0]) for ipam, pid, g in zip([a] * 100 + [b] * 100, [ida] * 100 + [idb] * 100, got)))
    assert await keys(store, POOLS + "10.1.0.0_24/addrs/") == []
    await index_matches_records(store, POOLS + "10.1.0.0_24/")


async def test_concurrent_static_requests_for_one_address(store: EmbeddedStore) -> None:
    shared = YieldingStore(store)
    a, b = Ipam(shared, "h1"), Ipam(shared, "h2")
    ida, idb = await pool(a, "10.1.0.0/24"), await pool(b, "10.1.0.0/24")
    results = await asyncio.gather(
        a.request_address(ida, "10.1.0.9", None),
        b.request_address(idb, "10.1.0.9", None),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "str"]


async def test_concurrent_auto_pools_from_two_hosts_differ(store: EmbeddedStore) -> None:
    shared = YieldingStore(store)
    a, b = Ipam(shared, "h1"), Ipam(shared, "h2")
    got = await asyncio.gather(
        *(ipam.request_pool(LOCAL_SPACE, "", "", {}, False) for ipam in (a, b, a, b))
    )
    assert sorted(r.pool for r in got) == [f"10.208.{i}.0/24" for i in range(4)]


async def test_concurrent_overlapping_pools_one_wins(store: EmbeddedStore) -> None:
    shared = YieldingStore(store)
    a, b = Ipam(shared, "h1"), Ipam(shared, "h2")
    results = await asyncio.gather(
        pool(a, "10.1.0.0/16"), pool(b, "10.1.2.0/24"), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "str"]
    assert len(json.loads((await store.get("/pynet/ipam/poolset")).value)["subnets"]) == 1


async def test_last_release_loses_to_a_host_joining_meanwhile(store: EmbeddedStore) -> None:
    shared = YieldingStore(store)
    a, b = Ipam(shared, "h1"), Ipam(shared, "h2")
    pid = await pool(a, "10.1.0.0/24")

    async def join() -> None:
        await pool(b, "10.1.0.0/24")

    shared.before_txn = join  # h2 joins after h1 decided it was the last holder
    await a.release_pool(pid)
    assert await keys(store, POOLS) == [POOLS + "10.1.0.0_24/hosts/h2", POOLS + "10.1.0.0_24/meta"]
    assert await b.request_address(pid, "", None) == "10.1.0.1/24"


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "sub", "options", "v6", "message"),
    [
        ("10.1.0.0", "", {}, False, "pynet: invalid --subnet 10.1.0.0: not a CIDR subnet (e.g. 10.1.0.0/24)"),
        ("10.1.0.300/24", "", {}, False, "pynet: invalid --subnet 10.1.0.300/24: not a CIDR subnet (e.g. 10.1.0.0/24)"),
        ("10.1.0.0/33", "", {}, False, "pynet: invalid --subnet 10.1.0.0/33: not a CIDR subnet (e.g. 10.1.0.0/24)"),
        ("10.1.0.5/24", "", {}, False, "pynet: invalid --subnet 10.1.0.5/24: host bits set, did you mean 10.1.0.0/24?"),
        ("10.1.0.0/24", "", {}, True, "pynet: invalid --subnet 10.1.0.0/24: expected an IPv6 subnet"),
        ("fd00::/64", "", {}, False, "pynet: invalid --subnet fd00::/64: expected an IPv4 subnet"),
        ("10.1.0.0/24", "10.2.0.0/25", {}, False, "pynet: invalid --ip-range 10.2.0.0/25: not inside --subnet 10.1.0.0/24"),
        ("10.1.0.0/24", "10.1.0.130/25", {}, False, "pynet: invalid --ip-range 10.1.0.130/25: host bits set, did you mean 10.1.0.128/25?"),
        ("10.1.0.0/24", "junk", {}, False, "pynet: invalid --ip-range junk: not a CIDR subnet (e.g. 10.1.0.0/24)"),
        ("", "10.1.0.0/25", {}, False, "pynet: invalid --ip-range 10.1.0.0/25: needs a --subnet"),
        ("10.1.0.0/24", "", {"foo": "bar", "a": "1"}, False, "pynet: unsupported --ipam-opt a=1, foo=bar: pynet's IPAM has no options"),
    ],
)
async def test_bad_pool_requests_name_field_and_value(
    h1: Ipam, store: EmbeddedStore, subnet: str, sub: str, options: dict[str, str], v6: bool, message: str
) -> None:
    with pytest.raises(InvalidRequest) as e:
        await h1.request_pool(LOCAL_SPACE, subnet, sub, options, v6)
    assert str(e.value) == message
    assert await keys(store) == []


async def test_unknown_address_space(h1: Ipam) -> None:
    with pytest.raises(InvalidRequest) as e:
        await h1.request_pool("", "", "", {}, False)
    assert str(e.value) == (
        "pynet: unknown address space '': pynet serves pynet-local and pynet-global"
    )


async def test_dockers_serial_option_is_accepted(h1: Ipam) -> None:
    opts = {"com.docker.network.ipam.serial": "true"}
    assert (await h1.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", opts, False)).pool == "10.1.0.0/24"


@pytest.mark.parametrize(
    "pool_id",
    ["", "10.1.0.0/24", "other:10.1.0.0/24", "pynet-local:10.1.0.5/24", "pynet-local:10.1.0.0/24:10.2.0.0/25"],
)
async def test_malformed_pool_id(h1: Ipam, pool_id: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        await h1.request_address(pool_id, "", None)
    assert str(e.value).startswith(f"pynet: invalid PoolID {pool_id!r}: ")


async def test_release_address_outside_pool(h1: Ipam) -> None:
    pid = await pool(h1, "10.1.0.0/24")
    with pytest.raises(InvalidRequest) as e:
        await h1.release_address(pid, "10.2.0.1")
    assert str(e.value) == "pynet: invalid Address 10.2.0.1: outside pool 10.1.0.0/24"


def test_bad_configuration_fails_at_start(store: EmbeddedStore) -> None:
    with pytest.raises(InvalidRequest) as e:
        Ipam(store, "h1", default_pools4=[("10.0.0.0/16", 8)])
    assert str(e.value) == (
        "pynet: invalid default IPv4 pool 10.0.0.0/16: size /8 must be between /16 and /32"
    )
    with pytest.raises(ValueError):
        Ipam(store, "a/b")


async def test_a_host_that_keeps_losing_the_serial_race_still_gets_an_address(store: EmbeddedStore) -> None:
    """Another host reading the same cursor wins every race for the next serial address; the
    loser must not give up (a failed `docker run`) but pick elsewhere."""
    racing = YieldingStore(store)
    loser, winner = Ipam(racing, "h1"), Ipam(store, "h2")
    mine = await loser.request_pool(LOCAL_SPACE, "10.9.0.0/24", "", {}, False)
    theirs = await winner.request_pool(LOCAL_SPACE, "10.9.0.0/24", "", {}, False)
    stolen: list[str] = []

    async def win_the_race() -> None:
        stolen.append(await winner.request_address(theirs.pool_id, "", None))
        racing.before_txn = win_the_race

    racing.before_txn = win_the_race
    got = await loser.request_address(mine.pool_id, "", None)
    racing.before_txn = None
    assert got not in stolen
    assert racing.lost_txns >= 1


async def test_concurrent_hosts_on_a_real_etcd(tmp_path: Path) -> None:
    """Two hosts, each its own etcd client, allocating and releasing in one /24 at once: every
    address is handed out once, and the index ends up equal to the records."""
    require_etcd()
    with etcd_server(tmp_path / "etcd") as etcd:
        stores = [EtcdStore([etcd.endpoint], timeout=5.0) for _ in range(2)]
        try:
            a, b = Ipam(stores[0], "h1"), Ipam(stores[1], "h2")
            ida, idb = await pool(a, "10.1.0.0/24"), await pool(b, "10.1.0.0/24")
            got = await asyncio.gather(
                *(a.request_address(ida, "", None) for _ in range(60)),
                *(b.request_address(idb, "", None) for _ in range(60)),
            )
            assert len(set(got)) == 120
            await index_matches_records(stores[0], POOLS + "10.1.0.0_24/")
            await asyncio.gather(
                *(a.release_address(ida, g.split("/")[0]) for g in got[:30]),
                *(b.release_address(idb, g.split("/")[0]) for g in got[60:90]),
                *(a.request_address(ida, "", None) for _ in range(20)),
                *(b.request_address(idb, "", None) for _ in range(20)),
            )
            await index_matches_records(stores[0], POOLS + "10.1.0.0_24/")
            assert len(await stores[0].range(POOLS + "10.1.0.0_24/addrs/")) == 120 - 60 + 40
        finally:
            for s in stores:
                await s.close()


# -- the allocation index (ipam/chunks.py) ---------------------------------------------------


async def test_request_address_reads_the_same_few_keys_however_full_the_pool(store: EmbeddedStore) -> None:
    """2,000 addresses taken in a /16 (eight chunks): a request reads the pool's meta, its
    cursor and one chunk, as in an empty pool, and never a range."""
    counting = CountingStore(store)
    ipam = Ipam(counting, "h1")
    pid = await pool(ipam, "10.60.0.0/16")

    async def cost() -> tuple[int, int]:
        counting.gets = counting.ranged = 0
        await ipam.request_address(pid, "", None)
        return counting.gets, counting.ranged

    assert await cost() == (3, 0)
    for _ in range(2000):
        await ipam.request_address(pid, "", None)
    assert await cost() == (3, 0)
    assert await ipam.request_address(pid, "", None) == "10.60.7.211/16"
    await index_matches_records(store, POOLS + "10.60.0.0_16/")


async def test_a_pool_written_before_the_index_gets_one_on_its_first_request(store: EmbeddedStore) -> None:
    """A pool as pynet wrote it before chunks/ (records and cursor only, meta without "index")."""
    p = POOLS + "10.1.0.0_24/"
    old = {
        "/pynet/ipam/poolset": {"subnets": ["10.1.0.0/24"]},
        p + "meta": {"subnet": "10.1.0.0/24", "host": "h1", "time": 1.0},
        p + "hosts/h1": {"space": LOCAL_SPACE, "sub_pool": "", "time": 1.0},
        p + "hosts/h2": {"space": LOCAL_SPACE, "sub_pool": "", "time": 1.0},
        p + "addrs/10.1.0.1": {"host": "h1", "owner": "gateway", "time": 1.0, "hosts": ["h1"]},
        p + "addrs/10.1.0.2": {"host": "h1", "owner": "container", "time": 1.0},
        p + "addrs/10.1.0.3": {"host": "h2", "owner": "container", "time": 1.0},
        p + "addrs/10.1.0.4": {"host": "h1", "owner": "aux", "time": 1.0},
        p + "cursor/10.1.0.0_24": {"address": "10.1.0.1"},
    }
    await store.txn([], [Put(k, json.dumps(v).encode()) for k, v in old.items()])
    h1, h2 = Ipam(store, "h1"), Ipam(store, "h2")
    assert await h1.request_address("pynet-local:10.1.0.0/24", "", None) == "10.1.0.5/24"
    assert (await value(store, p + "meta"))["index"] == 1
    assert await value(store, p + "gateway") == {"address": "10.1.0.1"}
    await index_matches_records(store, p)
    assert await h2.request_address("pynet-local:10.1.0.0/24", "", GW) == "10.1.0.1/24"
    await h1.release_address("pynet-local:10.1.0.0/24", "10.1.0.2")
    await index_matches_records(store, p)


async def test_a_record_missing_from_the_index_is_skipped_and_marked(store: EmbeddedStore) -> None:
    """An address taken by a pynet that does not know the index (a host not yet upgraded)."""
    h1 = Ipam(store, "h1")
    pid = await pool(h1, "10.1.0.0/24")
    rec = json.dumps({"host": "old", "owner": "container", "time": 1.0}).encode()
    await store.put(POOLS + "10.1.0.0_24/addrs/10.1.0.1", rec)
    got = await h1.request_address(pid, "", None)
    assert got != "10.1.0.1/24"
    await index_matches_records(store, POOLS + "10.1.0.0_24/")


async def test_a_full_index_is_rebuilt_before_the_pool_is_called_exhausted(store: EmbeddedStore) -> None:
    """Addresses freed by a pynet that does not know the index keep their bits; a pool that
    looks full is checked against its records once."""
    h1 = Ipam(store, "h1")
    pid = await pool(h1, "10.1.0.0/29")
    got = [await h1.request_address(pid, "", None) for _ in range(6)]
    assert got == [f"10.1.0.{i}/29" for i in range(1, 7)]
    await store.delete(POOLS + "10.1.0.0_29/addrs/10.1.0.3")
    assert await h1.request_address(pid, "", None) == "10.1.0.3/29"
    with pytest.raises(Exhausted):
        await h1.request_address(pid, "", None)
    await index_matches_records(store, POOLS + "10.1.0.0_29/")


async def test_a_v6_pool_keeps_chunks_only_where_addresses_are(h1: Ipam, store: EmbeddedStore) -> None:
    """A /64 has 2**56 chunks; the first address and one near the end make two records."""
    pid = await pool(h1, "fd00:1::/64", v6=True)
    assert await h1.request_address(pid, "", None) == "fd00:1::1/64"
    assert await h1.request_address(pid, "fd00:1::ffff:ffff:ffff:fff0", None) == "fd00:1::ffff:ffff:ffff:fff0/64"
    chunks = await keys(store, POOLS + "fd00:1::_64/chunks/")
    assert chunks == [POOLS + "fd00:1::_64/chunks/0", POOLS + f"fd00:1::_64/chunks/{(2**64 - 16) // 256}"]
    await index_matches_records(store, POOLS + "fd00:1::_64/")
