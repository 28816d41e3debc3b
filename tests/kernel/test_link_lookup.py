"""`Netlink.link()` and `link_by_index()`, hand-built (drivers/rtnl.py), read every kind of
link pynet looks at exactly as pyroute2's decoder reads them, in a netns of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

NS = f"pnlink-{os.getpid()}"
NAMES = ("lo", "pnb-l", "pnh-l", "pnc-l", "pnm-l", "pnx-l")

PROBE = """
import asyncio, dataclasses, json, sys
from pynet.drivers.netlink import Netlink, _link

async def main(names):
    nl = Netlink()
    await nl.open()
    out = {}
    for name in names:
        ours = await nl.link(name)
        theirs = _link((await nl.ipr.link("get", ifname=name))[0])
        by_index = await nl.link_by_index(ours.index)
        out[name] = [dataclasses.asdict(ours), dataclasses.asdict(theirs), dataclasses.asdict(by_index)]
    out["missing"] = [await nl.link("pnq-none"), await nl.link_by_index(999999)]
    await nl.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1:]))
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", "-n", NS, *argv], check=True, capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[None]:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ip("link", "add", "pnb-l", "mtu", "1400", "type", "bridge")
        ip("link", "add", "pnh-l", "mtu", "1400", "master", "pnb-l", "type", "veth", "peer", "name", "pnc-l", "address", "02:42:0a:3d:00:07")
        ip("link", "add", "pnm-l", "link", "pnc-l", "type", "macvlan", "mode", "bridge")
        ip("link", "add", "pnx-l", "type", "vxlan", "id", "42", "dstport", "4789", "nolearning")
        for name in ("lo", "pnb-l", "pnh-l"):
            ip("link", "set", name, "up")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


@pytest.mark.usefixtures("netns")
def test_hand_built_lookups_read_what_pyroute2_reads() -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-c", PROBE, *NAMES], check=True, capture_output=True, text=True
    ).stdout
    got = json.loads(out)
    for name in NAMES:
        ours, theirs, by_index = got[name]
        assert ours == theirs == by_index, name
    bridge, host_end, peer, mv = (got[n][0] for n in ("pnb-l", "pnh-l", "pnc-l", "pnm-l"))
    assert (bridge["kind"], bridge["mtu"], bridge["up"], host_end["master"]) == ("bridge", 1400, True, bridge["index"])
    assert (peer["kind"], peer["mac"], peer["up"], peer["parent"]) == ("veth", "02:42:0a:3d:00:07", False, host_end["index"])
    assert (mv["kind"], mv["parent"]) == ("macvlan", peer["index"])
    assert got["pnx-l"][0]["kind"] == "vxlan" and got["lo"][0]["kind"] == ""
    assert got["missing"] == [None, None]
