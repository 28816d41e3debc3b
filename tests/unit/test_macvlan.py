"""macvlan options, the checks between networks on one parent, the 802.1q request and the
sub-interface's reference count, without a kernel (a small in-memory one stands in for it)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pyroute2.iproute.linux import get_arguments_processor
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from msgspec.structs import replace

from pynet.drivers.base import Endpoint, JoinInfo, Network, Subnet
from pynet.drivers.config import MacvlanConfig
from pynet.drivers.macvlan import MacvlanBackend, check_sharing, split_vlan
from pynet.drivers.netlink import HostView, Link, Netlink, vlan_request
from pynet.drivers.registry import LINK_PREFIXES
from pynet.store.errors import Conflict, InvalidRequest, PynetError

NET = "ab" * 32
LAN = Subnet("192.168.1.0/24", "192.168.1.1/24", {"host_shim": "192.168.1.250/24"})


def network(
    options: dict[str, str] | None = None,
    *,
    id: str = NET,
    ipv4: tuple[Subnet, ...] = (LAN,),
    ipv6: tuple[Subnet, ...] = (),
    internal: bool = False,
) -> Network:
    draft = Network(id, "macvlan", {}, MacvlanConfig(parent=""), list(ipv4), list(ipv6), internal=internal)
    cfg = MacvlanBackend(Netlink(), LINK_PREFIXES).parse_options({"parent": "eth0"} if options is None else options, draft)
    return replace(draft, config=cfg)


async def create(mv: MacvlanBackend, net: Network) -> Network:
    """The network as the caller stores it: with what create resolved."""
    return replace(net, config=await mv.create_network(net))


def rejects(options: dict[str, str], match: str, **kw: Any) -> None:
    with pytest.raises(InvalidRequest, match=match):
        network(options, **kw)


# -- options -----------------------------------------------------------------------------------


def test_defaults() -> None:
    assert network().config == MacvlanConfig(parent="eth0", macvlan_mode="bridge", mtu=None, host_shim="")


def test_docker_names_and_aliases() -> None:
    cfg = network({"parent": "eth0.10", "macvlan_mode": "vepa", "com.docker.network.driver.mtu": "1400"}).config
    assert cfg == MacvlanConfig(parent="eth0.10", macvlan_mode="vepa", mtu=1400)
    assert network({"parent": "eth0", "mtu": "9000"}).config == MacvlanConfig(parent="eth0", mtu=9000)


def test_unknown_option_is_rejected_with_the_known_ones() -> None:
    rejects(
        {"parent": "eth0", "ipvlan_mode": "l2"},
        r"unknown option 'ipvlan_mode' for mode macvlan \(known: cluster, com.docker.network.driver.mtu, host_shim, macvlan_mode, parent\)",
    )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"parent": "eth0", "macvlan_mode": "l2"}, r"option macvlan_mode must be one of bridge, vepa, private, passthru, got 'l2'"),
        ({"parent": "eth0", "mtu": "65536"}, r"option mtu must be an integer in 68..65535, got '65536'"),
        ({"parent": "eth0", "mtu": "big"}, r"option mtu must be an integer in 68..65535, got 'big'"),
        ({"parent": "a-very-long-interface"}, r"option parent must be an interface name of 1 to 15 ASCII characters, without '/', ':' or spaces, got 'a-very-long-interface'"),
        ({"parent": "lo"}, r"option parent must be an Ethernet interface, not the loopback, got 'lo'"),
        ({"parent": "lo.10"}, r"option parent must be an Ethernet interface, not the loopback, got 'lo.10'"),
        ({"parent": "pnb-0123456789a"}, r"option parent must be a host interface, not a link pynet made for a network, got 'pnb-0123456789a'"),
        ({"parent": "pnv-0123456789a"}, r"not a link pynet made for a network, got 'pnv-0123456789a'"),
        ({"parent": "pnm-0123456789a"}, r"not a link pynet made for a network, got 'pnm-0123456789a'"),
        ({"parent": "pnx-42"}, r"not a link pynet made for a network, got 'pnx-42'"),
        ({"parent": "eth0.0"}, r"option parent must be <interface>.<VLAN id> with a VLAN id in 1..4094, got 'eth0.0'"),
        ({"parent": "eth0.4095"}, r"with a VLAN id in 1..4094, got 'eth0.4095'"),
        ({"parent": ".10"}, r"with a VLAN id in 1..4094, got '.10'"),
        ({}, r"option parent is required \(the host interface the containers share, e.g. -o parent=eth0\), unless the network is --internal"),
    ],
)
def test_bad_values_are_named(options: dict[str, str], match: str) -> None:
    rejects(options, match)


def test_a_dotted_name_without_a_vlan_id_is_an_ordinary_parent() -> None:
    assert network({"parent": "br.lan"}).config == MacvlanConfig(parent="br.lan")
    assert split_vlan("br.lan") is None
    assert split_vlan("eth0") is None
    assert split_vlan("eth0.10") == ("eth0", 10)
    assert split_vlan("bond0.100.4094") == ("bond0.100", 4094)


def test_internal_network_gets_its_own_parent() -> None:
    cfg = network({}, internal=True).config
    assert cfg == MacvlanConfig(parent="pnm-" + NET[:11], mtu=1500)
    assert network({"mtu": "9000"}, internal=True).config == MacvlanConfig(parent="pnm-" + NET[:11], mtu=9000)
    rejects({"parent": "eth0"}, r"option parent must be unset on an --internal network, which has no uplink, got 'eth0'", internal=True)


@pytest.mark.parametrize(
    "shim, extra, match",
    [
        ("192.168.1.250", {}, r"option host_shim must be an IPv4 address in CIDR form \(e.g. 192.168.1.250/32\), got '192.168.1.250'"),
        ("fd00::250/64", {}, r"option host_shim must be an IPv4 address in CIDR form .*, got 'fd00::250/64'"),
        ("shim", {}, r"option host_shim must be an IPv4 address in CIDR form .*, got 'shim'"),
        ("192.168.1.250/33", {}, r"got '192.168.1.250/33'"),
        ("192.168.1.250/32", {"macvlan_mode": "private"}, r"option host_shim needs macvlan_mode bridge, got macvlan_mode 'private'"),
        ("10.9.9.9/32", {}, r"option host_shim must be an address in the network's IPv4 subnets \(192.168.1.0/24\), got '10.9.9.9/32'"),
        ("192.168.1.251/32", {}, r"option host_shim 192.168.1.251/32 must be reserved with --aux-address \(e.g. --aux-address host_shim=192.168.1.251\)"),
    ],
)
def test_bad_host_shims_are_named(shim: str, extra: dict[str, str], match: str) -> None:
    rejects({"parent": "eth0", "host_shim": shim, **extra}, match)


def test_host_shim_on_a_reserved_address_or_the_gateway() -> None:
    assert network({"parent": "eth0", "host_shim": "192.168.1.250/32"}).config == MacvlanConfig(
        parent="eth0", host_shim="192.168.1.250/32"
    )
    assert network({"parent": "eth0", "host_shim": "192.168.1.1/24"}).config == MacvlanConfig(
        parent="eth0", host_shim="192.168.1.1/24"
    )
    rejects({"parent": "eth0", "host_shim": "192.168.1.250/32"}, r"IPv4 subnets \(none\)", ipv4=())


# -- networks sharing a parent -----------------------------------------------------------------


def other(options: dict[str, str], *subnets: str, id: str = "cd" * 32) -> Network:
    return network(options, id=id, ipv4=tuple(Subnet(s) for s in subnets if "." in s), ipv6=tuple(Subnet(s) for s in subnets if ":" in s))


def test_networks_share_a_parent_with_disjoint_subnets() -> None:
    mine = other({"parent": "eth0"}, "10.1.0.0/24", "fd00:1::/64", id=NET)
    check_sharing(mine, [other({"parent": "eth0"}, "10.2.0.0/24", "fd00:2::/64"), mine])
    check_sharing(mine, [other({"parent": "eth1", "macvlan_mode": "vepa"}, "10.1.0.0/24")])


@pytest.mark.parametrize(
    "mine, theirs, match",
    [
        (({"parent": "eth0"}, "10.1.0.0/24"), ({"parent": "eth0"}, "10.1.0.128/25"),
         r"subnet 10.1.0.0/24 overlaps 10.1.0.128/25 of network cdcdcdcdcdcd on parent 'eth0'"),
        (({"parent": "eth0"}, "fd00:1::/64"), ({"parent": "eth0"}, "fd00::/16"),
         r"subnet fd00:1::/64 overlaps fd00::/16 of network cdcdcdcdcdcd"),
        (({"parent": "eth0", "macvlan_mode": "vepa"}, "10.1.0.0/24"), ({"parent": "eth0"}, "10.2.0.0/24"),
         r"option macvlan_mode 'vepa' differs from macvlan_mode 'bridge' of network cdcdcdcdcdcd on parent 'eth0'"),
        (({"parent": "eth0", "macvlan_mode": "passthru"}, "10.1.0.0/24"), ({"parent": "eth0"}, "10.2.0.0/24"),
         r"option parent 'eth0' is used by network cdcdcdcdcdcd in macvlan_mode bridge, and macvlan_mode passthru gives a parent to one network only"),
        (({"parent": "eth0"}, "10.1.0.0/24"), ({"parent": "eth0", "macvlan_mode": "passthru"}, "10.2.0.0/24"),
         r"used by network cdcdcdcdcdcd in macvlan_mode passthru"),
    ],
)
def test_conflicts_on_one_parent(mine: tuple[Any, ...], theirs: tuple[Any, ...], match: str) -> None:
    with pytest.raises(Conflict, match=match):
        check_sharing(other(mine[0], *mine[1:], id=NET), [other(theirs[0], *theirs[1:])])


# -- join and ports ----------------------------------------------------------------------------


async def test_join_hands_over_the_link_with_the_subnet_gateways() -> None:
    backend = MacvlanBackend(Netlink(), LINK_PREFIXES)
    net = network(ipv6=(Subnet("fd00:1::/64", "fd00:1::1/64"),))
    ep = Endpoint(id="ef" * 32, network_id=NET, address="192.168.1.7/24", address6="fd00:1::7/64", peer="pnv-efefefefefe")
    assert await backend.join(net, ep) == JoinInfo(src_name="pnv-efefefefefe", gateway="192.168.1.1", gateway6="fd00:1::1")
    no_gateway = network(ipv4=(Subnet("192.168.1.0/24"),))
    assert await backend.join(no_gateway, ep) == JoinInfo(src_name="pnv-efefefefefe", disable_gateway=True)
    internal = network({}, internal=True)
    assert await backend.join(internal, ep) == JoinInfo(src_name="pnv-efefefefefe", disable_gateway=True)


# -- the 802.1q request ------------------------------------------------------------------------


def encode_link_add(request: dict[str, Any]) -> ifinfmsg:
    """What pyroute2 puts on the wire for `link("add", **request)`, decoded again."""
    args = get_arguments_processor("link", "add", dict(request))
    msg = ifinfmsg()
    for field, *_ in msg.fields:
        msg[field] = args.get_value(field, default=0, mode="field")
    for key, value in args.items():
        nla = ifinfmsg.name2nla(key)
        if msg.valid_nla(nla) and value is not None:
            msg["attrs"].append([nla, value])
    msg.encode()
    wire = ifinfmsg(msg.data)
    wire.decode()
    return wire


def test_the_8021q_request_carries_kind_vlan_id_and_base_link() -> None:
    request = vlan_request("eth0.10", 7, 10)
    wire = encode_link_add(request)
    assert wire.get("IFLA_IFNAME") == "eth0.10"
    assert wire.get("IFLA_LINK") == 7
    assert wire.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vlan"
    assert wire.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VLAN_ID") == 10


class RefusingIPRoute:
    """A socket whose kernel has no 8021q module: it records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def link(self, command: str, **kw: Any) -> list[Any]:
        self.calls.append((command, kw))
        raise NetlinkError(95, "Operation not supported")


