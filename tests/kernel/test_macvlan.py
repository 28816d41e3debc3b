"""The macvlan backend against a real kernel, proven with real traffic.

Topology (namespace names carry this process's pid, so concurrent runs never meet):

    c1, c2 ... eth0 (a pnv- macvlan Docker moved in) ┐
                                                      ├ host eth0 10.20.0.1/24 ── peer eth0 10.20.0.2/24
                      pns- shim (with host_shim) ─────┘   (the parent)            (the LAN, and its router)

The backend runs inside the host namespace in a child process that keeps it alive across
calls, as the daemon would hold it; the test plays dockerd: it moves each endpoint's link into a
container namespace, names it eth0, sets its address and default route, and moves it back
before DeleteEndpoint.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pynet.drivers.base import Endpoint, Network, Subnet
from pynet.drivers.config import MacvlanConfig
from pynet.drivers.macvlan import MacvlanBackend
from pynet.drivers.netlink import Netlink
from pynet.drivers.registry import LINK_PREFIXES

ROOT = Path(__file__).resolve().parents[2]
TAG = str(os.getpid())
LAN = Subnet("10.20.0.0/24", "10.20.0.2/24", {"host_shim": "10.20.0.250/24"})
PARENT_MTU = 1480
OURS = ("pnv-", "pns-", "pnm-")

# The backend's side of `Backend.call`: one JSON request per line, one reply per line.
SERVE = """
import asyncio, sys
import msgspec
from pynet.drivers.base import Endpoint, Network
from pynet.drivers.macvlan import MacvlanBackend
from pynet.drivers.netlink import Netlink
from pynet.drivers.registry import LINK_PREFIXES

ARGS = {
    "create_network": (Network,),
    "delete_network": (Network,),
    "create_endpoint": (Network, Endpoint),
    "join": (Network, Endpoint),
    "delete_endpoint": (Network, Endpoint),
    "reconcile": (list[Network], list[Endpoint]),
}

async def main() -> None:
    nl = Netlink()
    await nl.open()
    backend = MacvlanBackend(nl, LINK_PREFIXES)
    for line in sys.stdin:
        req = msgspec.json.decode(line)
        args = [msgspec.convert(a, t) for a, t in zip(req["args"], ARGS[req["method"]])]
        if req["method"] == "reconcile":
            args.append(await nl.host_view())  # serve's one look at the host, shared by every mode
        try:
            result = await getattr(backend, req["method"])(*args)
            reply = {"result": result, "args": args}
        except Exception as e:
            reply = {"error": type(e).__name__, "message": str(e)}
        await nl.settle()
        sys.stdout.buffer.write(msgspec.json.encode(reply) + b"\\n")
        sys.stdout.flush()

asyncio.run(main())
"""


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class RemoteError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Lab:
    """The host and peer namespaces; container namespaces are made on first use."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.host, self.peer = self.namespace("host"), self.namespace("peer")
        sh("ip", "-n", self.host, "link", "add", "eth0", "mtu", str(PARENT_MTU), "type", "veth",
           "peer", "name", "eth0", "mtu", str(PARENT_MTU), "netns", self.peer)
        for ns, cidr in ((self.host, "10.20.0.1/24"), (self.peer, "10.20.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def namespace(self, role: str) -> str:
        name = f"pnmv-{role}-{TAG}"
        if name not in self.made:
            sh("ip", "netns", "add", name)
            self.made.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def links(self, ns: str | None = None) -> set[str]:
        out = sh("ip", "-n", ns or self.host, "-o", "link", "show")
        return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}

    def ours(self) -> set[str]:
        return {link for link in self.links() if link.startswith(OURS)}

    def show(self, link: str, *what: str) -> str:
        return sh("ip", "-d", "-n", self.host, *what, "show", "dev", link)

    def attach(self, link: str, role: str, cidr: str, gateway: str = "") -> str:
        """What dockerd does with Join's SrcName."""
        ctr = self.namespace(role)
        sh("ip", "-n", self.host, "link", "set", link, "netns", ctr)
        sh("ip", "-n", ctr, "link", "set", link, "name", "eth0")
        sh("ip", "-n", ctr, "addr", "add", cidr, "dev", "eth0")
        sh("ip", "-n", ctr, "link", "set", "eth0", "up")
        if gateway:
            sh("ip", "-n", ctr, "route", "add", "default", "via", gateway)
        return ctr

    def detach(self, link: str, role: str) -> None:
        """What dockerd does when the container stops, before DeleteEndpoint."""
        ctr = self.namespace(role)
        sh("ip", "-n", ctr, "link", "set", "eth0", "down")
        sh("ip", "-n", ctr, "link", "set", "eth0", "name", link)
        sh("ip", "-n", ctr, "link", "set", link, "netns", self.host)

    def pings(self, ns: str, target: str) -> bool:
        argv = ("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", target)
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0

    def delete(self) -> None:
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)


