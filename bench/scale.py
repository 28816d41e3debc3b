"""`python -m bench scale [curve ...]`: how pynet's costs grow with the size of its state.

Each curve is one figure against one quantity, taken on pynet's socket in a one-host lab of
its own per store, and drawn into `bench/scale-<curve>.png`.

- `ipam`: RequestAddress latency against the number of addresses already allocated in a /16
  pool, up to 20,000, on the embedded store and on etcd. The pool is filled through the
  socket, as dockerd would fill it; at each point SAMPLES requests are timed, each followed by
  the ReleaseAddress of what it got, so every sample sees the same count, and each by one on
  an empty pool of the same daemon: the median of their ratios ("paired") cancels the load
  that drifts between points on a shared machine. Target: the last point costs at most 1.2
  times the first.
- `networks`: `docker network create` and `docker network rm` time against the number of
  networks already on the host, 0 to 249, pynet's bridge (with pynet's IPAM) interleaved with
  Docker's own bridge driver in one lab host on Docker 28.5: the host holds N networks of each
  driver at the N-th point. Both get explicit /24 subnets (Docker's default pools hold only 31
  networks). Networks are created one by one and removed in reverse; every call is one sample
  at the count of networks of its driver already there, grouped by tens.
- `firewall`: one firewall update, ProgramExternalConnectivity publishing one port then its
  RevokeExternalConnectivity, on pynet's socket, against the number of networks already on the
  host that each publish a port (made on the socket: CreateNetwork, CreateEndpoint, Join,
  ProgramExternalConnectivity). Docker's bridge has no socket to time this on; the control is
  each sample's pair of the least a rule update costs here, an `iptables-restore --noflush`
  committing nothing in each family (in the flavour pynet uses), timed right after it.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import PluginClient, percentile, timed
from lab import PLUGIN_SOCKET, Host, Lab
from lab.releases import fetch
from pynet.drivers.firewall import detect_flavour

HERE = Path(__file__).parent
SUBNET = "10.60.0.0/16"
EMPTY = "10.61.0.0/16"  # the control: a pool of the same daemon that stays empty
POINTS = (0, 2500, 5000, 10000, 15000, 20000)
SAMPLES = 300
QUICK_POINTS, QUICK_SAMPLES = (0, 300, 600), 30
GATEWAY_TYPE = "com.docker.network.gateway"  # RequestAddress's option for a network's gateway
PORTMAP = "com.docker.network.portmap"


@dataclass(frozen=True)
class Point:
    allocated: int
    median_ms: float
    p99_ms: float
    # Median of the per-sample ratios to a request on an empty pool of the same daemon taken
    # right after it: on this shared machine the load drifts between points, and this cancels it.
    paired: float


async def _ipam_curve(sock: str, points: Sequence[int], samples: int) -> list[Point]:
    async with PluginClient(sock) as c:

        async def pool(subnet: str) -> str:
            body = {"AddressSpace": "pynet-local", "Pool": subnet, "V6": False}
            return str((await c.call("IpamDriver.RequestPool", body))["PoolID"])

        async def request(pid: str) -> tuple[float, str]:
            start = time.perf_counter()
            reply = await c.call("IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": None})
            return (time.perf_counter() - start) * 1000, str(reply["Address"]).split("/")[0]

        async def sample(pid: str) -> float:
            ms, got = await request(pid)
            await c.call("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": got})
            return ms

        filled, empty = await pool(SUBNET), await pool(EMPTY)
        for _ in range(samples):  # warm-up, not counted: the first requests of a fresh daemon are slower
            await sample(filled)
            await sample(empty)
        curve, held = [], 0
        for target in points:
            while held < target:
                await request(filled)
                held += 1
            times, ratios = [], []
            for _ in range(samples):
                ms = await sample(filled)
                times.append(ms)
                ratios.append(ms / await sample(empty))
            point = Point(target, statistics.median(times), percentile(times, 99), statistics.median(ratios))
            curve.append(point)
            print(
                f"  {target:>6} allocated: median {point.median_ms:.3f} ms, p99 {point.p99_ms:.3f} ms,"
                f" paired {point.paired:.3f}",
                flush=True,
            )
        return curve


# A curve as drawn: label -> (x, median, p99) per point.
Series = dict[str, list[tuple[float, float, float]]]


def _plot(series: Series, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        xs = [x for x, _, _ in points]
        (line,) = ax.plot(xs, [m for _, m, _ in points], marker="o", label=f"{label}: median")
        ax.plot(
            xs, [p for _, _, p in points], marker="x", linestyle="--", color=line.get_color(), label=f"{label}: p99"
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def ipam(quick: bool, lab_name: str) -> None:
    points, samples = (QUICK_POINTS, QUICK_SAMPLES) if quick else (POINTS, SAMPLES)
    curves: dict[str, list[Point]] = {}
    for store, etcd in (("embedded", False), ("etcd", True)):
        print(f"\nipam: RequestAddress on the socket, {store} store, {samples} samples per point")
        with Lab(name=f"{lab_name}-{store[:4]}", hosts=1, etcd=etcd) as lab:
            sock = str(lab.hosts[0].inside(PLUGIN_SOCKET))
            curves[store] = asyncio.run(_ipam_curve(sock, points, samples))
    print(f"\n{'store':<10}{'allocated':>10}{'median ms':>11}{'p99 ms':>9}{'/ first':>9}{'paired':>8}{'/ first':>9}")
    for store, line in curves.items():
        for p in line:
            print(
                f"{store:<10}{p.allocated:>10}{p.median_ms:>11.3f}{p.p99_ms:>9.3f}"
                f"{p.median_ms / line[0].median_ms:>9.2f}{p.paired:>8.3f}{p.paired / line[0].paired:>9.2f}"
            )
    _plot(
        {store: [(p.allocated, p.median_ms, p.p99_ms) for p in line] for store, line in curves.items()},
        HERE / "scale-ipam.png",
        f"addresses already allocated in the pool {SUBNET}",
        "RequestAddress latency on the socket (ms)",
        "pynet IPAM: RequestAddress latency against pool occupancy",
    )


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- networks: docker network create / rm against the networks already on the host -------------

NETWORKS, QUICK_NETWORKS = 250, 30
DOCKER_RELEASE = "28.5"
# Each driver's `docker network create` arguments, and the first two octets of its /24s.
DRIVERS = {"pynet": (("-d", "pynet", "--ipam-driver", "pynet"), "10.64"), "docker": (("-d", "bridge"), "10.65")}
# Samples taken at 0-9 networks already there make the first point, 10-19 the second, ...
DECADE = 10


@dataclass(frozen=True)
class Decade:
    first: int  # networks of the driver already on the host: first .. first + DECADE - 1
    median_ms: dict[str, float]
    p99_ms: dict[str, float]
    paired: float  # median of the per-count ratios pynet / docker


def _by_decade(samples: dict[str, list[float]]) -> list[Decade]:
    """`samples[driver][n]` was taken with n networks of its driver already there."""
    out = []
    for first in range(0, len(samples["pynet"]), DECADE):
        part = {d: s[first : first + DECADE] for d, s in samples.items()}
        ratios = [p / d for p, d in zip(part["pynet"], part["docker"], strict=True)]
        out.append(
            Decade(
                first,
                {d: statistics.median(s) for d, s in part.items()},
                {d: percentile(s, 99) for d, s in part.items()},
                statistics.median(ratios),
            )
        )
    return out


def _network_samples(host: Host, count: int) -> dict[str, dict[str, list[float]]]:
    """Creates COUNT networks of each driver one by one, then removes them in reverse; the two
    drivers take turns, and who goes first swaps every time, so load drift hits both alike."""
    times: dict[str, dict[str, list[float]]] = {op: {d: [0.0] * count for d in DRIVERS} for op in ("create", "rm")}

    def turns(i: int) -> list[str]:
        return list(DRIVERS) if i % 2 == 0 else list(DRIVERS)[::-1]

    for i in range(count):
        for driver in turns(i):
            args, prefix = DRIVERS[driver]
            cmd = ("network", "create", *args, "--subnet", f"{prefix}.{i}.0/24", f"scale-{driver}-{i}")
            times["create"][driver][i] = timed(partial(host.docker, *cmd))
        if (i + 1) % DECADE == 0:
            _progress("created", i + 1 - DECADE, times["create"])
    for i in reversed(range(count)):
        for driver in turns(i):
            times["rm"][driver][i] = timed(partial(host.docker, "network", "rm", f"scale-{driver}-{i}"))
        if i % DECADE == 0:
            _progress("removed", i, times["rm"])
    return times


def _progress(done: str, first: int, samples: dict[str, list[float]]) -> None:
    """One decade's medians as soon as it is taken: a long run stopped early keeps them."""
    part = ", ".join(f"{d} {statistics.median(s[first : first + DECADE]):.0f} ms" for d, s in samples.items())
    print(f"  {done} at {first}-{first + DECADE - 1} networks: {part} (load {_load()})", flush=True)


