"""The import graph of the product (docs/design.md, "Import graph"): each room imports only the
rooms below it. Read from the source with ast, function-level imports included, so an upward
arrow fails here before a reader has to find it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("plugin", "drivers", "ipam", "store")
# What each room may import (besides itself). A room of plugin/ is a subpackage or a module.
BASE = {"store", "ipam", "drivers"}
ALLOWED: dict[str, set[str]] = {
    "store": set(),
    "ipam": {"store"},
    "drivers": {"store"},
    "plugin.metrics": {"store"},
    "plugin.engine": {"store"},
    "plugin.dns": {"store", "plugin.daemon"},
    "plugin.daemon": BASE,
    "plugin.api": BASE | {"plugin.daemon", "plugin.metrics"},
    "plugin.cluster": BASE | {"plugin.daemon", "plugin.engine"},
    "plugin.ops": BASE | {"plugin.daemon", "plugin.metrics", "plugin.api", "plugin.dns", "plugin.engine"},
    "plugin.serve": BASE
    | {"plugin.daemon", "plugin.metrics", "plugin.api", "plugin.dns", "plugin.engine", "plugin.cluster", "plugin.ops"},
    "plugin.cli": {"plugin.daemon", "plugin.ops", "plugin.serve"},
    "plugin.__main__": {"plugin.cli"},
    "plugin": set(),  # the package itself (an empty __init__)
}
# `from pynet.plugin.daemon import config` names a module: the room is the package itself.
PACKAGES = {"pynet.plugin", "pynet.drivers"}


def room(module: str) -> str:
    parts = module.split(".")[1:]  # without "pynet"
    return ".".join(parts[:2]) if parts[0] == "plugin" and len(parts) > 1 else parts[0]


def modules() -> Iterator[tuple[str, Path]]:
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            yield ".".join(("pynet", folder, *rel)).removesuffix(".__init__"), path


def imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("pynet."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pynet"):
            if node.module in PACKAGES:
                yield from (f"{node.module}.{a.name}" for a in node.names)
            else:
                yield node.module


def test_every_room_imports_only_rooms_below_it() -> None:
    upward = []
    for module, path in modules():
        src = room(module)
        assert src in ALLOWED, f"{module}: a new room; give it a place in ALLOWED and docs/design.md"
        upward += [f"{module} imports {dst}" for dst in imported(path) if room(dst) not in ALLOWED[src] | {src}]
    assert not upward, "\n".join(upward)


def test_the_allowed_graph_has_no_cycle() -> None:
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        if node in seen:
            return
        for nxt in ALLOWED.get(node, set()):
            visit(nxt, (*path, node))
        seen.add(node)

    for node in ALLOWED:
        visit(node, ())
