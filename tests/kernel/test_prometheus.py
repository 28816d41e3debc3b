"""Debian's own Prometheus scraping two real `pynet serve` hosts that share a real etcd, with
the shipped alerting rules (packaging/prometheus/pynet-rules.yml): the metrics as Prometheus
reads them (names, types, labels, histograms), and each alert firing on its real cause.

    netns A: etcd, pynet "ka" (metrics on 10.77.0.1:9477), Prometheus on 127.0.0.1:9090
    netns B: pynet "kb" (metrics on 10.77.0.2:9477)

Prometheus scrapes every 2 s and evaluates every second. The rules are the shipped ones, expressions and
thresholds untouched; only their `for:` (a minute or more, checked by promtool on synthetic
series in tests/unit/pynet-rules-test.yml) is cut to 2 s, or the test would take minutes.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pynet.drivers.naming import mac_for
from pynet.drivers.peers import endpoint_key
from tests.etcd_server import freeze
from tests.kernel.test_serve import ENDPOINT, VXLAN
from tests.kernel.test_vxlan_etcd import A_IP, B_IP, PREFIX, Hosts, fdb, ok, vxlan_hosts
from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging/prometheus/pynet-rules.yml"
METRICS_PORT = 9477
KA, KB = f"{A_IP}:{METRICS_PORT}", f"{B_IP}:{METRICS_PORT}"
PROMETHEUS = "127.0.0.1:9090"  # inside netns A, which is the test's own
POOL = "10.78.0.0/29"  # 6 addresses: the gateway and 5 more fill it past the rule's 90 %
FOR = "2s"
# Past the rule's 5 s threshold, below the lease TTL (10 s): kb comes back with its keys.
LAG = 6.0

T = TypeVar("T")

# Runs inside netns A, where Prometheus listens: the test process is in the host's netns.
GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def require_prometheus() -> str:
    return require("prometheus", package="prometheus")[0]


def eventually(check: Callable[[], T | None], what: str | Callable[[], str], within: float = 30.0) -> T:
    """CHECK's first truthy value; fails naming WHAT after WITHIN seconds (a bound, never
    something asserted on)."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what if isinstance(what, str) else what()
        time.sleep(0.25)


class Prometheus:
    """`prometheus` in a netns with its own config, rules and storage under HOME, stopped by pid."""

    def __init__(self, netns: str, home: Path, targets: list[str]) -> None:
        self.netns = netns
        self.home = home
        home.mkdir()
        shipped = RULES.read_text()
        rules, n = re.subn(r"(?m)^(\s+for: )\S+$", rf"\g<1>{FOR}", shipped)
        assert n == shipped.count("- alert: ") == 4, "one for: per alert"
        (home / "rules.yml").write_text(rules)
        (home / "prometheus.yml").write_text(
            json.dumps(  # JSON is YAML
                {
                    # A scrape waits up to 1 s for a store that is away (plugin/metrics.py): 2 s
                    # keeps it a scrape that answers, as under the default 10 s.
                    "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
                    "rule_files": [str(home / "rules.yml")],
                    "scrape_configs": [{"job_name": "pynet", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "ip", "netns", "exec", self.netns, require_prometheus(),
            f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address={PROMETHEUS}", "--log.level=warn",
        ]
        with open(self.home / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.home, stdout=log, stderr=log)
        eventually(lambda: self._alive() and self.get("status/runtimeinfo") is not None, "Prometheus never answered")

    def _alive(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, (self.home / "prometheus.log").read_text()
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, **params: str) -> Any:
        """`/api/v1/PATH`'s data, or None while Prometheus does not answer."""
        url = f"http://{PROMETHEUS}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-c", GET, url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return None
        reply = json.loads(done.stdout)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("query", query=promql)
        assert data is not None and data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, promql: str) -> dict[str, float]:
        """instance -> value of each series PROMQL returns."""
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in self.query(promql)}

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.get("alerts")["alerts"] if a["state"] == state]

    def why(self, what: str) -> Callable[[], str]:
        """WHAT, with what Prometheus sees: each target's last scrape and the alerts."""

        def explain() -> str:
            targets = self.get("targets", state="active")["activeTargets"]
            seen = [(t["labels"]["instance"], t["health"], t["lastScrapeDuration"], t["lastError"]) for t in targets]
            alerts = [(a["labels"], a["state"]) for a in self.get("alerts")["alerts"]]
            return f"{what}: targets {seen}, alerts {alerts}"

        return explain

    def firing(self, name: str, **labels: str) -> dict[str, Any] | None:
        for alert in self.alerts():
            if alert["labels"]["alertname"] == name and labels.items() <= alert["labels"].items():
                return alert
        return None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Hosts, Prometheus]]:
    require_prometheus()

    def listen(ip: str) -> list[str]:
        return ["--metrics-listen", f"{ip}:{METRICS_PORT}"]

    with vxlan_hosts(tmp_path, "pnp", per_host=listen) as hosts:
        prom = Prometheus(hosts.a.ns.host, tmp_path / "prometheus", [KA, KB])
        try:
            prom.start()
            yield hosts, prom
        finally:
            prom.stop()


