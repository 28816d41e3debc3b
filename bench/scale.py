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
- `vxlan`: VXLAN convergence p50/p99 against the number of hosts (2, 4, 6) on etcd, 50
  endpoints per host; bench/scale_vxlan.py.
- `containers`: `docker run -d` time against the number of containers already on one /24
  network, 0 to 249, pynet's bridge (with pynet's IPAM) interleaved with Docker's own bridge
  driver in one lab host on Docker 28.5, who goes first swapping every turn; grouped by tens,
  "paired" the median of the per-turn ratios. Target: pynet's last ten cost at most 1.2 times
  its first ten.
- `restart`: pynet's start-up against the networks and endpoints it holds, up to 250 networks
  and 1,000 endpoints (4 a network), in one lab host on Docker 28.5 with the embedded store.
  One network is made by `docker network create` and holds 4 real containers; the others are
  made on the socket as dockerd makes them (RequestPool, the gateway's RequestAddress,
  CreateNetwork; per endpoint RequestAddress, CreateEndpoint, Join), and each endpoint's
  container end is moved into one of those containers, as dockerd moves it into its own: 1,000
  containers would cost this 2-core machine more than the whole curve. At each point pynet is
  stopped (SIGTERM) and started RESTARTS times for each of: the time until it answers
  Plugin.Activate, until the first CreateEndpoint on an existing network succeeds (sent as
  soon as the socket answers, so it waits for the start-up), and, in another restart, until
  the first `docker run --rm` on the `docker network create` one succeeds (sent once the
  socket answers, so none of dockerd's reconnect sleeps count); RSS after that CreateEndpoint.
  Docker's bridge driver has no start-up of its own to pair with. Targets at 250 networks and
  1,000 endpoints: RSS under 100 MB, the first CreateEndpoint within 5 s.
- `networks`: `docker network create` and `docker network rm` time against the number of
  networks already on the host, 0 to 249, pynet's bridge (with pynet's IPAM) interleaved with
  Docker's own bridge driver in one lab host on Docker 28.5: the host holds N networks of each
  driver at the N-th point. Both get explicit /24 subnets (Docker's default pools hold only 31
  networks). Networks are created one by one and removed in reverse; every call is one sample
  at the count of networks of its driver already there, grouped by tens.
- `firewall`: one firewall update, ProgramExternalConnectivity publishing one port then its
  RevokeExternalConnectivity, on pynet's socket, against the number of networks already on the
  host that each publish a port (made on the socket: CreateNetwork, CreateEndpoint, Join,
  ProgramExternalConnectivity), and one network's CreateNetwork then its DeleteNetwork (a
  probe pool and gateway requested once; no endpoint): the firewall is most of both (its
  chains and bucket jumps made, then deleted), and timing them on the socket measures them
  against the firewall the daemon really holds, which a second `Firewall` on the same host
  would disturb. Docker's bridge has no socket to time this on; the control is each sample's
  pair of the least a rule update costs here, an `iptables-restore --noflush` committing
  nothing in each family (in the flavour pynet uses), timed right after it.
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

from bench import scale_vxlan
from bench.common import PluginClient, percentile, save_plot, timed
from lab import IMAGE, PLUGIN_SOCKET, Host, Lab
from lab.cmd import unix_http
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
    save_plot(fig, ax, title, path)


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


DOCKER_RELEASE = "28.5"
# Samples taken at 0-9 networks (or containers) already there make the first point, 10-19 the second, ...
DECADE = 10

# -- networks: docker network create / rm against the networks already on the host -------------

NETWORKS, QUICK_NETWORKS = 250, 30
# Each driver's `docker network create` arguments, and the first two octets of its /24s.
DRIVERS = {"pynet": (("-d", "pynet", "--ipam-driver", "pynet"), "10.64"), "docker": (("-d", "bridge"), "10.65")}

# -- containers: docker run -d against the containers already on one network ---------------

CONTAINERS, QUICK_CONTAINERS = 250, 20
# One /24 network per driver, so both hold 250 containers at the end.
CONTAINER_NETWORKS = {
    "pynet": ("-d", "pynet", "--ipam-driver", "pynet", "--subnet", "10.70.0.0/24"),
    "docker": ("-d", "bridge", "--subnet", "10.71.0.0/24"),
}


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


