"""pynet's macvlan backend against Docker's built-in macvlan driver, across two lab hosts, one run.

Both networks hang off each host's eth0 (the underlay) in bridge mode, as two macvlan
networks on one parent can; they need different subnets, and each host gets its own
--ip-range since no IPAM sees the other host. Both use Docker's default IPAM, so what differs
is the driver alone. Figures are taken in turns, who goes first swapping every round, so drift
on this shared 2-core machine hits both alike (bench/common.py, `compare`).
"""

from __future__ import annotations

import ipaddress

from bench.common import cross_host_rows, print_table
from lab import Lab

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


def main(quick: bool = False) -> None:
    n_run, n_iperf, secs, n_ping, count = (5, 1, 2, 1, 5) if quick else (40, 15, 3, 9, 20)
    with Lab(name="pnbenchmv", hosts=2, etcd=False) as lab:
        rows = cross_host_rows(lab, create_networks(lab), n_run, n_iperf, secs, n_ping, count)
        print_table("macvlan: pynet vs Docker's macvlan driver (parent eth0, 2 lab hosts, same run)", rows)
