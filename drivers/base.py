"""The records every backend works on, and the one interface all backends implement.

Records are msgspec Structs so the plugin can persist them in the store as they are, and a
restarted pynet rebuilds the kernel from them (Docker never replays CreateNetwork).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import msgspec

from pynet.drivers.config import Config
from pynet.drivers.netlink import HostView, Link
from pynet.store.errors import PynetError, StoreUnavailable

C = TypeVar("C")
# Networks reconcile could not restore: network ID -> why, as the error said it.
Failures = dict[str, str]
log = logging.getLogger("pynet.drivers")


class Undo:
    """The steps that undo what a block did so far; `push` the undo of each step once it is
    done. They run last pushed first, so later work (the kernel) goes before earlier (the store)."""

    def __init__(self, steps: tuple[Callable[[], Awaitable[object]], ...]) -> None:
        self._steps = list(steps)

    def push(self, step: Callable[[], Awaitable[object]]) -> None:
        self._steps.insert(0, step)

    async def run(self) -> None:
        for step in self._steps:
            try:
                await step()
            except Exception:
                # Best effort: the next step still runs, and the block's own error is what the
                # caller sees; what stays behind is gc's to find.
                log.exception("undo of a failed request failed")


@asynccontextmanager
async def undo_on_failure(*undo: Callable[[], Awaitable[object]]) -> AsyncIterator[Undo]:
    """Runs the undo steps (these, in order, after any pushed later) when the block fails,
    cancellation included, then lets the error go on: a request that fails leaves nothing
    half-created. A step is called at failure time, so a lambda sees the block's latest values."""
    steps = Undo(undo)
    try:
        yield steps
    except BaseException:
        await steps.run()
        raise


async def restore_each(nets: Iterable[Network], restore: Callable[[Network], Awaitable[object]]) -> Failures:
    """Restores every network it can: one that fails (its VTEP address gone after a DHCP
    renumbering, a parent not plugged in yet) is returned with why, and the others still come
    up. The store away is no one network's fault: it stops the whole reconcile, retried whole."""
    failed: Failures = {}
    for net in nets:
        try:
            await restore(net)
        except StoreUnavailable:
            raise
        except Exception as e:
            failed[net.id] = str(e) or type(e).__name__
    return failed


def by_network(eps: Iterable[Endpoint]) -> dict[str, list[Endpoint]]:
    grouped: dict[str, list[Endpoint]] = {}
    for ep in eps:
        grouped.setdefault(ep.network_id, []).append(ep)
    return grouped


class Subnet(msgspec.Struct, frozen=True):
    """One IPAMData entry of CreateNetwork; addresses are CIDR strings, as Docker sends them."""

    pool: str
    gateway: str = ""
    aux: dict[str, str] = {}


class PortMap(msgspec.Struct, frozen=True):
    """One published port (`-p [host_ip:]host_port:port/proto`) resolved to a container address."""

    proto: str  # "tcp" | "udp" | "sctp"
    host_ip: str  # "" = every host address of the family
    host_port: int
    container_ip: str
    container_port: int

    def describe(self) -> str:
        """As `docker ps` shows a port: a dual-stack `-p 8080:80` is two, `0.0.0.0:8080->80/tcp`
        and `[::]:8080->80/tcp` (one DNAT rule per family)."""
        host = self.host_ip or ("::" if ":" in self.container_ip else "0.0.0.0")
        return f"{f'[{host}]' if ':' in host else host}:{self.host_port}->{self.container_port}/{self.proto}"


class Network(msgspec.Struct, frozen=True):
    id: str
    mode: str  # "bridge" | "macvlan" | "vxlan"
    options: dict[str, str]  # the user's `-o` options, as given
    config: Config  # the backend's parsed and resolved settings (drivers/config.py)
    ipv4: list[Subnet] = []
    ipv6: list[Subnet] = []
    internal: bool = False
    # Docker 28's --ipv4=false makes an IPv6-only network: no IPv4 subnet, and no IPv4 rules.
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    # Unix time of CreateNetwork (0: a record older than the field), so gc leaves a network that
    # Docker is still creating alone (plugin/ops/gc.py).
    created: float = 0.0


