"""Cluster networks (issue 9): a network created once, on one host, exists on every host.

Three lab hosts with their own dockerd and pynet, one etcd. Everything is typed on one host as a
user would; the other hosts' copies are made by their agents. Waits are bounded polls.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import DockerRelease, Lab
from tests.dockercli import Docker, wait_for
from tests.multihost.conftest import put_garbage

PROPAGATION = 10.0  # the bound for a copy to appear
VXLAN = ("-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan")


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(name="pnc" + secrets.token_hex(2), hosts=3, etcd=True, docker=docker_release) as lab:
        put_garbage(lab)  # every test here also proves the agent reads on past it
        yield lab


def inspect(d: Docker, name: str) -> dict[str, Any] | None:
    out = d("network", "inspect", name, check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def create(dockers: list[Docker], base: str, *args: str, on: int = 0) -> str:
    """`docker network create` on one host; every host's cleanup removes it."""
    name = dockers[on].network(base, *args)
    for d in dockers:
        if d is not dockers[on]:
            d.networks.append(name)
    return name


def appears(d: Docker, name: str) -> dict[str, Any]:
    started = time.monotonic()
    if not wait_for(lambda: inspect(d, name) is not None, PROPAGATION):
        log = (d.host.root / "pynet.log").read_text().splitlines()[-40:]
        pytest.fail(f"{name} never appeared on {d.host.name}; its pynet log ends:\n" + "\n".join(log))
    print(f"{name} on {d.host.name} after {time.monotonic() - started:.2f} s")  # informational
    found = inspect(d, name)
    assert found is not None
    return found


def gone(d: Docker, name: str) -> bool:
    return wait_for(lambda: inspect(d, name) is None, PROPAGATION)


def replicated(net: dict[str, Any]) -> dict[str, Any]:
    """What a copy must share with the original: all but the reserved VNI in the options (an
    empty IPAM option map the CLI sent shows as {}, the copy's as null: the same)."""
    return {
        "Driver": net["Driver"],
        "IPAM": {**net["IPAM"], "Options": net["IPAM"]["Options"] or {}},
        "Options": {k: v for k, v in net["Options"].items() if k != "vni"},
        "Labels": net["Labels"],
        "Internal": net["Internal"],
    }


def vni_of(net: dict[str, Any]) -> int:
    return int(net["Options"]["vni"])


def pynet_status(d: Docker) -> dict[str, Any]:
    out = d.host.run(*d.host.lab.pynet_cmd, "status", "--json", check=False)
    return dict(json.loads(out.stdout))


def test_create_once_use_everywhere(dockers: list[Docker]) -> None:
    ipam = ("--subnet", "10.61.0.0/24", "--ip-range", "10.61.0.128/25")
    name = create(dockers, "blue", *VXLAN, "--label", "team=red", *ipam)
    origin = inspect(dockers[0], name)
    assert origin is not None
    copies = [appears(d, name) for d in dockers[1:]]
    for copy in copies:
        assert replicated(copy) == replicated(origin)
        assert copy["Id"] != origin["Id"]
    assert len({vni_of(c) for c in copies}) == 1
    a = dockers[0].run("a", "--network", name)
    b = dockers[1].run("b", "--network", name)
    ip_a, ip_b = dockers[0].ip(a, name), dockers[1].ip(b, name)
    assert ip_a != ip_b and ip_a.startswith("10.61.0.1")  # from the ip-range: upper half
    assert dockers[1].pings(b, ip_a) and dockers[0].pings(a, ip_b)
    # docker network connect on the third host
    c = dockers[2].run("c")
    dockers[2]("network", "connect", name, c)
    assert dockers[2].pings(c, ip_a)


def test_automatic_vnis_and_subnets_are_unique_across_hosts(dockers: list[Docker]) -> None:
    names = [create(dockers, f"auto{i}", *VXLAN, on=i) for i in range(3)]
    nets = [appears(dockers[(i + 1) % 3], n) for i, n in enumerate(names)]
    vnis = {vni_of(n) for n in nets}
    subnets = {n["IPAM"]["Config"][0]["Subnet"] for n in nets}
    assert len(vnis) == 3 and len(subnets) == 3, (vnis, subnets)


def test_a_vni_reserved_by_another_network_is_refused(dockers: list[Docker]) -> None:
    name = create(dockers, "owner", *VXLAN)
    vni = vni_of(appears(dockers[1], name))
    thief = dockers[1].name("thief")
    out = dockers[1]("network", "create", *VXLAN, "-o", f"vni={vni}", "--subnet", "10.62.0.0/24", thief, check=False)
    assert out.returncode != 0 and f"VNI {vni}" in out.stderr, out.stderr


