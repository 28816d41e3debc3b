"""Golden restore text, jump repair, flavour detection and the apply protocol, without root."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace

import pytest

from pynet.drivers.base import PortMap
from pynet.drivers.firewall import (
    JUMPS,
    Firewall,
    NetRules,
    _explain,
    run_iptables,
    detect_flavour,
    jump_fixes,
    teardown_lines,
)
from pynet.store.errors import InvalidRequest, PynetError


def rules(bridge: str = "pnb-a", **kw: object) -> NetRules:
    args: dict[str, object] = dict(
        bridge=bridge,
        subnets4=("10.99.0.0/24",),
        subnets6=(),
        internal=False,
        icc=True,
        masquerade=True,
        ports=(),
    )
    args.update(kw)
    return NetRules(**args)  # type: ignore[arg-type]


def firewall(nets: dict[str, NetRules], **kw: object) -> Firewall:
    fw = Firewall("nft", **kw)  # type: ignore[arg-type]
    fw.desired.update(nets)
    return fw


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def raw(*rules: str) -> str:
    """The raw table section: NOTRACK for traffic that stays within a network."""
    return "*raw\n:PYNET-NOTRACK - [0:0]\n" + "".join(f"-A PYNET-NOTRACK {r}\n" for r in rules) + "COMMIT\n"


EMPTY_NAT = """\
    *nat
    :PYNET-PREROUTING - [0:0]
    :PYNET-OUTPUT - [0:0]
    :PYNET-POSTROUTING - [0:0]
    COMMIT
"""


def own_chains(text: str) -> dict[str, list[str]]:
    """The rules of network n1's own chains (bridge pnb-a) in restore text, by chain; the
    shared chains' jumps to them are the same for every network (test_default_network)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":PYNET-") and line.split()[0].endswith("-pnb-a"):
            out[line[1:].split()[0]] = []
        elif line.startswith("-A ") and line.split()[1] in out:
            chain, rule = line[3:].split(" ", 1)
            out[chain].append(rule)
    return out


# The isolation chain of pnb-a with icc on and no extra bridges.
ISOLATION_A = [
    "-i pnb-a -o pnb-a -j ACCEPT",
    "-i pnb-a -o docker0 -j DROP",
    "-i docker0 -o pnb-a -j DROP",
    "-i pnb-a -o br-+ -j DROP",
    "-i br-+ -o pnb-a -j DROP",
    "-i pnb-a ! -o pnb-a -j PYNET-ISOLATION-2",
]


# -- render -----------------------------------------------------------------------------------


def test_no_networks_leaves_empty_chains() -> None:
    assert (
        Firewall("nft").render(4)
        == golden(
            """
        *filter
        :PYNET-FORWARD - [0:0]
        :PYNET-ISOLATION - [0:0]
        :PYNET-ISOLATION-2 - [0:0]
        COMMIT
        """
        )
        + golden(EMPTY_NAT)
        + raw()
    )


