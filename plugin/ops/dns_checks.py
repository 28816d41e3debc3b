"""`pynet doctor`'s checks of the names set-up (issue 9, etcd only): the resolver's address is
held, INPUT lets queries to it in, daemon.json names it first, and it answers."""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from pynet.drivers.firewall import INPUT_JUMP, NFTABLES, input_rules, jump_fixes
from pynet.drivers.nftables import FAMILIES, TABLE
from pynet.plugin.daemon.config import Settings
from pynet.plugin.ops.access import closing, opened_netlink
from pynet.plugin.ops.doctor import Check
from pynet.plugin.ops.iptables import Iptables
from pynet.store.errors import PynetError

DNS_LINK = "pndns0"  # plugin/serve.py holds the address there
QUERY_TIMEOUT = 3.0  # above the resolver's own 3 s forward deadline, which ends in SERVFAIL


async def dns_checks(settings: Settings, iptables: Iptables, args: argparse.Namespace) -> list[Check]:
    address = settings.dns_address
    return [
        await _address_check(address),
        await _input_check(iptables, address),
        daemon_json_check(Path(args.daemon_json), address),
        await _answer_check(address),
    ]


async def _address_check(address: str) -> Check:
    async with closing(await opened_netlink()) as nl:
        held = [str(ipaddress.ip_interface(a).ip) for a in await nl.addresses(DNS_LINK)]
    if address in held:
        return Check("dns address", "ok", f"{address} held on {DNS_LINK}")
    return Check("dns address", "fail", f"{address} is not on {DNS_LINK} (has pynet serve run with etcd?)")


async def _input_check(iptables: Iptables, address: str) -> Check:
    family = ipaddress.ip_address(address).version
    try:
        if await iptables.flavour() == NFTABLES:
            return nft_input_check(await iptables.nft().nft("list", "table", FAMILIES[family], TABLE), address)
        listing = await iptables.table(family, "filter")
    except PynetError as e:
        return Check("dns INPUT rule", "fail", str(e))
    return input_check(listing, address)


def nft_input_check(listing: str, address: str) -> Check:
    """`nft list table ip pynet`: the input hook's chain and PYNET-INPUT's two accepts."""
    chain = listing.partition("chain PYNET-INPUT {")[2].partition("}")[0]
    accepts = [p for p in ("udp", "tcp") if f"{address} {p} dport 53 accept" in chain]
    if "hook input" not in listing or len(accepts) < 2:
        return Check("dns INPUT rule", "fail", f"pynet's nft table lacks the input accepts for {address} port 53")
    return Check("dns INPUT rule", "ok", f"input -> PYNET-INPUT accepts UDP and TCP 53 to {address}")


def input_check(listing: str, address: str) -> Check:
    """`iptables -t filter -S`: the jump from INPUT, and PYNET-INPUT's accepts."""
    family = ipaddress.ip_address(address).version
    lines = listing.splitlines()
    missing = [r for r in input_rules(family, address) if f"-A PYNET-INPUT {r}" not in lines]
    if missing:
        return Check("dns INPUT rule", "fail", f"PYNET-INPUT lacks: {'; '.join(missing)}")
    if jump_fixes(INPUT_JUMP, listing):
        return Check("dns INPUT rule", "warn", "INPUT's jump to PYNET-INPUT is missing or not first")
    return Check("dns INPUT rule", "ok", f"INPUT -> PYNET-INPUT accepts UDP and TCP 53 to {address}")


def daemon_json_check(path: Path, address: str) -> Check:
    try:
        servers = json.loads(path.read_text()).get("dns", [])
    except FileNotFoundError:
        servers = []
    except (ValueError, AttributeError) as e:
        return Check("daemon.json", "fail", f"{path}: not a JSON object ({e})")
    if servers[:1] == [address]:
        rest = servers[1:]
        fallback = f", then {', '.join(rest)}" if rest else ": no upstream after it (pynet stopped: no names at all)"
        return Check("daemon.json", "ok" if rest else "warn", f'{path}: "dns" lists {address} first{fallback}')
    return Check("daemon.json", "fail", f'{path}: "dns" is {servers}, not {address} first: run `pynet dns install`')


async def _answer_check(address: str) -> Check:
    """Any reply will do (this host is no container: the query is relayed upstream)."""
    query = dns.message.make_query("pynet-doctor.invalid.", "A")
    try:
        reply = await dns.asyncquery.udp(query, address, timeout=QUERY_TIMEOUT)
    except (dns.exception.DNSException, OSError) as e:
        return Check("dns resolver", "fail", f"{address}:53 does not answer: {e or type(e).__name__}")
    return Check("dns resolver", "ok", f"{address}:53 answers ({dns.rcode.to_text(reply.rcode())} for a test name)")
