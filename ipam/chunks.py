"""The allocation index of a pool: which addresses are taken, as bitmaps of CHUNK addresses.

Chunk `n` of a pool covers the addresses `network + n * CHUNK` to `network + (n + 1) * CHUNK - 1`;
bit `i` of it is set while address `network + n * CHUNK + i` has its `addrs/<ip>` record. A
chunk with no bit set has no record at all, so an IPv6 /64 costs nothing until it is used.

The index is how RequestAddress finds a free address reading O(1) keys instead of every
address of the pool; the `addrs/<ip>` records stay the truth about who holds what (ipam/pools.py
guards every allocation by its record being absent). 256 addresses a chunk: a /16 has 256
chunks, and a chunk's record is 64 hex digits, so rewriting one with each allocation is cheap,
while concurrent allocators in different parts of a pool do not contend for one record.

Pure arithmetic, no store access.
"""

from __future__ import annotations

import logging

from pynet.ipam.layout import decode, encode
from pynet.ipam.netmath import IPNetwork, reserved

log = logging.getLogger("pynet.ipam")

CHUNK = 256
_FULL = (1 << CHUNK) - 1


def chunk_of(subnet: IPNetwork, value: int) -> int:
    return (value - int(subnet.network_address)) // CHUNK


def chunk_base(subnet: IPNetwork, n: int) -> int:
    """The integer value of chunk `n`'s first address."""
    return int(subnet.network_address) + n * CHUNK


def encode_bits(bits: int) -> bytes:
    return encode({"bits": f"{bits:0{CHUNK // 4}x}"})


def decode_bits(raw: bytes) -> int:
    """A malformed chunk reads as empty: allocation then meets the taken records' guards and
    repairs the bits, rather than failing requests."""
    text = decode(raw, "chunk").get("bits", "0")
    try:
        return int(str(text), 16) & _FULL
    except ValueError:
        log.warning("ignoring malformed chunk bits %r", text)
        return 0


def with_bit(bits: int, offset: int, taken: bool) -> int:
    return bits | (1 << offset) if taken else bits & ~(1 << offset)


def blocked_bits(subnet: IPNetwork, n: int, bits: int) -> int:
    """`bits` plus the addresses of the chunk that no host may get (network, broadcast)."""
    base = chunk_base(subnet, n)
    for value in reserved(subnet):
        if base <= value < base + CHUNK:
            bits |= 1 << (value - base)
    return bits


def first_clear(bits: int, lo: int, hi: int) -> int | None:
    """The lowest offset in [lo, hi] whose bit is clear, or None."""
    window = ((1 << (hi - lo + 1)) - 1) << lo
    free = ~bits & window
    return (free & -free).bit_length() - 1 if free else None
