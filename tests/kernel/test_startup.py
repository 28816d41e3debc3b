"""Start-up with the kernel or the store not as pynet left them (issue 10, items 1 and 3).

The daemon runs in a private netns as in test_serve.py. Item 1: one network that cannot be
restored (its VTEP address gone) must not keep the others down, and comes back by itself when
its address does. Item 3: links pynet made stay when the store it starts with has not seen
this host before.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.test_serve import (
    ENDPOINT,
    EP,
    NET,
    NETWORK,
    ROOT,
    Namespaces,
    Pynet,
    move_into_container,
    ns,  # noqa: F401  (fixture)
    pings,
    post,
    sh,
    uplink,
)

VNET = "d4" * 32
VXLAN = {
    "NetworkID": VNET,
    "Options": {"com.docker.network.generic": {"mode": "vxlan", "vni": "4343"}},
    "IPv4Data": [{"AddressSpace": "pynet-local", "Pool": "10.62.0.0/24", "Gateway": "10.62.0.1/24"}],
    "IPv6Data": [],
}
VEP = {
    "NetworkID": VNET,
    "EndpointID": "e5" * 32,
    "Interface": {"Address": "10.62.0.2/24", "AddressIPv6": "", "MacAddress": ""},
    "Options": {},
}
JOIN = {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}


def cli(ns: Namespaces, daemon: Pynet, command: str, *args: str) -> tuple[int, Any]:
    """`pynet <command> --json` as the operator runs it on the daemon's host."""
    argv = [
        "ip", "netns", "exec", ns.host, sys.executable, "-m", "pynet.plugin", command, "--json",
        "--socket", str(daemon.sock), "--state-dir", str(daemon.state), *args,
    ]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else out.stderr


