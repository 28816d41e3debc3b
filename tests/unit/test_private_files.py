"""The state directory is 0700 and every file pynet keeps in it 0600, from creation, even under
umask 0: the lock, the host id, the embedded store with its -wal and -shm, the daemon.json copy."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynet.plugin.daemon.config import Settings, resolve_host_id
from pynet.plugin.daemon.instance import lock_state_dir
from pynet.plugin.ops.dns_setup import install
from pynet.store.embedded import EmbeddedStore
from pynet.store.private import write_private


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """umask 0: only the modes pynet asks for protect the files."""
    old = os.umask(0)
    yield
    os.umask(old)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


async def test_every_file_of_a_fresh_state_directory_is_private(tmp_path: Path) -> None:
    state = tmp_path / "lib" / "pynet"
    settings = Settings(state_dir=str(state))
    lock = lock_state_dir(settings.state_dir)
    try:
        resolve_host_id(settings)
        store = EmbeddedStore(settings.store_path)
        try:
            await store.put("/k", b"v")  # the WAL and its index exist while the store is open
            install(tmp_path / "daemon.json", state, ["169.254.53.53"])
            found = modes(state)
        finally:
            await store.close()
    finally:
        os.close(lock)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert {"pynet.lock", "host-id", "store.sqlite", "store.sqlite-wal", "store.sqlite-shm"} <= set(found)
    assert found == dict.fromkeys(found, 0o600)


async def test_an_older_pynets_readable_store_is_tightened(tmp_path: Path) -> None:
    """What an earlier pynet, killed with its WAL open, left: files at the default mode."""
    path = tmp_path / "store.sqlite"
    first = EmbeddedStore(path)
    await first.put("/k", b"v")
    leftovers = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for p in leftovers:
        p.chmod(0o644)
    second = EmbeddedStore(path)
    try:
        assert [stat.S_IMODE(p.stat().st_mode) for p in leftovers] == [0o600] * 3
        assert (await second.get("/k")) is not None
    finally:
        await second.close()
        await first.close()


def test_write_private_tightens_a_leftover_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "host-id.tmp").write_text("half-written\n")
    write_private(tmp_path / "host-id", "h1\n")
    assert modes(tmp_path) == {"host-id": 0o600}
    assert (tmp_path / "host-id").read_text() == "h1\n"


def test_a_state_directory_pynet_did_not_create_keeps_its_mode(tmp_path: Path) -> None:
    """--state-dir may name a directory others use: pynet never loosens or tightens it."""
    shared = tmp_path / "srv"
    shared.mkdir(mode=0o755)
    os.close(lock_state_dir(str(shared)))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert modes(shared) == {"pynet.lock": 0o600}
