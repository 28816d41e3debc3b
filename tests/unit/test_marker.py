"""The marker that lets start-up delete orphan links (plugin/daemon/marker.py): it holds only
for the store and the state directory that were bound together, whichever changes."""

from __future__ import annotations

from pathlib import Path

from pynet.plugin.daemon.marker import Marker
from pynet.store.embedded import EmbeddedStore


async def test_only_the_store_and_state_directory_bound_together_have_seen_the_host(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "lost").mkdir()
    first, second = EmbeddedStore(tmp_path / "first.sqlite"), EmbeddedStore(tmp_path / "second.sqlite")
    try:
        marker = Marker(first, "/pynet/", "h1", str(tmp_path / "state"))
        assert not await marker.seen(), "a fresh store has seen nothing"
        await marker.mark()
        assert await marker.seen()
        assert oct((tmp_path / "state" / "store-marker").stat().st_mode & 0o777) == "0o600"
        assert not await Marker(first, "/other/", "h1", str(tmp_path / "state")).seen(), "another prefix"
        assert not await Marker(first, "/pynet/", "h2", str(tmp_path / "state")).seen(), "another host ID"
        assert not await Marker(first, "/pynet/", "h1", str(tmp_path / "lost")).seen(), "a lost state directory"

        # A switch to another store and back: the state directory remembers the last one bound.
        switched = Marker(second, "/pynet/", "h1", str(tmp_path / "state"))
        assert not await switched.seen()
        await switched.mark()
        assert not await marker.seen(), "back on the first store, which did not make the links since"

        # The store outlives a lost state directory: binding them again keeps its token.
        again = Marker(second, "/pynet/", "h1", str(tmp_path / "lost"))
        await again.mark()
        assert await again.seen() and await switched.seen()
    finally:
        await first.close()
        await second.close()