class Backend:
    """A MacvlanBackend in the host namespace, alive across calls; stopped by its pid."""

    def __init__(self, lab: Lab, log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.host, sys.executable, "-c", SERVE],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )

    def call(self, method: str, *args: Any) -> Any:
        """Runs `method` there; Structs passed in get the backend's changes, as in-process."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(msgspec.json.encode({"method": method, "args": args}) + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the backend process died: {self.log.read_text()}"
        reply = json.loads(line)
        if "error" in reply:
            raise RemoteError(reply["error"], reply["message"])
        for old, new in zip(args, reply["args"]):
            if isinstance(old, msgspec.Struct) and not old.__struct_config__.frozen:  # an Endpoint the backend filled in
                changed = msgspec.convert(new, type(old))
                for field in old.__struct_fields__:
                    setattr(old, field, getattr(changed, field))
        return reply["result"]

    def create_network(self, net: Network) -> Network:
        """The record as the plugin stores it: with the settings create resolved."""
        return msgspec.structs.replace(net, config=msgspec.convert(self.call("create_network", net), MacvlanConfig))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait(timeout=10)


@pytest.fixture
def lab() -> Iterator[Lab]:
    made = Lab()
    yield made
    made.delete()


@pytest.fixture
def mv(lab: Lab, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(lab, tmp_path / "backend.log")
    yield backend
    backend.stop()


def network(options: dict[str, str], *subnets: Subnet, internal: bool = False) -> Network:
    """A record as the plugin makes it: options parsed before anything is created."""
    net = Network(id=secrets.token_hex(32), mode="macvlan", options=options, config=MacvlanConfig(parent=""),
                  ipv4=list(subnets or (LAN,)), internal=internal)
    return msgspec.structs.replace(net, config=MacvlanBackend(Netlink(), LINK_PREFIXES).parse_options(options, net))


def endpoint(mv: Backend, net: Network, address: str) -> Endpoint:
    ep = Endpoint(id=secrets.token_hex(32), network_id=net.id, address=address)
    mv.call("create_endpoint", net, ep)
    return ep


def start(mv: Backend, lab: Lab, net: Network, role: str, address: str) -> tuple[Endpoint, str]:
    """CreateEndpoint, Join, and dockerd's part: the container namespace holding the link."""
    ep = endpoint(mv, net, address)
    join = mv.call("join", net, ep)
    return ep, lab.attach(ep.peer, role, address, join["gateway"])


def stop(mv: Backend, lab: Lab, net: Network, ep: Endpoint, role: str) -> None:
    lab.detach(ep.peer, role)
    mv.call("delete_endpoint", net, ep)


def vlan_supported(lab: Lab) -> bool:
    probe = "eth0.4094"
    if subprocess.run(["ip", "-n", lab.host, "link", "add", "link", "eth0", "name", probe, "type", "vlan", "id", "4094"],
                      capture_output=True).returncode != 0:
        return False
    sh("ip", "-n", lab.host, "link", "del", probe)
    return True


# -- endpoints on the LAN ----------------------------------------------------------------------


def test_a_container_reaches_the_lan_through_the_parent(lab: Lab, mv: Backend) -> None:
    net = network({"parent": "eth0"})
    net = mv.create_network(net)
    assert isinstance(net.config, MacvlanConfig) and net.config.mtu == PARENT_MTU, "the parent's MTU by default"
    ep = endpoint(mv, net, "10.20.0.10/24")
    assert (ep.ifname, ep.peer, ep.mac) == ("", "pnv-" + ep.id[:11], "02:42:0a:14:00:0a")
    link = lab.show(ep.peer, "link")
    assert "macvlan mode bridge" in link and f"mtu {PARENT_MTU}" in link and ep.mac in link
    assert mv.call("join", net, ep) == {
        "src_name": ep.peer, "gateway": "10.20.0.2", "gateway6": "", "disable_gateway": False, "static_routes": [],
    }
    ctr = lab.attach(ep.peer, "c1", ep.address, "10.20.0.2")
    assert lab.pings(ctr, "10.20.0.2")
    assert not lab.pings(lab.host, "10.20.0.10"), "the parent never talks to its own macvlan children"

    stop(mv, lab, net, ep, "c1")
    mv.call("delete_network", net)
    assert not lab.ours()
    assert "eth0" in lab.links(), "the parent is the user's"


