"""pynet's VXLAN backend against Docker's swarm overlay driver, across two lab hosts, one run.

Host 1 inits a swarm and host 2 joins it; the overlay network is `--attachable`, so plain
`docker run` attaches to it, and is created once on the manager (swarm scope: host 2 learns it
when a container there attaches). pynet's network is created on each host with the same VNI
and subnet, as users do. Docker's VXLAN traffic goes to UDP 4790 (`--data-path-port`) and
pynet's to its default 4789, so the two data paths stay apart; the kernel would in fact let
both share one port, as it demultiplexes a port's VXLAN devices by VNI (overlay's start at
4096). Docker-level figures alternate pynet and overlay so drift on this shared 2-core machine
hits both alike.

Two figures are pynet's alone, taken on its socket: convergence (CreateEndpoint sent on host 1
to the FDB entry for the endpoint's MAC appearing on host 2's VXLAN device, seen by `bridge
monitor fdb` running in host 2) and the IPAM allocation rate with both hosts allocating from
one pool in the shared etcd at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from bench.common import PluginClient, Row, cross_host_rows, percentile, print_table
from lab import PLUGIN_SOCKET, Host, Lab
from lab.releases import MACHINE, fetch
from pynet.drivers.naming import VXLAN_DEVICE_PREFIX as DEVICE_PREFIX
from pynet.ipam import LOCAL_SPACE, PoolId

VNI = 80
PYNET_SUBNET = "10.80.0.0/24"
OVERLAY_SUBNET = "10.81.0.0/24"
IPAM_SUBNET = "10.82.0.0/16"
DATA_PATH_PORT = 4790  # Docker's VXLAN port; pynet keeps its default, 4789
FDB_TIMEOUT = 10.0  # seconds: an entry not seen by then counts as never converged
IN_FLIGHT = 4  # concurrent RequestAddress calls per host, as parallel `docker run`s make
RUN_TIME_TARGET = 0.5  # pynet's `docker run` time at most this much of the overlay's
THROUGHPUT_TARGET = 1.0  # pynet's TCP throughput at least this much of the overlay's
CONVERGENCE_TARGET_MS = 1000.0  # p99


def pool_id(subnet: str) -> str:
    """The PoolID pynet handed dockerd for `--ipam-driver pynet --subnet SUBNET`."""
    return str(PoolId(LOCAL_SPACE, ipaddress.ip_network(subnet)))


def start_swarm(lab: Lab) -> None:
    manager, worker = lab.hosts
    manager.docker("swarm", "init", "--advertise-addr", manager.address, "--data-path-port", str(DATA_PATH_PORT))
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377")


def create_networks(lab: Lab) -> dict[str, str]:
    """pynet's network on every host, the overlay on the manager: the name per driver."""
    for host in lab.hosts:
        host.docker(
            "network", "create", "-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan", "-o", f"vni={VNI}",
            "--subnet", PYNET_SUBNET, "pv",
        )
    lab.hosts[0].docker("network", "create", "-d", "overlay", "--attachable", "--subnet", OVERLAY_SUBNET, "ov")
    return {"pynet": "pv", "docker": "ov"}


class FdbWatch:
    """`bridge monitor fdb` in a host: when each MAC got an entry on the VXLAN device."""

    ADDED = re.compile(rf"^([0-9a-f:]{{17}}) dev {DEVICE_PREFIX}{VNI} dst ")

    def __init__(self, host: Host) -> None:
        self.host = host
        self._arrivals: dict[str, asyncio.Future[float]] = {}

    def arrival(self, mac: str) -> asyncio.Future[float]:
        """Resolves to the perf_counter time the entry appeared (maybe already has)."""
        return self._arrivals.setdefault(mac.lower(), asyncio.get_running_loop().create_future())

    async def __aenter__(self) -> FdbWatch:
        argv = self.host.command("bridge", "monitor", "fdb")
        self.proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            now = time.perf_counter()
            added = self.ADDED.match(line.decode(errors="replace"))
            if added and not (seen := self.arrival(added[1])).done():
                seen.set_result(now)

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        self.proc.terminate()
        await self.proc.wait()