def test_default_network() -> None:
    fw = firewall({"n1": rules()})
    assert fw.render(4) == golden(
        """
        *filter
        :PYNET-FORWARD - [0:0]
        :PYNET-ISOLATION - [0:0]
        :PYNET-ISOLATION-2 - [0:0]
        :PYNET-FORWARD-B13 - [0:0]
        :PYNET-ISOLATION-B13 - [0:0]
        :PYNET-ISOLATION-2-B13 - [0:0]
        :PYNET-I-pnb-a - [0:0]
        :PYNET-F-pnb-a - [0:0]
        -A PYNET-FORWARD -j PYNET-ISOLATION
        -A PYNET-FORWARD -j PYNET-FORWARD-B13
        -A PYNET-ISOLATION -j PYNET-ISOLATION-B13
        -A PYNET-ISOLATION-2 -j PYNET-ISOLATION-2-B13
        -A PYNET-FORWARD-B13 -i pnb-a -j PYNET-F-pnb-a
        -A PYNET-FORWARD-B13 -o pnb-a -j PYNET-F-pnb-a
        -A PYNET-ISOLATION-B13 -i pnb-a -j PYNET-I-pnb-a
        -A PYNET-ISOLATION-B13 -o pnb-a -j PYNET-I-pnb-a
        -A PYNET-ISOLATION-2-B13 -o pnb-a -j DROP
        -A PYNET-I-pnb-a -i pnb-a -o pnb-a -j ACCEPT
        -A PYNET-I-pnb-a -i pnb-a -o docker0 -j DROP
        -A PYNET-I-pnb-a -i docker0 -o pnb-a -j DROP
        -A PYNET-I-pnb-a -i pnb-a -o br-+ -j DROP
        -A PYNET-I-pnb-a -i br-+ -o pnb-a -j DROP
        -A PYNET-I-pnb-a -i pnb-a ! -o pnb-a -j PYNET-ISOLATION-2
        -A PYNET-F-pnb-a -o pnb-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A PYNET-F-pnb-a -i pnb-a ! -o pnb-a -m comment --comment "pynet n1" -j ACCEPT
        COMMIT
        *nat
        :PYNET-PREROUTING - [0:0]
        :PYNET-OUTPUT - [0:0]
        :PYNET-POSTROUTING - [0:0]
        :PYNET-PREROUTING-B13 - [0:0]
        :PYNET-OUTPUT-B13 - [0:0]
        :PYNET-POSTROUTING-B13 - [0:0]
        :PYNET-D-pnb-a - [0:0]
        :PYNET-P-pnb-a - [0:0]
        -A PYNET-PREROUTING -j PYNET-PREROUTING-B13
        -A PYNET-OUTPUT -j PYNET-OUTPUT-B13
        -A PYNET-POSTROUTING -j PYNET-POSTROUTING-B13
        -A PYNET-PREROUTING-B13 -m comment --comment "pynet n1" -j PYNET-D-pnb-a
        -A PYNET-OUTPUT-B13 -m comment --comment "pynet n1" -j PYNET-D-pnb-a
        -A PYNET-POSTROUTING-B13 -m comment --comment "pynet n1" -j PYNET-P-pnb-a
        -A PYNET-P-pnb-a -s 10.99.0.0/24 ! -o pnb-a -m comment --comment "pynet n1" -j MASQUERADE
        COMMIT
        *raw
        :PYNET-NOTRACK - [0:0]
        :PYNET-NOTRACK-B13 - [0:0]
        :PYNET-T-pnb-a - [0:0]
        -A PYNET-NOTRACK -j PYNET-NOTRACK-B13
        -A PYNET-NOTRACK-B13 -i pnb-a -j PYNET-T-pnb-a
        -A PYNET-T-pnb-a -i pnb-a -d 10.99.0.0/24 -m addrtype ! --dst-type LOCAL -j NOTRACK
        COMMIT
        """
    )


def test_internal_network_has_no_egress_nat_or_ports() -> None:
    port = PortMap("tcp", "", 8080, "10.99.0.2", 80)
    fw = firewall({"n1": rules(internal=True, ports=(port,))})
    assert own_chains(fw.render(4)) == {
        "PYNET-I-pnb-a": ISOLATION_A,
        "PYNET-F-pnb-a": [
            '-i pnb-a ! -o pnb-a -m comment --comment "pynet n1" -j DROP',
            "-o pnb-a ! -i pnb-a -j DROP",
        ],
        "PYNET-D-pnb-a": [],
        "PYNET-P-pnb-a": [],
        "PYNET-T-pnb-a": [
            "-i pnb-a -d 10.99.0.0/24 -m addrtype ! --dst-type LOCAL -j NOTRACK",
        ],
    }


def test_icc_off_and_masquerade_off() -> None:
    port = PortMap("udp", "", 5353, "10.99.0.2", 53)
    fw = firewall({"n1": rules(icc=False, masquerade=False, ports=(port,))})
    assert own_chains(fw.render(4)) == {
        "PYNET-I-pnb-a": ISOLATION_A[1:],  # no icc ACCEPT
        "PYNET-F-pnb-a": [
            "-o pnb-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o pnb-a -d 10.99.0.2 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT -j ACCEPT",
            '-i pnb-a ! -o pnb-a -m comment --comment "pynet n1" -j ACCEPT',
            "-i pnb-a -o pnb-a -j DROP",
        ],
        "PYNET-D-pnb-a": [
            '-p udp -m udp --dport 5353 -m comment --comment "pynet n1" -j DNAT --to-destination 10.99.0.2:53',
        ],
        "PYNET-P-pnb-a": [
            "-s 10.99.0.2 -d 10.99.0.2 -p udp -m udp --dport 53 -j MASQUERADE",
            "-o pnb-a -m addrtype --src-type LOCAL -j MASQUERADE",
        ],
        "PYNET-T-pnb-a": [
            "-i pnb-a -s 10.99.0.2 -p udp -m udp --sport 53 -j RETURN",
            "-i pnb-a -d 10.99.0.0/24 -m addrtype ! --dst-type LOCAL -j NOTRACK",
        ],
    }


