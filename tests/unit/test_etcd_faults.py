"""EtcdStore's failure policy: every gRPC status (raw, or as aetcd's classes) comes out as
StoreUnavailable, reads fail over to the next endpoint, and the host's lease survives an etcd
that refuses it for a while. Real etcd members started by pid (tests/etcd_server.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aetcd.exceptions
import grpc
import pytest

from pynet.drivers.peers import Registry
from pynet.store import etcd as etcd_module
from pynet.store.errors import NotFound, StoreUnavailable
from pynet.store.etcd import EtcdStore
from tests.etcd_server import EtcdServer, etcd_server, free_port

TIMEOUT = 1.0
EVERY_CODE = [c for c in grpc.StatusCode if c != grpc.StatusCode.OK]


def rpc_error(code: grpc.StatusCode, details: str = "etcdserver: something") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def aetcd_error(code: grpc.StatusCode) -> Exception:
    """The error as aetcd's handler re-raises it (its class, the gRPC error as the cause)."""
    try:
        aetcd.exceptions._handle_exception(rpc_error(code))
    except Exception as e:
        return e
    raise AssertionError("aetcd raised nothing")


def failing_first(error: Exception) -> tuple[Callable[[Any], Awaitable[str]], list[str]]:
    """An operation that fails with ERROR on the first endpoint it is tried on and answers on
    the others."""
    asked: list[str] = []

    async def op(client: Any) -> str:
        asked.append(client.endpoint)
        if client.endpoint == asked[0]:
            raise error
        return "answer"

    return op, asked


def two_endpoints() -> EtcdStore:
    """Nothing listens on either: the operations above never touch their channels."""
    return EtcdStore([f"http://127.0.0.1:{free_port()}" for _ in range(2)], timeout=TIMEOUT)


def test_every_status_code_has_a_policy() -> None:
    """A code added to gRPC (or forgotten here) would otherwise escape as itself."""
    policies = [etcd_module._ENDPOINT_CODES, etcd_module._VERDICT_CODES, {grpc.StatusCode.NOT_FOUND}]
    assert sorted(c.name for p in policies for c in p) == sorted(c.name for c in EVERY_CODE)


@pytest.mark.parametrize("wrap", [rpc_error, aetcd_error], ids=["grpc", "aetcd"])
@pytest.mark.parametrize("code", EVERY_CODE, ids=lambda c: c.name)
async def test_a_read_fails_over_or_fails_as_store_unavailable(
    code: grpc.StatusCode, wrap: Callable[[grpc.StatusCode], Exception]
) -> None:
    store = two_endpoints()
    op, asked = failing_first(wrap(code))
    try:
        if code in etcd_module._ENDPOINT_CODES:
            assert await store._call(op) == "answer"
            assert asked == [c.endpoint for c in store._clients]
        elif code == grpc.StatusCode.NOT_FOUND:
            with pytest.raises(NotFound):
                await store._call(op)
        else:
            with pytest.raises(StoreUnavailable, match=f"refused .*{code.name}|refused a client"):
                await store._call(op)
            assert len(asked) == 1 + (code == grpc.StatusCode.UNAUTHENTICATED), "no use asking another member"
    finally:
        await store.close()


@pytest.mark.parametrize("code", sorted(etcd_module._ENDPOINT_CODES, key=lambda c: c.name), ids=lambda c: c.name)
async def test_a_write_cut_off_is_never_repeated(code: grpc.StatusCode) -> None:
    store = two_endpoints()
    op, asked = failing_first(aetcd_error(code))
    try:
        with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
            await store._call(op, write=True)
        assert len(asked) == 1
    finally:
        await store.close()


