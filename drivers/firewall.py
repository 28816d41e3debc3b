"""Firewall rules for bridge networks, written with `iptables-restore --noflush`, or as native
nftables tables where Docker runs its nftables firewall backend (drivers/nftables.py).

pynet owns only the chains named `PYNET-*` and one jump to each shared one from its built-in
chain. An apply rewrites all of them in one restore per family; a change of one network
rewrites that network's own chains only. Both write in the iptables flavour (nft or legacy)
that Docker uses on the host: on a Docker host FORWARD's policy is DROP, and ACCEPTs written in
the other flavour (or in a native nft table) never take effect (docs/dependencies.md, section 2).
Docker's chains are never edited. Under Docker's nftables backend the same chains (`written`)
go into pynet's own `ip pynet` / `ip6 pynet` tables instead, in one `nft -f -` per change
(written whole by `apply`, then only the chains a change changes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import re
import shlex
import subprocess
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pynet.drivers import nftables
from pynet.drivers.base import PortMap
from pynet.drivers.nftables import Runner as Runner  # re-exported: the iptables side uses them too
from pynet.drivers.nftables import in_netns as in_netns
from pynet.store.errors import InvalidRequest, PynetError

FLAVOURS = ("nft", "legacy")  # of iptables
NFTABLES = "nftables"  # Docker's nftables firewall backend: pynet's own nft tables, no iptables
IPTABLES = "iptables"  # given as a flavour: detect which of FLAVOURS, never NFTABLES
DOCKER_BRIDGES = ("docker0", "br-+")
TIMEOUT = 30.0  # seconds for one iptables process; `-w` alone would wait for the lock forever

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_PROTOS = ("tcp", "udp", "sctp")
_DNATED = "-m conntrack --ctstate DNAT"

# runs argv; returns (exit status, stdout); only for detection, which must not fail
SyncRunner = Callable[[list[str]], tuple[int, str]]


@dataclass(frozen=True)
class Jump:
    """The one rule in a built-in chain that hands packets to a pynet chain."""

    table: str
    chain: str
    target: str
    match: str = ""
    first: bool = True  # else: after the chain's own rules (users' policy), before a final RETURN

    def spec(self) -> str:
        return f"{self.match} -j {self.target}".strip()


JUMPS = (
    Jump("filter", "FORWARD", "PYNET-FORWARD"),  # DOCKER-USER instead where it exists: jumps_for()
    Jump("nat", "PREROUTING", "PYNET-PREROUTING", "-m addrtype --dst-type LOCAL"),
    Jump("nat", "OUTPUT", "PYNET-OUTPUT", "-m addrtype --dst-type LOCAL"),
    Jump("nat", "POSTROUTING", "PYNET-POSTROUTING"),
    Jump("raw", "PREROUTING", "PYNET-NOTRACK"),
)
# Only while the daemon serves names (issue 9): the resolver's address is local, so queries to
# it take INPUT, never FORWARD, and an internal network's FORWARD drops do not see them; this
# accept is what lets them in on a host whose INPUT policy drops.
INPUT_JUMP = Jump("filter", "INPUT", "PYNET-INPUT")
TABLES = ("filter", "nat", "raw")
# Chains no built-in chain jumps to: PYNET-FORWARD's head calls PYNET-ISOLATION, whose rules
# per network call PYNET-ISOLATION-2 (see _isolation_rules).
ISOLATION, ISOLATION_2 = "PYNET-ISOLATION", "PYNET-ISOLATION-2"
HELPER_CHAINS = {"filter": [ISOLATION, ISOLATION_2]}
# Docker keeps the jump to its users' chain first in FORWARD, re-inserting it above the rules
# it adds for every new network; a jump of pynet's own in FORWARD would end up below those.
# In DOCKER-USER pynet goes after the users' rules, so their policy still applies to pynet's
# networks, and before Docker's final RETURN.
DOCKER_USER_JUMP = Jump("filter", "DOCKER-USER", "PYNET-FORWARD", first=False)


@dataclass(frozen=True)
class NetRules:
    """Everything the firewall needs to know about one bridge network."""

    bridge: str
    subnets4: tuple[str, ...]
    subnets6: tuple[str, ...]
    internal: bool
    icc: bool
    masquerade: bool
    ports: tuple[PortMap, ...]
    # False for an IPv6-only network (Docker 28's --ipv4=false): none of its rules, isolation
    # and icc included, goes in iptables, as Docker's bridge writes none there either.
    ipv4: bool = True
    # Whether traffic between the network's containers crosses a bridge in this namespace,
    # and so the host's netfilter (br_netfilter): not between macvlan links of one device
    # (a VXLAN network's, drivers/vxlan.py), whose frames never reach the host's hooks.
    bridged: bool = True

    def __post_init__(self) -> None:
        # Validated here so that a bad value fails the request instead of a later restore,
        # which would fail for every network at once.
        _check_ifname(self.bridge, "bridge name")
        for family, subnets in ((4, self.subnets4), (6, self.subnets6)):
            for subnet in subnets:
                _check_network(subnet, family)
        for port in self.ports:
            _check_port(port)

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        """Once per value: every change looks each network's rules up in network_chains'
        cache, and hashing every field anew took 0.4 ms per family at 250 networks."""
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    def subnets(self, family: int) -> tuple[str, ...]:
        return tuple(
            str(ipaddress.ip_network(s, strict=False))
            for s in (self.subnets4 if family == 4 else self.subnets6)
        )

    def in_family(self, family: int) -> bool:
        """Whether the network has chains in FAMILY's tables. IPv4: unless it is IPv6-only.
        IPv6: with IPv6 subnets, or where the user asked for more than the default, icc=false
        or internal. A default IPv4-only network has none there, as Docker's bridge writes no
        ip6tables rule for one: its containers have link-local IPv6 alone, which the kernel
        never forwards, so IPv6 forwarded to or from its bridge is left to the FORWARD policy.
        Both families for every network doubled the kernel's work in each create and delete:
        at 250 networks a create's handler 17.8 -> 13.1 ms, a delete 139 -> 94 ms (Dec 2026)."""
        return self.ipv4 if family == 4 else bool(self.subnets6) or not self.icc or self.internal

    def published(self, family: int) -> list[PortMap]:
        """Published ports of this family; none on an internal network."""
        if self.internal:
            return []
        return [p for p in self.ports if _port_family(p) == family]


