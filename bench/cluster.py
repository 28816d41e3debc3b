"""Cluster networks and names across hosts (issue 9), on three lab hosts with a real etcd, one run.

What a user waits for, and what a lookup costs:

- **network create**: `docker network create` of a VXLAN network without `-o vni` on host 1;
  the time from the command returning to the network existing on hosts 2 and 3 (the agent
  there copies it through its own dockerd). Polled with `GET /networks/NAME` on each host's
  Docker socket, the call `docker network inspect` makes, every few ms: a CLI process per
  poll would cost tens of ms of resolution. Then `docker network rm` on host 1 until gone on
  both, as it is free to measure.
- **names**: `docker run -d --name X` on host 1; the time from its return to X resolving from
  a container on host 2, and from `docker rm -f X` returning to X no longer resolving. The
  poll is a loop inside host 2's container (`nslookup`, `$EPOCHREALTIME` when it first
  answers), started before `docker run` so that no `docker exec` start-up sits in the figure;
  busybox's `date` has no `%N`, its shell's `$EPOCHREALTIME` reads the same realtime clock as
  this process in microseconds.
- **lookups**: from a container on host 2, `nslookup -type=a` of a name on host 1 (Docker's
  embedded DNS forwards it to pynet's resolver), next to the same of a name on host 2 on the
  same network (the embedded DNS answers it alone), each timed inside the container around
  the command, so every figure includes spawning nslookup; `/bin/true` timed the same way
  shows that part.

Docker's equivalent is its swarm overlay (bench/vxlan.py's set-up, hosts 1 and 2): an
attachable overlay network's container names resolve across hosts through the embedded DNS
alone (swarm gossips them), so the name figures and the cross-host lookup are taken for it
in the same rounds, taking turns. Network creation has no equivalent: a swarm overlay shows
up on a worker only when a container there attaches to it; the bench checks that and says so.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from bench.common import Row, compare, per_driver, percentile, print_table
from bench.vxlan import OVERLAY_SUBNET, start_swarm
from lab import IMAGE, Host, Lab
from lab.cmd import unix_http
from lab.releases import MACHINE, fetch
from pynet.plugin.daemon.config import Settings

VXLAN = ("-d", "pynet", "--ipam-driver", "pynet", "-o", "mode=vxlan")  # no vni: a cluster network
NAMES_SUBNET = "10.61.0.0/24"
CREATE_SUBNETS = "10.62.{}.0/24"  # one per network-create round
BOUND = 10.0  # seconds: the "never more than"; past it a round counts as never (inf)
API_POLL = 0.003  # seconds between two `GET /networks/NAME` on one host
DNS_POLL_US = 2000  # microseconds between two nslookups of the in-container poll
INF = float("inf")
SPAWN = "spawn only: /bin/true timed the same way"  # the part of every lookup figure that is not DNS


@dataclass
class Series:
    """One figure's samples in ms; `inf` for a round that never got there within BOUND."""

    label: str
    samples: list[float]

    def p(self, q: float) -> float:
        return percentile(self.samples, q)

    @property
    def never(self) -> int:
        return sum(s == INF for s in self.samples)


# -- network create on host 1 -> exists on hosts 2 and 3 ----------------------------------------


def since(t0: float, host: Host, network: str, present: bool) -> float:
    """ms from T0 (perf_counter) until HOST's dockerd has (or, not PRESENT, no longer has)
    NETWORK; inf past BOUND."""
    sock = str(host.root / "docker.sock")
    while True:
        status, _ = unix_http(sock, "GET", f"/networks/{network}")
        now = time.perf_counter()
        if (status == 200) == present:
            return (now - t0) * 1000
        if now - t0 > BOUND:
            return INF
        time.sleep(API_POLL)


def on_others(lab: Lab, command: tuple[str, ...], network: str, present: bool) -> list[float]:
    """Run the docker COMMAND on host 1, then poll every other host at once: ms per host."""
    others = lab.hosts[1:]
    with ThreadPoolExecutor(len(others)) as pool:
        lab.hosts[0].docker(*command)
        t0 = time.perf_counter()
        return list(pool.map(lambda h: since(t0, h, network, present), others))