async def test_errors_without_a_status_are_store_unavailable_too() -> None:
    store = two_endpoints()
    for error in (aetcd.exceptions.ClientError("odd"), grpc.aio.UsageError("Channel is closed")):
        op, asked = failing_first(error)
        assert await store._call(op) == "answer" and len(asked) == 2
        op, asked = failing_first(error)
        with pytest.raises(StoreUnavailable):
            await store._call(op, write=True)
    await store.close()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[EtcdServer, EtcdServer]]:
    """Two single-member etcds: the store's first and second endpoint."""
    with etcd_server(tmp_path / "a") as first, etcd_server(tmp_path / "b") as second:
        yield first, second


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_reads_fail_over_to_the_next_endpoint(two: tuple[EtcdServer, EtcdServer], fault: str) -> None:
    """Stopped: its port is closed. Frozen (SIGSTOP): it holds the connection and answers nothing;
    before each attempt had its share of the deadline, that one spent all of it."""
    first, second = two
    second.etcdctl("put", "/fo/k", "from-second")
    store = EtcdStore([first.endpoint, second.endpoint], timeout=2 * TIMEOUT)
    try:
        assert (await store.get("/fo/k")) is None  # the first answers while it is up
        first.stop() if fault == "stopped" else first.freeze()
        found = await store.get("/fo/k")
        assert found is not None and found.value == b"from-second"
        assert [kv.key for kv in await store.range("/fo/")] == ["/fo/k"]
        assert await store.revision() > 0
    finally:
        if fault == "frozen":
            first.thaw()
        await store.close()


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[tuple[EtcdServer, EtcdStore]]:
    """An etcd with a 1 MiB space quota, so the test can fill it: past it, etcd raises its
    NOSPACE alarm and refuses puts and lease grants with RESOURCE_EXHAUSTED."""
    with etcd_server(tmp_path / "etcd", args=("--quota-backend-bytes=1048576",)) as server:
        store = EtcdStore([server.endpoint], timeout=TIMEOUT)
        yield server, store
        await store.close()


async def fill(store: EtcdStore) -> None:
    with pytest.raises(StoreUnavailable, match=r"RESOURCE_EXHAUSTED|space"):
        for i in range(100):
            await store.put(f"/filler/{i}", b"x" * 200_000)


def keys(server: EtcdServer, prefix: str) -> dict[str, int]:
    """Key -> lease of every key under PREFIX."""
    out = json.loads(server.etcdctl("get", "--prefix", prefix, "-w", "json"))
    return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in out.get("kvs", [])}


async def test_the_host_comes_back_after_etcd_refused_its_new_lease(capped: tuple[EtcdServer, EtcdStore]) -> None:
    """The lease revoked by an operator while etcd is out of space: the keep-alive's re-grant
    is refused (RESOURCE_EXHAUSTED, which used to escape and end the keep-alive for good). Once
    the operator frees space and disarms the alarm, the host's keys are back, under a new lease."""
    server, store = capped
    registry = Registry(store, ttl=3)
    await registry.put("/h/vxlan/42/vteps/h1", {"address": "192.0.2.1", "port": 4789})
    keeper = asyncio.create_task(registry.keep_alive_forever())
    try:
        await fill(store)
        server.etcdctl("lease", "revoke", format(registry._lease, "x"))
        assert keys(server, "/h/") == {}
        await asyncio.sleep(2 * registry.ttl / 3)  # two refreshes: lease gone, re-grant refused
        assert not keeper.done(), keeper
        assert keys(server, "/h/") == {}
        server.etcdctl("del", "--prefix", "/filler/")
        revision = json.loads(server.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]["revision"]
        server.etcdctl("compact", str(revision))
        server.etcdctl("defrag")
        server.etcdctl("alarm", "disarm")
        deadline = time.monotonic() + 10
        while not keys(server, "/h/"):
            assert time.monotonic() < deadline, "the host never registered again"
            await asyncio.sleep(0.1)
        # etcdctl blocks this loop, so the key can be seen before the renewal resumes and
        # records its lease; the renewal holds the registry's lock until it has.
        async with registry._lock:
            lease = keys(server, "/h/")["/h/vxlan/42/vteps/h1"]
            assert lease and lease == registry._lease
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