PORTS = (
    PortMap("tcp", "", 8080, "10.99.0.2", 80),
    PortMap("tcp", "127.0.0.1", 8081, "10.99.0.2", 80),
    PortMap("tcp", "0.0.0.0", 8082, "10.99.0.3", 80),
    PortMap("tcp", "::1", 8083, "10.99.0.2", 80),  # host family differs: skipped
    PortMap("sctp", "::", 9000, "fd00:99::2", 90),
)


def test_ports_v4() -> None:
    fw = firewall({"n1": rules(subnets6=("fd00:99::/64",), ports=PORTS)})
    assert own_chains(fw.render(4)) == {
        "PYNET-I-pnb-a": ISOLATION_A,
        "PYNET-F-pnb-a": [
            "-o pnb-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o pnb-a -d 10.99.0.2 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -j ACCEPT",
            "-o pnb-a -d 10.99.0.3 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -j ACCEPT",
            '-i pnb-a ! -o pnb-a -m comment --comment "pynet n1" -j ACCEPT',
        ],
        "PYNET-D-pnb-a": [
            '-p tcp -m tcp --dport 8080 -m comment --comment "pynet n1" -j DNAT --to-destination 10.99.0.2:80',
            '-d 127.0.0.1 -p tcp -m tcp --dport 8081 -m comment --comment "pynet n1" -j DNAT --to-destination 10.99.0.2:80',
            '-p tcp -m tcp --dport 8082 -m comment --comment "pynet n1" -j DNAT --to-destination 10.99.0.3:80',
        ],
        "PYNET-P-pnb-a": [
            '-s 10.99.0.0/24 ! -o pnb-a -m comment --comment "pynet n1" -j MASQUERADE',
            "-s 10.99.0.2 -d 10.99.0.2 -p tcp -m tcp --dport 80 -j MASQUERADE",
            "-s 10.99.0.3 -d 10.99.0.3 -p tcp -m tcp --dport 80 -j MASQUERADE",
            "-o pnb-a -m addrtype --src-type LOCAL -j MASQUERADE",
        ],
        "PYNET-T-pnb-a": [
            "-i pnb-a -s 10.99.0.2 -p tcp -m tcp --sport 80 -j RETURN",
            "-i pnb-a -s 10.99.0.3 -p tcp -m tcp --sport 80 -j RETURN",
            "-i pnb-a -d 10.99.0.0/24 -m addrtype ! --dst-type LOCAL -j NOTRACK",
        ],
    }


def test_unbridged_network_masquerades_dnat_from_its_subnet_and_tracks_nothing_within() -> None:
    """Macvlan links of a VXLAN device (drivers/vxlan.py): no frame between containers reaches
    the host, so no NOTRACK; a container reaching a published port through the host (its own
    or a neighbour's) is masqueraded, or the neighbour's reply would go to it straight."""
    fw = firewall({"n1": rules(ports=PORTS, bridged=False)})
    chains = own_chains(fw.render(4))
    assert chains["PYNET-P-pnb-a"] == [
        '-s 10.99.0.0/24 ! -o pnb-a -m comment --comment "pynet n1" -j MASQUERADE',
        "-s 10.99.0.0/24 -o pnb-a -m conntrack --ctstate DNAT -j MASQUERADE",
        "-o pnb-a -m addrtype --src-type LOCAL -j MASQUERADE",
    ]
    assert chains["PYNET-T-pnb-a"] == []
    bridged = own_chains(firewall({"n1": rules(ports=PORTS)}).render(4))
    assert {k: v for k, v in chains.items() if k[:8] not in ("PYNET-P-", "PYNET-T-")} == {
        k: v for k, v in bridged.items() if k[:8] not in ("PYNET-P-", "PYNET-T-")
    }
    assert own_chains(firewall({"n1": rules(bridged=False)}).render(4))["PYNET-P-pnb-a"] == [
        '-s 10.99.0.0/24 ! -o pnb-a -m comment --comment "pynet n1" -j MASQUERADE'
    ], "nothing published: nothing to masquerade within"


