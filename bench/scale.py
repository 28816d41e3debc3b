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
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import scale_vxlan
from bench.common import PluginClient, percentile, save_plot
from lab import PLUGIN_SOCKET, Lab

HERE = Path(__file__).parent
SUBNET = "10.60.0.0/16"
EMPTY = "10.61.0.0/16"  # the control: a pool of the same daemon that stays empty
POINTS = (0, 2500, 5000, 10000, 15000, 20000)
SAMPLES = 300
QUICK_POINTS, QUICK_SAMPLES = (0, 300, 600), 30


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


def _plot(curves: dict[str, list[Point]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for store, points in curves.items():
        xs = [p.allocated for p in points]
        (line,) = ax.plot(xs, [p.median_ms for p in points], marker="o", label=f"{store}: median")
        ax.plot(xs, [p.p99_ms for p in points], marker="x", linestyle="--", color=line.get_color(), label=f"{store}: p99")
    ax.set_xlabel(f"addresses already allocated in the pool {SUBNET}")
    ax.set_ylabel("RequestAddress latency on the socket (ms)")
    save_plot(fig, ax, "pynet IPAM: RequestAddress latency against pool occupancy", path)


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
    _plot(curves, HERE / "scale-ipam.png")


CURVES: dict[str, Callable[[bool, str], None]] = {"ipam": ipam, "vxlan": scale_vxlan.vxlan}


def main(curves: Sequence[str] = (), quick: bool = False, lab_name: str = "pnscale") -> None:
    for name in curves or CURVES:
        CURVES[name](quick, lab_name)
