"""The resolver Docker's embedded DNS forwards to (docs/design.md, "DNS resolver").

A query for a name the asking container may see (records.py) is answered from the table,
authoritatively, with a short TTL: the records follow containers, and Docker's embedded DNS
caches nothing, so the TTL only bounds what a client's own cache keeps. Every other query is
relayed to the upstream resolvers byte for byte (only the message id is rewritten), one after
the other, within a deadline. When none answers, the reply is SERVFAIL, after which Docker
tries its next server; never NXDOMAIN for a name pynet merely does not know, since Docker stops
at NXDOMAIN (docs/protocol.md §6.1).

dnspython parses queries and builds the table's answers; relayed answers are never re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pynet.plugin.dns.records import Family, NameTable

log = logging.getLogger("pynet.dns")

Address = tuple[str, int]

TTL = 5
FAMILIES: dict[int, Family] = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}
UDP_DEFAULT_SIZE = 512  # RFC 1035, for a query without EDNS
TCP_MAX_SIZE = 65535  # the 2-byte length prefix
TCP_IDLE = 10.0  # seconds a TCP client may keep a connection open without a query (RFC 7766)


class Resolver:
    def __init__(
        self,
        table: NameTable,
        upstreams: Sequence[Address],
        attempt_timeout: float = 1.5,
        deadline: float = 3.0,
        max_forwards: int = 256,
    ) -> None:
        """`deadline` bounds a whole forward, every upstream included: it stays under the 4 s
        Docker's embedded DNS waits for one server (moby resolver.go, extIOTimeout), so that
        Docker still gets pynet's SERVFAIL in time and tries its next server."""
        self.table = table
        self.upstreams = tuple(upstreams)
        self.attempt_timeout = attempt_timeout
        self.deadline = deadline
        self._slots = asyncio.Semaphore(max_forwards)

    @property
    def busy(self) -> bool:
        """Every forward slot is taken."""
        return self._slots.locked()

    def parse(self, wire: bytes, source: str) -> dns.message.Message | None:
        """The query, or None for anything that is not one (dropped, never answered)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception as e:  # any bytes from the network: dnspython raises more than DNSException
            log.debug("malformed dns packet dropped", extra={"source": source, "error": repr(e)})
            return None
        if query.flags & dns.flags.QR:
            log.debug("dns response dropped: not a query", extra={"source": source})
            return None
        return query

    def answer_locally(self, query: dns.message.Message, source: str, max_size: int) -> bytes | None:
        """The table's answer, or None when the query is not the table's to answer."""
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            return None
        question = query.question[0]
        family = FAMILIES.get(question.rdtype)
        if question.rdclass != dns.rdataclass.IN or family is None:
            return None
        addresses = self.table.lookup(source, question.name.to_text(), family)
        if addresses is None:
            return None
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        if addresses:
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, question.rdtype, addresses)
            )
        return response.to_wire(max_size=max_size, prefer_truncation=True)

    def failure(self, query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()

    async def forward(self, wire: bytes, query: dns.message.Message, tcp: bool) -> bytes:
        """The first usable upstream answer to `wire`, with the client's id; SERVFAIL if none."""
        async with self._slots:
            # A fresh id upstream: a reply must match this one exchange, not any client's id.
            qid = secrets.randbits(16)
            out = qid.to_bytes(2, "big") + wire[2:]
            try:
                async with asyncio.timeout(self.deadline):
                    for upstream in self.upstreams:
                        reply = await self._ask(upstream, out, qid, query, tcp)
                        if reply is not None:
                            return wire[:2] + reply[2:]
            except TimeoutError:
                pass
            log.debug("no upstream answered", extra={"upstreams": len(self.upstreams)})
            return self.failure(query)

    async def resolve(self, wire: bytes, source: str, max_size: int, tcp: bool) -> bytes | None:
        query = self.parse(wire, source)
        if query is None:
            return None
        return self.answer_locally(query, source, max_size) or await self.forward(wire, query, tcp)

    async def _ask(
        self, upstream: Address, out: bytes, qid: int, query: dns.message.Message, tcp: bool
    ) -> bytes | None:
        """One upstream's reply, None if it failed, timed out, or said SERVFAIL or REFUSED
        (Docker too tries the next server on those)."""
        try:
            async with asyncio.timeout(self.attempt_timeout):
                reply = await (_exchange_tcp if tcp else _exchange_udp)(upstream, out, qid)
            header = dns.message.from_wire(reply, question_only=True)
        except (TimeoutError, OSError, EOFError, dns.exception.DNSException) as e:
            log.debug("upstream failed", extra={"upstream": upstream[0], "error": repr(e)})
            return None
        if header.id != qid or not header.flags & dns.flags.QR or header.question != query.question:
            log.debug("upstream reply does not match the query", extra={"upstream": upstream[0]})
            return None
        if header.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
            return None
        return reply


class _Reply(asyncio.DatagramProtocol):
    """One connected UDP exchange: the first datagram with our id, or the ICMP error (a port
    with no server is refused at once, so the next upstream is tried without waiting)."""

    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        if not self.result.done() and data[:2] == self.qid.to_bytes(2, "big"):
            self.result.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(exc)


async def _exchange_udp(upstream: Address, out: bytes, qid: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Reply(qid), remote_addr=upstream)
    try:
        transport.sendto(out)
        return await protocol.result
    finally:
        transport.close()


async def _exchange_tcp(upstream: Address, out: bytes, qid: int) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(len(out).to_bytes(2, "big") + out)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)
    finally:
        writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self._forwards: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11's is no DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        source = str(addr[0])
        query = self.resolver.parse(data, source)
        if query is None or self.transport is None:
            return
        size = max(query.payload, UDP_DEFAULT_SIZE) if query.edns >= 0 else UDP_DEFAULT_SIZE
        local = self.resolver.answer_locally(query, source, size)
        if local is not None:
            self.transport.sendto(local, addr)
        elif self.resolver.busy:
            # No queue to grow without bound: SERVFAIL now sends Docker to its next server.
            self.transport.sendto(self.resolver.failure(query), addr)
        else:
            task = asyncio.create_task(self._forward(data, query, addr))
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)

    async def _forward(self, data: bytes, query: dns.message.Message, addr: tuple[str | bytes, int]) -> None:
        reply = await self.resolver.forward(data, query, tcp=False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def cancel_forwards(self) -> None:
        for task in self._forwards:
            task.cancel()


class DnsServer:
    """UDP and TCP on one address and port."""

    def __init__(self, resolver: Resolver, address: str, port: int = 53) -> None:
        self.resolver = resolver
        self.address = address
        self.port = port
        self._udp: tuple[asyncio.DatagramTransport, _Udp] | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind both; OSError (address missing, port taken) leaves nothing bound."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Udp(self.resolver), local_addr=(self.address, self.port)
        )
        self._udp = (transport, protocol)
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.address, self.port)
        except OSError:
            await self.close()
            raise
        log.info("dns resolver listening", extra={"address": self.address, "port": self.port})

    async def close(self) -> None:
        if self._udp is not None:
            transport, protocol = self._udp
            transport.close()
            protocol.cancel_forwards()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    async def serve_forever(self) -> None:
        """Start, then serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                reply = await self.resolver.resolve(wire, source, TCP_MAX_SIZE, tcp=True)
                if reply is None:
                    return  # not a query: close the connection
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return  # the client left, or went idle
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
