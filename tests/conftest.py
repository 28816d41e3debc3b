"""Test tiers (docs/design.md, Tests): a test's tier is the folder it lives in.

unit/, api/ and fuzz/ need nothing; kernel/ needs root; faults/ needs root and etcd; docker/
needs root and docker.io; multihost/ also needs etcd. A tier whose requirements are missing is
skipped with what to install, except under CI=true, where a missing requirement fails the run
instead: CI skips nothing.

The docker and multihost tiers run on a matrix of Docker releases (lab/releases.py): a test
whose lab depends on the `docker_release` fixture runs once per release, with the release as
its id (`test_x[28.5]`). `--docker-releases=20.10,26.1` (or PYNET_DOCKER_RELEASES) picks the
releases for every module; by default it is CI's matrix, DEFAULT_MATRIX. A release that cannot
be fetched fails its tests under CI=true and skips them otherwise, saying why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar, cast

import pytest

from lab.releases import RELEASES, DockerRelease, ReleaseUnavailable, fetch, fetch_compose

TIERS: dict[str, list[str]] = {
    "unit": [],
    "api": [],
    "fuzz": [],
    "kernel": ["root", "ip", "iptables-restore", "nft"],
    # The crash-hook tier (tests/faults/): the daemon killed at every point, in private netns.
    "faults": ["root", "ip", "iptables-restore", "busybox", "etcd"],
    "docker": ["root", "ip", "iptables-restore", "dockerd", "busybox"],
    "multihost": ["root", "ip", "iptables-restore", "dockerd", "busybox", "etcd"],
}
# Every Docker tier on the oldest and the newest release; the bridge tier, which exercises most
# of what dockerd sends a network plugin, on the release between them as well.
DEFAULT_RELEASES = ("20.10", "28.5")
DEFAULT_MATRIX = {
    "docker/test_bridge.py": ("20.10", "26.1", "28.5"),
    # Where the releases differ (docs/protocol.md §8): each test asserts its release's side.
    "docker/test_docker_releases.py": ("20.10", "26.1", "28.5"),
}
INSTALL_HINT = "run `make install` (apt-get install docker.io iptables nftables etcd-server busybox-static iperf3 prometheus docker-registry)"


def missing_requirements(tier: str) -> list[str]:
    missing = []
    for req in TIERS.get(tier, []):
        if req == "root":
            if os.geteuid() != 0:
                missing.append("root")
        elif shutil.which(req) is None and not Path(f"/usr/sbin/{req}").exists():
            missing.append(req)
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(root).parts[0]
        if tier in ("kernel", "faults", "docker", "multihost"):
            item.add_marker(getattr(pytest.mark, tier))
        missing = missing_requirements(tier)
        if not missing:
            continue
        if os.environ.get("CI") == "true":
            pytest.exit(f"CI must not skip the {tier} tier: missing {', '.join(missing)}", returncode=3)
        else:
            item.add_marker(
                pytest.mark.skip(reason=f"{tier} tier needs {', '.join(missing)}: {INSTALL_HINT}")
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker-releases",
        default=os.environ.get("PYNET_DOCKER_RELEASES", ""),
        help=f"comma-separated Docker releases for the docker and multihost tiers, of {', '.join(RELEASES)} "
        "(default: PYNET_DOCKER_RELEASES, else 20.10 and 28.5, and all three for docker/test_bridge.py)",
    )


def docker_releases(config: pytest.Config, module: Path) -> tuple[str, ...]:
    """The releases MODULE runs on: the command line's choice, else the default matrix."""
    chosen = tuple(r.strip() for r in config.getoption("docker_releases").split(",") if r.strip())
    unknown = [r for r in chosen if r not in RELEASES]
    if unknown:
        raise pytest.UsageError(f"--docker-releases: unknown {', '.join(unknown)}; choose from {', '.join(RELEASES)}")
    relative = module.relative_to(Path(__file__).parent).as_posix()
    return chosen or DEFAULT_MATRIX.get(relative, DEFAULT_RELEASES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "docker_release" in metafunc.fixturenames:
        names = docker_releases(metafunc.config, Path(metafunc.definition.fspath))
        metafunc.parametrize("docker_release", names, indirect=True, scope="module", ids=names)


# One fetch per release (and Compose) and session: each costs an `apt-get update` even when cached.
_fetched: dict[str, object] = {}
T = TypeVar("T")


def _fetched_once(what: str, fetcher: Callable[[], T]) -> T:
    """FETCHER's result, cached for the session; a failed fetch fails the test under CI=true
    and skips it otherwise, saying why."""
    if what not in _fetched:
        try:
            _fetched[what] = fetcher()
        except ReleaseUnavailable as err:
            _fetched[what] = _Unavailable(f"{what} is unavailable: {err}")
    found = _fetched[what]
    if isinstance(found, _Unavailable):
        if os.environ.get("CI") == "true":
            pytest.fail(found.why, pytrace=False)
        pytest.skip(found.why)
    return cast(T, found)


@dataclass(frozen=True)
class _Unavailable:
    why: str


@pytest.fixture(scope="module")
def docker_release(request: pytest.FixtureRequest) -> DockerRelease:
    """The Docker release a module's lab runs (see lab/releases.py), fetched once a session."""
    name: str = request.param
    return _fetched_once(f"Docker {name}", lambda: fetch(name))


@pytest.fixture(scope="module")
def compose_release(docker_release: DockerRelease) -> DockerRelease:
    """docker_release with Compose v2 (unstable's, whatever the release) as its CLI plugin."""
    return replace(docker_release, compose=_fetched_once("Compose", fetch_compose))
