"""The real daemon and bridge backend in a private network namespace, driven like dockerd.

pynet runs inside its own netns (so its links, sysctls and iptables rules are the
namespace's); the test plays Docker: it calls the socket, then moves the container end of
the veth into a "container" namespace and configures it, as dockerd does after Join.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
NET = "a1" * 32
EP = "b2" * 32


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


class Namespaces:
    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.host = f"pnk-h{tag}"
        self.ctr = f"pnk-c{tag}"
        for ns in (self.host, self.ctr):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def links(self) -> set[str]:
        out = sh("ip", "-n", self.host, "-o", "link", "show").stdout
        return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}

    def rules(self) -> str:
        return sh("ip", "netns", "exec", self.host, "iptables-save").stdout

    def delete(self) -> None:
        for ns in (self.host, self.ctr):
            sh("ip", "netns", "del", ns, check=False)


class Pynet:
    """`pynet serve` inside the host namespace, stopped by its pid."""

    def __init__(self, ns: Namespaces, tmp: Path, *args: str) -> None:
        self.ns = ns
        self.args = args
        self.sock = tmp / "pynet.sock"
        self.state = tmp / "state"
        self.log = tmp / "pynet.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "ip", "netns", "exec", self.ns.host, sys.executable, "-m", "pynet.plugin", "serve",
            "--socket", str(self.sock), "--state-dir", str(self.state), "--host-id", "k1", "--log-level", "debug",
            *self.args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not self._accepts():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "pynet did not bind its socket"
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.sock))
                return True
            except OSError:
                return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=20)


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    n = Namespaces()
    yield n
    n.delete()


@pytest.fixture
def pynet(ns: Namespaces, tmp_path: Path) -> Iterator[Pynet]:
    p = Pynet(ns, tmp_path)
    p.start()
    yield p
    p.stop(signal.SIGKILL)


@pytest.fixture
async def call(pynet: Pynet) -> AsyncIterator[Any]:
    async def do(method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        connector = aiohttp.UnixConnector(path=str(pynet.sock))
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.post(f"http://p/{method}", data=json.dumps(body or {})) as r:
                reply = await r.json(content_type=None)
                assert r.status == 200, reply
                return reply

    yield do


NETWORK = {
    "NetworkID": NET,
    "Options": {"com.docker.network.generic": {"mtu": "1400"}, "com.docker.network.enable_ipv6": False},
    "IPv4Data": [{"AddressSpace": "pynet-local", "Pool": "10.61.0.0/24", "Gateway": "10.61.0.1/24"}],
    "IPv6Data": [],
}
ENDPOINT = {
    "NetworkID": NET,
    "EndpointID": EP,
    "Interface": {"Address": "10.61.0.2/24", "AddressIPv6": "", "MacAddress": ""},
    "Options": {},
}


def move_into_container(ns: Namespaces, src: str, cidr: str, gateway: str) -> None:
    """What dockerd does with Join's SrcName."""
    sh("ip", "-n", ns.host, "link", "set", src, "netns", ns.ctr)
    sh("ip", "-n", ns.ctr, "link", "set", src, "name", "eth0")
    sh("ip", "-n", ns.ctr, "addr", "add", cidr, "dev", "eth0")
    sh("ip", "-n", ns.ctr, "link", "set", "eth0", "up")
    sh("ip", "-n", ns.ctr, "route", "add", "default", "via", gateway)


def pings(ns: str, target: str) -> bool:
    return sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", target, check=False).returncode == 0


