"""Docker's remote IPAM (docs/protocol.md §3) over the store: pools shared by hosts, serial addresses.

Correctness never depends on this process being the only writer: every change is one store
transaction whose compares fail if another host (or coroutine) changed what it was based on,
and the change is then recomputed from a fresh read, a bounded number of times. The in-process
locks only keep this host's own requests from racing each other needlessly.

Choices where Docker leaves room:

- A pool is its subnet, whichever address space asked for it, so the same subnet on several
  hosts is one pool with one set of addresses. A host asking again for a subnet it already
  holds gets `Conflict`: Docker never does that (RequiresRequestReplay is false).
- A gateway request without an address joins the pool's existing gateway if another host
  created one (a shared pool should have one gateway address on every host, e.g. for VXLAN);
  otherwise it takes the first usable address of the pool.
- Aux and static `--ip` addresses look the same to the IPAM (a specific address, no options);
  both are recorded as `aux`, and `bind` turns a static one into its endpoint's. They are not
  shared between hosts: two hosts reserving one address would be a collision.
- `release_address` on an unknown pool or a free address does nothing (Docker only logs the
  errors of ReleaseAddress, and retries must be harmless); an unknown pool is logged. It never
  frees an address another host allocated: that host's container may still use it.
- `release_pool` by one host of several also frees whatever that host left allocated in the
  pool, since Docker cannot hold addresses in a network it has removed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pynet.ipam.chunks import (
    CHUNK,
    blocked_bits,
    chunk_base,
    chunk_of,
    decode_bits,
    encode_bits,
    first_clear,
    with_bit,
)
from pynet.ipam.layout import (
    AUX,
    CONTAINER,
    GATEWAY,
    GLOBAL_SPACE,
    INDEXED,
    LOCAL_SPACE,
    SPACES,
    AddrRecord,
    Keys,
    PoolId,
    Poolset,
    decode,
    decode_poolset,
    encode,
)
from pynet.ipam.netmath import (
    IPAddress,
    IPNetwork,
    check_assignable,
    family,
    first_free_subnet,
    first_usable,
    parse_default_pools,
    parse_ip,
    parse_ip_or_cidr,
    parse_sub_pool,
    parse_subnet,
    to_address,
    usable_exclusions,
)
from pynet.store import faults
from pynet.store.base import Compare, Delete, KeyValue, Op, Put, Store
from pynet.store.errors import Conflict, Exhausted, InvalidRequest, NotFound
from pynet.store.locks import KeyedLocks

log = logging.getLogger("pynet.ipam")

MAX_ATTEMPTS = 20
# Chunks rewritten per transaction when indexing: etcd refuses more than 128 operations.
_REINDEX_BATCH = 64
GATEWAY_REQUEST = "com.docker.network.gateway"
# Docker's swarm allocator adds this on its own; pynet always allocates serially anyway.
IGNORED_POOL_OPTIONS = frozenset({"com.docker.network.ipam.serial"})


@dataclass(frozen=True, slots=True)
class PoolReply:
    pool_id: str
    pool: str  # the master pool as CIDR, never the sub-pool (Docker checks addresses against it)
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Allocation:
    """One taken address as the leak finder needs it; a shared gateway yields one per host."""

    pool: str
    address: str  # bare IP
    host: str
    owner: str  # "gateway" | "aux" | "container" | endpoint ID
    time: float  # Unix time of the allocation


@dataclass(frozen=True, slots=True)
class PoolRef:
    """A pool this host requested and has not released, as the leak finder needs it."""

    pool_id: str  # as Docker holds it (RequestPool's reply), for release_pool
    subnet: str
    time: float  # Unix time of the request


def _alive(meta: KeyValue) -> Compare:
    """Holds while this very pool exists: not after its removal, nor in a re-creation."""
    return Compare(meta.key, "create_revision", "==", meta.create_revision)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One chunk of the allocation index as read, and the change that sets or clears a bit."""

    key: str
    n: int
    kv: KeyValue | None

    @property
    def bits(self) -> int:
        return decode_bits(self.kv.value) if self.kv is not None else 0

    def guard(self) -> Compare:
        return _unchanged_or_absent(self.kv, self.key)

    def change(self, offset: int, taken: bool) -> Op:
        bits = with_bit(self.bits, offset, taken)
        return Put(self.key, encode_bits(bits)) if bits else Delete(self.key)


