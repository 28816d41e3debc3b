"""gc's judgement on made-up inventories: what is a leak, and what must never be one."""

from __future__ import annotations

import msgspec

from pynet.drivers.base import Endpoint, Network, Subnet
from pynet.drivers.config import BridgeConfig
from pynet.ipam.pools import Allocation, PoolRef
from pynet.plugin.ops import gc
from pynet.plugin.ops.iptables import Rule

NET = "a" * 64
LIVE = "b" * 64  # an endpoint whose container runs: its veth peer is inside the container
DEAD = "c" * 64  # the container is gone: Docker moved the peer back, DeleteEndpoint failed
NOW = 1_000_000.0


def network(net_id: str = NET, bridge: str = "pnb-" + NET[:11]) -> Network:
    return Network(
        id=net_id,
        mode="bridge",
        options={},
        config=BridgeConfig(bridge=bridge, mtu=1500, owns_bridge=True),
        ipv4=[Subnet("10.1.0.0/24", "10.1.0.1/24", {"router": "10.1.0.200"})],
    )


def endpoint(ep_id: str, address: str) -> Endpoint:
    return Endpoint(ep_id, NET, address=address, ifname="pnh-" + ep_id[:11], peer="pnc-" + ep_id[:11], joined=True)


def allocation(address: str, owner: str, host: str = "h1", age: float = 3600) -> Allocation:
    return Allocation("10.1.0.0/24", address, host, owner, NOW - age)


def inventory(**changes: object) -> gc.Inventory:
    base = gc.Inventory(
        host="h1",
        links=["eth0", "pnb-" + NET[:11], "pnh-" + LIVE[:11], "pnh-" + DEAD[:11], "pnc-" + DEAD[:11]],
        networks=[network()],
        endpoints=[endpoint(LIVE, "10.1.0.2/24"), endpoint(DEAD, "10.1.0.3/24")],
        allocations=[
            allocation("10.1.0.1", "gateway"),
            allocation("10.1.0.200", "aux"),
            allocation("10.1.0.2", LIVE),
            allocation("10.1.0.3", DEAD),
        ],
        rules=[Rule(4, "filter", f"-A PYNET-FORWARD -i pnb-{NET[:11]} -o docker0 -j DROP")],
        outsiders=["docker0", "br-+"],
    )
    for k, v in changes.items():
        setattr(base, k, v)
    return base


def view(endpoints: tuple[str, ...] = (LIVE,), addresses: tuple[str, ...] = ("10.1.0.2",)) -> gc.DockerView:
    return gc.DockerView(networks=[NET], endpoints=list(endpoints), addresses=list(addresses), subnets=["10.1.0.0/24"])


def keys(leaks: list[gc.Leak]) -> set[tuple[str, str]]:
    return {leak.key for leak in leaks}


def test_a_container_removed_while_pynet_was_down_leaves_record_veth_and_address() -> None:
    leaks = gc.find(inventory(), view(), NOW)
    assert keys(leaks) == {
        ("endpoint", DEAD),
        ("link", "pnh-" + DEAD[:11]),
        ("link", "pnc-" + DEAD[:11]),
        ("allocation", "10.1.0.3"),
    }
    record = next(x for x in leaks if x.kind == "endpoint")
    assert record.network == NET
    link = next(x for x in leaks if x.kind == "link")
    assert DEAD[:12] in link.reason
    address = next(x for x in leaks if x.kind == "allocation")
    assert address.pool == "10.1.0.0/24"


def test_nothing_leaks_when_everything_agrees() -> None:
    inv = inventory(
        links=["pnb-" + NET[:11], "pnh-" + LIVE[:11]],
        endpoints=[endpoint(LIVE, "10.1.0.2/24")],
        allocations=[allocation("10.1.0.1", "gateway"), allocation("10.1.0.2", LIVE)],
    )
    assert gc.find(inv, view(), NOW) == []


