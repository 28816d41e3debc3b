"""The fuzz tier's daemon and Hypothesis profiles (see tests/fuzz/__init__.py).

The daemon is the one `pynet serve` builds (`plugin.serve.build` and `application`: Docker's
routes and the operator's /pynet/ ones on a real Unix socket, the embedded store, the real IPAM
and state), with the kernel replaced: each mode's backend parses its options with the real
backend's own code and records what it would create, and gc sees a fake link list and
firewall. It runs in a thread with its own event loop, so the properties are plain synchronous
Hypothesis tests speaking HTTP over the socket.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
import string
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from pynet.drivers.base import Backend, Draft, Endpoint, JoinInfo, Network
from pynet.drivers.config import Config
from pynet.drivers.netlink import Route
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.daemon import Daemon
from pynet.plugin.metrics import Metrics
from pynet.plugin.ops.admin_api import ADMIN, Admin
from pynet.plugin.serve import application, bind, build
from pynet.store.errors import PynetError
from tests.api.test_admin_api import FakeIptables, FakeNetlink

T = TypeVar("T")

# CI: a fixed number of examples, drawn the same way every run (derandomize), no example
# database in the checkout. `long` (PYNET_FUZZ_PROFILE=long): ten times as many, at random.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,  # the machine is shared: a slow example is not a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=250, derandomize=False)
settings.load_profile(os.environ.get("PYNET_FUZZ_PROFILE", "ci"))


def kernel_accepts_mac(mac: str) -> bool:
    """What `ip link add ... address MAC` takes: six hex octets, unicast and not all zero
    (is_valid_ether_addr, include/linux/etherdevice.h)."""
    octets = mac.split(":")
    if len(octets) != 6 or not all(len(o) == 2 and all(c in string.hexdigits for c in o) for o in octets):
        return False
    raw = bytes(int(o, 16) for o in octets)
    return not raw[0] & 1 and any(raw)


class KernelDouble:
    """One mode's backend: the real `parse_options`, the kernel a set of names."""

    link_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, real: Backend, kernel: set[str]) -> None:
        self.real = real
        self.mode = real.mode
        self.publishes_ports = real.publishes_ports
        self.internal_gateway = real.internal_gateway
        self.kernel = kernel

    def parse_options(self, options: Mapping[str, str], net: Draft) -> Config:
        return self.real.parse_options(options, net)

    async def create_network(self, net: Network) -> Config:
        self.kernel.add(net.id)
        return net.config

    async def delete_network(self, net: Network) -> None:
        self.kernel.discard(net.id)

    async def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        if ep.mac and not kernel_accepts_mac(ep.mac):
            raise PynetError(f"pynet: cannot create veth: the kernel refuses MAC {ep.mac!r} (test double)")
        ep.ifname, ep.peer = "pnh-" + ep.id[:11], "pnc-" + ep.id[:11]
        ep.mac = ep.mac or "02:42:0a:01:00:02"
        self.kernel.add(ep.id)

    async def join(self, net: Network, ep: Endpoint) -> JoinInfo:
        return JoinInfo(src_name=ep.peer)

    async def leave(self, net: Network, ep: Endpoint) -> None:
        return None

    async def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        self.kernel.discard(ep.id)

    async def program_external(self, net: Network, ep: Endpoint) -> None:
        self.kernel.add("ports:" + ep.id)

    async def revoke_external(self, net: Network, ep: Endpoint) -> None:
        self.kernel.discard("ports:" + ep.id)


class RoutelessNetlink(FakeNetlink):
    async def routes(self) -> list[Route]:
        return []  # RequestPool with no subnet avoids the host's routes: this host has none


class Records(logging.Handler):
    """Every record of pynet's loggers, from the daemon's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Reply:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.body = status, content_type, body


class Served:
    """A daemon on its socket in a thread; `call` posts from the test's thread. `reset` starts a
    fresh one (new store, nothing cached) for each example, so examples are independent and
    Hypothesis can shrink a failure to its smallest form."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock = tmp / "pynet.sock"
        self.kernel: set[str] = set()
        self.log = Records()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-daemon", daemon=True)
        self.thread.start()
        self.generation = 0
        self.daemon, self.runner = self.run(self._start())
        self.conn: http.client.HTTPConnection | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    async def _start(self) -> tuple[Daemon, web.AppRunner]:
        self.generation += 1
        state_dir = self.tmp / f"state{self.generation}"
        s = Settings(socket=str(self.sock), state_dir=str(state_dir), host_id="h1")
        metrics = Metrics()
        d = build(s, metrics)
        d.backends = {mode: KernelDouble(real, self.kernel) for mode, real in d.backends.items()}  # type: ignore[misc]
        d.netlink = RoutelessNetlink()  # type: ignore[assignment]
        d.ready.set()
        app = application(d, metrics)
        app[ADMIN] = Admin(time.monotonic(), FakeIptables())
        return d, await bind(app, self.sock)

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.daemon.store.close()

    async def _restart(self) -> tuple[Daemon, web.AppRunner]:
        await self._stop()
        return await self._start()

    def reset(self) -> None:
        self._disconnect()
        self.daemon, self.runner = self.run(self._restart())
        self.kernel.clear()
        self.log.records.clear()

    async def _snapshot(self) -> dict[str, bytes]:
        return {kv.key: kv.value for kv in await self.daemon.store.range("")}

    def snapshot(self) -> tuple[dict[str, bytes], set[str]]:
        return self.run(self._snapshot()), set(self.kernel)

    def call(self, path: str, body: bytes) -> Reply:
        for attempt in range(2):  # a kept-alive connection the server closed: once more
            if self.conn is None:
                self.conn = UnixConnection(str(self.sock))
            try:
                # Docker sends no Content-Type and this Accept header (docs/protocol.md §1.3).
                self.conn.request("POST", path, body, {"Accept": "application/vnd.docker.plugins.v1.2+json"})
                r = self.conn.getresponse()
                return Reply(r.status, r.getheader("Content-Type", ""), r.read())
            except (http.client.HTTPException, ConnectionError):
                self._disconnect()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._disconnect()
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("plugin.moby.localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("fuzz"))
    logger = logging.getLogger("pynet")
    logger.addHandler(s.log)
    try:
        yield s
    finally:
        logger.removeHandler(s.log)
        s.close()
