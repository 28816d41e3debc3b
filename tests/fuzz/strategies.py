"""What the fuzz tier throws: request bodies of the right shape with wrong types, random
nesting, huge strings, unicode, missing and extra fields, plus bytes that are not JSON at all.

Each route has a shape (`SHAPES`): its fields and, for each, plausible values (the kind Docker
sends, or nearly: addresses with a bad prefix, IDs of the seeded network). `body` draws from a
shape, and for every field either a plausible value, any JSON value, or nothing; nested shapes
(IPAM data, port bindings, gc's leaks) the same way.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from pynet.drivers import bridge, macvlan, vxlan
from pynet.ipam import GLOBAL_SPACE, LOCAL_SPACE

NET = "ab" * 32  # the seeded network, its endpoint and its pool (test_api.py `seed`)
EP = "cd" * 32
SUBNET = "10.1.0.0/24"
POOL_ID = f"{LOCAL_SPACE}:{SUBNET}"

Json = Any

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: past 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
any_json: st.SearchStrategy[Json] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Huge strings: far past any message, key or link name, well under the body limit.
huge = st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 50_000))
strings = st.one_of(st.text(max_size=30), huge, st.just(""))

docker_ids = st.one_of(st.sampled_from([NET, EP]), st.text("0123456789abcdef", min_size=1, max_size=70), strings)
ips = st.ip_addresses().map(str)
cidrs = st.builds(lambda ip, n: f"{ip}/{n}", ips, st.integers(-1, 130))
subnets = st.one_of(
    st.just(SUBNET), st.sampled_from(["10.1.0.0/16", "10.1.0.128/25", "fd00::/64", "10.1.0.0/33"]), cidrs
)
addresses = st.one_of(ips, cidrs, st.sampled_from(["10.1.0.1/24", "10.1.0.2/24", "10.1.0.9", "10.2.0.1/24"]), strings)
spaces = st.one_of(st.sampled_from([LOCAL_SPACE, GLOBAL_SPACE, "", "null"]), strings)
pool_ids = st.one_of(
    st.just(POOL_ID),
    st.builds(lambda sp, sub: f"{sp}:{sub}", spaces, subnets),
    st.builds(lambda sp, sub, rng: f"{sp}:{sub}:{rng}", spaces, subnets, subnets),
    strings,
)

OPTION_NAMES = sorted(
    {n for table in (bridge.OPTIONS, macvlan.OPTIONS, vxlan.OPTIONS) for o in table for n in (o.name, *o.aliases)}
)
option_values = st.one_of(
    st.sampled_from(["true", "false", "1", "0", "yes", "maybe", "1500", "68", "67", "65536", "4789", "16777216"]),
    st.integers(-5, 20_000_000).map(str),
    st.sampled_from(["eth0", "eth0.10", "pnb-x", "lo", "a" * 16, "10.1.0.1", "10.1.0.1/24", "10.9.9.9/32", "::1"]),
    ips,
    cidrs,
    strings,
)
modes = st.one_of(st.sampled_from(["bridge", "macvlan", "vxlan"]), strings)
option_maps = st.dictionaries(
    st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=12)),
    st.one_of(option_values, option_values, option_values, any_json),
    max_size=4,
)
# Mostly a mode and options to parse with it: how far a create gets before it is refused.
generic_options = st.one_of(
    st.builds(lambda mode, rest: {"mode": mode, **rest}, modes, option_maps),
    st.builds(lambda mode, rest: {"mode": mode, **rest}, modes, option_maps),
    option_maps,
    any_json,
)


def shaped(fields: dict[str, st.SearchStrategy[Json]], extra: bool = True) -> st.SearchStrategy[Json]:
    """A JSON object with some of `fields`, each plausible or any JSON value, maybe extra keys."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Json]:
        out: dict[str, Json] = {}
        for name, plausible in fields.items():
            choice = draw(st.sampled_from(["plausible", "plausible", "plausible", "any", "missing"]))
            if choice == "plausible":
                out[name] = draw(plausible)
            elif choice == "any":
                out[name] = draw(any_json)
        if extra and draw(st.booleans()):
            out.update(draw(st.dictionaries(st.text(max_size=12), any_json, max_size=3)))
        return out

    return build()


def listed(item: st.SearchStrategy[Json]) -> st.SearchStrategy[Json]:
    return st.one_of(st.none(), st.lists(item, max_size=3), any_json)


