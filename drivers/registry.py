"""Every backend, registered once: what the daemon builds and what tooling asks of a mode.

A backend is one entry of `BACKENDS` (flannel registers its backends the same way, by name,
in one table); nothing else lists the modes. From the table come the daemon's backends
(`build`), the prefixes of every link pynet makes (`LINK_PREFIXES`, for the orphan sweep, leak
finding and macvlan's parent check) and the MTU each mode's frames must fit (`mtu_limit`,
for the doctor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pynet.drivers import bridge, macvlan, vxlan
from pynet.drivers.base import Backend, MtuLimit
from pynet.drivers.config import BridgeConfig, Config, MacvlanConfig, VxlanConfig
from pynet.drivers.firewall import Firewall
from pynet.drivers.netlink import HostView, Netlink
from pynet.drivers.peers import Observer
from pynet.drivers.ports import HostPorts
from pynet.store.base import Store

C = TypeVar("C", BridgeConfig, MacvlanConfig, VxlanConfig)


@dataclass(frozen=True)
class Deps:
    """What backends are built from: the shared kernel helpers and the store."""

    netlink: Netlink
    firewall: Firewall
    ports: HostPorts  # the sockets holding published host ports; the daemon's own
    store: Store
    prefix: str  # the store's key prefix
    host: str
    lease_ttl: int = 10
    observer: Observer | None = None  # VXLAN programming metrics
    underlay: str = ""  # the daemon's default VXLAN underlay
    store_address: str = ""  # etcd's first endpoint host: the default underlay routes to it


@dataclass(frozen=True)
class Entry(Generic[C]):
    mode: str
    config: type[C]
    link_prefixes: tuple[str, ...]
    build: Callable[[Deps], Backend]
    mtu_limit: Callable[[C, HostView], MtuLimit | None]


def _vxlan(d: Deps) -> Backend:
    return vxlan.VxlanBackend(
        d.netlink, d.firewall, d.ports, d.store, d.prefix, d.host, d.lease_ttl, d.observer, d.underlay, d.store_address
    )


BACKENDS: tuple[Entry[Any], ...] = (
    Entry(
        bridge.BridgeBackend.mode,
        BridgeConfig,
        bridge.BridgeBackend.link_prefixes,
        lambda d: bridge.BridgeBackend(d.netlink, d.firewall, d.ports),
        bridge.mtu_limit,
    ),
    Entry(
        macvlan.MacvlanBackend.mode,
        MacvlanConfig,
        macvlan.MacvlanBackend.link_prefixes,
        lambda d: macvlan.MacvlanBackend(d.netlink, LINK_PREFIXES),
        macvlan.mtu_limit,
    ),
    Entry(vxlan.VxlanBackend.mode, VxlanConfig, vxlan.VxlanBackend.link_prefixes, _vxlan, vxlan.mtu_limit),
)
# Every mode's, whichever modes a daemon runs: a link is judged without knowing its mode.
LINK_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(p for e in BACKENDS for p in e.link_prefixes))
_BY_CONFIG: dict[type, Entry[Any]] = {e.config: e for e in BACKENDS}


def build(deps: Deps) -> dict[str, Backend]:
    return {e.mode: e.build(deps) for e in BACKENDS}


def mtu_limit(config: Config, host: HostView) -> MtuLimit | None:
    """The link a network's frames leave through, and what its mode adds; None when that
    link is not on this host."""
    entry: Entry[Any] = _BY_CONFIG[type(config)]
    return entry.mtu_limit(config, host)
