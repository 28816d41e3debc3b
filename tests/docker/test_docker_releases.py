"""Where Docker releases differ for a network plugin (docs/protocol.md §8), each shown on a real
dockerd of every release: what 28+ sends (`com.docker.network.enable_ipv4`, `GwAllocCheck`),
what it calls when, and what its API and daemon accept. Each test asserts its release's side.

pynet runs here with `--log-level debug`, whose `request` lines name every call Docker made
and the Host header it sent.
"""

from __future__ import annotations

import http.server
import json
import re
import secrets
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lab import DockerRelease, Host, Lab
from lab.cmd import unix_http
from tests.docker.test_cli import cli_json
from tests.dockercli import Docker

PYNET = ("-d", "pynet", "--ipam-driver", "pynet")
V4 = "com.docker.network.enable_ipv4"


@pytest.fixture(scope="module", autouse=True)
def debug_log(host: Host) -> Iterator[None]:
    host.stop_pynet()
    host.start_pynet("--log-level", "debug")
    yield
    host.stop_pynet()
    host.start_pynet()


class Calls:
    """The plugin calls Docker makes from now on, read from pynet's debug log."""

    def __init__(self, host: Host) -> None:
        self.log = host.root / "pynet.log"
        self.start = self.log.stat().st_size

    def lines(self) -> list[str]:
        return [line for line in self.all().splitlines() if "msg=request " in line]

    def all(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.start)
            return f.read().decode()

    def methods(self) -> list[str]:
        return [m.group(1) for line in self.lines() if (m := re.search(r" method=(\S+)", line))]


def newer(release: DockerRelease) -> bool:
    return release.name not in ("20.10", "26.1")


def ipv4_pools(host: Host) -> set[str]:
    return set(re.findall(r'"(\d+\.\d+\.\d+\.\d+/\d+)"', json.dumps(cli_json(host, "ipam")[1])))


def addresses(docker: Docker, container: str, family: str) -> list[str]:
    out = docker.exec(container, "ip", "-o", family, "addr", "show", "dev", "eth0").stdout
    return re.findall(r"inet6? (\S+)", out)


# -- com.docker.network.enable_ipv4: IPv6-only networks (28.0+) --------------------------------


MACVLAN = ("-o", "mode=macvlan", "-o", "parent=eth0")
NO_V4_FLAG = ("--ipv4=false",)
NO_V4_OPTION = ("-o", f"{V4}=false")  # Docker 28 reads it too, and passes it on


@pytest.mark.parametrize(
    ("subnet", "args"),
    [
        ("fd00:61::/64", (*PYNET, *NO_V4_FLAG)),
        ("fd00:62::/64", ("-d", "pynet", *NO_V4_FLAG)),
        ("fd00:63::/64", (*PYNET, *NO_V4_OPTION)),
        ("fd00:64::/64", (*PYNET, *MACVLAN, *NO_V4_FLAG)),
    ],
    ids=["pynet-ipam", "default-ipam", "driver-option", "macvlan"],
)
def test_ipv6_only_network(
    docker: Docker, host: Host, docker_release: DockerRelease, subnet: str, args: tuple[str, ...]
) -> None:
    name = docker.name("v6only")
    create = ("network", "create", *args, "--ipv6", "--subnet", subnet, name)
    if not newer(docker_release):
        # 20.10's and 26.1's CLIs have no such flag; the option Docker 28 also reads, they pass
        # on to the driver without applying it: pynet refuses it rather than make IPv4.
        r = docker(*create, check=False)
        if "--ipv4=false" in args:
            assert r.returncode != 0 and "unknown flag: --ipv4" in r.stderr, r.stderr
            flag = create.index("--ipv4=false")
            r = docker(*create[:flag], *NO_V4_OPTION, *create[flag + 1 :], check=False)
        assert r.returncode != 0 and f"option {V4}=false was not applied by Docker" in r.stderr, r.stderr
        assert docker("network", "ls", "-q", "-f", f"name={name}").stdout.strip() == ""
        return
    pools_before = ipv4_pools(host)
    docker(*create)
    docker.networks.append(name)
    a = docker.run("a", "--network", name)
    b = docker.run("b", "--network", name)
    assert addresses(docker, a, "-4") == [], "no IPv4 address"
    ip6 = docker.ip(b, name, "GlobalIPv6Address")
    assert docker.ip(b, name) == "" and ip6.startswith(subnet.split("::")[0])
    assert docker.pings(a, ip6, v6=True) and docker.pings(a, b, v6=True), "neighbour, by address and by name"
    gateway = subnet.replace("::/64", "::1")
    assert f"default via {gateway}" in docker.exec(a, "ip", "-6", "route").stdout
    assert ipv4_pools(host) == pools_before, "no IPv4 pool"
    if "mode=macvlan" in args:
        return  # the gateway is an outside router, and there are no rules
    assert docker.pings(a, gateway, v6=True), "the gateway"
    bridge = "pnb-" + docker("network", "inspect", "-f", "{{.Id}}", name).stdout[:11]
    assert bridge not in host.run("iptables-save").stdout, "no IPv4 rule"
    assert bridge in host.run("ip6tables-save").stdout
    assert "inet " not in host.run("ip", "-4", "addr", "show", "dev", bridge).stdout


