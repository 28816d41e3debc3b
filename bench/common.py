"""Timing helpers shared by the benchmarks: medians and percentiles of repeated runs."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Sequence

import aiohttp

from lab import IMAGE, Host, Lab

_PING_AVG = re.compile(r"min/avg/max = [\d.]+/([\d.]+)/")


@dataclass
class Row:
    metric: str
    pynet: float
    docker: float
    unit: str
    better: str  # "lower" or "higher"
    # Median of the per-round pynet/docker ratios, when `compare` took the samples in rounds:
    # unlike the ratio of the medians, it cancels load that drifts between rounds.
    paired: float | None = None

    @property
    def ratio(self) -> float:
        return self.pynet / self.docker if self.docker else float("nan")


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def save_plot(fig: Any, ax: Any, title: str, path: Path) -> None:
    """The finish every bench plot shares: y from 0, a light grid, the legend, the title, PNG."""
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def container_ip(host: Host, container: str) -> str:
    """The IPv4 address of a container on its only network."""
    return host.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()


def compare(metric: str, unit: str, better: str, n: int, pynet: Callable[[], float], docker: Callable[[], float]) -> Row:
    """Medians of N samples of each, taken in turns so drift on the shared machine hits both
    alike; who goes first swaps every round, so neither always runs on a warmer machine."""
    ours: list[float] = []
    theirs: list[float] = []
    turns = ((pynet, ours), (docker, theirs))
    for i in range(n):
        for fn, samples in turns if i % 2 == 0 else turns[::-1]:
            samples.append(fn())
    paired = statistics.median(p / d for p, d in zip(ours, theirs) if d)
    return Row(metric, statistics.median(ours), statistics.median(theirs), unit, better, paired)


def paired_row(metric: str, unit: str, better: str, samples: dict[str, list[float]]) -> Row:
    """A Row of `samples["pynet"]` against `samples["docker"]`, taken in the same rounds."""
    ours, theirs = samples["pynet"], samples["docker"]
    paired = statistics.median(p / d for p, d in zip(ours, theirs) if d)
    return Row(metric, statistics.median(ours), statistics.median(theirs), unit, better, paired)


def network_lifecycle(host: Host, create_args: dict[str, Callable[[int], Sequence[str]]], n: int) -> list[Row]:
    """`docker network create` then `rm` of a new network, N rounds, each driver once a round,
    who goes first swapping every round; `create_args[driver](i)` are round i's arguments
    (driver, options, a subnet of the round's own)."""
    created: dict[str, list[float]] = {"pynet": [], "docker": []}
    removed: dict[str, list[float]] = {"pynet": [], "docker": []}
    for i in range(n):
        for driver in ("pynet", "docker") if i % 2 == 0 else ("docker", "pynet"):
            name = f"bench-net-{driver}-{i}"
            args = create_args[driver](i)
            created[driver].append(timed(lambda: host.docker("network", "create", *args, name)))
            removed[driver].append(timed(lambda: host.docker("network", "rm", name)))
    return [
        paired_row("docker network create", "ms, median", "lower", created),
        paired_row("docker network rm", "ms, median", "lower", removed),
    ]


def run_share(host: Host, networks: dict[str, str], n: int) -> list[Row]:
    """`docker run --rm` on each driver's network and with `--network none`, N rounds of the
    three in turns (the order rotates every round). The network's own share of a run is its
    time less the same round's `--network none`: what the driver and its network add."""
    times: dict[str, list[float]] = {"pynet": [], "docker": [], "none": []}
    nets = {**networks, "none": "none"}
    order = list(nets)
    for i in range(n):
        for kind in order[i % 3 :] + order[: i % 3]:
            times[kind].append(timed(lambda: host.docker("run", "--rm", "--network", nets[kind], IMAGE, "true")))
    share = {k: [t - none for t, none in zip(times[k], times["none"])] for k in networks}
    med = statistics.median
    return [
        paired_row("docker run --rm (true)", "ms, median", "lower", times),
        Row("docker run --rm --network none", med(times["none"]), med(times["none"]), "ms, median", "lower"),
        Row("network's share of docker run", med(share["pynet"]), med(share["docker"]), "ms, median of run - none", "lower"),
    ]


def ping_rtt_us(host: Host, network: str, target: str, count: int = 20, interval: float = 0.2) -> float:
    """Average RTT in microseconds (busybox prints ms with 3 decimals) of busybox ping from a
    fresh container on `network` of `host` (one run)."""
    out = host.docker(
        "run", "--rm", "--network", network, IMAGE, "ping", "-c", str(count), "-i", str(interval), target,
        timeout=count * interval + 60,
    ).stdout
    found = _PING_AVG.search(out)
    if found is None:
        raise RuntimeError(f"no round-trip summary in ping's output:\n{out}")
    return float(found.group(1)) * 1000


def iperf_gbits(host: Host, network: str, seconds: int, tag: str, client: Host | None = None) -> float:
    """Container-to-container TCP throughput on `network` (one iperf3 run): the server on
    `host`, the client on `client` (another host, for traffic across the underlay) or `host`."""
    server = f"iperf-srv-{tag}"
    host.docker("run", "-d", "--name", server, "--network", network, "pnbusybox:latest", "iperf3", "-s", "-1")
    try:
        ip = container_ip(host, server)
        time.sleep(0.3)
        out = (client or host).docker(
            "run", "--rm", "--network", network, "pnbusybox:latest", "iperf3", "-c", ip, "-t", str(seconds), "-J",
            timeout=seconds + 60,
        ).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        host.docker("rm", "-f", server, check=False)


def print_table(title: str, rows: list[Row]) -> None:
    """A `paired` column (see Row) appears when some row has the figure."""
    paired = any(r.paired is not None for r in rows)
    print(f"\n{title}")
    head = f"{'metric':<34}{'pynet':>12}{'docker':>12}{'pynet/docker':>14}"
    head += f"{'paired':>8}" if paired else ""
    print(f"{head}  unit ({'target' if rows else ''})")
    for r in rows:
        line = f"{r.metric:<34}{r.pynet:>12.2f}{r.docker:>12.2f}{r.ratio:>14.3f}"
        if paired:
            line += f"{r.paired:>8.3f}" if r.paired is not None else f"{'':>8}"
        print(f"{line}  {r.unit} ({r.better} is better)")


class PluginClient:
    """pynet's plugin API on one socket, called as dockerd calls it (`POST /<Method>`, JSON);
    a reply other than 200 raises."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    async def __aenter__(self) -> PluginClient:
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.session.close()

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"http://plugin/{method}", data=json.dumps(body)) as r:
            reply: dict[str, Any] = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"{method}: {reply}")
            return reply


# -- two drivers side by side across two lab hosts (macvlan, vxlan) ---------------------------
# `networks` maps "pynet" and "docker" to a network of that driver present on both hosts.


def start_peers(host: Host, networks: dict[str, str]) -> dict[str, str]:
    """A container per network on HOST for the other host to ping: the address per driver."""
    peers = {}
    for driver, net in networks.items():
        name = f"bench-peer-{driver}"
        host.docker("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "infinity")
        peers[driver] = container_ip(host, name)
    return peers


def per_driver(fn: Callable[[str], float]) -> tuple[Callable[[], float], Callable[[], float]]:
    """`compare`'s two arguments from one measurement written once for both drivers."""
    return (lambda: fn("pynet")), (lambda: fn("docker"))


def run_time(host: Host, networks: dict[str, str], n: int) -> Row:
    def once(driver: str) -> float:
        return timed(lambda: host.docker("run", "--rm", "--network", networks[driver], IMAGE, "true"))

    return compare("docker run --rm (true)", "ms, median", "lower", n, *per_driver(once))


def throughput(lab: Lab, networks: dict[str, str], runs: int, seconds: int) -> Row:
    h1, h2 = lab.hosts

    def once(driver: str) -> float:
        return iperf_gbits(h2, networks[driver], seconds, driver, client=h1)

    return compare("TCP host1 ctr -> host2 ctr", "Gbit/s, median", "higher", runs, *per_driver(once))


def rtt(lab: Lab, networks: dict[str, str], peers: dict[str, str], runs: int, count: int) -> Row:
    h1 = lab.hosts[0]

    def once(driver: str) -> float:
        return ping_rtt_us(h1, networks[driver], peers[driver], count)

    return compare(f"ping RTT host1 -> host2, avg {count}", "us, median", "lower", runs, *per_driver(once))


def cross_host_rows(
    lab: Lab, networks: dict[str, str], n_run: int, n_iperf: int, seconds: int, n_ping: int, count: int
) -> list[Row]:
    """`docker run` time on host 1, then TCP throughput and ping RTT from host 1's containers
    to host 2's, each driver warmed up first so neither pays for first-use costs."""
    h1, h2 = lab.hosts
    for net in networks.values():
        h1.docker("run", "--rm", "--network", net, IMAGE, "true")
    peers = start_peers(h2, networks)
    return [
        run_time(h1, networks, n_run),
        throughput(lab, networks, n_iperf, seconds),
        rtt(lab, networks, peers, n_ping, count),
    ]
