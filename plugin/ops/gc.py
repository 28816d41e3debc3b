"""Leak finding: what pynet's store, the kernel and Docker disagree about, and its removal.

Leaks come from paths Docker only logs: a container removed while pynet is down leaves its
endpoint record, veth and address behind (DeleteEndpoint and ReleaseAddress fail, Docker
moves on), and so does a network (Docker forgets it although DeleteNetwork and ReleasePool
failed). Six kinds:

- network: a record of a network Docker does not know, older than `min_age` (Docker calls
  CreateNetwork before it lists the network), with no endpoint a container may hold. Its
  links, rules, pool and addresses are then judged as if the record were gone.
- endpoint: a record Docker does not know and no container holds: its container-side link is
  back in the host namespace (Docker returns it when the sandbox goes) or its host-side link is
  gone. The second condition keeps a wrong `--docker-host` from condemning live containers.
- link: a pynet-named link (drivers/registry.py `LINK_PREFIXES`) that no live record references, by name or by the ID
  its name is derived from, and whose ID is no endpoint's or network's Docker has.
- pool: a pool this host requested that no live network record and no Docker network (with
  pynet's driver or IPAM) has, older than `min_age` (RequestPool comes before CreateNetwork).
  Releasing it frees this host's addresses in it too.
- allocation: an address this host allocated that no live record, no network and no Docker
  container accounts for, and older than `min_age` (Docker allocates before it creates the
  endpoint, so a young allocation may be a container starting right now).
- rule: a rule in a PYNET-* chain naming a bridge (or, in its comment, a network) no network has.

Network, endpoint, pool and allocation leaks need Docker's word; without it only links and rules are found.

The daemon and the CLI (when the daemon is down) run the same code over the same sources.
Finding and removing are split so that the Docker view is taken *after* the inventory: a record
older than the view that Docker does not know is really unknown to it. Removal then takes a
fresh inventory and removes only what is a leak in both, so nothing created meanwhile goes.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from pynet.drivers.base import Endpoint, Network
from pynet.drivers.config import BridgedConfig
from pynet.drivers.firewall import DOCKER_BRIDGES
from pynet.drivers.naming import ID_CHARS
from pynet.drivers.netlink import Netlink
from pynet.drivers.registry import LINK_PREFIXES
from pynet.ipam import Ipam
from pynet.ipam.layout import AUX, GATEWAY, LOCAL_SPACE
from pynet.ipam.pools import Allocation, PoolRef
from pynet.plugin.daemon.state import State
from pynet.plugin.ops.iptables import Iptables, Rule
from pynet.store.errors import PynetError

log = logging.getLogger("pynet.gc")

DEFAULT_MIN_AGE = 60.0

Kind = Literal["network", "endpoint", "link", "pool", "allocation", "rule"]
# Removal order: a network's removal takes its endpoints and links, a pool's its addresses.
RECORDS = ("network", "endpoint")
ORDER: dict[str, int] = {"network": 0, "endpoint": 1, "link": 2, "pool": 3, "allocation": 4, "rule": 5}


class Inventory(msgspec.Struct):
    """Everything gc compares, read in this order: links first, then records, so that a link
    and the record created right after it are both seen."""

    host: str
    links: list[str]
    networks: list[Network]
    endpoints: list[Endpoint]
    allocations: list[Allocation]
    rules: list[Rule]
    outsiders: list[str]  # non-pynet bridges the firewall isolates pynet's from
    rules_error: str = ""  # why the firewall could not be read, if it could not
    pools: list[PoolRef] = []  # this host's pool references


class DockerView(msgspec.Struct):
    """What Docker has in use, from its API; IDs are full, addresses bare."""

    networks: list[str]
    endpoints: list[str]
    addresses: list[str]
    subnets: list[str]  # of every network whose IPAM is pynet's or whose driver is


class Leak(msgspec.Struct, frozen=True):
    kind: Kind
    name: str  # network or endpoint ID, link name, pool ID, address, or rule line
    reason: str
    network: str = ""  # endpoint leaks: its network
    pool: str = ""  # allocation and pool leaks: the subnet
    family: int = 0  # rule leaks
    table: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name


class Outcome(msgspec.Struct):
    leak: Leak
    result: Literal["removed", "vanished", "refused", "failed"]  # vanished: no longer a leak
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("removed", "vanished")


# -- gathering --------------------------------------------------------------------------------


@dataclass
class Sources:
    host: str
    state: State
    ipam: Ipam
    netlink: Netlink
    iptables: Iptables
    outsiders: Sequence[str] = DOCKER_BRIDGES


async def gather(src: Sources) -> Inventory:
    links = [link.name for link in await src.netlink.links()]
    rules: list[Rule] = []
    rules_error = ""
    try:
        rules = await src.iptables.pynet_rules()
    except PynetError as e:
        rules_error = str(e)
    return Inventory(
        host=src.host,
        links=links,
        networks=await src.state.networks(),
        endpoints=await src.state.endpoints(),
        allocations=await src.ipam.allocations(),
        rules=rules,
        pools=await src.ipam.references(),
        outsiders=list(src.outsiders),
        rules_error=rules_error,
    )


# -- finding ----------------------------------------------------------------------------------


def bare(cidr: str) -> str:
    """The address of `10.0.0.2/24` (Docker and pynet keep some with, some without a length)."""
    return str(ipaddress.ip_interface(cidr).ip) if cidr else ""


def _held(ep: Endpoint, links: set[str]) -> bool:
    """A container may hold it: neither is its container side in our namespace nor is its host
    side gone. (With no host side, as with macvlan, a missing link may be in a container.)"""
    if ep.peer and ep.peer in links:
        return False
    return not (ep.ifname and ep.ifname not in links)


def _endpoint_leaks(inv: Inventory, view: DockerView) -> list[Endpoint]:
    known = set(view.endpoints)
    links = set(inv.links)
    return [ep for ep in inv.endpoints if ep.id not in known and not _held(ep, links)]


def _referenced(inv: Inventory, live: list[Endpoint]) -> tuple[set[str], set[str]]:
    """(link names, ID stems) that live records account for."""
    names = {name for n in inv.networks for name in n.config.links()}
    names |= {name for ep in live for name in (ep.ifname, ep.peer) if name}
    stems = {n.id[:ID_CHARS] for n in inv.networks} | {ep.id[:ID_CHARS] for ep in live}
    return names, stems


def _link_leaks(inv: Inventory, live: list[Endpoint], leaked: list[Endpoint], in_use: set[str]) -> list[Leak]:
    names, stems = _referenced(inv, live)
    stems |= in_use
    owners = {ep.id[:ID_CHARS]: ep.id for ep in leaked}
    out = []
    for link in inv.links:
        prefix = next((p for p in LINK_PREFIXES if link.startswith(p)), "")
        stem = link[len(prefix) :]
        if not prefix or link in names or stem in stems:
            continue
        owner = owners.get(stem)
        reason = f"belongs to leaked endpoint {owner[:12]}" if owner else "no network or endpoint record references it"
        out.append(Leak("link", link, reason))
    return out


def _allocation_leaks(
    inv: Inventory, live: list[Endpoint], view: DockerView, now: float, min_age: float
) -> list[Leak]:
    subnets = [s for n in inv.networks for s in (*n.ipv4, *n.ipv6)]
    reserved = {bare(a) for s in subnets for a in (s.gateway, *s.aux.values()) if a}
    pools = {s.pool for s in subnets} | set(view.subnets)
    in_use = {bare(a) for ep in live for a in (ep.address, ep.address6) if a} | set(view.addresses)
    live_ids = {ep.id for ep in live}
    out = []
    for a in inv.allocations:
        if a.host != inv.host or now - a.time < min_age:
            continue
        if a.owner in (GATEWAY, AUX):
            if a.address in reserved or a.pool in pools:
                continue
            reason = f"{a.owner} of pool {a.pool}, which no network has"
        else:
            if a.address in in_use or a.owner in live_ids:
                continue
            whose = "a container" if a.owner == "container" else f"endpoint {a.owner[:12]}"
            reason = f"allocated for {whose}; no endpoint record or Docker container uses it"
        out.append(Leak("allocation", a.address, reason, pool=a.pool))
    return out


def _rule_names(line: str) -> tuple[list[str], str]:
    """(interfaces the rule matches, the network key of its comment or "")."""
    words = shlex.split(line)
    names = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-i", "-o", "--in-interface", "--out-interface")]
    comment = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--comment"), "")
    return names, comment.removeprefix("pynet ") if comment.startswith("pynet ") else ""


def _rule_leaks(inv: Inventory) -> list[Leak]:
    bridges = {n.config.bridge for n in inv.networks if isinstance(n.config, BridgedConfig)} | set(inv.outsiders)
    networks = {n.id for n in inv.networks}
    out = []
    for rule in inv.rules:
        names, key = _rule_names(rule.line)
        unknown = [name for name in names if name not in bridges]
        if unknown:
            reason = f"bridge {unknown[0]} belongs to no network"
        elif key and key not in networks:
            reason = f"network {key[:12]} does not exist"
        else:
            continue
        out.append(Leak("rule", rule.line, reason, family=rule.family, table=rule.table))
    return out


def _network_leaks(inv: Inventory, view: DockerView, live: list[Endpoint], now: float, min_age: float) -> list[Network]:
    known = set(view.networks)
    held = {ep.network_id for ep in live}
    return [n for n in inv.networks if n.id not in known and n.id not in held and now - n.created >= min_age]


def _pool_leaks(inv: Inventory, view: DockerView, now: float, min_age: float) -> list[Leak]:
    used = {s.pool for n in inv.networks for s in (*n.ipv4, *n.ipv6)} | set(view.subnets)
    return [
        Leak("pool", ref.pool_id, "no network of pynet's or Docker's uses it", pool=ref.subnet)
        for ref in inv.pools
        if ref.subnet not in used and now - ref.time >= min_age
    ]


def find(inv: Inventory, view: DockerView | None, now: float, min_age: float = DEFAULT_MIN_AGE) -> list[Leak]:
    """Without a Docker view (Docker unreachable) only links and rules can be judged."""
    leaked = _endpoint_leaks(inv, view) if view is not None else []
    gone = {ep.id for ep in leaked}
    live = [ep for ep in inv.endpoints if ep.id not in gone]
    dropped = _network_leaks(inv, view, live, now, min_age) if view is not None else []
    leaks = [Leak("network", n.id, "Docker does not know it and no container is on it") for n in dropped]
    leaks += [
        Leak("endpoint", ep.id, "Docker does not know it and no container holds its link", network=ep.network_id)
        for ep in leaked
    ]
    # What the leaked networks held is judged as if their records were gone already.
    ids = {n.id for n in dropped}
    inv = msgspec.structs.replace(inv, networks=[n for n in inv.networks if n.id not in ids])
    # A link named after an endpoint or network Docker has is in use, record or not: after a
    # changed --state-dir or store, running containers' links have no record here.
    in_use = {i[:ID_CHARS] for i in (*view.endpoints, *view.networks)} if view is not None else set()
    leaks += _link_leaks(inv, live, leaked, in_use)
    if view is not None:
        leaks += _pool_leaks(inv, view, now, min_age)
        leaks += _allocation_leaks(inv, live, view, now, min_age)
    return leaks + _rule_leaks(inv)


def refusal(inv: Inventory, view: DockerView) -> str:
    """Why removing would be unsafe though Docker answered; "" when it is safe. Docker knowing
    none of pynet's networks is what a wrong --docker-host looks like, and also what every
    network removed while pynet was down looks like; containers on them tell the two apart."""
    if not inv.networks or {n.id for n in inv.networks} & set(view.networks):
        return ""
    links, known = set(inv.links), set(view.endpoints)
    held = [ep for ep in inv.endpoints if ep.id not in known and _held(ep, links)]
    if not held:
        return ""
    return (
        f"Docker knows none of pynet's {len(inv.networks)} networks, though containers hold {len(held)} of their"
        " endpoints: is --docker-host the Docker daemon this pynet serves?"
    )


# -- removing ---------------------------------------------------------------------------------

Remover = Callable[[Leak], Awaitable[None]]


@dataclass(frozen=True)
class Removers:
    """How the caller removes records: the daemon as Docker's Delete* would (kernel included),
    the CLI on the store alone (the links and rules left are leaks of their own)."""

    endpoint: Remover
    network: Remover


async def sweep(
    requested: Iterable[Leak],
    view: DockerView,
    src: Sources,
    removers: Removers,
    now: float,
    min_age: float = DEFAULT_MIN_AGE,
) -> list[Outcome]:
    """Remove what was found earlier and is still a leak now, in ORDER. Records go first, and
    the rest is judged again after them: removing a network through the daemon removes its
    links and rules too, and deleting one of those twice would fail."""
    ordered = sorted(requested, key=lambda x: ORDER[x.kind])
    outcomes: list[Outcome] = []
    for group in ([x for x in ordered if x.kind in RECORDS], [x for x in ordered if x.kind not in RECORDS]):
        inv = await gather(src)
        why_not = refusal(inv, view)
        current = {leak.key for leak in find(inv, view, now, min_age)}
        for leak in group:
            if why_not:
                outcomes.append(Outcome(leak, "refused", why_not))
            elif leak.key not in current:
                outcomes.append(Outcome(leak, "vanished"))
            else:
                outcomes.append(await _remove(leak, src, removers))
    return outcomes


async def _remove(leak: Leak, src: Sources, removers: Removers) -> Outcome:
    try:
        match leak.kind:
            case "network":
                await removers.network(leak)
            case "endpoint":
                await removers.endpoint(leak)
            case "pool":
                await src.ipam.release_pool(leak.name)
            case "link":
                await src.netlink.delete_link(leak.name)
            case "allocation":
                await src.ipam.release_address(f"{LOCAL_SPACE}:{leak.pool}", leak.name)
            case "rule":
                await src.iptables.delete(Rule(leak.family, leak.table, leak.name))
    except Exception as e:
        log.warning("gc: removal failed", extra={"kind": leak.kind, "leak": leak.name, "error": str(e)})
        return Outcome(leak, "failed", str(e) or type(e).__name__)
    log.info("gc: removed", extra={"kind": leak.kind, "leak": leak.name, "reason": leak.reason})
    return Outcome(leak, "removed")
