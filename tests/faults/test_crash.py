"""Crash at every point of every multi-step mutation (pynet.store.faults.POINTS), on the
embedded store: nothing lost, nothing leaked, nothing let in.

Each case starts pynet in a private netns with one point armed, plays Docker (tests/faults/
dockerd.py) through two bridge networks with a container each, then both removed. The daemon
dies at the point (os._exit, as kill -9); the test restarts it unarmed and goes on as Docker
does: the crashed call is retried with an empty body and fails, Docker rolls back what it had
asked for, and the user runs the failed command once more. Then:

- nothing lost: every container Docker runs reaches its gateway, its address is allocated;
- nothing let in: the two networks cannot reach each other, and their isolation rules are there;
- nothing leaked: once Docker removed everything, pynet has no record, pool, address, pynet
  link or PYNET rule left, and gc (with Docker's view: nothing) finds nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from pynet.drivers.firewall import ISOLATION, ISOLATION_2, bucket
from pynet.plugin.ops import gc
from pynet.plugin.serve import DNS_LINK
from pynet.store import faults
from tests.faults.dockerd import Container, Docker, Net, post
from tests.kernel.test_serve import Namespaces, Pynet, pings, sh

# The points the bridge story reaches; the VXLAN ones are test_vxlan_crash.py's.
VXLAN_ONLY = {"create_network.after_vni", "vxlan.create.after_device", "vxlan.program.partial", "release_pool.after_unref"}
BRIDGE_POINTS = [p for p in faults.POINTS if p not in VXLAN_ONLY]


class Crashing:
    """The armed daemon, and its unarmed restarts; counts the crashes."""

    def __init__(self, ns: Namespaces, tmp: Path, monkeypatch: pytest.MonkeyPatch, point: str, *args: str) -> None:
        self.point = point
        self.monkeypatch = monkeypatch
        self.daemon = Pynet(ns, tmp, *args)
        self.crashes = 0
        monkeypatch.setenv(faults.ENV, point)
        self.daemon.start()
        monkeypatch.delenv(faults.ENV)  # restarts are unarmed

    def revive(self, sent: bool) -> None:
        proc = self.daemon.proc
        assert proc is not None
        code = proc.wait(timeout=20)
        assert code == faults.CRASH_EXIT, f"pynet died with {code}, not at a crash point:\n{self.log()[-3000:]}"
        assert f"crash point {self.point} reached" in self.log()
        self.crashes += 1
        self.daemon.start()

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace")


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    n = Namespaces()
    yield n
    n.delete()


async def admin(sock: Path, route: str, body: object = None) -> object:
    status, reply = await post(sock, f"pynet/{route}", msgspec.json.encode(body) if body is not None else b"")
    assert status == 200, reply
    return reply


def bridge_of(net: Net) -> str:
    return net.bridge or "pnb-" + net.id[:11]


def gateway(net: Net) -> str:
    return net.gateway.split("/")[0]


async def check_alive(docker: Docker, ns: Namespaces) -> None:
    """Nothing lost, nothing kept: pynet's records and allocations are exactly what Docker
    believes exists, and what Docker runs works."""
    inv = msgspec.convert(await admin(docker.sock, "gc/inventory"), gc.Inventory)
    assert sorted(n.id for n in inv.networks) == sorted(n.id for n in docker.networks)
    assert sorted(e.id for e in inv.endpoints) == sorted(c.endpoint for c in docker.containers)
    believed = [] if docker.own_ipam else [n.gateway for n in docker.networks] + [c.address for c in docker.containers]
    mine = [a.address for a in inv.allocations if a.host == inv.host]  # a shared pool holds others' too
    assert sorted(mine) == sorted(a.split("/")[0] for a in believed)
    for net in docker.networks:
        assert bridge_of(net) in ns.links(), f"bridge of {net.subnet} lost"
    for ctr in docker.containers:
        assert pings(ctr.name, gateway(ctr.net)), f"{ctr.address} lost its network"


def check_isolated(docker: Docker, ns: Namespaces, a: Container, b: Container) -> None:
    """Nothing let in: the two networks cannot reach each other."""
    rules = ns.rules()
    x, y = bridge_of(a.net), bridge_of(b.net)
    for src, dst in ((x, y), (y, x)):  # what leaves SRC for another pynet bridge meets DST's DROP
        for rule in (
            f"-A PYNET-ISOLATION -j {bucket(ISOLATION, src)}",
            f"-A {bucket(ISOLATION, src)} -i {src} -j PYNET-I-{src}",
            f"-A PYNET-I-{src} -i {src} ! -o {src} -j {ISOLATION_2}",
            f"-A {ISOLATION_2} -j {bucket(ISOLATION_2, dst)}",
            f"-A {bucket(ISOLATION_2, dst)} -o {dst} -j DROP",
        ):
            assert rule in rules, f"isolation rule {rule!r} missing:\n{rules}"
    # One probe, one second: the answer would come back in a millisecond.
    assert sh("ip", "netns", "exec", a.name, "busybox", "ping", "-c", "1", "-W", "1", b.address.split("/")[0],
              check=False).returncode != 0, "a network reaches another"


async def leftovers(docker: Docker, ns: Namespaces) -> dict[str, object]:
    """Nothing leaked: everything pynet still holds once Docker holds nothing."""
    inv = msgspec.convert(await admin(docker.sock, "gc/inventory"), gc.Inventory)
    view = gc.DockerView(networks=[], endpoints=[], addresses=[], subnets=[])
    found = {
        "networks": [n.id[:12] for n in inv.networks],
        "endpoints": [e.id[:12] for e in inv.endpoints],
        "allocations": [f"{a.address} ({a.owner})" for a in inv.allocations],
        "pools": [p["subnet"] for p in await admin(docker.sock, "ipam")],  # type: ignore[attr-defined]
        # The resolver's bridge and INPUT rule (etcd only) stay while pynet serves names.
        "links": sorted(link for link in ns.links() if link.startswith("pn") and link != DNS_LINK),
        "rules": [r.line for r in inv.rules if not r.line.startswith("-A PYNET-INPUT")],
        "gc": [f"{leak.kind} {leak.name}: {leak.reason}" for leak in gc.find(inv, view, time.time(), min_age=0)],
    }
    return {k: v for k, v in found.items() if v}


async def story(docker: Docker, ns: Namespaces) -> None:
    """Two networks, a container on each, then everything removed; a command that failed
    is run once more, as its user would."""
    a = await docker.network_create("10.61.0.0/24") or await docker.network_create("10.61.0.0/24")
    b = await docker.network_create("10.62.0.0/24") or await docker.network_create("10.62.0.0/24")
    assert a and b, f"a network could not be created even on the second try: {docker.failed}"
    ca = await docker.run(a) or await docker.run(a)
    cb = await docker.run(b) or await docker.run(b)
    assert ca and cb, f"a container could not start even on the second try: {docker.failed}"
    await check_alive(docker, ns)
    check_isolated(docker, ns, ca, cb)
    await docker.rm(ca)
    await check_alive(docker, ns)  # before DeleteNetwork, which would hide a leaked endpoint
    await docker.network_rm(a)
    await check_alive(docker, ns)
    await docker.rm(cb)
    await docker.network_rm(b)


@pytest.mark.parametrize("point", BRIDGE_POINTS)
async def test_crash_loses_leaks_and_lets_in_nothing(
    point: str, ns: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await crash_story(point, ns, tmp_path, monkeypatch, own_ipam=False)


# With Docker's own IPAM no ReleaseAddress reaches pynet to tell it an endpoint was given up:
# what a crash in DeleteEndpoint leaves must not outlive the restart by itself.
@pytest.mark.parametrize("point", ["delete_endpoint.after_store", "delete_endpoint.after_kernel"])
async def test_crash_with_dockers_own_ipam(
    point: str, ns: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await crash_story(point, ns, tmp_path, monkeypatch, own_ipam=True)


async def crash_story(point: str, ns: Namespaces, tmp: Path, monkeypatch: pytest.MonkeyPatch, own_ipam: bool) -> None:
    crashing = Crashing(ns, tmp, monkeypatch, point)
    docker = Docker(crashing.daemon.sock, crashing.revive, ns.host, own_ipam=own_ipam)
    try:
        await story(docker, ns)
        assert crashing.crashes == 1, f"the story never reached {point}"
        assert await leftovers(docker, ns) == {}
    finally:
        docker.forget()
        crashing.daemon.stop(signal.SIGKILL)


async def test_an_unknown_point_is_refused(ns: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo must not pass for a test whose daemon simply never crashed."""
    monkeypatch.setenv(faults.ENV, "create_network.after_typo")
    daemon = Pynet(ns, tmp_path)
    with pytest.raises(AssertionError):
        daemon.start()
    assert daemon.proc is not None and daemon.proc.wait(timeout=20) == 1
    assert "PYNET_CRASH_AT must be one of" in daemon.log.read_text() and "'create_network.after_typo'" in daemon.log.read_text()
