"""The name table: Docker's scoping from the asker's source address, and records that are bad."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pynet.plugin.dns.records import NameTable
from pynet.plugin.dns.subnets import SubnetTable
from pynet.plugin.dns.upstreams import host_upstreams, nameservers

ROOT = "/pynet/dns/"


def record(names: list[str], ipv4: str = "", ipv6: str = "") -> bytes:
    return json.dumps({"names": names, "ipv4": ipv4, "ipv6": ipv6}).encode()


@pytest.fixture
def table() -> NameTable:
    """front: web (h1) and api (h2); back: api's second address and db (h2); other: lonely."""
    t = NameTable(ROOT)
    t.replace(
        [
            (ROOT + "front/h1/c-web", record(["web", "www"], "10.1.0.2", "fd00:1::2")),
            (ROOT + "front/h2/c-api", record(["api"], "10.1.0.3")),
            (ROOT + "back/h2/c-api", record(["api"], "10.2.0.3")),
            (ROOT + "back/h2/c-db", record(["db", "postgres"], "10.2.0.4")),
            (ROOT + "other/h1/c-lonely", record(["lonely"], "10.3.0.2")),
        ]
    )
    return t


def test_containers_sharing_a_network_resolve_each_other(table: NameTable) -> None:
    assert table.lookup("10.1.0.2", "api", 4) == ["10.1.0.3"]
    assert table.lookup("10.1.0.3", "web", 4) == ["10.1.0.2"]


def test_no_shared_network_no_answer(table: NameTable) -> None:
    assert table.lookup("10.1.0.2", "db", 4) is None  # web is not on back
    assert table.lookup("10.3.0.2", "web", 4) is None
    assert table.lookup("10.1.0.2", "lonely", 4) is None


def test_a_container_sees_every_network_it_is_on_whichever_address_it_asks_from(table: NameTable) -> None:
    # api is on front and back; its query leaves from its front address.
    assert table.lookup("10.1.0.3", "db", 4) == ["10.2.0.4"]
    # A name on two shared networks answers with each network's address.
    assert table.lookup("10.1.0.3", "api", 4) == ["10.1.0.3", "10.2.0.3"]


def test_alias_and_name_dot_network(table: NameTable) -> None:
    assert table.lookup("10.1.0.3", "www", 4) == ["10.1.0.2"]
    assert table.lookup("10.1.0.3", "web.front", 4) == ["10.1.0.2"]
    assert table.lookup("10.1.0.3", "postgres.back", 4) == ["10.2.0.4"]
    assert table.lookup("10.1.0.3", "web.back", 4) is None  # web is not on back
    assert table.lookup("10.1.0.3", "front", 4) is None


def test_case_and_trailing_dot(table: NameTable) -> None:
    assert table.lookup("10.1.0.3", "WEB.Front.", 4) == ["10.1.0.2"]


def test_aaaa_and_nodata(table: NameTable) -> None:
    assert table.lookup("10.1.0.3", "web", 6) == ["fd00:1::2"]
    # A name the asker sees with no address of that family: NODATA ([]), not a forward (None).
    assert table.lookup("10.1.0.2", "api", 6) == []
    # The asker may be known by its IPv6 address, in any spelling.
    assert table.lookup("fd00:1:0::2", "api", 4) == ["10.1.0.3"]


def test_unknown_source_is_never_answered(table: NameTable) -> None:
    assert table.lookup("172.17.0.2", "web", 4) is None  # Docker's own bridge, say
    assert table.lookup("not-an-address", "web", 4) is None


