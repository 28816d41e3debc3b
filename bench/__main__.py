"""`python -m bench [bridge ...] [scale [curve ...]] [--quick] [--docker R] [--lab N]`: run benchmarks, print figures.

`scale` takes the names of its curves (bench/scale.py: `ipam`, `networks`, `firewall`, `containers`, `restart`,
`vxlan`); with none it draws them all.
"""

from __future__ import annotations

import argparse

from bench import bridge, cluster, macvlan, scale, vxlan
from lab.releases import MACHINE, RELEASES

SUITES = {"bridge": bridge.main, "cluster": cluster.main, "macvlan": macvlan.main, "vxlan": vxlan.main}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "suites", nargs="*", help=f"some of: {', '.join([*SUITES, 'scale'])}, then scale's curves (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions, to check the bench runs")
    parser.add_argument(
        "--lab", default=None, help="name (prefix, for `scale`) of the labs the suites start; default: each suite's own"
    )
    parser.add_argument(
        "--docker", default=MACHINE.name, choices=RELEASES, help="Docker release of the suites' labs, not scale's"
    )
    args = parser.parse_args()
    suites, curves = args.suites, []
    if "scale" in suites:
        at = suites.index("scale")
        suites, curves = suites[: at + 1], suites[at + 1 :]
    unknown = set(suites) - {*SUITES, "scale"} | set(curves) - set(scale.CURVES)
    if unknown:
        parser.error(
            f"unknown suite(s) or curve(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)},"
            f" scale [{' '.join(scale.CURVES)}]"
        )
    for name in suites or [*SUITES, "scale"]:
        if name == "scale":
            scale.main(curves, quick=args.quick, lab_name=args.lab or "pnscale")
        else:
            SUITES[name](quick=args.quick, lab_name=args.lab, docker=args.docker)


main()
