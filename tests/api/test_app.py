"""The plugin's wire contract on a real Unix socket: every route, every error shape.

The app runs with the real store, IPAM and state; only the backend is a recording double
(the kernel tier tests the real ones), so this tier needs neither root nor Docker.
"""

from __future__ import annotations

import json
import time
import logging
import socket
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
from pynet.drivers.netlink import HostView, Netlink
from pynet.drivers.options import Option, parse_bool, parse_options
from pynet.drivers.ports import HostPorts
from pynet.ipam import Ipam
from pynet.plugin.api.app import MAX_BODY, MAX_MESSAGE, make_app
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.daemon.state import State
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import PynetError
from tests.sockets import LOOPBACK, bindable, free_ports

NET = "n" * 64
FAIL = "FAIL"
EP = "e" * 64


class RecordingBackend:
    """Records calls; `-o fail=true` makes create_network fail after "creating" something (it
    names the bridge FAIL, which no real bridge network would)."""

    mode: ClassVar[str] = "bridge"
    link_prefixes: ClassVar[tuple[str, ...]] = ("pnh-", "pnc-")
    publishes_ports: ClassVar[bool] = True
    internal_gateway: ClassVar[bool] = True

    def __init__(self, ports: HostPorts) -> None:
        self.calls: list[tuple[str, str]] = []
        self.kernel: set[str] = set()
        self.ports = ports  # released where drivers/segment.py releases them

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
        self.ports.release(ep.id)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("program_external", ep.id))

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("revoke_external", ep.id))
        self.ports.release(ep.id)

    async def reconcile(self, nets: list[Network], eps: list[Endpoint], view: HostView) -> None:
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
    ports = HostPorts()
    backend = RecordingBackend(ports)
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
        ports=ports,
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
    assert await client.ok("NetworkDriver.GetCapabilities") == {
        "Scope": "local",
        "ConnectivityScope": "global",
        "GwAllocChecker": True,
    }
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


@pytest.mark.parametrize(
    "generic, named",
    [({"mode": ["bridge"]}, "option mode must be a string, got ['bridge']"), ({"fail": {"x": 1}}, "option fail must be a string")],
)
async def test_option_of_the_wrong_type_is_a_400_naming_it(client: Client, generic: Any, named: str) -> None:
    # A list as `mode` was a 500 "internal error ... unhashable type: 'list'".
    body = {"NetworkID": NET, "Options": {"com.docker.network.generic": generic}}
    status, reply = await client.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and named in reply["Err"], reply
    assert await client.daemon.state.network(NET) is None


async def test_map_given_as_a_number_names_its_path(client: Client) -> None:
    body = {**create_network_body(), "IPv4Data": [{"Pool": "10.1.0.0/24", "AuxAddresses": 5}]}
    status, reply = await client.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and "$.IPv4Data[0].AuxAddresses" in reply["Err"]


@pytest.mark.parametrize("bad", ["", "a/b", "n" * 65, "é" * 4, " " + NET[1:]])
async def test_ids_that_are_not_dockers_are_refused_by_name(client: Client, bad: str) -> None:
    # IDs become store keys and link names: an empty one, or one with a '/', made another key.
    status, reply = await client.call("NetworkDriver.CreateNetwork", {**create_network_body(), "NetworkID": bad})
    assert status == 400 and "NetworkID must be a Docker ID" in reply["Err"], reply
    status, reply = await client.call("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": bad})
    assert status == 400 and "EndpointID must be a Docker ID" in reply["Err"], reply
    assert await client.daemon.store.range("/") == []


