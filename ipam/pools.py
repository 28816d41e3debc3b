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
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pynet.ipam.layout import (
    AUX,
    CONTAINER,
    GATEWAY,
    GLOBAL_SPACE,
    LOCAL_SPACE,
    SPACES,
    AddrRecord,
    Keys,
    PoolId,
    decode,
    decode_poolset,
    encode,
    encode_poolset,
    subnet_token,
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
    pick_serial,
    reserved,
    to_address,
    usable_exclusions,
)
from pynet.store import faults
from pynet.store.base import Compare, Delete, KeyValue, Op, Put, Store
from pynet.store.errors import Conflict, Exhausted, InvalidRequest, NotFound

log = logging.getLogger("pynet.ipam")

MAX_ATTEMPTS = 20
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


@dataclass(slots=True)
class _PoolState:
    """A pool as one range read saw it."""

    meta: KeyValue | None = None
    hosts: dict[str, KeyValue] = field(default_factory=dict)
    addrs: dict[int, KeyValue] = field(default_factory=dict)
    cursors: dict[str, KeyValue] = field(default_factory=dict)

    def alive(self) -> Compare:
        """Holds while this very pool exists: not after its removal, nor in a re-creation."""
        assert self.meta is not None
        return Compare(self.meta.key, "create_revision", "==", self.meta.create_revision)


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
        self._pool_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

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
                state = await self._read_pool(pid.subnet)
                if state.meta is None:
                    raise NotFound(
                        f"pynet: pool {pid.subnet} does not exist (PoolID {pool_id});"
                        " was its network removed?"
                    )
                if gateway:
                    got = await self._take_gateway(pid, state, ip)
                elif ip is not None:
                    got = await self._take_static(pid, state, ip)
                else:
                    got = await self._take_dynamic(pid, state, contended=attempt > 0)
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
                op = self._release_op(kv, ip, pid.subnet)
                if op is None or await self.store.txn([Compare.unchanged(kv)], [op]):
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
                _check_overlap(subnet, [n for n in existing if n != subnet])
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
        self, subnet: IPNetwork, pid: PoolId, poolset: KeyValue | None, existing: list[IPNetwork]
    ) -> bool:
        meta_key = self.keys.meta(subnet)
        meta = encode({"subnet": str(subnet), "host": self.host, "time": time.time()})
        ok = await self.store.txn(
            [_unchanged_or_absent(poolset, self.keys.poolset), Compare.absent(meta_key)],
            [
                Put(self.keys.poolset, encode_poolset(_with(existing, subnet))),
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
            subnet = first_free_subnet(ranges, existing + routes)
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
                Put(self.keys.poolset, encode_poolset([n for n in existing if n != subnet])),
            ],
        )
        if ok:
            log.info("deleted pool %s", subnet, extra={"pool": str(subnet)})
            return False
        return None

    async def _drop_own_allocations(self, subnet: IPNetwork) -> None:
        """One small transaction per address: etcd caps the operations of one transaction."""
        async with self._pool_lock(subnet):
            for kv in await self.store.range(self.keys.pool(subnet) + "addrs/"):
                ip = ipaddress.ip_address(kv.key.rsplit("/", 1)[1])
                op = self._release_op(kv, ip, subnet, quiet=True)
                if op is not None and not await self.store.txn([Compare.unchanged(kv)], [op]):
                    log.warning("could not free %s in pool %s: changed meanwhile", ip, subnet)

    def _host_record(self, pid: PoolId) -> bytes:
        sub = str(pid.sub_pool) if pid.sub_pool is not None else ""
        return encode({"space": pid.space, "sub_pool": sub, "time": time.time()})

    # -- address internals -----------------------------------------------------------------

    def _pool_lock(self, subnet: IPNetwork) -> asyncio.Lock:
        """Weak values: a lock lives while someone holds or waits on it, so none accumulate."""
        key = str(subnet)
        lock = self._pool_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._pool_locks[key] = lock
        return lock

    async def _read_pool(self, subnet: IPNetwork) -> _PoolState:
        base = self.keys.pool(subnet)
        state = _PoolState()
        for kv in await self.store.range(base):
            kind, _, name = kv.key[len(base) :].partition("/")
            if kind == "meta" and not name:
                state.meta = kv
            elif kind == "hosts":
                state.hosts[name] = kv
            elif kind == "addrs":
                try:
                    state.addrs[int(ipaddress.ip_address(name))] = kv
                except ValueError:
                    log.warning("ignoring malformed address key %s", kv.key)
            elif kind == "cursor":
                state.cursors[name] = kv
        return state

    async def _take_gateway(
        self, pid: PoolId, state: _PoolState, ip: IPAddress | None
    ) -> IPAddress | None:
        """Every host of a shared pool asks for the gateway; each joins the same record."""
        target = ip if ip is not None else _default_gateway(pid.subnet, state)
        key = self.keys.addr(pid.subnet, target)
        kv = state.addrs.get(int(target))
        if kv is None:
            rec = AddrRecord(self.host, GATEWAY, time.time(), (self.host,))
            guard = Compare.absent(key)
        else:
            old = AddrRecord.decode(kv.value)
            if old.owner != GATEWAY:
                raise _taken(target, pid.subnet)
            if self.host in old.hosts:
                return target
            rec = replace(old, hosts=(*old.hosts, self.host))
            guard = Compare.unchanged(kv)
        ok = await self.store.txn([guard, state.alive()], [Put(key, rec.encode())])
        return target if ok else None

    async def _take_static(self, pid: PoolId, state: _PoolState, ip: IPAddress) -> IPAddress | None:
        if int(ip) in state.addrs:
            raise _taken(ip, pid.subnet)
        key = self.keys.addr(pid.subnet, ip)
        rec = AddrRecord(self.host, AUX, time.time())
        ok = await self.store.txn([Compare.absent(key), state.alive()], [Put(key, rec.encode())])
        return ip if ok else None

    async def _take_dynamic(self, pid: PoolId, state: _PoolState, contended: bool) -> IPAddress | None:
        """Serial from the shared cursor; after a lost race, from a random place: hosts that
        read the same cursor would otherwise keep racing for the same next address."""
        rng = pid.range
        lo, hi = int(rng.network_address), int(rng.broadcast_address)
        cursor = random.randint(lo, hi) if contended else _cursor(state.cursors.get(subnet_token(rng)))
        blocked = set(state.addrs) | reserved(pid.subnet)
        pick = pick_serial(lo, hi, cursor, blocked)
        if pick is None:
            raise Exhausted(f"pynet: no free address in pool {pid.subnet} (range {rng})")
        ip = to_address(pid.subnet, pick)
        key = self.keys.addr(pid.subnet, ip)
        rec = AddrRecord(self.host, CONTAINER, time.time())
        ok = await self.store.txn(
            [Compare.absent(key), state.alive()],
            [
                Put(key, rec.encode()),
                Put(self.keys.cursor(pid.subnet, rng), encode({"address": str(ip)})),
            ],
        )
        return ip if ok else None

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


def _check_overlap(subnet: IPNetwork, existing: list[IPNetwork]) -> None:
    for other in existing:
        if other.version == subnet.version and other.overlaps(subnet):
            raise Conflict(f"pynet: --subnet {subnet} overlaps existing pool {other}")


def _address_field(gateway: bool, subnet: IPNetwork) -> str:
    if gateway:
        return "--gateway"
    return "--ip6" if subnet.version == 6 else "--ip"


def _default_gateway(subnet: IPNetwork, state: _PoolState) -> IPAddress:
    for value in sorted(state.addrs):
        if AddrRecord.decode(state.addrs[value].value).owner == GATEWAY:
            return to_address(subnet, value)
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


def _with(nets: list[IPNetwork], net: IPNetwork) -> list[IPNetwork]:
    return nets if net in nets else [*nets, net]


async def _backoff(attempt: int) -> None:
    """Random, growing pauses: two hosts that lost the same race must not collide again."""
    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
