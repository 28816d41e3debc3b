"""`pynet dns install|uninstall` on a daemon.json in tmp_path: merge, idempotence, exact undo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pynet.plugin.cli import main
from pynet.plugin.ops.dns_setup import install, servers, uninstall
from pynet.store.errors import PynetError

WANTED = ["169.254.53.53", "10.0.0.2", "10.0.0.3"]
# Odd formatting on purpose: uninstall must give back these very bytes.
ORIGINAL = '{"log-driver":"journald",\n   "dns": ["8.8.8.8"], "registry-mirrors": ["https://m.example"]}\n'


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "etc" / "daemon.json", tmp_path / "state"


def test_servers_puts_pynet_first_and_keeps_three() -> None:
    assert servers("169.254.53.53", ["10.0.0.2", "169.254.53.53", "10.0.0.3", "10.0.0.4"]) == WANTED
    assert servers("169.254.53.53", []) == ["169.254.53.53"]


def test_install_merges_keeping_every_other_key_and_uninstall_restores_the_bytes(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    daemon_json.parent.mkdir()
    daemon_json.write_text(ORIGINAL)
    daemon_json.chmod(0o640)
    said = install(daemon_json, state, WANTED)
    data = json.loads(daemon_json.read_text())
    assert data == {"log-driver": "journald", "dns": WANTED, "registry-mirrors": ["https://m.example"]}
    assert list(data) == ["log-driver", "dns", "registry-mirrors"]  # order kept
    assert daemon_json.stat().st_mode & 0o777 == 0o640
    assert '"dns" set to ["169.254.53.53", "10.0.0.2", "10.0.0.3"] (was ["8.8.8.8"])' in said[0]
    assert any("restart dockerd" in line for line in said)
    assert uninstall(daemon_json, state)[0].endswith("put back as it was before pynet dns install")
    assert daemon_json.read_text() == ORIGINAL
    assert list(state.iterdir()) == []


def test_install_twice_changes_nothing(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    install(daemon_json, state, WANTED)
    written = daemon_json.read_text()
    assert install(daemon_json, state, WANTED) == [f'{daemon_json}: "dns" is already {json.dumps(WANTED)}: nothing changed']
    assert daemon_json.read_text() == written


def test_no_daemon_json_at_all_is_removed_again(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    install(daemon_json, state, WANTED)
    assert json.loads(daemon_json.read_text()) == {"dns": WANTED}
    uninstall(daemon_json, state)
    assert not daemon_json.exists()


def test_no_dns_key_before_means_none_after(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    daemon_json.parent.mkdir()
    daemon_json.write_text('{"debug": true}')
    install(daemon_json, state, WANTED)
    # A second install with other upstreams keeps the first original, not pynet's own version.
    install(daemon_json, state, WANTED[:2])
    assert json.loads(daemon_json.read_text())["dns"] == WANTED[:2]
    uninstall(daemon_json, state)
    assert daemon_json.read_text() == '{"debug": true}'


def test_edits_made_after_install_survive_uninstall(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    daemon_json.parent.mkdir()
    daemon_json.write_text(ORIGINAL)
    install(daemon_json, state, WANTED)
    data = json.loads(daemon_json.read_text())
    data["debug"] = True
    daemon_json.write_text(json.dumps(data))
    assert "kept the edits" in uninstall(daemon_json, state)[0]
    assert json.loads(daemon_json.read_text()) == {
        "log-driver": "journald", "dns": ["8.8.8.8"], "registry-mirrors": ["https://m.example"], "debug": True
    }


def test_uninstall_without_install_changes_nothing(paths: tuple[Path, Path]) -> None:
    daemon_json, state = paths
    assert "nothing changed" in uninstall(daemon_json, state)[0]
    assert not daemon_json.exists()


@pytest.mark.parametrize("text", ['{"dns": [', "[1, 2]", "dns=1.1.1.1"])
def test_invalid_daemon_json_is_refused_naming_the_file(paths: tuple[Path, Path], text: str) -> None:
    daemon_json, state = paths
    daemon_json.parent.mkdir()
    daemon_json.write_text(text)
    with pytest.raises(PynetError, match=f"{daemon_json} is not"):
        install(daemon_json, state, WANTED)
    assert daemon_json.read_text() == text
    assert not state.exists()


def test_the_command(paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    daemon_json, state = paths
    common = ["--daemon-json", str(daemon_json), "--state-dir", str(state), "--dns-upstream", "10.0.0.2"]
    assert main(["dns", "install", *common]) == 0
    assert json.loads(daemon_json.read_text()) == {"dns": ["169.254.53.53", "10.0.0.2"]}
    assert "restart dockerd" in capsys.readouterr().out
    assert main(["dns", "install", *common]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["dns", "uninstall", *common]) == 0
    assert not daemon_json.exists()
    daemon_json.write_text("{")
    assert main(["dns", "install", *common]) == 1
    assert f"{daemon_json} is not valid JSON" in capsys.readouterr().err
