"""Whether the store pynet starts with has seen this host's kernel before (issue 10, item 3).

A pynet-named link no record accounts for is a crash leftover only if the records are kept
by the store that made the link. After a changed `--state-dir`, `--store-prefix` or
`--host-id`, a switch between the embedded store and etcd, or a lost state directory, pynet
starts on a store that knows none of the links running containers use: sweeping "orphans"
then would cut those containers off. So the store keeps a token under this host
(`<prefix>hosts/<host>/marker`) and the state directory a copy (`store-marker`); orphans are
removed only when both are there and agree. The pair is written only at a start that finds no
orphan, so a kernel that holds links of some other store is never swept.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from pynet.store.base import Store
from pynet.store.private import write_private

FILE = "store-marker"


class _Token(msgspec.Struct):
    token: str


class Marker:
    def __init__(self, store: Store, prefix: str, host: str, state_dir: str) -> None:
        self.store = store
        self.key = f"{prefix}hosts/{host}/marker"
        self.path = Path(state_dir) / FILE

    async def _stored(self) -> str:
        kv = await self.store.get(self.key)
        return msgspec.json.decode(kv.value, type=_Token).token if kv else ""

    async def seen(self) -> bool:
        try:
            kept = self.path.read_text().strip()
        except FileNotFoundError:
            return False
        return bool(kept) and kept == await self._stored()

    async def mark(self) -> None:
        """Binds this store and this state directory, keeping the store's token if it has one
        (another state directory of the same host may hold it too: etcd outlives a reinstall)."""
        token = await self._stored()
        if not token:
            token = uuid.uuid4().hex
            await self.store.put(self.key, msgspec.json.encode(_Token(token)))
        write_private(self.path, token + "\n")
