"""The cluster agent's network half: every host's Docker gets every cluster network.

Three supervised tasks share one trigger (`dirty`):

- `cluster-events` follows this host's Docker network events (after each (re)connect it asks
  for the events since it started, so none falls between the resync and the stream);
- `cluster-specs` watches the store's `cluster/` keys (specs, copies, VNIs);
- `cluster-networks` runs `reconcile`, on each trigger and every PERIOD seconds (a copy Docker
  refused to delete while containers use it is retried then, and on every network event).

Docker never tells the driver a network's name (docs/protocol.md §2.2): a network created
here is learnt from Docker's list (name, driver, IPAM, options, labels) and pynet's own record
(whether it is a cluster network, its VNI), then published as `cluster/networks/<name>`. The
agent's Docker calls come back into this host's own handlers (IPAM, CreateNetwork), so it holds
no lock of theirs: it only reads records, like `pynet status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import msgspec

from pynet.drivers.base import Network as Record
from pynet.drivers.config import MacvlanConfig, VxlanConfig
from pynet.drivers.vnis import Reservation, vni_key
from pynet.plugin.cluster.specs import (
    ClusterSpec,
    Copy,
    copy_key,
    copy_request,
    decide,
    is_copy,
    spec_from_inspect,
    spec_key,
)
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.daemon.supervisor import TaskState
from pynet.plugin.engine import Engine, EngineError, EngineUnavailable, Network, NetworkExists, NetworkInUse
from pynet.store.base import Compare, Delete, KeyValue, Put
from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.cluster")

PERIOD = 10.0
_spec, _copy = msgspec.json.Decoder(ClusterSpec), msgspec.json.Decoder(Copy)
_reservation = msgspec.json.Decoder(Reservation)


def _vni(record: Record | None) -> int:
    return record.config.vni if record is not None and isinstance(record.config, VxlanConfig) else 0


def _is_cluster(record: Record | None) -> bool:
    return record is not None and isinstance(record.config, VxlanConfig | MacvlanConfig) and record.config.cluster


class ClusterNetworks:
    def __init__(self, d: Daemon, engine: Engine) -> None:
        self.d = d
        self.engine = engine
        self.prefix = d.settings.store_prefix
        self.driver = d.settings.driver_name
        self.dirty = asyncio.Event()
        self.status: dict[str, str] = {}  # name -> what this host's copy is: created, conflict, in-use, error
        self._logged: dict[str, str] = {}  # name -> the last status logged, so a pass repeats nothing
        self._malformed = Malformed(log)

    def start(self) -> None:
        sup = self.d.supervisor
        sup.start("cluster-networks", self.run_reconcile)
        sup.start("cluster-events", self.follow_docker)
        sup.start("cluster-specs", self.follow_store)

    # -- triggers --------------------------------------------------------------------------

    async def follow_docker(self, state: TaskState) -> None:
        state.detail["docker"] = self.engine.docker_host
        since = time.time()
        events = self.engine.events({"type": ["network"]}, since=since)
        self.dirty.set()  # a resync after every (re)connect; events since SINCE are replayed
        async for _ in events:
            self.dirty.set()

    async def follow_store(self, _: TaskState) -> None:
        revision = await self.d.store.revision()
        self.dirty.set()
        async for _event in self.d.store.watch(f"{self.prefix}cluster/", revision + 1):
            self.dirty.set()

    async def run_reconcile(self, state: TaskState) -> None:
        while True:
            self.dirty.clear()
            await self.reconcile()
            state.detail.update(self._detail())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), PERIOD)

    def _detail(self) -> dict[str, str]:
        by: defaultdict[str, list[str]] = defaultdict(list)
        for name, what in sorted(self.status.items()):
            by[what].append(name)
        detail = {"api": self.engine.api_version or "-", "networks": str(len(self.status))}
        for what in ("conflict", "in-use", "error"):
            detail[what] = ",".join(by[what]) or "-"
        return detail

    # -- one pass --------------------------------------------------------------------------

    async def reconcile(self) -> None:
        store = self.d.store
        root = f"{self.prefix}cluster/networks/"
        # A malformed spec still holds its name: no network of that name is published over it.
        specs = {kv.key[len(root) :]: kv for kv in await store.range(root)}
        copies: defaultdict[str, dict[str, Copy]] = defaultdict(dict)
        root = f"{self.prefix}cluster/copies/"
        for kv in await store.range(root):
            name, _, host = kv.key[len(root) :].partition("/")
            copy = self._malformed.decode("cluster network copy record", kv.key, kv.value, _copy.decode)
            if copy is not None and name and host and "/" not in host:
                copies[name][host] = copy
        local = {n.Name: n for n in await self.engine.networks()}
        records = {r.id: r for r in await self.d.state.networks()}
        for net in local.values():
            if net.Name not in specs and net.Driver == self.driver and await self._is_origin(net, records.get(net.Id)):
                published = await self._publish(net, _vni(records.get(net.Id)))
                if published is not None:
                    specs[net.Name] = published
                    copies[net.Name][self.d.host] = Copy(net.Id)
        for name in set(self.status) - set(specs):
            self.status.pop(name)
        for name, kv in specs.items():
            spec = self._malformed.decode("cluster network spec", kv.key, kv.value, _spec.decode)
            if spec is None or spec.network.Name != name:
                if spec is not None:
                    self._malformed("cluster network spec", kv.key, f"it names network {spec.network.Name!r}")
                continue
            here = local.get(name)
            record = records.get(here.Id) if here is not None else None
            same = here is not None and is_copy(spec, here, self.driver, _vni(record))
            try:
                await self._apply(kv, spec, here, copies[name], same)
            except EngineUnavailable:
                raise
            except EngineError as err:  # Docker refused this one: the others go on
                self._report(name, "error", str(err))

    async def _is_origin(self, net: Network, record: Record | None) -> bool:
        """A cluster network made on this host, not a copy: for VXLAN, its VNI's reservation
        names it (a copy, or the same subnet typed by hand on another host, is not the origin)."""
        if not _is_cluster(record):
            return False
        vni = _vni(record)
        if not vni:
            return True
        kv = await self.d.store.get(vni_key(self.prefix, vni))
        found = None if kv is None else self._malformed.decode("VNI reservation", kv.key, kv.value, _reservation.decode)
        return found is not None and found.network_id == net.Id

    async def _publish(self, net: Network, vni: int) -> KeyValue | None:
        spec = spec_from_inspect(net, vni, self.d.host)
        key, value = spec_key(self.prefix, net.Name), msgspec.json.encode(spec)
        mine = Put(copy_key(self.prefix, net.Name, self.d.host), msgspec.json.encode(Copy(net.Id)))
        if not await self.d.store.txn([Compare.absent(key)], [Put(key, value), mine]):
            return None  # another host published that name first: the next pass sees its spec
        log.info("cluster network published", extra={"network": net.Id, "network_name": net.Name, "vni": vni})
        return await self.d.store.get(key)

    async def _apply(
        self, kv: KeyValue, spec: ClusterSpec, net: Network | None, copies: dict[str, Copy], same: bool
    ) -> None:
        name, host, store = spec.network.Name, self.d.host, self.d.store
        mine = copies.get(host)
        action = decide(spec, net, mine, same)
        key = copy_key(self.prefix, name, host)
        if action == "create":
            await self._create(spec, key)
        elif action == "keep" and net is not None:
            if mine is None or mine.docker_id != net.Id:
                await store.put(key, msgspec.json.encode(Copy(net.Id)))
            self._report(name, "created")
        elif action == "conflict":
            self._report(name, "conflict", "a different network has this name here: left alone, not replicated")
        elif action == "removed-here":
            removing = msgspec.json.encode(msgspec.structs.replace(spec, state="removing"))
            if await store.txn([Compare.unchanged(kv)], [Put(kv.key, removing), Delete(key)]):
                log.info("cluster network removed here: removing it on every host", extra={"network_name": name})
                copies.pop(host)
        elif action == "delete" and net is not None:
            try:
                await self.engine.delete_network(net.Id)
            except NetworkInUse:
                self._report(name, "in-use", "kept while containers here use it")
                return
            await store.delete(key)
            copies.pop(host, None)
            log.info("cluster network copy removed", extra={"network_name": name, "network": net.Id})
        elif action == "forget":
            await store.delete(key)
            copies.pop(host)
        if spec.state == "removing" and not copies:
            if await store.txn([Compare.unchanged(kv)], [Delete(kv.key)]):
                log.info("cluster network gone from every host", extra={"network_name": name})
            self.status.pop(name, None)

    async def _create(self, spec: ClusterSpec, key: str) -> None:
        name = spec.network.Name
        try:
            docker_id = await self.engine.create_network(copy_request(spec, self.driver))
        except NetworkExists:
            self.dirty.set()  # made meanwhile (by a user, or a retry): the next pass decides
            return
        except EngineUnavailable:
            raise
        except EngineError as err:
            self._report(name, "error", str(err))
            return
        await self.d.store.put(key, msgspec.json.encode(Copy(docker_id)))
        log.info("cluster network copied", extra={"network_name": name, "network": docker_id, "origin": spec.origin})
        self._report(name, "created")

    def _report(self, name: str, status: str, why: str = "") -> None:
        self.status[name] = status
        if self._logged.get(name) != status and why:
            log.warning("cluster network " + status, extra={"network_name": name, "reason": why})
        self._logged[name] = status