def test_an_endpoint_a_container_may_hold_is_never_a_leak_whatever_docker_says() -> None:
    # Docker (or a wrong --docker-host) knows no endpoint at all; the live one's peer is not in
    # the host namespace, so a container holds it.
    leaks = gc.find(inventory(), view(endpoints=(), addresses=()), NOW)
    assert ("endpoint", LIVE) not in keys(leaks)
    assert ("endpoint", DEAD) in keys(leaks)


def test_an_endpoint_whose_links_are_all_gone_is_a_leak() -> None:
    inv = inventory(links=["pnb-" + NET[:11], "pnh-" + LIVE[:11]])
    assert ("endpoint", DEAD) in keys(gc.find(inv, view(), NOW))


def test_without_docker_only_links_and_rules_are_judged() -> None:
    inv = inventory(
        links=[*inventory().links, "pnh-0123456789a"],
        rules=[Rule(4, "filter", "-A PYNET-FORWARD -i pnb-0123456789a -o pnb-0123456789a -j ACCEPT")],
    )
    assert keys(gc.find(inv, None, NOW)) == {
        ("link", "pnh-0123456789a"),
        ("rule", "-A PYNET-FORWARD -i pnb-0123456789a -o pnb-0123456789a -j ACCEPT"),
    }


def test_links_are_referenced_by_config_names_and_by_id_stems() -> None:
    custom = network("d" * 64, bridge="mybridge")
    inv = inventory(
        networks=[network(), custom],
        links=["mybridge", "pns-" + "d" * 11, "pnx-42", "pnb-" + "e" * 11, "docker0"],
        endpoints=[],
        allocations=[],
    )
    both = gc.DockerView(networks=[NET, custom.id], endpoints=[], addresses=[], subnets=["10.1.0.0/24"])
    # pns-<network stem> is a macvlan shim of a known network; pnx-42 and pnb-eee... are not.
    assert keys(gc.find(inv, both, NOW)) == {("link", "pnx-42"), ("link", "pnb-" + "e" * 11)}


def test_young_allocations_are_left_alone() -> None:
    inv = inventory(allocations=[allocation("10.1.0.9", "container", age=5)])
    assert ("allocation", "10.1.0.9") not in keys(gc.find(inv, view(), NOW, min_age=60))
    assert ("allocation", "10.1.0.9") in keys(gc.find(inv, view(), NOW, min_age=0))


def test_addresses_docker_uses_and_other_hosts_addresses_are_not_leaks() -> None:
    inv = inventory(
        endpoints=[],
        links=[],
        allocations=[
            allocation("10.1.0.7", "container"),  # a container on Docker's own driver with pynet's IPAM
            allocation("10.1.0.8", "container", host="h2"),  # another host's
        ],
    )
    assert gc.find(inv, view(addresses=("10.1.0.7",)), NOW) == []


def test_gateway_and_aux_leak_only_when_no_network_has_their_pool() -> None:
    orphan = Allocation("10.9.0.0/24", "10.9.0.1", "h1", "gateway", NOW - 3600)
    inv = inventory(endpoints=[], links=[], allocations=[orphan, allocation("10.1.0.77", "aux")])
    leaks = gc.find(inv, view(), NOW)
    assert keys(leaks) == {("allocation", "10.9.0.1")}
    assert "10.9.0.0/24" in leaks[0].reason


def test_rules_naming_unknown_bridges_or_networks_are_leaks() -> None:
    gone = "f" * 64
    comment = f'-m comment --comment "pynet {gone}"'
    rules = [
        Rule(4, "filter", f"-A PYNET-FORWARD -i pnb-{NET[:11]} -o br-+ -j DROP"),
        Rule(4, "nat", f"-A PYNET-POSTROUTING -s 10.2.0.0/24 ! -o pnb-{gone[:11]} {comment} -j MASQUERADE"),
        Rule(6, "nat", f"-A PYNET-PREROUTING -p tcp --dport 80 {comment} -j DNAT --to-destination [fd00::2]:80"),
        Rule(4, "filter", "-A PYNET-FORWARD -i virbr0 -o pnb-" + NET[:11] + " -j DROP"),
    ]
    leaks = gc.find(inventory(rules=rules, outsiders=["docker0", "br-+", "virbr0"]), None, NOW)
    rule_leaks = [x for x in leaks if x.kind == "rule"]
    assert [(x.family, x.table) for x in rule_leaks] == [(4, "nat"), (6, "nat")]
    assert "pnb-" + gone[:11] in rule_leaks[0].reason and gone[:12] in rule_leaks[1].reason