def test_ports_v6() -> None:
    fw = firewall({"n1": rules(subnets6=("fd00:99::1/64",), ports=PORTS)})
    assert own_chains(fw.render(6)) == {
        "PYNET-I-pnb-a": ISOLATION_A,
        "PYNET-F-pnb-a": [
            "-o pnb-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o pnb-a -d fd00:99::2 -p sctp -m sctp --dport 90 -m conntrack --ctstate DNAT -j ACCEPT",
            '-i pnb-a ! -o pnb-a -m comment --comment "pynet n1" -j ACCEPT',
        ],
        "PYNET-D-pnb-a": [
            '-p sctp -m sctp --dport 9000 -m comment --comment "pynet n1" -j DNAT --to-destination [fd00:99::2]:90',
        ],
        "PYNET-P-pnb-a": [
            '-s fd00:99::/64 ! -o pnb-a -m comment --comment "pynet n1" -j MASQUERADE',
            "-s fd00:99::2 -d fd00:99::2 -p sctp -m sctp --dport 90 -j MASQUERADE",
        ],
        "PYNET-T-pnb-a": [
            "-i pnb-a -s fd00:99::2 -p sctp -m sctp --sport 90 -j RETURN",
            "-i pnb-a -d fd00:99::/64 -m addrtype ! --dst-type LOCAL -j NOTRACK",
        ],
    }


def test_v6_keeps_only_bridge_rules_of_v4_only_networks() -> None:
    fw = firewall({"n1": rules(icc=False)})
    assert own_chains(fw.render(6)) == {
        "PYNET-I-pnb-a": ISOLATION_A[1:],  # no icc ACCEPT
        "PYNET-F-pnb-a": [
            "-i pnb-a -o pnb-a -j DROP",
        ],
        "PYNET-D-pnb-a": [],
        "PYNET-P-pnb-a": [],
        "PYNET-T-pnb-a": [],
    }


def test_ipv6_only_network_has_no_ipv4_rule_at_all() -> None:
    """Docker 28's --ipv4=false: nothing in iptables names its bridge, and ip6tables has all
    its rules; an IPv4 network next to it keeps its own."""
    v6only = rules("pnb-six", subnets4=(), subnets6=("fd00:99::/64",), ipv4=False, ports=PORTS)
    fw = firewall({"n6": v6only, "n4": rules("pnb-four")})
    assert "pnb-six" not in fw.render(4)
    assert "pnb-four" in fw.render(4)
    assert "-s fd00:99::/64 ! -o pnb-six" in fw.render(6)
    assert firewall({"n6": v6only}).render(6) == firewall({"n6": replace(v6only, ipv4=True)}).render(6)
    assert firewall({"n6": v6only}).render(4) == firewall({}).render(4)


def test_two_networks_are_isolated_through_one_chain_and_from_extra_bridges() -> None:
    nets = {"n2": rules("pnb-b", subnets4=("10.98.0.0/24",)), "n1": rules()}
    fw = firewall(nets, other_bridges={"virbr0", "pnb-a"})
    filter_text = fw.render(4).split("COMMIT")[0]
    shared = [line for line in filter_text.splitlines() if line.startswith(("-A PYNET-FORWARD", "-A PYNET-ISOLATION"))]
    assert shared == [  # pnb-b's jumps in bucket 7, pnb-a's in 13: the shared chains hold only buckets
        "-A PYNET-FORWARD -j PYNET-ISOLATION",
        "-A PYNET-FORWARD -j PYNET-FORWARD-B7",
        "-A PYNET-FORWARD -j PYNET-FORWARD-B13",
        "-A PYNET-ISOLATION -j PYNET-ISOLATION-B7",
        "-A PYNET-ISOLATION -j PYNET-ISOLATION-B13",
        "-A PYNET-ISOLATION-2 -j PYNET-ISOLATION-2-B7",
        "-A PYNET-ISOLATION-2 -j PYNET-ISOLATION-2-B13",
        "-A PYNET-FORWARD-B7 -i pnb-b -j PYNET-F-pnb-b",
        "-A PYNET-FORWARD-B7 -o pnb-b -j PYNET-F-pnb-b",
        "-A PYNET-FORWARD-B13 -i pnb-a -j PYNET-F-pnb-a",
        "-A PYNET-FORWARD-B13 -o pnb-a -j PYNET-F-pnb-a",
        "-A PYNET-ISOLATION-B7 -i pnb-b -j PYNET-I-pnb-b",
        "-A PYNET-ISOLATION-B7 -o pnb-b -j PYNET-I-pnb-b",
        "-A PYNET-ISOLATION-B13 -i pnb-a -j PYNET-I-pnb-a",
        "-A PYNET-ISOLATION-B13 -o pnb-a -j PYNET-I-pnb-a",
        "-A PYNET-ISOLATION-2-B7 -o pnb-b -j DROP",
        "-A PYNET-ISOLATION-2-B13 -o pnb-a -j DROP",
    ]
    # The extra bridge pnb-a is pynet's own here: isolated through PYNET-ISOLATION-2, not twice.
    assert own_chains(filter_text)["PYNET-I-pnb-a"] == [
        *ISOLATION_A[:-1],
        "-i pnb-a -o virbr0 -j DROP",
        "-i virbr0 -o pnb-a -j DROP",
        ISOLATION_A[-1],
    ]


