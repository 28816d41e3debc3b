"""Host ports pynet publishes, reserved the way Docker reserves them: by binding them.

Docker's own bridge driver binds every host port it publishes and holds the socket while the
mapping lives (28.x: `libnetwork/drivers/bridge/port_mapping_linux.go`, SO_REUSEADDR, bind,
then `listen` on TCP once the DNAT rules are in; 20.10: docker-proxy binds it). For a remote
driver dockerd does neither (docs/protocol.md §2.9), so without this a DNAT rule silently took
a port from a host server or from docker-proxy. With it, a port already in use fails the bind,
and `docker run -p` fails with an error naming the port; the other way round, a host process or
Docker's own bridge cannot take a port a pynet container publishes.

The sockets live in the daemon (the managed plugin runs in the host's network namespace) and die
with it: `retake` binds them again at start, for the containers that kept running.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from pynet.drivers.base import PortMap
from pynet.store.errors import Conflict, InvalidRequest

log = logging.getLogger("pynet.ports")

# Where `-P` and `-p 80` (no host port) take one, as Docker does (its portallocator's default).
EPHEMERAL_PORTS = range(49153, 65536)
_SOCKET_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "sctp": socket.SOCK_STREAM}
_PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
# socket() failing with these means nothing on this host can hold such a port either (this
# kernel has no SCTP, measured: EPROTONOSUPPORT; a host without IPv6: EAFNOSUPPORT).
_UNSUPPORTED = (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ESOCKTNOSUPPORT)


@dataclass(frozen=True)
class PortRequest:
    """One `-p [host_ip:]host_port[-host_port_end]:container_port/proto` as Docker sends it."""

    proto: str  # "tcp" | "udp" | "sctp"
    host_ip: str  # "" = every address, both families
    host_port: int  # 0 = any free one
    host_port_end: int  # the end of a range; host_port (or 0) for one port
    container_port: int

    def __post_init__(self) -> None:
        if self.proto not in _SOCKET_TYPES:
            raise InvalidRequest(f"pynet: published port protocol must be tcp, udp or sctp, got {self.proto!r}")
        for value, what in ((self.host_port, "host port"), (self.container_port, "container port")):
            if not 0 <= value <= 65535:
                raise InvalidRequest(f"pynet: published {what} must be in 0..65535, got {value}")
        if self.host_port_end and not self.host_port <= self.host_port_end <= 65535:
            raise InvalidRequest(
                f"pynet: published host port range {self.host_port}-{self.host_port_end} must end in "
                f"{self.host_port}..65535"
            )
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise InvalidRequest(
                    f"pynet: published port host IP must be an IP address, got {self.host_ip!r}"
                ) from None

    @property
    def last(self) -> int:
        return max(self.host_port, self.host_port_end)

    def describe(self) -> str:
        ports = f"{self.host_port}-{self.last}" if self.last > self.host_port else str(self.host_port or "any")
        return f"{self.host_ip + ':' if self.host_ip else ''}{ports}/{self.proto}"

    def candidates(self, previous: int | None) -> Iterator[int]:
        """The host ports to try, in order: the one this endpoint had (a retried call keeps
        its port), then the range from its start, or the ephemeral range from a random place."""
        if self.host_port:
            ports: range | list[int] = range(self.host_port, self.last + 1)
        else:
            start = random.choice(EPHEMERAL_PORTS) - EPHEMERAL_PORTS.start
            ports = [*EPHEMERAL_PORTS[start:], *EPHEMERAL_PORTS[:start]]
        if previous is not None and previous in ports:
            yield previous
        yield from (p for p in ports if p != previous)


def _targets(req: PortRequest, address4: str, address6: str) -> list[tuple[str, str]]:
    """(host address to bind, container address) per family that can serve the request."""
    families = [ipaddress.ip_address(req.host_ip).version] if req.host_ip else [4, 6]
    out = []
    for family in families:
        addr = address4 if family == 4 else address6
        if addr:
            host = req.host_ip or ("0.0.0.0" if family == 4 else "::")
            out.append((host, str(ipaddress.ip_interface(addr).ip)))
    return out


class BindError(Exception):
    def __init__(self, address: str, port: int, error: OSError) -> None:
        shown = f"[{address}]" if ":" in address else address
        super().__init__(f"{shown}:{port}: {error.strerror or error}")
        self.in_use = error.errno == errno.EADDRINUSE


def bind(proto: str, address: str, port: int) -> socket.socket | None:
    """A socket bound to address:port; None when this host has no such protocol or family."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, _SOCKET_TYPES[proto] | socket.SOCK_CLOEXEC, _PROTO_NUMBERS[proto])
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise BindError(address, port, e) from e
    try:
        if proto != "udp":
            # As Docker: a port whose last connections are in TIME_WAIT can be taken at once;
            # `listen` keeps it exclusive. Not on UDP, where SO_REUSEADDR on both sockets lets
            # two of them share a port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # 0.0.0.0 is bound on its own
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise BindError(address, port, e) from e
    return sock


