"""pynet's firewall as native nftables tables, for hosts where Docker 29 runs its nftables
firewall backend (`"firewall-backend": "nftables"`).

Docker then writes its own tables, `ip docker-bridges` and `ip6 docker-bridges`, makes no
DOCKER-USER chain and no iptables rules at all, and expects other software to keep to tables of
its own (docs.docker.com engine/network/firewall-nftables). So pynet owns `ip pynet` and
`ip6 pynet`, written whole at start, then changed chain by chain (`update_script`), both
families in one `nft -f -` transaction each time, and never reads or edits Docker's tables
beyond listing them.

The rules are the iptables backend's own (`firewall.chain_rules`), translated here: one set of
rules decides what is allowed, whichever backend writes it. Each PYNET-* chain, the shared ones
and each network's own (`PYNET-F-<bridge>` ...), becomes a regular chain of the one table,
reached by the same jumps as in iptables, and each built-in chain pynet jumps from becomes a
base chain of the same hook, at the priority Docker's equivalent base chain uses (filter,
dstnat, srcnat, raw).

In nftables an accept ends only its own base chain: a packet pynet accepts still meets Docker's
`filter-FORWARD`. That chain's verdict maps only hold Docker's bridges, so pynet's traffic
passes it on its policy, which is `accept` unless Docker enabled IP forwarding itself (then
`drop`, and nothing in another table can let pynet's traffic through: `docker_forward_drop`
finds that, for `pynet doctor` and the daemon's log). pynet's drops are final, in any order.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

TABLE = "pynet"
DOCKER_TABLE = "docker-bridges"
FAMILIES = {4: "ip", 6: "ip6"}

# (type, priority) of the base chain standing for an iptables built-in chain, as Docker's own:
# filter 0, dstnat -100, srcnat 100, raw -300. In numbers: nft 1.0.6 (Debian 12) refuses the
# name `dstnat` in an output hook.
_BASE = {
    ("filter", "FORWARD"): ("filter", 0),
    ("filter", "INPUT"): ("filter", 0),
    ("nat", "PREROUTING"): ("nat", -100),
    ("nat", "OUTPUT"): ("nat", -100),
    ("nat", "POSTROUTING"): ("nat", 100),
    ("raw", "PREROUTING"): ("filter", -300),
}
_VERDICTS = {
    "ACCEPT": "accept",
    "DROP": "drop",
    "RETURN": "return",
    "MASQUERADE": "masquerade",
    "NOTRACK": "notrack",
}


# runs argv with optional stdin; returns stdout, raises PynetError on failure
Runner = Callable[[list[str], str | None], Awaitable[str]]


class Hook(NamedTuple):
    """Where a PYNET chain is entered: an iptables built-in chain, and the jump's rule."""

    table: str
    chain: str
    target: str
    spec: str  # "-m addrtype --dst-type LOCAL -j PYNET-PREROUTING"


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


class Untranslatable(ValueError):
    """An iptables rule using a match this translator does not know: a bug in pynet, caught
    by the unit tests, never a user's input."""


def _ifname(name: str) -> str:
    return '"' + (name[:-1] + "*" if name.endswith("+") else name) + '"'


# Every change translates every network's rules again (the tables go whole), and shlex is
# slow: rendering 250 networks (10,090 rules) took 462 ms uncached here, 13 ms cached. Most are
# unchanged, so the translations are kept: about 50 a network (both families), room for 1,300.
@functools.lru_cache(maxsize=1 << 16)
def translate(rule: str, family: int) -> str:
    """One rule of `chain_rules` in nft syntax, for the `ip` (4) or `ip6` (6) table."""
    words = shlex.split(rule)
    out: list[str] = []
    comment = verdict = proto = ""
    negate = False
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(words):
            raise Untranslatable(f"pynet: rule ends early: {rule!r}")
        i += 1
        return words[i - 1]

    while i < len(words):
        word = take()
        op = "!= " if negate else ""
        negate = False
        if word == "!":
            negate = True
        elif word in ("-i", "-o"):
            out.append(f"{word[1]}ifname {op}{_ifname(take())}")
        elif word in ("-s", "-d"):
            out.append(f"{FAMILIES[family]} {word[1]}addr {op}{take()}")
        elif word == "-p":
            proto = take()
        elif word == "-m":
            module = take()
            if module == proto:
                port = take().removeprefix("--")
                out.append(f"{proto} {port} {take()}")
                proto = ""
            elif module == "conntrack" and take() == "--ctstate":
                state = take()
                out.append("ct status dnat" if state == "DNAT" else f"ct state {state.lower()}")
            elif module == "addrtype":
                negated = words[i] == "!"
                i += negated
                which = {"--src-type": "saddr", "--dst-type": "daddr"}.get(take())
                if which is None:
                    raise Untranslatable(f"pynet: no nftables form for addrtype in {rule!r}")
                out.append(f"fib {which} type {'!= ' if negated else ''}{take().lower()}")
            elif module == "comment" and take() == "--comment":
                comment = f' comment "{take()}"'
            else:
                raise Untranslatable(f"pynet: no nftables form for -m {module} in {rule!r}")
        elif word == "-j":
            target = take()
            if target == "DNAT" and take() == "--to-destination":
                verdict = f"dnat to {take()}"
            elif target.startswith("PYNET-"):
                verdict = f"jump {target}"
            elif target in _VERDICTS:
                verdict = _VERDICTS[target]
            else:
                raise Untranslatable(f"pynet: no nftables form for -j {target} in {rule!r}")
        else:
            raise Untranslatable(f"pynet: no nftables form for {word!r} in {rule!r}")
    if proto:
        out.append(f"meta l4proto {proto}")
    if not verdict:
        raise Untranslatable(f"pynet: rule without a target: {rule!r}")
    return " ".join([*out, verdict]) + comment


