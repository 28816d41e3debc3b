"""NetworkDriver handlers (docs/protocol.md §2): request -> model -> backend -> store -> reply.

Each handler works only from the request and pynet's own records (never the Docker API), is
idempotent (Docker retries after connection errors), and tolerates "already gone" on delete
paths, whose errors Docker only logs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec.structs import replace

from pynet.drivers import vnis
from pynet.drivers.base import Endpoint, Network, Subnet, undo_on_failure
from pynet.drivers.claims import Claims
from pynet.drivers.config import BridgedConfig
from pynet.drivers.options import invalid, parse_bool
from pynet.drivers.ports import PortRequest
from pynet.ipam.netmath import span, spans_overlap
from pynet.plugin.api import wire
from pynet.plugin.api.routes import Routes
from pynet.plugin.api.wire import decode
from pynet.plugin.daemon.daemon import Daemon
from pynet.store import faults
from pynet.store.errors import Conflict, InvalidRequest, NotFound

log = logging.getLogger("pynet.network")
route = Routes("NetworkDriver")

GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV4 = "com.docker.network.enable_ipv4"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


@dataclass(frozen=True)
class _Draft:
    """The network CreateNetwork describes, before its backend parsed the options."""

    id: str
    ipv4: list[Subnet]
    ipv6: list[Subnet]
    internal: bool
    enable_ipv4: bool
    enable_ipv6: bool


@route("GetCapabilities", early=True)
async def get_capabilities(_: Daemon, __: bytes) -> wire.CapabilitiesResponse:
    # "local": per-host networks (there is no cluster store since Docker 23); pynet shares
    # what must be shared through its own store (docs/protocol.md §2.1, §4.4).
    return wire.CapabilitiesResponse(Scope="local", ConnectivityScope="global", GwAllocChecker=True)


def _flag(opts: dict[str, Any], key: str, default: bool) -> bool:
    """One of Docker's own network flags, a JSON bool; absent, its default (Docker before
    28.0 sends no enable_ipv4: every network has IPv4 there)."""
    value = opts.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"pynet: Options.{key} must be true or false, got {value!r}")
    return value


@route("GwAllocCheck")
async def gw_alloc_check(d: Daemon, body: bytes) -> wire.GwAllocCheckResponse:
    """Docker 28+ asks, before its IPAM reserves the gateways, whether the network needs them
    (docs/protocol.md §2.1); as Docker's own macvlan: only an --internal network of a mode
    whose internal networks hold no gateway address. A gateway the user names is reserved
    all the same (a router's address must never go to a container)."""
    req: wire.GwAllocCheckRequest = decode(body, wire.GwAllocCheckRequest)
    opts = req.Options or {}
    backend = d.backend(_generic(opts).get("mode", "bridge"))
    skip = _flag(opts, INTERNAL, False) and not backend.internal_gateway
    return wire.GwAllocCheckResponse(SkipIPv4=skip, SkipIPv6=skip)


# -- networks ----------------------------------------------------------------------------------


def _subnets(data: list[wire.IPAMData] | None, version: int, field: str) -> list[Subnet]:
    out = []
    for i, d in enumerate(data or []):
        if d.AddressSpace == "null" or not d.Pool:
            continue
        try:
            pool = ipaddress.ip_network(d.Pool)
        except ValueError:
            raise InvalidRequest(f"pynet: {field}[{i}].Pool must be an IPv{version} subnet, got {d.Pool!r}") from None
        if pool.version != version:
            raise InvalidRequest(f"pynet: {field}[{i}].Pool must be an IPv{version} subnet, got {d.Pool!r}")
        aux = ((f"AuxAddresses[{k}]", v) for k, v in (d.AuxAddresses or {}).items())
        for name, value in (("Gateway", d.Gateway), *aux):
            if not value:
                continue
            try:
                ok = ipaddress.ip_interface(value).ip in pool
            except ValueError:
                ok = False
            if not ok:
                raise InvalidRequest(f"pynet: {field}[{i}].{name} must be an address in {pool}, got {value!r}")
        out.append(Subnet(str(pool), d.Gateway, dict(d.AuxAddresses or {})))
    return out


def _generic(opts: dict[str, Any]) -> dict[str, str]:
    """The `-o` options, which Docker always sends as strings; any other type is refused by
    name here, before `mode` picks a backend."""
    generic = opts.get(GENERIC)
    if generic is None:
        return {}
    if not isinstance(generic, dict):
        raise InvalidRequest(f"pynet: {GENERIC} must be a map, got {generic!r}")
    for key, value in generic.items():
        if not isinstance(value, str):
            raise invalid(key, "a string", value)
    return generic


def _families(opts: dict[str, Any], generic: dict[str, str], req: wire.CreateNetworkRequest) -> tuple[bool, bool]:
    """(IPv4, IPv6) as Docker decided them. Docker 28+ also reads them from `-o` and leaves
    them there; an earlier Docker only passes them on, so a `-o` Docker did not act on is
    refused rather than silently not applied."""
    families = (_flag(opts, ENABLE_IPV4, True), _flag(opts, ENABLE_IPV6, False))
    for version, key, applied in zip((4, 6), (ENABLE_IPV4, ENABLE_IPV6), families, strict=True):
        if key in generic and parse_bool(key, generic[key]) != applied:
            raise InvalidRequest(
                f"pynet: option {key}={generic[key]} was not applied by Docker: the network has IPv{version} "
                f"{'on' if applied else 'off'} (Docker reads the option from 28.0 on; "
                f"the flag is --ipv{version}={str(not applied).lower()})"
            )
    if not families[0] and req.IPv4Data and any(d.AddressSpace != "null" and d.Pool for d in req.IPv4Data):
        raise InvalidRequest(f"pynet: IPv4Data must be empty with Options.{ENABLE_IPV4} false")
    return families


@route("CreateNetwork")
async def create_network(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.CreateNetworkRequest = decode(body, wire.CreateNetworkRequest)
    opts = req.Options or {}
    generic = _generic(opts)
    enable_ipv4, enable_ipv6 = _families(opts, generic, req)
    # Docker's own keys (the families it applied, checked above) are no option of a mode.
    user_opts = {k: v for k, v in generic.items() if k not in ("mode", ENABLE_IPV4, ENABLE_IPV6)}
    mode = generic.get("mode", "bridge")
    backend = d.backend(mode)
    draft = _Draft(
        id=req.NetworkID,
        ipv4=_subnets(req.IPv4Data, 4, "IPv4Data"),
        ipv6=_subnets(req.IPv6Data, 6, "IPv6Data"),
        internal=_flag(opts, INTERNAL, False),
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
    )
    async with d.lock(draft.id):
        existing = await d.state.network(draft.id)
        if existing is not None:
            # A retry: make sure the kernel has it, change nothing else.
            await d.backend(existing.mode).create_network(existing)
            return wire.Empty()
        # One read of this host's other networks serves both checks below.
        others = [n for n in await d.state.networks() if n.id != draft.id]
        stale = _overlapping(draft, others)
        for gone in stale:
            log.warning(
                "removing a network Docker gave up: its subnet is this new network's",
                extra={"network": gone.id, "new_network": draft.id},
            )
            async with d.lock(gone.id):
                await _forget_network(d, gone)
        others = [n for n in others if n.id not in {g.id for g in stale}]
        # Every reservation is undone if the create fails, the kernel first, the store last.
        async with undo_on_failure() as undo:
            # A VXLAN network's VNI is reserved cluster-wide first (store-only, like every handler).
            resolved = vnis.Resolved(user_opts)
            if mode == "vxlan":
                resolved = await vnis.resolve(d.store, d.settings.store_prefix, d.host, user_opts, draft)
                faults.hit("create_network.after_vni")
            if resolved.reserved is not None:
                vni = resolved.reserved
                undo.push(lambda: vnis.release(d.store, d.settings.store_prefix, vni, draft.id))
            net = Network(
                id=draft.id,
                mode=mode,
                options=user_opts,
                config=backend.parse_options(resolved.options, draft),
                ipv4=draft.ipv4,
                ipv6=draft.ipv6,
                internal=draft.internal,
                enable_ipv4=draft.enable_ipv4,
                enable_ipv6=draft.enable_ipv6,
                created=time.time(),
            )
            claims = net.config.claims()
            await _claims(d).reserve(net.id, claims, lambda owner: _vanished(d, owner))
            undo.push(lambda: _claims(d).release(net.id, claims))
            _check_unique(net, others)
            net = replace(net, config=await backend.create_network(net))
            faults.hit("create_network.after_kernel")
            undo.push(lambda: backend.delete_network(net))
            await d.state.save_network(net)
        faults.hit("create_network.after_store")
    log.info(
        "network created",
        extra={"network": net.id, "mode": mode, "subnets": ",".join(s.pool for s in (*net.ipv4, *net.ipv6))},
    )
    return wire.Empty()


def _claims(d: Daemon) -> Claims:
    return Claims(d.store, d.settings.store_prefix, d.host)


async def _vanished(d: Daemon, network_id: str) -> bool:
    """Whether a claim's network is gone: no record, and no create of it under way (which holds
    its lock). Only a crash between a create's claim and its undo leaves such a claim."""
    return not d.lock(network_id).locked() and await d.state.network(network_id) is None


def _overlapping(draft: _Draft, others: list[Network]) -> list[Network]:
    """Those of this host's other networks whose subnets overlap the draft's. Docker never holds two such
    networks on one host (its IPAM, or pynet's, refuses an overlapping pool), so such a record is
    one Docker gave up: a CreateNetwork whose reply a crash lost, which Docker then rolled back
    without a DeleteNetwork (§2.2). Its bridge would hold the new network's gateway address."""
    mine = [span(s.pool) for s in (*draft.ipv4, *draft.ipv6)]
    return [n for n in others if any(spans_overlap(a, b) for a in mine for b in map(span, _pools(n)))]


def _pools(n: Network) -> list[str]:
    return [s.pool for s in (*n.ipv4, *n.ipv6)]


def _check_unique(net: Network, others: list[Network]) -> None:
    """Records saved before claims existed (drivers/claims.py) hold no claim keys: read them."""
    for key, value in net.config.claims().items():
        for other in others:
            if other.config.claims().get(key) == value:
                raise Conflict(f"pynet: {key} {value!r} is already used by network {other.id[:12]}")


@route("DeleteNetwork")
async def delete_network(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.NetworkRequest = decode(body, wire.NetworkRequest)
    await remove_network(d, req.NetworkID)
    return wire.Empty()


async def remove_network(d: Daemon, network_id: str) -> None:
    """Under the network's lock (`_forget_network`). A network already gone is no error.
    Docker's DeleteNetwork and gc's removal of a leak end here."""
    async with d.lock(network_id):
        net = await d.state.network(network_id)
        if net is None:
            return
        await _forget_network(d, net)
    log.info("network deleted", extra={"network": net.id})


async def _forget_network(d: Daemon, net: Network) -> None:
    """Records first, then the kernel: Docker forgets a network whose DeleteNetwork failed
    (§2.3), so a crash must leave nothing that outlives a restart. With the records gone, the
    links left are orphans reconcile deletes, and the rules it rewrites no longer hold them."""
    backend = d.backend(net.mode)
    eps = await d.state.endpoints(net.id)
    await d.state.delete_network(net.id, [ep.id for ep in eps])
    faults.hit("delete_network.after_store")
    for ep in eps:
        await backend.delete_endpoint(net, ep)
    faults.hit("delete_network.after_endpoints")
    await backend.delete_network(net)
    faults.hit("delete_network.after_kernel")
    # Last: a crash before it leaves claims of a network with no record, which the next
    # create naming them takes over (drivers/claims.py).
    await _claims(d).release(net.id, net.config.claims())


# -- endpoints ---------------------------------------------------------------------------------


async def _network(d: Daemon, network_id: str) -> Network:
    net = await d.state.network(network_id)
    if net is None:
        raise NotFound(f"pynet: no network with NetworkID {network_id!r}")
    d.check_restored(net.id)
    return net


def _check_address(net: Network, field: str, cidr: str, version: int) -> None:
    if not cidr:
        return
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise InvalidRequest(f"pynet: Interface.{field} must be an address in CIDR form, got {cidr!r}") from None
    subnets = net.ipv4 if version == 4 else net.ipv6
    if iface.version != version or not any(iface.ip in ipaddress.ip_network(s.pool) for s in subnets):
        pools = ", ".join(s.pool for s in subnets) or "none"
        raise InvalidRequest(f"pynet: Interface.{field} {cidr} is not in the network's subnets ({pools})")


def _check_mac(mac: str) -> None:
    """The kernel gives a link only a unicast, non-zero MAC (is_valid_ether_addr); anything else
    failed in the kernel, after the checks, as a 500."""
    if mac and (not MAC.fullmatch(mac) or int(mac[:2], 16) & 1 or not mac.replace(":", "").strip("0")):
        raise InvalidRequest(
            f"pynet: Interface.MacAddress must be a unicast MAC address like 02:42:0a:01:00:02, got {mac!r}"
        )


@route("CreateEndpoint")
async def create_endpoint(d: Daemon, body: bytes) -> wire.CreateEndpointResponse:
    req: wire.CreateEndpointRequest = decode(body, wire.CreateEndpointRequest)
    intf = req.Interface or wire.EndpointInterface()
    async with d.lock(req.NetworkID):
        net = await _network(d, req.NetworkID)
        existing = await d.state.endpoint(req.EndpointID)
        if existing is not None:
            await d.backend(net.mode).create_endpoint(net, existing)
            return _endpoint_reply(intf, existing)
        _check_address(net, "Address", intf.Address, 4)
        _check_address(net, "AddressIPv6", intf.AddressIPv6, 6)
        _check_mac(intf.MacAddress)
        ep = Endpoint(
            id=req.EndpointID,
            network_id=net.id,
            address=intf.Address,
            address6=intf.AddressIPv6,
            mac=intf.MacAddress,
        )
        backend = d.backend(net.mode)
        await backend.create_endpoint(net, ep)
        faults.hit("create_endpoint.after_kernel")
        async with undo_on_failure(lambda: backend.delete_endpoint(net, ep)):
            await d.state.save_endpoint(ep)
        faults.hit("create_endpoint.after_store")
    for addr in (ep.address, ep.address6):
        if addr:
            await d.ipam.bind(addr, ep.id)
    faults.hit("create_endpoint.after_bind")
    log.info(
        "endpoint created",
        extra={"network": net.id, "endpoint": ep.id, "address": ep.address or ep.address6, "link": ep.peer},
    )
    return _endpoint_reply(intf, ep)


def _endpoint_reply(intf: wire.EndpointInterface, ep: Endpoint) -> wire.CreateEndpointResponse:
    """Only fields Docker left empty: echoing one it set makes Docker roll back (§2.4)."""
    reply = wire.EndpointInterface(
        Address="" if intf.Address else ep.address,
        AddressIPv6="" if intf.AddressIPv6 else ep.address6,
        MacAddress="" if intf.MacAddress else ep.mac,
    )
    return wire.CreateEndpointResponse(Interface=reply)


async def remove_endpoint(d: Daemon, network_id: str, endpoint_id: str) -> None:
    """Under the network's lock, the record first, then the backend; an endpoint (or network)
    already gone is no error. Docker's DeleteEndpoint and gc's removal of a leak both end here."""
    async with d.lock(network_id):
        net = await d.state.network(network_id)
        ep = await d.state.endpoint(endpoint_id) or Endpoint(endpoint_id, network_id)
        # The record first: after a crash a link without one is an orphan, removed at start.
        await d.state.delete_endpoint(ep.id)
        faults.hit("delete_endpoint.after_store")
        if net is not None:
            await d.backend(net.mode).delete_endpoint(net, ep)
        faults.hit("delete_endpoint.after_kernel")
    log.info("endpoint deleted", extra={"network": network_id, "endpoint": ep.id})


@route("DeleteEndpoint")
async def delete_endpoint(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.EndpointRequest = decode(body, wire.EndpointRequest)
    await remove_endpoint(d, req.NetworkID, req.EndpointID)
    return wire.Empty()


@route("EndpointOperInfo")
async def endpoint_oper_info(d: Daemon, body: bytes) -> wire.EndpointInfoResponse:
    req: wire.EndpointRequest = decode(body, wire.EndpointRequest)
    ep = await d.state.endpoint(req.EndpointID)
    if ep is None:
        return wire.EndpointInfoResponse(Value={})
    return wire.EndpointInfoResponse(Value={"pynet.link": ep.peer, "pynet.mac": ep.mac})


@route("Join")
async def join(d: Daemon, body: bytes) -> wire.JoinResponse:
    req: wire.JoinRequest = decode(body, wire.JoinRequest)
    async with d.lock(req.NetworkID):
        net = await _network(d, req.NetworkID)
        ep = await d.state.endpoint(req.EndpointID)
        if ep is None:
            raise NotFound(f"pynet: no endpoint with EndpointID {req.EndpointID!r} on network {net.id[:12]}")
        info = await d.backend(net.mode).join(net, ep)
        ep.sandbox, ep.joined = req.SandboxKey, True
        await d.state.save_endpoint(ep)
        faults.hit("join.after_store")
    log.info("endpoint joined", extra={"network": net.id, "endpoint": ep.id, "sandbox": req.SandboxKey})
    if log.isEnabledFor(logging.DEBUG):
        # Docker makes the sandbox's netns before Join from 28.0 on (docs/protocol.md §2.6); pynet
        # never enters it, but where it is missing a driver that would must wait.
        log.debug("join sandbox", extra={"endpoint": ep.id, "sandbox_exists": os.path.exists(req.SandboxKey)})
    return wire.JoinResponse(
        InterfaceName=wire.InterfaceName(SrcName=info.src_name, DstPrefix="eth"),
        DisableGatewayService=info.disable_gateway,
        Gateway=info.gateway,
        GatewayIPv6=info.gateway6,
        StaticRoutes=msgspec.convert(info.static_routes, list[wire.StaticRoute]),
    )


@route("Leave")
async def leave(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.EndpointRequest = decode(body, wire.EndpointRequest)
    async with d.lock(req.NetworkID):
        net = await d.state.network(req.NetworkID)
        ep = await d.state.endpoint(req.EndpointID)
        if net is None or ep is None:
            return wire.Empty()
        await d.backend(net.mode).leave(net, ep)
        ep.joined, ep.ports = False, []
        await d.state.save_endpoint(ep)
        faults.hit("leave.after_store")
    log.info("endpoint left", extra={"network": net.id, "endpoint": ep.id})
    return wire.Empty()


# -- published ports ---------------------------------------------------------------------------


@route("ProgramExternalConnectivity")
async def program_external_connectivity(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.ExternalConnectivityRequest = decode(body, wire.ExternalConnectivityRequest)
    # Which labels this Docker sends (28 adds one, docs/protocol.md §2.9).
    keys = ",".join(sorted(req.Options or {}))
    log.debug("external connectivity options", extra={"endpoint": req.EndpointID, "keys": keys})
    bindings = wire.port_bindings(req.Options)
    async with d.ports_lock, d.lock(req.NetworkID):
        net = await _network(d, req.NetworkID)
        ep = await d.state.endpoint(req.EndpointID)
        if ep is None:
            raise NotFound(f"pynet: no endpoint with EndpointID {req.EndpointID!r} on network {net.id[:12]}")
        backend = d.backend(net.mode)
        if net.internal or not backend.publishes_ports:
            if bindings:
                log.info(
                    "published ports ignored: the network is internal or its containers answer on their own address",
                    extra={"network": net.id, "endpoint": ep.id, "mode": net.mode},
                )
            return wire.Empty()
        taken = {
            (p.proto, p.host_port)
            for other in await d.state.endpoints()
            if other.id != ep.id
            for p in other.ports
        }
        default_ip = net.config.host_binding_ipv4 if isinstance(net.config, BridgedConfig) else ""
        requests = [_port_request(b, default_ip) for b in bindings]
        # Bound first (a range's port is the first one free), then the rules, then listening.
        async with undo_on_failure(lambda: backend.revoke_external(net, ep)):
            ep.ports = d.ports.claim(ep.id, requests, ep.address, ep.address6, taken, ep.ports)
            await backend.program_external(net, ep)
            d.ports.listen(ep.id)
            await d.state.save_endpoint(ep)
    if ep.ports:
        log.info(
            "ports published",
            extra={
                "network": net.id,
                "endpoint": ep.id,
                "ports": ",".join(p.describe() for p in ep.ports),
            },
        )
    return wire.Empty()


def _port_request(b: wire.PortBinding, default_ip: str) -> PortRequest:
    """Docker's portmap entry; the network's host_binding_ipv4 when the user named no host IP."""
    return PortRequest(
        proto=wire.PROTOCOLS.get(b.Proto, str(b.Proto)),
        host_ip=b.HostIP or default_ip,
        host_port=b.HostPort,
        host_port_end=b.HostPortEnd,
        container_port=b.Port,
    )


@route("RevokeExternalConnectivity")
async def revoke_external_connectivity(d: Daemon, body: bytes) -> wire.Empty:
    req: wire.EndpointRequest = decode(body, wire.EndpointRequest)
    async with d.ports_lock, d.lock(req.NetworkID):
        net = await d.state.network(req.NetworkID)
        ep = await d.state.endpoint(req.EndpointID)
        if net is None or ep is None:
            return wire.Empty()
        await d.backend(net.mode).revoke_external(net, ep)
        ep.ports = []
        await d.state.save_endpoint(ep)
    return wire.Empty()


# -- swarm-only methods: never sent without swarm, answered so a swarm host does not fail -------


@route("AllocateNetwork")
async def allocate_network(_: Daemon, body: bytes) -> wire.AllocateNetworkResponse:
    decode(body, wire.CreateNetworkRequest)
    return wire.AllocateNetworkResponse(Options={})


@route("FreeNetwork", "DiscoverNew", "DiscoverDelete")
async def acknowledge(_: Daemon, __: bytes) -> wire.Empty:
    return wire.Empty()
