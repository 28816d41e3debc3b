"""`pynet dns install|uninstall`: point dockerd's embedded DNS at pynet's resolver.

install makes daemon.json's "dns" pynet's address followed by the host's upstream resolvers
(Docker forwards to at most 3, in order, and moves to the next on SERVFAIL or no answer: so
with pynet stopped, containers still resolve outside names). Every other key is kept. The file
as it was is saved in the state directory, once, so that uninstall puts back exactly that, or
removes daemon.json if there was none; if the file was edited since, uninstall only puts the
"dns" key back and keeps the edits.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import msgspec

from pynet.plugin.daemon.config import Settings
from pynet.plugin.dns.upstreams import upstreams
from pynet.plugin.ops.render import Report
from pynet.store.errors import PynetError
from pynet.store.private import private_dir, write_private

DAEMON_JSON = "/etc/docker/daemon.json"
MAX_SERVERS = 3  # Docker's embedded DNS uses the first 3 (moby resolver.go, maxExtDNS)
RESTART = "restart dockerd for this to take effect (e.g. `systemctl restart docker`)"


class Saved(msgspec.Struct):
    original: str | None  # daemon.json before the first install; None: there was none
    written: str  # what install wrote last


def _saved_path(state_dir: Path) -> Path:
    return state_dir / "dns-daemon-json.saved"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _parse(path: Path, text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PynetError(f"{path} is not valid JSON ({e}): fix it first; nothing was changed") from None
    if not isinstance(data, dict):
        raise PynetError(f"{path} is not a JSON object: fix it first; nothing was changed")
    return data


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".pynet-tmp")
    tmp.write_text(text)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def servers(address: str, upstream: list[str]) -> list[str]:
    return [address, *(u for u in upstream if u != address)][:MAX_SERVERS]


def install(daemon_json: Path, state_dir: Path, wanted: list[str]) -> list[str]:
    """Make `wanted` daemon.json's "dns"; returns what to tell the operator."""
    text = _read(daemon_json)
    data = _parse(daemon_json, text)
    before = data.get("dns")
    if before == wanted:
        return [f'{daemon_json}: "dns" is already {json.dumps(wanted)}: nothing changed']
    saved_path = _saved_path(state_dir)
    saved = msgspec.json.decode(saved_path.read_bytes(), type=Saved) if saved_path.exists() else Saved(text, "")
    data["dns"] = wanted
    saved.written = json.dumps(data, indent=2) + "\n"
    private_dir(state_dir)
    write_private(saved_path, msgspec.json.encode(saved).decode())  # first: uninstall must always find it
    _write(daemon_json, saved.written)
    was = "absent" if before is None else json.dumps(before)
    lines = [f'{daemon_json}: "dns" set to {json.dumps(wanted)} (was {was})']
    if len(wanted) == 1:
        lines.append("no upstream resolver found (set --dns-upstream): with pynet stopped, containers resolve nothing")
    return [*lines, f"the previous content is saved in {saved_path} for `pynet dns uninstall`", RESTART]


def uninstall(daemon_json: Path, state_dir: Path) -> list[str]:
    saved_path = _saved_path(state_dir)
    if not saved_path.exists():
        return [f"pynet dns install has not changed {daemon_json} (no {saved_path}): nothing changed"]
    saved = msgspec.json.decode(saved_path.read_bytes(), type=Saved)
    current = _read(daemon_json)
    if current == saved.written or current is None:
        if saved.original is None:
            daemon_json.unlink(missing_ok=True)
            lines = [f"{daemon_json}: removed (there was none before pynet dns install)"]
        else:
            _write(daemon_json, saved.original)
            lines = [f"{daemon_json}: put back as it was before pynet dns install"]
    else:
        # Edited since: keep the edits, put back only the key pynet changed.
        data = _parse(daemon_json, current)
        before = _parse(daemon_json, saved.original).get("dns")
        if before is None:
            data.pop("dns", None)
        else:
            data["dns"] = before
        _write(daemon_json, json.dumps(data, indent=2) + "\n")
        was = "removed" if before is None else f"put back to {json.dumps(before)}"
        lines = [f'{daemon_json}: edited since pynet dns install; kept the edits, "dns" {was}']
    saved_path.unlink()
    return [*lines, RESTART]


async def command(settings: Settings, args: argparse.Namespace) -> Report:
    """`pynet dns install|uninstall [--daemon-json FILE]`."""
    path, state_dir = Path(args.daemon_json), Path(settings.state_dir)
    if args.action == "install":
        wanted = servers(settings.dns_address, upstreams(settings.dns_upstreams))
        lines = install(path, state_dir, wanted)
    else:
        lines = uninstall(path, state_dir)
    return Report({"action": args.action, "daemon_json": str(path), "messages": lines}, "\n".join(lines), True)
