"""A private etcd for tests: 127.0.0.1 only, free ports, its own data dir, stopped by pid.

Any tier that needs a real etcd uses `etcd_server(...)`. It never contacts an etcd it did not
start: ports come from the kernel (bind to port 0), so a shared etcd on :2379 is never reached.
`require_etcd()` skips when the binary is missing, or fails under CI=true (CI skips nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.tools import require


def require_etcd() -> None:
    """Skip (or fail under CI=true) when the etcd binaries are not installed."""
    require("etcd", "etcdctl", package="etcd-server and etcd-client")


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick), for our etcd or a dead endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A throwaway CA plus a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", *_new_key(ca_key), "-days", "2", "-out", ca, "-subj", "/CN=pynet-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    _sign(directory, "server", ca, ca_key, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _sign(directory, "client", ca, ca_key, "extendedKeyUsage=clientAuth\n")
    return TlsFiles(ca, directory / "server.crt", directory / "server.key",
                    directory / "client.crt", directory / "client.key")


def _new_key(key: Path) -> list[str | Path]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def _sign(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> None:
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", *_new_key(directory / f"{name}.key"), "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", directory / f"{name}.crt", "-days", "2", "-extfile", ext)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _thread_state(task: Path) -> str:
    """The one-letter state in /proc/PID/task/TID/stat (after the parenthesised name)."""
    try:
        stat = (task / "stat").read_text()
    except FileNotFoundError:
        return "T"  # the thread exited: it answers nothing either
    return stat[stat.rindex(")") + 2]


def freeze(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP: sockets stay open but nothing answers, the case only deadlines catch.

    Returns once every thread has stopped: kill() returns before threads running on other
    CPUs are, and a request can still be answered in between."""
    proc.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{proc.pid}/task")
    while any(_thread_state(t) not in ("T", "t") for t in tasks.iterdir()):
        time.sleep(0.005)


@dataclass
class EtcdServer:
    """One etcd member; stop/start reuse the data dir and ports, as a real restart would."""

    directory: Path
    tls: TlsFiles | None = None
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more etcd flags (a space quota, ...)
    # Run inside this network namespace (the test's own), serving on HOST there: etcd and
    # etcdctl are started through `ip netns exec`.
    netns: str = ""
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def _inside(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until it serves, so a test's first request does not race boot."""
        assert self.proc is None, "etcd already running"
        log = open(self.directory / "etcd.log", "ab")
        with log:
            # cwd: anything etcd writes outside its data dir stays in the test's temp dir.
            self.proc = subprocess.Popen(
                [*self._inside, *self._argv()], stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "etcd.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"private etcd did not come up:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it lingers."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL by pid: the crash case, no goodbye on open connections."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        freeze(self.proc)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def etcdctl(self, *args: str, user: str = "") -> str:
        """Run etcdctl against this member only; raises with its output on failure."""
        argv = [*self._inside, "etcdctl", f"--endpoints={self.endpoint}", "--dial-timeout=2s",
                "--command-timeout=5s", *self._ctl_tls(), *([f"--user={user}"] if user else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        # Short raft timings keep start-up fast and lower etcd's minimum lease TTL (1.5
        # election timeouts, rounded up to whole seconds) from 2 s to 1 s, which the store
        # contract's lease tests rely on.
        return [
            "etcd", "--name=pynet-test", f"--data-dir={self.directory / 'data'}",
            f"--listen-client-urls={self.endpoint}", f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pynet-test={peer}", "--heartbeat-interval=10",
            "--election-timeout=100", *self._server_tls(), *self.args,
        ]

    def _server_tls(self) -> list[str]:
        if self.tls is None:
            return []
        return [f"--cert-file={self.tls.server_cert}", f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}", "--client-cert-auth"]

    def _ctl_tls(self) -> list[str]:
        if self.tls is None:
            return []
        return [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]

    def _healthy(self) -> bool:
        """Any answer on /version means the client port serves; /health would need auth later."""
        if self.netns:  # out of this process's reach: ask from inside
            probe = f"import urllib.request; urllib.request.urlopen('{self.endpoint}/version', timeout=1)"
            return subprocess.run([*self._inside, sys.executable, "-c", probe], capture_output=True).returncode == 0
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(f"{self.endpoint}/version", timeout=1, context=context):
                return True
        except OSError:
            return False


@contextlib.contextmanager
def etcd_server(
    directory: Path, *, tls: bool = False, args: tuple[str, ...] = (), netns: str = "", host: str = "127.0.0.1"
) -> Iterator[EtcdServer]:
    """A running private etcd for the block; stopped by pid afterwards, whatever happens."""
    require_etcd()
    directory.mkdir(parents=True, exist_ok=True)
    server = EtcdServer(directory, make_tls(directory / "tls") if tls else None, args=args, netns=netns, host=host)
    server.start()
    try:
        yield server
    finally:
        server.stop()
