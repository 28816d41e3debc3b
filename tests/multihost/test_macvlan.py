"""The macvlan backend across two lab hosts, typed as a user would on each of them.

A macvlan network is local to each host: the user runs the same `docker network create` on
every host, with the hosts' `eth0` (the underlay) as parent, so containers of both hosts share
one Ethernet segment. Without etcd no IPAM sees the other host's containers, so each host gets
its own `--ip-range` of the subnet, as a macvlan user would do with Docker's driver.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

import pytest

from lab import IMAGE, Lab, Node
from tests.dockercli import Docker, pynet_links

# Each pynet keeps its state in its own embedded store: disjoint ranges replace a shared IPAM.
ETCD = False
MACVLAN = ("-d", "pynet", "-o", "mode=macvlan", "-o", "parent=eth0")
IPAMS = {"docker-ipam": (), "pynet-ipam": ("--ipam-driver", "pynet")}
PORT = 9000
# Answers each connection with the listener's own view of its sockets, taken while that
# connection is open: busybox nc has no way to print the peer's address itself.
PEER_REPORTER = ("nc", "-ll", "-p", str(PORT), "-e", "netstat", "-tn")


def host_range(subnet: str, index: int) -> str:
    """Host INDEX's share of SUBNET: a /28 from .64 on, clear of the gateway and of the lab's
    own addresses (.1, .2, .253, .254) when the subnet is the underlay's."""
    return str(list(ipaddress.ip_network(subnet).subnets(new_prefix=28))[3 + index])


def shim_address(subnet: str, index: int) -> str:
    return str(ipaddress.ip_network(subnet)[200 + index])


def with_shim(subnet: str) -> Callable[[int], tuple[str, ...]]:
    """Per-host options giving each host a shim, on an address reserved so no container gets it."""

    def options(index: int) -> tuple[str, ...]:
        addr = shim_address(subnet, index)
        return ("--aux-address", f"shim={addr}", "-o", f"host_shim={addr}/32")

    return options


def macvlan_everywhere(
    dockers: list[Docker],
    base: str,
    subnet: str,
    *args: str,
    gateway: str | None = None,
    per_host: Callable[[int], tuple[str, ...]] = lambda index: (),
) -> str:
    """The same network on every host; the gateway is explicit because Docker's IPAM would
    otherwise take the first address of each host's --ip-range, a different one per host."""
    gateway = gateway or str(ipaddress.ip_network(subnet)[1])
    name = ""
    for index, docker in enumerate(dockers, 1):
        name = docker.network(
            base, *MACVLAN, "--subnet", subnet, "--gateway", gateway,
            "--ip-range", host_range(subnet, index), *args, *per_host(index),
        )
    return name


def reaches(node: Node, address: str) -> bool:
    """busybox's ping: the machine may have no other."""
    return node.run("busybox", "ping", "-c1", "-W2", address, check=False).returncode == 0


def tcp_peer(client: Docker, container: str, server: str, timeout: float = 10.0) -> str | None:
    """The address PEER_REPORTER at SERVER saw for a connection from CONTAINER; None when
    unreachable. Retried, since the listener may still be starting; the sleep keeps nc's
    input open until the reply is in."""
    deadline = time.monotonic() + timeout
    while True:
        out = client.exec(container, "sh", "-c", f"sleep 3 | nc -w 3 {server} {PORT}", check=False).stdout
        for fields in (line.split() for line in out.splitlines()):
            if len(fields) >= 6 and fields[3].endswith(f":{PORT}") and fields[5] == "ESTABLISHED":
                return fields[4].rpartition(":")[0].removeprefix("::ffff:")
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


@pytest.mark.parametrize("ipam", IPAMS.values(), ids=IPAMS.keys())
def test_containers_on_two_hosts_talk_with_their_own_addresses(
    lab: Lab, dockers: list[Docker], ipam: tuple[str, ...]
) -> None:
    d1, d2 = dockers
    subnet = "10.61.0.0/24"
    net = macvlan_everywhere(dockers, "cross", subnet, *ipam)
    c1 = d1.run("c1", "--network", net)
    c2 = d2.run("c2", "--network", net, cmd=PEER_REPORTER)
    ip1, ip2 = d1.ip(c1, net), d2.ip(c2, net)
    assert ipaddress.ip_address(ip1) in ipaddress.ip_network(host_range(subnet, 1))
    assert ipaddress.ip_address(ip2) in ipaddress.ip_network(host_range(subnet, 2))
    assert d1.pings(c1, ip2)
    assert d2.pings(c2, ip1)
    peer = tcp_peer(d1, c1, ip2)
    assert peer == ip1, f"host 2's container saw {peer}, not the sender's own address {ip1}"


