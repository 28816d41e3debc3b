"""The netlink reads of a network's create and delete do not grow with the host's links and
routes (issue 12): the uplink comes from one FIB lookup, not a dump of every route, and a
bridge's ports from a dump the kernel filters, not one of every link. Counted, not timed: the
links and routes pynet parses, with 5 and with 50 other bridges (each with a connected route)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

NS = f"pnnlscale-{os.getpid()}"

PROBE = """
import asyncio, json
import pynet.drivers.netlink as netlink
from pynet.drivers.netlink import Netlink

parsed = {"links": 0, "route_dumps": 0}
real_link, real_routes = netlink._link, Netlink.routes

def counting_link(msg):
    parsed["links"] += 1
    return real_link(msg)

async def counting_routes(self):
    parsed["route_dumps"] += 1
    return await real_routes(self)

netlink._link, Netlink.routes = counting_link, counting_routes

async def main():
    nl = Netlink()
    await nl.open()
    bridge = await nl.link("pnb-t")
    parsed["links"] = 0
    ports = sorted(link.name for link in await nl.ports(bridge.index))
    port_links = parsed["links"]
    uplink = await nl.default_link()
    print(json.dumps({"ports": ports, "port_links": port_links, "uplink": uplink and uplink.name,
                      "route_dumps": parsed["route_dumps"]}))

asyncio.run(main())
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def ip(*argv: str) -> None:
    sh("ip", "-n", NS, *argv)


@pytest.fixture
def netns() -> Iterator[None]:
    sh("ip", "netns", "add", NS)
    try:
        ip("link", "set", "lo", "up")
        ip("link", "add", "up0", "type", "veth", "peer", "name", "up0-peer")  # no dummy module here
        ip("addr", "add", "10.77.0.2/24", "dev", "up0")
        ip("link", "set", "up0", "up")
        ip("route", "add", "default", "via", "10.77.0.1")  # nothing is ever sent
        ip("link", "add", "pnb-t", "type", "bridge")
        for i in range(3):
            ip("link", "add", f"pnh-t{i}", "type", "veth", "peer", "name", f"pnc-t{i}")
        ip("link", "set", "pnh-t0", "master", "pnb-t")
        ip("link", "set", "pnh-t1", "master", "pnb-t")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def add_bridges(start: int, stop: int) -> None:
    """Bridges with an address each, hence a connected route each, in one `ip -batch`."""
    batch = "".join(
        f"link add pnb-o{i} type bridge\naddr add 10.78.{i}.1/24 dev pnb-o{i}\nlink set pnb-o{i} up\n"
        for i in range(start, stop)
    )
    subprocess.run(["ip", "-n", NS, "-batch", "-"], input=batch, check=True, capture_output=True, text=True)


def probe() -> dict[str, object]:
    done = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_ports_and_uplink_read_the_same_with_5_or_50_other_bridges(netns: None) -> None:
    add_bridges(0, 5)
    few = probe()
    add_bridges(5, 50)
    many = probe()
    for seen in (few, many):
        assert seen["ports"] == ["pnh-t0", "pnh-t1"]
        assert seen["uplink"] == "up0"
    assert few["port_links"] == many["port_links"] == 2, "only the bridge's ports were parsed"
    assert few["route_dumps"] == many["route_dumps"] == 0, "the uplink took no dump of the routes"


def test_uplink_falls_back_to_the_dump_when_a_route_covers_the_probe(netns: None) -> None:
    ip("link", "add", "other0", "type", "veth", "peer", "name", "other0-peer")
    ip("link", "set", "other0", "up")
    ip("route", "add", "192.0.2.0/24", "dev", "other0")
    seen = probe()
    assert seen["uplink"] == "up0" and seen["route_dumps"] == 1
