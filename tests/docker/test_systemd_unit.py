"""pynet.service, proven without a running systemd (PID 1 is not systemd on the test machines).

`make install-service` goes into a temporary DESTDIR. A lab host (private mount namespace, its
own dockerd, no v1 pynet) then sees that DESTDIR's /opt as its /opt, so the installed unit's
paths are real there: `systemd-analyze verify` checks the unit, and the unit's own ExecStart and
ExecStartPost command lines run with the environment /etc/default/pynet and Environment= give
them, as systemd would; the host's dockerd then uses pynet as the plugin `pynet`.

ExecStart runs inside the sandbox the unit's hardening describes, built from the unit's own
values as systemd builds it: the capability bounding set and no_new_privs (setpriv), every
mount read-only but /dev, /proc, /sys and ReadWritePaths= (ProtectSystem=strict, in a mount
namespace of its own), a private /tmp and /var/tmp, and UMask=. The seccomp-based settings
(SystemCallFilter=, RestrictAddressFamilies=, RestrictNamespaces=) and the Protect* ones
beyond these are checked by `systemd-analyze verify` and `security` only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import DockerRelease, Host, Lab
from lab.cmd import run_cmd
from tests.dockercli import Docker
from tests.unit.test_packaging import parse_unit, words

REPO = Path(__file__).resolve().parents[2]
UNIT = Path("etc/systemd/system/pynet.service")
DEFAULTS = Path("etc/default/pynet")
DESTDIRS = Path("/var/cache/pynet-tests")


def install_service(destdir: Path) -> None:
    run_cmd(["make", "-s", "-C", str(REPO), "install-service", f"DESTDIR={destdir}"], timeout=600)


@pytest.fixture(scope="module")
def destdir() -> Iterator[Path]:
    # Not under /tmp or /var/tmp, wherever the checkout is (CI's clone may be under /tmp): the
    # venv's paths include DESTDIR, and the unit's PrivateTmp= hides both.
    DESTDIRS.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="destdir-", dir=DESTDIRS))
    try:
        install_service(d)
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture(scope="module")
def lab(destdir: Path, docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(f"pns{uuid.uuid4().hex[:4]}", hosts=1, etcd=False, pynet=False, docker=docker_release) as lab:
        yield lab


@pytest.fixture(scope="module")
def host(lab: Lab, destdir: Path) -> Host:
    """The lab host, with DESTDIR/opt over /opt in its mount namespace only."""
    host = lab.hosts[0]
    host.run("mount", "--bind", str(destdir / "opt"), "/opt")
    return host


@pytest.fixture
def docker(host: Host) -> Iterator[Docker]:
    d = Docker(host)
    yield d
    d.cleanup()


def service(destdir: Path) -> dict[str, list[str]]:
    return parse_unit((destdir / UNIT).read_text())["Service"]


def command_line(value: str) -> list[str]:
    """An Exec*= value as systemd runs it: `$$` is a literal `$`, then shell-like quoting. (No
    `$VAR` expansion: this unit uses none outside the `sh -c` script.)"""
    return shlex.split(value.replace("$$", "$"))


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: comments, blanks, quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("\"'")
    return env


def unit_environment(destdir: Path) -> dict[str, str]:
    s = service(destdir)
    env: dict[str, str] = {}
    for item in s.get("Environment", []):
        key, _, value = item.partition("=")
        env[key] = value
    for entry in s["EnvironmentFile"]:
        path = destdir / entry.lstrip("-").lstrip("/")
        if path.exists() or not entry.startswith("-"):
            env.update(environment_file(path))
    return env


def test_install_service_lays_out_unit_settings_and_venv(destdir: Path) -> None:
    s = service(destdir)
    pynet = command_line(s["ExecStart"][0])[0]
    assert pynet == "/opt/pynet/venv/bin/pynet"
    assert os.access(destdir / pynet.lstrip("/"), os.X_OK)
    assert (destdir / DEFAULTS).stat().st_mode & 0o777 == 0o600, "it may hold the etcd password"


def test_install_service_again_keeps_the_settings_file(destdir: Path) -> None:
    """The upgrade path (`make install-service` after `git pull`) must not reset the settings."""
    settings = destdir / DEFAULTS
    before = settings.read_text()
    settings.write_text(before + "PYNET_LOG_LEVEL=warning\n")
    try:
        install_service(destdir)
        assert settings.read_text().endswith("PYNET_LOG_LEVEL=warning\n")
    finally:
        settings.write_text(before)


def test_systemd_analyze_verify(host: Host, destdir: Path) -> None:
    """verify exits 0 even on unknown keys or bad values, so its warnings must be absent too."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: apt-get install systemd (it need not run)")
        pytest.skip("systemd-analyze is missing: apt-get install systemd (it need not run)")
    out = host.run("systemd-analyze", "verify", str(destdir / UNIT), check=False)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# ProtectSystem=strict as systemd does it, in the new mount namespace: each ReadWritePaths= entry