def test_put_replace_and_delete(table: NameTable) -> None:
    table.put(ROOT + "front/h2/c-api", record(["api", "backend"], "10.1.0.9"))
    assert table.lookup("10.1.0.2", "api", 4) == ["10.1.0.9"]
    assert table.lookup("10.1.0.2", "backend", 4) == ["10.1.0.9"]
    assert table.lookup("10.1.0.3", "web", 4) is None  # the old address is no one's now
    table.delete(ROOT + "front/h2/c-api")
    assert table.lookup("10.1.0.2", "api", 4) is None
    assert table.lookup("10.1.0.9", "web", 4) is None
    table.delete(ROOT + "front/h2/c-api")  # twice is fine
    assert len(table) == 4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (ROOT + "front/h1/c-bad", b"{not json"),
        (ROOT + "front/h1/c-bad", b'["a list"]'),
        (ROOT + "front/h1/c-bad", b'{"names": "web", "ipv4": "10.1.0.7"}'),
        (ROOT + "front/h1/c-bad", record([], "10.1.0.7")),
        (ROOT + "front/h1/c-bad", record(["bad"], "10.1.0.300")),
        (ROOT + "front/h1/c-bad", record(["bad"], "fd00::7")),  # v6 in the v4 field
        (ROOT + "front/h1/c-bad", record(["bad"])),  # no address
        (ROOT + "front/c-bad", record(["bad"], "10.1.0.7")),  # key too short
        (ROOT + "front/h1/c-bad/x", record(["bad"], "10.1.0.7")),
        ("/elsewhere/front/h1/c-bad", record(["bad"], "10.1.0.7")),
    ],
)
def test_a_malformed_record_is_skipped(
    table: NameTable, key: str, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pynet.dns")
    table.put(key, value)
    assert len(table) == 5
    assert table.lookup("10.1.0.7", "web", 4) is None
    assert table.lookup("10.1.0.2", "bad", 4) is None
    assert table.lookup("10.1.0.3", "web", 4) == ["10.1.0.2"]
    assert [r.getMessage() for r in caplog.records] == ["dns record skipped"]


def test_a_malformed_put_over_a_good_record_removes_it(table: NameTable) -> None:
    table.put(ROOT + "front/h2/c-api", b"garbage")
    assert table.lookup("10.1.0.2", "api", 4) is None


def test_malformed_records_warn_at_most_once_a_minute_per_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pynet.dns")
    t = NameTable(ROOT)
    bad = [(ROOT + f"front/h1/c{i % 2}", b"garbage") for i in range(50)]
    t.replace([*bad, (ROOT + "front/h1/ok", record(["ok"], "10.1.0.5"))])
    assert len(t) == 1
    assert sorted(r.key for r in caplog.records) == [ROOT + "front/h1/c0", ROOT + "front/h1/c1"]  # type: ignore[attr-defined]


def test_host_upstreams_skip_loopback_and_follow_systemd_resolved(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    systemd = tmp_path / "systemd-resolv.conf"
    conf.write_text("# generated\nsearch example\nnameserver 10.0.0.53\nnameserver 127.0.0.11\nnameserver fe80::1%eth0\n")
    assert nameservers(conf) == ["10.0.0.53", "127.0.0.11", "fe80::1"]
    assert host_upstreams(conf, systemd) == ["10.0.0.53", "fe80::1"]
    # Only systemd-resolved's stub: its real servers, as Docker reads them.
    conf.write_text("nameserver 127.0.0.53\noptions edns0\n")
    assert host_upstreams(conf, systemd) == []
    systemd.write_text("nameserver 192.0.2.1\nnameserver 192.0.2.2\n")
    assert host_upstreams(conf, systemd) == ["192.0.2.1", "192.0.2.2"]
    assert host_upstreams(tmp_path / "missing", systemd) == []


SPECS = "/pynet/cluster/networks/"


def spec(*subnets: str) -> bytes:
    """A cluster network spec as plugin/cluster/specs.py stores it (the fields the resolver reads)."""
    config = [{"Subnet": s, "Gateway": ""} for s in subnets]
    return json.dumps({"network": {"Name": "x", "IPAM": {"Driver": "pynet", "Config": config}}, "vni": 10000}).encode()


def test_an_asker_without_a_record_yet_is_placed_by_its_networks_subnet() -> None:
    """`docker run --rm --network front busybox ping web` asks before its own record exists."""
    subnets = SubnetTable(SPECS)
    subnets.replace([(SPECS + "front", spec("10.1.0.0/24", "fd00:1::/64")), (SPECS + "back", spec("10.2.0.0/24"))])
    t = NameTable(ROOT, subnets)
    t.replace([(ROOT + "front/h1/c-web", record(["web"], "10.1.0.2")), (ROOT + "back/h2/c-db", record(["db"], "10.2.0.4"))])
    assert t.lookup("10.1.0.77", "web", 4) == ["10.1.0.2"]
    assert t.lookup("fd00:1::77", "web.front", 4) == ["10.1.0.2"]
    assert t.lookup("10.1.0.77", "db", 4) is None, "scoped to the network the subnet names"
    assert t.lookup("10.9.0.77", "web", 4) is None, "an address of no cluster network: forwarded"
    # Once the asker's record exists, its records decide (it may be on several networks).
    t.put(ROOT + "back/h3/c-new", record(["new"], "10.1.0.77"))
    assert t.lookup("10.1.0.77", "db", 4) == ["10.2.0.4"] and t.lookup("10.1.0.77", "web", 4) is None
    subnets.delete(SPECS + "front")
    assert subnets.networks_of("10.1.0.77") == set()


def test_a_malformed_spec_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    subnets = SubnetTable(SPECS)
    with caplog.at_level(logging.WARNING, logger="pynet.dns"):
        subnets.replace([(SPECS + "bad", b"{nope"), (SPECS + "odd", spec("not-a-subnet")), (SPECS + "ok", spec("10.5.0.0/24"))])
    assert len(subnets) == 1 and subnets.networks_of("10.5.0.9") == {"ok"}
    assert "spec skipped" in caplog.text
