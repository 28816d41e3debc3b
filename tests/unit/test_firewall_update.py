"""A change of one network rewrites that network's rules only, against a model of the kernel's
chains: the restore does not grow with the number of networks, and the chains stay what a
full rewrite would make (issue 12: every create used to rewrite every chain, with a DROP per
pair of networks)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from pynet.drivers.base import PortMap
from pynet.drivers.firewall import BUCKETS, SHARED_OF, TABLES, Firewall, NetRules, bucket, chain_rules
from pynet.store.errors import PynetError

BUILT_IN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}


class Kernel:
    """iptables-restore --noflush and `-t TABLE -S` over chains held in memory, one model per
    binary (family); a restore that fails changes nothing, as a failed commit does."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, list[str]]]] = {}
        self.restores: list[tuple[str, str]] = []
        self.fail_next = False

    def chains(self, binary: str) -> dict[str, dict[str, list[str]]]:
        family = binary.split("-")[0]
        return self.tables.setdefault(family, {t: {c: [] for c in BUILT_IN[t]} for t in TABLES})

    async def __call__(self, argv: list[str], stdin: str | None) -> str:
        binary = argv[0]
        if binary.endswith("-restore"):
            self.restores.append((binary, stdin or ""))
            if self.fail_next:
                self.fail_next = False
                raise PynetError("pynet: restore failed")
            self._restore(self.chains(binary), stdin or "")
            return ""
        table = self.chains(binary)[argv[argv.index("-t") + 1]]
        return "".join(f"-N {c}\n" for c in table if c not in sum(BUILT_IN.values(), ())) + "".join(
            f"-A {c} {r}\n" for c, rules in table.items() for r in rules
        )

    @staticmethod
    def _restore(tables: dict[str, dict[str, list[str]]], text: str) -> None:
        work = {t: {c: list(r) for c, r in chains.items()} for t, chains in tables.items()}
        chains: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("*"):
                chains = work[line[1:]]
            elif line.startswith(":"):
                chains[line[1:].split()[0]] = []
            elif line == "COMMIT":
                continue
            else:
                op, chain, rule = [*line.split(maxsplit=2), ""][:3]
                if chain not in chains:
                    raise PynetError(f"pynet: no chain {chain}")
                if op == "-X":
                    del chains[chain]
                elif op == "-A":
                    chains[chain].append(rule)
                elif op == "-I":
                    at, _, rest = rule.partition(" ")
                    chains[chain].insert(int(at) - 1, rest) if at.isdigit() else chains[chain].insert(0, rule)
                elif op == "-D":
                    if rule not in chains[chain]:
                        raise PynetError(f"pynet: {line}: no such rule")
                    chains[chain].remove(rule)
        tables.update(work)


def net(i: int, rng: random.Random | None = None) -> NetRules:
    rng = rng or random.Random(i)
    ports = tuple(PortMap("tcp", "", 20000 + i * 10 + p, f"10.{i}.0.{p + 2}", 80) for p in range(rng.randrange(3)))
    return NetRules(
        bridge=f"pnb-{i}",
        subnets4=(f"10.{i}.0.0/24",),
        subnets6=(f"fd00:{i}::/64",) if rng.random() < 0.3 else (),
        internal=rng.random() < 0.2,
        icc=rng.random() < 0.7,
        masquerade=rng.random() < 0.8,
        ports=ports,
    )


def matches_full_render(fw: Firewall, kernel: Kernel) -> None:
    """The kernel holds exactly the chains a full rewrite makes: each network's own chains
    rule for rule, each shared chain its head first, then jumps to its buckets in use in any
    order, and each bucket its networks' jumps in any order."""
    for family, binary in ((4, "iptables-nft"), (6, "ip6tables-nft")):
        w = fw._desired(family)
        own = {chain for net in w.nets.values() for _, chain, _ in net.chains}
        for table, chains in chain_rules(w, fw.dns_address).items():
            held = {c: r for c, r in kernel.chains(binary)[table].items() if c.startswith("PYNET-")}
            assert set(held) == set(chains), (family, table)
            for chain, rules in chains.items():
                head = len(rules) if chain in own else len(w.heads.get(chain, ()))
                assert held[chain][:head] == list(rules[:head]), (family, chain)
                assert sorted(held[chain][head:]) == sorted(rules[head:]), (family, chain)


