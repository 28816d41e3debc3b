"""pynet's bridge backend against Docker's built-in bridge driver, in one lab host, one run.

Docker-level figures are wall times of the docker CLI, alternating pynet and Docker so drift
on this shared 2-core machine hits both alike. Per-request latency is measured on pynet's
socket directly, with real kernel work (veths, firewall), the calls dockerd makes for a
`docker run`: RequestAddress, CreateEndpoint, Join, Leave, DeleteEndpoint.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from typing import Any

import aiohttp

from bench.common import Row, iperf_gbits, percentile, print_table, timed
from lab import PLUGIN_SOCKET, Host, Lab

IMAGE = "pnbusybox:latest"
METHODS = ("RequestAddress", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint")


def network_lifecycle(host: Host, n: int) -> list[Row]:
    create: dict[str, list[float]] = {"pynet": [], "bridge": []}
    remove: dict[str, list[float]] = {"pynet": [], "bridge": []}
    for i in range(n):
        for driver, args, third in (
            ("pynet", ("-d", "pynet", "--ipam-driver", "pynet"), 70),
            ("bridge", ("-d", "bridge"), 71),
        ):
            name = f"bench-{driver}-{i}"
            create[driver].append(timed(lambda: host.docker("network", "create", *args, "--subnet", f"10.{third}.{i}.0/24", name)))
            remove[driver].append(timed(lambda: host.docker("network", "rm", name)))
    med = statistics.median
    return [
        Row("docker network create", med(create["pynet"]), med(create["bridge"]), "ms, median", "lower"),
        Row("docker network rm", med(remove["pynet"]), med(remove["bridge"]), "ms, median", "lower"),
    ]


def run_time(host: Host, networks: dict[str, str], n: int) -> Row:
    samples: dict[str, list[float]] = {k: [] for k in networks}
    for _ in range(n):
        for driver, net in networks.items():
            samples[driver].append(timed(lambda: host.docker("run", "--rm", "--network", net, IMAGE, "true")))
    return Row("docker run --rm (true)", statistics.median(samples["pynet"]), statistics.median(samples["bridge"]), "ms, median", "lower")


def throughput(host: Host, networks: dict[str, str], runs: int, seconds: int) -> Row:
    samples: dict[str, list[float]] = {k: [] for k in networks}
    for i in range(runs):
        for driver, net in networks.items():
            samples[driver].append(iperf_gbits(host, net, seconds, f"{driver}{i}"))
    return Row(
        "TCP container->container", statistics.median(samples["pynet"]), statistics.median(samples["bridge"]), "Gbit/s, median", "higher"
    )


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
        for _ in range(n):
            ep = secrets.token_hex(32)
            addr = (await call("IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": None}))["Address"]
            ids = {"NetworkID": net, "EndpointID": ep}
            await call("NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": addr}, "Options": {}})
            await call("NetworkDriver.Join", {**ids, "SandboxKey": "", "Options": {}})
            await call("NetworkDriver.Leave", ids)
            await call("NetworkDriver.DeleteEndpoint", ids)
            await call("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": addr.split("/")[0]})
        await call("NetworkDriver.DeleteNetwork", {"NetworkID": net})
        await call("IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": gw["Address"].split("/")[0]})
        await call("IpamDriver.ReleasePool", {"PoolID": pid})
    return times


def main(quick: bool = False) -> None:
    n_net, n_run, n_iperf, secs, n_req = (3, 5, 1, 2, 50) if quick else (10, 20, 3, 5, 500)
    with Lab(name="pnbench", hosts=1, etcd=False) as lab:
        host = lab.hosts[0]
        rows = network_lifecycle(host, n_net)
        host.docker("network", "create", "-d", "pynet", "--ipam-driver", "pynet", "--subnet", "10.73.0.0/24", "bench-pynet")
        host.docker("network", "create", "-d", "bridge", "--subnet", "10.74.0.0/24", "bench-bridge")
        networks = {"pynet": "bench-pynet", "bridge": "bench-bridge"}
        host.docker("run", "--rm", "--network", "bench-pynet", IMAGE, "true")  # warm up both paths
        host.docker("run", "--rm", "--network", "bench-bridge", IMAGE, "true")
        rows.append(run_time(host, networks, n_run))
        rows.append(throughput(host, networks, n_iperf, secs))
        print_table("bridge: pynet vs Docker's bridge driver (same lab host, same run)", rows)
        times = asyncio.run(request_latency(str(host.inside(PLUGIN_SOCKET)), n_req))
        print(f"\npynet per-request latency on its socket, embedded store, n={n_req}")
        print(f"{'request':<20}{'p50 ms':>10}{'p99 ms':>10}")
        for method, samples in times.items():
            print(f"{method:<20}{percentile(samples, 50):>10.2f}{percentile(samples, 99):>10.2f}")