ipam_data = shaped(
    {
        "AddressSpace": spaces,
        "Pool": subnets,
        "Gateway": addresses,
        "AuxAddresses": st.one_of(st.none(), st.dictionaries(st.text(max_size=8), addresses, max_size=3)),
    }
)
network_options = shaped(
    {
        "com.docker.network.generic": generic_options,
        "com.docker.network.internal": st.one_of(st.booleans(), any_json),
        "com.docker.network.enable_ipv4": st.one_of(st.booleans(), any_json),
        "com.docker.network.enable_ipv6": st.one_of(st.booleans(), any_json),
    }
)
ports = st.integers(-2, 70_000)
port_binding = shaped(
    {
        "Proto": st.one_of(st.sampled_from([6, 17, 132]), st.integers()),
        "IP": addresses,
        "Port": ports,
        "HostIP": st.one_of(st.just(""), st.sampled_from(["0.0.0.0", "::", "127.0.0.1"]), addresses),
        "HostPort": st.one_of(st.just(0), ports),
        "HostPortEnd": st.one_of(st.just(0), ports),
    }
)
endpoint_options = shaped(
    {
        "com.docker.network.portmap": listed(port_binding),
        "com.docker.network.endpoint.exposedports": listed(shaped({"Proto": st.integers(), "Port": ports})),
    }
)
macs = st.one_of(
    st.sampled_from(
        ["02:42:0a:01:00:09", "01:00:5e:00:00:01", "00:00:00:00:00:00", "02:42:0A:01:00:0G", "2:42:a:1:0:9"]
    ),
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    strings,
)
interface = shaped({"Address": addresses, "AddressIPv6": addresses, "MacAddress": macs})
ids = {"NetworkID": docker_ids, "EndpointID": docker_ids}
ipam_options = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.sampled_from(["RequestAddressType", "com.docker.network.ipam.serial"]), st.text(max_size=10)),
        st.one_of(st.just("com.docker.network.gateway"), strings, any_json),
        max_size=3,
    ),
)
leak = shaped(
    {
        "kind": st.one_of(st.sampled_from(["endpoint", "link", "allocation", "rule"]), strings),
        "name": st.one_of(st.sampled_from([EP, "pnh-" + EP[:11], "10.1.0.2", "eth0"]), strings),
        "reason": strings,
        "network": docker_ids,
        "pool": subnets,
        "family": st.sampled_from([0, 4, 6]),
        "table": st.sampled_from(["", "filter", "nat"]),
    }
)
docker_view = shaped(
    {
        k: listed(v)
        for k, v in {"networks": docker_ids, "endpoints": docker_ids, "addresses": ips, "subnets": subnets}.items()
    }
)

NOTHING: dict[str, st.SearchStrategy[Json]] = {}
SHAPES: dict[str, dict[str, st.SearchStrategy[Json]]] = {
    "Plugin.Activate": NOTHING,
    "NetworkDriver.GetCapabilities": NOTHING,
    "NetworkDriver.CreateNetwork": {
        "NetworkID": docker_ids,
        "Options": network_options,
        "IPv4Data": listed(ipam_data),
        "IPv6Data": listed(ipam_data),
    },
    "NetworkDriver.AllocateNetwork": {
        "NetworkID": docker_ids,
        "Options": network_options,
        "IPv4Data": listed(ipam_data),
    },
    "NetworkDriver.GwAllocCheck": {"Options": network_options},
    "NetworkDriver.DeleteNetwork": {"NetworkID": docker_ids},
    "NetworkDriver.FreeNetwork": {"NetworkID": docker_ids},
    "NetworkDriver.CreateEndpoint": {**ids, "Interface": st.one_of(st.none(), interface), "Options": endpoint_options},
    "NetworkDriver.DeleteEndpoint": ids,
    "NetworkDriver.EndpointOperInfo": ids,
    "NetworkDriver.Join": {**ids, "SandboxKey": strings, "Options": st.one_of(st.none(), any_json)},
    "NetworkDriver.Leave": ids,
    "NetworkDriver.ProgramExternalConnectivity": {**ids, "Options": endpoint_options},
    "NetworkDriver.RevokeExternalConnectivity": ids,
    "NetworkDriver.DiscoverNew": {"DiscoveryType": st.integers(), "DiscoveryData": any_json},
    "NetworkDriver.DiscoverDelete": {"DiscoveryType": st.integers(), "DiscoveryData": any_json},
    "IpamDriver.GetCapabilities": NOTHING,
    "IpamDriver.GetDefaultAddressSpaces": NOTHING,
    "IpamDriver.RequestPool": {
        "AddressSpace": spaces,
        "Pool": st.one_of(st.just(""), subnets),
        "SubPool": st.one_of(st.just(""), subnets),
        "Options": ipam_options,
        "V6": st.booleans(),
    },
    "IpamDriver.ReleasePool": {"PoolID": pool_ids},
    "IpamDriver.RequestAddress": {
        "PoolID": pool_ids,
        "Address": st.one_of(st.just(""), addresses),
        "Options": ipam_options,
    },
    "IpamDriver.ReleaseAddress": {"PoolID": pool_ids, "Address": addresses},
    "pynet/status": NOTHING,
    "pynet/networks": NOTHING,
    "pynet/endpoints": NOTHING,
    "pynet/ipam": NOTHING,
    "pynet/gc/inventory": NOTHING,
    "pynet/gc/sweep": {
        "leaks": listed(leak),
        "docker": docker_view,
        "min_age": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
    },
}

not_json = st.one_of(
    st.just(b""),
    st.binary(max_size=40),
    st.sampled_from([b"{", b"{not json", b"[1, 2]", b'"x"', b"null", b"1e999", b'{"NetworkID": NaN}', b"\xff\xfe{}"]),
)


def encode(value: Json) -> bytes:
    return json.dumps(value).encode() + b"\n"  # Go's json.Encoder ends with a newline


def body(method: str) -> st.SearchStrategy[bytes]:
    """A body for `method`: mostly its shape, sometimes any JSON or no JSON at all."""
    return st.one_of(
        shaped(SHAPES[method]).map(encode), shaped(SHAPES[method]).map(encode), any_json.map(encode), not_json
    )
