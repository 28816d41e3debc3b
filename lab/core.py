"""A lab: N Docker hosts, an etcd server and "the outside", all on one Linux machine.

Every machine is a network namespace joined by a bridge that itself lives in a namespace, so
the machine running the lab sees none of it: no links, routes, addresses or iptables rules.
Everything the lab makes is written down in a state file in the lab directory before or as it
is made, so `down` from any process (even after the one that ran `up` crashed) removes
exactly the lab's namespaces, processes, cgroups and files, and nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from .cmd import LabError, run_cmd
from .image import build_image_rootfs, build_image_tar
from .nodes import Host, Node, Outside
from .procs import Proc, is_live, kill_all_in, netns_id
from .registry import PORT as REGISTRY_PORT
from .registry import start as start_registry
from .releases import MACHINE, DockerRelease

DEFAULT_BASE_DIR = Path("/var/lib/pynet-lab")
REPO = Path(__file__).resolve().parent.parent
STATE_FILE = "state.json"
# Unix socket paths are limited to 108 bytes; the longest one dockerd makes under a host root.
_LONGEST_SOCKET = "exec/containerd/containerd-debug.sock"
_MAX_SOCKET_PATH = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,23}")


class Lab:
    """The lab named NAME under BASE_DIR; `up` builds it, `down` removes every trace of it."""

    def __init__(
        self,
        name: str = "pnlab",
        hosts: int = 2,
        etcd: bool = True,
        base_dir: Path | None = None,
        underlay: str = "10.99.0.0/24",
        pynet: bool = True,
        pynet_args: Sequence[str] = (),
        pynet_cmd: Sequence[str] | None = None,
        docker: DockerRelease = MACHINE,
        registry: bool = False,
        own_resolv_conf: bool = False,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"lab name {name!r}: use up to 24 of a-z 0-9 _ -, starting with a-z 0-9")
        self.name = name
        self.dir = (base_dir or DEFAULT_BASE_DIR) / name
        self.underlay = ipaddress.IPv4Network(underlay)
        addresses = [str(a) for a in self.underlay.hosts()]
        if not 1 <= hosts <= len(addresses) - 2:
            raise ValueError(f"{hosts} hosts do not fit in {underlay} next to etcd and the outside")
        self.use_etcd = etcd
        self.use_pynet = pynet
        # Every host's dockerd runs this release (releases.fetch makes a newer one available).
        self.docker = docker
        self.pynet_args = list(pynet_args)
        self.pynet_cmd = list(pynet_cmd or [str(REPO / ".venv" / "bin" / "pynet")])
        self.outside = Outside(f"{name}-ext", addresses[-1])
        self.etcd_node = Node(f"{name}-etcd", addresses[-2])
        self.etcd_endpoint = f"http://{self.etcd_node.address}:2379" if etcd else ""
        # A plain-HTTP registry in the outside namespace (lab/registry.py), host:port, or "".
        self.registry = f"{self.outside.address}:{REGISTRY_PORT}" if registry else ""
        # Every host gets a private /etc/resolv.conf and no daemon-level "dns" (Host.own_resolv_conf).
        self.own_resolv_conf = own_resolv_conf
        self.etcd: Proc | None = None
        self.upstream: Proc | None = None  # the outside's stand-in resolver
        self.registry_proc: Proc | None = None
        self.hosts = [Host(self, i, addresses[i - 1]) for i in range(1, hosts + 1)]
        longest = self.hosts[-1].root / _LONGEST_SOCKET
        if len(str(longest).encode()) > _MAX_SOCKET_PATH:
            raise ValueError(f"{longest} is too long for a Unix socket: use a shorter base_dir or name")
        self._state: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @classmethod
    def attach(cls, name: str = "pnlab", base_dir: Path | None = None) -> Lab:
        """The running lab NAME, as another process built it (for the CLI, or a test session)."""
        state = _read_state((base_dir or DEFAULT_BASE_DIR) / name / STATE_FILE)
        if state is None:
            raise LabError(f"lab {name} is not up")
        cfg = state["config"]
        lab = cls(
            name,
            cfg["hosts"],
            cfg["etcd"],
            base_dir,
            cfg["underlay"],
            cfg["pynet"],
            cfg["pynet_args"],
            cfg["pynet_cmd"],
            _release_from_json(cfg.get("docker")),
            cfg.get("registry", False),
            cfg.get("own_resolv_conf", False),
        )
        procs = state["procs"]
        for host in lab.hosts:
            for role in ("holder", "dockerd", "pynet"):
                if f"{host.name}/{role}" in procs:
                    setattr(host, role, Proc.from_json(procs[f"{host.name}/{role}"]))
        if "etcd" in procs:
            lab.etcd = Proc.from_json(procs["etcd"])
        if "upstream" in procs:
            lab.upstream = Proc.from_json(procs["upstream"])
        if "registry" in procs:
            lab.registry_proc = Proc.from_json(procs["registry"])
        lab._state = state
        return lab

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- state ------------------------------------------------------------------------------

    def record_proc(self, key: str, proc: Proc | None) -> None:
        with self._lock:
            if proc is None:
                self._state["procs"].pop(key, None)
            else:
                self._state["procs"][key] = proc.to_json()
            self._save_state()

    def _save_state(self) -> None:
        """Write-then-rename, so a crash never leaves a half-written state file."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        os.replace(tmp, self.state_file)

    def _init_state(self) -> None:
        if self.dir.exists():
            raise LabError(f"{self.dir} exists but holds no lab state: not touching it")
        created_base = not self.dir.parent.exists()
        self.dir.mkdir(parents=True)
        self._state = {
            "config": {
                "hosts": len(self.hosts),
                "etcd": self.use_etcd,
                "underlay": str(self.underlay),
                "pynet": self.use_pynet,
                "pynet_args": self.pynet_args,
                "pynet_cmd": self.pynet_cmd,
                "docker": {
                    "name": self.docker.name,
                    "bin_dir": self.docker.bin_dir and str(self.docker.bin_dir),
                    "compose": self.docker.compose and str(self.docker.compose),
                },
                "registry": bool(self.registry),
                "own_resolv_conf": self.own_resolv_conf,
            },
            "created_base": created_base,
            "netns": [],
            "procs": {},
        }
        self._save_state()

    # -- up ---------------------------------------------------------------------------------

    def up(self) -> None:
        """Build the lab; leftovers of an earlier lab of the same name are removed first."""
        if self.state_file.exists():
            self.down()
        taken = [n for n in self._netns_names() if Path(f"/run/netns/{n}").exists()]
        if taken:
            raise LabError(f"network namespaces {taken} exist and are not this lab's: not touching them")
        try:
            self._init_state()
            self._build_underlay()
            self._start_services()
        except BaseException:
            self.down()
            raise

    def _netns_names(self) -> list[str]:
        return [f"{self.name}-ul", *(n.netns for n in self._members())]

    def _members(self) -> list[Node]:
        return [*self.hosts, self.outside, *([self.etcd_node] if self.use_etcd else [])]

    def _add_netns(self, name: str) -> None:
        run_cmd(["ip", "netns", "add", name])
        with self._lock:
            self._state["netns"].append(name)
            self._save_state()

    def _build_underlay(self) -> None:
        """One bridge in its own namespace, and a veth from it to each machine's eth0."""
        underlay = f"{self.name}-ul"
        self._add_netns(underlay)
        bridge = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
        for node in self._members():
            self._add_netns(node.netns)
            port = node.netns.removeprefix(f"{self.name}-")
            bridge += [
                f"link add {port} type veth peer name {node.iface} netns {node.netns}",
                f"link set {port} master br0 up",
            ]
        _ip_batch(underlay, bridge)
        for node in self._members():
            config = [
                "link set lo up",
                f"addr add {node.address}/{self.underlay.prefixlen} dev {node.iface}",
                f"link set {node.iface} up",
            ]
            if isinstance(node, Host):
                config.append(f"route add default via {self.outside.address}")
            _ip_batch(node.netns, config)

    def _start_services(self) -> None:
        """Hosts come up in parallel (dockerd start dominates), next to etcd and the image build."""
        with ThreadPoolExecutor(max_workers=len(self.hosts) + 2) as pool:
            etcd = pool.submit(self._start_etcd) if self.use_etcd else None
            pool.submit(self._start_upstream).result()
            registry = pool.submit(self._start_registry) if self.registry else None
            image = pool.submit(self._build_image)
            jobs: list[Future[Any]] = [pool.submit(self._bring_up, host, image, etcd) for host in self.hosts]
            for job in [*jobs, image, *([etcd] if etcd else []), *([registry] if registry else [])]:
                job.result()

    def _bring_up(self, host: Host, image: Future[Path], etcd: Future[None] | None) -> None:
        host.start_holder()
        host.install_cli_plugins()
        if self.use_pynet and self.use_etcd:  # names across hosts need etcd
            host.install_dns()
        host.start_dockerd()
        host.import_image(image.result())
        if self.use_pynet:
            if etcd is not None:
                etcd.result()
            host.start_pynet()

    def _start_upstream(self) -> None:
        """The outside's stand-in resolver (lab/upstream.py), every host's upstream."""
        log = self.dir / "upstream.log"
        with open(log, "ab") as out:
            python = str(REPO / ".venv" / "bin" / "python")
            argv = self.outside.command(python, "-m", "lab.upstream", self.outside.address)
            self.upstream = Proc.spawn(argv, stdout=out, stderr=out, cwd=REPO)
        self.record_proc("upstream", self.upstream)
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text(errors="replace"):
            if not self.upstream.alive() or time.monotonic() > deadline:
                raise LabError(f"the outside's resolver did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def _start_registry(self) -> None:
        """Recorded as soon as it runs, so down() stops it even if it never got ready."""

        def record(proc: Proc) -> None:
            self.registry_proc = proc
            self.record_proc("registry", proc)

        start_registry(self.outside, self.dir / "registry", record)

    def _build_image(self) -> Path:
        rootfs = build_image_rootfs(self.dir / "image")
        return build_image_tar(rootfs, self.dir / "image.tar")

    def stop_etcd(self, kill: bool = False) -> None:
        """Take etcd away (failure tests); its data stays for `start_etcd`."""
        if self.etcd is not None:
            self.etcd.stop(kill=kill)
            self.etcd = None

    def start_etcd(self) -> None:
        """(Re)start etcd on its fixed address with the data it had."""
        self._start_etcd()

    def _start_etcd(self) -> None:
        """A one-member etcd on the underlay, so hosts reach it as they would a real cluster."""
        data = self.dir / "etcd"
        data.mkdir(exist_ok=True)
        peer = "http://127.0.0.1:2380"
        argv = [
            "etcd",
            f"--name={self.name}",
            f"--data-dir={data / 'data'}",
            f"--listen-client-urls={self.etcd_endpoint},http://127.0.0.1:2379",
            f"--advertise-client-urls={self.etcd_endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            # etcd 3.4's default logger drops empty files named after pointers in its cwd.
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        log = data / "etcd.log"
        with open(log, "ab") as out:
            self.etcd = Proc.spawn(self.etcd_node.command(*argv), stdout=out, stderr=out, cwd=data)
        self.record_proc("etcd", self.etcd)
        deadline = time.monotonic() + 30
        while not self._etcd_healthy():
            if not self.etcd.alive() or time.monotonic() > deadline:
                raise LabError(f"etcd did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def _etcd_healthy(self) -> bool:
        health = self.etcd_node.run(
            "etcdctl",
            f"--endpoints={self.etcd_endpoint}",
            "--dial-timeout=1s",
            "--command-timeout=1s",
            "endpoint",
            "health",
            check=False,
            timeout=10,
        )
        return health.returncode == 0

    # -- down -------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove the lab as its state file describes it; safe to repeat, and a no-op without one."""
        state = _read_state(self.state_file)
        if state is None:
            return
        netns = [n for n in state["netns"] if Path(f"/run/netns/{n}").exists()]
        namespaces = {i for n in netns if (i := netns_id(f"/run/netns/{n}")) is not None}
        recorded = [Proc.from_json(v) for v in state["procs"].values()]
        kill_all_in(namespaces, [*self._own_procs(), *recorded])
        self._forget_procs()
        for name in netns:
            run_cmd(["ip", "netns", "del", name])
        _remove_cgroups([f"{self.name}-h{i}" for i in range(1, state["config"]["hosts"] + 1)])
        self._remove_files(state["created_base"])

    def leftovers(self) -> list[str]:
        """What of this lab still exists on the machine: empty once `down` did its job."""
        found = [f"netns {n}" for n in self._netns_names() if Path(f"/run/netns/{n}").exists()]
        cgroups = [mount / host.name for mount in _cgroup_mounts() for host in self.hosts]
        found += [f"cgroup {c}" for c in cgroups if c.exists()]
        found += [f"process {pid}" for pid in _processes_mentioning(str(self.dir))]
        found += [f"process {p.pid}" for p in self._own_procs() if p.alive()]
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    def _own_procs(self) -> list[Proc]:
        """Processes this object started: they are its children, and must be reaped by it."""
        procs = [p for h in self.hosts for p in (h.holder, h.dockerd, h.pynet) if p is not None]
        return procs + [p for p in (self.etcd, self.upstream, self.registry_proc) if p is not None]

    def _forget_procs(self) -> None:
        for proc in self._own_procs():
            if proc.popen is not None:
                proc.popen.wait(timeout=10)
        for host in self.hosts:
            host.holder = host.dockerd = host.pynet = None
        self.etcd = self.upstream = self.registry_proc = None

    def _remove_files(self, created_base: bool) -> None:
        """The state file goes last, so an interrupted down can be run again."""
        for entry in self.dir.iterdir():
            if entry.name != STATE_FILE:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.state_file.unlink()
        self.dir.rmdir()
        if created_base:
            with contextlib.suppress(OSError):  # another lab lives there
                self.dir.parent.rmdir()


def _release_from_json(value: dict[str, Any] | None) -> DockerRelease:
    if value is None:  # a lab from before releases were recorded
        return MACHINE

    def path(key: str) -> Path | None:
        return Path(value[key]) if value.get(key) else None  # no "compose" in a lab from before it

    return DockerRelease(value["name"], path("bin_dir"), path("compose"))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return state


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains TEXT (every lab daemon names its lab dir)."""
    pids = []
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            if is_live(pid) and text in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                pids.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def _ip_batch(netns: str, commands: list[str]) -> None:
    run_cmd(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n")


def _cgroup_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(before.split()[4]))
    return mounts


def _remove_cgroups(names: list[str], timeout: float = 10) -> None:
    """Remove the cgroups dockerd made for each host's containers (its --cgroup-parent). A
    cgroup can only be removed once its killed tasks have fully exited, hence the retries."""
    deadline = time.monotonic() + timeout
    for top in [m / n for m in _cgroup_mounts() for n in names]:
        while top.is_dir():
            try:
                for dirpath, _, _ in os.walk(top, topdown=False):
                    os.rmdir(dirpath)
            except OSError as err:
                if time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {top}: {err}") from err
                time.sleep(0.1)
