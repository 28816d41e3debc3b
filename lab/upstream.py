"""The lab's stand-in for the internet's resolvers, run in the outside namespace: it answers
`outside.pynet.test` (A: the outside's address) and NXDOMAIN for every other name, over UDP
and TCP, so lab hosts never ask the machine's real resolvers and a miss fails at once.

    python -m lab.upstream ADDRESS
"""

from __future__ import annotations

import asyncio
import sys

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

NAME = "outside.pynet.test."
PORT = 53


def answer(wire: bytes, address: str) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # anything on the wire: not a query, no answer
        return None
    response = dns.message.make_response(query)
    question = query.question[0] if query.question else None
    if question is None or question.name.to_text().lower() != NAME:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 5, dns.rdataclass.IN, dns.rdatatype.A, address))
    return response.to_wire()


class Udp(asyncio.DatagramProtocol):
    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.address)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def main(address: str) -> None:
    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = answer(await reader.readexactly(size), address)
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Udp(address), local_addr=(address, PORT))
    server = await asyncio.start_server(tcp, address, PORT)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
