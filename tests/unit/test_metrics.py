"""The metrics pieces on their own: the store timing wrapper, the VXLAN observer, addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from pynet.plugin.metrics import STORE_OPS, Metrics, PoolUsage, TimedStore, parse_listen, read_store, timed
from pynet.store.base import Compare, Put
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import NotFound, StoreUnavailable


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_timed_store_times_each_operation_and_changes_nothing(tmp_path: Path) -> None:
    metrics = Metrics()
    inner = EmbeddedStore(tmp_path / "store.sqlite")
    store = TimedStore(inner, metrics)
    await store.put("/k", b"v")
    assert (await store.get("/k")) == await inner.get("/k")
    assert [kv.key for kv in await store.range("/")] == ["/k"]
    assert await store.txn([Compare.absent("/k")], [Put("/k", b"w")]) is False
    assert await store.delete("/k") == 1
    lease = await store.grant_lease(10)
    await store.refresh_lease(lease)
    await store.revoke_lease(lease)
    for op in ("put", "get", "range", "txn", "delete", "grant_lease", "refresh_lease", "revoke_lease"):
        assert sample(metrics, "pynet_store_seconds_count", op=op) == 1, op
    assert sample(metrics, "pynet_store_seconds_bucket", op="get", le="3.0") == 1
    await store.close()


def test_every_store_op_is_declared_at_zero() -> None:
    """So that Prometheus's rate() counts an op's first call; the list is TimedStore's methods."""
    metrics = Metrics()
    timed_ops = {name for name in vars(TimedStore) if not name.startswith("_")} - {"watch", "close"}
    assert timed_ops == set(STORE_OPS)
    for op in STORE_OPS:
        assert metrics.registry.get_sample_value("pynet_store_seconds_count", {"op": op}) == 0, op


async def test_timed_store_times_failures_too(tmp_path: Path) -> None:
    metrics = Metrics()
    inner = EmbeddedStore(tmp_path / "store.sqlite")
    store = TimedStore(inner, metrics)
    with pytest.raises(NotFound):
        await store.refresh_lease(12345)
    assert sample(metrics, "pynet_store_seconds_count", op="refresh_lease") == 1, "failures are timed too"
    await store.close()


def test_without_metrics_the_store_is_not_wrapped(tmp_path: Path) -> None:
    inner = EmbeddedStore(tmp_path / "store.sqlite")
    assert timed(inner, None) is inner
    assert isinstance(timed(inner, Metrics()), TimedStore)


def test_vxlan_observer_reports_peers_and_programming_lag() -> None:
    metrics = Metrics()
    metrics.vxlan.on_programmed(42, 2, [])  # no remote endpoint yet: the histogram exists, at zero
    assert metrics.registry.get_sample_value("pynet_fdb_programming_seconds_count", {"vni": "42"}) == 0
    metrics.vxlan.on_programmed(42, 3, [0.02, 7.0])
    assert sample(metrics, "pynet_vxlan_peers", vni="42") == 3
    assert sample(metrics, "pynet_fdb_programming_seconds_count", vni="42") == 2
    assert sample(metrics, "pynet_fdb_programming_seconds_bucket", vni="42", le="0.025") == 1
    assert sample(metrics, "pynet_fdb_programming_seconds_bucket", vni="42", le="5.0") == 1
    metrics.vxlan.forget(42)
    metrics.vxlan.forget(42)
    for name in ("pynet_vxlan_peers", "pynet_fdb_programming_seconds_count"):
        assert metrics.registry.get_sample_value(name, {"vni": "42"}) is None, name


def test_registries_are_private_to_each_daemon() -> None:
    one, two = Metrics(), Metrics()
    one.observe_request("Plugin.Activate", 0.001, failed=False)
    assert sample(one, "pynet_requests_total", method="Plugin.Activate") == 1
    assert sample(two, "pynet_requests_total", method="Plugin.Activate") == 0


def test_ipam_gauges_forget_removed_pools() -> None:
    metrics = Metrics()
    metrics.set_pools({"10.1.0.0/24": PoolUsage(3, 254), "10.2.0.0/29": PoolUsage(1, 6)})
    metrics.set_pools({"10.1.0.0/24": PoolUsage(4, 254)})
    assert sample(metrics, "pynet_ipam_allocations", pool="10.1.0.0/24") == 4
    assert sample(metrics, "pynet_ipam_pool_size", pool="10.1.0.0/24") == 254
    for name in ("pynet_ipam_allocations", "pynet_ipam_pool_size"):
        assert metrics.registry.get_sample_value(name, {"pool": "10.2.0.0/29"}) is None, name


async def test_a_scrape_probes_the_store_then_reads_the_pools() -> None:
    metrics = Metrics()
    calls: list[str] = []

    async def probe() -> int:
        calls.append("probe")
        return 7

    async def pools() -> dict[str, PoolUsage]:
        calls.append("pools")
        return {"10.1.0.0/24": PoolUsage(3, 254)}

    await read_store(metrics, probe, pools)
    assert calls == ["probe", "pools"]
    assert sample(metrics, "pynet_store_up") == 1 and sample(metrics, "pynet_ipam_allocations", pool="10.1.0.0/24") == 3


async def test_an_unreachable_store_is_reported_and_the_pools_kept_as_last_seen() -> None:
    metrics = Metrics()
    metrics.set_pools({"10.1.0.0/24": PoolUsage(3, 254)})

    async def down() -> int:
        raise StoreUnavailable("pynet: etcd at http://10.0.0.1:2379 did not answer")

    async def never() -> dict[str, PoolUsage]:
        raise AssertionError("the pools are not read from a store that did not answer")

    await read_store(metrics, down, never)
    assert metrics.registry.get_sample_value("pynet_store_up") == 0
    assert sample(metrics, "pynet_ipam_allocations", pool="10.1.0.0/24") == 3

    async def up() -> int:
        return 1

    async def failing() -> dict[str, PoolUsage]:
        raise StoreUnavailable("pynet: etcd went away between two reads")

    await read_store(metrics, up, failing)
    assert metrics.registry.get_sample_value("pynet_store_up") == 1, "it answered the probe"
    assert sample(metrics, "pynet_ipam_allocations", pool="10.1.0.0/24") == 3


@pytest.mark.parametrize(
    "given, expected",
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("[::1]:9477", ("::1", 9477)),
        (":9477", ("127.0.0.1", 9477)),
        ("/run/pynet/metrics.sock", "/run/pynet/metrics.sock"),
    ],
)
def test_listen_addresses(given: str, expected: object) -> None:
    assert parse_listen(given) == expected


@pytest.mark.parametrize("given", ["localhost", "host:port", "host:70000"])
def test_bad_listen_addresses_are_named(given: str) -> None:
    with pytest.raises(ValueError, match="--metrics-listen"):
        parse_listen(given)
