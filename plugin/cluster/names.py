"""This host's container names, published for every host's resolver (docs/design.md, "Names").

    P dns/<network name>/<host>/<container id>  {"names": [name, aliases...], "ipv4", "ipv6"}

one key per running container and eligible network, written under the host's lease (the one
drivers/peers.py's Registry keeps for VTEPs and endpoints), so a dead host's names expire with
its VTEP. What is published follows Docker's events (container start/die/destroy, network
connect/disconnect: each one re-inspects the container it names and fixes that container's
keys); at start and after every reconnect a full resync lists the containers and fixes the
difference with the keys this host has in the store. Both are one pure diff (`changes`).

A network is eligible when it is one of this host's VXLAN cluster networks (serve says which):
the records are keyed by network name, the same on every host that has a copy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pynet.plugin.daemon.supervisor import TaskState
from pynet.plugin.engine.client import Engine
from pynet.plugin.engine.errors import EngineError
from pynet.plugin.engine.models import Container
from pynet.store.base import Store
from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.names")

Record = dict[str, Any]  # {"names": [...], "ipv4": "...", "ipv6": "..."}

EVENTS = {
    "type": ["container", "network"],
    "event": ["start", "die", "destroy", "connect", "disconnect"],
}


class Keys(Protocol):
    """Puts under the host's lease (drivers/peers.py Registry)."""

    async def put(self, key: str, value: dict[str, Any]) -> None: ...

    async def delete(self, key: str) -> None: ...


def key(root: str, network: str, host: str, container: str) -> str:
    return f"{root}{network}/{host}/{container}"


def records(root: str, host: str, c: Container, eligible: set[str]) -> dict[str, Record]:
    """The keys a container should have: one per eligible network it is on, while it runs."""
    if not c.State.Running:
        return {}
    out: dict[str, Record] = {}
    for network, ep in c.NetworkSettings.Networks.items():
        if ep.NetworkID not in eligible or not (ep.IPAddress or ep.GlobalIPv6Address):
            continue
        names = list(dict.fromkeys([c.Name, *ep.Aliases]))
        out[key(root, network, host, c.Id)] = {"names": names, "ipv4": ep.IPAddress, "ipv6": ep.GlobalIPv6Address}
    return out


@dataclass(frozen=True)
class Changes:
    puts: dict[str, Record]
    deletes: frozenset[str]


def changes(want: Mapping[str, Record], stored: Mapping[str, Record], published: Mapping[str, Record]) -> Changes:
    """What turns this host's keys into WANT. STORED is what the store holds, PUBLISHED what
    this process put: a key stored by an earlier run, under a lease that is expiring, is put
    again even when its value is right."""
    puts = {k: v for k, v in want.items() if stored.get(k) != v or published.get(k) != v}
    return Changes(puts, frozenset((stored.keys() | published.keys()) - want.keys()))


def container_of(k: str) -> str:
    return k.rsplit("/", 1)[1]


class Publisher:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        keys: Keys,
        prefix: str,
        host: str,
        eligible: Callable[[], Awaitable[set[str]]],
    ) -> None:
        """ELIGIBLE gives the Docker IDs of the networks whose names are published."""
        self.engine = engine
        self.store = store
        self.keys = keys
        self.root = f"{prefix}dns/"
        self.host = host
        self.eligible = eligible
        self.published: dict[str, Record] = {}
        self._malformed = Malformed(log)

    async def run(self, state: TaskState) -> None:
        """Resync, then follow events; when the stream ends (dockerd restarting), again. A
        failure (Docker or the store away) ends the run: the supervisor retries with backoff."""
        while True:
            since = time.time()  # events during the resync are replayed after it
            await self.resync()
            state.detail.update(api=self.engine.api_version, records=str(len(self.published)), resync=f"{since:.0f}")
            async for event in self.engine.events(EVENTS, since=since):
                container = event.Actor.ID if event.Type == "container" else event.Actor.Attributes.get("container", "")
                if container:
                    await self.refresh(container)
                    state.detail["records"] = str(len(self.published))

    async def resync(self) -> None:
        eligible = await self.eligible()
        want: dict[str, Record] = {}
        for summary in await self.engine.containers():
            if summary.State != "running":
                continue
            try:
                want |= records(self.root, self.host, await self.engine.container(summary.Id), eligible)
            except EngineError as e:
                if e.status != 404:  # removed since the list
                    raise
        kvs = await self.store.range(self.root)
        stored = {kv.key: self._stored(kv.key, kv.value) for kv in kvs if self._mine(kv.key)}
        await self._apply(changes(want, stored, self.published))

    def _stored(self, k: str, value: bytes) -> Record:
        """One of this host's keys as stored; a malformed one reads as {}, which no wanted
        record equals: it is put right, or deleted."""
        found = self._malformed.decode("dns record of this host", k, value, json.loads)
        return found if isinstance(found, dict) else {}

    async def refresh(self, container: str) -> None:
        """Make one container's keys what an inspect says (none once it is gone)."""
        try:
            c: Container | None = await self.engine.container(container)
        except EngineError as e:
            if e.status != 404:
                raise
            c = None
        want = records(self.root, self.host, c, await self.eligible()) if c else {}
        mine = {k: v for k, v in self.published.items() if container_of(k) == container}
        await self._apply(changes(want, mine, mine))

    def _mine(self, k: str) -> bool:
        parts = k[len(self.root) :].split("/")
        return len(parts) == 3 and parts[1] == self.host

    async def _apply(self, ch: Changes) -> None:
        for k in sorted(ch.deletes):
            await self.keys.delete(k)
            self.published.pop(k, None)
        for k, v in ch.puts.items():
            await self.keys.put(k, v)
            self.published[k] = v
        if ch.puts or ch.deletes:
            names = ",".join(sorted({v["names"][0] for v in ch.puts.values()}))
            log.info("names published", extra={"put": names, "deleted": len(ch.deletes)})