@pytest.mark.parametrize("mode, siblings_meet", [("bridge", True), ("private", False)])
def test_containers_on_one_parent_meet_in_bridge_mode_only(lab: Lab, mv: Backend, mode: str, siblings_meet: bool) -> None:
    net = network({"parent": "eth0", "macvlan_mode": mode})
    net = mv.create_network(net)
    ep1, c1 = start(mv, lab, net, "c1", "10.20.0.11/24")
    ep2, c2 = start(mv, lab, net, "c2", "10.20.0.12/24")
    assert f"macvlan mode {mode}" in sh("ip", "-d", "-n", c1, "link", "show", "eth0")
    assert lab.pings(c1, "10.20.0.2") and lab.pings(c2, "10.20.0.2"), "both reach the LAN"
    assert lab.pings(c1, "10.20.0.12") is siblings_meet


def test_passthru_gives_the_parent_to_one_container(lab: Lab, mv: Backend) -> None:
    net = network({"parent": "eth0", "macvlan_mode": "passthru"})
    net = mv.create_network(net)
    ep, ctr = start(mv, lab, net, "c1", "10.20.0.13/24")
    assert f"link/ether {ep.mac} " in lab.show("eth0", "link"), "a passthru link has the parent's MAC"
    assert lab.pings(ctr, "10.20.0.2")
    with pytest.raises(RemoteError, match=r"macvlan_mode passthru gives parent 'eth0' to one container") as err:
        endpoint(mv, net, "10.20.0.14/24")
    assert err.value.kind == "Conflict"


# -- the host shim -----------------------------------------------------------------------------


def test_the_shim_lets_the_host_reach_its_containers(lab: Lab, mv: Backend) -> None:
    net = network({"parent": "eth0", "host_shim": "10.20.0.250/24"})
    net = mv.create_network(net)
    shim = "pns-" + net.id[:11]
    assert "macvlan mode bridge" in lab.show(shim, "link")
    assert "10.20.0.250/24" in lab.show(shim, "addr") and "noprefixroute" in lab.show(shim, "addr")
    ep, ctr = start(mv, lab, net, "c1", "10.20.0.10/24")

    assert lab.pings(lab.host, "10.20.0.10")
    assert lab.pings(ctr, "10.20.0.250")
    routes = sh("ip", "-n", lab.host, "route", "show")
    assert re.search(rf"^10.20.0.10 dev {shim} .*scope link", routes, re.M)
    assert "10.20.0.0/24 dev eth0 proto kernel scope link src 10.20.0.1" in routes, "the LAN route is untouched"
    assert lab.pings(lab.host, "10.20.0.2"), "the host still reaches the LAN"

    stop(mv, lab, net, ep, "c1")
    assert "10.20.0.10" not in sh("ip", "-n", lab.host, "route", "show")
    mv.call("delete_network", net)
    assert not lab.ours()


# -- internal networks -------------------------------------------------------------------------


def test_an_internal_network_is_a_segment_of_its_own(lab: Lab, mv: Backend) -> None:
    # The LAN's subnet on purpose: were the segments joined, the peer would answer.
    net = network({}, Subnet("10.20.0.0/24", "10.20.0.1/24"), internal=True)
    net = mv.create_network(net)
    parent = "pnm-" + net.id[:11]
    assert net.config == MacvlanConfig(parent=parent, mtu=1500), "internal: its own port-less parent"
    assert "inet " not in lab.show(parent, "addr"), "no address: the host is not on it"
    ep1, c1 = start(mv, lab, net, "c1", "10.20.0.21/24")
    ep2, c2 = start(mv, lab, net, "c2", "10.20.0.22/24")
    assert mv.call("join", net, ep1)["disable_gateway"] is True
    assert lab.pings(c1, "10.20.0.22")
    assert not lab.pings(c1, "10.20.0.2")

    mv.call("delete_network", net)
    assert not lab.ours()
    assert "eth0" not in lab.links(c2), "the links of running containers went with their parent"


