"""pynet's nftables backend, proven with real traffic on a host where iptables is not used at all.

The namespaces are tests/kernel/test_firewall.py's (two pynet bridges, three containers, an
outside peer that cannot route back to the containers), but the host's firewall is what Docker
29 makes with `"firewall-backend": "nftables"` and nothing else: no iptables or xtables table
exists (each test checks none appears), and `nft list ruleset` holds Docker's tables, copied
below from moby's nftabler (daemon/libnetwork/drivers/bridge/internal/nftabler/nftabler.go and
network.go: base chains, verdict maps, the default bridge's chains), and pynet's own tables.
"""

from __future__ import annotations

import functools
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pynet.drivers.firewall import Firewall, bucket, detect_flavour
from pynet.drivers.nftables import NftTables
from pynet.plugin.ops.doctor import _nft_checks
from pynet.plugin.ops.iptables import Iptables
from tests.kernel import test_serve as serve

# Besides helpers, the iptables backend's traffic tests, run here against this module's host and
# `fw`: the same verdicts, written as nftables. Egress only masqueraded, published ports from
# outside (only DNAT'ed flows, also with a route to the subnet), from the host, 127.0.0.1 and
# hairpin, icc off, internal networks, two networks isolated with a container on both.
from tests.kernel.test_firewall import (  # noqa: F401 - the test_* are collected by pytest here
    NET_B,
    PORT80,
    Topology,
    connect,
    in_ns,
    net_a,
    ns,
    test_egress_works_only_masqueraded,
    test_icc_off_blocks_neighbours_but_not_published_ports,
    test_internal_blocks_everything_but_the_bridge,
    test_published_port_from_host_and_from_containers,
    test_published_port_reaches_container_from_outside_only_through_dnat,
    test_two_bridges_are_isolated_but_a_container_on_both_reaches_both,
    topology,
)

# Docker's tables as `nft list ruleset` shows them on a new Docker 29 daemon (moby's
# integration/network/bridge/nftablesdoc/generated/new-daemon.md), in the order nft accepts
# them in one file: chains before the verdict maps naming them. One change: nat-OUTPUT's
# priority is -100, which is dstnat, since Debian 12's nft 1.0.6 refuses that name in an
# output hook. FORWARD_POLICY is filter-FORWARD's policy: accept, or drop once Docker enabled IP
# forwarding itself (setup_ip_forwarding.go, setFilterForwardDrop).
DOCKER_TABLE = """\
table {family} docker-bridges {{
	chain filter-forward-in__docker0 {{
		ct state established,related counter accept
		iifname "docker0" counter accept comment "ICC"
		counter drop comment "UNPUBLISHED PORT DROP"
	}}
	chain filter-forward-out__docker0 {{
		ct state established,related counter accept
		counter accept comment "OUTGOING"
	}}
	chain nat-postrouting-in__docker0 {{
	}}
	chain nat-postrouting-out__docker0 {{
		{masquerade}
	}}
	map filter-forward-in-jumps {{
		type ifname : verdict
		elements = {{ "docker0" : jump filter-forward-in__docker0 }}
	}}
	map filter-forward-out-jumps {{
		type ifname : verdict
		elements = {{ "docker0" : jump filter-forward-out__docker0 }}
	}}
	map nat-postrouting-in-jumps {{
		type ifname : verdict
		elements = {{ "docker0" : jump nat-postrouting-in__docker0 }}
	}}
	map nat-postrouting-out-jumps {{
		type ifname : verdict
		elements = {{ "docker0" : jump nat-postrouting-out__docker0 }}
	}}
	chain filter-FORWARD {{
		type filter hook forward priority filter; policy {policy};
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}}
	chain nat-OUTPUT {{
		type nat hook output priority -100; policy accept;
		{family} daddr != {loopback} fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-POSTROUTING {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}}
	chain nat-PREROUTING {{
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-prerouting-and-output {{
	}}
	chain raw-PREROUTING {{
		type filter hook prerouting priority raw; policy accept;
	}}
}}
"""


