"""EtcdStore against a private etcd that the tests stop, freeze, restart and compact by pid.

Time bounds here are behavioural (fail fast rather than hang), so they are loose on purpose.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from pynet.store.base import Event, Put
from pynet.store.errors import NotFound, RevisionCompacted, StoreUnavailable
from pynet.store.etcd import EtcdStore, _Client
from tests.etcd_server import EtcdServer, etcd_server, free_port

TIMEOUT = 1.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with etcd_server(tmp_path / "etcd") as server:
        yield server


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([etcd.endpoint], timeout=TIMEOUT)
    yield s
    await s.close()


class Collector:
    """Consumes a watch in a task, so the test can write while the watch is disconnected."""

    def __init__(self, store: EtcdStore, prefix: str, start: int) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run(store, prefix, start))

    async def _run(self, store: EtcdStore, prefix: str, start: int) -> None:
        async for event in store.watch(prefix, start):
            self.events.append(event)
            self.arrived.set()

    async def wait_for(self, count: int, within: float = 10.0) -> list[tuple[str, str, bytes]]:
        async with asyncio.timeout(within):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.2)  # room for a duplicate to show up
        return [(e.kind, e.key, e.value) for e in self.events]

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_down_etcd_fails_by_the_deadline_naming_it(etcd: EtcdServer, store: EtcdStore) -> None:
    await store.put("/a", b"1")
    etcd.kill()
    down = f"etcd at {etcd.endpoint} did not answer within {TIMEOUT}s .*Connection refused"
    # A read first: a write sent just as the socket died is reported as maybe applied instead.
    for call in (store.get("/a"), store.put("/a", b"2")):
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=down):
            await call
        assert time.monotonic() - start < TIMEOUT + 2


async def test_a_call_rides_out_a_short_restart(etcd: EtcdServer) -> None:
    """An etcd back within the deadline costs a delay, not a failed request."""
    store = EtcdStore([etcd.endpoint], timeout=5.0)
    try:
        await store.put("/a", b"1")
        etcd.kill()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.get("/a"), 0.5)  # gRPC now backs off reconnecting
        restart = asyncio.get_running_loop().call_later(0.3, etcd.start)
        try:
            assert (await store.get("/a")).value == b"1"  # type: ignore[union-attr]
        finally:
            restart.cancel()
    finally:
        await store.close()


async def test_frozen_etcd_fails_at_the_deadline(etcd: EtcdServer, store: EtcdStore) -> None:
    """SIGSTOP keeps the socket open and silent: only the deadline can end the call."""
    await store.put("/a", b"1")
    etcd.freeze()
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"etcd at {etcd.endpoint} did not answer within {TIMEOUT}s"):
            await store.get("/a")
        assert TIMEOUT - 0.1 < time.monotonic() - start < TIMEOUT + 2
    finally:
        etcd.thaw()
    assert (await store.get("/a")).value == b"1"  # type: ignore[union-attr]


async def test_same_store_works_after_etcd_restarts(etcd: EtcdServer, store: EtcdStore) -> None:
    await store.put("/a", b"1")
    etcd.kill()
    with pytest.raises(StoreUnavailable):
        await store.get("/a")
    etcd.start()
    assert (await store.get("/a")).value == b"1"  # type: ignore[union-attr]
    await store.put("/a", b"2")


async def test_watch_resumes_across_an_outage_without_loss_or_duplicates(
    etcd: EtcdServer, store: EtcdStore
) -> None:
    start = await store.revision() + 1
    await store.put("/w/before", b"1")
    watch = Collector(store, "/w/", start)
    assert await watch.wait_for(1) == [("put", "/w/before", b"1")]

    etcd.kill()
    await asyncio.sleep(1.0)  # the watch retries meanwhile, backing off
    etcd.start()
    # Written through another client before the watch gets back: it must replay them.
    async with asyncio.timeout(5):
        writer = EtcdStore([etcd.endpoint], timeout=TIMEOUT)
        await writer.txn([], [Put("/w/down1", b"2"), Put("/w/down2", b"3")])  # one revision, two events
        await writer.delete("/w/before")
        await writer.close()
    await watch.wait_for(4)
    await store.put("/w/after", b"4")
    assert await watch.wait_for(5) == [
        ("put", "/w/before", b"1"),
        ("put", "/w/down1", b"2"),
        ("put", "/w/down2", b"3"),
        ("delete", "/w/before", b""),
        ("put", "/w/after", b"4"),
    ]
    await watch.stop()


async def test_watch_from_compacted_revision_raises(etcd: EtcdServer, store: EtcdStore) -> None:
    for i in range(5):
        await store.put("/c/k", str(i).encode())
    rev = await store.revision()
    etcd.etcdctl("compaction", str(rev))
    with pytest.raises(RevisionCompacted) as raised:
        async for _ in store.watch("/c/", 2):
            pass
    assert raised.value.compacted == rev


async def test_watch_resuming_into_compacted_history_raises(etcd: EtcdServer, store: EtcdStore) -> None:
    """Compaction while the watch is away: the consumer must hear it and resync with range()."""
    start = await store.revision() + 1
    await store.put("/c/a", b"1")
    watch = Collector(store, "/c/", start)
    await watch.wait_for(1)
    etcd.kill()
    await asyncio.sleep(1.0)
    etcd.start()
    etcd.etcdctl("put", "/c/b", "2")
    etcd.etcdctl("put", "/c/b", "3")
    etcd.etcdctl("compaction", str(await store.revision()))
    with pytest.raises(RevisionCompacted):
        async with asyncio.timeout(10):
            await watch.task


async def test_close_ends_open_watches(store: EtcdStore) -> None:
    watch = Collector(store, "/w/", await store.revision() + 1)
    await asyncio.sleep(0.2)
    await store.close()
    async with asyncio.timeout(2):
        await watch.task


async def test_failover_to_the_next_endpoint(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdStore([dead, etcd.endpoint], timeout=TIMEOUT)
    try:
        start = time.monotonic()
        rev = await store.put("/f", b"1")  # a write: retried because it never left
        assert (await store.get("/f")).value == b"1"  # type: ignore[union-attr]
        watch = Collector(store, "/f", rev)
        assert await watch.wait_for(1) == [("put", "/f", b"1")]
        await watch.stop()
        assert time.monotonic() - start < TIMEOUT
    finally:
        await store.close()


async def test_all_endpoints_down_names_them(etcd: EtcdServer) -> None:
    dead1, dead2 = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    store = EtcdStore([dead1, dead2], timeout=TIMEOUT)
    try:
        with pytest.raises(
            StoreUnavailable,
            match=f"etcd at {dead1}, {dead2} did not answer within {TIMEOUT}s \\({dead1}: .*Connection refused; {dead2}: ",
        ):
            await store.revision()
    finally:
        await store.close()


async def test_lease_expires_unless_refreshed(store: EtcdStore) -> None:
    lone, kept = await store.grant_lease(1), await store.grant_lease(1)
    await store.put("/l/lone", b"v", lease=lone)
    await store.put("/l/kept", b"v", lease=kept)
    for _ in range(5):  # etcd revokes a lease within ttl + 0.5 s of its last refresh
        await store.refresh_lease(kept)
        await asyncio.sleep(0.4)
    assert await store.get("/l/lone") is None
    assert await store.get("/l/kept") is not None
    await asyncio.sleep(2.0)
    assert await store.get("/l/kept") is None


async def test_refreshing_a_revoked_lease_is_not_found(store: EtcdStore) -> None:
    lease = await store.grant_lease(2)
    await store.revoke_lease(lease)
    with pytest.raises(NotFound):
        await store.refresh_lease(lease)
    await store.revoke_lease(lease)  # revoking twice is fine


async def test_user_password_auth(etcd: EtcdServer) -> None:
    etcd.etcdctl("user", "add", "root:pw")
    etcd.etcdctl("auth", "enable")
    wrong = EtcdStore([etcd.endpoint], timeout=TIMEOUT, user="root", password="nope")
    anonymous = EtcdStore([etcd.endpoint], timeout=TIMEOUT)
    right = EtcdStore([etcd.endpoint], timeout=TIMEOUT, user="root", password="pw")
    watching = EtcdStore([etcd.endpoint], timeout=TIMEOUT, user="root", password="pw")
    try:
        with pytest.raises(StoreUnavailable, match=f"etcd at {etcd.endpoint} refused user 'root': .*authentication failed"):
            await wrong.revision()
        with pytest.raises(StoreUnavailable, match="refused a client without user and password"):
            await anonymous.put("/a", b"1")
        start = await right.put("/a/1", b"1")
        watch = Collector(watching, "/a/", start)
        await watch.wait_for(1)
        # etcd forgets its auth tokens when it restarts: both stores must log in again, the
        # watching one on its own (it makes no other call).
        etcd.stop()
        etcd.start()
        await right.put("/a/2", b"2")
        assert await watch.wait_for(2) == [("put", "/a/1", b"1"), ("put", "/a/2", b"2")]
        await watch.stop()
    finally:
        for s in (wrong, anonymous, right, watching):
            await s.close()


async def test_tls_with_client_certificates(tmp_path: Path) -> None:
    with etcd_server(tmp_path / "etcd", tls=True) as etcd:
        assert etcd.tls is not None
        ca, cert, key = str(etcd.tls.ca), str(etcd.tls.client_cert), str(etcd.tls.client_key)
        store = EtcdStore([etcd.endpoint], timeout=TIMEOUT, ca=ca, cert=cert, key=key)
        no_cert = EtcdStore([etcd.endpoint], timeout=TIMEOUT, ca=ca)
        try:
            rev = await store.put("/t", b"1")
            watch = Collector(store, "/t", rev)
            assert await watch.wait_for(1) == [("put", "/t", b"1")]
            await watch.stop()
            with pytest.raises(StoreUnavailable, match=f"etcd at {etcd.endpoint}"):
                await no_cert.get("/t")
        finally:
            await store.close()
            await no_cert.close()


# -- whole-range reads -----------------------------------------------------------------------


async def test_range_larger_than_grpcs_default_message_limit(etcd: EtcdServer) -> None:
    """60 values of 100 KiB: 6 MiB in one page, over gRPC's 4 MiB default (a /16 full of IPAM
    addresses is about 11 MiB); the limit set on the channel lets the page through."""
    store = EtcdStore([etcd.endpoint], timeout=10.0)
    try:
        big = b"x" * (100 * 1024)
        for i in range(0, 60, 10):
            assert await store.txn([], [Put(f"/big/{j:03}", big) for j in range(i, i + 10)])
        found = await store.range("/big/")
        assert [kv.key for kv in found] == [f"/big/{j:03}" for j in range(60)]
        assert all(kv.value == big for kv in found)
    finally:
        await store.close()


async def test_range_crosses_pages_at_one_revision(etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 keys over 7; a write landing between two pages is not seen (every page reads
    the first page's revision), and keys outside the prefix never leak in."""
    store = EtcdStore([etcd.endpoint], timeout=TIMEOUT, page_size=2)
    writer = EtcdStore([etcd.endpoint], timeout=TIMEOUT)
    try:
        await store.put("/p", b"outside")
        await store.put("/p/", b"0")
        for i in range(1, 7):
            await store.put(f"/p/{i}", str(i).encode())
        await store.put("/q", b"outside")
        pages: list[int] = []
        real = _Client.range_page

        async def spy(self: _Client, start: bytes, end: bytes, limit: int, revision: int) -> tuple[list[Any], bool, int]:
            got = await real(self, start, end, limit, revision)
            pages.append(len(got[0]))
            if len(pages) == 1:
                await writer.put("/p/3", b"changed")
                await writer.put("/p/9", b"new")
            return got

        monkeypatch.setattr(_Client, "range_page", spy)
        found = await store.range("/p/")
        assert [(kv.key, kv.value) for kv in found] == [("/p/", b"0")] + [(f"/p/{i}", str(i).encode()) for i in range(1, 7)]
        assert pages == [2, 2, 2, 1]
        monkeypatch.undo()
        assert [kv.key for kv in await store.range("/p/")][-1] == "/p/9"
        with pytest.raises(ValueError, match="page size must be at least 1, got 0"):
            EtcdStore([etcd.endpoint], page_size=0)
    finally:
        await store.close()
        await writer.close()
