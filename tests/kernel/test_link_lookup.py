"""`Netlink.link()`, `link_by_index()`, `links()`, `ports()` and `routes()`, hand-built
(drivers/rtnl.py), read every kind of link and route pynet looks at exactly as pyroute2's
decoder reads them, in a netns of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

NS = f"pnlink-{os.getpid()}"
NAMES = ("lo", "pnb-l", "pnh-l", "pnc-l", "pnm-l", "pnx-l")
# Enough links that a dump comes in several datagrams (about 20 links fit in one).
MORE = [f"pnq-{i}" for i in range(120)]

PROBE = """
import asyncio, dataclasses, json, sys
from pynet.drivers.netlink import Netlink

def theirs(msg):
    return dict(
        name=msg.get("IFLA_IFNAME"), index=msg["index"],
        kind=msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "", mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & 1), mac=msg.get("IFLA_ADDRESS") or "", master=msg.get("IFLA_MASTER") or 0,
        parent=msg.get("IFLA_LINK") or 0,
    )

async def main(names):
    nl = Netlink()
    await nl.open()
    out = {}
    for name in names:
        ours = await nl.link(name)
        pyroute2 = theirs((await nl.ipr.link("get", ifname=name))[0])
        by_index = await nl.link_by_index(ours.index)
        out[name] = [dataclasses.asdict(ours), pyroute2, dataclasses.asdict(by_index)]
    out["missing"] = [await nl.link("pnq-none"), await nl.link_by_index(999999)]
    out["dump"] = [[dataclasses.asdict(l) for l in await nl.links()], [theirs(m) async for m in await nl.ipr.link("dump")]]
    out["ports"] = [l.name for l in await nl.ports(out["pnb-l"][0]["index"])]
    pyroute2 = []
    for family in (2, 10):
        async for m in await nl.ipr.route("dump", family=family, table=254):
            if m["type"] == 1:
                dst = m.get("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
                pyroute2.append([f"{dst}/{m['dst_len']}", m.get("RTA_OIF") or 0, m["dst_len"] == 0])
    routes = [[str(r.dst.network_address) + f"/{r.dst.prefixlen}", r.oif, r.default] for r in await nl.routes()]
    out["routes"] = [sorted(routes), sorted(pyroute2)]
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
        # Routes of both families, connected and static, a default, and one in another table.
        ip("addr", "add", "10.77.0.1/24", "dev", "pnb-l")
        ip("addr", "add", "fd77::1/64", "dev", "pnb-l", "nodad")
        ip("route", "add", "10.78.0.0/16", "via", "10.77.0.2")
        ip("route", "add", "default", "via", "10.77.0.254")
        ip("-6", "route", "add", "default", "via", "fd77::fe")
        ip("route", "add", "10.79.0.0/16", "dev", "pnb-l", "table", "1000")
        batch = "".join(f"link add {name} type veth peer name {name}p\n" for name in MORE)
        subprocess.run(["ip", "-n", NS, "-batch", "-"], input=batch, check=True, capture_output=True, text=True)
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
    ours, pyroute2 = got["dump"]
    assert ours == pyroute2
    assert {link["name"] for link in ours} == {*NAMES, *MORE, *(f"{name}p" for name in MORE)}
    assert got["ports"] == ["pnh-l"]
    ours, pyroute2 = got["routes"]
    assert ours == pyroute2
    bridge = got["pnb-l"][0]["index"]
    for route in (["10.77.0.0/24", bridge, False], ["10.78.0.0/16", bridge, False], ["0.0.0.0/0", bridge, True],
                  ["fd77::/64", bridge, False], ["::/0", bridge, True]):  # fmt: skip
        assert route in ours
    assert not any(dst == "10.79.0.0/16" for dst, _, _ in ours)  # not the main table's