def docker_tables(policy: str = "accept") -> str:
    v4 = DOCKER_TABLE.format(
        family="ip",
        loopback="127.0.0.0/8",
        policy=policy,
        masquerade='oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade comment "MASQUERADE"',
    )
    return v4 + DOCKER_TABLE.format(family="ip6", loopback="::1", policy=policy, masquerade="")


def docker_starts(policy: str = "accept") -> None:
    """What Docker does to its tables at every start (nftables.Table.Reload): deletes and
    writes them anew, with whatever pynet holds left alone."""
    for family in ("ip", "ip6"):
        in_ns("host", "nft", "delete", "table", family, "docker-bridges", check=False)
    in_ns("host", "nft", "-f", "-", input=docker_tables(policy))


def ruleset() -> str:
    """`nft list ruleset` without counters, which the probes move."""
    return re.sub(r"counter packets \d+ bytes \d+ ", "counter ", in_ns("host", "nft", "list", "ruleset"))


def table_names() -> list[str]:
    return sorted(in_ns("host", "nft", "list", "tables").splitlines())


def no_iptables() -> None:
    """No iptables or xtables table exists: nothing pynet made, nothing it read into being."""
    assert in_ns("host", "iptables-nft-save") == "" and in_ns("host", "ip6tables-nft-save") == ""
    assert in_ns("host", "iptables-legacy-save") == "" and in_ns("host", "ip6tables-legacy-save") == ""
    assert in_ns("host", "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names") == ""


def saved() -> tuple[str, str]:
    return ruleset(), ""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology(docker_starts, saved) as topo:
        yield topo


@pytest.fixture
async def fw(topo: Topology) -> AsyncIterator[Firewall]:
    fw = Firewall(netns=ns("host"))  # detected, as the daemon does with no --firewall-backend
    try:
        yield fw
    finally:
        await fw.teardown()
        no_iptables()
        assert ruleset() == topo.baseline[0], "pynet's tables gone, Docker's untouched"
        in_ns("ext", "ip", "route", "del", "10.99.0.0/24", check=False)


async def test_docker_nftables_backend_is_detected_and_pynet_adds_only_its_tables(fw: Firewall) -> None:
    assert detect_flavour(ns("host")) == "nftables"
    await fw.set("a", net_a(ports=(PORT80,)))
    assert fw.flavour == "nftables"
    assert table_names() == ["table ip docker-bridges", "table ip pynet", "table ip6 docker-bridges", "table ip6 pynet"]
    no_iptables()


async def test_pynet_survives_docker_rebuilding_its_tables(fw: Firewall) -> None:
    await fw.set("a", net_a(ports=(PORT80,)))
    ours = in_ns("host", "nft", "list", "table", "ip", "pynet")
    docker_starts()
    assert in_ns("host", "nft", "list", "table", "ip", "pynet") == ours
    assert await fw.ensure_jumps() is False
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"
    assert connect("ext", "198.18.0.1", 8080) == "198.18.0.2"


async def test_a_flushed_table_is_put_back(fw: Firewall) -> None:
    await fw.set("a", net_a())
    in_ns("host", "nft", "delete", "table", "ip", "pynet")
    assert connect("ctr", "198.18.0.2", 80) is None
    assert await fw.ensure_jumps() is True
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"


def pynet_chains() -> dict[str, dict[str, str]]:
    """Each chain of pynet's tables, per family, as `nft list table` shows it (in any order)."""
    listings = {f: in_ns("host", "nft", "list", "table", f, "pynet") for f in ("ip", "ip6")}
    return {f: dict(re.findall(r"\tchain (\S+) \{\n(.*?)\t\}", text, re.S)) for f, text in listings.items()}


