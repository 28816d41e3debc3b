"""pynet as a managed Docker plugin (config.json + a debootstrapped rootfs), in a real dockerd.

One lab host without the v1 pynet daemon gets the plugin through `make plugin`, run inside the
host as a user would run it on theirs. The rootfs is built by packaging/plugin/build.sh, which
keeps its debootstrapped base in /var/cache/pynet-plugin: the first build on a machine takes
one to three minutes (the Debian mirror), later ones seconds. Tests run in file order: they share the one plugin.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import DockerRelease, Host, Lab
from tests.dockercli import Docker, ask_plugin, http_get, wait_for

REPO = Path(__file__).resolve().parents[2]
REF = "pynet:latest"
PYNET = ("-d", REF, "--ipam-driver", REF)
HTTPD = ("sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www")
# A cold build (debootstrap plus the wheels) runs in the first test's setup.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def lab(plugin_ids: list[str], docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(name="pnp" + secrets.token_hex(2), hosts=1, etcd=True, pynet=False, docker=docker_release) as lab:
        yield lab


@pytest.fixture(scope="module")
def host(lab: Lab) -> Host:
    return lab.hosts[0]


@pytest.fixture(scope="module")
def state_dir(host: Host) -> Path:
    """The state mount's source for this host: the machine's /var/lib/pynet stays untouched."""
    return host.root / "plugin-state"


def make_plugin(host: Host, plugin_dir: Path, state_dir: Path, *extra: str, check: bool = True) -> str:
    """`make plugin` inside the host; returns its output."""
    out = host.run(
        "make", "-s", "-C", str(REPO), "plugin",
        f"PLUGIN_DIR={plugin_dir}",
        f"PLUGIN_SET=state.source={state_dir}",
        *extra,
        check=check, timeout=600,
    )
    return out.stdout + out.stderr


def plugin_id(host: Host) -> str:
    return host.docker("plugin", "inspect", "-f", "{{.Id}}", REF).stdout.strip()


@pytest.fixture(scope="module")
def plugin(host: Host, plugin_dir: Path, state_dir: Path, plugin_ids: list[str]) -> Iterator[str]:
    # As on an nftables host after a boot: nothing has made iptables' lock file (the host's
    # dockerd uses iptables-nft, which never does).
    host.run("rm", "-f", "/run/xtables.lock")
    make_plugin(host, plugin_dir, state_dir)
    plugin_ids.append(plugin_id(host))
    yield REF
    host.docker("plugin", "disable", "-f", REF, check=False)
    host.docker("plugin", "rm", "-f", REF, check=False)


@pytest.fixture
def docker(host: Host, plugin: str) -> Iterator[Docker]:
    d = Docker(host)
    yield d
    d.cleanup()


def running(docker: Docker, container: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip() == "true"


def env_of(host: Host) -> dict[str, str]:
    out = host.docker("plugin", "inspect", "-f", "{{json .Settings.Env}}", REF).stdout
    return dict(kv.partition("=")[::2] for kv in json.loads(out))


def set_plugin(host: Host, *settings: str) -> None:
    """`docker plugin set` needs the plugin disabled; -f because networks may use it."""
    host.docker("plugin", "disable", "-f", REF)
    host.docker("plugin", "set", REF, *settings)
    host.docker("plugin", "enable", REF)


# -- install ------------------------------------------------------------------------------------


def test_make_plugin_enables_pynet_latest(host: Host, plugin: str, state_dir: Path) -> None:
    assert host.docker("plugin", "inspect", "-f", "{{.Name}} {{.Enabled}}", REF).stdout.split() == [REF, "true"]
    status, reply = ask_plugin(host, REF, "/NetworkDriver.GetCapabilities")
    assert status == 200 and reply["Scope"] == "local"
    assert (state_dir / "store.sqlite").exists(), "the embedded store lives in the state mount"
    assert state_dir.stat().st_mode & 0o777 == 0o700, "`make plugin` made it as pynet would"
    assert {p.name: p.stat().st_mode & 0o777 for p in state_dir.iterdir()} == dict.fromkeys(
        ("pynet.lock", "host-id", "store-marker", "store.sqlite", "store.sqlite-wal", "store.sqlite-shm"), 0o600
    )
    # Enabled where /run/xtables.lock does not exist, and nothing had to create it.
    assert host.run("test", "-e", "/run/xtables.lock", check=False).returncode != 0


# Bit numbers in /proc/<pid>/status's Cap* masks (linux/capability.h).
CAPABILITY_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21}


def plugin_pid(host: Host) -> int:
    """The plugin's `pynet serve`: the process in the plugin's cgroup, named by the plugin's ID
    (other pynets run on the machine, in other labs and checkouts)."""
    pid = plugin_id(host)
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and pid in (proc / "cgroup").read_text():
                if b"serve" in (proc / "cmdline").read_bytes().split(b"\0"):
                    return int(proc.name)
        except OSError:  # gone meanwhile
            continue
    raise AssertionError(f"no pynet serve runs in the cgroup of plugin {pid}")


def test_plugin_has_no_capability_it_does_not_declare(host: Host, plugin: str) -> None:
    """config.json adds only what pynet needs (docs/design.md, "Least privilege"); the
    networks below and the etcd tests run with exactly this set."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{plugin_pid(host)}/status").read_text().splitlines())
    effective = int(status["CapEff"], 16)
    held = {name for name, bit in CAPABILITY_BITS.items() if effective >> bit & 1}
    assert held == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}


