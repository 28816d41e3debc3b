"""The store contract (store/base.py), run against every implementation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

from pynet.store.base import Compare, Delete, Put, Store
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import NotFound, RevisionCompacted
from pynet.store.etcd import EtcdStore
from pynet.store.locks import KeyedLocks
from tests.etcd_server import EtcdServer, etcd_server


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One private etcd for the module: starting one per test would dominate the run time."""
    with etcd_server(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(params=["embedded", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: EmbeddedStore | EtcdStore
    if request.param == "embedded":
        s = EmbeddedStore(tmp_path / "store.sqlite")
    else:
        # Pages of 2 keys, so every range of the contract crosses pages (store/etcd.py).
        s = EtcdStore([request.getfixturevalue("etcd").endpoint], page_size=2)
        await s.delete("", prefix=True)  # tests share the etcd: each starts from an empty keyspace
    yield s
    await s.close()


async def test_put_get_range_delete(store: Store) -> None:
    r1 = await store.put("/t/a", b"1")
    r2 = await store.put("/t/b", b"2")
    await store.put("/u/c", b"3")
    assert r2 > r1
    kv = await store.get("/t/a")
    assert kv is not None and kv.value == b"1" and kv.version == 1 and kv.mod_revision == r1
    await store.put("/t/a", b"11")
    kv2 = await store.get("/t/a")
    assert kv2 is not None and kv2.version == 2 and kv2.create_revision == r1 and kv2.value == b"11"
    assert [kv.key for kv in await store.range("/t/")] == ["/t/a", "/t/b"]
    for i in range(5):
        await store.put(f"/t/c{i}", b"x")
    assert [kv.key for kv in await store.range("/t/")] == ["/t/a", "/t/b", *(f"/t/c{i}" for i in range(5))]
    assert await store.delete("/t/c", prefix=True) == 5
    assert await store.delete("/t/a") == 1
    assert await store.delete("/t/a") == 0
    assert await store.get("/t/a") is None
    assert await store.delete("/t/", prefix=True) == 1
    assert [kv.key for kv in await store.range("/")] == ["/u/c"]


async def test_txn_compare_and_swap(store: Store) -> None:
    assert await store.txn([Compare.absent("/k")], [Put("/k", b"first")], [Put("/lost", b"x")])
    assert not await store.txn([Compare.absent("/k")], [Put("/k", b"second")], [Put("/lost", b"x")])
    kv = await store.get("/k")
    assert kv is not None and kv.value == b"first"
    assert (await store.get("/lost")) is not None
    assert await store.txn([Compare.unchanged(kv)], [Put("/k", b"third"), Delete("/lost")])
    assert not await store.txn([Compare.unchanged(kv)], [Put("/k", b"fourth")])
    assert (await store.get("/k")).value == b"third"  # type: ignore[union-attr]
    assert await store.get("/lost") is None
    assert await store.txn([Compare("/k", "value", "==", b"third")], [])


async def test_txn_is_one_revision(store: Store) -> None:
    before = await store.revision()
    await store.txn([], [Put("/a", b"1"), Put("/b", b"2")])
    assert await store.revision() == before + 1
    a, b = await store.get("/a"), await store.get("/b")
    assert a is not None and b is not None and a.mod_revision == b.mod_revision == before + 1


async def test_concurrent_cas_never_double_allocates(store: Store) -> None:
    async def claim(n: int) -> int:
        for slot in range(100):
            if await store.txn([Compare.absent(f"/slots/{slot}")], [Put(f"/slots/{slot}", str(n).encode())]):
                return slot
        raise AssertionError("no slot")

    slots = await asyncio.gather(*(claim(n) for n in range(50)))
    assert sorted(slots) == list(range(50))


async def test_watch_resumes_from_revision(store: Store) -> None:
    start = await store.revision() + 1
    await store.put("/w/a", b"1")
    await store.put("/other", b"x")
    await store.put("/w/b", b"2")
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async for ev in store.watch("/w/", start):
            seen.append((ev.kind, ev.key))
            if len(seen) == 4:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await store.delete("/w/a")
    await store.put("/w/c", b"3")
    await asyncio.wait_for(task, 5)
    assert seen == [("put", "/w/a"), ("put", "/w/b"), ("delete", "/w/a"), ("put", "/w/c")]


async def test_watch_from_compacted_revision_raises(store: Store) -> None:
    await store.put("/x", b"1")
    with pytest.raises(RevisionCompacted):
        async for _ in store.watch("/", 0):
            pass


async def test_lease_expires_keys(store: Store) -> None:
    lease = await store.grant_lease(1)
    await store.put("/leased", b"v", lease=lease)
    await store.put("/kept", b"v")
    await asyncio.sleep(0.6)
    await store.refresh_lease(lease)
    await asyncio.sleep(0.6)
    assert await store.get("/leased") is not None
    await asyncio.sleep(1.0)
    assert await store.get("/leased") is None
    assert await store.get("/kept") is not None
    with pytest.raises(NotFound):
        await store.refresh_lease(lease)


async def test_revoke_lease_deletes_keys(store: Store) -> None:
    lease = await store.grant_lease(60)
    await store.put("/l/a", b"v", lease=lease)
    await store.revoke_lease(lease)
    assert await store.get("/l/a") is None


async def test_embedded_reads_are_one_statement_and_writes_one_transaction(tmp_path: Path) -> None:
    """Every statement outside a transaction takes and drops SQLite's read lock (fcntl calls):
    a get is its one SELECT, a put nothing outside its transaction. Before, each call also
    asked for expired leases, and a put read the revision again after committing; those
    were about a third of the statements of a `docker run`'s plugin requests."""
    s = EmbeddedStore(tmp_path / "store.sqlite")
    statements: list[str] = []
    s._db.set_trace_callback(statements.append)
    try:
        revision = await s.put("/k", b"v")
        assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
        assert revision == await s.revision()
        statements.clear()
        assert (await s.get("/k")) is not None
        assert len(statements) == 1 and statements[0].startswith("SELECT key, value")
        # A lease makes the next call past its expiry look for expired leases, once.
        lease = await s.grant_lease(60)
        await s.put("/leased", b"v", lease=lease)
        s._next_expiry = 0.0  # as if its expiry had come: the store then asks SQLite
        statements.clear()
        assert (await s.get("/leased")) is not None
        assert sum("FROM leases" in q for q in statements) == 2  # the expired ones (none), the next expiry
        statements.clear()
        await s.get("/leased")
        assert not any("leases" in q for q in statements)
    finally:
        await s.close()


async def test_embedded_commits_leave_checkpoints_to_a_thread_after_the_writes(tmp_path: Path) -> None:
    """SQLite's own checkpoint ran inside the commit that filled the WAL past 1,000 pages,
    an fsync in the middle of a request: the database file grew during the writes. Now it
    grows only when the store's checkpoint runs, after them."""
    path = tmp_path / "store.sqlite"
    s = EmbeddedStore(path, checkpoint_delay=0.05)
    try:
        await s.put("/first", b"v")
        await _until(lambda: path.stat().st_size > 0)  # the schema, checkpointed
        size = path.stat().st_size
        for i in range(2000):  # about 3,000 pages of WAL
            await s.put(f"/k/{i:05d}", b"x" * 1024)
        assert path.stat().st_size == size
        assert Path(f"{path}-wal").stat().st_size > 1000 * 4096
        await _until(lambda: path.stat().st_size > 2000 * 1024)
    finally:
        await s.close()
    reopened = EmbeddedStore(path)
    assert len(await reopened.range("/k/")) == 2000
    await reopened.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for what the store's background checkpoint does (never an assertion on time)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the checkpoint never ran")


def test_embedded_survives_kill_9(tmp_path: Path) -> None:
    """A writer killed mid-stream leaves a readable store holding every committed write."""
    path = tmp_path / "store.sqlite"
    code = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pynet.store.embedded import EmbeddedStore
        async def main():
            s = EmbeddedStore({str(path)!r})
            i = 0
            while True:
                await s.put(f"/k/{{i:06d}}", b"x" * 512)
                i += 1
                if i == 300:
                    print("ready", flush=True)
        asyncio.run(main())
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()

    async def check() -> None:
        s = EmbeddedStore(path)
        kvs = await s.range("/k/")
        assert len(kvs) >= 300
        # Every committed key is there with no gap: writes are atomic and ordered.
        assert [kv.key for kv in kvs] == [f"/k/{i:06d}" for i in range(len(kvs))]
        assert await s.revision() == len(kvs)
        await s.close()

    asyncio.run(check())


async def test_keyed_locks_exclude_per_key_and_go_when_unused() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, tag: str) -> None:
        async with locks(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(hold("a", "a1"), hold("a", "a2"), hold("b", "b1"))
    assert order.index("a1-") < order.index("a2+")  # one key: one holder at a time
    assert order.index("b1+") < order.index("a1-")  # another key: in parallel
    assert len(locks) == 0
    waiting = asyncio.gather(hold("c", "c1"), hold("c", "c2"))
    await asyncio.sleep(0)
    assert len(locks) == 1  # held and waited for: kept
    await waiting
    assert len(locks) == 0
