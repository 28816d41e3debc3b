"""What an operator's monitoring sees: Prometheus text after real requests, and failure logs."""

from __future__ import annotations

import io
import json
import logging
import shlex
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pynet.plugin.ops.admin_api import pool_usage
from pynet.plugin.daemon.logs import JsonFormatter, KeyValueFormatter
from pynet.plugin.metrics import serve_metrics
from tests.api.test_admin_api import NET, Plugin, plugin, populate  # noqa: F401  (plugin is a fixture)


async def scrape(p: Plugin, listen: str, url: str, connector: aiohttp.BaseConnector | None = None) -> str:
    store = p.daemon.store
    runner = await serve_metrics(listen, p.metrics, store.revision, lambda: pool_usage(p.daemon.ipam))
    assert runner is not None
    try:
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(url) as r:
                assert r.status == 200 and r.content_type == "text/plain"
                return await r.text()
    finally:
        await runner.cleanup()


async def test_metrics_count_requests_errors_and_time_them(plugin: Plugin, tmp_path: Path) -> None:
    await plugin.ok("/Plugin.Activate")
    await plugin.ok("/Plugin.Activate")
    assert (await plugin.post("/NetworkDriver.CreateNetwork", {"NetworkID": 5}))[0] == 400
    assert (await plugin.post("/NetworkDriver.Frobnicate", {}))[0] == 404
    await populate(plugin)
    await plugin.ok("/pynet/status")
    sock = tmp_path / "metrics.sock"
    text = await scrape(plugin, str(sock), "http://metrics/metrics", aiohttp.UnixConnector(path=str(sock)))
    lines = set(text.splitlines())
    assert 'pynet_requests_total{method="Plugin.Activate"} 2.0' in lines
    assert 'pynet_request_errors_total{method="NetworkDriver.CreateNetwork"} 1.0' in lines
    assert 'pynet_requests_total{method="NetworkDriver.CreateNetwork"} 2.0' in lines
    assert 'pynet_requests_total{method="NetworkDriver.CreateEndpoint"} 2.0' in lines
    assert 'pynet_request_errors_total{method="unknown"} 1.0' in lines, "unknown paths share one label"
    assert 'pynet_request_seconds_bucket{le="30.0",method="Plugin.Activate"} 2.0' in lines
    assert 'pynet_request_seconds_count{method="IpamDriver.RequestAddress"} 3.0' in lines
    assert "pynet/status" not in text, "the operator's routes are not Docker requests"
    # Methods not called yet are there at zero, so that Prometheus's rate() counts their first call.
    assert 'pynet_requests_total{method="NetworkDriver.Leave"} 0.0' in lines
    assert 'pynet_request_seconds_count{method="NetworkDriver.Leave"} 0.0' in lines
    # The store is timed under the daemon, and the IPAM gauge is read at scrape time.
    assert any(line.startswith('pynet_store_seconds_count{op="txn"}') for line in lines)
    assert 'pynet_ipam_allocations{pool="10.1.0.0/24"} 3.0' in lines
    assert 'pynet_ipam_pool_size{pool="10.1.0.0/24"} 254.0' in lines
    assert "pynet_store_up 1.0" in lines
    assert "# TYPE pynet_vxlan_peers gauge" in lines and "# TYPE pynet_fdb_programming_seconds histogram" in lines


async def test_metrics_listen_on_tcp(plugin: Plugin) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await plugin.ok("/Plugin.Activate")
    text = await scrape(plugin, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics")
    assert 'pynet_requests_total{method="Plugin.Activate"} 1.0' in text


def parse_kv(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(line))


@pytest.fixture(params=[(KeyValueFormatter, parse_kv), (JsonFormatter, json.loads)], ids=["kv", "json"])
def api_log(request: pytest.FixtureRequest) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """pynet.api's records in one of the two formats, read back as dicts."""
    formatter, parse = request.param
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    logger = logging.getLogger("pynet.api")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.WARNING)
    yield lambda: [parse(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(previous)


async def test_a_failed_request_is_logged_with_its_method_and_ids(
    plugin: Plugin, api_log: Callable[[], list[dict[str, Any]]]
) -> None:
    await populate(plugin)
    body = {"NetworkID": NET, "EndpointID": "f" * 64, "SandboxKey": "", "Options": {}}
    assert (await plugin.post("/NetworkDriver.Join", body))[0] == 409
    assert (await plugin.post("/IpamDriver.ReleasePool", {"PoolID": "nonsense"}))[0] == 400
    join, release = api_log()[-2:]
    assert (join["level"], join["msg"]) == ("warning", "request failed")
    assert (join["method"], join["network"], join["endpoint"]) == ("NetworkDriver.Join", NET[:12], "f" * 12)
    assert "no endpoint" in join["error"]
    assert (release["method"], release["pool"]) == ("IpamDriver.ReleasePool", "nonsense")