def test_explicit_vni_stays_per_host_and_cluster_false_too(dockers: list[Docker]) -> None:
    local = create(dockers, "local", *VXLAN, "-o", "vni=4242", "--subnet", "10.63.0.0/24")
    kept = create(dockers, "kept", *VXLAN, "-o", "cluster=false")
    opted = create(dockers, "opted", *VXLAN, "-o", "vni=4343", "-o", "cluster=true", "--subnet", "10.64.0.0/24")
    marker = create(dockers, "marker", *VXLAN)  # made last: once it is everywhere, the others would be
    for d in dockers[1:]:
        appears(d, marker)
        assert vni_of(appears(d, opted)) == 4343
        assert inspect(d, local) is None and inspect(d, kept) is None


def test_rm_on_one_host_waits_for_containers_elsewhere(dockers: list[Docker]) -> None:
    name = create(dockers, "gone", *VXLAN)
    for d in dockers[1:]:
        appears(d, name)
    user = dockers[1].run("user", "--network", name)
    dockers[0]("network", "rm", name)
    assert gone(dockers[2], name), "a host without containers removes its copy"
    assert inspect(dockers[1], name) is not None, "a host with a container on it keeps it"
    dockers[1]("rm", "-f", user)
    dockers[1].containers.remove(user)
    assert gone(dockers[1], name), "removed once the last container left"


def test_a_different_network_of_that_name_is_left_alone(dockers: list[Docker]) -> None:
    name = dockers[2].network("taken", "--subnet", "10.65.0.0/24")  # Docker's bridge, on host 3 only
    create(dockers, "taken", *VXLAN)
    appears(dockers[1], name)
    net = inspect(dockers[2], name)
    assert net is not None and net["Driver"] == "bridge"

    def reported() -> bool:
        tasks = {t["name"]: t for t in pynet_status(dockers[2]).get("tasks", [])}
        return name in tasks.get("cluster-networks", {}).get("detail", {}).get("conflict", "")

    assert wait_for(reported, PROPAGATION)
    doctor = dockers[2].host.run(*dockers[2].host.lab.pynet_cmd, "doctor", check=False).stdout
    assert "cluster networks" in doctor and name in doctor


def test_a_host_whose_pynet_starts_later_gets_every_network(lab: Lab, dockers: list[Docker]) -> None:
    late = lab.hosts[2]
    late.stop_pynet()
    try:
        name = create(dockers, "late", *VXLAN)
        appears(dockers[1], name)
    finally:
        late.start_pynet()
    appears(dockers[2], name)
    status = {t["name"]: t for t in pynet_status(dockers[2])["tasks"]}
    assert status["cluster-networks"]["state"] == "running"
    assert status["cluster-networks"]["detail"]["api"].startswith("1.")


def test_macvlan_opt_in(dockers: list[Docker]) -> None:
    args = ("-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=macvlan", "-o", "parent=eth0")
    alone = create(dockers, "mvlocal", *args, "--subnet", "10.67.0.0/24")  # first: copied by now if ever
    shared = create(dockers, "mv", *args, "-o", "cluster=true", "--subnet", "10.66.0.0/24")
    copy = appears(dockers[1], shared)
    assert copy["Options"]["parent"] == "eth0"
    a = dockers[0].run("ma", "--network", shared)
    b = dockers[1].run("mb", "--network", shared)
    assert dockers[1].pings(b, dockers[0].ip(a, shared))
    assert inspect(dockers[1], alone) is None


def test_ipv6_only_vxlan_network(dockers: list[Docker], docker_release: DockerRelease) -> None:
    """Docker 28's --ipv4=false on a cluster VXLAN network: the copies are IPv6-only too (the
    agent passes EnableIPv4 on), and containers on two hosts reach each other and the gateway
    over IPv6 alone. Before 28 there is no such network (tests/docker/test_docker_releases.py)."""
    args = (*VXLAN, "--ipv4=false", "--ipv6", "--subnet", "fd00:72::/64")
    if docker_release.name in ("20.10", "26.1"):
        r = dockers[0]("network", "create", *args, dockers[0].name("six"), check=False)
        assert r.returncode != 0 and "unknown flag: --ipv4" in r.stderr, r.stderr
        return
    name = create(dockers, "six", *args)
    copy = appears(dockers[1], name)
    assert copy["EnableIPv4"] is False and copy["EnableIPv6"] is True
    a = dockers[0].run("a", "--network", name)
    b = dockers[1].run("b", "--network", name)
    assert dockers[0].ip(a, name) == dockers[1].ip(b, name) == ""
    ip_b = dockers[1].ip(b, name, "GlobalIPv6Address")
    assert wait_for(lambda: dockers[0].pings(a, ip_b, v6=True), 5), "across hosts, IPv6 only"
    assert dockers[1].pings(b, "fd00:72::1", v6=True), "the gateway, on its own host"
    assert "inet " not in dockers[1].exec(b, "ip", "-4", "addr", "show", "dev", "eth0").stdout