def test_comment_key_is_made_safe_to_quote() -> None:
    fw = firewall({'a "b"\n': rules(masquerade=False)})
    assert '--comment "pynet a__b__" -j ACCEPT' in fw.render(4)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"bridge": "a-very-long-bridge"}, "bridge name"),
        ({"bridge": "br0 -j ACCEPT"}, "bridge name"),
        ({"bridge": "br-+"}, "bridge name"),
        ({"subnets4": ("fd00::/64",)}, "IPv4 subnet"),
        ({"subnets6": ("10.0.0.0/8",)}, "IPv6 subnet"),
        ({"subnets4": ("10.0.0.0/33",)}, "IPv4 subnet"),
        ({"ports": (PortMap("icmp", "", 1, "10.99.0.2", 1),)}, "protocol"),
        ({"ports": (PortMap("tcp", "", 0, "10.99.0.2", 1),)}, "host port"),
        ({"ports": (PortMap("tcp", "", 1, "10.99.0.2/32", 1),)}, "container address"),
        ({"ports": (PortMap("tcp", "localhost", 1, "10.99.0.2", 1),)}, "host address"),
    ],
)
def test_bad_rules_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        rules(**kw)


def test_other_bridges_may_be_wildcards_but_not_junk() -> None:
    assert Firewall("nft", other_bridges=["virbr+"]).other_bridges == {"virbr+"}
    with pytest.raises(InvalidRequest):
        Firewall("nft", other_bridges=["a b"])
    with pytest.raises(InvalidRequest, match="must be nft, legacy, iptables or nftables, got 'xtables'"):
        Firewall("xtables")


# -- jumps ------------------------------------------------------------------------------------

FORWARD, PREROUTING = JUMPS[0], JUMPS[1]


def test_jump_in_place_needs_nothing() -> None:
    listing = "-P FORWARD DROP\n-A FORWARD -j PYNET-FORWARD\n-A FORWARD -j DOCKER-USER\n"
    assert jump_fixes(FORWARD, listing) == []


def test_missing_jump_is_inserted_first() -> None:
    assert jump_fixes(FORWARD, "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n") == ["-I FORWARD 1 -j PYNET-FORWARD"]
    assert jump_fixes(PREROUTING, "-P PREROUTING ACCEPT\n") == [
        "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j PYNET-PREROUTING"
    ]


def test_pushed_down_or_doubled_jump_is_moved_back_first() -> None:
    listing = (
        "-P PREROUTING ACCEPT\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j PYNET-PREROUTING\n"
        "-A PREROUTING -j PYNET-PREROUTING\n"
    )
    assert jump_fixes(PREROUTING, listing) == [
        "-D PREROUTING -m addrtype --dst-type LOCAL -j PYNET-PREROUTING",
        "-D PREROUTING -j PYNET-PREROUTING",
        "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j PYNET-PREROUTING",
    ]


def test_teardown_lines_remove_jumps_then_chains() -> None:
    listing = (
        "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"
        "-N DOCKER\n-N PYNET-OUTPUT\n-N PYNET-POSTROUTING\n"
        "-A OUTPUT -m addrtype --dst-type LOCAL -j PYNET-OUTPUT\n"
        "-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER\n"
        '-A PYNET-POSTROUTING -s 10.0.0.0/24 -m comment --comment "pynet x" -j MASQUERADE\n'
    )
    assert teardown_lines("nat", listing) == [
        "-D OUTPUT -m addrtype --dst-type LOCAL -j PYNET-OUTPUT",
        ":PYNET-OUTPUT - [0:0]",
        ":PYNET-POSTROUTING - [0:0]",
        "-X PYNET-OUTPUT",
        "-X PYNET-POSTROUTING",
    ]
    assert teardown_lines("filter", "-P FORWARD DROP\n-N DOCKER-USER\n") == []


