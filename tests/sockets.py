"""Real sockets on loopback for the port tests (never the host's wildcard addresses)."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> int:
    """The first of `count` consecutive loopback TCP ports nothing holds now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        first = probe.getsockname()[1]
    for start in range(first, 65535 - count):
        try:
            for port in range(start, start + count):
                with socket.socket() as s:
                    s.bind((LOOPBACK, port))
        except OSError:
            continue
        return start
    raise AssertionError("no free loopback ports")


def bindable(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
