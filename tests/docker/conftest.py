"""One Docker host (its own netns, mount ns, dockerd and pynet) plus an outside namespace.

The host is shared by the module's tests (starting dockerd costs seconds); each test makes
uniquely named networks and containers through `Docker`, which removes them afterwards.
"""

from __future__ import annotations

import secrets
from typing import Iterator

import pytest

from lab import DockerRelease, Host, Lab
from tests.dockercli import Docker


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(name="pnd" + secrets.token_hex(2), hosts=1, etcd=False, docker=docker_release) as lab:
        yield lab


@pytest.fixture(scope="module")
def host(lab: Lab) -> Host:
    return lab.hosts[0]


@pytest.fixture
def docker(host: Host) -> Iterator[Docker]:
    d = Docker(host)
    yield d
    d.cleanup()
