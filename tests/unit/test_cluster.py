"""The pure parts of cluster networks: VNI choice and reservation (drivers/vnis.py), a spec
built from Docker's inspect, the copy's request, and what a host does with a spec
(plugin/cluster/specs.py); automatic subnets taken on one host are taken for all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from pynet.drivers import vnis
from pynet.drivers.base import Subnet
from pynet.ipam import GLOBAL_SPACE, Ipam
from pynet.plugin.cluster.specs import ClusterSpec, Copy, copy_request, decide, is_copy, spec_from_inspect
from pynet.plugin.engine import Ipam as DockerIpam
from pynet.plugin.engine import IpamConfig, Network, NetworkSpec
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import Conflict

P = "/pynet/"


@dataclass(frozen=True)
class Draft:
    id: str
    ipv4: list[Subnet] = field(default_factory=list)
    ipv6: list[Subnet] = field(default_factory=list)
    internal: bool = False


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "store.sqlite")
    yield s
    await s.close()


def test_lowest_free_skips_taken_and_starts_above_hand_picked_ones() -> None:
    assert vnis.lowest_free(set()) == vnis.AUTO_FIRST
    assert vnis.lowest_free({10000, 10001, 10003}) == 10002
    with pytest.raises(Conflict, match="no free VNI"):
        vnis.lowest_free({vnis.VNI_MAX}, first=vnis.VNI_MAX)


async def test_automatic_vnis_are_reserved_and_never_reused(store: EmbeddedStore) -> None:
    await store.put(f"{P}vxlan/10000/vteps/h9", b"{}")  # a per-host network on another host uses it
    a = await vnis.resolve(store, P, "h1", {"mode": "vxlan"}, Draft("a", [Subnet("10.1.0.0/24")]))
    assert a == vnis.Resolved({"mode": "vxlan", "vni": "10001", "cluster": "true"}, 10001)
    b = await vnis.resolve(store, P, "h2", {"cluster": "false"}, Draft("b", [Subnet("10.2.0.0/24")]))
    assert b == vnis.Resolved({"cluster": "false", "vni": "10002"}, 10002), "a local network still gets a unique VNI"
    kv = await store.get(vnis.vni_key(P, 10001))
    assert kv is not None and msgspec.json.decode(kv.value, type=vnis.Reservation) == vnis.Reservation(
        "a", "h1", ["10.1.0.0/24"]
    )


async def test_concurrent_automatic_vnis_differ(store: EmbeddedStore) -> None:
    got = await asyncio.gather(*(vnis.resolve(store, P, f"h{i}", {}, Draft(f"n{i}")) for i in range(5)))
    assert len({o.options["vni"] for o in got}) == 5


async def test_a_reserved_vni_is_refused_naming_it_unless_same_network(store: EmbeddedStore) -> None:
    await vnis.resolve(store, P, "h1", {"vni": "77", "cluster": "true"}, Draft("origin", [Subnet("10.7.0.0/24")]))
    with pytest.raises(Conflict, match="VNI 77 is reserved"):
        await vnis.resolve(store, P, "h2", {"vni": "77"}, Draft("other", [Subnet("10.8.0.0/24")]))
    copy = await vnis.resolve(store, P, "h2", {"vni": "77"}, Draft("copy", [Subnet("10.7.0.0/24")]))
    assert copy.options["cluster"] == "true" and copy.reserved is None, "the same subnet on another host is that cluster network"
    assert (await vnis.resolve(store, P, "h3", {"vni": "77", "cluster": "false"}, Draft("x", [Subnet("10.7.0.0/24")]))).options[
        "cluster"
    ] == "false"


async def test_an_explicit_vni_without_opt_in_stays_per_host(store: EmbeddedStore) -> None:
    out = await vnis.resolve(store, P, "h1", {"vni": "42"}, Draft("n", [Subnet("10.4.0.0/24")]))
    assert out == vnis.Resolved({"vni": "42"}) and await store.get(vnis.vni_key(P, 42)) is None
    again = await vnis.resolve(store, P, "h2", {"vni": "42"}, Draft("m", [Subnet("10.5.0.0/24")]))
    assert again == vnis.Resolved({"vni": "42"}), "today's per-host networks may share a hand-picked VNI"


async def test_release_undoes_only_the_releasers_reservation(store: EmbeddedStore) -> None:
    """A create that fails gives its VNI back; a reservation another network holds stays."""
    a = await vnis.resolve(store, P, "h1", {}, Draft("a", [Subnet("10.1.0.0/24")]))
    assert a.reserved == vnis.AUTO_FIRST
    await vnis.release(store, P, vnis.AUTO_FIRST, "someone-else")
    assert await store.get(vnis.vni_key(P, vnis.AUTO_FIRST)) is not None
    await vnis.release(store, P, vnis.AUTO_FIRST, "a")
    assert await store.get(vnis.vni_key(P, vnis.AUTO_FIRST)) is None
    again = await vnis.resolve(store, P, "h1", {}, Draft("b", [Subnet("10.2.0.0/24")]))
    assert again.reserved == vnis.AUTO_FIRST, "the released VNI is free again"


async def test_automatic_subnets_are_unique_across_hosts(store: EmbeddedStore) -> None:
    """Two hosts' IPAMs on one store (as on etcd): a subnet picked on one is taken for all."""
    pools = [("10.208.0.0/12", 24)]
    ipams = [Ipam(store, f"h{i}", P, default_pools4=pools, default_pools6=[]) for i in range(3)]
    replies = await asyncio.gather(*(i.request_pool(GLOBAL_SPACE, "", "", {}, False) for i in ipams))
    assert len({r.pool for r in replies}) == 3


