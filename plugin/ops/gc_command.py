"""`pynet gc`: find leaks (plugin/ops/gc.py) with Docker's view, and remove them through the
daemon, or through this process's own store and netlink when the daemon is down."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import msgspec

from pynet.drivers.claims import Claims
from pynet.drivers.netlink import Netlink
from pynet.plugin.daemon.config import Settings
from pynet.plugin.engine import EngineError
from pynet.plugin.ops import admin_api, gc
from pynet.plugin.ops.access import Local, Unreachable, ask, closing, local, opened_netlink
from pynet.plugin.ops.admin_api import Status
from pynet.plugin.ops.dockerapi import docker_view
from pynet.plugin.ops.iptables import Iptables, configured
from pynet.plugin.ops.render import Report, note, short, table

SWEEP_TIMEOUT = 120.0  # removal runs one netlink or store call per leak
DEFAULT_DOCKER_HOST = Settings.docker_host


class GcReport(msgspec.Struct):
    source: Literal["daemon", "store"]
    docker_host: str
    docker_error: str  # why Docker's view is missing; "" when Docker answered
    refused: str  # why nothing was removed although asked to; "" otherwise
    firewall_error: str  # why pynet's rules could not be read; "" when they were
    dry_run: bool
    leaks: list[gc.Leak]
    outcomes: list[gc.Outcome]


class GcSource(Protocol):
    """Where gc reads and removes: the daemon's routes, or this process's own store and netlink."""

    source: Literal["daemon", "store"]

    async def inventory(self) -> gc.Inventory: ...

    async def sweep(self, leaks: list[gc.Leak], view: gc.DockerView, min_age: float) -> list[gc.Outcome]: ...


class DaemonGc:
    source: Literal["daemon", "store"] = "daemon"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def inventory(self) -> gc.Inventory:
        return await ask(self.settings, "gc/inventory", gc.Inventory)

    async def sweep(self, leaks: list[gc.Leak], view: gc.DockerView, min_age: float) -> list[gc.Outcome]:
        request = admin_api.SweepRequest(leaks, view, min_age)
        return await ask(self.settings, "gc/sweep", list[gc.Outcome], request, SWEEP_TIMEOUT)


class LocalGc:
    source: Literal["daemon", "store"] = "store"

    def __init__(self, loc: Local, netlink: Netlink, iptables: Iptables, prefix: str) -> None:
        self.loc = loc
        self.sources = gc.Sources(loc.host, loc.state, loc.ipam, netlink, iptables)
        self.claims = Claims(loc.store, prefix, loc.host)

    async def inventory(self) -> gc.Inventory:
        return await gc.gather(self.sources)

    async def sweep(self, leaks: list[gc.Leak], view: gc.DockerView, min_age: float) -> list[gc.Outcome]:
        # Records only: the links and rules they held are leaks of their own, in the same sweep.
        async def remove_endpoint(leak: gc.Leak) -> None:
            await self.loc.state.delete_endpoint(leak.name)

        async def remove_network(leak: gc.Leak) -> None:
            net = await self.loc.state.network(leak.name)
            if net is not None:
                eps = await self.loc.state.endpoints(net.id)
                await self.loc.state.delete_network(net.id, [ep.id for ep in eps])
                await self.claims.release(net.id, net.config.claims())

        removers = gc.Removers(endpoint=remove_endpoint, network=remove_network)
        return await gc.sweep(leaks, view, self.sources, removers, time.time(), min_age)


@contextlib.asynccontextmanager
async def gc_source(settings: Settings) -> AsyncIterator[GcSource]:
    try:
        await ask(settings, "status", Status)
    except Unreachable as e:
        note(f"pynet: {e}; working on the store and the kernel directly")
        async with local(settings) as loc, closing(await opened_netlink()) as nl:
            yield LocalGc(loc, nl, configured(settings), settings.store_prefix)
        return
    yield DaemonGc(settings)


def docker_host(settings: Settings) -> str:
    """--docker-host or PYNET_DOCKER_HOST; else $DOCKER_HOST, as the docker CLI would ask; else
    the default socket."""
    if settings.docker_host != DEFAULT_DOCKER_HOST:
        return settings.docker_host
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


async def collect(settings: Settings, args: argparse.Namespace) -> Report:
    where = docker_host(settings)
    async with gc_source(settings) as source:
        inv = await source.inventory()
        view: gc.DockerView | None = None
        docker_error = ""
        try:
            view = await docker_view(where, [n.id for n in inv.networks])
        except (EngineError, ValueError) as e:
            docker_error = str(e)  # names the Docker address and what failed
        leaks = gc.find(inv, view, time.time(), args.min_age)
        refused = docker_error or (gc.refusal(inv, view) if view is not None else "")
        outcomes: list[gc.Outcome] = []
        if leaks and view is not None and not refused and not args.dry_run:
            outcomes = await source.sweep(leaks, view, args.min_age)
    report = GcReport(source.source, where, docker_error, refused, inv.rules_error, args.dry_run, leaks, outcomes)
    ok = not refused and not inv.rules_error and (all(o.ok for o in outcomes) if outcomes else not leaks)
    return Report(report, _gc_text(report), ok)


def _gc_text(r: GcReport) -> str:
    results = {o.leak.key: o.result for o in r.outcomes}
    rows = [
        (leak.kind, _leak_name(leak), leak.reason, *((results.get(leak.key, "-"),) if r.outcomes else ()))
        for leak in r.leaks
    ]
    headers = ["KIND", "NAME", "REASON", *(["RESULT"] if r.outcomes else [])]
    lines = [table(headers, rows)]
    if r.docker_error:
        lines.append(f"{r.docker_error}: endpoint records and addresses not checked, nothing removed")
    elif r.refused:
        lines.append(f"nothing removed: {r.refused}")
    elif r.leaks and r.dry_run:
        lines.append(f"{len(r.leaks)} leaks; dry run: nothing removed")
    elif r.outcomes:
        removed = sum(o.ok for o in r.outcomes)
        lines.append(f"removed {removed} of {len(r.outcomes)}")
        failed = [o for o in r.outcomes if not o.ok]
        lines += [f"  {o.leak.kind} {_leak_name(o.leak)}: {o.result} {o.error}".rstrip() for o in failed]
    if r.firewall_error:
        lines.append(f"firewall not checked: {r.firewall_error}")
    return "\n".join(lines)


def _leak_name(leak: gc.Leak) -> str:
    match leak.kind:
        case "network" | "endpoint":
            return short(leak.name)
        case "allocation":
            return f"{leak.name} in {leak.pool}"
        case "rule":
            return f"IPv{leak.family} {leak.table} {leak.name}"
    return leak.name

