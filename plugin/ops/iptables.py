"""The firewall as gc and doctor see it: pynet's rules read (and deleted) with the firewall's
own tools, in the flavour Docker uses; under Docker's nftables backend, pynet's nft tables."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from pynet.drivers import nftables
from pynet.drivers.firewall import FLAVOURS, IPTABLES, NFTABLES, Runner, detect_flavour, in_netns, run_iptables
from pynet.plugin.daemon.config import Settings


class Rule(msgspec.Struct, frozen=True):
    family: int
    table: str
    line: str  # as iptables-save prints it: "-A PYNET-FORWARD ..."


class Iptables:
    """Reads and deletes rules in pynet's chains with the firewall's own tools and flavour."""

    def __init__(
        self, flavour: Callable[[], str] | None = None, netns: str | None = None, runner: Runner = run_iptables
    ) -> None:
        """`flavour` (blocking, run in a thread once) defaults to detecting it in `netns`."""
        self._detect = flavour or (lambda: detect_flavour(netns))
        self._flavour = ""
        self.netns = netns
        self._runner = runner

    async def flavour(self) -> str:
        if not self._flavour:
            self._flavour = await asyncio.to_thread(self._detect)
        return self._flavour

    async def _tool(self, family: int, suffix: str) -> list[str]:
        base = "iptables" if family == 4 else "ip6tables"
        return [f"{base}-{await self.flavour()}{suffix}"]

    async def table(self, family: int, table: str) -> str:
        """`iptables -t TABLE -S`."""
        argv = await self._tool(family, "")
        return await self._runner(in_netns(self.netns, [*argv, "-w", "-t", table, "-S"]), None)

    def nft(self) -> nftables.NftTables:
        """The nftables backend's tables (and Docker's), read with `nft`."""
        return nftables.NftTables(self.netns, self._runner)

    async def pynet_rules(self) -> list[Rule]:
        """Rules in PYNET chains, which gc checks against the networks. None under nftables:
        pynet's tables are written whole at start, then changed only by pynet against what it
        wrote (chains flushed and refilled, or deleted), and deleted whole, so no rule of a
        network that is gone can stay behind."""
        if await self.flavour() == NFTABLES:
            return []
        rules: list[Rule] = []
        for family in (4, 6):
            save = await self._runner(in_netns(self.netns, await self._tool(family, "-save")), None)
            table = ""
            for line in save.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith("-A PYNET-"):
                    rules.append(Rule(family, table, line))
        return rules

    async def delete(self, rule: Rule) -> None:
        argv = await self._tool(rule.family, "-restore")
        text = f"*{rule.table}\n-D{rule.line[2:]}\nCOMMIT\n"
        await self._runner(in_netns(self.netns, [*argv, "-w", "--noflush"]), text)


def configured(settings: Settings) -> Iptables:
    """This host's, read as the daemon would: in the flavour --firewall-backend and
    --iptables-backend name, else Docker's."""
    forced = settings.firewall_flavour
    if forced in (*FLAVOURS, NFTABLES):
        return Iptables(lambda: forced)
    return Iptables(lambda: detect_flavour(nft=forced != IPTABLES))