def networks(quick: bool, lab_name: str) -> None:
    count = QUICK_NETWORKS if quick else NETWORKS
    print(
        f"\nnetworks: docker network create / rm, 0 to {count - 1} networks of each driver already there,"
        f" Docker {DOCKER_RELEASE}, load {_load()}"
    )
    with Lab(name=f"{lab_name}-net", hosts=1, etcd=False, docker=fetch(DOCKER_RELEASE)) as lab:
        times = _network_samples(lab.hosts[0], count)
    print(f"load at the end {_load()}")
    series: Series = {}
    for op, samples in times.items():
        decades = _by_decade(samples)
        print(f"\ndocker network {op}, ms (networks of the driver already on the host)")
        print(
            f"{'networks':>10}{'pynet p50':>11}{'p99':>9}{'docker p50':>12}{'p99':>9}{'pynet/docker':>14}{'paired':>8}"
        )
        for dec in decades:
            med, p99 = dec.median_ms, dec.p99_ms
            print(
                f"{dec.first:>5}-{dec.first + DECADE - 1:<4}{med['pynet']:>11.1f}{p99['pynet']:>9.1f}"
                f"{med['docker']:>12.1f}{p99['docker']:>9.1f}{med['pynet'] / med['docker']:>14.2f}{dec.paired:>8.2f}"
            )
        first, last = decades[0], decades[-1]
        for driver in DRIVERS:
            print(f"  {driver}: last / first {last.median_ms[driver] / first.median_ms[driver]:.2f}")
        print(f"  pynet / docker, paired: last / first {last.paired / first.paired:.2f}")
        for driver in DRIVERS:
            series[f"{driver} {op}"] = [(d.first + DECADE / 2, d.median_ms[driver], d.p99_ms[driver]) for d in decades]
    _plot(
        series,
        HERE / "scale-networks.png",
        f"networks of the same driver already on the host (medians of {DECADE})",
        "docker network create / rm (ms)",
        f"docker network create / rm against networks on the host, Docker {DOCKER_RELEASE}",
    )


