"""Option parsing of the bridge and VXLAN modes (macvlan's: test_macvlan.py) into typed
settings, and what the registry answers for each mode, without a kernel."""

from __future__ import annotations

import pytest

from pynet.drivers.base import Network, Subnet
from pynet.drivers.bridge import BridgeBackend
from pynet.drivers.config import BridgeConfig, MacvlanConfig, VxlanConfig
from pynet.drivers.netlink import HostView, Link, Netlink
from pynet.drivers.ports import HostPorts
from pynet.drivers.registry import BACKENDS, LINK_PREFIXES, mtu_limit
from pynet.drivers.vxlan import VxlanBackend
from pynet.store.errors import InvalidRequest

NET = "0123456789abcdef" * 4


def draft() -> Network:
    return Network(NET, "bridge", {}, BridgeConfig(bridge=""), [Subnet("10.1.0.0/24", "10.1.0.1/24")])


def bridge(options: dict[str, str]) -> BridgeConfig:
    return BridgeBackend(Netlink(), None, HostPorts()).parse_options(options, draft())  # type: ignore[arg-type]


def vxlan(options: dict[str, str]) -> VxlanConfig:
    backend = VxlanBackend(Netlink(), None, HostPorts(), None, "/pynet/", "h1")  # type: ignore[arg-type]
    return backend.parse_options(options, draft())


# -- bridge ------------------------------------------------------------------------------------


def test_bridge_defaults() -> None:
    assert bridge({}) == BridgeConfig(
        bridge="pnb-0123456789a", mtu=None, masquerade=True, icc=True, host_binding_ipv4="", owns_bridge=None
    )


def test_bridge_docker_names_and_aliases_mean_the_same() -> None:
    docker = {
        "com.docker.network.bridge.name": "br-lan",
        "com.docker.network.driver.mtu": "1400",
        "com.docker.network.bridge.enable_ip_masquerade": "false",
        "com.docker.network.bridge.enable_icc": "no",
        "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
    }
    short = {"bridge_name": "br-lan", "mtu": "1400", "masquerade": "0", "icc": "off", "host_binding_ipv4": "127.0.0.1"}
    expected = BridgeConfig(bridge="br-lan", mtu=1400, masquerade=False, icc=False, host_binding_ipv4="127.0.0.1")
    assert bridge(docker) == bridge(short) == expected
    assert bridge({"enable_ip_masquerade": "yes", "enable_icc": "true"}) == bridge({})


