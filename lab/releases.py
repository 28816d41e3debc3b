"""Docker releases a lab host can run: the machine's own dockerd, or a newer Debian suite's.

A newer release is fetched from the Debian archive the machine's apt already uses, with apt's
own tools but private state (sources list, package lists, cache), and unpacked with
`dpkg-deb -x` under CACHE/<release>/<versions>/, so the machine's packages stay as they are
and a later run with the same package versions reuses the unpacked tree. Only BINARIES are
linked into that tree's bin/, which goes first on the PATH of the host's dockerd and of
commands run in the host: the machine's runc stays in use (unstable's runc needs a newer glibc
than Debian 12's). Each release has its own docker CLI: an older CLI would negotiate the API
down to its own version (20.10's speaks 1.41) and could not ask for what a newer dockerd
offers, such as `network create --ipv4=false` (API 1.47).

Compose v2 is fetched the same way, from unstable whatever the release (`fetch_compose`, under
CACHE/compose/), and a release given one (`DockerRelease.compose`) has a lab host run it as the
docker CLI's plugin, so `docker compose` works on every release's CLI, 20.10's included.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cmd import CommandError, run_cmd

DEFAULT_CACHE = Path(os.environ.get("PYNET_DOCKER_CACHE", "/var/cache/pynet-docker"))
BINARIES = ("dockerd", "containerd", "containerd-shim-runc-v2", "docker-proxy", "docker")
# Debian 12's docker.io CLI, not whatever `docker` comes first on PATH (CI has no other).
MACHINE_CLI = "/usr/bin/docker"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_APT_TIMEOUT = 600


@dataclass(frozen=True)
class DockerRelease:
    """A Docker release as a lab host runs it; bin_dir None is the machine's own binaries."""

    name: str
    bin_dir: Path | None = None
    compose: Path | None = None  # the docker-compose binary (fetch_compose), if the host has Compose

    def dockerd(self) -> str:
        return str(self.bin_dir / "dockerd") if self.bin_dir else "dockerd"

    def cli(self) -> str:
        return str(self.bin_dir / "docker") if self.bin_dir else MACHINE_CLI

    def path(self, base: str) -> str:
        """BASE (a PATH value) with this release's binaries first."""
        return f"{self.bin_dir}:{base}" if self.bin_dir else base

    def dockerd_args(self) -> list[str]:
        """dockerd 20.10 looks docker-proxy up on PATH, newer ones also in libexec dirs of the
        machine: naming it keeps the release's own proxy whatever the release searches."""
        return [f"--userland-proxy-path={self.bin_dir / 'docker-proxy'}"] if self.bin_dir else []


@dataclass(frozen=True)
class Suite:
    """Where a newer release comes from: a Debian suite, and the packages holding BINARIES."""

    suite: str
    packages: tuple[str, ...] = ("docker.io", "containerd", "docker-cli")


MACHINE = DockerRelease("20.10")  # Debian 12's docker.io, installed by packaging/install.sh
SUITES = {"26.1": Suite("trixie"), "28.5": Suite("sid")}
RELEASES = (MACHINE.name, *SUITES)
# A static Go binary (only glibc >= 2.34 needed, Debian 12 has 2.36); 2.40.3 in late 2026.
COMPOSE = Suite("sid", ("docker-compose",))
COMPOSE_BINARY = "docker-compose"


class ReleaseUnavailable(RuntimeError):
    """A release could not be fetched or unpacked; the message says which step failed and why."""


def fetch(name: str, cache: Path = DEFAULT_CACHE) -> DockerRelease:
    """The release NAME, fetching and unpacking it first unless the cache holds its packages'
    current versions; offline, the last unpacked versions are used if there are any."""
    if name == MACHINE.name:
        return MACHINE
    if name not in SUITES:
        raise ReleaseUnavailable(f"unknown Docker release {name!r}: choose from {', '.join(RELEASES)}")
    tree = _fetch_tree(cache / name, SUITES[name], BINARIES, lambda versions: _check_version(name, versions))
    return DockerRelease(name, tree / "bin")


def fetch_compose(cache: Path = DEFAULT_CACHE) -> Path:
    """The docker-compose binary of unstable's package, fetched as `fetch` fetches a release."""
    return _fetch_tree(cache / "compose", COMPOSE, (COMPOSE_BINARY,)) / "bin" / COMPOSE_BINARY


def _fetch_tree(
    top: Path, suite: Suite, binaries: tuple[str, ...], check: Callable[[dict[str, str]], None] | None = None
) -> Path:
    """The tree under TOP holding SUITE's packages at their current versions (checked by CHECK),
    with BINARIES linked into its bin/; offline, the last tree unpacked there."""
    top.mkdir(parents=True, exist_ok=True)
    with _locked(top / ".lock"):
        apt = _Apt(top / "apt", suite.suite)
        try:
            apt.update()
            versions = apt.versions(suite.packages)
        except ReleaseUnavailable:
            cached = _unpacked(top, binaries[0])
            if cached is None:
                raise
            return cached
        if check is not None:
            check(versions)
        tree = top / "_".join(f"{p}={v}" for p, v in versions.items()).replace(":", "%")
        if not (tree / "bin" / binaries[0]).exists():
            _unpack(apt, versions, tree, binaries)
            _remove_others(top, keep=tree)
    return tree