def network_rounds(lab: Lab, n: int) -> tuple[list[list[float]], list[float]]:
    """Per round: ms to each other host after `network create`, and ms to the last of them
    after `network rm` (each round's network is removed before the next, as users' come and go)."""
    created: list[list[float]] = []
    removed: list[float] = []
    for i in range(n):
        name = f"pnxnet{i}"
        create = ("network", "create", *VXLAN, "--subnet", CREATE_SUBNETS.format(i), name)
        created.append(on_others(lab, create, name, present=True))
        removed.append(max(on_others(lab, ("network", "rm", name), name, present=False)))
    return created, removed


def overlay_on_worker(lab: Lab, network: str) -> str:
    """Whether a new swarm overlay shows up on host 2 by itself, polled like pynet's copies."""
    ms = since(time.perf_counter(), lab.hosts[1], network, present=True)
    return f"after {ms:.0f} ms" if ms != INF else f"not within {BOUND:.0f} s (it comes with a container attaching)"


# -- names: docker run on host 1 -> resolves from a container on host 2 ---------------------------


def docker_popen(host: Host, *args: str) -> subprocess.Popen[str]:
    """The docker CLI on HOST, not waited for (Host.docker runs it to completion)."""
    argv = [host.lab.docker.cli(), "-H", host.docker_host, *args]
    return subprocess.Popen(argv, env=host.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def poll_script(name: str, present: bool) -> str:
    """Loops until NAME resolves (or, not PRESENT, stops resolving), then prints the realtime
    clock; "ready" first, so the caller acts only once the loop runs. Exit 1 past BOUND."""
    test = "" if present else "!"
    return (
        f"echo ready; end=$(( $EPOCHSECONDS + {int(BOUND) + 1} )); "
        f"while [ $EPOCHSECONDS -lt $end ]; do "
        f"if {test} nslookup -type=a {name} >/dev/null 2>&1; then echo $EPOCHREALTIME; exit 0; fi; "
        f"usleep {DNS_POLL_US}; done; exit 1"
    )


def until_dns(watcher: tuple[Host, str], name: str, present: bool, command: tuple[str, ...]) -> tuple[float, float]:
    """Run the docker COMMAND on host 1: ms it took, and ms from its return to NAME resolving
    (not, if not PRESENT) in WATCHER's container, inf past BOUND; negative when the name was
    already there (or gone) by the time the command returned."""
    host, container = watcher
    proc = docker_popen(host, "exec", container, "sh", "-c", poll_script(name, present))
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the poll in {container} did not start: {proc.communicate()[1]}")
        started = time.time()
        host.lab.hosts[0].docker(*command)
        returned = time.time()
        out, _ = proc.communicate(timeout=BOUND + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ran = (returned - started) * 1000
    if proc.returncode != 0 or not out.strip():
        return ran, INF
    return ran, (float(out.split()[0]) - returned) * 1000


@dataclass
class NameRig:
    """Per driver: its network, and the container on host 2 that watches names."""

    networks: dict[str, str]
    watchers: dict[str, tuple[Host, str]]


# What name_rounds measures: (command, anchor) -> per driver, ms from the command's return
# or start to the name resolving (run) or no longer resolving (rm) in host 2's watcher, and
# (command, "itself") the command's own time.
NameTimes = dict[tuple[str, str], dict[str, list[float]]]
ANCHORS = ("returned", "started", "itself")


def name_rounds(rig: NameRig, n: int) -> NameTimes:
    """n rounds, pynet and the overlay taking turns (bench.common.compare): a container run on
    host 1 until host 2 resolves it, then removed until host 2 no longer does."""
    times: NameTimes = {(c, a): {d: [] for d in rig.networks} for c in ("run -d", "rm -f") for a in ANCHORS}
    count = itertools.count()

    def round_trip(driver: str) -> float:
        name = f"pnx{driver[:2]}{next(count)}"
        run = ("run", "-d", "--name", name, "--network", rig.networks[driver], IMAGE, "sleep", "infinity")
        for command, args, present in (("run -d", run, True), ("rm -f", ("rm", "-f", name), False)):
            ran, after = until_dns(rig.watchers[driver], name, present, args)
            times[command, "itself"][driver].append(ran)
            times[command, "returned"][driver].append(after)
            times[command, "started"][driver].append(ran + after)
        return times["run -d", "started"][driver][-1]  # compare's Row is not used: all figures are in `times`

    compare("names", "ms", "lower", n, *per_driver(round_trip))
    return times


# -- lookup latency, timed inside the container ------------------------------------------------


def timed_in(host: Host, container: str, command: str, n: int) -> list[float]:
    """ms of each of N runs of COMMAND in CONTAINER, from $EPOCHREALTIME around it; a run
    that failed (a lookup with no answer) counts as inf, so none hides in the figures."""
    loop = f't0=$EPOCHREALTIME; {command}; rc=$?; echo "$t0 $EPOCHREALTIME $rc"'
    script = f"i=0; while [ $i -lt {n} ]; do {loop}; i=$((i+1)); done"
    out = host.docker("exec", container, "sh", "-c", script, timeout=n * 2 + 60).stdout
    runs = [line.split() for line in out.splitlines()]
    return [(float(end) - float(start)) * 1000 if rc == "0" else INF for start, end, rc in runs]


def lookup_rounds(kinds: dict[str, tuple[Host, str, str]], n: int, batch: int) -> dict[str, Series]:
    """N samples per kind (label -> host, container, command), in batches that take turns, the
    first of each rotated so that none always runs first; one uncounted batch of each warms up."""
    labels = list(kinds)
    for label in labels:
        timed_in(*kinds[label], 5)
    series = {label: Series(label, []) for label in labels}
    for r in range(-(-n // batch)):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            series[label].samples += timed_in(*kinds[label], batch)
    return series


# -- set-up and output ------------------------------------------------------------------------


def detached(host: Host, name: str, network: str) -> str:
    host.docker("run", "-d", "--name", name, "--network", network, IMAGE, "sleep", "infinity")
    return name


def make_rig(lab: Lab) -> tuple[NameRig, dict[str, tuple[Host, str, str]]]:
    """The swarm (hosts 1 and 2), the cluster network (created on host 1 only) and the overlay,
    the watchers on host 2, and the containers the lookups ask for."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    # vxlan.start_swarm makes a manager of the first host and a worker of the second: all the
    # name figures need (host 3 stays out of the swarm).
    start_swarm(cast(Lab, SimpleNamespace(hosts=[h1, h2])))
    h1.docker("network", "create", *VXLAN, "--subnet", NAMES_SUBNET, "pc")
    if since(time.perf_counter(), h2, "pc", present=True) == INF:
        raise RuntimeError(f"the cluster network never reached {h2.name}")
    h1.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", OVERLAY_SUBNET, "ov")
    print(f"swarm overlay `ov` created on host 1; on host 2 by itself: {overlay_on_worker(lab, 'ov')}")
    networks = {"pynet": "pc", "docker": "ov"}
    rig = NameRig(networks, {d: (h2, detached(h2, f"watch-{d}", net)) for d, net in networks.items()})
    far = {d: detached(h1, f"far-{d}", net) for d, net in networks.items()}
    near = detached(h2, "near-pynet", "pc")
    ask = "nslookup -type=a {} >/dev/null"
    kinds = {
        "pynet: name on host 1 (embedded DNS, then pynet)": (h2, rig.watchers["pynet"][1], ask.format(far["pynet"])),
        "embedded DNS: name on host 2, same network": (h2, rig.watchers["pynet"][1], ask.format(near)),
        "overlay: name on host 1 (embedded DNS, gossip)": (h2, rig.watchers["docker"][1], ask.format(far["docker"])),
        # Without Docker's forwarding in between: which part of the first figure is pynet's.
        "pynet's resolver asked directly, name on host 1": (
            h2,
            rig.watchers["pynet"][1],
            ask.format(f"{far['pynet']} {Settings().dns_address}"),
        ),
        SPAWN: (h2, rig.watchers["pynet"][1], "/bin/true"),
    }
    return rig, kinds


def print_series(title: str, rows: list[Series], baseline: Series | None = None, spawn: Series | None = None) -> None:
    """p50/p99 in ms per row; with BASELINE, each row's p50 over the baseline's; with SPAWN,
    each row's p50 less SPAWN's (an estimate of the row's own part)."""
    print(f"\n{title}")
    extra = (f"{'p50/base':>10}" if baseline else "") + (f"{'p50-spawn':>11}" if spawn else "")
    print(f"{'metric':<52}{'p50':>9}{'p99':>9}{'n':>5}{'never':>7}{extra}  unit")
    for s in rows:
        line = f"{s.label:<52}{s.p(50):>9.1f}{s.p(99):>9.1f}{len(s.samples):>5}{s.never:>7}"
        line += f"{s.p(50) / baseline.p(50):>10.2f}" if baseline else ""
        line += f"{s.p(50) - spawn.p(50):>11.2f}" if spawn else ""
        print(f"{line}  ms")


def paired_row(metric: str, samples: dict[str, list[float]]) -> Row:
    """pynet against the overlay: medians, and the median of the per-round ratios."""
    ours, theirs = samples["pynet"], samples["docker"]
    paired = statistics.median(p / d for p, d in zip(ours, theirs, strict=True) if d)
    return Row(metric, statistics.median(ours), statistics.median(theirs), "ms, median", "lower", paired)


def lookup_row(metric: str, ours: Series, theirs: Series) -> Row:
    return Row(metric, ours.p(50), theirs.p(50), "ms, p50", "lower")


def machine(lab: Lab) -> str:
    mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:")))
    dockerd = lab.hosts[0].docker("version", "-f", "{{.Server.Version}}").stdout.strip()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, {mem / 2**20:.0f} GiB, Linux {platform.release()}, dockerd {dockerd}, load {load}"


def report_networks(lab: Lab, created: list[list[float]], removed: list[float]) -> None:
    print_series(
        f"network create on host 1 -> exists on hosts 2 and 3 (pynet alone; n={len(created)})",
        [
            *(Series(f"on host {k + 2}", [r[k] for r in created]) for k in range(len(lab.hosts) - 1)),
            Series("on both (the later of the two)", [max(r) for r in created]),
            Series("network rm on host 1 -> gone on both", removed),
        ],
    )


def report_names(names: NameTimes, n: int) -> None:
    """Each figure per driver; "itself" is the command's own time, which the figures from its
    start include."""
    what = {"run -d": "name resolves", "rm -f": "name gone"}
    print_series(
        f"names: host 1 -> a container on host 2 (n={n} each, pynet and overlay taking turns)",
        [
            Series(f"{label}: docker {c} {a}" + ("" if a == "itself" else f" -> {what[c]}"), per[driver])
            for (c, a), per in names.items()
            for label, driver in (("pynet", "pynet"), ("overlay", "docker"))
        ],
    )


def report_ratios(names: NameTimes, lookups: list[Series]) -> None:
    """Only the names' figures from the commands' start: from their return, a figure is often
    negative (the name changed before the command returned), and a ratio of those means nothing."""
    print_table(
        "pynet vs Docker in this run (p50; names: paired = median of per-round ratios)",
        [
            paired_row("docker run started -> resolves", names["run -d", "started"]),
            paired_row("docker rm -f started -> gone", names["rm -f", "started"]),
            lookup_row("lookup, host-1 name vs same-host name", lookups[0], lookups[1]),
            lookup_row("lookup, host-1 name vs overlay's", lookups[0], lookups[2]),
        ],
    )


def main(quick: bool = False, lab_name: str | None = None, docker: str = MACHINE.name) -> None:
    n_net, n_names, n_lookups, batch = (2, 2, 20, 10) if quick else (20, 20, 200, 20)
    with Lab(name=lab_name or "pnxbench", docker=fetch(docker), hosts=3, etcd=True) as lab:
        print(f"cluster: 3 lab hosts, etcd; {machine(lab)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        report_networks(lab, *network_rounds(lab, n_net))
        rig, kinds = make_rig(lab)
        names = name_rounds(rig, n_names)
        report_names(names, n_names)
        lookups = lookup_rounds(kinds, n_lookups, batch)
        rows = list(lookups.values())
        title = f"lookup latency from a container on host 2 (nslookup -type=a, timed inside; n={n_lookups} each)"
        print_series(title, rows, baseline=rows[1], spawn=lookups[SPAWN])
        report_ratios(names, rows)
        print(f"\nload at the end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
