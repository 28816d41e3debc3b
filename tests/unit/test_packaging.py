"""The packaging files agree with the daemon: config.json (the managed plugin's manifest), the
systemd unit and /etc/default/pynet. Mistakes in config.json show up only when Docker enables
the plugin, and in a unit only at boot, so they are checked here, with no root and no Docker.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pynet.plugin.daemon.config import Settings

REPO = Path(__file__).resolve().parents[2]
# The daemon's own default paths are right inside the plugin; not meant to be changed there.
FIXED = {"socket", "state_dir"}
EXTRA_ENV = {"PYTHONUNBUFFERED", "XTABLES_LOCKFILE"}
# Settings whose plugin value is not the daemon's default. The managed plugin sees the host's
# /run at /host/run (the "host-run" mount), so the host's Docker socket is there.
# Docker knows a managed plugin by its name with the tag.
PLUGIN_VALUES = {"docker_host": "unix:///host/run/docker.sock", "driver_name": "pynet:latest"}


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "config.json").read_text())
    return data


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}}: keys may repeat, which configparser refuses."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit((REPO / "packaging" / "pynet.service").read_text())


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


# -- config.json --------------------------------------------------------------------------------


def test_manifest_declares_both_drivers_on_the_default_socket() -> None:
    m = manifest()
    assert m["interface"]["types"] == ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]
    # Inside the plugin the socket is /run/docker/plugins/<socket>: pynet's default path.
    assert f"/run/docker/plugins/{m['interface']['socket']}" == Settings().socket
    assert m["network"]["type"] == "host", "veths must be made in the host's network namespace"


def test_manifest_capabilities() -> None:
    """Each one measured (docs/design.md, "Least privilege"); pynet never enters another
    namespace or mounts anything, so no CAP_SYS_ADMIN."""
    caps = manifest()["linux"]["capabilities"]
    assert caps == ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"]


def test_entrypoint_runs_pynet_serve_unbuffered() -> None:
    m = manifest()
    argv = m["entrypoint"]
    assert argv[-2:] == ["/opt/pynet/venv/bin/pynet", "serve"]
    assert "-u" in argv
    assert {"name": "PYTHONUNBUFFERED", "description": m["env"][0]["description"], "value": "1"} in m["env"]


def test_every_setting_is_settable_with_the_daemons_default() -> None:
    """Each env entry has a value (Docker only sets entries that have one) equal to the
    daemon's default, parses as the setting's type, and is settable."""
    env = {e["name"]: e for e in manifest()["env"]}
    for f in dataclasses.fields(Settings):
        name = "PYNET_" + f.name.upper()
        if f.name in FIXED:
            assert name not in env, f"{name} is fixed by the plugin's mounts and socket"
            continue
        assert name in env, f"config.json lacks {name}"
        entry = env[name]
        assert entry.get("settable") == ["value"], name
        assert isinstance(entry.get("value"), str), f"{name} needs a value to be set at all"
        kind: Any = type(f.default)
        assert kind(entry["value"]) == PLUGIN_VALUES.get(f.name, f.default), name
    assert set(env) - {"PYNET_" + f.name.upper() for f in dataclasses.fields(Settings)} == EXTRA_ENV


def test_state_mount_is_the_daemons_state_dir_and_settable() -> None:
    mounts = {m["name"]: m for m in manifest()["mounts"]}
    state = mounts["state"]
    assert state["source"] == state["destination"] == Settings().state_dir
    assert state["settable"] == ["source"] and state["type"] == "bind"


def test_every_mount_source_exists_on_a_freshly_booted_host() -> None:
    """Docker refuses to enable a plugin whose bind source is missing, and enables plugins at
    boot before anything else runs: a source must be a directory every host has (the state
    directory is made by `make plugin`), never a file such as /run/xtables.lock, which only a
    legacy iptables creates (an nftables host never has it)."""
    mounts = {m["name"]: m for m in manifest()["mounts"]}
    assert set(mounts) == {"state", "host-run"}
    assert mounts["host-run"]["source"] == "/run"
    env = {e["name"]: e["value"] for e in manifest()["env"]}
    # iptables (1.8.6 and later) takes its lock's path from XTABLES_LOCKFILE.
    assert env["XTABLES_LOCKFILE"] == mounts["host-run"]["destination"] + "/xtables.lock"


# -- the systemd unit --------------------------------------------------------------------------


def test_unit_orders_pynet_before_docker_and_is_wanted_by_it() -> None:
    u = unit()
    assert "docker.service" in words(u["Unit"]["Before"])
    wanted = words(u["Install"]["WantedBy"])
    assert "multi-user.target" in wanted and "docker.service" in wanted
    # Requires= would restart docker (and its containers) with every `systemctl restart pynet`.
    assert "RequiredBy" not in u["Install"]


def test_unit_service_policy() -> None:
    s = unit()["Service"]
    assert s["ExecStart"] == ["/opt/pynet/venv/bin/pynet serve"]
    assert s["Restart"] == ["on-failure"]
    assert s["KillMode"] == ["process"]
    assert "-/etc/default/pynet" in s["EnvironmentFile"]
    assert "PYTHONUNBUFFERED=1" in s["Environment"]


def test_unit_hardening_leaves_pynet_what_it_writes_and_the_plugins_capabilities() -> None:
    s = unit()["Service"]
    assert words(s["CapabilityBoundingSet"]) == manifest()["linux"]["capabilities"], "one measured list"
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert Path("/var/lib", s["StateDirectory"][0]) == Path(Settings().state_dir)
    assert s["StateDirectoryMode"] == ["0700"] and s["UMask"] == ["0077"]
    writable = [Path(p) for p in words(s["ReadWritePaths"])]
    assert any(Path(Settings().socket).is_relative_to(p) for p in writable), "the socket's directory"
    assert "ProtectKernelTunables" not in s, "pynet writes ip_forward and route_localnet"


def test_default_file_names_only_real_settings() -> None:
    text = (REPO / "packaging" / "pynet.default").read_text()
    names = set(re.findall(r"^#?(PYNET_[A-Z_]+)=", text, re.MULTILINE))
    known = {"PYNET_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert names and names <= known, names - known
    assert not re.search(r"^PYNET_", text, re.MULTILINE), "everything stays at its default until the user edits it"


@pytest.mark.parametrize("script", ["plugin/build.sh", "plugin/create.sh", "plugin/push.sh", "install-service.sh"])
def test_scripts_are_executable(script: str) -> None:
    assert (REPO / "packaging" / script).stat().st_mode & 0o111


def test_distribution_is_one_namespace_without_the_lab() -> None:
    """Nothing generic (plugin, store, ...) lands in site-packages, and the lab, a development
    tool, is not installed: the managed plugin's rootfs and the service venv hold only pynet.*."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "pynet" or p.startswith("pynet.") for p in setup["packages"])
    assert not any("lab" in p.split(".") or "tests" in p.split(".") for p in setup["packages"])
    folders = set(setup["package-dir"].values())
    assert folders == {"plugin", "drivers", "ipam", "store"}
    for folder in folders:
        sub = {p.relative_to(REPO).as_posix().replace("/", ".") for p in (REPO / folder).rglob("__init__.py")}
        listed = {f"pynet.{s.removesuffix('.__init__.py')}" for s in sub}
        assert listed <= set(setup["packages"]), f"subpackages missing from pyproject: {listed - set(setup['packages'])}"
