"""gc never takes a link Docker still uses, even with no record of it here (a changed
--state-dir, --store-prefix, --host-id or store: issue 10, item 3)."""

from __future__ import annotations

from pynet.plugin.ops import gc
from tests.unit.test_gc import LIVE, NET, NOW, inventory, keys, view


def test_links_of_what_docker_has_are_no_leaks_without_records() -> None:
    blank = inventory(networks=[], endpoints=[], allocations=[], rules=[])  # a store that never saw them
    links = {("link", "pnb-" + NET[:11]), ("link", "pnh-" + LIVE[:11])}
    assert links <= keys(gc.find(blank, None, NOW)), "without Docker's word they are listed"
    found = keys(gc.find(blank, view(), NOW))
    assert not links & found, "Docker has the network and the endpoint: in use"
    assert ("link", "pnh-" + "c" * 11) in found, "a link of what Docker does not know still is a leak"
