"""Uniqueness under concurrency: two CreateNetwork calls racing on the plugin socket.

The real daemon and backends in a private network namespace, on the embedded store and on a
real etcd (started inside that namespace, on its loopback). Two networks naming one bridge, or
one VNI, cannot both be created on one host, however the requests interleave.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_server import etcd_server
from tests.kernel.test_serve import Namespaces, Pynet, post, sh

ROUNDS = 5  # each round races two fresh networks; one round alone may happen not to interleave


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    n = Namespaces()
    yield n
    n.delete()


@pytest.fixture(params=["embedded", "etcd"])
def daemon(request: pytest.FixtureRequest, ns: Namespaces, tmp_path: Path) -> Iterator[Pynet]:
    # A VTEP address for the VXLAN networks (the namespace has no default route).
    sh("ip", "-n", ns.host, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    sh("ip", "-n", ns.host, "addr", "add", "192.0.2.77/24", "dev", "uplink0")
    sh("ip", "-n", ns.host, "link", "set", "uplink0", "up")
    args = ["--underlay", "uplink0"]
    if request.param == "embedded":
        p = Pynet(ns, tmp_path, *args)
        p.start()
        yield p
        p.stop(signal.SIGKILL)
        return
    with etcd_server(tmp_path / "etcd", netns=ns.host) as etcd:
        p = Pynet(ns, tmp_path, *args, "--etcd-endpoints", etcd.endpoint)
        p.start()
        yield p
        p.stop(signal.SIGKILL)


def network(net_id: str, subnet: str, **generic: str) -> dict[str, Any]:
    return {
        "NetworkID": net_id,
        "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "pynet-local", "Pool": subnet, "Gateway": subnet.replace("0/24", "1/24")}],
        "IPv6Data": [],
    }


async def race(sock: Path, bodies: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return list(await asyncio.gather(*(post(sock, "NetworkDriver.CreateNetwork", b) for b in bodies)))


async def delete(sock: Path, net_id: str) -> None:
    status, reply = await post(sock, "NetworkDriver.DeleteNetwork", {"NetworkID": net_id})
    assert status == 200, reply


def one_wins(results: list[tuple[int, dict[str, Any]]], bodies: list[dict[str, Any]], what: str) -> str:
    """The winner's NetworkID; the loser's error names the claim and the winner."""
    won = [b["NetworkID"] for b, (status, _) in zip(bodies, results) if status == 200]
    lost = [reply["Err"] for status, reply in results if status != 200]
    assert len(won) == 1 and len(lost) == 1, results
    assert f"{what} is already used by network {won[0][:12]}" in lost[0]
    return won[0]


async def test_one_bridge_name_goes_to_one_network(ns: Namespaces, daemon: Pynet) -> None:
    for r in range(ROUNDS):
        bodies = [
            network(f"{r}a".ljust(64, "a"), "10.71.0.0/24", **{"com.docker.network.bridge.name": "pnrace0"}),
            network(f"{r}b".ljust(64, "b"), "10.72.0.0/24", **{"com.docker.network.bridge.name": "pnrace0"}),
        ]
        winner = one_wins(await race(daemon.sock, bodies), bodies, "bridge 'pnrace0'")
        assert "pnrace0" in ns.links()
        await delete(daemon.sock, winner)
        assert "pnrace0" not in ns.links(), "the loser left nothing that keeps the bridge"


async def test_one_vni_goes_to_one_network(ns: Namespaces, daemon: Pynet) -> None:
    for r in range(ROUNDS):
        bodies = [
            network(f"{r}c".ljust(64, "c"), "10.73.0.0/24", mode="vxlan", vni="4300"),
            network(f"{r}d".ljust(64, "d"), "10.74.0.0/24", mode="vxlan", vni="4300"),
        ]
        winner = one_wins(await race(daemon.sock, bodies), bodies, "vni 4300")
        await delete(daemon.sock, winner)
        assert "pnx-4300" not in ns.links()
    # Released with its network: the VNI can be had again.
    status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", bodies[1])
    assert status == 200, reply


async def test_a_failed_create_gives_back_the_vni_it_reserved(daemon: Pynet) -> None:
    """`-o cluster=true` reserves the VNI cluster-wide before the options are parsed; a create
    that then fails must not keep it (else `VNI N is reserved by cluster network ...`)."""
    bad = network("e" * 64, "10.75.0.0/24", mode="vxlan", vni="4301", cluster="true", bogus="1")
    status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", bad)
    assert status != 200 and "bogus" in reply["Err"], reply
    good = network("f" * 64, "10.76.0.0/24", mode="vxlan", vni="4301", cluster="true")
    status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", good)
    assert status == 200, reply
