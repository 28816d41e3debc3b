"""`pynet status|networks|endpoints|ipam|gc|doctor`: the operator's view of one host.

Each command asks the daemon on its socket (`/pynet/...` routes) and, when nobody answers
there, reads the store itself, so an operator can look at a host whose pynet is down, which is
when they most need to. Tables for people, `--json` for scripts, and exit status 1 whenever
something is wrong (daemon down, leaks, a failed check), so scripts need not parse either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
import msgspec

from pynet.drivers.firewall import TABLES, jump_fixes, jumps_for, stale_jumps
from pynet.drivers.netlink import Link, Netlink
from pynet.drivers.vxlan import VXLAN_OVERHEAD
from pynet.ipam import Ipam
from pynet.plugin.ops import admin_api
from pynet.plugin.daemon import config
from pynet.plugin import serve
from pynet.plugin.ops import gc
from pynet.plugin.ops.admin_api import DaemonInfo, EndpointInfo, NetworkInfo, PoolInfo, Status
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.state import State
from pynet.store.base import Store
from pynet.store.errors import PynetError

T = TypeVar("T")

DAEMON_TIMEOUT = 10.0
SWEEP_TIMEOUT = 120.0  # removal runs one netlink or store call per leak
DEFAULT_DOCKER_HOST = "unix:///run/docker.sock"

HELP = {
    "status": "is pynet up, its store reachable; counts and VXLAN peers",
    "networks": "pynet's networks on this host",
    "endpoints": "pynet's endpoints on this host",
    "ipam": "address pools: hosts using them, addresses allocated",
    "gc": "find (and without --dry-run remove) leaked endpoints, links, addresses and rules",
    "doctor": "check this host: forwarding, firewall jumps, MTUs, etcd, socket",
}


class CliError(PynetError):
    """Ends the command with its message and status 1 (as any PynetError does)."""


class Unreachable(CliError):
    """Nobody answers on the daemon's socket; the message says what was found there."""


# -- output -----------------------------------------------------------------------------------


@dataclass
class Report:
    data: Any  # what --json prints
    text: str  # what people see
    ok: bool


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    if len(cells) == 1:
        return "(none)"
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def as_json(data: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()


def note(message: str) -> None:
    print(message, file=sys.stderr)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def short(ident: str) -> str:
    return ident[:12]


def duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


# -- the daemon and the store -----------------------------------------------------------------


async def ask(settings: Settings, name: str, type_: type[T], body: msgspec.Struct | None = None,
              timeout: float = DAEMON_TIMEOUT) -> T:
    sock = Path(settings.socket)
    if not sock.exists():
        raise Unreachable(f"no socket at {sock}: pynet is not running")
    connector = aiohttp.UnixConnector(path=str(sock))
    data = msgspec.json.encode(body) if body is not None else b""
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(f"http://pynet{admin_api.PREFIX}{name}", data=data) as r:
                raw = await r.read()
                if r.status != 200:
                    raise CliError(_error_text(raw) or f"pynet answered {r.status}")
                return msgspec.json.decode(raw, type=type_)
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.os_error, ConnectionRefusedError):
            raise Unreachable(f"stale socket {sock}: nobody answers (pynet died without removing it)") from None
        raise Unreachable(f"cannot connect to {sock}: {e.os_error.strerror or e}") from None
    except TimeoutError:
        raise Unreachable(f"pynet does not answer on {sock} within {timeout:.0f} s") from None


class _Err(msgspec.Struct):
    Err: str = ""


def _error_text(raw: bytes) -> str:
    try:
        return msgspec.json.decode(raw, type=_Err).Err
    except msgspec.MsgspecError:
        return raw.decode(errors="replace")[:200]


def open_store(settings: Settings) -> Store:
    """The daemon's store, opened by this process (SQLite in WAL mode: readers and the daemon
    do not block each other); a missing embedded store is an error, never created here."""
    if not settings.etcd_endpoints and not settings.store_path.exists():
        raise CliError(f"no store at {settings.store_path}: wrong --state-dir, or pynet never ran here")
    return serve.open_store(settings)


async def host_id(settings: Settings, store: Store) -> str:
    """Given, or the one the daemon generated and kept, or the only host the store has records
    of (a daemon started with --host-id keeps no file); never generated here."""
    if settings.host_id:
        return settings.host_id
    with contextlib.suppress(FileNotFoundError):
        return (Path(settings.state_dir) / "host-id").read_text().strip()
    root = f"{settings.store_prefix}hosts/"
    hosts = sorted({kv.key[len(root) :].split("/", 1)[0] for kv in await store.range(root)})
    if len(hosts) == 1:
        return hosts[0]
    known = f" (the store has {', '.join(hosts)})" if hosts else ""
    raise CliError(f"no host id in {settings.state_dir}: pass --host-id{known}")