def _print_decades(what: str, decades: list[Decade]) -> None:
    """One row per decade: each driver's median and p99 in ms, their ratio, and the paired ratio."""
    print(f"{what:>10}{'pynet p50':>11}{'p99':>9}{'docker p50':>12}{'p99':>9}{'pynet/docker':>14}{'paired':>8}")
    for dec in decades:
        med, p99 = dec.median_ms, dec.p99_ms
        print(
            f"{dec.first:>5}-{dec.first + DECADE - 1:<4}{med['pynet']:>11.1f}{p99['pynet']:>9.1f}"
            f"{med['docker']:>12.1f}{p99['docker']:>9.1f}{med['pynet'] / med['docker']:>14.2f}{dec.paired:>8.2f}"
        )


def _docker_lab(name: str, pynet_args: Sequence[str] = ()) -> Lab:
    return Lab(name=name, hosts=1, etcd=False, docker=fetch(DOCKER_RELEASE), pynet_args=pynet_args)


def containers(quick: bool, lab_name: str) -> None:
    count = QUICK_CONTAINERS if quick else CONTAINERS
    print(f"\ncontainers: docker run -d, 0 to {count - 1} containers already on the network, Docker {DOCKER_RELEASE}")
    times: dict[str, list[float]] = {d: [] for d in CONTAINER_NETWORKS}
    with _docker_lab(f"{lab_name}-ctr") as lab:
        host = lab.hosts[0]
        for driver, args in CONTAINER_NETWORKS.items():
            host.docker("network", "create", *args, f"scale-{driver}")
        for i in range(count):
            # Turns, who goes first swapping: drift on the shared machine hits both alike.
            for driver in list(CONTAINER_NETWORKS) if i % 2 == 0 else list(CONTAINER_NETWORKS)[::-1]:
                run = ("run", "-d", "--name", f"c-{driver}-{i}", "--network", f"scale-{driver}", IMAGE, "sleep", "1d")
                times[driver].append(timed(partial(host.docker, *run)))
            if (i + 1) % 25 == 0:
                print(f"  {i + 1} of each (load {_load()})", flush=True)
    print(f"load at the end {_load()}")
    decades = _by_decade(times)
    print()
    _print_decades("containers", decades)
    first, last = decades[0], decades[-1]
    growth = {d: last.median_ms[d] / first.median_ms[d] for d in CONTAINER_NETWORKS}
    print("  last / first: " + ", ".join(f"{d} {g:.2f}" for d, g in growth.items()), end="")
    print(
        f"; paired {last.paired / first.paired:.2f}"
        f" (target: pynet at most 1.2: {'met' if growth['pynet'] <= 1.2 else 'MISSED'})"
    )
    _plot(
        {d: [(x.first + DECADE / 2, x.median_ms[d], x.p99_ms[d]) for x in decades] for d in CONTAINER_NETWORKS},
        HERE / "scale-containers.png",
        f"containers already on the network (medians of {DECADE})",
        "docker run -d (ms)",
        f"docker run -d on one /24 network, pynet bridge vs Docker's bridge, Docker {DOCKER_RELEASE}",
    )


# -- restart: pynet's start-up against the networks and endpoints it holds --------------------

RESTART_POINTS, QUICK_RESTART_POINTS = (2, 63, 125, 188, 250), (2, 4)  # dockerd knows the first
PER_NETWORK = 4  # endpoints: 250 networks hold 1,000
RESTARTS, QUICK_RESTARTS = 3, 1
STARTED_WITHIN = 180.0  # seconds: a start-up slower than that fails the bench
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


@dataclass(frozen=True)
class Start:
    networks: int
    endpoints: int
    socket_s: float  # from spawning pynet until it answers Plugin.Activate (medians of the restarts)
    endpoint_s: float  # ... until the first CreateEndpoint on an existing network succeeds
    run_s: float  # ... until the first `docker run` on an existing network succeeds
    rss_mb: float  # VmRSS once it served that CreateEndpoint
    load: str