async def test_changes_leave_the_tables_a_whole_write_makes(fw: Firewall) -> None:
    """A change rewrites only the chains it changes (a network's own, its buckets); what they
    leave is what replacing the tables whole makes, and a change finding a table gone by hand
    writes them whole."""
    await fw.set("a", net_a())
    await fw.set("b", NET_B)
    await fw.set("a", net_a(ports=(PORT80,)))
    await fw.remove("b")
    changed = pynet_chains()
    assert "pnfw-b" not in str(changed) and "PYNET-F-pnfw-a" in changed["ip"]
    await fw.apply()
    assert pynet_chains() == changed
    assert connect("ext", "198.18.0.1", 8080) == "198.18.0.2"
    assert connect("ctr2", "198.18.0.2", 80) is None, "b's accepts went with it"
    in_ns("host", "nft", "delete", "table", "ip", "pynet")
    await fw.set("b", NET_B)
    assert connect("ctr2", "198.18.0.2", 80) == "198.18.0.1"
    assert '"pnfw-b"' in pynet_chains()["ip"][bucket("PYNET-ISOLATION-2", "pnfw-b")], "the tables written whole"


async def test_docker_forward_drop_policy_wins_and_doctor_says_so(fw: Firewall) -> None:
    """An accept ends only its own base chain: with Docker's filter-FORWARD dropping by policy
    nothing pynet writes lets its traffic through, so doctor fails naming the fix."""
    await fw.set("a", net_a(ports=(PORT80,)))
    checks = {c.name: c for c in await _nft_checks(Iptables(lambda: "nftables", ns("host")).nft())}
    assert checks["nft tables"].verdict == "ok" and checks["docker forward policy"].verdict == "ok"
    try:
        docker_starts("drop")
        assert await NftTables(ns("host"), fw._runner).docker_forward_drop() == [4, 6]
        assert connect("ctr", "198.18.0.2", 80) is None
        assert connect("ext", "198.18.0.1", 8080) is None
        checks = {c.name: c for c in await _nft_checks(Iptables(lambda: "nftables", ns("host")).nft())}
        assert checks["docker forward policy"].verdict == "fail"
        assert "ip-forward-no-drop" in checks["docker forward policy"].detail
    finally:
        docker_starts()
    assert connect("ctr", "198.18.0.2", 80) == "198.18.0.1"


# -- the real daemon ---------------------------------------------------------------------------


@pytest.mark.parametrize("docker", [True, False], ids=["detected", "forced-without-docker"])
async def test_the_daemon_writes_only_nft_tables(tmp_path: Path, docker: bool) -> None:
    """`pynet serve` in a namespace of its own (tests/kernel/test_serve.py's), as dockerd
    drives it: with Docker 29's tables there it detects the backend; with none, and no
    iptables table either, `--firewall-backend nftables` keeps it off iptables."""
    names = serve.Namespaces()
    pynet = serve.Pynet(names, tmp_path, *([] if docker else ["--firewall-backend", "nftables"]))
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
    nft = ("ip", "netns", "exec", names.host, "nft")
    try:
        if docker:
            run([*nft, "-f", "-"], input=docker_tables())
        pynet.start()
        status, reply = await serve.post(pynet.sock, "NetworkDriver.CreateNetwork", serve.NETWORK)
        assert status == 200, reply
        bridge = "pnb-" + serve.NET[:11]
        ours = run([*nft, "list", "table", "ip", "pynet"]).stdout
        assert f'ip saddr 10.61.0.0/24 oifname != "{bridge}" masquerade' in ours
        docker_tables_there = ["table ip docker-bridges", "table ip6 docker-bridges"] if docker else []
        tables = sorted(run([*nft, "list", "tables"]).stdout.splitlines())
        assert tables == sorted([*docker_tables_there, "table ip pynet", "table ip6 pynet"])
        for save in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save"):
            assert run(["ip", "netns", "exec", names.host, save]).stdout == ""
        status, reply = await serve.post(pynet.sock, "NetworkDriver.DeleteNetwork", {"NetworkID": serve.NET})
        assert status == 200, reply
        assert bridge not in run([*nft, "list", "table", "ip", "pynet"]).stdout
    finally:
        pynet.stop(signal.SIGKILL)
        names.delete()
