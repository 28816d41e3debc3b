"""The docker CLI as a user types it, on one lab host, plus probes of what pynet left in the kernel."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from lab import Host

IMAGE = "pnbusybox:latest"
REPO = Path(__file__).resolve().parents[1]


class Docker:
    """The docker CLI on one host, remembering what it created so the test cleans up."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.tag = secrets.token_hex(3)
        self.containers: list[str] = []
        self.networks: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.host.docker(*args, check=check, timeout=timeout)

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    def network(self, base: str, *args: str) -> str:
        name = self.name(base)
        self("network", "create", *args, name)
        self.networks.append(name)
        return name

    def run(self, base: str, *args: str, cmd: tuple[str, ...] = ("sleep", "3600")) -> str:
        name = self.name(base)
        self.containers.append(name)
        self("run", "-d", "--name", name, *args, IMAGE, *cmd)
        return name

    def exec(self, container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("exec", container, *argv, check=check)

    def ip(self, container: str, network: str, field: str = "IPAddress") -> str:
        template = f"{{{{(index .NetworkSettings.Networks {json.dumps(network)}).{field}}}}}"
        return self("inspect", "-f", template, container).stdout.strip()

    def pings(self, container: str, target: str, count: int = 1, v6: bool = False) -> bool:
        argv = ["ping", "-6" if v6 else "-4", "-c", str(count), "-W", "2", target]
        return self.exec(container, *argv, check=False).returncode == 0

    def cleanup(self) -> None:
        for c in reversed(self.containers):
            self("rm", "-f", c, check=False)
        for n in reversed(self.networks):
            self("network", "rm", n, check=False)


def pynet_links(host: Host) -> set[str]:
    out = host.run("ip", "-o", "link", "show").stdout
    return {m for m in re.findall(r"^\d+: ([^:@]+)", out, re.M) if m.startswith("pn")}


def pynet_rules(host: Host) -> str:
    """pynet's own chains, as iptables-save prints them (both families)."""
    text = ""
    for tool in ("iptables-save", "ip6tables-save"):
        text += host.run(tool).stdout
    return "\n".join(line for line in text.splitlines() if "PYNET" in line or "pnb-" in line)


def http_get(run: Callable[..., subprocess.CompletedProcess[str]], host: str, port: int) -> str:
    """GET / with busybox nc (Debian's static busybox wget segfaults); "" when unreachable.

    `run` runs an argv where the client should be: a lab node's `run`, or `Docker.exec`
    bound to a container."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"
    reply = run("busybox", "sh", "-c", request, check=False)
    # Text mode has already turned the reply's CRLFs into newlines.
    return reply.stdout.replace("\r\n", "\n").partition("\n\n")[2] if reply.returncode == 0 else ""


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.2) -> bool:
    """Poll until true: for conditions that settle asynchronously (never to assert on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def ask_plugin(host: Host, plugin: str, route: str) -> tuple[int, dict[str, object]]:
    """POST to a managed plugin's socket as dockerd does, from inside the host: the path seen
    from the machine (/proc/<pid>/root/run/docker/plugins/<64 hex>/pynet.sock) is too long for
    a socket. PLUGIN is its name (pynet:latest)."""
    plugin_id = host.docker("plugin", "inspect", "-f", "{{.Id}}", plugin).stdout.strip()
    sock = f"/run/docker/plugins/{plugin_id}/pynet.sock"
    # The lab is not installed (a development tool): import it from the checkout.
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import lab.cmd as c; "
        "s, b = c.unix_http(sys.argv[1], 'POST', sys.argv[2], b'{}'); print(s, b.decode())"
    )
    status, _, body = host.run(sys.executable, "-c", code, sock, route, str(REPO)).stdout.partition(" ")
    return int(status), json.loads(body)
