"""VXLAN networks across lab hosts sharing one etcd, typed on each host as a user would."""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from lab import PLUGIN_SOCKET, DockerRelease, Host, Lab
from lab.cmd import unix_http
from tests.dockercli import Docker, http_get, wait_for

LEASE_TTL = 3  # short, so the lease-expiry test is quick


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(
        name="pnv" + secrets.token_hex(2),
        hosts=3,
        etcd=True,
        pynet_args=("--lease-ttl", str(LEASE_TTL)),
        docker=docker_release,
    ) as lab:
        yield lab


@pytest.fixture
def clis(lab: Lab) -> Iterator[list[Docker]]:
    """One Docker CLI per host, sharing a name tag so a network has one name everywhere."""
    tag = secrets.token_hex(3)
    docks = [Docker(h) for h in lab.hosts]
    for d in docks:
        d.tag = tag
    yield docks
    for d in docks:
        d.cleanup()


def vxlan_network(docks: list[Docker], base: str, vni: int, subnet: str, *extra: str) -> str:
    name = ""
    for d in docks:
        name = d.network(base, "-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan", "-o", f"vni={vni}", "--subnet", subnet, *extra)
    return name


def fdb(host: Host, vni: int) -> str:
    """pynet's entries: `self` ones with a VTEP destination (the bridge's own learned
    `master` entries age out by themselves)."""
    out = host.run("bridge", "fdb", "show", "dev", f"pnx-{vni}").stdout
    return "\n".join(line for line in out.splitlines() if " dst " in line)


def neighbours(host: Host, vni: int) -> str:
    return host.run("ip", "neigh", "show", "dev", f"pnx-{vni}").stdout


def mac_of(d: Docker, container: str, net: str) -> str:
    return d.ip(container, net, "MacAddress")


def test_containers_on_every_host_reach_each_other(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis, "blue", 42, "10.42.0.0/24")
    names = [d.run(f"c{i}", "--network", net) for i, d in enumerate(clis)]
    ips = [d.ip(c, net) for d, c in zip(clis, names)]
    assert len(set(ips)) == 3, "one address space: no address handed out twice"
    for d, c in zip(clis, names):
        for ip in ips:
            assert d.pings(c, ip), f"{c} cannot reach {ip}"
    # TCP across hosts, and the peer sees the container's own address (no NAT on the segment).
    server = clis[1].run("srv", "--network", net, cmd=("nc", "-l", "-p", "9000", "-e", "sh", "-c", "netstat -tn | grep :9000"))
    srv_ip = clis[1].ip(server, net)
    assert wait_for(lambda: clis[1].exec(server, "sh", "-c", "netstat -ltn | grep -q :9000", check=False).returncode == 0)
    seen = clis[0].exec(names[0], "sh", "-c", f"echo | nc -w 3 {srv_ip} 9000").stdout
    assert ips[0] in seen
    # The gateway address is the same on every host, and answered locally, on a macvlan link
    # of the VXLAN device: no bridge, and the containers' links are the device's too.
    for h in lab.hosts:
        gateway = h.run("ip", "-d", "addr", "show", "pno-42").stdout
        assert "10.42.0.1/24" in gateway and "pno-42@pnx-42" in gateway and "macvlan mode bridge" in gateway
        assert "master" not in h.run("ip", "-d", "link", "show", "pnx-42").stdout
        assert "pno-42" not in h.run("ip", "-o", "link", "show", "type", "bridge").stdout
    mtu = clis[0].exec(names[0], "ip", "link", "show", "eth0").stdout
    assert "mtu 1450" in mtu, "underlay MTU 1500 - 50"


def test_new_container_is_reachable_at_once_and_removal_propagates(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis, "fast", 43, "10.43.0.0/24")
    a = clis[0].run("a", "--network", net)
    b = clis[1].run("b", "--network", net)
    ip_b = clis[1].ip(b, net)
    # One ping with a one-second timeout, sent right after `docker run` returned.
    assert clis[0].exec(a, "ping", "-c", "1", "-W", "1", ip_b, check=False).returncode == 0
    mac_b = mac_of(clis[1], b, net)
    assert mac_b in fdb(lab.hosts[0], 43) and mac_b in fdb(lab.hosts[2], 43)
    assert ip_b in neighbours(lab.hosts[0], 43)
    clis[1]("rm", "-f", b)
    for h in (lab.hosts[0], lab.hosts[2]):
        assert wait_for(lambda: mac_b not in fdb(h, 43) and ip_b not in neighbours(h, 43), 5)


def test_two_vnis_are_isolated(lab: Lab, clis: list[Docker]) -> None:
    red = vxlan_network(clis[:2], "red", 44, "10.44.0.0/24")
    green = vxlan_network(clis[:2], "green", 45, "10.45.0.0/24")
    r1, r2 = clis[0].run("r1", "--network", red), clis[1].run("r2", "--network", red)
    g2 = clis[1].run("g2", "--network", green)
    assert clis[0].pings(r1, clis[1].ip(r2, red))
    assert not clis[0].pings(r1, clis[1].ip(g2, green))


