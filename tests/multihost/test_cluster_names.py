"""Names across hosts (issue 9), the walkthrough as a user types it on three lab hosts with a
real etcd: a VXLAN network created on host 1 only (the cluster agent copies it to the others),
`alpine1` on host 1 and `alpine2` on host 2 finding each other by name through Docker's
embedded DNS and pynet's resolver.

`pynet lab up` ran `pynet dns install` on every host before its dockerd started, so
daemon.json's "dns" is pynet's resolver (169.254.53.53) then the outside's stand-in resolver
(lab/upstream.py, which answers outside.pynet.test). Every wait is a bounded poll.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import DockerRelease, Lab
from lab.upstream import NAME as OUTSIDE_NAME
from tests.dockercli import Docker, wait_for
from tests.multihost.conftest import etcd_lab, put_garbage

PROPAGATION = 10.0  # the poll's bound; the target is 2 s, the times seen are printed


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    with etcd_lab("pnn", docker_release) as lab:
        put_garbage(lab)  # every test here also proves the publisher and resolver read on past it
        yield lab


def lookup(d: Docker, container: str, name: str) -> str:
    """The IPv4 address NAME resolves to inside CONTAINER, '' if none: busybox ping prints it
    before sending anything."""
    out = d.exec(container, "ping", "-4", "-c", "1", "-W", "1", name, check=False).stdout
    found = re.search(r"PING \S+ \(([0-9.]+)\)", out)
    return found[1] if found else ""


def resolves_to(d: Docker, container: str, name: str, address: str) -> bool:
    return wait_for(lambda: lookup(d, container, name) == address, timeout=PROPAGATION)


def gone(d: Docker, container: str, name: str) -> bool:
    return wait_for(lambda: lookup(d, container, name) == "", timeout=PROPAGATION)


@dataclass
class Walk:
    docks: list[Docker]
    net: str
    alpine1: str
    alpine2: str
    ip1: str
    ip2: str


def cluster_network(docks: list[Docker], base: str, subnet: str, *extra: str) -> str:
    """`docker network create` on host 1 only (no vni: a cluster network); returns once every
    host has its copy."""
    name = docks[0].network(
        base, "-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan", "--subnet", subnet, *extra
    )
    for d in docks[1:]:
        assert wait_for(lambda d=d: d("network", "inspect", name, check=False).returncode == 0, timeout=15), (
            f"{name} never reached {d.host.name}"
        )
    return name


def since_run(d: Docker, base: str, *args: str, check: tuple[Docker, str, str]) -> tuple[str, float]:
    """Run a container; returns its name and the seconds from `docker run` returning to its
    name resolving in CHECK's container (seen, CHECK's name is filled in with it)."""
    name = d.run(base, *args)
    started = time.monotonic()
    other, container, net = check
    ip = d.ip(name, net)
    assert resolves_to(other, container, name, ip), f"{name} never resolved from {container}"
    return name, time.monotonic() - started


@pytest.fixture(scope="module")
def walk(lab: Lab) -> Iterator[Walk]:
    docks = [Docker(h) for h in lab.hosts]
    for d in docks[1:]:
        d.tag = docks[0].tag
    net = cluster_network(docks, "names", "10.49.1.0/24")
    alpine2 = docks[1].run("alpine2", "--network", net, "--network-alias", "web2")
    alpine1, seconds = since_run(docks[0], "alpine1", "--network", net, check=(docks[1], alpine2, net))
    print(f"alpine1 resolvable on host 2 {seconds:.2f} s after docker run returned")
    yield Walk(docks, net, alpine1, alpine2, docks[0].ip(alpine1, net), docks[1].ip(alpine2, net))
    for d in reversed(docks):  # host 1's last: its network rm removes every host's unused copy
        d.cleanup()


def test_containers_on_two_hosts_ping_each_other_by_name(walk: Walk) -> None:
    h1, h2 = walk.docks[0], walk.docks[1]
    assert resolves_to(h1, walk.alpine1, walk.alpine2, walk.ip2)
    assert h2.exec(walk.alpine2, "ping", "-c", "2", "-W", "2", walk.alpine1, check=False).returncode == 0
    assert h1.exec(walk.alpine1, "ping", "-c", "2", "-W", "2", walk.alpine2, check=False).returncode == 0


def test_alias_and_name_dot_network(walk: Walk) -> None:
    h1 = walk.docks[0]
    assert resolves_to(h1, walk.alpine1, "web2", walk.ip2)
    assert resolves_to(h1, walk.alpine1, f"{walk.alpine2}.{walk.net}", walk.ip2)
    assert lookup(h1, walk.alpine1, f"{walk.alpine2}.nosuchnet") == ""


def test_a_third_host_sees_both(walk: Walk) -> None:
    h3 = walk.docks[2]
    c3 = h3.run("alpine3", "--network", walk.net)
    assert resolves_to(h3, c3, walk.alpine1, walk.ip1)
    assert resolves_to(h3, c3, "web2", walk.ip2)


def test_a_new_container_resolves_on_its_first_query(walk: Walk) -> None:
    """`docker run --rm ... ping alpine1`: the first query leaves within a millisecond of the
    start, before the asker's own record is published; the resolver places it by its
    network's subnet. No retry here: one run, one lookup."""
    h3 = walk.docks[2]
    once = h3("run", "--rm", "--network", walk.net, "pnbusybox", "ping", "-c", "1", "-W", "2", walk.alpine1, check=False)
    assert once.returncode == 0, once.stdout + once.stderr