async def test_a_kernel_without_8021q_gets_a_clear_error() -> None:
    nl = Netlink()
    ipr = RefusingIPRoute()
    nl._ipr = ipr  # type: ignore[assignment]
    with pytest.raises(PynetError) as err:
        await nl.create_vlan("eth0.10", 7, 10)
    assert str(err.value) == (
        "pynet: cannot create 802.1q sub-interface eth0.10: the kernel has no 8021q support "
        "(Operation not supported; load it with `modprobe 8021q`)"
    )
    assert ipr.calls == [("add", {"ifname": "eth0.10", "kind": "vlan", "link": 7, "vlan_id": 10})]


# -- the sub-interface's reference count, over an in-memory kernel -----------------------------


class FakeNetlink:
    """The `Netlink` calls the macvlan backend makes, over a dict of links (no routes)."""

    def __init__(self, *links: Link) -> None:
        self.links_by_name = {link.name: link for link in links}

    async def link(self, name: str) -> Link | None:
        return self.links_by_name.get(name)

    async def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self.links_by_name.values() if link.index == index), None)

    async def links(self) -> list[Link]:
        return list(self.links_by_name.values())

    async def add_link(self, name: str, kind: str, link: int = 0, mtu: int = 1500, **_: Any) -> bool:
        if name in self.links_by_name:
            return False
        index = max((x.index for x in self.links_by_name.values()), default=0) + 1
        self.links_by_name[name] = Link(name, index, kind, mtu, True, "02:00:00:00:00:01", 0, link)
        return True

    async def create_vlan(self, name: str, base_index: int, vlan_id: int) -> bool:
        base = await self.link_by_index(base_index)
        assert base is not None
        return await self.add_link(name, "vlan", link=base_index, mtu=base.mtu)

    async def ensure_bridge(self, name: str, mtu: int, mac: str = "") -> bool:
        return await self.add_link(name, "bridge", mtu=mtu)

    async def delete_link(self, name: str) -> bool:
        return self.links_by_name.pop(name, None) is not None

    async def retire_link(self, name: str) -> None:
        self.links_by_name.pop(name, None)

    async def settle(self) -> None:
        return None

    async def set_link(self, name: str, **_: Any) -> None:
        return None

    async def ensure_address(self, name: str, cidr: str, prefix_route: bool = True) -> None:
        return None

    async def ensure_route(self, dst: str, dev: str) -> None:
        return None

    async def delete_route(self, dst: str, dev: str) -> bool:
        return True


