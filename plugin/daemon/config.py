"""Daemon settings: each is a flag of `pynet serve` and an environment variable `PYNET_<NAME>`.

Environment variables let a managed plugin (`docker plugin set pynet PYNET_ETCD_ENDPOINTS=...`)
and a systemd unit configure pynet without editing the command line; a flag wins over its
variable. The flags are generated from the dataclass below so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit


def _setting(default: Any, help: str, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "metavar": metavar})


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
    etcd_password: str = _setting("", "etcd password")
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
    resync_interval: float = _setting(10.0, "seconds between checks that firewall jumps and links are in place", "SECONDS")

    @property
    def store_address(self) -> str:
        """The host part of the first etcd endpoint ("" on the embedded store)."""
        first = next((e.strip() for e in self.etcd_endpoints.split(",") if e.strip()), "")
        if not first:
            return ""
        return urlsplit(first if "://" in first else "//" + first).hostname or ""

    @property
    def store_path(self) -> Path:
        return Path(self.state_dir) / "store.sqlite"

    def pools(self, v6: bool) -> list[tuple[str, int]]:
        """The default ranges of one family, as (CIDR, prefix length)."""
        out = []
        for item in filter(None, (s.strip() for s in self.default_pools.split(","))):
            cidr, _, size = item.rpartition(":")
            if (":" in cidr) == v6:
                out.append((cidr, int(size)))
        return out


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
    """Flags first, then PYNET_* variables, then defaults; validates what can be checked early."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag = getattr(ns, f.name, None)
        if flag is not None:
            values[f.name] = flag
        elif _env_name(f.name) in environ:
            raw = environ[_env_name(f.name)]
            try:
                values[f.name] = type(f.default)(raw)
            except ValueError:
                raise SystemExit(f"pynet: {_env_name(f.name)} must be a {type(f.default).__name__}, got {raw!r}")
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    import ipaddress

    if s.log_level not in ("debug", "info", "warning", "error"):
        raise SystemExit(f"pynet: --log-level must be debug, info, warning or error, got {s.log_level!r}")
    if s.log_format not in ("kv", "json"):
        raise SystemExit(f"pynet: --log-format must be kv or json, got {s.log_format!r}")
    for item in filter(None, (x.strip() for x in s.default_pools.split(","))):
        cidr, _, size = item.rpartition(":")
        try:
            net = ipaddress.ip_network(cidr)
            if not net.prefixlen <= int(size) <= net.max_prefixlen:
                raise ValueError
        except ValueError:
            raise SystemExit(f"pynet: --default-pools entry must be CIDR:prefixlen, got {item!r}")


def resolve_host_id(s: Settings) -> str:
    """A stable identity for this host in a shared store: given, or generated once and kept."""
    if s.host_id:
        return s.host_id
    path = Path(s.state_dir) / "host-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        host_id = f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(host_id + "\n")
        os.replace(tmp, path)
        return host_id


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="pynet serve")
    add_arguments(parser)
    return from_args(parser.parse_args(argv))
