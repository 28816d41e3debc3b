"""IpamDriver handlers (docs/protocol.md §3): thin translations onto `ipam.Ipam`.

The host's routes are passed as exclusions when pynet picks a subnet itself, so an automatic
subnet never shadows a network the host already reaches (Docker then keeps asking, §3.1).
"""

from __future__ import annotations

import ipaddress
import logging

from pynet.ipam import GLOBAL_SPACE, LOCAL_SPACE, PoolId
from pynet.plugin.api import network, wire
from pynet.plugin.api.routes import Routes
from pynet.plugin.api.wire import decode
from pynet.plugin.daemon.daemon import Daemon
from pynet.store.errors import Conflict

log = logging.getLogger("pynet.ipam")
route = Routes("IpamDriver")


@route("GetCapabilities", early=True)
async def get_capabilities(_: Daemon, __: bytes) -> wire.IpamCapabilitiesResponse:
    # No replay: allocations persist in pynet's store (docs/protocol.md §3.4).
    return wire.IpamCapabilitiesResponse(RequiresMACAddress=False, RequiresRequestReplay=False)


@route("GetDefaultAddressSpaces", early=True)
async def get_default_address_spaces(_: Daemon, __: bytes) -> wire.AddressSpacesResponse:
    return wire.AddressSpacesResponse(LocalDefaultAddressSpace=LOCAL_SPACE, GlobalDefaultAddressSpace=GLOBAL_SPACE)


@route("RequestPool")
async def request_pool(d: Daemon, body: bytes) -> wire.RequestPoolResponse:
    req: wire.RequestPoolRequest = decode(body, wire.RequestPoolRequest)
    exclude = [] if req.Pool else [r.dst for r in await d.netlink.routes() if not r.default]
    try:
        reply = await d.ipam.request_pool(req.AddressSpace, req.Pool, req.SubPool, req.Options or {}, req.V6, exclude)
    except Conflict:
        if not await _release_abandoned_pool(d, req.Pool):
            raise
        reply = await d.ipam.request_pool(req.AddressSpace, req.Pool, req.SubPool, req.Options or {}, req.V6, exclude)
    return wire.RequestPoolResponse(PoolID=reply.pool_id, Pool=reply.pool, Data=reply.data)


async def _release_abandoned_pool(d: Daemon, pool: str) -> bool:
    """A reference to `pool` that a crash left (the fault tier's `request_pool.after_store`):
    pynet died after storing it, before Docker read the PoolID, so Docker never releases it,
    and the user's retry of `docker network create --subnet` would be refused for good. One
    taken by an earlier pynet process that no network record uses and that holds no address
    (Docker follows RequestPool with the gateway's RequestAddress, then CreateNetwork) is that
    one: released, so the retry gets the pool. Returns whether it released one."""
    try:
        subnet = ipaddress.ip_network(pool)
    except ValueError:
        return False
    ref = await d.ipam.reference(subnet)
    if ref is None or ref.time >= d.started:
        return False
    nets = await d.state.networks()
    if any(ipaddress.ip_network(s.pool) == subnet for n in nets for s in (*n.ipv4, *n.ipv6)):
        return False
    if await d.ipam.holds_addresses(subnet):
        return False
    log.warning("releasing a pool a crash left: no network uses it, and it holds no address", extra={"pool": pool})
    await d.ipam.release_pool(ref.pool_id)
    return True


@route("ReleasePool")
async def release_pool(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.ReleasePoolRequest = decode(body, wire.ReleasePoolRequest)
    await d.ipam.release_pool(req.PoolID)
    return wire.Empty()


@route("RequestAddress")
async def request_address(d: Daemon, body: bytes) -> wire.RequestAddressResponse:
    req: wire.RequestAddressRequest = decode(body, wire.RequestAddressRequest)
    address = await d.ipam.request_address(req.PoolID, req.Address, req.Options or {})
    return wire.RequestAddressResponse(Address=address, Data={})


@route("ReleaseAddress")
async def release_address(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.ReleaseAddressRequest = decode(body, wire.ReleaseAddressRequest)
    await _drop_abandoned_endpoint(d, req.PoolID, req.Address)
    await d.ipam.release_address(req.PoolID, req.Address)
    return wire.Empty()


async def _drop_abandoned_endpoint(d: Daemon, pool_id: str, address: str) -> None:
    """Docker releases an endpoint's address after its DeleteEndpoint, and instead of one
    when CreateEndpoint failed (§2.4): a crash that lost CreateEndpoint's reply leaves an
    endpoint record Docker never deletes. One still holding the address is that endpoint."""
    subnet = PoolId.parse(pool_id).subnet
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return  # release_address names the bad value
    for ep in await d.state.endpoints():
        held = [ipaddress.ip_interface(a).ip for a in (ep.address, ep.address6) if a]
        if ip in held and ip in subnet:
            await network.remove_endpoint(d, ep.network_id, ep.id)