class Populated:
    """The restart curve's state: networks and endpoints made through pynet's socket as dockerd
    makes them (RequestPool, the gateway's RequestAddress, CreateNetwork; then per endpoint
    RequestAddress, CreateEndpoint, Join), each endpoint's container end moved into one
    container, as dockerd moves it into each."""

    def __init__(self, sock: str, sink_pid: str) -> None:
        self.sock = sock
        self.sink = sink_pid
        self.networks: list[tuple[str, str]] = []  # (network ID, pool ID)

    async def grow(self, until: int, host: Host) -> None:
        moves = []
        async with PluginClient(self.sock) as c:
            while len(self.networks) < until:
                i = len(self.networks)
                subnet = f"10.64.{i}.0/24"
                pool = (
                    await c.call("IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": subnet, "V6": False})
                )["PoolID"]
                gateway = (
                    await c.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": GATEWAY})
                )["Address"]
                net = secrets.token_hex(32)
                ipv4 = [{"AddressSpace": "pynet-local", "Pool": subnet, "Gateway": gateway}]
                body = {
                    "NetworkID": net,
                    "Options": {"com.docker.network.generic": {}},
                    "IPv4Data": ipv4,
                    "IPv6Data": [],
                }
                await c.call("NetworkDriver.CreateNetwork", body)
                self.networks.append((net, str(pool)))
                for _ in range(PER_NETWORK):
                    moves.append(await self._endpoint(c, net, str(pool), secrets.token_hex(32), join=True))
        host.run("ip", "-batch", "-", input="".join(f"link set {name} netns {self.sink}\n" for name in moves))

    async def _endpoint(self, c: PluginClient, net: str, pool: str, ep: str, join: bool) -> str:
        address = (await c.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}}))["Address"]
        interface = {"Address": address, "AddressIPv6": "", "MacAddress": ""}
        await c.call(
            "NetworkDriver.CreateEndpoint", {"NetworkID": net, "EndpointID": ep, "Interface": interface, "Options": {}}
        )
        if not join:
            return ""
        reply = await c.call(
            "NetworkDriver.Join", {"NetworkID": net, "EndpointID": ep, "SandboxKey": "", "Options": {}}
        )
        return str(reply["InterfaceName"]["SrcName"])

    async def probe(self) -> None:
        """The first CreateEndpoint after a restart, then its undoing. A request waits for
        start-up up to 20 s, then is refused as "still starting": asked again until it passes."""
        net, pool = self.networks[0]
        ep = secrets.token_hex(32)
        async with PluginClient(self.sock) as c:
            await _until_started(lambda: self._endpoint(c, net, pool, ep, join=False))
            await c.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net, "EndpointID": ep})


async def _until_started(call: Callable[[], Awaitable[object]]) -> None:
    deadline = time.monotonic() + STARTED_WITHIN
    while True:
        try:
            await call()
            return
        except RuntimeError as e:
            if "still starting" not in str(e) or time.monotonic() > deadline:
                raise


def _restarted(host: Host) -> float:
    """Stop pynet (SIGTERM) and start it again; returns when it started, once it answers."""
    host.stop_pynet()
    started = time.perf_counter()
    host.start_pynet()
    return started