def test_driver_name_needs_the_tag(docker: Docker) -> None:
    untagged = docker("network", "create", "-d", "pynet", "--subnet", "10.50.9.0/24", docker.name("untagged"), check=False)
    assert untagged.returncode != 0 and "could not resolve driver pynet" in untagged.stderr


def test_two_containers_reach_each_other(docker: Docker) -> None:
    """/proc/sys is read-only in a plugin: pynet cannot write sysctls there, and the network
    still works (dockerd has already turned on ip_forward)."""
    net = docker.network("blue", *PYNET, "--subnet", "10.50.0.0/24")
    assert docker("network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}}", net).stdout.split() == [REF, REF]
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert docker.ip(b, net).startswith("10.50.0.")
    assert docker.pings(a, docker.ip(b, net))
    assert docker.pings(a, b), "embedded DNS resolves the container name"


def test_macvlan_network(docker: Docker) -> None:
    """macvlan links on the host's eth0, made with the plugin's capabilities alone."""
    net = docker.network("mv", *PYNET, "-o", "mode=macvlan", "-o", "parent=eth0", "--subnet", "10.58.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert docker.pings(a, docker.ip(b, net))


def test_published_port_without_sysctls(docker: Docker, lab: Lab, host: Host) -> None:
    """Published ports work from other machines and the host's own address. Through 127.0.0.1
    on the host they need route_localnet on the bridge, a sysctl a plugin cannot write: the
    README says so, and this fails once that changes. Port 80: pynet binds the ports it
    publishes, and one below 1024 needs CAP_NET_BIND_SERVICE (in the plugin's default set)."""
    net = docker.network("ports", *PYNET, "--subnet", "10.55.0.0/24")
    docker.run("web", "--network", net, "-p", "80:80", cmd=HTTPD)
    assert http_get(lab.outside.run, host.address, 80).startswith("hello")
    assert http_get(host.run, host.address, 80).startswith("hello")
    assert http_get(host.run, "127.0.0.1", 80) == "", "127.0.0.1 works now: update the README"


# -- lifecycle ----------------------------------------------------------------------------------


def test_disable_and_enable_keep_the_network(docker: Docker, host: Host) -> None:
    net = docker.network("cycle", *PYNET, "--subnet", "10.51.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    host.docker("plugin", "disable", "-f", REF)
    assert docker.pings(a, b), "traffic does not depend on the plugin process"
    host.docker("plugin", "enable", REF)
    c = docker.run("c", "--network", net)
    assert docker.pings(c, a) and docker.pings(c, docker.ip(b, net))


def test_dockerd_restart_keeps_the_network(docker: Docker, host: Host) -> None:
    net = docker.network("restart", *PYNET, "--subnet", "10.52.0.0/24")
    always = ("--network", net, "--restart", "always", "--stop-timeout", "1")
    a = docker.run("a", *always)
    b = docker.run("b", *always)
    host.restart_dockerd()
    assert host.docker("plugin", "inspect", "-f", "{{.Enabled}}", REF).stdout.strip() == "true"
    assert wait_for(lambda: running(docker, a) and running(docker, b), 30)
    assert wait_for(lambda: docker.pings(a, b), 15)
    c = docker.run("c", "--network", net)
    assert docker.pings(c, a) and docker.pings(c, docker.ip(b, net))


def test_make_plugin_again_replaces_it_keeping_settings_and_networks(
    docker: Docker, host: Host, plugin_dir: Path, state_dir: Path, plugin_ids: list[str]
) -> None:
    """The upgrade path for a local build: `make plugin` recreates the plugin. The state mount's
    source is set after dockerd restarted (the test above), where .Settings.Mounts no longer
    follows `docker plugin set`: the source carried over must be the one the plugin runs with.
    It is the same directory by another path, so the later tests find their files there."""
    link = host.root / "plugin-state-link"
    link.symlink_to(state_dir)
    set_plugin(host, "PYNET_LOG_LEVEL=debug", f"state.source={link}")
    net = docker.network("upgrade", *PYNET, "--subnet", "10.53.0.0/24")
    a = docker.run("a", "--network", net, "--restart", "always", "--stop-timeout", "1")
    old = plugin_id(host)
    refused = make_plugin(host, plugin_dir, state_dir, check=False)
    assert "FORCE=1" in refused and plugin_id(host) == old, f"in use: replaced only when asked\n{refused}"
    make_plugin(host, plugin_dir, state_dir, "FORCE=1", "PLUGIN_SET=")  # only what it carries over
    plugin_ids.append(plugin_id(host))
    assert plugin_id(host) != old
    assert env_of(host)["PYNET_LOG_LEVEL"] == "debug", "`docker plugin set` values survive"
    mounts = host.docker("plugin", "inspect", "-f", "{{json .Config.Mounts}}", REF).stdout
    assert {m["Name"]: m["Source"] for m in json.loads(mounts)}["state"] == str(link)
    assert docker.pings(a, "10.53.0.1"), "the running container kept its link"
    b = docker.run("b", "--network", net)
    assert docker.pings(b, a)


def test_plugin_set_switches_to_etcd(docker: Docker, host: Host, lab: Lab) -> None:
    set_plugin(host, f"PYNET_ETCD_ENDPOINTS={lab.etcd_endpoint}", f"PYNET_HOST_ID={host.name}")
    net = docker.network("etcd", *PYNET, "--subnet", "10.54.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert docker.pings(a, b)
    net_id = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    keys = host.run("etcdctl", "--endpoints", lab.etcd_endpoint, "get", "--prefix", "/pynet/", "--keys-only").stdout
    assert f"/pynet/hosts/{host.name}/networks/{net_id}" in keys.split()


def test_etcd_password_from_a_file_appears_nowhere_else(
    docker: Docker, host: Host, lab: Lab, plugin_dir: Path, state_dir: Path, plugin_ids: list[str]
) -> None:
    """etcd with auth on; the password is only in a file of the state mount. It must not reach
    a command line (ps), the plugin's settings or environment, dockerd's log (the plugin's
    output, at debug since the upgrade test), or what `make plugin` prints when it carries the
    settings over. Last in the file: the lab's etcd keeps auth on."""
    password = secrets.token_hex(12)
    ctl = ("etcdctl", "--endpoints", lab.etcd_endpoint)
    host.run(*ctl, "user", "add", f"root:{password}")
    host.run(*ctl, "auth", "enable")
    secret = state_dir / "etcd-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    set_plugin(
        host,
        f"PYNET_ETCD_ENDPOINTS={lab.etcd_endpoint}",
        "PYNET_ETCD_USER=root",
        "PYNET_ETCD_PASSWORD_FILE=/var/lib/pynet/etcd-password",
    )
    printed = make_plugin(host, plugin_dir, state_dir, "FORCE=1")
    plugin_ids.append(plugin_id(host))
    # VXLAN, the mode that needs etcd; with etcd pynet also serves names on 169.254.53.53:53,
    # a port below 1024 (CAP_NET_BIND_SERVICE).
    net = docker.network("auth", *PYNET, "-o", "mode=vxlan", "-o", "vni=4257", "--subnet", "10.57.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert docker.pings(a, b)
    assert "169.254.53.53:53 " in host.run("ss", "-Hlnu").stdout, "the resolver is bound"
    net_id = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    keys = host.run(*ctl, f"--user=root:{password}", "get", "--prefix", "/pynet/", "--keys-only").stdout
    assert f"/pynet/hosts/{host.name}/networks/{net_id}" in keys.split(), "pynet logged in to etcd"
    pid = plugin_pid(host)
    seen = {
        "make plugin's output": printed,
        "the plugin's settings": json.dumps(env_of(host)),
        "the plugin's environment": Path(f"/proc/{pid}/environ").read_text(errors="replace"),
        "dockerd's log": (host.root / "dockerd.log").read_text(errors="replace"),
    }
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                seen[f"the command line of pid {proc.name}"] = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:  # gone meanwhile
                continue
    assert [where for where, text in seen.items() if password in text] == []
