"""The machines of a lab: Docker hosts, the outside world, and the etcd server.

Each is a network namespace on the underlay. A Docker host also has private mount and UTS
namespaces, owned by a long-lived holder process, so that it gets its own /run (and with it
its own /run/docker/plugins, surviving dockerd restarts like on a real machine), sysfs,
/etc/docker and hostname. dockerd, pynet and commands enter all the holder's namespaces.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cmd import LabError, run_cmd, unix_http
from .image import IMAGE, IMAGE_CHANGES
from .procs import Proc, is_live

if TYPE_CHECKING:
    from .core import Lab

PLUGIN_SOCKET = "/run/docker/plugins/pynet.sock"
START_TIMEOUT = 30.0
_DOCKER_CLIENT_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")

# Runs as the holder: `nsenter --net=NETNS unshare --mount --uts sh -c HOLDER_SCRIPT holder ROOT NAME`.
# The host's /run is detached rather than covered, so the holder pins none of the machine's
# network namespaces (ip netns bind mounts live under /run/netns) and nothing containerd or
# dockerd writes under /run (shim sockets, runc state) lands on the machine. /sys is remounted
# for this network namespace, with the cgroup tree kept aside first because the new sysfs
# would hide it. /etc/docker gets a per-host directory, or every dockerd would write, and share,
# the machine's /etc/docker/key.json (the engine ID). The hostname is the host's name, as
# dockerd reports it (`docker info`) and containers with --net=host see it. With a third argument
# (Host.own_resolv_conf), that file covers /etc/resolv.conf, which dockerd then reads as its
# host's resolvers; it must be a regular file on the machine (a symlink into /run would point
# into the new, empty /run).
HOLDER_SCRIPT = r"""
set -e
for m in $(awk '$5 ~ "^/run(/|$)" {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
done
mount -t tmpfs -o mode=755 pnlab-run /run
mkdir -p /run/cgroup-aside /run/docker/plugins /run/netns /run/containerd
mount --rbind /sys/fs/cgroup /run/cgroup-aside
mount -t sysfs sysfs /sys
mount --move /run/cgroup-aside /sys/fs/cgroup
rmdir /run/cgroup-aside
mkdir -p "$1/etc-docker"
if [ -d /etc/docker ]; then mount --bind "$1/etc-docker" /etc/docker; fi
if [ -n "$3" ]; then mount --bind "$3" /etc/resolv.conf; fi
echo "$2" > /proc/sys/kernel/hostname
ip link set lo up
echo ready
exec sleep infinity </dev/null >/dev/null 2>&1
"""


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Node:
    """A machine on the underlay that is only a network namespace (the outside, etcd)."""

    iface = "eth0"

    def __init__(self, netns: str, address: str) -> None:
        self.name = netns
        self.netns = netns
        self.address = address

    def command(self, *argv: str) -> list[str]:
        """ARGV prefixed so that it runs inside this machine (for tools that want an argv)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside this machine; output is captured, CommandError when check fails."""
        return run_cmd(self.command(*argv), check=check, timeout=timeout, input=input, env=self.env())

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[str]:
        """Start a command inside this machine; keyword arguments go to subprocess.Popen."""
        kw.setdefault("env", self.env())
        kw.setdefault("text", True)
        return subprocess.Popen(self.command(*argv), **kw)


class Outside(Node):
    """Another machine, or "the internet": the default gateway of every host, routing nowhere."""


class Host(Node):
    """One Docker host: network + mount namespace, a dockerd, and optionally pynet."""

    def __init__(self, lab: Lab, index: int, address: str) -> None:
        super().__init__(f"{lab.name}-h{index}", address)
        self.lab = lab
        self.index = index
        self.root = lab.dir / f"h{index}"
        self.docker_host = f"unix://{self.root}/docker.sock"
        self.holder: Proc | None = None
        self.dockerd: Proc | None = None
        self.pynet: Proc | None = None
        self._dockerd_args: tuple[str, ...] = ()

    # -- namespaces -------------------------------------------------------------------------

    @property
    def own_resolv_conf(self) -> bool:
        """Whether this host has a private /etc/resolv.conf naming only the outside's stand-in
        resolver, and no daemon-level "dns": dockerd then forwards from its host's resolv.conf,
        as it does on a machine without daemon.json (docs/protocol.md §8, DNS forwarding)."""
        return self.lab.own_resolv_conf

    def start_holder(self) -> None:
        """Create the mount and UTS namespaces; returns once set up (the script printed "ready")."""
        self.root.mkdir(parents=True, exist_ok=True)
        resolv_conf = ""
        if self.own_resolv_conf:
            resolv_conf = str(self.root / "resolv.conf")
            Path(resolv_conf).write_text(f"nameserver {self.lab.outside.address}\n")
        with open(self.root / "holder.log", "ab") as log:
            proc = Proc.spawn(
                [
                    *("nsenter", f"--net=/run/netns/{self.netns}"),
                    *("unshare", "--mount", "--uts", "--propagation", "private"),
                    *("sh", "-c", HOLDER_SCRIPT, "holder", str(self.root), self.name, resolv_conf),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._set("holder", proc)
        assert proc.popen is not None and proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], START_TIMEOUT)
        line = proc.popen.stdout.readline() if ready else b""
        proc.popen.stdout.close()
        if line.strip() != b"ready":
            raise LabError(f"{self.name}: namespace holder failed:\n{_log_tail(self.root / 'holder.log')}")

    def _holder_pid(self) -> int:
        if self.holder is None or not self.holder.alive():
            raise LabError(f"{self.name} is not up (no namespace holder)")
        return self.holder.pid

    def command(self, *argv: str) -> list[str]:
        namespaces = ["--mount", "--uts", "--net"]
        return ["nsenter", f"--target={self._holder_pid()}", *namespaces, f"--wd={self.root}", "--", *argv]

    def inside(self, path: str) -> Path:
        """PATH as this host sees it (e.g. its private /run), reachable from the lab's machine."""
        return Path(f"/proc/{self._holder_pid()}/root") / path.lstrip("/")

    def env(self) -> dict[str, str]:
        """The caller's environment with DOCKER_HOST, so a plain `docker` talks to this host,
        minus the variables that would point the docker CLI somewhere else, and with the
        host's Docker release first on PATH (and its CLI plugins in DOCKER_CONFIG, if any)."""
        env = {k: v for k, v in os.environ.items() if k not in _DOCKER_CLIENT_VARS}
        path = self.lab.docker.path(os.environ.get("PATH", os.defpath))
        if self.lab.docker.compose is not None:
            env["DOCKER_CONFIG"] = str(self.docker_config)
        return {**env, "DOCKER_HOST": self.docker_host, "PATH": path}

    @property
    def docker_config(self) -> Path:
        """The host's DOCKER_CONFIG, holding the CLI plugins `install_cli_plugins` linked."""
        return self.root / "docker-config"

    def install_cli_plugins(self) -> None:
        """Link Compose into the host's cli-plugins directory, where every docker CLI since 19.03
        looks ($DOCKER_CONFIG/cli-plugins), so `docker compose` works on each release's CLI and
        the machine's /usr/libexec/docker/cli-plugins stays as it is."""
        compose = self.lab.docker.compose
        if compose is None:
            return
        plugins = self.docker_config / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / compose.name
        link.unlink(missing_ok=True)
        link.symlink_to(compose)

    def _set(self, role: str, proc: Proc | None) -> None:
        setattr(self, role, proc)
        self.lab.record_proc(f"{self.name}/{role}", proc)

    # -- docker -----------------------------------------------------------------------------

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI aimed at this host's dockerd. It runs on the machine (the socket is
        visible there), so file arguments such as `docker import FILE` are the machine's paths."""
        argv = [self.lab.docker.cli(), "-H", self.docker_host, *args]
        return run_cmd(argv, check=check, timeout=timeout, env=self.env())

    def dockerd_running(self) -> bool:
        return self.dockerd is not None and self.dockerd.alive()

    def start_dockerd(self, *extra_args: str) -> None:
        """Start dockerd and wait until its API answers; EXTRA_ARGS are kept for restart_dockerd."""
        if self.dockerd_running():
            raise LabError(f"{self.name}: dockerd is already running")
        self._forget_dead_pidfiles()
        release = self.lab.docker
        argv = [
            release.dockerd(),
            f"--data-root={self.root}/data",
            f"--exec-root={self.root}/exec",
            f"--pidfile={self.root}/docker.pid",
            f"--host={self.docker_host}",
            f"--config-file={self._daemon_json()}",
            # Containers of different hosts must not share cgroups, and down() must find them.
            f"--cgroup-parent=/{self.name}",
            "--iptables=true",
            *release.dockerd_args(),
            *extra_args,
        ]
        # dockerd starts containerd, and containerd the shim, from PATH; runc stays the machine's.
        env = {**os.environ, "PATH": release.path(os.environ.get("PATH", os.defpath))}
        log = self.root / "dockerd.log"
        with open(log, "ab") as out:
            self._set("dockerd", Proc.spawn(self.command(*argv), stdout=out, stderr=out, env=env))
        self._dockerd_args = extra_args
        self._wait_ready("dockerd", self._docker_answers, log)

    def _daemon_json(self) -> Path:
        """The host's own daemon config, so a /etc/docker/daemon.json of the machine does not
        apply. Its "dns" (never the --dns flag: dockerd refuses a key given both ways) is the
        outside's stand-in resolver, where names fail or answer at once, with pynet's resolver
        first once `install_dns` ran. With the lab's registry (lab/registry.py), "insecure-registries"
        names it: dockerd pulls and pushes over plain HTTP only from registries listed there.
        No "dns" on a host with its own resolv.conf (naming the same resolver). Kept across
        dockerd restarts."""
        path = self.root / "daemon.json"
        if not path.exists():
            config: dict[str, Any] = {} if self.own_resolv_conf else {"dns": [self.lab.outside.address]}
            if self.lab.registry:
                config["insecure-registries"] = [self.lab.registry]
            path.write_text(json.dumps(config) + "\n")
        return path

    def install_dns(self) -> None:
        """`pynet dns install` on this host's daemon.json, as an operator would, before dockerd starts."""
        run_cmd(
            [
                *self.lab.pynet_cmd,
                *("dns", "install", "--daemon-json", str(self._daemon_json())),
                *("--state-dir", str(self.root / "pynet"), "--dns-upstream", self.lab.outside.address),
            ]
        )

    def _forget_dead_pidfiles(self) -> None:
        """Remove pid files of dead daemons: dockerd refuses to start, or waits on a containerd
        that is gone, if the pid in them still looks alive (a zombie not yet reaped, a reused pid)."""
        pidfiles = {
            "dockerd": self.root / "docker.pid",
            "containerd": self.root / "exec" / "containerd" / "containerd.pid",
        }
        for name, pidfile in pidfiles.items():
            try:
                pid = int(pidfile.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            deadline = time.monotonic() + 10
            while self._is_named(pid, name) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._is_named(pid, name):
                pidfile.unlink(missing_ok=True)

    @staticmethod
    def _is_named(pid: int, name: str) -> bool:
        try:
            return is_live(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == name
        except FileNotFoundError:
            return False

    def _docker_answers(self) -> bool:
        try:
            status, body = unix_http(f"{self.root}/docker.sock", "GET", "/_ping")
        except OSError:
            return False
        return status == 200 and body == b"OK"

    def _wait_ready(self, role: str, ready: Callable[[], bool], log: Path) -> None:
        """Poll READY until it holds; on death or timeout, stop the daemon and raise with its log."""
        proc: Proc = getattr(self, role)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if not proc.alive():
                self._set(role, None)
                raise LabError(f"{self.name}: {role} exited during startup:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                proc.stop(kill=True)
                self._set(role, None)
                raise LabError(f"{self.name}: {role} not ready in {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.05)

    def stop_dockerd(self, kill: bool = False) -> None:
        """SIGTERM (dockerd then stops its containers and containerd) or SIGKILL (a crash:
        containerd dies with it, container shims survive as on a real machine)."""
        if self.dockerd is not None:
            self.dockerd.stop(kill=kill, timeout=60)
        self._set("dockerd", None)

    def restart_dockerd(self) -> None:
        """A clean restart with the same extra arguments; images, containers and everything
        under the host's /run (such as pynet's socket) stay, as they would on a real machine."""
        self.stop_dockerd()
        self.start_dockerd(*self._dockerd_args)

    def import_image(self, tar: Path) -> None:
        """Load the lab image (see image.py) into this host's dockerd."""
        changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
        self.docker("import", *changes, str(tar), IMAGE)

    # -- pynet ------------------------------------------------------------------------------

    def start_pynet(self, *args: str, env: dict[str, str] | None = None) -> None:
        """Run `pynet serve` as this host's v1 plugin, with the lab's etcd endpoint and
        pynet_args before ARGS; waits until it answers /Plugin.Activate on its socket."""
        if self.pynet_running():
            raise LabError(f"{self.name}: pynet is already running")
        argv = [
            *self.lab.pynet_cmd,
            "serve",
            "--socket",
            PLUGIN_SOCKET,
            "--state-dir",
            str(self.root / "pynet"),
            "--host-id",
            self.name,
            # The agent's Docker: this host's dockerd (the machine's socket is never the lab's).
            "--docker-host",
            self.docker_host,
            # The resolver's upstream: the outside's stand-in, never the machine's resolv.conf.
            "--dns-upstream",
            self.lab.outside.address,
            *(["--etcd-endpoints", self.lab.etcd_endpoint] if self.lab.etcd_endpoint else []),
            *self.lab.pynet_args,
            *args,
        ]
        log = self.root / "pynet.log"
        with open(log, "ab") as out:
            proc = Proc.spawn(self.command(*argv), stdout=out, stderr=out, env={**self.env(), **(env or {})})
        self._set("pynet", proc)
        self._wait_ready("pynet", self._plugin_answers, log)

    def _plugin_answers(self) -> bool:
        """What dockerd does first with a v1 plugin socket: an empty POST /Plugin.Activate."""
        try:
            status, body = unix_http(str(self.inside(PLUGIN_SOCKET)), "POST", "/Plugin.Activate")
            reply = json.loads(body)
        except (OSError, ValueError):
            return False
        return status == 200 and isinstance(reply, dict) and "Implements" in reply

    def stop_pynet(self, kill: bool = False) -> None:
        if self.pynet is not None:
            self.pynet.stop(kill=kill)
        self._set("pynet", None)

    def pynet_running(self) -> bool:
        return self.pynet is not None and self.pynet.alive()
