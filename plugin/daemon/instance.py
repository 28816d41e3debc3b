"""One pynet per host: a second `pynet serve` on the same state directory or the same socket
refuses to start, naming the one that runs.

Without this, `make run` while the service runs unlinked the service's socket and bound its
own: Docker's requests went to the newcomer, whose state and kernel view were the old one's,
and nothing said so. Two checks, each for its own mistake:

- the state directory is locked (`flock` on `pynet.lock`, which holds the owner's pid): the
  kernel drops the lock when the process dies, however it dies, so a crash never leaves a
  stale lock;
- a socket file is unlinked only when nobody answers on it (a crash leaves one behind); a
  live one belongs to a running pynet with another state directory, or to another plugin.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from pynet.plugin.daemon.config import ConfigError
from pynet.store.private import FILE_MODE, private_dir

LOCK_FILE = "pynet.lock"


class AlreadyRunning(ConfigError):
    """Another daemon holds the state directory or answers on the socket."""


def lock_state_dir(state_dir: str) -> int:
    """Hold the state directory for this process's lifetime; returns the lock's descriptor
    (kept open: closing it would release the lock)."""
    fd = os.open(private_dir(state_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"pynet: another pynet (pid {owner}) is running with state directory {state_dir}; "
            "stop it first (is the service or the managed plugin running?)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError as e:
            return e.errno not in (errno.ENOTSOCK, errno.ECONNREFUSED)
        return True


def claim_socket(path: Path) -> None:
    """Make way for this daemon's socket: a stale one (a crash) is removed, a live one refused."""
    if answers(path):
        raise AlreadyRunning(
            f"pynet: {path} answers: another pynet (or another plugin) serves Docker there; stop it first"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