async def until(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


def task(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in status["tasks"] if t["name"] == name)


async def test_a_network_whose_underlay_address_is_gone_does_not_keep_the_others_down(
    ns: Namespaces, tmp_path: Path
) -> None:
    uplink(ns)
    daemon = Pynet(ns, tmp_path, "--underlay", "uplink0")
    daemon.start()
    try:
        for body in (NETWORK, VXLAN):
            status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", body)
            assert status == 200, reply
        assert (await post(daemon.sock, "NetworkDriver.CreateEndpoint", ENDPOINT))[0] == 200
        status, join = await post(daemon.sock, "NetworkDriver.Join", JOIN)
        assert status == 200, join
        move_into_container(ns, join["InterfaceName"]["SrcName"], "10.61.0.2/24", "10.61.0.1")
        daemon.stop(signal.SIGKILL)
        # A DHCP renumbering while pynet is down: the VTEP's address is gone.
        sh("ip", "-n", ns.host, "addr", "del", "192.0.2.77/24", "dev", "uplink0")
        sh("ip", "-n", ns.host, "link", "del", "pnx-4343")
        daemon.start()

        # The bridge network serves at once.
        other = {**ENDPOINT, "EndpointID": "c3" * 32, "Interface": {**ENDPOINT["Interface"], "Address": "10.61.0.3/24"}}
        status, reply = await post(daemon.sock, "NetworkDriver.CreateEndpoint", other)
        assert status == 200, reply
        assert pings(ns.ctr, "10.61.0.1")
        # The VXLAN one refuses with its name and the cause, promptly.
        status, reply = await post(daemon.sock, "NetworkDriver.CreateEndpoint", VEP)
        assert status == 500, reply
        assert VNET[:12] in reply["Err"] and "192.0.2.77" in reply["Err"], reply
        assert "pnx-4343" not in ns.links()
        code, st = cli(ns, daemon, "status")
        assert st["daemon"]["ready"], st
        restore = task(st, "restore-networks")
        assert restore["detail"]["failing"] == VNET[:12], restore
        assert VNET[:12] in restore["last_error"] and "192.0.2.77" in restore["last_error"], restore
        assert code == 1, "a network down is something wrong"
        _, checks = cli(ns, daemon, "doctor")
        check = next(c for c in checks if c["name"] == "networks restored")
        assert check["verdict"] == "fail" and VNET[:12] in check["detail"], check
        assert "192.0.2.77" in daemon.log.read_text()

        # The address comes back: the network follows, no restart.
        sh("ip", "-n", ns.host, "addr", "add", "192.0.2.77/24", "dev", "uplink0")

        async def restored() -> bool:
            return (await post(daemon.sock, "NetworkDriver.CreateEndpoint", VEP))[0] == 200

        await until("the VXLAN network never came back", restored)
        device = sh("ip", "-n", ns.host, "-d", "link", "show", "pnx-4343").stdout
        assert "local 192.0.2.77" in device, device
        # Its gateway link went with it, and is back on the new device.
        gateway = sh("ip", "-n", ns.host, "-d", "addr", "show", "pno-4343").stdout
        assert "pno-4343@pnx-4343" in gateway and "macvlan mode bridge" in gateway and "10.62.0.1/24" in gateway, gateway
        code, st = cli(ns, daemon, "status")
        assert code == 0 and task(st, "restore-networks")["detail"]["failing"] == "-", st
        _, checks = cli(ns, daemon, "doctor")
        assert next(c for c in checks if c["name"] == "networks restored")["verdict"] == "ok"
    finally:
        daemon.stop(signal.SIGKILL)


CHANGES = {
    "state-dir": ("--state-dir", "{tmp}/other-state"),
    "store-prefix": ("--store-prefix", "/other/"),
    "host-id": ("--host-id", "k9"),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_store_that_has_not_seen_this_host_deletes_no_link(ns: Namespaces, tmp_path: Path, change: str) -> None:
    """The links of a running container stay, listed as orphans, when pynet restarts on a store
    that knows nothing of them; with the store that made them, orphans still go (test_serve.py
    test_restart_rebuilds_the_kernel_from_the_store)."""
    daemon = Pynet(ns, tmp_path)
    daemon.start()
    try:
        assert (await post(daemon.sock, "NetworkDriver.CreateNetwork", NETWORK))[0] == 200
        assert (await post(daemon.sock, "NetworkDriver.CreateEndpoint", ENDPOINT))[0] == 200
        status, join = await post(daemon.sock, "NetworkDriver.Join", JOIN)
        assert status == 200, join
        move_into_container(ns, join["InterfaceName"]["SrcName"], "10.61.0.2/24", "10.61.0.1")
        assert (daemon.state / "store-marker").exists(), "a first start with no orphan binds store and host"
    finally:
        daemon.stop(signal.SIGKILL)
    ours = {"pnb-" + NET[:11], "pnh-" + EP[:11]}
    flag, value = CHANGES[change]
    # Once more for one of them: a start that kept orphans does not vouch for them. The CLI
    # (a Python start each, seconds on a loaded machine) for that one too.
    thorough = change == "state-dir"
    for again in (False, True) if thorough else (False,):
        restarted = Pynet(ns, tmp_path, flag, value.format(tmp=tmp_path))
        restarted.start()
        try:
            await until("pynet did not get ready", lambda: ready(restarted))
            assert ours <= ns.links()
            assert pings(ns.ctr, "10.61.0.1"), "the container is still connected"
            _, st = await post(restarted.sock, "pynet/status", {})
            assert set(st["kept_links"]) == ours, st
            if thorough and not again:
                code, st = cli(ns, restarted, "status")
                assert code == 1 and set(st["kept_links"]) == ours, st
                _, gc = cli(ns, restarted, "gc", "--dry-run", "--docker-host", f"unix://{tmp_path}/no-docker.sock")
                assert {leak["name"] for leak in gc["leaks"] if leak["kind"] == "link"} == ours, gc
        finally:
            restarted.stop(signal.SIGKILL)
    kept = [line for line in daemon.log.read_text().splitlines() if "orphan links kept" in line]
    assert len(kept) == (2 if thorough else 1) and all(name in kept[0] for name in ours), kept


async def ready(daemon: Pynet) -> bool:
    status, st = await post(daemon.sock, "pynet/status", {})
    return status == 200 and bool(st["daemon"]["ready"])


def reconcile_counts(ns: Namespaces, daemon: Pynet) -> dict[str, int]:
    argv = [
        "ip", "netns", "exec", ns.host, sys.executable, "-m", "tests.kernel.reconcile_counts",
        "--socket", str(daemon.sock), "--state-dir", str(daemon.state), "--host-id", "k1", *daemon.args,
    ]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    counts: dict[str, int] = json.loads(out.stdout.splitlines()[-1])
    return counts


async def add_networks(daemon: Pynet, first: int, count: int) -> None:
    """COUNT bridge and COUNT VXLAN networks, each with an endpoint, as dockerd makes them."""
    for i in range(first, first + count):
        for mode, third, extra in (("bridge", 100 + i, {}), ("vxlan", 150 + i, {"vni": str(5000 + i)})):
            net = f"{i:02x}{mode[0]}" * 16
            body = {
                "NetworkID": net,
                "Options": {"com.docker.network.generic": {"mode": mode, **extra}},
                "IPv4Data": [{"AddressSpace": "pynet-local", "Pool": f"10.{third}.0.0/24", "Gateway": f"10.{third}.0.1/24"}],
                "IPv6Data": [],
            }
            status, reply = await post(daemon.sock, "NetworkDriver.CreateNetwork", body)
            assert status == 200, reply
            ep = {**ENDPOINT, "NetworkID": net, "EndpointID": net[::-1], "Interface": {**ENDPOINT["Interface"], "Address": f"10.{third}.0.2/24"}}
            status, reply = await post(daemon.sock, "NetworkDriver.CreateEndpoint", ep)
            assert status == 200, reply


async def test_reconcile_asks_the_kernel_the_same_whatever_the_networks(ns: Namespaces, tmp_path: Path) -> None:
    """Issue 12: start-up took 17 s at 125 networks. Reconcile now reads the links and
    addresses once for every network of every mode and the orphan sweep (VXLAN dumped every
    link per network), asks nothing more about a network already in place, and writes the
    firewall once per family (once per mode before). Counted by kind of request, not timed."""
    uplink(ns)
    daemon = Pynet(ns, tmp_path, "--underlay", "uplink0")
    daemon.start()
    try:
        await add_networks(daemon, 0, 2)
        daemon.stop()
        few = reconcile_counts(ns, daemon)
        daemon.start()
        await add_networks(daemon, 2, 6)
        daemon.stop()
        many = reconcile_counts(ns, daemon)
    finally:
        daemon.stop(signal.SIGKILL)
    assert many["link dump"] == few["link dump"] == 1, (few, many)
    assert many["iptables-restore"] == few["iptables-restore"] == 2, "one apply, both families"
    # Per network, only the VXLAN device's own requests remain (its bridge and VTEP device
    # are checked by name): what grows is those, never a dump.
    grown = {k: many.get(k, 0) - few.get(k, 0) for k in {*few, *many}}
    assert all(not k.endswith("dump") for k, v in grown.items() if v), (few, many)
