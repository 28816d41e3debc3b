"""Where the IPAM keeps its state in the store, and how each value is encoded.

Key layout (``P`` is the store prefix, ``/pynet/`` by default; a subnet is written with its
``/`` replaced by ``_``, e.g. ``10.1.0.0_24``, ``fd70:706e::_64``)::

    P ipam/poolset                            {"subnets": ["10.1.0.0/24", ...]}
    P ipam/pools/<subnet>/meta                {"subnet", "host" (creator), "time", "index": 1}
    P ipam/pools/<subnet>/hosts/<host>        {"space", "sub_pool" ("" = none), "time"}
    P ipam/pools/<subnet>/addrs/<ip>          {"host", "owner", "time"[, "hosts"]}
    P ipam/pools/<subnet>/cursor/<range>      {"address"}: last address handed out in <range>
    P ipam/pools/<subnet>/chunks/<n>          {"bits"}: which of 256 addresses are taken (ipam/chunks.py)
    P ipam/pools/<subnet>/gateway             {"address"}: the pool's first gateway record

Why this shape:

- A pool is identified by its subnet alone, in both address spaces, so the same subnet asked
  for by several hosts sharing one store (etcd) is one pool; ``hosts/<host>`` is the per-host
  reference count, and the pool goes when the last one does.
- ``poolset`` lists every pool so overlap checks read one key instead of every allocation.
  Creating or removing a pool compares its ``mod_revision``, so two hosts can never create
  overlapping pools at once.
- Adding or dropping a host reference rewrites ``meta`` and compares its ``mod_revision``, so
  the last host removing the pool and another host joining it cannot both succeed.
  Allocations compare ``meta``'s ``create_revision`` instead: they must not race with a removal
  or land in a re-created pool, but need not serialise with reference changes.
- ``addrs/<ip>`` exists while the address is taken; every allocation is one transaction
  guarded by that key being absent. ``owner`` is ``gateway``, ``aux``, ``container`` or, once
  CreateEndpoint has bound it, the endpoint ID. A gateway is shared by every host of a shared
  pool, so its value lists them in ``hosts`` and it is freed when the list empties.
- One cursor per allocation range (the pool itself or a host's ``--ip-range``): hosts using
  different ranges of one pool keep their own serial order.
- ``chunks/<n>`` is the allocation index, so a request reads O(1) keys instead of every
  ``addrs/`` record: each change of an ``addrs/`` record's existence rewrites its chunk in the
  same transaction, guarded by the chunk's ``mod_revision``. ``gateway`` names the gateway a
  gateway request without an address joins, which finding meant reading every record.
  ``"index": 1`` in ``meta`` says the chunks are complete: pools written by pynet before the
  index have none, and the first request on such a pool builds them from its records.

Values are JSON from the standard library: ipam/ depends only on store/ and the stdlib.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pynet.ipam.netmath import IPAddress, IPNetwork, Span, parse_subnet, span, spans_overlap
from pynet.store.errors import InvalidRequest

log = logging.getLogger("pynet.ipam")

LOCAL_SPACE = "pynet-local"
GLOBAL_SPACE = "pynet-global"
SPACES = (LOCAL_SPACE, GLOBAL_SPACE)

GATEWAY = "gateway"
AUX = "aux"
CONTAINER = "container"
INDEXED = "index"  # in a pool's meta: its allocation index (chunks/) is complete


def subnet_token(net: IPNetwork) -> str:
    return str(net).replace("/", "_")


class Keys:
    """Every key the IPAM writes, in one place so the layout above stays true."""

    def __init__(self, prefix: str) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.root = f"{prefix}ipam/"
        self.poolset = f"{self.root}poolset"
        self.pools = f"{self.root}pools/"

    def pool(self, subnet: IPNetwork) -> str:
        """Ends with "/" so that a range read of 10.1.0.0_2 cannot match 10.1.0.0_24."""
        return f"{self.pools}{subnet_token(subnet)}/"

    def meta(self, subnet: IPNetwork) -> str:
        return f"{self.pool(subnet)}meta"

    def host(self, subnet: IPNetwork, host: str) -> str:
        return f"{self.pool(subnet)}hosts/{host}"

    def addrs(self, subnet: IPNetwork) -> str:
        return f"{self.pool(subnet)}addrs/"

    def addr(self, subnet: IPNetwork, ip: IPAddress) -> str:
        return f"{self.addrs(subnet)}{ip}"

    def cursor(self, subnet: IPNetwork, rng: IPNetwork) -> str:
        return f"{self.pool(subnet)}cursor/{subnet_token(rng)}"

    def chunks(self, subnet: IPNetwork) -> str:
        return f"{self.pool(subnet)}chunks/"

    def chunk(self, subnet: IPNetwork, n: int) -> str:
        return f"{self.chunks(subnet)}{n}"

    def gateway(self, subnet: IPNetwork) -> str:
        return f"{self.pool(subnet)}gateway"


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes, what: str) -> dict[str, Any]:
    """Corrupt or foreign values are logged and read as empty rather than failing requests."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("ignoring malformed %s value %r", what, raw[:200])
        return {}
    return value


