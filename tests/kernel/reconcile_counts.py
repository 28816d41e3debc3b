"""Run as `python -m tests.kernel.reconcile_counts <serve flags>` inside the daemon's netns
(with no daemon running): one reconcile of the state the flags name, by serve's own code on
the real kernel, printing as JSON what it asked: netlink requests by kind and command, and
iptables-restore runs. tests/kernel/test_startup.py compares them across state sizes."""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from pynet.drivers.rtnl import RTM_GETROUTE
from pynet.plugin import serve
from pynet.plugin.daemon import config


def counted(counts: Counter[str], kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    async def call(command: str, *args: Any, **kwargs: Any) -> Any:
        counts[f"{kind} {command}"] += 1
        return await method(command, *args, **kwargs)

    return call


def counted_once(counts: Counter[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    async def call(message: bytes) -> Any:
        kind = struct.unpack_from("=H", message, 4)[0]  # nlmsghdr's type: what the request is of
        counts[name.replace("link", "route") if kind == RTM_GETROUTE else name] += 1
        return await method(message)

    return call


async def main(argv: list[str]) -> dict[str, int]:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    d = serve.build(config.from_args(parser.parse_args(argv)))
    await d.netlink.open()
    counts: Counter[str] = Counter()
    ipr = d.netlink.ipr
    for kind in ("link", "addr", "route"):
        setattr(ipr, kind, counted(counts, kind, getattr(ipr, kind)))
    links = d.netlink._link_socket  # the hand-built link requests (drivers/rtnl.py)
    for method, name in (("dump", "link dump"), ("query", "link get"), ("request", "link set")):
        setattr(links, method, counted_once(counts, name, getattr(links, method)))
    runner = d.firewall._runner

    async def run(argv: list[str], stdin: str | None) -> str:
        if any(arg.endswith("-restore") for arg in argv):
            counts["iptables-restore"] += 1
        return await runner(argv, stdin)

    d.firewall._runner = run
    try:
        await serve.reconcile(d)
    finally:
        await d.netlink.close()
        await d.store.close()
    return dict(counts)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
