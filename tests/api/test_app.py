"""The plugin's wire contract on a real Unix socket: every route, every error shape.

The app runs with the real store, IPAM and state; only the backend is a recording double
(the kernel tier tests the real ones), so this tier needs neither root nor Docker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, AsyncIterator, ClassVar

import aiohttp
import pytest
from aiohttp import web

from msgspec.structs import replace

from pynet.drivers.base import Draft, Endpoint, JoinInfo, Network, config_of
from pynet.drivers.config import BridgeConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.naming import bridge_name
from pynet.drivers.netlink import Netlink
from pynet.drivers.options import Option, parse_bool, parse_options
from pynet.ipam import Ipam
from pynet.plugin.api.app import make_app
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.daemon.state import State
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import PynetError

NET = "n" * 64
FAIL = "FAIL"
EP = "e" * 64


class RecordingBackend:
    """Records calls; `-o fail=true` makes create_network fail after "creating" something (it
    names the bridge FAIL, which no real bridge network would)."""

    mode: ClassVar[str] = "bridge"
    link_prefixes: ClassVar[tuple[str, ...]] = ("pnh-", "pnc-")
    publishes_ports: ClassVar[bool] = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.kernel: set[str] = set()

    def parse_options(self, options: Mapping[str, str], net: Draft) -> BridgeConfig:
        fail = parse_options(self.mode, [Option("fail", parse_bool, False)], options)["fail"]
        return BridgeConfig(bridge=FAIL if fail else bridge_name(net.id))

    async def create_network(self, net: Network) -> BridgeConfig:
        self.calls.append(("create_network", net.id))
        self.kernel.add(net.id)
        cfg = config_of(net, BridgeConfig)
        if cfg.bridge == FAIL:
            self.kernel.discard(net.id)
            raise PynetError("pynet: cannot create bridge (test)")
        return replace(cfg, mtu=1500, owns_bridge=True)

    async def delete_network(self, net: Network) -> None:
        self.calls.append(("delete_network", net.id))
        self.kernel.discard(net.id)

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("create_endpoint", ep.id))
        ep.ifname, ep.peer = "pnh-" + ep.id[:11], "pnc-" + ep.id[:11]
        ep.mac = ep.mac or "02:42:0a:01:00:02"
        self.kernel.add(ep.id)

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        self.calls.append(("join", ep.id))
        return JoinInfo(src_name=ep.peer, gateway="10.1.0.1")

    async def leave(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("leave", ep.id))

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("delete_endpoint", ep.id))
        self.kernel.discard(ep.id)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("program_external", ep.id))

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("revoke_external", ep.id))

    async def reconcile(self, nets: list[Network], eps: list[Endpoint]) -> None:
        self.calls.append(("reconcile", str(len(nets))))

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        return {e.peer for e in eps}


class Client:
    def __init__(self, session: aiohttp.ClientSession, backend: RecordingBackend, daemon: Daemon) -> None:
        self.session = session
        self.backend = backend
        self.daemon = daemon

    async def call(self, method: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode() + b"\n")
        # Docker sends no Content-Type and this Accept header (docs/protocol.md §1.3).
        headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
        async with self.session.post(f"/{method}", data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, body: Any = None) -> dict[str, Any]:
        status, reply = await self.call(method, body)
        assert status == 200, reply
        return reply

    async def err(self, method: str, body: Any = None, raw: bytes | None = None) -> str:
        status, reply = await self.call(method, body, raw)
        assert status != 200, reply
        assert reply["Err"] == reply["Error"] and reply["Err"], reply
        return str(reply["Err"])


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = EmbeddedStore(tmp_path / "store.sqlite")
    backend = RecordingBackend()
    netlink = Netlink()
    await netlink.open()
    daemon = Daemon(
        settings=Settings(state_dir=str(tmp_path)),
        host="h1",
        store=store,
        state=State(store, "/pynet/", "h1"),
        ipam=Ipam(store, "h1", "/pynet/"),
        netlink=netlink,
        firewall=Firewall(),
        backends={"bridge": backend},  # type: ignore[dict-item]
    )
    daemon.ready.set()
    runner = web.AppRunner(make_app(daemon))
    await runner.setup()
    sock = str(tmp_path / "pynet.sock")
    await web.UnixSite(runner, sock).start()
    async with aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=sock), base_url="http://plugin.moby.localhost"
    ) as session:
        yield Client(session, backend, daemon)
    await runner.cleanup()
    await netlink.close()
    await store.close()


def create_network_body(**generic: str) -> dict[str, Any]:
    return {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": generic, "com.docker.network.enable_ipv6": False},
        "IPv4Data": [{"AddressSpace": "pynet-local", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "IPv6Data": [],
    }


def endpoint_body(address: str = "10.1.0.2/24", mac: str = "") -> dict[str, Any]:
    return {
        "NetworkID": NET,
        "EndpointID": EP,
        "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
        "Options": {"com.docker.network.portmap": [], "com.docker.network.endpoint.exposedports": []},
    }


# -- registration ------------------------------------------------------------------------------


async def test_activate_and_capabilities_take_empty_bodies(client: Client) -> None:
    assert await client.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert await client.ok("NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "global"}
    assert await client.ok("IpamDriver.GetCapabilities") == {
        "RequiresMACAddress": False,
        "RequiresRequestReplay": False,
    }
    assert await client.ok("IpamDriver.GetDefaultAddressSpaces") == {
        "LocalDefaultAddressSpace": "pynet-local",
        "GlobalDefaultAddressSpace": "pynet-global",
    }


async def test_activate_answers_before_start_up_completes(client: Client) -> None:
    client.daemon.ready.clear()
    assert await client.ok("Plugin.Activate")
    assert await client.ok("NetworkDriver.GetCapabilities")


async def test_unknown_method_is_a_json_404(client: Client) -> None:
    status, reply = await client.call("NetworkDriver.Frobnicate", {})
    assert status == 404
    assert "NetworkDriver.Frobnicate" in reply["Err"] and reply["Err"] == reply["Error"]


async def test_swarm_only_methods_answer(client: Client) -> None:
    assert await client.ok("NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": None}) == {"Options": {}}
    assert await client.ok("NetworkDriver.FreeNetwork", {"NetworkID": NET}) == {}
    discovery = {"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1", "Self": True}}
    assert await client.ok("NetworkDriver.DiscoverNew", discovery) == {}
    assert await client.ok("NetworkDriver.DiscoverDelete", discovery) == {}


# -- request decoding --------------------------------------------------------------------------


async def test_malformed_json_is_a_400_naming_the_method(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", raw=b"{not json")
    assert "NetworkDriver.CreateNetwork" in msg
    status, _ = await client.call("NetworkDriver.CreateNetwork", raw=b"{not json")
    assert status == 400


async def test_empty_body_on_a_method_with_arguments_names_the_missing_field(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateEndpoint", raw=b"")
    assert "NetworkID" in msg


async def test_wrong_field_type_names_the_field(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", {"NetworkID": 5})
    assert "NetworkID" in msg


# -- networks ----------------------------------------------------------------------------------


async def test_create_network_persists_and_is_idempotent(client: Client) -> None:
    assert await client.ok("NetworkDriver.CreateNetwork", create_network_body()) == {}
    assert await client.ok("NetworkDriver.CreateNetwork", create_network_body()) == {}
    net = await client.daemon.state.network(NET)
    assert net is not None and net.mode == "bridge" and net.ipv4[0].pool == "10.1.0.0/24"
    assert net.ipv4[0].gateway == "10.1.0.1/24"
    assert await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == {}
    assert await client.daemon.state.network(NET) is None
    # Deleting again, or a network pynet never saw, is fine: Docker only logs these errors.
    assert await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == {}


async def test_null_maps_are_empty(client: Client) -> None:
    body = {"NetworkID": NET, "Options": None, "IPv4Data": None, "IPv6Data": None}
    assert await client.ok("NetworkDriver.CreateNetwork", body) == {}


async def test_unknown_mode_is_rejected_by_name(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", create_network_body(mode="ipvlan"))
    assert "mode" in msg and "'ipvlan'" in msg


async def test_unknown_option_is_rejected_by_name(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", create_network_body(colour="blue"))
    assert "'colour'" in msg
    assert await client.daemon.state.network(NET) is None


async def test_malformed_option_value_is_named(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", create_network_body(fail="perhaps"))
    assert "fail" in msg and "'perhaps'" in msg


async def test_bad_pool_and_gateway_are_named(client: Client) -> None:
    body = create_network_body()
    body["IPv4Data"][0]["Pool"] = "10.1.0.0/33"
    assert "IPv4Data[0].Pool" in await client.err("NetworkDriver.CreateNetwork", body)
    body = create_network_body()
    body["IPv4Data"][0]["Gateway"] = "10.9.0.1/24"
    msg = await client.err("NetworkDriver.CreateNetwork", body)
    assert "IPv4Data[0].Gateway" in msg and "10.9.0.1/24" in msg


async def test_failed_create_leaves_nothing(client: Client) -> None:
    await client.err("NetworkDriver.CreateNetwork", create_network_body(fail="true"))
    assert await client.daemon.state.network(NET) is None
    assert client.backend.kernel == set()


# -- endpoints ---------------------------------------------------------------------------------


async def test_endpoint_lifecycle(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    reply = await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    # Docker filled Address: echoing it back would make Docker roll back (docs/protocol.md §2.4).
    assert reply == {"Interface": {"MacAddress": "02:42:0a:01:00:02"}}
    assert await client.ok("NetworkDriver.CreateEndpoint", endpoint_body()) == reply
    join = await client.ok(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/abc", "Options": {}},
    )
    assert join == {
        "InterfaceName": {"SrcName": "pnc-" + EP[:11], "DstPrefix": "eth"},
        "Gateway": "10.1.0.1",
        "DisableGatewayService": False,
    }
    info = await client.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert info == {"Value": {"pynet.link": "pnc-" + EP[:11], "pynet.mac": "02:42:0a:01:00:02"}}
    assert await client.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}) == {}
    assert await client.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == {}
    assert await client.daemon.state.endpoint(EP) is None
    assert EP not in client.backend.kernel
    # Gone already: Leave and DeleteEndpoint still succeed.
    assert await client.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}) == {}
    assert await client.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == {}


async def test_endpoint_given_mac_is_not_echoed(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    reply = await client.ok("NetworkDriver.CreateEndpoint", endpoint_body(mac="02:aa:bb:cc:dd:ee"))
    assert reply == {"Interface": {}}


async def test_endpoint_on_unknown_network_names_it(client: Client) -> None:
    msg = await client.err("NetworkDriver.CreateEndpoint", endpoint_body())
    assert NET in msg


async def test_endpoint_address_outside_subnet_is_named(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    msg = await client.err("NetworkDriver.CreateEndpoint", endpoint_body("10.2.0.2/24"))
    assert "Interface.Address" in msg and "10.2.0.2/24" in msg
    assert await client.daemon.state.endpoint(EP) is None
    assert EP not in client.backend.kernel


async def test_join_of_unknown_endpoint_names_it(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    msg = await client.err("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": ""})
    assert EP in msg


async def test_oper_info_never_fails(client: Client) -> None:
    # An error here fails `docker run` (docs/protocol.md §2.7).
    assert await client.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP}) == {"Value": {}}


async def test_delete_network_removes_its_stale_endpoints(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert await client.daemon.state.endpoint(EP) is None
    assert client.backend.kernel == set()


# -- published ports ---------------------------------------------------------------------------


def portmap(host_port: int, port: int = 80, proto: int = 6, host_ip: str = "") -> dict[str, Any]:
    return {"Proto": proto, "IP": "", "Port": port, "HostIP": host_ip, "HostPort": host_port, "HostPortEnd": host_port}


async def test_program_and_revoke_external_connectivity(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    body = {
        "NetworkID": NET,
        "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [portmap(8080), portmap(0, 53, 17)]},
    }
    assert await client.ok("NetworkDriver.ProgramExternalConnectivity", body) == {}
    ep = await client.daemon.state.endpoint(EP)
    assert ep is not None
    tcp, udp = ep.ports
    assert (tcp.proto, tcp.host_ip, tcp.host_port, tcp.container_ip, tcp.container_port) == (
        "tcp",
        "",
        8080,
        "10.1.0.2",
        80,
    )
    assert udp.proto == "udp" and 49153 <= udp.host_port <= 65535 and udp.container_port == 53
    assert ("program_external", EP) in client.backend.calls
    assert await client.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP}) == {}
    ep = await client.daemon.state.endpoint(EP)
    assert ep is not None and ep.ports == []


async def test_host_port_taken_by_another_endpoint_is_refused(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    other = "f" * 64
    await client.ok("NetworkDriver.CreateEndpoint", {**endpoint_body("10.1.0.3/24"), "EndpointID": other})
    opts = {"com.docker.network.portmap": [portmap(8080)]}
    await client.ok("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": opts})
    msg = await client.err(
        "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": other, "Options": opts}
    )
    assert "8080/tcp" in msg


async def test_bad_port_protocol_and_host_ip_are_named(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    opts = {"com.docker.network.portmap": [portmap(8080, proto=99)]}
    msg = await client.err("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": opts})
    assert "99" in msg
    opts = {"com.docker.network.portmap": [portmap(8080, host_ip="nonsense")]}
    msg = await client.err("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": opts})
    assert "'nonsense'" in msg


# -- IPAM --------------------------------------------------------------------------------------


async def test_ipam_pool_and_addresses(client: Client) -> None:
    pool = await client.ok(
        "IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": "10.5.0.0/24", "SubPool": "", "Options": None, "V6": False}
    )
    assert pool["Pool"] == "10.5.0.0/24" and pool["PoolID"]
    gw = await client.ok(
        "IpamDriver.RequestAddress",
        {"PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}},
    )
    assert gw == {"Address": "10.5.0.1/24", "Data": {}}
    a = await client.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    assert a["Address"] == "10.5.0.2/24"
    static = await client.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.5.0.9", "Options": None})
    assert static["Address"] == "10.5.0.9/24"
    msg = await client.err("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.5.0.9", "Options": None})
    assert "10.5.0.9" in msg
    assert await client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.5.0.9"}) == {}
    assert await client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.5.0.9"}) == {}
    assert await client.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == {}


async def test_ipam_automatic_pools_differ_and_avoid_routes(client: Client) -> None:
    body = {"AddressSpace": "pynet-local", "Pool": "", "SubPool": "", "Options": None, "V6": False}
    first = await client.ok("IpamDriver.RequestPool", body)
    second = await client.ok("IpamDriver.RequestPool", body)
    assert first["Pool"] != second["Pool"]
    v6 = await client.ok("IpamDriver.RequestPool", {**body, "V6": True})
    assert ":" in v6["Pool"] and v6["Pool"].endswith("/64")


async def test_ipam_errors_use_both_fields(client: Client) -> None:
    msg = await client.err(
        "IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": "10.1.0.5/24", "V6": False}
    )
    assert "10.1.0.5/24" in msg


async def test_per_network_locks_do_not_accumulate(client: Client) -> None:
    """A long-lived daemon sees a new network ID with every `docker network create`; the lock
    map keeps only the locks in use (plugin/daemon/daemon.py, store/locks.py)."""
    for i in range(50):
        body = {**create_network_body(), "NetworkID": f"{i:064x}"}
        await client.ok("NetworkDriver.CreateNetwork", body)
        await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": body["NetworkID"]})
    assert len(client.daemon._locks) == 0
