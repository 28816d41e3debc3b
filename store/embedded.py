"""The default store: one SQLite file, no setup, survives `kill -9`.

Why SQLite in WAL mode with `synchronous=NORMAL`: every commit is atomic and survives the
process being killed at any instant (the WAL is replayed on open); only a power cut may lose
the last commits, the same promise Docker's own boltdb store makes. Commits do not fsync, so a
write costs well under a millisecond and calls run directly on the event loop: each method is
one synchronous SQLite transaction with no await inside, which also makes it atomic with
respect to other coroutines without a lock.

Watches are in-process (only this daemon writes the file). History kept for resuming a watch
is the last `history` events since the store was opened; older start revisions raise
`RevisionCompacted`, exactly as etcd does after compaction. Leases are this process's too: the
earliest expiry is kept in memory, so a read asks SQLite about leases only once one is due.
Each statement outside a transaction takes and drops SQLite's read lock (`fcntl` calls): that
query on every call, and a put reading its revision back, made the requests of a `docker run`
148 `fcntl` calls instead of 92 (strace, Dec 2026).

Checkpoints (copying the WAL back into the database file) run in a thread of their own, on a
connection of their own, CHECKPOINT_DELAY after a write, never inside a commit: SQLite's
automatic one runs in the commit that fills the WAL past 1,000 pages and, with
`synchronous=NORMAL`, fsyncs there; it put 3.5-4.6 ms into one request in a few hundred
(500 rounds of bench/bridge.py's request path, quiet machine, Dec 2026), against 0.07 ms for
the commit itself. A PASSIVE checkpoint never blocks a writer, so commits go on meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from pynet.store.base import Compare, Delete, Event, KeyValue, Op, Put
from pynet.store.errors import NotFound, RevisionCompacted
from pynet.store.private import private_dir, private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires REAL NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"""


# What a kill -9 leaves next to the database; an older pynet made them with the default mode.
_COMPANIONS = ("-wal", "-shm")


def _row(r: tuple[Any, ...]) -> KeyValue:
    return KeyValue(r[0], bytes(r[1]), r[2], r[3], r[4], r[5])


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """[prefix, upper) so a range scan uses the primary key index."""
    return prefix, prefix + "\U0010ffff"


CHECKPOINT_DELAY = 1.0  # seconds after a write