def test_networks_on_different_subnets_do_not_reach_each_other(dockers: list[Docker]) -> None:
    d1, d2 = dockers
    red = macvlan_everywhere(dockers, "red", "10.62.0.0/24")
    blue = macvlan_everywhere(dockers, "blue", "10.63.0.0/24")
    red1 = d1.run("red1", "--network", red)
    blue1 = d1.run("blue1", "--network", blue)
    blue2 = d2.run("blue2", "--network", blue)
    assert d1.pings(blue1, d2.ip(blue2, blue)), "each network works on its own"
    assert not d1.pings(red1, d2.ip(blue2, blue)), "across hosts"
    assert not d1.pings(red1, d1.ip(blue1, blue)), "on one host"
    assert not d2.pings(blue2, d1.ip(red1, red))


def test_shim_lets_the_host_reach_its_own_containers(lab: Lab, dockers: list[Docker]) -> None:
    """On the underlay's own subnet, the case users hit: the LAN reaches every container, but
    a host reaches its own only through a shim (host 1 has one, host 2 not)."""
    d1, d2 = dockers
    h1, h2 = lab.hosts
    subnet = str(lab.underlay)
    shim1 = with_shim(subnet)(1)
    net = macvlan_everywhere(
        dockers, "lan", subnet, gateway=lab.outside.address,
        per_host=lambda index: shim1 if index == 1 else (),
    )
    ip1 = d1.ip(d1.run("c1", "--network", net), net)
    c2 = d2.run("c2", "--network", net)
    ip2 = d2.ip(c2, net)
    assert reaches(h1, ip1), "through host 1's shim"
    assert not reaches(h2, ip2), "no shim: a parent never exchanges frames with its macvlan links"
    assert reaches(h2, ip1) and reaches(lab.outside, ip2), "yet the LAN reaches both containers"
    assert d2.pings(c2, lab.outside.address), "and they reach the LAN, with no route or NAT of a host"
    assert reaches(h1, h2.address), "the shim leaves host 1's own LAN route alone"


def test_shim_address_must_be_reserved(lab: Lab, dockers: list[Docker]) -> None:
    subnet = "10.64.0.0/24"
    refused = dockers[0](
        "network", "create", *MACVLAN, "--subnet", subnet, "-o", f"host_shim={shim_address(subnet, 1)}/32",
        dockers[0].name("unreserved"), check=False,
    )
    assert refused.returncode != 0 and "--aux-address" in refused.stderr


def test_network_rm_on_both_hosts_leaves_no_pynet_link(lab: Lab, dockers: list[Docker]) -> None:
    subnet = "10.65.0.0/24"
    net = macvlan_everywhere(dockers, "gone", subnet, per_host=with_shim(subnet))
    containers = [docker.run(f"c{i}", "--network", net) for i, docker in enumerate(dockers, 1)]
    for host in lab.hosts:
        assert any(link.startswith("pns-") for link in pynet_links(host)), f"{host.name} has its shim"
    for docker, container in zip(dockers, containers):
        docker("rm", "-f", container)
        docker("network", "rm", net)
    for host in lab.hosts:
        assert pynet_links(host) == set(), host.name


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_pynet_restart_keeps_containers_connected(lab: Lab, dockers: list[Docker], kill: bool) -> None:
    d1, d2 = dockers
    h1 = lab.hosts[0]
    subnet = "10.66.0.0/24"
    net = macvlan_everywhere(dockers, "restart", subnet, per_host=with_shim(subnet))
    c1, c2 = d1.run("c1", "--network", net), d2.run("c2", "--network", net)
    ip1, ip2 = d1.ip(c1, net), d2.ip(c2, net)
    assert d1.pings(c1, ip2)
    try:
        for host in lab.hosts:
            host.stop_pynet(kill=kill)
        assert d1.pings(c1, ip2), "the kernel carries the traffic while pynet is down"
    finally:
        for host in lab.hosts:
            if not host.pynet_running():
                host.start_pynet()
    assert d1.pings(c1, ip2) and d2.pings(c2, ip1)
    assert reaches(h1, ip1), "the shim survives the restart"
    for docker, peer in ((d1, ip2), (d2, ip1)):
        docker("run", "--rm", "--network", net, IMAGE, "ping", "-c1", "-W2", peer)
