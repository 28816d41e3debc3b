"""A lab of two Docker hosts shared by a module's tests, and the docker CLI on each host.

Building the lab costs seconds, so a module builds one and its tests share it; each test makes
uniquely named networks and containers through `Docker`, which removes them afterwards. A
module that needs no shared store sets `ETCD = False` (each host's pynet then keeps its state
in its own embedded store); a module with its own `lab` fixture overrides this one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from lab import DockerRelease, Lab
from tests.dockercli import Docker


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, docker_release: DockerRelease) -> Iterator[Lab]:
    etcd = getattr(request.module, "ETCD", True)
    with Lab(name="pnm" + secrets.token_hex(3), hosts=2, etcd=etcd, docker=docker_release) as lab:
        yield lab


def etcd_lab(prefix: str, docker: DockerRelease, hosts: int = 3, lease_ttl: int = 3) -> Lab:
    """A lab of HOSTS sharing a real etcd, with a short lease so that expiry tests are quick."""
    name = prefix + secrets.token_hex(2)
    return Lab(name=name, hosts=hosts, etcd=True, pynet_args=("--lease-ttl", str(lease_ttl)), docker=docker)


def put_garbage(lab: Lab) -> None:
    """What another program, a hand with etcdctl or a newer pynet could leave under pynet's
    prefix, for every reader: the agent (specs, copies), the name publisher (this host's own
    dns/ keys), the resolver's tables and the VXLAN peer watch. A module whose lab holds it
    proves that each reader skips it and goes on."""
    garbage = {
        "/pynet/cluster/networks/junk": "{not json",
        "/pynet/cluster/networks/shape": '{"network": 5}',
        "/pynet/cluster/networks/deep/er": "{}",
        "/pynet/cluster/copies/junk/h9": "nope",
        "/pynet/cluster/copies/flat": "x",
        "/pynet/dns/x": "y",
        "/pynet/vxlan/7/vteps/h9": '{"address": 5}',
        **{f"/pynet/dns/junk/{host.name}/c0": "nope" for host in lab.hosts},
    }
    for key, value in garbage.items():
        lab.hosts[0].run("etcdctl", f"--endpoints={lab.etcd_endpoint}", "put", key, "--", value)


@pytest.fixture
def dockers(lab: Lab) -> Iterator[list[Docker]]:
    """One `Docker` per host, sharing a tag, so a network made on every host has one name."""
    clis = [Docker(host) for host in lab.hosts]
    for cli in clis[1:]:
        cli.tag = clis[0].tag
    yield clis
    for cli in clis:
        cli.cleanup()