# -- flavour detection ------------------------------------------------------------------------

DOCKER_SAVE = "*filter\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n"
RULES_SAVE = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\n-A FORWARD -j DROP\nCOMMIT\n"


DOCKER_NFT = "table ip docker-bridges\ntable ip6 docker-bridges\n"  # `nft list tables` under Docker 29 nftables


class FakeSaves:
    """Stands in for the iptables and nft binaries: answers per binary (None: not installed)
    and records every argv."""

    def __init__(
        self,
        nft: str = "",
        legacy: str = "",
        version: str | None = "iptables v1.8.9 (nf_tables)",
        tables: str | None = "",
    ) -> None:
        self.out = {"iptables-nft-save": nft, "iptables-legacy-save": legacy, "iptables": version, "nft": tables}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(argv)
        binary = next(a for a in argv if a.startswith("iptables") or a == "nft")
        out = self.out[binary]
        return (127, "") if out is None else (0, out)


@pytest.mark.parametrize(
    "saves, expected",
    [
        ({"nft": DOCKER_SAVE, "legacy": RULES_SAVE}, "nft"),
        ({"nft": RULES_SAVE, "legacy": DOCKER_SAVE}, "legacy"),
        ({"nft": DOCKER_SAVE, "legacy": DOCKER_SAVE + RULES_SAVE}, "legacy"),  # both: more rules
        ({"nft": "", "legacy": RULES_SAVE}, "legacy"),
        ({"nft": RULES_SAVE, "legacy": ""}, "nft"),
        ({"version": "iptables v1.8.9 (legacy)"}, "legacy"),  # nothing anywhere: iptables -V
        ({}, "nft"),
        ({"tables": DOCKER_NFT}, "nftables"),  # Docker 29's nftables backend
        # A migration from iptables leaves DOCKER-USER (and its jump) behind: still nftables.
        ({"tables": DOCKER_NFT, "nft": "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n"}, "nftables"),
        ({"tables": DOCKER_NFT, "nft": DOCKER_SAVE}, "nft"),  # Docker's iptables chains win
        ({"version": None}, "nftables"),  # no iptables at all, but nft
        ({"version": None, "tables": None}, "nft"),  # neither: iptables' errors will say what is missing
    ],
)
def test_detect_flavour(saves: dict[str, str], expected: str) -> None:
    run = FakeSaves(**saves)
    assert detect_flavour(run=run) == expected
    assert not any("-t" in argv for argv in run.calls)  # -t instantiates legacy tables


def test_detect_flavour_among_iptables_only_never_asks_nft() -> None:
    run = FakeSaves(tables=DOCKER_NFT)
    assert detect_flavour(run=run, nft=False) == "nft"
    assert not any("nft" in argv for argv in run.calls)


def test_detect_flavour_in_netns() -> None:
    run = FakeSaves(nft=DOCKER_SAVE)
    assert detect_flavour("pnfw-x", run=run) == "nft"
    assert run.calls[0] == ["ip", "netns", "exec", "pnfw-x", "iptables-nft-save"]


# -- apply protocol with a fake runner --------------------------------------------------------


class FakeIptables:
    """An async runner: answers `-t TABLE -S` with the canned listings of that table (keyed
    "table/CHAIN", or "CHAIN" for the filter table) and records restore input."""

    def __init__(self, listings: dict[str, str] | None = None, fail_restore: bool = False) -> None:
        self.listings = listings or {}
        self.fail_restore = fail_restore
        self.restores: list[tuple[str, str]] = []

    async def __call__(self, argv: list[str], stdin: str | None) -> str:
        if argv[0].endswith("-restore"):
            if self.fail_restore:
                raise PynetError("pynet: restore failed")
            self.restores.append((argv[0], stdin or ""))
            return ""
        table = argv[argv.index("-t") + 1]
        return "".join(v for k, v in self.listings.items() if (k.partition("/")[0] if "/" in k else "filter") == table)


