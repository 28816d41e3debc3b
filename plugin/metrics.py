"""Prometheus metrics: one private registry per daemon, served on an optional listener.

A private `CollectorRegistry` (not prometheus_client's global one) because tests run several
daemons in one process, and each must count only its own requests.

Backends get what they may observe as plain objects (`VxlanMetrics`), never this module:
drivers must not import plugin/ (docs/design.md, Layout), so the daemon passes the object in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from pynet.store.base import Compare, Event, KeyValue, Op, Store

log = logging.getLogger("pynet.metrics")

# In the text format pynet serves, prometheus_client adds a `<name>_created` gauge per counter
# and histogram series, which Prometheus stores as series of their own (75 of a fresh daemon's
# 638 samples) and no rule uses. The switch is process-wide: this module is the daemon's only
# user of prometheus_client (tests/kernel/test_prometheus.py lists what Prometheus reads).
disable_created_metrics()  # type: ignore[no-untyped-call]

T = TypeVar("T")

# Docker gives a plugin call tens of seconds; the top buckets show calls close to that.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# An embedded write is well under a millisecond; an etcd round trip is a few; the deadline is 3 s.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0)
# How long a scrape waits for the store: to answer a probe (an etcd Status, a few ms when it is
# well; a stopped etcd takes the whole wait, since the client retries the connection until its
# deadline), then to read the IPAM counts. 3 s at worst, within Prometheus's default
# scrape_timeout (10 s), so a store away shows as `pynet_store_up 0`, not as a failed scrape
# (`up 0`, pynet down); within a 2 s scrape_timeout too (tests/kernel/test_prometheus.py).
PROBE_TIMEOUT = 1.0
SCRAPE_STORE_TIMEOUT = 2.0
# The `op` label of `pynet_store_seconds`: TimedStore's methods.
STORE_OPS = ("get", "range", "put", "delete", "txn", "revision", "grant_lease", "refresh_lease", "revoke_lease")


class PoolUsage(NamedTuple):
    """One pool as a scrape reports it."""

    allocated: int  # addresses allocated, on every host
    size: int  # addresses it can allocate: the subnet less network and broadcast


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pynet_requests", "Docker plugin requests", ["method"], registry=r)
        self.request_errors = Counter(
            "pynet_request_errors", "Docker plugin requests answered with an error", ["method"], registry=r
        )
        self.request_seconds = Histogram(
            "pynet_request_seconds", "Time to answer a Docker plugin request", ["method"],
            buckets=REQUEST_BUCKETS, registry=r,
        )
        self.store_seconds = Histogram(
            "pynet_store_seconds", "Time of one store operation", ["op"], buckets=STORE_BUCKETS, registry=r
        )
        for op in STORE_OPS:  # at zero from the start, as the methods (declare_methods)
            self.store_seconds.labels(op)
        self.ipam_allocations = Gauge(
            "pynet_ipam_allocations", "Addresses allocated in a pool (every host), read at scrape time",
            ["pool"], registry=r,
        )
        self.ipam_pool_size = Gauge(
            "pynet_ipam_pool_size", "Addresses a pool can allocate (the subnet less network and broadcast)",
            ["pool"], registry=r,
        )
        self.store_up = Gauge(
            "pynet_store_up",
            "1 if the store (etcd, or the embedded one) answered this scrape's probe within 1 s, else 0",
            registry=r,
        )
        self.vxlan = VxlanMetrics(self.registry)

    def declare_methods(self, methods: Iterable[str]) -> None:
        """Every method's series from the start, at zero: Prometheus's rate() sees no increase
        in a series whose first sample is already 1, so a method's first request (often its
        only one for a while: a CreateNetwork) would be missing from rates and latencies."""
        for method in methods:
            self.requests.labels(method)
            self.request_errors.labels(method)
            self.request_seconds.labels(method)

    def observe_request(self, method: str, seconds: float, failed: bool) -> None:
        self.requests.labels(method).inc()
        self.request_seconds.labels(method).observe(seconds)
        if failed:
            self.request_errors.labels(method).inc()

    def set_pools(self, pools: dict[str, PoolUsage]) -> None:
        """Replaces every pool's values, so a removed pool stops being reported."""
        self.ipam_allocations.clear()
        self.ipam_pool_size.clear()
        for pool, usage in pools.items():
            self.ipam_allocations.labels(pool).set(usage.allocated)
            self.ipam_pool_size.labels(pool).set(usage.size)

    def text(self) -> bytes:
        return generate_latest(self.registry)


# The daemon's metrics on its aiohttp app, for the request middleware.
METRICS = web.AppKey("metrics", Metrics)