# becomes a mount of its own first, then every other mount (but the API file systems and what
# lies under a writable path) is made read-only; then PrivateTmp= and UMask=.
SANDBOX = r"""
set -e
rw=""
while [ "$1" != -- ]; do rw="$rw $1"; mount --bind "$1" "$1"; shift; done
shift
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r m; do
    case "$m" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue ;; esac
    for p in $rw; do case "$m" in "$p"|"$p"/*) continue 2 ;; esac; done
    mount -o remount,bind,ro "$m"
done
mount -t tmpfs -o mode=1777 private-tmp /tmp
mount -t tmpfs -o mode=1777 private-tmp /var/tmp
umask "$UNIT_UMASK"
exec "$@"
"""


def sandboxed(argv: list[str], s: dict[str, list[str]], writable: list[str]) -> list[str]:
    """`argv` under the unit's hardening; `writable` are the ReadWritePaths= of a drop-in."""
    assert s["ProtectSystem"] == ["strict"] and s["PrivateTmp"] == ["yes"] and s["NoNewPrivileges"] == ["yes"]
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in words(s["CapabilityBoundingSet"]))
    rw = [*words(s["ReadWritePaths"]), *writable]
    return [
        "env", f"UNIT_UMASK={s['UMask'][0]}", "unshare", "--mount", "--propagation", "private",
        "sh", "-c", SANDBOX, "sandbox", *rw, "--",
        "setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs", *argv,
    ]


def test_exec_lines_serve_docker_as_the_plugin_pynet(host: Host, destdir: Path, docker: Docker) -> None:
    state = host.root / "service-state"
    state.mkdir()  # a state directory elsewhere than /var/lib/pynet: its ReadWritePaths= drop-in
    settings = destdir / DEFAULTS
    before = settings.read_text()
    settings.write_text(before + f"PYNET_STATE_DIR={state}\nPYNET_LOG_LEVEL=debug\n")
    env = unit_environment(destdir)
    s = service(destdir)
    log = host.root / "service.log"
    argv = sandboxed(command_line(s["ExecStart"][0]), s, [str(state)])
    with open(log, "ab") as out:
        proc = host.popen(*argv, env={**host.env(), **env}, stdout=out, stderr=out)
    try:
        post = host.run("env", *(f"{k}={v}" for k, v in env.items()), *command_line(s["ExecStartPost"][0]), check=False)
        assert post.returncode == 0, f"the socket never appeared:\n{log.read_text()[-2000:]}"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "\nCapEff:\t0000000000003400\n" in status, "NET_BIND_SERVICE, NET_ADMIN, NET_RAW only"
        assert "\nNoNewPrivs:\t1\n" in status
        net = docker.network("svc", "-d", "pynet", "--ipam-driver", "pynet", "--subnet", "10.56.0.0/24")
        a = docker.run("a", "--network", net)
        b = docker.run("b", "--network", net)
        assert docker.pings(a, b) and docker.pings(a, docker.ip(b, net))
        assert (state / "store.sqlite").exists(), "PYNET_STATE_DIR from /etc/default/pynet applies"
        assert (state / "store.sqlite").stat().st_mode & 0o777 == 0o600
        assert "level=debug" in log.read_text(), "PYNET_LOG_LEVEL from /etc/default/pynet applies"
        docker.cleanup()
        stop_like_systemd(proc)
        assert proc.returncode == 0
        assert not host.inside("/run/docker/plugins/pynet.sock").exists(), "the socket goes with pynet"
    finally:
        settings.write_text(before)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_like_systemd(proc: subprocess.Popen[str]) -> None:
    """KillMode=process: SIGTERM to the main process only, SIGKILL after TimeoutStopSec."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("pynet ignored SIGTERM for TimeoutStopSec")
