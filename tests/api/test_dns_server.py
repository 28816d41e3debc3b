"""The resolver's UDP and TCP servers on loopback, fed by a real embedded store, forwarding to a
stand-in upstream started here (never the machine's own resolvers).

Containers are played by loopback source addresses: 127.0.0.2 is `web` and 127.0.0.3 `api`, both
on the network `front`; 127.0.0.9 is a container pynet does not know.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from pynet.plugin.dns.records import NameTable
from pynet.plugin.dns.server import TTL, DnsServer, Resolver
from pynet.plugin.dns.watcher import Watcher
from pynet.store.embedded import EmbeddedStore

PREFIX = "/pynet/"
HOST = "127.0.0.1"
WEB, API, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.9"
OUTSIDE = "outside.example."
OUTSIDE_IP = "192.0.2.10"


def free_port() -> int:
    """A port free for both UDP and TCP on HOST."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def record(names: list[str], ipv4: str) -> bytes:
    return json.dumps({"names": names, "ipv4": ipv4}).encode()


@dataclass
class Upstream:
    """A tiny resolver: OUTSIDE has an A record, every other name is NXDOMAIN; `silent` drops
    every query instead."""

    port: int
    silent: bool = False
    seen: list[str] = field(default_factory=list)

    def reply(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        self.seen.append(query.question[0].name.to_text())
        if self.silent:
            return None
        response = dns.message.make_response(query)
        if query.question[0].name.to_text() == OUTSIDE:
            response.answer.append(dns.rrset.from_text(OUTSIDE, 300, "IN", "A", OUTSIDE_IP))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        reply = self.upstream.reply(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def start_upstream(silent: bool = False) -> tuple[Upstream, Callable[[], Awaitable[None]]]:
    upstream = Upstream(free_port(), silent)

    async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        reply = upstream.reply(await reader.readexactly(size))
        if reply is not None:
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UpstreamUdp(upstream), local_addr=(HOST, upstream.port))
    server = await asyncio.start_server(serve_tcp, HOST, upstream.port)

    async def stop() -> None:
        transport.close()
        server.close()
        await server.wait_closed()

    return upstream, stop


@dataclass
class Lab:
    store: EmbeddedStore
    upstream: Upstream
    port: int

    async def udp(self, name: str, source: str, rdtype: str = "A") -> dns.message.Message:
        return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), HOST, 2, self.port, source)

    async def tcp(self, name: str, source: str, rdtype: str = "A") -> dns.message.Message:
        return await dns.asyncquery.tcp(dns.message.make_query(name, rdtype), HOST, 2, self.port, source)


async def start_server(table: NameTable, upstreams: list[tuple[str, int]], **kw: float) -> DnsServer:
    server = DnsServer(Resolver(table, upstreams, **kw), HOST, free_port())  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    store = EmbeddedStore(tmp_path / "store.sqlite")
    await store.put(PREFIX + "dns/front/h1/c-web", record(["web", "www"], WEB))
    await store.put(PREFIX + "dns/front/h2/c-api", record(["api"], API))
    table = NameTable(PREFIX + "dns/")
    watcher = Watcher(store, table)
    watch = asyncio.create_task(watcher.run_forever())
    await asyncio.wait_for(watcher.synced.wait(), 5)
    upstream, stop_upstream = await start_upstream()
    server = await start_server(table, [(HOST, upstream.port)])
    yield Lab(store, upstream, server.port)
    await server.close()
    await stop_upstream()
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    await store.close()


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_table_answers(lab: Lab, transport: str) -> None:
    ask = lab.udp if transport == "udp" else lab.tcp
    reply = await ask("api.", WEB)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR
    assert addresses(reply) == [API]
    assert reply.answer[0].ttl == TTL
    assert addresses(await ask("WWW.front.", API)) == [WEB]
    assert lab.upstream.seen == []


