"""The crash hooks (pynet.store.faults): one table of points, each one called in the product."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pynet.store import faults

REPO = Path(__file__).resolve().parents[2]


def hooked() -> list[str]:
    """Every `faults.hit("<point>")` in the product source."""
    out = []
    for folder in ("plugin", "drivers", "ipam", "store"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "hit"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "faults"
                ):
                    arg = node.args[0]
                    assert isinstance(arg, ast.Constant), f"{path}: a crash point must be a literal name"
                    out.append(arg.value)
    return out


def test_every_point_is_in_the_table_and_hooked_once() -> None:
    names = hooked()
    assert sorted(set(names)) == sorted(faults.POINTS), "POINTS and the faults.hit calls disagree"
    twice = {n for n in names if names.count(n) > 1}
    assert not twice, f"hooked at several places: {twice}"


def test_unarmed_hit_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.arm_from_env() == ""
    for point in faults.POINTS:
        faults.hit(point)


def test_an_unknown_point_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "create_network.after_typo")
    with pytest.raises(faults.UnknownPoint, match="PYNET_CRASH_AT must be one of .*got 'create_network.after_typo'"):
        faults.arm_from_env()


def test_an_armed_point_exits_at_once() -> None:
    """os._exit: no finally block runs, as after kill -9."""
    code = (
        "from pynet.store import faults\n"
        "faults.arm_from_env()\n"
        "try:\n    faults.hit('join.after_store')\nfinally:\n    print('finally ran')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={"PYNET_CRASH_AT": "join.after_store"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == faults.CRASH_EXIT
    assert "crash point join.after_store reached" in done.stderr and "finally ran" not in done.stdout
