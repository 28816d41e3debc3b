"""The lab harness with two hosts and etcd: the underlay, etcd, the outside, isolation from the
machine, the CLI, and teardown by a process other than the one that built the lab (as after a
crash): the lab is built by `python -m lab up` in a child process, and removed by a fresh Lab."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import IMAGE, DockerRelease, Lab, Node
from lab.cli import main
from lab.procs import Proc

REPO = Path(__file__).resolve().parents[2]
NAME = f"pnt{uuid.uuid4().hex[:6]}"


def machine_links() -> set[str]:
    """Link names in the machine's own network namespace."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}


def assert_machine_network_untouched(lab: Lab, before: set[str]) -> None:
    """Only the lab's own footprint is checked: other tests may add and remove links meanwhile."""
    lab_links = {"br0", "eth0", "docker0", "ext", "etcd", *(f"h{h.index}" for h in lab.hosts)}
    assert not (machine_links() - before) & lab_links
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert str(lab.underlay) not in routes


@pytest.fixture(scope="module")
def before() -> set[str]:
    return machine_links()


@pytest.fixture(scope="module")
def lab(before: set[str], docker_release: DockerRelease) -> Iterator[Lab]:
    try:
        subprocess.run(
            [sys.executable, "-m", "lab", "up", "--hosts", "2", "--name", NAME, "--no-pynet"]
            + ["--docker", docker_release.name],
            cwd=REPO,
            check=True,
            timeout=180,
        )
        yield Lab.attach(NAME)
    finally:
        Lab(NAME).down()


def ping(node: Node, address: str) -> None:
    """busybox's ping: the machine may have no other."""
    node.run("busybox", "ping", "-c1", "-W2", address)


def test_hosts_reach_each_other_over_the_underlay(lab: Lab) -> None:
    h1, h2 = lab.hosts
    ping(h1, h2.address)
    ping(h2, h1.address)


def test_containers_reach_the_other_host(lab: Lab) -> None:
    h1, h2 = lab.hosts
    h1.docker("run", "--rm", IMAGE, "ping", "-c1", "-W2", h2.address)


def test_both_hosts_reach_etcd(lab: Lab) -> None:
    h1, h2 = lab.hosts
    etcdctl = ("etcdctl", f"--endpoints={lab.etcd_endpoint}")
    h1.run(*etcdctl, "put", "pnt/key", h1.name)
    assert h2.run(*etcdctl, "get", "--print-value-only", "pnt/key").stdout.strip() == h1.name


def test_outside_answers_the_hosts(lab: Lab) -> None:
    for host in lab.hosts:
        ping(host, lab.outside.address)


def test_nothing_routes_out_of_the_lab(lab: Lab) -> None:
    for host in lab.hosts:
        routes = host.run("ip", "-4", "route").stdout.splitlines()
        assert {r.split(" dev ")[1].split()[0] for r in routes} <= {"eth0", "docker0"}
        assert f"via {lab.outside.address} dev eth0" in host.run("ip", "route", "get", "192.0.2.1").stdout
    assert lab.outside.run("ip", "route", "get", "192.0.2.1", check=False).returncode != 0
    assert lab.outside.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"


def test_the_machine_network_is_untouched(lab: Lab, before: set[str]) -> None:
    assert_machine_network_untouched(lab, before)


def test_cli_status_and_exec(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--name", NAME]) == 0
    out = capsys.readouterr().out
    assert all(h.address in out and h.docker_host in out for h in lab.hosts)
    assert lab.etcd_endpoint in out
    h2 = lab.hosts[1]
    check_env = f'test "$DOCKER_HOST" = {h2.docker_host}'
    assert main(["exec", "2", "--name", NAME, "--", "sh", "-c", check_env]) == 0
    assert main(["exec", "1", "--name", NAME, "--", "false"]) == 1


def test_down_from_another_process_leaves_nothing(lab: Lab, before: set[str]) -> None:
    holders = [Proc(h.holder.pid, h.holder.start) for h in lab.hosts if h.holder]
    assert len(holders) == 2
    Lab(NAME).down()
    assert not any(p.alive() for p in holders)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert NAME not in listed
    assert lab.leftovers() == []
    assert_machine_network_untouched(lab, before)
