"""The name table: every container name pynet publishes, indexed for the resolver.

Records are written by the cluster agent of each host (docs/design.md, "Store keys"):

    P dns/<network name>/<host>/<container>  {"names": [name, aliases...], "ipv4": "...", "ipv6": "..."}

Scoping follows Docker's embedded DNS: a container resolves the names of the containers it
shares a network with, as `name`, `alias` and `name.network`. The asker is known only by the
source address of its query (Docker forwards from the container's netns, docs/protocol.md §6.1), so
that address is looked up in every record; the container it names is on every network one of
its records (same host, same container) is on, whichever of its addresses the query left from.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import msgspec

from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.dns")

Family = Literal[4, 6]
K = TypeVar("K")


class Record(msgspec.Struct, frozen=True):
    names: list[str]
    ipv4: str = ""
    ipv6: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    network: str
    member: tuple[str, str]  # (host, container): one container, whichever network
    names: frozenset[str]  # lower case, no trailing dot; `name.network` included
    ipv4: str
    ipv6: str

    def address(self, family: Family) -> str:
        return self.ipv4 if family == 4 else self.ipv6


def normalize(name: str) -> str:
    """DNS names compare case-insensitively; a query name is absolute (trailing dot)."""
    return name.rstrip(".").lower()


def _canonical(address: str, version: int) -> str:
    """'' stays ''; anything else must be an address of that family (ValueError if not)."""
    if not address:
        return ""
    ip = ipaddress.ip_address(address)
    if ip.version != version:
        raise ValueError(f"{address!r} is not an IPv{version} address")
    return str(ip)


_decoder = msgspec.json.Decoder(Record)


class Subnets(Protocol):
    def networks_of(self, address: str) -> set[str]: ...


class NameTable:
    def __init__(self, root: str, subnets: Subnets | None = None) -> None:
        """`root` is the store prefix plus `dns/`: keys are `<root><network>/<host>/<container>`.
        `subnets` places an asker that has no record yet (plugin/dns/subnets.py says when)."""
        self.root = root
        self.subnets = subnets
        self._warn = Malformed(log)
        self._entries: dict[str, Entry] = {}
        self._by_address: dict[str, set[str]] = {}
        self._by_member: dict[tuple[str, str], set[str]] = {}
        self._by_name: dict[tuple[str, str], set[str]] = {}  # (network, name) -> keys

    def __len__(self) -> int:
        return len(self._entries)

    def replace(self, items: Iterable[tuple[str, bytes]]) -> None:
        """The whole table from a snapshot of (key, value). No await inside: a lookup never
        sees half of it."""
        for index in (self._entries, self._by_address, self._by_member, self._by_name):
            index.clear()
        for key, value in items:
            self.put(key, value)

    def put(self, key: str, value: bytes) -> None:
        """Add or replace one record; a malformed one is dropped (and its key forgotten)."""
        self.delete(key)
        entry = self._decode(key, value)
        if entry is None:
            return
        self._entries[key] = entry
        for address in filter(None, (entry.ipv4, entry.ipv6)):
            self._by_address.setdefault(address, set()).add(key)
        self._by_member.setdefault(entry.member, set()).add(key)
        for name in entry.names:
            self._by_name.setdefault((entry.network, name), set()).add(key)

    def delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for address in filter(None, (entry.ipv4, entry.ipv6)):
            _unindex(self._by_address, address, key)
        _unindex(self._by_member, entry.member, key)
        for name in entry.names:
            _unindex(self._by_name, (entry.network, name), key)

    def networks_of(self, source: str) -> set[str]:
        """The networks of the container whose address `source` is (empty: not one of ours)."""
        try:
            address = str(ipaddress.ip_address(source))
        except ValueError:
            return set()
        members = {self._entries[k].member for k in self._by_address.get(address, ())}
        if not members and self.subnets is not None:
            return self.subnets.networks_of(address)
        return {self._entries[k].network for m in members for k in self._by_member[m]}

    def lookup(self, source: str, qname: str, family: Family) -> list[str] | None:
        """Addresses of `qname` for the container at `source`, sorted; None when the name is
        not one the asker may see here (the caller forwards it). An empty list is a name it
        sees with no address of that family: NODATA, not a forward, which upstream would
        answer NXDOMAIN for and so fail the whole lookup of a v4-only container's name."""
        name = normalize(qname)
        keys = {k for net in self.networks_of(source) for k in self._by_name.get((net, name), ())}
        if not keys:
            return None
        return sorted({a for a in (self._entries[k].address(family) for k in keys) if a})

    def _decode(self, key: str, value: bytes) -> Entry | None:
        parts = key[len(self.root) :].split("/") if key.startswith(self.root) else []
        try:
            if len(parts) != 3 or not all(parts):
                raise ValueError("key is not dns/<network>/<host>/<container>")
            network, host, container = parts
            record = _decoder.decode(value)
            names = {normalize(n) for n in record.names} - {""}
            if not names:
                raise ValueError("no names")
            ipv4, ipv6 = _canonical(record.ipv4, 4), _canonical(record.ipv6, 6)
            if not (ipv4 or ipv6):
                raise ValueError("no address")
        except (ValueError, msgspec.DecodeError) as e:
            self._warn("dns record", key, e)
            return None
        qualified = {f"{n}.{normalize(network)}" for n in names}
        return Entry(network, (host, container), frozenset(names | qualified), ipv4, ipv6)


def _unindex(index: dict[K, set[str]], field: K, key: str) -> None:
    keys = index[field]
    keys.discard(key)
    if not keys:
        del index[field]
