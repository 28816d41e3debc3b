"""How the operator's commands reach what they report on: the daemon's `/pynet/` routes on its
socket, or, when nobody answers there, the store (and the kernel) read by this process, so an
operator can look at a host whose pynet is down, which is when they most need to."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import aiohttp
import msgspec

from pynet.drivers.netlink import Netlink
from pynet.ipam import Ipam
from pynet.plugin.api.app import ADMIN_PREFIX
from pynet.plugin.daemon import daemon
from pynet.plugin.daemon.config import Settings
from pynet.plugin.daemon.state import State
from pynet.plugin.ops.render import note
from pynet.store.base import Store
from pynet.store.errors import PynetError

T = TypeVar("T")

DAEMON_TIMEOUT = 10.0


class CliError(PynetError):
    """Ends the command with its message and status 1 (as any PynetError does)."""


class Unreachable(CliError):
    """Nobody answers on the daemon's socket; the message says what was found there."""



async def ask(settings: Settings, name: str, type_: type[T], body: msgspec.Struct | None = None,
              timeout: float = DAEMON_TIMEOUT) -> T:
    sock = Path(settings.socket)
    if not sock.exists():
        raise Unreachable(f"no socket at {sock}: pynet is not running")
    connector = aiohttp.UnixConnector(path=str(sock))
    data = msgspec.json.encode(body) if body is not None else b""
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(f"http://pynet{ADMIN_PREFIX}{name}", data=data) as r:
                raw = await r.read()
                if r.status != 200:
                    raise CliError(_error_text(raw) or f"pynet answered {r.status}")
                return msgspec.json.decode(raw, type=type_)
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.os_error, ConnectionRefusedError):
            raise Unreachable(f"stale socket {sock}: nobody answers (pynet died without removing it)") from None
        raise Unreachable(f"cannot connect to {sock}: {e.os_error.strerror or e}") from None
    except TimeoutError:
        raise Unreachable(f"pynet does not answer on {sock} within {timeout:.0f} s") from None


class _Err(msgspec.Struct):
    Err: str = ""


def _error_text(raw: bytes) -> str:
    try:
        return msgspec.json.decode(raw, type=_Err).Err
    except msgspec.MsgspecError:
        return raw.decode(errors="replace")[:200]


def open_store(settings: Settings) -> Store:
    """The daemon's store, opened by this process (SQLite in WAL mode: readers and the daemon
    do not block each other); a missing embedded store is an error, never created here."""
    if not settings.etcd_endpoints and not settings.store_path.exists():
        raise CliError(f"no store at {settings.store_path}: wrong --state-dir, or pynet never ran here")
    return daemon.open_store(settings)


async def host_id(settings: Settings, store: Store) -> str:
    """Given, or the one the daemon generated and kept, or the only host the store has records
    of (a daemon started with --host-id keeps no file); never generated here."""
    if settings.host_id:
        return settings.host_id
    with contextlib.suppress(FileNotFoundError):
        return (Path(settings.state_dir) / "host-id").read_text().strip()
    root = f"{settings.store_prefix}hosts/"
    hosts = sorted({kv.key[len(root) :].split("/", 1)[0] for kv in await store.range(root)})
    if len(hosts) == 1:
        return hosts[0]
    known = f" (the store has {', '.join(hosts)})" if hosts else ""
    raise CliError(f"no host id in {settings.state_dir}: pass --host-id{known}")


@dataclass
class Local:
    """The store as the daemon would see it, for when the daemon does not answer."""

    host: str
    store: Store
    state: State
    ipam: Ipam


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@contextlib.asynccontextmanager
async def closing(thing: C) -> AsyncIterator[C]:
    """Stores and netlink sockets close with an async `close()`, not `aclose()`."""
    try:
        yield thing
    finally:
        await thing.close()


async def opened_netlink() -> Netlink:
    nl = Netlink()
    await nl.open()
    return nl


@contextlib.asynccontextmanager
async def local(settings: Settings) -> AsyncIterator[Local]:
    async with closing(open_store(settings)) as store:
        host = await host_id(settings, store)
        yield Local(host, store, State(store, settings.store_prefix, host), Ipam(store, host, settings.store_prefix))


async def fetch(settings: Settings, name: str, type_: type[T], read: Callable[[Local], Awaitable[T]]) -> T:
    """From the daemon, or from the store when the daemon does not answer."""
    try:
        return await ask(settings, name, type_)
    except Unreachable as e:
        note(f"pynet: {e}; reading the store directly")
    async with local(settings) as loc:
        return await read(loc)

