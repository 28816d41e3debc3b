"""The `pynet` command: `serve` runs the daemon; `lab` manages a multi-host lab; the operator's
commands (`status`, `gc`, ...) live in plugin.admin."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from plugin import admin, config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pynet", description="Docker network and IPAM plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the plugin daemon in the foreground")
    config.add_arguments(serve)
    sub.add_parser("lab", help="N Docker hosts on this machine (pynet lab --help)", add_help=False)
    admin.add_parsers(sub)
    if argv[:1] == ["lab"]:
        from lab.cli import main as lab_main

        return lab_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "serve":
        from plugin import daemon

        return daemon.main(config.from_args(args))
    if args.command in admin.COMMANDS:
        return admin.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
