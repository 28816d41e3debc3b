"""The lab harness on one host: dockerd in its own namespaces, daemon restarts and crashes, the
pynet launcher (with a stand-in plugin, so these tests do not depend on pynet itself), and a
teardown that leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import IMAGE, PLUGIN_SOCKET, DockerRelease, Host, Lab, LabError
from lab.procs import Proc

# Answers every POST like a v1 plugin would answer /Plugin.Activate, and logs its argv.
FAKE_PYNET = r"""
import http.server, os, socketserver, sys
print("argv:", " ".join(sys.argv[1:]), flush=True)
sock = sys.argv[sys.argv.index("--socket") + 1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = b'{"Implements": ["NetworkDriver"]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "unix"
if os.path.exists(sock):
    os.unlink(sock)
socketserver.UnixStreamServer(sock, Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def lab(docker_release: DockerRelease) -> Iterator[Lab]:
    with Lab(f"pnt{uuid.uuid4().hex[:6]}", hosts=1, etcd=False, pynet=False, docker=docker_release) as lab:
        yield lab


@pytest.fixture
def host(lab: Lab) -> Host:
    return lab.hosts[0]


def test_container_runs(host: Host) -> None:
    host.docker("run", "--rm", IMAGE, "true")


def test_dockerd_lives_in_the_host_namespaces(host: Host) -> None:
    links = host.run("ip", "-o", "link").stdout
    assert "docker0" in links and "eth0" in links
    assert "docker0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert host.inside("/run/docker/plugins").is_dir()
    assert host.docker("info", "--format", "{{.Name}}").stdout.strip() == host.name


def test_restart_keeps_the_image(host: Host) -> None:
    host.restart_dockerd()
    host.docker("image", "inspect", IMAGE)
    host.docker("run", "--rm", IMAGE, "true")


def test_dockerd_starts_again_after_a_crash(host: Host) -> None:
    """After SIGKILL the pid files of dockerd and containerd are stale (maybe a zombie), and
    the restarted dockerd kills the orphaned container: --stop-timeout keeps that short."""
    host.docker("run", "-d", "--stop-timeout", "1", IMAGE, "sleep", "600")
    host.stop_dockerd(kill=True)
    assert not host.dockerd_running()
    host.start_dockerd()
    host.docker("run", "--rm", IMAGE, "true")


def test_start_pynet_waits_for_activation(lab: Lab, host: Host, tmp_path: Path) -> None:
    fake = tmp_path / "fake_pynet.py"
    fake.write_text(FAKE_PYNET)
    saved = lab.pynet_cmd
    lab.pynet_cmd = [sys.executable, str(fake)]
    try:
        host.start_pynet("--extra")
        assert host.pynet_running()
        assert host.inside(PLUGIN_SOCKET).is_socket()
        log = (host.root / "pynet.log").read_text()
        argv = log.splitlines()[0].removeprefix("argv: ").split()
        assert argv[:7] == ["serve", "--socket", PLUGIN_SOCKET, "--state-dir", f"{host.root}/pynet", "--host-id", host.name]
        # The host's own Docker and the outside's resolver, never the machine's; ARGS last.
        assert argv[argv.index("--docker-host") + 1] == host.docker_host
        assert argv[argv.index("--dns-upstream") + 1] == lab.outside.address
        assert argv[-1] == "--extra"
        host.stop_pynet()
        assert not host.pynet_running()
    finally:
        lab.pynet_cmd = saved
        host.stop_pynet()


def test_start_pynet_reports_a_failed_start(lab: Lab, host: Host) -> None:
    saved = lab.pynet_cmd
    lab.pynet_cmd = [sys.executable, "-c", "import sys; print('no such option'); sys.exit(2)"]
    try:
        with pytest.raises(LabError, match="no such option"):
            host.start_pynet()
        assert not host.pynet_running()
    finally:
        lab.pynet_cmd = saved


def test_down_leaves_nothing(lab: Lab) -> None:
    holders = [Proc(h.holder.pid, h.holder.start) for h in lab.hosts if h.holder]
    assert holders
    lab.down()
    assert not any(p.alive() for p in holders)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.name not in listed
    assert lab.leftovers() == []


def test_a_failed_up_cleans_up_after_itself() -> None:
    lab = Lab(f"pnt{uuid.uuid4().hex[:6]}", hosts=1, etcd=False, pynet_cmd=["false"])
    with pytest.raises(LabError, match="pynet exited during startup"):
        lab.up()
    assert lab.leftovers() == []