async def convergence(a: Host, b: Host, network_id: str, n: int) -> tuple[list[float], list[float]]:
    """For n endpoints created one at a time on A's socket (RequestAddress + CreateEndpoint,
    as dockerd does): ms from sending CreateEndpoint to B's FDB entry for its MAC, and ms to
    CreateEndpoint's reply. A first endpoint, not counted, proves the monitor is listening.
    An entry never seen counts as infinite."""
    pool = pool_id(PYNET_SUBNET)
    fdb: list[float] = []
    replies: list[float] = []
    made: list[tuple[dict[str, str], str]] = []
    async with PluginClient(str(a.inside(PLUGIN_SOCKET))) as api, FdbWatch(b) as watch:
        try:
            for i in range(n + 1):
                addr = (await api.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": None}))["Address"]
                ids = {"NetworkID": network_id, "EndpointID": secrets.token_hex(32)}
                made.append((ids, addr))
                sent = time.perf_counter()
                reply = await api.call("NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": addr}, "Options": {}})
                replied = time.perf_counter()
                try:
                    seen = await asyncio.wait_for(asyncio.shield(watch.arrival(reply["Interface"]["MacAddress"])), FDB_TIMEOUT)
                except asyncio.TimeoutError:
                    if not i:
                        raise RuntimeError(f"{b.name} never got an FDB entry for the first endpoint") from None
                    seen = float("inf")
                if i:
                    fdb.append((seen - sent) * 1000)
                    replies.append((replied - sent) * 1000)
        finally:
            for ids, addr in made:
                await api.call("NetworkDriver.DeleteEndpoint", ids)
                await api.call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": addr.split("/")[0]})
    return fdb, replies


