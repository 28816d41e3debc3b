"""Firewall rules proven with real traffic, in private namespaces shaped like a Docker host.

Topology (namespace names carry this process's pid, so concurrent runs never meet):

    ctr   eth0 10.99.0.2 fd00:99::2 ─┐
    ctr3  eth0 10.99.0.3 ────────────┤ bridge pnfw-a 10.99.0.1 fd00:99::1 ┐
    ctr3  eth1 10.98.0.3 ─┐                                              ├ host ─ pnfw-up 198.18.0.1 ── ext eth0 198.18.0.2
    ctr2  eth0 10.98.0.2 ─┴ bridge pnfw-b 10.98.0.1 ─────────────────────┘         2001:db8:18::1        2001:db8:18::2

The host has Docker's firewall shape (iptables-nft, FORWARD policy DROP, DOCKER-USER, nat
DOCKER) and br_netfilter's bridge-nf-call-iptables on; ext has no route back to the
containers, so egress only works masqueraded. Every container runs a TCP server on ports 80
and 81 that answers each connection with the peer address it saw.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest

from pynet.drivers.base import PortMap
from pynet.drivers.firewall import (
    ISOLATION,
    SHARED_OF,
    Firewall,
    NetRules,
    bucket,
    chain_rules,
    detect_flavour,
    jumps_for,
)

DOCKER_HOST_JUMPS = jumps_for("-N DOCKER-USER")

TAG = str(os.getpid())
ROLES = ("host", "ext", "ctr", "ctr2", "ctr3")
PROBE_TIMEOUT = 1.0

SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].removeprefix("::ffff:").encode())
    c.close()
"""
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.recv(100).decode())
"""


def ns(role: str) -> str:
    return f"pnfw-{role}-{TAG}"


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def in_ns(role: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns(role), *argv, check=check, input=input)


def connect(role: str, ip: str, port: int) -> str | None:
    """The peer address the server saw, or None when the connection failed."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns(role), sys.executable, "-c", CLIENT, ip, str(port), str(PROBE_TIMEOUT)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def host_save() -> tuple[str, str]:
    """The host's iptables state in both families, without comment lines (timestamps),
    counters (the probes move the policies' counters) and tables holding nothing but empty
    built-in chains: iptables-restore can create a table (pynet's raw and nat rules) but not
    delete one, and an empty one changes nothing."""

    def save(binary: str) -> str:
        text = "\n".join(line for line in in_ns("host", binary).splitlines() if not line.startswith("#"))
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
        return re.sub(r"\*\w+\n(?::[A-Z]+ ACCEPT \[0:0\]\n)*COMMIT\n?", "", text + "\n").strip("\n")

    return save("iptables-nft-save"), save("ip6tables-nft-save")


def link(role: str, name: str, peer_role: str, peer: str) -> None:
    sh("ip", "-n", ns(role), "link", "add", name, "type", "veth", "peer", "name", peer, "netns", ns(peer_role))


