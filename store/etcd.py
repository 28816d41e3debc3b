"""The etcd store: aetcd 1.0.0 plus the thin wrapper docs/dependencies.md §1 calls for.

aetcd does the KV, transaction and lease calls and maps gRPC status codes to its own
exceptions (keeping the gRPC error as `__cause__`). What it leaves to this module, measured
against etcd 3.4:

- It only opens insecure channels (`Client.connect` hard-codes `insecure_channel`), so
  `_Client.connect` builds the channel itself, with TLS when the endpoint is https.
- It authenticates once. etcd keeps simple tokens in memory, so after an etcd restart KV and
  lease calls fail with UNAUTHENTICATED "invalid auth token"; calls here log in again and
  retry (and a watch that etcd cancels does the same).
- A watch dies with its stream and is never resumed. Its `Watcher` multiplexes all watches on
  one stream whose watch ids restart at 0 on a new stream, so cancelling a dead watch can
  cancel a live one; each `watch()` here owns a raw gRPC watch stream instead, and resumes it
  from the last delivered revision + 1.
- Refreshing an unknown lease answers TTL 0 instead of failing; that becomes `NotFound`.

Deadlines and failover: every call runs under one deadline (`timeout`) across all endpoints.
Endpoints are tried in turn from the last one that worked; one that refuses connections is
skipped at once, and rounds repeat until the deadline, so a call rides out an etcd restart or
leader election shorter than `timeout` and otherwise fails at the deadline, naming the
endpoints and the last error. Each attempt gets `timeout / len(endpoints)`: a member that
holds the connection but answers nothing (frozen, partitioned) leaves the others time to
answer instead of spending the whole deadline. A write is only retried when gRPC failed
before sending it: a write cut off in flight may have been applied, and retrying a
compare-and-swap would then report it as lost.

Every failure comes out as `StoreUnavailable`, whatever gRPC status, aetcd class or grpc.aio
error it was (`_translate`), except NOT_FOUND, a real answer (`NotFound`: the lease is gone):
the callers, background tasks included, need to know one error for "etcd did not serve it".

One semantic difference from the embedded store: etcd fails a `value` compare on a key that
does not exist whatever the operator, where `Compare.holds` compares against b"". Use a
`version` compare (`Compare.absent`) to test for existence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc, transactions
from aetcd.utils import prefix_range_end

from pynet.store.base import Compare, Event, KeyValue, Op, Put
from pynet.store.errors import NotFound, RevisionCompacted, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a call on one endpoint can fail with: gRPC's status errors, aetcd's classes for them (the
# gRPC error as `__cause__`), and grpc.aio's own (a call on a channel being closed).
_RPC_FAILURES = (aetcd.ClientError, grpc.RpcError, grpc.aio.BaseError)
_Code = grpc.StatusCode
# One member could not serve the call now (down, restarting, without a leader, overloaded: etcd's
# "too many requests" is RESOURCE_EXHAUSTED, "leader changed" UNAVAILABLE, a proxy missing a
# method UNIMPLEMENTED); another member may. A read tries the next endpoint.
_ENDPOINT_CODES = frozenset({
    _Code.CANCELLED, _Code.UNKNOWN, _Code.DEADLINE_EXCEEDED, _Code.RESOURCE_EXHAUSTED, _Code.ABORTED,
    _Code.UNIMPLEMENTED, _Code.INTERNAL, _Code.UNAVAILABLE, _Code.DATA_LOSS,
})
# etcd's verdict on the request itself, which every member repeats (a request too large,
# too many operations in a txn, a compacted revision, a permission): asking the next one only
# spends the deadline. StoreUnavailable at once, naming the code.
_VERDICT_CODES = frozenset({
    _Code.INVALID_ARGUMENT, _Code.ALREADY_EXISTS, _Code.PERMISSION_DENIED, _Code.FAILED_PRECONDITION,
    _Code.OUT_OF_RANGE, _Code.UNAUTHENTICATED,
})

_MAX_MESSAGE = 32 * 1024 * 1024
# Keys per range reply: 500 IPAM addresses are about 85 KiB on the wire.
PAGE_SIZE = 500
_CHANNEL_OPTIONS = [
    # gRPC backs off reconnecting for up to 120 s by default and fails calls at once
    # meanwhile; capped at 0.5 s, a restarted etcd is usable again within half a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Pings on open streams let a watch notice an etcd that vanished without closing the
    # socket (power loss, partition). etcd refuses pings more often than every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC refuses replies over 4 MiB by default: a range over 20,000 IPAM addresses (about
    # 170 bytes each on the wire) came close, and a /16 full of them would exceed it. Ranges
    # are read in pages of `page_size` keys (EtcdStore), so a reply stays near page_size times
    # the largest value; the limit is set explicitly, with room for pynet's largest records
    # (network and cluster specs, a few KiB), instead of leaning on gRPC's default.
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
# etcd cancels a watch carrying this metadata when its member loses the raft leader, instead
# of leaving it silent; the watch then fails over to another member.
_REQUIRE_LEADER = ("hasleader", "true")
_WATCH_RETRY_MIN, _WATCH_RETRY_MAX = 0.25, 5.0
_ROUND_PAUSE = 0.1  # between rounds over refusing endpoints, within one call's deadline

_TARGETS: dict[str, Callable[[bytes], transactions.BaseCompare]] = {
    "version": transactions.Version,
    "value": transactions.Value,
    "mod_revision": transactions.Mod,
    "create_revision": transactions.Create,
}
_OPERATORS: dict[str, Callable[[Any, Any], transactions.BaseCompare]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}


class _EndpointDown(Exception):
    """One endpoint did not serve a call; `never_sent` means etcd surely never saw it."""

    def __init__(self, details: str, never_sent: bool) -> None:
        super().__init__(details)
        self.never_sent = never_sent


class _WatchCancelled(Exception):
    """etcd cancelled a watch for a reason other than compaction (such as a token it forgot)."""


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped (pyproject.toml, [tool.mypy])
    """aetcd's client for one endpoint, with the channel and the auth token managed here."""

    def __init__(
        self, endpoint: str, *, timeout: float, tls: tuple[str, str, str] | None, user: str, password: str
    ) -> None:
        super().__init__(username=user or None, password=password if user else None, timeout=timeout)
        self.endpoint = endpoint
        self._target = urlsplit(endpoint).netloc
        self._tls = tls
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Replaces aetcd's: same stubs, but TLS when asked, and no aetcd Watcher (unused)."""
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if self._connected.is_set():
                return
            channel = self._channel()
            try:
                self.metadata = await self._token(channel)
            except BaseException:
                await channel.close()
                raise
            self.channel = channel
            self.kvstub = rpc.KVStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._connected.set()

    async def reauthenticate(self) -> None:
        await self.connect()
        self.metadata = await self._token(self.channel)

    async def revision(self) -> int:
        """From a Status header: unlike a range, it needs no read permission on any key. It is
        the answering member's revision, which covers every write it has acknowledged."""
        await self.connect()
        status = await self.maintenancestub.Status(
            rpc.StatusRequest(), timeout=self._timeout, metadata=self.metadata
        )
        return int(status.header.revision)

    async def range_page(self, start: bytes, end: bytes, limit: int, revision: int) -> tuple[list[Any], bool, int]:
        """Up to `limit` keys of [start, end) in key order, at `revision` (0: the latest): the
        keys, whether more follow, and the revision read. aetcd's get_range drops both."""
        await self.connect()
        request = rpc.RangeRequest(
            key=start, range_end=end, limit=limit, revision=revision, sort_order=rpc.RangeRequest.ASCEND
        )
        reply = await self.kvstub.Range(request, timeout=self._timeout, metadata=self.metadata)
        return list(reply.kvs), bool(reply.more), int(reply.header.revision)

    async def open_watch(self, prefix: str, start: int) -> tuple[grpc.aio.StreamStreamCall[Any, Any], Any]:
        """A watch stream for keys under `prefix` from `start`, and its first (created) response."""
        await self.connect()
        call = rpc.WatchStub(self.channel).Watch(metadata=(*(self.metadata or ()), _REQUIRE_LEADER))
        try:
            key, range_end = _span(prefix)
            create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start)
            await call.write(rpc.WatchRequest(create_request=create))
            return call, await call.read()
        except BaseException:
            call.cancel()
            raise

    def _channel(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        ca, cert, key = (Path(p).read_bytes() if p else None for p in self._tls)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.aio.secure_channel(self._target, credentials, options=_CHANNEL_OPTIONS)

    async def _token(self, channel: grpc.aio.Channel) -> tuple[tuple[str, str], ...] | None:
        if self._username is None:
            return None
        request = rpc.AuthenticateRequest(name=self._username, password=self._password)
        reply = await rpc.AuthStub(channel).Authenticate(request, timeout=self._timeout)
        return (("token", reply.token),)


class EtcdStore:
    """store.base.Store on an etcd cluster; see the module docstring for the failure policy."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 3.0,
        ca: str = "",
        cert: str = "",
        key: str = "",
        user: str = "",
        password: str = "",
        page_size: int = PAGE_SIZE,
    ) -> None:
        if not endpoints:
            raise ValueError("pynet: at least one etcd endpoint is needed")
        if password and not user:
            raise ValueError("pynet: an etcd password needs an etcd user")
        for endpoint in endpoints:
            if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).port:
                raise ValueError(f"pynet: etcd endpoint must look like http(s)://host:port, got {endpoint!r}")
        if page_size < 1:
            raise ValueError(f"pynet: etcd page size must be at least 1, got {page_size}")
        self.timeout = timeout
        self.page_size = page_size
        self._user = user
        self._clients = [
            _Client(
                e,
                timeout=timeout / len(endpoints),
                tls=(ca, cert, key) if urlsplit(e).scheme == "https" else None,
                user=user,
                password=password,
            )
            for e in endpoints
        ]
        self._current = 0
        self._closed = False

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        found = await self._call(lambda c: c.get(key.encode()))
        return None if found is None else _kv(found)

    async def range(self, prefix: str) -> list[KeyValue]:
        """Page by page (`page_size` keys a reply, each page its own call under the deadline),
        every page at the first one's revision, so the result is one snapshot as a single read
        would give. If etcd compacts that revision meanwhile, the read starts over."""
        while True:
            try:
                return await self._range_at_one_revision(prefix)
            except _RPC_FAILURES as e:
                if _status(e) != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                log.info("pynet: range over %r outran a compaction; reading it again", prefix)

    async def _range_at_one_revision(self, prefix: str) -> list[KeyValue]:
        start, end = _span(prefix)
        found: list[KeyValue] = []
        revision = 0

        def page(c: _Client, start: bytes, revision: int) -> Awaitable[tuple[list[Any], bool, int]]:
            return c.range_page(start, end, self.page_size, revision)

        while True:
            kvs, more, read_at = await self._call(functools.partial(page, start=start, revision=revision))
            revision = revision or read_at
            found += [_kv(kv) for kv in kvs]
            if not more or not kvs:
                return found
            start = kvs[-1].key + b"\0"  # the next key in etcd's byte order

    async def revision(self) -> int:
        return await self._call(lambda c: c.revision())

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        done = await self._call(lambda c: c.put(key.encode(), value, lease=lease), write=True)
        return int(done.header.revision)

    async def delete(self, key: str, prefix: bool = False) -> int:
        if prefix:
            done = await self._call(lambda c: c.delete_range(*_span(key)), write=True)
            return int(done.deleted)
        one = await self._call(lambda c: c.delete(key.encode()), write=True)
        return 0 if one is None else int(one.deleted)

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        held, _ = await self._call(
            lambda c: c.transaction(
                compare=[_compare(x) for x in compare],
                success=[_op(o) for o in success],
                failure=[_op(o) for o in failure],
            ),
            write=True,
        )
        return bool(held)

    # -- watches -----------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Resumes across connection loss from the last delivered revision + 1, so the consumer
        sees neither gaps nor duplicates; only compaction (or closing the store) ends it."""
        if start_revision < 1:
            # No revision below 1 exists, and etcd would read 0 as "from now", silently
            # skipping history: treat it as compacted, as the embedded store does.
            raise RevisionCompacted(start_revision, 1)
        next_revision, pause, stale_token = start_revision, _WATCH_RETRY_MIN, False
        while not self._closed:
            client = self._clients[self._current]
            call: grpc.aio.StreamStreamCall[Any, Any] | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    if stale_token:
                        await client.reauthenticate()
                    call, response = await client.open_watch(prefix, next_revision)
                pause, stale_token = _WATCH_RETRY_MIN, False
                while response is not grpc.aio.EOF:
                    for event in _events(response, next_revision):
                        next_revision = event.mod_revision + 1
                        yield event
                    response = await call.read()
                problem = "the stream ended"
            except grpc.aio.AioRpcError as e:
                # mypy keeps the loop test's narrowing of _closed across awaits; close() sets it.
                if self._closed:
                    return  # type: ignore[unreachable]
                self._raise_for_credentials(client, e)
                problem, stale_token = f"{e.code().name}: {e.details()}", e.code() == grpc.StatusCode.UNAUTHENTICATED
            except _WatchCancelled as e:
                # etcd cancels a watch it may not serve; the usual cause is a token it
                # forgot, so log in again. A user really lacking read permission also fails
                # every range and write, loudly.
                problem, stale_token = f"cancelled by etcd: {e}", True
            except TimeoutError:
                problem = f"no answer within {self.timeout}s"
            except asyncio.CancelledError:
                if self._closed_under_us():
                    return
                raise
            finally:
                if call is not None:
                    call.cancel()
            log.warning(
                "pynet: watch on %r at %s lost (%s); resuming from revision %d in %.2fs",
                prefix, client.endpoint, problem, next_revision, pause,
            )
            self._skip(client)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WATCH_RETRY_MAX)

    # -- leases ------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        # Retried like a read: a grant repeated after a lost reply only leaves a spare lease
        # that expires on its own.
        lease = await self._call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh_lease(self, lease: int) -> None:
        reply = await self._call(lambda c: c.refresh_lease(lease))
        if reply is None or reply.TTL <= 0:
            raise NotFound(f"lease {lease} has expired or was revoked")

    async def revoke_lease(self, lease: int) -> None:
        # A lease that already expired is as revoked as it gets.
        with contextlib.suppress(NotFound):
            await self._call(lambda c: c.revoke_lease(lease))

    async def close(self) -> None:
        """Closing the channels also ends every open watch stream (its generator returns)."""
        self._closed = True
        for client in self._clients:
            await client.close()

    # -- internals ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return ", ".join(c.endpoint for c in self._clients)

    def _closed_under_us(self) -> bool:
        """grpc.aio raises CancelledError in calls whose channel close() cancelled; that must
        not reach a caller whose own task nobody cancelled."""
        task = asyncio.current_task()
        return self._closed and task is not None and not task.cancelling()

    def _rotation(self) -> list[_Client]:
        """Every endpoint once, starting with the one that answered last (fixed up front:
        `_skip` moves the start while the caller walks the list)."""
        return self._clients[self._current :] + self._clients[: self._current]

    def _skip(self, client: _Client) -> None:
        """Move on from a failed endpoint, unless a concurrent call already did."""
        i = self._clients.index(client)
        if self._current == i:
            self._current = (i + 1) % len(self._clients)

    async def _call(self, op: Callable[[_Client], Awaitable[T]], *, write: bool = False) -> T:
        """Run `op` on the endpoints in turn under one deadline; see the module docstring."""
        failures: dict[str, str] = {}
        client = self._clients[self._current]
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    for client in self._rotation():
                        try:
                            return await self._attempt(client, op)
                        except _EndpointDown as down:
                            self._skip(client)
                            if write and not down.never_sent:
                                raise StoreUnavailable(
                                    f"pynet: etcd at {client.endpoint} failed during a write, which"
                                    f" may or may not have been applied: {down}"
                                ) from None
                            failures[client.endpoint] = str(down)
                    await asyncio.sleep(_ROUND_PAUSE)
        except TimeoutError:
            self._skip(client)
            raise StoreUnavailable(
                f"pynet: etcd at {self._where} did not answer within {self.timeout}s{self._why(failures)}"
            ) from None
        except asyncio.CancelledError:
            if self._closed_under_us():
                raise StoreUnavailable("pynet: the etcd store was closed during the call") from None
            raise

    def _why(self, failures: dict[str, str]) -> str:
        if not failures:
            return ""
        if len(self._clients) == 1:
            return f" ({next(iter(failures.values()))})"
        return f" ({'; '.join(f'{e}: {d}' for e, d in failures.items())})"

    async def _attempt(self, client: _Client, op: Callable[[_Client], Awaitable[T]]) -> T:
        """One endpoint; re-authenticates once when etcd has forgotten our token (restart)."""
        try:
            try:
                return await op(client)
            except _RPC_FAILURES as e:
                if _status(e) != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                await client.reauthenticate()
                return await op(client)
        except _RPC_FAILURES as e:
            self._raise_for_credentials(client, e)
            raise _translate(e, client.endpoint) from e

    def _raise_for_credentials(self, client: _Client, error: BaseException) -> None:
        """Wrong credentials are the same on every member: fail at once, saying so."""
        rpc_error = _rpc_error(error)
        if rpc_error is None:
            return
        details = rpc_error.details() or ""
        if rpc_error.code() == grpc.StatusCode.PERMISSION_DENIED or (
            rpc_error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and ("authentication failed" in details or "user name is empty" in details)
        ):
            who = f"user {self._user!r}" if self._user else "a client without user and password"
            raise StoreUnavailable(f"pynet: etcd at {client.endpoint} refused {who}: {details}") from None


