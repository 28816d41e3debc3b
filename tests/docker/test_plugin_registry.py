"""The managed plugin through a registry: `make plugin-push`, `docker plugin install`, `docker
plugin upgrade` to a newer build and back (README, "Install from a registry").

One lab per Docker release, shared by the module: a real registry (Debian's docker-registry,
lab/registry.py) at the outside's address, which every host's dockerd trusts over plain HTTP;
host 1 pushes, host 2 has never had the plugin and installs it from the registry, with its
settings given at install. The older build is the session's plugin directory (pyproject.toml's
version), the newer one a copy rebuilt by `make plugin-push VERSION=...` inside host 1. Tests
run in file order: they share the pushed tags, the installed plugin and one network with a
running and a stopped container.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import DockerRelease, Host, Lab
from lab.cmd import run_cmd
from tests.dockercli import REPO, Docker, ask_plugin

NAME = "pynet:latest"  # the local name (`--alias pynet`): the driver name, whatever the tag
PYNET = ("-d", NAME, "--ipam-driver", NAME)
OLDER = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The next version: the last number of a canonical PEP 440 version, plus one (0.1.0 -> 0.1.1).
NEWER = re.sub(r"\d+$", lambda m: str(int(m[0]) + 1), OLDER)
pytestmark = pytest.mark.timeout(900)  # a cold plugin build runs in the first test's setup


@pytest.fixture(scope="module")
def lab(plugin_ids: list[str], docker_release: DockerRelease) -> Iterator[Lab]:
    name = "pnr" + secrets.token_hex(2)
    with Lab(name=name, hosts=2, etcd=True, pynet=False, registry=True, docker=docker_release) as lab:
        yield lab


@pytest.fixture(scope="module")
def newer_dir(plugin_dir: Path) -> Iterator[Path]:
    """A copy of the session's build, for `make plugin-push VERSION=NEWER` to rebuild: only
    pynet's layer changes (seconds), the base and the dependencies stay."""
    out = Path(tempfile.mkdtemp(prefix="pynet-plugin-newer-"))
    try:
        run_cmd(["cp", "-a", f"{plugin_dir}/.", str(out)], timeout=300)
        yield out
    finally:
        shutil.rmtree(out)


def push(host: Host, registry: str, plugin_dir: Path, *extra: str, check: bool = True) -> tuple[int, str, str]:
    """`make plugin-push` inside HOST, as its user would type it: (exit status, the reference it
    printed, its messages)."""
    out = host.run(
        "make", "-s", "-C", str(REPO), "plugin-push", f"REGISTRY={registry}", f"PLUGIN_DIR={plugin_dir}", *extra,
        check=check, timeout=600,
    )
    return out.returncode, out.stdout.strip(), out.stderr


@dataclass
class Installed:
    host: Host
    state_dir: Path
    prefix: str  # PYNET_STORE_PREFIX given at install
    older: str  # registry references
    newer: str


@pytest.fixture(scope="module")
def pushed(lab: Lab, plugin_dir: Path) -> str:
    """The older build, pushed from host 1 with VERSION left to its default."""
    return push(lab.hosts[0], lab.registry, plugin_dir)[1]


@pytest.fixture(scope="module")
def installed(lab: Lab, pushed: str, plugin_ids: list[str]) -> Installed:
    """`docker plugin install` on host 2, with settings given at install: the state mount's
    source (made first, as the README says: runc refuses a missing one), etcd, a store prefix
    of this module's own and debug logs."""
    host = lab.hosts[1]
    state_dir = host.root / "plugin-state"
    state_dir.mkdir(mode=0o700)
    prefix = f"/pnr-{secrets.token_hex(3)}/"
    settings = (
        f"state.source={state_dir}",
        f"PYNET_ETCD_ENDPOINTS={lab.etcd_endpoint}",
        f"PYNET_HOST_ID={host.name}",
        f"PYNET_STORE_PREFIX={prefix}",
        "PYNET_LOG_LEVEL=debug",
    )
    host.docker("plugin", "install", "--grant-all-permissions", "--alias", "pynet", pushed, *settings, timeout=300)
    # Nothing to undo one by one: the lab's teardown kills the host's processes (the plugin's
    # included) and removes its namespaces and files, and plugin_ids its plugin's cgroups.
    plugin_ids.append(host.docker("plugin", "inspect", "-f", "{{.Id}}", NAME).stdout.strip())
    return Installed(host, state_dir, prefix, pushed, f"{lab.registry}/pynet:{NEWER}")


@dataclass
class World:
    """A network on the plugin with a running container and a stopped one, kept across upgrades."""

    docker: Docker
    net: str
    running: str
    stopped: str


@pytest.fixture(scope="module")
def world(installed: Installed) -> World:
    """Left to the lab's teardown, as the plugin is."""
    d = Docker(installed.host)
    net = d.network("reg", *PYNET, "--subnet", "10.61.0.0/24")
    return World(d, net, d.run("a", "--network", net), d.run("b", "--network", net, "--stop-timeout", "1"))


def inspect(host: Host, template: str) -> str:
    return host.docker("plugin", "inspect", "-f", template, NAME).stdout.strip()


def pynet_status(host: Host) -> dict[str, object]:
    """What the running plugin itself says (`pynet status`'s route on its socket)."""
    code, reply = ask_plugin(host, NAME, "/pynet/status")
    assert code == 200, reply
    return reply


