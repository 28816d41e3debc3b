"""The Engine API client against a real dockerd of each release: version negotiation, networks,
containers, the event stream, and dockerd going away and coming back. Networks use Docker's own
bridge driver on 10.x subnets inside the host's namespace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from lab import Host
from pynet.plugin.engine import (
    Engine,
    EngineUnavailable,
    Event,
    Ipam,
    IpamConfig,
    NetworkExists,
    NetworkInUse,
    NetworkSpec,
)
from tests.dockercli import Docker

# The newest API version each release speaks, which is also pynet's pick (pynet knows up to 1.51).
EXPECTED_API = {"20.10": "1.41", "26.1": "1.45", "28.5": "1.51"}


@pytest.fixture
async def engine(host: Host) -> AsyncIterator[Engine]:
    async with Engine(host.docker_host) as e:
        yield e


def spec(docker: Docker, base: str, subnet: str) -> NetworkSpec:
    name = docker.name(base)
    docker.networks.append(name)  # removed after the test by the CLI, whatever happens here
    ipam = Ipam(Config=[IpamConfig(Subnet=subnet, Gateway=subnet.replace("0/24", "1"), IPRange=subnet)])
    options = {"com.docker.network.bridge.enable_icc": "true"}
    return NetworkSpec(Name=name, Labels={"pynet.test": "1"}, Options=options, IPAM=ipam)


async def test_negotiates_the_newest_common_version(engine: Engine, host: Host) -> None:
    version = await engine.version()
    assert engine.api_version == ""  # /version is unversioned and negotiates nothing by itself
    await engine.networks()
    assert engine.api_version == EXPECTED_API[host.lab.docker.name] == version.ApiVersion


async def test_create_inspect_delete_a_network(engine: Engine, docker: Docker) -> None:
    s = spec(docker, "eng", "10.231.1.0/24")
    network_id = await engine.create_network(s)
    n = await engine.network(s.Name)
    assert (n.Id, n.Name, n.Driver, n.Scope) == (network_id, s.Name, "bridge", "local")
    assert (n.Internal, n.EnableIPv6) == (False, False)
    assert (n.Labels, n.Options) == (s.Labels, s.Options)
    config = n.IPAM.Config[0]
    assert (config.Subnet, config.Gateway, config.IPRange) == ("10.231.1.0/24", "10.231.1.1", "10.231.1.0/24")
    assert network_id in {x.Id for x in await engine.networks()}
    await engine.delete_network(network_id)
    await engine.delete_network(network_id)  # already gone: fine
    assert s.Name not in {x.Name for x in await engine.networks()}


async def test_a_taken_name_is_network_exists(engine: Engine, docker: Docker) -> None:
    s = spec(docker, "dup", "10.231.2.0/24")
    await engine.create_network(s)
    with pytest.raises(NetworkExists, match="409"):
        await engine.create_network(NetworkSpec(Name=s.Name))
    assert [x.Name for x in await engine.networks()].count(s.Name) == 1


async def test_a_network_in_use_is_network_in_use_and_its_container_inspects(engine: Engine, docker: Docker) -> None:
    s = spec(docker, "busy", "10.231.3.0/24")
    network_id = await engine.create_network(s)
    name = await asyncio.to_thread(docker.run, "c", "--network", s.Name, "--network-alias", "al1")
    with pytest.raises(NetworkInUse, match="active endpoints"):
        await engine.delete_network(s.Name)

    c = await engine.container(name)
    e = c.NetworkSettings.Networks[s.Name]
    assert (c.Name, c.State.Running, c.Config.Hostname) == (name, True, c.Id[:12])
    assert (e.NetworkID, e.IPAddress, e.GlobalIPv6Address) == (network_id, "10.231.3.2", "")
    assert e.Aliases == ["al1"]  # without the short ID, whatever the release
    assert set(e.DNSNames) == {name, "al1", c.Id[:12]}
    endpoint = (await engine.network(network_id)).Containers[c.Id]
    assert (endpoint.Name, endpoint.EndpointID, endpoint.IPv4Address) == (name, e.EndpointID, "10.231.3.2/24")
    listed = {x.Id: x for x in await engine.containers()}[c.Id]
    assert (listed.Names, listed.State) == ([f"/{name}"], "running")
    assert listed.NetworkSettings.Networks[s.Name].EndpointID == e.EndpointID


async def test_events_see_a_network_create_and_a_container_start(engine: Engine, docker: Docker) -> None:
    since = time.time()  # replayed from here, so nothing is missed while the stream opens
    net, container = docker.name("ev"), docker.name("evc")
    seen: list[Event] = []

    async def follow() -> None:
        filters = {"type": ["network", "container"], "event": ["create", "start"]}
        async for event in engine.events(filters, since=since):
            seen.append(event)
            if (event.Type, event.Action, event.Actor.Attributes.get("name")) == ("container", "start", container):
                return

    task = asyncio.create_task(follow())
    await asyncio.to_thread(docker.network, "ev", "--subnet", "10.231.4.0/24")
    await asyncio.to_thread(docker.run, "evc", "--network", net)
    await asyncio.wait_for(task, 30)
    wanted = {("network", "create"), ("container", "create"), ("container", "start")}
    assert {(e.Type, e.Action) for e in seen} <= wanted, "the filters hold"
    created = [e for e in seen if e.Type == "network" and e.Actor.Attributes["name"] == net]
    assert [(e.Action, e.Actor.Attributes["type"]) for e in created] == [("create", "bridge")], seen
    assert created[0].Actor.ID == (await engine.network(net)).Id


async def test_dockerd_stopped_then_back(engine: Engine, host: Host) -> None:
    """Last in the module: it restarts the host's dockerd."""
    await engine.networks()
    events = engine.events({"type": ["network"]})
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.5)  # the stream is open
    await asyncio.to_thread(host.stop_dockerd)
    try:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 10)  # the stream ends when dockerd goes
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="socket does not exist|nothing listens"):
            await engine.networks()
        assert time.monotonic() - started < 1
        assert engine.api_version == ""
    finally:
        await asyncio.to_thread(host.restart_dockerd)
    assert isinstance(await engine.networks(), list)
    assert engine.api_version == EXPECTED_API[host.lab.docker.name]  # negotiated again
