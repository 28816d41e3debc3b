"""The `pynet` command: `serve` runs the daemon; the operator's commands (`status`, `gc`, ...)
live in plugin/ops. (The lab, a development tool, is `python -m lab` in a checkout.)"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pynet.plugin.daemon import config
from pynet.plugin.daemon.version import VERSION
from pynet.plugin.ops import cli as ops


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pynet", description="Docker network and IPAM plugin")
    parser.add_argument("--version", action="version", version=f"pynet {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    config.add_arguments(sub.add_parser("serve", help="run the plugin daemon in the foreground"))
    ops.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        settings = config.from_args(args)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 2  # as argparse does for a bad flag
    if args.command == "serve":
        from pynet.plugin import serve

        return serve.main(settings)
    return ops.main(settings, args)


if __name__ == "__main__":
    sys.exit(main())
