"""pynet's macvlan backend against Docker's built-in macvlan driver, across two lab hosts, one run.

Both networks hang off each host's eth0 (the underlay) in bridge mode, as two macvlan
networks on one parent can; they need different subnets, and each host gets its own
--ip-range since no IPAM sees the other host. Both use Docker's default IPAM, so what differs
is the driver alone. Figures are taken in turns, who goes first swapping every round, so drift
on this shared 2-core machine hits both alike (bench/common.py, `compare`). `docker network
create`/`rm` are timed on host 1 first, with networks of their own on eth0 (a subnet per
round), before the two networks the other figures use exist.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from bench.common import cross_host_rows, network_lifecycle, print_table
from lab import Lab
from lab.releases import MACHINE, fetch

DRIVERS: dict[str, tuple[str, ...]] = {
    "pynet": ("-d", "pynet", "-o", "mode=macvlan"),
    "docker": ("-d", "macvlan"),
}
SUBNETS = {"pynet": "10.81.0.0/24", "docker": "10.82.0.0/24"}


def host_range(subnet: str, index: int) -> str:
    """Host INDEX's share of SUBNET, a /28 from .64 on, clear of the gateway."""
    return str(list(ipaddress.ip_network(subnet).subnets(new_prefix=28))[3 + index])


def create_networks(lab: Lab) -> dict[str, str]:
    """The same network on every host, per driver: its name is the driver's key."""
    for driver, args in DRIVERS.items():
        subnet = SUBNETS[driver]
        gateway = str(ipaddress.ip_network(subnet)[1])
        for host in lab.hosts:
            host.docker(
                "network", "create", *args, "-o", "parent=eth0", "--subnet", subnet, "--gateway", gateway,
                "--ip-range", host_range(subnet, host.index), f"bench-{driver}",
            )
    return {driver: f"bench-{driver}" for driver in DRIVERS}


def lifecycle_args(driver: str) -> Callable[[int], tuple[str, ...]]:
    """Round i's `docker network create` arguments: a /24 of 10.83-84.x of its own on eth0."""
    third = 83 if driver == "pynet" else 84
    return lambda i: (*DRIVERS[driver], "-o", "parent=eth0", "--subnet", f"10.{third}.{i}.0/24")


def main(quick: bool = False, lab_name: str | None = None, docker: str = MACHINE.name) -> None:
    n_net, n_run, n_iperf, secs, n_ping, count = (3, 5, 1, 2, 1, 5) if quick else (20, 40, 15, 3, 9, 20)
    with Lab(name=lab_name or "pnbenchmv", hosts=2, etcd=False, docker=fetch(docker)) as built:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"macvlan: Docker {docker}, load average at start {load}")
        rows = network_lifecycle(built.hosts[0], {d: lifecycle_args(d) for d in DRIVERS}, n_net)
        rows += cross_host_rows(built, create_networks(built), n_run, n_iperf, secs, n_ping, count)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print_table(f"macvlan: pynet vs Docker's macvlan driver (parent eth0, 2 lab hosts, same run; load {load})", rows)