# -- firewall: one rule update against the networks publishing ports -----------------------------

FIREWALL_POINTS, FIREWALL_SAMPLES = (0, 25, 50, 100, 150, 200, 250), 40
QUICK_FIREWALL_POINTS, QUICK_FIREWALL_SAMPLES = (0, 10, 20), 10
PROBE_PORT, FILL_PORT = 30000, 20000  # the measured port, and the first of the fill networks'


async def _published_network(c: PluginClient, i: int, host_port: int) -> dict[str, str]:
    """A network 10.66.<i>.0/24 with one endpoint joined (as dockerd makes them, on the
    socket, with no container); publishes HOST_PORT unless 0. Returns the endpoint's IDs."""
    subnet = f"10.66.{i}.0/24"
    pid = (await c.call("IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": subnet, "V6": False}))[
        "PoolID"
    ]
    gw = await c.call("IpamDriver.RequestAddress", {"PoolID": pid, "Options": {"RequestAddressType": GATEWAY_TYPE}})
    ids = {"NetworkID": secrets.token_hex(32), "EndpointID": secrets.token_hex(32)}
    await c.call(
        "NetworkDriver.CreateNetwork",
        {"NetworkID": ids["NetworkID"], "Options": {}, "IPv4Data": [{"Pool": subnet, "Gateway": gw["Address"]}]},
    )
    address = (await c.call("IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": None}))["Address"]
    await c.call("NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": address}, "Options": {}})
    await c.call("NetworkDriver.Join", {**ids, "SandboxKey": "", "Options": {}})
    if host_port:
        await c.call("NetworkDriver.ProgramExternalConnectivity", {**ids, "Options": _publish(host_port)})
    return ids