class Ipam:
    """One per daemon; `host` names this daemon in the shared store and must be stable across
    restarts, or its pool references and allocations would look like another host's."""

    def __init__(
        self,
        store: Store,
        host: str,
        prefix: str = "/pynet/",
        default_pools4: Sequence[tuple[str, int]] = (("10.208.0.0/12", 24),),
        default_pools6: Sequence[tuple[str, int]] = (("fd70:706e::/32", 64),),
    ) -> None:
        if not host or "/" in host:
            raise ValueError(f"pynet: host name must be non-empty without '/', got {host!r}")
        self.store = store
        self.host = host
        self.keys = Keys(prefix)
        self._ranges4 = parse_default_pools(default_pools4, v6=False)
        self._ranges6 = parse_default_pools(default_pools6, v6=True)
        self._poolset_lock = asyncio.Lock()
        self._pool_locks = KeyedLocks()

    # -- pools -----------------------------------------------------------------------------

    async def request_pool(
        self,
        space: str,
        pool: str,
        sub_pool: str,
        options: Mapping[str, str] | None,
        v6: bool,
        exclude: Sequence[IPNetwork] = (),
    ) -> PoolReply:
        """`exclude` (host routes) only steers automatic choice: an explicit --subnet is obeyed."""
        _check_space(space)
        _check_pool_options(options)
        reply = await self._request_pool(space, pool, sub_pool, v6, exclude)
        faults.hit("request_pool.after_store")
        return reply

    async def _request_pool(
        self, space: str, pool: str, sub_pool: str, v6: bool, exclude: Sequence[IPNetwork]
    ) -> PoolReply:
        if not pool:
            if sub_pool:
                raise InvalidRequest(f"pynet: invalid --ip-range {sub_pool}: needs a --subnet")
            async with self._poolset_lock:
                subnet = await self._create_auto(space, v6, exclude)
            return PoolReply(str(PoolId(space, subnet)), str(subnet))
        subnet = parse_subnet(pool, "--subnet", v6)
        sub = parse_sub_pool(sub_pool, subnet) if sub_pool else None
        async with self._poolset_lock:
            await self._acquire(PoolId(space, subnet, sub))
        return PoolReply(str(PoolId(space, subnet, sub)), str(subnet))

    async def release_pool(self, pool_id: str) -> None:
        """Idempotent: a pool or reference already gone is what the caller wanted."""
        pid = PoolId.parse(pool_id)
        async with self._poolset_lock:
            for attempt in range(MAX_ATTEMPTS):
                outcome = await self._try_release_pool(pid.subnet)
                if outcome is not None:
                    if outcome:
                        faults.hit("release_pool.after_unref")
                        await self._drop_own_allocations(pid.subnet)
                    faults.hit("release_pool.after_store")
                    return
                await _backoff(attempt)
        raise _gave_up(pid.subnet)

    # -- addresses -------------------------------------------------------------------------

    async def request_address(
        self, pool_id: str, address: str, options: Mapping[str, str] | None
    ) -> str:
        pid = PoolId.parse(pool_id)
        gateway = (options or {}).get("RequestAddressType") == GATEWAY_REQUEST
        field_name = _address_field(gateway, pid.subnet)
        ip: IPAddress | None = None
        if address:
            ip = parse_ip(address, field_name)
            check_assignable(ip, pid.subnet, field_name)
        async with self._pool_lock(pid.subnet):
            for attempt in range(MAX_ATTEMPTS):
                meta = await self._indexed_meta(pid.subnet, pool_id)
                if gateway:
                    got = await self._take_gateway(pid, meta, ip, contended=attempt > 0)
                elif ip is not None:
                    got = await self._take_static(pid, meta, ip, contended=attempt > 0)
                else:
                    got = await self._take_dynamic(pid, meta, contended=attempt > 0)
                if got is not None:
                    faults.hit("request_address.after_store")
                    return f"{got}/{pid.subnet.prefixlen}"
                await _backoff(attempt)
        raise _gave_up(pid.subnet)

    async def release_address(self, pool_id: str, address: str) -> None:
        pid = PoolId.parse(pool_id)
        ip = parse_ip(address, "Address")
        if ip.version != pid.subnet.version or ip not in pid.subnet:
            raise InvalidRequest(f"pynet: invalid Address {ip}: outside pool {pid.subnet}")
        key = self.keys.addr(pid.subnet, ip)
        async with self._pool_lock(pid.subnet):
            for attempt in range(MAX_ATTEMPTS):
                kv = await self.store.get(key)
                if kv is None:
                    await self._note_missing_pool(pid.subnet, ip)
                    return
                if await self._release(kv, ip, pid.subnet, contended=attempt > 0):
                    faults.hit("release_address.after_store")
                    return
                await _backoff(attempt)
        raise _gave_up(pid.subnet)

    async def bind(self, address: str, endpoint_id: str) -> None:
        """Called from CreateEndpoint, which may carry addresses of Docker's own IPAM: those
        are simply not found here."""
        ip = parse_ip_or_cidr(address, "Address")
        if not endpoint_id:
            raise InvalidRequest(f"pynet: cannot bind address {ip} to an empty endpoint ID")
        kv = await self.store.get(self.keys.poolset)
        for subnet in decode_poolset(kv.value if kv else None):
            if subnet.version == ip.version and ip in subnet:
                if await self.store.get(self.keys.host(subnet, self.host)) is not None:
                    await self._bind_in(subnet, ip, endpoint_id)
                return  # pools never overlap: no other pool can hold it

    async def allocations(self) -> list[Allocation]:
        result: list[Allocation] = []
        for kv in await self.store.range(self.keys.pools):
            parts = kv.key[len(self.keys.pools) :].split("/")
            if len(parts) != 3 or parts[1] != "addrs":
                continue
            rec = AddrRecord.decode(kv.value)
            pool = parts[0].replace("_", "/")
            owners = rec.hosts if rec.owner == GATEWAY and rec.hosts else (rec.host,)
            result.extend(Allocation(pool, parts[2], h, rec.owner, rec.time) for h in owners)
        return result

    async def references(self) -> list[PoolRef]:
        """The pools this host holds (its `hosts/<host>` key in each)."""
        poolset = await self.store.get(self.keys.poolset)
        refs = [await self.reference(subnet) for subnet in decode_poolset(poolset.value if poolset else None)]
        return [r for r in refs if r is not None]

    async def reference(self, subnet: IPNetwork) -> PoolRef | None:
        """This host's reference to the pool of `subnet`, if it holds one."""
        mine = await self.store.get(self.keys.host(subnet, self.host))
        if mine is None:
            return None
        rec = decode(mine.value, f"pool {subnet} host record")
        sub = f":{rec['sub_pool']}" if rec.get("sub_pool") else ""
        pool_id = f"{rec.get('space', LOCAL_SPACE)}:{subnet}{sub}"  # PoolId's form
        return PoolRef(pool_id, str(subnet), float(rec.get("time", 0.0)))

    async def holds_addresses(self, subnet: IPNetwork) -> bool:
        """Whether this host holds any address of the pool of `subnet` (one range read)."""
        for kv in await self.store.range(self.keys.addrs(subnet)):
            rec = AddrRecord.decode(kv.value)
            if self.host in (rec.hosts if rec.owner == GATEWAY and rec.hosts else (rec.host,)):
                return True
        return False

    # -- pool internals --------------------------------------------------------------------

    async def _acquire(self, pid: PoolId) -> None:
        subnet = pid.subnet
        for attempt in range(MAX_ATTEMPTS):
            poolset = await self.store.get(self.keys.poolset)
            existing = decode_poolset(poolset.value if poolset else None)
            meta = await self.store.get(self.keys.meta(subnet))
            if meta is not None and subnet in existing:
                done = await self._join_pool(subnet, meta, pid)
            else:
                if (other := existing.overlapping(subnet)) is not None:
                    raise Conflict(f"pynet: --subnet {subnet} overlaps existing pool {other}")
                done = await self._create_pool(subnet, pid, poolset, existing)
            if done:
                return
            await _backoff(attempt)
        raise _gave_up(subnet)

    async def _join_pool(self, subnet: IPNetwork, meta: KeyValue, pid: PoolId) -> bool:
        """Rewriting meta unchanged bumps its mod_revision, which a concurrent last release
        compares, so the pool cannot vanish under the new reference."""
        host_key = self.keys.host(subnet, self.host)
        if await self.store.get(host_key) is not None:
            raise Conflict(
                f"pynet: --subnet {pid.subnet}: pool {subnet} is already in use on this host"
                f" ({self.host})"
            )
        ok = await self.store.txn(
            [Compare.unchanged(meta), Compare.absent(host_key)],
            [Put(meta.key, meta.value), Put(host_key, self._host_record(pid))],
        )
        if ok:
            log.info("joined shared pool %s", subnet, extra={"pool": str(subnet)})
        return ok

    async def _create_pool(
        self, subnet: IPNetwork, pid: PoolId, poolset: KeyValue | None, existing: Poolset
    ) -> bool:
        meta_key = self.keys.meta(subnet)
        meta = encode({"subnet": str(subnet), "host": self.host, "time": time.time(), INDEXED: 1})
        ok = await self.store.txn(
            [_unchanged_or_absent(poolset, self.keys.poolset), Compare.absent(meta_key)],
            [
                Put(self.keys.poolset, existing.encode_with(subnet)),
                Put(meta_key, meta),
                Put(self.keys.host(subnet, self.host), self._host_record(pid)),
            ],
        )
        if ok:
            log.info("created pool %s", subnet, extra={"pool": str(subnet)})
        return ok

    async def _create_auto(self, space: str, v6: bool, exclude: Sequence[IPNetwork]) -> IPNetwork:
        """Existing pools are in the poolset, so Docker's overlap loop, which asks again while
        holding the previous answers, gets a different subnet each time."""
        ranges = self._ranges6 if v6 else self._ranges4
        routes = usable_exclusions(exclude)
        for attempt in range(MAX_ATTEMPTS):
            poolset = await self.store.get(self.keys.poolset)
            existing = decode_poolset(poolset.value if poolset else None)
            subnet = first_free_subnet(ranges, [*existing, *routes])
            if subnet is None:
                raise Exhausted(
                    f"pynet: no free {family(v6)} subnet left in the default pools "
                    + ", ".join(f"{net} (split into /{plen})" for net, plen in ranges)
                    + ": all overlap existing pools or host routes; pass --subnet"
                )
            if await self._create_pool(subnet, PoolId(space, subnet), poolset, existing):
                return subnet
            await _backoff(attempt)
        raise _gave_up(ranges[0][0] if ranges else None)

    async def _try_release_pool(self, subnet: IPNetwork) -> bool | None:
        """True: reference dropped, pool kept; False: nothing to do or pool deleted;
        None: lost a race, read again."""
        meta = await self.store.get(self.keys.meta(subnet))
        hosts = await self.store.range(self.keys.pool(subnet) + "hosts/")
        mine = next((kv for kv in hosts if kv.key == self.keys.host(subnet, self.host)), None)
        if meta is None or mine is None:
            return False
        if len(hosts) > 1:
            ok = await self.store.txn(
                [Compare.unchanged(meta), Compare.unchanged(mine)],
                [Delete(mine.key), Put(meta.key, meta.value)],
            )
            return True if ok else None
        poolset = await self.store.get(self.keys.poolset)
        existing = decode_poolset(poolset.value if poolset else None)
        ok = await self.store.txn(
            [Compare.unchanged(meta), _unchanged_or_absent(poolset, self.keys.poolset)],
            [
                Delete(self.keys.pool(subnet), prefix=True),
                Put(self.keys.poolset, existing.encode_without(subnet)),
            ],
        )
        if ok:
            log.info("deleted pool %s", subnet, extra={"pool": str(subnet)})
            return False
        return None

    async def _drop_own_allocations(self, subnet: IPNetwork) -> None:
        """One small transaction per address: etcd caps the operations of one transaction."""
        async with self._pool_lock(subnet):
            for kv in await self.store.range(self.keys.addrs(subnet)):
                ip = ipaddress.ip_address(kv.key.rsplit("/", 1)[1])
                if not await self._release(kv, ip, subnet, quiet=True):
                    log.warning("could not free %s in pool %s: changed meanwhile", ip, subnet)

    def _host_record(self, pid: PoolId) -> bytes:
        sub = str(pid.sub_pool) if pid.sub_pool is not None else ""
        return encode({"space": pid.space, "sub_pool": sub, "time": time.time()})

    # -- address internals -----------------------------------------------------------------

    def _pool_lock(self, subnet: IPNetwork) -> asyncio.Lock:
        return self._pool_locks(str(subnet))

    async def _indexed_meta(self, subnet: IPNetwork, pool_id: str) -> KeyValue:
        """The pool's meta, once its allocation index is complete: a pool an older pynet
        created gets its index here, on its first request."""
        for attempt in range(MAX_ATTEMPTS):
            meta = await self.store.get(self.keys.meta(subnet))
            if meta is None:
                raise NotFound(
                    f"pynet: pool {subnet} does not exist (PoolID {pool_id}); was its network removed?"
                )
            if decode(meta.value, "pool meta").get(INDEXED) == 1:
                return meta
            await self._reindex(subnet, meta)
            await _backoff(attempt)
        raise _gave_up(subnet)

    async def _chunk(self, subnet: IPNetwork, value: int) -> _Chunk:
        n = chunk_of(subnet, value)
        key = self.keys.chunk(subnet, n)
        return _Chunk(key, n, await self.store.get(key))

    async def _take_gateway(
        self, pid: PoolId, meta: KeyValue, ip: IPAddress | None, contended: bool
    ) -> IPAddress | None:
        """Every host of a shared pool asks for the gateway; each joins the same record."""
        pointer = await self.store.get(self.keys.gateway(pid.subnet))
        target = ip if ip is not None else _gateway_of(pid.subnet, pointer)
        key = self.keys.addr(pid.subnet, target)
        kv = await self.store.get(key)
        if kv is not None:
            old = AddrRecord.decode(kv.value)
            if old.owner != GATEWAY:
                raise _taken(target, pid.subnet)
            if self.host in old.hosts:
                return target
            rec = replace(old, hosts=(*old.hosts, self.host))
            ok = await self.store.txn([Compare.unchanged(kv), _alive(meta)], [Put(key, rec.encode())])
            return target if ok else None
        rec = AddrRecord(self.host, GATEWAY, time.time(), (self.host,))
        named = [] if pointer is not None else [Put(self.keys.gateway(pid.subnet), encode({"address": str(target)}))]
        return await self._take(pid.subnet, meta, target, rec, contended, named)

    async def _take_static(self, pid: PoolId, meta: KeyValue, ip: IPAddress, contended: bool) -> IPAddress | None:
        if await self.store.get(self.keys.addr(pid.subnet, ip)) is not None:
            raise _taken(ip, pid.subnet)
        return await self._take(pid.subnet, meta, ip, AddrRecord(self.host, AUX, time.time()), contended)

    async def _take_dynamic(self, pid: PoolId, meta: KeyValue, contended: bool) -> IPAddress | None:
        """Serial from the shared cursor; after a lost race, from a random place: hosts that
        read the same cursor would otherwise keep racing for the same next address."""
        rng = pid.range
        lo, hi = int(rng.network_address), int(rng.broadcast_address)
        cursor_key = self.keys.cursor(pid.subnet, rng)
        if contended:
            start = random.randint(lo, hi)
        else:
            cursor = _cursor(await self.store.get(cursor_key))
            start = cursor + 1 if cursor is not None and lo <= cursor < hi else lo
        found = await self._find_free(pid.subnet, lo, hi, start)
        if found is None:
            # Full by the index: rebuild it once from the records (an older pynet sharing the
            # pool may have freed addresses without clearing their bits), then believe it.
            await self._reindex(pid.subnet, None)
            found = await self._find_free(pid.subnet, lo, hi, start)
        if found is None:
            raise Exhausted(f"pynet: no free address in pool {pid.subnet} (range {rng})")
        ip, chunk = found
        rec = AddrRecord(self.host, CONTAINER, time.time())
        moved = Put(cursor_key, encode({"address": str(ip)}))
        return await self._take(pid.subnet, meta, ip, rec, contended, [moved], chunk)

    async def _find_free(
        self, subnet: IPNetwork, lo: int, hi: int, start: int
    ) -> tuple[IPAddress, _Chunk] | None:
        """The first address from `start` to `hi`, then from `lo`, whose bit is clear, with the
        chunk that says so. One chunk read per 256 addresses passed over: a missing chunk is
        free, so the reads are bounded by the chunks that exist, even in an IPv6 /64."""
        for first, last in ((start, hi), (lo, start - 1)):
            pos = first
            while pos <= last:
                chunk = await self._chunk(subnet, pos)
                base = chunk_base(subnet, chunk.n)
                end = min(base + CHUNK - 1, last)
                offset = first_clear(blocked_bits(subnet, chunk.n, chunk.bits), pos - base, end - base)
                if offset is not None:
                    return to_address(subnet, base + offset), chunk
                pos = end + 1
        return None

    async def _take(
        self,
        subnet: IPNetwork,
        meta: KeyValue,
        ip: IPAddress,
        rec: AddrRecord,
        contended: bool,
        also: Sequence[Op] = (),
        chunk: _Chunk | None = None,
    ) -> IPAddress | None:
        """Record `ip` as taken, with its bit, in one transaction guarded by its record being
        absent (the truth) and its chunk unchanged; None when another request got there first.

        After a lost race the bit is set apart, afterwards: every allocation among the chunk's
        256 addresses rewrites it, so a busy peer could otherwise fail every attempt, where the
        record alone conflicts only with a request for the very same address."""
        key = self.keys.addr(subnet, ip)
        if contended:
            ok = await self.store.txn([Compare.absent(key), _alive(meta)], [Put(key, rec.encode()), *also])
            if ok:
                await self._mark(subnet, ip, taken=True)
            return ip if ok else None
        chunk = chunk if chunk is not None else await self._chunk(subnet, int(ip))
        offset = int(ip) - chunk_base(subnet, chunk.n)
        ok = await self.store.txn(
            [Compare.absent(key), _alive(meta), chunk.guard()],
            [Put(key, rec.encode()), chunk.change(offset, taken=True), *also],
        )
        if not ok and not chunk.bits >> offset & 1:
            # Perhaps taken while clear in the index (written by an older pynet): set the bit
            # if so, and the next search skips the address instead of losing this race again.
            await self._mark(subnet, ip, taken=True)
        return ip if ok else None

    async def _mark(self, subnet: IPNetwork, ip: IPAddress, taken: bool) -> None:
        """Make `ip`'s bit say `taken`, as long as its record does: a bit left clear costs a
        lost race, one left set hides a free address until the pool looks full."""
        key = self.keys.addr(subnet, ip)
        record = Compare(key, "version", ">", 0) if taken else Compare.absent(key)
        for attempt in range(MAX_ATTEMPTS):
            chunk = await self._chunk(subnet, int(ip))
            offset = int(ip) - chunk_base(subnet, chunk.n)
            if bool(chunk.bits >> offset & 1) == taken:
                return
            if await self.store.txn([record, chunk.guard()], [chunk.change(offset, taken)]):
                return
            if (await self.store.get(key) is not None) != taken:
                return  # the record changed again; whoever changed it keeps the bit
            await _backoff(attempt)
        log.warning("could not update the index of pool %s for %s: too many races", subnet, ip)

    async def _release(
        self, kv: KeyValue, ip: IPAddress, subnet: IPNetwork, quiet: bool = False, contended: bool = False
    ) -> bool:
        """Free `ip` (its record `kv`) as far as it is this host's to free; False: lost a race.
        After one, the bit is cleared apart, as in `_take`."""
        op = self._release_op(kv, ip, subnet, quiet)
        if op is None:
            return True
        ops, guards = [op], [Compare.unchanged(kv)]
        chunk: _Chunk | None = None
        if isinstance(op, Delete):
            pointer = await self.store.get(self.keys.gateway(subnet))
            if pointer is not None and _gateway_of(subnet, pointer) == ip:
                ops.append(Delete(pointer.key))
            if not contended:
                chunk = await self._chunk(subnet, int(ip))
                guards.append(chunk.guard())
                ops.append(chunk.change(int(ip) - chunk_base(subnet, chunk.n), taken=False))
        ok = await self.store.txn(guards, ops)
        if ok and isinstance(op, Delete) and chunk is None:
            await self._mark(subnet, ip, taken=False)
        return ok

    async def _reindex(self, subnet: IPNetwork, meta: KeyValue | None) -> None:
        """Rebuild the chunks (and the gateway pointer) from the `addrs/` records; with `meta`,
        then mark the pool indexed. The chunks are read before the records and each write
        compares its chunk unchanged, so a concurrent allocation or release is never undone:
        its batch fails instead, and the caller reads again."""
        before = {kv.key: kv for kv in await self.store.range(self.keys.chunks(subnet))}
        want: dict[str, int] = {}
        gateway: IPAddress | None = None
        for kv in await self.store.range(self.keys.addrs(subnet)):
            try:
                ip = ipaddress.ip_address(kv.key.rsplit("/", 1)[1])
            except ValueError:
                log.warning("ignoring malformed address key %s", kv.key)
                continue
            n = chunk_of(subnet, int(ip))
            want[self.keys.chunk(subnet, n)] = with_bit(
                want.get(self.keys.chunk(subnet, n), 0), int(ip) - chunk_base(subnet, n), taken=True
            )
            if gateway is None and AddrRecord.decode(kv.value).owner == GATEWAY:
                gateway = ip
        changes = [
            (key, bits)
            for key in sorted(set(before) | set(want))
            if (bits := want.get(key, 0)) != (decode_bits(before[key].value) if key in before else 0)
        ]
        for i in range(0, len(changes), _REINDEX_BATCH):
            batch = changes[i : i + _REINDEX_BATCH]
            ok = await self.store.txn(
                [_unchanged_or_absent(before.get(key), key) for key, _ in batch],
                [Put(key, encode_bits(bits)) if bits else Delete(key) for key, bits in batch],
            )
            if not ok:
                return
        if meta is None:
            return
        done = {**decode(meta.value, "pool meta"), INDEXED: 1}
        pointer = [Put(self.keys.gateway(subnet), encode({"address": str(gateway)}))] if gateway else []
        if await self.store.txn([Compare.unchanged(meta)], [Put(meta.key, encode(done)), *pointer]):
            log.info("indexed the allocations of pool %s", subnet, extra={"pool": str(subnet)})

    def _release_op(
        self, kv: KeyValue, ip: IPAddress, subnet: IPNetwork, quiet: bool = False
    ) -> Op | None:
        """What releasing `ip` means for this host, or None when it is not this host's to free."""
        rec = AddrRecord.decode(kv.value)
        if rec.owner == GATEWAY:
            if self.host not in rec.hosts:
                return None
            rest = tuple(h for h in rec.hosts if h != self.host)
            if not rest:
                return Delete(kv.key)
            return Put(kv.key, replace(rec, host=rest[0], hosts=rest).encode())
        if rec.host != self.host:
            if not quiet:
                log.warning(
                    "not releasing %s in pool %s: host %s allocated it", ip, subnet, rec.host
                )
            return None
        return Delete(kv.key)

    async def _note_missing_pool(self, subnet: IPNetwork, ip: IPAddress) -> None:
        if await self.store.get(self.keys.meta(subnet)) is None:
            log.warning("ReleaseAddress %s: pool %s does not exist; nothing to release", ip, subnet)

    async def _bind_in(self, subnet: IPNetwork, ip: IPAddress, endpoint_id: str) -> None:
        key = self.keys.addr(subnet, ip)
        async with self._pool_lock(subnet):
            for attempt in range(MAX_ATTEMPTS):
                kv = await self.store.get(key)
                if kv is None:
                    return
                rec = AddrRecord.decode(kv.value)
                if rec.owner in (GATEWAY, endpoint_id) or rec.host != self.host:
                    return
                new = replace(rec, owner=endpoint_id)
                if await self.store.txn([Compare.unchanged(kv)], [Put(key, new.encode())]):
                    return
                await _backoff(attempt)
        log.warning("could not record endpoint %s as owner of %s: too many races", endpoint_id, ip)


