"""Cluster network specs: what a host's copy of a cluster network is made from, and the pure
decisions the agent takes with them (plugin/cluster/networks.py runs them).

Keys (under the store prefix), none under a lease: a cluster network outlives every host.

    cluster/networks/<name>           ClusterSpec: the origin's network as Docker inspects it
    cluster/copies/<name>/<host>      Copy: the host has (had) a copy of NAME with this Docker ID;
                                      deleted once the copy is deleted, so a copy key with no
                                      such network in Docker means a user removed it there
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pynet.plugin.engine import Ipam, Network, NetworkSpec

State = Literal["active", "removing"]


class ClusterSpec(msgspec.Struct, kw_only=True):
    network: NetworkSpec  # Name, Driver, IPAM, Options, Labels, Internal, EnableIPv4/6 as inspected
    vni: int = 0  # the reserved VNI (drivers/vnis.py); 0 for macvlan
    origin: str  # the host it was created on
    origin_id: str  # its Docker ID there
    state: State = "active"


class Copy(msgspec.Struct):
    docker_id: str


def spec_key(prefix: str, name: str) -> str:
    return f"{prefix}cluster/networks/{name}"


def copy_key(prefix: str, name: str, host: str) -> str:
    return f"{prefix}cluster/copies/{name}/{host}"


def spec_from_inspect(net: Network, vni: int, host: str) -> ClusterSpec:
    """The spec of a network created here; the automatic subnets Docker shows in its IPAM
    config (inspect lists the pools the IPAM gave) become explicit ones for the copies."""
    base = NetworkSpec(
        Name=net.Name,
        Driver=net.Driver,
        Internal=net.Internal,
        EnableIPv4=net.EnableIPv4,
        EnableIPv6=net.EnableIPv6,
        Labels=dict(net.Labels),
        Options=dict(net.Options),
        IPAM=Ipam(Driver=net.IPAM.Driver, Options=dict(net.IPAM.Options), Config=list(net.IPAM.Config)),
    )
    return ClusterSpec(network=base, vni=vni, origin=host, origin_id=net.Id)


def copy_request(spec: ClusterSpec, driver: str) -> NetworkSpec:
    """The `POST /networks/create` body of this host's copy: the spec under this host's name
    for pynet (DRIVER: `pynet`, or `pynet:latest` for the managed plugin), with the reserved VNI."""
    origin = spec.network
    options = dict(origin.Options)
    if spec.vni:
        options["vni"] = str(spec.vni)
    ipam_driver = driver if origin.IPAM.Driver == origin.Driver else origin.IPAM.Driver
    return msgspec.structs.replace(
        origin, Driver=driver, Options=options, IPAM=msgspec.structs.replace(origin.IPAM, Driver=ipam_driver)
    )


def subnets(net: NetworkSpec) -> list[str]:
    return sorted(c.Subnet for c in net.IPAM.Config if c.Subnet)


def is_copy(spec: ClusterSpec, local: Network, driver: str, local_vni: int) -> bool:
    """Whether LOCAL (this host's network of the spec's name) is that cluster network: pynet's,
    the same mode, subnets and VNI. Anything else of that name is a conflict, left alone."""
    return (
        local.Driver == driver
        and local.Options.get("mode", "bridge") == spec.network.Options.get("mode", "bridge")
        and subnets(local) == subnets(spec.network)
        and local_vni == spec.vni
    )


Action = Literal["create", "keep", "conflict", "delete", "forget", "removed-here", "none"]


def decide(spec: ClusterSpec, local: Network | None, copy: Copy | None, same: bool) -> Action:
    """What to do on this host for SPEC, given Docker's network of that name here (LOCAL),
    this host's copy key (COPY) and whether LOCAL is a copy of SPEC (SAME, see `is_copy`).

    - create: active, nothing of that name here, and no copy before;
    - keep: the copy exists (record its key if missing);
    - conflict: another network holds the name;
    - removed-here: a copy existed and a user removed it: the network is removed everywhere;
    - delete: removing, and the copy is still here (Docker refuses while containers use it);
    - forget: the copy is gone: drop its key;
    - none: nothing to do.
    """
    ours = local is not None and (same or (copy is not None and copy.docker_id == local.Id))
    if spec.state == "active":
        if local is None:
            return "removed-here" if copy is not None else "create"
        return "keep" if ours else "conflict"
    if ours:
        return "delete"
    return "forget" if copy is not None else "none"
