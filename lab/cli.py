"""`python -m lab` (in a checkout; `make lab-up`): bring a lab up or down, look at it, work inside a host.

up --hosts 3            build the lab "pnlab" (etcd and pynet included unless --no-...)
up --docker 28.5        ... with a newer Debian suite's dockerd (lab/releases.py fetches it)
                        (and `docker compose` in every host, unless --no-compose)
up --registry           ... with a plain-HTTP registry in the outside namespace (lab/registry.py)
status                  hosts, addresses, DOCKER_HOST values, what runs
shell 2                 an interactive shell in host 2, where `docker` talks to host 2
exec 1 -- docker ps     one command in host 1
down                    remove everything the lab made
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cmd import LabError
from .core import Lab
from .nodes import Host
from .releases import MACHINE, RELEASES, ReleaseUnavailable, fetch, fetch_compose


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    docker = fetch(args.docker)
    if not args.no_compose:
        docker = replace(docker, compose=_compose())
    lab = Lab(
        args.name,
        hosts=args.hosts,
        etcd=not args.no_etcd,
        pynet=not args.no_pynet,
        docker=docker,
        registry=args.registry,
    )
    lab.up()
    print(f"lab {lab.name} up in {time.monotonic() - started:.1f} s")
    _print_status(lab)
    return 0


def _compose() -> Path | None:
    """Compose for the hosts; a lab without it is still a lab, so a failed fetch only warns."""
    try:
        return fetch_compose()
    except ReleaseUnavailable as err:
        print(f"lab: no `docker compose` in the hosts: {err}", file=sys.stderr)
        return None


def _down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    Lab(args.name).down()
    print(f"lab {args.name} down in {time.monotonic() - started:.1f} s")
    return 0


def _status(args: argparse.Namespace) -> int:
    _print_status(Lab.attach(args.name))
    return 0


def _print_status(lab: Lab) -> None:
    def state(running: bool) -> str:
        return "running" if running else "stopped"

    print(f"lab {lab.name} in {lab.dir}, underlay {lab.underlay}")
    if lab.etcd_endpoint:
        print(f"  etcd      {lab.etcd_endpoint}  {state(lab.etcd is not None and lab.etcd.alive())}")
    print(f"  outside   {lab.outside.address}  (netns {lab.outside.netns})")
    if lab.registry:
        running = lab.registry_proc is not None and lab.registry_proc.alive()
        print(f"  registry  {lab.registry}  {state(running)}  (plain HTTP; every host's dockerd trusts it)")
    for host in lab.hosts:
        print(
            f"  {host.name}  {host.address}  dockerd {state(host.dockerd_running())}, "
            f"pynet {state(host.pynet_running())}  docker -H {host.docker_host}"
        )


def _host(args: argparse.Namespace) -> Host:
    lab = Lab.attach(args.name)
    number: int = args.host
    if not 1 <= number <= len(lab.hosts):
        raise LabError(f"lab {lab.name} has hosts 1 to {len(lab.hosts)}")
    return lab.hosts[number - 1]


def _shell(args: argparse.Namespace) -> int:
    """bash without rc files, so the prompt keeps saying which host this is."""
    host = _host(args)
    env = {**host.env(), "PS1": f"[{host.name}] \\w# "}
    shell = ["bash", "--norc", "-i"] if shutil.which("bash") else ["sh", "-i"]
    print(f"{host.name}: DOCKER_HOST={host.docker_host}; exit to leave")
    return host.popen(*shell, env=env).wait()


def _exec(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise LabError("exec needs a command: exec N -- CMD...")
    return _host(args).popen(*args.cmd).wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description="N Docker hosts on one Linux machine")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func: object, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--name", default="pnlab", help="lab name (default: pnlab)")
        p.set_defaults(func=func)
        return p

    up = command("up", _up, "build the lab")
    up.add_argument("--hosts", type=int, default=2, help="number of Docker hosts (default: 2)")
    up.add_argument("--no-etcd", action="store_true", help="no etcd server")
    up.add_argument("--no-pynet", action="store_true", help="do not start pynet in the hosts")
    up.add_argument(
        "--no-compose", action="store_true", help="no `docker compose` (Compose is fetched from Debian unstable)"
    )
    up.add_argument("--docker", choices=RELEASES, default=MACHINE.name, help="Docker release (default: the machine's)")
    up.add_argument("--registry", action="store_true", help="a plain-HTTP registry at the outside's address, port 5000")
    command("down", _down, "remove everything the lab made")
    command("status", _status, "show hosts, addresses and what is running")
    shell = command("shell", _shell, "interactive shell inside a host, with DOCKER_HOST set")
    shell.add_argument("host", type=int, help="host number, from 1")
    exec_ = command("exec", _exec, "run a command inside a host: exec N [--name NAME] -- CMD...")
    exec_.add_argument("host", type=int, help="host number, from 1")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Everything after the first `--` is the command of `exec`, taken verbatim."""
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    args.cmd = argv[cut + 1 :]
    try:
        code: int = args.func(args)
    except (LabError, ReleaseUnavailable, ValueError) as err:
        print(f"lab: {err}", file=sys.stderr)
        return 1
    return code
