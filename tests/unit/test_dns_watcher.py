"""The dns/ watcher: a compacted history means a new snapshot; a store that goes away leaves the
table as it was, so the names already known keep resolving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from pynet.plugin.daemon import supervisor
from pynet.plugin.daemon.supervisor import Supervisor
from pynet.plugin.dns.records import NameTable
from pynet.plugin.dns.watcher import Watcher
from pynet.store.base import Event, KeyValue
from pynet.store.errors import RevisionCompacted, StoreUnavailable

ROOT = "/pynet/dns/"
WEB = ROOT + "front/h1/web"
API = ROOT + "front/h2/api"


def kv(key: str, ip: str) -> KeyValue:
    return KeyValue(key, json.dumps({"names": [key.rsplit("/", 1)[1]], "ipv4": ip}).encode(), 1, 1, 1)


class Script:
    """A store whose range and watch follow a script: each watch raises the next failure."""

    def __init__(self) -> None:
        self.snapshots = [[kv(WEB, "10.1.0.2")], [kv(WEB, "10.1.0.2"), kv(API, "10.1.0.3")]]
        self.failures: list[Exception] = [RevisionCompacted(1, 5), StoreUnavailable("etcd down")]
        self.ranges = 0
        self.down = asyncio.Event()

    async def revision(self) -> int:
        if self.ranges >= len(self.snapshots):
            self.down.set()
            raise StoreUnavailable("etcd down")
        return 10

    async def range(self, prefix: str) -> list[KeyValue]:
        self.ranges += 1
        return self.snapshots[self.ranges - 1]

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        assert start_revision == 11
        yield Event("delete", WEB, b"", 11) if self.ranges == 2 else Event("put", WEB, kv(WEB, "10.1.0.7").value, 11)
        raise self.failures.pop(0)


async def test_compaction_resyncs_and_an_outage_keeps_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under its supervisor, as serve runs it: the outage ends a run, the next one finds the
    store still away."""
    monkeypatch.setattr(supervisor, "FIRST_DELAY", 0.01)
    store = Script()
    table = NameTable(ROOT)
    sup = Supervisor()
    state = sup.start("dns-names", lambda _: Watcher(store, table).run_forever())  # type: ignore[arg-type]
    await asyncio.wait_for(store.down.wait(), 10)
    await sup.close()
    assert state.restarts >= 1 and state.last_error == "StoreUnavailable: etcd down"
    # Snapshot 1, a put, compaction, snapshot 2 (web and api), a delete of web, then etcd is
    # down: the table is what the last event left, api alone.
    assert store.ranges == 2
    assert table.lookup("10.1.0.3", "api", 4) == ["10.1.0.3"]
    assert table.lookup("10.1.0.3", "web", 4) is None
