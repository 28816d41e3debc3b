"""Everything a request handler needs, built once at start and kept under one app key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from pynet.drivers.base import Backend, Failures
from pynet.drivers.firewall import Firewall
from pynet.drivers.netlink import Netlink
from pynet.drivers.ports import HostPorts
from pynet.ipam import Ipam
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.state import State
from pynet.plugin.daemon.supervisor import Supervisor
from pynet.store.base import Store
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import InvalidRequest, PynetError
from pynet.store.locks import KeyedLocks


def open_store(settings: Settings) -> Store:
    if not settings.etcd_endpoints:
        return EmbeddedStore(settings.store_path)
    from pynet.store.etcd import EtcdStore  # grpc is slow to import; only etcd users pay for it

    return EtcdStore(
        list(settings.etcd_endpoint_list),
        timeout=settings.store_timeout,
        ca=settings.etcd_ca,
        cert=settings.etcd_cert,
        key=settings.etcd_key,
        user=settings.etcd_user,
        password=settings.etcd_secret,
    )


@dataclass
class Daemon:
    settings: Settings
    host: str
    store: Store
    state: State
    ipam: Ipam
    netlink: Netlink
    firewall: Firewall
    ports: HostPorts  # the sockets holding published host ports, shared with the backends
    backends: dict[str, Backend]
    # Set once the store is open and the kernel reconciled; only Activate and GetCapabilities
    # answer before that, so Docker can register pynet while it starts.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Weak: bounded by the networks being changed right now, not by every network ever seen.
    _locks: KeyedLocks = field(default_factory=KeyedLocks)
    # Host ports are one namespace across every network of this host.
    ports_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Background tasks (issue 9's agent and resolver): their states are `pynet status`'s.
    supervisor: Supervisor = field(default_factory=Supervisor)
    # Networks reconcile could not restore (network ID -> why), retried until they are; their
    # requests fail naming them while every other network serves.
    failing: Failures = field(default_factory=dict)
    # Orphan links start-up kept because the store had not seen this host (plugin/daemon/marker.py).
    kept_links: list[str] = field(default_factory=list)
    # Unix time this daemon was built: what the store holds from before is an earlier process's.
    started: float = field(default_factory=time.time)

    def lock(self, network_id: str) -> asyncio.Lock:
        """Serialises changes to one network; different networks proceed in parallel."""
        return self._locks(network_id)

    def check_restored(self, network_id: str) -> None:
        cause = self.failing.get(network_id)
        if cause is not None:
            why = cause.removeprefix("pynet: ")
            raise PynetError(f"pynet: network {network_id[:12]} is down since pynet started: {why} (retrying)")

    def backend(self, mode: str) -> Backend:
        try:
            return self.backends[mode]
        except KeyError:
            raise InvalidRequest(
                f"pynet: option mode must be one of {', '.join(sorted(self.backends))}, got {mode!r}"
            ) from None


DAEMON = web.AppKey("daemon", Daemon)
