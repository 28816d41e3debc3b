"""The nftables backend without root: golden `nft -f -` text, the translation of every rule the
iptables side writes, and the apply protocol (one `nft -f -` per change) with a fake runner."""

from __future__ import annotations

import itertools
import re
import textwrap

import pytest

from pynet.drivers.base import PortMap
from pynet.drivers.firewall import Firewall, NetRules, chain_rules, written
from pynet.drivers.nftables import (
    Untranslatable,
    docker_forward_drop,
    has_docker_tables,
    has_own_tables,
    teardown_script,
    translate,
)
from pynet.plugin.ops.iptables import Iptables
from pynet.store.errors import PynetError
from tests.unit.test_firewall import rules
from tests.unit.test_firewall_update import chains_of, net, random_changes

PORT = PortMap("tcp", "", 8080, "10.99.0.2", 80)


def nft_firewall(nets: dict[str, NetRules], **kw: object) -> Firewall:
    fw = Firewall("nftables", families=(4,), **kw)  # type: ignore[arg-type]
    fw.desired.update(nets)
    return fw


DROP_TABLES = "table ip pynet {}\ndelete table ip pynet\n"


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n").replace("    ", "\t")


BASE_CHAINS = """
    table ip pynet {
        chain filter-FORWARD {
            type filter hook forward priority 0; policy accept;
            jump PYNET-FORWARD
        }
        chain nat-PREROUTING {
            type nat hook prerouting priority -100; policy accept;
            fib daddr type local jump PYNET-PREROUTING
        }
        chain nat-OUTPUT {
            type nat hook output priority -100; policy accept;
            fib daddr type local jump PYNET-OUTPUT
        }
        chain nat-POSTROUTING {
            type nat hook postrouting priority 100; policy accept;
            jump PYNET-POSTROUTING
        }
        chain raw-PREROUTING {
            type filter hook prerouting priority -300; policy accept;
            jump PYNET-NOTRACK
        }
"""


def test_no_networks_gives_base_chains_and_empty_pynet_chains() -> None:
    assert nft_firewall({}).render_nft() == DROP_TABLES + golden(
        BASE_CHAINS
        + """\
        chain PYNET-FORWARD {
        }
        chain PYNET-ISOLATION {
        }
        chain PYNET-ISOLATION-2 {
        }
        chain PYNET-PREROUTING {
        }
        chain PYNET-OUTPUT {
        }
        chain PYNET-POSTROUTING {
        }
        chain PYNET-NOTRACK {
        }
    }
    """
    )


def test_network_with_a_published_port() -> None:
    """The iptables backend's chains, the network's own ones reached by jumps as there, and
    closed: its forwarding chain ends with a drop of whatever came in unaccepted."""
    assert nft_firewall({"n1": rules(ports=(PORT,))}).render_nft() == DROP_TABLES + golden(
        BASE_CHAINS
        + """\
        chain PYNET-FORWARD {
            jump PYNET-ISOLATION
            jump PYNET-FORWARD-B13
        }
        chain PYNET-ISOLATION {
            jump PYNET-ISOLATION-B13
        }
        chain PYNET-ISOLATION-2 {
            jump PYNET-ISOLATION-2-B13
        }
        chain PYNET-FORWARD-B13 {
            iifname "pnb-a" jump PYNET-F-pnb-a
            oifname "pnb-a" jump PYNET-F-pnb-a
        }
        chain PYNET-ISOLATION-B13 {
            iifname "pnb-a" jump PYNET-I-pnb-a
            oifname "pnb-a" jump PYNET-I-pnb-a
        }
        chain PYNET-ISOLATION-2-B13 {
            oifname "pnb-a" drop
        }
        chain PYNET-I-pnb-a {
            iifname "pnb-a" oifname "pnb-a" accept
            iifname "pnb-a" oifname "docker0" drop
            iifname "docker0" oifname "pnb-a" drop
            iifname "pnb-a" oifname "br-*" drop
            iifname "br-*" oifname "pnb-a" drop
            iifname "pnb-a" oifname != "pnb-a" jump PYNET-ISOLATION-2
        }
        chain PYNET-F-pnb-a {
            oifname "pnb-a" ct state related,established accept
            oifname "pnb-a" ip daddr 10.99.0.2 tcp dport 80 ct status dnat accept
            iifname "pnb-a" oifname != "pnb-a" accept comment "pynet n1"
            oifname "pnb-a" drop
        }
        chain PYNET-PREROUTING {
            jump PYNET-PREROUTING-B13
        }
        chain PYNET-OUTPUT {
            jump PYNET-OUTPUT-B13
        }
        chain PYNET-POSTROUTING {
            jump PYNET-POSTROUTING-B13
        }
        chain PYNET-PREROUTING-B13 {
            jump PYNET-D-pnb-a comment "pynet n1"
        }
        chain PYNET-OUTPUT-B13 {
            jump PYNET-D-pnb-a comment "pynet n1"
        }
        chain PYNET-POSTROUTING-B13 {
            jump PYNET-P-pnb-a comment "pynet n1"
        }
        chain PYNET-D-pnb-a {
            tcp dport 8080 dnat to 10.99.0.2:80 comment "pynet n1"
        }
        chain PYNET-P-pnb-a {
            ip saddr 10.99.0.0/24 oifname != "pnb-a" masquerade comment "pynet n1"
            ip saddr 10.99.0.2 ip daddr 10.99.0.2 tcp dport 80 masquerade
            oifname "pnb-a" fib saddr type local masquerade
        }
        chain PYNET-NOTRACK {
            jump PYNET-NOTRACK-B13
        }
        chain PYNET-NOTRACK-B13 {
            iifname "pnb-a" jump PYNET-T-pnb-a
        }
        chain PYNET-T-pnb-a {
            iifname "pnb-a" ip saddr 10.99.0.2 tcp sport 80 return
            iifname "pnb-a" ip daddr 10.99.0.0/24 fib daddr type != local notrack
        }
    }
    """
    )


