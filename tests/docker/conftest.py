"""One Docker host (its own netns, mount ns, dockerd and pynet) plus an outside namespace.

The host is shared by the module's tests (starting dockerd costs seconds); each test makes
uniquely named networks and containers through `Docker`, which removes them afterwards. The
managed plugin's modules share one build of it, `plugin_dir`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from lab import DockerRelease, Host, Lab
from lab.cmd import run_cmd
from lab.core import _cgroup_mounts
from tests.dockercli import REPO, Docker


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


@pytest.fixture(scope="module")
def plugin_ids() -> Iterator[list[str]]:
    """Every managed-plugin ID a module made (a test appends them). dockerd puts a plugin's
    cgroup at the top of each hierarchy, not under the host's --cgroup-parent, so the lab's
    teardown does not know it: a clean disable removes it, and this, running after the lab is
    down (a module's lab fixture depends on it), catches a plugin that died with its dockerd."""
    ids: list[str] = []
    yield ids
    for mount in _cgroup_mounts():
        for found in (p for i in ids for p in mount.rglob(i) if p.is_dir()):
            for sub in sorted(found.rglob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            found.rmdir()


@pytest.fixture(scope="session")
def plugin_dir() -> Iterator[Path]:
    """The managed plugin's directory (config.json + rootfs/) at pyproject.toml's version,
    built on the machine (its pip reaches the package index; the lab hosts do not), so `make
    plugin` or `make plugin-push` inside a host finds it up to date. It is this run's own
    directory (the base and the wheels stay cached in /var/cache/pynet-plugin): the shared
    /var/cache/pynet-plugin/plugin holds whichever checkout built last, and two checkouts
    testing at once would swap code. A cold build (debootstrap plus the wheels) takes minutes."""
    out = Path(tempfile.mkdtemp(prefix="pynet-plugin-"))
    env = {k: v for k, v in os.environ.items() if k != "VERSION"}  # build.sh's, not the caller's
    try:
        run_cmd([str(REPO / "packaging" / "plugin" / "build.sh"), str(out)], timeout=900, env=env)
        yield out
    finally:
        shutil.rmtree(out)