@dataclass
class Local:
    """The store as the daemon would see it, for when the daemon does not answer."""

    host: str
    store: Store
    state: State
    ipam: Ipam


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@contextlib.asynccontextmanager
async def closing(thing: C) -> AsyncIterator[C]:
    """Stores and netlink sockets close with an async `close()`, not `aclose()`."""
    try:
        yield thing
    finally:
        await thing.close()


async def opened_netlink() -> Netlink:
    nl = Netlink()
    await nl.open()
    return nl


@contextlib.asynccontextmanager
async def local(settings: Settings) -> AsyncIterator[Local]:
    async with closing(open_store(settings)) as store:
        host = await host_id(settings, store)
        yield Local(host, store, State(store, settings.store_prefix, host), Ipam(store, host, settings.store_prefix))


async def fetch(settings: Settings, name: str, type_: type[T], read: Callable[[Local], Awaitable[T]]) -> T:
    """From the daemon, or from the store when the daemon does not answer."""
    try:
        return await ask(settings, name, type_)
    except Unreachable as e:
        note(f"pynet: {e}; reading the store directly")
    async with local(settings) as loc:
        return await read(loc)


# -- status, networks, endpoints, ipam --------------------------------------------------------


async def status(settings: Settings, _: argparse.Namespace) -> Report:
    try:
        st = await ask(settings, "status", Status)
    except Unreachable as e:
        st = await _status_from_store(settings, DaemonInfo(settings.socket, False, error=str(e)))
    ok = st.daemon.answers and st.daemon.ready and st.store.reachable
    return Report(st, _status_text(st), ok)


async def _status_from_store(settings: Settings, daemon: DaemonInfo) -> Status:
    try:
        async with closing(open_store(settings)) as store:
            try:
                host = await host_id(settings, store)
            except PynetError:
                host = ""  # no host's records to count, but the store is still worth probing
            return await admin_api.status(daemon, host, settings, store)
    except CliError as e:
        info = admin_api.StoreInfo(*admin_api.store_location(settings), False, str(e))
        return Status(daemon, settings.host_id, info, 0, 0, [])


def _status_text(st: Status) -> str:
    d = st.daemon
    if d.answers:
        daemon = f"answers on {d.socket} (pid {d.pid}, up {duration(d.uptime)}, {'ready' if d.ready else 'starting'})"
    else:
        daemon = f"DOWN: {d.error}"
    reach = "reachable" if st.store.reachable else f"UNREACHABLE: {st.store.error}"
    store = f"{st.store.kind} {st.store.where}: {reach}"
    lines = [
        f"daemon     {daemon}",
        f"host       {st.host or '?'}",
        f"store      {store}",
        f"networks   {st.networks}",
        f"endpoints  {st.endpoints}",
        "vxlan peers:",
        table(["VNI", "VTEP", "HOST"], [(p.vni, p.vtep, p.host or "(static)") for p in st.vxlan_peers]),
    ]
    return "\n".join(lines)


def device(config: dict[str, Any]) -> str:
    """What a network sits on, whatever its mode keeps: bridge, parent, VNI."""
    return " ".join(f"{k}={config[k]}" for k in ("bridge", "parent", "vni") if config.get(k))


async def networks(settings: Settings, _: argparse.Namespace) -> Report:
    nets = await fetch(settings, "networks", list[NetworkInfo], lambda loc: admin_api.networks(loc.state))
    rows = [
        (short(n.id), n.mode, ",".join(n.subnets), device(n.config), yes(n.internal), n.endpoints)
        for n in nets
    ]
    return Report(nets, table(["NETWORK", "MODE", "SUBNETS", "DEVICE", "INTERNAL", "ENDPOINTS"], rows), True)


async def endpoints(settings: Settings, _: argparse.Namespace) -> Report:
    eps = await fetch(settings, "endpoints", list[EndpointInfo], lambda loc: admin_api.endpoints(loc.state))
    rows = [
        (short(e.id), short(e.network), ",".join(e.addresses), e.mac, e.link, yes(e.joined), ",".join(e.ports))
        for e in eps
    ]
    return Report(eps, table(["ENDPOINT", "NETWORK", "ADDRESSES", "MAC", "LINK", "JOINED", "PORTS"], rows), True)


