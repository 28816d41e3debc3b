"""This host's records: `State.networks` reads every record each time and decodes only the
ones whose bytes changed, so another process's writes (`pynet gc`) are never served stale."""

from __future__ import annotations

import msgspec

from pynet.plugin.daemon.state import State, decode_network
from pynet.store.base import Store
from tests.unit.test_record_migration import BRIDGE_OPTS, VXLAN_OPTS
from tests.unit.test_store import etcd, store  # noqa: F401  (fixtures: each test runs on both stores)


async def test_networks_see_another_process_writes_and_decode_only_what_changed(store: Store) -> None:
    mine, gc = State(store, "/pynet/", "h1"), State(store, "/pynet/", "h1")
    a, b = decode_network(BRIDGE_OPTS), decode_network(VXLAN_OPTS)
    await mine.save_network(a)
    await mine.save_network(b)
    before = {n.id: n for n in await mine.networks()}
    assert before == {a.id: a, b.id: b}

    await gc.delete_network(a.id, [])
    await gc.save_network(msgspec.structs.replace(b, internal=True))
    after = await mine.networks()
    assert [(n.id, n.internal) for n in after] == [(b.id, True)], "the other process's delete and rewrite"

    again = await mine.networks()
    assert again[0] is after[0], "an unchanged record is not decoded again"
