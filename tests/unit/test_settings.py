"""Settings: flags, PYNET_* variables and defaults, parsed and checked once, with one error type."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

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


def test_firewall_backend_and_flavour_give_the_firewall_its_flavour() -> None:
    assert parsed([], {}).firewall_flavour is None  # detected: iptables nft/legacy, or nftables
    assert parsed([], {"PYNET_FIREWALL_BACKEND": "nftables"}).firewall_flavour == "nftables"
    assert parsed(["--firewall-backend", "iptables"], {}).firewall_flavour == "iptables"  # which flavour: detected
    assert parsed(["--firewall-backend", "iptables", "--iptables-backend", "legacy"], {}).firewall_flavour == "legacy"
    assert parsed(["--iptables-backend", "nft"], {}).firewall_flavour == "nft"


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
        ({"firewall_backend": "nft"}, "--firewall-backend must be iptables or nftables, got 'nft'"),
        (
            {"firewall_backend": "nftables", "iptables_backend": "nft"},
            "--iptables-backend nft is for the iptables firewall backend, but --firewall-backend is nftables",
        ),
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


def test_password_file_gives_the_password_and_keeps_it_out_of_the_repr(tmp_path: Path) -> None:
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret-pw\n")  # as `echo s3cret-pw > file` writes it
    s = parsed([], {"PYNET_ETCD_USER": "pynet", "PYNET_ETCD_PASSWORD_FILE": str(secret)})
    assert s.etcd_secret == "s3cret-pw"
    assert parsed(["--etcd-user", "u", "--etcd-password", "pw"], {}).etcd_secret == "pw"
    direct = Settings(etcd_user="u", etcd_password="flag-pw")
    assert "flag-pw" not in repr(direct) and "s3cret-pw" not in repr(s)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"etcd_user": "u", "etcd_password_file": "/nonexistent/pw"},
            "--etcd-password-file '/nonexistent/pw': No such",
        ),
        ({"etcd_user": "u", "etcd_password_file": "EMPTY"}, "--etcd-password-file '.*/empty' is empty"),
        ({"etcd_user": "u", "etcd_password": "pw", "etcd_password_file": "FILE"}, "--etcd-password and --etcd-pass"),
        ({"etcd_password_file": "FILE"}, "an etcd password needs --etcd-user"),
    ],
)
def test_password_settings_that_cannot_work_are_refused(tmp_path: Path, values: dict[str, str], message: str) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "pw").write_text("pw\n")
    files = {"EMPTY": str(tmp_path / "empty"), "FILE": str(tmp_path / "pw")}
    with pytest.raises(ConfigError, match=message):
        Settings(**{k: files.get(v, v) for k, v in values.items()})  # type: ignore[arg-type]


@pytest.mark.parametrize("tls", ["etcd_ca", "etcd_cert", "etcd_key"])
def test_tls_files_with_a_plain_http_endpoint_refuse_to_start(tls: str) -> None:
    """Else the files are ignored on that endpoint and the password crosses it in clear."""
    endpoints = "https://10.0.0.1:2379,http://10.0.0.2:2379"
    flag = "--" + tls.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag} set, but etcd endpoint 'http://10.0.0.2:2379' is plain http"):
        Settings(etcd_endpoints=endpoints, **{tls: "/etc/pynet/x.pem"})  # type: ignore[arg-type]
    assert Settings(etcd_endpoints="https://10.0.0.1:2379", **{tls: "/etc/pynet/x.pem"})  # type: ignore[arg-type]
    assert Settings(etcd_endpoints="http://10.0.0.2:2379")  # plain http without TLS files: a lab's choice


def test_serve_refuses_tls_files_with_http_before_anything_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNET_ETCD_ENDPOINTS", "http://127.0.0.1:1")
    monkeypatch.setenv("PYNET_ETCD_CA", "/etc/pynet/ca.pem")
    assert cli.main(["serve"]) == 2
    assert "--etcd-ca set, but etcd endpoint 'http://127.0.0.1:1' is plain http" in capsys.readouterr().err
