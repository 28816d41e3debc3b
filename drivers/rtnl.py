"""The link requests of the request path, built by hand and sent on a socket of their own.

CreateEndpoint makes a veth (or, on a VXLAN network, a macvlan link) and DeleteEndpoint
retires it: one netlink request each, which
pyroute2 builds and parses in Python at about 0.6 ms a request (its encoder walks NLA tables;
its reply path runs a filter chain), more than the kernel's own work for a
retirement. Here both messages are a few `struct.pack` calls (about 10 µs) and the ack is
read straight back: rtnetlink handles a request inside the sender's `sendmsg`, so the ack is
queued before the send returns (a reply that is not there yet is awaited, never spun on).

Looking a link up (`link get`, by name or index) is the third, and the dumps of links and
routes the fourth: network create and delete make
one to three each. pyroute2 decodes every attribute of the reply, the statistics and the
per-family settings included (about 1.5 KiB), into objects: 73 % of a macvlan CreateNetwork's
time in the handler (cProfile, 200 creates in a netns, Dec 2026). Here the kernel is asked to
leave the statistics out (RTEXT_FILTER_SKIP_STATS) and only the eight fields a `Link` holds are
read; the rest is skipped by its length. Route dumps likewise: each network adds a connected
route, and an IPAM RequestPool without a subnet, or a bridge create on a host with no default
route, dumped them all through pyroute2.
Every other netlink request still goes through pyroute2 (drivers/netlink.py).

Errors are pyroute2's `NetlinkError`, with the kernel's extended-ack message when it gives
one, so callers handle both paths alike.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
SOL_NETLINK = 270  # not in Python's socket module
NETLINK_CAP_ACK = 10  # the ack carries the request's header only, not the whole request
NETLINK_EXT_ACK = 11  # and the kernel's message naming what it refused
RTM_NEWLINK, RTM_GETLINK, RTM_GETROUTE = 16, 18, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_DUMP = 0x300
NLM_F_ACK_TLVS = 0x200  # in an ack: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_GROUP, IFLA_EXT_MASK = 18, 27, 29
RTEXT_FILTER_SKIP_STATS = 1 << 3
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
NLA_TYPE_MASK = 0x3FFF  # without the NESTED and BYTEORDER flags
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE = 1, 4
NLA_F_NESTED = 0x8000
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags


def _attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (its length field counts the unpadded payload)."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _name(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _mac(mac: str) -> bytes:
    return _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))


def _message(kind: int, flags: int, seq: int, ifinfo: bytes, attrs: bytes) -> bytes:
    body = ifinfo + attrs
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def veth_request(seq: int, name: str, peer: str, mtu: int, peer_mac: str, master: int) -> bytes:
    """RTM_NEWLINK of a veth pair: `name` up and a port of bridge `master`, `peer` down (Docker
    brings it up in the container) with `peer_mac` ("" leaves the kernel's random one); both
    ends take `mtu`. EXCL: an existing `name` is EEXIST, never silently reused."""
    peer_attrs = _name(peer) + _u32(IFLA_MTU, mtu) + (_mac(peer_mac) if peer_mac else b"")
    peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs
    linkinfo = _attr(IFLA_INFO_KIND, b"veth") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_info)
    )
    attrs = _name(name) + _u32(IFLA_MTU, mtu) + _u32(IFLA_MASTER, master)
    attrs += _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _message(RTM_NEWLINK, flags, seq, _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP), attrs)


def macvlan_request(seq: int, name: str, lower: int, mtu: int, mac: str, up: bool = False) -> bytes:
    """RTM_NEWLINK of a macvlan link in bridge mode on the link with index `lower`, with `mac`
    and `mtu`; down unless `up` (a container's is brought up by Docker in its namespace). EXCL,
    as veth_request."""
    linkinfo = _attr(IFLA_INFO_KIND, b"macvlan") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _u32(IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE)
    )
    attrs = _name(name) + _u32(IFLA_MTU, mtu) + _u32(IFLA_LINK, lower) + _mac(mac)
    attrs += _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    state = IFF_UP if up else 0
    return _message(RTM_NEWLINK, flags, seq, _IFINFO.pack(0, 0, 0, state, IFF_UP), attrs)


def group_request(seq: int, name: str, group: int) -> bytes:
    """RTM_NEWLINK without CREATE, on an existing link named `name`: set its group."""
    attrs = _name(name) + _u32(IFLA_GROUP, group)
    return _message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, _IFINFO.pack(0, 0, 0, 0, 0), attrs)


def get_link_request(seq: int, name: str = "", index: int = 0) -> bytes:
    """RTM_GETLINK of one link, by `name` or by `index`, without its statistics."""
    attrs = (_name(name) if name else b"") + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return _message(RTM_GETLINK, NLM_F_REQUEST, seq, _IFINFO.pack(0, 0, index, 0, 0), attrs)


def dump_links_request(seq: int, master: int = 0) -> bytes:
    """RTM_GETLINK of every link, or (a filter the kernel applies) those enslaved to `master`,
    without their statistics."""
    attrs = _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS) + (_u32(IFLA_MASTER, master) if master else b"")
    return _message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, _IFINFO.pack(0, 0, 0, 0, 0), attrs)


def dump_routes_request(seq: int, family: int) -> bytes:
    """RTM_GETROUTE of every route of one family (AF_INET 2, AF_INET6 10), every table."""
    return _message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), b"")


@dataclass(frozen=True, slots=True)
class RouteFields:
    """What drivers/netlink.py's `Route` needs, read from an RTM_NEWROUTE message."""

    dst: bytes  # RTA_DST, b"" for a default route
    dst_len: int
    table: int  # RTA_TABLE where given (tables above 255), else the header's
    type: int
    oif: int


def route_fields(data: bytes) -> RouteFields:
    """The fields of the RTM_NEWROUTE message at the start of `data`."""
    length = _HEADER.unpack_from(data)[0]
    _, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(data, _HEADER.size)
    dst, oif = b"", 0
    for attr, lo, hi in _attrs(data, _HEADER.size + _RTMSG.size, length):
        if attr == RTA_DST:
            dst = data[lo:hi]
        elif attr == RTA_OIF and hi - lo >= 4:
            (oif,) = struct.unpack_from("=I", data, lo)
        elif attr == RTA_TABLE and hi - lo >= 4:
            (table,) = struct.unpack_from("=I", data, lo)
    return RouteFields(dst, dst_len, table, kind, oif)


def split_messages(data: bytes) -> Iterator[bytes]:
    """The netlink messages of one datagram (a dump packs many)."""
    at = 0
    while at + _HEADER.size <= len(data):
        length = _HEADER.unpack_from(data, at)[0]
        if length < _HEADER.size:
            return
        yield data[at : at + length]
        at += length + (-length % 4)


@dataclass(frozen=True, slots=True)
class LinkFields:
    """What drivers/netlink.py's `Link` holds, read from an RTM_NEWLINK message."""

    name: str
    index: int
    kind: str  # IFLA_INFO_KIND, "" for a physical link
    mtu: int
    flags: int
    mac: str  # IFLA_ADDRESS as aa:bb:..., "" when the link has none
    master: int
    parent: int  # IFLA_LINK


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each attribute in data[start:end]."""
    while start + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, start)
        if size < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + size
        start += size + (-size % 4)


def link_fields(data: bytes) -> LinkFields:
    """The fields of the RTM_NEWLINK message at the start of `data`."""
    length = _HEADER.unpack_from(data)[0]
    _, _, index, flags, _ = _IFINFO.unpack_from(data, _HEADER.size)
    values: dict[int, bytes] = {}
    kind = ""
    for attr, lo, hi in _attrs(data, _HEADER.size + _IFINFO.size, length):
        if attr == IFLA_LINKINFO:
            kinds = (data[a:b] for t, a, b in _attrs(data, lo, hi) if t == IFLA_INFO_KIND)
            kind = next(kinds, b"").rstrip(b"\0").decode(errors="replace")
        elif attr in (IFLA_IFNAME, IFLA_ADDRESS, IFLA_MTU, IFLA_MASTER, IFLA_LINK):
            values[attr] = data[lo:hi]

    def u32(attr: int) -> int:
        raw = values.get(attr)
        return int(struct.unpack("=I", raw)[0]) if raw and len(raw) >= 4 else 0

    return LinkFields(
        # Linux takes any bytes but "/" and spaces in a name: one that is not UTF-8 (another
        # program's link) must not fail the dump of every link at start-up.
        name=values.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
        index=index,
        kind=kind,
        mtu=u32(IFLA_MTU),
        flags=flags,
        mac=":".join(f"{b:02x}" for b in values.get(IFLA_ADDRESS, b"")),
        master=u32(IFLA_MASTER),
        parent=u32(IFLA_LINK),
    )


def ack_of(data: bytes) -> tuple[int, NetlinkError | None]:
    """(sequence number, outcome) of an ack: None when the request succeeded, else the error."""
    length, kind, flags, seq, _ = _HEADER.unpack_from(data)
    if kind != NLMSG_ERROR:
        return seq, NetlinkError(errno.EPROTO, f"unexpected netlink reply of type {kind} to a link request")
    (code,) = struct.unpack_from("=i", data, _HEADER.size)
    if code == 0:
        return seq, None
    message = ""
    if flags & NLM_F_ACK_TLVS:
        # After the error code and the request's header (the ack is capped): attributes.
        at = _HEADER.size + 4 + _HEADER.size
        while at + 4 <= length:
            size, attr = struct.unpack_from("=HH", data, at)
            if size < 4:
                break
            if attr == NLMSGERR_ATTR_MSG:
                message = data[at + 4 : at + size].rstrip(b"\0").decode(errors="replace")
            at += size + (-size % 4)
    # NetlinkError's own message is strerror alone; the kernel's says which attribute it refused.
    return seq, NetlinkError(-code, f"{os.strerror(-code)} ({message})" if message else None)


class LinkSocket:
    """A rtnetlink socket of this namespace for the requests above, one at a time."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()

    def next_seq(self) -> int:
        return next(self._seq)

    async def request(self, message: bytes) -> None:
        """Send a message built above (its sequence number from `next_seq`); raises the
        kernel's refusal as NetlinkError."""
        (reply,) = await self._exchange(message)
        _, error = ack_of(reply)
        if error is not None:  # a reply that is no ack
            raise error

    async def query(self, message: bytes) -> bytes:
        """Send a request whose answer is one message (`get_link_request`), and return it."""
        (reply,) = await self._exchange(message)
        return reply

    async def dump(self, message: bytes) -> list[bytes]:
        """Send a dump request (`dump_links_request`, `dump_routes_request`) and return every
        message of its answer."""
        return await self._exchange(message, dump=True)

    async def _exchange(self, message: bytes, dump: bool = False) -> list[bytes]:
        """The messages answering `message`: its one reply (an ack, or the message it asked
        for), or with `dump` every message until NLMSG_DONE. A refusal is raised."""
        (seq,) = struct.unpack_from("=I", message, 8)
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        async with self._lock:
            await loop.sock_sendall(self._sock, message)
            while True:
                for reply in split_messages(await loop.sock_recv(self._sock, 65536)):
                    _, kind, _, reply_seq, _ = _HEADER.unpack_from(reply)
                    if reply_seq != seq:
                        continue  # the late reply to a request whose caller was cancelled
                    if kind == NLMSG_ERROR:
                        _, error = ack_of(reply)
                        if error is not None:
                            raise error
                        if dump:
                            raise NetlinkError(errno.EPROTO, "a dump answered with an ack")
                    if dump and kind == NLMSG_DONE:
                        return got
                    got.append(reply)
                    if not dump:
                        return got

    def close(self) -> None:
        self._sock.close()