async def test_network_endpoint_lifecycle_in_the_kernel(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    await call("NetworkDriver.CreateNetwork", NETWORK)
    bridge = "pnb-" + NET[:11]
    assert bridge in ns.links()
    assert "mtu 1400" in sh("ip", "-n", ns.host, "link", "show", bridge).stdout
    assert "10.61.0.1/24" in sh("ip", "-n", ns.host, "addr", "show", bridge).stdout
    assert re.search(rf"-s 10.61.0.0/24 ! -o {bridge} .*-j MASQUERADE", ns.rules())

    reply = await call("NetworkDriver.CreateEndpoint", ENDPOINT)
    assert reply == {"Interface": {"MacAddress": "02:42:0a:3d:00:02"}}
    join = await call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}})
    src = join["InterfaceName"]["SrcName"]
    assert join["Gateway"] == "10.61.0.1"
    peer = sh("ip", "-n", ns.host, "link", "show", src).stdout
    assert "mtu 1400" in peer and "02:42:0a:3d:00:02" in peer
    move_into_container(ns, src, "10.61.0.2/24", "10.61.0.1")
    assert pings(ns.ctr, "10.61.0.1")
    # A retried CreateEndpoint (Docker retries after connection errors) must not rebuild the
    # pair under a running container.
    assert await call("NetworkDriver.CreateEndpoint", ENDPOINT) == reply
    assert pings(ns.ctr, "10.61.0.1")

    # Docker moves the interface back before DeleteEndpoint.
    sh("ip", "-n", ns.ctr, "link", "set", "eth0", "netns", ns.host)
    await call("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    await call("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    await call("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert not {link for link in ns.links() if link.startswith("pn")}
    assert bridge not in ns.rules()


async def test_restart_rebuilds_the_kernel_from_the_store(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    await call("NetworkDriver.CreateNetwork", NETWORK)
    await call("NetworkDriver.CreateEndpoint", ENDPOINT)
    join = await call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}})
    move_into_container(ns, join["InterfaceName"]["SrcName"], "10.61.0.2/24", "10.61.0.1")
    pynet.stop(signal.SIGKILL)
    # Someone flushes pynet's rules and an orphan link appears while pynet is down.
    sh("ip", "netns", "exec", ns.host, "iptables", "-t", "nat", "-F", "PYNET-POSTROUTING")
    sh("ip", "-n", ns.host, "link", "add", "pnh-deadbeef00", "type", "veth", "peer", "name", "pnc-deadbeef00")
    sh("ip", "-n", ns.host, "link", "add", "pnm-deadbeef00", "type", "bridge")  # a macvlan-mode orphan
    sh("ip", "-n", ns.host, "link", "add", "pnb-deadbeef00", "type", "bridge")
    assert pings(ns.ctr, "10.61.0.1"), "the data plane does not need the daemon"
    pynet.start()
    await call("Plugin.Activate")
    await call("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert re.search(r"-s 10.61.0.0/24 ! -o pnb-\S+ .*-j MASQUERADE", ns.rules())
    assert not {"pnh-deadbeef00", "pnc-deadbeef00", "pnm-deadbeef00", "pnb-deadbeef00"} & ns.links()
    assert pings(ns.ctr, "10.61.0.1")
    # The restarted daemon still serves the old network.
    other = {**ENDPOINT, "EndpointID": "c3" * 32, "Interface": {"Address": "10.61.0.3/24", "AddressIPv6": "", "MacAddress": ""}}
    await call("NetworkDriver.CreateEndpoint", other)
    assert "pnh-" + "c3" * 5 + "c" in ns.links()


async def test_sigterm_removes_the_socket(ns: Namespaces, pynet: Pynet) -> None:
    pynet.stop(signal.SIGTERM)
    assert pynet.proc is not None and pynet.proc.returncode == 0
    assert not pynet.sock.exists()


async def test_stale_socket_is_replaced(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    pynet.stop(signal.SIGKILL)
    assert pynet.sock.exists(), "a killed daemon leaves its socket"
    pynet.start()
    assert await call("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert oct(pynet.sock.stat().st_mode & 0o777) == "0o660"


async def test_failed_endpoint_leaves_no_link(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    await call("NetworkDriver.CreateNetwork", NETWORK)
    before = ns.links()
    # A link of the endpoint's peer name taken by another kind makes creation fail.
    sh("ip", "-n", ns.host, "link", "add", "pnh-" + EP[:11], "type", "bridge")
    connector = aiohttp.UnixConnector(path=str(pynet.sock))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.post("http://p/NetworkDriver.CreateEndpoint", data=json.dumps(ENDPOINT)) as r:
            assert r.status == 409  # a Conflict: the name is taken
            assert "pnh-" + EP[:11] in (await r.json(content_type=None))["Err"]
    # pynet removed nothing it did not create, and created nothing that stayed.
    assert ns.links() == before | {"pnh-" + EP[:11]}
    connector = aiohttp.UnixConnector(path=str(pynet.sock))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.post("http://p/NetworkDriver.EndpointOperInfo", data=json.dumps(ENDPOINT)) as r:
            assert (await r.json(content_type=None)) == {"Value": {}}, "no endpoint record is kept"


async def test_deleted_endpoint_link_goes_away_by_itself(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    """DeleteEndpoint answers before the kernel has unregistered the veth; the batch follows."""
    await call("NetworkDriver.CreateNetwork", NETWORK)
    await call("NetworkDriver.CreateEndpoint", ENDPOINT)
    await call("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    deadline = time.monotonic() + 10
    while "pnh-" + EP[:11] in ns.links():
        assert time.monotonic() < deadline, "the retired link was never deleted"
        await asyncio.sleep(0.2)


VXLAN = {**NETWORK, "Options": {"com.docker.network.generic": {"mode": "vxlan", "vni": "4242"}}}


async def post(sock: Path, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.post(f"http://p/{method}", data=json.dumps(body)) as r:
            return r.status, await r.json(content_type=None)


async def test_vxlan_without_default_route_says_what_to_set(ns: Namespaces, pynet: Pynet) -> None:
    """An air-gapped host: no default route, no etcd to route to, no -o underlay."""
    status, reply = await post(pynet.sock, "NetworkDriver.CreateNetwork", VXLAN)
    assert status != 200
    assert "no IPv4 default route" in reply["Err"] and "PYNET_UNDERLAY" in reply["Err"] and "-o underlay" in reply["Err"]
    assert not {link for link in ns.links() if link.startswith("pn")}, "nothing half-created"


def uplink(ns: Namespaces) -> None:
    """An interface for the VTEP: uplink0, 192.0.2.77/24 (a veth whose peer stays here)."""
    sh("ip", "-n", ns.host, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    sh("ip", "-n", ns.host, "addr", "add", "192.0.2.77/24", "dev", "uplink0")
    sh("ip", "-n", ns.host, "link", "set", "uplink0", "up")


async def test_daemon_underlay_setting_spares_the_option(ns: Namespaces, tmp_path: Path) -> None:
    uplink(ns)
    daemon = Pynet(ns, tmp_path, "--underlay", "uplink0")
    daemon.start()
    try:
        status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", VXLAN)
        assert status == 200, reply
        device = sh("ip", "-n", ns.host, "-d", "link", "show", "pnx-4242").stdout
        assert "local 192.0.2.77" in device and "dev uplink0" in device
        assert "mtu 1450" in device, "the underlay's MTU less 50"
    finally:
        daemon.stop(signal.SIGKILL)


def second_serve(ns: Namespaces, sock: Path, state: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        "ip", "netns", "exec", ns.host, sys.executable, "-m", "pynet.plugin", "serve",
        "--socket", str(sock), "--state-dir", str(state), "--host-id", "k2",
    ]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)


async def test_a_second_daemon_refuses_to_start(ns: Namespaces, pynet: Pynet, call: Any, tmp_path: Path) -> None:
    """`make run` while the service runs: it must not take Docker's socket or the state."""
    await call("NetworkDriver.CreateNetwork", NETWORK)
    assert pynet.proc is not None
    same_state = second_serve(ns, tmp_path / "other.sock", pynet.state)
    assert same_state.returncode == 1
    assert f"another pynet (pid {pynet.proc.pid}) is running with state directory {pynet.state}" in same_state.stderr
    same_socket = second_serve(ns, pynet.sock, tmp_path / "other-state")
    assert same_socket.returncode == 1 and f"{pynet.sock} answers" in same_socket.stderr
    assert pynet.sock.exists(), "the live socket was not unlinked"
    # The first one still serves Docker, with its state.
    assert (await call("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})) == {"Value": {}}
    assert await call("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert oct((pynet.state / "pynet.lock").stat().st_mode & 0o777) == "0o600"


def bind_in(ns: str, port: int) -> str:
    """What a host process gets binding 0.0.0.0:port (TCP) in the namespace: "ok" or the error."""
    code = (
        "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"try:\n s.bind(('0.0.0.0',{port}));s.listen();print('ok')\nexcept OSError as e:\n print(e.strerror)"
    )
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", code).stdout.strip()


async def test_published_port_is_held_and_retaken_after_a_restart(ns: Namespaces, pynet: Pynet, call: Any) -> None:
    await call("NetworkDriver.CreateNetwork", NETWORK)
    await call("NetworkDriver.CreateEndpoint", ENDPOINT)
    await call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}})
    ports = [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 6, "IP": "", "Port": 81, "HostIP": "", "HostPort": 8081, "HostPortEnd": 8081},
    ]
    body = {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": ports}}
    await call("NetworkDriver.ProgramExternalConnectivity", body)
    assert bind_in(ns.host, 8080) == "Address already in use", "pynet holds the published port"
    pynet.stop(signal.SIGKILL)
    assert bind_in(ns.host, 8080) == "ok", "the socket dies with the daemon"
    # While pynet is down, a host server takes 8081 and keeps it.
    squatter = subprocess.Popen(
        ["ip", "netns", "exec", ns.host, sys.executable, "-c",
         "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',8081));s.listen();print('up',flush=True);time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "up"
        pynet.start()
        await call("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
        assert bind_in(ns.host, 8080) == "Address already in use", "retaken at start, for the running container"
        log = pynet.log.read_text()
        assert "published host port now bound by another process" in log and "8081/tcp" in log
        assert "--dport 8081" in ns.rules(), "the container keeps its DNAT"
    finally:
        os.kill(squatter.pid, signal.SIGKILL)
        squatter.wait()
    ids = {"NetworkID": NET, "EndpointID": EP}
    for release in ("RevokeExternalConnectivity", "Leave", "DeleteEndpoint"):
        await call("NetworkDriver.ProgramExternalConnectivity", body)
        assert bind_in(ns.host, 8080) == "Address already in use"
        await call(f"NetworkDriver.{release}", ids)
        assert bind_in(ns.host, 8080) == "ok", f"{release} frees the port"
        assert "--dport 8080" not in ns.rules()
