"""The Docker release matrix's pure parts: which archive apt uses, which releases a module runs, and
how a lab host gets Compose."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from lab import DockerRelease, Lab
from lab.core import _release_from_json
from lab.releases import ReleaseUnavailable, _check_version, machine_mirror
from tests.conftest import DEFAULT_RELEASES, docker_releases

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def etc_with(tmp_path: Path, sources: dict[str, str]) -> Path:
    (tmp_path / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nVERSION_CODENAME=bookworm\n')
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True)
    for name, text in sources.items():
        (tmp_path / "apt" / name).write_text(text)
    return tmp_path


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert machine_mirror(etc) == ("http://mirror.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg")


def test_mirror_from_a_one_line_list_skips_other_suites(tmp_path: Path) -> None:
    lines = (
        "deb http://other.example/debian-security bookworm-security main\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert machine_mirror(etc_with(tmp_path, {"sources.list": lines})) == ("http://mirror.example/debian", "/k.gpg")


def test_no_mirror_says_where_it_looked(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, {})
    with pytest.raises(
        ReleaseUnavailable, match=re.escape(f"no Debian archive for bookworm in {etc}/apt/sources.list*")
    ):
        machine_mirror(etc)


def test_a_suite_that_moved_on_is_refused() -> None:
    _check_version("28.5", {"docker.io": "28.5.2+dfsg4-5"})
    with pytest.raises(ReleaseUnavailable, match=re.escape("now has docker.io 29.0.1+dfsg1-1")):
        _check_version("28.5", {"docker.io": "29.0.1+dfsg1-1"})


def test_default_matrix_and_the_command_line(pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = Path(__file__).parents[1]
    monkeypatch.setattr(pytestconfig.option, "docker_releases", "")  # as a plain `make test`
    assert docker_releases(pytestconfig, tests / "docker" / "test_bridge.py") == ("20.10", "26.1", "28.5")
    assert docker_releases(pytestconfig, tests / "multihost" / "test_vxlan.py") == DEFAULT_RELEASES
    monkeypatch.setattr(pytestconfig.option, "docker_releases", "28.5")
    assert docker_releases(pytestconfig, tests / "docker" / "test_bridge.py") == ("28.5",)
    monkeypatch.setattr(pytestconfig.option, "docker_releases", "28.5,27.0")
    with pytest.raises(pytest.UsageError, match=re.escape("unknown 27.0;")):
        docker_releases(pytestconfig, tests / "docker" / "test_bridge.py")


def test_a_lab_host_runs_compose_as_its_cli_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a lab's socket paths must be short
        base = Path(short)
        compose = base / "docker-compose"
        compose.write_text("")
        host = Lab("c", hosts=1, base_dir=base, docker=DockerRelease("20.10", compose=compose)).hosts[0]
        host.install_cli_plugins()
        host.install_cli_plugins()  # again, as after a restart: the link is replaced
        assert (host.docker_config / "cli-plugins" / "docker-compose").resolve() == compose
        assert host.env()["DOCKER_CONFIG"] == str(host.docker_config)
        plain = Lab("p", hosts=1, base_dir=base).hosts[0]
        plain.install_cli_plugins()
        assert "DOCKER_CONFIG" not in plain.env() and not plain.docker_config.exists()


def test_a_lab_state_names_its_compose() -> None:
    release = DockerRelease("28.5", Path("/cache/28.5/bin"), Path("/cache/compose/bin/docker-compose"))
    recorded = {"name": "28.5", "bin_dir": "/cache/28.5/bin", "compose": "/cache/compose/bin/docker-compose"}
    assert _release_from_json(recorded) == release
    before_compose = {"name": "28.5", "bin_dir": "/cache/28.5/bin"}  # a lab brought up by an older checkout
    assert _release_from_json(before_compose) == DockerRelease("28.5", Path("/cache/28.5/bin"))
