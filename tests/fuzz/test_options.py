"""Option parsing (drivers/options.py and each mode's table) under generated `-o` options and
subnets: a config comes back, or an InvalidRequest whose message names what it refused. Never
another exception, which the API would answer with a 500."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from pynet.drivers import bridge, macvlan, vxlan
from pynet.drivers.base import Backend, Network, Subnet
from pynet.drivers.bridge import BridgeBackend
from pynet.drivers.config import BridgeConfig
from pynet.drivers.macvlan import MacvlanBackend
from pynet.drivers.netlink import Netlink
from pynet.drivers.options import ifname
from pynet.drivers.registry import BACKENDS as ENTRIES
from pynet.drivers.registry import LINK_PREFIXES
from pynet.drivers.vxlan import VxlanBackend
from pynet.store.errors import InvalidRequest
from tests.fuzz.strategies import NET, OPTION_NAMES, addresses, option_values, subnets

BACKENDS: list[Backend] = [
    BridgeBackend(Netlink(), None, None),  # type: ignore[arg-type]
    MacvlanBackend(Netlink(), LINK_PREFIXES),
    VxlanBackend(Netlink(), None, None, None, "/pynet/", "h1"),  # type: ignore[arg-type]
]
PARSERS = {
    mode: {n: o.parse for o in table for n in (o.name, *o.aliases)}
    for mode, table in (("bridge", bridge.OPTIONS), ("macvlan", macvlan.OPTIONS), ("vxlan", vxlan.OPTIONS))
}
# What a mode requires without being given: named in its refusal although absent.
REQUIRED = ("parent", "vni")


def valid_subnet(pool: str, gateway: str) -> Subnet | None:
    """The network/api layer (`_subnets`) only passes on pools and gateways that parse."""
    try:
        net = ipaddress.ip_network(pool)
        ok = not gateway or ipaddress.ip_interface(gateway).ip in net
    except ValueError:
        return None
    return Subnet(str(net), gateway) if ok else None


DRAFT = Network(NET, "bridge", {}, BridgeConfig(bridge=""), [Subnet("10.1.0.0/24", "10.1.0.1/24")])
drafts = st.builds(
    lambda subs, internal: Network(
        NET, "bridge", {}, BridgeConfig(bridge=""), [s for s in subs if s], internal=internal
    ),
    st.lists(st.builds(valid_subnet, subnets, st.one_of(st.just(""), addresses)), max_size=2),
    st.booleans(),
)
option_maps = st.dictionaries(st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=12)), option_values, max_size=5)


def kernel_accepts_name(name: str) -> bool:
    """Linux's dev_valid_name (net/core/dev.c): under IFNAMSIZ (16) bytes, not "." or "..",
    no '/', ':' or white space anywhere."""
    raw = name.encode()
    return 0 < len(raw) < 16 and name not in (".", "..") and not any(c in "/:" or c.isspace() for c in name)


def integer(value: str) -> bool:
    """What Docker's own drivers accept for a number (Go's strconv.Atoi): ASCII digits, a sign."""
    return re.fullmatch(r"[+-]?[0-9]+", value) is not None


@given(backend=st.sampled_from(BACKENDS), options=option_maps, draft=drafts)
@example(backend=BACKENDS[0], options={"bridge_name": "br:lan"}, draft=DRAFT)  # the kernel refused it: a 500
@example(backend=BACKENDS[1], options={"parent": "é" * 8}, draft=DRAFT)  # 8 characters but 16 bytes
@example(backend=BACKENDS[0], options={"mtu": "1_500"}, draft=DRAFT)  # Python's int() took these
@example(backend=BACKENDS[2], options={"vni": "\u0664\u0662"}, draft=DRAFT)
def test_options_parse_or_are_refused_by_name(backend: Backend, options: dict[str, str], draft: Network) -> None:
    try:
        config: Any = backend.parse_options(options, draft)
    except InvalidRequest as e:
        message = str(e)
        assert message.startswith("pynet: "), message
        assert any(repr(k) in message or k in message for k in [*options, *REQUIRED]), message
        return
    assert isinstance(config, next(e.config for e in ENTRIES if e.mode == backend.mode))
    for key, value in options.items():
        parser = PARSERS[backend.mode].get(key)
        if parser is ifname:
            assert kernel_accepts_name(value), f"{key}={value!r} accepted, but no kernel link can have that name"
        elif parser is not None and parser.__qualname__.startswith("int_in"):
            assert integer(value), f"{key}={value!r} accepted as a number"
