"""Two real `pynet serve` hosts sharing a real etcd, their VXLAN FDBs programmed in the kernel,
while the store holds garbage and the hosts' lease is revoked from outside.

Topology, all in namespaces this test creates (no dockerd: the test plays Docker on each socket):

    netns A: pynet "ka", etcd on 10.77.0.1  ── ul0 10.77.0.1/24 ══ veth ══ ul0 10.77.0.2/24 ── netns B: pynet "kb"
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pynet.drivers.naming import mac_for
from pynet.drivers.peers import endpoint_key, vtep_key
from tests.etcd_server import EtcdServer, etcd_server
from tests.kernel.test_serve import ENDPOINT, VXLAN, Pynet, post, sh

A_IP, B_IP = "10.77.0.1", "10.77.0.2"
DEVICE = "pnx-4242"
PREFIX = "/pynet/"
# What another program (or a hand, or a newer pynet) could leave under pynet's prefix.
GARBAGE = {
    f"{PREFIX}vxlan/4242/endpoints/garbage": os.fsdecode(b"\xff\xfe not json"),
    f"{PREFIX}vxlan/4242/vteps/kz": '{"address": 5}',
    f"{PREFIX}vxlan/4242/endpoints/wrong": '{"host": "kz", "vtep": "10.77.0.9", "mac": "not-a-mac", "ips": []}',
    f"{PREFIX}vxlan/4243/vteps": "x",
    f"{PREFIX}vxlan/hello": "world",
    f"{PREFIX}cluster/networks/junk": "[]",
    f"{PREFIX}dns/junk/kz/c1": "nope",
}


@dataclass
class Hosts:
    etcd: EtcdServer
    a: Pynet
    b: Pynet


def wait_for(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def fdb(netns: str) -> set[tuple[str, str]]:
    """(MAC, VTEP) of the VXLAN device's own entries."""
    out = sh("ip", "netns", "exec", netns, "bridge", "fdb", "show", "dev", DEVICE, check=False).stdout
    rows = [line.split() for line in out.splitlines() if " dst " in line]
    return {(row[0], row[row.index("dst") + 1]) for row in rows}


def stored(etcd: EtcdServer, prefix: str) -> dict[str, int]:
    """Key -> lease of every key under PREFIX."""
    out = json.loads(etcd.etcdctl("get", "--prefix", prefix, "-w", "json"))
    return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in out.get("kvs", [])}


@contextlib.contextmanager
def vxlan_hosts(
    tmp_path: Path,
    tag: str,
    *args: str,
    garbage: dict[str, str] | None = None,
    per_host: Callable[[str], list[str]] = lambda ip: [],
) -> Iterator[Hosts]:
    """Netns `<tag>a…` (etcd, pynet "ka") and `<tag>b…` (pynet "kb") on one veth; each pynet
    gets ARGS and `per_host(its underlay IP)`; GARBAGE is put in etcd before they start."""
    a, b = (f"{tag}-{h}{secrets.token_hex(2)}" for h in "ab")
    daemons: list[Pynet] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", b)
        for ns, ip in ((a, A_IP), (b, B_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "ul0")
            sh("ip", "-n", ns, "link", "set", "ul0", "up")
        with etcd_server(tmp_path / "etcd", netns=a, host=A_IP) as etcd:
            for ns, name, ip in ((a, "ka", A_IP), (b, "kb", B_IP)):
                home = tmp_path / name
                home.mkdir()
                daemon = Pynet(
                    SimpleNamespace(host=ns),  # type: ignore[arg-type]
                    home,
                    "--host-id", name, "--etcd-endpoints", etcd.endpoint, "--underlay", "ul0",
                    # No dockerd here: the agents find nothing there and retry, never the host's.
                    "--docker-host", f"unix://{home}/no-docker.sock", *args, *per_host(ip),
                )
                daemons.append(daemon)
            for key, value in (garbage or {}).items():
                etcd.etcdctl("put", key, "--", value)
            for daemon in daemons:
                daemon.start()
            yield Hosts(etcd, *daemons)
    finally:
        for daemon in daemons:
            daemon.stop(signal.SIGKILL)
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with vxlan_hosts(tmp_path, "pnf", "--lease-ttl", "3", garbage=GARBAGE) as h:
        yield h


async def ok(daemon: Pynet, method: str, body: dict[str, Any]) -> dict[str, Any]:
    status, reply = await post(daemon.sock, method, body)
    assert status == 200, reply
    return reply


async def test_garbage_under_the_prefix_stops_no_programming(hosts: Hosts) -> None:
    for daemon in (hosts.a, hosts.b):
        await ok(daemon, "NetworkDriver.CreateNetwork", VXLAN)
    await ok(hosts.b, "NetworkDriver.CreateEndpoint", ENDPOINT)
    mac = mac_for(ENDPOINT["Interface"]["Address"])
    a_ns = hosts.a.ns.host
    wait_for(lambda: {("00:00:00:00:00:00", B_IP), (mac, B_IP)} <= fdb(a_ns), f"A never programmed B: {fdb(a_ns)}")
    assert fdb(a_ns) == {("00:00:00:00:00:00", B_IP), (mac, B_IP)}, "nothing of the garbage"
    log = hosts.a.log.read_text()
    for key in (k for k in GARBAGE if "/vxlan/" in k):
        assert log.count(f"key={key} ") == 1, f"{key}: one warning, however often it is read"


async def test_a_revoked_lease_is_taken_again_and_the_peers_see_the_host(hosts: Hosts) -> None:
    """An operator revokes host B's lease: every key of B vanishes, A drops its entries; B's
    supervised keep-alive takes a new lease and puts its keys back, and A programs them again."""
    for daemon in (hosts.a, hosts.b):
        await ok(daemon, "NetworkDriver.CreateNetwork", VXLAN)
    await ok(hosts.b, "NetworkDriver.CreateEndpoint", ENDPOINT)
    mac = mac_for(ENDPOINT["Interface"]["Address"])
    a_ns = hosts.a.ns.host
    wait_for(lambda: (mac, B_IP) in fdb(a_ns), "A never programmed B's endpoint")
    b_keys = [vtep_key(PREFIX, 4242, "kb"), endpoint_key(PREFIX, 4242, ENDPOINT["EndpointID"])]

    def leases() -> set[int]:
        found = stored(hosts.etcd, f"{PREFIX}vxlan/4242/")
        return {found.get(k, 0) for k in b_keys}

    (old,) = leases()
    assert old, "B's keys are under a lease"
    hosts.etcd.etcdctl("lease", "revoke", format(old, "x"))
    wait_for(lambda: len(leases()) == 1 and leases().isdisjoint({0, old}), "B never registered again")
    wait_for(lambda: {("00:00:00:00:00:00", B_IP), (mac, B_IP)} <= fdb(a_ns), "A never programmed B again")
    assert "lease lost, registering again" in hosts.b.log.read_text()
    status = await ok(hosts.b, "pynet/status", {})
    tasks = {t["name"]: t for t in status["tasks"]}
    assert tasks["vxlan-lease"]["state"] == tasks["vxlan-peers"]["state"] == "running"
