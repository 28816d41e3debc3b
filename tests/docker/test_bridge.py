"""The bridge backend and pynet's IPAM through a real dockerd, typed as a user would."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab import Host, Lab
from tests.docker.test_cli import cli_json
from tests.dockercli import Docker, http_get, pynet_links, pynet_rules, wait_for

PYNET = ("-d", "pynet", "--ipam-driver", "pynet")
HTTPD = ("sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www")


def test_two_containers_reach_each_other_by_ip_and_name(docker: Docker) -> None:
    net = docker.network("blue", *PYNET, "--subnet", "10.30.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    ip_b = docker.ip(b, net)
    assert ipaddress.ip_address(ip_b) in ipaddress.ip_network("10.30.0.0/24")
    assert docker.pings(a, ip_b)
    assert docker.pings(a, b), "embedded DNS should resolve the container name"
    route = docker.exec(a, "ip", "route").stdout
    assert "default via 10.30.0.1" in route
    assert "eth1" not in docker.exec(a, "ip", "link").stdout, "no docker_gwbridge NIC"


def test_automatic_subnet(docker: Docker) -> None:
    net = docker.network("auto", *PYNET)
    subnet = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", net).stdout.strip()
    assert ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network("10.208.0.0/12"))  # type: ignore[arg-type]
    a = docker.run("a", "--network", net)
    assert ipaddress.ip_address(docker.ip(a, net)) in ipaddress.ip_network(subnet)
    other = docker.network("auto2", *PYNET)
    subnet2 = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", other).stdout.strip()
    assert not ipaddress.ip_network(subnet).overlaps(ipaddress.ip_network(subnet2))


def test_with_dockers_default_ipam(docker: Docker) -> None:
    net = docker.network("dflt", "-d", "pynet", "--subnet", "10.31.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert docker.pings(a, b)


def test_ip_range_gateway_aux_and_static_ip(docker: Docker) -> None:
    net = docker.network(
        "ranges", *PYNET, "--subnet", "10.32.0.0/24", "--ip-range", "10.32.0.128/25",
        "--gateway", "10.32.0.254", "--aux-address", "router=10.32.0.200",
    )
    a = docker.run("a", "--network", net)
    assert ipaddress.ip_address(docker.ip(a, net)) in ipaddress.ip_network("10.32.0.128/25")
    assert "default via 10.32.0.254" in docker.exec(a, "ip", "route").stdout
    s = docker.run("s", "--network", net, "--ip", "10.32.0.50")
    assert docker.ip(s, net) == "10.32.0.50"
    assert docker.pings(a, "10.32.0.50")
    taken = docker("run", "--rm", "--network", net, "--ip", "10.32.0.50", "pnbusybox:latest", "true", check=False)
    assert taken.returncode != 0 and "10.32.0.50" in taken.stderr
    aux = docker("run", "--rm", "--network", net, "--ip", "10.32.0.200", "pnbusybox:latest", "true", check=False)
    assert aux.returncode != 0 and "10.32.0.200" in aux.stderr


def test_connect_and_disconnect_a_second_network(docker: Docker) -> None:
    n1 = docker.network("n1", *PYNET, "--subnet", "10.33.1.0/24")
    n2 = docker.network("n2", *PYNET, "--subnet", "10.33.2.0/24")
    a = docker.run("a", "--network", n1)
    b = docker.run("b", "--network", n2)
    assert not docker.pings(a, docker.ip(b, n2)), "networks must be isolated"
    docker("network", "connect", n2, a)
    assert "eth1" in docker.exec(a, "ip", "link").stdout
    assert docker.pings(a, docker.ip(b, n2)), "a container on both networks reaches both"
    assert docker.pings(a, b)
    docker("network", "disconnect", n2, a)
    assert "eth1" not in docker.exec(a, "ip", "link").stdout
    assert not docker.pings(a, docker.ip(b, n2))


def test_isolated_from_dockers_own_networks(docker: Docker) -> None:
    mine = docker.network("mine", *PYNET, "--subnet", "10.34.0.0/24")
    theirs = docker.network("theirs", "-d", "bridge", "--subnet", "10.35.0.0/24")
    a = docker.run("a", "--network", mine)
    b = docker.run("b", "--network", theirs)
    c = docker.run("c")  # Docker's default bridge
    assert not docker.pings(a, docker.ip(b, theirs))
    assert not docker.pings(b, docker.ip(a, mine))
    assert not docker.pings(c, docker.ip(a, mine))
    assert not docker.pings(a, docker.ip(c, "bridge"))


def test_icc_off_blocks_containers_on_one_network(docker: Docker) -> None:
    net = docker.network("noicc", *PYNET, "--subnet", "10.36.0.0/24", "-o", "com.docker.network.bridge.enable_icc=false")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    assert not docker.pings(a, docker.ip(b, net))
    assert docker.pings(a, "10.36.0.1"), "the gateway stays reachable"


def test_egress_is_masqueraded(docker: Docker, lab: Lab, host: Host) -> None:
    # The outside namespace has no route back to 10.37.0.0/24: replies arrive only if the
    # container's traffic left with the host's address.
    net = docker.network("egress", *PYNET, "--subnet", "10.37.0.0/24")
    a = docker.run("a", "--network", net)
    assert docker.pings(a, lab.outside.address)
    off = docker.network("nomasq", *PYNET, "--subnet", "10.38.0.0/24", "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
    b = docker.run("b", "--network", off)
    assert not docker.pings(b, lab.outside.address)


def test_internal_network_has_no_egress_and_no_published_ports(docker: Docker, lab: Lab, host: Host) -> None:
    net = docker.network("internal", *PYNET, "--subnet", "10.39.0.0/24", "--internal")
    a = docker.run("a", "--network", net, "-p", "8091:80", cmd=HTTPD)
    b = docker.run("b", "--network", net)
    assert docker.pings(b, a), "containers on an internal network still talk"
    assert not docker.pings(a, lab.outside.address)
    assert http_get(lab.outside.run, host.address, 8091) == ""


def test_published_port_from_outside_host_and_itself(docker: Docker, lab: Lab, host: Host) -> None:
    net = docker.network("web", *PYNET, "--subnet", "10.40.0.0/24")
    web = docker.run("web", "--network", net, "-p", "8080:80", cmd=HTTPD)
    assert wait_for(lambda: docker.exec(web, "sh", "-c", "netstat -ltn | grep -q :80", check=False).returncode == 0)
    assert http_get(lab.outside.run, host.address, 8080).startswith("hello-from-"), "from outside"
    assert http_get(host.run, host.address, 8080).startswith("hello-from-"), "from the host"
    assert http_get(host.run, "127.0.0.1", 8080).startswith("hello-from-"), "from the host's loopback"
    client = docker.run("client", "--network", net)
    in_client = functools.partial(docker.exec, client)
    assert http_get(in_client, host.address, 8080).startswith("hello-from-"), "from a neighbour"
    in_web = functools.partial(docker.exec, web)
    assert http_get(in_web, host.address, 8080).startswith("hello-from-"), "hairpin: to its own port"
    # Only the published port is open from outside.
    assert http_get(lab.outside.run, docker.ip(web, net), 80) == ""
    docker("rm", "-f", web)
    assert http_get(lab.outside.run, host.address, 8080) == "", "removing the container unpublishes its port"


# A host's own server, in the test dockerd's network namespace: answers every connection.
HOST_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("up", flush=True)
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nhello-from-host\\n")
    c.close()
"""