# -- GwAllocChecker (28.0+) --------------------------------------------------------------------


@pytest.mark.parametrize("ipam", [PYNET, ("-d", "pynet")], ids=["pynet-ipam", "default-ipam"])
def test_internal_macvlan_reserves_no_gateway_from_28(
    docker: Docker, host: Host, docker_release: DockerRelease, ipam: tuple[str, ...]
) -> None:
    """Docker 28 asks GwAllocCheck and, for an --internal macvlan network (which routes
    nowhere), reserves no gateway: the first container gets the first address. 20.10 and
    26.1 do not know the capability and reserve it, as before."""
    calls = Calls(host)
    subnet = "10.64.0.0/24" if ipam == PYNET else "10.65.0.0/24"
    net = docker.network("mvint", *ipam, "-o", "mode=macvlan", "--internal", "--subnet", subnet)
    a = docker.run("a", "--network", net)
    gateway = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", net).stdout.strip()
    first = subnet.replace("0/24", "1")
    if newer(docker_release):
        assert "NetworkDriver.GwAllocCheck" in calls.methods()
        assert gateway == "" and docker.ip(a, net) == first
    else:
        assert "NetworkDriver.GwAllocCheck" not in calls.methods()
        assert docker.ip(a, net) == subnet.replace("0/24", "2")
    b = docker.run("b", "--network", net)
    assert docker.pings(a, b)


def test_macvlan_keeps_an_outside_routers_gateway_reserved(docker: Docker, lab_outside: str) -> None:
    """A macvlan network whose gateway is the lab's outside router: reserved on every release
    (GwAllocCheck says so: a router's address must never go to a container), and the
    containers route through it."""
    net = docker.network(
        "mvlan", *PYNET, "-o", "mode=macvlan", "-o", "parent=eth0", "--subnet", "10.99.0.0/24",
        "--gateway", lab_outside, "--ip-range", "10.99.0.240/29",
    )
    a = docker.run("a", "--network", net)
    gateway = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", net).stdout.strip()
    assert gateway == lab_outside
    assert f"default via {lab_outside}" in docker.exec(a, "ip", "route").stdout
    assert docker.pings(a, lab_outside)
    taken = docker("run", "--rm", "--network", net, "--ip", lab_outside, "pnbusybox:latest", "true", check=False)
    assert taken.returncode != 0 and lab_outside in taken.stderr


@pytest.fixture
def lab_outside(host: Host) -> str:
    return host.lab.outside.address


# -- what Docker calls, and how ----------------------------------------------------------------


def test_calls_docker_makes_for_a_network(docker: Docker, host: Host, docker_release: DockerRelease) -> None:
    """GetDefaultAddressSpaces: 20.10 asks only at registration; 26.1 once per network
    (deriveAddressSpace); 28.5 also once more inside every RequestPool (remote.go, since 27).
    The Host header: 20.10 sends none that Go keeps (empty), newer ones `plugin.moby.localhost`."""
    docker.network("warm", *PYNET, "--subnet", "10.66.1.0/24")  # a v1 plugin registers at its first use
    calls = Calls(host)
    docker.network("calls", *PYNET, "--subnet", "10.66.0.0/24")
    methods = calls.methods()
    assert methods.count("IpamDriver.RequestPool") == 1, methods
    asks = methods.count("IpamDriver.GetDefaultAddressSpaces")
    hosts = set(re.findall(r" host_header=(\S*)", "\n".join(calls.lines())))
    assert asks == {"20.10": 0, "26.1": 1, "28.5": 2}[docker_release.name], methods
    assert hosts == ({'""'} if docker_release.name == "20.10" else {"plugin.moby.localhost"}), hosts


def test_api_versions_the_daemon_serves(host: Host, docker_release: DockerRelease) -> None:
    """20.10 serves API 1.12 to 1.41, 26.1 1.24 to 1.45, 28.5 1.24 to 1.51 (29 raises the
    minimum to 1.44: not packaged here)."""
    fmt = "{{.Server.MinAPIVersion}} {{.Server.APIVersion}}"
    served = host.docker("version", "--format", fmt).stdout.split()
    expected = {"20.10": ["1.12", "1.41"], "26.1": ["1.24", "1.45"], "28.5": ["1.24", "1.51"]}
    assert served == expected[docker_release.name]


