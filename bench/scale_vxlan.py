"""The `vxlan` curve of `python -m bench scale`: VXLAN convergence against the number of hosts.

For 2, 4 and 6 lab hosts on one etcd (a lab per count), each host gets pynet's VXLAN network
(`docker network create`, the same VNI and subnet everywhere) and PER_HOST endpoints made on its
plugin socket as dockerd makes a container's (RequestAddress, CreateEndpoint, Join: a veth on the
host's bridge and a registration in etcd, without a container process: 300 real containers on
this 2-core machine would measure dockerd, not pynet). Then SAMPLES new endpoints, created in
turn on each host: for each one, the time from sending CreateEndpoint until every other host has
both its FDB entry (MAC -> VTEP) and its neighbour entry (IP -> MAC) on the VXLAN device, seen
by `bridge monitor fdb` and `ip -4 monitor neigh` running in each host beforehand. Each new
endpoint is then removed (Leave, DeleteEndpoint, ReleaseAddress) and its entries' removal
awaited on every host the same way, so every sample sees PER_HOST endpoints per host.

Also printed per host count: the CPU time every host's pynet spent during the samples (from
/proc, its whole process tree), and the load average, since the machine is shared.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PluginClient, percentile, save_plot
from bench.vxlan import pool_id
from lab import PLUGIN_SOCKET, Host, Lab
from pynet.drivers.naming import vxlan_device

HERE = Path(__file__).parent
VNI = 83
SUBNET = "10.83.0.0/22"  # 6 hosts x (50 + 1) addresses, and the gateway
HOST_COUNTS = (2, 4, 6)
PER_HOST = 50
SAMPLES = 120  # new endpoints per host count, created in turn on each host
QUICK_HOST_COUNTS, QUICK_PER_HOST, QUICK_SAMPLES = (2, 3), 5, 12
IDLE = 10.0  # seconds of nothing before the samples, to show pynet's background CPU
TIMEOUT = 10.0  # seconds: an entry not seen by then counts as never programmed
TARGET_P99_MS = 200.0  # with 6 hosts
NETWORK = "pvscale"


class Watch:
    """`bridge monitor fdb` and `ip -4 monitor neigh` in one host: when each MAC's FDB entry
    and each IP's neighbour entry on the VXLAN device appeared, and went."""

    def __init__(self, host: Host) -> None:
        self.host = host
        dev = re.escape(vxlan_device(VNI))
        self._fdb = re.compile(rf"^(Deleted )?([0-9a-f:]{{17}}) dev {dev} dst ")
        self._neigh = re.compile(rf"^(Deleted )?([0-9.]+) dev {dev} (lladdr|FAILED)")
        self._seen: dict[tuple[str, bool], asyncio.Future[float]] = {}

    def seen(self, key: str, added: bool = True) -> asyncio.Future[float]:
        """Resolves to the perf_counter time the entry for KEY (a MAC or an IP) appeared
        (added) or went; maybe already has."""
        return self._seen.setdefault((key.lower(), added), asyncio.get_running_loop().create_future())

    def forget(self, key: str) -> None:
        for added in (True, False):
            self._seen.pop((key.lower(), added), None)

    async def __aenter__(self) -> Watch:
        self._procs = [
            await asyncio.create_subprocess_exec(*self.host.command(*argv), stdout=asyncio.subprocess.PIPE)
            for argv in (("bridge", "monitor", "fdb"), ("ip", "-4", "monitor", "neigh"))
        ]
        patterns = (self._fdb, self._neigh)
        self._readers = [asyncio.create_task(self._read(p, rx)) for p, rx in zip(self._procs, patterns, strict=True)]
        return self

    async def _read(self, proc: asyncio.subprocess.Process, rx: re.Pattern[str]) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            now = time.perf_counter()
            m = rx.match(line.decode(errors="replace"))
            # A neighbour being deleted shows as FAILED first: only "Deleted" counts as gone.
            if m is None or (m.re is self._neigh and not m[1] and m[3] == "FAILED"):
                continue
            if not (f := self.seen(m[2], added=not m[1])).done():
                f.set_result(now)

    async def __aexit__(self, *exc: object) -> None:
        for task in self._readers:
            task.cancel()
        for proc in self._procs:
            proc.terminate()
            await proc.wait()


