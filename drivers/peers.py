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

Programming is a diff of the wanted entries against a dump of the device, so replaying an
event, a resync after a compaction or a restart all converge to the same state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynet.drivers.netlink import ZERO_MAC, Forwarding, Netlink
from pynet.store import faults
from pynet.store.base import Event, Store
from pynet.store.errors import NotFound, RevisionCompacted, StoreUnavailable

log = logging.getLogger("pynet.peers")

RETRY_MIN, RETRY_MAX = 0.25, 5.0


class Observer(Protocol):
    """Told about programming, for metrics (plugin/metrics.py implements it; drivers/ never
    imports plugin/)."""

    def on_programmed(self, vni: int, vteps: int, seconds: float) -> None:
        """`seconds` since the newest remote endpoint of the VNI was registered."""

    def forget(self, vni: int) -> None:
        """The last local network of the VNI is gone."""


def vtep_key(prefix: str, vni: int, host: str) -> str:
    return f"{prefix}vxlan/{vni}/vteps/{host}"


def endpoint_key(prefix: str, vni: int, endpoint_id: str) -> str:
    return f"{prefix}vxlan/{vni}/endpoints/{endpoint_id}"


@dataclass
class Remotes:
    """What the other hosts registered for one VNI."""

    vteps: dict[str, str] = field(default_factory=dict)  # host -> VTEP address
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoint id -> value

    def wanted(self, static_peers: tuple[str, ...]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(FDB entries, neighbour entries) this host's VXLAN device should hold."""
        fdb = {(ZERO_MAC, vtep) for vtep in (*self.vteps.values(), *static_peers)}
        neigh: set[tuple[str, str]] = set()
        for ep in self.endpoints.values():
            fdb.add((ep["mac"], ep["vtep"]))
            neigh |= {(ip, ep["mac"]) for ip in ep["ips"]}
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
            await self.store.put(key, data, lease=self._lease)
            self._mine[key] = data

    async def delete(self, key: str) -> None:
        async with self._lock:
            self._mine.pop(key, None)
            await self.store.delete(key)

    async def keep_alive_forever(self) -> None:
        """Refresh every ttl/3; when the lease is gone (expired during a long store outage),
        take a new one and put every key back, so the other hosts see this one again."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                async with self._lock:
                    if not self._lease:
                        continue
                    try:
                        await self.store.refresh_lease(self._lease)
                    except NotFound:
                        log.warning("lease lost, registering again", extra={"keys": len(self._mine)})
                        self._lease = await self.store.grant_lease(self.ttl)
                        for key, data in self._mine.items():
                            await self.store.put(key, data, lease=self._lease)
            except StoreUnavailable as e:
                log.warning("lease not refreshed", extra={"error": str(e)})


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
        self._locks: dict[int, asyncio.Lock] = {}
        self.observer = observer
        self.synced = asyncio.Event()

    async def attach(self, vni: int, device: str, static_peers: tuple[str, ...]) -> None:
        """Program a device from the current view, once there is one: before the first
        snapshot (just after a restart) an empty view would wipe entries traffic relies on."""
        self.devices[vni] = (device, static_peers)
        if self.synced.is_set():
            await self.program(vni)

    def detach(self, vni: int) -> None:
        self.devices.pop(vni, None)
        if self.observer:
            self.observer.forget(vni)

    async def run_forever(self) -> None:
        """Snapshot, then watch from the snapshot's revision; on any loss of the watch, take a
        new snapshot. Failures never touch the kernel's entries: traffic keeps flowing on what
        was last programmed while the store is away."""
        delay = RETRY_MIN
        while True:
            try:
                revision = await self._snapshot()
                delay = RETRY_MIN
                async for event in self.store.watch(self.root, revision + 1):
                    await self._apply(event)
            except RevisionCompacted:
                log.info("watch history compacted: resyncing")
            except (StoreUnavailable, ConnectionError, OSError) as e:
                log.warning("peer watch interrupted", extra={"error": str(e), "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception:
                log.exception("peer watch failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _snapshot(self) -> int:
        revision = await self.store.revision()
        segments: dict[int, Remotes] = {}
        for kv in await self.store.range(self.root):
            self._record(segments, kv.key, kv.value)
        self.segments = segments
        for vni in list(self.devices):
            await self.program(vni)
        self.synced.set()
        return revision

    def _record(self, segments: dict[int, Remotes], key: str, value: bytes) -> int | None:
        """Fold one key into `segments`; returns its VNI (None for this host's own keys)."""
        vni, kind, name = _parse(key[len(self.root) :])
        if vni is None:
            return None
        seg = segments.setdefault(vni, Remotes())
        doc = json.loads(value) if value else None
        if kind == "vteps":
            if name == self.host:
                return None
            if doc is None:
                seg.vteps.pop(name, None)
            else:
                seg.vteps[name] = doc["address"]
        elif kind == "endpoints":
            if doc is None:
                seg.endpoints.pop(name, None)
            elif doc["host"] != self.host:
                seg.endpoints[name] = doc
            else:
                return None
        return vni

    async def _apply(self, event: Event) -> None:
        vni = self._record(self.segments, event.key, event.value if event.kind == "put" else b"")
        if vni is not None and vni in self.devices:
            await self.program(vni)

    async def program(self, vni: int) -> None:
        if vni not in self.devices:
            return
        async with self._locks.setdefault(vni, asyncio.Lock()):
            device, static_peers = self.devices[vni]
            link = await self.nl.link(device)
            if link is None:
                return
            seg = self.segments.get(vni, Remotes())
            fwd = Forwarding(self.nl, link.index)
            todo = changes(seg.wanted(static_peers), (await fwd.fdb(), await fwd.neighbours()))
            for mac, dst in todo.del_fdb:
                await fwd.del_fdb(mac, dst)
            for mac, dst in todo.add_fdb:
                await fwd.add_fdb(mac, dst)
                faults.hit("vxlan.program.partial")
            for ip in todo.del_neigh:
                await fwd.del_neighbour(ip)
            for ip, mac in todo.set_neigh:
                await fwd.set_neighbour(ip, mac)
        if self.observer:
            newest = max((ep.get("time", 0.0) for ep in seg.endpoints.values()), default=0.0)
            self.observer.on_programmed(vni, len(seg.vteps), time.time() - newest if newest else 0.0)


def _parse(rest: str) -> tuple[int | None, str, str]:
    """'<vni>/<kind>/<name>' -> (vni, kind, name); (None, "", "") for anything else."""
    parts = rest.split("/")
    if len(parts) != 3 or not parts[0].isdigit():
        return None, "", ""
    return int(parts[0]), parts[1], parts[2]
