"""The operator's routes (/pynet/...) on a real Unix socket, and the CLI talking to them.

The daemon is the real one from `plugin.daemon.build` (store, IPAM, state, metrics); only the
backend, the kernel's link list and the firewall are doubles, so this tier needs no root. The
CLI runs in a thread (it has its own event loop) against the daemon served by the test's loop;
Docker is a small fake API on another Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from pynet.drivers.base import Network
from pynet.drivers.config import VxlanConfig
from pynet.drivers.netlink import Link
from pynet.plugin import cli
from pynet.plugin.api.app import MAX_BODY
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.metrics import Metrics
from pynet.plugin.ops import gc
from pynet.plugin.ops.access import Local
from pynet.plugin.ops.admin_api import ADMIN, Admin, SweepRequest
from pynet.plugin.ops.gc_command import LocalGc
from pynet.plugin.ops.iptables import Iptables, Rule
from pynet.plugin.serve import application, bind, build
from tests.api.test_app import RecordingBackend

NET = "a1" * 32
LIVE = "b2" * 32
DEAD = "c3" * 32
STALE_RULE = Rule(4, "filter", "-A PYNET-FORWARD -i pnb-0123456789a -o pnb-0123456789a -j ACCEPT")


class FakeNetlink:
    """The host's link names; enough for gc, which lists and deletes links by name."""

    def __init__(self) -> None:
        self.names = {"lo", "eth0"}

    async def links(self) -> list[Link]:
        return [Link(name, i, "", 1500, True, "", 0, 0) for i, name in enumerate(sorted(self.names), 1)]

    async def delete_link(self, name: str) -> bool:
        present = name in self.names
        self.names.discard(name)
        return present


class FakeIptables(Iptables):
    def __init__(self) -> None:
        super().__init__(lambda: "nft")
        self.rules: list[Rule] = []

    async def pynet_rules(self) -> list[Rule]:
        return list(self.rules)

    async def delete(self, rule: Rule) -> None:
        self.rules.remove(rule)


@dataclass
class Plugin:
    settings: Settings
    daemon: Daemon
    metrics: Metrics
    backend: RecordingBackend
    netlink: FakeNetlink
    iptables: FakeIptables

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.settings.socket)) as s:
            async with s.post("http://pynet" + path, data=data) as r:
                return r.status, await r.json(content_type=None)

    async def ok(self, path: str, body: Any = None) -> Any:
        status, reply = await self.post(path, body)
        assert status == 200, reply
        return reply

    def cli_args(self, *args: str) -> list[str]:
        return [*args, "--socket", self.settings.socket, "--state-dir", self.settings.state_dir, "--json"]


@pytest.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[Plugin]:
    settings = Settings(socket=str(tmp_path / "pynet.sock"), state_dir=str(tmp_path / "state"), host_id="h1")
    metrics = Metrics()
    d = build(settings, metrics)
    p = Plugin(settings, d, metrics, RecordingBackend(d.ports), FakeNetlink(), FakeIptables())
    d.backends = {"bridge": p.backend}  # type: ignore[dict-item]
    d.netlink = p.netlink  # type: ignore[assignment]
    d.ready.set()
    app = application(d, metrics)
    app[ADMIN] = Admin(time.monotonic(), p.iptables)
    runner = await bind(app, Path(settings.socket))
    yield p
    await runner.cleanup()
    await d.store.close()


async def add_endpoint(p: Plugin, endpoint_id: str, pool_id: str) -> str:
    """What Docker does for one container: an address, then the endpoint, then Join."""
    reply = await p.ok("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
    address = str(reply["Address"])
    body = {"NetworkID": NET, "EndpointID": endpoint_id, "Interface": {"Address": address}, "Options": {}}
    await p.ok("/NetworkDriver.CreateEndpoint", body)
    await p.ok("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": endpoint_id, "SandboxKey": "/x", "Options": {}})
    return address