class HostPorts:
    """The sockets holding each endpoint's published host ports."""

    def __init__(self) -> None:
        self._held: dict[str, list[socket.socket]] = {}

    def claim(
        self,
        owner: str,
        requests: list[PortRequest],
        address4: str,
        address6: str,
        taken: set[tuple[str, int]],
        previous: list[PortMap],
    ) -> list[PortMap]:
        """Bind a host port for every request (the first free one of a range) and return what
        is published; all or nothing: on failure nothing of this call stays bound, and the
        error names the port. `taken` are ports other endpoints publish (held or not)."""
        self.release(owner)
        held: list[socket.socket] = []
        out: list[PortMap] = []
        try:
            for req in requests:
                targets = _targets(req, address4, address6)
                if not targets:
                    continue
                before = next(
                    (p.host_port for p in previous if (p.proto, p.container_port) == (req.proto, req.container_port)),
                    None,
                )
                port, sockets = self._first_free(req, targets, taken, before)
                held += sockets
                taken.add((req.proto, port))
                shown = req.host_ip if req.host_ip not in ("0.0.0.0", "::") else ""
                out += [PortMap(req.proto, shown, port, container, req.container_port) for _, container in targets]
        except BaseException:
            for sock in held:
                sock.close()
            raise
        self._held[owner] = held
        return out

    def _first_free(
        self, req: PortRequest, targets: list[tuple[str, str]], taken: set[tuple[str, int]], before: int | None
    ) -> tuple[int, list[socket.socket]]:
        published: list[int] = []  # by other pynet containers
        in_use: list[BindError] = []  # by anything else: host processes, docker-proxy
        for port in req.candidates(before):
            if (req.proto, port) in taken:
                published.append(port)
                continue
            try:
                return port, self._bind_all(req.proto, port, [host for host, _ in targets])
            except BindError as e:
                if not e.in_use:
                    raise InvalidRequest(f"pynet: cannot publish host port {req.describe()}: {e}") from None
                in_use.append(e)
        if req.host_port == req.last:
            if published:
                raise Conflict(f"pynet: host port {req.describe()} is already published by another container")
            raise Conflict(f"pynet: host port {req.describe()} is already in use ({in_use[0]})")
        why = [f"{len(in_use)} in use ({in_use[0]})"] if in_use else []
        why += [f"{len(published)} published by other containers"] if published else []
        raise Conflict(f"pynet: no free host port in {req.describe()}: {', '.join(why)}")

    @staticmethod
    def _bind_all(proto: str, port: int, addresses: list[str]) -> list[socket.socket]:
        held: list[socket.socket] = []
        try:
            for address in addresses:
                sock = bind(proto, address, port)
                if sock is not None:
                    held.append(sock)
        except BindError:
            for sock in held:
                sock.close()
            raise
        return held

    def listen(self, owner: str) -> None:
        """Once the DNAT rules are in (before, a connection could land on the socket and wait
        there forever): a bound TCP port is only exclusive once something listens on it."""
        for sock in self._held.get(owner, []):
            if sock.type == socket.SOCK_STREAM and sock.proto == socket.IPPROTO_TCP:
                sock.listen(0)

    def retake(self, owner: str, ports: list[PortMap]) -> list[str]:
        """At start, for endpoints that kept their ports while pynet was down; returns the ports
        that are now someone else's (the DNAT rules still send their traffic to the container)."""
        self.release(owner)
        held: list[socket.socket] = []
        lost: list[str] = []
        for proto, address, port in dict.fromkeys(_bound_addresses(ports)):
            try:
                sock = bind(proto, address, port)
            except BindError as e:
                lost.append(f"{port}/{proto} ({e})")
                continue
            if sock is not None:
                held.append(sock)
        self._held[owner] = held
        self.listen(owner)
        return lost

    def release(self, owner: str) -> None:
        for sock in self._held.pop(owner, []):
            sock.close()


def _bound_addresses(ports: list[PortMap]) -> Iterator[tuple[str, str, int]]:
    for p in ports:
        family = ipaddress.ip_address(p.container_ip).version
        yield p.proto, p.host_ip or ("0.0.0.0" if family == 4 else "::"), p.host_port
