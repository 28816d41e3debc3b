"""Network records written before `config` was typed still load, from either store.

The literals are the JSON the previous release wrote: each was produced by running that
release's parse_options and create_network (over a stand-in kernel) and encoding the record,
before the settings became drivers/config.py's tagged union.
"""

from __future__ import annotations

import msgspec
import pytest

from pynet.drivers.config import BridgeConfig, MacvlanConfig, VxlanConfig
from pynet.plugin.daemon.state import State, decode_network
from pynet.store.base import Store
from tests.unit.test_store import etcd, store  # noqa: F401  (fixtures: each test runs on both stores)

BRIDGE_OPTS = (
    b'{"id":"bridge_optsaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","mode":"bridge","options":{"bridge_name":"br-x","mtu":"1400","icc":"false","masquerade":"no","host_binding_ipv4":"127.0.0.1"},"config":{"bridge":"br-x","mtu":1400,"masquerade":false,"icc":false,"host_binding_ipv4":"127.0.0.1","owns_bridge":true},"ipv4":[{"pool":"10.1.0.0/24","gateway":"10.1.0.1/24","aux":{"host_shim":"10.1.0.250"}}],"ipv6":[],"internal":false,"enable_ipv6":false}'
)
MACVLAN_VLAN = (
    b'{"id":"macvlan_vlanbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","mode":"macvlan","options":{"parent":"eth0.10","macvlan_mode":"vepa","mtu":"1400"},"config":{"parent":"eth0.10","macvlan_mode":"vepa","mtu":1400,"host_shim":"","vlan_created":true},"ipv4":[{"pool":"10.1.0.0/24","gateway":"10.1.0.1/24","aux":{"host_shim":"10.1.0.250"}}],"ipv6":[],"internal":false,"enable_ipv6":false}'
)
MACVLAN_INTERNAL = (
    b'{"id":"macvlan_internalbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","mode":"macvlan","options":{},"config":{"parent":"pnm-macvlan_int","macvlan_mode":"bridge","mtu":1500,"host_shim":""},"ipv4":[{"pool":"10.1.0.0/24","gateway":"10.1.0.1/24","aux":{"host_shim":"10.1.0.250"}}],"ipv6":[],"internal":true,"enable_ipv6":false}'
)
VXLAN_OPTS = (
    b'{"id":"vxlan_optscccccccccccccccccccccccccccccccccccccccccccccccccccccc","mode":"vxlan","options":{"vni":"7","underlay":"eth0","peers":"192.168.1.20,192.168.1.21","vxlan_port":"8472","mtu":"1400"},"config":{"bridge":"pno-7","vxlan":"pnx-7","vni":7,"port":8472,"underlay":"eth0","peers":["192.168.1.20","192.168.1.21"],"mtu":1400,"masquerade":true,"icc":true,"host_binding_ipv4":"","local":"192.168.1.10","owns_bridge":true},"ipv4":[{"pool":"10.1.0.0/24","gateway":"10.1.0.1/24","aux":{"host_shim":"10.1.0.250"}}],"ipv6":[],"internal":false,"enable_ipv6":false}'
)

EXPECTED = {
    BRIDGE_OPTS: BridgeConfig(
        bridge="br-x", mtu=1400, masquerade=False, icc=False, host_binding_ipv4="127.0.0.1", owns_bridge=True
    ),
    MACVLAN_VLAN: MacvlanConfig(parent="eth0.10", macvlan_mode="vepa", mtu=1400, vlan_created=True),
    MACVLAN_INTERNAL: MacvlanConfig(parent="pnm-macvlan_int", mtu=1500),
    VXLAN_OPTS: VxlanConfig(
        bridge="pno-7",
        device="pnx-7",  # was "vxlan"
        vni=7,
        port=8472,
        underlay="eth0",
        peers=("192.168.1.20", "192.168.1.21"),
        mtu=1400,
        local="192.168.1.10",
        owns_bridge=True,
    ),
}


@pytest.mark.parametrize("record", list(EXPECTED), ids=["bridge", "macvlan", "macvlan-internal", "vxlan"])
def test_an_old_record_decodes_to_its_typed_settings(record: bytes) -> None:
    net = decode_network(record)
    assert net.config == EXPECTED[record]
    assert net.ipv4[0].pool == "10.1.0.0/24" and net.mode == net.config.__struct_config__.tag


def test_a_record_older_than_owns_bridge_owned_its_bridge() -> None:
    old = BRIDGE_OPTS.replace(b',"owns_bridge":true', b"")
    assert b"owns_bridge" not in old
    assert decode_network(old).config == EXPECTED[BRIDGE_OPTS]


def test_a_typed_record_round_trips_with_its_tag() -> None:
    net = decode_network(VXLAN_OPTS)
    data = msgspec.json.encode(net)
    assert b'"config":{"mode":"vxlan",' in data
    assert decode_network(data) == net


async def test_old_records_load_from_the_store(store: Store) -> None:
    state = State(store, "/pynet/", "h1")
    for record in EXPECTED:
        await store.put(f"/pynet/hosts/h1/networks/{decode_network(record).id}", record)
    nets = await state.networks()
    assert sorted((n.config for n in nets), key=repr) == sorted(EXPECTED.values(), key=repr)
    one = await state.network(decode_network(VXLAN_OPTS).id)
    assert one is not None and one.config == EXPECTED[VXLAN_OPTS]