async def filled(n: int) -> tuple[Firewall, Kernel]:
    kernel = Kernel()
    fw = Firewall("nft", runner=kernel)
    for i in range(n):
        await fw.set(f"n{i}", net(i))
    kernel.restores.clear()
    return fw, kernel


# The lines that make or delete a bucket chain and the shared chain's jump to it.
BUCKET_LINE = re.compile(r"(:|-X |-[AD] PYNET-[A-Z0-9-]+ -j )PYNET-[A-Z0-9-]+-B\d+( - \[0:0\])?")


def restore_lines(kernel: Kernel) -> list[str]:
    return [line for _, text in kernel.restores for line in text.splitlines()]


def chains_of(*bridges: str) -> set[str]:
    """The networks' own chains and their buckets."""
    own = {f"PYNET-{c}-{b}" for c in "IFDPT" for b in bridges}
    return own | {bucket(shared, b) for shared in set(SHARED_OF.values()) for b in bridges}


@pytest.mark.parametrize("change", ["create", "publish", "remove"])
async def test_one_change_writes_the_same_few_lines_with_5_or_50_networks(change: str) -> None:
    """Besides making its bucket (its first network) or deleting it (its last), a change
    writes the same lines at 5 networks as at 50, and only in the network's chains."""
    counts = []
    for n in (5, 50):
        fw, kernel = await filled(n)
        if change == "create":
            changed = [net(99)]
            await fw.set("new", net(99))
        elif change == "publish":
            changed = [net(3), replace(net(3), internal=False, ports=(PortMap("tcp", "", 30000, "10.3.0.9", 80),))]
            await fw.set("n3", changed[1])
        else:
            changed = [net(3)]
            await fw.remove("n3")
        families = [f for f in (4, 6) if any(r.in_family(f) for r in changed)]
        assert [binary.split("-")[0] for binary, _ in kernel.restores] == [
            {4: "iptables", 6: "ip6tables"}[f] for f in families
        ], "one restore per family the network is in"
        lines = restore_lines(kernel)
        flushed = {line.split()[0][1:] for line in lines if line[0] == ":"}
        assert flushed <= chains_of("pnb-3", "pnb-99"), "only the network's own chains and buckets"
        assert set(re.findall(r"pnb-\d+", "".join(lines))) <= {"pnb-3", "pnb-99"}, "no other network's rule"
        counts.append(len([line for line in lines if not BUCKET_LINE.fullmatch(line)]))
        matches_full_render(fw, kernel)
    assert counts[0] == counts[1], f"restore lines for one {change} at 5 and 50 networks: {counts}"


async def test_a_delete_at_250_networks_reads_one_bucket_of_each_shared_chain() -> None:
    """iptables-nft reads back every rule of the chain a `-D` names: a network's jumps sit in
    buckets of about 2N/BUCKETS rules, and the shared chains hold a jump per bucket."""
    fw, kernel = await filled(250)
    held = kernel.chains("iptables-nft")
    for table, chains in held.items():
        for chain, rules in chains.items():
            if chain in SHARED_OF.values():
                assert len(rules) <= BUCKETS + 1, (table, chain)
            elif chain in SHARED_OF:
                assert len(rules) <= 3 * 2 * 250 // BUCKETS, (table, chain)  # crc32 spreads the names
    await fw.remove("n7")
    deleted = {line.split()[1] for line in restore_lines(kernel) if line.startswith("-D ")}
    assert deleted and deleted <= chains_of("pnb-7") | set(SHARED_OF.values())
    assert not deleted & set(SHARED_OF.values()), "n7 shares its buckets with other networks: they stay"
    matches_full_render(fw, kernel)


async def test_the_last_network_of_a_bucket_takes_the_bucket_with_it() -> None:
    fw, kernel = await filled(1)
    await fw.set("n1", net(1))
    await fw.remove("n0")
    lines = restore_lines(kernel)
    assert f"-D PYNET-FORWARD -j {bucket('PYNET-FORWARD', 'pnb-0')}" in lines
    assert f"-X {bucket('PYNET-ISOLATION-2', 'pnb-0')}" in lines
    await fw.remove("n1")
    assert not [c for t in kernel.chains("iptables-nft").values() for c in t if c in SHARED_OF], "no bucket left"
    matches_full_render(fw, kernel)


