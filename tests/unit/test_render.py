"""How the CLI shows things: tables for people, JSON for scripts, and exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pynet.drivers.config import BridgeConfig, MacvlanConfig, VxlanConfig
from pynet.plugin import cli
from pynet.plugin.ops import gc, gc_command, render, reports
from pynet.plugin.ops.admin_api import DaemonInfo, Peer, Status, StoreInfo


def test_tables_align_columns_and_say_when_empty() -> None:
    text = render.table(["A", "LONGER"], [("x", 1), ("yyyy", 22)])
    assert text.splitlines() == ["A     LONGER", "x     1", "yyyy  22"]
    assert render.table(["A"], []) == "(none)"


def test_a_network_is_described_by_what_its_mode_sits_on() -> None:
    vxlan = VxlanConfig(bridge="pno-42", device="pnx-42", vni=42, mtu=1450)
    assert vxlan.describe() == "bridge=pno-42 vni=42"
    assert MacvlanConfig(parent="eth0.10").describe() == "parent=eth0.10"
    assert BridgeConfig(bridge="pnb-0123456789a").describe() == "bridge=pnb-0123456789a"


def status(answers: bool) -> Status:
    daemon = DaemonInfo("/run/p.sock", True, 42, 3725.0, True, version="0.3.1")
    if not answers:
        daemon = DaemonInfo("/run/p.sock", False, error="stale socket /run/p.sock")
    store = StoreInfo("etcd", "http://127.0.0.1:2379", answers, "" if answers else "deadline exceeded")
    return Status(daemon, "h1", store, 2, 3, [Peer(42, "h2", "10.99.0.2")])


def test_status_text_for_a_healthy_and_a_broken_host() -> None:
    up = reports._status_text(status(True))
    assert "answers on /run/p.sock (pynet 0.3.1, pid 42, up 1h02m05s, ready)" in up
    assert "etcd http://127.0.0.1:2379: reachable" in up
    assert "42   10.99.0.2  h2" in up
    down = reports._status_text(status(False))
    assert "DOWN: stale socket /run/p.sock" in down and "UNREACHABLE: deadline exceeded" in down


def test_gc_text_names_leaks_their_fate_and_why_nothing_was_removed() -> None:
    leak = gc.Leak("allocation", "10.1.0.3", "no one uses it", pool="10.1.0.0/24")
    rule = gc.Leak("rule", "-A PYNET-FORWARD -i pnb-x -j DROP", "gone", family=6, table="filter")
    outcomes = [gc.Outcome(leak, "removed"), gc.Outcome(rule, "failed", "busy")]
    report = gc_command.GcReport("daemon", "unix:///d.sock", "", "", "", False, [leak, rule], outcomes)
    text = gc_command._gc_text(report)
    assert "10.1.0.3 in 10.1.0.0/24" in text and "IPv6 filter -A PYNET-FORWARD" in text
    assert "removed 1 of 2" in text and "rule IPv6 filter -A PYNET-FORWARD -i pnb-x -j DROP: failed busy" in text
    why = "Docker at unix:///d.sock cannot be asked: refused"
    unreachable = gc_command.GcReport("store", "unix:///d.sock", why, why, "iptables: not found", False, [], [])
    text = gc_command._gc_text(unreachable)
    assert "not checked, nothing removed" in text and "firewall not checked: iptables: not found" in text


def test_missing_store_is_one_clear_line_and_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["networks", "--socket", str(tmp_path / "none.sock"), "--state-dir", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"pynet networks: no store at {tmp_path / 'nothing' / 'store.sqlite'}" in err


def test_settings_come_from_pynet_variables_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNET_SOCKET", str(tmp_path / "env.sock"))
    monkeypatch.setenv("PYNET_STATE_DIR", str(tmp_path / "env-state"))
    assert cli.main(["status", "--json"]) == 1
    st = json.loads(capsys.readouterr().out)
    assert st["daemon"]["socket"] == str(tmp_path / "env.sock")
    assert st["store"]["where"] == str(tmp_path / "env-state" / "store.sqlite")