def test_outside_name_is_answered_by_the_upstream(lab: Lab, walk: Walk) -> None:
    assert resolves_to(walk.docks[1], walk.alpine2, OUTSIDE_NAME.rstrip("."), lab.outside.address)


def test_other_networks_do_not_resolve_them(lab: Lab, walk: Walk) -> None:
    h2 = walk.docks[1]
    other = cluster_network(walk.docks, "other", "10.49.2.0/24")
    on_other = h2.run("stranger", "--network", other)
    on_bridge = h2.run("plain")  # Docker's default bridge: its queries go upstream as before
    for container in (on_other, on_bridge):
        assert resolves_to(h2, container, OUTSIDE_NAME.rstrip("."), lab.outside.address), "forwarding still works"
        assert lookup(h2, container, walk.alpine1) == ""
        assert lookup(h2, container, "web2") == ""


def test_a_removed_container_stops_resolving(walk: Walk) -> None:
    h1, h2 = walk.docks[0], walk.docks[1]
    short, seconds = since_run(h1, "shortlived", "--network", walk.net, check=(h2, walk.alpine2, walk.net))
    h1("rm", "-f", short)
    started = time.monotonic()
    assert gone(h2, walk.alpine2, short)
    print(f"resolvable {seconds:.2f} s after docker run; gone {time.monotonic() - started:.2f} s after docker rm")


def test_disconnect_and_connect(walk: Walk) -> None:
    h1, h2 = walk.docks[0], walk.docks[1]
    mover = h1.run("mover")
    h1("network", "connect", "--alias", "moved", walk.net, mover)
    ip = h1.ip(mover, walk.net)
    assert resolves_to(h2, walk.alpine2, "moved", ip)
    h1("network", "disconnect", walk.net, mover)
    assert gone(h2, walk.alpine2, "moved")


def test_pynet_stopped_outside_names_still_resolve(lab: Lab, walk: Walk) -> None:
    """daemon.json lists the upstream after pynet: the refused query moves Docker on to it."""
    host = lab.hosts[2]
    h3 = walk.docks[2]
    c = h3.run("fallback", "--network", walk.net)
    host.stop_pynet()
    try:
        assert resolves_to(h3, c, OUTSIDE_NAME.rstrip("."), lab.outside.address)
        assert "pndns0" in host.run("ip", "-br", "link").stdout, "the address stays held while pynet is stopped"
    finally:
        host.start_pynet()
    assert resolves_to(h3, c, walk.alpine1, walk.ip1), "names again once pynet is back"
    assert resolves_to(walk.docks[1], walk.alpine2, c, h3.ip(c, walk.net)), "its own published again (resync)"


def test_etcd_stopped_known_names_keep_resolving(lab: Lab, walk: Walk) -> None:
    lab.stop_etcd()
    try:
        for _ in range(3):
            assert lookup(walk.docks[1], walk.alpine2, walk.alpine1) == walk.ip1
            assert lookup(walk.docks[0], walk.alpine1, "web2") == walk.ip2
    finally:
        lab.start_etcd()


def test_internal_network(lab: Lab, walk: Walk, docker_release: DockerRelease) -> None:
    """Docker 26.x and 27.x forward nothing for a container with no gateway endpoint
    (docs/protocol.md §6.1), so names of other hosts cannot resolve there."""
    if docker_release.name.startswith(("26.", "27.")):
        pytest.skip(f"Docker {docker_release.name} does not forward DNS queries from --internal networks")
    h1, h2 = walk.docks[0], walk.docks[1]
    net = cluster_network(walk.docks, "inner", "10.49.3.0/24", "--internal")
    a = h1.run("inner1", "--network", net)
    b = h2.run("inner2", "--network", net)
    assert resolves_to(h2, b, a, h1.ip(a, net))
    assert resolves_to(h1, a, b, h2.ip(b, net))
    assert h2.exec(b, "ping", "-c", "2", "-W", "2", a, check=False).returncode == 0


def test_doctor_checks_the_names_set_up(lab: Lab, walk: Walk) -> None:
    host = lab.hosts[0]
    argv = [*lab.pynet_cmd, "doctor", "--json", "--etcd-endpoints", lab.etcd_endpoint]
    argv += [
        "--state-dir",
        str(host.root / "pynet"),
        "--host-id",
        host.name,
        "--daemon-json",
        str(host.root / "daemon.json"),
    ]
    checks = {c["name"]: c for c in json.loads(host.run(*argv, check=False).stdout)}
    for name in ("dns address", "dns INPUT rule", "daemon.json", "dns resolver"):
        assert checks[name]["verdict"] == "ok", checks[name]
    status = json.loads(host.run(*lab.pynet_cmd, "status", "--json", check=False).stdout)
    tasks = {t["name"]: t for t in status["tasks"]}
    for name in ("publish-names", "dns-names", "dns-server"):
        assert tasks[name]["state"] == "running", tasks[name]
    assert int(tasks["publish-names"]["detail"]["records"]) >= 1
