"""Everything a request handler needs, built once at start and kept under one app key."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from drivers.base import Backend
from drivers.firewall import Firewall
from drivers.netlink import Netlink
from ipam import Ipam
from plugin.config import Settings
from plugin.state import State
from store.base import Store
from store.errors import InvalidRequest


@dataclass
class Daemon:
    settings: Settings
    host: str
    store: Store
    state: State
    ipam: Ipam
    netlink: Netlink
    firewall: Firewall
    backends: dict[str, Backend]
    # Set once the store is open and the kernel reconciled; only Activate and GetCapabilities
    # answer before that, so Docker can register pynet while it starts.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # Host ports are one namespace across every network of this host.
    ports_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def lock(self, network_id: str) -> asyncio.Lock:
        """Serialises changes to one network; different networks proceed in parallel."""
        return self._locks[network_id]

    def backend(self, mode: str) -> Backend:
        try:
            return self.backends[mode]
        except KeyError:
            raise InvalidRequest(
                f"pynet: option mode must be one of {', '.join(sorted(self.backends))}, got {mode!r}"
            ) from None


DAEMON = web.AppKey("daemon", Daemon)
