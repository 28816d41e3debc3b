"""Per-key asyncio locks that do not accumulate: one per network, pool or VNI being changed.

A map holding a lock for every key ever seen grows with every network a long-running daemon
has had (network IDs are never reused). Here the map holds its locks weakly: a lock lives while
a coroutine holds it or waits for it (each keeps a reference through `async with`), and when
the last lets go nobody can be holding it, so it can go, and the next caller gets a fresh one.

In store/ because every room uses it (ipam/, drivers/, plugin/daemon/) and store/ is the one
all of them may import; it imports nothing.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def __len__(self) -> int:
        """How many locks are alive: held, or waited for, or referenced by a caller."""
        return len(self._locks)
