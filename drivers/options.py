"""Option parsing shared by the backends: one table of options per mode, aliases, clear errors.

Names follow Docker's own drivers where one exists, so `-o com.docker.network.driver.mtu=1400`
means the same here as on Docker's bridge; short aliases (`mtu`) are accepted too. An option
that no table names is rejected, never silently ignored (docs/landscape.md, theme 15).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pynet.store.errors import InvalidRequest

Parser = Callable[[str, str], Any]


@dataclass(frozen=True)
class Option:
    name: str  # the canonical name, as reported in errors and stored in config
    parse: Parser
    default: Any = None
    aliases: tuple[str, ...] = ()


def invalid(name: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"pynet: option {name} must be {expected}, got {value!r}")


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise invalid(name, "true or false", value)


def int_in(lo: int, hi: int) -> Parser:
    def parse(name: str, value: str) -> int:
        # ASCII digits only, as Docker's own drivers (Go's strconv.Atoi): Python's int() also
        # takes "1_500", " 42 " and other scripts' digits ("٤٢").
        if not re.fullmatch(r"[+-]?[0-9]+", value) or not lo <= int(value) <= hi:
            raise invalid(name, f"an integer in {lo}..{hi}", value)
        return int(value)

    return parse


def one_of(*choices: str) -> Parser:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise invalid(name, "one of " + ", ".join(choices), value)
        return value

    return parse


def ipv4_address(name: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise invalid(name, "an IPv4 address", value) from None


def ifname(name: str, value: str) -> str:
    """A name the kernel takes for a link (dev_valid_name, net/core/dev.c: under 16 bytes, no
    '/', ':' or white space, not "." or ".."), in printable ASCII: the kernel counts bytes, and
    refuses a UTF-8 name holding byte 0xa0 (its isspace), so "br:lan" or "é" * 8 passed here
    and made CreateNetwork fail in the kernel, a 500."""
    if (
        not 1 <= len(value) <= 15
        or not (value.isascii() and value.isprintable())
        or any(c in value for c in " /:")
        or value in (".", "..")
    ):
        raise invalid(name, "an interface name of 1 to 15 ASCII characters, without '/', ':' or spaces", value)
    return value


def parse_options(
    mode: str, table: list[Option], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Canonical name -> parsed value for every option in `table` (defaults filled in)."""
    by_name = {n: o for o in table for n in (o.name, *o.aliases)}
    parsed: dict[str, Any] = {o.name: o.default for o in table}
    given: dict[str, str] = {}
    for key, value in options.items():
        opt = by_name.get(key)
        if opt is None:
            known = ", ".join(sorted(o.name for o in table)) or "none"
            raise InvalidRequest(
                f"pynet: unknown option {key!r} for mode {mode} (known: {known})"
            )
        if not isinstance(value, str):
            raise invalid(key, "a string", value)
        if opt.name in given and given[opt.name] != key:
            raise InvalidRequest(f"pynet: options {given[opt.name]!r} and {key!r} are the same option")
        given[opt.name] = key
        parsed[opt.name] = opt.parse(key, value)
    return parsed
