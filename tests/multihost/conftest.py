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


@pytest.fixture
def dockers(lab: Lab) -> Iterator[list[Docker]]:
    """One `Docker` per host, sharing a tag, so a network made on every host has one name."""
    clis = [Docker(host) for host in lab.hosts]
    for cli in clis[1:]:
        cli.tag = clis[0].tag
    yield clis
    for cli in clis:
        cli.cleanup()