def test_deleting_networks_removes_every_link_pynet_made(lab: Lab, mv: Backend) -> None:
    lan = network({"parent": "eth0", "host_shim": "10.20.0.250/32"})
    internal = network({"host_shim": "10.30.0.250/24"}, Subnet("10.30.0.0/24", "10.30.0.1/24", {"s": "10.30.0.250/24"}),
                       internal=True)
    records: list[tuple[Network, list[Endpoint]]] = []
    for net, prefix in ((lan, "10.20.0"), (internal, "10.30.0")):
        net = mv.create_network(net)
        never_joined = endpoint(mv, net, f"{prefix}.30/24")
        name = "c1" if prefix == "10.20.0" else "c2"
        ran, ctr = start(mv, lab, net, name, f"{prefix}.31/24")
        assert lab.pings(lab.host, f"{prefix}.31"), "the shim works on an internal network too"
        lab.detach(ran.peer, name)
        records.append((net, [never_joined, ran]))
    assert len(lab.ours()) == 2 * 2 + 2 + 1  # endpoints, shims, the internal parent

    for net, eps in records:  # in the plugin's order
        for ep in eps:
            mv.call("delete_endpoint", net, ep)
        mv.call("delete_network", net)
    assert not lab.ours()
    assert "pns-" not in sh("ip", "-n", lab.host, "route", "show")


# -- errors ------------------------------------------------------------------------------------


