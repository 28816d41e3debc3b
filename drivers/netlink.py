"""Kernel helpers over one `AsyncIPRoute` socket, shared by every backend.

Every helper is idempotent: "already exists" and "already gone" are outcomes, not errors,
because Docker retries requests and pynet replays its store over the kernel at start.
Dumps share one lock: a netlink socket runs one dump at a time (docs/dependencies.md §3, pitfall 5).
The hottest requests, and the dumps of links and routes, go hand-built on a socket of their own
(drivers/rtnl.py), which runs one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pynet.drivers.rtnl import (
    IFF_UP,
    LinkSocket,
    dump_links_request,
    dump_routes_request,
    get_link_request,
    group_request,
    link_fields,
    macvlan_request,
    route_fields,
    veth_request,
)
from pynet.store.errors import Conflict, PynetError

IFNAMSIZ = 15
NTF_SELF = 0x02  # an FDB entry of the device itself (a VXLAN destination), not of its bridge
NUD_PERMANENT = 0x80
ZERO_MAC = "00:00:00:00:00:00"
# Links waiting to be deleted carry this group ("pn") and go in one request: the kernel then
# waits for RCU once per batch instead of once per link (16 ms each, measured here).
RETIRED_GROUP = 0x706E
# A batch goes once no link was retired for REAP_DELAY, or once REAP_MAX wait. The batch holds
# RTNL, which every link request waits for: reaped every 2 s in the middle of a burst of
# endpoints, it stalled the CreateEndpoint behind it to 5-7 ms (against 1.6 ms p50; 500 rounds
# of bench/bridge.py's request path on a quiet machine, Dec 2026), a third of the p99 misses.
REAP_DELAY = 2.0  # seconds
REAP_MAX = 256  # links
IFA_F_NOPREFIXROUTE = 0x200
SCOPE_LINK = 253
MAIN_TABLE = 254
RTN_UNICAST = 1
# `route get` with RTM_F_FIB_MATCH answers with the route that matched, prefix length included.
RTM_F_FIB_MATCH = 0x2000
# TEST-NET-1 (RFC 5737): no host's own subnet, so a FIB lookup for it (nothing is sent) lands on
# the default route where there is one.
_DEFAULT_ROUTE_PROBE = "192.0.2.1"


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str  # "" for physical links
    mtu: int
    up: bool
    mac: str
    master: int  # 0 when not enslaved
    parent: int  # IFLA_LINK: the lower device of macvlan/vlan/veth, 0 when none


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int
    default: bool


@dataclass(frozen=True)
class HostView:
    """One look at the host's links and addresses, to judge settings against without asking
    the kernel again per network (doctor, underlay lookup)."""

    links: Mapping[str, Link]  # by name
    addresses: Mapping[str, tuple[str, ...]]  # link name -> CIDRs
    uplink: Link | None  # the IPv4 default route's

    def link_with_address(self, address: str) -> Link | None:
        for name, cidrs in self.addresses.items():
            if any(ipaddress.ip_interface(c).ip == ipaddress.ip_address(address) for c in cidrs):
                return self.links.get(name)
        return None


def _link(reply: bytes) -> Link:
    """A link from its RTM_NEWLINK message, read by hand (drivers/rtnl.py)."""
    f = link_fields(reply)
    return Link(f.name, f.index, f.kind, f.mtu, bool(f.flags & IFF_UP), f.mac, f.master, f.parent)


class Netlink:
    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None
        # The endpoint path's two link requests, built by hand (drivers/rtnl.py).
        self._links: LinkSocket | None = None
        self._dump_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._retired = 0  # links retired since the last batch
        self._batch_full = asyncio.Event()  # REAP_MAX are waiting
        self._last_retired = 0.0  # when the latest was, in the loop's time
        # Bridge indexes, learnt by ensure_bridge: a `link get` per endpoint costs 0.8 ms of
        # pyroute2 parsing. Dropped when the link is deleted or a request with it fails.
        self._bridges: dict[str, int] = {}

    async def open(self) -> None:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
            await self._ipr.setup_endpoint()
            self._links = LinkSocket()

    async def close(self) -> None:
        await self.settle()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._links is not None:
            self._links.close()
            self._links = None

    @property
    def ipr(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise RuntimeError("Netlink.open() was not called")
        return self._ipr

    @property
    def _link_socket(self) -> LinkSocket:
        if self._links is None:
            raise RuntimeError("Netlink.open() was not called")
        return self._links

    # -- links -------------------------------------------------------------------------------

    async def link(self, name: str) -> Link | None:
        return await self._get_link(name=name)

    async def link_by_index(self, index: int) -> Link | None:
        return await self._get_link(index=index)

    async def _get_link(self, name: str = "", index: int = 0) -> Link | None:
        """Hand-built (drivers/rtnl.py): pyroute2 took about 1 ms to decode the reply."""
        sock = self._link_socket
        try:
            reply = await sock.query(get_link_request(sock.next_seq(), name, index))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return _link(reply)

    async def links(self) -> list[Link]:
        """Every link, hand-built and read (drivers/rtnl.py): pyroute2 decoded all of each
        link's attributes, 2.3-3.7 s for the 1,251 links of a 250-network host at load 13-14,
        most of a start-up's growth with its networks."""
        sock = self._link_socket
        return [_link(m) for m in await sock.dump(dump_links_request(sock.next_seq()))]

    async def ports(self, master: int) -> list[Link]:
        """The links enslaved to the link with index MASTER. The kernel filters the dump
        (IFLA_MASTER in the request), so its cost does not grow with the host's other links:
        pyroute2's `link("dump", master=...)` parses every link and filters in Python, 0.8 s
        with 392 links on the loaded 2-core VM against 0.2 ms. A kernel that ignores the
        filter sends every link; they are filtered here too."""
        sock = self._link_socket
        links = [_link(m) for m in await sock.dump(dump_links_request(sock.next_seq(), master))]
        return [link for link in links if link.master == master]

    async def delete_link(self, name: str) -> bool:
        """True if it existed."""
        self._bridges.pop(name, None)
        try:
            await self.ipr.link("del", ifname=name)
            return True
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise

    async def retire_link(self, name: str) -> None:
        """Mark a link for deletion in the next batch; DeleteEndpoint answers at once.

        Unregistering a netdev holds the RTNL lock through RCU grace periods (16 ms median,
        32 ms p99 here), stalling every netlink request meanwhile; retired links are deleted
        together once retirements pause (REAP_DELAY, REAP_MAX), or at once by `settle()` when
        something needs them gone. A retired link is still found by its name after a crash."""
        sock = self._link_socket
        try:
            await sock.request(group_request(sock.next_seq(), name, RETIRED_GROUP))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return
            raise
        self._retired += 1
        self._last_retired = asyncio.get_running_loop().time()
        if self._retired >= REAP_MAX:
            self._batch_full.set()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_when_idle())

    async def _reap_when_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._retired < REAP_MAX and (wait := self._last_retired + REAP_DELAY - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_full.wait(), wait)
            await self._reap()
            if not self._retired:  # none retired while the batch went
                return

    async def _reap(self) -> None:
        self._retired = 0
        self._batch_full.clear()
        try:
            await self.ipr.link("del", group=RETIRED_GROUP)
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # the group is empty
                raise

    async def settle(self) -> None:
        """Delete retired links now."""
        if self._reaper is not None and not self._reaper.done():
            self._reaper.cancel()
            self._reaper = None
            await self._reap()

    async def set_link(self, name: str, **attrs: Any) -> None:
        await self.ipr.link("set", ifname=name, **attrs)

    async def add_link(self, name: str, kind: str, **attrs: Any) -> bool:
        """Create a link; False if one of that name and kind exists already, Conflict if
        the name is taken by another kind."""
        return await self._add(name, kind, lambda: self.ipr.link("add", ifname=name, kind=kind, **attrs))

    async def _add(self, name: str, kind: str, send: Callable[[], Awaitable[object]]) -> bool:
        """`add_link` with the request sent by `send`."""
        if len(name) > IFNAMSIZ:
            raise PynetError(f"pynet: interface name {name!r} is longer than {IFNAMSIZ} characters")
        try:
            await send()
            return True
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise PynetError(f"pynet: cannot create {kind} {name!r}: {e.args[-1]}") from e
        existing = await self.link(name)
        if existing is None or existing.kind != kind:
            raise Conflict(
                f"pynet: interface {name!r} exists already and is a "
                f"{existing.kind if existing and existing.kind else 'device'} not a {kind}"
            )
        return False

    async def ensure_bridge(self, name: str, mtu: int, mac: str = "", view: HostView | None = None) -> bool:
        """With `view` (one dump for every network at reconcile), a bridge it shows up costs
        no request: four per network otherwise (add, its "exists" get, up, get); the bridges of
        250 networks took 5.4 s of a start-up at load 14 on 2 cores, 0.3 s with the view."""
        seen = view.links.get(name) if view else None
        if seen is not None and seen.kind == "bridge" and seen.up:
            self._bridges[name] = seen.index
            return False
        attrs: dict[str, Any] = {"mtu": mtu}
        if mac:
            attrs["address"] = mac
        created = await self.add_link(name, "bridge", **attrs)
        await self.set_link(name, state="up")
        link = await self.link(name)
        if link is not None:
            self._bridges[name] = link.index
        return created

    async def create_veth(self, name: str, peer: str, mtu: int, peer_mac: str, master: str) -> None:
        """A veth whose `name` end is a port of `master`; the `peer` end is what Docker moves
        into the container, so its MAC and MTU are set here, once, on both ends. On failure
        nothing created here is left."""
        index = self._bridges.get(master) or await self._bridge_index(master)
        try:
            created = await self._add_veth(name, peer, mtu, peer_mac, index)
        except PynetError:
            if master not in self._bridges:
                raise
            # The cached index may be stale (the bridge was recreated): look it up once more.
            del self._bridges[master]
            index = await self._bridge_index(master)
            created = await self._add_veth(name, peer, mtu, peer_mac, index)
        if not created:
            existing = await self.link(name)
            if existing is not None and existing.master == index:
                return  # a retry: the pair is in place, its peer perhaps in the container already
            # Left over from a failed attempt: start again from nothing.
            await self.delete_link(name)
            await self._add_veth(name, peer, mtu, peer_mac, index)

    async def _add_veth(self, name: str, peer: str, mtu: int, peer_mac: str, master: int) -> bool:
        """One request creates, enslaves and brings up the port, hand-built: pyroute2 took
        0.65 ms of Python more than the kernel's 0.4 ms (drivers/rtnl.py)."""
        sock = self._link_socket
        request = veth_request(sock.next_seq(), name, peer, mtu, peer_mac, master)
        return await self._add(name, "veth", lambda: sock.request(request))

    async def ensure_macvlan(self, name: str, lower: str, mtu: int, mac: str, view: HostView | None = None) -> None:
        """`create_macvlan`, up; with `view` (reconcile's), one it shows up costs no request."""
        seen = view.links.get(name) if view else None
        if seen is None or seen.kind != "macvlan" or not seen.up:
            await self.create_macvlan(name, lower, mtu, mac, up=True)

    async def create_macvlan(self, name: str, lower: str, mtu: int, mac: str, up: bool = False) -> None:
        """A macvlan link in bridge mode on the link named `lower`, hand-built as a veth is. A
        retry finds it in place; one of that name on another lower (left from a device that
        was made again) is made again."""
        parent = await self.link(lower)
        if parent is None:
            raise PynetError(f"pynet: link {lower!r} is missing")
        sock = self._link_socket

        def send() -> Awaitable[None]:
            return sock.request(macvlan_request(sock.next_seq(), name, parent.index, mtu, mac, up))

        if await self._add(name, "macvlan", send):
            return
        existing = await self.link(name)
        if existing is not None and existing.parent == parent.index:
            if up and not existing.up:
                await self.set_link(name, state="up")
            return
        await self.delete_link(name)
        await self._add(name, "macvlan", send)

    async def _bridge_index(self, name: str) -> int:
        link = await self.link(name)
        if link is None:
            raise PynetError(f"pynet: bridge {name!r} is missing")
        self._bridges[name] = link.index
        return link.index

    async def set_hairpin(self, port: str) -> None:
        """Let frames leave the bridge port they came in on: a container reaching its own
        published port through the host goes out of its veth and comes back in by it."""
        link = await self.link(port)
        if link is not None:
            await self.ipr.brport("set", index=link.index, mode=1)

    async def create_vlan(self, name: str, base_index: int, vlan_id: int) -> bool:
        """An 802.1q sub-interface, up; False if it existed. Without the 8021q module the
        kernel only says "Operation not supported", which this turns into what to do."""
        request = vlan_request(name, base_index, vlan_id)
        try:
            created = await self.add_link(request.pop("ifname"), request.pop("kind"), **request)
        except PynetError as e:
            cause = e.__cause__
            if isinstance(cause, NetlinkError) and cause.code == errno.EOPNOTSUPP:
                raise PynetError(
                    f"pynet: cannot create 802.1q sub-interface {name}: the kernel has no 8021q support "
                    f"({cause.args[-1]}; load it with `modprobe 8021q`)"
                ) from e
            raise
        await self.set_link(name, state="up")
        return created

    # -- addresses ---------------------------------------------------------------------------

    async def addresses(self, name: str) -> list[str]:
        link = await self.link(name)
        if link is None:
            return []
        async with self._dump_lock:
            return [
                f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}"
                async for m in await self.ipr.addr("dump", index=link.index)
            ]

    async def ensure_address(
        self, name: str, cidr: str, prefix_route: bool = True, view: HostView | None = None
    ) -> None:
        """`prefix_route=False` leaves routing to the caller, so that an address never adds a
        second route to a subnet the host already reaches through another link. An address
        `view` shows on the link costs no request."""
        iface = ipaddress.ip_interface(cidr)
        if view is not None and iface in {ipaddress.ip_interface(c) for c in view.addresses.get(name, ())}:
            return
        link = await self.link(name)
        if link is None:
            raise PynetError(f"pynet: interface {name!r} is missing")
        attrs: dict[str, Any] = {}
        if iface.version == 6:
            attrs["IFA_FLAGS"] = 0x02  # IFA_F_NODAD: the gateway must answer at once, not after DAD
        if not prefix_route:
            attrs["IFA_FLAGS"] = attrs.get("IFA_FLAGS", 0) | IFA_F_NOPREFIXROUTE
        try:
            await self.ipr.addr(
                "add",
                index=link.index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **attrs,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    async def hold_address(self, name: str, address: str) -> None:
        """Keep `address` (/32 or /128) locally delivered on a bridge of its own with no ports:
        the resolver's address, on kernels without the dummy link type. Measured in a netns
        (kernel 6.18): queries from another netns routed to it are answered whether the bridge
        has carrier or not, and even admin down; with nothing listening they are refused at
        once (ICMP port unreachable, TCP reset), so Docker moves to its next server."""
        await self.ensure_bridge(name, mtu=1500)
        ip = ipaddress.ip_address(address)
        await self.ensure_address(name, f"{ip}/{ip.max_prefixlen}", prefix_route=False)

    async def delete_address(self, name: str, cidr: str) -> bool:
        """True if it was there; a missing link took its addresses with it."""
        iface = ipaddress.ip_interface(cidr)
        link = await self.link(name)
        if link is None:
            return False
        try:
            await self.ipr.addr("del", index=link.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            return True
        except NetlinkError as e:
            if e.code == errno.EADDRNOTAVAIL:
                return False
            raise

    async def host_view(self) -> HostView:
        links = await self.links()
        by_index = {link.index: link.name for link in links}
        addresses: dict[str, list[str]] = {}
        async with self._dump_lock:
            async for m in await self.ipr.addr("dump"):
                name = by_index.get(m["index"])
                if name is not None:
                    addresses.setdefault(name, []).append(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
        return HostView(
            links={link.name: link for link in links},
            addresses={name: tuple(cidrs) for name, cidrs in addresses.items()},
            uplink=await self.default_link(),
        )

    # -- routes ------------------------------------------------------------------------------

    async def routes(self) -> list[Route]:
        """Unicast routes of the main table, both families: hand-built dumps (drivers/rtnl.py),
        since every network adds a route. pyroute2 decoded 500 routes in about 70 ms (cProfile,
        bridge creates on a host without a default route, Dec 2026)."""
        out: list[Route] = []
        sock = self._link_socket
        for family in (socket.AF_INET, socket.AF_INET6):
            for reply in await sock.dump(dump_routes_request(sock.next_seq(), family)):
                r = route_fields(reply)
                if r.table != MAIN_TABLE or r.type != RTN_UNICAST:
                    continue
                dst = r.dst or bytes(4 if family == socket.AF_INET else 16)  # a default route has none
                out.append(Route(ipaddress.ip_network((dst, r.dst_len), strict=False), r.oif, r.dst_len == 0))
        return out

    async def ensure_route(self, dst: str, dev: str) -> None:
        """A link-scope route to `dst` out of `dev`. A route already there for `dst` (same
        metric) is left alone, never replaced: it is not pynet's to take."""
        link = await self.link(dev)
        if link is None:
            raise PynetError(f"pynet: interface {dev!r} is missing")
        try:
            await self.ipr.route("add", dst=dst, oif=link.index, scope=SCOPE_LINK)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    async def delete_route(self, dst: str, dev: str) -> bool:
        """True if it existed; a missing `dev` took its routes with it."""
        link = await self.link(dev)
        if link is None:
            return False
        try:
            # The kernel matches the scope too; pyroute2 would send "universe" by default.
            await self.ipr.route("del", dst=dst, oif=link.index, scope=SCOPE_LINK)
            return True
        except NetlinkError as e:
            if e.code == errno.ESRCH:
                return False
            raise

    async def route_link(self, dst: str) -> Link | None:
        """The link the kernel would send a packet to `dst` out of (a FIB lookup, nothing is
        sent); None when there is no route, or when it is the loopback."""
        try:
            msgs = await self.ipr.route("get", dst=dst)
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        oif = msgs[0].get("RTA_OIF") if msgs else None
        link = await self.link_by_index(oif) if oif else None
        return None if link is None or link.name == "lo" else link

    async def default_link(self) -> Link | None:
        """The link of the IPv4 default route of the main table, where pynet's egress and
        underlay go. A FIB lookup finds it (1 ms); every route is dumped only when the lookup
        ends elsewhere (a route covering the probe address, policy routing, a multipath
        route): the dump grows with the networks, a connected route each, 0.4 s for 392
        routes on the loaded 2-core VM, paid by every create that leaves the MTU out."""
        try:
            found = await self.ipr.route("get", dst=_DEFAULT_ROUTE_PROBE, flags=RTM_F_FIB_MATCH)
        except NetlinkError:
            found = []
        for m in found[:1]:
            table = m.get("RTA_TABLE") or m["table"]
            if m["dst_len"] == 0 and table == MAIN_TABLE and m["type"] == RTN_UNICAST and m.get("RTA_OIF"):
                return await self.link_by_index(m.get("RTA_OIF"))
        for r in await self.routes():
            if r.default and r.dst.version == 4 and r.oif:
                return await self.link_by_index(r.oif)
        return None


def vlan_request(name: str, base_index: int, vlan_id: int) -> dict[str, Any]:
    """The `link("add")` request of an 802.1q sub-interface, built apart from the socket so it
    can be checked on kernels without the 8021q module, where it cannot be sent."""
    return {"ifname": name, "kind": "vlan", "link": base_index, "vlan_id": vlan_id}


class Forwarding:
    """Static FDB and neighbour entries of one VXLAN device (design notes in drivers/vxlan.py)."""

    def __init__(self, nl: Netlink, ifindex: int) -> None:
        self.nl = nl
        self.ifindex = ifindex

    async def fdb(self) -> set[tuple[str, str]]:
        """(MAC, remote VTEP) of every `self` entry with a destination."""
        async with self.nl._dump_lock:
            return {
                (m.get("NDA_LLADDR"), m.get("NDA_DST"))
                async for m in await self.nl.ipr.fdb("dump", ifindex=self.ifindex)
                if m["flags"] & NTF_SELF and m.get("NDA_DST")
            }

    async def add_fdb(self, mac: str, dst: str) -> None:
        # The all-zero MAC has one entry per VTEP (head-end replication): append. Any other
        # MAC lives behind exactly one VTEP: replace.
        verb = "append" if mac == ZERO_MAC else "replace"
        await self.nl.ipr.fdb(verb, ifindex=self.ifindex, lladdr=mac, dst=dst, flags=NTF_SELF, state=NUD_PERMANENT)

    async def del_fdb(self, mac: str, dst: str) -> None:
        try:
            await self.nl.ipr.fdb("del", ifindex=self.ifindex, lladdr=mac, dst=dst, flags=NTF_SELF)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise

    async def neighbours(self) -> set[tuple[str, str]]:
        """(IP, MAC) of every permanent neighbour entry, both families."""
        out: set[tuple[str, str]] = set()
        async with self.nl._dump_lock:
            for family in (2, 10):
                async for m in await self.nl.ipr.neigh("dump", ifindex=self.ifindex, family=family):
                    if m["state"] & NUD_PERMANENT and m.get("NDA_LLADDR"):
                        out.add((m.get("NDA_DST"), m.get("NDA_LLADDR")))
        return out

    async def set_neighbour(self, ip: str, mac: str) -> None:
        family = 10 if ":" in ip else 2
        await self.nl.ipr.neigh(
            "replace", ifindex=self.ifindex, dst=ip, lladdr=mac, state=NUD_PERMANENT, family=family
        )

    async def del_neighbour(self, ip: str) -> None:
        try:
            await self.nl.ipr.neigh("del", ifindex=self.ifindex, dst=ip, family=10 if ":" in ip else 2)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise


def write_sysctl(path: str, value: str) -> bool:
    """Set /proc/sys/<path> (slash-separated: interface names may hold dots) if it differs.

    True when it holds `value` now, False when it cannot be written (a managed plugin sees
    /proc/sys read-only). The bridge setup goes on either way and ignores the result; a host
    without forwarding shows in `pynet doctor` (its ip_forward check)."""
    p = Path("/proc/sys") / path
    try:
        if p.read_text().strip() == value:
            return True
        p.write_text(value)
        return True
    except OSError:
        return False
