"""The lab's container registry: Debian's `docker-registry` (the CNCF distribution, 2.8), plain
HTTP, in the outside namespace, so every host reaches it on the underlay and the machine's own
namespace never sees it. Its storage is a directory of the lab, removed with it; the lab stops
the process by its pid. Every host's daemon.json lists it in "insecure-registries": dockerd
speaks plain HTTP only to registries named there (and to 127.0.0.0/8, which is each host's
own loopback, not the outside's).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .cmd import LabError
from .nodes import Outside
from .procs import Proc

PORT = 5000
BINARY = "docker-registry"
START_TIMEOUT = 30.0


def config(address: str, storage: Path) -> str:
    """The registry's configuration; YAML is a superset of JSON, so json.dumps writes it.
    Deletes are on so that a test may remove a tag; no auth (the lab is not reachable from
    outside the machine), no cache, no health checks (nothing acts on them). The secret signs
    upload state; without one the registry makes one up and warns."""
    return json.dumps(
        {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": address, "secret": secrets.token_hex(16)},
        },
        indent=1,
    )


def start(outside: Outside, workdir: Path, record: Callable[[Proc], None]) -> Proc:
    """Start the registry at the outside's address, storing under WORKDIR, and hand its process
    to RECORD at once (the lab writes it down before waiting); returns once it listens."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise LabError(f"{BINARY} is not installed: run `make install` (apt-get install docker-registry)")
    workdir.mkdir(exist_ok=True)
    address = f"{outside.address}:{PORT}"
    path = workdir / "config.yml"
    path.write_text(config(address, workdir / "data") + "\n")
    log = workdir / "registry.log"
    with open(log, "ab") as out:
        proc = Proc.spawn(outside.command(binary, "serve", str(path)), stdout=out, stderr=out, cwd=workdir)
    record(proc)
    deadline = time.monotonic() + START_TIMEOUT
    # distribution logs `listening on ADDRESS` once its socket is bound.
    while f"listening on {address}" not in log.read_text(errors="replace"):
        if not proc.alive() or time.monotonic() > deadline:
            raise LabError(f"the registry did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return proc