def test_bridge_unknown_option_is_named_with_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown option 'vni' for mode bridge \(known: com.docker.network.bridge"):
        bridge({"vni": "42"})


def test_one_option_given_twice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"options 'mtu' and 'com.docker.network.driver.mtu' are the same option"):
        bridge({"mtu": "1400", "com.docker.network.driver.mtu": "1400"})


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mtu": "67"}, r"option mtu must be an integer in 68..65535, got '67'"),
        ({"com.docker.network.driver.mtu": "big"}, r"option com.docker.network.driver.mtu must be an integer in 68..65535, got 'big'"),
        ({"masquerade": "maybe"}, r"option masquerade must be true or false, got 'maybe'"),
        ({"icc": ""}, r"option icc must be true or false, got ''"),
        ({"host_binding_ipv4": "::1"}, r"option host_binding_ipv4 must be an IPv4 address, got '::1'"),
        ({"bridge_name": "a-very-long-bridge"}, r"option bridge_name must be an interface name of 1 to 15 ASCII characters, without '/', ':' or spaces, got 'a-very-long-bridge'"),
    ],
)
def test_bridge_bad_values_name_the_option_and_value(options: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        bridge(options)


# -- vxlan -------------------------------------------------------------------------------------


def test_vxlan_defaults_and_names_from_the_vni() -> None:
    """No bridge: the gateway and containers are macvlan links of the device (drivers/vxlan.py)."""
    assert vxlan({"vni": "42"}) == VxlanConfig(
        bridge="pno-42", device="pnx-42", lower="pnx-42", vni=42, port=4789, underlay="", peers=(), mtu=None, local=""
    )


def test_vxlan_options_and_aliases() -> None:
    """icc off keeps the bridge, where the firewall can drop traffic between containers."""
    cfg = vxlan({"vni": "7", "vxlan_port": "8472", "underlay": "eth1", "peers": " 192.0.2.2, 192.0.2.3,", "mtu": "1400", "icc": "false"})
    assert cfg == VxlanConfig(
        bridge="pno-7", device="pnx-7", vni=7, port=8472, underlay="eth1", peers=("192.0.2.2", "192.0.2.3"),
        mtu=1400, icc=False,
    )
    assert vxlan({"vni": "7", "underlay": "192.0.2.1"}).underlay == "192.0.2.1"


def test_vxlan_needs_a_vni_and_has_no_bridge_name() -> None:
    with pytest.raises(InvalidRequest, match=r"option vni is required with mode=vxlan: an integer in 1..16777215"):
        vxlan({})
    with pytest.raises(InvalidRequest, match=r"unknown option 'bridge_name' for mode vxlan \(known: .*underlay, vni, vxlan_port\)"):
        vxlan({"vni": "1", "bridge_name": "br0"})


@pytest.mark.parametrize(
    "options, match",
    [
        ({"vni": "abc"}, r"pynet: option vni must be an integer in 1..16777215, got 'abc'"),
        ({"vni": "0"}, r"option vni must be an integer in 1..16777215, got '0'"),
        ({"vni": "16777216"}, r"got '16777216'"),
        ({"vni": "1", "vxlan_port": "65536"}, r"option vxlan_port must be an integer in 1..65535, got '65536'"),
        ({"vni": "1", "peers": "192.0.2.2,host"}, r"option peers must be a comma-separated list of IPv4 addresses, got '192.0.2.2,host'"),
        ({"vni": "1", "underlay": "10.0.0.1/24"}, r"option underlay must be an interface name or an IPv4 address of this host, got '10.0.0.1/24'"),
        ({"vni": "1", "masquerade": "2"}, r"option masquerade must be true or false, got '2'"),
    ],
)
def test_vxlan_bad_values_name_the_option_and_value(options: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        vxlan(options)


# -- the registry ------------------------------------------------------------------------------


def test_every_mode_is_registered_once_with_its_links() -> None:
    assert [e.mode for e in BACKENDS] == ["bridge", "macvlan", "vxlan"]
    assert set(LINK_PREFIXES) == {"pnb-", "pnh-", "pnc-", "pnv-", "pns-", "pnm-", "pno-", "pnx-"}
    assert len(LINK_PREFIXES) == len(set(LINK_PREFIXES))
    for e in BACKENDS:
        assert e.config.__struct_config__.tag == e.mode


def link(name: str, mtu: int, index: int = 2) -> Link:
    return Link(name, index, "", mtu, True, "02:00:00:00:00:01", 0, 0)


HOST = HostView(
    links={"eth0": link("eth0", 1500), "eth1": link("eth1", 9000, 3)},
    addresses={"eth0": ("192.0.2.1/24",), "eth1": ("198.51.100.1/24", "fd00::1/64")},
    uplink=link("eth0", 1500),
)


def test_mtu_limits_per_mode() -> None:
    bridge_fit = mtu_limit(BridgeConfig(bridge="pnb-x", mtu=1500), HOST)
    assert bridge_fit is not None and (bridge_fit.lower.name, bridge_fit.limit) == ("eth0", 1500)
    by_name = mtu_limit(VxlanConfig(bridge="pno-1", device="pnx-1", vni=1, underlay="eth1"), HOST)
    assert by_name is not None and (by_name.lower.name, by_name.overhead, by_name.limit) == ("eth1", 50, 8950)
    by_local = mtu_limit(VxlanConfig(bridge="pno-1", device="pnx-1", vni=1, local="198.51.100.1"), HOST)
    assert by_local is not None and by_local.lower.name == "eth1"
    gone = mtu_limit(VxlanConfig(bridge="pno-1", device="pnx-1", vni=1, local="203.0.113.1"), HOST)
    assert gone is not None and gone.lower.name == "eth0", "the uplink when the recorded underlay is gone"
    parent = mtu_limit(MacvlanConfig(parent="eth1", mtu=9000), HOST)
    assert parent is not None and parent.limit == 9000
    assert mtu_limit(MacvlanConfig(parent="eth7"), HOST) is None


def test_a_bridged_network_needs_an_address_family() -> None:
    """Docker 28's --ipv4=false without --ipv6: refused as Docker's bridge refuses it."""
    neither = Network(NET, "bridge", {}, BridgeConfig(bridge=""), enable_ipv4=False, enable_ipv6=False)
    v6only = Network(NET, "bridge", {}, BridgeConfig(bridge=""), ipv6=[Subnet("fd00::/64")], enable_ipv4=False, enable_ipv6=True)
    backends = (
        BridgeBackend(Netlink(), None, HostPorts()),  # type: ignore[arg-type]
        VxlanBackend(Netlink(), None, HostPorts(), None, "/pynet/", "h1"),  # type: ignore[arg-type]
    )
    for backend in backends:
        with pytest.raises(InvalidRequest, match=f"a {backend.mode} network needs IPv4 or IPv6.*enable_ipv4"):
            backend.parse_options({"vni": "42"} if backend.mode == "vxlan" else {}, neither)
        assert backend.parse_options({"vni": "42"} if backend.mode == "vxlan" else {}, v6only)
