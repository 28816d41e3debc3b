"""The operator's CLI inside a real Docker host: reports of real state, a real leak collected,
and doctor's verdicts on a healthy and a broken host.

The CLI runs inside the lab host, as an operator would run it there: the daemon's socket is the
host's /run/docker/plugins/pynet.sock, and DOCKER_HOST (set by the lab) names its dockerd.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from lab import DockerRelease, Host, Lab
from lab.core import REPO
from tests.dockercli import Docker, pynet_links, wait_for

PYNET = ("-d", "pynet", "--ipam-driver", "pynet")
CLI = str(REPO / ".venv" / "bin" / "pynet")


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    """This module's own lab: it kills pynet and breaks the host on purpose."""
    with Lab(name="pncli-" + secrets.token_hex(2), hosts=1, etcd=False, docker=docker_release) as lab:
        yield lab


def cli(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run(CLI, *args, "--state-dir", str(host.root / "pynet"), check=False, timeout=120)


def cli_json(host: Host, *args: str) -> tuple[int, Any]:
    done = cli(host, *args, "--json")
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_reports_show_real_state(docker: Docker, host: Host) -> None:
    net = docker.network("rep", *PYNET, "--subnet", "10.50.0.0/24")
    c = docker.run("c", "--network", net)
    net_id = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    endpoint = docker.ip(c, net, "EndpointID")

    code, st = cli_json(host, "status")
    assert code == 0 and st["daemon"]["answers"] and st["daemon"]["ready"]
    assert st["host"] == host.name and st["store"]["reachable"] and st["store"]["kind"] == "embedded"
    assert st["networks"] >= 1 and st["endpoints"] >= 1

    code, nets = cli_json(host, "networks")
    [mine] = [n for n in nets if n["id"] == net_id]
    assert mine["mode"] == "bridge" and mine["subnets"] == ["10.50.0.0/24"] and mine["endpoints"] == 1
    assert mine["config"]["bridge"] == "pnb-" + net_id[:11]

    code, eps = cli_json(host, "endpoints")
    [ep] = [e for e in eps if e["id"] == endpoint]
    assert ep["addresses"] == [docker.ip(c, net) + "/24"] and ep["joined"] and ep["network"] == net_id

    code, pools = cli_json(host, "ipam")
    [pool] = [p for p in pools if p["subnet"] == "10.50.0.0/24"]
    assert pool == {
        "subnet": "10.50.0.0/24", "hosts": [host.name], "allocated": 2, "total": 254, "gateway": "10.50.0.1"
    }

    table = cli(host, "networks").stdout
    assert net_id[:12] in table and net_id[:13] not in table


def iptables(host: Host) -> str:
    """The flavour pynet's chains live in (Docker's)."""
    return "iptables-nft" if "PYNET-FORWARD" in host.run("iptables-nft-save").stdout else "iptables-legacy"


def with_pynet_down(docker: Docker, host: Host, *args: str) -> None:
    """`docker ARGS` with pynet killed: Docker retries each plugin call for a while, then only
    logs the failures (docs/protocol.md §4.2). Returns once the restarted pynet is ready."""
    host.stop_pynet(kill=True)
    try:
        docker(*args, timeout=240)
    finally:
        host.start_pynet()
    assert wait_for(lambda: cli_json(host, "status")[1]["daemon"]["ready"])


def test_gc_collects_what_a_crash_left_and_nothing_else(docker: Docker, host: Host) -> None:
    net = docker.network("leak", *PYNET, "--subnet", "10.51.0.0/24")
    keep = docker.run("keep", "--network", net)
    gone = docker.run("gone", "--network", net)
    endpoint, address = docker.ip(gone, net, "EndpointID"), docker.ip(gone, net)
    with_pynet_down(docker, host, "rm", "-f", gone)
    # Start-up rewrites pynet's chains: the made-up rule goes in after it.
    stale_rule = ("PYNET-FORWARD", "-i", "pnb-deadbeef000", "-o", "pnb-deadbeef000", "-j", "DROP")
    host.run(iptables(host), "-w", "-A", *stale_rule)

    code, found = cli_json(host, "gc", "--dry-run", "--min-age", "0")
    assert code == 1 and found["source"] == "daemon" and found["docker_error"] == ""
    leaks = {(x["kind"], x["name"]) for x in found["leaks"]}
    assert leaks == {
        ("endpoint", endpoint),
        ("link", "pnh-" + endpoint[:11]),
        ("link", "pnc-" + endpoint[:11]),
        ("allocation", address),
        ("rule", "-A " + " ".join(stale_rule)),
    }
    assert "pnh-" + endpoint[:11] in pynet_links(host), "a dry run removes nothing"

    code, swept = cli_json(host, "gc", "--min-age", "0")
    assert code == 0 and {o["result"] for o in swept["outcomes"]} <= {"removed", "vanished"}
    code, again = cli_json(host, "gc", "--dry-run", "--min-age", "0")
    assert code == 0 and again["leaks"] == []
    assert not {"pnh-" + endpoint[:11], "pnc-" + endpoint[:11]} & pynet_links(host)
    assert "pnb-deadbeef000" not in host.run(iptables(host) + "-save").stdout
    # The container that kept running lost nothing, and its address is not free.
    assert docker.pings(keep, "10.51.0.1")
    code, pools = cli_json(host, "ipam")
    assert [p["allocated"] for p in pools if p["subnet"] == "10.51.0.0/24"] == [2]


def test_gc_forgets_a_network_docker_removed_while_pynet_was_down(docker: Docker, host: Host) -> None:
    net = docker.network("gone-net", *PYNET, "--subnet", "10.52.0.0/24")
    net_id = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    bridge = "pnb-" + net_id[:11]
    # ReleaseAddress, ReleasePool and DeleteNetwork fail too: Docker forgets the network anyway.
    with_pynet_down(docker, host, "network", "rm", net)
    assert net_id not in docker("network", "ls", "-q", "--no-trunc").stdout

    code, found = cli_json(host, "gc", "--dry-run", "--min-age", "0")
    assert code == 1 and found["refused"] == "", found
    leaks = {(x["kind"], x["name"]) for x in found["leaks"]}
    pool = ("pool", "pynet-local:10.52.0.0/24")
    assert {("network", net_id), ("link", bridge), pool, ("allocation", "10.52.0.1")} <= leaks
    assert {kind for kind, _ in leaks} == {"network", "link", "pool", "allocation", "rule"}
    assert bridge in pynet_links(host), "a dry run removes nothing"

    code, swept = cli_json(host, "gc", "--min-age", "0")
    assert code == 0 and {o["result"] for o in swept["outcomes"]} <= {"removed", "vanished"}, swept["outcomes"]
    code, again = cli_json(host, "gc", "--dry-run", "--min-age", "0")
    assert code == 0 and again["leaks"] == []
    assert bridge not in pynet_links(host) and bridge not in host.run(iptables(host) + "-save").stdout
    assert not [p for p in cli_json(host, "ipam")[1] if p["subnet"] == "10.52.0.0/24"]
    # The pool is free again: an overlapping subnet is no longer refused.
    docker("network", "rm", docker.network("again", *PYNET, "--subnet", "10.52.0.0/23"))


def verdicts(host: Host) -> tuple[int, dict[str, str]]:
    code, checks = cli_json(host, "doctor")
    return code, {c["name"]: c["verdict"] for c in checks}


def test_doctor_passes_on_a_healthy_host(docker: Docker, host: Host) -> None:
    docker.network("doc", *PYNET, "--subnet", "10.52.0.0/24")
    code, checks = verdicts(host)
    assert code == 0 and set(checks.values()) == {"ok"}, checks
    assert {"daemon", "ip_forward", "firewall", "jumps IPv4", "jumps IPv6"} <= set(checks)
    assert any(name.startswith("mtu ") for name in checks)


def test_doctor_fails_without_forwarding(host: Host) -> None:
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        code, checks = verdicts(host)
    finally:
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert code == 1 and checks["ip_forward"] == "fail" and checks["daemon"] == "ok"


def test_doctor_and_status_fail_on_a_stale_socket(host: Host) -> None:
    host.stop_pynet(kill=True)
    try:
        code, checks = verdicts(host)
        doctor = cli(host, "doctor").stdout
        status_code, st = cli_json(host, "status")
    finally:
        host.start_pynet()
    assert code == 1 and checks["daemon"] == "fail" and "stale socket" in doctor
    assert status_code == 1 and not st["daemon"]["answers"] and "stale socket" in st["daemon"]["error"]
    assert st["store"]["reachable"], "status falls back to reading the store"
