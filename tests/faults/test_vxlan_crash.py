"""The VXLAN crash points on a real etcd, with two pynet hosts sharing a network and a pool.

Hosts 1 and 2 are network namespaces joined by a veth underlay (192.0.2.0/24), each with its
own pynet; etcd runs inside host 1's namespace on its underlay address, so both reach it and
nothing outside the test's namespaces is contacted. Host 1's daemon is the one armed. The
story: a VXLAN cluster network on both hosts (one pool), a container on each that pings the
other across the tunnel, then host 1 removes its side while host 2 still holds the pool, then
host 2 removes its. The invariants are test_crash.py's, per host, plus etcd: no pool, address or
record left, and host 1's VTEP and endpoint keys gone with their lease.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynet.store import faults
from tests.etcd_server import EtcdServer, etcd_server
from tests.faults.dockerd import Docker, Net
from tests.faults.test_crash import Crashing, check_alive, leftovers
from tests.kernel.test_serve import Namespaces, Pynet, pings, sh

VXLAN_POINTS = ["create_network.after_vni", "vxlan.create.after_device", "vxlan.program.partial", "release_pool.after_unref"]
SUBNET = "10.63.0.0/24"
KEPT = {"/pynet/ipam/poolset", "/pynet/hosts/k1/marker", "/pynet/hosts/k2/marker"}
LEASE_TTL = 3


def pynet_keys(etcd: EtcdServer) -> list[str]:
    return [k for k in etcd.etcdctl("get", "--prefix", "--keys-only", "/pynet/").splitlines() if k]


@pytest.fixture
def hosts() -> Iterator[tuple[Namespaces, Namespaces]]:
    one, two = Namespaces(), Namespaces()
    sh("ip", "-n", one.host, "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", two.host)
    for ns, link, cidr in ((one, "u1", "192.0.2.1/24"), (two, "u2", "192.0.2.2/24")):
        sh("ip", "-n", ns.host, "addr", "add", cidr, "dev", link)
        sh("ip", "-n", ns.host, "link", "set", link, "up")
    yield one, two
    one.delete()
    two.delete()


@pytest.fixture
def etcd(hosts: tuple[Namespaces, Namespaces], tmp_path: Path) -> Iterator[EtcdServer]:
    with etcd_server(tmp_path / "etcd", netns=hosts[0].host, host="192.0.2.1") as server:
        yield server


def daemon_args(etcd: EtcdServer, tmp: Path, host: str, underlay: str) -> tuple[str, ...]:
    # No Docker API: the cluster agent must never reach the machine's own dockerd.
    return (
        "--host-id", host, "--etcd-endpoints", etcd.endpoint, "--underlay", underlay,
        "--lease-ttl", str(LEASE_TTL), "--docker-host", f"unix://{tmp}/no-docker.sock",
    )


def vxlan(net: Net | None) -> Net:
    assert net is not None, "a network could not be created even on the second try"
    net.bridge = "pno-4242"
    return net


@pytest.mark.parametrize("point", VXLAN_POINTS)
async def test_vxlan_crash_loses_leaks_and_lets_in_nothing(
    point: str,
    hosts: tuple[Namespaces, Namespaces],
    etcd: EtcdServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns1, ns2 = hosts
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    crashing = Crashing(ns1, tmp_path / "1", monkeypatch, point, *daemon_args(etcd, tmp_path, "k1", "u1"))
    other = Pynet(ns2, tmp_path / "2", *daemon_args(etcd, tmp_path, "k2", "u2"))
    other.start()

    def never(sent: bool) -> None:
        raise AssertionError(f"host 2's pynet died:\n{other.log.read_text()[-3000:]}")

    d1 = Docker(crashing.daemon.sock, crashing.revive, ns1.host)
    d2 = Docker(other.sock, never, ns2.host)
    try:
        opts = {"mode": "vxlan", "vni": "4242", "cluster": "true"}
        n1 = vxlan(await d1.network_create(SUBNET, opts) or await d1.network_create(SUBNET, opts))
        n2 = vxlan(await d2.network_create(SUBNET, {"mode": "vxlan", "vni": "4242"}))
        c1 = await d1.run(n1) or await d1.run(n1)
        c2 = await d2.run(n2)
        # vxlan.program.partial fires in host 1's peer watch once host 2 registers: Docker's
        # next call to host 1 finds it dead (refused, so retried with its body) or dies with it.
        assert c1 and c2
        await check_alive(d1, ns1)
        await check_alive(d2, ns2)
        assert pings(c1.name, c2.address.split("/")[0]), "no traffic across the tunnel"
        await d1.rm(c1)
        await d1.network_rm(n1)  # host 2 still holds the pool
        await check_alive(d1, ns1)  # nothing of host 1's is left in it
        await check_alive(d2, ns2)
        assert pings(c2.name, n2.gateway.split("/")[0])
        await d2.rm(c2)
        await d2.network_rm(n2)
        assert crashing.crashes == 1, f"the story never reached {point}"
        assert await leftovers(d1, ns1) == {}
        assert await leftovers(d2, ns2) == {}
        # The VNI stays reserved (drivers/vnis.py), the list of pools stays (empty: "pools" above),
        # and each host's marker (plugin/daemon/marker.py); host 1's registrations go with their lease.
        deadline = time.monotonic() + LEASE_TTL + 5
        while [k for k in pynet_keys(etcd) if not k.startswith("/pynet/cluster/") and k not in KEPT]:
            assert time.monotonic() < deadline, pynet_keys(etcd)
            time.sleep(0.2)
    finally:
        d1.forget()
        d2.forget()
        crashing.daemon.stop(signal.SIGKILL)
        other.stop(signal.SIGKILL)


def test_the_tiers_cover_every_point() -> None:
    from tests.faults.test_crash import BRIDGE_POINTS

    named = [p if isinstance(p, str) else p.values[0] for p in (*BRIDGE_POINTS, *VXLAN_POINTS)]  # type: ignore[attr-defined]
    assert sorted(named) == sorted(faults.POINTS)
