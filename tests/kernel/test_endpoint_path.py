"""The netlink requests of a bridge endpoint's life (drivers/segment.py over drivers/netlink.py),
counted, in a private netns.

CreateEndpoint and DeleteEndpoint each cost one request built by hand (drivers/rtnl.py) and no
pyroute2 request: pyroute2 spent more Python on building and parsing that one message than
the kernel spent creating the veth. The count guards that without timing anything; the links
are then read back with `ip`, so the hand-built requests are shown to do what pyroute2's did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

# The segment's endpoint calls on a bridge "pnb-t" made by the test, every pyroute2 call and
# every hand-built request counted; prints the counts per step, and what the errors said.
CHILD = """
import asyncio, json, sys
from pynet.drivers.base import Endpoint, Network
from pynet.drivers.config import BridgeConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.netlink import Netlink
from pynet.drivers.ports import HostPorts
from pynet.drivers.segment import Segment

class Counting:
    def __init__(self, inner, log, kind):
        self.inner, self.log, self.kind = inner, log, kind
    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr
        def counted(*args, **kwargs):
            self.log.append(self.kind + "." + name)
            return attr(*args, **kwargs)
        return counted

async def main(step: str) -> None:
    nl = Netlink()
    await nl.open()
    log = []
    nl._ipr = Counting(nl._ipr, log, "pyroute2")
    if getattr(nl, "_links", None) is not None:  # the hand-built requests' socket
        nl._links = Counting(nl._links, log, "links")
    seg = Segment(nl, Firewall(), HostPorts())
    cfg = BridgeConfig(bridge="pnb-t", mtu=1400, owns_bridge=True)
    net = Network(id="ab" * 32, mode="bridge", options={}, config=cfg)
    await nl.ensure_bridge("pnb-t", 1400)
    counts = {}

    async def counted(name, call):
        log.clear()
        try:
            await call
            counts[name] = [c for c in log if c != "links.next_seq"]
        except Exception as e:
            counts[name] = {"error": type(e).__name__, "message": str(e)}

    ep = Endpoint(id="cd" * 32, network_id=net.id, address="10.61.0.2/24")
    await counted("create", seg.create_endpoint(net, ep))
    await counted("create again", seg.create_endpoint(net, Endpoint(id=ep.id, network_id=net.id, address="10.61.0.2/24")))
    await counted("too big", seg.create_endpoint(
        Network(id=net.id, mode="bridge", options={}, config=BridgeConfig(bridge="pnb-t", mtu=70000, owns_bridge=True)),
        Endpoint(id="ef" * 32, network_id=net.id, address="10.61.0.3/24"),
    ))
    if step == "retire":
        await counted("delete", seg.delete_endpoint(net, ep))
        await counted("delete again", seg.delete_endpoint(net, Endpoint(id="12" * 32, network_id=net.id)))
    print(json.dumps(counts))

asyncio.run(main(sys.argv[1]))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pnt-ep-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(netns: str, step: str) -> dict[str, Any]:
    out = sh("ip", "netns", "exec", netns, sys.executable, "-c", CHILD, step)
    result: dict[str, Any] = json.loads(out)
    return result


def link(netns: str, name: str) -> dict[str, Any]:
    shown: list[dict[str, Any]] = json.loads(sh("ip", "-n", netns, "-j", "-d", "link", "show", name))
    return shown[0]


def test_create_endpoint_is_one_hand_built_request(netns: str) -> None:
    counts = run(netns, "create")
    # Hand-built (`links.request`), and the bridge's index came from ensure_bridge: no lookup.
    assert counts["create"] == ["links.request"]
    # A retry finds the pair in place (EEXIST, then lookups of the host end, hand-built too), and keeps it.
    assert counts["create again"] == ["links.request", "links.query", "links.query"]
    # The kernel's refusal reaches the error (tests/unit/test_rtnl.py: with its extended-ack message).
    assert counts["too big"]["error"] == "PynetError"
    assert counts["too big"]["message"].startswith("pynet: cannot create veth 'pnh-efefefefefe': Invalid argument")
    host, peer = link(netns, "pnh-cdcdcdcdcdc"), link(netns, "pnc-cdcdcdcdcdc")
    assert host["master"] == "pnb-t" and host["mtu"] == 1400 and "UP" in host["flags"]
    assert host["linkinfo"]["info_kind"] == "veth"
    assert peer["address"] == "02:42:0a:3d:00:02" and peer["mtu"] == 1400 and "UP" not in peer["flags"]
    assert "pnh-efefefefefe" not in sh("ip", "-n", netns, "-o", "link", "show")


def test_delete_endpoint_is_one_hand_built_request(netns: str) -> None:
    counts = run(netns, "retire")
    assert counts["delete"] == ["links.request"]
    assert counts["delete again"] == ["links.request"]  # already gone: no error
    # Retired, not deleted: the batch deletion takes it (drivers/netlink.py, RETIRED_GROUP).
    assert link(netns, "pnh-cdcdcdcdcdc")["group"] == str(0x706E)


# Retired links in the netns's veths pnh-r0..3: which are left after each step of the reaper.
REAPER = """
import asyncio, json, subprocess
from pynet.drivers import netlink

def left():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(n for n in ("pnh-r0", "pnh-r1", "pnh-r2", "pnh-r3") if f" {n}@" in out)

async def until_gone(name):
    for _ in range(1000):
        if name not in left():
            return
        await asyncio.sleep(0.01)

async def main():
    netlink.REAP_MAX, netlink.REAP_DELAY = 3, 3600.0  # only a full batch sets it off
    nl = netlink.Netlink()
    await nl.open()
    for i in range(4):
        subprocess.run(["ip", "link", "add", f"pnh-r{i}", "type", "veth", "peer", "name", f"pnc-r{i}"], check=True)
    steps = {}
    await nl.retire_link("pnh-r0")
    await nl.retire_link("pnh-r1")
    for _ in range(20):
        await asyncio.sleep(0)  # the reaper's turns
    steps["two retired"] = left()
    await nl.retire_link("pnh-r2")
    await until_gone("pnh-r2")
    steps["batch full"] = left()
    netlink.REAP_DELAY = 0.05  # now a pause after the last retirement sets it off
    await nl.retire_link("pnh-r3")
    await until_gone("pnh-r3")
    steps["pause"] = left()
    await nl.close()
    print(json.dumps(steps))

asyncio.run(main())
"""


def test_retired_links_go_in_batches_once_retirements_pause_or_a_batch_is_full(netns: str) -> None:
    """A batch deletion holds RTNL, which the next CreateEndpoint's veth waits for: it waits
    for a pause in retirements (REAP_DELAY) or a full batch (REAP_MAX), never per link."""
    steps = json.loads(sh("ip", "netns", "exec", netns, sys.executable, "-c", REAPER))
    assert steps["two retired"] == ["pnh-r0", "pnh-r1", "pnh-r2", "pnh-r3"]
    assert steps["batch full"] == ["pnh-r3"]
    assert steps["pause"] == []