class EmbeddedStore:
    def __init__(
        self, path: str | os.PathLike[str], history: int = 10000, checkpoint_delay: float = CHECKPOINT_DELAY
    ) -> None:
        private_dir(Path(path).parent)
        self.path = str(path)
        # SQLite creates the -wal and -shm files with the database file's mode, so a database
        # made 0600 before SQLite opens it never has a readable companion.
        for name in (self.path, *(self.path + s for s in _COMPANIONS if Path(self.path + s).exists())):
            private_file(name)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._checkpoint_delay = checkpoint_delay
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_db: sqlite3.Connection | None = None  # the thread's; made there
        self._checkpoint_lock = threading.Lock()
        self._closed = False
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._next_expiry = self._earliest_expiry()
        self._compacted = self._current_revision() + 1
        self._watchers: set[asyncio.Queue[Event]] = set()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._expire_leases()
        return self._get(key)

    async def range(self, prefix: str) -> list[KeyValue]:
        self._expire_leases()
        lo, hi = _prefix_bounds(prefix)
        rows = self._db.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv"
            " WHERE key >= ? AND key < ? ORDER BY key",
            (lo, hi),
        )
        return [_row(r) for r in rows]

    async def revision(self) -> int:
        return self._current_revision()

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._expire_leases()
        return self._apply((Put(key, value, lease),))

    async def delete(self, key: str, prefix: bool = False) -> int:
        before = len(await self.range(key)) if prefix else int(self._get(key) is not None)
        await self.txn((), (Delete(key, prefix),))
        return before

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        self._expire_leases()
        held = all(c.holds(self._get(c.key)) for c in compare)
        self._apply(success if held else failure)
        return held

    # -- watches -----------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        if start_revision < self._compacted:
            raise RevisionCompacted(start_revision, self._compacted)
        # Registering the queue and copying the history happen with no await in between, so
        # every event is in exactly one of the two.
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._watchers.add(queue)
        backlog = list(self._history)
        try:
            for ev in backlog:
                if ev.mod_revision >= start_revision and ev.key.startswith(prefix):
                    yield ev
            while True:
                ev = await queue.get()
                if ev.key.startswith(prefix):
                    yield ev
        finally:
            self._watchers.discard(queue)

    # -- leases ------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        expires = time.time() + ttl
        with self._transaction():
            cur = self._db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, expires))
        self._next_expiry = min(self._next_expiry, expires)
        return int(cur.lastrowid or 0)

    async def refresh_lease(self, lease: int) -> None:
        self._expire_leases()
        with self._transaction():
            cur = self._db.execute(
                "UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease)
            )
        if cur.rowcount == 0:
            raise NotFound(f"lease {lease} has expired or was revoked")

    async def revoke_lease(self, lease: int) -> None:
        self._drop_leases([lease])

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        with self._checkpoint_lock:  # a checkpoint under way in its thread ends first
            self._closed = True
            if self._checkpoint_db is not None:
                self._checkpoint_db.close()
                self._checkpoint_db = None
        self._db.close()  # the last connection: SQLite checkpoints and removes the WAL

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """An explicit transaction: in autocommit mode (isolation_level=None) sqlite3's own
        context manager never issues BEGIN, and every statement would commit on its own."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if self._checkpointer is None or self._checkpointer.done():
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_later())

    def _current_revision(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])

    def _get(self, key: str) -> KeyValue | None:
        r = self._db.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv WHERE key = ?",
            (key,),
        ).fetchone()
        return _row(r) if r else None

    def _apply(self, ops: Sequence[Op]) -> int:
        """Run `ops` as one SQLite transaction at one new revision, then notify watchers;
        returns the store's revision after it."""
        if not ops:
            return self._current_revision()
        events: list[Event] = []
        with self._transaction():
            rev = self._current_revision() + 1
            for op in ops:
                if isinstance(op, Put):
                    old = self._get(op.key)
                    self._db.execute(
                        "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            op.key,
                            op.value,
                            old.create_revision if old else rev,
                            rev,
                            old.version + 1 if old else 1,
                            op.lease,
                        ),
                    )
                    events.append(Event("put", op.key, op.value, rev))
                else:
                    if op.prefix:
                        lo, hi = _prefix_bounds(op.key)
                        keys = [
                            k
                            for (k,) in self._db.execute(
                                "SELECT key FROM kv WHERE key >= ? AND key < ?", (lo, hi)
                            )
                        ]
                    else:
                        keys = [op.key] if self._get(op.key) else []
                    for k in keys:
                        self._db.execute("DELETE FROM kv WHERE key = ?", (k,))
                        events.append(Event("delete", k, b"", rev))
            if events:
                self._db.execute("UPDATE meta SET value = ? WHERE name='revision'", (rev,))
        for ev in events:
            self._history.append(ev)
            for q in self._watchers:
                q.put_nowait(ev)
        return rev if events else rev - 1

    async def _checkpoint_later(self) -> None:
        await asyncio.sleep(self._checkpoint_delay)
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        with self._checkpoint_lock:
            if self._closed:
                return
            if self._checkpoint_db is None:
                self._checkpoint_db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _expire_leases(self) -> None:
        now = time.time()
        if now <= self._next_expiry:
            return
        expired = [i for (i,) in self._db.execute("SELECT id FROM leases WHERE expires < ?", (now,))]
        if expired:
            self._drop_leases(expired)
        # A refresh only ever moves an expiry later, so this stays a lower bound until then.
        self._next_expiry = self._earliest_expiry()

    def _earliest_expiry(self) -> float:
        (earliest,) = self._db.execute("SELECT MIN(expires) FROM leases").fetchone()
        return math.inf if earliest is None else float(earliest)

    def _drop_leases(self, leases: list[int]) -> None:
        marks = ",".join("?" * len(leases))
        keys = [
            k for (k,) in self._db.execute(f"SELECT key FROM kv WHERE lease IN ({marks})", leases)
        ]
        self._apply([Delete(k) for k in keys])
        with self._transaction():
            self._db.execute(f"DELETE FROM leases WHERE id IN ({marks})", leases)
