"""The retry of networks that reconcile could not restore at start (issue 10, item 1).

A VXLAN network whose VTEP address is gone (a late NIC, a DHCP renumbering), or a macvlan one
whose parent is not plugged in yet, must not keep the host's other networks down, nor stay
down once what it lacks is back. Its rounds run under the daemon's supervisor: a round raises
while a network still fails, so the supervisor's backoff (0.5 s doubling to 30 s) paces them,
logs each, and `pynet status` shows the task.
"""

from __future__ import annotations

import asyncio
import logging

from pynet.drivers.base import Network, restore_each
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.daemon.supervisor import TaskState
from pynet.store.errors import PynetError

log = logging.getLogger("pynet.restore")

TASK = "restore-networks"


def start(d: Daemon) -> None:
    """After reconcile, when a network failed: its task says so before its first round."""
    task = d.supervisor.start(TASK, lambda task: restore_failing(d, task))
    _report(d, task)


def _report(d: Daemon, task: TaskState) -> None:
    task.detail = {"failing": ",".join(sorted(i[:12] for i in d.failing)) or "-"}
    if d.failing:
        causes = "; ".join(f"{i[:12]}: {why.removeprefix('pynet: ')}" for i, why in sorted(d.failing.items()))
        task.last_error = f"networks not restored: {causes}"


async def restore_failing(d: Daemon, task: TaskState) -> None:
    records = [await d.state.network(net_id) for net_id in list(d.failing)]

    async def restore(net: Network) -> None:
        async with d.lock(net.id):  # read again under it: Docker may have deleted it meanwhile
            current = await d.state.network(net.id)
            if current is not None:
                await d.backend(current.mode).restore(current, await d.state.endpoints(net.id))

    before = set(d.failing)
    d.failing = await restore_each([n for n in records if n is not None], restore)
    for net_id in sorted(before - set(d.failing)):
        log.info("network restored", extra={"network": net_id})
    _report(d, task)
    if d.failing:
        raise PynetError(task.last_error)
    await asyncio.Event().wait()  # every network is back: nothing is retried until the next start