def _check_version(name: str, versions: dict[str, str]) -> None:
    if not versions["docker.io"].startswith(name + "."):
        raise ReleaseUnavailable(f"Docker {name}: the archive now has docker.io {versions['docker.io']} in its suite")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Test sessions running side by side fetch a release once, not over each other."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _unpacked(top: Path, binary: str) -> Path | None:
    trees = sorted((t for t in top.iterdir() if (t / "bin" / binary).exists()), key=os.path.getmtime)
    return trees[-1] if trees else None


def _unpack(apt: _Apt, versions: dict[str, str], tree: Path, binaries: tuple[str, ...]) -> None:
    """Download, unpack into a scratch directory, link the binaries, check that they run, and
    only then rename it into place: an interrupted run leaves no tree that looks complete."""
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=tree.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private
    try:
        debs = apt.download(versions, scratch / "debs")
        for deb in debs:
            run_cmd(["dpkg-deb", "-x", str(deb), str(scratch / "root")], timeout=_APT_TIMEOUT)
        shutil.rmtree(scratch / "debs")
        (scratch / "bin").mkdir()
        for binary in binaries:
            found = [p for d in ("usr/sbin", "usr/bin") if (p := scratch / "root" / d / binary).exists()]
            if not found:
                raise ReleaseUnavailable(f"{binary} is in none of {', '.join(versions)} {list(versions.values())}")
            (scratch / "bin" / binary).symlink_to(os.path.relpath(found[0], scratch / "bin"))
        _runs(scratch / "bin" / binaries[0])
        scratch.rename(tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _runs(binary: Path) -> None:
    try:
        run_cmd([str(binary), "--version"], timeout=30)
    except CommandError as err:
        raise ReleaseUnavailable(f"the unpacked {binary} does not run on this machine:\n{err}") from err


def _remove_others(top: Path, keep: Path) -> None:
    """Older versions of the release: a suite moves on, and each tree is ~200 MB."""
    for entry in top.iterdir():
        if entry.is_dir() and entry not in (keep, top / "apt"):
            shutil.rmtree(entry, ignore_errors=True)


class _Apt:
    """apt-get and apt-cache on one Debian suite, with state of their own under DIR."""

    def __init__(self, root: Path, suite: str) -> None:
        self.dir = root
        self.suite = suite
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        uri, keyring = machine_mirror()
        (root / "sources.list").write_text(f"deb [signed-by={keyring}] {uri} {suite} main\n")

    def options(self) -> list[str]:
        return [
            *("-o", f"Dir::Etc::SourceList={self.dir / 'sources.list'}"),
            *("-o", "Dir::Etc::SourceParts=/dev/null"),
            *("-o", f"Dir::State::Lists={self.dir / 'lists'}"),
            *("-o", f"Dir::Cache={self.dir / 'cache'}"),
            # Downloads land in root-only directories the _apt user cannot write.
            *("-o", "APT::Sandbox::User=root"),
        ]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        argv = [tool, "-q", *self.options(), *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=_APT_TIMEOUT, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            raise ReleaseUnavailable(f"`{' '.join(argv)}` timed out after {_APT_TIMEOUT} s") from err
        # apt-get update exits 0 when a source is unreachable, and says so with W:/E: lines.
        failed = proc.returncode != 0 or re.search(r"^(E:|W: Failed to fetch)", proc.stderr, re.M)
        if failed:
            raise ReleaseUnavailable(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def update(self) -> None:
        self._run("apt-get", "update")

    def versions(self, packages: tuple[str, ...]) -> dict[str, str]:
        """Each package's version in the suite (madison lists the archive's, not dpkg's)."""
        found: dict[str, str] = {}
        for line in self._run("apt-cache", "madison", *packages).splitlines():
            package, version, _ = (f.strip() for f in line.split("|", 2))
            found.setdefault(package, version)
        missing = [p for p in packages if p not in found]
        if missing:
            raise ReleaseUnavailable(f"{self.suite} has no {', '.join(missing)}")
        return found

    def download(self, versions: dict[str, str], into: Path) -> list[Path]:
        into.mkdir()
        self._run("apt-get", "download", *(f"{p}={v}" for p, v in versions.items()), cwd=into)
        return sorted(into.glob("*.deb"))


def machine_mirror(etc: Path = Path("/etc")) -> tuple[str, str]:
    """The URI (and keyring) of the Debian archive the machine's apt uses for its own release."""
    codename = _os_release(etc / "os-release").get("VERSION_CODENAME", "")
    for uri, suites, keyring in _machine_sources(etc / "apt"):
        if codename in suites:
            return uri, keyring or DEFAULT_KEYRING
    where = etc / "apt" / "sources.list*"
    raise ReleaseUnavailable(f"no Debian archive for {codename or 'this release'} in {where}")


def _os_release(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip('"')
    return fields


def _machine_sources(etc: Path) -> Iterator[tuple[str, list[str], str]]:
    """(URI, suites, Signed-By) of every deb source, one-line (.list) or deb822 (.sources)."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in filter(Path.exists, files):
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            options = ""
            if words[1].startswith("["):
                end = next(i for i, w in enumerate(words) if w.endswith("]"))
                options, words = " ".join(words[1 : end + 1]), [words[0], *words[end + 1 :]]
            keyring = re.search(r"signed-by=(\S+?)\]?(\s|$)", options)
            yield words[1], [words[2]], keyring.group(1) if keyring else ""
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822(stanza)
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split(), fields.get("signed-by", "")


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[0].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields
