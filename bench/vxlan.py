"""pynet's VXLAN backend against Docker's swarm overlay driver, across two lab hosts, one run.

Host 1 inits a swarm and host 2 joins it; the overlay network is `--attachable`, so plain
`docker run` attaches to it, and is created once on the manager (swarm scope: host 2 learns it
when a container there attaches). pynet's network is created on each host with the same VNI
and subnet, as users do. Docker's VXLAN traffic goes to UDP 4790 (`--data-path-port`) and
pynet's to its default 4789, so the two data paths stay apart; the kernel would in fact let
both share one port, as it demultiplexes a port's VXLAN devices by VNI (overlay's start at
4096). Docker-level figures alternate pynet and overlay so drift on this shared 2-core machine
hits both alike.

TCP is measured on four paths in the same rounds, each round in a rotated order: pynet, the
overlay, the underlay itself (iperf3 between the two hosts' own addresses) and a bare pair of
VXLAN devices (`BareVxlan`: pynet's device settings, no bridge, no veth, no netfilter inside),
the ceiling VXLAN leaves on this machine; every path's iperf3 runs in a lab container (`Pair`).
pynet's own path has no bridge either: containers are macvlan links of the VXLAN device
(drivers/vxlan.py). An earlier fifth path, pynet's former bridge with br_netfilter switched
off, measured what that change could gain (bench/README.md).

Two figures are pynet's alone, taken on its socket: convergence (CreateEndpoint sent on host 1
to the FDB entry for the endpoint's MAC appearing on host 2's VXLAN device, seen by `bridge
monitor fdb` running in host 2) and the IPAM allocation rate with both hosts allocating from
one pool in the shared etcd at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import statistics
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from bench.common import PluginClient, Row, iperf_gbits, percentile, print_table, rtt, run_time, start_peers
from lab import IMAGE, PLUGIN_SOCKET, Host, Lab
from lab.cmd import run_cmd
from lab.releases import MACHINE, fetch
from pynet.drivers.naming import VXLAN_DEVICE_PREFIX as DEVICE_PREFIX
from pynet.ipam import LOCAL_SPACE, PoolId

VNI = 80
PYNET_SUBNET = "10.80.0.0/24"
OVERLAY_SUBNET = "10.81.0.0/24"
IPAM_SUBNET = "10.82.0.0/16"
BARE_SUBNET = "10.83.0.0/24"  # the bare VXLAN pair's two addresses, .1 on host 1, .2 on host 2
BARE_VNI = 83
PYNET_PORT = 4789  # pynet's default VXLAN port, which the bare pair shares (the VNI tells them apart)
MTU = 1450  # what pynet and the overlay both give their devices on the lab's 1500-byte underlay
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


class Pair:
    """A long-lived container on each host (`sleep infinity`) whose namespace a path's iperf3
    runs in, by `docker exec`: every path's iperf3 then runs in a container of the lab's dockerd,
    so all get the same CPU share on the busy machine (a process started from the bench itself
    sits in another cgroup and, in a first run, got far less of the CPU)."""

    def __init__(self, lab: Lab, name: str, network: str) -> None:
        self.hosts, self.name, self.network = lab.hosts, name, network
        self.addresses = [h.address for h in lab.hosts]

    def __enter__(self) -> Pair:
        try:
            for host in self.hosts:
                host.docker("run", "-d", "--name", self.name, "--network", self.network, IMAGE, "sleep", "infinity")
            self.setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def setup(self) -> None:
        """What a path adds to the containers (nothing for the underlay)."""

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            host.docker("rm", "-f", self.name, check=False)

    def gbits(self, seconds: int) -> float:
        """iperf3 from host 1's container to host 2's, one run: Gbit/s received."""
        h1, h2 = self.hosts
        h2.docker("exec", "-d", self.name, "iperf3", "-s", "-1")
        time.sleep(0.3)
        argv = ("exec", self.name, "iperf3", "-c", self.addresses[1], "-t", str(seconds), "-J")
        out = json.loads(h1.docker(*argv, timeout=seconds + 60).stdout)
        if "error" in out:
            raise RuntimeError(f"iperf3 to {self.addresses[1]}: {out['error']}")
        return float(out["end"]["sum_received"]["bits_per_second"]) / 1e9


def underlay(lab: Lab) -> Pair:
    """The hosts' own addresses (eth0 to eth0 across the lab's bridge), `--network host`."""
    return Pair(lab, "bench-underlay", "host")


class BareVxlan(Pair):
    """A VXLAN device per host with pynet's settings (`ip -d link` of `pnx-<vni>`: learning
    off, proxy ARP answered from static neighbours, the underlay's eth0 as link, MTU 1450),
    each moved into a `--network none` container: no bridge, no veth, no netfilter rules around
    the inner frames. The UDP socket stays in the lab host, as pynet's does (and the overlay's,
    whose devices Docker moves the same way), so the outer packets take the same path."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, "bench-bare-vxlan", "none")
        self.addresses = [str(ip) for ip in list(ipaddress.ip_network(BARE_SUBNET).hosts())[: len(lab.hosts)]]

    def setup(self) -> None:
        macs = [f"02:00:0a:53:00:{i:02x}" for i in range(1, len(self.hosts) + 1)]
        for i, (host, other) in enumerate(zip(self.hosts, self.hosts[::-1])):
            pid = host.docker("inspect", "-f", "{{.State.Pid}}", self.name).stdout.strip()
            ip = ["ip", "-n", host.netns]
            run_cmd([*ip, "link", "add", "bx0", "address", macs[i], "mtu", str(MTU), "type", "vxlan",
                     "id", str(BARE_VNI), "local", host.address, "remote", other.address, "dev", "eth0",
                     "dstport", str(PYNET_PORT), "nolearning", "proxy"])  # fmt: skip
            run_cmd([*ip, "link", "set", "bx0", "netns", pid])  # deleted with the container's namespace
            peer = 1 - i
            neigh = ["neigh", "add", self.addresses[peer], "lladdr", macs[peer], "dev", "bx0", "nud", "permanent"]
            for cmd in (["addr", "add", f"{self.addresses[i]}/24", "dev", "bx0"], ["link", "set", "bx0", "up"], neigh):
                run_cmd(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", *cmd])


@dataclass
class Paths:
    """TCP samples per path, taken in rounds (one sample of every path per round)."""

    samples: dict[str, list[float]]

    def median(self, path: str) -> float:
        return statistics.median(self.samples[path])

    def paired(self, a: str, b: str) -> float:
        """Median of the per-round ratios a/b (cancels load that drifts between rounds)."""
        return statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b]) if y)

    def row(self, a: str, b: str) -> Row:
        return Row("TCP host1 ctr -> host2 ctr", self.median(a), self.median(b), "Gbit/s, median", "higher", self.paired(a, b))


