"""Settings: flags, PYNET_* variables and defaults, parsed and checked once, with one error type."""

from __future__ import annotations

import argparse
import ipaddress

import pytest

from pynet.plugin import cli
from pynet.plugin.daemon.config import ConfigError, Settings, add_arguments, from_args


def parsed(argv: list[str], environ: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), environ)


def test_flag_wins_over_variable_and_variable_over_default() -> None:
    assert parsed([], {}).iptables_backend == ""
    assert parsed([], {"PYNET_IPTABLES_BACKEND": "legacy"}).iptables_backend == "legacy"
    assert parsed(["--iptables-backend", "nft"], {"PYNET_IPTABLES_BACKEND": "legacy"}).iptables_backend == "nft"


def test_default_pools_are_parsed_once_into_networks() -> None:
    s = Settings(default_pools="10.1.0.0/16:24, fd00::/48:64")
    assert s.pool_ranges == ((ipaddress.ip_network("10.1.0.0/16"), 24), (ipaddress.ip_network("fd00::/48"), 64))
    assert s.pools(v6=False) == [("10.1.0.0/16", 24)] and s.pools(v6=True) == [("fd00::/48", 64)]


def test_dns_upstreams_are_parsed_once() -> None:
    assert Settings(dns_upstream=" 10.0.0.2, 2001:db8::0:1,").dns_upstreams == ("10.0.0.2", "2001:db8::1")
    assert Settings().dns_upstreams == ()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iptables_backend": "nftables"}, "--iptables-backend must be nft or legacy, got 'nftables'"),
        ({"log_level": "loud"}, "--log-level must be"),
        ({"log_format": "xml"}, "--log-format must be kv or json"),
        ({"default_pools": "10.0.0.0/16:8"}, "--default-pools entry must be CIDR:prefixlen, got '10.0.0.0/16:8'"),
        ({"default_pools": "10.0.0.0/16"}, "--default-pools entry"),
        ({"dns_address": "resolver"}, "--dns-address must be an IP address, got 'resolver'"),
        ({"dns_upstream": "10.0.0.2,dns.example"}, "--dns-upstream entries must be IP addresses, got 'dns.example'"),
    ],
)
def test_bad_values_are_one_error_type(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**values)  # type: ignore[arg-type]


def test_a_variable_of_the_wrong_type_names_itself() -> None:
    with pytest.raises(ConfigError, match="PYNET_LEASE_TTL must be a int, got 'soon'"):
        parsed([], {"PYNET_LEASE_TTL": "soon"})


def test_cli_prints_a_config_error_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNET_IPTABLES_BACKEND", "nftables")
    assert cli.main(["status"]) == 2
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["pynet: --iptables-backend must be nft or legacy, got 'nftables'"] * 2
