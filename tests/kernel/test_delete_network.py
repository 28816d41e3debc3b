"""DeleteNetwork is idempotent against the real kernel, also when part of the network is gone
already (an address removed by hand, a port link deleted): Docker only logs its errors and
forgets the network anyway, so a refusal would leave the rest behind for good."""

from __future__ import annotations

from typing import Any

from tests.kernel.test_serve import ENDPOINT, NET, NETWORK, Namespaces, Pynet, ns, post, pynet, sh

__all__ = ["ns", "pynet"]  # the fixtures, shared with test_serve

DUAL = {
    **NETWORK,
    "Options": {"com.docker.network.generic": {}, "com.docker.network.enable_ipv6": True},
    "IPv6Data": [{"AddressSpace": "pynet-local", "Pool": "fd61::/64", "Gateway": "fd61::1/64"}],
}


async def ok(pynet: Pynet, method: str, body: dict[str, Any]) -> None:
    status, reply = await post(pynet.sock, f"NetworkDriver.{method}", body)
    assert status == 200, reply


def bridge_of(ns: Namespaces) -> str:
    return next(link for link in ns.links() if link.startswith("pnb-"))


async def test_delete_network_with_its_addresses_and_ports_already_gone(ns: Namespaces, pynet: Pynet) -> None:
    await ok(pynet, "CreateNetwork", DUAL)
    await ok(pynet, "CreateEndpoint", ENDPOINT)
    bridge = bridge_of(ns)
    sh("ip", "-n", ns.host, "addr", "flush", "dev", bridge)
    sh("ip", "-n", ns.host, "-6", "addr", "flush", "dev", bridge)
    sh("ip", "-n", ns.host, "link", "del", next(link for link in ns.links() if link.startswith("pnh-")))
    await ok(pynet, "DeleteNetwork", {"NetworkID": NET})
    assert not {link for link in ns.links() if link.startswith("pn")}, ns.links()
    assert bridge not in ns.rules(), "no rule names the bridge"
    await ok(pynet, "DeleteNetwork", {"NetworkID": NET})


async def test_delete_network_keeps_a_users_bridge_whose_address_is_gone(ns: Namespaces, pynet: Pynet) -> None:
    sh("ip", "-n", ns.host, "link", "add", "br-user", "type", "bridge")
    body = {**DUAL, "Options": {**DUAL["Options"], "com.docker.network.generic": {"bridge_name": "br-user"}}}
    await ok(pynet, "CreateNetwork", body)
    sh("ip", "-n", ns.host, "addr", "flush", "dev", "br-user")
    sh("ip", "-n", ns.host, "-6", "addr", "flush", "dev", "br-user")
    await ok(pynet, "DeleteNetwork", {"NetworkID": NET})
    await ok(pynet, "DeleteNetwork", {"NetworkID": NET})
    assert "br-user" in ns.links(), "pynet did not make it, so it stays"
    # The name is free again: another network may take the bridge.
    await ok(pynet, "CreateNetwork", {**body, "NetworkID": "c3" * 32})
