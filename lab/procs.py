"""Lab processes, identified so that a pid reused by someone else is never signalled.

A lab outlives the Python process that built it, so processes are tracked by (pid, start
time) in the state file, and teardown also finds every process that lives in one of the lab's
network namespaces (plus their descendants, such as container processes under a shim): that
catches what nobody recorded, like containerd shims or a shell someone opened in a host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .cmd import LabError


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int:
    """Clock ticks after boot at which PID started, or -1 if it is gone; tells reused pids apart."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else -1


def is_live(pid: int) -> bool:
    """True for a running process; zombies count as gone (their namespaces are already released)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


@dataclass
class Proc:
    """A process the lab started; `popen` is set only in the Python process that started it."""

    pid: int
    start: int
    popen: subprocess.Popen[Any] | None = None

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any],
        stderr: int | IO[Any],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        """Start a daemon in its own session, so a Ctrl-C meant for the CLI does not reach it."""
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
        return cls(popen.pid, start_time(popen.pid), popen)

    @classmethod
    def from_json(cls, value: Sequence[int]) -> Proc:
        return cls(int(value[0]), int(value[1]))

    def to_json(self) -> list[int]:
        return [self.pid, self.start]

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_live(self.pid) and start_time(self.pid) == self.start

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, kill: bool = False, timeout: float = 30) -> None:
        """SIGTERM (or SIGKILL), wait, and SIGKILL whatever ignored the SIGTERM."""
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        if not self.wait_gone(timeout):
            self.signal(signal.SIGKILL)
            if not self.wait_gone(10):
                raise LabError(f"pid {self.pid} survives SIGKILL")


def netns_id(path: str) -> tuple[int, int] | None:
    """Identity of a network namespace (nsfs device and inode), from a bind mount or /proc link."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (st.st_dev, st.st_ino)


def _process_table() -> dict[int, tuple[int, tuple[int, int] | None]]:
    """pid -> (parent pid, network namespace id) for every live process."""
    table: dict[int, tuple[int, tuple[int, int] | None]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            continue
        table[pid] = (int(fields[1]), netns_id(f"/proc/{pid}/ns/net"))
    return table


def processes_in(namespaces: Collection[tuple[int, int]], extra: Collection[int] = ()) -> set[int]:
    """Processes in the given network namespaces, the `extra` pids, and all their descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [pid for pid, (_, ns) in table.items() if ns in namespaces]
    todo += [pid for pid in extra if pid in table]
    found: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    found.discard(os.getpid())
    return found


def kill_all_in(
    namespaces: Collection[tuple[int, int]], extra: Collection[Proc], timeout: float = 15
) -> None:
    """SIGKILL everything processes_in() finds until nothing is left: teardown has no use for grace."""
    deadline = time.monotonic() + timeout
    while True:
        pids = processes_in(namespaces, [p.pid for p in extra if p.alive()])
        if not pids:
            return
        if time.monotonic() > deadline:
            raise LabError(f"lab processes survive SIGKILL: {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
