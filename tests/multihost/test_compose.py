"""Compose (issue 11): one Compose file whose networks are pynet's, `up` and `down` on a lab host.

Two lab hosts on one etcd, each running the module's Docker release with Compose v2 (Debian
unstable's, lab/releases.py) as its CLI plugin, typed as `docker compose`. The Compose file has
a bridge network with driver_opts and pynet IPAM (subnet, gateway, ip_range), an internal one,
and an external cluster network created beforehand on the other host, where a container waits.
Compose 2.40 speaks to dockerd 20.10 at its API 1.41 (it then creates a container on its first
network and connects the others afterwards); docs/protocol.md §2.12 has what Compose sends.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import IMAGE, DockerRelease, Host, Lab
from tests.dockercli import Docker, pynet_links, pynet_rules, wait_for

# Services by name on each network: web is on front and back, db on back only (internal), edge
# on front and the external cluster network. Names are the project's; subnets the lab's own.
COMPOSE_FILE = """\
x-busybox: &busybox
  image: {image}
  pull_policy: never
  command: sleep 1d
  stop_signal: SIGKILL  # sleep, as PID 1, ignores SIGTERM: no 10 s wait for each container
services:
  web:
    <<: *busybox
    networks: [front, back]
  db:
    <<: *busybox
    networks: [back]
  edge:
    <<: *busybox
    networks: [front, shared]
networks:
  front:
    driver: pynet
    driver_opts:
      com.docker.network.bridge.name: {bridge}
      com.docker.network.driver.mtu: {mtu}
    ipam:
      driver: pynet
      config:
        - subnet: 10.73.0.0/24
          gateway: 10.73.0.1
          ip_range: 10.73.0.128/25
  back:
    driver: pynet
    internal: true
    ipam:
      driver: pynet
      config:
        - subnet: 10.72.0.0/24
  shared:
    external: true
    name: {shared}
"""


@pytest.fixture(scope="module")
def lab(compose_release: DockerRelease) -> Iterator[Lab]:
    with Lab(name="pnco" + secrets.token_hex(2), hosts=2, etcd=True, docker=compose_release) as lab:
        yield lab


class Project:
    """A Compose project on host 1, typed as a user types it: `docker compose -p NAME ...`."""

    def __init__(self, host: Host, directory: Path, shared: str) -> None:
        self.host = host
        self.name = "pnc" + secrets.token_hex(3)
        self.file = directory / "compose.yaml"
        self.bridge = "pnb-" + self.name[3:]
        self.shared = shared
        self.write(mtu=1400)

    def write(self, mtu: int) -> None:
        text = COMPOSE_FILE.format(image=IMAGE, bridge=self.bridge, mtu=mtu, shared=self.shared)
        self.file.write_text(text)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.docker("compose", "-f", str(self.file), "-p", self.name, *args, check=check)

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def network(self, key: str) -> dict[str, Any]:
        out = self.host.docker("network", "inspect", f"{self.name}_{key}")
        found: dict[str, Any] = json.loads(out.stdout)[0]
        return found

    def networks(self) -> list[str]:
        """The networks Docker has with this project's label (what `compose down` must remove)."""
        label = f"label=com.docker.compose.project={self.name}"
        return self.host.docker("network", "ls", "-q", "--no-trunc", "--filter", label).stdout.split()


@pytest.fixture(scope="module")
def shared(lab: Lab) -> Iterator[tuple[str, str]]:
    """A VXLAN cluster network created on host 2 (README "Cluster networks"), with a container
    there; its name and that container's address, once host 1 has the network too."""
    far = Docker(lab.hosts[1])
    name = far.network(
        "shared", "-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan", "--subnet", "10.74.0.0/24"
    )
    container = far.run("far", "--network", name)
    assert wait_for(lambda: lab.hosts[0].docker("network", "inspect", name, check=False).returncode == 0, 10.0)
    yield name, far.ip(container, name)
    far.cleanup()


@pytest.fixture
def project(lab: Lab, shared: tuple[str, str], tmp_path: Path) -> Iterator[Project]:
    project = Project(lab.hosts[0], tmp_path, shared[0])
    yield project
    project("down", check=False)


def mtu_on(host: Host, container: str, subnet_prefix: str) -> int:
    """The MTU of CONTAINER's interface on a subnet: with API 1.41 Compose connects a container
    to its networks one by one, so which is eth0 is not fixed."""
    addresses = host.docker("exec", container, "ip", "-o", "-4", "addr", "show").stdout
    [iface] = re.findall(rf"^\d+: (\w+)\s+inet {re.escape(subnet_prefix)}", addresses, re.M)
    return int(host.docker("exec", container, "cat", f"/sys/class/net/{iface}/mtu").stdout)


