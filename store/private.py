"""Files only root may read: the state directory (0700) and what pynet keeps in it (0600).

The store holds every network's options and, with etcd, nothing secret; the embedded store
and the host id still say what runs on the host, and the state directory of a managed plugin
is where its etcd password file and TLS key go. Modes are set when a file is created (`open`
with the mode, not a `chmod` after it), so there is no moment when another user could open
one; umask can only take bits away. A directory pynet did not create keeps its mode: the state
directory may be one the operator chose, and tightening, say, /srv would break other users.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path`, created 0700 if missing (its missing parents get the default mode)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.mkdir(mode=DIR_MODE, exist_ok=True)
    return p


def private_file(path: str | os.PathLike[str]) -> None:
    """`path` exists and is 0600: created so if missing, tightened if an older pynet made it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` atomically with `text`, 0600 from the first byte."""
    tmp = Path(f"{os.fspath(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a leftover of a crash keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