def etcd_keys(lab: Lab, prefix: str) -> list[str]:
    out = lab.etcd_node.run("etcdctl", "--endpoints", lab.etcd_endpoint, "get", "--prefix", prefix, "--keys-only")
    return out.stdout.split()


def reach_each_other(w: World) -> bool:
    return w.docker.pings(w.running, w.stopped) and w.docker.pings(w.stopped, w.running)


# -- push ---------------------------------------------------------------------------------------


def test_push_needs_a_registry_named_right(lab: Lab, plugin_dir: Path) -> None:
    code, _, err = push(lab.hosts[0], "", plugin_dir, check=False)
    assert code != 0 and "REGISTRY is empty" in err
    code, _, err = push(lab.hosts[0], f"http://{lab.registry}", plugin_dir, check=False)
    assert code != 0 and f"REGISTRY=http://{lab.registry} is not host[:port][/path]" in err
    code, _, err = push(lab.hosts[0], lab.registry, plugin_dir, "VERSION=1.0-beta", check=False)
    assert code != 0 and "VERSION=1.0-beta is not a canonical PEP 440 version" in err


def test_push_tags_the_version_and_leaves_the_pushing_host_nothing(lab: Lab, pushed: str) -> None:
    assert pushed == f"{lab.registry}/pynet:{OLDER}", "VERSION defaults to pyproject.toml's"
    tags = lab.dir / "registry" / "data" / "docker/registry/v2/repositories/pynet/_manifests/tags"
    assert [t.name for t in tags.iterdir()] == [OLDER], "the registry holds the tag"
    assert lab.hosts[0].docker("plugin", "ls", "-q").stdout.split() == [], "push.sh removes what it created"


# -- install ------------------------------------------------------------------------------------


def test_install_from_the_registry_with_settings(lab: Lab, installed: Installed, world: World) -> None:
    host = installed.host
    assert inspect(host, "{{.Name}} {{.Enabled}} {{.PluginReference}}").split() == [NAME, "true", installed.older]
    assert pynet_status(host)["daemon"]["version"] == OLDER  # type: ignore[index]
    d = world.docker
    assert d("network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}}", world.net).stdout.split() == [NAME, NAME]
    assert reach_each_other(world), "containers reach each other by name"
    # The settings given at install: pynet keeps the network under this module's prefix, in
    # etcd, and logs at debug (dockerd's log carries the plugin's lines).
    net_id = d("network", "inspect", "-f", "{{.Id}}", world.net).stdout.strip()
    assert f"{installed.prefix}hosts/{host.name}/networks/{net_id}" in etcd_keys(lab, installed.prefix)
    plugin_id = inspect(host, "{{.Id}}")
    log = (host.root / "dockerd.log").read_text(errors="replace").splitlines()
    assert any(f"plugin={plugin_id}" in line and "level=debug" in line for line in log)


# -- upgrade and rollback -----------------------------------------------------------------------


def upgrade(installed: Installed, world: World, ref: str, version: str) -> None:
    """README, "Upgrading the managed plugin", with a stopped container on the network: disable
    (-f: a network uses it), upgrade, give the state mount its source again, enable."""
    host, d = installed.host, world.docker
    d("stop", world.stopped)
    plugin_id = inspect(host, "{{.Id}}")
    host.docker("plugin", "disable", "-f", NAME)
    # --skip-remote-check: another tag of the same repository is "another image" to the CLI,
    # which asks for a confirmation (and 28.5's exits 0 without upgrading when there is none).
    host.docker("plugin", "upgrade", "--skip-remote-check", "--grant-all-permissions", NAME, ref, timeout=300)
    mounts = json.loads(inspect(host, "{{json .Config.Mounts}}"))
    assert {m["Name"]: m["Source"] for m in mounts}["state"] == "/var/lib/pynet", (
        "Docker now keeps a mount's source across upgrade: simplify the README's upgrade steps"
    )
    env = dict(kv.partition("=")[::2] for kv in json.loads(inspect(host, "{{json .Settings.Env}}")))
    assert env["PYNET_STORE_PREFIX"] == installed.prefix, "variables set at install survive the upgrade"
    host.docker("plugin", "set", NAME, f"state.source={installed.state_dir}")
    host.docker("plugin", "enable", NAME)
    assert inspect(host, "{{.Id}} {{.Enabled}} {{.PluginReference}}").split() == [plugin_id, "true", ref]
    status = pynet_status(host)
    assert status["daemon"]["version"] == version, "the new build runs"  # type: ignore[index]
    assert status["networks"] == 1, "it finds the network under the prefix given at install"
    d("start", world.stopped)
    assert reach_each_other(world), "the stopped container starts and both reach each other"
    c = d.run(f"c{version}", "--network", world.net)
    assert d.pings(c, world.running), "a new container joins"


def test_upgrade_to_a_newer_build(lab: Lab, installed: Installed, world: World, newer_dir: Path) -> None:
    assert push(lab.hosts[0], lab.registry, newer_dir, f"VERSION={NEWER}")[1] == installed.newer
    upgrade(installed, world, installed.newer, NEWER)


def test_rollback_to_the_older_tag(installed: Installed, world: World) -> None:
    upgrade(installed, world, installed.older, OLDER)