async def test_rules_per_network_do_not_grow_with_the_networks() -> None:
    """Every forwarded packet walks PYNET-ISOLATION: a DROP per pair of networks was 2N(N-1)."""
    _, kernel = await filled(50)
    rules = sum(len(r) for c, r in kernel.chains("iptables-nft")["filter"].items() if c.startswith("PYNET-"))
    assert rules < 50 * 15, rules


async def random_changes(fw: Firewall, seed: int, rounds: int, check: Callable[[], None]) -> None:
    """Networks of 12 made, changed and deleted at random, CHECK after each change."""
    rng = random.Random(seed)
    for _ in range(rounds):
        i = rng.randrange(12)
        if rng.random() < 0.3:
            await fw.remove(f"n{i}")
        else:
            await fw.set(f"n{i}", net(i, rng))
        check()


async def test_random_changes_keep_the_chains_as_a_full_rewrite_makes_them() -> None:
    kernel = Kernel()
    fw = Firewall("nft", other_bridges={"virbr0"}, runner=kernel)
    await fw.apply()  # at start, as the daemon does
    await random_changes(fw, 12, 150, lambda: matches_full_render(fw, kernel))
    full = [text for _, text in kernel.restores if ":PYNET-FORWARD - [0:0]" in text]
    assert len(full) == 2, "only the apply at start rewrote the chains (one restore per family)"


async def test_a_rule_gone_behind_pynets_back_makes_the_next_change_rewrite_everything() -> None:
    fw, kernel = await filled(5)
    kernel.chains("iptables-nft")["filter"]["PYNET-FORWARD"].clear()  # someone's `iptables -F PYNET-FORWARD`
    kernel.restores.clear()
    await fw.remove("n2")
    # the families' restores overlap: the IPv4 ones in order, whatever ran between them
    ipv4 = [text for binary, text in kernel.restores if binary.startswith("iptables-")]
    assert len(ipv4) == 2 and ":PYNET-FORWARD - [0:0]" not in ipv4[0], "the update, which fails"
    assert ":PYNET-FORWARD - [0:0]" in ipv4[1], "then a full rewrite"
    matches_full_render(fw, kernel)


async def test_after_a_failed_restore_the_next_change_rewrites_everything() -> None:
    fw, kernel = await filled(5)
    kernel.fail_next = True
    await fw.set("n7", net(7))  # the update fails, the full rewrite that follows it works
    matches_full_render(fw, kernel)
    kernel.restores.clear()
    await fw.set("n8", net(8))
    assert not any(":PYNET-FORWARD - [0:0]" in text for _, text in kernel.restores), "no full rewrite"
    matches_full_render(fw, kernel)


async def test_a_full_rewrite_deletes_the_chains_of_networks_that_are_gone() -> None:
    fw, kernel = await filled(3)
    restarted = Firewall("nft", runner=kernel)  # pynet restarted after n2 went, as reconcile finds it
    restarted.stage({k: v for k, v in fw.desired.items() if k != "n2"})
    await restarted.apply()
    assert not [c for c in kernel.chains("iptables-nft")["filter"] if c.endswith("-pnb-2")]
    matches_full_render(restarted, kernel)


async def test_a_renamed_bridge_moves_the_network_to_its_new_bucket() -> None:
    fw, kernel = await filled(3)
    used = {bucket("PYNET-FORWARD", f"pnb-{i}") for i in range(3)}
    name = next(f"pnx-{i}" for i in range(100) if bucket("PYNET-FORWARD", f"pnx-{i}") not in used)
    await fw.set("n0", replace(net(0), bridge=name))
    lines = restore_lines(kernel)
    assert f"-X {bucket('PYNET-FORWARD', 'pnb-0')}" in lines, "pnb-0 was alone in its bucket"
    assert f"-A PYNET-FORWARD -j {bucket('PYNET-FORWARD', name)}" in lines
    matches_full_render(fw, kernel)