async def test_a_known_name_without_that_family_is_nodata_not_forwarded(lab: Lab) -> None:
    reply = await lab.udp("api.", WEB, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert reply.answer == []
    assert lab.upstream.seen == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_other_names_are_relayed_from_upstream(lab: Lab, transport: str) -> None:
    ask = lab.udp if transport == "udp" else lab.tcp
    reply = await ask(OUTSIDE, WEB)
    assert addresses(reply) == [OUTSIDE_IP]
    assert not reply.flags & dns.flags.AA  # the upstream's answer, as it sent it
    # A name the table has, asked by a container pynet does not know: upstream's, even NXDOMAIN.
    assert (await ask("api.", STRANGER)).rcode() == dns.rcode.NXDOMAIN
    # Another record type of a table name is the upstream's too.
    assert (await ask("api.", WEB, "MX")).rcode() == dns.rcode.NXDOMAIN
    assert lab.upstream.seen == [OUTSIDE, "api.", "api."]


async def test_upstreams_are_tried_in_turn(tmp_path: Path) -> None:
    refused = free_port()  # nothing listens: ICMP port unreachable, or a TCP reset
    silent, stop_silent = await start_upstream(silent=True)
    good, stop_good = await start_upstream()
    ups = [(HOST, refused), (HOST, silent.port), (HOST, good.port)]
    server = await start_server(NameTable(PREFIX + "dns/"), ups, attempt_timeout=0.3, deadline=5)
    try:
        for transport in (dns.asyncquery.udp, dns.asyncquery.tcp):
            reply = await transport(dns.message.make_query(OUTSIDE, "A"), HOST, 5, server.port)
            assert addresses(reply) == [OUTSIDE_IP]
        assert silent.seen == [OUTSIDE, OUTSIDE] and good.seen == [OUTSIDE, OUTSIDE]
    finally:
        await server.close()
        await stop_silent()
        await stop_good()


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
async def test_every_upstream_failing_is_servfail(silent: bool) -> None:
    stop: Callable[[], Awaitable[None]] | None = None
    if silent:
        upstream, stop = await start_upstream(silent=True)
        port = upstream.port
    else:
        port = free_port()
    server = await start_server(NameTable(PREFIX + "dns/"), [(HOST, port)], attempt_timeout=0.3, deadline=0.5)
    try:
        for transport in (dns.asyncquery.udp, dns.asyncquery.tcp):
            query = dns.message.make_query(OUTSIDE, "A")
            reply = await transport(query, HOST, 5, server.port)
            assert reply.rcode() == dns.rcode.SERVFAIL
            assert reply.id == query.id and reply.question == query.question
    finally:
        await server.close()
        if stop is not None:
            await stop()


async def test_garbage_does_not_kill_the_server(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\xff" * 40, bytes(range(256))):
            s.sendto(junk, (HOST, lab.port))
        # A response is not a query: dropped, never answered (no reflection loops).
        s.sendto(dns.message.make_response(dns.message.make_query("api.", "A")).to_wire(), (HOST, lab.port))
    reader, writer = await asyncio.open_connection(HOST, lab.port)
    writer.write(b"\x00\x05hello")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    writer.close()
    assert addresses(await lab.udp("api.", WEB)) == [API]
    assert addresses(await lab.tcp("api.", WEB)) == [API]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert lab.upstream.seen == []


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met after 100 tries")


async def test_store_changes_change_answers(lab: Lab) -> None:
    db = PREFIX + "dns/front/h3/c-db"

    async def resolves() -> bool:
        return addresses(await lab.udp("db.front.", API)) == ["127.0.0.4"]

    async def forwarded() -> bool:
        return (await lab.udp("db.front.", API)).rcode() == dns.rcode.NXDOMAIN

    assert await forwarded()
    await lab.store.put(db, record(["db"], "127.0.0.4"))
    await poll(resolves)
    # The new container resolves the others too: its address now names it.
    assert addresses(await lab.tcp("web.", "127.0.0.4")) == [WEB]
    await lab.store.delete(db)
    await poll(forwarded)
    assert (await lab.udp("web.", "127.0.0.4")).rcode() == dns.rcode.NXDOMAIN
