"""Per-host claims (drivers/claims.py) and the undo order of a failed request (drivers/base.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pynet.drivers.base import undo_on_failure
from pynet.drivers.claims import Claims
from pynet.store.embedded import EmbeddedStore
from pynet.store.errors import Conflict, PynetError

P = "/pynet/"
VNI = {"vni": 42, "bridge": "pno-42"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "store.sqlite")
    yield s
    await s.close()


async def alive(_: str) -> bool:
    return False


async def gone(_: str) -> bool:
    return True


async def test_a_claim_is_one_networks_and_a_retry_keeps_it(store: EmbeddedStore) -> None:
    h1 = Claims(store, P, "h1")
    await h1.reserve("a", VNI, alive)
    await h1.reserve("a", VNI, alive)  # Docker's retry of the same create
    with pytest.raises(Conflict, match="vni 42 is already used by network a$"):
        await h1.reserve("b-net", {"bridge": "pnb-x", "vni": 42}, alive)
    assert await store.get(h1.key("bridge", "pnb-x")) is None, "all or nothing: the free claim was not taken"


async def test_the_same_vni_on_several_hosts_is_allowed(store: EmbeddedStore) -> None:
    """One network copied to each host: claims are per host (the VNI's cluster-wide owner is
    drivers/vnis.py's reservation)."""
    await Claims(store, P, "h1").reserve("copy-on-h1", VNI, alive)
    await Claims(store, P, "h2").reserve("copy-on-h2", VNI, alive)


async def test_release_drops_only_the_releasers_claims(store: EmbeddedStore) -> None:
    h1 = Claims(store, P, "h1")
    await h1.reserve("a", VNI, alive)
    await h1.release("b", VNI)
    assert await store.get(h1.key("vni", 42)) is not None
    await h1.release("a", VNI)
    await h1.release("a", VNI)  # idempotent
    await h1.reserve("b", VNI, alive)


async def test_a_claim_left_by_a_crash_is_taken_over(store: EmbeddedStore) -> None:
    h1 = Claims(store, P, "h1")
    await h1.reserve("crashed", VNI, alive)
    await h1.reserve("new", VNI, gone)
    kv = await store.get(h1.key("vni", 42))
    assert kv is not None and kv.value == b"new"


async def test_undo_runs_last_step_first_and_past_a_failing_one() -> None:
    ran: list[str] = []

    async def step(name: str, fail: bool = False) -> None:
        ran.append(name)
        if fail:
            raise OSError(f"{name} failed")

    with pytest.raises(PynetError, match="the request's own error"):
        async with undo_on_failure(lambda: step("given")) as undo:
            undo.push(lambda: step("store"))
            undo.push(lambda: step("kernel", fail=True))
            raise PynetError("the request's own error")
    assert ran == ["kernel", "store", "given"]