def _base_chain(hook: Hook, family: int) -> list[str]:
    kind, priority = _BASE[(hook.table, hook.chain)]
    return [
        f"\tchain {hook.table}-{hook.chain} {{",
        f"\t\ttype {kind} hook {hook.chain.lower()} priority {priority}; policy accept;",
        f"\t\t{translate(hook.spec, family)}",
        "\t}",
    ]


def render_table(family: int, hooks: Iterable[Hook], chains: Mapping[str, Sequence[str]]) -> str:
    """`table ip pynet { ... }` (or ip6): a base chain per hook, jumping to its PYNET chain,
    then every chain of `chains` (the iptables tables' chains together: their names do not
    repeat across tables), its rules translated from iptables syntax."""
    lines = [f"table {FAMILIES[family]} {TABLE} {{"]
    for hook in hooks:
        lines += _base_chain(hook, family)
    for name, rules in chains.items():
        lines.append(f"\tchain {name} {{")
        lines += [f"\t\t{translate(rule, family)}" for rule in rules]
        lines.append("\t}")
    return "\n".join([*lines, "}"]) + "\n"


def _drop_tables(families: Iterable[int]) -> str:
    """Deletes pynet's tables whether or not they exist (nft 1.0.6 has no `destroy`): a table
    declared empty is created if missing, then deleted, in the same transaction."""
    return "".join(f"table {FAMILIES[f]} {TABLE} {{}}\ndelete table {FAMILIES[f]} {TABLE}\n" for f in families)


def render_script(hooks: Iterable[Hook], chains: Mapping[int, Mapping[str, Sequence[str]]]) -> str:
    """The one `nft -f -` input that replaces pynet's tables (a family per key of `chains`):
    all or nothing."""
    hooks = tuple(hooks)
    return _drop_tables(chains) + "".join(render_table(f, hooks, rules) for f, rules in chains.items())


def teardown_script(families: Iterable[int]) -> str:
    return _drop_tables(families)


def update_script(
    before: Mapping[int, Mapping[str, Sequence[str]]], after: Mapping[int, Mapping[str, Sequence[str]]]
) -> str:
    """The `nft -f -` input taking pynet's tables from BEFORE to AFTER (chains per family, as
    `render_script` takes them; the base chains the same): chains added, flushed and refilled
    where their rules differ, deleted where gone. One transaction, all or nothing; "" when
    nothing changed. A chain is made before any rule jumping to it, and deleted after the
    flushes that take the jumps to it away."""
    lines: list[str] = []
    for family, chains in after.items():
        was, table = before.get(family, {}), f"{FAMILIES[family]} {TABLE}"
        lines += [f"add chain {table} {name}" for name in chains if name not in was]
        for name, rules in chains.items():
            if was.get(name, ()) != rules:
                lines += [f"flush chain {table} {name}"] if name in was else []
                lines += [f"add rule {table} {name} {translate(rule, family)}" for rule in rules]
        lines += [f"delete chain {table} {name}" for name in was if name not in chains]
    return "\n".join(lines) + "\n" if lines else ""


# -- reading the kernel (pure parsers of `nft` output) -----------------------------------------


def tables_in(listing: str) -> set[tuple[str, str]]:
    """(family, name) of every table in `nft list tables`."""
    return {(m[1], m[2]) for m in re.finditer(r"^table (\w+) (\S+)$", listing, re.M)}


def has_docker_tables(listing: str) -> bool:
    return bool({("ip", DOCKER_TABLE), ("ip6", DOCKER_TABLE)} & tables_in(listing))


def has_own_tables(listing: str, families: Iterable[int]) -> bool:
    return {(FAMILIES[f], TABLE) for f in families} <= tables_in(listing)


def docker_forward_drop(chain_listing: str) -> bool:
    """Whether Docker's `filter-FORWARD` (`nft list chain ip docker-bridges filter-FORWARD`)
    has policy drop: Docker sets it when it enabled IP forwarding itself, and it then drops
    every forwarded packet of pynet's networks whatever pynet's table accepts."""
    return re.search(r"hook forward .*policy drop;", chain_listing) is not None


class NftTables:
    """pynet's tables in the kernel, through the `nft` binary (of the host, or in `netns`)."""

    def __init__(self, netns: str | None, runner: Runner) -> None:
        self.netns = netns
        self._runner = runner

    async def nft(self, *args: str, script: str | None = None) -> str:
        argv = ["nft", *args] if script is None else ["nft", "-f", "-"]
        return await self._runner(in_netns(self.netns, argv), script)

    async def write(self, script: str) -> None:
        await self.nft(script=script)

    async def present(self, families: Iterable[int]) -> bool:
        return has_own_tables(await self.nft("list", "tables"), families)

    async def docker_forward_drop(self) -> list[int]:
        """The families whose Docker filter-FORWARD drops by policy."""
        listing = await self.nft("list", "tables")
        dropping = []
        for family, name in FAMILIES.items():
            if (name, DOCKER_TABLE) in tables_in(listing):
                chain = await self.nft("list", "chain", name, DOCKER_TABLE, "filter-FORWARD")
                if docker_forward_drop(chain):
                    dropping.append(family)
        return dropping
