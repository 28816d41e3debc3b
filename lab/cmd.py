"""Running commands and talking HTTP over Unix sockets, with errors that say what went wrong.

A failed command in a lab is usually diagnosed from its output alone, so every error carries
the command line, its exit status, stdout and stderr.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import subprocess
from collections.abc import Mapping, Sequence


class LabError(RuntimeError):
    """The lab could not be built, reached or torn down."""


class CommandError(subprocess.CalledProcessError):
    """A command exited non-zero; str() shows its output so test failures explain themselves."""

    def __str__(self) -> str:
        return (
            f"`{shlex.join(str(a) for a in self.cmd)}` exited with {self.returncode}\n"
            f"--- stdout ---\n{self.stdout or ''}--- stderr ---\n{self.stderr or ''}"
        )


def run_cmd(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output, raising CommandError (not the terse stock one)."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=None if env is None else dict(env),
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection over a Unix socket: Docker and its plugins speak HTTP on socket files."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_http(path: str, method: str, url: str, body: bytes = b"", timeout: float = 2) -> tuple[int, bytes]:
    """One request on a Unix socket; raises OSError while nobody listens there yet."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        json_body = {"Content-Type": "application/json"} if body else {}  # dockerd's API wants it
        conn.request(method, url, body=body, headers={"Content-Length": str(len(body)), **json_body})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
