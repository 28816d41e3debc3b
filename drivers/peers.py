"""The VXLAN control plane: who is where, shared through the store, programmed into the kernel.

Keys (under the store prefix), every one written with its host's lease so that a host whose
pynet stops for longer than the lease TTL disappears from everyone's tables:

    vxlan/<vni>/vteps/<host>          {"address": VTEP IP, "port": UDP port}
    vxlan/<vni>/endpoints/<endpoint>  {"host", "vtep", "mac", "ips": [...], "time"}

Each host watches `vxlan/` and keeps, per VNI it has a network for, the kernel's forwarding
state equal to what the other hosts registered (flannel's approach: static entries, no miss
upcalls, no learning):

- an all-zero-MAC FDB entry per remote VTEP: broadcast and unknown unicast are replicated to
  every VTEP (head-end replication);
- one FDB entry per remote endpoint MAC pointing at its VTEP: a bridge port on a VXLAN device
  with learning off drops unicast for MACs it has no entry for;
- one permanent neighbour entry per remote endpoint IP: with `proxy` on, the VXLAN device
  answers ARP and neighbour solicitations itself and sends none over the tunnel, so a
  gateway address present on every host is always resolved by the local bridge.

Programming is a diff of the wanted entries against what the device holds, so replaying an
event, a resync after a compaction or a restart all converge to the same state. What it holds
is a dump of the device when the sync (re)starts, a device is attached, a programming failed or
the last dump is older than REDUMP_AFTER; otherwise it is what the last programming left there,
so an event costs the netlink requests of its own entries, not a dump of every entry of the
VNI (bench/README.md, "scale: vxlan", has the numbers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from pynet.drivers.netlink import ZERO_MAC, Forwarding, Netlink
from pynet.store import faults
from pynet.store.base import Event, Store
from pynet.store.errors import NotFound, RevisionCompacted, StoreUnavailable
from pynet.store.locks import KeyedLocks
from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.peers")
# A VNI whose programming failed (a kernel error) is tried again after this many seconds.
PROGRAM_RETRY = 5.0
# What the last programming left on a device stands for a dump for this many seconds. A dump of
# 300 FDB and 300 neighbour entries costs 35 ms of CPU (pyroute2 parsing them in Python), which
# every host paid for every event; the occasional dump still repairs what someone else changed
# (`ip link set down` flushes the neighbour entries) without waiting for a restart.
REDUMP_AFTER = 30.0

_UNICAST_MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}", re.IGNORECASE)


class Observer(Protocol):
    """Told about programming, for metrics (plugin/metrics.py implements it; drivers/ never
    imports plugin/)."""

    def on_programmed(self, vni: int, vteps: int, lags: list[float]) -> None:
        """`lags`: for each remote endpoint whose entries this programming added, the seconds
        since this host could first have programmed it (see `Sync.program`)."""

    def forget(self, vni: int) -> None:
        """The last local network of the VNI is gone."""


def vtep_key(prefix: str, vni: int, host: str) -> str:
    return f"{prefix}vxlan/{vni}/vteps/{host}"


def endpoint_key(prefix: str, vni: int, endpoint_id: str) -> str:
    return f"{prefix}vxlan/{vni}/endpoints/{endpoint_id}"


def _ipv4(address: str) -> str:
    """VTEPs are IPv4 (the underlay option's contract); ValueError otherwise."""
    return str(ipaddress.IPv4Address(address))


class Vtep(msgspec.Struct, frozen=True):
    """The value of `vxlan/<vni>/vteps/<host>`."""

    address: str
    port: int = 4789

    def __post_init__(self) -> None:
        _ipv4(self.address)


class RemoteEndpoint(msgspec.Struct, frozen=True):
    """The value of `vxlan/<vni>/endpoints/<endpoint>`. Checked as the kernel will be asked
    for it: an entry it refuses would fail the programming of the whole VNI."""

    host: str
    vtep: str
    mac: str
    ips: tuple[str, ...]
    time: float = 0.0

    def __post_init__(self) -> None:
        _ipv4(self.vtep)
        if not _UNICAST_MAC.fullmatch(self.mac) or self.mac == ZERO_MAC:
            raise ValueError(f"mac must be a unicast MAC, got {self.mac!r}")
        for ip in self.ips:
            if "%" in ip:  # ipaddress takes a scope (fe80::1%eth0); a neighbour entry has none
                raise ValueError(f"ips: {ip!r} has a scope")
            ipaddress.ip_address(ip)


_vtep = msgspec.json.Decoder(Vtep)
_endpoint = msgspec.json.Decoder(RemoteEndpoint)


def decode_vtep(value: bytes) -> Vtep:
    """Raises msgspec.DecodeError (a ValueError) for anything but a VTEP record."""
    return _vtep.decode(value)


@dataclass
class Remotes:
    """What the other hosts registered for one VNI."""

    vteps: dict[str, str] = field(default_factory=dict)  # host -> VTEP address
    endpoints: dict[str, RemoteEndpoint] = field(default_factory=dict)  # endpoint id -> value

    def wanted(self, static_peers: tuple[str, ...]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(FDB entries, neighbour entries) this host's VXLAN device should hold."""
        fdb = {(ZERO_MAC, vtep) for vtep in (*self.vteps.values(), *static_peers)}
        neigh: set[tuple[str, str]] = set()
        for ep in self.endpoints.values():
            fdb.add((ep.mac, ep.vtep))
            neigh |= {(ip, ep.mac) for ip in ep.ips}
        return fdb, neigh


@dataclass(frozen=True)
class Changes:
    """What turns a device's entries (a dump) into the wanted ones."""

    del_fdb: frozenset[tuple[str, str]]  # (MAC, VTEP)
    add_fdb: frozenset[tuple[str, str]]
    del_neigh: frozenset[str]  # IPs no endpoint has any more
    set_neigh: frozenset[tuple[str, str]]  # (IP, MAC): new, or the IP moved to another MAC


def changes(
    want: tuple[set[tuple[str, str]], set[tuple[str, str]]],
    have: tuple[set[tuple[str, str]], set[tuple[str, str]]],
) -> Changes:
    """(FDB, neighbour) entries wanted and present -> the changes. A neighbour whose IP is
    still wanted is replaced, not deleted first, so its IP never goes unanswered."""
    (want_fdb, want_neigh), (have_fdb, have_neigh) = want, have
    wanted_ips = {ip for ip, _ in want_neigh}
    return Changes(
        del_fdb=frozenset(have_fdb - want_fdb),
        add_fdb=frozenset(want_fdb - have_fdb),
        del_neigh=frozenset(ip for ip, _ in have_neigh if ip not in wanted_ips),
        set_neigh=frozenset(want_neigh - have_neigh),
    )


class Registry:
    """This host's keys, kept under one lease and put back whenever the lease is lost."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self._lease = 0
        self._mine: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def put(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, sort_keys=True).encode()
        async with self._lock:
            if not self._lease:
                self._lease = await self.store.grant_lease(self.ttl)
            try:
                await self.store.put(key, data, lease=self._lease)
            except NotFound:  # the lease went (revoked, or expired) before the keep-alive noticed
                await self._renew()
                await self.store.put(key, data, lease=self._lease)
            self._mine[key] = data

    async def delete(self, key: str) -> None:
        async with self._lock:
            self._mine.pop(key, None)
            await self.store.delete(key)

    async def keep_alive_forever(self) -> None:
        """Refresh now, then every ttl/3. A store that is away is waited out here; any other
        error ends the run, and its supervisor (plugin/serve.py) starts it again with backoff,
        refreshing at once: were it to end quietly, the lease would expire and this host
        vanish from every peer's tables."""
        while True:
            try:
                await self.keep_alive()
            except StoreUnavailable as e:
                log.warning("lease not refreshed", extra={"error": str(e)})
            await asyncio.sleep(self.ttl / 3)

    async def keep_alive(self) -> None:
        """Refresh the lease; when it is gone (expired during a long store outage, revoked by
        an operator), take a new one and put every key back, so the other hosts see this one
        again."""
        async with self._lock:
            if not self._lease:
                return
            try:
                await self.store.refresh_lease(self._lease)
            except NotFound:
                log.warning("lease lost, registering again", extra={"keys": len(self._mine)})
                await self._renew()

    async def _renew(self) -> None:
        """A new lease holding every key. It replaces the old one only once every key is put:
        a failure half-way leaves the dead lease, so the next refresh renews again (the spare
        lease expires on its own)."""
        lease = await self.store.grant_lease(self.ttl)
        for key, data in self._mine.items():
            await self.store.put(key, data, lease=lease)
        self._lease = lease


class Sync:
    """Watches the other hosts' registrations and programs this host's VXLAN devices."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        host: str,
        netlink: Netlink,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.root = f"{prefix}vxlan/"
        self.host = host
        self.nl = netlink
        self.segments: dict[int, Remotes] = {}
        # VNIs with a local network: their device name and static peers.
        self.devices: dict[int, tuple[str, tuple[str, ...]]] = {}
        # When each VNI's device was attached: no endpoint can be programmed here before that.
        self._attached: dict[int, float] = {}
        self._locks = KeyedLocks()
        self.observer = observer
        self.synced = asyncio.Event()
        self._malformed = Malformed(log)
        self._dirty: set[int] = set()  # VNIs with events not programmed yet
        # Per VNI: (device ifindex, when it was dumped, its FDB and neighbour entries now).
        self._held: dict[int, tuple[int, float, tuple[set[tuple[str, str]], set[tuple[str, str]]]]] = {}
        self._programmer: asyncio.Task[None] | None = None

    async def attach(self, vni: int, device: str, static_peers: tuple[str, ...]) -> None:
        """Program a device from the current view, once there is one: before the first
        snapshot (just after a restart) an empty view would wipe entries traffic relies on."""
        self.devices[vni] = (device, static_peers)
        self._attached.setdefault(vni, time.time())
        self._held.pop(vni, None)  # a device made again (a reconcile) holds nothing yet
        if self.synced.is_set():
            await self.program(vni)

    def detach(self, vni: int) -> None:
        self.devices.pop(vni, None)
        self._attached.pop(vni, None)
        self._held.pop(vni, None)
        if self.observer:
            self.observer.forget(vni)

    async def run_forever(self) -> None:
        """Snapshot, then watch from the snapshot's revision; a compacted history means a new
        snapshot. Any other failure (the store away at a snapshot, a kernel error) ends the run,
        and its supervisor (plugin/serve.py) starts it again with backoff: the watch itself
        rides out connection loss (store/etcd.py). Failures never touch the kernel's entries:
        traffic keeps flowing on what was last programmed while the store is away."""
        try:
            await self._follow()
        finally:
            if self._programmer is not None:
                self._programmer.cancel()

    async def _follow(self) -> None:
        while True:
            revision = await self._snapshot()
            try:
                async for event in self.store.watch(self.root, revision + 1):
                    self._apply(event)
            except RevisionCompacted:
                log.info("watch history compacted: resyncing")

    async def _snapshot(self) -> int:
        revision = await self.store.revision()
        segments: dict[int, Remotes] = {}
        for kv in await self.store.range(self.root):
            self._record(segments, kv.key, kv.value)
        self.segments = segments
        self._held.clear()  # a resync reads the devices afresh
        for vni in list(self.devices):
            await self.program(vni)
        self.synced.set()
        return revision

    def _record(self, segments: dict[int, Remotes], key: str, value: bytes) -> int | None:
        """Fold one key into `segments` (an empty value is a delete); returns its VNI, None for
        this host's own keys and for a record that is not one (skipped with a warning)."""
        vni, kind, name = _parse(key[len(self.root) :])
        if vni is None or kind not in ("vteps", "endpoints"):
            self._malformed("VXLAN record", key, "key is not vxlan/<vni>/vteps|endpoints/<name>")
            return None
        seg = segments.setdefault(vni, Remotes())
        if kind == "vteps":
            if name == self.host:
                return None
            if not value:
                seg.vteps.pop(name, None)
                return vni
            try:
                seg.vteps[name] = decode_vtep(value).address
            except ValueError as e:
                self._malformed("VTEP record", key, e)
                return vni if seg.vteps.pop(name, None) else None
            return vni
        if not value:
            seg.endpoints.pop(name, None)
            return vni
        try:
            ep = _endpoint.decode(value)
        except ValueError as e:
            self._malformed("VXLAN endpoint record", key, e)
            return vni if seg.endpoints.pop(name, None) else None
        if ep.host == self.host:
            return None
        seg.endpoints[name] = ep
        return vni

    def _apply(self, event: Event) -> None:
        """Fold the event in now, program its VNI soon: once for all the events that arrive
        before the programmer runs. A host that starts registers its N endpoints as N events,
        and programming each one (a dump and a diff of the whole device) cost the other hosts
        O(N^2); tests/kernel/test_peers.py counts the dumps. Since the device's entries are
        no longer dumped per event either (`program`), an event costs O(1) netlink requests."""
        vni = self._record(self.segments, event.key, event.value if event.kind == "put" else b"")
        if vni is not None and vni in self.devices:
            self._dirty.add(vni)
            if self._programmer is None or self._programmer.done():
                self._programmer = asyncio.create_task(self._program_dirty())

    async def _program_dirty(self) -> None:
        while self._dirty:
            vni = self._dirty.pop()
            try:
                await self.program(vni)
            except Exception:
                log.exception("programming VNI %d failed; retrying in %.0fs", vni, PROGRAM_RETRY)
                await asyncio.sleep(PROGRAM_RETRY)
                self._dirty.add(vni)

    async def program(self, vni: int) -> None:
        if vni not in self.devices:
            return
        async with self._locks(vni):
            device, static_peers = self.devices[vni]
            link = await self.nl.link(device)
            if link is None:
                return
            seg = self.segments.get(vni, Remotes())
            fwd = Forwarding(self.nl, link.index)
            want = seg.wanted(static_peers)
            # Taken out while the kernel is being changed: a failure half-way leaves it unknown.
            held = self._held.pop(vni, None)
            if held is None or held[0] != link.index or time.monotonic() - held[1] > REDUMP_AFTER:
                held = (link.index, time.monotonic(), (await fwd.fdb(), await fwd.neighbours()))
            todo = changes(want, held[2])
            for mac, dst in todo.del_fdb:
                await fwd.del_fdb(mac, dst)
            for mac, dst in todo.add_fdb:
                await fwd.add_fdb(mac, dst)
                faults.hit("vxlan.program.partial")
            for ip in todo.del_neigh:
                await fwd.del_neighbour(ip)
            for ip, mac in todo.set_neigh:
                await fwd.set_neighbour(ip, mac)
            self._held[vni] = (link.index, held[1], want)
        if self.observer:
            self.observer.on_programmed(vni, len(seg.vteps), self._lags(vni, seg, todo))

    def _lags(self, vni: int, seg: Remotes, todo: Changes) -> list[float]:
        """The programming lag of each endpoint whose entries `todo` added: from its
        registration (its record's `time`, the registering host's clock), or from this VNI's
        attach when that came later (a network created here after the endpoint, a restart
        after a reboot wiped the entries), to now. Endpoints whose entries were already there
        (a replayed event, a resync, a restart) are no lag: nothing waited for them."""
        now, since = time.time(), self._attached.get(vni, 0.0)
        return [
            max(0.0, now - max(ep.time, since))
            for ep in seg.endpoints.values()
            if (ep.mac, ep.vtep) in todo.add_fdb or any((ip, ep.mac) in todo.set_neigh for ip in ep.ips)
        ]


def _parse(rest: str) -> tuple[int | None, str, str]:
    """'<vni>/<kind>/<name>' -> (vni, kind, name); (None, "", "") for anything else."""
    parts = rest.split("/")
    if len(parts) != 3 or not parts[0].isdigit():
        return None, "", ""
    return int(parts[0]), parts[1], parts[2]
