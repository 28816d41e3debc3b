"""Keeps a table equal to its keys in the store (the names under `dns/`, the cluster
networks' subnets): a snapshot, then a watch from its revision, as drivers/peers.py's Sync
does for VXLAN. When the store is away the table keeps what it has, so the names already known
keep resolving; a compacted history (the watch fell too far behind) means a new snapshot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from pynet.store.base import Store
from pynet.store.errors import RevisionCompacted

log = logging.getLogger("pynet.dns")


class Table(Protocol):
    """What a watcher keeps equal to the keys under `root` (records.NameTable, subnets.SubnetTable)."""

    root: str

    def __len__(self) -> int: ...
    def replace(self, items: Iterable[tuple[str, bytes]]) -> None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...


class Watcher:
    def __init__(self, store: Store, table: Table) -> None:
        self.store = store
        self.table = table
        self.synced = asyncio.Event()  # set after the first snapshot

    async def run_forever(self) -> None:
        """Snapshot, then watch from its revision; a compacted history, or a watch that ends,
        means a new snapshot. Any other failure (the store away at a snapshot) ends the run,
        and its supervisor (plugin/serve.py) starts it again with backoff, its state and last
        error in `pynet status`; the table keeps what it has meanwhile."""
        while True:
            revision = await self.snapshot()
            try:
                async for event in self.store.watch(self.table.root, revision + 1):
                    if event.kind == "put":
                        self.table.put(event.key, event.value)
                    else:
                        self.table.delete(event.key)
                log.info("dns watch ended: resyncing", extra={"prefix": self.table.root})
            except RevisionCompacted:
                log.info("dns watch history compacted: resyncing", extra={"prefix": self.table.root})

    async def snapshot(self) -> int:
        """Reload the table; returns the revision to watch after. The revision is read first:
        events between it and the range are replayed by the watch, and puts and deletes of
        whole records replay to the same table."""
        revision = await self.store.revision()
        kvs = await self.store.range(self.table.root)
        self.table.replace((kv.key, kv.value) for kv in kvs)
        self.synced.set()
        fields = {"prefix": self.table.root, "records": len(self.table), "revision": revision}
        log.debug("dns table loaded", extra=fields)
        return revision