def _publish(host_port: int) -> dict[str, Any]:
    return {PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": host_port}]}


# A firewall curve as drawn (see Series), and its paired ratios per point.
FirewallCurves = tuple[Series, dict[str, list[float]]]


async def _firewall_curve(
    sock: str, points: Sequence[int], samples: int, control: Callable[[], float]
) -> FirewallCurves:
    curves: Series = {"publish": [], "revoke": []}
    paired: dict[str, list[float]] = {"publish": [], "revoke": []}
    async with PluginClient(sock) as c:
        probe = await _published_network(c, 255, 0)

        async def timed_call(method: str, options: dict[str, Any]) -> float:
            start = time.perf_counter()
            await c.call(f"NetworkDriver.{method}", {**probe, "Options": options})
            return (time.perf_counter() - start) * 1000

        calls: dict[str, Callable[[], Awaitable[float]]] = {
            "publish": partial(timed_call, "ProgramExternalConnectivity", _publish(PROBE_PORT)),
            "revoke": partial(timed_call, "RevokeExternalConnectivity", {}),
        }
        for _ in range(samples):  # warm-up
            for call in calls.values():
                await call()
        held = 0
        for target in points:
            while held < target:
                await _published_network(c, held, FILL_PORT + held)
                held += 1
            times: dict[str, list[float]] = {op: [] for op in calls}
            ratios: dict[str, list[float]] = {op: [] for op in calls}
            for _ in range(samples):
                for op, call in calls.items():
                    times[op].append(await call())
                    ratios[op].append(times[op][-1] / control())
            for op, ms in times.items():
                curves[op].append((target, statistics.median(ms), percentile(ms, 99)))
                paired[op].append(statistics.median(ratios[op]))
            print(
                f"  {target:>4} networks publishing: "
                + ", ".join(
                    f"{op} median {line[-1][1]:.1f} ms, p99 {line[-1][2]:.1f} ms, paired {paired[op][-1]:.2f}"
                    for op, line in curves.items()
                )
                + f" (load {_load()})",
                flush=True,
            )
    return curves, paired


def _noop_restores(host: Host) -> Callable[[], float]:
    """The control: one `iptables-restore --noflush` per family committing nothing, in the
    flavour pynet uses on HOST, in milliseconds."""
    flavour = detect_flavour(host.netns)
    text = "*filter\nCOMMIT\n"

    def run() -> float:
        start = time.perf_counter()
        for tool in ("iptables", "ip6tables"):
            host.run(f"{tool}-{flavour}-restore", "-w", "--noflush", input=text)
        return (time.perf_counter() - start) * 1000

    return run


def firewall(quick: bool, lab_name: str) -> None:
    points, samples = (QUICK_FIREWALL_POINTS, QUICK_FIREWALL_SAMPLES) if quick else (FIREWALL_POINTS, FIREWALL_SAMPLES)
    print(f"\nfirewall: publish / revoke one port on the socket, {samples} samples per point, load {_load()}")
    with Lab(name=f"{lab_name}-fw", hosts=1, etcd=False, docker=fetch(DOCKER_RELEASE)) as lab:
        host = lab.hosts[0]
        curves, paired = asyncio.run(
            _firewall_curve(str(host.inside(PLUGIN_SOCKET)), points, samples, _noop_restores(host))
        )
    print(f"load at the end {_load()}")
    print(f"\n{'request':<30}{'networks':>9}{'median ms':>11}{'p99 ms':>9}{'/ first':>9}{'paired':>8}{'/ first':>9}")
    for op, line in curves.items():
        ratios = paired[op]
        for (x, med, p99), ratio in zip(line, ratios, strict=True):
            growth = f"{med / line[0][1]:>9.2f}{ratio:>8.2f}{ratio / ratios[0]:>9.2f}"
            print(f"{op:<30}{x:>9.0f}{med:>11.2f}{p99:>9.2f}{growth}")
    _plot(
        {f"{op} one port": line for op, line in curves.items()},
        HERE / "scale-firewall.png",
        "networks already on the host, each publishing a port",
        "Program/RevokeExternalConnectivity on the socket (ms)",
        "pynet firewall: one published port against networks publishing ports",
    )


CURVES: dict[str, Callable[[bool, str], None]] = {"ipam": ipam, "networks": networks, "firewall": firewall}


def main(curves: Sequence[str] = (), quick: bool = False, lab_name: str = "pnscale") -> None:
    for name in curves or CURVES:
        CURVES[name](quick, lab_name)