def _chain(text: str, name: str) -> list[str]:
    return text.partition(f"chain {name} {{\n")[2].partition("\t}")[0].strip().split("\n\t\t")


def test_internal_network_without_icc_in_ip6() -> None:
    fw = Firewall("nftables", families=(6,))
    fw.desired["n2"] = rules("pnb-b", subnets4=(), subnets6=("fd00:98::/64",), internal=True, icc=False)
    text = fw.render_nft()
    assert text.startswith("table ip6 pynet {}\ndelete table ip6 pynet\ntable ip6 pynet {\n")
    assert _chain(text, "PYNET-F-pnb-b") == [  # internal: already closed, no drop added
        'iifname "pnb-b" oifname != "pnb-b" drop comment "pynet n2"',
        'oifname "pnb-b" iifname != "pnb-b" drop',
        'iifname "pnb-b" oifname "pnb-b" drop',
    ]
    assert "masquerade" not in text and "dnat" not in text


def test_every_network_is_closed_in_each_family_it_has() -> None:
    """A default IPv4-only network is absent from `ip6 pynet`, as Docker's is from its ip6
    tables; one with icc off is closed in ip6 too (its containers' link-local IPv6 crosses the
    bridge); an IPv6-only one is absent from `ip pynet`, as from iptables."""
    v6only = rules("pnb-six", subnets4=(), subnets6=("fd00:97::/64",), ipv4=False, icc=False)
    fw = Firewall("nftables")
    fw.desired.update({"n4": rules(), "n4c": rules("pnb-c", icc=False), "n6": v6only})
    ip, _, ip6 = fw.render_nft().partition("table ip6 pynet {\n")
    assert _chain(ip, "PYNET-F-pnb-a")[-1] == 'oifname "pnb-a" drop'
    assert "pnb-a" not in ip6
    assert _chain(ip, "PYNET-F-pnb-c")[-1] == _chain(ip6, "PYNET-F-pnb-c")[-1] == 'oifname "pnb-c" drop'
    assert _chain(ip6, "PYNET-F-pnb-six")[-2:] == ['iifname "pnb-six" oifname "pnb-six" drop', 'oifname "pnb-six" drop']
    assert "pnb-six" not in ip


def test_both_backends_write_the_same_chains() -> None:
    """Chain for chain and rule for rule, nftables writes what the iptables restore writes,
    plus only the closing drop per network: the two can never disagree on what is allowed."""
    nets = {f"n{i}": rules(f"pnb-{i}", subnets4=(f"10.{i}.0.0/24",), internal=i == 2, ports=(PORT,)) for i in range(4)}
    ipt, nft = Firewall("nft", families=(4,)), nft_firewall(nets, dns_address="169.254.53.53")
    ipt.desired.update(nets)
    ipt.dns_address = nft.dns_address
    restore = [line.split(" ", 2) for line in ipt.render(4).splitlines() if line.startswith("-A ")]
    want: dict[str, list[str]] = {}
    for _, chain, rule in restore:
        want.setdefault(chain, []).append(translate(rule, 4))
    for i in (0, 1, 3):
        want[f"PYNET-F-pnb-{i}"].append(f'oifname "pnb-{i}" drop')
    text = nft.render_nft()
    got = {name: _chain(text, name) for name in re.findall(r"chain (PYNET-\S+) \{", text)}
    assert got == {name: want.get(name, [""]) for name in got} and set(want) <= set(got)