def tcp_rounds(measures: dict[str, Callable[[], float]], rounds: int) -> Paths:
    """Every path once per round, the order rotated by one each round so no path always runs
    first (or right after the same neighbour) on this shared machine."""
    names = list(measures)
    paths = Paths({name: [] for name in names})
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            paths.samples[name].append(measures[name]())
    return paths


RATIOS = (("pynet", "overlay"), ("pynet", "underlay"), ("bare-vxlan", "underlay"), ("pynet", "bare-vxlan"),
          ("overlay", "underlay"))  # fmt: skip


def print_paths(paths: Paths, seconds: int) -> None:
    n = len(next(iter(paths.samples.values())))
    print(f"\nTCP host 1 -> host 2 by path: iperf3 {seconds} s, {n} rounds, Gbit/s")
    print(f"{'path':<16}{'median':>9}{'min':>9}{'max':>9}")
    for name, got in paths.samples.items():
        print(f"{name:<16}{statistics.median(got):>9.2f}{min(got):>9.2f}{max(got):>9.2f}")
    print(f"{'ratio':<26}{'of medians':>11}{'paired':>9}{'paired min-max':>17}")
    for a, b in RATIOS:
        per_round = [x / y for x, y in zip(paths.samples[a], paths.samples[b]) if y]
        spread = f"{min(per_round):.3f}-{max(per_round):.3f}"
        print(f"{a + '/' + b:<26}{paths.median(a) / paths.median(b):>11.3f}{paths.paired(a, b):>9.3f}{spread:>17}")


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
    n_run, n_iperf, secs, n_ping, count, n_conv, n_alloc = (5, 1, 2, 1, 5, 20, 100) if quick else (20, 8, 5, 5, 20, 100, 1000)
    with Lab(name=lab_name or "pnbenchvx", docker=fetch(docker), hosts=2, etcd=True) as lab:
        h1, h2 = lab.hosts
        start_swarm(lab)
        networks = create_networks(lab)
        for net in networks.values():  # first-use costs paid before anything is timed
            h1.docker("run", "--rm", "--network", net, IMAGE, "true")

        def container_gbits(driver: str) -> Callable[[], float]:
            return lambda: iperf_gbits(h2, networks[driver], secs, driver, client=h1)

        with underlay(lab) as ul, BareVxlan(lab) as bare:
            paths = tcp_rounds(
                {
                    "pynet": container_gbits("pynet"),
                    "overlay": container_gbits("docker"),
                    "underlay": lambda: ul.gbits(secs),
                    "bare-vxlan": lambda: bare.gbits(secs),
                },
                n_iperf,
            )
        rows = [run_time(h1, networks, n_run), paths.row("pynet", "overlay"), rtt(lab, networks, start_peers(h2, networks), n_ping, count)]
        print_table("vxlan: pynet vs Docker's swarm overlay driver (2 lab hosts, same run)", rows)
        print_paths(paths, secs)

        network_id = h1.docker("network", "inspect", "-f", "{{.Id}}", networks["pynet"]).stdout.strip()
        fdb, replies = asyncio.run(convergence(h1, h2, network_id, n_conv))
        for host in lab.hosts:
            host.docker("network", "create", "-d", "pynet", "--ipam-driver", "pynet", "--subnet", IPAM_SUBNET, "bench-ipam")
        allocs = asyncio.run(allocation_rate(lab.hosts, n_alloc))
        print_pynet_alone(fdb, replies, allocs, n_alloc, len(lab.hosts))
        print("\ntargets")
        for line in verdicts(rows[0], rows[1], percentile(fdb, 99)):
            print(f"  {line}")
