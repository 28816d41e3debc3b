"""Requests for a network start-up could not restore, and its retry (plugin/daemon/restore.py),
on the api tier's app and real store; the kernel side is tests/kernel/test_startup.py."""

from __future__ import annotations

import asyncio

import pytest

from pynet.drivers.base import Endpoint, Network
from pynet.drivers.ports import HostPorts
from pynet.plugin.daemon.restore import restore_failing
from pynet.plugin.daemon.supervisor import TaskState
from pynet.store.errors import PynetError
from tests.api.test_app import NET, Client, RecordingBackend, client, create_network_body, endpoint_body  # noqa: F401

CAUSE = "pynet: the underlay 192.0.2.77 of VNI 4343 is not on this host"


class Restorable(RecordingBackend):
    """Restores once `back` is set."""

    def __init__(self, ports: HostPorts) -> None:
        super().__init__(ports)
        self.back = False

    async def restore(self, net: Network, eps: list[Endpoint]) -> None:
        self.calls.append(("restore", net.id))
        if not self.back:
            raise PynetError(CAUSE)


async def test_a_failing_network_refuses_naming_itself_until_its_retry_succeeds(client: Client) -> None:
    backend = Restorable(client.daemon.ports)
    client.daemon.backends["bridge"] = backend  # type: ignore[assignment]
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    client.daemon.failing = {NET: CAUSE}

    err = await client.err("NetworkDriver.CreateEndpoint", endpoint_body())
    assert err == f"pynet: network {NET[:12]} is down since pynet started: {CAUSE[7:]} (retrying)"
    task = TaskState("restore-networks")
    with pytest.raises(PynetError, match=f"networks not restored: {NET[:12]}: the underlay 192.0.2.77"):
        await restore_failing(client.daemon, task)
    assert task.detail == {"failing": NET[:12]}

    backend.back = True
    retry = asyncio.create_task(restore_failing(client.daemon, task))
    try:
        while client.daemon.failing:
            await asyncio.sleep(0.01)
        assert task.detail == {"failing": "-"}
        await client.ok("NetworkDriver.CreateEndpoint", endpoint_body())
    finally:
        retry.cancel()


async def test_a_failing_network_can_be_deleted_and_is_not_retried_then(client: Client) -> None:
    backend = Restorable(client.daemon.ports)
    client.daemon.backends["bridge"] = backend  # type: ignore[assignment]
    await client.ok("NetworkDriver.CreateNetwork", create_network_body())
    client.daemon.failing = {NET: CAUSE}
    await client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    retry = asyncio.create_task(restore_failing(client.daemon, TaskState("restore-networks")))
    try:
        while client.daemon.failing:
            await asyncio.sleep(0.01)
    finally:
        retry.cancel()
    assert ("restore", NET) not in backend.calls