@dataclass
class Sample:
    origin: int  # index of the host the endpoint was created on
    # ms to CreateEndpoint's reply on the origin host: the veth, the registration's put in etcd
    # (which the other hosts watch), then the endpoint's record and its address binding
    reply: float
    added: dict[int, float]  # other host -> ms from CreateEndpoint until both entries were there
    removed: dict[int, float]  # other host -> ms from DeleteEndpoint until both were gone

    @property
    def last_added(self) -> float:
        return max(self.added.values())

    @property
    def last_removed(self) -> float:
        return max(self.removed.values())


@dataclass
class Curve:
    hosts: int
    samples: list[Sample] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # per host: pynet's CPU seconds during the samples
    seconds: float = 0.0  # wall time of the samples
    idle_cpu_s: list[float] = field(default_factory=list)  # per host: pynet's CPU seconds in IDLE s of nothing
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the samples

    def last(self, removed: bool = False) -> list[float]:
        return [s.last_removed if removed else s.last_added for s in self.samples]

    def each(self) -> list[float]:
        return [ms for s in self.samples for ms in s.added.values()]


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ROOT and every process below it."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def _cpu(hosts: Sequence[Host]) -> list[float]:
    return [_tree_cpu(h.pynet.pid) if h.pynet else 0.0 for h in hosts]


class Endpoints:
    """Endpoints made on one host's socket as dockerd makes a container's."""

    def __init__(self, api: PluginClient, network_id: str) -> None:
        self.api = api
        self.network_id = network_id
        self.pool = pool_id(SUBNET)

    async def create(self) -> tuple[dict[str, str], str, str, float, float]:
        """(ids, IP, MAC, perf_counter times CreateEndpoint was sent and answered)."""
        reply = await self.api.call("IpamDriver.RequestAddress", {"PoolID": self.pool, "Address": "", "Options": None})
        address = str(reply["Address"])
        ids = {"NetworkID": self.network_id, "EndpointID": secrets.token_hex(32)}
        sent = time.perf_counter()
        made = await self.api.call(
            "NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": address}, "Options": {}}
        )
        replied = time.perf_counter()
        sandbox = f"/var/run/docker/netns/{ids['EndpointID'][:12]}"  # recorded by pynet, never opened
        await self.api.call("NetworkDriver.Join", {**ids, "SandboxKey": sandbox})
        return ids, address.split("/")[0], str(made["Interface"]["MacAddress"]), sent, replied

    async def remove(self, ids: dict[str, str], ip: str) -> float:
        """perf_counter time DeleteEndpoint was sent."""
        await self.api.call("NetworkDriver.Leave", ids)
        sent = time.perf_counter()
        await self.api.call("NetworkDriver.DeleteEndpoint", ids)
        await self.api.call("IpamDriver.ReleaseAddress", {"PoolID": self.pool, "Address": ip})
        return sent


async def _both(watch: Watch, mac: str, ip: str, added: bool) -> float:
    """perf_counter time both entries were there (or gone); inf after TIMEOUT."""
    try:
        times = await asyncio.wait_for(
            asyncio.gather(asyncio.shield(watch.seen(mac, added)), asyncio.shield(watch.seen(ip, added))), TIMEOUT
        )
    except TimeoutError:
        return float("inf")
    return max(times)


