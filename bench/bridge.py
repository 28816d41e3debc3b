"""pynet's bridge backend against Docker's built-in bridge driver, in one lab host, one run.

Docker-level figures are wall times of the docker CLI, pynet and Docker taking turns so drift
on this shared 2-core machine hits both alike; `docker run` also runs with `--network none`
in the same rounds, so the network's own share of a run shows. Per-request latency is
measured on pynet's socket directly, with real kernel work (veths, firewall), the calls
dockerd makes for a `docker run`: RequestAddress, CreateEndpoint, Join, Leave,
DeleteEndpoint, ReleaseAddress; each round also times GetCapabilities, which does nothing:
its latency is the socket's and the machine's floor, what no handler can go under.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Row, iperf_gbits, network_lifecycle, percentile, print_table, run_share
from lab import IMAGE, PLUGIN_SOCKET, Host, Lab
from lab.releases import MACHINE, fetch

METHODS = ("RequestAddress", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint", "ReleaseAddress", "GetCapabilities")
TARGET_P99_MS = 3.0


def throughput(host: Host, networks: dict[str, str], runs: int, seconds: int) -> Row:
    samples: dict[str, list[float]] = {k: [] for k in networks}
    for i in range(runs):
        for driver, net in networks.items():
            samples[driver].append(iperf_gbits(host, net, seconds, f"{driver}{i}"))
    return Row(
        "TCP container->container", statistics.median(samples["pynet"]), statistics.median(samples["docker"]),
        "Gbit/s, median", "higher",
    )


Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def request_latency(sock: str, n: int) -> dict[str, list[float]]:
    """Drive the calls of `docker run` straight at pynet's socket, n times."""
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    net = secrets.token_hex(32)
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s:

        async def call(method: str, body: dict[str, Any]) -> dict[str, Any]:
            start = time.perf_counter()
            async with s.post(f"http://p/{method}", data=json.dumps(body)) as r:
                reply = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"{method}: {reply}")
            short = method.split(".")[1]
            if short in times:
                times[short].append((time.perf_counter() - start) * 1000)
            return reply

        pool = await call("IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": "10.72.0.0/16", "V6": False})
        pid = pool["PoolID"]
        gw = await call("IpamDriver.RequestAddress", {"PoolID": pid, "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        await call(
            "NetworkDriver.CreateNetwork",
            {"NetworkID": net, "Options": {"com.docker.network.generic": {}}, "IPv4Data": [{"Pool": "10.72.0.0/16", "Gateway": gw["Address"]}]},
        )
        times["RequestAddress"].clear()  # the gateway's: not one of a `docker run`
        # The client's own cycle collections (0.1-1.8 ms) would count as pynet's latency;
        # dockerd, the real client, is not Python.
        gc.disable()
        try:
            await _rounds(call, net, pid, n)
        finally:
            gc.enable()
        await call("NetworkDriver.DeleteNetwork", {"NetworkID": net})
        await call("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": gw["Address"].split("/")[0]})
        await call("IpamDriver.ReleasePool", {"PoolID": pid})
    return times


async def _rounds(call: Call, net: str, pool: str, n: int) -> None:
    for _ in range(n):
        ep = secrets.token_hex(32)
        await call("NetworkDriver.GetCapabilities", {})
        addr = (await call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": None}))["Address"]
        ids = {"NetworkID": net, "EndpointID": ep}
        await call("NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": addr}, "Options": {}})
        await call("NetworkDriver.Join", {**ids, "SandboxKey": "", "Options": {}})
        await call("NetworkDriver.Leave", ids)
        await call("NetworkDriver.DeleteEndpoint", ids)
        await call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": addr.split("/")[0]})


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process PID so far: unlike latency, it barely moves with
    the machine's load, so it compares runs taken at different loads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_latency(times: dict[str, list[float]], n: int, cpu_ms: float) -> None:
    print(f"\npynet per-request latency on its socket, embedded store, n={n} (load average {load()})")
    print(f"pynet's CPU time (user + system) per round of {len(METHODS)} requests: {cpu_ms:.2f} ms")
    print(f"{'request':<20}{'p50 ms':>10}{'p99 ms':>10}  target p99 <= {TARGET_P99_MS} ms")
    for method, samples in times.items():
        p99 = percentile(samples, 99)
        verdict = "floor" if method == "GetCapabilities" else "met" if p99 <= TARGET_P99_MS else "MISSED"
        print(f"{method:<20}{percentile(samples, 50):>10.2f}{p99:>10.2f}  {verdict}")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(quick: bool = False, lab_name: str | None = None, docker: str = MACHINE.name) -> None:
    n_net, n_run, n_iperf, secs, n_req = (3, 6, 1, 2, 50) if quick else (10, 30, 3, 5, 500)
    with Lab(name=lab_name or "pnbench", hosts=1, etcd=False, docker=fetch(docker)) as built:
        host = built.hosts[0]
        print(f"bridge: Docker {docker}, load average at start {load()}")
        rows = network_lifecycle(
            host,
            {
                "pynet": lambda i: ("-d", "pynet", "--ipam-driver", "pynet", "--subnet", f"10.70.{i}.0/24"),
                "docker": lambda i: ("-d", "bridge", "--subnet", f"10.71.{i}.0/24"),
            },
            n_net,
        )
        host.docker("network", "create", "-d", "pynet", "--ipam-driver", "pynet", "--subnet", "10.73.0.0/24", "bench-pynet")
        host.docker("network", "create", "-d", "bridge", "--subnet", "10.74.0.0/24", "bench-bridge")
        networks = {"pynet": "bench-pynet", "docker": "bench-bridge"}
        for net in (*networks.values(), "none"):  # warm up every path
            host.docker("run", "--rm", "--network", net, IMAGE, "true")
        rows += run_share(host, networks, n_run)
        rows.append(throughput(host, networks, n_iperf, secs))
        print_table(f"bridge: pynet vs Docker's bridge driver (same lab host, same run; load average {load()})", rows)
        assert host.pynet is not None
        before = cpu_seconds(host.pynet.pid)
        times = asyncio.run(request_latency(str(host.inside(PLUGIN_SOCKET)), n_req))
        print_latency(times, n_req, (cpu_seconds(host.pynet.pid) - before) * 1000 / n_req)