ETH0 = Link("eth0", 2, "", 1500, True, "52:54:00:00:00:01", 0, 0)


# Reconcile's look at the host: the macvlan backend asks FakeNetlink instead.
NO_VIEW = HostView({}, {}, None)


def backend(*links: Link) -> tuple[MacvlanBackend, FakeNetlink]:
    nl = FakeNetlink(ETH0, *links)
    return MacvlanBackend(nl, LINK_PREFIXES), nl  # type: ignore[arg-type]


async def test_a_sub_interface_pynet_made_goes_with_the_last_network_on_it() -> None:
    mv, nl = backend()
    a = other({"parent": "eth0.10"}, "10.1.0.0/24", id="a1" * 32)
    b = other({"parent": "eth0.10"}, "10.2.0.0/24", id="b2" * 32)
    a = await create(mv, a)
    assert nl.links_by_name["eth0.10"].parent == ETH0.index
    b = await create(mv, b)
    assert a.config == b.config == MacvlanConfig(parent="eth0.10", mtu=1500, vlan_created=True), "b inherits ownership"
    await mv.delete_network(a)
    assert "eth0.10" in nl.links_by_name, "network b still uses it"
    await mv.delete_network(b)
    assert "eth0.10" not in nl.links_by_name


async def test_the_count_survives_a_restart() -> None:
    mv, nl = backend()
    a = other({"parent": "eth0.10"}, "10.1.0.0/24", id="a1" * 32)
    b = other({"parent": "eth0.10"}, "10.2.0.0/24", id="b2" * 32)
    a, b = await create(mv, a), await create(mv, b)
    del nl.links_by_name["eth0.10"]
    restarted = MacvlanBackend(nl, LINK_PREFIXES)  # type: ignore[arg-type]
    await restarted.reconcile([a, b], [], NO_VIEW)
    assert nl.links_by_name["eth0.10"].kind == "vlan", "recreated: pynet owns it"
    await restarted.delete_network(b)
    assert "eth0.10" in nl.links_by_name
    await restarted.delete_network(a)
    assert "eth0.10" not in nl.links_by_name


