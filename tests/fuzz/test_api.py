"""Every route, Docker's and the operator's, under generated input (tests/fuzz/__init__.py).

Each example starts a fresh daemon holding one network with one joined endpoint (`seed`), then
sends one to three generated requests to the route under test, and checks every reply:

- it is JSON; an error is `{"Err": m, "Error": m}`, m a non-empty message of bounded length;
- its status is below 500: every input here is the caller's doing, none is pynet's failure;
- a failed request changed nothing: the store and the kernel double are as they were;
- nothing was logged at error level, and no traceback at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pynet.plugin.api.app import EARLY, MAX_MESSAGE, ROUTES
from pynet.plugin.ops import admin_api
from tests.fuzz.conftest import Reply, Served
from tests.fuzz.strategies import EP, NET, POOL_ID, SHAPES, SUBNET, body, encode

DOCKER_ROUTES = sorted({*EARLY, *ROUTES})
ADMIN_ROUTES = sorted("pynet/" + name for name in admin_api.ROUTES)


def test_every_route_has_a_shape() -> None:
    """A route added without a shape here would go unfuzzed."""
    assert sorted(SHAPES) == sorted([*DOCKER_ROUTES, *ADMIN_ROUTES])


def post(served: Served, method: str, value: object) -> dict[str, object]:
    reply = served.call("/" + method, encode(value))
    assert reply.status == 200, (method, reply.body)
    out: dict[str, object] = json.loads(reply.body)
    return out


def seed(served: Served) -> None:
    """What Docker does for one network and one container on it, as `docker run` would."""
    post(served, "IpamDriver.RequestPool", {"AddressSpace": "pynet-local", "Pool": SUBNET, "SubPool": "", "V6": False})
    gateway = {"RequestAddressType": "com.docker.network.gateway"}
    post(served, "IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": gateway})
    ipv4 = [{"AddressSpace": "pynet-local", "Pool": SUBNET, "Gateway": "10.1.0.1/24"}]
    options = {"com.docker.network.generic": {}, "com.docker.network.enable_ipv6": False}
    post(
        served, "NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": options, "IPv4Data": ipv4, "IPv6Data": []}
    )
    address = post(served, "IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": None})["Address"]
    interface = {"Address": address, "AddressIPv6": "", "MacAddress": ""}
    post(
        served,
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    post(served, "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x"})


def check(served: Served, method: str, sent: bytes, before: tuple[dict[str, bytes], set[str]], reply: Reply) -> None:
    what = f"{method} {sent[:300]!r} -> {reply.status} {reply.body[:300]!r}"
    assert reply.content_type.startswith("application/json"), what
    decoded = json.loads(reply.body)
    assert isinstance(decoded, (dict, list)), what  # the admin API's reports may be lists
    assert reply.status < 500, what
    if reply.status != 200:
        assert isinstance(decoded, dict) and decoded.keys() == {"Err", "Error"}, what
        assert decoded["Err"] == decoded["Error"] and isinstance(decoded["Err"], str) and decoded["Err"], what
        assert len(decoded["Err"]) <= MAX_MESSAGE + 40, what
        assert served.snapshot() == before, f"a failed request changed the store or the kernel: {what}"
    loud = [r for r in served.log.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, f"{what}: logged {[(r.levelname, r.getMessage(), getattr(r, 'error', '')) for r in loud]}"


def exercise(served: Served, method: str, bodies: list[bytes]) -> None:
    served.reset()
    seed(served)
    for sent in bodies:
        before = served.snapshot()
        check(served, method, sent, before, served.call("/" + method, sent))


def requests(method: str) -> st.SearchStrategy[list[bytes]]:
    return st.lists(body(method), min_size=1, max_size=3)


def options(**generic: object) -> dict[str, object]:
    return {"com.docker.network.generic": generic}


# What the fuzzer found, each kept as an example of its route's test (and so run first, always).
REGRESSIONS: dict[str, list[list[object]]] = {
    # A list as `mode` was a 500 "internal error ... unhashable type: 'list'".
    "NetworkDriver.CreateNetwork": [
        [{"NetworkID": NET[::-1], "Options": options(mode=["bridge"])}],
        # A failed VXLAN create kept the VNI it had reserved: burnt for good (VNIs are never reused).
        [{"NetworkID": NET[::-1], "Options": options(mode="vxlan", mtu="abc"), "IPv4Data": [{"Pool": "10.3.0.0/24"}]}],
        [{"NetworkID": NET[::-1], "Options": options(mode="vxlan", vni="42", cluster="true", vxlan_port="0")}],
        # InvalidRequest was a 500.
        [{"NetworkID": NET[::-1], "Options": options(colour="blue")}],
        # An empty NetworkID made a network, under the key every network's key starts with.
        [{"NetworkID": "", "Options": options()}],
    ],
    # A multicast or malformed MAC passed the checks and failed in the kernel: a 500.
    "NetworkDriver.CreateEndpoint": [
        [{"NetworkID": NET, "EndpointID": EP[::-1], "Interface": {"Address": "10.1.0.9/24", "MacAddress": mac}}]
        for mac in ("01:00:5e:00:00:01", "02:42:0a:01:00:0g")
    ],
    "NetworkDriver.ProgramExternalConnectivity": [
        [{"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": [{"Proto": "tcp"}]}}],
    ],
    "IpamDriver.RequestPool": [[{"AddressSpace": "pynet-local", "Pool": "10.1.0.0/16"}]],  # a Conflict was a 500
    "pynet/gc/sweep": [[{"leaks": [{"kind": "x"}], "docker": {}}]],
}


def route_test(method: str) -> Callable[[Served, list[bytes]], None]:
    @given(bodies=requests(method))
    def test(served: Served, bodies: list[bytes]) -> None:
        exercise(served, method, bodies)

    for bodies in REGRESSIONS.get(method, []):
        test = example(bodies=[encode(b) for b in bodies])(test)
    if not SHAPES[method]:  # a route that reads no body: a few examples prove it
        test = settings(max_examples=max(3, settings.default.max_examples // 8))(test)
    return test


# One test per route, named after it: test_NetworkDriver_CreateNetwork, test_pynet_gc_sweep, ...
for _method in SHAPES:
    globals()["test_" + _method.replace(".", "_").replace("/", "_")] = route_test(_method)