@dataclass(frozen=True, slots=True)
class AddrRecord:
    host: str
    owner: str
    time: float
    hosts: tuple[str, ...] = field(default=())  # gateways only: every host using it

    def encode(self) -> bytes:
        value: dict[str, Any] = {"host": self.host, "owner": self.owner, "time": self.time}
        if self.owner == GATEWAY:
            value["hosts"] = list(self.hosts)
        return encode(value)

    @classmethod
    def decode(cls, raw: bytes) -> AddrRecord:
        v = decode(raw, "address")
        hosts = v.get("hosts") or ()
        return cls(
            host=str(v.get("host", "")),
            owner=str(v.get("owner", "unknown")),
            time=float(v.get("time", 0.0)),
            hosts=tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
        )


@dataclass(frozen=True, slots=True)
class Poolset:
    """Every pool's subnet. Each RequestPool and ReleasePool reads and writes the whole set, so
    what they ask of it works on the subnets' texts and integer spans, parsed once per subnet
    (`_pool`): at 250 pools, parsing, comparing and hashing `ipaddress` objects (their
    `__eq__` and `__hash__` are Python) was 0.8 ms of every RequestPool and ReleasePool."""

    nets: tuple[IPNetwork, ...] = ()
    spans: tuple[Span, ...] = ()  # nets' spans, in the same order
    texts: frozenset[str] = frozenset()  # nets as written (str(net))

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self.nets)

    def __contains__(self, net: IPNetwork) -> bool:
        return str(net) in self.texts

    def overlapping(self, subnet: IPNetwork) -> IPNetwork | None:
        """A pool other than `subnet` itself that overlaps it."""
        mine = span(subnet)
        for net, other in zip(self.nets, self.spans, strict=True):
            if other != mine and spans_overlap(mine, other):
                return net
        return None

    def encode_with(self, net: IPNetwork) -> bytes:
        return _encode_sorted(self.texts | {str(net)})

    def encode_without(self, net: IPNetwork) -> bytes:
        return _encode_sorted(self.texts - {str(net)})


def decode_poolset(raw: bytes | None) -> Poolset:
    if raw is None:
        return Poolset()
    pools: list[tuple[IPNetwork, Span, str]] = []
    for text in decode(raw, "poolset").get("subnets", []):
        try:
            pools.append(_pool(str(text)))
        except ValueError:
            log.warning("ignoring malformed subnet %r in the poolset", text)
    return Poolset(tuple(p[0] for p in pools), tuple(p[1] for p in pools), frozenset(p[2] for p in pools))


@functools.lru_cache(maxsize=16384)
def _pool(text: str) -> tuple[IPNetwork, Span, str]:
    """A subnet as written in the poolset: (the subnet, its span, its text as pynet writes it)."""
    net = ipaddress.ip_network(text)
    return net, span(net), str(net)


def _encode_sorted(texts: Iterable[str]) -> bytes:
    return encode({"subnets": sorted(texts, key=lambda t: _pool(t)[1])})


# PoolID: "<space>:<subnet>[:<sub-pool>]". IPv6 subnets contain ":", so split on the CIDRs'
# "/<length>" endings rather than on every colon.
_POOL_ID = re.compile(r"^(?P<space>[^:]+):(?P<subnet>[^/]+/\d+)(?::(?P<sub>[^/]+/\d+))?$")


@dataclass(frozen=True, slots=True)
class PoolId:
    """Docker stores the PoolID and hands it back on every call, so it carries all we need."""

    space: str
    subnet: IPNetwork
    sub_pool: IPNetwork | None = None

    def __str__(self) -> str:
        tail = f":{self.sub_pool}" if self.sub_pool is not None else ""
        return f"{self.space}:{self.subnet}{tail}"

    @property
    def range(self) -> IPNetwork:
        """Where dynamic addresses come from."""
        return self.sub_pool if self.sub_pool is not None else self.subnet

    @classmethod
    def parse(cls, text: str) -> PoolId:
        m = _POOL_ID.match(text)
        if m is None or m["space"] not in SPACES:
            raise InvalidRequest(
                f"pynet: invalid PoolID {text!r}: expected <space>:<subnet>[:<ip-range>]"
                f" with space {' or '.join(SPACES)}"
            )
        try:
            subnet = parse_subnet(m["subnet"], "PoolID subnet", ":" in m["subnet"])
            sub = None
            if m["sub"]:
                sub = parse_subnet(m["sub"], "PoolID ip-range", subnet.version == 6)
        except InvalidRequest:
            raise InvalidRequest(f"pynet: invalid PoolID {text!r}: malformed subnet") from None
        if sub is not None and not sub.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidRequest(f"pynet: invalid PoolID {text!r}: ip-range outside the subnet")
        return cls(m["space"], subnet, sub)