def test_removal_is_refused_when_docker_knows_none_of_pynets_networks_that_containers_use() -> None:
    inv = inventory()
    elsewhere = gc.DockerView(networks=["x" * 64], endpoints=[], addresses=[], subnets=[])
    assert "--docker-host" in gc.refusal(inv, elsewhere), "LIVE's veth peer is in a container"
    assert gc.refusal(inv, view()) == ""
    assert gc.refusal(inventory(networks=[]), gc.DockerView([], [], [], [])) == ""
    # Every network removed while pynet was down, no container left on them: a leak, not a refusal.
    assert gc.refusal(inventory(endpoints=[endpoint(DEAD, "10.1.0.3/24")]), elsewhere) == ""


POOL = PoolRef("pynet-local:10.1.0.0/24", "10.1.0.0/24", NOW - 3600)


def test_a_network_docker_removed_while_pynet_was_down_leaks_with_all_it_held() -> None:
    base = inventory()
    inv = inventory(
        links=[x for x in base.links if LIVE[:11] not in x],
        endpoints=[endpoint(DEAD, "10.1.0.3/24")],
        allocations=[a for a in base.allocations if a.owner != LIVE],
        pools=[POOL],
    )
    leaks = gc.find(inv, gc.DockerView(networks=[], endpoints=[], addresses=[], subnets=[]), NOW)
    assert keys(leaks) == {
        ("network", NET),
        ("endpoint", DEAD),
        ("link", "pnb-" + NET[:11]),
        ("link", "pnh-" + DEAD[:11]),
        ("link", "pnc-" + DEAD[:11]),
        ("pool", "pynet-local:10.1.0.0/24"),
        ("allocation", "10.1.0.1"),
        ("allocation", "10.1.0.200"),
        ("allocation", "10.1.0.3"),
        ("rule", f"-A PYNET-FORWARD -i pnb-{NET[:11]} -o docker0 -j DROP"),
    }
    assert sorted(leaks, key=lambda x: gc.ORDER[x.kind])[0].kind == "network", "removed first"


def test_a_network_is_kept_while_docker_knows_it_a_container_holds_it_or_it_is_young() -> None:
    gone = gc.DockerView(networks=[], endpoints=[LIVE], addresses=[], subnets=[])
    assert ("network", NET) not in keys(gc.find(inventory(pools=[POOL]), gone, NOW)), "LIVE is on it"
    young = msgspec.structs.replace(network(), created=NOW - 5)
    inv = inventory(networks=[young], endpoints=[], pools=[POOL])
    leaks = keys(gc.find(inv, gc.DockerView([], [], [], []), NOW))
    assert ("network", NET) not in leaks and ("pool", POOL.pool_id) not in leaks, "Docker may be creating it"
    assert not [k for k in keys(gc.find(inventory(pools=[POOL]), view(), NOW)) if k[0] in ("network", "pool")]


def test_a_pool_leaks_only_when_no_network_of_pynets_or_dockers_has_it_and_it_is_old() -> None:
    other = PoolRef("pynet-global:10.9.0.0/24:10.9.0.0/25", "10.9.0.0/24", NOW - 3600)
    young = PoolRef("pynet-local:10.8.0.0/24", "10.8.0.0/24", NOW - 5)
    inv = inventory(pools=[POOL, other, young])
    docker_has_it = gc.DockerView([NET], [LIVE], ["10.1.0.2"], ["10.1.0.0/24", "10.9.0.0/24"])
    assert not [k for k in keys(gc.find(inv, docker_has_it, NOW)) if k[0] == "pool"]
    leak = next(x for x in gc.find(inv, view(), NOW) if x.kind == "pool")
    assert (leak.name, leak.pool) == (other.pool_id, "10.9.0.0/24")