# -- validation -------------------------------------------------------------------------------


def _check_ifname(name: str, what: str, wildcard: bool = False) -> None:
    plain = name[:-1] if wildcard and name.endswith("+") else name
    if not _IFNAME.fullmatch(plain):
        raise InvalidRequest(f"pynet: {what} must be 1-15 characters of [A-Za-z0-9_.-], got {name!r}")


def _check_network(subnet: str, family: int) -> None:
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        net = None
    if net is None or net.version != family:
        raise InvalidRequest(f"pynet: expected an IPv{family} subnet, got {subnet!r}")


def _check_address(addr: str, what: str) -> int:
    try:
        return ipaddress.ip_address(addr).version
    except ValueError:
        raise InvalidRequest(f"pynet: {what} must be an IP address, got {addr!r}") from None


def _check_port(port: PortMap) -> None:
    if port.proto not in _PROTOS:
        raise InvalidRequest(f"pynet: port protocol must be one of {', '.join(_PROTOS)}, got {port.proto!r}")
    for value, what in ((port.host_port, "host port"), (port.container_port, "container port")):
        if not 1 <= value <= 65535:
            raise InvalidRequest(f"pynet: {what} must be in 1..65535, got {value}")
    _check_address(port.container_ip, "container address")
    if port.host_ip:
        _check_address(port.host_ip, "host address")


def _port_family(port: PortMap) -> int | None:
    """The family a published port belongs to; None when host and container families differ."""
    family = ipaddress.ip_address(port.container_ip).version
    if port.host_ip and ipaddress.ip_address(port.host_ip).version != family:
        return None
    return family


# -- rendering (pure) -------------------------------------------------------------------------


def _comment(key: str) -> str:
    """Marks a network's main rules for people reading `iptables -S`; the key is made safe to
    quote since callers may fill `Firewall.desired` directly."""
    return f' -m comment --comment "pynet {_UNSAFE.sub("_", key)[:200]}"'


def _match_port(port: PortMap, number: int, direction: str = "dport") -> str:
    return f"-p {port.proto} -m {port.proto} --{direction} {number}"


def _match_host(port: PortMap) -> str:
    """`-d host_ip ` unless the port is published on every address (`""`, 0.0.0.0, ::)."""
    if not port.host_ip or ipaddress.ip_address(port.host_ip).is_unspecified:
        return ""
    return f"-d {port.host_ip} "


def _dnat_target(port: PortMap) -> str:
    ip = ipaddress.ip_address(port.container_ip)
    dest = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"-j DNAT --to-destination {dest}:{port.container_port}"


def _isolation_rules(key: str, r: NetRules, outsiders: Iterable[str]) -> dict[str, list[str]]:
    """One network's isolation: from and to every other bridge, before any ACCEPT of
    PYNET-FORWARD (a container's egress ACCEPT, `-i B ! -o B`, would otherwise let it reach
    another network, since Docker's own isolation chains come after our jump).

    Between pynet's own bridges it takes two rules per network, not one per pair: the jump to
    PYNET-ISOLATION-2, which drops whatever leaves for any pynet bridge. Pairs cost 2N(N-1)
    rules; at 57 networks that was 6,881 rules in PYNET-FORWARD, rewritten by every create.
    The icc ACCEPT comes first: a bridge named like a wildcard (`br-+`) would otherwise drop
    its own bridge-local traffic.
    """
    b = r.bridge
    rules = [f"-i {b} -o {b} -j ACCEPT"] if r.icc else []
    for other in outsiders:
        rules += [f"-i {b} -o {other} -j DROP", f"-i {other} -o {b} -j DROP"]
    rules.append(f"-i {b} ! -o {b} -j {ISOLATION_2}")
    return {ISOLATION: rules, ISOLATION_2: [f"-o {b} -j DROP"]}