class Draft(Protocol):
    """What option parsing may look at: a network as CreateNetwork describes it, before its
    settings exist (a `Network` is one too)."""

    @property
    def id(self) -> str: ...

    @property
    def ipv4(self) -> list[Subnet]: ...

    @property
    def ipv6(self) -> list[Subnet]: ...

    @property
    def internal(self) -> bool: ...

    @property
    def enable_ipv4(self) -> bool: ...

    @property
    def enable_ipv6(self) -> bool: ...


def config_of(net: Network, kind: type[C]) -> C:
    """`net.config` as the backend handling `net` expects it; a record of another mode reaching
    it is a bug in the caller, named rather than met later as an AttributeError."""
    if not isinstance(net.config, kind):
        raise PynetError(f"pynet: network {net.id[:12]} has {net.mode} settings, not {kind.__name__}")
    return net.config


@dataclass(frozen=True)
class MtuLimit:
    """The link a network's frames leave through, and what its encapsulation adds."""

    lower: Link
    overhead: int = 0

    @property
    def limit(self) -> int:
        return self.lower.mtu - self.overhead


class Endpoint(msgspec.Struct):
    id: str
    network_id: str
    address: str = ""  # CIDR
    address6: str = ""  # CIDR
    mac: str = ""
    ifname: str = ""  # the host-side link (bridge port, or "" when the whole link moves)
    peer: str = ""  # the link handed to Docker in Join (SrcName)
    ports: list[PortMap] = []
    sandbox: str = ""
    joined: bool = False


class JoinInfo(msgspec.Struct):
    """What Join answers; gateways are bare IPs (no prefix), unlike CreateNetwork's."""

    src_name: str
    gateway: str = ""
    gateway6: str = ""
    disable_gateway: bool = False
    static_routes: list[dict[str, Any]] = []


class Backend(Protocol):
    """One network mode. Every method is idempotent: Docker retries after connection errors,
    and delete paths must tolerate objects that are already gone."""

    mode: ClassVar[str]
    # Name prefixes of the links this mode creates in the host namespace; a link with one of
    # them that no backend expects (expected_links) is an orphan, deleted at start.
    link_prefixes: ClassVar[tuple[str, ...]]
    # Whether `-p` means anything here (not on macvlan: containers answer on their own address).
    publishes_ports: ClassVar[bool]
    # Whether an --internal network of this mode uses its gateway address: a bridge holds it
    # (the resolver's route goes through it); macvlan's internal parent holds none, so Docker
    # 28+ need not reserve one (GwAllocCheck).
    internal_gateway: ClassVar[bool]

    def parse_options(self, options: Mapping[str, str], net: Draft) -> Config:
        """Validate the user's `-o` options for this mode into its settings, defaults filled in.

        Raises `InvalidRequest` naming the option and value. Called before anything is created.
        """
        ...

    async def create_network(self, net: Network) -> Config:
        """Make the network; returns its settings with what the kernel decided filled in
        (MTU, local VTEP, ownership), for the caller to store."""
        ...

    async def delete_network(self, net: Network) -> None: ...

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        """Create the link(s); fills `ep.ifname`, `ep.peer` and `ep.mac` (if Docker gave none)."""
        ...

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo: ...

    async def leave(self, net: Network, ep: Endpoint) -> None: ...

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None: ...

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        """Publish `ep.ports` (already resolved by the caller)."""
        ...

    async def revoke_external(self, net: Network, ep: Endpoint) -> None: ...

    async def reconcile(self, nets: list[Network], eps: list[Endpoint], view: HostView) -> Failures:
        """Make the kernel match these records (all of this mode on this host), judged against
        `view`, the one look at the host's links and addresses every mode shares at start. A
        network that cannot be restored is returned with why; the others are restored all the
        same."""
        ...

    async def restore(self, net: Network, eps: list[Endpoint]) -> None:
        """Make the kernel match one network's records (`eps` are its endpoints): the retry of
        a network reconcile returned. Raises what still stops it."""
        ...

    def expected_links(self, nets: list[Network], eps: list[Endpoint]) -> set[str]:
        """The host-namespace links these records (of this mode) account for."""
        ...

    async def close(self) -> None:
        """Stop background work at shutdown; the kernel state stays, containers keep working."""
        ...
