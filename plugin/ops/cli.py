"""`pynet status|networks|endpoints|ipam|gc|doctor`: the operator's view of one host.

Tables for people, `--json` for scripts, and exit status 1 whenever something is wrong (daemon
down, leaks, a failed check), so scripts need not parse either.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from pynet.plugin.daemon import config
from pynet.plugin.daemon.config import Settings
from pynet.plugin.ops import dns_setup, gc
from pynet.plugin.ops.doctor import doctor
from pynet.plugin.ops.gc_command import collect
from pynet.plugin.ops.render import Report, as_json, note
from pynet.plugin.ops.reports import endpoints, ipam, networks, status
from pynet.store.errors import PynetError

HELP = {
    "status": "is pynet up, its store reachable; counts and VXLAN peers",
    "networks": "pynet's networks on this host",
    "endpoints": "pynet's endpoints on this host",
    "ipam": "address pools: hosts using them, addresses allocated",
    "gc": "find (and without --dry-run remove) leaked endpoints, links, addresses and rules",
    "doctor": "check this host: forwarding, firewall jumps, MTUs, etcd, socket",
    "dns": "install: make daemon.json's \"dns\" pynet's resolver, then the upstreams; uninstall: put it back",
}


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, Report]]
COMMANDS: dict[str, Command] = {
    "status": status,
    "networks": networks,
    "endpoints": endpoints,
    "ipam": ipam,
    "gc": collect,
    "doctor": doctor,
    "dns": dns_setup.command,
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help in HELP.items():
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
        if name == "gc":
            p.add_argument("--dry-run", action="store_true", help="list leaks, remove nothing")
            p.add_argument(
                "--min-age", type=float, default=gc.DEFAULT_MIN_AGE, metavar="SECONDS",
                help="leave younger allocations alone: Docker allocates before it creates the endpoint"
                f" (default {gc.DEFAULT_MIN_AGE:.0f})",
            )
        if name == "dns":
            p.add_argument("action", choices=["install", "uninstall"])
        if name in ("dns", "doctor"):
            p.add_argument("--daemon-json", default=dns_setup.DAEMON_JSON, help="dockerd's configuration file")
        config.add_arguments(p.add_argument_group("pynet settings (as for pynet serve)"))  # type: ignore[arg-type]


def main(settings: Settings, args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(COMMANDS[args.command](settings, args))
    except PynetError as e:
        note(f"pynet {args.command}: {e}")
        return 1
    print(as_json(report.data) if args.json else report.text)
    return 0 if report.ok else 1