@contextlib.contextmanager
def host_server(host: Host, port: int) -> Iterator[None]:
    server = host.popen(sys.executable, "-c", HOST_SERVER, str(port), stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        yield
    finally:
        server.kill()
        server.wait()


def run_fails(docker: Docker, base: str, *args: str) -> str:
    """`docker run -d` that must fail; its stderr. The created container is cleaned up."""
    name = docker.name(base)
    docker.containers.append(name)
    r = docker("run", "-d", "--name", name, *args, "pnbusybox:latest", *HTTPD, check=False)
    assert r.returncode != 0, r.stdout
    return r.stderr


def test_published_port_in_use_fails_naming_it(docker: Docker, lab: Lab, host: Host) -> None:
    net = docker.network("busy", *PYNET, "--subnet", "10.57.0.0/24")
    with host_server(host, 8094):
        err = run_fails(docker, "onhost", "--network", net, "-p", "8094:80")
        assert "host port 8094/tcp is already in use" in err, err
        assert http_get(lab.outside.run, host.address, 8094) == "hello-from-host\n", "the host's server keeps its port"
    # Docker's own port proxy (a container on Docker's bridge) holds its port too ...
    docker.run("theirs", "-p", "8095:80", cmd=HTTPD)
    err = run_fails(docker, "ondocker", "--network", net, "-p", "8095:80")
    assert "host port 8095/tcp is already in use" in err, err
    # ... and the other way round: a port a pynet container publishes is not Docker's to take.
    docker.run("mine", "--network", net, "-p", "8096:80", cmd=HTTPD)
    err = run_fails(docker, "stolen", "-p", "8096:80")
    assert "8096" in err, err


def test_port_range_publishes_the_first_free_port(docker: Docker, lab: Lab, host: Host) -> None:
    net = docker.network("range", *PYNET, "--subnet", "10.58.0.0/24")
    with host_server(host, 8100):
        a = docker.run("a", "--network", net, "-p", "8100-8102:80", cmd=HTTPD)
        b = docker.run("b", "--network", net, "-p", "8100-8102:80", cmd=HTTPD)
        err = run_fails(docker, "c", "--network", net, "-p", "8100-8102:80")
        assert "no free host port in 8100-8102/tcp: 1 in use" in err and "2 published by other containers" in err, err
        for name, port in ((a, 8101), (b, 8102)):
            hello = f"hello-from-{docker('inspect', '-f', '{{.Config.Hostname}}', name).stdout.strip()}\n"
            assert wait_for(lambda p=port, h=hello: http_get(lab.outside.run, host.address, p) == h), name
        assert http_get(lab.outside.run, host.address, 8100) == "hello-from-host\n"
    # Where the chosen port shows: dockerd never reads a remote driver's ports (docs/protocol.md
    # §2.7; 20.10, 26.1 and 28.5 alike, even with the portmap in EndpointOperInfo's reply).
    assert docker("port", a).stdout == ""
    _, eps = cli_json(host, "endpoints")
    by_id = {e["id"]: e["ports"] for e in eps}
    assert by_id[docker.ip(a, net, "EndpointID")] == ["0.0.0.0:8101->80/tcp"]
    assert by_id[docker.ip(b, net, "EndpointID")] == ["0.0.0.0:8102->80/tcp"]


def test_dual_stack(docker: Docker) -> None:
    net = docker.network("v6", *PYNET, "--ipv6", "--subnet", "10.41.0.0/24", "--subnet", "fd00:41::/64")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    ip6 = docker.ip(b, net, "GlobalIPv6Address")
    assert ipaddress.ip_address(ip6) in ipaddress.ip_network("fd00:41::/64")
    assert wait_for(lambda: docker.pings(a, ip6, v6=True))
    assert docker.pings(a, "fd00:41::1", v6=True)
    assert "default via fd00:41::1" in docker.exec(a, "ip", "-6", "route").stdout


def test_mtu_option_reaches_the_container(docker: Docker, host: Host) -> None:
    net = docker.network("mtu", *PYNET, "--subnet", "10.42.0.0/24", "-o", "com.docker.network.driver.mtu=1400")
    a = docker.run("a", "--network", net)
    assert "mtu 1400" in docker.exec(a, "ip", "link", "show", "eth0").stdout


def test_network_rm_removes_every_link_and_rule(docker: Docker, host: Host) -> None:
    before_links = pynet_links(host)
    net = docker.network("gone", *PYNET, "--subnet", "10.43.0.0/24")
    a = docker.run("a", "--network", net, "-p", "8093:80", cmd=HTTPD)
    bridge = next(iter(pynet_links(host) - before_links - {l for l in pynet_links(host) if l.startswith("pnh-")}))
    assert bridge in pynet_rules(host)
    docker("rm", "-f", a)
    docker("network", "rm", net)
    docker.networks.remove(net)
    assert pynet_links(host) == before_links
    assert bridge not in pynet_rules(host)
    assert "8093" not in pynet_rules(host)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_pynet_restart_keeps_containers_connected(docker: Docker, host: Host, kill: bool) -> None:
    net = docker.network("restart", *PYNET, "--subnet", "10.44.0.0/24")
    a = docker.run("a", "--network", net)
    b = docker.run("b", "--network", net)
    host.stop_pynet(kill=kill)
    assert docker.pings(a, b), "traffic does not depend on the daemon"
    host.start_pynet()
    assert docker.pings(a, b)
    c = docker.run("c", "--network", net)
    assert docker.pings(c, a)
    other = docker.network("restart2", *PYNET, "--subnet", "10.45.0.0/24")
    docker("network", "connect", other, a)
    assert "eth1" in docker.exec(a, "ip", "link").stdout


def test_dockerd_restart_brings_back_restart_always_containers(docker: Docker, host: Host) -> None:
    net = docker.network("always", *PYNET, "--subnet", "10.46.0.0/24")
    a = docker.run("a", "--network", net, "--restart", "always")
    b = docker.run("b", "--network", net, "--restart", "always")
    host.restart_dockerd()
    assert wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", a).stdout.strip() == "true", 30)
    assert wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", b).stdout.strip() == "true", 30)
    assert wait_for(lambda: docker.pings(a, b), 15)
    assert docker.pings(a, docker.ip(b, net))


def docker_user_jump_in_place(host: Host) -> list[str]:
    """`iptables -S DOCKER-USER` when pynet's jump is as designed (drivers/firewall.py,
    DOCKER_USER_JUMP): once, after the users' own rules, before a final RETURN (20.10 has
    one, 28.5 none); and Docker's jump to DOCKER-USER still FORWARD's first rule, ahead of
    Docker's rules for its own networks (DOCKER-FORWARD on 28, DOCKER-ISOLATION-STAGE-1 on
    20.10). [] while it is not (yet)."""
    user = host.run("iptables", "-w", "-S", "DOCKER-USER").stdout.splitlines()
    forward = [r for r in host.run("iptables", "-w", "-S", "FORWARD").stdout.splitlines() if r.startswith("-A")]
    rules = [r for r in user if r.startswith("-A") and r != "-A DOCKER-USER -j RETURN"]
    ok = (
        [r for r in user if "PYNET" in r] == ["-A DOCKER-USER -j PYNET-FORWARD"]
        and rules[-1] == "-A DOCKER-USER -j PYNET-FORWARD"
        and forward[0] == "-A FORWARD -j DOCKER-USER"
        and not any("PYNET" in r for r in forward)
    )
    return user if ok else []


def test_docker_user_jump_stays_in_place_around_dockers_networks_and_restarts(
    docker: Docker, lab: Lab, host: Host
) -> None:
    """Docker's own bridge networks made around pynet's, a user's DOCKER-USER rule, and a
    dockerd restart (which re-adds Docker's FORWARD rules): pynet's jump stays where it
    belongs, and a pynet container still gets out and stays isolated."""
    net = docker.network("fw", *PYNET, "--subnet", "10.59.0.0/24")
    a = docker.run("a", "--network", net)
    theirs = docker.network("fwdocker", "--subnet", "10.60.0.0/24")  # Docker's own bridge driver
    d = docker.run("d", "--network", theirs)
    user_rule = ("-s", "10.59.0.250/32", "-j", "DROP")
    host.run("iptables", "-w", "-I", "DOCKER-USER", "1", *user_rule)
    try:
        assert wait_for(lambda: bool(docker_user_jump_in_place(host)), 15)
        host.restart_dockerd()
        docker("start", a, d)  # no restart policy: stopped with dockerd
        after = docker.network("fwdocker2", "--subnet", "10.61.0.0/24")  # Docker's rules again, after the restart
        e = docker.run("e", "--network", after)
        assert wait_for(lambda: bool(docker_user_jump_in_place(host)), 15), host.run("iptables", "-S").stdout
        user = docker_user_jump_in_place(host)
        assert user.index("-A DOCKER-USER " + " ".join(user_rule)) < user.index("-A DOCKER-USER -j PYNET-FORWARD")
        assert docker.pings(a, lab.outside.address), "still reaches out, masqueraded"
        assert not docker.pings(a, docker.ip(d, theirs)) and not docker.pings(a, docker.ip(e, after))
        assert not docker.pings(d, docker.ip(a, net)) and not docker.pings(e, docker.ip(a, net))
    finally:
        host.run("iptables", "-w", "-D", "DOCKER-USER", *user_rule, check=False)


# -- bad input: a clear error naming the value, and nothing left behind ------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("-o", "bogus=1"), "bogus"),
        (("-o", "com.docker.network.driver.mtu=abc"), "abc"),
        (("-o", "mode=ipvlan"), "ipvlan"),
        (("-o", "com.docker.network.bridge.enable_icc=maybe"), "maybe"),
        (("--ipam-driver", "pynet", "--subnet", "10.47.0.5/24"), "10.47.0.5/24"),
        (("--ipam-driver", "pynet", "--subnet", "10.47.0.0/24", "--ip-range", "10.48.0.0/25"), "10.48.0.0/25"),
    ],
    ids=["unknown-option", "bad-mtu", "bad-mode", "bad-bool", "host-bits", "range-outside"],
)
def test_bad_network_options_are_named_and_leave_nothing(docker: Docker, host: Host, args: tuple[str, ...], named: str) -> None:
    links = pynet_links(host)
    rules = pynet_rules(host)
    name = docker.name("bad")
    r = docker("network", "create", "-d", "pynet", *args, name, check=False)
    assert r.returncode != 0
    assert named in r.stderr
    assert docker("network", "ls", "-q", "-f", f"name={name}").stdout.strip() == ""
    assert pynet_links(host) == links
    assert pynet_rules(host) == rules


def test_overlapping_subnet_is_refused(docker: Docker) -> None:
    docker.network("first", *PYNET, "--subnet", "10.49.0.0/24")
    name = docker.name("second")
    r = docker("network", "create", *PYNET, "--subnet", "10.49.0.0/25", name, check=False)
    assert r.returncode != 0 and "10.49.0.0/2" in r.stderr


def test_static_ip_outside_subnet_is_refused(docker: Docker, host: Host) -> None:
    net = docker.network("static", *PYNET, "--subnet", "10.50.0.0/24")
    links = pynet_links(host)
    r = docker("run", "--rm", "--network", net, "--ip", "10.51.0.5", "pnbusybox:latest", "true", check=False)
    assert r.returncode != 0 and "10.51.0.5" in r.stderr
    assert pynet_links(host) == links
    # The failed request left no allocation: the next container still gets the first address.
    a = docker.run("a", "--network", net)
    assert docker.ip(a, net) == "10.50.0.2"
