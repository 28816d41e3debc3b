"""The hand-built link requests of the endpoint path (drivers/rtnl.py), read back with
pyroute2's own decoder: what the kernel gets is what pyroute2 would have sent."""

from __future__ import annotations

import errno
import struct

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from pynet.drivers.rtnl import (
    NLM_F_ACK_TLVS,
    NLMSG_ERROR,
    LinkFields,
    ack_of,
    get_link_request,
    group_request,
    link_fields,
    veth_request,
)

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400


def decoded(message: bytes) -> ifinfmsg:
    msg = ifinfmsg(message)
    msg.decode()
    assert msg["header"]["length"] == len(message)
    return msg


def test_a_veth_request_holds_both_ends_in_one_message() -> None:
    msg = decoded(veth_request(7, "pnh-0123456789a", "pnc-0123456789a", 1400, "02:42:0a:3d:00:02", 42))
    assert msg["header"]["type"] == 16  # RTM_NEWLINK
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert msg["header"]["sequence_number"] == 7
    assert (msg["flags"], msg["change"]) == (1, 1)  # up
    assert (msg.get("IFLA_IFNAME"), msg.get("IFLA_MTU"), msg.get("IFLA_MASTER")) == ("pnh-0123456789a", 1400, 42)
    info = msg.get("IFLA_LINKINFO")
    assert info.get("IFLA_INFO_KIND") == "veth"
    peer = info.get("IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert (peer.get("IFLA_IFNAME"), peer.get("IFLA_MTU"), peer.get("IFLA_ADDRESS")) == (
        "pnc-0123456789a",
        1400,
        "02:42:0a:3d:00:02",
    )
    assert (peer["flags"], peer["change"]) == (0, 0)  # Docker brings it up in the container


def test_a_veth_request_without_a_mac_leaves_it_to_the_kernel() -> None:
    msg = decoded(veth_request(1, "pnh-a", "pnc-a", 1500, "", 3))
    peer = msg.get("IFLA_LINKINFO").get("IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert peer.get("IFLA_ADDRESS") is None
    assert peer.get("IFLA_IFNAME") == "pnc-a"


def test_a_group_request_changes_an_existing_link_only() -> None:
    msg = decoded(group_request(9, "pnh-a", 0x706E))
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK  # no CREATE: a missing link is ENODEV
    assert (msg.get("IFLA_IFNAME"), msg.get("IFLA_GROUP")) == ("pnh-a", 0x706E)


def ack(seq: int, code: int, message: str = "") -> bytes:
    """An ack as the kernel sends it on a socket with NETLINK_CAP_ACK and NETLINK_EXT_ACK."""
    body = struct.pack("=i", code) + struct.pack("=IHHII", 16, 16, 5, seq, 0)
    flags = 0x100  # NLM_F_CAPPED
    if message:
        text = message.encode() + b"\0"
        body += struct.pack("=HH", 4 + len(text), 1) + text + b"\0" * (-len(text) % 4)
        flags |= NLM_F_ACK_TLVS
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, flags, seq, 1234) + body


def test_acks_are_read_with_the_kernels_message() -> None:
    assert ack_of(ack(5, 0)) == (5, None)
    seq, error = ack_of(ack(6, -errno.EEXIST))
    assert seq == 6 and error is not None
    assert (error.code, error.args[-1]) == (errno.EEXIST, "File exists")
    _, error = ack_of(ack(7, -errno.EINVAL, "Master device not found"))
    assert error is not None
    assert (error.code, error.args[-1]) == (errno.EINVAL, "Invalid argument (Master device not found)")


def test_a_reply_that_is_no_ack_is_an_error() -> None:
    reply = struct.pack("=IHHII", 16, 16, 0, 3, 0)
    seq, error = ack_of(reply)
    assert seq == 3 and error is not None and error.code == errno.EPROTO


def test_a_link_lookup_asks_by_name_or_index_and_without_statistics() -> None:
    by_name, by_index = decoded(get_link_request(3, name="pnb-x")), decoded(get_link_request(4, index=17))
    for msg in (by_name, by_index):
        assert msg["header"]["type"] == 18  # RTM_GETLINK
        assert msg["header"]["flags"] == NLM_F_REQUEST  # one link, no dump, no ack: the reply is the answer
        assert msg.get("IFLA_EXT_MASK") == 1 << 3  # RTEXT_FILTER_SKIP_STATS
    assert (by_name.get("IFLA_IFNAME"), by_name["index"]) == ("pnb-x", 0)
    assert (by_index.get("IFLA_IFNAME"), by_index["index"]) == (None, 17)


def test_link_fields_reads_what_pyroute2_encodes_and_skips_the_rest() -> None:
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = 9, 1, 0
    msg["attrs"] = [
        ("IFLA_IFNAME", "pnm-x"),
        ("IFLA_TXQLEN", 1000),  # not a field: skipped by its length
        ("IFLA_MTU", 1450),
        ("IFLA_ADDRESS", "02:42:0a:3d:00:09"),
        ("IFLA_LINK", 4),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan")]}),
    ]
    msg.encode()
    fields = link_fields(bytes(msg.data))
    assert fields == LinkFields("pnm-x", 9, "macvlan", 1450, 1, "02:42:0a:3d:00:09", 0, 4)


def test_link_fields_reads_a_name_that_is_not_utf8() -> None:
    """Another program's link may have any bytes for a name: the dump of every link at
    start-up must not fail on it (no pynet name ever has such bytes)."""
    msg = ifinfmsg()
    msg["index"] = 12
    msg["attrs"] = [("IFLA_IFNAME", "pnx")]
    msg.encode()
    data = bytearray(msg.data)
    at = bytes(data).index(b"pnx")
    data[at : at + 3] = b"\xffq\xfe"
    assert link_fields(bytes(data)).name == "\ufffdq\ufffd"