def inspected(**kw: object) -> Network:
    base: dict[str, object] = {
        "Name": "blue",
        "Id": "a" * 64,
        "Driver": "pynet",
        "Options": {"mode": "vxlan"},
        "Labels": {"team": "red"},
        "IPAM": DockerIpam(Driver="pynet", Config=[IpamConfig(Subnet="10.208.3.0/24", Gateway="10.208.3.1")]),
    }
    return Network(**{**base, **kw})  # type: ignore[arg-type]


def test_spec_from_inspect_and_the_copys_request() -> None:
    spec = spec_from_inspect(inspected(), 10001, "h1")
    assert (spec.origin, spec.origin_id, spec.vni, spec.state) == ("h1", "a" * 64, 10001, "active")
    req = copy_request(spec, "pynet:latest")
    assert req == NetworkSpec(
        Name="blue",
        Driver="pynet:latest",
        Options={"mode": "vxlan", "vni": "10001"},
        Labels={"team": "red"},
        IPAM=DockerIpam(Driver="pynet:latest", Config=[IpamConfig(Subnet="10.208.3.0/24", Gateway="10.208.3.1")]),
    )
    macvlan = spec_from_inspect(inspected(Options={"mode": "macvlan", "parent": "eth0", "cluster": "true"}), 0, "h1")
    assert copy_request(macvlan, "pynet").Options == {"mode": "macvlan", "parent": "eth0", "cluster": "true"}


def test_what_is_a_copy() -> None:
    spec = spec_from_inspect(inspected(), 10001, "h1")
    assert is_copy(spec, inspected(Id="b" * 64), "pynet", 10001)
    assert not is_copy(spec, inspected(Driver="bridge"), "pynet", 0)
    assert not is_copy(spec, inspected(), "pynet", 10002)
    other = inspected(IPAM=DockerIpam(Driver="pynet", Config=[IpamConfig(Subnet="10.9.0.0/24")]))
    assert not is_copy(spec, other, "pynet", 10001)


@pytest.mark.parametrize(
    ("state", "local", "copy", "same", "action"),
    [
        ("active", False, False, False, "create"),
        ("active", True, False, True, "keep"),
        ("active", True, True, False, "keep"),  # recorded as ours by its Docker ID
        ("active", True, False, False, "conflict"),
        ("active", False, True, False, "removed-here"),
        ("removing", True, True, True, "delete"),
        ("removing", True, False, False, "none"),  # another network of that name: left alone
        ("removing", False, True, False, "forget"),
        ("removing", False, False, False, "none"),
    ],
)
def test_decide(state: str, local: bool, copy: bool, same: bool, action: str) -> None:
    spec = msgspec.structs.replace(spec_from_inspect(inspected(), 10001, "h1"), state=state)  # type: ignore[arg-type]
    net = inspected() if local else None
    assert decide(spec, net, Copy("a" * 64) if copy else None, same) == action
    assert isinstance(spec, ClusterSpec)