async def ipam(settings: Settings, _: argparse.Namespace) -> Report:
    pools = await fetch(settings, "ipam", list[PoolInfo], lambda loc: admin_api.pools(loc.ipam))
    rows = [(p.subnet, ",".join(p.hosts), f"{p.allocated}/{p.total}", p.gateway) for p in pools]
    return Report(pools, table(["POOL", "HOSTS", "ALLOCATED", "GATEWAY"], rows), True)


# -- gc ---------------------------------------------------------------------------------------


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

    def __init__(self, loc: Local, netlink: Netlink) -> None:
        self.loc = loc
        self.sources = gc.Sources(loc.host, loc.state, loc.ipam, netlink, gc.Iptables())

    async def inventory(self) -> gc.Inventory:
        return await gc.gather(self.sources)

    async def sweep(self, leaks: list[gc.Leak], view: gc.DockerView, min_age: float) -> list[gc.Outcome]:
        async def remove_endpoint(leak: gc.Leak) -> None:
            await self.loc.state.delete_endpoint(leak.name)  # its links are leaks of their own

        return await gc.sweep(leaks, view, self.sources, remove_endpoint, time.time(), min_age)


@contextlib.asynccontextmanager
async def gc_source(settings: Settings) -> AsyncIterator[GcSource]:
    try:
        await ask(settings, "status", Status)
    except Unreachable as e:
        note(f"pynet: {e}; working on the store and the kernel directly")
        async with local(settings) as loc, closing(await opened_netlink()) as nl:
            yield LocalGc(loc, nl)
        return
    yield DaemonGc(settings)


def docker_host(args: argparse.Namespace) -> str:
    return args.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


async def collect(settings: Settings, args: argparse.Namespace) -> Report:
    where = docker_host(args)
    async with gc_source(settings) as source:
        inv = await source.inventory()
        view: gc.DockerView | None = None
        docker_error = ""
        try:
            view = await gc.docker_view(where, [n.id for n in inv.networks])
        except (OSError, aiohttp.ClientError, msgspec.DecodeError, TimeoutError, ValueError) as e:
            docker_error = f"Docker at {where} cannot be asked: {e or type(e).__name__}"
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
        case "endpoint":
            return short(leak.name)
        case "allocation":
            return f"{leak.name} in {leak.pool}"
        case "rule":
            return f"IPv{leak.family} {leak.table} {leak.name}"
    return leak.name


# -- doctor -----------------------------------------------------------------------------------

Verdict = Literal["ok", "warn", "fail"]


class Check(msgspec.Struct):
    name: str
    verdict: Verdict
    detail: str


async def doctor(settings: Settings, _: argparse.Namespace) -> Report:
    checks = [await _daemon_check(settings), _forwarding_check()]
    checks += await _firewall_checks(gc.Iptables())
    checks += await _mtu_checks(settings)
    if settings.etcd_endpoints:
        checks.append(await _etcd_check(settings))
    rows = [(c.verdict.upper() if c.verdict != "ok" else "ok", c.name, c.detail) for c in checks]
    return Report(checks, table(["VERDICT", "CHECK", "DETAIL"], rows), all(c.verdict != "fail" for c in checks))


async def _daemon_check(settings: Settings) -> Check:
    try:
        st = await ask(settings, "status", Status)
    except Unreachable as e:
        return Check("daemon", "fail", str(e))
    if not st.daemon.ready:
        return Check("daemon", "warn", f"pid {st.daemon.pid} answers but is still starting")
    return Check("daemon", "ok", f"pid {st.daemon.pid} answers on {settings.socket}")


def _forwarding_check() -> Check:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    value = path.read_text().strip()
    if value == "1":
        return Check("ip_forward", "ok", "net.ipv4.ip_forward = 1")
    detail = f"net.ipv4.ip_forward = {value}: containers have no egress and no published ports"
    return Check("ip_forward", "fail", detail)


async def _firewall_checks(iptables: gc.Iptables) -> list[Check]:
    try:
        flavour = await iptables.flavour()
    except PynetError as e:
        return [Check("firewall", "fail", str(e))]
    checks = [Check("firewall", "ok", f"iptables-{flavour} (the flavour Docker uses here)")]
    for family in (4, 6):
        try:
            listings = {table: await iptables.table(family, table) for table in TABLES}
        except PynetError as e:
            checks.append(Check(f"jumps IPv{family}", "fail", str(e)))
            continue
        checks.append(_jumps_check(family, listings))
    return checks


