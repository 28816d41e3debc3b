"""doctor's names set-up checks that read text: PYNET-INPUT in a listing, daemon.json's dns."""

from __future__ import annotations

from pathlib import Path

from pynet.plugin.ops.dns_checks import daemon_json_check, input_check, nft_input_check

DNS = "169.254.53.53"
RULES = (
    f"-A PYNET-INPUT -d {DNS}/32 -p udp -m udp --dport 53 -j ACCEPT\n"
    f"-A PYNET-INPUT -d {DNS}/32 -p tcp -m tcp --dport 53 -j ACCEPT\n"
)


def test_input_rule_in_place() -> None:
    listing = "-P INPUT ACCEPT\n-N PYNET-INPUT\n-A INPUT -j PYNET-INPUT\n" + RULES
    assert input_check(listing, DNS).verdict == "ok"


def test_input_rule_missing_or_jump_gone() -> None:
    assert input_check("-P INPUT ACCEPT\n", DNS).verdict == "fail"
    assert input_check("-N PYNET-INPUT\n" + RULES, DNS).verdict == "warn"


# `nft list table ip pynet` under Docker's nftables backend, as nft 1.0.6 prints it (the /32 dropped).
NFT_TABLE = f"""table ip pynet {{
	chain filter-INPUT {{
		type filter hook input priority filter; policy accept;
		jump PYNET-INPUT
	}}

	chain PYNET-INPUT {{
		ip daddr {DNS} udp dport 53 accept
		ip daddr {DNS} tcp dport 53 accept
	}}
}}
"""


def test_nft_input_rules() -> None:
    assert nft_input_check(NFT_TABLE, DNS).verdict == "ok"
    assert nft_input_check(NFT_TABLE.replace("tcp dport 53", "tcp dport 54"), DNS).verdict == "fail"
    assert nft_input_check(NFT_TABLE.replace("hook input", "hook output"), DNS).verdict == "fail"
    assert nft_input_check(NFT_TABLE, "169.254.53.54").verdict == "fail"


def test_daemon_json(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    assert daemon_json_check(path, DNS).verdict == "fail", "no file: not installed"
    path.write_text(f'{{"dns": ["{DNS}", "10.0.0.53"]}}')
    assert daemon_json_check(path, DNS).verdict == "ok"
    path.write_text(f'{{"dns": ["{DNS}"]}}')
    assert daemon_json_check(path, DNS).verdict == "warn", "no fallback when pynet is stopped"
    path.write_text('{"dns": ["10.0.0.53"]}')
    assert daemon_json_check(path, DNS).verdict == "fail"
    path.write_text("[1]")
    assert daemon_json_check(path, DNS).verdict == "fail"