@pytest.mark.parametrize(
    ("rule", "family", "nft"),
    [
        ("-i a ! -o b -j DROP", 4, 'iifname "a" oifname != "b" drop'),
        ("-o a ! -i br-+ -j ACCEPT", 4, 'oifname "a" iifname != "br-*" accept'),
        ("-s fd00::/64 -d fd00::2 -j MASQUERADE", 6, "ip6 saddr fd00::/64 ip6 daddr fd00::2 masquerade"),
        ("-p udp -m udp --sport 53 -j RETURN", 4, "udp sport 53 return"),
        ("-p sctp -m sctp --dport 9 -j ACCEPT", 4, "sctp dport 9 accept"),
        ("-p udp -j DROP", 4, "meta l4proto udp drop"),
        ("-m addrtype ! --dst-type LOCAL -j NOTRACK", 4, "fib daddr type != local notrack"),
        ("-m conntrack --ctstate DNAT -j ACCEPT", 4, "ct status dnat accept"),
        ("-s 10.0.0.0/24 -o a -m conntrack --ctstate DNAT -j MASQUERADE", 4, 'ip saddr 10.0.0.0/24 oifname "a" ct status dnat masquerade'),
        (
            '-m comment --comment "pynet x y" -j DNAT --to-destination [fd00::2]:80',
            6,
            'dnat to [fd00::2]:80 comment "pynet x y"',
        ),
    ],
)
def test_translate(rule: str, family: int, nft: str) -> None:
    assert translate(rule, family) == nft


@pytest.mark.parametrize(
    "rule", ["-m mark --mark 1 -j ACCEPT", "-j LOG", "-i a", "-i", "--foo -j DROP", "-m addrtype --limit 1 -j DROP"]
)
def test_a_rule_without_nft_form_is_refused_not_guessed(rule: str) -> None:
    with pytest.raises(Untranslatable):
        translate(rule, 4)


def test_every_rule_the_iptables_side_writes_translates() -> None:
    """All combinations of a network's switches, two networks, ports of each family and
    protocol, on a host and on 127.0.0.1: nothing the iptables backend writes lacks a form."""
    ports = (PORT, PortMap("udp", "127.0.0.1", 53, "10.99.0.2", 53), PortMap("sctp", "::", 9, "fd00:99::2", 9))
    for internal, icc, masquerade in itertools.product((False, True), repeat=3):
        a = rules(subnets6=("fd00:99::/64",), internal=internal, icc=icc, masquerade=masquerade, ports=ports)
        nets = [("a", a), ("b", rules("pnb-b", subnets4=("10.98.0.0/24",)))]
        for family in (4, 6):
            w = written(family, nets, ("docker0", "br-+", "virbr+"), "169.254.53.53", closed=True)
            for chains in chain_rules(w, "169.254.53.53").values():
                for rule in (rule for rules in chains.values() for rule in rules):
                    assert translate(rule, family)


def test_listings() -> None:
    assert has_docker_tables("table ip filter\ntable ip6 docker-bridges\n")
    assert not has_docker_tables("table inet docker-bridges-x\n")
    assert has_own_tables("table ip pynet\ntable ip6 pynet\n", (4, 6))
    assert not has_own_tables("table ip pynet\n", (4, 6))
    chain = "table ip docker-bridges {\n\tchain filter-FORWARD {\n\t\ttype filter hook forward priority filter; "
    chain += "policy %s;\n"
    assert docker_forward_drop(chain % "drop") and not docker_forward_drop(chain % "accept")


# -- apply protocol with a fake runner --------------------------------------------------------


class FakeNft:
    """An async runner standing in for `nft`: records `-f -` scripts, answers `list tables`."""

    def __init__(self, tables: str = "", fail: bool = False) -> None:
        self.tables = tables
        self.fail = fail
        self.scripts: list[str] = []
        self.calls: list[list[str]] = []

    async def __call__(self, argv: list[str], stdin: str | None) -> str:
        self.calls.append(argv)
        argv = argv[argv.index("nft") :]
        if argv == ["nft", "-f", "-"]:
            if self.fail:
                raise PynetError("pynet: nft -f - failed: boom")
            self.scripts.append(stdin or "")
            return ""
        if argv[1:] == ["list", "tables"]:
            return self.tables
        raise AssertionError(f"unexpected {argv}")


async def test_each_change_is_one_nft_transaction_and_no_iptables_at_all() -> None:
    nft = FakeNft()
    fw = Firewall("nftables", runner=nft)
    await fw.set("n1", rules())
    await fw.set("n1", rules())  # unchanged: not rewritten
    await fw.set("n2", rules("pnb-b"))
    await fw.remove("n1")
    assert len(nft.scripts) == 3
    assert all(argv[0] == "nft" for argv in nft.calls)
    assert nft.scripts[0].startswith(  # the first write replaces the tables whole
        "table ip pynet {}\ndelete table ip pynet\ntable ip6 pynet {}\ndelete table ip6 pynet\n"
    )
    assert "delete table" not in nft.scripts[1] + nft.scripts[2], "later ones change chains"
    assert "delete chain ip pynet PYNET-F-pnb-a" in nft.scripts[2] and "pnb-b" not in nft.scripts[2]