# -- helpers ---------------------------------------------------------------------------------


def _check_space(space: str) -> None:
    """An empty space is refused too: a retried request with an empty body must not
    silently allocate a fresh pool."""
    if space not in SPACES:
        raise InvalidRequest(
            f"pynet: unknown address space {space!r}: pynet serves {LOCAL_SPACE} and {GLOBAL_SPACE}"
        )


def _check_pool_options(options: Mapping[str, str] | None) -> None:
    unknown = sorted(k for k in (options or {}) if k not in IGNORED_POOL_OPTIONS)
    if unknown:
        given = ", ".join(f"{k}={(options or {})[k]}" for k in unknown)
        raise InvalidRequest(f"pynet: unsupported --ipam-opt {given}: pynet's IPAM has no options")


def _address_field(gateway: bool, subnet: IPNetwork) -> str:
    if gateway:
        return "--gateway"
    return "--ip6" if subnet.version == 6 else "--ip"


def _gateway_of(subnet: IPNetwork, pointer: KeyValue | None) -> IPAddress:
    """The address the gateway pointer names, else Docker's default: the first usable one."""
    if pointer is not None:
        try:
            ip = ipaddress.ip_address(str(decode(pointer.value, "gateway").get("address", "")))
        except ValueError:
            ip = None
        if ip is not None and ip.version == subnet.version and ip in subnet:
            return ip
    return first_usable(subnet)


def _cursor(kv: KeyValue | None) -> int | None:
    if kv is None:
        return None
    try:
        return int(ipaddress.ip_address(decode(kv.value, "cursor").get("address", "")))
    except ValueError:
        return None


def _taken(ip: IPAddress, subnet: IPNetwork) -> Conflict:
    return Conflict(f"pynet: address {ip} is already in use in pool {subnet}")


def _gave_up(subnet: IPNetwork | None) -> Conflict:
    return Conflict(
        f"pynet: gave up on pool {subnet} after {MAX_ATTEMPTS} attempts lost to concurrent"
        " changes by other requests or hosts; try again"
    )


def _unchanged_or_absent(kv: KeyValue | None, key: str) -> Compare:
    return Compare.unchanged(kv) if kv is not None else Compare.absent(key)


async def _backoff(attempt: int) -> None:
    """Random, growing pauses: two hosts that lost the same race must not collide again."""
    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
