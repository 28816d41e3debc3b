"""Address arithmetic and input validation for the IPAM, free of any store access.

Kept pure so the rules Docker users meet (which addresses are assignable, which subnet comes
next, what an error says) can be read and tested on their own. Every error names the Docker
CLI flag and the value the user typed, because that is all the user sees of a failed request.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from pynet.store.errors import InvalidRequest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Span = tuple[int, int, int]  # (family, first address, last address)


def family(v6: bool) -> str:
    return "IPv6" if v6 else "IPv4"


def parse_subnet(value: str, field: str, v6: bool) -> IPNetwork:
    """A CIDR the user typed; a bare address is refused because Docker needs a prefix length."""
    malformed = InvalidRequest(
        f"pynet: invalid {field} {value}: not a CIDR subnet (e.g. 10.1.0.0/24)"
    )
    if "/" not in value:
        raise malformed
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise malformed from None
    if (iface.version == 6) != v6:
        raise InvalidRequest(f"pynet: invalid {field} {value}: expected an {family(v6)} subnet")
    net = iface.network
    if iface.ip != net.network_address:
        raise InvalidRequest(f"pynet: invalid {field} {value}: host bits set, did you mean {net}?")
    return net


def parse_sub_pool(value: str, pool: IPNetwork) -> IPNetwork:
    sub = parse_subnet(value, "--ip-range", pool.version == 6)
    if not sub.subnet_of(pool):  # type: ignore[arg-type]
        raise InvalidRequest(f"pynet: invalid --ip-range {value}: not inside --subnet {pool}")
    return sub


def parse_ip(value: str, field: str) -> IPAddress:
    """A bare address, as Docker sends it in RequestAddress and ReleaseAddress."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidRequest(f"pynet: invalid {field} {value}: not an IP address") from None


def parse_ip_or_cidr(value: str, field: str) -> IPAddress:
    """CreateEndpoint carries CIDRs where IPAM calls carry bare addresses; accept both."""
    try:
        return ipaddress.ip_interface(value).ip
    except ValueError:
        raise InvalidRequest(f"pynet: invalid {field} {value}: not an IP address") from None


def reserved(subnet: IPNetwork) -> frozenset[int]:
    """Addresses no host may get: the IPv4 network and broadcast, the IPv6 subnet-router anycast.

    Point-to-point prefixes (/31, /32, /127, /128) have no such addresses (RFC 3021, RFC 6164),
    so every address in them is usable.
    """
    if subnet.max_prefixlen - subnet.prefixlen < 2:
        return frozenset()
    first = int(subnet.network_address)
    if subnet.version == 6:
        return frozenset({first})
    return frozenset({first, int(subnet.broadcast_address)})


def first_usable(subnet: IPNetwork) -> IPAddress:
    """Docker's default gateway: the lowest assignable address of the whole pool."""
    lo = int(subnet.network_address)
    return to_address(subnet, lo + 1 if lo in reserved(subnet) else lo)


def to_address(subnet: IPNetwork, value: int) -> IPAddress:
    """By the subnet's family: `ip_address(1)` would be IPv4 even for an address in ::/64."""
    return type(subnet.network_address)(value)


def check_assignable(ip: IPAddress, subnet: IPNetwork, field: str) -> None:
    """A specific address must lie in the pool (not necessarily the --ip-range) and be a host's."""
    if ip.version != subnet.version or ip not in subnet:
        raise InvalidRequest(f"pynet: invalid {field} {ip}: outside pool {subnet}")
    if int(ip) not in reserved(subnet):
        return
    if subnet.version == 6:
        what = "the subnet-router anycast address"
    elif ip == subnet.network_address:
        what = "the network address"
    else:
        what = "the broadcast address"
    raise InvalidRequest(f"pynet: invalid {field} {ip}: {what} of pool {subnet} cannot be assigned")


def usable_exclusions(exclude: Iterable[IPNetwork | str]) -> list[IPNetwork]:
    """Host routes to avoid; a default route (/0) is dropped since it would forbid everything.

    Docker's own overlap check skips routes without a destination for the same reason.
    """
    nets = [ipaddress.ip_network(e, strict=False) for e in exclude]
    return [n for n in nets if n.prefixlen > 0]


def first_free_subnet(
    ranges: Sequence[tuple[IPNetwork, int]], blocked: Sequence[IPNetwork]
) -> IPNetwork | None:
    """The first subnet, in configuration order, that overlaps nothing in `blocked`."""
    for base, prefixlen in ranges:
        hits = [b for b in blocked if _same_family_overlap(b, base)]
        found = _first_free_in(base, prefixlen, hits)
        if found is not None:
            return found
    return None


def _same_family_overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return spans_overlap(span(a), span(b))


@functools.lru_cache(maxsize=16384)
def span(subnet: IPNetwork | str) -> Span:
    """A subnet (or its CIDR) as integers, once: overlap checks run over every pool (RequestPool)
    or every network (CreateNetwork) at each request, and `ip_network(...).overlaps` on each
    took 0.5 and 1.1 ms of them at 250 (Dec 2026)."""
    net = ipaddress.ip_network(subnet)
    return net.version, int(net.network_address), int(net.broadcast_address)


def spans_overlap(a: Span, b: Span) -> bool:
    """Across families never, as `overlaps`."""
    return a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2]


def _first_free_in(base: IPNetwork, prefixlen: int, blocked: list[IPNetwork]) -> IPNetwork | None:
    """Jump over blockers instead of enumerating: a /32 split into /64s has 2**32 candidates.

    Each iteration either returns or moves past the end of at least one blocker, so the loop
    runs at most len(blocked) + 1 times.
    """
    step = 1 << (base.max_prefixlen - prefixlen)
    spans = [(int(b.network_address), int(b.broadcast_address)) for b in blocked]
    pos, end = int(base.network_address), int(base.broadcast_address)
    while pos + step - 1 <= end:
        cand_hi = pos + step - 1
        overlapping = [hi for lo, hi in spans if lo <= cand_hi and hi >= pos]
        if not overlapping:
            return type(base)((pos, prefixlen))
        past = max(overlapping) + 1
        pos = -(-past // step) * step  # round up to the next candidate boundary
    return None


def parse_default_pools(
    pools: Sequence[tuple[str, int]], v6: bool
) -> list[tuple[IPNetwork, int]]:
    """Checked at start so a bad configuration fails the daemon, not a later `network create`."""
    parsed: list[tuple[IPNetwork, int]] = []
    for cidr, prefixlen in pools:
        net = parse_subnet(cidr, f"default {family(v6)} pool", v6)
        if not net.prefixlen <= prefixlen <= net.max_prefixlen:
            raise InvalidRequest(
                f"pynet: invalid default {family(v6)} pool {cidr}: size /{prefixlen} must be"
                f" between /{net.prefixlen} and /{net.max_prefixlen}"
            )
        parsed.append((net, prefixlen))
    return parsed