def test_cluster_store_flag(docker_release: DockerRelease) -> None:
    """--cluster-store: deprecated but there in 20.10, removed in 23.0."""
    argv = [docker_release.dockerd(), "--cluster-store", "etcd://127.0.0.1:1", "--version"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if docker_release.name == "20.10":
        assert r.returncode == 0 and "Flag --cluster-store has been deprecated" in r.stdout + r.stderr
    else:
        assert r.returncode != 0 and "unknown flag: --cluster-store" in r.stderr, r.stderr


def test_per_endpoint_mac_address(docker: Docker, host: Host, docker_release: DockerRelease) -> None:
    """API 1.44+ takes a MAC per endpoint (EndpointSettings.MacAddress), which reaches pynet's
    CreateEndpoint; 20.10 reads only Config.MacAddress and ignores it."""
    net = docker.network("mac", *PYNET, "--subnet", "10.67.0.0/24")
    name = docker.name("mac")
    body = {
        "Image": "pnbusybox:latest",
        "Cmd": ["sleep", "3600"],
        "HostConfig": {"NetworkMode": net},
        "NetworkingConfig": {"EndpointsConfig": {net: {"MacAddress": "02:42:0a:43:00:99"}}},
    }
    socket = host.docker_host.removeprefix("unix://")
    status, reply = unix_http(socket, "POST", f"/containers/create?name={name}", json.dumps(body).encode(), timeout=30)
    assert status == 201, reply
    docker.containers.append(name)
    docker("start", name)
    mac = docker.exec(name, "cat", "/sys/class/net/eth0/address").stdout.strip()
    if docker_release.name == "20.10":
        assert mac == "02:42:0a:43:00:02", "derived from the address: the API's MAC was ignored"
    else:
        assert mac == "02:42:0a:43:00:99"


def test_netns_exists_at_join(docker: Docker, host: Host, docker_release: DockerRelease) -> None:
    """`docker run`: 28+ makes the sandbox's netns before Join; 20.10 and 26.1 after it."""
    net = docker.network("join", *PYNET, "--subnet", "10.68.0.0/24")
    calls = Calls(host)
    docker.run("a", "--network", net)
    seen = re.findall(r"msg=\"join sandbox\".* sandbox_exists=(\S+)", calls.all())
    assert seen == (["True"] if newer(docker_release) else ["False"]), seen


def test_program_external_connectivity_options(docker: Docker, host: Host, docker_release: DockerRelease) -> None:
    """28 adds `com.docker.network.driver.private.no_proxy_6to4` to the sandbox's labels
    (false unless another endpoint is the IPv6 gateway); 20.10 and 26.1 send the labels alone."""
    net = docker.network("pec", *PYNET, "--ipv6", "--subnet", "10.69.0.0/24", "--subnet", "fd00:69::/64")
    calls = Calls(host)
    docker.run("a", "--network", net, "-p", "8097:80")
    keys = re.findall(r"msg=\"external connectivity options\".* keys=(\S+)", calls.all())
    assert len(keys) == 1, keys
    sent = set(keys[0].strip('"').split(","))
    assert {"com.docker.network.portmap", "com.docker.network.endpoint.exposedports"} <= sent
    assert ("com.docker.network.driver.private.no_proxy_6to4" in sent) == newer(docker_release), sent


class _GlobalScopeHandler(http.server.BaseHTTPRequestHandler):
    server: GlobalScopeDriver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        method = self.path.lstrip("/")
        self.server.calls.append(method)
        reply: dict[str, Any] = {}
        if method == "Plugin.Activate":
            reply = {"Implements": ["NetworkDriver"]}
        elif method == "NetworkDriver.GetCapabilities":
            reply = {"Scope": "global", "ConnectivityScope": "global"}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class GlobalScopeDriver(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A v1 network plugin that reports `Scope: "global"` (pynet never does) and answers every
    call with `{}`: only how dockerd treats such a driver is under test."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(path, _GlobalScopeHandler)
        self.calls: list[str] = []


def test_global_scope_driver_without_swarm(docker: Docker, host: Host, docker_release: DockerRelease) -> None:
    """20.10 calls CreateNetwork, cannot store the network (no cluster store), calls
    DeleteNetwork and says "not a swarm manager"; 24.0+ (one store) makes a per-host network."""
    driver = "pnglobal" + docker.tag
    path = host.inside(f"/run/docker/plugins/{driver}.sock")
    server = GlobalScopeDriver(str(path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = docker.name("glob")
    try:
        r = docker("network", "create", "-d", driver, name, check=False)
        if docker_release.name == "20.10":
            assert r.returncode != 0 and "not a swarm manager" in r.stderr, r.stderr
            assert server.calls[-2:] == ["NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork"], server.calls
        else:
            assert r.returncode == 0, r.stderr
            assert docker("network", "inspect", "-f", "{{.Scope}}", name).stdout.strip() == "global"
            assert "NetworkDriver.CreateNetwork" in server.calls and "NetworkDriver.DeleteNetwork" not in server.calls
            docker("network", "rm", name)
    finally:
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


# -- DNS forwarding for the host's resolv.conf servers -----------------------------------------


@pytest.fixture(scope="module")
def resolv_host(docker_release: DockerRelease) -> Iterator[Host]:
    """A host of its own whose dockerd has no daemon-level "dns" and reads a private
    /etc/resolv.conf naming only the outside's stand-in resolver (lab/upstream.py): the
    module's other host has a daemon-level "dns", forwarded alike by every release."""
    lab = Lab(name="pndf" + secrets.token_hex(2), hosts=1, etcd=False, docker=docker_release, own_resolv_conf=True)
    with lab:
        yield lab.hosts[0]


def resolves(docker: Docker, container: str, outside: str) -> bool:
    """Whether CONTAINER resolves the outside's name through Docker's embedded DNS."""
    conf = docker.exec(container, "cat", "/etc/resolv.conf").stdout
    assert re.findall(r"^nameserver (\S+)", conf, re.M) == ["127.0.0.11"], conf
    r = docker.exec(container, "nslookup", "outside.pynet.test", check=False)
    return r.returncode == 0 and f"Address: {outside}" in r.stdout


def dropped_queries(host: Host, subnet: str) -> int:
    """Packets the DOCKER-USER rules `block_forwarded_dns` added have dropped."""
    out = host.run("iptables", "-w", "-vnxL", "DOCKER-USER").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if subnet in line and "dpt:53" in line)


def block_forwarded_dns(host: Host, subnet: str, action: str) -> None:
    """Insert ("-I") or delete ("-D") DOCKER-USER drops of SUBNET's DNS queries that the host
    forwards (FORWARD): what the host itself sends (OUTPUT) does not cross them."""
    for proto in ("udp", "tcp"):
        host.run("iptables", "-w", action, "DOCKER-USER", "-s", subnet, "-p", proto, "--dport", "53", "-j", "DROP")


@pytest.mark.parametrize(
    ("driver", "subnets"),
    [(PYNET, ("10.71.0.0/24", "10.71.1.0/24")), (("-d", "bridge"), ("10.72.0.0/24", "10.72.1.0/24"))],
    ids=["pynet", "docker-bridge"],
)
def test_dns_forwarding_for_host_resolv_conf_servers(
    resolv_host: Host, docker_release: DockerRelease, driver: tuple[str, ...], subnets: tuple[str, str]
) -> None:
    """Where the embedded DNS sends a query for the host's resolv.conf servers from. 20.10 and
    26.1: from the container's netns, so it crosses the host's FORWARD chain (a DOCKER-USER
    drop of the network's port-53 traffic stops it); 28.5: from the host's netns, so the drop
    never sees it and the name resolves. A routed network resolves on every release; an
    --internal one (no gateway) on none: 28.5 forwards nothing for it either (SERVFAIL)."""
    outside = resolv_host.lab.outside.address
    assert resolv_host.run("cat", "/etc/resolv.conf").stdout.split() == ["nameserver", outside]
    assert "dns" not in json.loads((resolv_host.root / "daemon.json").read_text())
    docker = Docker(resolv_host)
    internal_subnet, routed_subnet = subnets
    try:
        internal = docker.network("dnsint", *driver, "--internal", "--subnet", internal_subnet)
        routed = docker.network("dnsout", *driver, "--subnet", routed_subnet)
        a = docker.run("a", "--network", internal)
        b = docker.run("b", "--network", routed)
        assert not resolves(docker, a, outside), "an internal network resolves no outside name"
        assert resolves(docker, b, outside), "a routed network resolves on every release"
        block_forwarded_dns(resolv_host, routed_subnet, "-I")
        try:
            assert resolves(docker, b, outside) == newer(docker_release)
            assert (dropped_queries(resolv_host, routed_subnet) > 0) != newer(docker_release)
        finally:
            block_forwarded_dns(resolv_host, routed_subnet, "-D")
    finally:
        docker.cleanup()