class VxlanMetrics:
    """What the VXLAN backend reports: the daemon passes `metrics.vxlan` as the backend's
    `observer` (drivers/peers.py calls `on_programmed` and `forget`), so drivers never
    import this module."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._peers = Gauge("pynet_vxlan_peers", "Remote VTEPs programmed for a VNI", ["vni"], registry=registry)
        self._lag = Histogram(
            "pynet_fdb_programming_seconds",
            "Time from a remote endpoint's registration in the store (or from this host's network"
            " of its VNI, if later) to its FDB and neighbour entries being programmed here",
            ["vni"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def on_programmed(self, vni: int, vteps: int, lags: list[float]) -> None:
        """The VNI's histogram exists (all zero) from its first programming on, before any
        lag: Prometheus's rate() sees no increase in a series whose first sample is already 1,
        so a first slow programming would go unseen."""
        self._peers.labels(str(vni)).set(vteps)
        lag = self._lag.labels(str(vni))
        for seconds in lags:
            lag.observe(seconds)

    def forget(self, vni: int) -> None:
        """For a VNI whose last network here is gone, so it stops being reported."""
        for metric in (self._peers, self._lag):
            try:
                metric.remove(str(vni))
            except KeyError:
                pass


class TimedStore:
    """A Store that times every call into `pynet_store_seconds{op}`; watches are not timed,
    since they live as long as the daemon."""

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        self.inner = inner
        self._seconds = metrics.store_seconds

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self._seconds.labels(op).observe(time.perf_counter() - started)

    async def get(self, key: str) -> KeyValue | None:
        return await self._timed("get", self.inner.get(key))

    async def range(self, prefix: str) -> list[KeyValue]:
        return await self._timed("range", self.inner.range(prefix))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return await self._timed("put", self.inner.put(key, value, lease))

    async def delete(self, key: str, prefix: bool = False) -> int:
        return await self._timed("delete", self.inner.delete(key, prefix))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> bool:
        return await self._timed("txn", self.inner.txn(compare, success, failure))

    async def revision(self) -> int:
        return await self._timed("revision", self.inner.revision())

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        return self.inner.watch(prefix, start_revision)

    async def grant_lease(self, ttl: int) -> int:
        return await self._timed("grant_lease", self.inner.grant_lease(ttl))

    async def refresh_lease(self, lease: int) -> None:
        await self._timed("refresh_lease", self.inner.refresh_lease(lease))

    async def revoke_lease(self, lease: int) -> None:
        await self._timed("revoke_lease", self.inner.revoke_lease(lease))

    async def close(self) -> None:
        await self.inner.close()


def timed(store: Store, metrics: Metrics | None) -> Store:
    """`store`, timed into `metrics` when the daemon keeps metrics."""
    return store if metrics is None else TimedStore(store, metrics)


# -- the listener ----------------------------------------------------------------------------


def parse_listen(addr: str) -> tuple[str, int] | str:
    """`host:port` (IPv6 as `[::1]:9100`) or a Unix socket path (anything with a slash). An
    empty host is loopback: metrics reach the network only when asked for (`0.0.0.0:9100`)."""
    if "/" in addr:
        return addr
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"pynet: --metrics-listen must be host:port or a socket path, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def read_store(
    metrics: Metrics, probe: Callable[[], Awaitable[object]], pools: Callable[[], Awaitable[dict[str, PoolUsage]]]
) -> None:
    """What a scrape reads from the store: `probe` (any answer means reachable) sets
    `pynet_store_up`, then `pools` the IPAM gauges. A slow or failing store leaves the IPAM
    gauges as last seen rather than failing the scrape."""
    try:
        await asyncio.wait_for(probe(), PROBE_TIMEOUT)
    except Exception as e:
        metrics.store_up.set(0)
        log.warning("metrics: store unreachable", extra={"error": str(e) or type(e).__name__})
        return
    metrics.store_up.set(1)
    try:
        metrics.set_pools(await asyncio.wait_for(pools(), SCRAPE_STORE_TIMEOUT))
    except Exception as e:
        log.warning("metrics: IPAM counts not refreshed", extra={"error": str(e) or type(e).__name__})


async def serve_metrics(
    addr: str,
    metrics: Metrics,
    probe: Callable[[], Awaitable[object]],
    pools: Callable[[], Awaitable[dict[str, PoolUsage]]],
) -> web.AppRunner | None:
    """Start `GET /metrics` on `addr` (None when `addr` is empty: the listener is optional),
    reading the store at each scrape (`read_store`)."""
    if not addr:
        return None

    async def scrape(_: web.Request) -> web.Response:
        await read_store(metrics, probe, pools)
        return web.Response(body=metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    where = parse_listen(addr)
    site: web.BaseSite
    if isinstance(where, str):
        Path(where).unlink(missing_ok=True)
        site = web.UnixSite(runner, where)
    else:
        site = web.TCPSite(runner, where[0], where[1])
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("metrics listening", extra={"listen": addr})
    return runner

