"""The resolver's firewall and route (issue 9): PYNET-INPUT, and the internal network's /32."""

from __future__ import annotations

from pynet.drivers.base import Endpoint, Network, Subnet
from pynet.drivers.config import BridgeConfig
from pynet.drivers.firewall import Firewall, teardown_lines
from pynet.drivers.ports import HostPorts
from pynet.drivers.segment import Segment
from tests.unit.test_firewall import FakeIptables, rules

DNS = "169.254.53.53"


def test_input_chain_accepts_udp_and_tcp_53_to_the_resolver_only() -> None:
    fw = Firewall("nft")
    fw.dns_address = DNS
    fw.desired["n1"] = rules(internal=True)
    v4 = fw.render(4)
    assert ":PYNET-INPUT - [0:0]\n" in v4
    assert f"-A PYNET-INPUT -d {DNS}/32 -p udp -m udp --dport 53 -j ACCEPT\n" in v4
    assert f"-A PYNET-INPUT -d {DNS}/32 -p tcp -m tcp --dport 53 -j ACCEPT\n" in v4
    assert v4.count("PYNET-INPUT") == 3
    # The internal network's isolation is FORWARD's, which a local address never goes through.
    assert "-A PYNET-F-pnb-a -i pnb-a ! -o pnb-a" in v4
    v6 = fw.render(6)
    assert ":PYNET-INPUT - [0:0]\n" in v6 and "-A PYNET-INPUT" not in v6, "the chain, for its jump, but empty"


def test_no_input_chain_without_a_resolver() -> None:
    assert "PYNET-INPUT" not in Firewall("nft").render(4)


async def test_the_input_jump_is_kept_first_and_torn_down() -> None:
    ipt = FakeIptables({"INPUT": "-P INPUT DROP\n-A INPUT -j ACCEPT\n"})
    fw = Firewall("nft", runner=ipt)
    fw.dns_address = DNS
    await fw.apply()
    assert "-I INPUT 1 -j PYNET-INPUT\n" in ipt.restores[0][1]
    listing = "-N PYNET-INPUT\n-A INPUT -j PYNET-INPUT\n"
    assert teardown_lines("filter", listing) == ["-D INPUT -j PYNET-INPUT", ":PYNET-INPUT - [0:0]", "-X PYNET-INPUT"]


def network(internal: bool) -> Network:
    subnet = Subnet(pool="10.7.0.0/24", gateway="10.7.0.1/24")
    return Network(id="n1", mode="bridge", options={}, config=BridgeConfig(bridge="pnb-a"), ipv4=[subnet], internal=internal)


def endpoint() -> Endpoint:
    return Endpoint(id="e" * 64, network_id="n1", address="10.7.0.2/24", peer="pnp-x")


def test_internal_join_routes_the_resolver_through_the_gateway() -> None:
    fw = Firewall("nft")
    fw.dns_address = DNS
    info = Segment(None, fw, HostPorts()).join(network(internal=True), endpoint())  # type: ignore[arg-type]
    assert info.gateway == ""
    assert info.static_routes == [{"Destination": f"{DNS}/32", "RouteType": 0, "NextHop": "10.7.0.1"}]


def test_other_joins_get_no_route() -> None:
    fw = Firewall("nft")
    assert Segment(None, fw, HostPorts()).join(network(internal=True), endpoint()).static_routes == []  # type: ignore[arg-type]
    fw.dns_address = DNS
    info = Segment(None, fw, HostPorts()).join(network(internal=False), endpoint())  # type: ignore[arg-type]
    assert info.gateway == "10.7.0.1" and info.static_routes == []