async def test_apply_writes_one_restore_per_family_with_jump_fixes() -> None:
    ipt = FakeIptables({"FORWARD": "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"})
    fw = Firewall("legacy", runner=ipt)
    await fw.set("n1", rules())
    assert [binary for binary, _ in ipt.restores] == ["iptables-legacy-restore", "ip6tables-legacy-restore"]
    v4 = ipt.restores[0][1]
    assert v4.startswith(fw.render(4).split("COMMIT")[0])
    assert "-I FORWARD 1 -j PYNET-FORWARD\nCOMMIT\n*nat" in v4
    assert "-I POSTROUTING 1 -j PYNET-POSTROUTING\nCOMMIT\n" in v4


async def test_on_a_docker_host_the_filter_jump_is_in_docker_user() -> None:
    docker = {"DOCKER-USER": "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n", "FORWARD": "-A FORWARD -j DOCKER-USER\n"}
    ipt = FakeIptables(docker)
    fw = Firewall("nft", runner=ipt)
    await fw.set("n1", rules())
    v4 = ipt.restores[0][1]
    assert "-I DOCKER-USER 1 -j PYNET-FORWARD\n" in v4
    assert "-I FORWARD 1 -j PYNET-FORWARD" not in v4


async def test_a_forward_jump_from_before_docker_moves_to_docker_user() -> None:
    listings = {
        "DOCKER-USER": "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
        "FORWARD": "-A FORWARD -j DOCKER-USER\n-A FORWARD -j PYNET-FORWARD\n",
    }
    ipt = FakeIptables(listings)
    fw = Firewall("nft", runner=ipt)
    await fw.apply()
    v4 = ipt.restores[0][1]
    assert "-D FORWARD -j PYNET-FORWARD\n" in v4 and "-I DOCKER-USER 1 -j PYNET-FORWARD\n" in v4


async def test_unchanged_rules_are_not_rewritten() -> None:
    ipt = FakeIptables()
    fw = Firewall("nft", runner=ipt)
    await fw.set("n1", rules())
    await fw.set("n1", rules())
    assert len(ipt.restores) == 2, "one restore per family, not two"
    await fw.set("n1", rules(icc=False))
    assert len(ipt.restores) == 4
    await fw.teardown()
    ipt.restores.clear()
    await fw.set("n1", rules(icc=False))
    assert len(ipt.restores) == 2, "after teardown the same rules are applied again"


async def test_ensure_jumps_only_acts_while_installed_and_when_needed() -> None:
    ok = {f"{j.table}/{j.chain}": f"-A {j.chain} {j.spec()}\n" for j in JUMPS}
    ipt = FakeIptables(ok)
    fw = Firewall("nft", runner=ipt)
    assert await fw.ensure_jumps() is False  # nothing installed yet: must not create chains
    await fw.apply()
    ipt.restores.clear()
    assert await fw.ensure_jumps() is False
    assert ipt.restores == []
    ipt.listings["filter/FORWARD"] = "-A FORWARD -j DOCKER-USER\n" + ok["filter/FORWARD"]
    assert await fw.ensure_jumps() is True
    assert len(ipt.restores) == 2
    await fw.teardown()
    assert await fw.ensure_jumps() is False


async def test_failed_apply_keeps_previous_desired_state() -> None:
    fw = Firewall("nft", runner=FakeIptables())
    await fw.set("n1", rules())
    fw._runner = FakeIptables(fail_restore=True)
    with pytest.raises(PynetError):
        await fw.set("n1", rules(icc=False))
    with pytest.raises(PynetError):
        await fw.set("n2", rules("pnb-b"))
    with pytest.raises(PynetError):
        await fw.remove("n1")
    assert fw.desired == {"n1": rules()}


async def test_failing_command_reports_stderr() -> None:
    with pytest.raises(PynetError, match="cannot run no-such-binary-pnfw"):
        await run_iptables(["no-such-binary-pnfw"])
    with pytest.raises(PynetError, match="failed: boom"):
        await run_iptables([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert await run_iptables([sys.executable, "-c", "print(input())"], "fed") == "fed\n"


def test_explain_names_the_failing_restore_line() -> None:
    stderr = (
        "iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\n"
        "Error occurred at line: 2\nTry `iptables-nft-restore -h' for more information.\n"
    )
    assert _explain(stderr, "*filter\n-A X -j NOPE\nCOMMIT\n") == (
        "iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist "
        "Error occurred at line: 2 (line 2: -A X -j NOPE)"
    )
