"""Supervision of the agent service's background tasks (publisher, pollers, flush, watchdog, household extras).

Every task is started through `_supervised`, which watches it. One that ends before a stop was asked for (an
exception, or returning) is a failure: it is logged with its traceback, shown in /health (`tasks`, `failed_task`),
recorded in the store's event log (TASK_FAILED_EVENT), the watchdog is no longer pinged, and the service stops and
run() raises TaskFailedError, so the CLI exits non-zero and systemd restarts the agent. A crashed poller is the
exception: `_supervise` restarts it after a growing delay. The systemd watchdog is pinged (`_watchdog_loop`) only
while every poller completes cycles and every supervised task runs.

What lives where: this module is the Supervision mixin of agent.service.AgentService (the wiring and the
per-sample path stay there), plus TaskFailedError and task_state for /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.publisher import wall_ms
from agent.store import StoreError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.poller import MeterReadError, MeterSample, MeterSpec, Poller
    from agent.store import Store
    from base.sd_notify import Notifier

log = logging.getLogger(__name__)

# A crashed poller task is restarted after this delay (doubling, capped) instead of ending the agent.
DEFAULT_POLLER_RESTART_S = 1.0
MAX_POLLER_RESTART_S = 60.0
# The watchdog is pinged only while every poller completes a cycle at least this often: a wedged
# poller then gets the service restarted by systemd instead of silently reading nothing.
LIVENESS_MIN_S = 60.0
TASK_FAILED_EVENT = "task_failed"


class TaskFailedError(Exception):
    """A supervised background task ended while the agent was running: the service stopped because of it."""

    def __init__(self, task: str, reason: str) -> None:
        super().__init__(f"background task {task!r} failed: {reason}")
        self.task, self.reason = task, reason


class Supervision:
    """Mixin of AgentService: the supervised tasks by name, what a death does, and the watchdog ping."""

    cfg: AgentConfig
    store: Store
    failed_task: dict[str, Any] | None  # {"task", "reason", "at_ms"} of the first that died
    _stop: asyncio.Event
    _tasks: dict[str, asyncio.Task[Any]]
    _pollers: list[Poller]
    _publisher_task: asyncio.Task[None] | None
    on_sample: Callable[[MeterSample], Awaitable[None]]  # what a restarted poller reports to
    on_error: Callable[[MeterSpec, MeterReadError], Awaitable[None]]

    async def _supervise(self, poller: Poller, name: str) -> None:
        delay = DEFAULT_POLLER_RESTART_S
        while not self._stop.is_set():
            try:
                await poller.run(self.cfg.agent.poll_interval_s, self.on_sample, self.on_error)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("poller for bus %s crashed; restarting in %.0f s", name, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, MAX_POLLER_RESTART_S)

    def _supervised(self, name: str, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        """Done callback of every supervised task: ending before a stop was asked for is a failure."""
        if self._stop.is_set() or self.failed_task is not None:
            return
        exc = None if task.cancelled() else task.exception()
        reason = ("cancelled" if task.cancelled() else f"{type(exc).__name__}: {exc}" if exc is not None
                  else "returned while the agent was running")
        self.failed_task = {"task": task.get_name(), "reason": reason, "at_ms": wall_ms()}
        log.error("background task %s died (%s): no more watchdog pings; stopping so systemd restarts the agent",
                  task.get_name(), reason, exc_info=exc)
        self._stop.set()

    def _record_failure(self) -> None:
        if self.failed_task is None:
            return
        try:
            failed = self.failed_task
            self.store.record_event(TASK_FAILED_EVENT, None, f"{failed['task']}: {failed['reason']}",
                                    counter="task_failures")
        except StoreError as exc:  # the failing task may be the store itself: the log line above still says why
            log.error("could not record the task failure in the store: %s", exc)

    def _last_task_failure(self) -> dict[str, Any] | None:
        """The newest task_failed event (an earlier run's: shown in /health after systemd restarted us)."""
        try:
            for at_ms, kind, _meter, detail in self.store.events(limit=50):
                if kind == TASK_FAILED_EVENT:
                    task, _, reason = detail.partition(": ")
                    return {"task": task, "reason": reason, "at_ms": at_ms}
        except StoreError as exc:
            log.warning("cannot read the store's event log: %s", exc)
        return None

    def _dead_task(self) -> str | None:
        if self.failed_task is not None:
            return str(self.failed_task["task"])
        tasks = [*self._tasks.values(), *([self._publisher_task] if self._publisher_task is not None else [])]
        return next((t.get_name() for t in tasks if t.done()), None)

    async def _watchdog_loop(self, notifier: Notifier, interval_s: float) -> None:
        """Ping only while every poller completes cycles (meters in backoff still count: their cycle runs
        and skips them) and every supervised task runs, so a wedged bus loop or a dead task (e.g. the publisher:
        readings would pile up unpublished) gets the service restarted; a dead meter does not."""
        liveness = max(LIVENESS_MIN_S, 5 * self.cfg.agent.poll_interval_s)
        last_cycles = [-1] * len(self._pollers)
        last_change = [time.monotonic()] * len(self._pollers)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, p in enumerate(self._pollers):
                if p.stats.cycles != last_cycles[i]:
                    last_cycles[i], last_change[i] = p.stats.cycles, now
            dead = self._dead_task()
            if dead is not None:
                log.error("task %s stopped: withholding the watchdog ping so systemd restarts the agent", dead)
            elif all(now - t < liveness for t in last_change):
                notifier.send("WATCHDOG=1")
            else:
                log.error("a poller made no progress for %.0f s: withholding the watchdog ping", liveness)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)


def task_state(task: asyncio.Task[Any]) -> str:
    if not task.done():
        return "running"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return f"failed: {type(exc).__name__}: {exc}" if exc is not None else "ended"