def _bridge_forward(family: int, key: str, r: NetRules, closed: bool) -> list[str]:
    """The FORWARD rules of one network, after isolation. With `closed`, whatever no rule
    accepted into the network is dropped: the iptables backend leaves that to Docker's FORWARD
    policy DROP, but Docker's nftables filter-FORWARD accepts by policy what is not its own, so
    there a peer routing to a subnet would reach every port."""
    b = r.bridge
    rules: list[str] = []
    if r.internal:
        rules += [f"-i {b} ! -o {b}{_comment(key)} -j DROP", f"-o {b} ! -i {b} -j DROP"]
    elif r.subnets(family):
        rules.append(f"-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        # Only DNAT'ed flows: a peer with a route to the subnet must not reach the port directly
        # (what Docker 28 blocks in the raw table), e.g. one published on 127.0.0.1 only.
        rules += [
            f"-o {b} -d {p.container_ip} {_match_port(p, p.container_port)} {_DNATED} -j ACCEPT"
            for p in r.published(family)
        ]
        rules.append(f"-i {b} ! -o {b}{_comment(key)} -j ACCEPT")
    if not r.icc:
        # After the published ports, so that hairpin and neighbours reach them with icc off.
        rules.append(f"-i {b} -o {b} -j DROP")
    if closed and not r.internal:
        rules.append(f"-o {b} -j DROP")
    return rules


def _postrouting_rules(family: int, key: str, r: NetRules) -> list[str]:
    if r.internal:
        return []
    rules = [f"-s {s} ! -o {r.bridge}{_comment(key)} -j MASQUERADE" for s in r.subnets(family)] if r.masquerade else []
    ports = r.published(family)
    if r.bridged:
        # A container reaching its own published port; a neighbour's replies are bridged
        # back and un-DNATed by conntrack on the way.
        rules += [
            f"-s {p.container_ip} -d {p.container_ip} {_match_port(p, p.container_port)} -j MASQUERADE" for p in ports
        ]
    elif ports:
        # Unbridged, a neighbour's replies would go to it straight, never un-DNATed: every
        # container reaching a published port through the host is masqueraded.
        rules += [f"-s {s} -o {r.bridge} {_DNATED} -j MASQUERADE" for s in r.subnets(family)]
    if family == 4 and ports:
        # The host reaching 127.0.0.1:port (with route_localnet) must not send from 127/8.
        rules.append(f"-o {r.bridge} -m addrtype --src-type LOCAL -j MASQUERADE")
    return rules


def _notrack_rules(family: int, r: NetRules) -> list[str]:
    """Skip conntrack for traffic between containers of one network.

    It is bridged, yet with br_netfilter on (Docker turns it on) every frame would still go
    through conntrack and the nat hooks: for nothing, since its filter rules (icc) need no
    state and it is never NATed. Measured on VXLAN across hosts, conntrack cost about a tenth
    of the throughput. Local destinations (the gateway, published ports) stay tracked, and so
    do replies from a published port: a neighbour that reached it through the host's address
    gets them bridged, and only conntrack can undo the DNAT on them. Unbridged networks have
    none: their in-network traffic never reaches the host.
    """
    if not r.bridged:
        return []
    rules = [
        f"-i {r.bridge} -s {p.container_ip} {_match_port(p, p.container_port, 'sport')} -j RETURN"
        for p in r.published(family)
    ]
    return rules + [f"-i {r.bridge} -d {s} -m addrtype ! --dst-type LOCAL -j NOTRACK" for s in r.subnets(family)]


def _dnat_rules(family: int, key: str, r: NetRules) -> list[str]:
    """DNAT for published ports; the same list serves PREROUTING and OUTPUT."""
    return [
        f"{_match_host(p)}{_match_port(p, p.host_port)}{_comment(key)} {_dnat_target(p)}" for p in r.published(family)
    ]


# Each network has chains of its own, named after its bridge (unique on a host, 15 characters at
# most, so every name fits iptables' 28): PYNET-I-<bridge> (its isolation), PYNET-F-<bridge>
# (forwarding), PYNET-D-<bridge> (DNAT, from PREROUTING and OUTPUT), PYNET-P-<bridge>
# (POSTROUTING) and PYNET-T-<bridge> (NOTRACK). A change of a network's rules then flushes and
# rewrites its own chains; only its create and delete touch the jumps to them. Deleting a rule
# by its text makes iptables-nft convert every rule of the chain back to compare it: with every
# network's rules in the shared chains a publish cost 200 ms at 250 networks, 82 ms at 10
# (bench/README.md, "Why creation grew").
OWN_CHAINS = (("filter", "I"), ("filter", "F"), ("nat", "D"), ("nat", "P"), ("raw", "T"))
# The jumps to a network's chains (and its DROP in PYNET-ISOLATION-2) are not in the shared
# chains either but in one of BUCKETS bucket chains per shared chain, `<shared>-B<n>`, picked
# by a hash of the bridge name; the shared chain holds an unconditional jump to each bucket
# that has networks. A delete's `-D`s then read chains of about 2N/BUCKETS rules, not 2N: a
# network's delete went from 84-94 ms at 10 networks and 102-108 ms at 250 to 85-91 and 87-94
# (firewall alone; the rest is the kernel's cost of any delete, bench/README.md). Unconditional,
# since users name bridges (`-o bridge_name`): no interface wildcard can tell buckets apart. A
# packet walks at most BUCKETS more jumps per shared chain: at 250 networks nothing measurable
# under iptables-nft (25.6 against 25.5 µs a forwarded packet), 1.3 µs more under legacy.
BUCKETS = 16
BUCKETED = (*(j.target for j in JUMPS), ISOLATION, ISOLATION_2)  # every shared chain but PYNET-INPUT
# bucket chain -> its shared chain, in the order a full rewrite jumps to them
SHARED_OF = {f"{shared}-B{n}": shared for shared in BUCKETED for n in range(BUCKETS)}


def slot(bridge: str) -> int:
    """The bucket number of the network on BRIDGE, the same in every shared chain: stable
    across restarts and hosts (crc32, not Python's salted hash)."""
    return zlib.crc32(bridge.encode()) % BUCKETS


def bucket(shared: str, bridge: str) -> str:
    """The bucket chain of SHARED that holds the jumps of the network on BRIDGE."""
    return f"{shared}-B{slot(bridge)}"


@dataclass(frozen=True)
class NetChains:
    """One network's rules for one family: its own chains, and its lines in its buckets."""

    chains: tuple[tuple[str, str, tuple[str, ...]], ...]  # (table, chain, rules)
    jumps: tuple[tuple[str, str, str], ...]  # (table, bucket chain, rule)
    slot: int  # its buckets' number: every network has a jump in each shared chain's bucket


@functools.lru_cache(maxsize=4096)
def network_chains(family: int, key: str, r: NetRules, outsiders: tuple[str, ...], closed: bool = False) -> NetChains:
    """Cached: a full rewrite renders every network, and most have not changed. `closed`
    (nftables) as in _bridge_forward."""
    b = r.bridge
    own = {letter: f"PYNET-{letter}-{b}" for _, letter in OWN_CHAINS}
    isolation = _isolation_rules(key, r, outsiders)
    rules = {
        "I": isolation[ISOLATION],
        "F": _bridge_forward(family, key, r, closed),
        "D": _dnat_rules(family, key, r),
        "P": _postrouting_rules(family, key, r),
        "T": _notrack_rules(family, r),
    }
    mark = _comment(key).strip()  # the jumps that name no bridge name the network, for gc
    to_shared = (
        ("filter", ISOLATION, f"-i {b} -j {own['I']}"),
        ("filter", ISOLATION, f"-o {b} -j {own['I']}"),
        ("filter", ISOLATION_2, isolation[ISOLATION_2][0]),
        ("filter", "PYNET-FORWARD", f"-i {b} -j {own['F']}"),
        ("filter", "PYNET-FORWARD", f"-o {b} -j {own['F']}"),
        ("nat", "PYNET-PREROUTING", f"{mark} -j {own['D']}"),
        ("nat", "PYNET-OUTPUT", f"{mark} -j {own['D']}"),
        ("nat", "PYNET-POSTROUTING", f"{mark} -j {own['P']}"),
        ("raw", "PYNET-NOTRACK", f"-i {b} -j {own['T']}"),
    )
    jumps = tuple((table, bucket(shared, b), rule) for table, shared, rule in to_shared)
    chains = tuple((table, own[letter], tuple(dict.fromkeys(rules[letter]))) for table, letter in OWN_CHAINS)
    return NetChains(chains, jumps, slot(b))


def input_rules(family: int, dns_address: str) -> list[str]:
    """UDP and TCP port 53 to the resolver's address, from anywhere (containers ask from their
    own address, docs/protocol.md §6.1)."""
    if not dns_address or ipaddress.ip_address(dns_address).version != family:
        return []
    host = f"{dns_address}/{32 if family == 4 else 128}"
    return [f"-d {host} -p {p} -m {p} --dport 53 -j ACCEPT" for p in ("udp", "tcp")]


@dataclass(frozen=True)
class Written:
    """pynet's rules of one family, as a restore writes them: the heads of the shared chains
    (rules before any network's jumps) and each network's chains, by network key."""

    heads: dict[str, tuple[str, ...]]
    nets: dict[str, NetChains]
    others: tuple[str, ...]  # the bridges isolated from pynet's: a change rewrites every network

    @functools.cached_property
    def slots(self) -> frozenset[int]:
        """The numbers of the buckets holding its networks' jumps. Once per Written: a change
        compares the last one written with the next, which it then keeps. By number, not by
        (table, chain): the set of every jump's chain took 1 ms at 250 networks."""
        return frozenset(net.slot for net in self.nets.values())


# The nftables backend's tables as written: the base chains' hooks, and the chains per family.
NftWritten = tuple[tuple[nftables.Hook, ...], dict[int, dict[str, tuple[str, ...]]]]


def base_jumps(dns_address: str = "") -> tuple[Jump, ...]:
    """The jumps from built-in chains (before DOCKER-USER is chosen); PYNET-INPUT only while
    the daemon serves names."""
    return (*JUMPS, INPUT_JUMP) if dns_address else JUMPS


def shared_chains(dns_address: str) -> dict[str, list[str]]:
    """The chains every host has, per table: the jump targets, then the helpers."""
    jumps = base_jumps(dns_address)
    return {t: [j.target for j in jumps if j.table == t] + HELPER_CHAINS.get(t, []) for t in TABLES}


def written(
    family: int,
    nets: list[tuple[str, NetRules]],
    outsiders: Iterable[str],
    dns_address: str = "",
    closed: bool = False,
) -> Written:
    """Every network's chains for one family (`NetRules.in_family`). `closed` (nftables) as
    in _bridge_forward."""
    nets = [(key, r) for key, r in nets if r.in_family(family)]
    bridges = {r.bridge for _, r in nets}
    others = tuple(x for x in outsiders if x not in bridges)
    heads = {
        "PYNET-INPUT": tuple(input_rules(family, dns_address)),
        "PYNET-FORWARD": (f"-j {ISOLATION}",) if nets else (),
    }
    return Written(heads, {key: network_chains(family, key, r, others, closed) for key, r in nets}, others)


def chain_rules(w: Written, dns_address: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """Every pynet chain's rules per table, in iptables syntax, as a full rewrite writes them:
    the shared chains (their heads, then a jump to each bucket holding networks), the buckets
    (their networks' jumps), then each network's own. Both backends write this
    (drivers/nftables.py translates it), so the two can never disagree on what is allowed."""
    held: dict[str, list[str]] = {}
    for net in w.nets.values():
        for _, chain, rule in net.jumps:
            held.setdefault(chain, []).append(rule)
    buckets = [chain for chain in SHARED_OF if chain in held]
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for table, shared in shared_chains(dns_address).items():
        chains = {s: (*w.heads.get(s, ()), *(f"-j {c}" for c in buckets if SHARED_OF[c] == s)) for s in shared}
        chains |= {c: tuple(held[c]) for c in buckets if SHARED_OF[c] in shared}
        chains |= {chain: rules for net in w.nets.values() for t, chain, rules in net.chains if t == table}
        tables[table] = chains
    return tables


def render_tables(w: Written, dns_address: str, extra: dict[str, list[str]] | None = None) -> str:
    """The restore text writing every chain anew; `extra` adds lines (jump fixes, and the
    deletion of chains of networks that are gone) per table before COMMIT."""
    lines: list[str] = []
    for table, chains in chain_rules(w, dns_address).items():
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain in chains]
        lines += [f"-A {chain} {rule}" for chain, rules in chains.items() for rule in rules]
        lines += (extra or {}).get(table, [])
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def update_text(before: Written, after: Written, key: str) -> str:
    """The restore text taking the kernel from BEFORE to AFTER where only network KEY (and
    the heads) changed: its own chains made, or flushed and written, or deleted, and its jumps
    in its buckets added or deleted; a bucket is made with its first network and deleted with
    its last, so no line touches another network's rules. "" when nothing changed."""
    old, new = before.nets.get(key), after.nets.get(key)
    was_held, held = before.slots, after.slots
    lines: dict[str, list[str]] = {t: [] for t in TABLES}
    for chain, rules in after.heads.items():  # both heads are in the filter table
        if rules != before.heads.get(chain, ()):
            lines["filter"] += [f"-D {chain} {rule}" for rule in before.heads.get(chain, ())]
            lines["filter"] += [f"-I {chain} {at} {rule}" for at, rule in enumerate(rules, 1)]
    if old is not None and (new is None or old.jumps != new.jumps):  # gone, or its bridge renamed
        for table, chain, rule in old.jumps:
            lines[table].append(f"-D {chain} {rule}")
        if old.slot not in held:  # it was its buckets' last network
            for table, chain in sorted(_buckets(old)):
                lines[table] += [f"-D {SHARED_OF[chain]} -j {chain}", f":{chain} - [0:0]", f"-X {chain}"]
        for table, chain, _ in old.chains:
            lines[table] += [f":{chain} - [0:0]", f"-X {chain}"]
        old = None
    if new is not None:
        was = {(table, chain): rules for table, chain, rules in old.chains} if old else {}
        for table, chain, rules in new.chains:
            if was.get((table, chain)) != rules:
                lines[table] += [f":{chain} - [0:0]", *(f"-A {chain} {rule}" for rule in rules)]
        if old is None:
            if new.slot not in was_held:  # its buckets' first network
                for table, chain in sorted(_buckets(new)):
                    lines[table] += [f":{chain} - [0:0]", f"-A {SHARED_OF[chain]} -j {chain}"]
            for table, chain, rule in new.jumps:
                lines[table].append(f"-A {chain} {rule}")
    text = [line for table, changes in lines.items() if changes for line in (f"*{table}", *changes, "COMMIT")]
    return "\n".join(text) + "\n" if text else ""


def _buckets(net: NetChains) -> set[tuple[str, str]]:
    """(table, bucket chain) of every bucket holding a jump of one network."""
    return {(table, chain) for table, chain, _ in net.jumps}


# -- jumps (pure) -----------------------------------------------------------------------------


def _target(rule: str) -> str:
    words = shlex.split(rule)
    return words[words.index("-j") + 1] if "-j" in words else ""


def jump_fixes(jump: Jump, listing: str) -> list[str]:
    """Restore lines that leave exactly one jump in its place; [] when it already is.

    `listing` is `iptables -S` of the jump's table. A `first` jump must be first in its chain:
    Docker re-inserts its DOCKER-USER jump first when it restarts. Deleting by spec then
    inserting happens in one restore, so the chain is never without the jump, and a listing
    gone stale makes the restore fail whole.
    """
    rules = [line for line in listing.splitlines() if line.startswith(f"-A {jump.chain} ")]
    ours = [rule for rule in rules if _target(rule) == jump.target]
    others = [rule for rule in rules if _target(rule) != jump.target]
    if jump.first:
        position = 1
    else:
        position = len(others) if others and _target(others[-1]) == "RETURN" else len(others) + 1
    if len(ours) == 1 and rules.index(ours[0]) == position - 1:
        return []
    deletes = ["-D" + rule[2:] for rule in ours]
    return [*deletes, f"-I {jump.chain} {position} {jump.spec()}"]


def jumps_for(filter_listing: str) -> tuple[Jump, ...]:
    """The jumps pynet keeps, given `iptables -t filter -S`: from DOCKER-USER on a Docker host."""
    if "-N DOCKER-USER" not in filter_listing.splitlines():
        return JUMPS
    return tuple(DOCKER_USER_JUMP if j.chain == "FORWARD" else j for j in JUMPS)


def stale_jumps(jumps: tuple[Jump, ...], listings: dict[str, str]) -> list[tuple[str, str]]:
    """(table, restore line) deleting a FORWARD jump left from before Docker made DOCKER-USER."""
    if DOCKER_USER_JUMP not in jumps:
        return []
    return [
        ("filter", "-D" + line[2:])
        for line in listings["filter"].splitlines()
        if line.startswith("-A FORWARD ") and _target(line) == DOCKER_USER_JUMP.target
    ]


def _pynet_chains(listing: str) -> list[str]:
    return [line.split()[1] for line in listing.splitlines() if line.startswith("-N PYNET-")]


def stale_chains(listing: str, keep: set[str]) -> list[str]:
    """Restore lines deleting the PYNET chains of a table listing that are not in KEEP: those
    of networks that are gone. Nothing jumps to them once the shared chains are rewritten."""
    gone = [chain for chain in _pynet_chains(listing) if chain not in keep]
    return [f":{chain} - [0:0]" for chain in gone] + [f"-X {chain}" for chain in gone]


def teardown_lines(table: str, listing: str) -> list[str]:
    """Restore lines removing pynet's jumps and chains from one table (`iptables -S` listing)."""
    lines = listing.splitlines()
    # Jumps between pynet's chains go with the chains' flush.
    deletes = [
        "-D" + line[2:]
        for line in lines
        if line.startswith("-A ") and not line.startswith("-A PYNET-") and _target(line).startswith("PYNET-")
    ]
    chains = sorted(_pynet_chains(listing))
    return deletes + [f":{name} - [0:0]" for name in chains] + [f"-X {name}" for name in chains]


# -- flavour detection ------------------------------------------------------------------------


def _run_sync(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 127, ""
    return done.returncode, done.stdout


def _has_docker_chains(save: str) -> bool:
    return any(line.startswith((":DOCKER-USER ", ":DOCKER ")) for line in save.splitlines())


def _count_rules(save: str) -> int:
    return sum(line.startswith("-A ") for line in save.splitlines())


def detect_flavour(netns: str | None = None, *, run: SyncRunner = _run_sync, nft: bool = True) -> str:
    """The firewall Docker uses here: iptables "nft" or "legacy", or (with `nft`) "nftables".

    "nftables" when Docker's nftables tables (`ip`/`ip6 docker-bridges`) exist and neither
    iptables flavour has Docker's DOCKER chain, which its iptables backend always makes (a
    DOCKER-USER left by a migration from iptables does not count: Docker on nftables deletes
    its other chains and never jumps to that one again), or when there is no iptables but `nft`.
    `iptables-<f>-save` is called without `-t`: with `-t`, the legacy one instantiates the
    table it reads, and that table would then count as "in use"; neither creates a table on
    a host where none exists. (--firewall-backend and --iptables-backend skip detection.)
    """
    saves = {f: run(in_netns(netns, [f"iptables-{f}-save"]))[1] for f in FLAVOURS}
    if nft and not any(":DOCKER " in saves[f] for f in FLAVOURS):
        status, tables = run(in_netns(netns, ["nft", "list", "tables"]))
        if status == 0 and nftables.has_docker_tables(tables):
            return NFTABLES
    docker = [f for f in FLAVOURS if _has_docker_chains(saves[f])]
    if len(docker) == 1:
        return docker[0]
    counts = {f: _count_rules(saves[f]) for f in docker or FLAVOURS}
    if len(set(counts.values())) > 1:
        return max(counts, key=counts.__getitem__)
    status, version = run(["iptables", "-V"])
    if status != 0 and nft and run(["nft", "--version"])[0] == 0:
        return NFTABLES
    return "legacy" if "(legacy)" in version else "nft"


# -- the firewall -----------------------------------------------------------------------------


async def run_iptables(argv: list[str], stdin: str | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as e:
        raise PynetError(f"pynet: cannot run {argv[0]}: {e.strerror} (is it installed?)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PynetError(f"pynet: {shlex.join(argv)} timed out after {TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        raise PynetError(f"pynet: {shlex.join(argv)} failed: {_explain(err.decode(), stdin)}")
    return out.decode()


def _explain(stderr: str, stdin: str | None) -> str:
    """stderr, plus the input line iptables-restore names, which it does not print itself."""
    message = " ".join(line for line in stderr.splitlines() if not line.startswith("Try `"))
    found = re.search(r"line:? (\d+)", stderr)
    if stdin and found and 0 < int(found[1]) <= len(lines := stdin.splitlines()):
        message += f" (line {found[1]}: {lines[int(found[1]) - 1]})"
    return message or "no error message"


class Firewall:
    """pynet's iptables chains, or nftables tables, on one host (or in one netns, for tests).

    `desired` maps a network key to its rules; `apply` makes the kernel match all of it,
    rewriting every pynet chain. Under iptables a change of one network (`set`, `remove`)
    rewrites only that network's rules, against what the last restore wrote (`_written`): one
    restore per family whose size does not grow with the number of networks. Under nftables
    `apply` replaces pynet's two tables in one `nft -f -`, and a change rewrites the chains it
    changes (`_nft_written`), in one `nft -f -` too. The flavour (given, or detected
    on first use) picks how the rules are written: "nft" or "legacy" iptables, or "nftables";
    the drivers never know which. Calls are serialised by one lock.
    """

    def __init__(
        self,
        flavour: str | None = None,
        netns: str | None = None,
        *,
        other_bridges: Iterable[str] = (),
        families: tuple[int, ...] = (4, 6),
        runner: Runner = run_iptables,
        dns_address: str = "",
    ) -> None:
        if flavour is not None and flavour not in (*FLAVOURS, NFTABLES, IPTABLES):
            raise InvalidRequest(f"pynet: firewall flavour must be nft, legacy, iptables or nftables, got {flavour!r}")
        self._flavour = None if flavour == IPTABLES else flavour
        self._detect_nft = flavour != IPTABLES
        self.netns = netns
        self.other_bridges = frozenset(other_bridges)
        self.families = families
        self.desired: dict[str, NetRules] = {}
        self.dns_address = dns_address  # the resolver's, when the daemon serves names: PYNET-INPUT accepts it
        self._runner = runner
        self._lock = asyncio.Lock()
        self._active = False  # chains are installed: ensure_jumps keeps them, teardown clears it
        # Per family, the chains as the last restore wrote them; none when unknown (a restore
        # failed part way), and the next change rewrites them all.
        self._written: dict[int, Written] = {}
        self._nft_written: NftWritten | None = None  # the nftables backend's, likewise

    @property
    def other_bridges(self) -> frozenset[str]:
        """Extra bridges (e.g. from a link dump) isolated from pynet's, besides Docker's."""
        return self._other_bridges

    @other_bridges.setter
    def other_bridges(self, names: Iterable[str]) -> None:
        names = frozenset(names)
        for name in names:
            _check_ifname(name, "bridge name", wildcard=True)
        self._other_bridges = names

    @property
    def flavour(self) -> str:
        """Detected on first use when not given; the async paths detect in a thread instead."""
        if self._flavour is None:
            self._flavour = detect_flavour(self.netns, nft=self._detect_nft)
        return self._flavour

    async def _ensure_flavour(self) -> str:
        if self._flavour is None:
            self._flavour = await asyncio.to_thread(detect_flavour, self.netns, nft=self._detect_nft)
        return self._flavour

    def _nft(self) -> nftables.NftTables:
        return nftables.NftTables(self.netns, self._runner)

    def render(self, family: int) -> str:
        """The restore text for `desired`, without jump repairs (those depend on the kernel)."""
        return render_tables(self._desired(family), self.dns_address)

    def _desired(self, family: int, closed: bool = False) -> Written:
        nets = sorted(self.desired.items())
        outsiders = DOCKER_BRIDGES + tuple(sorted(self.other_bridges))
        return written(family, nets, outsiders, self.dns_address, closed)

    def render_nft(self) -> str:
        """The `nft -f -` script for `desired` (the nftables backend's whole apply): the same
        chains as `render`, closed, the tables of iptables merged into one nft table."""
        return nftables.render_script(*self._nft_desired())

    def _nft_desired(self) -> NftWritten:
        hooks = tuple(nftables.Hook(j.table, j.chain, j.target, j.spec()) for j in base_jumps(self.dns_address))
        chains: dict[int, dict[str, tuple[str, ...]]] = {}
        for f in self.families:
            for table in chain_rules(self._desired(f, closed=True), self.dns_address).values():
                chains.setdefault(f, {}).update(table)  # one nft table: names never repeat across tables
        return hooks, chains

    async def set(self, key: str, rules: NetRules) -> None:
        """Apply if the network's rules changed. Unchanged rules are not rewritten: a restore
        costs tens of milliseconds, and Docker asks for every container start and stop."""
        async with self._lock:
            if not (self._active and self.desired.get(key) == rules):
                await self._change(key, rules)

    def stage(self, rules: Mapping[str, NetRules]) -> None:
        """Several networks' rules, written by the next `apply` (reconcile at start: one apply
        for every mode's networks)."""
        self.desired.update(rules)

    async def remove(self, key: str) -> None:
        async with self._lock:
            if key in self.desired:
                await self._change(key, None)

    async def _change(self, key: str, rules: NetRules | None) -> None:
        """Apply with one network changed; on failure keep the previous desired state, so one
        bad network cannot make every later apply fail."""
        previous = self.desired.get(key)
        self._put(key, rules)
        try:
            if not self._active:
                await self._apply()
            elif await self._ensure_flavour() == NFTABLES:
                await self._update_nft()
            else:
                await self._update(key)
        except BaseException:
            self._put(key, previous)
            raise

    def _put(self, key: str, rules: NetRules | None) -> None:
        if rules is None:
            self.desired.pop(key, None)
        else:
            self.desired[key] = rules

    async def apply(self) -> None:
        async with self._lock:
            await self._apply()

    async def _apply(self) -> None:
        if await self._ensure_flavour() == NFTABLES:
            await self._write_nft()
        else:
            for family in self.families:
                await self._write(family, self._desired(family))
        self._active = True

    async def _write(self, family: int, w: Written, listings: dict[str, str] | None = None) -> None:
        """Every chain of the family anew, with the jump fixes, and without the chains of
        networks that are gone (a restart after a crash, or a failed update, leaves them)."""
        self._written.pop(family, None)
        listings = listings or await self._listings(family)
        extra = self._jump_fixes(listings)
        # the old layout's per-network jumps in the shared chains go with the shared chains' flush
        keep = {chain for chains in chain_rules(w, self.dns_address).values() for chain in chains}
        for table, listing in listings.items():
            if gone := stale_chains(listing, keep):
                extra.setdefault(table, []).extend(gone)
        await self._restore(family, render_tables(w, self.dns_address, extra))
        self._written[family] = w

    async def _update(self, key: str) -> None:
        """Network KEY's own chains and jumps, both families at once: each restore is a
        process that mostly waits on the kernel (iptables-nft-restore lists the table's chains
        before it commits, 3.0 ms at 10 networks and 5.3 ms at 250), so the two overlap."""
        done = await asyncio.gather(*(self._update_family(f, key) for f in self.families), return_exceptions=True)
        for outcome in done:  # both finished either way: the first error, as it was raised
            if isinstance(outcome, BaseException):
                raise outcome

    async def _update_family(self, family: int, key: str) -> None:
        """Where the kernel no longer matches what pynet wrote (a rule deleted by hand makes
        its `-D` fail), or what it wrote is unknown, every chain is rewritten, with the jumps
        checked, as `apply` does."""
        after = self._desired(family)
        before = self._written.pop(family, None)
        try:
            if before is None or before.others != after.others:
                raise PynetError("pynet: the chains as written are unknown, or every network's changed")
            if text := update_text(before, after, key):
                await self._restore(family, text)
        except PynetError:
            await self._write(family, after)
        self._written[family] = after

    async def _write_nft(self) -> None:
        """pynet's nft tables replaced whole."""
        self._nft_written = None
        state = self._nft_desired()
        await self._nft().write(nftables.render_script(*state))
        self._nft_written = state

    async def _update_nft(self) -> None:
        """Only the chains that changed, against what the last write left (`_nft_written`):
        a network's own, its buckets and, with a bucket's first or last network, the shared
        chain (docs/design.md). Where that is unknown, or the kernel no longer matches it (a
        table deleted makes the script fail), the tables are replaced whole."""
        before, self._nft_written = self._nft_written, None
        after = self._nft_desired()
        try:
            if before is None or before[0] != after[0]:
                raise PynetError("pynet: the tables as written are unknown, or their base chains changed")
            if script := nftables.update_script(before[1], after[1]):
                await self._nft().write(script)
            self._nft_written = after
        except PynetError:
            await self._write_nft()

    async def ensure_jumps(self) -> bool:
        """Put back jumps that were removed or pushed down; rewrites the chains too, in case
        whoever removed the jumps removed the chains as well."""
        async with self._lock:
            if not self._active:
                return False
            if await self._ensure_flavour() == NFTABLES:
                # Only pynet writes its tables: missing (`nft flush ruleset`, a
                # firewall service reloading its own ruleset) is the one way they can be wrong.
                if await self._nft().present(self.families):
                    return False
                await self._write_nft()
                return True
            fixed = False
            for family in self.families:
                listings = await self._listings(family)
                if self._jump_fixes(listings):
                    await self._write(family, self._desired(family), listings)
                    fixed = True
            return fixed

    async def teardown(self) -> None:
        """Remove every pynet chain and jump; `desired` is kept, so `apply` reinstalls it."""
        async with self._lock:
            if await self._ensure_flavour() == NFTABLES:
                await self._nft().write(nftables.teardown_script(self.families))
                self._active = False
                self._nft_written = None
                return
            for family in self.families:
                text = ""
                for table in TABLES:
                    lines = teardown_lines(table, await self._iptables(family, "-t", table, "-S"))
                    if lines:
                        text += "\n".join([f"*{table}", *lines, "COMMIT"]) + "\n"
                if text:
                    await self._restore(family, text)
            self._active = False
            self._written.clear()

    async def _listings(self, family: int) -> dict[str, str]:
        """`iptables -t TABLE -S` of each table."""
        tables = await asyncio.gather(*(self._iptables(family, "-t", t, "-S") for t in TABLES))
        return dict(zip(TABLES, tables, strict=True))

    def _jump_fixes(self, listings: dict[str, str]) -> dict[str, list[str]]:
        jumps = jumps_for(listings["filter"]) + ((INPUT_JUMP,) if self.dns_address else ())
        fixes: dict[str, list[str]] = {}
        for table, line in stale_jumps(jumps, listings):
            fixes.setdefault(table, []).append(line)
        for jump in jumps:
            if lines := jump_fixes(jump, listings[jump.table]):
                fixes.setdefault(jump.table, []).extend(lines)
        return fixes

    async def _iptables(self, family: int, *args: str) -> str:
        binary = f"{_family_binary(family)}-{await self._ensure_flavour()}"
        return await self._runner(in_netns(self.netns, [binary, "-w", *args]), None)

    async def _restore(self, family: int, text: str) -> None:
        binary = f"{_family_binary(family)}-{await self._ensure_flavour()}-restore"
        await self._runner(in_netns(self.netns, [binary, "-w", "--noflush"]), text)


def _family_binary(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"