@dataclass
class Allocations:
    """What allocation_rate saw: successes (with their completion times) and refusals."""

    elapsed: float  # seconds, from the first request to the last reply
    done: list[float]  # seconds after the start at which each allocation completed
    addresses: list[str]
    refused: list[str]  # error messages

    def rate(self, first: bool) -> float:
        """Allocations/s over the first (or the last) tenth of them: how the rate moves as the
        pool fills."""
        times = sorted(self.done)
        if not times:
            return 0.0
        k = max(1, len(times) // 10)
        span = times[k - 1] if first else self.elapsed - (times[-k - 1] if len(times) > k else 0.0)
        return k / span


async def allocation_rate(hosts: list[Host], n: int) -> Allocations:
    """Every host makes n RequestAddress calls, IN_FLIGHT at a time, all hosts at once, from
    one pool. A refusal (pynet gives up after too many lost races) is recorded, not raised.
    Everything allocated is released afterwards."""
    pool = pool_id(IPAM_SUBNET)
    result = Allocations(0.0, [], [], [])
    async with AsyncExitStack() as stack:
        apis = [await stack.enter_async_context(PluginClient(str(h.inside(PLUGIN_SOCKET)))) for h in hosts]

        async def stream(api: PluginClient, count: int) -> list[str]:
            got = []
            for _ in range(count):
                try:
                    got.append((await api.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": None}))["Address"])
                    result.done.append(time.perf_counter() - start)
                except RuntimeError as e:
                    result.refused.append(str(e))
            return got

        async def release(api: PluginClient, addresses: list[str]) -> None:
            for addr in addresses:
                await api.call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": addr.split("/")[0]})

        shares = [n // IN_FLIGHT + (k < n % IN_FLIGHT) for k in range(IN_FLIGHT)]
        jobs = [(api, share) for api in apis for share in shares]
        start = time.perf_counter()
        results = await asyncio.gather(*(stream(api, share) for api, share in jobs))
        result.elapsed = time.perf_counter() - start
        await asyncio.gather(*(release(api, addrs) for (api, _), addrs in zip(jobs, results)))
    result.addresses = [addr for addrs in results for addr in addrs]
    return result


def verdicts(run_time: Row, throughput: Row, p99: float) -> list[str]:
    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    return [
        f"{run_time.metric}: pynet/overlay {run_time.ratio:.3f}, target <= {RUN_TIME_TARGET}: "
        + verdict(run_time.ratio <= RUN_TIME_TARGET),
        f"{throughput.metric}: pynet/overlay {throughput.ratio:.3f}, target >= {THROUGHPUT_TARGET}: "
        + verdict(throughput.ratio >= THROUGHPUT_TARGET),
        f"convergence p99: {p99:.1f} ms, target < {CONVERGENCE_TARGET_MS:.0f} ms: " + verdict(p99 < CONVERGENCE_TARGET_MS),
    ]


def print_pynet_alone(fdb: list[float], replies: list[float], allocs: Allocations, n_alloc: int, hosts: int) -> None:
    print(f"\npynet alone (etcd store), n={len(fdb)} endpoints created on host 1")
    print(f"{'metric':<44}{'p50':>10}{'p99':>10}  unit")
    print(f"{'CreateEndpoint reply (host 1)':<44}{percentile(replies, 50):>10.1f}{percentile(replies, 99):>10.1f}  ms")
    print(f"{'convergence: FDB entry on host 2':<44}{percentile(fdb, 50):>10.1f}{percentile(fdb, 99):>10.1f}  ms")
    seen = [ms for ms in fdb if ms != float("inf")]
    print(f"  (mean {statistics.mean(seen) if seen else float('nan'):.1f} ms, never seen: {len(fdb) - len(seen)})")
    handed, distinct = len(allocs.addresses), len(set(allocs.addresses))
    print(
        f"\nIPAM: {n_alloc} RequestAddress on each of {hosts} hosts at once ({IN_FLIGHT} in flight each), one pool\n"
        f"  {handed / allocs.elapsed:.0f} allocations/s in all (first tenth {allocs.rate(True):.0f}/s, "
        f"last tenth {allocs.rate(False):.0f}/s); {distinct} distinct of {handed}"
        + ("" if distinct == handed else "  ** DUPLICATES **")
        + f"; refused: {len(allocs.refused)}"
    )
    for message in sorted(set(allocs.refused)):
        print(f"  refused {allocs.refused.count(message)}x: {message}")


def main(quick: bool = False, lab_name: str | None = None, docker: str = MACHINE.name) -> None:
    n_run, n_iperf, secs, n_ping, count, n_conv, n_alloc = (5, 1, 2, 1, 5, 20, 100) if quick else (20, 3, 5, 5, 20, 100, 1000)
    with Lab(name=lab_name or "pnbenchvx", docker=fetch(docker), hosts=2, etcd=True) as lab:
        h1, h2 = lab.hosts
        start_swarm(lab)
        networks = create_networks(lab)
        rows = cross_host_rows(lab, networks, n_run, n_iperf, secs, n_ping, count)
        print_table("vxlan: pynet vs Docker's swarm overlay driver (2 lab hosts, same run)", rows)

        network_id = h1.docker("network", "inspect", "-f", "{{.Id}}", networks["pynet"]).stdout.strip()
        fdb, replies = asyncio.run(convergence(h1, h2, network_id, n_conv))
        for host in lab.hosts:
            host.docker("network", "create", "-d", "pynet", "--ipam-driver", "pynet", "--subnet", IPAM_SUBNET, "bench-ipam")
        allocs = asyncio.run(allocation_rate(lab.hosts, n_alloc))
        print_pynet_alone(fdb, replies, allocs, n_alloc, len(lab.hosts))
        print("\ntargets")
        for line in verdicts(rows[0], rows[1], percentile(fdb, 99)):
            print(f"  {line}")