async def test_a_sub_interface_the_user_made_stays() -> None:
    mine = Link("eth0.20", 9, "vlan", 1500, True, "52:54:00:00:00:01", 0, ETH0.index)
    mv, nl = backend(mine)
    a = other({"parent": "eth0.20"}, "10.1.0.0/24")
    a = await create(mv, a)
    assert a.config == MacvlanConfig(parent="eth0.20", mtu=1500, vlan_created=False)
    await mv.delete_network(a)
    assert nl.links_by_name["eth0.20"] == mine
    del nl.links_by_name["eth0.20"]
    with pytest.raises(InvalidRequest, match=r"option parent: interface 'eth0.20' does not exist"):
        await mv.create_network(a)


@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"parent": "eth0.10", "mtu": "9000"}, InvalidRequest,
         r"option com.docker.network.driver.mtu 9000 is above the MTU 1500 of parent 'eth0.10'"),
        ({"parent": "eth1.10"}, Conflict, r"option parent: interface 'eth1' \(the base of eth1.10\) is down \(ip link set eth1 up\)"),
        ({"parent": "eth9.10"}, InvalidRequest, r"option parent: interface 'eth9' \(the base of eth9.10\) does not exist"),
        ({"parent": "eth9"}, InvalidRequest, r"option parent: interface 'eth9' does not exist"),
        ({"parent": "mv0"}, InvalidRequest, r"option parent: interface 'mv0' is a macvlan link, not a host interface"),
    ],
)
async def test_a_failed_create_leaves_nothing(options: dict[str, str], exc: type[Exception], match: str) -> None:
    down = dataclasses.replace(ETH0, name="eth1", index=3, up=False)
    mv, nl = backend(down, Link("mv0", 4, "macvlan", 1500, True, "02:00:00:00:00:02", 0, ETH0.index))
    before = dict(nl.links_by_name)
    with pytest.raises(exc, match=match):
        await mv.create_network(network(options))
    assert nl.links_by_name == before
    assert not mv._nets


async def test_a_retried_create_only_makes_sure_the_kernel_has_it() -> None:
    mv, nl = backend()
    gateway_shim = {"parent": "eth0.10", "host_shim": "10.1.0.1/24"}
    a = await create(mv, network(gateway_shim, id="a1" * 32, ipv4=(Subnet("10.1.0.0/24", "10.1.0.1/24"),)))
    del nl.links_by_name["pns-a1a1a1a1a1a"]
    nl.links_by_name["eth0"] = dataclasses.replace(ETH0, up=False)
    await mv.create_network(a)  # no "parent is down", no conflict with itself
    assert {"eth0.10", "pns-a1a1a1a1a1a"} <= set(nl.links_by_name)
