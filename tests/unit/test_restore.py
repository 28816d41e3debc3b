"""A network reconcile cannot restore is named with why, the others are restored, and it
comes back by `restore` once what it lacked is there (issue 10, item 1), over the in-memory
kernel of test_macvlan; the daemon's side is tests/kernel/test_startup.py."""

from __future__ import annotations

import pytest

from pynet.drivers.base import restore_each
from pynet.drivers.macvlan import MacvlanBackend
from pynet.drivers.netlink import Link
from pynet.drivers.registry import LINK_PREFIXES
from pynet.store.errors import Conflict, StoreUnavailable
from tests.unit.test_macvlan import NO_VIEW, backend, create, network, other

ETH1 = Link("eth1", 3, "", 1500, True, "52:54:00:00:00:02", 0, 0)


async def test_a_network_whose_parent_is_missing_waits_and_the_others_come_up() -> None:
    mv, nl = backend(ETH1)
    up = await create(mv, network({"parent": "eth0", "host_shim": "192.168.1.250/32"}, id="a1" * 32))
    late = await create(mv, other({"parent": "eth1"}, "10.2.0.0/24", id="b2" * 32))
    del nl.links_by_name["eth1"], nl.links_by_name["pns-" + "a1" * 5 + "a"]  # unplugged; the shim gone
    restarted = MacvlanBackend(nl, LINK_PREFIXES)  # type: ignore[arg-type]

    assert await restarted.reconcile([late, up], [], NO_VIEW) == {late.id: "pynet: option parent: interface 'eth1' does not exist"}
    assert "pns-" + "a1" * 5 + "a" in nl.links_by_name, "the other network is restored"
    with pytest.raises(Exception, match="does not exist"):
        await restarted.restore(late, [])
    nl.links_by_name["eth1"] = ETH1
    await restarted.restore(late, [])
    with pytest.raises(Conflict, match="overlaps 10.2.0.0/24"):
        await restarted.create_network(other({"parent": "eth1"}, "10.2.0.0/16"))


async def test_the_store_away_stops_the_whole_reconcile() -> None:
    """It is no one network's fault: serve retries the whole reconcile (reconcile_until_done)."""
    mv, _ = backend()
    net = await create(mv, other({"parent": "eth0"}, "10.1.0.0/24"))

    async def unavailable(_: object) -> None:
        raise StoreUnavailable("etcd did not answer")

    with pytest.raises(StoreUnavailable):
        await restore_each([net], unavailable)