async def test_statuses_tell_the_callers_mistakes_from_pynets(client: Client) -> None:
    """InvalidRequest was a 500; Docker only tells 200 from the rest, operators read the status."""
    assert (await client.call("IpamDriver.ReleasePool", {"PoolID": "nonsense"}))[0] == 400
    assert (await client.call("NetworkDriver.CreateEndpoint", endpoint_body()))[0] == 409
    # Never a 404, which Docker takes from this method as "not implemented", i.e. success (§1.4).
    program = {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": [portmap(8080)]}}
    assert (await client.call("NetworkDriver.ProgramExternalConnectivity", program))[0] == 409
    pool = {"AddressSpace": "pynet-local", "Pool": "10.5.0.0/24"}
    await client.ok("IpamDriver.RequestPool", pool)
    assert (await client.call("IpamDriver.RequestPool", {**pool, "Pool": "10.5.0.0/16"}))[0] == 409
    assert (await client.call("NetworkDriver.CreateNetwork", create_network_body(fail="true")))[0] == 500


async def test_body_over_the_limit_is_a_json_413(client: Client) -> None:
    body = b'{"NetworkID": "' + b"a" * MAX_BODY + b'"}'
    for path in ("/NetworkDriver.CreateNetwork", "/IpamDriver.RequestPool"):
        async with client.session.post(path, data=body) as r:
            assert r.status == 413 and r.content_type == "application/json"
            reply = await r.json()
            assert reply["Err"] == reply["Error"] and "body" in reply["Err"] and path[1:] in reply["Err"]


async def test_largest_docker_body_is_accepted(client: Client) -> None:
    """Every port published, TCP and UDP: Docker's largest body, 13.4 MiB, under MAX_BODY."""
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    ports = [portmap(p, p, proto) for proto in (6, 17) for p in range(1, 65536)]
    body = {**endpoint_body(), "Options": {"com.docker.network.portmap": ports}}
    assert len(json.dumps(body)) > 1024**2 * 10
    assert await client.ok("NetworkDriver.CreateEndpoint", body) == {"Interface": {"MacAddress": "02:42:0a:01:00:02"}}


async def test_huge_bad_value_is_cut_in_the_reply_and_the_log(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    msg = await client.err("NetworkDriver.CreateNetwork", create_network_body(fail="x" * 100_000))
    assert len(msg) < MAX_MESSAGE + 100 and msg.endswith("more characters)")
    assert all(len(str(getattr(r, "error", ""))) < MAX_MESSAGE + 100 for r in caplog.records)


async def test_bad_requests_log_no_traceback_and_nothing_at_error_level(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await client.err("NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {"com.docker.network.generic": {"mode": [1]}}})
    await client.err("NetworkDriver.CreateNetwork", raw=b"{not json")
    await client.err("IpamDriver.RequestAddress", {"PoolID": "pynet-local:10.9.0.0/24"})
    assert caplog.records and all(r.levelno < logging.ERROR and r.exc_info is None for r in caplog.records)


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


async def claim_keys(client: Client) -> list[str]:
    return [kv.key for kv in await client.daemon.store.range("/pynet/hosts/h1/claims/")]


async def test_failed_create_leaves_nothing(client: Client) -> None:
    await client.err("NetworkDriver.CreateNetwork", create_network_body(fail="true"))
    assert await client.daemon.state.network(NET) is None
    assert client.backend.kernel == set()
    assert await claim_keys(client) == [], "the bridge name it claimed is free again"


async def test_a_network_holds_its_bridge_name_until_deleted(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    assert await claim_keys(client) == [f"/pynet/hosts/h1/claims/bridge/{bridge_name(NET)}"]
    await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert await claim_keys(client) == []


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


def portmap(
    host_port: int, port: int = 80, proto: int = 6, host_ip: str = LOOPBACK, end: int | None = None
) -> dict[str, Any]:
    return {
        "Proto": proto, "IP": "", "Port": port, "HostIP": host_ip,
        "HostPort": host_port, "HostPortEnd": host_port if end is None else end,
    }


async def test_program_and_revoke_external_connectivity(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    port = free_ports(1)
    body = {
        "NetworkID": NET,
        "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [portmap(port), portmap(0, 53, 17)]},
    }
    assert await client.ok("NetworkDriver.ProgramExternalConnectivity", body) == {}
    ep = await client.daemon.state.endpoint(EP)
    assert ep is not None
    tcp, udp = ep.ports
    assert (tcp.proto, tcp.host_ip, tcp.host_port, tcp.container_ip, tcp.container_port) == (
        "tcp",
        LOOPBACK,
        port,
        "10.1.0.2",
        80,
    )
    assert udp.proto == "udp" and 49153 <= udp.host_port <= 65535 and udp.container_port == 53
    assert ("program_external", EP) in client.backend.calls
    assert not bindable(port) and not bindable(udp.host_port, socket.SOCK_DGRAM), "both ports are held"
    assert await client.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP}) == {}
    ep = await client.daemon.state.endpoint(EP)
    assert ep is not None and ep.ports == []
    assert bindable(port) and bindable(udp.host_port, socket.SOCK_DGRAM), "revoked ports are free again"


async def test_host_port_in_use_fails_naming_it_and_holds_nothing(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    free = free_ports(2)
    busy = free + 1
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, busy))
        server.listen()
        opts = {"com.docker.network.portmap": [portmap(free), portmap(busy, 81)]}
        msg = await client.err(
            "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": opts}
        )
        assert f"host port {LOOPBACK}:{busy}/tcp is already in use" in msg, msg
        assert bindable(free), "the port bound before the failure is released"
        ep = await client.daemon.state.endpoint(EP)
        assert ep is not None and ep.ports == []
        assert ("revoke_external", EP) in client.backend.calls


async def test_range_publishes_its_first_free_port(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    first = free_ports(3)
    with socket.socket() as server:
        server.bind((LOOPBACK, first))
        server.listen()
        opts = {"com.docker.network.portmap": [portmap(first, end=first + 2)]}
        body = {"NetworkID": NET, "EndpointID": EP, "Options": opts}
        await client.ok("NetworkDriver.ProgramExternalConnectivity", body)
        ep = await client.daemon.state.endpoint(EP)
        assert ep is not None and [p.host_port for p in ep.ports] == [first + 1]
        # Docker retries after connection errors: the retry keeps the port it got.
        await client.ok("NetworkDriver.ProgramExternalConnectivity", body)
        ep = await client.daemon.state.endpoint(EP)
        assert ep is not None and [p.host_port for p in ep.ports] == [first + 1]
    await client.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert bindable(first + 1), "DeleteEndpoint releases the port"


async def test_host_port_taken_by_another_endpoint_is_refused(client: Client) -> None:
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    other = "f" * 64
    await client.ok("NetworkDriver.CreateEndpoint", {**endpoint_body("10.1.0.3/24"), "EndpointID": other})
    port = free_ports(1)
    opts = {"com.docker.network.portmap": [portmap(port)]}
    await client.ok("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": opts})
    msg = await client.err(
        "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": other, "Options": opts}
    )
    assert f"{port}/tcp" in msg


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


async def test_a_pool_an_earlier_pynet_left_unused_goes_to_the_retry(client: Client) -> None:
    """A crash after RequestPool's store write (the fault tier's request_pool.after_store): Docker
    never saw the PoolID, so the user's retry must get the pool. A reference of this very process,
    or one a network or an address holds, is still refused (two creates of one subnet)."""
    body = {"AddressSpace": "pynet-local", "Pool": "10.6.0.0/24", "SubPool": "", "Options": None, "V6": False}
    first = await client.ok("IpamDriver.RequestPool", body)
    assert (await client.call("IpamDriver.RequestPool", body))[0] == 409  # this process's own
    client.daemon.started = time.time() + 1  # as if pynet had restarted since
    assert await client.ok("IpamDriver.RequestPool", body) == first
    gw = {"PoolID": first["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    await client.ok("IpamDriver.RequestAddress", gw)
    client.daemon.started = time.time() + 2
    assert (await client.call("IpamDriver.RequestPool", body))[0] == 409  # it holds an address


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