async def _measure(lab: Lab, per_host: int, samples: int) -> Curve:
    hosts = lab.hosts
    ids = [h.docker("network", "inspect", "-f", "{{.Id}}", NETWORK).stdout.strip() for h in hosts]
    curve = Curve(len(hosts))
    async with AsyncExitStack() as stack:
        apis = [await stack.enter_async_context(PluginClient(str(h.inside(PLUGIN_SOCKET)))) for h in hosts]
        watches = [await stack.enter_async_context(Watch(h)) for h in hosts]
        eps = [Endpoints(api, nid) for api, nid in zip(apis, ids, strict=True)]

        async def fill(k: int) -> list[tuple[str, str]]:
            return [(mac, ip) for _, ip, mac, _, _ in [await eps[k].create() for _ in range(per_host)]]

        # One host after another: all at once, etcd on this loaded machine missed pynet's 3 s
        # store timeout (a Join failed).
        filled = [await fill(k) for k in range(len(hosts))]
        for k, host in enumerate(hosts):
            await _settle(host, {m for j, made in enumerate(filled) if j != k for m in made})
        print(f"  {len(hosts)} hosts x {per_host} endpoints programmed everywhere", flush=True)

        async def sample(k: int) -> Sample:
            others = [j for j in range(len(hosts)) if j != k]
            ep, ip, mac, sent, replied = await eps[k].create()
            arrived = await asyncio.gather(*(_both(watches[j], mac, ip, True) for j in others))
            deleted = await eps[k].remove(ep, ip)
            gone = await asyncio.gather(*(_both(watches[j], mac, ip, False) for j in others))
            for watch in watches:
                watch.forget(mac)
                watch.forget(ip)
            return Sample(
                k,
                (replied - sent) * 1000,
                {j: (t - sent) * 1000 for j, t in zip(others, arrived, strict=True)},
                {j: (t - deleted) * 1000 for j, t in zip(others, gone, strict=True)},
            )

        # Not counted: proves every monitor listens (an entry missed here would be "never").
        if float("inf") in (await sample(0)).added.values():
            raise RuntimeError("a host's monitor saw nothing for the first endpoint")
        cpu0 = _cpu(hosts)
        await asyncio.sleep(IDLE)
        curve.idle_cpu_s = [after - before for before, after in zip(cpu0, _cpu(hosts), strict=True)]
        curve.load = (os.getloadavg()[0], 0.0)
        cpu0, wall0 = _cpu(hosts), time.perf_counter()
        for i in range(samples):
            curve.samples.append(await sample(i % len(hosts)))
        curve.seconds = time.perf_counter() - wall0
        curve.cpu_s = [after - before for before, after in zip(cpu0, _cpu(hosts), strict=True)]
        curve.load = (curve.load[0], os.getloadavg()[0])
    return curve


async def _settle(host: Host, wanted: set[tuple[str, str]]) -> None:
    """Wait until HOST's VXLAN device holds an FDB and a neighbour entry for every (MAC, IP)."""
    dev = vxlan_device(VNI)
    deadline = time.monotonic() + 60
    while True:
        fdb = host.run("bridge", "fdb", "show", "dev", dev).stdout.split()
        neigh = host.run("ip", "-4", "neigh", "show", "dev", dev).stdout.split()
        missing = {(mac, ip) for mac, ip in wanted if mac not in fdb or ip not in neigh}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name} never programmed {sorted(missing)[:3]} ({len(missing)} missing)")
        await asyncio.sleep(0.2)


