"""Daemon settings: each is a flag of `pynet serve` and an environment variable `PYNET_<NAME>`.

Environment variables let a managed plugin (`docker plugin set pynet PYNET_ETCD_ENDPOINTS=...`)
and a systemd unit configure pynet without editing the command line; a flag wins over its
variable. The flags are generated from the dataclass below so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pynet.drivers.firewall import FLAVOURS, IPTABLES, NFTABLES
from pynet.store.errors import PynetError
from pynet.store.private import private_dir, write_private


class ConfigError(PynetError):
    """A setting with a value pynet cannot run with; `pynet` prints it and exits 2."""


def _setting(default: Any, help: str, metavar: str | None = None, *, secret: bool = False) -> Any:
    # A secret stays out of the repr, so no log line or traceback that prints a Settings shows it.
    return field(default=default, repr=not secret, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class Settings:
    socket: str = _setting("/run/docker/plugins/pynet.sock", "Unix socket Docker talks to")
    state_dir: str = _setting("/var/lib/pynet", "where the embedded store and the host id live")
    host_id: str = _setting("", "this host's name in a shared store (default: generated once, kept in state-dir)")
    log_level: str = _setting("info", "debug, info, warning or error")
    log_format: str = _setting("kv", "kv (key=value) or json")
    etcd_endpoints: str = _setting("", "comma-separated etcd URLs; empty = embedded store", "URLS")
    etcd_ca: str = _setting("", "CA bundle for etcd TLS", "FILE")
    etcd_cert: str = _setting("", "client certificate for etcd TLS", "FILE")
    etcd_key: str = _setting("", "client key for etcd TLS", "FILE")
    etcd_user: str = _setting("", "etcd user name")
    etcd_password: str = _setting(
        "", "etcd password; as a flag every user sees it in ps: prefer --etcd-password-file", secret=True
    )
    etcd_password_file: str = _setting(
        "", "file holding the etcd password (one line), read at start; the password then appears nowhere else", "FILE"
    )
    store_prefix: str = _setting("/pynet/", "key prefix in the store (several labs may share one etcd)")
    store_timeout: float = _setting(3.0, "deadline in seconds for one store operation", "SECONDS")
    lease_ttl: int = _setting(
        10, "seconds after pynet stops before other hosts drop this host's VXLAN entries", "SECONDS"
    )
    default_pools: str = _setting(
        "10.208.0.0/12:24,fd70:706e::/32:64",
        "ranges automatic subnets are cut from, as CIDR:prefixlen, comma-separated",
        "LIST",
    )
    metrics_listen: str = _setting("", "serve Prometheus metrics at host:port or a unix socket path", "ADDR")
    underlay: str = _setting(
        "",
        "VXLAN underlay of networks without -o underlay: an interface or IPv4 address "
        "(default: the interface routing to the first etcd endpoint, else the default route's)",
        "IFACE|ADDR",
    )
    resync_interval: float = _setting(
        10.0, "seconds between checks that firewall jumps and links are in place", "SECONDS"
    )
    firewall_backend: str = _setting(
        "",
        "iptables or nftables, as dockerd's own firewall-backend (default: the one Docker uses here); "
        "nftables writes pynet's own nft tables and no iptables rule",
        "BACKEND",
    )
    iptables_backend: str = _setting("", "iptables flavour, nft or legacy (default: the one Docker uses)", "FLAVOUR")
    dns_address: str = _setting(
        "169.254.53.53",
        "the resolver's address, the same on every host; `pynet dns install` lists it first in daemon.json",
        "ADDR",
    )
    dns_upstream: str = _setting(
        "", "comma-separated resolvers for names pynet does not know (default: /etc/resolv.conf's)", "ADDRS"
    )
    docker_host: str = _setting(
        "unix:///run/docker.sock",
        "Docker Engine API of the cluster agent and gc, unix:///path (gc: else $DOCKER_HOST)",
        "URL",
    )
    driver_name: str = _setting(
        "pynet",
        "the driver name this host's Docker knows pynet by, which the cluster agent creates networks with: "
        "pynet for the daemon, pynet:latest for the managed plugin (its alias, if installed with --alias)",
        "NAME",
    )

    def __post_init__(self) -> None:
        _validate(self)  # however a Settings is made: from flags, variables, or by a test

    @property
    def firewall_flavour(self) -> str | None:
        """What drivers.firewall.Firewall is given: None detects iptables or nftables."""
        if self.firewall_backend == NFTABLES:
            return NFTABLES
        return self.iptables_backend or self.firewall_backend or None

    @property
    def store_address(self) -> str:
        """The host part of the first etcd endpoint ("" on the embedded store)."""
        if not self.etcd_endpoint_list:
            return ""
        first = self.etcd_endpoint_list[0]
        return urlsplit(first if "://" in first else "//" + first).hostname or ""

    @property
    def store_path(self) -> Path:
        return Path(self.state_dir) / "store.sqlite"

    @cached_property
    def pool_ranges(self) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int], ...]:
        """`default_pools` parsed once: (range, prefix length of the subnets cut from it)."""
        out = []
        for item in filter(None, (x.strip() for x in self.default_pools.split(","))):
            cidr, _, size = item.rpartition(":")
            try:
                net, prefixlen = ipaddress.ip_network(cidr), int(size)
            except ValueError:
                net, prefixlen = None, -1
            if net is None or not net.prefixlen <= prefixlen <= net.max_prefixlen:
                raise ConfigError(f"pynet: --default-pools entry must be CIDR:prefixlen, got {item!r}")
            out.append((net, prefixlen))
        return tuple(out)

    @cached_property
    def etcd_endpoint_list(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.etcd_endpoints.split(",") if e.strip())

    @cached_property
    def etcd_secret(self) -> str:
        """The etcd password: --etcd-password, or the first line of --etcd-password-file (read
        once, when the Settings is made, so a missing file stops pynet at start)."""
        if not self.etcd_password_file:
            return self.etcd_password
        try:
            lines = Path(self.etcd_password_file).read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"pynet: --etcd-password-file {self.etcd_password_file!r}: {e.strerror}") from None
        if not lines or not lines[0]:
            raise ConfigError(f"pynet: --etcd-password-file {self.etcd_password_file!r} is empty")
        return lines[0]

    @cached_property
    def dns_upstreams(self) -> tuple[str, ...]:
        """`dns_upstream` parsed once: IP addresses (port 53, as in daemon.json's "dns")."""
        out = []
        for item in filter(None, (x.strip() for x in self.dns_upstream.split(","))):
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise ConfigError(f"pynet: --dns-upstream entries must be IP addresses, got {item!r}") from None
        return tuple(out)

    def pools(self, v6: bool) -> list[tuple[str, int]]:
        """The default ranges of one family, as (CIDR, prefix length)."""
        return [(str(net), size) for net, size in self.pool_ranges if (net.version == 6) == v6]


def _env_name(name: str) -> str:
    return "PYNET_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Settings):
        env = _env_name(f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            metavar=f.metadata.get("metavar") or f.name.upper(),
            help=f"{f.metadata['help']} (env {env}, default {f.default!r})",
        )


def from_args(ns: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flags first, then PYNET_* variables, then defaults; raises ConfigError for a bad value."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag = getattr(ns, f.name, None)
        if flag is not None:
            values[f.name] = flag
        elif _env_name(f.name) in environ:
            raw = environ[_env_name(f.name)]
            kind: Any = type(f.default)  # str, int or float: every setting has a default
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"pynet: {_env_name(f.name)} must be a {type(f.default).__name__}, got {raw!r}"
                ) from None
    return Settings(**values)


def _validate(s: Settings) -> None:
    if s.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"pynet: --log-level must be debug, info, warning or error, got {s.log_level!r}")
    if s.log_format not in ("kv", "json"):
        raise ConfigError(f"pynet: --log-format must be kv or json, got {s.log_format!r}")
    if s.iptables_backend and s.iptables_backend not in FLAVOURS:
        raise ConfigError(f"pynet: --iptables-backend must be nft or legacy, got {s.iptables_backend!r}")
    if s.firewall_backend not in ("", IPTABLES, NFTABLES):
        raise ConfigError(f"pynet: --firewall-backend must be iptables or nftables, got {s.firewall_backend!r}")
    if s.firewall_backend == NFTABLES and s.iptables_backend:
        raise ConfigError(
            f"pynet: --iptables-backend {s.iptables_backend} is for the iptables firewall backend, "
            "but --firewall-backend is nftables; keep one"
        )
    s.pool_ranges  # noqa: B018 - parsed (and cached) now, so a bad entry fails here
    s.dns_upstreams  # noqa: B018 - likewise
    _validate_etcd_credentials(s)
    try:
        ipaddress.ip_address(s.dns_address)
    except ValueError:
        raise ConfigError(f"pynet: --dns-address must be an IP address, got {s.dns_address!r}") from None


def _validate_etcd_credentials(s: Settings) -> None:
    if s.etcd_password and s.etcd_password_file:
        raise ConfigError("pynet: --etcd-password and --etcd-password-file are both set; keep one")
    if s.etcd_secret and not s.etcd_user:
        raise ConfigError("pynet: an etcd password needs --etcd-user")
    tls = [name for name, value in (("ca", s.etcd_ca), ("cert", s.etcd_cert), ("key", s.etcd_key)) if value]
    plain = [e for e in s.etcd_endpoint_list if urlsplit(e).scheme == "http"]
    if tls and plain:
        # The files would be ignored on that endpoint (TLS is per endpoint, by its scheme), and
        # the password and every record would cross the network in clear.
        flags = "/".join(f"--etcd-{name}" for name in tls)
        raise ConfigError(
            f"pynet: {flags} set, but etcd endpoint {plain[0]!r} is plain http: use https:// (or drop {flags})"
        )


def resolve_host_id(s: Settings) -> str:
    """A stable identity for this host in a shared store: given, or generated once and kept."""
    if s.host_id:
        return s.host_id
    path = Path(s.state_dir) / "host-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        private_dir(path.parent)
        host_id = f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}"
        write_private(path, host_id + "\n")
        return host_id
