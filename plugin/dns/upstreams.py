"""Which resolvers names pynet does not know go to: the `--dns-upstream` setting, else the
host's, read as Docker reads them for its containers.

Docker (libnetwork's resolvconf package) takes the host's /etc/resolv.conf, and when that only
points at systemd-resolved's local stub (127.0.0.53), the real servers systemd-resolved lists
in /run/systemd/resolve/resolv.conf; it then drops loopback servers, which mean nothing inside a
container. pynet does the same: the list also goes into daemon.json after pynet's own address
(`pynet dns install`), where Docker would use a loopback entry from the host's netns and skip it
on `--internal` networks, and a 127.0.0.11 (Docker's embedded DNS, seen when the host's
resolv.conf is itself a container's) would send queries back to Docker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")


def nameservers(path: Path) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order; [] if it is missing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(words[1].split("%")[0])))
            except ValueError:
                continue  # a line the C resolver would ignore too
    return out


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def host_upstreams(resolv_conf: Path = RESOLV_CONF, systemd: Path = SYSTEMD_RESOLV_CONF) -> list[str]:
    servers = nameservers(resolv_conf)
    if servers and all(map(_loopback, servers)) and systemd.exists():
        servers = nameservers(systemd)
    return [s for s in servers if not _loopback(s)]


def upstreams(
    configured: Sequence[str], resolv_conf: Path = RESOLV_CONF, systemd: Path = SYSTEMD_RESOLV_CONF
) -> list[str]:
    """`--dns-upstream` (Settings.dns_upstreams) if set, else the host's."""
    return list(configured) or host_upstreams(resolv_conf, systemd)
