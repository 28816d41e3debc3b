"""drivers/peers.py without a kernel or a store: the wanted entries, the diff against a dump,
and how keys fold into the per-VNI view."""

from __future__ import annotations

import json
import logging
import time

import pytest

from pynet.drivers.netlink import ZERO_MAC
from pynet.drivers.peers import Changes, RemoteEndpoint, Remotes, Sync, changes, endpoint_key, vtep_key

MAC_A, MAC_B = "02:42:0a:01:00:02", "02:42:0a:01:00:03"


def remotes() -> Remotes:
    return Remotes(
        vteps={"h2": "192.0.2.2", "h3": "192.0.2.3"},
        endpoints={
            "e1": RemoteEndpoint(host="h2", vtep="192.0.2.2", mac=MAC_A, ips=("10.1.0.2", "fd00::2")),
            "e2": RemoteEndpoint(host="h3", vtep="192.0.2.3", mac=MAC_B, ips=("10.1.0.3",)),
        },
    )


def test_wanted_floods_to_every_vtep_and_pins_every_remote_endpoint() -> None:
    fdb, neigh = remotes().wanted(static_peers=("198.51.100.9",))
    assert fdb == {
        (ZERO_MAC, "192.0.2.2"), (ZERO_MAC, "192.0.2.3"), (ZERO_MAC, "198.51.100.9"),
        (MAC_A, "192.0.2.2"), (MAC_B, "192.0.2.3"),
    }
    assert neigh == {("10.1.0.2", MAC_A), ("fd00::2", MAC_A), ("10.1.0.3", MAC_B)}


def test_an_empty_view_wants_only_the_static_peers() -> None:
    assert Remotes().wanted(()) == (set(), set())
    assert Remotes().wanted(("198.51.100.9",)) == ({(ZERO_MAC, "198.51.100.9")}, set())


def test_a_device_that_matches_needs_nothing() -> None:
    want = remotes().wanted(())
    assert changes(want, want) == Changes(frozenset(), frozenset(), frozenset(), frozenset())


def test_the_diff_removes_stale_adds_missing_and_replaces_moved_neighbours() -> None:
    want = remotes().wanted(())
    have = (
        {(ZERO_MAC, "192.0.2.2"), (ZERO_MAC, "192.0.2.99"), (MAC_A, "192.0.2.99")},  # e1 was behind .99
        {("10.1.0.2", MAC_A), ("10.1.0.3", MAC_A), ("10.1.0.77", MAC_B)},  # .3 had e1's MAC; .77 is gone
    )
    todo = changes(want, have)
    assert todo.del_fdb == {(ZERO_MAC, "192.0.2.99"), (MAC_A, "192.0.2.99")}
    assert todo.add_fdb == {(ZERO_MAC, "192.0.2.3"), (MAC_A, "192.0.2.2"), (MAC_B, "192.0.2.3")}
    assert todo.del_neigh == {"10.1.0.77"}, "a moved IP is replaced, never deleted first"
    assert todo.set_neigh == {("fd00::2", MAC_A), ("10.1.0.3", MAC_B)}


def test_applying_the_diff_reaches_the_wanted_state() -> None:
    want = remotes().wanted(("198.51.100.9",))
    fdb, neigh = {(ZERO_MAC, "192.0.2.50"), (MAC_B, "192.0.2.2")}, {("10.1.0.3", MAC_A), ("10.9.9.9", MAC_A)}
    todo = changes(want, (fdb, neigh))
    fdb = (fdb - todo.del_fdb) | todo.add_fdb
    kept = {(ip, mac) for ip, mac in neigh if ip not in todo.del_neigh and ip not in {i for i, _ in todo.set_neigh}}
    assert (fdb, kept | todo.set_neigh) == want


def sync(host: str = "h1") -> Sync:
    return Sync(store=None, prefix="/pynet/", host=host, netlink=None)  # type: ignore[arg-type]


def put(s: Sync, key: str, value: dict[str, object] | None) -> int | None:
    return s._record(s.segments, key, json.dumps(value).encode() if value is not None else b"")


def test_keys_fold_into_the_view_and_this_hosts_own_are_left_out() -> None:
    s = sync()
    assert put(s, vtep_key("/pynet/", 42, "h2"), {"address": "192.0.2.2", "port": 4789}) == 42
    assert put(s, vtep_key("/pynet/", 42, "h1"), {"address": "192.0.2.1", "port": 4789}) is None
    ep = {"host": "h2", "vtep": "192.0.2.2", "mac": MAC_A, "ips": ["10.1.0.2"], "time": 0.0}
    assert put(s, endpoint_key("/pynet/", 42, "e1"), ep) == 42
    assert put(s, endpoint_key("/pynet/", 42, "e0"), {**ep, "host": "h1"}) is None
    assert s.segments[42].vteps == {"h2": "192.0.2.2"}
    assert set(s.segments[42].endpoints) == {"e1"}


