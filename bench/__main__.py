"""`python -m bench [bridge ...] [--quick]`: run benchmarks and print their figures."""

from __future__ import annotations

import argparse

from bench import bridge, cluster, macvlan, vxlan

SUITES = {"bridge": bridge.main, "cluster": cluster.main, "macvlan": macvlan.main, "vxlan": vxlan.main}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"some of: {', '.join(SUITES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="few repetitions, to check the bench runs")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    for name in args.suites or SUITES:
        SUITES[name](quick=args.quick)


main()
