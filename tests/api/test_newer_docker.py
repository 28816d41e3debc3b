"""What Docker 28+ sends a network plugin that 20.10 and 26.1 do not (docs/protocol.md §2.1,
§2.2, §8): the `GwAllocCheck` capability and route, and `com.docker.network.enable_ipv4`."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from pynet.drivers.macvlan import MacvlanBackend
from pynet.drivers.ports import HostPorts
from tests.api.test_app import NET, Client, RecordingBackend, client, create_network_body  # noqa: F401

GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV4 = "com.docker.network.enable_ipv4"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"


class MacvlanDouble(RecordingBackend):
    """The recording double as macvlan, with the real backend's answer to GwAllocCheck."""

    mode: ClassVar[str] = "macvlan"
    internal_gateway: ClassVar[bool] = MacvlanBackend.internal_gateway


def gw_options(mode: str | None, internal: bool | None) -> dict[str, Any]:
    """Options as Docker 28 sends them to GwAllocCheck: libnetwork's generic map, which holds
    the families always and `internal` only with --internal."""
    opts: dict[str, Any] = {GENERIC: {"mode": mode} if mode else {}, ENABLE_IPV4: True, ENABLE_IPV6: False}
    if internal is not None:
        opts[INTERNAL] = internal
    return opts


# -- GwAllocCheck ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "internal", "skip"),
    [
        (None, None, False),
        ("bridge", True, False),  # the bridge holds the gateway: the resolver's route needs it
        ("macvlan", None, False),  # the containers' default route is the (outside) gateway
        ("macvlan", False, False),
        ("macvlan", True, True),  # as Docker 28's own macvlan: an internal one has no gateway
    ],
)
async def test_gw_alloc_check_skips_only_gateways_no_container_routes_through(
    client: Client, mode: str | None, internal: bool | None, skip: bool
) -> None:
    client.daemon.backends["macvlan"] = MacvlanDouble(HostPorts())  # type: ignore[assignment]
    reply = await client.ok("NetworkDriver.GwAllocCheck", {"Options": gw_options(mode, internal)})
    assert reply == {"SkipIPv4": skip, "SkipIPv6": skip}


async def test_gw_alloc_check_with_no_options_reserves_the_gateways(client: Client) -> None:
    assert await client.ok("NetworkDriver.GwAllocCheck", {"Options": None}) == {"SkipIPv4": False, "SkipIPv6": False}
    assert await client.ok("NetworkDriver.GwAllocCheck") == {"SkipIPv4": False, "SkipIPv6": False}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({GENERIC: {"mode": "ipvlan"}}, "option mode must be one of bridge, got 'ipvlan'"),
        ({GENERIC: {"mode": "bridge"}, INTERNAL: "yes"}, f"Options.{INTERNAL} must be true or false, got 'yes'"),
        ({GENERIC: ["bridge"]}, f"{GENERIC} must be a map"),
    ],
)
async def test_gw_alloc_check_refuses_what_create_network_would(client: Client, options: Any, named: str) -> None:
    # Docker fails the create at once, before its IPAM reserved anything.
    status, reply = await client.call("NetworkDriver.GwAllocCheck", {"Options": options})
    assert status == 400 and named in reply["Err"], reply


# -- com.docker.network.enable_ipv4 ------------------------------------------------------------


def v6_only_body(**generic: str) -> dict[str, Any]:
    """CreateNetwork as Docker 28.5 sends it for `--ipv4=false --ipv6 --subnet fd00:1::/64`."""
    return {
        "NetworkID": NET,
        "Options": {GENERIC: generic, ENABLE_IPV4: False, ENABLE_IPV6: True},
        "IPv4Data": [],
        "IPv6Data": [{"AddressSpace": "pynet-local", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}],
    }


async def test_ipv6_only_network_is_recorded_without_ipv4(client: Client) -> None:
    assert await client.ok("NetworkDriver.CreateNetwork", v6_only_body()) == {}
    net = await client.daemon.state.network(NET)
    assert net is not None and not net.enable_ipv4 and net.enable_ipv6 and not net.ipv4
    assert [s.pool for s in net.ipv6] == ["fd00:1::/64"]


async def test_without_enable_ipv4_a_network_has_ipv4(client: Client) -> None:
    """20.10 and 26.1 never send the key."""
    assert await client.ok("NetworkDriver.CreateNetwork", create_network_body()) == {}
    net = await client.daemon.state.network(NET)
    assert net is not None and net.enable_ipv4


async def test_enable_ipv4_as_a_driver_option_is_taken_where_docker_applied_it(client: Client) -> None:
    """Docker 28 also reads `-o com.docker.network.enable_ipv4=false`, and leaves it in the
    generic map: it is Docker's, no option of the mode."""
    assert await client.ok("NetworkDriver.CreateNetwork", v6_only_body(**{ENABLE_IPV4: "false"})) == {}
    net = await client.daemon.state.network(NET)
    assert net is not None and not net.enable_ipv4 and net.options == {}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # 20.10 and 26.1 pass `-o com.docker.network.enable_ipv4=false` on and give IPv4 all the same.
        (create_network_body(**{ENABLE_IPV4: "false"}), f"option {ENABLE_IPV4}=false was not applied by Docker"),
        (create_network_body(**{ENABLE_IPV6: "true"}), f"option {ENABLE_IPV6}=true was not applied by Docker"),
        (v6_only_body(**{ENABLE_IPV4: "maybe"}), f"option {ENABLE_IPV4} must be true or false, got 'maybe'"),
        ({**v6_only_body(), "Options": {ENABLE_IPV4: "false"}}, f"Options.{ENABLE_IPV4} must be true or false"),
        (
            {**create_network_body(), "Options": {ENABLE_IPV4: False}},
            f"IPv4Data must be empty with Options.{ENABLE_IPV4} false",
        ),
    ],
    ids=["not-applied-v4", "not-applied-v6", "bad-option", "not-a-bool", "ipv4-data"],
)
async def test_enable_ipv4_that_docker_did_not_apply_is_refused_by_name(
    client: Client, body: dict[str, Any], named: str
) -> None:
    status, reply = await client.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and named in reply["Err"], reply
    assert await client.daemon.state.network(NET) is None
    assert client.backend.kernel == set()