def test_deletes_remove_and_foreign_keys_are_ignored() -> None:
    s = sync()
    put(s, vtep_key("/pynet/", 7, "h2"), {"address": "192.0.2.2", "port": 4789})
    put(s, endpoint_key("/pynet/", 7, "e1"), {"host": "h2", "vtep": "192.0.2.2", "mac": MAC_A, "ips": []})
    assert put(s, vtep_key("/pynet/", 7, "h2"), None) == 7
    assert put(s, endpoint_key("/pynet/", 7, "e1"), None) == 7
    assert s.segments[7] == Remotes()
    assert put(s, "/pynet/vxlan/notavni/vteps/h2", {"address": "x"}) is None
    assert put(s, "/pynet/vxlan/7/extra/deep/key", {"address": "x"}) is None


GOOD_EP = {"host": "h2", "vtep": "192.0.2.2", "mac": MAC_A, "ips": ["10.1.0.2"], "time": 0.0}


def raw(s: Sync, key: str, value: bytes) -> int | None:
    return s._record(s.segments, key, value)


def test_malformed_records_are_skipped_with_a_warning_per_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pynet.peers")
    s = sync()
    bad = {
        vtep_key("/pynet/", 7, "h8"): b"\xff\x00 not json",
        vtep_key("/pynet/", 7, "h9"): b'{"address": 5}',
        vtep_key("/pynet/", 7, "h10"): b'{"address": "fd00::1"}',  # VTEPs are IPv4
        endpoint_key("/pynet/", 7, "e8"): b"[1, 2]",
        endpoint_key("/pynet/", 7, "e9"): json.dumps({**GOOD_EP, "mac": "01:00:5e:00:00:01"}).encode(),
        endpoint_key("/pynet/", 7, "e10"): json.dumps({**GOOD_EP, "ips": ["10.1.0.300"]}).encode(),
        endpoint_key("/pynet/", 7, "e11"): json.dumps({**GOOD_EP, "vtep": None}).encode(),
        endpoint_key("/pynet/", 7, "e12"): json.dumps({**GOOD_EP, "ips": ["fe80::1%eth0"]}).encode(),
        "/pynet/vxlan/7/peers/h2": b"{}",
        "/pynet/vxlan/notes": b"hello",
    }
    for _ in range(3):  # warned once per key, however often it is seen
        for key, value in bad.items():
            assert raw(s, key, value) is None
    assert raw(s, vtep_key("/pynet/", 7, "h2"), b'{"address": "192.0.2.2"}') == 7
    assert raw(s, endpoint_key("/pynet/", 7, "e1"), json.dumps(GOOD_EP).encode()) == 7
    assert s.segments[7].wanted(()) == ({(ZERO_MAC, "192.0.2.2"), (MAC_A, "192.0.2.2")}, {("10.1.0.2", MAC_A)})
    assert sorted(r.key for r in caplog.records) == sorted(bad)  # type: ignore[attr-defined]


def test_garbage_over_a_good_record_drops_it() -> None:
    s = sync()
    raw(s, endpoint_key("/pynet/", 7, "e1"), json.dumps(GOOD_EP).encode())
    assert raw(s, endpoint_key("/pynet/", 7, "e1"), b"garbage") == 7, "the VNI is reprogrammed"
    assert s.segments[7].endpoints == {}


def test_lag_is_observed_only_for_endpoints_this_programming_added() -> None:
    """The `pynet_fdb_programming_seconds` samples: an endpoint whose entries the device already
    holds (a replay, a resync, a restart) waited for nothing; a new one waited since its
    registration, or since this host's device was attached, whichever came later."""
    s = sync()
    now = time.time()
    s._attached[42] = now - 3600.0
    seg = Remotes(
        vteps={"h2": "192.0.2.2"},
        endpoints={
            "new": RemoteEndpoint(host="h2", vtep="192.0.2.2", mac=MAC_A, ips=("10.1.0.2",), time=now - 7.0),
            "old": RemoteEndpoint(host="h2", vtep="192.0.2.2", mac=MAC_B, ips=("10.1.0.3",), time=now - 60.0),
        },
    )
    have = ({(ZERO_MAC, "192.0.2.2"), (MAC_B, "192.0.2.2")}, {("10.1.0.3", MAC_B)})
    (lag,) = s._lags(42, seg, changes(seg.wanted(()), have))
    assert 7.0 <= lag < 3600.0, "from the new endpoint's registration"
    assert s._lags(42, seg, changes(seg.wanted(()), seg.wanted(()))) == [], "nothing added, no lag"
    s._attached[42] = now - 2.0  # the network came here long after the endpoints registered
    lags = s._lags(42, seg, changes(seg.wanted(()), (set(), set())))
    assert len(lags) == 2 and all(2.0 <= lag < 7.0 for lag in lags), lags


def test_a_moved_neighbour_counts_its_endpoint_as_programmed_now() -> None:
    s = sync()
    s._attached[42] = 0.0
    ep = RemoteEndpoint(host="h2", vtep="192.0.2.2", mac=MAC_A, ips=("10.1.0.2",), time=time.time() - 9.0)
    seg = Remotes(vteps={"h2": "192.0.2.2"}, endpoints={"e1": ep})
    have = ({(ZERO_MAC, "192.0.2.2"), (MAC_A, "192.0.2.2")}, {("10.1.0.2", MAC_B)})  # the IP had another MAC
    assert [lag >= 9.0 for lag in s._lags(42, seg, changes(seg.wanted(()), have))] == [True]
