"""Background tasks that never die quietly: each runs under a supervisor that logs what ended
it and starts it again after a jittered, doubling delay.

Without this, one unexpected error (etcd answering with a code nobody mapped, dockerd
restarting mid-stream) ends a task for good and nothing says so: the host vanishes from its
peers, or stops following Docker. A task's state (running, retrying and why, restarts) is kept
for `pynet status`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pynet.store.errors import PynetError

log = logging.getLogger("pynet.supervisor")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
# A run that lasted this long was healthy: the next failure starts again from FIRST_DELAY.
HEALTHY_AFTER = 60.0


@dataclass
class TaskState:
    name: str
    state: str = "starting"  # "running" | "retrying" | "stopped"
    restarts: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)
    detail: dict[str, str] = field(default_factory=dict)  # what the task says of itself


def backoff(previous: float, cap: float = MAX_DELAY) -> float:
    """The next delay: doubled, capped, with ±20 % jitter so that hosts restarted together
    do not retry together."""
    nxt = min(cap, previous * 2) if previous else min(cap, FIRST_DELAY)
    return nxt * random.uniform(0.8, 1.2)


class Supervisor:
    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}
        self._running: list[asyncio.Task[None]] = []

    def start(
        self, name: str, run: Callable[[TaskState], Awaitable[None]], max_delay: float = MAX_DELAY
    ) -> TaskState:
        """Run `run(state)` until the supervisor closes; `run` may update `state.detail`. A
        `run` that returns is started again too: a task is meant to run forever. MAX_DELAY
        caps its backoff (the data plane's tasks retry sooner than Docker's)."""
        state = TaskState(name)
        self.tasks[name] = state
        self._running.append(asyncio.create_task(self._keep(run, state, max_delay), name=f"pynet-{name}"))
        return state

    async def _keep(self, run: Callable[[TaskState], Awaitable[None]], state: TaskState, max_delay: float) -> None:
        delay = 0.0
        while True:
            started = time.monotonic()
            state.state, state.since = "running", time.time()
            try:
                await run(state)
                state.last_error = "returned"
                log.warning("task ended, restarting", extra={"task": state.name})
            except asyncio.CancelledError:
                state.state = "stopped"
                raise
            except Exception as e:
                state.last_error = f"{type(e).__name__}: {e}"
                # pynet's own errors say what happened (etcd or Docker away); anything else
                # is a bug or a fault nobody mapped, and its traceback is what finds it.
                log.warning(
                    "task failed, restarting",
                    extra={"task": state.name, "error": state.last_error},
                    exc_info=not isinstance(e, PynetError) or log.isEnabledFor(logging.DEBUG),
                )
            if time.monotonic() - started > HEALTHY_AFTER:
                delay = 0.0
            delay = backoff(delay, max_delay)
            state.state, state.since = "retrying", time.time()
            state.restarts += 1
            await asyncio.sleep(delay)

    async def close(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running = []