def _jumps_check(family: int, listings: dict[str, str]) -> Check:
    """The jumps the firewall itself would keep (into DOCKER-USER on a Docker host): missing
    fails, misplaced or doubled only warns, since pynet's resync puts them back."""
    missing: list[str] = []
    misplaced: list[str] = []
    for jump in jumps_for(listings["filter"]):
        if jump_fixes(jump, listings[jump.table]):
            lines = listings[jump.table].splitlines()
            there = any(x.startswith(f"-A {jump.chain} ") and x.endswith(f"-j {jump.target}") for x in lines)
            (misplaced if there else missing).append(f"{jump.chain}->{jump.target}")
    misplaced += [line[3:] for _, line in stale_jumps(jumps_for(listings["filter"]), listings)]
    name = f"jumps IPv{family}"
    if missing:
        return Check(name, "fail", "missing: " + ", ".join(missing) + " (is pynet running?)")
    if misplaced:
        return Check(name, "warn", "misplaced: " + ", ".join(misplaced) + " (pynet's resync puts them back)")
    return Check(name, "ok", "one jump to each PYNET chain, in place")


async def _mtu_checks(settings: Settings) -> list[Check]:
    try:
        nets = await fetch(settings, "networks", list[NetworkInfo], lambda loc: admin_api.networks(loc.state))
    except PynetError as e:
        return [Check("mtu", "warn", f"networks unknown: {e}")]
    async with closing(await opened_netlink()) as nl:
        links = {link.name: link for link in await nl.links()}
        uplink = await nl.default_link()
        checks = [await _mtu_check(n, links, uplink, nl) for n in nets]
    return checks or [Check("mtu", "ok", "no networks")]


async def _mtu_check(net: NetworkInfo, links: dict[str, Link], uplink: Link | None, nl: Netlink) -> Check:
    """A bridge's MTU must fit its uplink, a macvlan's its parent, a VXLAN's the underlay less
    the VXLAN header; larger frames are dropped or fragmented on the way out."""
    name = f"mtu {short(net.id)}"
    mtu = net.config.get("mtu")
    if not isinstance(mtu, int):
        return Check(name, "ok", f"{net.mode}: no MTU set")
    overhead = VXLAN_OVERHEAD if net.mode == "vxlan" else 0
    if net.mode == "macvlan":
        lower = links.get(net.config.get("parent", ""))
    elif net.mode == "vxlan":
        given = net.config.get("underlay") or net.config.get("local") or ""
        lower = await _underlay(given, links, nl) or uplink
    else:
        lower = uplink
    if lower is None:
        return Check(name, "warn", f"{net.mode} MTU {mtu}: no link underneath to compare with")
    limit = lower.mtu - overhead
    verdict: Verdict = "ok" if mtu <= limit else "fail"
    less = f" - {overhead}" if overhead else ""
    return Check(name, verdict, f"{net.mode} MTU {mtu}, {lower.name} MTU {lower.mtu}{less}")


async def _underlay(value: str, links: dict[str, Link], nl: Netlink) -> Link | None:
    """The VXLAN `underlay` option names an interface or one of its addresses."""
    if value in links:
        return links[value]
    for link in links.values():
        if value and any(a.split("/")[0] == value for a in await nl.addresses(link.name)):
            return link
    return None


async def _etcd_check(settings: Settings) -> Check:
    store = open_store(settings)
    try:
        info = await admin_api.store_info(settings, store)
    finally:
        await store.close()
    if info.reachable:
        return Check("etcd", "ok", f"{info.where} answers")
    return Check("etcd", "fail", f"{info.where}: {info.error}")


# -- the command line -------------------------------------------------------------------------

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, Report]]
COMMANDS: dict[str, Command] = {
    "status": status,
    "networks": networks,
    "endpoints": endpoints,
    "ipam": ipam,
    "gc": collect,
    "doctor": doctor,
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help in HELP.items():
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
        if name == "gc":
            p.add_argument("--dry-run", action="store_true", help="list leaks, remove nothing")
            p.add_argument(
                "--docker-host", default="",
                help=f"Docker API to ask which endpoints are live (default: $DOCKER_HOST, else {DEFAULT_DOCKER_HOST})",
            )
            p.add_argument(
                "--min-age", type=float, default=gc.DEFAULT_MIN_AGE, metavar="SECONDS",
                help="leave younger allocations alone: Docker allocates before it creates the endpoint"
                f" (default {gc.DEFAULT_MIN_AGE:.0f})",
            )
        config.add_arguments(p.add_argument_group("pynet settings (as for pynet serve)"))  # type: ignore[arg-type]


def main(args: argparse.Namespace) -> int:
    settings = config.from_args(args)
    try:
        report = asyncio.run(COMMANDS[args.command](settings, args))
    except PynetError as e:
        note(f"pynet {args.command}: {e}")
        return 1
    print(as_json(report.data) if args.json else report.text)
    return 0 if report.ok else 1