def _report(curve: Curve) -> None:
    last, each, gone = curve.last(), curve.each(), curve.last(removed=True)
    never = sum(ms == float("inf") for ms in last)
    print(
        f"  {curve.hosts} hosts, n={len(last)}: on every other host p50 {percentile(last, 50):.1f} ms,"
        f" p99 {percentile(last, 99):.1f} ms; on one host p50 {percentile(each, 50):.1f} ms, p99"
        f" {percentile(each, 99):.1f} ms; removal on every other host p50 {percentile(gone, 50):.1f} ms,"
        f" p99 {percentile(gone, 99):.1f} ms; never: {never}",
        flush=True,
    )
    per_host = "  ".join(
        f"h{j + 1} {percentile(ms, 50):.0f}/{percentile(ms, 99):.0f}"
        for j in range(curve.hosts)
        if (ms := [s.added[j] for s in curve.samples if j in s.added])
    )
    print(f"    per receiving host, p50/p99 ms: {per_host}")
    replies = [s.reply for s in curve.samples]
    p50, p99 = percentile(replies, 50), percentile(replies, 99)
    print(f"    CreateEndpoint reply on the origin: p50 {p50:.1f}, p99 {p99:.1f} ms")
    cpu = " ".join(f"{s:.2f}" for s in curve.cpu_s)
    print(
        f"    pynet CPU s per host over the {curve.seconds:.1f} s of samples: {cpu} (sum {sum(curve.cpu_s):.2f},"
        f" {sum(curve.cpu_s) / max(1, len(curve.samples)) * 1000:.1f} ms per sample);"
        f" load {curve.load[0]:.1f} -> {curve.load[1]:.1f}"
    )
    idle = " ".join(f"{s:.2f}" for s in curve.idle_cpu_s)
    print(f"    pynet CPU s per host in {IDLE:.0f} s of nothing before the samples: {idle}")


def _plot(curves: list[Curve], per_host: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [c.hosts for c in curves]
    for label, values, style in (
        ("added, every other host: p50", [percentile(c.last(), 50) for c in curves], "o-"),
        ("added, every other host: p99", [percentile(c.last(), 99) for c in curves], "x--"),
        ("removed, every other host: p99", [percentile(c.last(removed=True), 99) for c in curves], "s:"),
    ):
        ax.plot(xs, values, style, label=label)
    ax.axhline(TARGET_P99_MS, color="red", linewidth=0.8, label=f"target p99 ({TARGET_P99_MS:.0f} ms)")
    ax.set_xticks(xs)
    ax.set_xlabel(f"lab hosts on one etcd ({per_host} endpoints each)")
    ax.set_ylabel("convergence (ms): endpoint made on one host\nto FDB + neighbour entries on all others")
    save_plot(fig, ax, "pynet VXLAN: convergence against the number of hosts", path)


def vxlan(quick: bool, lab_name: str) -> None:
    counts, per_host, samples = (
        (QUICK_HOST_COUNTS, QUICK_PER_HOST, QUICK_SAMPLES) if quick else (HOST_COUNTS, PER_HOST, SAMPLES)
    )
    curves = []
    for n in counts:
        print(f"\nvxlan: convergence with {n} hosts on etcd, {per_host} endpoints per host, {samples} samples")
        with Lab(name=f"{lab_name}-vx{n}", hosts=n, etcd=True) as lab:
            for host in lab.hosts:
                host.docker(
                    "network", "create", "-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan",
                    "-o", f"vni={VNI}", "--subnet", SUBNET, NETWORK,
                )
            curves.append(asyncio.run(_measure(lab, per_host, samples)))
        _report(curves[-1])
    print(f"\n{'hosts':>5}{'p50 ms':>9}{'p99 ms':>9}{'one host p99':>14}{'removed p99':>13}{'never':>7}", end="")
    print(f"{'reply p50':>11}{'CPU ms/sample':>15}")
    for c in curves:
        last = c.last()
        print(
            f"{c.hosts:>5}{percentile(last, 50):>9.1f}{percentile(last, 99):>9.1f}{percentile(c.each(), 99):>14.1f}"
            f"{percentile(c.last(removed=True), 99):>13.1f}{sum(ms == float('inf') for ms in last):>7}"
            f"{percentile([s.reply for s in c.samples], 50):>11.1f}"
            f"{sum(c.cpu_s) / max(1, len(c.samples)) * 1000:>15.1f}"
        )
    p99 = percentile(curves[-1].last(), 99)
    met = "met" if p99 < TARGET_P99_MS else "MISSED"
    print(f"target: p99 < {TARGET_P99_MS:.0f} ms with {curves[-1].hosts} hosts: {p99:.1f} ms, {met}")
    _plot(curves, per_host, HERE / "scale-vxlan.png")
