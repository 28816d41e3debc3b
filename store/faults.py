"""Crash hooks: named points on every multi-step mutation where the daemon can be made to die.

`PYNET_CRASH_AT=<point>` (read once, when `pynet serve` starts: `arm_from_env`) makes the
daemon exit at once with CRASH_EXIT when it reaches that point, through `os._exit`: no
`finally`, no flush, no socket unlink, as a `kill -9` or an OOM kill would leave it. The fault
tier (tests/faults/) iterates POINTS, arming each in turn, and checks that a restarted daemon
loses nothing, leaks nothing and lets nothing in. Unarmed, `hit` is one comparison of two
strings. The module imports nothing of pynet, so every room (store, ipam, drivers, plugin) may
call it.
"""

from __future__ import annotations

import os

ENV = "PYNET_CRASH_AT"
CRASH_EXIT = 86  # distinct from 1 (start-up error) and from death by a signal (negative)

# Every point, with where it is: the fault tier's parameters.
POINTS: dict[str, str] = {
    "request_pool.after_store": "RequestPool: the pool is in the store, no reply yet",
    "release_pool.after_unref": "ReleasePool: this host's reference to a shared pool is gone, its addresses not yet",
    "release_pool.after_store": "ReleasePool: done in the store, no reply yet",
    "request_address.after_store": "RequestAddress: the address is allocated, no reply yet",
    "release_address.after_store": "ReleaseAddress: the address is free, no reply yet",
    "create_network.after_vni": "CreateNetwork (VXLAN): the VNI is reserved, nothing else exists",
    "create_network.after_kernel": "CreateNetwork: bridge, devices and rules exist, no record yet",
    "create_network.after_store": "CreateNetwork: the record is saved, no reply yet",
    "delete_network.after_store": "DeleteNetwork: its and its endpoints' records are deleted, no link yet",
    "delete_network.after_endpoints": "DeleteNetwork: its endpoints' veths are retired, its bridge is not",
    "delete_network.after_kernel": "DeleteNetwork: done, no reply yet",
    "create_endpoint.after_kernel": "CreateEndpoint: the veth exists, no record yet",
    "create_endpoint.after_store": "CreateEndpoint: the record is saved, its address not yet bound to it",
    "create_endpoint.after_bind": "CreateEndpoint: done, no reply yet",
    "join.after_store": "Join: the endpoint is recorded as joined, no reply yet",
    "leave.after_store": "Leave: the endpoint is recorded as left, no reply yet",
    "delete_endpoint.after_store": "DeleteEndpoint: the record is deleted, the veth is not retired",
    "delete_endpoint.after_kernel": "DeleteEndpoint: done, no reply yet",
    "vxlan.create.after_device": "CreateNetwork (VXLAN): bridge and VXLAN device exist, the VTEP is not registered",
    "vxlan.program.partial": "VXLAN peer programming: one FDB entry added, the rest not",
}

_armed = ""


class UnknownPoint(ValueError):
    """PYNET_CRASH_AT names no point: a typo must not pass for a test that never crashed."""


def arm_from_env() -> str:
    """Read PYNET_CRASH_AT once; returns the armed point, "" when none."""
    global _armed
    point = os.environ.get(ENV, "")
    if point and point not in POINTS:
        raise UnknownPoint(f"pynet: {ENV} must be one of {', '.join(POINTS)}, got {point!r}")
    _armed = point
    return point


def hit(point: str) -> None:
    """Die here if this point is armed."""
    if point == _armed:
        os.write(2, f"pynet: crash point {point} reached: exiting at once\n".encode())
        os._exit(CRASH_EXIT)