def test_egress_and_published_ports_through_each_host(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis[:2], "out", 46, "10.46.0.0/24")
    web = clis[1].run(
        "web", "--network", net, "-p", "8080:80",
        cmd=("sh", "-c", "mkdir -p /www && echo hello-vxlan > /www/index.html && exec httpd -f -p 80 -h /www"),
    )
    assert clis[1].pings(web, lab.outside.address), "egress through its own host's masquerade"
    host2 = lab.hosts[1]
    assert wait_for(lambda: http_get(lab.outside.run, host2.address, 8080).startswith("hello-vxlan"))
    # Through the host's address from the network itself: the container's own port, and a
    # neighbour's, whose replies come back through the host only because it is masqueraded
    # (no bridge in the host, so no conntrack on a direct reply to undo the DNAT).
    nearby = clis[1].run("nearby", "--network", net)
    for client in (web, nearby):
        get = functools.partial(clis[1].exec, client)
        assert http_get(get, host2.address, 8080).startswith("hello-vxlan"), client
    # From the other host's container: through host 2's address, as from outside.
    far = clis[0].run("far", "--network", net)
    assert http_get(functools.partial(clis[0].exec, far), host2.address, 8080).startswith("hello-vxlan")


def test_icc_off_keeps_a_bridge_whose_containers_reach_only_the_gateway(lab: Lab, clis: list[Docker]) -> None:
    """Macvlan links cannot drop traffic between each other: `icc=false` keeps the bridge
    (drivers/vxlan.py), where the firewall drops it, from a neighbour on the host or across
    the tunnel, and lets the gateway and the outside in."""
    net = vxlan_network(clis[:2], "noicc", 53, "10.53.0.0/24", "-o", "icc=false")
    a, b = clis[0].run("a", "--network", net), clis[0].run("b", "--network", net)
    c = clis[1].run("c", "--network", net)
    for h in lab.hosts[:2]:
        assert "master pno-53" in h.run("ip", "-d", "link", "show", "pnx-53").stdout
    assert clis[0].pings(a, "10.53.0.1") and clis[1].pings(c, lab.outside.address)
    assert not clis[0].pings(a, clis[0].ip(b, net)), "a neighbour on the same host"
    assert not clis[0].pings(a, clis[1].ip(c, net)), "a neighbour across the tunnel"