def _rss_mb(host: Host) -> float:
    assert host.pynet is not None
    for line in Path(f"/proc/{host.pynet.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _start_point(host: Host, state: Populated, restarts: int) -> Start:
    sockets, endpoints, runs, rss = [], [], [], []
    for _ in range(restarts):
        started = _restarted(host)
        sockets.append(time.perf_counter() - started)
        asyncio.run(state.probe())
        endpoints.append(time.perf_counter() - started)
        rss.append(_rss_mb(host))
        # Issued once the socket answers, so none of dockerd's reconnect sleeps (1, 2, 4 s) counts.
        started = _restarted(host)
        while host.docker("run", "--rm", "--network", "scale-restart", IMAGE, "true", check=False).returncode:
            if time.perf_counter() - started > STARTED_WITHIN:  # refused as "still starting": again
                raise RuntimeError(f"no docker run succeeded in {STARTED_WITHIN} s after a restart")
        runs.append(time.perf_counter() - started)
    med = statistics.median
    n = len(state.networks) + 1
    return Start(n, n * PER_NETWORK, med(sockets), med(endpoints), med(runs), max(rss), _load())


def restart(quick: bool, lab_name: str) -> None:
    points, restarts = (QUICK_RESTART_POINTS, QUICK_RESTARTS) if quick else (RESTART_POINTS, RESTARTS)
    print(
        f"\nrestart: pynet's start-up against the state it holds, {PER_NETWORK} endpoints a network,"
        f" Docker {DOCKER_RELEASE}"
    )
    curve: list[Start] = []
    with _docker_lab(f"{lab_name}-rst") as lab:
        host = lab.hosts[0]
        # One network dockerd knows, for `docker run`, with PER_NETWORK real containers.
        host.docker("network", "create", *CONTAINER_NETWORKS["pynet"][:4], "--subnet", "10.72.0.0/24", "scale-restart")
        for i in range(PER_NETWORK):
            host.docker("run", "-d", "--name", f"held-{i}", "--network", "scale-restart", IMAGE, "sleep", "infinity")
        sink = host.docker("inspect", "-f", "{{.State.Pid}}", "held-0").stdout.strip()
        state = Populated(str(host.inside(PLUGIN_SOCKET)), sink)
        warm = statistics.median(
            timed(lambda: host.docker("run", "--rm", "--network", "scale-restart", IMAGE, "true")) for _ in range(3)
        )
        for networks in points:
            asyncio.run(state.grow(networks - 1, host))
            point = _start_point(host, state, restarts)
            curve.append(point)
            print(
                f"  {point.networks:>4} networks, {point.endpoints:>5} endpoints: socket {point.socket_s:.2f} s,"
                f" first CreateEndpoint {point.endpoint_s:.2f} s, first docker run {point.run_s:.2f} s,"
                f" RSS {point.rss_mb:.1f} MB (load {point.load})",
                flush=True,
            )
    print(f"\n`docker run --rm` on the same network with pynet warm: {warm:.0f} ms (median of 3)")
    print(f"\n{'networks':>9}{'endpoints':>10}{'socket s':>10}{'endpoint s':>12}", end="")
    print(f"{'docker run s':>14}{'RSS MB':>8}  load")
    for p in curve:
        print(
            f"{p.networks:>9}{p.endpoints:>10}{p.socket_s:>10.2f}{p.endpoint_s:>12.2f}{p.run_s:>14.2f}{p.rss_mb:>8.1f}"
            f"  {p.load}"
        )
    last = curve[-1]
    print(
        f"\ntargets at {last.networks} networks, {last.endpoints} endpoints: RSS {last.rss_mb:.1f} MB < 100:"
        f" {'met' if last.rss_mb < 100 else 'MISSED'}; first CreateEndpoint {last.endpoint_s:.2f} s < 5:"
        f" {'met' if last.endpoint_s < 5 else 'MISSED'}"
    )
    _plot_restart(curve)


def _plot_restart(curve: list[Start]) -> None:
    """Two panels over the endpoints held: the start-up's milestones (s), and RSS (MB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.endpoints for p in curve]
    fig, (times, rss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, ys in (
        ("socket answers (Activate)", [p.socket_s for p in curve]),
        ("first CreateEndpoint succeeds", [p.endpoint_s for p in curve]),
        ("first docker run succeeds", [p.run_s for p in curve]),
    ):
        times.plot(xs, ys, marker="o", label=label)
    times.axhline(5, color="gray", linestyle=":", label="target 5 s")
    times.set_ylabel("seconds from spawning pynet (median of restarts)")
    rss.plot(xs, [p.rss_mb for p in curve], marker="o", color="tab:gray", label="RSS after the first request")
    rss.axhline(100, color="gray", linestyle=":", label="target 100 MB")
    rss.set_ylabel("RSS (MB)")
    for ax in (times, rss):
        ax.set_xlabel(f"endpoints held ({PER_NETWORK} a network: networks = endpoints / {PER_NETWORK})")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"pynet start-up against the state it holds (Docker {DOCKER_RELEASE}, one lab host)")
    fig.tight_layout()
    path = HERE / "scale-restart.png"
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


# pynet's Prometheus metrics on a socket in the lab host: the networks curve reads the time
# pynet spent answering each docker command's requests, so what grows in pynet and what grows
# in dockerd are told apart.
METRICS_SOCKET = "/run/pynet-bench-metrics.sock"
# The samples' series: each driver's docker command, end to end, and "pynet own", the part of
# pynet's command spent in pynet's handlers (every request it made, IPAM included).
OWN = "pynet own"


def _pynet_seconds(host: Host) -> float:
    """Seconds pynet has spent answering plugin requests so far (every method's histogram sum)."""
    status, body = unix_http(str(host.inside(METRICS_SOCKET)), "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"pynet's metrics: HTTP {status}")
    lines = body.decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("pynet_request_seconds_sum{"))


def _network_samples(host: Host, count: int) -> dict[str, dict[str, list[float]]]:
    """Creates COUNT networks of each driver one by one, then removes them in reverse; the two
    drivers take turns, and who goes first swaps every time, so load drift hits both alike."""
    series = (*DRIVERS, OWN)
    times: dict[str, dict[str, list[float]]] = {op: {d: [0.0] * count for d in series} for op in ("create", "rm")}

    def turns(i: int) -> list[str]:
        return list(DRIVERS) if i % 2 == 0 else list(DRIVERS)[::-1]

    def sample(op: str, driver: str, i: int, cmd: tuple[str, ...]) -> None:
        before = _pynet_seconds(host) if driver == "pynet" else 0.0
        times[op][driver][i] = timed(partial(host.docker, *cmd))
        if driver == "pynet":
            times[op][OWN][i] = (_pynet_seconds(host) - before) * 1000

    for i in range(count):
        for driver in turns(i):
            args, prefix = DRIVERS[driver]
            name = f"scale-{driver}-{i}"
            sample("create", driver, i, ("network", "create", *args, "--subnet", f"{prefix}.{i}.0/24", name))
        if (i + 1) % DECADE == 0:
            _progress("created", i + 1 - DECADE, times["create"])
    for i in reversed(range(count)):
        for driver in turns(i):
            sample("rm", driver, i, ("network", "rm", f"scale-{driver}-{i}"))
        if i % DECADE == 0:
            _progress("removed", i, times["rm"])
    return times


def _print_shares(op: str, samples: dict[str, list[float]]) -> None:
    """pynet's command split into pynet's own handlers and the rest (dockerd, the CLI), by
    decade, with the growth of each: last decade / first, and the mean of the last five / the
    first five."""
    rest = [end - own for end, own in zip(samples["pynet"], samples[OWN], strict=True)]
    parts = {"pynet end to end": samples["pynet"], OWN: samples[OWN], "the rest": rest}
    parts["Docker's bridge"] = samples["docker"]
    medians = {k: [statistics.median(v[i : i + DECADE]) for i in range(0, len(v), DECADE)] for k, v in parts.items()}
    print(f"\ndocker network {op}, ms, medians: pynet's command split into pynet's handlers and the rest")
    print(f"{'networks':>10}" + "".join(f"{k:>18}" for k in parts))
    for n, row in enumerate(zip(*medians.values(), strict=True)):
        print(f"{n * DECADE:>5}-{n * DECADE + DECADE - 1:<4}" + "".join(f"{x:>18.1f}" for x in row))
    five = max(1, min(5, len(next(iter(medians.values()))) // 2))
    print(f"{'last/first':>10}" + "".join(f"{m[-1] / m[0]:>18.2f}" for m in medians.values()))
    means = [statistics.mean(m[-five:]) / statistics.mean(m[:five]) for m in medians.values()]
    print(f"{'5 vs 5':>10}" + "".join(f"{x:>18.2f}" for x in means))


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
    with _docker_lab(f"{lab_name}-net", ("--metrics-listen", METRICS_SOCKET)) as lab:
        times = _network_samples(lab.hosts[0], count)
    print(f"load at the end {_load()}")
    series: Series = {}
    for op, samples in times.items():
        _print_shares(op, samples)
        decades = _by_decade({d: samples[d] for d in DRIVERS})
        print(f"\ndocker network {op}, ms (networks of the driver already on the host)")
        _print_decades("networks", decades)
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
PROBE_NET, CREATED_NET = 255, 254  # 10.66.<i>.0/24 of the probe network, and of the one made and deleted


async def _pool(c: PluginClient, subnet: str) -> tuple[str, dict[str, Any]]:
    """SUBNET's pool and its gateway address, requested as dockerd does before CreateNetwork:
    (PoolID, CreateNetwork's IPv4Data)."""
    pid = (await c.call("IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": subnet, "V6": False}))[
        "PoolID"
    ]
    gw = await c.call("IpamDriver.RequestAddress", {"PoolID": pid, "Options": {"RequestAddressType": GATEWAY_TYPE}})
    return pid, {"Options": {}, "IPv4Data": [{"Pool": subnet, "Gateway": gw["Address"]}]}


async def _published_network(c: PluginClient, i: int, host_port: int) -> dict[str, str]:
    """A network 10.66.<i>.0/24 with one endpoint joined (as dockerd makes them, on the
    socket, with no container); publishes HOST_PORT unless 0. Returns the endpoint's IDs."""
    pid, network = await _pool(c, f"10.66.{i}.0/24")
    ids = {"NetworkID": secrets.token_hex(32), "EndpointID": secrets.token_hex(32)}
    await c.call("NetworkDriver.CreateNetwork", {"NetworkID": ids["NetworkID"], **network})
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
FIREWALL_OPS = ("publish", "revoke", "network create", "network delete")


async def _firewall_curve(
    sock: str, points: Sequence[int], samples: int, control: Callable[[], float]
) -> FirewallCurves:
    curves: Series = {op: [] for op in FIREWALL_OPS}
    paired: dict[str, list[float]] = {op: [] for op in FIREWALL_OPS}
    async with PluginClient(sock) as c:
        probe = await _published_network(c, PROBE_NET, 0)
        _, network = await _pool(c, f"10.66.{CREATED_NET}.0/24")
        created: list[str] = []

        async def timed_call(method: str, body: dict[str, Any]) -> float:
            start = time.perf_counter()
            await c.call(f"NetworkDriver.{method}", body)
            return (time.perf_counter() - start) * 1000

        async def create() -> float:
            created.append(secrets.token_hex(32))
            return await timed_call("CreateNetwork", {"NetworkID": created[-1], **network})

        async def delete() -> float:
            return await timed_call("DeleteNetwork", {"NetworkID": created.pop()})

        calls: dict[str, Callable[[], Awaitable[float]]] = {
            "publish": partial(timed_call, "ProgramExternalConnectivity", {**probe, "Options": _publish(PROBE_PORT)}),
            "revoke": partial(timed_call, "RevokeExternalConnectivity", {**probe, "Options": {}}),
            "network create": create,
            "network delete": delete,
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
    print(
        f"\nfirewall: publish / revoke one port, create / delete one network, on the socket, {samples} samples"
        f" per point, load {_load()}"
    )
    with _docker_lab(f"{lab_name}-fw") as lab:
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
        {op if "network" in op else f"{op} one port": line for op, line in curves.items()},
        HERE / "scale-firewall.png",
        "networks already on the host, each publishing a port",
        "Program/RevokeExternalConnectivity, Create/DeleteNetwork on the socket (ms)",
        "pynet firewall: one published port, one network, against networks publishing ports",
    )


CURVES: dict[str, Callable[[bool, str], None]] = {
    "ipam": ipam,
    "networks": networks,
    "firewall": firewall,
    "containers": containers,
    "restart": restart,
    "vxlan": scale_vxlan.vxlan,
}


def main(curves: Sequence[str] = (), quick: bool = False, lab_name: str = "pnscale") -> None:
    for name in curves or CURVES:
        CURVES[name](quick, lab_name)