def addr(role: str, dev: str, *cidrs: str) -> None:
    for cidr in cidrs:
        sh("ip", "-n", ns(role), "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))
    sh("ip", "-n", ns(role), "link", "set", dev, "up")


def container(role: str, bridge: str, host_end: str, dev: str, *cidrs: str) -> None:
    link("host", host_end, role, dev)
    sh("ip", "-n", ns("host"), "link", "set", host_end, "master", bridge, "up")
    # Hairpin: DNAT done by br_netfilter sends a container's packet back out of its own port.
    sh("ip", "-n", ns("host"), "link", "set", host_end, "type", "bridge_slave", "hairpin", "on")
    addr(role, dev, *cidrs)
    sh("ip", "-n", ns(role), "link", "set", "lo", "up")


def docker_like_firewall() -> None:
    for binary in ("iptables-nft", "ip6tables-nft"):
        for args in (
            "-P FORWARD DROP",
            "-N DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
            "-A FORWARD -j DOCKER-USER",
            "-t nat -N DOCKER",
            "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-t nat -A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER",
        ):
            in_ns("host", binary, "-w", *args.split())


def build(host_firewall: Callable[[], None]) -> None:
    for role in ROLES:
        sh("ip", "netns", "add", ns(role))
    sh("ip", "-n", ns("host"), "link", "set", "lo", "up")
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        in_ns("host", "sysctl", "-qw", key)
    host_firewall()
    for bridge, cidrs in (("pnfw-a", ("10.99.0.1/24", "fd00:99::1/64")), ("pnfw-b", ("10.98.0.1/24",))):
        sh("ip", "-n", ns("host"), "link", "add", bridge, "type", "bridge")
        addr("host", bridge, *cidrs)
    # 127.0.0.1 published ports are DNAT'ed out of the bridge, which needs route_localnet.
    in_ns("host", "sysctl", "-qw", "net.ipv4.conf.pnfw-a.route_localnet=1")
    link("host", "pnfw-up", "ext", "eth0")
    addr("host", "pnfw-up", "198.18.0.1/24", "2001:db8:18::1/64")
    addr("ext", "eth0", "198.18.0.2/24", "2001:db8:18::2/64")
    container("ctr", "pnfw-a", "pnfw-ha", "eth0", "10.99.0.2/24", "fd00:99::2/64")
    container("ctr2", "pnfw-b", "pnfw-hb", "eth0", "10.98.0.2/24")
    container("ctr3", "pnfw-a", "pnfw-h3a", "eth0", "10.99.0.3/24")
    container("ctr3", "pnfw-b", "pnfw-h3b", "eth1", "10.98.0.3/24")
    for role, gw in (("ctr", "10.99.0.1"), ("ctr", "fd00:99::1"), ("ctr2", "10.98.0.1"), ("ctr3", "10.99.0.1")):
        sh("ip", "-n", ns(role), "route", "add", "default", "via", gw)


@dataclass
class Topology:
    baseline: tuple[str, str] = ("", "")
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, role: str, port: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns(role), sys.executable, "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def destroy(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for role in ROLES:
            sh("ip", "netns", "del", ns(role), check=False)


@contextmanager
def topology(host_firewall: Callable[[], None], save: Callable[[], tuple[str, str]]) -> Iterator[Topology]:
    """The namespaces above, the host's firewall made by `host_firewall`, servers running, and
    `save()` of the host taken as the baseline (also used by tests/kernel/test_nftables.py)."""
    topo = Topology()
    try:
        build(host_firewall)
        for role in ("ctr", "ctr2", "ctr3", "ext"):
            for port in (80, 81):
                topo.serve(role, port)
        topo.baseline = save()
        yield topo
    finally:
        topo.destroy()


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology(docker_like_firewall, host_save) as topo:
        yield topo


@pytest.fixture
async def fw(topo: Topology) -> AsyncIterator[Firewall]:
    fw = Firewall(netns=ns("host"))
    try:
        yield fw
    finally:
        await fw.teardown()
        in_ns("ext", "ip", "route", "del", "10.99.0.0/24", check=False)


def net_a(**kw: object) -> NetRules:
    args: dict[str, object] = dict(
        bridge="pnfw-a",
        subnets4=("10.99.0.0/24",),
        subnets6=("fd00:99::/64",),
        internal=False,
        icc=True,
        masquerade=True,
        ports=(),
    )
    args.update(kw)
    return NetRules(**args)  # type: ignore[arg-type]


NET_B = NetRules("pnfw-b", ("10.98.0.0/24",), (), internal=False, icc=True, masquerade=True, ports=())
PORT80 = PortMap("tcp", "", 8080, "10.99.0.2", 80)
PORT80_V6 = PortMap("tcp", "", 8080, "fd00:99::2", 80)


def jumps(binary: str, chain: str, table: str = "filter") -> list[str]:
    """The rules of a built-in chain, in order."""
    return [line for line in in_ns("host", binary, "-t", table, "-S", chain).splitlines() if line.startswith("-A")]


# -- tests ------------------------------------------------------------------------------------


async def test_detects_docker_flavour_without_instantiating_legacy(fw: Firewall) -> None:
    assert detect_flavour(ns("host")) == "nft"
    await fw.apply()
    assert fw.flavour == "nft"
    assert in_ns("host", "cat", "/proc/net/ip_tables_names") == ""


async def test_egress_works_only_masqueraded(fw: Firewall) -> None:
    assert connect("ctr", "198.18.0.2", 80) is None  # Docker's DROP policy
    await fw.set("a", net_a(masquerade=False))
    assert connect("ctr", "198.18.0.2", 80) is None  # forwarded, but ext cannot answer
    assert connect("ctr", "2001:db8:18::2", 80) is None
    await fw.set("a", net_a())
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
    assert connect("ctr", "2001:db8:18::2", 80) == "2001:db8:18::1"


async def test_published_port_reaches_container_from_outside_only_through_dnat(fw: Firewall) -> None:
    local_only = PortMap("tcp", "127.0.0.1", 8081, "10.99.0.2", 81)
    await fw.set("a", net_a(masquerade=False, ports=(PORT80, PORT80_V6, local_only)))
    assert connect("ext", "198.18.0.1", 8080) == "198.18.0.2"
    assert connect("ext", "2001:db8:18::1", 8080) == "2001:db8:18::2"
    assert connect("ext", "198.18.0.1", 8081) is None  # published on 127.0.0.1 only
    # With a route to the containers, their ports stay closed, published ones included.
    in_ns("ext", "ip", "route", "add", "10.99.0.0/24", "via", "198.18.0.1")
    assert connect("ext", "10.99.0.2", 80) is None
    assert connect("ext", "10.99.0.2", 81) is None
    assert connect("ext", "198.18.0.1", 8080) == "198.18.0.2"


async def test_published_port_from_host_and_from_containers(fw: Firewall) -> None:
    local_only = PortMap("tcp", "127.0.0.1", 8081, "10.99.0.2", 81)
    await fw.set("a", net_a(ports=(PORT80, local_only)))
    assert connect("host", "127.0.0.1", 8081) == "10.99.0.1"
    assert connect("host", "198.18.0.1", 8080) == "10.99.0.1"
    assert connect("ctr", "198.18.0.1", 8080) == "10.99.0.1"  # hairpin to itself
    assert connect("ctr3", "198.18.0.1", 8080) == "10.99.0.3"  # a neighbour


async def test_icc_off_blocks_neighbours_but_not_published_ports(fw: Firewall) -> None:
    await fw.set("a", net_a(ports=(PORT80,)))
    assert connect("ctr3", "10.99.0.2", 81) == "10.99.0.3"
    await fw.set("a", net_a(icc=False, ports=(PORT80,)))
    assert connect("ctr3", "10.99.0.2", 81) is None
    assert connect("ctr3", "198.18.0.1", 8080) == "10.99.0.3"
    assert connect("ctr", "198.18.0.1", 8080) == "10.99.0.1"


async def test_internal_blocks_everything_but_the_bridge(fw: Firewall) -> None:
    await fw.set("a", net_a(internal=True, ports=(PORT80,)))
    assert connect("ctr", "198.18.0.2", 80) is None
    assert connect("ext", "198.18.0.1", 8080) is None
    assert connect("ctr3", "10.99.0.2", 80) == "10.99.0.3"


@contextmanager
def bridge_renamed(old: str, new: str) -> Iterator[None]:
    """The host's bridge OLD named NEW, its ports, addresses and routes kept."""

    def rename(a: str, b: str) -> None:
        for args in (("down",), ("name", b), ("up",)):
            in_ns("host", "ip", "link", "set", a if args[0] != "up" else b, *args)

    if old != new:
        rename(old, new)
    try:
        yield
    finally:
        if old != new:
            rename(new, old)


def held(fw: Firewall, chain: str = "") -> str:
    """One chain of pynet's as the kernel holds it, or (no CHAIN) all of pynet's rules, in
    whichever backend FW writes."""
    if fw.flavour == "nftables":
        return in_ns("host", "nft", "list", *(("chain", "ip", "pynet", chain) if chain else ("ruleset",)))
    return in_ns("host", "iptables-nft", "-S", chain) if chain else "".join(host_save())


def same_bucket_as_a() -> str:
    return next(f"pnfw-b{i}" for i in range(1000) if bucket(ISOLATION, f"pnfw-b{i}") == bucket(ISOLATION, "pnfw-a"))


@pytest.mark.parametrize("bridge_b", ["pnfw-b", same_bucket_as_a()], ids=["other bucket", "same bucket"])
async def test_two_bridges_are_isolated_but_a_container_on_both_reaches_both(fw: Firewall, bridge_b: str) -> None:
    """Whether the two networks' jumps sit in different bucket chains or share them; deleting
    one leaves the other's jumps, and nothing of its own."""
    with bridge_renamed("pnfw-b", bridge_b):
        await fw.set("a", net_a())
        await fw.set("b", replace(NET_B, bridge=bridge_b))
        in_bucket = held(fw, bucket(ISOLATION, bridge_b))
        assert f'"{bridge_b}"' in in_bucket or f"-i {bridge_b} " in in_bucket
        assert ("pnfw-a" in in_bucket) == (bridge_b != "pnfw-b")
        assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
        assert connect("ctr2", "198.18.0.2", 80) == "198.18.0.1"
        assert connect("ctr", "10.98.0.2", 80) is None
        assert connect("ctr2", "10.99.0.2", 80) is None
        assert connect("ctr3", "10.99.0.2", 80) == "10.99.0.3"
        assert connect("ctr3", "10.98.0.2", 80) == "10.98.0.3"
        await fw.remove("b")
        assert connect("ctr2", "198.18.0.2", 80) is None
        assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
        assert bridge_b not in held(fw)


async def test_a_delete_leaves_nothing_of_the_network(fw: Firewall, topo: Topology) -> None:
    await fw.set("a", net_a(ports=(PORT80, PORT80_V6)))
    with_a = host_save()
    await fw.set("b", NET_B)
    await fw.remove("b")
    assert host_save() == with_a
    await fw.remove("a")
    saved = "".join(host_save())
    assert "pnfw-" not in saved and "-B" not in saved, "no chain, bucket or rule of either network"


def old_layout(fw: Firewall, family: int) -> str:
    """The restore text pynet wrote before the buckets: every network's jumps straight in the
    shared chains, and no bucket chain (those of `fw`'s kernel flushed and deleted)."""
    lines = []
    for table, chains in chain_rules(fw._desired(family), fw.dns_address).items():
        buckets = [c for c in chains if c in SHARED_OF]
        flat = {c: [r for r in rules if r.removeprefix("-j ") not in buckets] for c, rules in chains.items()}
        for b in buckets:
            flat[SHARED_OF[b]] += chains[b]
        lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
        lines += [f"-A {c} {r}" for c, rules in flat.items() if c not in buckets for r in rules]
        lines += [f"-X {c}" for c in buckets] + ["COMMIT"]
    return "\n".join(lines) + "\n"


async def test_a_host_left_with_the_old_layout_converges_at_the_first_apply(fw: Firewall, topo: Topology) -> None:
    await fw.set("a", net_a(ports=(PORT80,)))
    await fw.set("b", NET_B)
    fresh = host_save()
    for family, binary in ((4, "iptables-nft-restore"), (6, "ip6tables-nft-restore")):
        in_ns("host", binary, "-w", "--noflush", input=old_layout(fw, family))
    old = in_ns("host", "iptables-nft-save")
    assert "-A PYNET-ISOLATION -i pnfw-b -j PYNET-I-pnfw-b" in old and "-B" not in old
    assert connect("ctr", "10.98.0.2", 80) is None, "the old layout isolates too"
    restarted = Firewall(netns=ns("host"))  # pynet upgraded: its start-up stages and applies once
    restarted.stage(fw.desired)
    await restarted.apply()
    assert host_save() == fresh, "no per-network jump left in a shared chain, no chain left over"
    await restarted.remove("b")
    assert "pnfw-b" not in "".join(host_save())
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"


async def test_apply_twice_leaves_one_jump_first_in_each_chain(fw: Firewall) -> None:
    await fw.set("a", net_a(ports=(PORT80,)))
    await fw.apply()
    await fw.set("a", net_a(ports=(PORT80,)))
    for binary in ("iptables-nft", "ip6tables-nft"):
        for jump in DOCKER_HOST_JUMPS:
            rules = jumps(binary, jump.chain, jump.table)
            assert [r for r in rules if r.endswith(f"-j {jump.target}")] == [f"-A {jump.chain} {jump.spec()}"]
            if jump.first:
                assert rules[0].endswith(f"-j {jump.target}")
        assert jumps(binary, "DOCKER-USER") == ["-A DOCKER-USER -j PYNET-FORWARD", "-A DOCKER-USER -j RETURN"]
        assert jumps(binary, "FORWARD") == ["-A FORWARD -j DOCKER-USER"], "Docker's own chains untouched"
    assert await fw.ensure_jumps() is False


async def test_ensure_jumps_restores_deleted_and_pushed_down_jumps(fw: Firewall) -> None:
    await fw.set("a", net_a())
    in_ns("host", "iptables-nft", "-w", "-D", "DOCKER-USER", "-j", "PYNET-FORWARD")
    assert connect("ctr", "198.18.0.2", 80) is None
    assert await fw.ensure_jumps() is True
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
    # What Docker does for a new network: its own rule first in FORWARD, then its DOCKER-USER
    # jump moved back above it. pynet's jump lives in DOCKER-USER, so nothing needs fixing.
    in_ns("host", "iptables-nft", "-w", "-I", "FORWARD", "1", "-i", "br-other", "-j", "ACCEPT")
    in_ns("host", "iptables-nft", "-w", "-D", "FORWARD", "-j", "DOCKER-USER")
    in_ns("host", "iptables-nft", "-w", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    assert await fw.ensure_jumps() is False
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
    # A user's own rule in DOCKER-USER stays ahead of pynet's jump: their policy applies.
    in_ns("host", "iptables-nft", "-w", "-I", "DOCKER-USER", "1", "-s", "10.99.9.9", "-j", "DROP")
    assert await fw.ensure_jumps() is False
    in_ns("host", "iptables-nft", "-w", "-A", "DOCKER-USER", "-j", "ACCEPT", "-s", "10.99.9.8")
    assert await fw.ensure_jumps() is True
    assert jumps("iptables-nft", "DOCKER-USER")[-1] == "-A DOCKER-USER -j PYNET-FORWARD"
    assert await fw.ensure_jumps() is False
    # The topology is shared by the module's tests: take back what this test added.
    in_ns("host", "iptables-nft", "-w", "-D", "FORWARD", "-i", "br-other", "-j", "ACCEPT")
    in_ns("host", "iptables-nft", "-w", "-D", "DOCKER-USER", "-s", "10.99.9.9", "-j", "DROP")
    in_ns("host", "iptables-nft", "-w", "-D", "DOCKER-USER", "-s", "10.99.9.8", "-j", "ACCEPT")


async def test_teardown_restores_the_host_exactly(fw: Firewall, topo: Topology) -> None:
    before = jumps("iptables-nft", "FORWARD")
    await fw.set("a", net_a(ports=(PORT80, PORT80_V6)))
    await fw.set("b", NET_B)
    assert host_save() != topo.baseline
    await fw.teardown()
    assert jumps("iptables-nft", "FORWARD") == before == ["-A FORWARD -j DOCKER-USER"]
    assert host_save() == topo.baseline
    await fw.teardown()  # idempotent
    assert host_save() == topo.baseline
    assert await fw.ensure_jumps() is False  # torn down: the periodic check must not reinstall


async def test_internal_network_reaches_the_resolver_through_input_only(fw: Firewall, topo: Topology) -> None:
    """The resolver's address on a portless bridge, INPUT's policy DROP: port 53 to it gets in
    from an internal network (a local address: INPUT, never the network's FORWARD drops), and
    nothing else of the host does."""
    resolver = "169.254.53.53"
    in_ns("host", "ip", "link", "add", "pnfw-dns", "type", "bridge")
    in_ns("host", "ip", "addr", "add", f"{resolver}/32", "dev", "pnfw-dns")
    topo.serve("host", 53)  # TCP, on every address of the host
    in_ns("host", "iptables-nft", "-w", "-P", "INPUT", "DROP")
    try:
        fw.dns_address = resolver
        await fw.set("a", net_a(internal=True))
        assert connect("ctr", resolver, 53) == "10.99.0.2"
        assert connect("ctr", "10.99.0.1", 53) is None, "only the resolver's address"
        assert connect("ctr", "198.18.0.2", 80) is None, "the network stays internal"
        assert jumps("iptables-nft", "INPUT")[0] == "-A INPUT -j PYNET-INPUT"
        await fw.teardown()
        assert connect("ctr", resolver, 53) is None
        assert jumps("iptables-nft", "INPUT") == []
    finally:
        in_ns("host", "iptables-nft", "-w", "-P", "INPUT", "ACCEPT")
        in_ns("host", "ip", "link", "del", "pnfw-dns", check=False)


async def test_legacy_docker_host() -> None:
    name = f"pnfw-legacy-{TAG}"
    sh("ip", "netns", "add", name)
    try:
        for args in ("-P FORWARD DROP", "-N DOCKER-USER", "-A FORWARD -j DOCKER-USER"):
            sh("ip", "netns", "exec", name, "iptables-legacy", "-w", *args.split())
        before = sh("ip", "netns", "exec", name, "iptables-legacy", "-S")
        fw = Firewall(netns=name)
        await fw.set("a", net_a())
        assert fw.flavour == "legacy"
        rules = sh("ip", "netns", "exec", name, "iptables-legacy", "-S", "DOCKER-USER").splitlines()
        assert rules[1:] == ["-A DOCKER-USER -j PYNET-FORWARD"]
        await fw.set("b", NET_B)
        await fw.remove("b")  # deleted by text from its buckets, in the legacy flavour too
        assert "pnfw-b" not in sh("ip", "netns", "exec", name, "iptables-legacy-save")
        assert f"-A PYNET-FORWARD -j {bucket('PYNET-FORWARD', 'pnfw-a')}" in sh(
            "ip", "netns", "exec", name, "iptables-legacy", "-S", "PYNET-FORWARD"
        )
        await fw.teardown()
        assert sh("ip", "netns", "exec", name, "iptables-legacy", "-S") == before
    finally:
        sh("ip", "netns", "del", name, check=False)