def test_up_networks_as_written_names_internal_and_external(
    lab: Lab, project: Project, shared: tuple[str, str]
) -> None:
    host = lab.hosts[0]
    d = Docker(host)
    project("up", "-d")
    front, back = project.network("front"), project.network("back")
    assert front["Driver"] == back["Driver"] == "pynet" and front["IPAM"]["Driver"] == "pynet"
    assert front["Options"] == {
        "com.docker.network.bridge.name": project.bridge,
        "com.docker.network.driver.mtu": "1400",
    }  # Compose sends strings
    assert front["IPAM"]["Config"] == [{"Subnet": "10.73.0.0/24", "Gateway": "10.73.0.1", "IPRange": "10.73.0.128/25"}]
    assert back["Internal"] and not front["Internal"]
    # What pynet made of them: the bridge named in driver_opts holds the gateway; the ip_range
    # gives the addresses; the MTU reaches the container's end.
    assert "10.73.0.1/24" in host.run("ip", "-o", "addr", "show", "dev", project.bridge).stdout
    web, db, edge = (project.container(s) for s in ("web", "db", "edge"))
    for c in (web, edge):
        ip = d.ip(c, front["Name"])
        assert ip.startswith("10.73.0.") and int(ip.rsplit(".", 1)[1]) >= 128, ip
    assert mtu_on(host, web, "10.73.0.") == 1400
    # Service names, through Docker's embedded DNS, on each network.
    assert d.pings(web, "db") and d.pings(db, "web"), "back: web <-> db"
    assert d.pings(web, "edge") and d.pings(edge, "web"), "front: web <-> edge"
    assert not d.pings(db, "edge"), "db shares no network with edge"
    # internal: db reaches nothing outside; web, through front, does (so the probe can succeed).
    outside = lab.outside.address
    assert d.pings(web, outside)
    assert not d.pings(db, outside)
    # The external cluster network: edge on host 1 reaches the container on host 2.
    assert d.pings(edge, shared[1])


def test_drift_then_down_leaves_nothing(lab: Lab, project: Project, shared: tuple[str, str]) -> None:
    host, other = lab.hosts
    d = Docker(host)
    external = {h.name: h.docker("network", "inspect", "-f", "{{.Id}}", shared[0]).stdout for h in lab.hosts}
    before = pynet_state(host), kernel_state(host), kernel_state(other)
    project("up", "-d")
    made = project.networks()
    assert len(made) == 2 and set(made) <= {n["id"] for n in pynet_json(host, "networks")}
    assert project.bridge in pynet_links(host) and project.bridge in pynet_rules(host)
    edge_mac = d.ip(project.container("edge"), shared[0], "MacAddress")
    assert edge_mac in str(kernel_state(other)["fdb"]), "host 2 learnt edge through etcd"
    # A changed driver_opt is drift: Compose removes and recreates the network (its own
    # config-hash label, not the options Docker shows, tells it), reconnecting the containers.
    old_front = project.network("front")["Id"]
    project.write(mtu=1300)
    project("up", "-d")
    assert project.network("front")["Id"] != old_front
    assert project.network("front")["Options"]["com.docker.network.driver.mtu"] == "1300"
    web, edge = project.container("web"), project.container("edge")
    assert mtu_on(host, web, "10.73.0.") == 1300 and d.pings(web, edge)
    # Compose reconnects them with no aliases, so service names are gone from that network
    # until the containers are recreated (Docker's bridge driver too; docs/protocol.md §2.12).
    project("up", "-d", "--force-recreate")
    assert d.pings(project.container("web"), "edge")

    project("down")
    assert project.networks() == []
    assert (pynet_state(host), kernel_state(host), kernel_state(other)) == before
    # The external network is untouched, on both hosts, and still carries traffic across them.
    assert {h.name: h.docker("network", "inspect", "-f", "{{.Id}}", shared[0]).stdout for h in lab.hosts} == external
    probe = host.docker(
        "run", "--rm", "--network", shared[0], IMAGE, "ping", "-c", "1", "-W", "2", shared[1], check=False
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr


def pynet_json(host: Host, command: str) -> list[dict[str, Any]]:
    """`pynet COMMAND --json` inside HOST, as an operator there types it."""
    argv = [
        *host.lab.pynet_cmd,
        *(command, "--json", "--state-dir", str(host.root / "pynet")),
        *("--etcd-endpoints", host.lab.etcd_endpoint),
    ]
    found: list[dict[str, Any]] = json.loads(host.run(*argv).stdout)
    return found


def pynet_state(host: Host) -> dict[str, list[str]]:
    """What pynet records: HOST's networks and endpoints, and every pool with its allocations
    (the cluster's, from etcd: the external network's addresses included)."""
    return {
        "networks": sorted(n["id"] for n in pynet_json(host, "networks")),
        "endpoints": sorted(e["id"] for e in pynet_json(host, "endpoints")),
        "pools": sorted(json.dumps(p, sort_keys=True) for p in pynet_json(host, "ipam")),
    }


def kernel_state(host: Host) -> dict[str, Any]:
    """What pynet made in HOST's kernel: links, firewall rules, and the VXLAN peers' static FDB
    and neighbour entries (learnt ones come and go with traffic, so they are left out)."""
    fdb = host.run("bridge", "fdb", "show").stdout.splitlines()
    neigh = host.run("ip", "neigh", "show", "nud", "permanent").stdout.splitlines()
    return {
        "links": sorted(pynet_links(host)),
        "rules": pynet_rules(host),
        "fdb": sorted(line for line in fdb if " dev pnx-" in line),
        "neigh": sorted(line for line in neigh if " dev pn" in line),
    }