def test_parallel_starts_on_two_hosts_get_distinct_addresses(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis[:2], "many", 47, "10.47.0.0/24")

    def start(args: tuple[Docker, int]) -> str:
        d, i = args
        return d.run(f"m{i}", "--network", net)

    jobs = [(clis[0], i) for i in range(30)] + [(clis[1], i) for i in range(30)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        names = list(pool.map(start, jobs))
    ips = [d.ip(name, net) for (d, _), name in zip(jobs, names)]
    assert len(set(ips)) == 60, sorted(ips)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.47.0.0/24") for ip in ips)


def test_a_dead_host_leaves_the_others_tables_when_its_lease_expires(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis, "lease", 48, "10.48.0.0/24")
    c3 = clis[2].run("c3", "--network", net)
    h1, h3 = lab.hosts[0], lab.hosts[2]
    assert f"dst {h3.address}" in fdb(h1, 48)
    h3.stop_pynet(kill=True)
    try:
        assert wait_for(lambda: h3.address not in fdb(h1, 48), LEASE_TTL * 4), fdb(h1, 48)
    finally:
        h3.start_pynet()
    # Back again: it registers under a new lease and the others program it again.
    assert wait_for(lambda: f"dst {h3.address}" in fdb(h1, 48), 10)
    c1 = clis[0].run("c1", "--network", net)
    assert clis[0].pings(c1, clis[2].ip(c3, net))


def test_pynet_restart_reprograms_forwarding_from_the_store(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis[:2], "again", 49, "10.49.0.0/24")
    a = clis[0].run("a", "--network", net)
    b = clis[1].run("b", "--network", net)
    h1 = lab.hosts[0]
    h1.stop_pynet()
    h1.run("ip", "neigh", "flush", "dev", "pnx-49", "nud", "permanent")
    for line in fdb(h1, 49).splitlines():
        if " dst " in line:
            mac, dst = line.split()[0], line.split()[2]
            h1.run("bridge", "fdb", "del", mac, "dev", "pnx-49", "dst", dst, "self")
    assert " dst " not in fdb(h1, 49)
    h1.start_pynet()
    assert wait_for(lambda: f"dst {lab.hosts[1].address}" in fdb(h1, 49), 10)
    assert clis[0].pings(a, clis[1].ip(b, net))


def tracked(host: Host, src: str, dst: str) -> bool:
    """Whether HOST's conntrack table holds a flow from SRC to DST (its original direction)."""
    return f"src={src} dst={dst} " in host.run("cat", "/proc/net/nf_conntrack").stdout


def test_traffic_within_the_network_skips_conntrack_also_after_a_restart(lab: Lab, clis: list[Docker]) -> None:
    """Frames between containers of a network never reach a host's netfilter (no bridge in
    the host, drivers/vxlan.py), also after both pynets restarted; the gateway (a local
    destination) stays tracked. Flushing the NOTRACK chain, which a bridged network needs
    (drivers/firewall.py), shows that this does not rest on it."""
    net = vxlan_network(clis[:2], "untracked", 52, "10.52.0.0/24")
    a, b = clis[0].run("a", "--network", net), clis[1].run("b", "--network", net)
    ip_a, ip_b = clis[0].ip(a, net), clis[1].ip(b, net)
    h1, h2 = lab.hosts[:2]
    gateway = "10.52.0.1"  # the subnet's first address, on pno-52 of every host
    assert clis[0].pings(a, gateway)
    assert tracked(h1, ip_a, gateway), "conntrack is at work in the host: the checks below can fail"

    def check(step: str) -> None:
        assert wait_for(lambda: clis[0].pings(a, ip_b) and clis[1].pings(b, ip_a), 10), step
        for host in (h1, h2):
            assert not tracked(host, ip_a, ip_b), f"{host.name} tracks in-network flows ({step})"
            assert not tracked(host, ip_b, ip_a), f"{host.name} tracks in-network flows ({step})"

    check("created")
    for host in (h1, h2):  # the rules gone, the records kept (as after a reboot): reconcile
        host.stop_pynet()
        for iptables in ("iptables-legacy", "iptables-nft"):  # whichever flavour holds them
            host.run(iptables, "-t", "raw", "-F", "PYNET-NOTRACK", check=False)
        host.start_pynet()
        # Activation answers before reconcile; other requests wait for it to finish.
        assert unix_http(str(host.inside(PLUGIN_SOCKET)), "POST", "/NetworkDriver.GetCapabilities", timeout=60)[0] == 200
    check("reconciled")


def test_etcd_outage(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis[:2], "outage", 50, "10.50.0.0/24")
    a = clis[0].run("a", "--network", net)
    b = clis[1].run("b", "--network", net)
    ip_b = clis[1].ip(b, net)
    lab.stop_etcd()
    try:
        assert clis[0].pings(a, ip_b), "the data plane keeps forwarding without etcd"
        started = time.monotonic()
        r = clis[1]("run", "--rm", "--network", net, "pnbusybox:latest", "true", check=False, timeout=60)
        elapsed = time.monotonic() - started
        assert r.returncode != 0
        assert re.search(r"etcd .* did not answer|etcd.*unavailable", r.stderr, re.I), r.stderr
        # Docker retries nothing on an HTTP error: the failure comes from pynet's own deadline.
        assert elapsed < 30, f"failing took {elapsed:.1f} s"
    finally:
        lab.start_etcd()
    # Watches resume: a container started now on host 2 is programmed on host 1, no restart.
    c = clis[1].run("c", "--network", net)
    ip_c = clis[1].ip(c, net)
    assert wait_for(lambda: clis[0].pings(a, ip_c), 15)


def test_network_rm_on_every_host_leaves_nothing(lab: Lab, clis: list[Docker]) -> None:
    net = vxlan_network(clis[:2], "bye", 51, "10.51.0.0/24")
    clis[0].run("x", "--network", net)
    for d in clis[:2]:
        for c in list(d.containers):
            d("rm", "-f", c)
        d("network", "rm", net)
        d.networks.remove(net)
    for h in lab.hosts[:2]:
        links = h.run("ip", "-o", "link", "show").stdout
        assert "pno-51" not in links and "pnx-51" not in links
    keys = lab.hosts[0].run("etcdctl", f"--endpoints={lab.etcd_endpoint}", "get", "--prefix", "/pynet/vxlan/51/", "--keys-only")
    assert keys.stdout.strip() == ""
    pools = lab.hosts[0].run("etcdctl", f"--endpoints={lab.etcd_endpoint}", "get", "--prefix", "/pynet/ipam/pools/10.51.0.0_24", "--keys-only")
    assert pools.stdout.strip() == "", "the pool is released when the last host removes its network"


def test_host_without_default_route_uses_the_route_to_etcd(lab: Lab, clis: list[Docker]) -> None:
    """An air-gapped lab: no default route, no -o underlay. The VTEP is the interface that
    routes to etcd (the hosts' eth0 here)."""
    hosts, docks = lab.hosts[:2], clis[:2]
    defaults = [h.run("ip", "-4", "route", "show", "default").stdout.split() for h in hosts]
    for h in hosts:
        h.run("ip", "route", "del", "default")
    try:
        net = vxlan_network(docks, "nodefault", 77, "10.77.0.0/24")
        a = docks[0].run("a", "--network", net)
        b = docks[1].run("b", "--network", net)
        assert docks[0].pings(a, docks[1].ip(b, net))
        for h in hosts:
            device = h.run("ip", "-d", "link", "show", "pnx-77").stdout
            assert f"local {h.address}" in device and "dev eth0" in device
    finally:
        for h, route in zip(hosts, defaults):
            if route:
                h.run("ip", "route", "replace", *route)
