"""The VXLAN peer sync (drivers/peers.py) against a real VXLAN device in a private netns.

The sync runs in a child process inside the namespace (pyroute2 talks to the namespace it
runs in), with an embedded store; the test reads the result back with `bridge`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

N = 300
# Registers N endpoints of another host as N store events (a host that starts re-registers
# every endpoint it has), waits until all are programmed, and prints how many FDB dumps the
# sync made: the dump and diff of a whole device is what each programming costs.
CHILD = """
import asyncio, json, sys
from pynet.drivers import peers
from pynet.drivers.netlink import Forwarding, Netlink
from pynet.store.embedded import EmbeddedStore

async def main(db: str, n: int) -> None:
    nl = Netlink()
    await nl.open()
    store = EmbeddedStore(db)
    sync = peers.Sync(store, "/pynet/", "h1", nl)
    dumps = 0
    real = Forwarding.fdb

    async def counted(self):
        nonlocal dumps
        dumps += 1
        return await real(self)

    Forwarding.fdb = counted
    await sync.attach(5, "pnx-5", ())
    task = asyncio.create_task(sync.run_forever())
    await sync.synced.wait()
    before = dumps
    await store.put(peers.vtep_key("/pynet/", 5, "h2"), json.dumps({"address": "10.77.0.2", "port": 4789}).encode())
    for i in range(n):
        value = {"host": "h2", "vtep": "10.77.0.2", "mac": f"02:42:0a:4d:{i >> 8:02x}:{i & 255:02x}",
                 "ips": [f"10.78.{i >> 8}.{i & 255}"], "time": 0.0}
        await store.put(peers.endpoint_key("/pynet/", 5, f"ep{i}"), json.dumps(value).encode())
    fwd = Forwarding(nl, (await nl.link("pnx-5")).index)
    while len(await real(fwd)) < n + 1 or len(await fwd.neighbours()) < n:
        await asyncio.sleep(0.05)
    task.cancel()
    print(json.dumps({"dumps": dumps - before, "entries": len(await real(fwd))}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pnt-peers-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "pnx-5", "type", "vxlan", "id", "5", "dstport", "4789", "nolearning")
        sh("ip", "-n", name, "link", "set", "pnx-5", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_burst_of_remote_endpoints_is_programmed_in_a_few_passes(netns: str, tmp_path: Path) -> None:
    """300 registrations, each its own event: before, one dump and diff of the whole device
    per event (O(N^2) for a host's start-up); now the events that arrive while one pass runs
    share the next."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, str(tmp_path / "store.sqlite"), str(N)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["entries"] == N + 1  # every endpoint's MAC, plus the VTEP's all-zero entry
    assert got["dumps"] <= 3, got
    neigh = sh("ip", "-n", netns, "neigh", "show", "dev", "pnx-5").stdout.splitlines()
    assert len(neigh) == N
