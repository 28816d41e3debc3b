"""Supervised background tasks: a failure is logged and the task runs again; cancel stops it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pynet.plugin.daemon import supervisor
from pynet.plugin.daemon.supervisor import Supervisor, TaskState, backoff
from pynet.store.errors import StoreUnavailable


async def test_a_failing_task_is_restarted_and_its_error_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FIRST_DELAY", 0.01)
    runs: list[int] = []
    healthy = asyncio.Event()

    async def flaky(state: TaskState) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ConnectionError(f"etcd said no ({len(runs)})")
        state.detail["api"] = "1.41"
        healthy.set()
        await asyncio.Event().wait()

    sup = Supervisor()
    state = sup.start("agent", flaky)
    await asyncio.wait_for(healthy.wait(), 10)
    assert state.restarts == 2 and state.state == "running"
    assert state.last_error == "ConnectionError: etcd said no (2)"
    assert state.detail == {"api": "1.41"}
    await sup.close()
    assert state.state == "stopped"


async def test_a_task_that_returns_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FIRST_DELAY", 0.01)
    runs = 0
    again = asyncio.Event()

    async def once(_: TaskState) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            again.set()

    sup = Supervisor()
    state = sup.start("watch", once)
    await asyncio.wait_for(again.wait(), 10)
    assert state.last_error == "returned"
    await sup.close()


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    delays = [0.0]
    for _ in range(12):
        delays.append(backoff(delays[-1]))
    assert supervisor.FIRST_DELAY * 0.8 <= delays[1] <= supervisor.FIRST_DELAY * 1.2
    assert all(d <= supervisor.MAX_DELAY * 1.2 for d in delays)
    assert delays[-1] >= supervisor.MAX_DELAY * 0.8


async def test_an_unexpected_error_is_logged_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pynet's own errors say what happened; anything else (a fault nobody mapped) needs the
    traceback to be found."""
    monkeypatch.setattr(supervisor, "FIRST_DELAY", 0.01)
    caplog.set_level(logging.WARNING, "pynet.supervisor")
    errors: list[Exception] = [StoreUnavailable("etcd away"), KeyError("address")]
    done = asyncio.Event()

    async def run(_: TaskState) -> None:
        if errors:
            raise errors.pop(0)
        done.set()
        await asyncio.Event().wait()

    sup = Supervisor()
    state = sup.start("vxlan-peers", run)
    await asyncio.wait_for(done.wait(), 10)
    await sup.close()
    assert [(r.error, bool(r.exc_info)) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("StoreUnavailable: etcd away", False),
        ("KeyError: 'address'", True),
    ]
    assert state.restarts == 2


def test_a_tasks_backoff_can_be_capped_lower() -> None:
    delays = [0.0]
    for _ in range(12):
        delays.append(backoff(delays[-1], cap=5.0))
    assert max(delays) <= 5.0 * 1.2 and delays[-1] >= 5.0 * 0.8