def test_bad_parents_are_named_and_leave_nothing(lab: Lab, mv: Backend) -> None:
    sh("ip", "-n", lab.host, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    sh("ip", "-n", lab.host, "link", "add", "link", "eth0", "name", "mv0", "type", "macvlan")
    sh("ip", "-n", lab.host, "link", "set", "mv0", "up")
    before = lab.links()
    cases = [
        ({"parent": "eth9"}, "InvalidRequest", "pynet: option parent: interface 'eth9' does not exist"),
        ({"parent": "eth1"}, "Conflict", "pynet: option parent: interface 'eth1' is down (ip link set eth1 up)"),
        ({"parent": "mv0"}, "InvalidRequest", "pynet: option parent: interface 'mv0' is a macvlan link, not a host interface"),
        ({"parent": "eth0", "mtu": "1500"}, "InvalidRequest",
         f"pynet: option com.docker.network.driver.mtu 1500 is above the MTU {PARENT_MTU} of parent 'eth0'"),
    ]
    for options, kind, message in cases:
        with pytest.raises(RemoteError) as err:
            mv.call("create_network", network(options))
        assert (err.value.kind, str(err.value)) == (kind, message)
    assert lab.links() == before


def test_networks_share_a_parent_unless_they_clash(lab: Lab, mv: Backend) -> None:
    first = network({"parent": "eth0"}, Subnet("10.20.0.0/25", "10.20.0.2/25"))
    second = network({"parent": "eth0"}, Subnet("10.20.0.128/25", "10.20.0.129/25"))
    first = mv.create_network(first)
    second = mv.create_network(second)
    ep1, c1 = start(mv, lab, first, "c1", "10.20.0.10/25")
    ep2, c2 = start(mv, lab, second, "c2", "10.20.0.140/25")
    assert lab.pings(c1, "10.20.0.2")
    before = lab.links()
    clashes = [
        (network({"parent": "eth0"}, Subnet("10.20.0.0/24")), "overlaps 10.20.0.0/25 of network"),
        (network({"parent": "eth0", "macvlan_mode": "vepa"}, Subnet("10.21.0.0/24")), "differs from macvlan_mode 'bridge'"),
        (network({"parent": "eth0", "macvlan_mode": "passthru"}, Subnet("10.22.0.0/24")), "passthru gives a parent to one network only"),
    ]
    for net, message in clashes:
        with pytest.raises(RemoteError, match=message) as err:
            net = mv.create_network(net)
        assert err.value.kind == "Conflict"
    assert lab.links() == before
    mv.call("delete_network", second)
    assert lab.pings(c1, "10.20.0.2"), "deleting one network leaves the other's containers alone"


# -- 802.1q parents ----------------------------------------------------------------------------


def test_without_8021q_a_vlan_parent_fails_clearly_and_leaves_nothing(lab: Lab, mv: Backend) -> None:
    if vlan_supported(lab):
        pytest.skip("the kernel has 8021q: its absence cannot be shown here")
    before = lab.links()
    with pytest.raises(RemoteError) as err:
        mv.call("create_network", network({"parent": "eth0.10", "host_shim": "10.20.0.250/32"}))
    assert str(err.value) == (
        "pynet: cannot create 802.1q sub-interface eth0.10: the kernel has no 8021q support "
        "(Operation not supported; load it with `modprobe 8021q`)"
    )
    assert lab.links() == before


def test_a_vlan_parent_is_made_shared_and_removed_with_its_last_network(lab: Lab, mv: Backend) -> None:
    if not vlan_supported(lab):
        pytest.skip("kernel lacks 8021q (vlan link type)")
    sh("ip", "-n", lab.peer, "link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10")
    sh("ip", "-n", lab.peer, "addr", "add", "10.40.0.2/24", "dev", "eth0.10")
    sh("ip", "-n", lab.peer, "link", "set", "eth0.10", "up")
    first = network({"parent": "eth0.10"}, Subnet("10.40.0.0/25", "10.40.0.2/25"))
    second = network({"parent": "eth0.10"}, Subnet("10.40.0.128/25", "10.40.0.129/25"))
    first = mv.create_network(first)
    assert "vlan protocol 802.1Q id 10" in lab.show("eth0.10", "link")
    second = mv.create_network(second)
    vlan_created = [n.config.vlan_created for n in (first, second) if isinstance(n.config, MacvlanConfig)]
    assert vlan_created == [True, True], "the second network inherits ownership"

    ep, ctr = start(mv, lab, first, "c1", "10.40.0.10/25")
    assert lab.pings(ctr, "10.40.0.2"), "tagged traffic reaches the peer's VLAN 10"
    stop(mv, lab, first, ep, "c1")
    mv.call("delete_network", first)
    assert "eth0.10" in lab.links(), "the second network still uses it"
    mv.call("delete_network", second)
    assert "eth0.10" not in lab.links()

    sh("ip", "-n", lab.host, "link", "add", "link", "eth0", "name", "eth0.20", "type", "vlan", "id", "20")
    sh("ip", "-n", lab.host, "link", "set", "eth0.20", "up")
    users = network({"parent": "eth0.20"})
    users = mv.create_network(users)
    assert isinstance(users.config, MacvlanConfig) and users.config.vlan_created is False
    mv.call("delete_network", users)
    assert "eth0.20" in lab.links(), "a sub-interface the user made stays"


# -- recovery ----------------------------------------------------------------------------------


def test_reconcile_restores_what_is_missing(lab: Lab, mv: Backend, tmp_path: Path) -> None:
    lan = network({"parent": "eth0", "host_shim": "10.20.0.250/32"})
    internal = network({}, Subnet("10.30.0.0/24"), internal=True)
    lan = mv.create_network(lan)
    internal = mv.create_network(internal)
    ep, ctr = start(mv, lab, lan, "c1", "10.20.0.10/24")
    mv.stop()
    # While pynet is down its shim and internal parent vanish (orphan links are the daemon's
    # business: tests/kernel/test_serve.py).
    sh("ip", "-n", lab.host, "link", "del", "pns-" + lan.id[:11])
    sh("ip", "-n", lab.host, "link", "del", "pnm-" + internal.id[:11])
    assert lab.pings(ctr, "10.20.0.2"), "the data plane does not need pynet"

    restarted = Backend(lab, tmp_path / "restarted.log")
    try:
        restarted.call("reconcile", [lan, internal], [ep])
        assert lab.ours() == {"pns-" + lan.id[:11], "pnm-" + internal.id[:11]}
        assert lab.pings(lab.host, "10.20.0.10"), "the shim and its route are back"
        assert lab.pings(ctr, "10.20.0.2")
        with pytest.raises(RemoteError, match="overlaps 10.20.0.0/24 of network"):
            restarted.call("create_network", network({"parent": "eth0"}, Subnet("10.20.0.0/16")))
    finally:
        restarted.stop()