def applied(tables: dict[int, dict[str, list[str]]], script: str) -> None:
    """`nft -f -` of an update script, on a model of pynet's chains (translated rules)."""
    family = {"ip": 4, "ip6": 6}
    for line in script.splitlines():
        verb, kind, fam, table, name, *rule = line.split(" ", 5)
        chains = tables[family[fam]]
        assert table == "pynet"
        if (verb, kind) == ("add", "chain"):
            assert name not in chains, line
            chains[name] = []
        elif (verb, kind) == ("flush", "chain"):
            chains[name].clear()
        elif (verb, kind) == ("add", "rule"):
            chains[name].append(rule[0])
        else:
            assert (verb, kind) == ("delete", "chain"), line
            del chains[name]


def translated(fw: Firewall) -> dict[int, dict[str, list[str]]]:
    return {
        f: {c: [translate(r, f) for r in rules] for c, rules in chains.items()}
        for f, chains in fw._nft_desired()[1].items()
    }


async def test_changes_leave_the_chains_a_whole_write_makes() -> None:
    nft = FakeNft()
    fw = Firewall("nftables", runner=nft)
    await fw.apply()
    model = translated(fw)

    def check() -> None:
        if len(nft.scripts) > 1:
            applied(model, nft.scripts.pop())
        assert model == translated(fw)

    await random_changes(fw, 7, 120, check)
    assert len(nft.scripts) == 1, "only the first apply wrote the tables whole"


async def test_a_delete_at_250_networks_changes_only_the_networks_chains_and_buckets() -> None:
    nft = FakeNft()
    fw = Firewall("nftables", runner=nft)
    fw.stage({f"n{i}": net(i) for i in range(250)})
    await fw.apply()
    await fw.remove("n7")
    named = {line.split()[4] for line in nft.scripts[-1].splitlines()}
    assert named and named <= chains_of("pnb-7"), named
    # its buckets rewritten, about 2 * 250 / 16 rules each: not the tables' 15,000 lines
    assert 20 * len(nft.scripts[-1].splitlines()) < len(fw.render_nft().splitlines())


async def test_a_failed_change_is_followed_by_a_whole_write() -> None:
    nft = FakeNft()
    fw = Firewall("nftables", runner=nft)
    await fw.set("n1", rules())
    nft.fail = True
    with pytest.raises(PynetError):
        await fw.set("n2", rules("pnb-b"))
    nft.fail = False
    await fw.set("n2", rules("pnb-b"))
    assert nft.scripts[-1] == fw.render_nft(), "what the kernel holds was unknown: the tables go whole"
    await fw.remove("n2")
    assert "delete table" not in nft.scripts[-1]


async def test_ensure_rewrites_only_missing_tables_and_teardown_drops_exactly_pynets() -> None:
    nft = FakeNft()
    fw = Firewall("nftables", runner=nft, netns="pnf-x")
    assert await fw.ensure_jumps() is False  # nothing installed yet
    await fw.set("n1", rules())
    nft.tables = "table ip docker-bridges\ntable ip pynet\ntable ip6 pynet\n"
    assert await fw.ensure_jumps() is False
    nft.tables = "table ip docker-bridges\ntable ip6 pynet\n"  # someone flushed ours
    assert await fw.ensure_jumps() is True
    assert nft.scripts[-1] == fw.render_nft()
    await fw.teardown()
    assert (
        nft.scripts[-1]
        == teardown_script((4, 6))
        == ("table ip pynet {}\ndelete table ip pynet\ntable ip6 pynet {}\ndelete table ip6 pynet\n")
    )
    assert "docker-bridges" not in "".join(nft.scripts)
    assert nft.calls[0][:5] == ["ip", "netns", "exec", "pnf-x", "nft"]
    assert await fw.ensure_jumps() is False


async def test_a_failed_transaction_keeps_the_previous_desired_state() -> None:
    fw = Firewall("nftables", runner=FakeNft())
    await fw.set("n1", rules())
    fw._runner = FakeNft(fail=True)
    with pytest.raises(PynetError, match="boom"):
        await fw.set("n2", rules("pnb-b"))
    assert fw.desired == {"n1": rules()}


async def test_gc_finds_no_rules_to_collect_in_pynets_tables() -> None:
    """They hold only `desired` and go whole: gc must not read them as iptables chains."""
    nft = FakeNft()
    assert await Iptables(lambda: "nftables", runner=nft).pynet_rules() == []
    assert nft.calls == []