def scraped(prom: Prometheus) -> bool:
    targets = prom.get("targets", state="active")["activeTargets"]
    return {t["labels"]["instance"]: t["health"] for t in targets} == {KA: "up", KB: "up"}


async def test_prometheus_reads_pynet_and_each_alert_fires_on_its_real_cause(lab: tuple[Hosts, Prometheus]) -> None:
    hosts, prom = lab
    eventually(lambda: scraped(prom), "Prometheus never scraped both pynets")
    for daemon in (hosts.a, hosts.b):
        await ok(daemon, "NetworkDriver.CreateNetwork", VXLAN)
    pool = (await ok(hosts.a, "IpamDriver.RequestPool", {"AddressSpace": "pynet-global", "Pool": POOL, "V6": False}))
    gateway = {"RequestAddressType": "com.docker.network.gateway"}
    await ok(hosts.a, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": gateway})

    # -- the metrics as Prometheus reads them -------------------------------------------------
    allocated = f'pynet_ipam_allocations{{pool="{POOL}"}}'
    eventually(lambda: prom.values(allocated) == {KA: 1, KB: 1}, "both hosts report the shared pool's gateway")
    types = {name: meta[0]["type"] for name, meta in prom.get("metadata").items() if name.startswith("pynet_")}
    assert types == {
        "pynet_requests_total": "counter", "pynet_request_errors_total": "counter",
        "pynet_request_seconds": "histogram", "pynet_store_seconds": "histogram",
        "pynet_ipam_allocations": "gauge", "pynet_ipam_pool_size": "gauge",
        "pynet_store_up": "gauge", "pynet_vxlan_peers": "gauge", "pynet_fdb_programming_seconds": "histogram",
    }, types
    assert prom.values('pynet_requests_total{method="NetworkDriver.CreateNetwork"}') == {KA: 1, KB: 1}
    assert prom.values('pynet_requests_total{method="IpamDriver.RequestAddress"}') == {KA: 1, KB: 0}, "declared at zero"
    latency = prom.query(
        'histogram_quantile(0.9, sum by (instance, method, le) (rate(pynet_request_seconds_bucket{job="pynet"}[1m])))'
    )
    by_method = {(r["metric"]["instance"], r["metric"]["method"]): float(r["value"][1]) for r in latency}
    create = by_method[(KA, "NetworkDriver.CreateNetwork")]
    assert math.isfinite(create) and 0 < create <= 30, by_method
    store = prom.query('histogram_quantile(0.5, sum by (op, le) (rate(pynet_store_seconds_bucket[1m])))')
    assert {"txn", "range", "revision"} <= {r["metric"]["op"] for r in store if math.isfinite(float(r["value"][1]))}
    assert prom.values(f'pynet_ipam_pool_size{{pool="{POOL}"}}') == {KA: 6, KB: 6}
    assert prom.values("pynet_store_up") == {KA: 1, KB: 1}
    assert prom.values('pynet_vxlan_peers{vni="4242"}') == {KA: 1, KB: 1}, "each sees the other's VTEP"
    # The FDB histogram of the VNI exists before any lag, so that rate() sees the first one.
    assert prom.values('pynet_fdb_programming_seconds_count{vni="4242"}') == {KA: 0, KB: 0}
    rules = [r for g in prom.get("rules", type="alert")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == [
        "PynetDown", "PynetFdbProgrammingSlow", "PynetPoolNearlyExhausted", "PynetStoreUnreachable"
    ]
    assert all(r["health"] == "ok" for r in rules), rules
    assert prom.alerts("firing") == prom.alerts("pending") == [], "nothing is wrong yet"

    # -- a pool filled past 90 %, through the plugin socket --------------------------------------
    for _ in range(5):
        await ok(hosts.a, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": {}})
    alert = eventually(lambda: prom.firing("PynetPoolNearlyExhausted", instance=KA, pool=POOL), prom.why("pool alert"))
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"pynet pool {POOL} is 100% allocated (seen by {KA})"
    eventually(lambda: prom.firing("PynetPoolNearlyExhausted", instance=KB, pool=POOL), "kb sees the pool too")

    # -- FDB programming lag: kb frozen while ka registers an endpoint --------------------------
    assert prom.firing("PynetFdbProgrammingSlow") is None
    mac = mac_for(ENDPOINT["Interface"]["Address"])
    assert hosts.b.proc is not None
    freeze(hosts.b.proc)
    try:
        await ok(hosts.a, "NetworkDriver.CreateEndpoint", ENDPOINT)
        key = endpoint_key(PREFIX, 4242, ENDPOINT["EndpointID"])
        registered = json.loads(hosts.etcd.etcdctl("get", key, "--print-value-only"))["time"]
        # Hold kb until the lag is real: the record's own time is when kb could have started.
        time.sleep(max(0.0, registered + LAG - time.time()))
    finally:
        hosts.b.proc.send_signal(signal.SIGCONT)
    eventually(lambda: (mac, A_IP) in fdb(hosts.b.ns.host), "kb never programmed ka's endpoint")
    alert = eventually(
        lambda: prom.firing("PynetFdbProgrammingSlow", instance=KB, vni="4242"), prom.why("FDB lag alert")
    )
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"].startswith(f"pynet on {KB} programs VNI 4242's remote endpoints ")
    assert float(alert["value"]) > 5
    assert prom.values('pynet_fdb_programming_seconds_bucket{vni="4242", le="5.0"}') == {KA: 0, KB: 0}
    assert prom.values('pynet_fdb_programming_seconds_count{vni="4242"}') == {KA: 0, KB: 1}
    assert prom.firing("PynetFdbProgrammingSlow", instance=KA) is None, "ka waited for nothing"
    eventually(lambda: scraped(prom), "kb scraped again after its freeze")

    # -- etcd stopped ---------------------------------------------------------------------------
    assert prom.firing("PynetStoreUnreachable") is None
    hosts.etcd.stop()
    for instance in (KA, KB):
        alert = eventually(
            lambda i=instance: prom.firing("PynetStoreUnreachable", instance=i), prom.why(f"store alert, {instance}")
        )
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == f"pynet on {instance} cannot reach its store (etcd)"
    assert scraped(prom), "a store away is not pynet down: the scrape answers"

    # -- pynet stopped --------------------------------------------------------------------------
    assert prom.firing("PynetDown") is None, "kb's freeze is over"
    hosts.a.stop()
    alert = eventually(lambda: prom.firing("PynetDown", instance=KA), prom.why("pynet down alert"))
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"pynet on {KA} is down"
    assert prom.firing("PynetDown", instance=KB) is None