async def populate(p: Plugin) -> None:
    """One network with a live container (LIVE) and one removed while pynet was down (DEAD):
    its veth is back in the host namespace and its record and address are still there."""
    pool = await p.ok("/IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": "10.1.0.0/24", "V6": False})
    gateway = {"RequestAddressType": "com.docker.network.gateway"}
    await p.ok("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": gateway})
    ipv4 = [{"AddressSpace": "pynet-local", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}]
    await p.ok("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {}, "IPv4Data": ipv4, "IPv6Data": []})
    assert await add_endpoint(p, LIVE, pool["PoolID"]) == "10.1.0.2/24"
    assert await add_endpoint(p, DEAD, pool["PoolID"]) == "10.1.0.3/24"
    p.netlink.names |= {"pnb-" + NET[:11], "pnh-" + LIVE[:11], "pnh-" + DEAD[:11], "pnc-" + DEAD[:11]}


DOCKER_VIEW = gc.DockerView(networks=[NET], endpoints=[LIVE], addresses=["10.1.0.2"], subnets=["10.1.0.0/24"])


# -- reports ----------------------------------------------------------------------------------


async def test_status_reports_the_daemon_store_and_counts(plugin: Plugin) -> None:
    await populate(plugin)
    st = await plugin.ok("/pynet/status")
    assert st["daemon"]["answers"] and st["daemon"]["ready"] and st["daemon"]["pid"] == os.getpid()
    assert st["host"] == "h1"
    assert st["store"] == {"kind": "embedded", "where": str(plugin.settings.store_path), "reachable": True, "error": ""}
    assert (st["networks"], st["endpoints"], st["vxlan_peers"]) == (1, 2, [])


async def test_status_lists_the_remote_vteps_of_this_hosts_vnis(plugin: Plugin) -> None:
    d = plugin.daemon
    await d.state.save_network(Network("v" * 64, "vxlan", {}, VxlanConfig(bridge="pno-42", device="pnx-42", vni=42, peers=("192.0.2.9",))))
    for vni, host, address in ((42, "h2", "10.99.0.2"), (42, "h1", "10.99.0.1"), (7, "h3", "10.99.0.3")):
        await d.store.put(f"/pynet/vxlan/{vni}/vteps/{host}", json.dumps({"address": address, "port": 4789}).encode())
    peers = (await plugin.ok("/pynet/status"))["vxlan_peers"]
    assert peers == [{"vni": 42, "host": "h2", "vtep": "10.99.0.2"}, {"vni": 42, "host": "", "vtep": "192.0.2.9"}]


async def test_networks_endpoints_and_ipam(plugin: Plugin) -> None:
    await populate(plugin)
    [net] = await plugin.ok("/pynet/networks")
    assert (net["id"], net["mode"], net["subnets"], net["gateways"], net["endpoints"]) == (
        NET, "bridge", ["10.1.0.0/24"], ["10.1.0.1/24"], 2,
    )
    eps = {e["id"]: e for e in await plugin.ok("/pynet/endpoints")}
    assert eps[LIVE]["addresses"] == ["10.1.0.2/24"] and eps[LIVE]["link"] == "pnc-" + LIVE[:11]
    assert eps[LIVE]["joined"] and eps[LIVE]["network"] == NET
    assert await plugin.ok("/pynet/ipam") == [
        {"subnet": "10.1.0.0/24", "hosts": ["h1"], "allocated": 3, "total": 254, "gateway": "10.1.0.1"}
    ]


# -- gc ---------------------------------------------------------------------------------------


async def test_gc_removes_what_is_still_a_leak_through_the_daemons_own_paths(plugin: Plugin) -> None:
    await populate(plugin)
    plugin.iptables.rules = [STALE_RULE]
    inventory = msgspec.convert(await plugin.ok("/pynet/gc/inventory"), gc.Inventory)
    leaks = gc.find(inventory, DOCKER_VIEW, time.time(), min_age=0)
    assert {x.key for x in leaks} == {
        ("endpoint", DEAD), ("link", "pnh-" + DEAD[:11]), ("link", "pnc-" + DEAD[:11]),
        ("allocation", "10.1.0.3"), ("rule", STALE_RULE.line),
    }
    not_a_leak = gc.Leak("link", "pnh-" + LIVE[:11], "made up")
    request = msgspec.to_builtins(SweepRequest([*leaks, not_a_leak], DOCKER_VIEW, 0))
    replies = await plugin.ok("/pynet/gc/sweep", request)
    outcomes = {(o["leak"]["kind"], o["leak"]["name"]): o["result"] for o in replies}
    assert outcomes == {**{x.key: "removed" for x in leaks}, not_a_leak.key: "vanished"}
    # The endpoint went through DeleteEndpoint's path (backend, then record), as Docker's would.
    assert ("delete_endpoint", DEAD) in plugin.backend.calls
    assert await plugin.daemon.state.endpoint(DEAD) is None
    assert {a.address for a in await plugin.daemon.ipam.allocations()} == {"10.1.0.1", "10.1.0.2"}
    assert "pnh-" + LIVE[:11] in plugin.netlink.names and "pnc-" + DEAD[:11] not in plugin.netlink.names
    assert plugin.iptables.rules == []
    again = msgspec.convert(await plugin.ok("/pynet/gc/inventory"), gc.Inventory)
    assert gc.find(again, DOCKER_VIEW, time.time(), min_age=0) == []


async def test_gc_is_refused_before_start_up_completes(plugin: Plugin) -> None:
    plugin.daemon.ready.clear()
    status, reply = await plugin.post("/pynet/gc/inventory")
    assert status == 503 and "starting" in reply["Err"]
    assert (await plugin.ok("/pynet/status"))["daemon"]["ready"] is False


async def test_a_bad_admin_request_is_a_400_naming_the_route(plugin: Plugin) -> None:
    status, reply = await plugin.post("/pynet/gc/sweep", {"leaks": "no"})
    assert status == 400 and "gc/sweep" in reply["Err"] and reply["Err"] == reply["Error"]


async def test_an_admin_body_over_the_limit_is_a_json_413(plugin: Plugin) -> None:
    # It was read inside the route's catch-all, which made aiohttp's 413 a logged 500.
    status, reply = await plugin.post("/pynet/gc/sweep", {"leaks": ["x" * MAX_BODY]})
    assert status == 413 and "pynet/gc/sweep" in reply["Err"] and reply["Err"] == reply["Error"]


async def test_a_failing_admin_route_is_a_500_and_logged_with_its_name(
    plugin: Plugin, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> list[Link]:
        raise RuntimeError("netlink socket closed")

    monkeypatch.setattr(plugin.netlink, "links", broken)
    status, reply = await plugin.post("/pynet/gc/inventory")
    assert status == 500 and reply["Err"] == "pynet: internal error in gc/inventory: netlink socket closed"
    logged = [r for r in caplog.records if r.name == "pynet.admin"]
    assert [(r.levelname, getattr(r, "route", ""), r.exc_info is not None) for r in logged] == [
        ("ERROR", "gc/inventory", True)
    ]


# -- the CLI against the daemon ---------------------------------------------------------------


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """(exit status, parsed --json output, stderr)."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def fake_docker(known_endpoints: list[str]) -> web.Application:
    network = {
        "Id": NET, "Name": "pn", "Driver": "pynet",
        "IPAM": {"Driver": "pynet", "Config": [{"Subnet": "10.1.0.0/24"}]},
        "Containers": {"c1": {"EndpointID": LIVE, "IPv4Address": "10.1.0.2/24", "IPv6Address": ""}},
    }
    attached = {f"n{i}": {"NetworkID": NET, "EndpointID": e, "IPAddress": ""} for i, e in enumerate(known_endpoints)}
    container = {"Id": "c1", "NetworkSettings": {"Networks": attached}}

    async def networks(_: web.Request) -> web.Response:
        bridge = {"Id": "d" * 64, "Name": "bridge", "Driver": "bridge"}
        return web.json_response([{**network, "Containers": {}}, bridge])

    async def inspect(request: web.Request) -> web.Response:
        return web.json_response(network) if request.match_info["id"] == NET else web.json_response({}, status=404)

    async def containers(_: web.Request) -> web.Response:
        return web.json_response([container])

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "MinAPIVersion": "1.12"})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/networks", networks)
    app.router.add_get("/v1.41/networks/{id}", inspect)
    app.router.add_get("/v1.41/containers/json", containers)
    return app


@pytest.fixture
async def docker_host(tmp_path: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(fake_docker([LIVE]))
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "docker.sock")).start()
    yield f"unix://{tmp_path / 'docker.sock'}"
    await runner.cleanup()


async def test_cli_status_and_reports_come_from_the_daemon(plugin: Plugin, capsys: pytest.CaptureFixture[str]) -> None:
    await populate(plugin)
    code, st, err = await run_cli(capsys, *plugin.cli_args("status"))
    assert code == 0 and st["daemon"]["answers"] and st["endpoints"] == 2, err
    code, eps, _ = await run_cli(capsys, *plugin.cli_args("endpoints"))
    assert code == 0 and {e["id"] for e in eps} == {LIVE, DEAD}


async def test_cli_reads_the_store_when_the_daemon_is_down(
    plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(plugin)
    args = ["--socket", str(tmp_path / "nobody.sock"), "--state-dir", plugin.settings.state_dir, "--json"]
    code, pools, err = await run_cli(capsys, "ipam", *args)
    assert code == 0 and "reading the store directly" in err
    assert pools[0]["allocated"] == 3
    code, st, _ = await run_cli(capsys, "status", *args)
    assert code == 1, "a daemon that is down is something wrong"
    assert not st["daemon"]["answers"] and "not running" in st["daemon"]["error"]
    assert st["store"]["reachable"] and st["networks"] == 1 and st["host"] == "h1"


async def test_cli_reports_a_stale_socket(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening, not removed: what a killed daemon leaves
    args = ["--socket", str(stale), "--state-dir", plugin.settings.state_dir, "--json"]
    code, st, _ = await run_cli(capsys, "status", *args)
    assert code == 1 and "stale socket" in st["daemon"]["error"]


async def test_cli_gc_lists_removes_and_then_finds_nothing(
    plugin: Plugin, docker_host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(plugin)
    gc_args = plugin.cli_args("gc", "--docker-host", docker_host, "--min-age", "0")
    code, report, _ = await run_cli(capsys, *gc_args, "--dry-run")
    assert code == 1 and report["source"] == "daemon" and report["outcomes"] == []
    assert {(x["kind"], x["name"]) for x in report["leaks"]} == {
        ("endpoint", DEAD), ("link", "pnh-" + DEAD[:11]), ("link", "pnc-" + DEAD[:11]), ("allocation", "10.1.0.3"),
    }
    assert await plugin.daemon.state.endpoint(DEAD) is not None, "a dry run removes nothing"
    code, report, _ = await run_cli(capsys, *gc_args)
    assert code == 0 and {o["result"] for o in report["outcomes"]} == {"removed"}
    code, report, _ = await run_cli(capsys, *gc_args, "--dry-run")
    assert code == 0 and report["leaks"] == []


async def test_cli_gc_without_docker_removes_nothing_and_says_why(
    plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(plugin)
    plugin.iptables.rules = [STALE_RULE]
    nowhere = f"unix://{tmp_path / 'no-docker.sock'}"
    code, report, _ = await run_cli(capsys, *plugin.cli_args("gc", "--docker-host", nowhere, "--min-age", "0"))
    assert code == 1 and "no-docker.sock" in report["docker_error"] and report["outcomes"] == []
    assert [x["kind"] for x in report["leaks"]] == ["rule"], "records and addresses need Docker's word"
    assert plugin.iptables.rules == [STALE_RULE]


async def test_cli_gc_works_on_the_store_when_the_daemon_is_down(
    plugin: Plugin, tmp_path: Path, docker_host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the daemon the CLI lists the kernel itself: here the test's own namespace, where
    none of the made-up links exist, so only the record and its address are leaks."""
    await populate(plugin)
    args = ["--socket", str(tmp_path / "nobody.sock"), "--state-dir", plugin.settings.state_dir, "--json"]
    args += ["--docker-host", docker_host, "--min-age", "0"]
    code, report, err = await run_cli(capsys, "gc", "--dry-run", *args)
    assert report["source"] == "store" and "directly" in err
    found = {(x["kind"], x["name"]) for x in report["leaks"] if x["kind"] != "rule"}
    assert {("endpoint", DEAD), ("allocation", "10.1.0.3")} <= found
    assert not {name for kind, name in found if kind == "endpoint"} - {DEAD}


async def test_gc_with_the_daemon_down_forgets_a_network_docker_removed(plugin: Plugin) -> None:
    """`pynet gc` on the store and the kernel alone (LocalGc): the record, its claims, its pool
    and gateway address go, and the bridge, now referenced by nothing, in the same sweep."""
    d = plugin.daemon
    request = {"AddressSpace": "pynet-local", "Pool": "10.1.0.0/24", "V6": False}
    pool = await plugin.ok("/IpamDriver.RequestPool", request)
    gateway = {"RequestAddressType": "com.docker.network.gateway"}
    await plugin.ok("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": gateway})
    ipv4 = [{"AddressSpace": "pynet-local", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}]
    await plugin.ok("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {}, "IPv4Data": ipv4, "IPv6Data": []})
    plugin.netlink.names.add("pnb-" + NET[:11])
    source = LocalGc(Local("h1", d.store, d.state, d.ipam), plugin.netlink, plugin.iptables, "/pynet/")  # type: ignore[arg-type]
    docker_forgot_it = gc.DockerView(networks=[], endpoints=[], addresses=[], subnets=[])
    leaks = gc.find(await source.inventory(), docker_forgot_it, time.time(), min_age=0)
    assert {x.key for x in leaks} == {
        ("network", NET), ("link", "pnb-" + NET[:11]), ("pool", "pynet-local:10.1.0.0/24"), ("allocation", "10.1.0.1"),
    }
    outcomes = {o.leak.key: o.result for o in await source.sweep(leaks, docker_forgot_it, 0)}
    assert set(outcomes.values()) <= {"removed", "vanished"}, outcomes
    assert await d.state.network(NET) is None and await d.store.range("/pynet/hosts/h1/claims/") == []
    assert await d.ipam.references() == [] and await d.ipam.allocations() == []
    assert "pnb-" + NET[:11] not in plugin.netlink.names
    assert gc.find(await source.inventory(), docker_forgot_it, time.time(), min_age=0) == []