def _rpc_error(error: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind `error`: aetcd re-raises them as its own classes `from` it (and
    DuplicateLeaseError inside the handler, without `from`)."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, grpc.aio.AioRpcError):
            return e
    return None


def _status(error: BaseException) -> grpc.StatusCode | None:
    rpc_error = _rpc_error(error)
    return None if rpc_error is None else rpc_error.code()


def _translate(error: BaseException, endpoint: str) -> Exception:
    """Every failure of a call on one endpoint, as `_call` acts on it: NotFound (a real answer:
    the lease is gone), _EndpointDown (try the next endpoint), or StoreUnavailable."""
    rpc_error = _rpc_error(error)
    if rpc_error is None:  # no status: grpc.aio's own error, or aetcd's without a gRPC cause
        return _EndpointDown(f"{type(error).__name__}: {error}", never_sent=False)
    code, details = rpc_error.code(), rpc_error.details() or ""
    if code == _Code.NOT_FOUND:
        return NotFound(f"pynet: {details}")
    if code in _VERDICT_CODES:
        return StoreUnavailable(f"pynet: etcd at {endpoint} refused the request: {code.name}: {details}")
    # gRPC words UNAVAILABLE this way only when no connection could be made for the call.
    never_sent = code == _Code.UNAVAILABLE and details.startswith("failed to connect")
    return _EndpointDown(details if code == _Code.UNAVAILABLE else f"{code.name}: {details}", never_sent)


def _span(prefix: str) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for keys under `prefix`. etcd rejects an empty key, and spells
    "every key" as [b"\\0", b"\\0")."""
    start = prefix.encode()
    return (start, prefix_range_end(start)) if start else (b"\0", b"\0")


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _events(response: Any, next_revision: int) -> list[Event]:
    """One response's events. etcd never splits a revision across responses (no `fragment`),
    so resuming after the last delivered revision loses no event of a multi-key txn."""
    if response.compact_revision:
        raise RevisionCompacted(next_revision, int(response.compact_revision))
    if response.canceled:
        raise _WatchCancelled(response.cancel_reason)
    return [_event(e) for e in response.events]


def _event(event: Any) -> Event:
    if event.type == rpc.Event.PUT:
        return Event("put", event.kv.key.decode(), event.kv.value, event.kv.mod_revision)
    return Event("delete", event.kv.key.decode(), b"", event.kv.mod_revision)


def _compare(c: Compare) -> transactions.BaseCompare:
    return _OPERATORS[c.op](_TARGETS[c.target](c.key.encode()), c.operand)


def _op(op: Op) -> transactions.Put | transactions.Delete:
    if isinstance(op, Put):
        return transactions.Put(op.key.encode(), op.value, lease=op.lease)
    if op.prefix:
        return transactions.Delete(*_span(op.key))
    return transactions.Delete(op.key.encode())
