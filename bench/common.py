"""Timing helpers shared by the benchmarks: medians and percentiles of repeated runs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from lab import Host


@dataclass
class Row:
    metric: str
    pynet: float
    docker: float
    unit: str
    better: str  # "lower" or "higher"

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


def iperf_gbits(host: Host, network: str, seconds: int, tag: str) -> float:
    """Container-to-container TCP throughput on `network` (one iperf3 run)."""
    server = f"iperf-srv-{tag}"
    host.docker("run", "-d", "--name", server, "--network", network, "pnbusybox:latest", "iperf3", "-s", "-1")
    try:
        ip = host.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", server).stdout.strip()
        time.sleep(0.3)
        out = host.docker(
            "run", "--rm", "--network", network, "pnbusybox:latest", "iperf3", "-c", ip, "-t", str(seconds), "-J",
            timeout=seconds + 60,
        ).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        host.docker("rm", "-f", server, check=False)


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'metric':<34}{'pynet':>12}{'docker':>12}{'pynet/docker':>14}  unit ({'target' if rows else ''})")
    for r in rows:
        print(f"{r.metric:<34}{r.pynet:>12.2f}{r.docker:>12.2f}{r.ratio:>14.3f}  {r.unit} ({r.better} is better)")
